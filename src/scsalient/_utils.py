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
