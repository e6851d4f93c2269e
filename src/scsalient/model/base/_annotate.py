"""Pieces of a classifier's read-out: temperature scaling, sparse per-cell explanations, majority voting."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from scipy import sparse

logger = logging.getLogger(__name__)

#: label written for cells below ``min_confidence`` or ``min_familiarity``
UNASSIGNED = "Unassigned"


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, prior_sd: float = 1.0, max_iter: int = 100
) -> float:
    r"""Temperature :math:`T` minimising the cross-entropy of ``softmax(logits / T)`` :cite:p:`Guo2017`.

    The cross-entropy of the :math:`n` cells is summed with a normal prior on :math:`\log T`
    (mean 0, standard deviation ``prior_sd``): with few cells, or cells all classified right
    (whose cross-entropy keeps falling as :math:`T \to 0`), the temperature stays near 1
    instead of making every probability 0 or 1.

    Parameters
    ----------
    logits
        Cells x classes (log-probabilities of an ensemble are fine: dividing them by ``T``
        and renormalising is temperature scaling of the ensemble).
    labels
        Integer class of each cell.
    prior_sd
        Standard deviation of the prior on :math:`\log T`.
    max_iter
        Iterations of L-BFGS on :math:`\log T`.

    Returns
    -------
    The temperature, clipped to [0.05, 20].
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y, reduction="sum")
        loss = loss + 0.5 * (log_t / prior_sd) ** 2
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def top_per_row(
    values: np.ndarray, n_top: int | None, columns: np.ndarray, n_columns: int
) -> sparse.csr_matrix:
    """The ``n_top`` largest positive values of each row, as a CSR matrix of ``n_columns`` columns.

    Parameters
    ----------
    values
        Rows x model features (dense).
    n_top
        Values kept per row; ``None`` keeps every positive value.
    columns
        Column of the output for each model feature (``-1``: the output has no such column).
    n_columns
        Columns of the output.
    """
    values = np.where(columns[None, :] >= 0, values, 0.0)
    if n_top is not None and n_top < values.shape[1]:
        keep = np.argpartition(-values, n_top - 1, axis=1)[:, :n_top]
        kept = np.zeros_like(values)
        np.put_along_axis(kept, keep, np.take_along_axis(values, keep, axis=1), axis=1)
        values = kept
    values = np.where(values > 0, values, 0.0).astype(np.float32)
    block = sparse.csr_matrix(values)
    return sparse.csr_matrix(
        (block.data, columns[block.indices], block.indptr), shape=(values.shape[0], n_columns)
    )


def place_rows(blocks: list[sparse.csr_matrix], rows: list[np.ndarray], n_rows: int) -> sparse.csr_matrix:
    """Stack row blocks into an ``n_rows``-row CSR matrix at the given row positions (others empty)."""
    if not blocks:
        return sparse.csr_matrix((n_rows, 0), dtype=np.float32)
    stacked = sparse.vstack(blocks, format="csr")
    positions = np.concatenate(rows)
    place = sparse.csr_matrix(
        (np.ones(len(positions), dtype=np.float32), (positions, np.arange(len(positions)))),
        shape=(n_rows, len(positions)),
    )
    return sparse.csr_matrix(place @ stacked, dtype=np.float32)


def over_clustering_resolution(n_cells: int) -> float:
    """Leiden resolution of the over-clustering used for majority voting (CellTypist's rule).

    5 below 5,000 cells, 10 below 20,000, 15 below 40,000, 20 below 100,000, 25 below
    200,000 and 30 above :cite:p:`DominguezConde2022`.
    """
    for limit, resolution in ((5_000, 5), (20_000, 10), (40_000, 15), (100_000, 20), (200_000, 25)):
        if n_cells < limit:
            return float(resolution)
    return 30.0


def over_cluster(latent: np.ndarray, seed: int = 0) -> np.ndarray:
    """Leiden clusters of a kNN graph of ``latent`` at :func:`over_clustering_resolution` (strings)."""
    import scanpy as sc
    from anndata import AnnData

    valid = ~np.isnan(latent).any(axis=1)
    view = AnnData(np.zeros((int(valid.sum()), 0), dtype=np.float32))
    view.obsm["X_latent"] = np.ascontiguousarray(latent[valid], dtype=np.float32)
    sc.pp.neighbors(view, use_rep="X_latent", n_neighbors=min(15, max(view.n_obs - 1, 2)), random_state=seed)
    sc.tl.leiden(
        view,
        resolution=over_clustering_resolution(view.n_obs),
        random_state=seed,
        flavor="igraph",
        n_iterations=2,
        directed=False,
    )
    clusters = np.full(len(latent), None, dtype=object)
    clusters[valid] = view.obs["leiden"].astype(str).to_numpy()
    return clusters


def majority_vote(predictions: pd.Categorical, clusters: np.ndarray) -> tuple[pd.Categorical, np.ndarray]:
    """Give every cell its cluster's most frequent prediction, and the share of the cluster that agrees.

    Parameters
    ----------
    predictions
        Per-cell predictions (missing values and :data:`UNASSIGNED` count as votes like any label,
        so a cluster of mostly unassigned cells stays unassigned).
    clusters
        Per-cell cluster (``None`` for cells without one: they keep their own prediction, agreement NaN).

    Returns
    -------
    The voted labels (same categories as ``predictions``) and the agreement: the share of the
    cell's cluster whose own prediction is the voted label.
    """
    labels = pd.Series(np.asarray(predictions, dtype=object))
    voted = labels.copy()
    agreement = np.full(len(labels), np.nan)
    frame = pd.DataFrame({"label": labels.fillna("\0missing"), "cluster": clusters})
    for _, members in frame[frame["cluster"].notna()].groupby("cluster").groups.items():
        counts = frame.loc[members, "label"].value_counts()
        winner = counts.index[0]
        voted.loc[members] = None if winner == "\0missing" else winner
        agreement[np.asarray(members)] = counts.iloc[0] / counts.sum()
    return pd.Categorical(voted, categories=predictions.categories), agreement
