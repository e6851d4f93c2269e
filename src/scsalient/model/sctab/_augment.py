"""Donor-difference augmentation vectors (scTab's data augmentation)."""

from __future__ import annotations

import logging
from itertools import combinations

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from scsalient.model.base._blocks import read_rows

logger = logging.getLogger(__name__)


def _log1p_cp10k(block) -> np.ndarray | sparse.csr_matrix:
    totals = np.asarray(block.sum(axis=1)).ravel()
    scale = 1e4 / np.maximum(totals, 1e-8)
    if sparse.issparse(block):
        out = sparse.csr_matrix(sparse.diags(scale.astype(np.float32)) @ block, dtype=np.float32)
        out.data = np.log1p(out.data)
        return out
    return np.log1p(np.asarray(block, dtype=np.float32) * scale[:, None])


def donor_difference_vectors(
    x,
    cells: np.ndarray,
    labels: np.ndarray,
    donors: np.ndarray,
    *,
    normalize: bool,
    threshold: float = 0.25,
    clip: float = 1.5,
    min_cells: int = 10,
    max_donors_per_type: int = 20,
    n_clusters: int = 16,
    seed: int = 0,
    block_size: int = 4096,
) -> np.ndarray:
    """Differences between donors' centroids of the same cell type, for data augmentation.

    1. Centroids of the (normalised) expression of each (cell type, donor) pair with at least
       ``min_cells`` cells (at most ``max_donors_per_type`` donors per type, those with most
       cells), computed block by block.
    2. Within each type, the difference of every pair of donor centroids; entries with
       :math:`|v| <` ``threshold`` set to 0, the rest clipped to ``[-clip, clip]``.
    3. The vectors are clustered with k-means; those in clusters at least as large as the
       average cluster are kept: donor shifts that recur across cell types and donor pairs,
       rather than one pair's idiosyncrasies.

    Parameters
    ----------
    x
        Expression matrix (dense, sparse or on-disk), all cells.
    cells
        Rows of ``x`` to use (the training cells).
    labels
        Integer cell type of every row of ``x``.
    donors
        Integer donor of every row of ``x``.
    normalize
        ``x`` holds counts: apply log1p(CP10k) first.
    threshold
        Entries smaller in absolute value are set to 0.
    clip
        Bound of the entries.
    min_cells
        Smallest number of cells of a (type, donor) centroid.
    max_donors_per_type
        Donors per type used for the pairwise differences.
    n_clusters
        Clusters of the k-means step.
    seed
        Seed of k-means.
    block_size
        Rows read at once.

    Returns
    -------
    float32 array, vectors x genes (no rows when no type has two donors with enough cells).
    """
    cells = np.sort(np.asarray(cells))
    pair = labels[cells].astype(np.int64) * (int(donors.max()) + 1) + donors[cells]
    keys, inverse, counts = np.unique(pair, return_inverse=True, return_counts=True)
    sums = np.zeros((len(keys), x.shape[1]), dtype=np.float64)
    for start in tqdm(range(0, len(cells), block_size), desc="augmentation centroids", leave=False,
                      disable=len(cells) < 20 * block_size):  # fmt: skip
        rows = cells[start : start + block_size]
        block = read_rows(x, rows)
        if normalize:
            block = _log1p_cp10k(block)
        member = sparse.csr_matrix(
            (np.ones(len(rows)), (inverse[start : start + len(rows)], np.arange(len(rows)))),
            shape=(len(keys), len(rows)),
        )
        part = member @ block
        sums += part.toarray() if sparse.issparse(part) else part
    centroids = sums / counts[:, None]
    n_donor_codes = int(donors.max()) + 1
    key_type = keys // n_donor_codes
    vectors = []
    for cell_type in np.unique(key_type):
        members = np.flatnonzero((key_type == cell_type) & (counts >= min_cells))
        members = members[np.argsort(-counts[members], kind="stable")[:max_donors_per_type]]
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
        logger.info("Augmentation: kept %d of %d donor-difference vectors.", keep.sum(), len(vectors))
        vectors = vectors[keep]
    return vectors
