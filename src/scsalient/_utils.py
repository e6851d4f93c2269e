"""Small helpers shared across the package (``tl``, ``pl``, ``metrics``, ``model``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse


def select_groups(groups: str | Sequence[str] | None, available: list[str], key: str) -> list[str]:
    """The requested groups (all when ``None``), checked against those stored under ``uns[key]``."""
    if groups is None:
        return available
    groups = [str(group) for group in ([groups] if isinstance(groups, str) else groups)]
    missing = [group for group in groups if group not in available]
    if missing:
        raise KeyError(f"Groups {missing} are not in adata.uns[{key!r}] (available: {available}).")
    return groups


def log1p_cp10k_block(block) -> np.ndarray | sparse.csr_matrix:
    """log1p(CP10k) of a block of counts (dense or CSR), in float32."""
    totals = np.asarray(block.sum(axis=1)).ravel()
    scale = 1e4 / np.maximum(totals, 1e-8)
    if sparse.issparse(block):
        out = sparse.csr_matrix(sparse.diags(scale.astype(np.float32)) @ block, dtype=np.float32)
        out.data = np.log1p(out.data)
        return out
    return np.log1p(np.asarray(block, dtype=np.float32) * scale[:, None])


def group_sums(codes: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum the rows of ``values`` by group: ``n_groups`` x columns, float64.

    Row ``i`` is added to the row ``codes[i]`` of the result, as ``np.add.at(out, codes, values)``
    does, but as one sparse-by-dense product: ``np.add.at`` runs element by element and took
    two thirds of an annotation over 25,000 genes.

    Parameters
    ----------
    codes
        Group of each row, integers in ``[0, n_groups)``.
    values
        Rows x columns array.
    n_groups
        Number of groups (rows of the result).
    """
    codes = np.asarray(codes)
    indicator = sparse.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_groups, len(codes))
    )
    return np.asarray(indicator @ np.asarray(values, dtype=np.float64))
