"""Integrated gradients of NACT and SCTAB predictions (scsalient.tl._attributions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scsalient as ss
from scsalient.tl._attributions import integrated_gradients


@pytest.fixture(scope="module")
def sim():
    return ss.datasets.simulate(
        n_cells=300, n_genes=200, n_cell_types=3, n_donors=1, marker_fold=8.0, library_size=800, seed=3
    )


@pytest.fixture(scope="module")
def nact(sim):
    adata = sim.copy()
    ss.model.NACT.setup_anndata(adata, labels_key="cell_type")
    model = ss.model.NACT(adata, n_latent=8, attention_rank=8)
    model.train(max_epochs=5, enable_progress_bar=False)
    return model, adata


@pytest.fixture(scope="module")
def sctab(sim):
    adata = sim.copy()
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type")
    model = ss.model.SCTAB(adata, n_ensemble=2, n_d=8, n_a=8)
    model.train(max_epochs=2, enable_progress_bar=False)
    return model, adata


def _class_logit(model, adata, indices, classes):
    """F_c(x) - F_c(0) for the calibrated logit integrated gradients attribute."""
    module = model.module
    x = torch.as_tensor(
        np.asarray(adata.X[indices].toarray() if hasattr(adata.X, "toarray") else adata.X[indices])
    )
    with torch.no_grad():
        prepared = module.prepare_input(x.float())
        full = module.inference_from_views(prepared)["logits"]
        empty = module.inference_from_views(torch.zeros_like(prepared))["logits"]
    rows = np.arange(len(indices))
    return (full - empty).numpy()[rows, classes]


@pytest.mark.parametrize("fixture", ["nact", "sctab"])
def test_attributions_sum_to_the_logit_difference_from_the_empty_cell(fixture, request):
    model, adata = request.getfixturevalue(fixture)
    indices = np.arange(40)
    attributions = integrated_gradients(model, adata, indices, n_steps=64)
    predicted = model.predict(adata, indices=indices, soft=True).to_numpy().argmax(axis=1)
    expected = _class_logit(model, adata, indices, predicted)
    # completeness of integrated gradients, up to the error of the integration rule
    np.testing.assert_allclose(attributions.sum(axis=1), expected, rtol=0.05, atol=0.05)
    # genes a cell does not express get nothing
    x = adata.X[indices]
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    assert np.all(attributions[x == 0] == 0)


def test_attributions_of_a_named_class(nact):
    model, adata = nact
    indices = np.arange(20)
    soft = model.predict(adata, indices=indices, soft=True)
    predicted = soft.columns.to_numpy()[soft.to_numpy().argmax(axis=1)]
    np.testing.assert_allclose(
        integrated_gradients(model, adata, indices, classes=predicted),
        integrated_gradients(model, adata, indices),
        rtol=1e-5,
        atol=1e-6,
    )
    other = np.array([model.classes[(list(model.classes).index(c) + 1) % 3] for c in predicted])
    attributions = integrated_gradients(model, adata, indices, classes=other, n_steps=64)
    expected = _class_logit(model, adata, indices, [list(model.classes).index(c) for c in other])
    np.testing.assert_allclose(attributions.sum(axis=1), expected, rtol=0.05, atol=0.05)


def test_bad_input(nact):
    model, adata = nact
    with pytest.raises(TypeError, match="NACT and SCTAB"):
        integrated_gradients(object())
    with pytest.raises(ValueError, match="n_steps"):
        integrated_gradients(model, adata, n_steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        integrated_gradients(model, adata, batch_size=0)
    with pytest.raises(ValueError, match="classes must name"):
        integrated_gradients(model, adata, np.arange(3), classes=["no such type"] * 3)
    with pytest.raises(ValueError, match="classes must name"):
        integrated_gradients(model, adata, np.arange(3), classes=[model.classes[0]] * 2)
