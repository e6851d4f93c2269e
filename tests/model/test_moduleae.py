"""ModuleAE on simulated data with planted gene modules."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA

import scsalient as ss
from scsalient._constants import ModuleAEKeys
from scsalient.model.moduleae import ModuleAEModule
from scsalient.model.moduleae._model import default_epochs

N_MODULES = 3
N_UNITS = 6
QUIET = {"enable_progress_bar": False, "enable_checkpointing": False}
#: 27 epochs of 8 minibatches are enough for this simulation (30 s of CPU); the default is 750
EPOCHS = 30


@pytest.fixture(scope="module")
def sim():
    # no cell-type signal: the planted structure is three gene modules with per-cell activity
    return ss.datasets.simulate(
        n_cells=1000,
        n_genes=200,
        n_cell_types=3,
        n_donors=2,
        marker_fold=1.0,
        n_modules=N_MODULES,
        module_size=20,
        module_fold=6.0,
        seed=4,
    )


def _train(sim, seed: int, **kwargs):
    adata = sim.copy()
    ss.model.ModuleAE.setup_anndata(adata)
    scvi.settings.seed = seed
    model = ss.model.ModuleAE(adata, n_latent=N_UNITS)
    model.train(max_epochs=EPOCHS, **QUIET, **kwargs)
    return model, adata


@pytest.fixture(scope="module")
def trained(sim):
    return _train(sim, seed=0)


def _matched_activity(sim, representation: np.ndarray) -> np.ndarray:
    """|Spearman| of each planted module with the component matched to it (Hungarian)."""
    activity = sim.obsm["simulation_module_activity"]
    rho = pd.DataFrame(np.hstack([activity, representation])).corr(method="spearman").to_numpy()
    rho = np.abs(np.nan_to_num(rho[:N_MODULES, N_MODULES:]))
    rows, cols = linear_sum_assignment(rho, maximize=True)
    return rho[rows, cols]


def test_units_track_planted_modules_at_least_as_well_as_pca(trained, sim):
    model, _ = trained
    latent = model.get_latent_representation()
    assert latent.shape == (sim.n_obs, N_UNITS) and latent.dtype == np.float32
    counts = sim.X.toarray()
    log_expression = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    pca = PCA(N_UNITS, random_state=0).fit_transform(log_expression)
    units, components = _matched_activity(sim, latent), _matched_activity(sim, pca)
    # measured: units 0.89, 0.90, 0.66 (mean 0.82); PCA 0.78, 0.43, 0.69 (mean 0.63). The
    # published network reached a mean of 0.13-0.38 on similar data
    assert units.mean() >= components.mean(), (units, components)
    assert units.min() > 0.5, units


def test_modules_recovered_against_distractors(trained, sim):
    model, adata = trained
    model.get_saliency()
    truth = sim.uns["simulation"]
    modules = truth["modules"]
    distractors = {f"markers_{t}": genes for t, genes in truth["markers"].items()}
    distractors["housekeeping"] = truth["housekeeping"]
    # 6 units for 3 modules: two units share a module's genes, which the separation check reports
    with pytest.warns(UserWarning, match="do not read separate gene programs"):
        ss.tl.gene_set_impact(adata, {**modules, **distractors}, min_genes=5)
    result = ss.metrics.module_recovery(adata.uns[ModuleAEKeys.UNS]["impact"], list(modules))
    assert result["unit"].nunique() == N_MODULES
    assert result["recovered"].all(), result


def test_units_are_alive_distinct_and_non_negative(trained):
    model, _ = trained
    latent = model.get_latent_representation()
    # standardised before the Softplus: no unit can end constant (dead)
    assert (latent.std(axis=0) > 0.2).all(), latent.std(axis=0)
    programs = model.get_programs()
    assert (programs.to_numpy() >= 0).all()
    saliency = model.get_saliency().to_numpy()
    correlation = np.corrcoef(saliency.T)[np.triu_indices(N_UNITS, 1)]
    # measured -0.12 on average; the published network's guided saliency: 0.4 on similar data
    assert correlation.mean() < 0.1, correlation


def test_units_are_stable_across_seeds(trained, sim):
    model, _ = trained
    other, _ = _train(sim, seed=1)
    assert not np.array_equal(model.train_indices, other.train_indices)  # another split
    matched = ss.metrics.matched_unit_correlation(model.get_saliency(), other.get_saliency())
    # measured 0.96-0.99 per unit; the published network: about 0.4 on Kang et al. PBMCs
    assert matched.min() > 0.9, matched


def test_initialisation_is_deterministic_and_from_the_data(sim):
    counts = torch.as_tensor(sim.X[:300].toarray())
    starts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        module = ModuleAEModule(sim.n_vars, n_latent=5)
        module.initialize_(counts)
        starts.append(module.programs.detach().clone())
    torch.testing.assert_close(starts[0], starts[1])
    programs = starts[0]
    assert (programs >= 0).all() and (programs.sum(dim=1) > 0).all()
    # units 0 and 1 split the first principal axis into its positive and negative genes
    assert not ((programs[0] > 0) & (programs[1] > 0)).any()
    frequency = (counts / counts.sum(dim=1, keepdim=True)).mean(dim=0)
    torch.testing.assert_close(module.gene_offset.detach().exp(), frequency.clamp_min(1e-8))


def test_training_runs_the_default_number_of_steps(sim):
    assert default_epochs(1000, 0.9, None, 128) == 750  # 900 cells: 8 steps per epoch, 6000 steps
    assert default_epochs(8684, 0.9, None, 128) == 97  # Kang et al. PBMCs
    assert default_epochs(1_000_000, 0.9, None, 128) == 20  # at least 20 epochs
    assert default_epochs(50, 0.9, None, 128) == 1000  # at most 1000
    adata = sim[:200].copy()
    ss.model.ModuleAE.setup_anndata(adata)
    model = ss.model.ModuleAE(adata, n_latent=3)
    model.train(max_epochs=3, **QUIET)
    assert len(model.history["train_loss"]) == 3
    for key in (
        "train_loss",
        "validation_loss",
        "reconstruction_loss_train",
        "reconstruction_loss_validation",
    ):
        assert key in model.history
    validation = model.history["validation_loss"].to_numpy(dtype=float).ravel()
    assert np.isfinite(validation).all() and (validation > 0).all()  # a true NLL, log(x!) included


def test_history_loss_falls(trained):
    model, _ = trained
    validation = model.history["reconstruction_loss_validation"].to_numpy(dtype=float).ravel()
    assert len(validation) == EPOCHS and validation[-1] < validation[0]


def test_saliency_equals_autograd_gradients(trained):
    model, adata = trained
    module = model.module
    x = torch.as_tensor(adata.X[:5].toarray())
    h = module.prepare_input(x)
    jacobian = torch.func.vmap(torch.func.jacrev(lambda row: module.encode(row[None])[0]))(h)
    analytic = module.activity_slope(h)[:, :, None] * module.programs[None]  # cells x units x genes
    torch.testing.assert_close(analytic, jacobian.detach(), rtol=1e-4, atol=1e-7)
    expected = jacobian.abs().mean(dim=0).T.detach().numpy()
    got = model.get_saliency(indices=np.arange(5))
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-4, atol=1e-8)


def test_saliency_is_stored_and_averages_over_groups(trained):
    model, adata = trained
    saliency = model.get_saliency(indices=np.arange(300), groupby="cell_type", batch_size=64)
    assert saliency.shape == (adata.n_vars, N_UNITS) and (saliency.to_numpy() >= 0).all()
    pd.testing.assert_frame_equal(adata.varm[ModuleAEKeys.SALIENCY], saliency)
    record = adata.uns[ModuleAEKeys.UNS]
    assert record["saliency_params"] == {"n_cells": 300, "groupby": "cell_type"}
    groups = record["group_saliency"]
    sizes = adata.obs["cell_type"].iloc[:300].value_counts()
    weighted = sum(groups[g].to_numpy() * sizes[g] for g in groups) / 300
    np.testing.assert_allclose(weighted, saliency.to_numpy(), rtol=1e-5)
    # a unit is more salient in the cells where it is more active
    latent = model.get_latent_representation()
    high = latent[:, 0] > np.median(latent[:, 0])
    adata.obs["half"] = np.where(high, "high", "low")
    model.get_saliency(groupby="half")
    halves = adata.uns[ModuleAEKeys.UNS]["group_saliency"]
    assert (halves["high"]["unit_0"] >= halves["low"]["unit_0"]).all()
    assert halves["high"]["unit_0"].sum() > halves["low"]["unit_0"].sum()


def test_save_load_roundtrip(trained, tmp_path):
    model, adata = trained
    before = model.get_latent_representation()
    model.save(tmp_path / "m", overwrite=True)
    loaded = ss.model.ModuleAE.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), before, rtol=1e-6)
    pd.testing.assert_frame_equal(loaded.get_programs(), model.get_programs())
    without_data = ss.model.ModuleAE.load(tmp_path / "m", adata=False)
    assert without_data.module.n_latent == N_UNITS


def test_loading_a_model_of_the_published_architecture_is_a_clear_error(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "model.json"
    content = json.loads(path.read_text())
    kwargs = content["attributes"]["init_params_"]["non_kwargs"]
    kwargs.update({"n_hidden": 128, "lambda_orthogonal": 0.05})  # what earlier versions saved
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"another version of ModuleAE.*n_hidden"):
        ss.model.ModuleAE.load(tmp_path / "m", adata=adata)


def test_query_with_permuted_genes(trained):
    model, adata = trained
    query = adata[:50, adata.var_names[::-1]].copy()
    expected = model.get_latent_representation(indices=np.arange(50))
    np.testing.assert_allclose(model.get_latent_representation(query), expected, rtol=1e-5)


def test_rejects_non_count_data(sim):
    adata = sim[:100].copy()
    adata.X = sparse.csr_matrix(np.log1p(adata.X.toarray()))
    with pytest.raises(ValueError, match="needs raw counts"):
        ss.model.ModuleAE.setup_anndata(adata)
    adata.X = -sim[:100].X.toarray()
    with pytest.raises(ValueError, match="negative"):
        ss.model.ModuleAE.setup_anndata(adata)


def test_bad_hyperparameters(sim):
    adata = sim[:100].copy()
    ss.model.ModuleAE.setup_anndata(adata)
    for n_latent in (0, 2.5):
        with pytest.raises(ValueError, match="n_latent must be a positive integer"):
            ss.model.ModuleAE(adata, n_latent=n_latent)
    with pytest.raises(TypeError, match="n_hidden"):
        ss.model.ModuleAE(adata, n_hidden=16)  # no hidden layer any more
    model = ss.model.ModuleAE(adata, n_latent=4)
    with pytest.raises(ValueError, match="batch_size must be an integer of at least 2"):
        model.train(max_epochs=1, batch_size=1)
    with pytest.raises(TypeError, match="optimizer"):
        model.train(max_epochs=1, optimizer="paper")  # the published single-cell SGD is gone


def test_minibatch_of_one_cell_uses_running_statistics():
    module = ModuleAEModule(30, n_latent=4)
    module.initialize_(torch.poisson(torch.full((20, 30), 3.0)))
    module.train()
    z = module.encode(module.prepare_input(torch.poisson(torch.full((1, 30), 3.0))))
    assert z.shape == (1, 4) and torch.isfinite(z).all()


def test_sample_gives_counts(trained):
    model, adata = trained
    tensors = {"X": torch.as_tensor(adata.X[:4].toarray())}
    draws = model.module.sample(tensors, n_samples=2)
    assert draws.shape == (2, 4, adata.n_vars)
    assert torch.equal(draws, draws.round()) and (draws >= 0).all()


def test_module_is_pure_torch():
    module = ModuleAEModule(30, n_latent=4)
    x = torch.poisson(torch.full((8, 30), 3.0))
    module.initialize_(x)
    inference, generative, loss = module({"X": x})
    assert inference["z"].shape == (8, 4) and generative["rate"].shape == (8, 30)
    torch.testing.assert_close(generative["rate"].sum(dim=1), x.sum(dim=1))  # rates keep the library size
    assert loss.loss.ndim == 0 and loss.reconstruction_loss["reconstruction_loss"].shape == (8,)
    module.programs.data -= 1.0
    module.project_()
    assert (module.programs >= 0).all()
