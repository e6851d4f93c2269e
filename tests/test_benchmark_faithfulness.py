"""Deletion and insertion curves of the faithfulness benchmark, on a linear model of known contributions."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from faithfulness import (
    K_MAX,
    curve_area,
    perturbation_curves,
    short_explanations,
    signed_gradient_x_input,
    top_k_order,
)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def linear_model():
    """A 3-class linear softmax model on 60 genes, and 200 cells with sparse positive expression."""
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 1, size=(60, 3))
    x = rng.gamma(1.0, 1.0, size=(200, 60)) * (rng.random((200, 60)) < 0.5)

    def predict_proba(values):
        return _softmax(values @ weights)

    target = predict_proba(x).argmax(axis=1)
    exact = x * weights[:, target].T  # each gene's exact contribution to the predicted logit
    return predict_proba, x, target, exact


def test_exact_contributions_beat_random_and_their_reverse(linear_model):
    predict_proba, x, target, exact = linear_model
    ks = (1, 2, 5, 10, 20)
    areas = {}
    for name, scores, seed in (("exact", exact, 0), ("random", np.zeros_like(x), 1), ("reverse", -exact, 0)):
        deletion, insertion = perturbation_curves(
            predict_proba, x, top_k_order(scores, x, 20, seed), target, ks
        )
        areas[name] = (curve_area(deletion, ks), curve_area(insertion, ks))
    # deletion: removing the genes that argue most for the class lowers its probability fastest
    assert areas["exact"][0] < areas["random"][0] - 0.1
    assert areas["random"][0] < areas["reverse"][0]
    # insertion: putting them back first raises it fastest
    assert areas["exact"][1] > areas["random"][1] + 0.1
    assert areas["random"][1] > areas["reverse"][1]


def test_curves_match_a_direct_computation(linear_model):
    predict_proba, x, target, exact = linear_model
    order = top_k_order(exact, x, 10)
    deletion, insertion = perturbation_curves(predict_proba, x, order, target, (1, 3, 10))
    i = 7
    kept = x[i].copy()
    kept[order[i, :3]] = 0.0
    only = np.zeros_like(x[i])
    only[order[i, :3]] = x[i, order[i, :3]]
    assert deletion[i, 1] == pytest.approx(predict_proba(kept[None])[0, target[i]])
    assert insertion[i, 1] == pytest.approx(predict_proba(only[None])[0, target[i]])
    # every k from 1 to 10 by default
    assert perturbation_curves(predict_proba, x[:5], order[:5], target[:5])[0].shape == (5, 10)


def test_top_k_order_breaks_ties_with_expressed_genes_first():
    x = np.array([[0.0, 2.0, 0.0, 1.0, 3.0, 0.0]])
    scores = np.array([[0.0, 0.0, 0.0, 0.0, 0.5, 0.0]])  # a sparse explanation: one gene
    order = top_k_order(scores, x, 3, seed=0)[0]
    assert order[0] == 4
    assert set(order[1:]) == {1, 3}


def test_curve_area_is_the_trapezoid_over_the_normalised_k_axis():
    curve = np.array([[1.0, 0.5, 0.0], [1.0, 0.5, 0.0]])
    assert curve_area(curve) == pytest.approx(0.5)
    # k = 1, 10, 100: the first segment covers 9/99 of the axis
    assert curve_area(curve, (1, 10, 100)) == pytest.approx(9 / 99 * 0.75 + 90 / 99 * 0.25)


def test_perturbation_curves_refuse_unordered_ks(linear_model):
    predict_proba, x, target, exact = linear_model
    order = top_k_order(exact, x, 10)
    with pytest.raises(ValueError, match="increasing"):
        perturbation_curves(predict_proba, x, order, target, (5, 2))
    with pytest.raises(ValueError, match="increasing"):
        perturbation_curves(predict_proba, x, order, target, (1, 11))


def test_signed_gradient_x_input_is_the_stored_attribution_before_its_positive_part():
    """The benchmark's signed row is what SCTAB's stored attributions are cut from, not a variant."""
    import scvi

    import scsalient as ss

    scvi.settings.seed = 0
    adata = ss.datasets.simulate(n_cells=300, n_genes=150, n_cell_types=3, marker_fold=4.0, seed=3)
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type")
    model = ss.model.SCTAB(adata, n_ensemble=2)
    model.train(max_epochs=3, enable_progress_bar=False)
    signed = signed_gradient_x_input(model, adata)
    assert (signed < 0).any() and (signed > 0).any()  # genes argue both ways
    positive = np.clip(signed, 0.0, None)
    shares = positive / positive.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(shares, model.get_attributions(dense=True), atol=1e-5)


def test_short_explanations_lists_only_explanations_that_score_few_genes():
    def curves(scored):
        return {"median_scored_genes": scored, "median_expressed_genes": 103.0}

    record = {
        "datasets": {
            "mop": {
                "models": {
                    "SCTAB": {
                        "explanations": {
                            "sctab_attribution": curves(53.0),
                            "sctab_gxi_signed": curves(float(K_MAX)),
                            "random": curves(12.0),
                            "sctab_mask": {"deletion_auc": 0.2},  # recorded before the count existed
                        }
                    }
                }
            }
        }
    }
    (paragraph, blank) = short_explanations(record)
    assert blank == ""
    listed = paragraph.split("where recorded: ")[1]
    assert listed == "mop SCTAB attributions (default, annotate; get_attributions): 53 (of 103 expressed)."
    record["datasets"]["mop"]["models"]["SCTAB"]["explanations"]["sctab_attribution"] = curves(100.0)
    assert short_explanations(record) == []
