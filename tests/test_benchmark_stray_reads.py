"""The marker benchmark's measure of how much of a per-cell explanation a stray read captures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from stray_reads import markdown_lines, single_count_share, stray_marker_share, stray_read_record

SYMBOLS = pd.Series(["CD14", "LYZ", "CD3E", "IL7R"], index=["g0", "g1", "g2", "g3"])
# cells 0-1: T cells, cell 0 with one stray CD14 count; cells 2-3: monocytes
COUNTS = sparse.csr_matrix(
    np.array(
        [
            [1, 0, 5, 3],
            [0, 0, 4, 2],
            [6, 9, 0, 0],
            [3, 1, 0, 0],
        ],
        dtype=np.float32,
    )
)
LABELS = pd.Series(["CD4 T cells", "CD4 T cells", "CD14+ Monocytes", "CD14+ Monocytes"])


def test_single_count_share_against_an_even_spread():
    explanation = np.array(
        [[0.5, 0, 0.25, 0.25], [0, 0, 0.5, 0.5], [0.5, 0.5, 0, 0], [0.2, 0.8, 0, 0]], dtype=np.float32
    )
    result = single_count_share(COUNTS, explanation)
    # single-count genes: cell 0 CD14 (0.5), cell 3 LYZ (0.8); the others none
    assert np.isclose(result["explanation_share_on_single_count_genes"], (0.5 + 0 + 0 + 0.8) / 4)
    # of the detected genes, cell 0: 1 of 3, cell 3: 1 of 2 have a single count
    assert np.isclose(result["single_count_share_of_detected_genes"], (1 / 3 + 0 + 0 + 1 / 2) / 4)
    assert result["n_cells"] == 4


def test_stray_marker_share_in_stray_and_marked_cells():
    explanation = np.array(
        [[0.6, 0, 0.3, 0.1], [0, 0, 0.5, 0.5], [0.3, 0.7, 0, 0], [0.5, 0.5, 0, 0]], dtype=np.float32
    )
    case = stray_marker_share(COUNTS, explanation, LABELS, SYMBOLS, "CD4 T cells", "CD14", "CD14+ Monocytes")
    assert case["n_stray_cells"] == 1 and np.isclose(case["share_in_stray_cells"], 0.6)
    assert case["median_rank_in_stray_cells"] == 1  # the stray read leads cell 0's explanation
    assert np.isclose(case["even_spread_share_in_stray_cells"], 1 / 3)
    assert case["n_marked_cells"] == 2 and np.isclose(case["share_in_marked_cells"], 0.4)
    # a marker absent from the panel, or no qualifying cells, gives no case
    assert stray_marker_share(COUNTS, explanation, LABELS, SYMBOLS, "CD4 T cells", "GNLY", "NK cells") is None
    assert (
        stray_marker_share(COUNTS, explanation, LABELS, SYMBOLS, "B cells", "CD14", "CD14+ Monocytes") is None
    )


def test_record_takes_sparse_explanations_and_writes_both_tables():
    explanation = sparse.csr_matrix(
        np.array([[0.6, 0, 0.3, 0.1], [0, 0, 0.5, 0.5], [0.3, 0.7, 0, 0], [0.5, 0.5, 0, 0]], dtype=np.float32)
    )
    record = stray_read_record(COUNTS, explanation, LABELS, SYMBOLS)
    # CD14 and LYZ cases: only CD14 has a T cell with a single count
    assert [case["marker"] for case in record["cases"]] == ["CD14"]
    lines = markdown_lines({"model": record})
    assert any("one CD14 count in CD4 T cells" in line for line in lines)
    assert any(line.startswith("| model | 0.") for line in lines)
