from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import h5py
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from scsalient._constants import NACTKeys, SalientKeys
from scsalient.tl import salient_genes

GROUPS = ["A", "B", "C", "D"]
N_SPECIFIC = 5
N_HOUSEKEEPING = 5
N_GENES = 200
N_TOP = 10


def planted_adata(seed: int = 0, n_cells: int = 40) -> ad.AnnData:
    """Softmax attention with group-specific genes and housekeeping genes attended everywhere.

    Housekeeping genes get a higher logit (4) than the specific genes of a group (3), so ranking
    by mean attention puts them first while TF-IDF removes them. The last cell of each group is
    a doublet-like cell that attends to the specific genes of the next group instead of its own.
    """
    rng = np.random.default_rng(seed)
    genes = [f"HK{i}" for i in range(N_HOUSEKEEPING)]
    for group in GROUPS:
        genes += [f"{group}_{i}" for i in range(N_SPECIFIC)]
    genes += [f"noise{i}" for i in range(N_GENES - len(genes))]
    labels = np.repeat(GROUPS, n_cells)
    logits = rng.normal(0.0, 0.5, size=(len(labels), N_GENES))
    logits[:, :N_HOUSEKEEPING] += 4.0
    for k, group in enumerate(GROUPS):
        rows = np.flatnonzero(labels == group)
        start = N_HOUSEKEEPING + k * N_SPECIFIC
        logits[rows[:-1], start : start + N_SPECIFIC] += 3.0
        other = N_HOUSEKEEPING + ((k + 1) % len(GROUPS)) * N_SPECIFIC
        logits[rows[-1], other : other + N_SPECIFIC] += 3.0
    attention = np.exp(logits)
    attention /= attention.sum(axis=1, keepdims=True)
    attention = attention.astype(np.float32)
    adata = ad.AnnData(
        X=attention.copy(),
        obs=pd.DataFrame(
            {"group": pd.Categorical(labels, categories=GROUPS)}, index=[f"c{i}" for i in range(len(labels))]
        ),
        var=pd.DataFrame(index=genes),
    )
    adata.obsm[NACTKeys.ATTENTION] = attention
    return adata


def specific(group: str) -> set[str]:
    return {f"{group}_{i}" for i in range(N_SPECIFIC)}


HOUSEKEEPING = {f"HK{i}" for i in range(N_HOUSEKEEPING)}


def reference_scores(
    attention: np.ndarray, labels: np.ndarray, n_top: int, tfidf: bool = True, min_frequency: float = 0.05
) -> pd.DataFrame:
    """Plain re-implementation (no ties in the planted data): genes x groups scores."""
    groups = list(dict.fromkeys(labels))
    top = np.argsort(-attention, axis=1)[:, :n_top]
    tf = np.zeros((len(groups), attention.shape[1]))
    mean = np.zeros_like(tf)
    for k, group in enumerate(groups):
        rows = np.flatnonzero(labels == group)
        for row in rows:
            tf[k, top[row]] += 1
        tf[k] /= len(rows)
        mean[k] = attention[rows].mean(axis=0)
    n_docs = ((tf > 0) & (tf >= min_frequency)).sum(axis=0)
    idf = np.array([np.log(len(groups) / d) if d else 0.0 for d in n_docs])
    score = tf * idf * mean if tfidf else mean
    return pd.DataFrame(score.T, columns=groups)


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    adata = planted_adata()
    salient_genes(adata, "group", n_top=N_TOP, n_genes=10)
    return adata


def names(adata: ad.AnnData, key: str = SalientKeys.SALIENT_GENES) -> pd.DataFrame:
    return pd.DataFrame(adata.uns[key]["names"])


def test_tfidf_ranks_specific_genes_above_housekeeping(adata):
    top = names(adata)
    for group in GROUPS:
        assert set(top[group][:N_SPECIFIC]) == specific(group)
        assert not HOUSEKEEPING & set(top[group])
    idf = pd.DataFrame(adata.uns[SalientKeys.SALIENT_GENES]["idf"])
    assert np.allclose(idf.iloc[:N_SPECIFIC], np.log(len(GROUPS)))  # only in their own group's document


def test_sporadic_listings_lower_idf_without_min_frequency():
    """The doublet-like cell of group D lists the specific genes of group A."""
    adata = planted_adata()
    strict = salient_genes(adata, "group", n_top=N_TOP, n_genes=N_GENES, min_frequency=0.0, inplace=False)
    default = salient_genes(adata, "group", n_top=N_TOP, n_genes=N_GENES, inplace=False)
    genes = sorted(specific("A"))
    np.testing.assert_allclose(strict["tf_all"].loc[genes, "D"], 1 / 40)
    idf_strict = pd.Series(strict["idf"]["A"], index=strict["names"]["A"])[genes]
    idf_default = pd.Series(default["idf"]["A"], index=default["names"]["A"])[genes]
    np.testing.assert_allclose(idf_strict, np.log(len(GROUPS) / 2), rtol=1e-6)
    np.testing.assert_allclose(idf_default, np.log(len(GROUPS)), rtol=1e-6)


def test_mean_attention_ranking_lets_housekeeping_in():
    adata = planted_adata()
    salient_genes(adata, "group", n_top=N_TOP, n_genes=10, tfidf=False, key_added="plain")
    top = names(adata, "plain")
    for group in GROUPS:
        assert set(top[group][:N_HOUSEKEEPING]) == HOUSEKEEPING
        assert set(top[group][N_HOUSEKEEPING:10]) == specific(group)
    record = adata.uns["plain"]
    assert record["params"]["tfidf"] is False
    assert np.allclose(pd.DataFrame(record["scores"]), pd.DataFrame(record["mean_attention"]), rtol=1e-6)


@pytest.mark.parametrize(("tfidf", "min_frequency"), [(True, 0.05), (True, 0.0), (True, 0.2), (False, 0.05)])
def test_scores_match_reference(tfidf, min_frequency):
    adata = planted_adata(seed=3)
    record = salient_genes(
        adata, "group", n_top=N_TOP, n_genes=15, tfidf=tfidf, min_frequency=min_frequency, inplace=False
    )
    assert SalientKeys.SALIENT_GENES not in adata.uns  # inplace=False does not write
    expected = reference_scores(
        adata.obsm[NACTKeys.ATTENTION], adata.obs["group"].to_numpy(), N_TOP, tfidf, min_frequency
    )
    expected.index = adata.var_names
    for group in GROUPS:
        best = expected[group].sort_values(ascending=False, kind="stable")
        got_names = list(record["names"][group])
        got_scores = record["scores"][group].astype(float)
        np.testing.assert_allclose(got_scores, best.iloc[:15].to_numpy(), rtol=1e-5)
        np.testing.assert_allclose(got_scores, expected.loc[got_names, group].to_numpy(), rtol=1e-5)
    tf = record["tf_all"]
    assert np.allclose(tf.sum(axis=0), N_TOP)  # every cell lists exactly n_top genes


def test_record_layout_and_statistics(adata):
    record = adata.uns[SalientKeys.SALIENT_GENES]
    fields = ("names", "scores", "logfoldchanges", "pvals", "pvals_adj", "mean_attention", "tf", "idf")
    for field in (*fields, "attention_log2_ratio"):
        assert record[field].dtype.names == tuple(GROUPS)
        assert len(record[field]) == 10
    assert record["params"] == {
        "groupby": "group",
        "reference": "rest",
        "method": "salient_genes",
        "use_raw": False,
        "layer": None,
        "corr_method": "benjamini-hochberg",
        "attention_key": NACTKeys.ATTENTION,
        "n_top": N_TOP,
        "n_genes": 10,
        "tfidf": True,
        "min_frequency": 0.05,
        "expression": "adata.X",
    }
    top = names(adata)
    for group in GROUPS:
        head = slice(0, N_SPECIFIC)
        assert (record["tf"][group][head] > 0.9).all()  # specific genes are in (almost) every list
        assert (record["attention_log2_ratio"][group][head] > 3).all()
        assert (record["pvals_adj"][group][head] < 1e-10).all()
        assert (record["pvals_adj"][group] >= record["pvals"][group]).all()
        np.testing.assert_allclose(
            record["tf_all"].loc[list(top[group]), group].to_numpy(), record["tf"][group], rtol=1e-6
        )
    # housekeeping genes are listed by every cell: no enrichment in any group
    assert np.allclose(record["tf_all"].loc[sorted(HOUSEKEEPING)], 1.0)
    means = record["mean_attention_all"]
    assert means.shape == (N_GENES, len(GROUPS))
    att = adata.obsm[NACTKeys.ATTENTION]
    np.testing.assert_allclose(means["B"], att[adata.obs["group"] == "B"].mean(axis=0), rtol=1e-5)


def test_scanpy_readers_accept_the_record(adata):
    df = sc.get.rank_genes_groups_df(adata, group=None, key=SalientKeys.SALIENT_GENES)
    assert len(df) == 10 * len(GROUPS)
    assert {"group", "names", "scores", "logfoldchanges", "pvals", "pvals_adj", "pct_nz_group"} <= set(
        df.columns
    )
    a = df[df["group"] == "A"]
    assert set(a["names"][:N_SPECIFIC]) == specific("A")
    assert (a["scores"].diff().dropna() <= 1e-12).all()  # sorted by score
    assert (
        len(sc.get.rank_genes_groups_df(adata, group="C", key=SalientKeys.SALIENT_GENES, pval_cutoff=1e-10))
        >= 5
    )

    axes = sc.pl.rank_genes_groups_dotplot(
        adata, key=SalientKeys.SALIENT_GENES, n_genes=3, show=False, dendrogram=False
    )
    labels = [tick.get_text() for tick in axes["mainplot_ax"].get_xticklabels()]
    assert labels == [gene for group in GROUPS for gene in names(adata)[group][:3]]
    assert all(label.split("_")[0] in GROUPS for label in labels)
    plt.close("all")


def test_record_survives_h5ad(adata, tmp_path):
    path = tmp_path / "salient.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    record = back.uns[SalientKeys.SALIENT_GENES]
    pd.testing.assert_frame_equal(pd.DataFrame(record["names"]), names(adata))
    assert record["params"]["method"] == "salient_genes"
    assert sc.get.rank_genes_groups_df(back, group="A", key=SalientKeys.SALIENT_GENES).shape[0] == 10


def _write_h5(path, array):
    handle = h5py.File(path, "w")
    handle.create_dataset("attention", data=array, chunks=(16, array.shape[1]))
    return handle


def test_streaming_gives_identical_results(tmp_path):
    adata = planted_adata(seed=1)
    dense = adata.obsm[NACTKeys.ATTENTION]
    # sparsify: keep the 40 largest values per row so that zeros occur (and are never listed)
    cutoff = -np.partition(-dense, 40, axis=1)[:, 40:41]
    sparse_values = np.where(dense > cutoff, dense, 0).astype(np.float32)

    results = {}
    for batch_size in (7, 10_000):
        results[("dense", batch_size)] = salient_genes(
            adata, "group", n_top=N_TOP, batch_size=batch_size, inplace=False
        )
    handle = _write_h5(tmp_path / "attention.h5", sparse_values)
    try:
        for name, matrix in {
            "sparse_dense": sparse_values,
            "csr": sp.csr_matrix(sparse_values),
            "csc": sp.csc_matrix(sparse_values),
            "h5py": handle["attention"],
        }.items():
            adata.obsm["other"] = matrix
            for batch_size in (7, 10_000):
                results[(name, batch_size)] = salient_genes(
                    adata, "group", attention_key="other", n_top=N_TOP, batch_size=batch_size, inplace=False
                )
    finally:
        handle.close()

    def same(first, second):
        for field in ("names", "scores", "tf", "idf", "mean_attention", "pvals", "attention_log2_ratio"):
            left, right = pd.DataFrame(first[field]), pd.DataFrame(second[field])
            if field == "names":
                pd.testing.assert_frame_equal(left, right)
            else:
                np.testing.assert_allclose(left.to_numpy(), right.to_numpy(), rtol=1e-6, atol=1e-12)
        pd.testing.assert_frame_equal(first["tf_all"], second["tf_all"])

    same(results[("dense", 7)], results[("dense", 10_000)])
    for name in ("sparse_dense", "csr", "csc", "h5py"):
        same(results[("sparse_dense", 10_000)], results[(name, 7)])
        same(results[("sparse_dense", 10_000)], results[(name, 10_000)])
    # the sparsified attention keeps the planted structure
    top = pd.DataFrame(results[("h5py", 7)]["names"])
    for group in GROUPS:
        assert set(top[group][:N_SPECIFIC]) == specific(group)


def test_ties_and_zeros_count_fractionally():
    attention = np.array(
        [
            [0.4, 0.2, 0.2, 0.2, 0.0],  # n_top=2: gene0 + one of three tied genes
            [0.5, 0.5, 0.0, 0.0, 0.0],  # only two positive values
            [0.1, 0.2, 0.3, 0.4, 0.0],
            [0.0, 0.0, 0.0, 0.5, 0.5],
        ],
        dtype=np.float32,
    )
    adata = ad.AnnData(
        X=attention,
        obs=pd.DataFrame({"g": pd.Categorical(["x", "x", "y", "y"])}, index=list("abcd")),
        var=pd.DataFrame(index=[f"g{i}" for i in range(5)]),
    )
    adata.obsm[NACTKeys.ATTENTION] = attention
    record = salient_genes(adata, "g", n_top=2, n_genes=5, inplace=False)
    counts = record["tf_all"] * 2  # two cells per group
    np.testing.assert_allclose(counts["x"], [2, 1 + 1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)
    np.testing.assert_allclose(counts["y"], [0, 0, 1, 2, 1], rtol=1e-6)
    # result does not depend on the gene order
    permuted = adata[:, ::-1].copy()
    permuted.obsm[NACTKeys.ATTENTION] = attention[:, ::-1].copy()
    again = salient_genes(permuted, "g", n_top=2, n_genes=5, inplace=False)
    pd.testing.assert_frame_equal(again["tf_all"].loc[record["tf_all"].index], record["tf_all"])


def test_unlabelled_cells_are_ignored():
    adata = planted_adata(seed=2)
    expected = salient_genes(adata, "group", n_top=N_TOP, inplace=False)
    extra = planted_adata(seed=5, n_cells=3)
    extra.obs_names = [f"x{i}" for i in range(extra.n_obs)]
    extra.obs["group"] = pd.Categorical([np.nan] * extra.n_obs, categories=GROUPS)
    extra.obsm[NACTKeys.ATTENTION][:, -1] = 100.0  # would dominate if counted
    both = ad.concat([adata, extra])
    both.obs["group"] = pd.Categorical(both.obs["group"], categories=GROUPS)
    result = salient_genes(both, "group", n_top=N_TOP, inplace=False)
    pd.testing.assert_frame_equal(pd.DataFrame(result["names"]), pd.DataFrame(expected["names"]))


def test_groups_without_cells_are_skipped():
    """A classifier's prediction column lists every class, also those never predicted."""
    adata = planted_adata(seed=3)
    expected = salient_genes(adata, "group", n_top=N_TOP, inplace=False)
    labels = adata.obs["group"].astype(object).to_numpy()
    labels[:3] = np.nan  # cells without a prediction
    adata.obs["prediction"] = pd.Categorical(labels, categories=["never", *GROUPS, "unseen"])
    with pytest.warns(UserWarning, match=r"Skipping groups \['never', 'unseen'\].*no cell"):
        salient_genes(adata, "prediction", n_top=N_TOP)
    record = adata.uns[SalientKeys.SALIENT_GENES]
    assert record["names"].dtype.names == tuple(GROUPS)
    assert list(record["tf_all"].columns) == GROUPS
    # the same ranking as without the empty groups, apart from the three cells left out of A
    assert set(record["names"]["B"][:N_SPECIFIC]) == set(expected["names"]["B"][:N_SPECIFIC]) == specific("B")
    alone = adata[adata.obs["prediction"].notna()].copy()
    alone.obs["prediction"] = alone.obs["prediction"].cat.remove_unused_categories()
    again = salient_genes(alone, "prediction", n_top=N_TOP, inplace=False)
    for field in ("names", "scores", "pvals"):
        pd.testing.assert_frame_equal(pd.DataFrame(record[field]), pd.DataFrame(again[field]))


def test_input_errors():
    adata = planted_adata()
    with pytest.raises(KeyError, match="'missing'"):
        salient_genes(adata, "missing")
    with pytest.raises(KeyError, match="nope"):
        salient_genes(adata, "group", attention_key="nope")
    adata.obsm["narrow"] = np.ones((adata.n_obs, 3), dtype=np.float32) / 3
    with pytest.raises(ValueError, match="3 columns but adata has 200 genes"):
        salient_genes(adata, "group", attention_key="narrow")
    with pytest.raises(ValueError, match="n_top"):
        salient_genes(adata, "group", n_top=N_GENES + 1)
    with pytest.raises(ValueError, match="n_top"):
        salient_genes(adata, "group", n_top=0)
    with pytest.raises(ValueError, match="batch_size"):
        salient_genes(adata, "group", batch_size=0)

    nan = adata.obsm[NACTKeys.ATTENTION].copy()
    nan[17, 3] = np.nan
    adata.obsm["nan"] = nan
    with pytest.raises(ValueError, match="NaN"):
        salient_genes(adata, "group", attention_key="nan", batch_size=8)
    negative = adata.obsm[NACTKeys.ATTENTION].copy()
    negative[0, 0] = -1
    adata.obsm["negative"] = negative
    with pytest.raises(ValueError, match="negative"):
        salient_genes(adata, "group", attention_key="negative")

    adata.obs["unlabelled"] = pd.Categorical([np.nan] * adata.n_obs, categories=GROUPS)
    with pytest.raises(ValueError, match="holds no labels"):
        salient_genes(adata, "unlabelled")
    adata.obs["single"] = "only"
    with pytest.raises(ValueError, match="at least two groups"):
        salient_genes(adata, "single")
    assert salient_genes(adata, "single", tfidf=False, inplace=False)["names"].dtype.names == ("only",)
    assert SalientKeys.SALIENT_GENES not in adata.uns


def test_n_genes_is_clipped_to_n_vars():
    adata = planted_adata()
    record = salient_genes(adata, "group", n_top=5, n_genes=10_000, inplace=False)
    assert len(record["names"]) == N_GENES
    assert record["params"]["n_genes"] == N_GENES
