"""Gene-set impact, its plots, module recovery and unit separation, on hand-made saliency matrices."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import scsalient as ss
from scsalient._constants import ModuleAEKeys

GENES = [f"g{i}" for i in range(12)]
UNITS = ["unit_0", "unit_1", "unit_2", "unit_3"]


def _adata() -> AnnData:
    """12 genes x 4 units: unit_0 reads set A, unit_1 set B, unit_2 nothing, unit_3 everything."""
    saliency = np.full((12, 4), 0.1)
    saliency[0:4, 0] = 1.0  # set A = g0..g3
    saliency[4:8, 1] = 2.0  # set B = g4..g7
    saliency[:, 2] = 0.0  # a dead unit
    saliency[:, 3] = np.linspace(0.2, 0.8, 12)
    adata = AnnData(
        np.ones((6, 12), dtype=np.float32),
        obs=pd.DataFrame({"group": ["a", "a", "a", "b", "b", "b"]}, index=[f"c{i}" for i in range(6)]),
        var=pd.DataFrame({"symbol": [f"S{i}" for i in range(12)]}, index=GENES),
    )
    adata.varm[ModuleAEKeys.SALIENCY] = pd.DataFrame(saliency, index=GENES, columns=UNITS)
    group_b = saliency.copy()
    group_b[0:4, 0] = 0.1  # in group b, unit_0 no longer reads set A
    adata.uns[ModuleAEKeys.UNS] = {
        "saliency_params": {"guided": True, "n_cells": 6, "groupby": "group"},
        "group_saliency": {
            "a": pd.DataFrame(saliency, index=GENES, columns=UNITS),
            "b": pd.DataFrame(group_b, index=GENES, columns=UNITS),
        },
    }
    return adata


SETS = {
    "A": ["g0", "g1", "g2", "g3"],
    "B": ["g4", "g5", "g6", "g7", "absent"],
    "C": ["g8", "g9", "g10", "g11"],
}


def test_impact_is_scaled_per_unit_and_dead_units_dropped():
    adata = _adata()
    ss.tl.gene_set_impact(adata, SETS, min_genes=3)
    record = adata.uns[ModuleAEKeys.UNS]
    impact = record["impact"]
    assert list(impact.columns) == ["unit_0", "unit_1", "unit_3"]  # unit_2 has zero impact
    np.testing.assert_allclose(impact.max(axis=0), 1.0)
    np.testing.assert_allclose(impact.min(axis=0), 0.0)
    assert impact.loc["A", "unit_0"] == 1 and impact.loc["B", "unit_1"] == 1
    # every gene is detected in every cell: one detection bin, so the raw impact is the set's
    # mean saliency relative to the unit's mean saliency over all genes
    raw = record["mean_saliency"]
    assert record["impact_params"]["n_detection_bins"] == 1
    assert raw.loc["A", "unit_0"] == pytest.approx(1.0 / ((4 * 1.0 + 8 * 0.1) / 12))
    ramp = np.linspace(0.2, 0.8, 12)
    assert raw.loc["C", "unit_3"] == pytest.approx(ramp[8:].mean() / ramp.mean())
    table = record["gene_sets"]
    assert table.loc["B", "n_genes"] == 5 and table.loc["B", "n_in_data"] == 4
    assert table["used"].all()
    # the saliency written by the model is kept beside the impact
    assert "group_saliency" in record


def _detection_adata(n_cells: int = 200, n_genes: int = 400, seed: int = 0) -> AnnData:
    """Genes detected in 2% to 100% of the cells; unit_0's saliency is the detection rate itself."""
    rng = np.random.default_rng(seed)
    rate = np.linspace(0.02, 1.0, n_genes)
    counts = (rng.random((n_cells, n_genes)) < rate).astype(np.float32)
    genes = [f"g{i}" for i in range(n_genes)]
    adata = AnnData(counts, var=pd.DataFrame(index=genes))
    detected = counts.mean(axis=0)
    program = np.full(n_genes, 0.05)
    program[rng.choice(n_genes, 20, replace=False)] = 1.0  # unit_1 reads a program of 20 genes
    adata.varm[ModuleAEKeys.SALIENCY] = pd.DataFrame(
        np.c_[detected, program + 0.01 * detected], index=genes, columns=["unit_0", "unit_1"]
    )
    return adata


def test_detection_rate_alone_does_not_drive_impact():
    adata = _detection_adata()
    detected = adata.varm[ModuleAEKeys.SALIENCY]["unit_0"]
    order = detected.sort_values().index
    # ten sets of 40 genes, from the least to the most detected
    sets = {f"set_{i}": list(order[40 * i : 40 * (i + 1)]) for i in range(10)}
    program = adata.varm[ModuleAEKeys.SALIENCY]["unit_1"]
    sets["program"] = list(program.sort_values().index[-20:])
    record = ss.tl.gene_set_impact(adata, sets, inplace=False)
    raw = record["mean_saliency"]
    assert record["impact_params"]["n_detection_bins"] == 8  # 400 genes, at least 50 per bin
    # a unit that only follows the detection rate reads every set about alike (0.86 to 1.05;
    # the plain mean saliency of the sets spans 0.07 to 0.97)
    by_detection = raw.loc[list(sets)[:10], "unit_0"]
    plain = np.array([detected[genes].mean() for genes in list(sets.values())[:10]])
    assert plain.max() / plain.min() > 10
    assert by_detection.max() / by_detection.min() < 1.3
    # the planted program still tops its unit
    assert raw["unit_1"].idxmax() == "program"


def test_group_impacts_share_a_scale_per_unit():
    adata = _adata()
    group_b = adata.uns[ModuleAEKeys.UNS]["group_saliency"]["b"]
    # in group a, unit_1 reads its set twice as strongly as in group b; nothing else differs
    group_a = group_b.copy()
    group_a["unit_1"] *= 2
    adata.uns[ModuleAEKeys.UNS]["group_saliency"] = {"a": group_a, "b": group_b}
    ss.tl.gene_set_impact(adata, SETS, groupby="group", min_genes=3)
    record = adata.uns[ModuleAEKeys.UNS]
    impact_a, impact_b = record["impact_groups"]["a"], record["impact_groups"]["b"]
    assert impact_a.loc["B", "unit_1"] == pytest.approx(1.0)
    assert impact_b.loc["B", "unit_1"] < 0.6  # scaled with group a's maximum, not its own
    difference = record["difference"]["a"]
    assert difference.loc["B", "unit_1"] == pytest.approx(1.0)
    assert np.abs(difference.drop(columns="unit_1").to_numpy()).max() == pytest.approx(0.0)


def test_group_difference_is_scaled_into_minus_one_one():
    adata = _adata()
    ss.tl.gene_set_impact(adata, SETS, groupby="group", min_genes=3)
    record = adata.uns[ModuleAEKeys.UNS]
    assert set(record["impact_groups"]) == {"a", "b"}
    difference = record["difference"]["a"]  # a minus reference b (the second group)
    assert record["impact_params"]["reference"] == "b"
    assert np.abs(difference.to_numpy()).max() == pytest.approx(1.0)
    assert difference.loc["A", "unit_0"] == pytest.approx(1.0)  # only group a reads A on unit_0
    assert np.abs(difference.drop(columns="unit_0").to_numpy()).max() == pytest.approx(0.0)
    flipped = ss.tl.gene_set_impact(adata, SETS, groupby="group", reference="a", min_genes=3, inplace=False)
    pd.testing.assert_frame_equal(flipped["difference"]["b"], -difference)


def test_separation_is_recorded_and_redundant_units_warn():
    adata = _detection_adata()
    genes = adata.var_names
    rng = np.random.default_rng(1)
    sets = {f"set_{i}": list(rng.choice(genes, 25, replace=False)) for i in range(12)}
    # four units that read the same program: one set tops all of them
    shared = np.full(len(genes), 0.05)
    shared[np.isin(genes, sets["set_3"])] = 1.0
    noise = rng.random((len(genes), 4)) * 0.02
    adata.varm["redundant"] = pd.DataFrame(shared[:, None] + noise, index=genes)
    with pytest.warns(
        UserWarning, match=r"correlates (0\.9\d|1\.00) on average.*set_3 is the most impacted set of 4 of 4"
    ):
        ss.tl.gene_set_impact(adata, sets, saliency_key="redundant")
    separation = adata.uns[ModuleAEKeys.UNS]["separation"]
    assert separation["top_set"] == "set_3" and separation["top_set_units"] == 4
    assert separation["mean_correlation"] > 0.9 and not separation["separate"]
    # four units reading four different sets: no warning
    distinct = np.full((len(genes), 4), 0.05)
    for unit in range(4):
        distinct[np.isin(genes, sets[f"set_{unit}"]), unit] = 1.0
    adata.varm["distinct"] = pd.DataFrame(distinct + noise, index=genes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ss.tl.gene_set_impact(adata, sets, saliency_key="distinct")
    separation = adata.uns[ModuleAEKeys.UNS]["separation"]
    assert separation["separate"] and separation["top_set_units"] == 1
    assert separation["mean_correlation"] < 0.2


def test_gene_symbols_and_gmt_file(tmp_path):
    adata = _adata()
    path = tmp_path / "sets.gmt"
    path.write_text("A\tdescription\tS0\tS1\tS2\tS3\nC\t\tS8\tS9\tS10\tS11\n")
    ss.tl.gene_set_impact(adata, path, gene_symbols="symbol", min_genes=3)
    impact = adata.uns[ModuleAEKeys.UNS]["impact"]
    assert list(impact.index) == ["A", "C"]
    assert impact.loc["A", "unit_0"] == 1


def test_ensembl_var_names_use_the_symbol_column():
    adata = _adata()
    ids = [f"ENSMUSG{i:011d}" for i in range(12)]
    adata.var_names = ids
    adata.varm[ModuleAEKeys.SALIENCY].index = ids
    sets = {"A": ["S0", "S1", "S2", "S3"], "C": ["S8", "S9", "S10", "S11"]}
    with pytest.warns(UserWarning, match=r"Ensembl gene IDs.*adata.var\['symbol'\]"):
        ss.tl.gene_set_impact(adata, sets, min_genes=3)
    record = adata.uns[ModuleAEKeys.UNS]
    assert list(record["impact"].index) == ["A", "C"]
    assert record["impact"].loc["A", "unit_0"] == 1
    assert record["impact_params"]["gene_symbols"] == "symbol"
    # gene sets of Ensembl IDs keep matching the var_names
    by_id = {"A": ids[0:4], "B": ids[4:8]}
    with pytest.warns(UserWarning, match="B is the most impacted set of 2 of 3 units"):  # 2 sets, 3 units
        explicit = ss.tl.gene_set_impact(adata, by_id, min_genes=3, inplace=False)
    assert explicit["impact_params"]["gene_symbols"] == ""
    assert explicit["impact"].loc["B", "unit_1"] == 1
    del adata.var["symbol"]
    with pytest.raises(ValueError, match="Ensembl gene IDs.*no symbol column"):
        ss.tl.gene_set_impact(adata, sets, min_genes=3)


def test_sets_with_too_few_genes_are_skipped_and_reported():
    adata = _adata()
    sets = {**SETS, "tiny": ["g0", "nope"], "none": ["x", "y", "z"]}
    ss.tl.gene_set_impact(adata, sets, min_genes=3)
    record = adata.uns[ModuleAEKeys.UNS]
    assert "tiny" not in record["impact"].index and "none" not in record["impact"].index
    table = record["gene_sets"]
    assert table.loc["tiny", "n_in_data"] == 1 and not table.loc["tiny", "used"]
    assert table.loc["none", "n_in_data"] == 0


def test_bad_inputs():
    adata = _adata()
    with pytest.raises(ValueError, match="No gene set has at least"):
        ss.tl.gene_set_impact(adata, {"none": ["x", "y", "z"]})
    with pytest.raises(KeyError, match="get_saliency"):
        ss.tl.gene_set_impact(AnnData(np.ones((2, 3))), SETS)
    with pytest.raises(KeyError, match="groupby='donor'"):
        ss.tl.gene_set_impact(adata, SETS, groupby="donor", min_genes=3)
    with pytest.raises(KeyError, match="reference"):
        ss.tl.gene_set_impact(adata, SETS, groupby="group", reference="c", min_genes=3)
    with pytest.raises(TypeError, match="scale"):
        ss.tl.gene_set_impact(adata, SETS, scale="set")  # one scaling only: per unit
    adata.varm["signed"] = -adata.varm[ModuleAEKeys.SALIENCY]
    with pytest.raises(ValueError, match="negative values"):
        ss.tl.gene_set_impact(adata, SETS, saliency_key="signed", min_genes=3)
    with pytest.raises(ValueError, match="min_genes"):
        ss.tl.gene_set_impact(adata, SETS, min_genes=0)
    with pytest.raises(FileNotFoundError):
        ss.tl.gene_set_impact(adata, "missing.gmt")


def test_module_recovery_matches_distinct_units():
    impact = pd.DataFrame(
        [[0.9, 0.8, 0.1], [0.95, 0.2, 0.1], [0.1, 0.1, 0.3], [0.5, 0.5, 0.9]],
        index=["m0", "m1", "m2", "other"],
        columns=["u0", "u1", "u2"],
    )
    result = ss.metrics.module_recovery(impact, ["m0", "m1", "m2"])
    # Hungarian: m1 takes u0 (0.95), m0 u1 (0.8), m2 u2 (0.3) -> total 2.05 beats greedy choices
    assert result["unit"].tolist() == ["u1", "u0", "u2"]
    # m0 is top of u1; m1 is top of u0; m2 loses u2 to "other"
    assert result["recovered"].tolist() == [True, True, False]
    assert result.loc["m2", "rank"] == 2
    too_many = ss.metrics.module_recovery(impact[["u0"]], ["m0", "m1"])
    assert too_many["recovered"].sum() == 1 and (too_many["unit"] == "").sum() == 1
    with pytest.raises(KeyError):
        ss.metrics.module_recovery(impact, ["m9"])


def test_impact_heatmap_content():
    adata = _adata()
    ss.tl.gene_set_impact(adata, SETS, groupby="group", min_genes=3)
    ss.tl.gene_set_impact(adata, SETS, min_genes=3)  # a new call replaces the group results
    assert "difference" not in adata.uns[ModuleAEKeys.UNS]
    ax = ss.pl.gene_set_impact(adata, show=False)
    shown = np.asarray(ax.images[0].get_array())
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    expected = adata.uns[ModuleAEKeys.UNS]["impact"].loc[rows, cols].to_numpy()
    np.testing.assert_allclose(shown, expected)
    assert ax.images[0].get_clim() == (0, 1)
    plt.close("all")


def test_difference_heatmap_and_save(tmp_path):
    adata = _adata()
    ss.tl.gene_set_impact(adata, SETS, groupby="group", min_genes=3)
    ax = ss.pl.gene_set_impact(adata, kind="difference", show=False, save=tmp_path / "d.png")
    assert (tmp_path / "d.png").exists()
    shown = np.asarray(ax.images[0].get_array())
    assert ax.images[0].get_clim() == (-1, 1)
    assert np.abs(shown).max() == pytest.approx(1.0)
    assert "a - b" in ax.get_title()
    group_ax = ss.pl.gene_set_impact(adata, group="b", cluster=False, show=False)
    expected = adata.uns[ModuleAEKeys.UNS]["impact_groups"]["b"].to_numpy()
    np.testing.assert_allclose(np.asarray(group_ax.images[0].get_array()), expected)
    del adata.varm[ModuleAEKeys.SALIENCY]  # group saliency only: no impact over all cells
    ss.tl.gene_set_impact(adata, SETS, groupby="group", min_genes=3)
    with pytest.raises(KeyError, match="no 'impact'"):
        ss.pl.gene_set_impact(adata, show=False)
    with pytest.raises(ValueError, match="kind"):
        ss.pl.gene_set_impact(adata, kind="ratio", show=False)
    plt.close("all")


def test_unit_activity_panels():
    rng = np.random.default_rng(0)
    adata = AnnData(np.ones((30, 2), dtype=np.float32))
    adata.obsm[ModuleAEKeys.LATENT] = rng.random((30, 4)).astype(np.float32)
    adata.obsm["X_umap"] = rng.normal(size=(30, 2))
    figure = ss.pl.unit_activity(adata, ["unit_1", 3], show=False)
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == ["unit_1", "unit_3"]
    colours = np.sort(np.asarray(figure.axes[0].collections[0].get_array()))
    np.testing.assert_allclose(colours, np.sort(adata.obsm[ModuleAEKeys.LATENT][:, 1]))
    with pytest.raises(KeyError, match="out of range"):
        ss.pl.unit_activity(adata, 7, show=False)
    with pytest.raises(KeyError, match="X_tsne"):
        ss.pl.unit_activity(adata, 0, basis="tsne", show=False)
    plt.close("all")


def test_unit_separation_and_matched_correlation():
    impact = pd.DataFrame(
        [[1.0, 0.9, 0.0, 0.0], [0.2, 0.1, 1.0, 0.0], [0.0, 0.0, 0.1, 0.0]],
        index=["s0", "s1", "s2"],
        columns=["u0", "u1", "u2", "dead"],
    )
    result = ss.metrics.unit_separation(impact)
    assert result["n_units"] == 3  # the constant column is left out
    assert result["top_set"] == "s0" and result["top_set_units"] == 2
    pairs = np.corrcoef(impact[["u0", "u1", "u2"]].to_numpy().T)[np.triu_indices(3, 1)]
    assert result["mean_correlation"] == pytest.approx(pairs.mean())
    assert not result["separate"]  # s0 tops 2 of 3 units
    rng = np.random.default_rng(0)
    first = rng.random((50, 4))
    second = first[:, [2, 0, 3, 1]] + 0.01 * rng.random((50, 4))
    matched = ss.metrics.matched_unit_correlation(first, second)
    assert matched.shape == (4,) and (matched > 0.99).all()
    with pytest.raises(ValueError, match="same genes"):
        ss.metrics.matched_unit_correlation(first, second[:10])
