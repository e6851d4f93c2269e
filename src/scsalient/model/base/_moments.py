"""Per-gene statistics of the expression a model sees, computed block by block."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from scsalient._utils import log1p_cp10k_block

from ._blocks import read_rows


def expression_moments(
    x, cells: np.ndarray, *, normalize: bool, block_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every gene over ``cells``, read ``block_size`` rows at a time.

    Parameters
    ----------
    x
        Expression matrix (dense, sparse or on-disk), all cells.
    cells
        Rows of ``x`` to use (e.g. the training cells).
    normalize
        ``x`` holds counts: take log1p(CP10k) first.
    block_size
        Rows read at once.

    Returns
    -------
    Two float32 arrays of length ``x.shape[1]``: the means and the standard deviations.
    """
    cells = np.sort(np.asarray(cells))
    total = np.zeros(x.shape[1], dtype=np.float64)
    total_sq = np.zeros(x.shape[1], dtype=np.float64)
    for start in range(0, len(cells), block_size):
        block = read_rows(x, cells[start : start + block_size])
        if normalize:
            block = log1p_cp10k_block(block)
        if sparse.issparse(block):
            total += np.asarray(block.sum(axis=0)).ravel()
            total_sq += np.asarray(block.multiply(block).sum(axis=0)).ravel()
        else:
            block = np.asarray(block, dtype=np.float64)
            total += block.sum(axis=0)
            total_sq += (block**2).sum(axis=0)
    n = max(len(cells), 1)
    mean = total / n
    var = np.maximum(total_sq / n - mean**2, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def detection_rates(x, cells: np.ndarray, *, block_size: int = 4096) -> np.ndarray:
    """Fraction of ``cells`` in which each gene is detected (non-zero), read ``block_size`` rows at a time.

    Parameters
    ----------
    x
        Expression matrix (dense, sparse or on-disk), all cells; counts or normalised alike.
    cells
        Rows of ``x`` to use (e.g. the training cells).
    block_size
        Rows read at once.

    Returns
    -------
    A float32 array of length ``x.shape[1]``.
    """
    cells = np.sort(np.asarray(cells))
    detected = np.zeros(x.shape[1], dtype=np.int64)
    for start in range(0, len(cells), block_size):
        block = read_rows(x, cells[start : start + block_size])
        if sparse.issparse(block):
            block = sparse.csr_matrix(block)
            block.eliminate_zeros()  # stored zeros are not detections
            detected += np.bincount(block.indices, minlength=x.shape[1])
        else:
            detected += (np.asarray(block) != 0).sum(axis=0)
    return (detected / max(len(cells), 1)).astype(np.float32)
