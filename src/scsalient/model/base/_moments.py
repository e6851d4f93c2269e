"""Per-gene statistics of the expression a model sees, computed block by block."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from scsalient._utils import log1p_cp10k_block

from ._blocks import read_rows


def expression_moments(
    x, cells: np.ndarray, *, normalize: bool, block_size: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard deviation and detection rate of every gene over ``cells``, in one pass.

    Parameters
    ----------
    x
        Expression matrix (dense, sparse or on-disk), all cells.
    cells
        Rows of ``x`` to use (e.g. the training cells).
    normalize
        ``x`` holds counts: take log1p(CP10k) first (for the mean and standard deviation).
    block_size
        Rows read at once.

    Returns
    -------
    Three float32 arrays of length ``x.shape[1]``: the means, the standard deviations and the
    fraction of ``cells`` in which the gene is detected (non-zero; stored zeros of a sparse
    matrix are not detections).
    """
    cells = np.sort(np.asarray(cells))
    total = np.zeros(x.shape[1], dtype=np.float64)
    total_sq = np.zeros(x.shape[1], dtype=np.float64)
    detected = np.zeros(x.shape[1], dtype=np.int64)
    for start in range(0, len(cells), block_size):
        block = read_rows(x, cells[start : start + block_size])
        # on the block as stored: normalisation keeps zeros at zero
        detected += np.asarray((block != 0).sum(axis=0)).ravel()
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
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32), (detected / n).astype(np.float32)
