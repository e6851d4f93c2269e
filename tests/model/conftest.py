"""Fixtures shared by the model tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _share_on_markers(explanation: np.ndarray, adata, markers: dict, labels: np.ndarray) -> list[float]:
    """Per type: mean share of its cells' explanation on its own markers over that on another type's."""
    ratios = []
    for cell_type, genes in markers.items():
        own = np.isin(adata.var_names, genes)
        others = np.isin(adata.var_names, np.concatenate([g for t, g in markers.items() if t != cell_type]))
        cells = labels == cell_type
        per_other_type = explanation[cells][:, others].sum(axis=1).mean() / (len(markers) - 1)
        ratios.append(explanation[cells][:, own].sum(axis=1).mean() / max(per_other_type, 1e-12))
    return ratios


@pytest.fixture
def share_on_markers() -> Callable[..., list[float]]:
    """``share_on_markers(explanation, adata, markers, labels)``: per planted type, the share of its
    cells' explanation on its own markers over the share on one other type's markers."""
    return _share_on_markers
