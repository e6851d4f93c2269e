"""SCTAB on simulated data with planted cell types, markers and donors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from sklearn.metrics import f1_score, roc_auc_score

import scsalient as ss
from scsalient._constants import SCTABKeys
from scsalient.model.base import _blocks

N_TYPES = 4
N_MEMBERS = 3
SRC = Path(ss.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim():
    return ss.datasets.simulate(
        n_cells=1200,
        n_genes=400,
        n_cell_types=N_TYPES,
        n_donors=3,
        marker_fold=4.0,
        library_size=1500,
        seed=1,
    )


@pytest.fixture(scope="module")
def trained(sim):
    import scvi

    scvi.settings.seed = 0
    adata = sim.copy()
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type", batch_key="donor")
    model = ss.model.SCTAB(adata, n_ensemble=N_MEMBERS)
    model.train(max_epochs=12, enable_progress_bar=False)
    model.annotate()
    return model, adata


def _thinned(adata, fraction: float, seed: int = 0):
    """The same cells with each count kept with probability ``fraction`` (a shallower library)."""
    x = sparse.csr_matrix(adata.X, copy=True)
    x.data = np.random.default_rng(seed).binomial(x.data.astype(np.int64), fraction).astype(np.float32)
    x.eliminate_zeros()
    keep = np.asarray(x.sum(axis=1)).ravel() > 0
    out = ad.AnnData(x[keep], obs=adata.obs[keep].copy(), var=adata.var[[]].copy())
    return out


def test_heldout_macro_f1_far_above_chance(trained):
    model, adata = trained
    held_out = model.validation_indices
    f1 = f1_score(
        adata.obs["cell_type"].to_numpy()[held_out], model.predict(indices=held_out), average="macro"
    )
    # chance is 0.25; measured 0.97-1.0
    assert f1 >= 0.9
    assert {"f1_macro_validation", "f1_macro_train", "ce_validation", "accuracy_validation"} <= set(
        model.history
    )


def test_masks_concentrate_on_planted_markers(trained, sim):
    model, adata = trained
    mean_mask = adata.varm[SCTABKeys.MASK_MEAN]
    markers = sim.uns["simulation"]["markers"]
    all_markers = np.concatenate(list(markers.values()))
    top = {t: mean_mask[t].sort_values(ascending=False).index[:10] for t in markers}
    # chance: 40 planted markers among 400 genes = 0.1 of the 10 top genes
    any_marker = np.mean([np.isin(top[t], all_markers).mean() for t in markers])
    assert any_marker >= 0.6
    # the mask mass on the planted markers is well above their 10% share of the genes
    # (measured 0.235 with the default, nearly dense masks of small data)
    mask = adata.obsm[SCTABKeys.MASK]
    on_markers = np.asarray(mask[:, np.isin(adata.var_names, all_markers)].sum(axis=1)).ravel()
    assert on_markers.mean() >= 0.18


def test_stored_explanation_points_at_the_predicted_types_markers(trained, sim, share_on_markers):
    """What annotate stores argues for the predicted class: its markers, not every type's alike."""
    model, adata = trained
    markers = sim.uns["simulation"]["markers"]
    predicted = adata.obs[SCTABKeys.PREDICTION].astype(str).to_numpy()
    stored = np.asarray(adata.obsm[SCTABKeys.MASK].todense())
    # measured 1,800-7,900 for the attributions; the feature masks, which select genes whichever
    # class they argue for, gave 1.3-2.0 (every cell expresses the other types' markers a little)
    assert min(share_on_markers(stored, adata, markers, predicted)) >= 20
    assert max(share_on_markers(model.get_masks(dense=True), adata, markers, predicted)) < 5
    # the salient genes of each type are its planted markers (the masks' gave none in the top 10)
    record = ss.tl.salient_genes(adata, "cell_type", attention_key=SCTABKeys.MASK, n_genes=10, inplace=False)
    names = pd.DataFrame(record["names"])
    assert np.mean([np.isin(names[t], markers[t]).mean() for t in markers]) >= 0.8


def test_attributions_are_the_stored_shares_over_expressed_genes(trained):
    model, adata = trained
    attributions = model.get_attributions(dense=True)
    assert attributions.shape == adata.shape and attributions.dtype == np.float32
    np.testing.assert_allclose(attributions.sum(axis=1), 1.0, rtol=1e-4)
    expressed = np.asarray(adata.X.todense() if sparse.issparse(adata.X) else adata.X) > 0
    assert np.all((attributions > 0) <= expressed)
    # annotate kept each cell's 100 largest shares of the same attributions
    stored = adata.obsm[SCTABKeys.MASK]
    rows, cols = stored.nonzero()
    np.testing.assert_allclose(np.asarray(stored[rows, cols]).ravel(), attributions[rows, cols], rtol=1e-4)
    # the mean explanation per predicted class is the attributions' mean, not the masks'
    first = adata.obs[SCTABKeys.PREDICTION].astype(str).to_numpy() == model.classes[0]
    np.testing.assert_allclose(
        adata.varm[SCTABKeys.MASK_MEAN][model.classes[0]].to_numpy(),
        attributions[first].mean(axis=0),
        atol=1e-5,
    )
    # the same cells through a query AnnData (inference mode, genes matched by name) give the same rows
    query = adata[:50, ::-1].copy()
    again = model.get_attributions(query, dense=True)
    np.testing.assert_allclose(again, attributions[:50], atol=1e-5)


def test_annotate_without_explanation_skips_the_backward_pass(trained, monkeypatch):
    model, adata = trained
    query = adata[:40].copy()
    del query.obsm[SCTABKeys.MASK], query.varm[SCTABKeys.MASK_MEAN]

    def refuse(*args, **kwargs):
        raise AssertionError("the attribution (a backward pass) was computed")

    monkeypatch.setattr(model.module, "attribution", refuse)
    model.annotate(query, explanation=False, latent=False)
    assert SCTABKeys.PREDICTION in query.obs
    assert SCTABKeys.MASK not in query.obsm and SCTABKeys.MASK_MEAN not in query.varm


def test_uncertainty_flags_wrong_predictions(trained):
    model, adata = trained
    query = _thinned(adata, 0.08)  # ~120 counts per cell: many cells become ambiguous
    model.annotate(query, explanation=False, latent=False)
    wrong = (
        query.obs[SCTABKeys.PREDICTION].astype(str).to_numpy()
        != query.obs["cell_type"].astype(str).to_numpy()
    )
    assert 0.05 < wrong.mean() < 0.6  # enough errors on both sides to score
    auroc = roc_auc_score(wrong, query.obs[SCTABKeys.UNCERTAINTY])
    assert auroc >= 0.7  # measured 0.8-0.9
    disagreement = query.obs[SCTABKeys.DISAGREEMENT].to_numpy()
    assert disagreement[wrong].mean() > disagreement[~wrong].mean()


def test_annotate_writes_documented_keys(trained):
    model, adata = trained
    for key in (SCTABKeys.PREDICTION, SCTABKeys.UNCERTAINTY, SCTABKeys.DISAGREEMENT):
        assert key in adata.obs
    probs = adata.obsm[SCTABKeys.PROBABILITIES]
    assert list(probs.columns) == list(model.classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(adata.obs[SCTABKeys.UNCERTAINTY], 1 - probs.max(axis=1), rtol=1e-5)
    assert set(np.unique(adata.obs[SCTABKeys.DISAGREEMENT] * N_MEMBERS).round(4)) <= {0.0, 1.0, 2.0, 3.0}
    assert adata.obsm[SCTABKeys.EMBEDDING].shape == (adata.n_obs, N_MEMBERS * 128)
    mask = adata.obsm[SCTABKeys.MASK]
    assert sparse.isspmatrix_csr(mask) and mask.shape == adata.shape and mask.dtype == np.float32
    # the 100 largest mask values of each cell are kept; the full masks sum to 1 per cell
    assert np.diff(mask.indptr).max() <= 100
    dense = model.get_masks(dense=True)
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, rtol=1e-4)
    kept = np.asarray(mask.sum(axis=1)).ravel()
    assert np.all(kept <= 1.0 + 1e-4) and kept.mean() > 0.5
    # masks only cover the genes a cell expresses
    assert np.all((dense > 0) <= (np.asarray(adata.X.todense() if sparse.issparse(adata.X) else adata.X) > 0))
    uns = adata.uns[SCTABKeys.UNS]
    assert uns["classes"] == list(model.classes) and uns["n_ensemble"] == N_MEMBERS
    assert uns["training"]["augment"] and uns["training"]["n_augmentation_vectors"] > 0


def test_save_load_roundtrip(trained, sim, tmp_path):
    model, _ = trained
    expected = model.predict(soft=True)
    model.save(tmp_path / "sctab", save_anndata=True)
    loaded = ss.model.SCTAB.load(tmp_path / "sctab")
    pd.testing.assert_frame_equal(loaded.predict(soft=True), expected)
    bare = ss.model.SCTAB.load(tmp_path / "sctab", adata=False)
    np.testing.assert_allclose(bare.predict(sim, soft=True).to_numpy(), expected.to_numpy(), atol=1e-6)
    assert bare.module.batch_shift.vectors.shape == model.module.batch_shift.vectors.shape
    assert bare.training_settings_ == model.training_settings_


def test_query_genes_reordered_and_missing(trained, sim):
    model, _ = trained
    reference = model.predict(sim)
    shuffled = sim[:, np.random.default_rng(0).permutation(sim.n_vars)].copy()
    np.testing.assert_array_equal(model.predict(shuffled), reference)
    keep = np.sort(np.random.default_rng(1).permutation(sim.n_vars)[: int(0.8 * sim.n_vars)])
    with pytest.warns(UserWarning, match=r"20\.0%.*filled with zeros"):
        model.annotate(sim[:, keep].copy(), latent=False)
    with pytest.raises(ValueError, match="at least 50%"):
        model.predict(sim[:, : int(0.4 * sim.n_vars)].copy())


def test_backed_training_reads_blocks_and_gives_the_same_kind_of_model(sim, tmp_path, monkeypatch):
    path = tmp_path / "sim.h5ad"
    sim[:800].copy().write_h5ad(path)
    reads = []
    original = _blocks._read_slice

    def spy(x, rows):
        reads.append((type(x).__name__, int(rows.max() - rows.min() + 1)))
        return original(x, rows)

    monkeypatch.setattr(_blocks, "_read_slice", spy)
    backed = ad.read_h5ad(path, backed="r")
    try:
        ss.model.SCTAB.setup_anndata(backed, labels_key="cell_type", batch_key="donor")
        model = ss.model.SCTAB(backed, n_ensemble=2, n_d=32, n_a=16)
        model.train(max_epochs=8, batch_size=128, block_size=64, buffer_blocks=4, enable_progress_bar=False)
        assert backed.isbacked
        # the file is read in slices, never whole: mostly one block of rows (training and
        # validation), at most a few blocks (augmentation centroids, prediction)
        disk_reads = [span for kind, span in reads if "Dataset" in kind]
        assert disk_reads and np.median(disk_reads) <= 64 and max(disk_reads) < backed.n_obs / 2
        held_out = model.validation_indices
        truth = backed.obs["cell_type"].to_numpy()[held_out]
        assert f1_score(truth, model.predict(indices=held_out), average="macro") >= 0.8
        model.annotate()
        assert backed.obsm[SCTABKeys.MASK].shape == backed.shape
        # the same model on the same cells in memory: same parameters, same outputs' form
        memory = sim[:800].copy()
        ss.model.SCTAB.setup_anndata(memory, labels_key="cell_type", batch_key="donor")
        in_memory = ss.model.SCTAB(memory, n_ensemble=2, n_d=32, n_a=16)
        # (the familiarity score is fitted after training, from disk too; untrained it is empty)
        assert model.module.familiarity.fitted
        fitted_after = ("batch_shift.vectors", "familiarity.")
        shapes = {k: v.shape for k, v in model.module.state_dict().items() if not k.startswith(fitted_after)}
        assert shapes == {
            k: v.shape for k, v in in_memory.module.state_dict().items() if not k.startswith(fitted_after)
        }
        torch.testing.assert_close(model.module.class_weights, in_memory.module.class_weights)
    finally:
        backed.file.close()


def test_block_dataset_shards_equal_batches_across_processes(sim, monkeypatch):
    adata = sim[:500].copy()
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type")
    manager = ss.model.SCTAB(adata, n_ensemble=1).adata_manager
    indices = np.arange(3, 497)
    seen = []
    for rank in range(3):
        monkeypatch.setattr(_blocks, "_rank_and_world", lambda rank=rank: (rank, 3))
        dataset = _blocks.BlockDataset(manager, indices, 32, shuffle=True, block_size=20, buffer_blocks=3)
        batches = list(dataset)
        seen.append([b["X"].shape[0] for b in batches])
        rows = torch.cat([b["labels"] for b in batches]).shape[0]
        assert rows <= len(indices) // 3 + 20
    assert len({len(s) for s in seen}) == 1  # the same number of steps on every process
    # without distribution, one pass yields every cell once, shuffled
    monkeypatch.setattr(_blocks, "_rank_and_world", lambda: (0, 1))
    dataset = _blocks.BlockDataset(manager, indices, 32, shuffle=True, block_size=20, buffer_blocks=3)
    x = torch.cat([b["X"] for b in dataset])
    assert x.shape[0] == len(indices)
    totals = np.sort(x.sum(dim=1).numpy())
    np.testing.assert_allclose(totals, np.sort(np.asarray(adata.X[indices].sum(axis=1)).ravel()))


DDP_SCRIPT = """
import sys, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
import scvi
import scsalient as ss

scvi.settings.seed = 0
adata = ss.datasets.simulate(n_cells=400, n_genes=150, n_cell_types=3, n_donors=2, marker_fold=6.0, seed=2)
ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type", batch_key="donor")
model = ss.model.SCTAB(adata, n_ensemble=2, n_d=16, n_a=8, n_independent=2, n_shared=1)
model.train(max_epochs=3, batch_size=64, accelerator="cpu", devices=2, strategy="ddp",
            enable_progress_bar=False, early_stopping=False)
if model.history:  # only rank 0 holds the history
    model.save(sys.argv[1], overwrite=True)
"""


#: variables that would make the child think it is already one process of a distributed run
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_ddp_training_on_two_cpu_processes(tmp_path):
    # Lightning re-executes the launching script once per process, so DDP runs in a script
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {k: v for k, v in os.environ.items() if k not in DDP_ENV}
    env.update(PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "model")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = ss.model.SCTAB.load(tmp_path / "model", adata=False)
    assert loaded.is_trained and len(loaded.history["f1_macro_validation"]) == 3
    adata = ss.datasets.simulate(
        n_cells=400, n_genes=150, n_cell_types=3, n_donors=2, marker_fold=6.0, seed=2
    )
    accuracy = (loaded.predict(adata) == adata.obs["cell_type"].to_numpy()).mean()
    assert accuracy > 0.6  # chance 0.33


def test_paper_preset_and_small_data_defaults(sim):
    adata = sim[:300].copy()
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type")
    model = ss.model.SCTAB(adata, n_ensemble=1, n_d=16, n_a=8)
    model.train(max_epochs=1, preset="paper", enable_progress_bar=False)
    settings = model.training_settings_
    assert (settings["lr"], settings["weight_decay"], settings["batch_size"], settings["lr_decay"]) == (
        0.005,
        0.05,
        2048,
        0.9,
    )
    assert settings["bn_momentum"] == 0.02
    assert not settings["augment"]
    model.train(max_epochs=1, enable_progress_bar=False)
    assert model.training_settings_["batch_size"] == 32  # 270 training cells: the smallest batch
    # about 1/32 of the training cells per batch (some 32 optimiser steps per epoch), 32 to 2048
    from scsalient.model.sctab._model import auto_training

    sizes = {n: auto_training(n)["batch_size"] for n in (270, 2_000, 7_060, 65_000, 5_000_000)}
    assert sizes == {270: 32, 2_000: 64, 7_060: 256, 65_000: 2048, 5_000_000: 2048}
    # weight decay 0.5 (chosen on MOp's inner split) up to 65,536 cells, then as 1 / cells down
    # to the published 0.05 at atlas scale
    decay = {n: auto_training(n)["weight_decay"] for n in (270, 7_060, 65_536, 131_072, 655_360, 5_000_000)}
    assert decay == pytest.approx(
        {270: 0.5, 7_060: 0.5, 65_536: 0.5, 131_072: 0.25, 655_360: 0.05, 5_000_000: 0.05}
    )
    assert model.training_settings_["weight_decay"] == 0.5
    full = ss.model.SCTAB(adata, n_ensemble=1, n_d=16, n_a=8)
    full.train(max_epochs=2, train_size=1.0, enable_progress_bar=False)  # no validation: no early stop
    assert len(full.history["train_loss"]) == 2 and "f1_macro_validation" not in full.history
    assert model.training_settings_["bn_momentum"] > 0.02


def test_bad_inputs_raise(sim):
    adata = sim[:200].copy()
    with pytest.raises(KeyError, match="batch_key 'nope'"):
        ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type", batch_key="nope")
    adata.obs["bad_donor"] = adata.obs["donor"].astype(object)
    adata.obs.iloc[0, adata.obs.columns.get_loc("bad_donor")] = np.nan
    with pytest.raises(ValueError, match="bad_donor.*missing"):
        ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type", batch_key="bad_donor")
    with pytest.raises(KeyError, match="labels_key"):
        ss.model.SCTAB.setup_anndata(adata, labels_key="nope")
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type")
    with pytest.raises(ValueError, match="n_ensemble"):
        ss.model.SCTAB(adata, n_ensemble=0)
    with pytest.raises(ValueError, match="gamma"):
        ss.model.SCTAB(adata, gamma=0.5)
    model = ss.model.SCTAB(adata, n_ensemble=1, n_d=8, n_a=8)
    with pytest.raises(ValueError, match="batch_key"):
        model.train(max_epochs=1, augment=True)
    with pytest.raises(ValueError, match="preset"):
        model.train(max_epochs=1, preset="fast")
    with pytest.raises(TypeError, match="average_epochs"):
        model.train(max_epochs=1, average_epochs=1)
    with pytest.raises(TypeError, match="label_smoothing.*removed"):
        model.train(max_epochs=1, plan_kwargs={"label_smoothing": 0.1})
    dense = sim[:50].copy()
    dense.X = dense.X.toarray()
    dense.X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        ss.model.SCTAB.setup_anndata(dense, labels_key="cell_type")


def test_training_from_a_zarr_store_reads_blocks(sim, tmp_path, monkeypatch):
    import zarr

    path = tmp_path / "sim.zarr"
    sim[:800].copy().write_zarr(path)
    group = zarr.open(path, mode="r")
    on_disk = ad.AnnData(
        X=ad.io.sparse_dataset(group["X"]),
        obs=ad.io.read_elem(group["obs"]),
        var=ad.io.read_elem(group["var"]),
    )
    reads = []
    original = _blocks._read_slice

    def spy(x, rows):
        reads.append((type(x).__name__, int(rows.max() - rows.min() + 1)))
        return original(x, rows)

    monkeypatch.setattr(_blocks, "_read_slice", spy)
    ss.model.SCTAB.setup_anndata(on_disk, labels_key="cell_type")
    model = ss.model.SCTAB(on_disk, n_ensemble=1, n_d=32, n_a=16)
    model.train(max_epochs=8, batch_size=128, block_size=64, buffer_blocks=4, enable_progress_bar=False)
    disk_reads = [span for kind, span in reads if "Dataset" in kind]
    assert disk_reads and np.median(disk_reads) <= 64 and max(disk_reads) < on_disk.n_obs / 2
    held_out = model.validation_indices
    truth = on_disk.obs["cell_type"].to_numpy()[held_out]
    assert f1_score(truth, model.predict(indices=held_out), average="macro") >= 0.8


@pytest.mark.parametrize("n_steps", [1, 3])
def test_masks_with_the_implicit_first_prior_are_tabnets(n_steps):
    # TabNet's prior starts at ones and is updated after every step; the module skips the ones
    # (and the update after the last step) to save memory: the masks, embeddings and gradients
    # must be those of the written-out recursion
    from entmax import entmax15

    from scsalient.model.base._components import MASKED_LOGIT

    torch.manual_seed(0)
    module = ss.model.sctab._module.SCTABModule(
        300, 4, n_members=2, n_d=8, n_a=8, n_steps=n_steps, virtual_batch_size=16
    ).train()
    x = torch.poisson(torch.rand(16, 300) * 2)
    views = ss.model.sctab._module.per_member(module.prepare_input(x), 2)

    def reference():
        expressed = views != 0
        a = module.initial_transformer(views)[..., module.n_d :]
        prior, embedding, importance = torch.ones_like(views), 0, 0
        for attentive, transformer in zip(module.attentive, module.step_transformers):
            logits = (attentive.bn(attentive.fc(a)) * prior).masked_fill(~expressed, MASKED_LOGIT)
            mask = entmax15(logits, dim=-1, k=attentive.k)
            prior = (module.gamma - mask) * prior
            out = transformer(mask * views)
            d = torch.relu(out[..., : module.n_d])
            embedding = embedding + d
            importance = importance + mask * d.sum(-1, keepdim=True)
            a = out[..., module.n_d :]
        return embedding, (importance / importance.sum(-1, keepdim=True) if n_steps > 1 else mask)

    def written():
        out = module.inference_from_views(views)
        return out["embedding"], out["mask"]

    results = []
    for run in (reference, written):
        module.zero_grad()
        embedding, mask = run()
        (embedding.sum() + (mask * torch.arange(300)).sum()).backward()
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        results.append((embedding.detach(), mask.detach(), grads))
    (e1, m1, g1), (e2, m2, g2) = results
    torch.testing.assert_close(e2, e1)
    torch.testing.assert_close(m2, m1)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a)


def test_mask_entropy_is_the_written_out_sum_with_its_gradient():
    from scsalient.model.sctab._module import mask_entropy

    g = torch.Generator().manual_seed(0)
    raw = torch.rand(2, 5, 7, generator=g, dtype=torch.float64)
    raw[raw < 0.4] = 0  # exact zeros, as entmax gives
    mask = (raw / raw.sum(-1, keepdim=True)).requires_grad_()
    weights = torch.tensor([0.3, -1.7], dtype=torch.float64)
    (mask_entropy(mask) * weights).sum().backward()
    ours = mask.grad.clone()
    mask.grad = None
    written = (mask * torch.log(mask + 1e-15)).sum(-1).mean(-1)
    (written * weights).sum().backward()
    torch.testing.assert_close(mask_entropy(mask.detach()), written.detach())
    torch.testing.assert_close(ours, mask.grad)
    assert torch.autograd.gradcheck(
        lambda m: mask_entropy(m, 1e-3), (mask.detach().clamp_min(0.01).requires_grad_(),)
    )


def test_wide_minibatches_run_in_parts_of_whole_ghost_batches():
    from scsalient.model.sctab._model import MAX_STEP_VALUES, micro_batch_size

    # the benchmark's largest reference (7,844 training cells: batches of 256) is never split
    assert micro_batch_size(256, 5, 40_000, 256) == 256
    # 100,000 cells x 25,000 genes, five members: batches of 2,048 in eight parts of 256
    assert micro_batch_size(2048, 5, 25_000, 256) == 256
    assert micro_batch_size(2048, 1, 25_000, 256) == 1024  # 1,024 x 25,000 fits under the cap
    assert 1024 * 25_000 <= MAX_STEP_VALUES < 2048 * 25_000
    assert micro_batch_size(2048, 5, 2_000, 256) == 2048  # narrow enough as it is
    assert micro_batch_size(1000, 5, 25_000, 256) == 1000  # 256 does not divide 1,000: not split
    assert micro_batch_size(2048, 5, 25_000, None) == 2048  # no ghost batches: not split


def test_parts_of_a_minibatch_give_its_gradient_and_statistics():
    # ghost batch norm normalises each 256 cells alone, so two parts of 256 (gradients averaged,
    # as Lightning's accumulation does) are the step of the 512-cell minibatch
    from scvi import REGISTRY_KEYS

    torch.manual_seed(0)
    whole = ss.model.sctab._module.SCTABModule(200, 3, n_members=2, n_d=8, n_a=8, virtual_batch_size=256)
    parts = ss.model.sctab._module.SCTABModule(200, 3, n_members=2, n_d=8, n_a=8, virtual_batch_size=256)
    parts.load_state_dict(whole.state_dict())
    x = torch.poisson(torch.rand(512, 200) * 2)
    y = torch.randint(0, 3, (512, 1))
    whole.train()({REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.LABELS_KEY: y})[2].loss.backward()
    parts.train()
    for rows in (slice(0, 256), slice(256, 512)):
        tensors = {REGISTRY_KEYS.X_KEY: x[rows], REGISTRY_KEYS.LABELS_KEY: y[rows]}
        (parts(tensors)[2].loss / 2).backward()
    for (name, a), b in zip(whole.named_parameters(), parts.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, a), b in zip(whole.named_buffers(), parts.buffers()):
        torch.testing.assert_close(b, a, msg=name)


def test_training_splits_wide_minibatches(sim, monkeypatch):
    from scsalient.model.sctab import _model

    monkeypatch.setattr(_model, "MAX_STEP_VALUES", 256 * 400)  # one member, 256 cells x 400 genes
    adata = sim.copy()
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type")
    model = ss.model.SCTAB(adata, n_ensemble=1)
    model.train(max_epochs=4, batch_size=512, enable_progress_bar=False)
    assert model.training_settings_["batch_size"] == 512
    assert model.training_settings_["cells_per_forward_pass"] == 256
    assert model.trainer.accumulate_grad_batches == 2
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    assert f1_score(truth, model.predict(), average="macro") > 0.8
    # a user's own accumulation is kept, with whole minibatches
    model.train(max_epochs=1, batch_size=512, accumulate_grad_batches=3, enable_progress_bar=False)
    assert model.trainer.accumulate_grad_batches == 3
    assert "cells_per_forward_pass" not in model.training_settings_
