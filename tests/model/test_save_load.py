"""Saving and loading every model: safe files only, identical outputs, genes matched by name."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from anndata import AnnData
from mudata import MuData
from safetensors.torch import load_file, save_file
from scvi.model.base import BaseModelClass

import scsalient as ss
from scsalient.model.base._save_load import from_json, to_json

QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}


# --------------------------------------------------------------------------------------------
# models (tiny, trained for an epoch or two)


@pytest.fixture(scope="module")
def rna():
    return ss.datasets.simulate(n_cells=300, n_genes=150, n_cell_types=3, n_donors=2, seed=0)


@pytest.fixture(scope="module")
def multiome():
    return ss.datasets.simulate(
        300, 150, n_cell_types=3, modalities="rna+atac", n_peaks=200, n_links=10, library_size=5000, seed=0
    )


@pytest.fixture(scope="module")
def nact(rna):
    """An NACT ensemble with batch-shift augmentation."""
    scvi.settings.seed = 0
    adata = rna.copy()
    ss.model.NACT.setup_anndata(adata, labels_key="cell_type", batch_key="donor")
    model = ss.model.NACT(adata, n_latent=8, attention_rank=8, n_ensemble=2)
    model.train(max_epochs=2, **QUIET)
    assert model.module.batch_shift.active
    return model, adata


@pytest.fixture(scope="module")
def distilled(nact):
    scvi.settings.seed = 0
    ensemble, adata = nact
    return ensemble.distill(max_epochs=1, **QUIET), adata


@pytest.fixture(scope="module")
def sctab(rna):
    scvi.settings.seed = 0
    adata = rna.copy()
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type", batch_key="donor")
    model = ss.model.SCTAB(adata, n_ensemble=2, n_d=8, n_a=8, n_shared=1, n_independent=1)
    model.train(max_epochs=2, **QUIET)
    assert model.module.batch_shift.active
    return model, adata


@pytest.fixture(scope="module")
def moduleae(rna):
    scvi.settings.seed = 0
    adata = rna.copy()
    ss.model.ModuleAE.setup_anndata(adata)
    model = ss.model.ModuleAE(adata, n_latent=4)
    model.train(max_epochs=2, **QUIET)
    return model, adata


@pytest.fixture(scope="module")
def translator(multiome):
    scvi.settings.seed = 0
    mdata = multiome.copy()
    ss.model.Translator.setup_mudata(mdata)
    model = ss.model.Translator(mdata, n_latent=8, n_hidden=16, n_ensemble=2)
    model.train(max_epochs=2, **QUIET)
    return model, mdata


MODELS = ["nact", "distilled", "sctab", "moduleae", "translator"]


def _outputs(model, data) -> dict[str, np.ndarray]:
    """Every read-out of ``model`` on ``data`` (given as a query)."""
    if isinstance(model, ss.model.Translator):
        return {
            "atac": model.translate(data, to="atac").X,
            "rna": model.translate(data, to="rna").X,
            "latent": model.get_latent_representation(data, "atac"),
        }
    if isinstance(model, ss.model.ModuleAE):
        return {"latent": model.get_latent_representation(data)}
    out = {"probabilities": model.predict(data, soft=True).to_numpy()}
    if isinstance(model, ss.model.NACT):
        out["attention"] = model.get_attention(data, dense=True)
    return out


def _assert_same_outputs(model, data, expected) -> None:
    got = _outputs(model, data)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def _features(model) -> dict[str, list[str]]:
    if isinstance(model, ss.model.Translator):
        return {m: list(model.var_names(m)) for m in ("rna", "atac")}
    return {"genes": [str(g) for g in model.get_var_names()]}


def _assert_same_model(loaded, model) -> None:
    """Same weights and buffers, features, settings, history and data split."""
    assert type(loaded) is type(model)
    original = model.module.state_dict()
    state = loaded.module.state_dict()
    assert state.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(state[key].cpu(), tensor.cpu()), key
    assert _features(loaded) == _features(model)
    assert loaded.init_params_ == model.init_params_
    assert loaded.is_trained
    assert getattr(loaded, "training_settings_", None) == getattr(model, "training_settings_", None)
    assert loaded.history.keys() == model.history.keys()
    for key, frame in model.history.items():
        pd.testing.assert_frame_equal(loaded.history[key], frame)
    np.testing.assert_array_equal(loaded.train_indices, model.train_indices)
    np.testing.assert_array_equal(loaded.validation_indices, model.validation_indices)


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_keeps_every_output(name, request, tmp_path):
    model, data = request.getfixturevalue(name)
    expected = _outputs(model, data)
    model.save(tmp_path / "m", save_anndata=True)
    data_file = "mdata.h5mu" if isinstance(data, MuData) else "adata.h5ad"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        ["model.json", "model.safetensors", data_file]
    )
    cls = type(model)
    for loaded in (
        cls.load(tmp_path / "m"),  # the saved data
        cls.load(tmp_path / "m", data),
        cls.load(tmp_path / "m", adata=False),
    ):
        _assert_same_model(loaded, model)
        _assert_same_outputs(loaded, data, expected)
    # the model built on the saved data reads it as the original did its own
    on_saved = cls.load(tmp_path / "m")
    assert on_saved.adata is not None and on_saved.adata.n_obs == data.n_obs
    if not isinstance(model, ss.model.Translator):
        _assert_same_outputs(on_saved, None, _outputs(model, None))


@pytest.mark.parametrize("name", MODELS)
def test_training_goes_on_after_load(name, request, tmp_path):
    model, data = request.getfixturevalue(name)
    model.save(tmp_path / "m")
    loaded = type(model).load(tmp_path / "m", data.copy())
    n_epochs = len(model.history["train_loss"])
    loaded.train(max_epochs=1, **QUIET)
    assert len(loaded.history["train_loss"]) > 0
    assert len(model.history["train_loss"]) == n_epochs  # the original is untouched
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(loaded.module.parameters(), model.module.parameters(), strict=True)
    )
    assert changed


def test_distilled_model_keeps_its_record(distilled, tmp_path):
    model, adata = distilled
    model.save(tmp_path / "m")
    loaded = ss.model.NACT.load(tmp_path / "m", adata=False)
    record = loaded.training_settings_["distilled_from"]
    assert record == model.training_settings_["distilled_from"] and record["n_members"] == 2
    assert loaded.module.n_members == 1


def test_nact_saved_with_removed_training_options_still_loads(nact, tmp_path):
    # a model saved by a version whose train() took input_dropout, label_smoothing and
    # balance_classes: they are in its training settings, and its weights hold the class weights
    # of the weighted cross-entropy
    model, adata = nact
    model.save(tmp_path / "m")
    old = {"input_dropout": 0.25, "label_smoothing": 0.1, "balance_classes": True}
    path = tmp_path / "m" / "model.json"
    content = json.loads(path.read_text())
    settings = {**from_json(content["attributes"]["training_settings_"]), **old}
    content["attributes"]["training_settings_"] = to_json(settings, "training_settings_")
    path.write_text(json.dumps(content))
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    save_file({**weights, "class_weights": torch.ones(3)}, str(tmp_path / "m" / "model.safetensors"))

    loaded = ss.model.NACT.load(tmp_path / "m", adata.copy())
    _assert_same_outputs(loaded, adata, _outputs(model, adata))
    assert {k: loaded.training_settings_[k] for k in old} == old  # the record is kept as saved
    # its settings replayed by distill() leave the removed options out
    student = loaded.distill(max_epochs=1, **QUIET)
    assert student.module.n_members == 1
    assert not set(old) & set(student.training_settings_)
    loaded.train(max_epochs=1, **QUIET)  # and it trains on, with the current options
    assert not set(old) & set(loaded.training_settings_)


def test_translator_load_takes_mdata_or_adata(translator, tmp_path):
    model, mdata = translator
    model.save(tmp_path / "m")
    expected = _outputs(model, mdata)
    by_mdata = ss.model.Translator.load(tmp_path / "m", mdata=mdata)
    by_adata = ss.model.Translator.load(tmp_path / "m", adata=mdata)
    for loaded in (by_mdata, by_adata):
        assert isinstance(loaded.adata, MuData)
        _assert_same_outputs(loaded, mdata, expected)
    with pytest.raises(ValueError, match="not both"):
        ss.model.Translator.load(tmp_path / "m", mdata=mdata, adata=mdata)
    with pytest.raises(TypeError, match="MuData"):
        ss.model.Translator.load(tmp_path / "m", mdata=mdata["rna"])


def test_save_refuses_an_existing_directory_unless_told(moduleae, tmp_path):
    model, _ = moduleae
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="overwrite=True"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True, prefix="v2_")
    assert (tmp_path / "m" / "v2_model.json").exists()
    assert ss.model.ModuleAE.load(tmp_path / "m", adata=False, prefix="v2_").module.n_latent == 4


def test_loading_with_another_model_class_is_an_error(moduleae, tmp_path):
    model, adata = moduleae
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"ModuleAE model, not a NACT: load it with ModuleAE\.load"):
        ss.model.NACT.load(tmp_path / "m", adata=False)


def test_load_registry_reads_the_json(nact, tmp_path):
    model, _ = nact
    model.save(tmp_path / "m")
    registry = ss.model.NACT.load_registry(tmp_path / "m")
    assert registry["setup_args"] == {"labels_key": "cell_type", "layer": None, "batch_key": "donor"}
    names = registry["field_registries"]["X"]["state_registry"]["column_names"]
    assert list(names) == _features(model)["genes"]


# --------------------------------------------------------------------------------------------
# nothing is unpickled


class _WritesMarker:
    """Unpickling this opens ``path`` for writing, which creates it: proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_payload(path: Path, marker: Path) -> None:
    torch.save({"model_state_dict": {}, "var_names": [], "attr_dict": _WritesMarker(marker)}, path)


def test_a_pickled_model_file_is_not_read_without_opt_in(tmp_path):
    directory, marker = tmp_path / "crafted", tmp_path / "marker"
    directory.mkdir()
    _pickle_payload(directory / "model.pt", marker)
    for cls in (ss.model.NACT, ss.model.SCTAB, ss.model.ModuleAE, ss.model.Translator):
        with pytest.raises(ValueError, match=r"trust_pickle=True"):
            cls.load(directory, adata=False)
        with pytest.raises(ValueError, match="trust_pickle=True"):
            cls.load_registry(directory)
    assert not marker.exists()
    # the payload is live: opting in runs it (then fails, the file holding no model)
    with pytest.raises(Exception):  # noqa: B017, PT011
        ss.model.NACT.load(directory, adata=False, trust_pickle=True)
    assert marker.exists()


def test_pickles_beside_or_inside_a_saved_model_are_never_read(moduleae, tmp_path):
    model, adata = moduleae
    marker = tmp_path / "marker"
    model.save(tmp_path / "m")
    _pickle_payload(tmp_path / "m" / "model.pt", marker)  # an extra pickle beside the safe files
    loaded = ss.model.ModuleAE.load(tmp_path / "m", adata, trust_pickle=True)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    _pickle_payload(tmp_path / "m" / "model.safetensors", marker)  # the weights replaced by a pickle
    with pytest.raises(ValueError, match="not a safetensors file"):
        ss.model.ModuleAE.load(tmp_path / "m", adata)
    (tmp_path / "m" / "model.json").write_bytes((tmp_path / "m" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="not a scsalient model file"):
        ss.model.ModuleAE.load(tmp_path / "m", adata)
    assert not marker.exists()


def test_old_pickled_model_converts_with_the_opt_in(sctab, tmp_path):
    model, adata = sctab
    expected = _outputs(model, adata)
    BaseModelClass.save(model, str(tmp_path / "old"))  # the format of scvi-tools and of earlier scsalient
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["model.pt"]
    with pytest.raises(ValueError, match=r"SCTAB\.load\(\.\.\., trust_pickle=True\)"):
        ss.model.SCTAB.load(tmp_path / "old", adata)
    old = ss.model.SCTAB.load(tmp_path / "old", adata, trust_pickle=True)
    _assert_same_model(old, model)
    _assert_same_outputs(old, adata, expected)
    old.save(tmp_path / "old", overwrite=True)  # converted in place: the pickle is removed
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["model.json", "model.safetensors"]
    converted = ss.model.SCTAB.load(tmp_path / "old", adata)
    _assert_same_model(converted, model)
    _assert_same_outputs(converted, adata, expected)


def test_json_conversion_round_trips_registry_values():
    value = {
        "array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "names": np.array(["a", "b"], dtype=object),
        "mask": np.array([True, False]),
        "scalar": np.float32(0.5),
        "tuple": (1, "x", None),
        "keys": {1: "one", (2, 3): "pair"},
        "frame": pd.DataFrame({"loss": [0.5, np.nan]}, index=pd.Index([0, 1], name="epoch")),
        "index": pd.Index(["g1", "g2"], name="genes"),
        "not_finite": [float("nan"), np.array([1.0, np.inf, -np.inf]), np.array([0.5, np.nan], dtype=object)],
    }
    restored = from_json(json.loads(json.dumps(to_json(value), allow_nan=False)))  # strict JSON
    np.testing.assert_array_equal(restored["array"], value["array"])
    assert restored["array"].dtype == np.int32
    assert restored["names"].dtype == object and list(restored["names"]) == ["a", "b"]
    assert restored["mask"].dtype == bool
    assert restored["scalar"] == 0.5 and restored["tuple"] == (1, "x", None)
    assert restored["keys"] == {1: "one", (2, 3): "pair"}
    pd.testing.assert_frame_equal(restored["frame"], value["frame"])
    pd.testing.assert_index_equal(restored["index"], value["index"])
    nan, floats, objects = restored["not_finite"]
    assert np.isnan(nan) and floats.tolist() == [1.0, np.inf, -np.inf]
    assert objects.dtype == object and objects[0] == 0.5 and np.isnan(objects[1])
    with pytest.raises(TypeError, match="training_settings_.*Linear"):
        to_json({"plan": torch.nn.Linear(2, 2)}, "training_settings_")


# --------------------------------------------------------------------------------------------
# genes matched by name on load


def _permuted(data, seed: int = 0):
    """``data`` with its genes (and peaks) in another order."""
    if isinstance(data, MuData):
        out = MuData({name: _permuted(mod, seed) for name, mod in data.mod.items()})
        for column in data.obs.columns:
            if column not in out.obs:
                out.obs[column] = data.obs[column]
        return out
    return data[:, np.random.default_rng(seed).permutation(data.n_vars)].copy()


@pytest.mark.parametrize("name", MODELS)
def test_load_onto_reordered_genes_keeps_the_model(name, request, tmp_path):
    model, data = request.getfixturevalue(name)
    expected = _outputs(model, data)
    features = _features(model)
    model.save(tmp_path / "m")
    shuffled = _permuted(data)
    with pytest.warns(UserWarning, match="matched by name"):
        loaded = type(model).load(tmp_path / "m", shuffled)
    assert _features(loaded) == features
    _assert_same_outputs(loaded, data, expected)  # the original data, as a query
    # the model's own (copied) data are in its order: read-outs without a query agree too
    if not isinstance(model, ss.model.Translator):
        _assert_same_outputs(loaded, None, _outputs(model, None))
    else:
        _assert_same_outputs(loaded, loaded.adata, expected)
    # saved again, the model keeps its original order
    loaded.save(tmp_path / "again")
    again = type(model).load(tmp_path / "again", adata=False)
    assert _features(again) == features
    _assert_same_outputs(again, data, expected)


def test_load_onto_part_of_the_genes(nact, tmp_path):
    model, adata = nact
    expected = _outputs(model, adata)
    model.save(tmp_path / "m")
    order = np.random.default_rng(1).permutation(adata.n_vars)
    most = adata[:, order[: int(0.6 * adata.n_vars)]].copy()
    with pytest.warns(UserWarning, match=r"60 of the model's 150 genes \(40.0%\) are missing"):
        loaded = ss.model.NACT.load(tmp_path / "m", most)
    assert _features(loaded) == _features(model)
    assert loaded.adata.n_vars == adata.n_vars
    _assert_same_outputs(loaded, adata, expected)
    few = adata[:, order[: int(0.4 * adata.n_vars)]].copy()
    with pytest.raises(ValueError, match=r"only 60 of the model's 150 genes \(40.0%\); at least 50%"):
        ss.model.NACT.load(tmp_path / "m", few)
    renamed = adata.copy()
    renamed.var_names = [f"other_{i}" for i in range(adata.n_vars)]
    with pytest.raises(ValueError, match="only 0 of the model's 150 genes"):
        ss.model.NACT.load(tmp_path / "m", renamed)


def test_load_onto_the_same_genes_uses_the_given_object(moduleae, tmp_path):
    model, adata = moduleae
    model.save(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*matched by name.*")
        loaded = ss.model.ModuleAE.load(tmp_path / "m", adata)
    assert loaded.adata is adata


def test_translator_peaks_are_matched_by_name(translator, tmp_path):
    model, mdata = translator
    expected = _outputs(model, mdata)
    model.save(tmp_path / "m")
    atac = mdata["atac"]
    keep = np.random.default_rng(2).permutation(atac.n_vars)[: int(0.7 * atac.n_vars)]
    partial = MuData({"rna": mdata["rna"].copy(), "atac": atac[:, keep].copy()})
    with pytest.warns(UserWarning, match="peaks"):
        loaded = ss.model.Translator.load(tmp_path / "m", partial)
    assert _features(loaded) == _features(model)
    _assert_same_outputs(loaded, mdata, expected)
    few = MuData({"rna": mdata["rna"].copy(), "atac": atac[:, keep[:40]].copy()})
    with pytest.raises(ValueError, match="peaks"):
        ss.model.Translator.load(tmp_path / "m", few)


def test_layer_models_are_conformed_on_their_layer(rna, tmp_path):
    scvi.settings.seed = 0
    adata = AnnData(
        X=rna.X.copy() * 2, obs=rna.obs.copy(), var=rna.var.copy(), layers={"counts": rna.X.copy()}
    )
    ss.model.ModuleAE.setup_anndata(adata, layer="counts")
    model = ss.model.ModuleAE(adata, n_latent=2)
    model.train(max_epochs=1, **QUIET)
    model.save(tmp_path / "m")
    shuffled = adata[:, np.random.default_rng(3).permutation(adata.n_vars)].copy()
    with pytest.warns(UserWarning, match="matched by name"):
        loaded = ss.model.ModuleAE.load(tmp_path / "m", shuffled)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(adata), model.get_latent_representation(adata)
    )
