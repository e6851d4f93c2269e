"""Gene-set impact, its plots and module recovery, on hand-made saliency matrices."""

from __future__ import annotations

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
    assert impact.to_numpy().min() == 0 and impact.to_numpy().max() == 1
    np.testing.assert_allclose(impact.max(axis=0), 1.0)
    np.testing.assert_allclose(impact.min(axis=0), 0.0)
    assert impact.loc["A", "unit_0"] == 1 and impact.loc["B", "unit_1"] == 1
    raw = record["mean_saliency"]
    assert raw.loc["A", "unit_0"] == pytest.approx(1.0)
    assert raw.loc["C", "unit_3"] == pytest.approx(np.linspace(0.2, 0.8, 12)[8:].mean())
    table = record["gene_sets"]
    assert table.loc["B", "n_genes"] == 5 and table.loc["B", "n_in_data"] == 4
    assert table["used"].all()
    # the saliency written by the model is kept beside the impact
    assert "group_saliency" in record


@pytest.mark.parametrize("scale", ["unit", "set", "global"])
def test_every_scale_stays_in_unit_interval(scale):
    record = ss.tl.gene_set_impact(_adata(), SETS, scale=scale, min_genes=3, inplace=False)
    values = record["impact"].to_numpy()
    # the dead unit_2 held each set's minimum for "set" and "global": dropped, so minima exceed 0
    assert values.min() >= 0 and values.max() == 1
    if scale == "set":
        np.testing.assert_allclose(record["impact"].max(axis=1), 1.0)


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
    with pytest.raises(ValueError, match="scale"):
        ss.tl.gene_set_impact(adata, SETS, scale="row")
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
