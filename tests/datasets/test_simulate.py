from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scsalient.datasets import simulate

ACTIVITY_KEY = "simulation_module_activity"


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    return simulate(seed=0)


@pytest.fixture(scope="module")
def normalized(adata: ad.AnnData) -> np.ndarray:
    """Counts per 10,000, dense."""
    x = adata.X.toarray()
    return x / x.sum(axis=1, keepdims=True) * 1e4


def _type_codes(adata: ad.AnnData) -> np.ndarray:
    return adata.obs["cell_type"].cat.codes.to_numpy()


def _genes(adata: ad.AnnData, names) -> np.ndarray:
    idx = adata.var_names.get_indexer(list(names))
    assert (idx >= 0).all()
    return idx


# --- layout -----------------------------------------------------------------------------------


def test_layout(adata: ad.AnnData) -> None:
    assert adata.shape == (2000, 500)
    assert isinstance(adata.X, sp.csr_matrix)
    assert adata.X.dtype == np.float32
    assert adata.obs_names[0] == "cell_00000"
    assert adata.obs_names[-1] == "cell_01999"
    assert adata.var_names[0] == "gene_0000"
    assert adata.var_names[-1] == "gene_0499"

    cell_type = adata.obs["cell_type"]
    assert isinstance(cell_type.dtype, pd.CategoricalDtype)
    assert list(cell_type.cat.categories) == [f"type_{i}" for i in range(5)]
    assert list(adata.obs["donor"].cat.categories) == ["donor_0", "donor_1", "donor_2"]
    assert adata.obs["library_size"].dtype == np.float64

    assert adata.var["housekeeping"].dtype == bool
    assert pd.api.types.is_string_dtype(adata.var["marker_of"])
    assert not isinstance(adata.var["marker_of"].dtype, pd.CategoricalDtype)
    assert pd.api.types.is_string_dtype(adata.var["module"])

    activity = adata.obsm[ACTIVITY_KEY]
    assert activity.dtype == np.float32
    assert activity.shape == (2000, 4)
    assert ((activity >= 0) & (activity <= 1)).all()
    assert adata.varm["simulation_type_effect"].shape == (500, 5)
    assert adata.varm["simulation_donor_effect"].shape == (500, 3)


def test_truth_is_consistent(adata: ad.AnnData) -> None:
    truth = adata.uns["simulation"]
    assert truth["module_activity_key"] == ACTIVITY_KEY
    assert truth["type_effect_key"] in adata.varm
    assert truth["donor_effect_key"] in adata.varm
    var = adata.var

    assert list(truth["markers"]) == [f"type_{i}" for i in range(5)]
    for cell_type, genes in truth["markers"].items():
        assert len(genes) == 10
        assert sorted(genes) == sorted(var.index[var["marker_of"] == cell_type])
    assert sorted(truth["housekeeping"]) == sorted(var.index[var["housekeeping"]])
    assert len(truth["housekeeping"]) == 20
    assert list(truth["modules"]) == [f"module_{i}" for i in range(4)]
    for module, genes in truth["modules"].items():
        assert len(genes) == 20
        assert sorted(genes) == sorted(var.index[var["module"] == module])

    # Roles are disjoint and not simply the first genes.
    planted = (
        [g for genes in truth["markers"].values() for g in genes]
        + list(truth["housekeeping"])
        + [g for genes in truth["modules"].values() for g in genes]
    )
    assert len(planted) == len(set(planted)) == 5 * 10 + 20 + 4 * 20
    assert sorted(planted) != list(adata.var_names[: len(planted)])

    # Planted type effects: log(marker_fold) on markers, mild shifts on a few background genes.
    effect = adata.varm["simulation_type_effect"]
    log_fold = math.log(4.0)
    for t, genes in enumerate(truth["markers"].values()):
        idx = _genes(adata, genes)
        np.testing.assert_allclose(effect[idx, t], log_fold, rtol=1e-6)
        np.testing.assert_array_equal(np.delete(effect[idx], t, axis=1), 0)
    background = ((var["marker_of"] == "") & ~var["housekeeping"] & (var["module"] == "")).to_numpy()
    shifted = effect[background] != 0
    assert shifted.any(axis=0).all()  # every type shifts some background genes
    assert shifted.mean() < 0.2
    assert np.abs(effect[background]).max() <= 0.5 * log_fold + 1e-6
    assert (effect[~background & (var["marker_of"] == "").to_numpy()] == 0).all()

    params = truth["params"]
    assert params["n_cells"] == 2000
    assert params["seed"] == 0
    assert params["cell_type_proportions"] == [0.2] * 5
    assert params["modalities"] == "rna"


# --- determinism ------------------------------------------------------------------------------


def test_deterministic_per_seed() -> None:
    a = simulate(300, 200, seed=7)
    b = simulate(300, 200, seed=7)
    c = simulate(300, 200, seed=8)
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    np.testing.assert_array_equal(a.obsm[ACTIVITY_KEY], b.obsm[ACTIVITY_KEY])
    assert a.uns["simulation"]["markers"] == b.uns["simulation"]["markers"]

    assert (a.X != c.X).nnz > 0
    assert not a.obs["cell_type"].equals(c.obs["cell_type"])
    assert a.uns["simulation"]["markers"] != c.uns["simulation"]["markers"]


def test_deterministic_across_thread_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    from scsalient.datasets import _simulate

    kwargs = {"n_cells": 3000, "n_genes": 2000, "seed": 3}  # several blocks of cells
    threaded = simulate(**kwargs)
    monkeypatch.setattr(_simulate, "_MAX_THREADS", 1)
    serial = simulate(**kwargs)
    assert (threaded.X != serial.X).nnz == 0


# --- counts -----------------------------------------------------------------------------------


def test_counts_are_nonnegative_integers(adata: ad.AnnData) -> None:
    data = adata.X.data
    assert (data > 0).all()  # explicit zeros are not stored
    np.testing.assert_array_equal(data, np.round(data))
    adata.X.check_format(full_check=True)
    assert adata.X.nnz < np.prod(adata.shape)


def test_library_sizes_track_planted(adata: ad.AnnData) -> None:
    planted = adata.obs["library_size"].to_numpy()
    observed = np.asarray(adata.X.sum(axis=1)).ravel()
    assert np.corrcoef(np.log(planted), np.log(observed))[0, 1] > 0.95
    assert observed.mean() == pytest.approx(2000, rel=0.05)
    assert np.std(np.log(planted)) == pytest.approx(0.4, rel=0.1)
    # Planted sizes are centred on library_size (lognormal with mean library_size).
    assert planted.mean() == pytest.approx(2000, rel=0.05)


@pytest.mark.parametrize("dispersion", [5.0, np.inf])
def test_negative_binomial_dispersion(dispersion: float) -> None:
    # One type, no donors, modules or library-size variation: genes are iid NB across cells.
    adata = simulate(
        4000,
        100,
        n_cell_types=1,
        n_donors=1,
        n_markers=0,
        n_housekeeping=0,
        n_modules=0,
        library_sd=0.0,
        dispersion=dispersion,
        seed=1,
    )
    x = adata.X.toarray()
    mean, var = x.mean(axis=0), x.var(axis=0)
    inverse_theta = (var - mean).sum() / (mean**2).sum()  # moment estimate of 1 / theta
    assert inverse_theta == pytest.approx(1 / dispersion, abs=0.02)


# --- planted signals --------------------------------------------------------------------------


def test_markers_are_up_by_planted_fold(adata: ad.AnnData, normalized: np.ndarray) -> None:
    codes = _type_codes(adata)
    markers = adata.uns["simulation"]["markers"]
    for t, genes in enumerate(markers.values()):
        idx = _genes(adata, genes)
        inside = normalized[codes == t][:, idx].mean(axis=0)
        outside = normalized[codes != t][:, idx].mean(axis=0)
        assert (inside > outside).all()
        # Measured 3.85-4.19 over seeds 0-4 for a planted fold of 4.
        assert inside.sum() / outside.sum() == pytest.approx(4.0, rel=0.15)
        # Each type's markers are its most up-regulated genes.
        fold = normalized[codes == t].mean(axis=0) / normalized[codes != t].mean(axis=0)
        assert set(np.argsort(-fold)[: len(idx)]) == set(idx)


def test_marker_fold_one_plants_no_type_signal() -> None:
    adata = simulate(2000, 300, marker_fold=1.0, n_modules=0, seed=2)
    assert (adata.varm["simulation_type_effect"] == 0).all()
    x = adata.X.toarray()
    x = x / x.sum(axis=1, keepdims=True)
    codes = _type_codes(adata)
    idx = _genes(adata, adata.uns["simulation"]["markers"]["type_0"])
    ratio = x[codes == 0][:, idx].mean(axis=0).sum() / x[codes != 0][:, idx].mean(axis=0).sum()
    assert ratio == pytest.approx(1.0, abs=0.05)  # measured 0.98-1.02 over seeds 0-7


def test_housekeeping_high_and_unspecific(adata: ad.AnnData, normalized: np.ndarray) -> None:
    codes = _type_codes(adata)
    hk = _genes(adata, adata.uns["simulation"]["housekeeping"])
    per_type = np.stack([normalized[codes == t][:, hk].mean(axis=0) for t in range(5)])
    # Measured at most 1.15 over seeds 0-4; markers differ about 4-fold.
    assert (per_type.max(axis=0) / per_type.min(axis=0) < 1.3).all()
    # Among the most expressed genes (all in the top 10% over seeds 0-4).
    rank = np.argsort(np.argsort(-normalized.mean(axis=0)))
    assert (rank[hk] < 0.15 * adata.n_vars).all()
    assert np.median(rank[hk]) < 25


def test_module_activity(adata: ad.AnnData, normalized: np.ndarray) -> None:
    truth = adata.uns["simulation"]
    activity = adata.obsm[ACTIVITY_KEY]
    codes = _type_codes(adata)

    # Within each type, activity correlates with the summed expression of the module's genes.
    for m, genes in enumerate(truth["modules"].values()):
        total = normalized[:, _genes(adata, genes)].sum(axis=1)
        for t in range(5):
            inside = codes == t
            assert np.std(activity[inside, m]) > 0.1  # enough variation to be recoverable
            assert np.corrcoef(activity[inside, m], total[inside])[0, 1] > 0.5  # measured >= 0.68

    # Empirical type means follow the planted ones: three type-associated modules, one free.
    means = truth["module_type_means"]
    assert list(means.index) == [f"type_{i}" for i in range(5)]
    assert list(means.columns) == [f"module_{i}" for i in range(4)]
    empirical = pd.DataFrame(activity, columns=means.columns).groupby(codes).mean()
    np.testing.assert_allclose(empirical.to_numpy(), means.to_numpy(), atol=0.06)
    assert truth["module_cell_type"] == {
        "module_0": "type_0",
        "module_1": "type_1",
        "module_2": "type_2",
        "module_3": "",
    }
    for m in range(3):
        column = means[f"module_{m}"]
        assert column.idxmax() == f"type_{m}"
        assert column.max() - column.drop(f"type_{m}").max() >= 0.4
    assert means["module_3"].nunique() == 1


def test_donor_effects_visible() -> None:
    def donor_spread(donor_effect: float) -> tuple[float, np.ndarray, np.ndarray]:
        adata = simulate(3000, 300, n_donors=3, donor_effect=donor_effect, seed=4)
        x = adata.X.toarray()
        x = x / x.sum(axis=1, keepdims=True)
        donors = adata.obs["donor"].cat.codes.to_numpy()
        log_means = np.log(np.stack([x[donors == d].mean(axis=0) for d in range(3)]) + 1e-6)
        expressed = x.mean(axis=0) > 1e-3
        centred = log_means - log_means.mean(axis=0)
        planted = adata.varm["simulation_donor_effect"].T
        planted = planted - planted.mean(axis=0)
        return float(centred[:, expressed].std()), centred[:, expressed], planted[:, expressed]

    spread_none, _, planted_none = donor_spread(0.0)
    spread_strong, observed, planted = donor_spread(0.5)
    assert (planted_none == 0).all()
    assert spread_strong > 3 * spread_none
    # Observed donor shifts recover the planted ones.
    assert np.corrcoef(observed.ravel(), planted.ravel())[0, 1] > 0.8


def test_every_type_in_every_donor(adata: ad.AnnData) -> None:
    table = pd.crosstab(adata.obs["cell_type"], adata.obs["donor"])
    assert table.shape == (5, 3)
    assert (table.max(axis=1) - table.min(axis=1) <= 1).all()  # balanced within each type


@pytest.mark.parametrize(
    ("n_cells", "proportions", "expected"),
    [
        (1000, [0.5, 0.2, 0.2, 0.1], [500, 200, 200, 100]),
        (10, [0.25, 0.25, 0.25, 0.25], [3, 3, 2, 2]),
        (1000, [0.7, 0.0, 0.3, 0.0], [700, 0, 300, 0]),
    ],
)
def test_proportions_honoured(n_cells: int, proportions: list[float], expected: list[int]) -> None:
    adata = simulate(n_cells, 200, n_cell_types=4, cell_type_proportions=proportions, seed=5)
    counts = adata.obs["cell_type"].value_counts().reindex([f"type_{i}" for i in range(4)])
    assert counts.tolist() == expected
    assert adata.uns["simulation"]["params"]["cell_type_proportions"] == proportions
    # Cells are shuffled, not sorted by type.
    assert not adata.obs["cell_type"].cat.codes.is_monotonic_increasing


def test_names_widen_with_size() -> None:
    adata = simulate(5, 12000, n_cell_types=12, n_donors=11, n_modules=11, seed=0)
    assert adata.var_names[0] == "gene_00000"
    assert adata.obs_names[0] == "cell_00000"
    assert list(adata.obs["cell_type"].cat.categories)[:3] == ["type_0", "type_1", "type_2"]
    assert adata.obs["cell_type"].cat.categories[-1] == "type_11"
    assert adata.obs["donor"].cat.categories[-1] == "donor_10"
    # Module m < min(n_modules - 1, n_cell_types) is tied to type m; the rest are free.
    assert adata.uns["simulation"]["module_cell_type"]["module_9"] == "type_9"
    assert adata.uns["simulation"]["module_cell_type"]["module_10"] == ""


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_modules": 0},
        {"n_markers": 0, "n_housekeeping": 0},
        {"n_genes": 150},  # no background genes left
        {"n_cells": 3},  # fewer cells than types
        {"dispersion": np.inf, "marker_fold": 1.0},  # Poisson, no type signal
    ],
)
def test_edge_cases_write(kwargs: dict, tmp_path) -> None:
    kwargs = {"n_cells": 60, **kwargs}
    adata = simulate(**kwargs)
    assert adata.obsm[ACTIVITY_KEY].shape == (adata.n_obs, adata.uns["simulation"]["params"]["n_modules"])
    adata.write_h5ad(tmp_path / "edge.h5ad")
    back = ad.read_h5ad(tmp_path / "edge.h5ad")
    assert back.shape == adata.shape


def test_h5ad_round_trip(tmp_path) -> None:
    adata = simulate(400, 300, seed=11)
    path = tmp_path / "sim.h5ad"
    adata.copy().write_h5ad(path)
    back = ad.read_h5ad(path)

    assert isinstance(back.X, sp.csr_matrix)
    assert back.X.dtype == np.float32
    assert (back.X != adata.X).nnz == 0
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    # h5ad writing stores repeated strings as categoricals; the values survive.
    for column in ("marker_of", "module"):
        assert back.var[column].astype(str).tolist() == adata.var[column].tolist()
    np.testing.assert_array_equal(back.var["housekeeping"], adata.var["housekeeping"])
    np.testing.assert_array_equal(back.obsm[ACTIVITY_KEY], adata.obsm[ACTIVITY_KEY])
    for key in ("simulation_type_effect", "simulation_donor_effect"):
        np.testing.assert_array_equal(back.varm[key], adata.varm[key])

    truth, read = adata.uns["simulation"], back.uns["simulation"]
    assert set(read) == set(truth)
    for key in ("markers", "modules"):
        assert {k: list(v) for k, v in read[key].items()} == truth[key]
    assert list(read["housekeeping"]) == truth["housekeeping"]
    assert read["module_cell_type"] == truth["module_cell_type"]
    assert read["module_activity_key"] == ACTIVITY_KEY
    pd.testing.assert_frame_equal(read["module_type_means"], truth["module_type_means"])
    params = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in read["params"].items()}
    assert params == truth["params"]


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n_cells": 0}, "n_cells"),
        ({"n_cells": 10.5}, "n_cells"),
        ({"n_genes": 0}, "n_genes"),
        ({"n_genes": 149}, "n_genes"),  # 5 * 10 + 20 + 4 * 20 = 150 planted genes
        ({"n_cell_types": 0}, "n_cell_types"),
        ({"n_donors": 0}, "n_donors"),
        ({"n_markers": -1}, "n_markers"),
        ({"n_housekeeping": -1}, "n_housekeeping"),
        ({"n_modules": -1}, "n_modules"),
        ({"module_size": 0}, "module_size"),
        ({"marker_fold": 0.5}, "marker_fold"),
        ({"marker_fold": float("nan")}, "marker_fold"),
        ({"housekeeping_fold": -1.0}, "housekeeping_fold"),
        ({"module_fold": float("inf")}, "module_fold"),
        ({"donor_effect": -0.1}, "donor_effect"),
        ({"library_size": 0.0}, "library_size"),
        ({"library_sd": -0.1}, "library_sd"),
        ({"dispersion": 0.0}, "dispersion"),
        ({"dispersion": "5"}, "dispersion"),
        ({"cell_type_proportions": [0.5, 0.5]}, "cell_type_proportions"),
        ({"cell_type_proportions": [0.3, 0.3, 0.3, 0.3, 0.3]}, "cell_type_proportions"),
        ({"cell_type_proportions": [0.6, 0.6, -0.2, 0.0, 0.0]}, "cell_type_proportions"),
        ({"cell_type_proportions": "equal"}, "cell_type_proportions"),
        ({"modalities": "protein"}, "modalities"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
    ],
)
def test_bad_arguments(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`"):
        simulate(**kwargs)


# --- paired RNA + ATAC --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mdata():
    return simulate(1200, 300, modalities="rna+atac", n_peaks=800, n_links=30, seed=3)


def test_rna_atac_layout(mdata) -> None:
    rna, atac = mdata["rna"], mdata["atac"]
    assert rna.shape == (1200, 300) and atac.shape == (1200, 800)
    assert list(mdata.obs["cell_type"]) == list(rna.obs["cell_type"])
    assert isinstance(atac.X, sp.csr_matrix) and atac.X.dtype == np.float32
    assert set(np.unique(atac.X.data)) == {1.0}
    for var in (rna.var, atac.var):
        assert {"chrom", "start", "end"} <= set(var.columns)
        assert (var["end"] > var["start"]).all()
    # peaks are in genomic order
    chrom_rank = atac.var["chrom"].str.slice(3).astype(int)
    assert (np.diff(chrom_rank * 10**9 + atac.var["start"]) > 0).all()
    counts = atac.var["peak_type"].value_counts().to_dict()
    assert counts == {"background": 670, "cell_type": 100, "regulatory": 30}
    assert atac.obsm["simulation_regulatory_state"].shape == (1200, 30)


def test_links_are_planted_and_real(mdata) -> None:
    rna, atac = mdata["rna"], mdata["atac"]
    links = mdata.uns["simulation"]["links"]
    assert len(links) == 30 and links["gene"].is_unique and links["peak"].is_unique
    linked = atac.var.loc[links["peak"], "linked_gene"].to_numpy()
    np.testing.assert_array_equal(linked, links["gene"].to_numpy())
    assert (atac.var["linked_gene"] != "").sum() == 30
    # regulatory peaks sit within 50 kb of their gene's TSS, on the same chromosome
    genes = rna.var.loc[links["gene"]]
    peaks = atac.var.loc[links["peak"]]
    np.testing.assert_array_equal(genes["chrom"].to_numpy(), peaks["chrom"].to_numpy())
    centre = (peaks["start"].to_numpy() + peaks["end"].to_numpy()) // 2
    np.testing.assert_array_equal(centre - genes["start"].to_numpy(), links["distance"].to_numpy())
    assert (links["distance"].abs() <= 50_000).all()
    # observed accessibility is the planted state seen through the capture
    state = atac.obsm["simulation_regulatory_state"]
    seen = atac[:, links["peak"]].X.toarray()
    assert (seen <= state).all() and seen.sum() > 0.4 * state.sum()

    # within each cell type, a regulated gene tracks its own peak, not other regulatory peaks
    x = rna.X.toarray()
    x = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)[:, rna.var_names.get_indexer(links["gene"])]
    codes = mdata.obs["cell_type"].cat.codes.to_numpy()
    own, other = [], []
    for t in np.unique(codes):
        xc, sc = x[codes == t], state[codes == t]
        xc = (xc - xc.mean(0)) / (xc.std(0) + 1e-9)
        sc = (sc - sc.mean(0)) / (sc.std(0) + 1e-9)
        corr = xc.T @ sc / len(xc)
        own.append(np.diag(corr))
        other.append(corr[~np.eye(len(corr), dtype=bool)])
    assert np.mean(own) > 0.4
    assert abs(np.mean(other)) < 0.05


def test_rna_atac_deterministic_and_rna_only_unchanged() -> None:
    a = simulate(200, 200, modalities="rna+atac", n_peaks=300, n_links=10, seed=5)
    b = simulate(200, 200, modalities="rna+atac", n_peaks=300, n_links=10, seed=5)
    assert (a["atac"].X != b["atac"].X).nnz == 0 and (a["rna"].X != b["rna"].X).nnz == 0
    pd.testing.assert_frame_equal(a.uns["simulation"]["links"], b.uns["simulation"]["links"])
    # the ATAC arguments do not touch the RNA-only simulation
    c, d = simulate(200, 200, seed=5), simulate(200, 200, seed=5, n_peaks=50, n_links=3)
    assert (c.X != d.X).nnz == 0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n_links": 400}, "n_links"),
        ({"n_peaks": 60}, "n_peaks"),
        ({"link_fold": 0.5}, "link_fold"),
        ({"peak_capture": 0.0}, "peak_capture"),
        ({"n_type_peaks": -1}, "n_type_peaks"),
    ],
)
def test_bad_atac_arguments(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`"):
        simulate(modalities="rna+atac", **kwargs)
