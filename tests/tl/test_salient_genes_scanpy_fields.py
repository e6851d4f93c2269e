"""The salient-gene record is honest in scanpy's layout: every gene, and expression fields as scanpy's."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from scsalient._constants import NACTKeys, SalientKeys
from scsalient.tl import salient_genes

GROUPS = ["A", "B", "C"]
N_CELLS = 30  # per group
N_GENES = 60


def counts_adata(seed: int = 0, n_cells: int = N_CELLS) -> ad.AnnData:
    """Poisson counts with 5 up-regulated genes per group, and attention on those genes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(GROUPS, n_cells)
    rate = np.full((len(labels), N_GENES), 1.0)
    for k in range(len(GROUPS)):
        rate[labels == GROUPS[k], 5 * k : 5 * k + 5] = 8.0
    counts = rng.poisson(rate).astype(np.float32)
    attention = rng.random((len(labels), N_GENES)) * 0.1
    for k in range(len(GROUPS)):
        attention[labels == GROUPS[k], 5 * k : 5 * k + 5] += 1.0
    attention /= attention.sum(axis=1, keepdims=True)
    adata = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"group": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]),
    )
    adata.obsm[NACTKeys.ATTENTION] = attention.astype(np.float32)
    return adata


def scanpy_reference(adata: ad.AnnData) -> ad.AnnData:
    """scanpy's own rank_genes_groups on log1p(CP10k) of the same counts, every gene, with pts."""
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.tl.rank_genes_groups(lognorm, "group", method="wilcoxon", n_genes=None, pts=True)
    return lognorm


def by_gene(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame.pivot(index="names", columns="group", values=column)


def test_record_keeps_every_gene_and_scanpy_fields_match_scanpy():
    adata = counts_adata()
    salient_genes(adata, "group", n_top=5)
    record = adata.uns[SalientKeys.SALIENT_GENES]
    assert len(record["names"]) == N_GENES  # like rank_genes_groups(n_genes=None)
    assert record["params"]["n_genes"] == N_GENES
    ours = sc.get.rank_genes_groups_df(adata, group=None, key=SalientKeys.SALIENT_GENES)
    reference = sc.get.rank_genes_groups_df(scanpy_reference(adata), group=None)
    assert len(ours) == len(reference) == N_GENES * len(GROUPS)
    for column in ("logfoldchanges", "pct_nz_group", "pct_nz_reference"):
        left, right = by_gene(ours, column), by_gene(reference, column).loc[by_gene(ours, column).index]
        np.testing.assert_allclose(left.to_numpy(), right.to_numpy(), rtol=1e-4, atol=1e-4, err_msg=column)
    # the group's own up-regulated genes lead its ranking and have large fold changes
    a = ours[ours["group"] == "A"].head(5)
    assert set(a["names"]) == {f"g{i}" for i in range(5)}
    assert (a["logfoldchanges"] > 1.5).all()
    assert (a["pct_nz_group"] > 0.95).all()


def test_lognormalised_input_is_used_as_given_and_raw_can_be_read():
    adata = counts_adata(seed=1)
    reference = scanpy_reference(adata)
    lognorm = reference.copy()
    del lognorm.uns["rank_genes_groups"]
    salient_genes(lognorm, "group", n_top=5)
    ours = sc.get.rank_genes_groups_df(lognorm, group=None, key=SalientKeys.SALIENT_GENES)
    expected = by_gene(sc.get.rank_genes_groups_df(reference, group=None), "logfoldchanges")
    got = by_gene(ours, "logfoldchanges")
    np.testing.assert_allclose(got.to_numpy(), expected.loc[got.index].to_numpy(), rtol=1e-4, atol=1e-4)

    # scaled values in X (negative), log-normalised values in raw: scanpy's usual layout
    scaled = lognorm.copy()
    scaled.raw = lognorm
    sc.pp.scale(scaled)
    with pytest.warns(UserWarning, match="logfoldchanges are NaN and it gets no pts.*negative"):
        record = salient_genes(scaled, "group", n_top=5, inplace=False)
    assert not {"pts", "pts_rest"} & set(record)
    assert np.isnan(pd.DataFrame(record["logfoldchanges"]).to_numpy()).all()
    assert "attention_log2_ratio" in record
    scaled.uns["scaled"] = record
    frame = sc.get.rank_genes_groups_df(scaled, group="A", key="scaled")  # still readable
    assert len(frame) == N_GENES
    assert frame["logfoldchanges"].isna().all()
    assert "pct_nz_group" not in frame.columns
    from_raw = salient_genes(scaled, "group", n_top=5, use_raw=True, inplace=False)
    assert from_raw["params"]["expression"] == "adata.raw.X"
    pd.testing.assert_frame_equal(from_raw["pts"], lognorm.uns[SalientKeys.SALIENT_GENES]["pts"])


def test_matrixplot_of_logfoldchanges_shows_the_expression_fold_changes():
    adata = counts_adata(seed=2)
    salient_genes(adata, "group", n_top=5)
    axes = sc.pl.rank_genes_groups_matrixplot(
        adata,
        key=SalientKeys.SALIENT_GENES,
        n_genes=3,
        values_to_plot="logfoldchanges",
        dendrogram=False,
        show=False,
    )
    main = axes["mainplot_ax"]
    genes = [tick.get_text() for tick in main.get_xticklabels()]
    rows = [tick.get_text() for tick in main.get_yticklabels()]
    shown = np.asarray(main.collections[0].get_array()).reshape(len(rows), len(genes))
    frame = sc.get.rank_genes_groups_df(adata, group=None, key=SalientKeys.SALIENT_GENES)
    expected = by_gene(frame, "logfoldchanges").loc[genes, rows].to_numpy().T
    np.testing.assert_allclose(shown, expected, rtol=1e-5)
    reference = by_gene(sc.get.rank_genes_groups_df(scanpy_reference(adata), group=None), "logfoldchanges")
    np.testing.assert_allclose(shown, reference.loc[genes, rows].to_numpy().T, rtol=1e-4, atol=1e-4)
    plt.close("all")


def test_small_groups_warn():
    adata = counts_adata(seed=3)
    adata.obs["group"] = adata.obs["group"].astype(str)
    adata.obs.loc[adata.obs_names[:8], "group"] = "tiny"
    with pytest.warns(UserWarning, match=r"fewer than 20 cells: \{'tiny': 8\}"):
        salient_genes(adata, "group", n_top=5)


def test_no_expression_gives_attention_fields_only():
    adata = counts_adata(seed=4)
    light = ad.AnnData(obs=adata.obs.copy(), var=pd.DataFrame(index=adata.var_names))
    light.obsm[NACTKeys.ATTENTION] = adata.obsm[NACTKeys.ATTENTION]
    record = salient_genes(light, "group", n_top=5, inplace=False)
    assert not {"pts", "pts_rest"} & set(record)
    assert np.isnan(pd.DataFrame(record["logfoldchanges"]).to_numpy()).all()
    assert record["params"]["expression"] is None
    full = salient_genes(adata, "group", n_top=5, inplace=False)
    for field in ("names", "scores", "attention_log2_ratio"):
        pd.testing.assert_frame_equal(pd.DataFrame(record[field]), pd.DataFrame(full[field]))


def test_bad_expression_arguments():
    adata = counts_adata(seed=5)
    with pytest.raises(ValueError, match="adata.raw is None"):
        salient_genes(adata, "group", n_top=5, use_raw=True)
    with pytest.raises(KeyError, match="no 'nope'"):
        salient_genes(adata, "group", n_top=5, layer="nope")
    with pytest.raises(ValueError, match="either `layer` or `use_raw=True`"):
        salient_genes(adata, "group", n_top=5, layer="x", use_raw=True)
    with pytest.raises(ValueError, match="positive integer or None"):
        salient_genes(adata, "group", n_top=5, n_genes=0)
