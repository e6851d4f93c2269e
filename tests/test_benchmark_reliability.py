"""The annotation benchmark's reliability bins: recorded per run, pooled over seeds, drawn per task."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from report import pooled_reliability, write_reliability_figure
from run import trust_scores

from scsalient.metrics import expected_calibration_error, reliability_table


def _probabilities(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    classes = ["B", "NK", "T"]
    logits = rng.normal(size=(n, 3)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = np.asarray(classes)[rng.integers(0, 3, n)]
    return pd.DataFrame(probs, columns=classes), truth


def _run(seed: int, **extra) -> dict:
    probs, truth = _probabilities(seed)
    scores = trust_scores(truth, probs, known={"B", "NK", "T"})
    return {"status": "ok", "dataset": "toy", "system": "nact", "seed": seed, **scores, **extra}


def test_run_records_the_bins_behind_its_ece():
    probs, truth = _probabilities(0)
    record = trust_scores(truth, probs, known={"B", "NK", "T"})["reliability"]
    table = reliability_table(probs, truth)
    assert record["n_cells"] == table["n_cells"].tolist()
    assert sum(record["n_cells"]) == len(truth)
    filled = table["n_cells"] > 0
    np.testing.assert_allclose(
        np.array(record["accuracy"], dtype=float)[filled], table["accuracy"][filled], atol=1e-4
    )
    # the ECE recomputed from the recorded bins is the run's ECE
    n = np.array(record["n_cells"], dtype=float)
    gap = np.abs(np.array(record["accuracy"], dtype=float) - np.array(record["confidence"], dtype=float))
    ece = float(np.nansum(n * gap) / n.sum())
    assert abs(ece - expected_calibration_error(probs, truth)) < 1e-3


def test_bins_pool_over_seeds_weighted_by_cells():
    runs = [_run(0), _run(1)]
    pooled = pooled_reliability({"runs": runs}, "toy", "nact")
    a, b = (r["reliability"] for r in runs)
    np.testing.assert_array_equal(pooled["n_cells"], np.add(a["n_cells"], b["n_cells"]))
    i = int(np.argmax(pooled["n_cells"]))
    weighted = a["accuracy"][i] * a["n_cells"][i] + b["accuracy"][i] * b["n_cells"][i]
    expected = weighted / pooled["n_cells"][i]
    assert abs(pooled["accuracy"][i] - expected) < 1e-9
    empty = pooled["n_cells"] == 0
    assert np.isnan(pooled["accuracy"][empty]).all()


def test_figure_only_with_recorded_bins(tmp_path):
    old = {k: v for k, v in _run(0).items() if k != "reliability"}  # a run made before the bins
    results = {"runs": [old], "systems": {"nact": {}}, "datasets": {"toy": {}}}
    assert not write_reliability_figure(results, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    results["runs"].append(_run(1))
    assert write_reliability_figure(results, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 0
