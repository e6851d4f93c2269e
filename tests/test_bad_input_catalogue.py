"""The bad-input catalogue: every awkward input, for each of the four models.

Each test is a table, case x model (``pytest.mark.parametrize``). Every case ends either in a
clear error whose message names the problem (``pytest.raises(..., match=...)`` on a phrase of
the message) or in a right, documented result (outputs equal to the reference outputs, a file
left byte-for-byte unchanged, ...). A case that does not apply to a model is an entry of its
table too, with the reason, and is reported as skipped with that reason.
``docs/bad_input.md`` gives the same catalogue to users.

The models are used through their public API only (setup, the constructor with small sizes
and one network, ``train(max_epochs=1)``, ``predict``/``annotate``/read-outs,
``save``/``load``), on small simulated data; the trained models are shared by module-scoped
fixtures.
"""

from __future__ import annotations

import copy
import hashlib
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
import torch
from scipy import sparse

import scsalient as ss

pytestmark = pytest.mark.filterwarnings(
    # the simulated peaks include a few that no cell opens; they are not what these tests are about
    "ignore:.*accessible in no cell:UserWarning",
    # scvi-tools' advice for a csc matrix (the csc case checks the result)
    "ignore:Training will be faster when sparse matrix is formatted as CSR:UserWarning",
)

MODELS = ("NACT", "SCTAB", "ModuleAE", "Translator")
CLASSIFIERS = ("NACT", "SCTAB")
N_CELLS, N_GENES, N_PEAKS = 200, 150, 150
QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}
#: the constructors' defaults, but one network and small layers
SIZES = {
    "NACT": {"n_ensemble": 1},
    "SCTAB": {"n_ensemble": 1, "n_d": 8, "n_a": 8},
    "ModuleAE": {"n_latent": 4},
    "Translator": {"n_ensemble": 1, "n_latent": 8, "n_hidden": 16},
}
#: why a case about labels does not apply
NO_LABELS = "trains without labels"
#: the models a case about labels does not apply to
UNLABELLED = {"ModuleAE": NO_LABELS, "Translator": NO_LABELS}
#: why a case about paired modalities does not apply
ONE_MODALITY = "takes one AnnData, not paired modalities"
DOCS = Path(__file__).resolve().parents[1] / "docs"


# --------------------------------------------------------------------------------------------
# the models, through their public API


def simulate(name: str, seed: int = 0, n_cells: int = N_CELLS):
    """Simulated training data of model ``name``: an AnnData, or a MuData for the Translator."""
    if name == "Translator":
        multiome = {"modalities": "rna+atac", "n_peaks": N_PEAKS, "n_links": 10, "library_size": 5000}
        return ss.datasets.simulate(n_cells, N_GENES, n_cell_types=3, seed=seed, **multiome)
    return ss.datasets.simulate(n_cells, N_GENES, n_cell_types=3, n_donors=2, seed=seed)


def expression(name: str, data):
    """The AnnData whose expression a case changes (the RNA modality of a MuData)."""
    return data["rna"] if name == "Translator" else data


def setup(name: str, data, **kwargs) -> None:
    cls = getattr(ss.model, name)
    if name == "Translator":
        cls.setup_mudata(data, **kwargs)
    elif name in CLASSIFIERS:
        cls.setup_anndata(data, **{"labels_key": "cell_type", **kwargs})
    else:
        cls.setup_anndata(data, **kwargs)


def fit(name: str, data, **setup_kwargs):
    """A model of kind ``name`` set up on ``data`` and trained for one epoch, from seed 0."""
    scvi.settings.seed = 0
    setup(name, data, **setup_kwargs)
    model = getattr(ss.model, name)(data, **SIZES[name])
    model.train(max_epochs=1, **QUIET)
    return model


def outputs(name: str, model, query) -> np.ndarray:
    """The main read-out: class probabilities, unit activities or translated accessibility."""
    if name == "Translator":
        return model.translate(query, to="atac").X
    if name == "ModuleAE":
        return model.get_latent_representation(query)
    return model.predict(query, soft=True).to_numpy()


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 rounding (sparse and dense matrices are summed in another order)."""
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)


def grid(cases, skip: dict[str, dict[str, str]] | None = None) -> list:
    """The table ``cases`` x models; ``skip[case][model]`` says why a case does not apply."""
    skip = skip or {}
    return [
        pytest.param(
            case,
            model,
            id=f"{case}-{model}",
            marks=[pytest.mark.skip(reason=f"does not apply: {model} {skip[case][model]}")]
            if model in skip.get(case, {})
            else [],
        )
        for case in cases
        for model in MODELS
    ]


@pytest.fixture(scope="module")
def trained() -> dict:
    """One model of each kind, trained on its simulated data."""
    return {name: fit(name, simulate(name)) for name in MODELS}


@pytest.fixture(scope="module")
def queries() -> dict:
    """Query cells for each model (the RNA of other simulated cells for the Translator)."""
    return {name: expression(name, simulate(name, seed=1)) for name in MODELS}


@pytest.fixture(scope="module")
def reference(trained, queries) -> dict:
    """The outputs of each trained model on its query."""
    return {name: outputs(name, trained[name], queries[name]) for name in MODELS}


# --------------------------------------------------------------------------------------------
# expression values: training data refused at setup


def _put(value: float) -> Callable:
    def change(adata: ad.AnnData) -> None:
        x = dense(adata.X)
        x[3, 3] = value
        adata.X = x

    return change


def _scale(adata: ad.AnnData) -> None:
    sc.pp.log1p(adata)
    sc.pp.scale(adata)


def _zero_cell(adata: ad.AnnData) -> None:
    x = dense(adata.X)
    x[4] = 0
    adata.X = sparse.csr_matrix(x)


def _duplicate_a_gene(adata: ad.AnnData) -> None:
    adata.var_names = [*adata.var_names[:-1], adata.var_names[0]]


#: case -> (change to the expression AnnData, phrase of the error)
REFUSED_AT_SETUP = {
    "NaN": (_put(np.nan), r"contains NaN or infinite values"),
    "inf": (_put(np.inf), r"contains NaN or infinite values"),
    "negative values": (_put(-1.0), r"contains negative values \(minimum -1\)"),
    "scaled (centred) data": (_scale, r"contains negative values .* not scaled or centred data"),
    "all-zero cell": (_zero_cell, r"1 all-zero cell\(s\) \(e\.g\. \['cell_00004'\]\).*filter_cells"),
    "duplicated var_names": (_duplicate_a_gene, r"1 duplicated name.*var_names_make_unique\(\)"),
}


@pytest.mark.parametrize(("case", "name"), grid(REFUSED_AT_SETUP))
def test_bad_training_values_are_refused_at_setup(case, name):
    change, message = REFUSED_AT_SETUP[case]
    data = simulate(name)
    change(expression(name, data))
    with pytest.raises(ValueError, match=message):
        setup(name, data)


@pytest.mark.parametrize("name", MODELS)
def test_fewer_than_10_cells_are_refused_at_setup(name):
    with pytest.raises(ValueError, match=r"hold 5 cell\(s\); a (classifier|model) needs at least 10"):
        setup(name, simulate(name)[:5].copy())
    assert fit(name, simulate(name)[:10].copy()).is_trained  # ten are enough


@pytest.mark.parametrize("name", MODELS)
def test_all_zero_genes_are_kept(name):
    data = simulate(name)
    x = dense(expression(name, data).X)
    x[:, :5] = 0
    expression(name, data).X = sparse.csr_matrix(x)
    model = fit(name, data)
    assert np.isfinite(outputs(name, model, expression(name, data))).all()


@pytest.mark.parametrize("name", MODELS)
def test_log_normalised_training_data(name):
    data = simulate(name)
    adata = expression(name, data)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    if name in CLASSIFIERS:  # used as given, and said so
        with pytest.warns(
            UserWarning, match=r"expm1\(x\) all sum to 1e\+04: log1p-normalised.*used as given"
        ):
            model = fit(name, data)
        assert model.input_kind == "lognorm"
        return
    with warnings.catch_warnings(record=True) as caught:  # refused, not first said to be used
        warnings.simplefilter("always")
        with pytest.raises(
            ValueError, match=r"holds log-normalised values \(the rows of expm1.*needs raw counts"
        ):
            setup(name, data)
    assert not [w for w in caught if "used as given" in str(w.message)]


# --------------------------------------------------------------------------------------------
# matrix formats and dtypes: the same model, the same outputs


def _float16(x):
    assert dense(x).max() <= 2048  # float16 holds these integers exactly
    return dense(x).astype(np.float16)


#: case -> conversion of the expression matrix (None: in a layer, see below)
FORMATS = {
    "csc": lambda x: sparse.csc_matrix(x),
    "dense": dense,
    "dense Fortran order": lambda x: np.asfortranarray(dense(x)),
    "csr_array": lambda x: sparse.csr_array(x),
    "float16": _float16,
    "float64": lambda x: sparse.csr_matrix(x, dtype=np.float64),
    "int64": lambda x: sparse.csr_matrix(x, dtype=np.int64),
    "int32 dense": lambda x: dense(x).astype(np.int32),
    "in a layer": None,
}


def _in_format(case: str, adata: ad.AnnData) -> dict:
    """Put ``adata``'s counts in the format of ``case``; the setup arguments that read them."""
    if FORMATS[case] is None:
        adata.layers["counts"] = adata.X.copy()
        lognorm = adata.X.copy()
        lognorm.data = np.log1p(lognorm.data)  # something else in X
        adata.X = lognorm
        return {"layer": "counts"}
    adata.X = FORMATS[case](adata.X)
    return {}


@pytest.mark.parametrize(("case", "name"), grid(FORMATS))
def test_formats_and_dtypes_give_the_same_model_and_outputs(case, name, trained, queries, reference):
    data = simulate(name)
    kwargs = _in_format(case, expression(name, data))
    if name == "Translator" and kwargs:
        kwargs = {"rna_layer": kwargs["layer"]}
    before = expression(name, data).X.copy()
    query = queries[name].copy()
    _in_format(case, query)
    model = fit(name, data, **kwargs)
    assert type(expression(name, data).X) is type(before)  # the user's matrix is kept as it was
    np.testing.assert_array_equal(dense(expression(name, data).X), dense(before))
    if kwargs:  # the model reads the layer, of the query too
        assert_close(outputs(name, model, query), reference[name])
        del query.layers["counts"]
        with pytest.raises(KeyError, match=r"reads adata.layers\['counts'\], which the query does not have"):
            outputs(name, model, query)
        return
    assert_close(outputs(name, model, queries[name]), reference[name])  # the same model
    assert_close(outputs(name, trained[name], query), reference[name])  # the same outputs


@pytest.mark.parametrize("name", MODELS)
def test_a_missing_layer_is_named_at_setup(name):
    layer = {"rna_layer": "counts"} if name == "Translator" else {"layer": "counts"}
    with pytest.raises(ValueError, match=r"counts is not a valid key in adata.layers"):
        setup(name, simulate(name), **layer)


# --------------------------------------------------------------------------------------------
# genes: query data matched to the model's genes by name

QUERY_GENES = ("reordered", "60% of the genes", "40% of the genes", "Ensembl IDs", "unknown genes added")


@pytest.mark.parametrize(("case", "name"), grid(QUERY_GENES))
def test_query_genes_are_matched_by_name(case, name, trained, queries, reference):
    model, query, expected = trained[name], queries[name], reference[name]
    n_genes = query.n_vars
    if case == "reordered":
        order = np.random.default_rng(0).permutation(n_genes)
        assert_close(outputs(name, model, query[:, order].copy()), expected)
    elif case == "60% of the genes":  # the rest is filled with zeros
        kept = np.random.default_rng(0).permutation(n_genes)[:90]
        with pytest.warns(UserWarning, match=r"60 of the model's 150 genes \(40\.0%\) are missing"):
            got = outputs(name, model, query[:, kept].copy())
        zeroed = query.copy()
        x = dense(zeroed.X)
        x[:, np.setdiff1d(np.arange(n_genes), kept)] = 0
        zeroed.X = sparse.csr_matrix(x)
        assert_close(got, outputs(name, model, zeroed))
    elif case == "40% of the genes":
        with pytest.raises(ValueError, match=r"only 60 of the model's 150 genes \(40\.0%\); at least 50%"):
            outputs(name, model, query[:, :60].copy())
    elif case == "Ensembl IDs":  # a model trained on symbols
        renamed = query.copy()
        renamed.var_names = [f"ENSG{i:011d}" for i in range(n_genes)]
        with pytest.raises(ValueError, match=r"only 0 of the model's 150 genes.*gene symbols vs Ensembl IDs"):
            outputs(name, model, renamed)
    else:  # genes the model does not know are ignored
        extra = ad.AnnData(
            sparse.hstack([query.X, sparse.csr_matrix(np.ones((query.n_obs, 5), dtype=np.float32))]).tocsr(),
            obs=query.obs,
            var=pd.DataFrame(index=[*query.var_names, *(f"NEW{i}" for i in range(5))]),
        )
        assert_close(outputs(name, model, extra), expected)


@pytest.mark.parametrize("name", MODELS)
def test_duplicated_query_gene_names_are_refused(name, trained, queries):
    query = queries[name].copy()
    _duplicate_a_gene(query)
    with pytest.raises(ValueError, match=r"duplicates.*var_names_make_unique\(\)"):
        outputs(name, trained[name], query)


# --------------------------------------------------------------------------------------------
# labels


def _one_class(adata):
    adata.obs["cell_type"] = "type_0"


def _nan_labels(adata):
    adata.obs.loc[adata.obs_names[:5], "cell_type"] = np.nan


#: case -> (change, setup arguments, error type, phrase of the error)
BAD_LABELS = {
    "one class": (_one_class, {}, ValueError, r"has 1 class\(es\); a classifier needs at least two"),
    "NaN labels": (_nan_labels, {}, ValueError, r"has 5 missing \(NaN\) label\(s\)"),
    "labels column missing": (None, {"labels_key": "celltype"}, KeyError, r"'celltype' is not a column"),
}


@pytest.mark.parametrize(("case", "name"), grid(BAD_LABELS, dict.fromkeys(BAD_LABELS, UNLABELLED)))
def test_bad_labels_are_refused_at_setup(case, name):
    change, kwargs, error, message = BAD_LABELS[case]
    adata = simulate(name)
    if change is not None:
        change(adata)
    with pytest.raises(error, match=message):
        setup(name, adata, **kwargs)


AWKWARD_LABELS = ("mixed integers and strings", "unused categories")


@pytest.mark.parametrize(("case", "name"), grid(AWKWARD_LABELS, dict.fromkeys(AWKWARD_LABELS, UNLABELLED)))
def test_awkward_labels_are_used_and_the_column_is_kept(case, name):
    adata = simulate(name)
    if case == "unused categories":
        adata.obs["cell_type"] = adata.obs["cell_type"].cat.add_categories(["ghost"])
        warning, classes = r"1 categor.*without cells.*ghost", ["type_0", "type_1", "type_2"]
    else:
        codes = adata.obs["cell_type"].cat.codes.to_numpy()  # type_0 -> "t0", type_1 -> 1, type_2 -> 2
        adata.obs["cell_type"] = pd.Series([int(c) if c else f"t{c}" for c in codes], index=adata.obs_names)
        warning, classes = r"mixes strings and other types.*used as strings", ["1", "2", "t0"]
    column = adata.obs["cell_type"].copy()
    with pytest.warns(UserWarning, match=warning):
        model = fit(name, adata)
    pd.testing.assert_series_equal(adata.obs["cell_type"], column)
    assert list(model.classes) == classes
    assert set(model.predict()) <= set(classes)


CLUSTERING = {"labels_key=None, backed": {"SCTAB": "needs labels_key (it does not cluster)", **UNLABELLED}}


@pytest.mark.parametrize(("case", "name"), grid(CLUSTERING, CLUSTERING))
def test_clustering_a_backed_file_is_refused(case, name, tmp_path):
    simulate(name).write_h5ad(tmp_path / "data.h5ad")
    backed = ad.read_h5ad(tmp_path / "data.h5ad", backed="r")
    try:
        with pytest.raises(ValueError, match=r"labels_key=None.*backed.*to_memory\(\)"):
            ss.model.NACT.setup_anndata(backed)
    finally:
        backed.file.close()


LOAD_LABELS = ("a class the model does not know", "missing labels", "no labels column")


@pytest.mark.parametrize(("case", "name"), grid(LOAD_LABELS, dict.fromkeys(LOAD_LABELS, UNLABELLED)))
def test_loading_onto_cells_the_model_cannot_train_on(case, name, trained, queries, reference, tmp_path):
    """``load(dir, adata)`` attaches data to train on: the labels must be the model's classes."""
    trained[name].save(tmp_path / "model")
    query = queries[name].copy()
    if case == "a class the model does not know":
        query.obs["cell_type"] = query.obs["cell_type"].cat.add_categories(["new_type"])
        query.obs.loc[query.obs_names[:7], "cell_type"] = "new_type"
        error, message = ValueError, r"1 label\(s\) the model was not trained on \(\['new_type'\]"
    elif case == "missing labels":
        query.obs.loc[query.obs_names[:7], "cell_type"] = np.nan
        error, message = ValueError, r"7 missing \(NaN\) label\(s\)"
    else:
        del query.obs["cell_type"]
        error, message = KeyError, r"no 'cell_type' column"
    cls = getattr(ss.model, name)
    with pytest.raises(error, match=message) as raised:
        cls.load(tmp_path / "model", query)
    assert "predict() or annotate()" in str(raised.value) and "adata=False" in str(raised.value)
    loaded = cls.load(tmp_path / "model", adata=False)  # the way out the message gives
    assert_close(loaded.predict(query, soft=True).to_numpy(), reference[name])


# --------------------------------------------------------------------------------------------
# query data

QUERY_CASES = (
    "unseen classes in the query's labels",
    "cell with only unknown genes, all-zero cell",
    "NaN",
    "negative values",
    "log-normalised query",
    "one cell",
    "an AnnData view",
)
QUERY_SKIP = {"unseen classes in the query's labels": UNLABELLED}
#: what a log-normalised query of a counts model is told
LOGNORM_QUERY = {
    "NACT": r"set up on raw counts, but the query's adata.X holds log-normalised values",
    "SCTAB": r"set up on raw counts, but the query's adata.X holds log-normalised values",
    "ModuleAE": r"holds log-normalised values .* needs raw counts",
    "Translator": r"holds log-normalised values, but the Translator reads raw RNA counts",
}


def _with_empty_cells(query: ad.AnnData) -> ad.AnnData:
    """``query`` with an unknown gene, cell 0 expressing only it and cell 1 all-zero."""
    x = sparse.hstack([query.X, sparse.csr_matrix((query.n_obs, 1), dtype=np.float32)]).tolil()
    x[0] = 0
    x[0, -1] = 5
    x[1] = 0
    return ad.AnnData(x.tocsr(), obs=query.obs.copy(), var=pd.DataFrame(index=[*query.var_names, "NEW1"]))


@pytest.mark.parametrize(("case", "name"), grid(QUERY_CASES, QUERY_SKIP))
def test_awkward_query_data(case, name, trained, queries, reference):
    model, query, expected = trained[name], queries[name], reference[name]
    if case == "unseen classes in the query's labels":  # the query's labels are not read
        unseen = query.copy()
        unseen.obs["cell_type"] = unseen.obs["cell_type"].cat.add_categories(["new_type"])
        unseen.obs.loc[unseen.obs_names[:7], "cell_type"] = "new_type"
        assert_close(outputs(name, model, unseen), expected)
        model.annotate(unseen)
        key = f"{name.lower()}_prediction"
        np.testing.assert_array_equal(unseen.obs[key].astype(str), model.predict(query))
    elif case == "cell with only unknown genes, all-zero cell":
        empty = _with_empty_cells(query)
        if name in CLASSIFIERS:  # flagged: no prediction for them, the others unchanged
            with pytest.warns(UserWarning, match=r"2 of 200 query cell.*no prediction"):
                got = outputs(name, model, empty)
            assert np.isnan(got[:2]).all()
            assert_close(got[2:], expected[2:])
        else:
            with pytest.raises(
                ValueError, match=r"2 query cell\(s\) with no expression in any of the model's"
            ):
                outputs(name, model, empty)
    elif case in ("NaN", "negative values"):
        bad = query.copy()
        _put(np.nan if case == "NaN" else -1.0)(bad)
        message = "contains NaN or infinite values" if case == "NaN" else "contains negative values"
        with pytest.raises(ValueError, match=message):
            outputs(name, model, bad)
    elif case == "log-normalised query":
        lognorm = query.copy()
        sc.pp.normalize_total(lognorm, target_sum=1e4)
        sc.pp.log1p(lognorm)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ValueError, match=LOGNORM_QUERY[name]):
                outputs(name, model, lognorm)
        assert not [w for w in caught if "used as given" in str(w.message)]
    elif case == "one cell":
        assert_close(outputs(name, model, query[:1].copy()), expected[:1])
    else:  # a view: read, not changed
        view = query[50:120]
        before = _snapshot(view)
        assert_close(outputs(name, model, view), expected[50:120])
        _assert_same(_snapshot(view), before, "the view")


# --------------------------------------------------------------------------------------------
# files and storage: backed files are never written


def _open_backed(name: str, path: Path, mode: str):
    if name == "Translator":
        return md.read_h5mu(path, backed=mode)
    return ad.read_h5ad(path, backed=mode)


def _close(data) -> None:
    for adata in getattr(data, "mod", {}).values():
        if adata.isbacked:
            adata.file.close()
    if data.isbacked:
        data.file.close()


@pytest.mark.parametrize(("mode", "name"), grid(["r", "r+"]))
def test_backed_files_are_left_byte_for_byte_unchanged(mode, name, trained, reference, tmp_path):
    suffix = "h5mu" if name == "Translator" else "h5ad"
    train_path, query_path = tmp_path / f"train.{suffix}", tmp_path / f"query.{suffix}"
    simulate(name).write(train_path)
    simulate(name, seed=1).write(query_path)
    hashes = {path: sha256(path) for path in (train_path, query_path)}
    data, query = _open_backed(name, train_path, mode), _open_backed(name, query_path, mode)
    try:
        model = fit(name, data)
        assert np.isfinite(outputs(name, model, expression(name, data))).all()
        assert_close(outputs(name, trained[name], expression(name, query)), reference[name])
        if name in CLASSIFIERS:
            model.annotate()
            trained[name].annotate(query)
    finally:
        _close(data)
        _close(query)
    assert {path: sha256(path) for path in hashes} == hashes


# --------------------------------------------------------------------------------------------
# model files

MODEL_FILES = (
    "save and load",
    "train again after load",
    "pickled model.pt only",
    "pickle beside the model files",
    "model.json not a model file",
    "another model class",
    "existing directory",
    "wrong kind of data",
    "genes in another order",
    "under 50% of the genes",
)


class _WritesMarker:
    """Unpickling this opens ``path`` for writing, which creates it: proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_payload(path: Path, marker: Path) -> None:
    torch.save({"model_state_dict": {}, "var_names": [], "attr_dict": _WritesMarker(marker)}, path)


@pytest.mark.parametrize(("case", "name"), grid(MODEL_FILES))
def test_model_files(case, name, trained, queries, reference, tmp_path):
    model, cls, query = trained[name], getattr(ss.model, name), queries[name]
    path, marker = tmp_path / "model", tmp_path / "marker"
    model.save(path, save_anndata=case in ("save and load", "train again after load"))
    if case == "save and load":
        for data in (None, False, simulate(name)):
            assert_close(outputs(name, cls.load(path, data), query), reference[name])
    elif case == "train again after load":
        loaded = cls.load(path)
        loaded.train(max_epochs=1, **QUIET)
        again = outputs(name, loaded, query)
        assert np.isfinite(again).all() and not np.allclose(again, reference[name])
    elif case == "pickled model.pt only":
        (path / "model.json").unlink()
        (path / "model.safetensors").unlink()
        _pickle_payload(path / "model.pt", marker)
        with pytest.raises(
            ValueError, match=rf"pickled model file.*{name}\.load\(\.\.\., trust_pickle=True\)"
        ):
            cls.load(path, adata=False)
        assert not marker.exists()
    elif case == "pickle beside the model files":
        _pickle_payload(path / "model.pt", marker)
        assert_close(outputs(name, cls.load(path, adata=False), query), reference[name])
        assert not marker.exists()
    elif case == "model.json not a model file":
        (path / "model.json").write_text('{"format": "something else"}')
        with pytest.raises(ValueError, match=r"not a scsalient model file"):
            cls.load(path, adata=False)
    elif case == "another model class":
        other = next(m for m in MODELS if m != name)
        with pytest.raises(
            ValueError, match=rf"holds a {name} model, not a {other}: load it with {name}\.load"
        ):
            getattr(ss.model, other).load(path, adata=False)
    elif case == "existing directory":
        with pytest.raises(ValueError, match=r"already exists: pass overwrite=True"):
            model.save(path)
    elif case == "wrong kind of data":
        wrong = simulate("NACT") if name == "Translator" else simulate("Translator")
        expected = "a MuData" if name == "Translator" else "an AnnData"
        with pytest.raises(TypeError, match=rf"{name}\.load needs {expected}"):
            cls.load(path, wrong)
    elif case == "genes in another order":
        data = simulate(name)
        order = np.random.default_rng(0).permutation(N_GENES)
        if name == "Translator":
            data = md.MuData({"rna": data["rna"][:, order].copy(), "atac": data["atac"]})
        else:
            data = data[:, order].copy()
        with pytest.warns(UserWarning, match=r"matched by name"):
            loaded = cls.load(path, data)
        assert_close(outputs(name, loaded, query), reference[name])
    else:
        data = simulate(name)
        if name == "Translator":
            data = md.MuData({"rna": data["rna"][:, :60].copy(), "atac": data["atac"]})
        else:
            data = data[:, :60].copy()
        with pytest.raises(ValueError, match=r"only 60 of the model's 150 genes \(40\.0%\); at least 50%"):
            cls.load(path, data)


# --------------------------------------------------------------------------------------------
# multimodal data

MULTIMODAL = (
    "a MuData given to setup_anndata",
    "an AnnData given to setup_mudata",
    "unpaired cells",
    "cells in another order",
    "no ATAC modality",
    "protein counts (ADT) as ATAC",
    "NaN in ATAC",
    "duplicated peak names",
    "peaks reordered in a query",
    "peaks reordered on load",
    "80% of the peaks on load",
)
MULTIMODAL_SKIP = {
    "a MuData given to setup_anndata": {"Translator": "takes the MuData (setup_mudata)"},
    **{case: dict.fromkeys(("NACT", "SCTAB", "ModuleAE"), ONE_MODALITY) for case in MULTIMODAL[1:]},
}


def _adt_like(obs_names: pd.Index) -> ad.AnnData:
    """CITE-seq-like protein counts: 140 antibodies, counts in the tens to hundreds."""
    rng = np.random.default_rng(0)
    means = rng.lognormal(3.0, 1.0, size=140)
    counts = rng.negative_binomial(5, 5 / (5 + means), size=(len(obs_names), 140)).astype(np.float32)
    names = [f"CD{i}" for i in range(1, 141)]
    return ad.AnnData(
        sparse.csr_matrix(counts), obs=pd.DataFrame(index=obs_names), var=pd.DataFrame(index=names)
    )


def _pair(rna: ad.AnnData, atac: ad.AnnData) -> md.MuData:
    with md.set_options(pull_on_update=False):
        return md.MuData({"rna": rna, "atac": atac})


@pytest.mark.parametrize(("case", "name"), grid(MULTIMODAL, MULTIMODAL_SKIP))
def test_multimodal_data(case, name, trained, queries, reference, tmp_path):
    mdata = simulate("Translator")
    rna, atac = mdata["rna"], mdata["atac"]
    if case == "a MuData given to setup_anndata":
        with pytest.raises(
            TypeError, match=r"needs an AnnData, got a MuData.*setup_anndata\(mdata\['rna'\]\)"
        ):
            setup(name, mdata)
        return
    if case == "an AnnData given to setup_mudata":
        with pytest.raises(TypeError, match=r"setup_mudata needs a MuData, got AnnData"):
            ss.model.Translator.setup_mudata(rna)
        return
    if case == "peaks reordered in a query":  # matched by name, like genes
        model, atac_query = trained[name], simulate(name, seed=1)["atac"]
        order = np.random.default_rng(0).permutation(atac_query.n_vars)
        genes = list(model.var_names("rna")[:10])
        expected = model.translate(atac_query, to="rna", features=genes).X
        assert_close(model.translate(atac_query[:, order].copy(), to="rna", features=genes).X, expected)
        return
    if case in ("peaks reordered on load", "80% of the peaks on load"):  # as for genes
        trained[name].save(tmp_path / "model")
        order = np.random.default_rng(0).permutation(atac.n_vars)
        partial = case == "80% of the peaks on load"
        if partial:
            order = order[:120]
        mdata = md.MuData({"rna": rna, "atac": atac[:, order].copy()})
        warned = r"30 of the model's 150 peaks \(20\.0%\) are missing" if partial else "matched by name"
        with pytest.warns(UserWarning, match=warned):
            loaded = ss.model.Translator.load(tmp_path / "model", mdata)
        assert list(loaded.var_names("atac")) == list(trained[name].var_names("atac"))
        if not partial:
            assert_close(outputs(name, loaded, queries[name]), reference[name])
        return
    error, message = ValueError, r"do not hold the same cells in the same order"
    if case == "unpaired cells":
        other = simulate(name, seed=1)["atac"]
        other.obs_names = [f"other_{i}" for i in range(other.n_obs)]
        mdata = _pair(rna, other)
    elif case == "cells in another order":
        mdata = _pair(rna, atac[::-1].copy())
    elif case == "no ATAC modality":
        mdata = md.MuData({"rna": rna})
        error, message = KeyError, r"Modality 'atac' \(for atac_layer\) is not in the MuData"
    elif case == "protein counts (ADT) as ATAC":
        mdata = _pair(rna, _adt_like(rna.obs_names))
        message = r"does not look like chromatin accessibility.*no peak coordinates.*ADT"
    elif case == "NaN in ATAC":
        x = dense(atac.X)
        x[0, 0] = np.nan
        atac.X = x
        message = r"adata.X of modality 'atac' contains NaN or infinite values"
    else:
        _duplicate_a_gene(atac)
        message = r"1 duplicated name.*peaks are matched by name.*var_names_make_unique\(\)"
    with pytest.raises(error, match=message):
        ss.model.Translator.setup_mudata(mdata)


# --------------------------------------------------------------------------------------------
# nothing in the user's data changes outside documented keys

SLOTS = ("obs", "var", "obsm", "varm", "obsp", "layers", "uns")


def documented_keys() -> dict[str, set[str]]:
    """Keys each slot may gain: the rows of the table in ``docs/stored_results.md``."""
    keys: dict[str, set[str]] = {slot: set() for slot in SLOTS}
    for line in (DOCS / "stored_results.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        slot = re.match(r"`(\w+)`", cells[1])
        if slot and slot[1] in keys:  # not the entries of a record, such as `uns["salient_genes"]`
            keys[slot[1]].update(re.findall(r"`([^`]+)`", cells[0]))
    return keys


def _keys(adata: ad.AnnData, slot: str) -> list[str]:
    return list(getattr(adata, slot).columns if slot in ("obs", "var") else getattr(adata, slot).keys())


def _snapshot(data) -> dict:
    """Copies of everything a user may have put into ``data`` (each modality of a MuData)."""
    parts = {"": data, **{f"{name}:": mod for name, mod in getattr(data, "mod", {}).items()}}
    out = {}
    for prefix, adata in parts.items():
        state = {}
        for slot in SLOTS:
            if getattr(adata, slot, None) is not None:  # a MuData has no layers
                state[slot] = {key: copy.deepcopy(getattr(adata, slot)[key]) for key in _keys(adata, slot)}
        if isinstance(adata, ad.AnnData):
            state["X"] = adata.X.toarray() if sparse.issparse(adata.X) else np.array(adata.X)
        out[prefix] = state
    return out


def _assert_same(got, expected, where: str) -> None:
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            _assert_same(got[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected, obj=where)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got, expected, obj=where)
    elif sparse.issparse(expected):
        assert sparse.issparse(got), where
        np.testing.assert_array_equal(dense(got), dense(expected), err_msg=where)
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected, err_msg=where)
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            _assert_same(g, e, f"{where}[{i}]")
    else:
        assert got == expected, where


def assert_only_documented_keys_added(data, before: dict) -> None:
    """Nothing removed or changed in ``data`` since ``before``; only documented keys added."""
    allowed, after = documented_keys(), _snapshot(data)
    assert after.keys() == before.keys()
    for prefix, state in before.items():
        _assert_same(after[prefix].get("X"), state.get("X"), f"{prefix}X")
        for slot in SLOTS:
            if slot not in state:
                continue
            added = set(after[prefix][slot]) - set(state[slot])
            assert added <= allowed[slot], f"undocumented keys in {prefix}{slot}: {added - allowed[slot]}"
            for key, value in state[slot].items():
                assert key in after[prefix][slot], f"{prefix}{slot}[{key!r}] was removed"
                _assert_same(after[prefix][slot][key], value, f"{prefix}{slot}[{key!r}]")


def _with_user_content(data):
    """``data`` with a column, an embedding, a layer and an entry the user put there."""
    for adata in [data, *getattr(data, "mod", {}).values()]:
        adata.uns["user_note"] = {"kept": [1, 2, 3]}
        if isinstance(adata, ad.AnnData):
            adata.obs["user_score"] = np.arange(adata.n_obs, dtype=np.float64)
            adata.var["user_flag"] = np.arange(adata.n_vars) % 2 == 0
            adata.obsm["X_user"] = np.ones((adata.n_obs, 2), dtype=np.float32)
            adata.varm["user_loadings"] = np.zeros((adata.n_vars, 2), dtype=np.float32)
            adata.layers["user_layer"] = adata.X.copy()
    return data


def _read_outs(name: str, model, data) -> None:
    """Every read-out that takes the data (on the training data when ``data`` is ``None``)."""
    if name == "Translator":
        target = model.adata if data is None else data
        model.translate(target, to="atac")
        model.translate(target, to="rna")
        model.get_latent_representation(target)
        model.get_attention(target)
        ss.tl.peak_gene_links(model, target, n_top=2, n_cells=16, n_steps=2)
    elif name == "ModuleAE":
        model.get_latent_representation(data)
        model.get_saliency(data, groupby="cell_type")
    else:
        model.predict(data)
        model.predict(data, soft=True)
        if name == "NACT":
            model.get_attention(data)
        model.annotate(data, majority_voting=True)


@pytest.mark.parametrize(("case", "name"), grid(["training data", "query"]))
def test_only_documented_keys_are_added(case, name, trained):
    if case == "query":
        query = _with_user_content(simulate(name, seed=1))
        before = _snapshot(query)
        _read_outs(name, trained[name], query)
        assert_only_documented_keys_added(query, before)
        return
    data = _with_user_content(simulate(name))
    before = _snapshot(data)
    model = fit(name, data)
    _read_outs(name, model, None)
    assert_only_documented_keys_added(data, before)


def _type_graph(cell_type: pd.Series, n_neighbors: int = 10) -> sparse.csr_matrix:
    """A neighbour graph linking each cell to random cells of its type (fast to cluster)."""
    rng, codes = np.random.default_rng(0), cell_type.cat.codes.to_numpy()
    rows, cols = [], []
    for cell, code in enumerate(codes):
        peers = rng.choice(np.flatnonzero(codes == code), n_neighbors, replace=False)
        rows.extend([cell] * n_neighbors)
        cols.extend(peers)
    graph = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(codes),) * 2)
    return ((graph + graph.T) > 0).astype(np.float32).tocsr()


def test_clustering_adds_only_documented_keys():
    adata = _with_user_content(simulate("NACT"))
    adata.obsp["connectivities"] = _type_graph(adata.obs.pop("cell_type"))  # the user's own graph
    before = _snapshot(adata)
    scvi.settings.seed = 0
    ss.model.NACT.setup_anndata(adata)  # labels_key=None: Leiden clusters
    model = ss.model.NACT(adata, **SIZES["NACT"])
    model.train(max_epochs=1, **QUIET)
    _read_outs("NACT", model, None)
    assert "leiden" in adata.obs
    assert_only_documented_keys_added(adata, before)


def test_documented_keys_hold_what_scvi_tools_writes():
    keys = documented_keys()
    assert {"_scvi_labels", "_scvi_batch"} <= keys["obs"]
    assert {"_scvi_uuid", "_scvi_manager_uuid"} <= keys["uns"]
    assert "nact_prediction" in keys["obs"] and "salient_genes" in keys["uns"] and "names" not in keys["uns"]
