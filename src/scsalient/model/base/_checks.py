"""Checks on expression matrices and labels, shared by every model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

InputKind = Literal["counts", "lognorm"]

#: largest value accepted as log-normalised input: log1p(CP10k) stays below ~9.3 and
#: log1p(CPM) below ~13.9; anything non-integer and larger is neither counts nor log1p data.
MAX_LOGNORM_VALUE = 20.0


def iter_row_blocks(x, block_size: int = 8192) -> Iterator[tuple[int, np.ndarray | sparse.csr_matrix]]:
    """Yield ``(start, block)`` row blocks of a dense, sparse, or on-disk (backed) matrix.

    Only one block is held in memory at a time; on-disk datasets are read block by block.
    """
    n = x.shape[0]
    for start in range(0, n, block_size):
        block = x[start : min(start + block_size, n)]
        if sparse.issparse(block):
            block = sparse.csr_matrix(block)
        else:
            block = np.asarray(block)
        yield start, block


def _values(block) -> np.ndarray:
    return block.data if sparse.issparse(block) else block


def describe_location(layer: str | None) -> str:
    """Human-readable location of the expression matrix (``adata.X`` or ``adata.layers[...]``)."""
    return "adata.X" if layer is None else f"adata.layers['{layer}']"


def inspect_expression(x, where: str, obs_names: pd.Index | None = None) -> InputKind:
    """Validate an expression matrix and decide whether it holds counts or log-normalised values.

    Parameters
    ----------
    x
        Cells x genes matrix (dense, sparse, or a backed on-disk dataset).
    where
        Where the matrix lives, used in error messages (e.g. ``"adata.X"``).
    obs_names
        Cell names, used to name all-zero cells in the error message.

    Returns
    -------
    ``"counts"`` when every value is a non-negative integer, ``"lognorm"`` otherwise.

    Raises
    ------
    ValueError
        On NaN or infinite values, negative values, all-zero cells, or non-integer values too
        large to be log-normalised data.
    """
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {x.shape}).")
    integer = True
    max_value = 0.0
    zero_cells: list[int] = []
    for start, block in iter_row_blocks(x):
        values = _values(block)
        if values.size:
            if not np.isfinite(values).all():
                raise ValueError(f"{where} contains NaN or infinite values; remove or impute them first.")
            if (values < 0).any():
                raise ValueError(
                    f"{where} contains negative values (minimum {values.min():.3g}). scsalient models take "
                    "raw counts or log1p-normalised expression, not scaled or centred data."
                )
            max_value = max(max_value, float(values.max()))
            if integer and np.any(np.mod(values, 1) != 0):
                integer = False
        row_sums = np.asarray(block.sum(axis=1)).ravel()
        zero_cells.extend((start + np.flatnonzero(row_sums == 0)).tolist())
    if zero_cells:
        names = list(obs_names[zero_cells[:5]]) if obs_names is not None else zero_cells[:5]
        raise ValueError(
            f"{where} has {len(zero_cells)} all-zero cell(s) (e.g. {names}); "
            "filter them first, e.g. with `sc.pp.filter_cells(adata, min_counts=1)`."
        )
    if integer:
        return "counts"
    if max_value > MAX_LOGNORM_VALUE:
        raise ValueError(
            f"{where} holds non-integer values up to {max_value:.3g}: these are neither raw counts nor "
            "log1p-normalised expression. Pass raw counts (e.g. a 'counts' layer) or log1p(CP10k) values."
        )
    return "lognorm"


def check_labels(adata: AnnData, labels_key: str) -> None:
    """Raise a clear :class:`ValueError` when a labels column cannot train a classifier."""
    if labels_key not in adata.obs:
        raise KeyError(f"labels_key '{labels_key}' is not a column of adata.obs.")
    labels = adata.obs[labels_key]
    n_missing = int(labels.isna().sum())
    if n_missing:
        raise ValueError(
            f"adata.obs['{labels_key}'] has {n_missing} missing (NaN) label(s); "
            "drop those cells or give them a label first."
        )
    n_classes = labels.nunique()
    if n_classes < 2:
        raise ValueError(
            f"adata.obs['{labels_key}'] has {n_classes} class(es); a classifier needs at least two."
        )


def check_batch_key(adata: AnnData, batch_key: str | None) -> None:
    """Raise a clear error when a batch column is absent or incomplete (``None`` passes)."""
    if batch_key is None:
        return
    if batch_key not in adata.obs:
        raise KeyError(f"batch_key '{batch_key}' is not a column of adata.obs.")
    n_missing = int(adata.obs[batch_key].isna().sum())
    if n_missing:
        raise ValueError(
            f"adata.obs['{batch_key}'] has {n_missing} missing (NaN) batch(es); "
            "give every cell a batch (donor, sample) first."
        )
