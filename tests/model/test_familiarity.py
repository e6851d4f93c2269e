"""Cells of a type the reference lacks: the familiarity score and "Unassigned", for NACT and SCTAB.

One planted type of the simulator is left out of the reference; the query holds its cells and
unseen cells of the known types. Known-type cells are like the validation cells, so their
familiarity should be spread over (0, 1) (few under a small threshold), and the unseen type's
cells should sit at the bottom.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import scsalient as ss
from scsalient.metrics import unseen_type_auroc

UNSEEN = "type_3"
QUIET = {"enable_progress_bar": False}


@pytest.fixture(scope="module")
def split():
    # the simulator of the NACT tests: markers nearly on/off on a sparse-ish background
    sim = ss.datasets.simulate(
        n_cells=1200, n_genes=500, n_cell_types=4, n_donors=2, marker_fold=8.0, library_size=1500, seed=1
    )
    truth = sim.obs["cell_type"].astype(str).to_numpy()
    unseen = truth == UNSEEN
    even = np.arange(sim.n_obs) % 2 == 0
    return sim[~unseen & even].copy(), sim[unseen | ~even].copy()


@pytest.fixture(scope="module", params=["NACT", "SCTAB"])
def trained(request, split):
    reference, query = split
    cls = getattr(ss.model, request.param)
    cls.setup_anndata(reference, labels_key="cell_type")
    model = cls(reference)
    model.train(max_epochs=20, **QUIET)
    annotated = query.copy()
    model.annotate(annotated, min_confidence=None, min_familiarity=None, explanation=False, latent=False)
    is_unseen = annotated.obs["cell_type"].astype(str).to_numpy() == UNSEEN
    return model, annotated, is_unseen


def _familiarity(model, adata):
    return adata.obs[model._keys.FAMILIARITY].to_numpy()


def test_familiarity_singles_out_the_type_the_reference_lacks(trained):
    # measured (seed 1 simulator, 20 epochs): AUROC 0.95 (NACT) and 0.99 (SCTAB); under 0.05,
    # 74% / 97% of the unseen cells and 4% / 3% of the known ones
    model, annotated, is_unseen = trained
    familiarity = _familiarity(model, annotated)
    assert model.training_settings_["familiarity"] is True
    assert np.all((familiarity > 0) & (familiarity < 1))
    assert unseen_type_auroc(familiarity, is_unseen) >= 0.9
    assert (familiarity[is_unseen] < 0.05).mean() >= 0.5
    # known-type cells are like the validation cells: about 5% of them under 0.05, half under 0.5
    assert (familiarity[~is_unseen] < 0.05).mean() <= 0.1
    assert 0.25 <= (familiarity[~is_unseen] < 0.5).mean() <= 0.75


def test_min_familiarity_writes_unassigned(trained, split):
    model, annotated, _ = trained
    keys = model._keys
    adata = split[1].copy()
    # a third of this query is of the unseen type: annotate says that many cells are unfamiliar
    with pytest.warns(UserWarning, match=r"\d+% of the cells have a familiarity below 0.05"):
        model.annotate(adata, min_confidence=None, min_familiarity=0.05, explanation=False, latent=False)
    prediction = adata.obs[keys.PREDICTION].astype(str).to_numpy()
    low = _familiarity(model, adata) < 0.05
    assert low.any() and (prediction[low] == "Unassigned").all() and (prediction[~low] != "Unassigned").all()
    assert adata.uns[keys.UNS]["min_familiarity"] == 0.05
    # the familiarity is the same whatever the threshold
    np.testing.assert_allclose(_familiarity(model, adata), _familiarity(model, annotated))
    with pytest.raises(ValueError, match="min_familiarity"):
        model.annotate(split[1].copy(), min_familiarity=-0.1)
    # cells of the reference's types at the default threshold: few withheld, no warning
    known = split[1][split[1].obs["cell_type"].astype(str) != UNSEEN].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.annotate(known, explanation=False, latent=False)
    assert known.uns[keys.UNS]["min_familiarity"] == 1e-3
    withheld = known.obs[keys.PREDICTION].astype(str) == "Unassigned"
    assert withheld.mean() <= 0.02
    # the category exists only when a cell carries it
    assert ("Unassigned" in known.obs[keys.PREDICTION].cat.categories) == withheld.any()


def test_familiarity_is_saved_with_the_model(trained, split, tmp_path):
    model, annotated, _ = trained
    cls = type(model)
    model.save(tmp_path / "m")
    loaded = cls.load(tmp_path / "m", split[0].copy())
    again = split[1].copy()
    loaded.annotate(again, min_confidence=None, min_familiarity=None, explanation=False, latent=False)
    np.testing.assert_allclose(_familiarity(loaded, again), _familiarity(model, annotated), rtol=1e-5)

    # a model saved before the familiarity score existed: it loads, and has none
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    old = {k: v for k, v in weights.items() if not k.startswith("familiarity.")}
    assert len(old) < len(weights)
    save_file(old, str(tmp_path / "m" / "model.safetensors"))
    legacy = cls.load(tmp_path / "m", split[0].copy())
    query = split[1].copy()
    legacy.annotate(query, min_familiarity=0.5, explanation=False, latent=False)
    assert np.isnan(_familiarity(legacy, query)).all()
    assert "Unassigned" not in set(query.obs[model._keys.PREDICTION].astype(str))


@pytest.mark.parametrize("name", ["NACT", "SCTAB"])
def test_no_validation_cells_no_familiarity(name, split, tmp_path):
    reference = split[0][:300].copy()
    cls = getattr(ss.model, name)
    cls.setup_anndata(reference, labels_key="cell_type")
    model = cls(reference)
    model.train(max_epochs=1, train_size=1.0, **QUIET)
    assert model.training_settings_["familiarity"] is False
    assert model.module.familiarity.fitted is False
    model.annotate(reference, min_familiarity=0.5, explanation=False, latent=False)
    assert np.isnan(_familiarity(model, reference)).all()
    assert "Unassigned" not in set(reference.obs[model._keys.PREDICTION].astype(str))
    # an empty score saves and loads
    model.save(tmp_path / "m")
    assert cls.load(tmp_path / "m", reference.copy()).module.familiarity.fitted is False


def test_familiarity_of_a_class_absent_from_training():
    # a class with no training cell is never claimed; one regression per class present
    familiarity = ss.model.base.LatentFamiliarity()
    rng = np.random.default_rng(0)
    latent = np.vstack([rng.normal(-2, 1, (100, 4)), rng.normal(2, 1, (100, 4))])
    labels = np.repeat([0, 2], 100)
    familiarity.fit(latent, labels, 3, rng.normal(2, 1, (30, 4)))
    assert familiarity.intercept[1] < -1e3
    near, far = familiarity.score(np.array([[2.0] * 4, [40.0, -40.0, 40.0, -40.0]]))
    assert near > 0.2 and far < 0.01
    with pytest.raises(ValueError, match="2 validation cells"):
        familiarity.fit(latent, labels, 3, latent[:1])
    assert isinstance(familiarity.coef, torch.Tensor)
