from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scsalient.metrics import precision_at_k, precision_at_k_per_group


def test_precision_at_k_counts_hits_in_the_top_k():
    ranked = ["CD3E", "ACTB", "CD3D", "GAPDH", "CD3G"]
    truth = {"CD3D", "CD3E", "CD3G"}
    assert precision_at_k(ranked, truth, k=1) == 1.0
    assert precision_at_k(ranked, truth, k=2) == 0.5
    assert precision_at_k(ranked, truth, k=4) == 0.5
    assert precision_at_k(ranked, truth, k=5) == pytest.approx(3 / 5)
    # the denominator stays k when the list is shorter
    assert precision_at_k(ranked, truth, k=10) == pytest.approx(3 / 10)
    assert precision_at_k(ranked, [], k=3) == 0.0


def test_precision_at_k_duplicates_and_case():
    assert precision_at_k(["CD3E", "CD3E", "CD3D"], {"CD3E", "CD3D"}, k=2) == 1.0
    assert precision_at_k(["Cd3e", "Cd3d"], {"CD3E"}, k=2) == 0.0
    assert precision_at_k(["Cd3e", "Cd3d"], {"CD3E"}, k=2, case_sensitive=False) == 0.5


def test_precision_at_k_validates_input():
    with pytest.raises(ValueError, match="k"):
        precision_at_k(["A"], {"A"}, k=0)
    with pytest.raises(TypeError, match="not a string"):
        precision_at_k("CD3E", {"CD3E"})


def test_precision_per_group_matches_planted_truth():
    rng = np.random.default_rng(0)
    truth = {group: [f"{group}{i}" for i in range(10)] for group in "ABC"}
    ranked = {}
    for n_hits, group in zip([10, 5, 0], "ABC", strict=True):
        genes = truth[group][:n_hits] + [f"noise{group}{i}" for i in range(10 - n_hits)]
        ranked[group] = list(rng.permutation(genes))
    result = precision_at_k_per_group(ranked, truth, k=10)
    assert result.to_dict() == {"A": 1.0, "B": 0.5, "C": 0.0}
    assert result.name == "precision_at_10"
    as_frame = precision_at_k_per_group(pd.DataFrame(ranked), {**truth, "D": ["x"]}, k=10)
    pd.testing.assert_series_equal(as_frame, result)
    with pytest.raises(ValueError, match="No group"):
        precision_at_k_per_group(ranked, {"Z": ["A0"]})
