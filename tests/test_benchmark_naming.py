"""The naming benchmark's per-dataset marker species and its merge with an earlier invocation."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from naming import DATASETS, check_nothing_lost, database, merge_record

RULE = {"query": "likelihood_unweighted", "min_margin": 3.0, "min_overlap": 3}
SETTINGS = {
    "budget": "full",
    "seed": 0,
    "epochs": 30,
    "max_cells": 3000,
    "default_rule": {"min_margin": 3.0, "min_overlap": 2},
}


def _record(datasets: dict[str, int], rule: dict | None = RULE) -> dict:
    """A naming record whose datasets each hold one table row with ``correct`` set to the value."""
    return {
        "benchmark": "naming",
        **copy.deepcopy(SETTINGS),
        "chosen_rule": None if rule is None else {**rule, "objective": 6},
        "table": [{"dataset": name, "method": "nact", "correct": value} for name, value in datasets.items()],
        "clusters": {
            name: {"nact": [{"cluster": "0", "name": str(value)}]} for name, value in datasets.items()
        },
        "datasets": {name: {"n_clusters": value, "grid": {}} for name, value in datasets.items()},
    }


def test_merge_keeps_the_datasets_not_rerun():
    previous = _record({"pbmc_kang_stim": 1, "pancreas_xin": 2})
    fresh = _record({"mop_snareseq2": 7, "pancreas_xin": 5})
    merged = merge_record(fresh, previous, Path("naming.json"))
    correct = {row["dataset"]: row["correct"] for row in merged["table"]}
    assert correct == {"pbmc_kang_stim": 1, "pancreas_xin": 5, "mop_snareseq2": 7}
    assert len(merged["table"]) == 3
    # one record and one cluster table per dataset, in the benchmark's dataset order
    assert list(merged["datasets"]) == ["pbmc_kang_stim", "pancreas_xin", "mop_snareseq2"]
    assert list(merged["clusters"]) == list(merged["datasets"])
    assert merged["clusters"]["pancreas_xin"]["nact"][0]["name"] == "5"
    assert merged["kept_from_earlier_run"] == ["pbmc_kang_stim"]


def test_merge_refuses_other_settings():
    previous = _record({"pbmc_kang_stim": 1})
    previous["budget"] = "quick"
    with pytest.raises(SystemExit, match="budget='quick' there, 'full' here"):
        merge_record(_record({"mop_snareseq2": 7}), previous, Path("naming.json"))


def test_merge_refuses_another_chosen_rule():
    previous = _record({"pbmc_kang_stim": 1})
    fresh = _record({"mop_snareseq2": 7}, rule={**RULE, "min_margin": 1.0})
    with pytest.raises(SystemExit, match="margin rule chosen now"):
        merge_record(fresh, previous, Path("naming.json"))
    # a run without the selection datasets has no rule of its own to compare
    with pytest.raises(SystemExit, match="margin rule chosen now"):
        merge_record(_record({"mop_snareseq2": 7}, rule=None), previous, Path("naming.json"))


def test_a_subset_run_does_not_drop_other_datasets(tmp_path):
    path = tmp_path / "naming.json"
    path.write_text(json.dumps(_record({"pbmc_kang_stim": 1, "pancreas_xin": 2})))
    with pytest.raises(SystemExit, match=r"1 dataset\(s\) this invocation does not run \(pancreas_xin\)"):
        check_nothing_lost(path, ["pbmc_kang_stim", "mop_snareseq2"])
    check_nothing_lost(path, ["pbmc_kang_stim", "pancreas_xin", "mop_snareseq2"])
    check_nothing_lost(tmp_path / "absent.json", ["mop_snareseq2"])


def test_mop_is_named_with_mouse_brain_markers(shared_data):
    mouse = database(DATASETS["mop_snareseq2"])
    assert {"Astrocytes", "Microglia", "Oligodendrocytes", "Interneurons", "Pericytes"} <= set(
        mouse["cell_type"]
    )
    assert "T cells" not in set(mouse["cell_type"])
    assert "Gfap" in set(mouse["gene"]) and "GFAP" not in set(mouse["gene"])  # mouse symbol style
    human = database(DATASETS["pbmc_kang_stim"])
    assert "CD3E" in set(human["gene"]) and "Astrocytes" not in set(human["cell_type"])
