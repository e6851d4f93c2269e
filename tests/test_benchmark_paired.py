"""The benchmark's per-cell labels and its paired bootstrap of macro-F1 differences."""

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from paired import _macro_f1, decode_labels, encode_labels, paired_difference


def _f1(truth, predicted):
    labels = np.unique(np.concatenate([truth, predicted]))
    return f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    classes = np.array(["B", "NK", "CD4 T", "Mono", "pDC"])
    truth = classes[rng.integers(0, 5, 400)]
    good = np.where(rng.random(400) < 0.9, truth, classes[rng.integers(0, 5, 400)])
    # a worse system that also predicts a class absent from the truth
    bad = np.where(rng.random(400) < 0.7, truth, "Mk")
    return truth, good, bad


def test_labels_round_trip(labels):
    truth, good, bad = labels
    stored = encode_labels(truth, bad)
    assert len(stored["truth"]) == len(truth) == len(stored["predicted"])
    back_truth, back_predicted = decode_labels(stored)
    np.testing.assert_array_equal(back_truth, truth)
    np.testing.assert_array_equal(back_predicted, bad)
    assert encode_labels(np.arange(70).astype(str), np.arange(70).astype(str)) is None


def test_weighted_macro_f1_is_scikit_learns_on_the_resample(labels):
    truth, _, bad = labels
    classes = np.unique(np.concatenate([truth, bad]))
    rows = np.random.default_rng(1).integers(0, len(truth), len(truth))
    weights = np.bincount(rows, minlength=len(truth))[None].astype(float)
    got = _macro_f1(np.searchsorted(classes, truth), np.searchsorted(classes, bad), len(classes), weights)
    assert got[0] == pytest.approx(_f1(truth[rows], bad[rows]))


def test_paired_difference_and_its_interval(labels):
    truth, good, bad = labels
    good_runs, bad_runs = [encode_labels(truth, good)], [encode_labels(truth, bad)]
    d = paired_difference(good_runs, bad_runs, n_resamples=300)
    assert d["difference"] == pytest.approx(_f1(truth, good) - _f1(truth, bad))
    assert 0 < d["low"] < d["difference"] < d["high"]
    same = paired_difference(good_runs, good_runs, n_resamples=50)
    assert same["difference"] == same["low"] == same["high"] == 0
    # two runs of one system: their mean macro-F1
    two = paired_difference([*good_runs, *bad_runs], bad_runs, n_resamples=50)
    assert two["difference"] == pytest.approx(d["difference"] / 2)
    with pytest.raises(ValueError, match="different test cells"):
        paired_difference(good_runs, [encode_labels(truth[::-1], bad)], n_resamples=10)
