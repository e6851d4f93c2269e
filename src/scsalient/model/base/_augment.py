"""Batch-difference augmentation (scTab's donor-difference augmentation), shared by the classifiers.

Training cells are shifted by differences between the centroids of two batches (donors,
samples, sub-libraries) of the same cell type, so that a classifier learns to ignore the
shifts that separate batches and does better on batches it has never seen.
"""

from __future__ import annotations

import logging
from itertools import combinations

import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import KMeans
from torch import nn
from tqdm.auto import tqdm

from scsalient._utils import log1p_cp10k_block

from ._blocks import read_rows
from ._components import per_member

logger = logging.getLogger(__name__)


def batch_difference_vectors(
    x,
    cells: np.ndarray,
    labels: np.ndarray,
    batches: np.ndarray,
    *,
    normalize: bool,
    threshold: float = 0.25,
    clip: float = 1.5,
    min_cells: int = 10,
    max_batches_per_type: int = 20,
    n_clusters: int = 16,
    seed: int = 0,
    block_size: int = 4096,
) -> np.ndarray:
    """Differences between batches' centroids of the same cell type, for data augmentation.

    1. Centroids of the (normalised) expression of each (cell type, batch) pair with at least
       ``min_cells`` cells (at most ``max_batches_per_type`` batches per type, those with most
       cells), computed block by block.
    2. Within each type, the difference of every pair of batch centroids; entries with
       :math:`|v| <` ``threshold`` set to 0, the rest clipped to ``[-clip, clip]``.
    3. The vectors are clustered with k-means; those in clusters at least as large as the
       average cluster are kept: batch shifts that recur across cell types and batch pairs,
       rather than one pair's idiosyncrasies.

    Parameters
    ----------
    x
        Expression matrix (dense, sparse or on-disk), all cells.
    cells
        Rows of ``x`` to use (the training cells).
    labels
        Integer cell type of every row of ``x``.
    batches
        Integer batch (donor, sample) of every row of ``x``.
    normalize
        ``x`` holds counts: apply log1p(CP10k) first.
    threshold
        Entries smaller in absolute value are set to 0.
    clip
        Bound of the entries.
    min_cells
        Smallest number of cells of a (type, batch) centroid.
    max_batches_per_type
        Batches per type used for the pairwise differences.
    n_clusters
        Clusters of the k-means step.
    seed
        Seed of k-means.
    block_size
        Rows read at once.

    Returns
    -------
    float32 array, vectors x genes (no rows when no type has two batches with enough cells).
    """
    cells = np.sort(np.asarray(cells))
    pair = labels[cells].astype(np.int64) * (int(batches.max()) + 1) + batches[cells]
    keys, inverse, counts = np.unique(pair, return_inverse=True, return_counts=True)
    sums = np.zeros((len(keys), x.shape[1]), dtype=np.float64)
    for start in tqdm(range(0, len(cells), block_size), desc="augmentation centroids", leave=False,
                      disable=len(cells) < 20 * block_size):  # fmt: skip
        rows = cells[start : start + block_size]
        block = read_rows(x, rows)
        if normalize:
            block = log1p_cp10k_block(block)
        member = sparse.csr_matrix(
            (np.ones(len(rows)), (inverse[start : start + len(rows)], np.arange(len(rows)))),
            shape=(len(keys), len(rows)),
        )
        part = member @ block
        sums += part.toarray() if sparse.issparse(part) else part
    centroids = sums / counts[:, None]
    n_batch_codes = int(batches.max()) + 1
    key_type = keys // n_batch_codes
    vectors = []
    for cell_type in np.unique(key_type):
        members = np.flatnonzero((key_type == cell_type) & (counts >= min_cells))
        members = members[np.argsort(-counts[members], kind="stable")[:max_batches_per_type]]
        for i, j in combinations(members, 2):
            v = centroids[i] - centroids[j]
            v[np.abs(v) < threshold] = 0.0
            if np.any(v):
                vectors.append(np.clip(v, -clip, clip))
    if not vectors:
        return np.zeros((0, x.shape[1]), dtype=np.float32)
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) >= 2 * n_clusters:
        assignment = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit_predict(vectors)
        sizes = np.bincount(assignment, minlength=n_clusters)
        keep = sizes[assignment] >= len(vectors) / n_clusters
        logger.info("Augmentation: kept %d of %d batch-difference vectors.", keep.sum(), len(vectors))
        vectors = vectors[keep]
    return vectors


#: log1p(CP10k) range to which augmented expression is clamped (as in scTab)
AUGMENT_CLAMP = (0.0, 9.0)


class BatchShift(nn.Module):
    """Adds a random batch-difference vector, with a random sign, to each training cell.

    Holds the vectors of :func:`batch_difference_vectors` as a buffer (saved with the model);
    with no vectors, or in evaluation mode, it returns its input unchanged. Expression is clamped to
    ``AUGMENT_CLAMP`` (the log1p(CP10k) range) after the shift.

    Parameters
    ----------
    n_input
        Number of genes.
    """

    def __init__(self, n_input: int):
        super().__init__()
        self.n_input = n_input
        self.register_buffer("vectors", torch.zeros(0, n_input))

    @property
    def active(self) -> bool:
        """Whether there are vectors to add."""
        return self.vectors.shape[0] > 0

    def set_vectors(self, vectors: torch.Tensor | np.ndarray | None) -> None:
        """Replace the vectors (``None`` or an empty array: no augmentation)."""
        if vectors is None:
            vectors = torch.zeros(0, self.n_input)
        self.vectors = torch.as_tensor(vectors, dtype=torch.float32).to(self.vectors.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the number of vectors is only known after training
        key = prefix + "vectors"
        if key in state_dict:
            self.vectors = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, n_draws: int | None = None) -> torch.Tensor:
        """Shift the cells ``x`` (cells x genes).

        With ``n_draws`` (an ensemble's members), returns ``n_draws x cells x genes``, each
        draw with its own vectors and signs (the unchanged cells, repeated, when there is nothing
        to add); without, ``cells x genes``.
        """
        shape = (x.shape[0],) if n_draws is None else (n_draws, x.shape[0])
        if not (self.active and self.training):
            return x if n_draws is None else per_member(x, n_draws)
        pick = torch.randint(0, self.vectors.shape[0], shape, device=x.device)
        sign = torch.randint(0, 2, (*shape, 1), device=x.device, dtype=x.dtype) * 2.0 - 1.0
        return (x + sign * self.vectors[pick]).clamp(*AUGMENT_CLAMP)
