"""The naming benchmark's per-dataset marker species and its merge with an earlier invocation."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from naming import BASELINES, DATASETS, check_nothing_lost, database, merge_record, summarise

RULE = {"margins": [0.0, 0.0], "min_overlap": 3}
SETTINGS = {
    "budget": "full",
    "seed": 0,
    "epochs": 30,
    "max_cells": 3000,
    "default_rule": {"min_margin": 3.0, "min_overlap": 3, "agreement_margin": 0.0},
}


def _record(datasets: dict[str, int], rule: dict | None = RULE) -> dict:
    """A naming record whose datasets each hold one table row with ``correct`` set to the value."""
    return {
        "benchmark": "naming",
        **copy.deepcopy(SETTINGS),
        "chosen_agreement": None if rule is None else {**rule, "objective": 6},
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
    fresh = _record({"mop_snareseq2": 7}, rule={**RULE, "margins": [1.0, 0.0]})
    with pytest.raises(SystemExit, match="agreement rule chosen now"):
        merge_record(fresh, previous, Path("naming.json"))
    # a run without the selection datasets has no rule of its own to compare
    with pytest.raises(SystemExit, match="agreement rule chosen now"):
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


def _run_with_counts(seed: int, nact: tuple[int, int, int], baseline: tuple[int, int, int]) -> dict:
    """A naming record of one dataset: N-ACT's and every baseline's (correct, wrong, unassigned)."""
    rows = []
    for scoring in ("strict", "lineage"):
        for method, counts in [
            ("nact", nact),
            ("nact_alone", nact),
            *((name, baseline) for name in BASELINES),
        ]:
            correct, wrong, unassigned = counts
            rows.append(
                {
                    "dataset": "pancreas_xin",
                    "method": method,
                    "scoring": scoring,
                    "correct": correct,
                    "wrong": wrong,
                    "unassigned": unassigned,
                }
            )
    return {
        **copy.deepcopy(SETTINGS),
        "seed": seed,
        "table": rows,
        "chosen_agreement": {**RULE, "objective": 1},
    }


def test_summarise_averages_seeds_and_counts_targets(tmp_path):
    (tmp_path / "naming.json").write_text(json.dumps(_run_with_counts(0, (5, 0, 1), (5, 1, 0))))
    (tmp_path / "naming_seed1.json").write_text(json.dumps(_run_with_counts(1, (3, 1, 2), (5, 1, 0))))
    summarise([tmp_path / "naming.json", tmp_path / "naming_seed1.json"], tmp_path)
    record = json.loads((tmp_path / "naming_seeds.json").read_text())
    assert record["seeds"] == [0, 1]
    nact = [row for row in record["totals"] if row["method"] == "nact" and row["scoring"] == "strict"]
    assert sorted(row["correct"] for row in nact) == [3, 5]
    met = {
        row["seed"]: row["met (five baselines)"] for row in record["targets"] if row["scoring"] == "strict"
    }
    assert met == {0: 1, 1: 0}  # seed 1: fewer right names than the baselines
    text = (tmp_path / "naming_seeds.md").read_text()
    assert "| nact " in text and "4.0 (3-5)" in text
    with pytest.raises(SystemExit, match="different seeds"):
        summarise([tmp_path / "naming.json", tmp_path / "naming.json"], tmp_path)
