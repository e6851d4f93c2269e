"""NACT and SCTAB on awkward input: split, seeds, labels, gene names, input kinds, empty query cells."""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
from scipy import sparse

import scsalient as ss
from scsalient.model.base import inspect_expression
from scsalient.model.base._blocks import BlockDataSplitter, stratified_split

QUIET = {"enable_progress_bar": False}


def _sim(n_cells: int = 400, seed: int = 0, library_size: float = 1500.0) -> ad.AnnData:
    return ss.datasets.simulate(
        n_cells=n_cells, n_genes=200, n_cell_types=4, n_donors=2, library_size=library_size, seed=seed
    )


def _sorted_with_rare_class(n_rare: int = 6) -> ad.AnnData:
    """Cells sorted by type, the last type rare (a few cells at the end of the file)."""
    adata = _sim(600)
    order = np.argsort(adata.obs["cell_type"].to_numpy(), kind="stable")
    adata = adata[order].copy()
    rare = np.flatnonzero(adata.obs["cell_type"].to_numpy() == "type_3")
    keep = np.ones(adata.n_obs, dtype=bool)
    keep[rare[n_rare:]] = False
    return adata[keep].copy()


def _split_classes(adata: ad.AnnData, seed: int, **kwargs) -> tuple[set, set, set]:
    scvi.settings.seed = seed
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type")
    model = ss.model.SCTAB(adata, n_ensemble=1, n_d=8, n_a=8)
    splitter = BlockDataSplitter(model.adata_manager, train_size=0.9, batch_size=64, **kwargs)
    splitter.setup()
    labels = adata.obs["cell_type"].to_numpy()
    assert not set(splitter.train_idx) & set(splitter.val_idx)
    assert len(splitter.train_idx) + len(splitter.val_idx) == adata.n_obs
    return set(labels), set(labels[splitter.train_idx]), set(labels[splitter.val_idx])


# ---------------------------------------------------------------- 3. stratified split
def test_stratified_split_keeps_every_class_in_training_and_validation():
    labels = np.repeat([0, 1, 2, 3, 4], [500, 300, 40, 2, 1])  # sorted by class, two rare classes
    for seed in range(10):
        for block_size in (1, 32):
            train, val, test = stratified_split(labels, 0.9, 0.1, seed, block_size=block_size)
            assert len(test) == 0 and len(train) + len(val) == len(labels)
            assert set(labels[train]) == {0, 1, 2, 3, 4}
            assert set(labels[val]) == {0, 1, 2, 3}  # every class with two cells or more
            # each class split about 9:1
            assert abs((labels[val] == 0).sum() - 50) <= 1 and abs((labels[val] == 2).sum() - 4) <= 1
    train, val, test = stratified_split(labels, 0.7, 0.1, 0, block_size=32)
    assert len(test) > 0 and set(labels[train]) == {0, 1, 2, 3, 4}
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))


def test_stratified_split_holds_out_whole_blocks_where_the_classes_allow():
    labels = np.random.default_rng(0).integers(0, 4, 6400)  # shuffled classes, 100 blocks of 64
    train, val, _ = stratified_split(labels, 0.9, 0.1, 0, block_size=64)
    assert abs(len(val) - 640) <= 4
    blocks = np.unique(val // 64)
    assert len(blocks) <= 14  # 10 whole blocks and a few partial ones, not cells everywhere
    assert set(labels[train]) == set(labels[val]) == {0, 1, 2, 3}


@pytest.mark.parametrize("seed", range(6))
def test_backed_split_sorted_by_class_trains_on_every_class(tmp_path, seed):
    path = tmp_path / "sorted.h5ad"
    _sorted_with_rare_class().write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        classes, trained_on, validated_on = _split_classes(backed, seed, block_size=64)
    finally:
        backed.file.close()
    assert trained_on == classes and validated_on == classes


@pytest.mark.parametrize("seed", range(6))
def test_in_memory_split_trains_and_validates_on_every_class(seed):
    classes, trained_on, validated_on = _split_classes(_sorted_with_rare_class(n_rare=3), seed)
    assert trained_on == classes and validated_on == classes


def test_split_is_drawn_once_without_a_seed():
    adata = _sorted_with_rare_class()
    scvi.settings.seed = None
    ss.model.NACT.setup_anndata(adata, labels_key="cell_type")
    model = ss.model.NACT(adata, n_ensemble=1)
    splitter = BlockDataSplitter(model.adata_manager, train_size=0.9, batch_size=64)
    splitter.setup()
    first = splitter.val_idx.copy()
    splitter.setup("fit")  # Lightning's own call must not draw a different split
    np.testing.assert_array_equal(first, splitter.val_idx)


# ---------------------------------------------------------------- 4. no seed
def test_backed_training_without_a_seed(tmp_path):
    path = tmp_path / "sim.h5ad"
    _sim(300).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        scvi.settings.seed = None
        ss.model.SCTAB.setup_anndata(backed, labels_key="cell_type")
        model = ss.model.SCTAB(backed, n_ensemble=1, n_d=8, n_a=8)
        model.train(max_epochs=2, **QUIET)
        assert len(model.history["f1_macro_validation"]) == 2
    finally:
        backed.file.close()


# ---------------------------------------------------------------- 5. clear errors
@pytest.mark.parametrize("model_cls", [ss.model.NACT, ss.model.SCTAB])
def test_too_few_cells_fail_at_setup_naming_the_minimum(model_cls):
    adata = _sim(200)
    adata = adata[np.argsort(adata.obs["cell_type"].to_numpy())[::40]].copy()  # 5 cells, 2+ types
    with pytest.raises(ValueError, match="5 cell.*at least 10"):
        model_cls.setup_anndata(adata, labels_key="cell_type")
    ten = _sim(200)[:10].copy()
    model_cls.setup_anndata(ten, labels_key="cell_type")
    model = model_cls(ten, n_ensemble=1)
    model.train(max_epochs=1, **QUIET)


@pytest.mark.parametrize("model_cls", [ss.model.NACT, ss.model.SCTAB])
def test_duplicated_gene_names_are_refused_at_setup(model_cls):
    adata = _sim(100)
    adata.var_names = [*adata.var_names[:-1], adata.var_names[0]]
    with pytest.raises(ValueError, match=r"duplicated.*var_names_make_unique\(\)"):
        model_cls.setup_anndata(adata, labels_key="cell_type")


def test_mixed_type_labels_become_strings_and_the_column_is_kept():
    adata = _sim(200)
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    mixed = [int(c) if c % 2 else f"t{c}" for c in codes]
    adata.obs["mixed"] = pd.Series(mixed, index=adata.obs_names, dtype=object)
    with pytest.warns(UserWarning, match="mixes strings and other types"):
        ss.model.NACT.setup_anndata(adata, labels_key="mixed")
    assert list(adata.obs["mixed"]) == mixed  # untouched
    model = ss.model.NACT(adata, n_ensemble=1)
    assert sorted(model.classes) == ["1", "3", "t0", "t2"]
    model.train(max_epochs=1, **QUIET)
    assert set(model.predict(adata[:20].copy())) <= set(model.classes)


def test_unused_categories_are_dropped_and_the_column_is_kept():
    adata = _sim(200)
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.add_categories(["ghost"])
    before = adata.obs["cell_type"].copy()
    with pytest.warns(UserWarning, match=r"1 categor.*without cells.*ghost"):
        ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type")
    pd.testing.assert_series_equal(adata.obs["cell_type"], before)
    model = ss.model.SCTAB(adata, n_ensemble=1, n_d=8, n_a=8)
    assert "ghost" not in model.classes and len(model.classes) == 4
    assert model.summary_stats.n_labels == 4
    model.train(max_epochs=1, **QUIET)
    model.annotate()
    # the model's classes (and "Unassigned" only if a cell is); no "ghost"
    categories = list(adata.obs["sctab_prediction"].cat.categories)
    assert [c for c in categories if c != "Unassigned"] == list(model.classes)


def test_clustering_a_backed_file_is_refused_clearly(tmp_path):
    path = tmp_path / "sim.h5ad"
    _sim(100).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match=r"labels_key=None.*in memory.*to_memory\(\)"):
            ss.model.NACT.setup_anndata(backed)
    finally:
        backed.file.close()


# ---------------------------------------------------------------- 6. counts or log-normalised
def _counts() -> sparse.csr_matrix:
    return sparse.csr_matrix(_sim(300).X, dtype=np.float32)


def _lognorm(target_sum: float) -> sparse.csr_matrix:
    adata = ad.AnnData(_counts())
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    return adata.X


def _expected_counts(seed: int = 0) -> sparse.csr_matrix:
    """Non-integer counts, as from an EM read assignment, with a maximum below 20."""
    low = _sim(300, library_size=150).X
    x = sparse.csr_matrix(low, dtype=np.float64)
    x.data = x.data * np.random.default_rng(seed).uniform(0.2, 1.0, x.nnz)
    x.data = np.round(x.data, 2)
    assert 1 < x.max() < 20
    return x


def _decision(x) -> tuple[str, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kind = inspect_expression(x, "adata.X")
    return kind, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_integer_counts_are_logged_not_warned(caplog):
    with caplog.at_level(logging.INFO, logger="scsalient"):
        kind, warned = _decision(_counts())
    assert kind == "counts" and warned == []
    assert "integer counts" in caplog.text


@pytest.mark.parametrize(("target_sum", "shown"), [(1e4, "1e+04"), (1e6, "1e+06")])
def test_log1p_normalised_is_detected_from_the_expm1_totals(target_sum, shown):
    kind, warned = _decision(_lognorm(target_sum))
    assert kind == "lognorm" and len(warned) == 1
    assert f"expm1(x) all sum to {shown}" in warned[0] and "used as given" in warned[0]


def test_log1p_normalised_subset_of_genes_is_still_lognorm():
    kind, warned = _decision(_lognorm(1e4)[:, :120])  # the totals no longer agree
    assert kind == "lognorm" and "log-scale" in warned[0]


def test_expected_counts_below_20_are_counts_with_a_warning():
    kind, warned = _decision(_expected_counts())
    assert kind == "counts"
    assert (
        len(warned) == 1 and "non-integer counts" in warned[0] and "normalised inside the model" in warned[0]
    )


@pytest.mark.parametrize(
    "transform",
    [lambda c: c * 0.37, lambda c: c * 37.3, lambda c: sparse.csr_matrix(c / c.sum(axis=1) * 1e4)],
    ids=["downsampled", "scaled", "cp10k-not-logged"],
)
def test_rescaled_counts_are_counts(transform):
    kind, warned = _decision(sparse.csr_matrix(transform(_counts().astype(np.float64))))
    assert kind == "counts" and len(warned) == 1


def test_backed_expected_counts_are_streamed_and_detected(tmp_path):
    path = tmp_path / "expected.h5ad"
    ad.AnnData(_expected_counts()).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        kind, _ = _decision(backed.X)
    finally:
        backed.file.close()
    assert kind == "counts"


def test_models_normalise_expected_counts():
    adata = _sim(300, library_size=150)
    adata.X = _expected_counts()
    with pytest.warns(UserWarning, match="non-integer counts"):
        ss.model.NACT.setup_anndata(adata, labels_key="cell_type")
    model = ss.model.NACT(adata, n_ensemble=1)
    assert model.input_kind == "counts" and model.module.normalize_input


def test_scanpy_pbmc68k_raw_is_lognorm():
    raw = sc.datasets.pbmc68k_reduced().raw
    kind, warned = _decision(raw.X)
    assert kind == "lognorm" and len(warned) == 1


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("transfer/pancreas_lawlor_cepo.h5ad", "counts"),
        ("transfer/pancreas_xin_scclassify.h5ad", "lognorm"),
        ("spectra_tils_1k_lognorm.h5ad", "lognorm"),
    ],
)
def test_real_files_are_detected_as_their_uns_says(shared_data, name, expected):
    adata = ad.read_h5ad(shared_data / name)
    said = str(adata.uns.get("X_is", "")).lower()
    assert ("expected" in said) if expected == "counts" else ("log" in said)
    kind, warned = _decision(adata.X)
    assert kind == expected and len(warned) == 1


# ---------------------------------------------------------------- 7. query cells without known genes
def _query_with_unknown_cell(adata: ad.AnnData) -> ad.AnnData:
    """``adata`` plus an unknown gene and two extra cells: one expressing only it, one all-zero."""
    x = sparse.csr_matrix(adata.X)
    extra_gene = sparse.csr_matrix((x.shape[0], 1), dtype=x.dtype)
    x = sparse.hstack([x, extra_gene], format="csr")
    lonely = np.zeros((2, x.shape[1]), dtype=np.float32)
    lonely[0, -1] = 5.0  # only a gene the model does not know
    x = sparse.vstack([x[:7], sparse.csr_matrix(lonely), x[7:]], format="csr")
    names = [*adata.obs_names[:7], "unknown_only", "all_zero", *adata.obs_names[7:]]
    return ad.AnnData(x, obs=pd.DataFrame(index=names), var=pd.DataFrame(index=[*adata.var_names, "NEW1"]))


@pytest.fixture(scope="module")
def trained_models():
    scvi.settings.seed = 0
    adata = _sim(300)
    models = {}
    for cls, kwargs in ((ss.model.NACT, {}), (ss.model.SCTAB, {"n_d": 16, "n_a": 8})):
        data = adata.copy()
        cls.setup_anndata(data, labels_key="cell_type")
        model = cls(data, n_ensemble=2, **kwargs)
        model.train(max_epochs=2, **QUIET)
        models[cls.__name__] = model
    return adata, models


@pytest.mark.parametrize("name", ["NACT", "SCTAB"])
def test_query_cells_without_known_genes_are_flagged_not_blocking(trained_models, name):
    adata, models = trained_models
    model = models[name]
    base = adata[:60].copy()
    query = _query_with_unknown_cell(base)
    flagged = ["unknown_only", "all_zero"]
    expected = model.predict(base, soft=True)
    with pytest.warns(UserWarning, match=r"2 of 62 query cell.*unknown_only.*all_zero.*no prediction"):
        probs = model.predict(query, soft=True)
    assert probs.loc[flagged].isna().all(axis=None)
    np.testing.assert_allclose(
        probs.drop(index=flagged).to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-6
    )
    with pytest.warns(UserWarning, match="no prediction"):
        labels = model.predict(query)
    assert labels[7] is None and labels[8] is None
    others = np.delete(labels, [7, 8])
    np.testing.assert_array_equal(others.astype(str), model.predict(base))
    with pytest.warns(UserWarning, match="no prediction"):
        model.annotate(query)
    key = name.lower()
    assert query.obs[f"{key}_prediction"].isna().tolist() == [n in flagged for n in query.obs_names]
    score = f"{key}_confidence" if name == "NACT" else f"{key}_uncertainty"
    assert query.obs.loc[flagged, score].isna().all()
    assert query.obs.drop(index=flagged)[score].notna().all()
    pd.testing.assert_series_equal(
        query.obs[f"{key}_prediction"].drop(index=flagged).astype(str),
        pd.Series(model.predict(base), index=base.obs_names, name=f"{key}_prediction"),
    )


def test_query_of_only_unknown_genes_is_an_error(trained_models):
    adata, models = trained_models
    base = adata[:5].copy()
    query = ad.AnnData(
        np.ones((5, 120), dtype=np.float32),
        obs=pd.DataFrame(index=base.obs_names),
        var=pd.DataFrame(index=[*base.var_names[:100], *[f"NEW{i}" for i in range(20)]]),
    )
    query.X[:, :100] = 0
    with pytest.raises(ValueError, match="No cell of the query"):
        models["NACT"].predict(query)
