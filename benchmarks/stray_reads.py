"""How much of a per-cell explanation a stray read captures, measured on real cells.

A gene with a single count in a cell is, in a droplet PBMC dataset, as often ambient RNA or a
mis-assigned read as real expression. An explanation that follows such reads names genes the
cell does not express. Two measurements on a dense per-cell explanation (rows = shares summing
to 1, columns = genes):

* the share of each cell's explanation on its genes with a single count, next to the share of
  its detected genes that have a single count (what an explanation spread evenly over the
  detected genes would give);
* the classic case: cells of one type with a stray read of another type's marker (CD4 T cells
  with one CD14 count): the marker's share of their explanation, against its share in the
  cells of the type it marks (CD14+ monocytes) and against an even spread over the cell's
  detected genes.

Used by ``markers.py`` on the explanations of the models it trains on Kang 2018 PBMCs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

#: (cell type with stray reads, marker gene symbol, cell type the marker marks)
STRAY_CASES = (
    ("CD4 T cells", "CD14", "CD14+ Monocytes"),
    ("CD4 T cells", "LYZ", "CD14+ Monocytes"),
    ("B cells", "GNLY", "NK cells"),
)


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.todense()) if sparse.issparse(matrix) else np.asarray(matrix)


def single_count_share(counts, explanation: np.ndarray) -> dict[str, float]:
    """Mean share of the explanation on each cell's single-count genes, and the even-spread share."""
    counts = sparse.csr_matrix(counts)
    single = counts.copy()
    single.data = (single.data == 1).astype(np.float32)
    detected = counts.copy()
    detected.data = (detected.data > 0).astype(np.float32)
    on_single = np.asarray(single.multiply(explanation).sum(axis=1)).ravel()
    n_single = np.asarray(single.sum(axis=1)).ravel()
    n_detected = np.maximum(np.asarray(detected.sum(axis=1)).ravel(), 1)
    totals = explanation.sum(axis=1)
    keep = totals > 0
    return {
        "explanation_share_on_single_count_genes": float(on_single[keep].mean()),
        "single_count_share_of_detected_genes": float((n_single / n_detected)[keep].mean()),
        "n_cells": int(keep.sum()),
    }


def stray_marker_share(
    counts,
    explanation: np.ndarray,
    labels: pd.Series,
    symbols: pd.Series,
    stray_type: str,
    marker: str,
    marked_type: str,
) -> dict[str, float] | None:
    """Share of the explanation on ``marker`` in ``stray_type`` cells with one count, and in ``marked_type``.

    ``None`` when the marker is not in the panel or no cell qualifies.
    """
    where = np.flatnonzero(symbols.to_numpy() == marker)
    if len(where) == 0:
        return None
    column = where[0]
    counts = sparse.csc_matrix(counts)
    marker_counts = _dense(counts[:, column]).ravel()
    detected = np.asarray((sparse.csr_matrix(counts) > 0).sum(axis=1)).ravel()
    labels = labels.astype(str).to_numpy()
    stray = (labels == stray_type) & (marker_counts == 1)
    marked = (labels == marked_type) & (marker_counts > 0)
    if not stray.any() or not marked.any():
        return None
    share = explanation[:, column]
    # rank of the marker among the cell's genes (1 = largest share)
    rank = (explanation[stray] > share[stray, None]).sum(axis=1) + 1
    return {
        "stray_type": stray_type,
        "marker": marker,
        "marked_type": marked_type,
        "n_stray_cells": int(stray.sum()),
        "share_in_stray_cells": float(share[stray].mean()),
        "median_rank_in_stray_cells": float(np.median(rank)),
        "even_spread_share_in_stray_cells": float((1.0 / detected[stray]).mean()),
        "n_marked_cells": int(marked.sum()),
        "share_in_marked_cells": float(share[marked].mean()),
        "even_spread_share_in_marked_cells": float((1.0 / detected[marked]).mean()),
    }


def stray_read_record(counts, explanation, labels: pd.Series, symbols: pd.Series) -> dict:
    """Both measurements for one explanation (dense or sparse, rows as shares)."""
    explanation = _dense(explanation).astype(np.float32)
    cases = [stray_marker_share(counts, explanation, labels, symbols, *case) for case in STRAY_CASES]
    return {"single_count": single_count_share(counts, explanation), "cases": [c for c in cases if c]}


def markdown_lines(records: dict[str, dict]) -> list[str]:
    """Tables of :func:`stray_read_record` results, one row per explanation (``records``: name -> record)."""
    lines = [
        "| explanation | share on single-count genes | single-count share of detected genes (even spread) |",
        "|---|---|---|",
    ]
    for name, record in records.items():
        single = record["single_count"]
        lines.append(
            f"| {name} | {single['explanation_share_on_single_count_genes']:.3f} | "
            f"{single['single_count_share_of_detected_genes']:.3f} |"
        )
    lines += [
        "",
        "| explanation | stray read | cells | marker's share (even spread) | median rank | "
        "share in the marked type (even spread) |",
        "|---|---|---|---|---|---|",
    ]
    for name, record in records.items():
        for case in record["cases"]:
            lines.append(
                f"| {name} | one {case['marker']} count in {case['stray_type']} | {case['n_stray_cells']} | "
                f"{case['share_in_stray_cells']:.4f} ({case['even_spread_share_in_stray_cells']:.4f}) | "
                f"{case['median_rank_in_stray_cells']:.0f} | {case['share_in_marked_cells']:.4f} "
                f"({case['even_spread_share_in_marked_cells']:.4f}) in {case['n_marked_cells']} "
                f"{case['marked_type']} |"
            )
    return lines
