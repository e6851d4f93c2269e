from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.stats

import scsalient as ss
from scsalient._constants import NACTKeys, SalientKeys
from scsalient.tl import annotate_clusters, query_cell_types, salient_genes
from scsalient.tl._salient_genes import _benjamini_hochberg

GROUPS = ["A", "B", "C"]


def record_adata(queries: dict[str, list[str]], var_names: list[str] | None = None) -> ad.AnnData:
    """AnnData whose uns holds a salient-gene record with the given ranked genes."""
    genes = var_names or sorted({gene for genes in queries.values() for gene in genes})
    n = max(len(genes) for genes in queries.values())
    names = pd.DataFrame({group: genes + [None] * (n - len(genes)) for group, genes in queries.items()})
    labels = [group for group in queries for _ in range(3)]
    adata = ad.AnnData(
        X=np.zeros((len(labels), len(genes)), dtype=np.float32),
        obs=pd.DataFrame({"cluster": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=genes),
    )
    adata.uns[SalientKeys.SALIENT_GENES] = {
        "names": names.to_records(index=False, column_dtypes="O"),
        "params": {"groupby": "cluster"},
    }
    return adata


def planted_database(
    rng: np.random.Generator, universe: list[str]
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Types Alpha/Beta/Gamma own the planted genes of groups A/B/C; decoys hold random genes."""
    rows = []
    planted = {}
    for group, cell_type in zip(GROUPS, ["Alpha", "Beta", "Gamma"], strict=True):
        genes = [f"{group}_{i}" for i in range(8)]
        planted[group] = genes
        # the type lists 6 of its 8 planted genes plus 20 unrelated genes
        listed = genes[:6] + list(rng.choice(universe, 20, replace=False))
        rows += [
            (cell_type, gene, float(w))
            for gene, w in zip(listed, rng.uniform(0.5, 1.0, len(listed)), strict=True)
        ]
    for d in range(10):  # decoys of all sizes
        size = int(rng.integers(3, 200))
        rows += [(f"Decoy{d}", gene, 1.0) for gene in rng.choice(universe, size, replace=False)]
    return pd.DataFrame(rows, columns=["cell_type", "gene", "weight"]), planted


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    background = [f"G{i}" for i in range(1500)]
    database, planted = planted_database(rng, background)
    # query: 10 genes per group, 6 planted, 4 random background genes
    queries = {group: planted[group][:6] + list(rng.choice(background, 4, replace=False)) for group in GROUPS}
    var_names = sorted(set(background) | {g for genes in planted.values() for g in genes})
    adata = record_adata(queries, var_names)
    return adata, database


@pytest.mark.parametrize("method", ["likelihood", "enrichment"])
def test_query_recovers_planted_types(planted, method):
    adata, database = planted
    results = query_cell_types(adata, database, method=method, n_genes=10)
    best = results.loc[results["rank"] == 1].set_index("group")["cell_type"]
    assert best.to_dict() == {"A": "Alpha", "B": "Beta", "C": "Gamma"}
    alpha = results[(results["group"] == "A") & (results["cell_type"] == "Alpha")].iloc[0]
    assert alpha["n_overlap"] >= 6
    assert {f"A_{i}" for i in range(6)} <= set(alpha["overlap"].split(";"))
    assert set(results.columns) >= {"group", "cell_type", "rank", "score", "n_overlap", "overlap"}
    # ranks are 1..n_types within each group and follow the score
    for _, sub in results.groupby("group", observed=True):
        assert sub["rank"].tolist() == list(range(1, len(sub) + 1))
        assert (np.diff(sub["score"].to_numpy()) <= 1e-12).all()
    stored = adata.uns[SalientKeys.CELL_TYPE_QUERY]
    pd.testing.assert_frame_equal(stored["results"], results)
    assert stored["params"]["method"] == method
    assert stored["params"]["groupby"] == "cluster"
    if method == "enrichment":
        assert alpha["fdr"] < 1e-6
        assert alpha["pvalue"] <= alpha["fdr"]


def test_likelihood_matches_hand_computation():
    adata = record_adata({"x": ["g1", "g3", "gX"]}, ["g1", "g2", "g3", "gX"])
    database = pd.DataFrame(
        {"cell_type": ["T1", "T1", "T2"], "gene": ["g1", "g2", "g3"], "weight": [2.0, 1.0, 1.0]}
    )
    results = query_cell_types(adata, database, alpha=1.0, n_genes=3).set_index("cell_type")
    # universe U = {g1, g2, g3}; gX is not in U and is ignored
    t1 = np.log((2 + 1) / (3 + 3)) + np.log((0 + 1) / (3 + 3))
    t2 = np.log((0 + 1) / (1 + 3)) + np.log((1 + 1) / (1 + 3))
    assert results.loc["T1", "score"] == pytest.approx(t1)
    assert results.loc["T2", "score"] == pytest.approx(t2)
    assert results.loc["T2", "rank"] == 1  # t2 > t1
    assert results.loc["T1", "overlap"] == "g1"
    assert results["n_query"].tolist() == [2, 2]
    # a type with only zero weights is uniform over U
    zero = database.assign(weight=[0.0, 0.0, 1.0])
    uniform = query_cell_types(adata, zero, alpha=1.0).set_index("cell_type")
    assert uniform.loc["T1", "score"] == pytest.approx(2 * np.log(1 / 3))
    # unweighted: both markers count 1
    flat = query_cell_types(adata, database, alpha=1.0, use_weights=False).set_index("cell_type")
    assert flat.loc["T1", "score"] == pytest.approx(np.log(2 / 5) + np.log(1 / 5))


def test_enrichment_matches_hypergeometric_and_bh():
    universe = [f"g{i}" for i in range(20)]
    adata = record_adata({"x": ["g0", "g1", "g2", "g3", "g19"]}, universe)
    database = pd.DataFrame(
        {
            "cell_type": ["T1"] * 4 + ["T2"] * 6 + ["T3"] * 3,
            "gene": ["g0", "g1", "g2", "g10"]
            + ["g3", "g11", "g12", "g13", "g14", "g15"]
            + ["g16", "g17", "g18"],
        }
    )
    # g19 is measured but in no type: universe = database genes measured = 13 genes; query in U = 4
    results = query_cell_types(adata, database, method="enrichment", n_genes=5).set_index("cell_type")
    expected = {
        "T1": scipy.stats.hypergeom.sf(3 - 1, 13, 4, 4),
        "T2": scipy.stats.hypergeom.sf(1 - 1, 13, 6, 4),
        "T3": 1.0,
    }
    for cell_type, p in expected.items():
        assert results.loc[cell_type, "pvalue"] == pytest.approx(p)
    p = np.array([expected["T1"], expected["T2"], expected["T3"]])
    order = np.argsort(p)
    bh = np.minimum.accumulate((p[order] * 3 / np.arange(1, 4))[::-1])[::-1]
    hand = np.empty(3)
    hand[order] = bh
    np.testing.assert_allclose(results.loc[["T1", "T2", "T3"], "fdr"], hand)
    assert results.loc["T1", "score"] == pytest.approx(-np.log10(expected["T1"]))
    assert results["n_query"].eq(4).all()
    assert results.loc["T1", "n_markers"] == 4


def test_benjamini_hochberg_by_hand(monkeypatch):
    p = np.array([0.01, 0.04, 0.03, 0.20])
    # sorted: 0.01, 0.03, 0.04, 0.20 -> x 4/rank: 0.04, 0.06, 0.0533, 0.20 -> running min from the end
    expected = np.array([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.20])
    np.testing.assert_allclose(_benjamini_hochberg(p), expected)
    two_rows = np.vstack([p, p[::-1]])
    np.testing.assert_allclose(_benjamini_hochberg(two_rows, axis=1), np.vstack([expected, expected[::-1]]))
    # the fallback for scipy without false_discovery_control gives the same values
    monkeypatch.delattr(scipy.stats, "false_discovery_control")
    np.testing.assert_allclose(_benjamini_hochberg(p), expected)
    np.testing.assert_allclose(_benjamini_hochberg(two_rows, axis=1), np.vstack([expected, expected[::-1]]))


def test_case_insensitive_matching_and_gene_symbols():
    adata = record_adata(
        {"x": ["ENSG3", "ENSG4"], "y": ["ENSG1", "ENSG2"]}, ["ENSG1", "ENSG2", "ENSG3", "ENSG4"]
    )
    adata.var["symbol"] = ["MS4A1", "CD79A", "NKG7", "GNLY"]
    database = {"B cell": ["Ms4a1", "Cd79a"], "NK cell": ["Nkg7", "Gnly"]}  # mouse-style symbols
    results = query_cell_types(adata, database, gene_symbols="symbol")
    best = results.loc[results["rank"] == 1].set_index("group")["cell_type"]
    assert best.to_dict() == {"x": "NK cell", "y": "B cell"}
    assert results.set_index(["group", "cell_type"]).loc[("y", "B cell"), "overlap"] == "MS4A1;CD79A"
    with pytest.warns(UserWarning, match="get no cell-type name"):
        strict = query_cell_types(adata, database, gene_symbols="symbol", case_sensitive=True)
    assert strict["n_overlap"].eq(0).all()
    with pytest.raises(KeyError, match="nope"):
        query_cell_types(adata, database, gene_symbols="nope")


@pytest.mark.parametrize("method", ["likelihood", "enrichment"])
@pytest.mark.parametrize("column", ["gene_symbols", "feature_name"])
def test_ensembl_var_names_use_the_symbol_column(planted, method, column):
    """var_names as Ensembl IDs (as Kang ships): the symbols in adata.var are matched instead."""
    adata, database = planted
    adata = adata.copy()
    symbols = adata.var_names.to_numpy()
    ids = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    to_id = dict(zip(symbols, ids, strict=True))
    record = adata.uns[SalientKeys.SALIENT_GENES]
    names = pd.DataFrame(record["names"]).map(lambda gene: to_id.get(gene, gene))
    record["names"] = names.to_records(index=False, column_dtypes="O")
    adata.var_names = ids
    adata.var["gene_ids"] = ids
    adata.var[column] = symbols
    with pytest.warns(UserWarning, match=rf"Ensembl gene IDs.*adata.var\['{column}'\]"):
        results = query_cell_types(adata, database, method=method, n_genes=10)
    best = results.loc[results["rank"] == 1].set_index("group")
    assert best["cell_type"].to_dict() == {"A": "Alpha", "B": "Beta", "C": "Gamma"}
    assert (best["n_overlap"] >= 6).all()
    assert adata.uns[SalientKeys.CELL_TYPE_QUERY]["params"]["gene_symbols"] == column
    annotate_clusters(adata, "cluster", min_margin=0)
    assert adata.obs[NACTKeys.CELL_TYPE].notna().all()

    # without a symbol column there is nothing to match: a clear error, not names from nothing
    del adata.var[column]
    with pytest.raises(ValueError, match=r"Ensembl gene IDs.*no symbol column.*gene_symbols="):
        query_cell_types(adata, database, method=method, n_genes=10)


def test_groups_are_never_named_from_zero_overlap():
    adata = record_adata({"x": ["CD3E", "CD3D"], "y": ["LYZ", "CD14"], "z": ["FOO1", "FOO2"]})
    database = {"B": ["MS4A1", "CD79A", "LYZ9"], "T": ["CD3E", "CD3D", "CD2"], "Mono": ["LYZ", "CD14"]}
    with pytest.warns(UserWarning, match=r"Groups \['z'\] get no cell-type name.*none of the query genes"):
        results = query_cell_types(adata, database)
    z = results[results["group"] == "z"]
    assert z["n_overlap"].eq(0).all() and z["n_query"].eq(0).all()
    with pytest.warns(UserWarning, match=r"Groups \['z'\] get no cell-type name"):
        annotate_clusters(adata, "cluster", min_margin=0, min_overlap=2)
    labels = adata.obs[NACTKeys.CELL_TYPE]
    assert labels[adata.obs["cluster"] == "z"].isna().all()
    named = adata.obs.loc[adata.obs["cluster"] != "z"]
    assert (labels[named.index].astype(str) == named["cluster"].map({"x": "T", "y": "Mono"})).all()
    assert set(labels.cat.categories) == {"T", "Mono"}

    # a query gene in the database, but the best-ranked type lists none of them: no name either
    adata = record_adata({"x": ["CD3E", "CD3D"], "w": ["G1", "G2"]})
    # "Big" lists G1 with a tiny weight among heavy markers, so the likelihood prefers "Small"
    unlisted = pd.DataFrame(
        {
            "cell_type": ["Small"] * 2 + ["T"] * 2 + ["Big"] * 40,
            "gene": ["S1", "S2", "CD3E", "CD3D", "G1"] + [f"B{i}" for i in range(39)],
            "weight": [1.0] * 4 + [0.01] + [10.0] * 39,
        }
    )
    with pytest.warns(UserWarning, match=r"Groups \['w'\].*best-ranked type of \['w'\] lists none"):
        results = query_cell_types(adata, unlisted)
    w = results[results["group"] == "w"].set_index("cell_type")
    assert w.loc["Big", "n_overlap"] == 1 and w.loc["Small", "rank"] == 1
    with pytest.warns(UserWarning, match="get no cell-type name"):
        annotate_clusters(adata, "cluster")
    assert adata.obs.loc[adata.obs["cluster"] == "w", NACTKeys.CELL_TYPE].isna().all()


def test_query_accepts_marker_sources(tmp_path):
    adata = record_adata({"x": ["CD3E", "CD3D"], "y": ["LYZ", "CD14"]})
    gmt = tmp_path / "types.gmt"
    gmt.write_text("T\tna\tCD3E\tCD3D\tCD2\nMono\tna\tLYZ\tCD14\n")
    results = query_cell_types(adata, str(gmt))
    best = results.loc[results["rank"] == 1].set_index("group")["cell_type"]
    assert best.to_dict() == {"x": "T", "y": "Mono"}
    assert adata.uns[SalientKeys.CELL_TYPE_QUERY]["params"]["database"] == "types.gmt"
    subset = query_cell_types(adata, {"T": ["CD3E"], "Mono": ["LYZ"]}, groups=["y"])
    assert subset["group"].unique().tolist() == ["y"]


def test_query_errors(planted):
    adata, database = planted
    with pytest.raises(ValueError, match="method"):
        query_cell_types(adata, database, method="magic")
    with pytest.raises(KeyError, match="'missing'"):
        query_cell_types(adata, database, key="missing")
    with pytest.raises(KeyError, match="Z"):
        query_cell_types(adata, database, groups=["Z"])
    with pytest.raises(ValueError, match="alpha"):
        query_cell_types(adata, database, alpha=0)
    with pytest.raises(ValueError, match="column"):
        query_cell_types(adata, database.rename(columns={"gene": "symbol"}))
    with pytest.raises(ValueError, match="non-negative"):
        query_cell_types(adata, database.assign(weight=-1.0))


def test_annotate_clusters_writes_rank_one_types():
    adata = record_adata({"x": ["CD3E", "CD3D"], "y": ["LYZ", "CD14"], "z": ["CD3E", "CD2"]})
    query_cell_types(adata, {"T": ["CD3E", "CD3D", "CD2"], "Mono": ["LYZ", "CD14"]})
    annotate_clusters(adata, "cluster", min_margin=0, min_overlap=2)
    labels = adata.obs[NACTKeys.CELL_TYPE]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    expected = adata.obs["cluster"].map({"x": "T", "y": "Mono", "z": "T"}).astype(str)
    assert (labels.astype(str) == expected).all()
    assert set(labels.cat.categories) == {"T", "Mono"}

    # groups that were not queried stay unlabelled
    query_cell_types(
        adata, {"T": ["CD3E", "CD3D", "CD2"], "Mono": ["LYZ", "CD14"]}, groups=["x"], key_added="q"
    )
    annotate_clusters(adata, "cluster", key="q", key_added="partial", min_margin=0, min_overlap=2)
    assert adata.obs["partial"].isna().sum() == 6
    with pytest.raises(KeyError, match="nothing"):
        annotate_clusters(adata, "cluster", key="nothing")
    with pytest.raises(KeyError, match="'missing'"):
        annotate_clusters(adata, "missing")


def test_end_to_end_on_planted_attention(tmp_path):
    """salient_genes -> query -> annotate -> h5ad round trip."""
    rng = np.random.default_rng(1)
    genes = [f"{g}_{i}" for g in GROUPS for i in range(5)] + [f"N{i}" for i in range(285)]
    labels = np.repeat(GROUPS, 30)
    logits = rng.normal(0, 0.3, size=(len(labels), len(genes)))
    for k, group in enumerate(GROUPS):
        logits[labels == group, 5 * k : 5 * k + 5] += 3
    attention = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    adata = ad.AnnData(
        X=attention.astype(np.float32),
        obs=pd.DataFrame({"cluster": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=genes),
    )
    adata.obsm[NACTKeys.ATTENTION] = adata.X.copy()
    salient_genes(adata, "cluster", n_top=8, n_genes=5)
    database = {"Alpha": [f"A_{i}" for i in range(5)], "Beta": [f"B_{i}" for i in range(5)], "Gamma": ["C_0"]}
    query_cell_types(adata, database)
    annotate_clusters(adata, "cluster", key_added="default")
    mapping = dict(zip(adata.obs["cluster"], adata.obs["default"], strict=True))
    # Gamma lists a single gene of C's query: too little evidence for a name by default
    assert mapping == {"A": "Alpha", "B": "Beta", "C": "Unassigned"}
    assert adata.uns["default"]["groups"].set_index("group").loc["C", "status"] == "few overlapping genes"
    annotate_clusters(adata, "cluster", min_margin=0, min_overlap=1)
    mapping = dict(zip(adata.obs["cluster"], adata.obs[NACTKeys.CELL_TYPE], strict=True))
    assert mapping == {"A": "Alpha", "B": "Beta", "C": "Gamma"}
    path = tmp_path / "annotated.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(
        back.uns[SalientKeys.CELL_TYPE_QUERY]["results"].reset_index(drop=True),
        adata.uns[SalientKeys.CELL_TYPE_QUERY]["results"].reset_index(drop=True),
        check_dtype=False,
        check_categorical=False,
    )


# ------------------------------------------------------------------------------------------
# cluster names are right or say "Unassigned": the margin rule of annotate_clusters

#: cDC2 markers overlap monocyte markers (LYZ, CST3, HLA class II): the issue's wrong "Monocytes"
DATABASE = {
    "Monocytes": ["LYZ", "CST3", "HLA-DRA", "CD14", "FCN1", "S100A8", "S100A9", "VCAN"],
    "Dendritic cells": ["LYZ", "CST3", "HLA-DRA", "CLEC10A", "FCER1A", "CD1C", "HLA-DQA1", "HLA-DPB1"],
    "T cells": ["CD3E", "CD3D", "CD2", "IL7R", "TRAC", "LCK"],
    "B cells": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1"],
}


def test_low_margin_cluster_is_unassigned_with_its_candidates_kept():
    adata = record_adata(
        {
            "mono": ["CD14", "FCN1", "S100A8", "S100A9", "LYZ", "VCAN"],  # clearly monocytes
            "mixed": ["LYZ", "CST3", "HLA-DRA", "GENE1", "GENE2"],  # shared by monocytes and DCs
            "t": ["CD3E", "CD3D", "CD2", "IL7R"],  # clearly T cells
        }
    )
    results = query_cell_types(adata, DATABASE)
    mixed = results[results["group"] == "mixed"].set_index("cell_type")
    assert mixed.loc["Monocytes", "n_overlap"] == mixed.loc["Dendritic cells", "n_overlap"] == 3
    annotate_clusters(adata, "cluster")
    labels = adata.obs[NACTKeys.CELL_TYPE]
    by_cluster = dict(zip(adata.obs["cluster"].astype(str), labels.astype(str), strict=True))
    assert by_cluster == {"mono": "Monocytes", "mixed": "Unassigned", "t": "T cells"}
    assert list(labels.cat.categories) == ["Monocytes", "T cells", "Unassigned"]

    record = adata.uns[NACTKeys.CELL_TYPE]
    groups = record["groups"].set_index("group")
    assert groups.loc["mixed", "status"] == "low margin"
    assert groups.loc["mixed", "margin"] < record["params"]["min_margin"] == 3.0
    assert {groups.loc["mixed", "best"], groups.loc["mixed", "second"]} == {"Monocytes", "Dendritic cells"}
    assert groups.loc["mono", "status"] == groups.loc["t", "status"] == "named"
    assert (groups.loc[["mono", "t"], "margin"] >= 3.0).all()
    # the candidates stay for the user: the best three of every group, with their evidence
    candidates = record["candidates"]
    assert len(candidates) == 3 * 3
    mixed_candidates = candidates[candidates["group"] == "mixed"].set_index("cell_type")
    assert {"Monocytes", "Dendritic cells"} <= set(mixed_candidates.index)
    assert mixed_candidates.loc["Monocytes", "overlap"].split(";") == ["LYZ", "CST3", "HLA-DRA"]

    # without the rule every group gets its rank-1 type, as before
    annotate_clusters(adata, "cluster", min_margin=0, min_overlap=1, key_added="top1")
    assert adata.obs.loc[adata.obs["cluster"] == "mixed", "top1"].isin(["Monocytes", "Dendritic cells"]).all()
    assert adata.uns["top1"]["groups"].set_index("group").loc["mixed", "status"] == "named"


def test_few_overlapping_genes_give_unassigned_and_zero_never_names():
    adata = record_adata(
        {"one": ["MS4A1", "GENE1", "GENE2"], "none": ["GENE3", "GENE4"], "t": ["CD3E", "CD3D", "CD2", "IL7R"]}
    )
    query_cell_types(adata, DATABASE)
    with pytest.warns(UserWarning, match=r"Groups \['none'\] get no cell-type name"):
        annotate_clusters(adata, "cluster")
    groups = adata.uns[NACTKeys.CELL_TYPE]["groups"].set_index("group")
    assert groups.loc["one", "status"] == "few overlapping genes"
    assert groups.loc["none", "status"] == "no overlapping gene"
    labels = adata.obs.groupby("cluster", observed=True)[NACTKeys.CELL_TYPE].first()
    assert labels["one"] == "Unassigned"
    assert pd.isna(labels["none"])  # never named from zero overlapping genes, not even "Unassigned"
    assert labels["t"] == "T cells"
    with pytest.warns(UserWarning, match="get no cell-type name"):
        annotate_clusters(adata, "cluster", min_margin=0, min_overlap=1, key_added="loose")
    loose = adata.obs.groupby("cluster", observed=True)["loose"].first()
    assert loose["one"] == "B cells" and pd.isna(loose["none"])


def test_margin_arguments_are_checked():
    adata = record_adata({"t": ["CD3E", "CD3D"], "b": ["MS4A1", "CD79A"]})
    query_cell_types(adata, DATABASE)
    with pytest.raises(ValueError, match="min_margin"):
        annotate_clusters(adata, "cluster", min_margin=-1)
    with pytest.raises(ValueError, match="min_overlap.*never named from zero"):
        annotate_clusters(adata, "cluster", min_overlap=0)
    with pytest.raises(ValueError, match="n_candidates"):
        annotate_clusters(adata, "cluster", n_candidates=0)


def simulated_salient_genes(epochs: int, **simulation) -> tuple[ad.AnnData, dict[str, list[str]]]:
    """Simulated cells in 4 Leiden clusters, N-ACT trained on them, salient genes per cluster."""
    adata = ss.datasets.simulate(**simulation)
    markers = {name: list(genes) for name, genes in adata.uns["simulation"]["markers"].items()}
    ss.pp.cluster_labels(adata, n_clusters=4)
    ss.model.NACT.setup_anndata(adata, labels_key="leiden")
    model = ss.model.NACT(adata)
    model.train(max_epochs=epochs, batch_size=128, enable_progress_bar=False)
    model.annotate()
    ss.tl.salient_genes(adata, groupby="leiden")
    return adata, markers


def test_unsupervised_workflow_on_the_simulator_says_unassigned_for_twin_types():
    """Clusters -> N-ACT (tiny epochs) -> salient genes -> query -> names; a database type that
    duplicates another's markers leaves that cluster without a clear winner."""
    adata, markers = simulated_salient_genes(epochs=3, n_cells=600, n_cell_types=4, n_markers=20)
    database = {**markers, "twin_of_type_0": list(markers["type_0"])}
    ss.tl.query_cell_types(adata, database)
    annotate_clusters(adata, "leiden")
    majority = adata.obs.groupby("leiden", observed=True)["cell_type"].agg(
        lambda s: s.value_counts().index[0]
    )
    groups = adata.uns[NACTKeys.CELL_TYPE]["groups"].set_index("group")
    annotate_clusters(adata, "leiden", min_margin=0, min_overlap=1, key_added="top1")
    top1 = adata.uns["top1"]["groups"].set_index("group")
    n_right = 0
    for cluster, truth in majority.items():
        row = groups.loc[str(cluster)]
        if truth == "type_0":
            assert row["name"] == "Unassigned", groups
            assert {row["best"], row["second"]} == {"type_0", "twin_of_type_0"}
            assert row["margin"] == pytest.approx(0.0)  # the twins score alike
        else:
            # right, or unsure after three epochs: never a wrong name
            assert row["name"] in (truth, "Unassigned"), groups
            n_right += top1.loc[str(cluster), "name"] == truth
    assert n_right >= 2, top1  # the rank-1 candidates of the other clusters are right
    named = adata.obs[NACTKeys.CELL_TYPE].astype(str)
    assert (named[adata.obs["cell_type"] == "type_0"] == "Unassigned").mean() > 0.9


@pytest.mark.realdata
def test_real_pbmcs_with_ensembl_ids_are_named_or_unassigned(shared_data):
    """Kang control PBMCs (muscat subset) with Ensembl IDs as var_names: the symbol column is found
    on its own, and every cluster's name follows the margin rule, with its candidates kept."""
    path = shared_data / "transfer" / "pbmc_kang_ctrl_muscat.h5ad"
    markers = shared_data / "markers" / "PanglaoDB_markers_27_Mar_2020.tsv.gz"
    if not (path.exists() and markers.exists()):
        pytest.skip("the Kang muscat subset or the PanglaoDB export is not in the shared data")
    adata = ad.read_h5ad(path)
    adata.var["gene_symbols"] = adata.var_names.to_numpy()
    adata.var_names = adata.var["ensembl_id"].astype(str).to_numpy()
    adata.var_names_make_unique()
    ss.pp.cluster_labels(adata, resolution=1.0)
    ss.model.NACT.setup_anndata(adata, labels_key="leiden")
    model = ss.model.NACT(adata)
    model.train(max_epochs=3, batch_size=128, enable_progress_bar=False)
    model.annotate()
    ss.tl.salient_genes(adata, groupby="leiden")
    database = ss.datasets.marker_database(markers, species="human", tissue=["Immune system", "Blood"])
    with pytest.warns(UserWarning, match=r"Ensembl gene IDs.*adata.var\['gene_symbols'\]"):
        ss.tl.query_cell_types(adata, database)
    assert adata.uns[SalientKeys.CELL_TYPE_QUERY]["params"]["gene_symbols"] == "gene_symbols"
    annotate_clusters(adata, "leiden")
    record = adata.uns[NACTKeys.CELL_TYPE]
    groups = record["groups"].set_index("group")
    assert set(groups.index) == set(adata.obs["leiden"].astype(str))
    clear = (groups["margin"] >= record["params"]["min_margin"]) & (
        groups["n_overlap"] >= record["params"]["min_overlap"]
    )
    assert (groups.loc[clear, "name"] == groups.loc[clear, "best"]).all()
    assert (groups.loc[~clear & (groups["n_overlap"] > 0), "name"] == "Unassigned").all()
    assert groups["overlap"].str.len().gt(0).all()  # names and doubts come with their genes
    candidates = record["candidates"]
    assert candidates.groupby("group", observed=True).size().eq(3).all()
    by_cluster = adata.obs.groupby("leiden", observed=True)[NACTKeys.CELL_TYPE].first().astype(str)
    assert (by_cluster == groups["name"].reindex(by_cluster.index.astype(str)).astype(str).to_numpy()).all()

    # the recipe: checked against the Wilcoxon ranks of every gene (Ensembl IDs found again)
    counts = ad.AnnData(adata.X.copy(), obs=adata.obs[[]], var=adata.var[[]])
    sc.pp.normalize_total(counts, target_sum=1e4)
    sc.pp.log1p(counts)
    adata.layers["log1p"] = counts.X
    sc.tl.rank_genes_groups(
        adata, "leiden", layer="log1p", method="wilcoxon", n_genes=None, key_added="wilcoxon"
    )
    with pytest.warns(UserWarning, match="Ensembl gene IDs"):
        ss.tl.query_cell_types(adata, database, key="wilcoxon", method="auc", key_added="expression_query")
    annotate_clusters(
        adata, "leiden", key=[SalientKeys.CELL_TYPE_QUERY, "expression_query"], key_added="agreed"
    )
    agreed = adata.uns["agreed"]["groups"].set_index("group")
    named = agreed["status"] == "named"
    assert (agreed.loc[named, "name"] == agreed.loc[named, "best_expression_query"]).all()
    assert (agreed.loc[named, "n_overlap"] >= 3).all()
    disagree = agreed["best"] != agreed["best_expression_query"]
    assert not named[disagree].any()
    assert (agreed.loc[disagree, "name"].fillna("Unassigned") == "Unassigned").all()
    # monocyte and B-cell clusters are never named after another lineage
    majority = adata.obs.groupby("leiden", observed=True)["cell_type"].agg(
        lambda x: x.value_counts().index[0]
    )
    allowed = {"CD14+ Monocytes": {"Monocytes"}, "B cells": {"B cells", "B cells naive", "B cells memory"}}
    for cluster, label in majority.items():
        name = agreed.loc[str(cluster), "name"]
        if label in allowed and name != "Unassigned":
            assert name in allowed[label], (cluster, label, name)


def test_agreement_names_the_simulated_clusters():
    """Simulator: N-ACT's salient genes and the Wilcoxon ranks agree on the planted types."""
    adata, markers = simulated_salient_genes(
        epochs=5, n_cells=1200, n_cell_types=4, n_genes=400, n_markers=25, marker_fold=8.0
    )
    ss.tl.query_cell_types(adata, markers)
    logged = sc.pp.log1p(sc.pp.normalize_total(adata, target_sum=1e4, inplace=False)["X"])
    adata.layers["log1p"] = logged
    sc.tl.rank_genes_groups(
        adata, "leiden", layer="log1p", method="wilcoxon", n_genes=None, key_added="wilcoxon"
    )
    ss.tl.query_cell_types(adata, markers, key="wilcoxon", method="auc", key_added="expression_query")
    annotate_clusters(adata, "leiden", key=[SalientKeys.CELL_TYPE_QUERY, "expression_query"])
    majority = adata.obs.groupby("leiden", observed=True)["cell_type"].agg(
        lambda x: x.value_counts().index[0]
    )
    groups = adata.uns[NACTKeys.CELL_TYPE]["groups"].set_index("group")
    names = groups["name"].reindex(majority.index.astype(str)).to_numpy()
    assert (names == majority.astype(str).to_numpy()).all(), groups


def scored_record_adata(scores: dict[str, dict[str, float]], var_names: list[str]) -> ad.AnnData:
    """AnnData with a rank_genes_groups-style record (names and scores, best first) per group."""
    adata = record_adata({group: list(s) for group, s in scores.items()}, var_names)
    names, values = {}, {}
    n = max(len(by_gene) for by_gene in scores.values())
    for group, by_gene in scores.items():
        ordered = sorted(by_gene.items(), key=lambda item: -item[1])
        pad = n - len(ordered)  # shorter records end in empty names, as scanpy's do
        names[group] = [gene for gene, _ in ordered] + [None] * pad
        values[group] = [value for _, value in ordered] + [np.nan] * pad
    adata.uns["ranks"] = {
        "names": pd.DataFrame(names).to_records(index=False, column_dtypes="O"),
        "scores": pd.DataFrame(values).to_records(index=False, column_dtypes="float32"),
        "params": {"groupby": "cluster"},
    }
    return adata


def test_auc_query_matches_the_mann_whitney_statistic():
    rng = np.random.default_rng(3)
    genes = [f"G{i}" for i in range(60)]
    markers = {"Alpha": genes[:5], "Beta": genes[5:12], "Gamma": ["G3", "G40", "G41", "NOT_MEASURED"]}
    # group A: Alpha's markers score high; group B lists only 40 genes (the rest tie at the bottom)
    score_a = {g: float(rng.normal(3.0 if g in markers["Alpha"] else 0.0)) for g in genes}
    score_b = {g: float(rng.normal(2.0 if g in markers["Beta"] else 0.0)) for g in genes[:40]}
    adata = scored_record_adata({"A": score_a, "B": score_b}, genes)
    with pytest.warns(UserWarning, match="ranks as few as 40 of the 60 genes"):
        results = query_cell_types(adata, markers, key="ranks", method="auc", n_genes=5)
    assert results.loc[results["rank"] == 1].set_index("group")["cell_type"].to_dict() == {
        "A": "Alpha",
        "B": "Beta",
    }
    for group, by_gene in (("A", score_a), ("B", score_b)):
        floor = min(by_gene.values()) - 1.0
        full = np.array([by_gene.get(g, floor) for g in genes], dtype=np.float32).astype(np.float64)
        for cell_type, listed in markers.items():
            measured = [g for g in listed if g in genes]
            inside = np.isin(genes, measured)
            u = scipy.stats.mannwhitneyu(full[inside], full[~inside]).statistic
            n, rest = inside.sum(), (~inside).sum()
            auc = u / (n * rest)
            z = (auc - 0.5) / np.sqrt((len(genes) + 1) / (12 * n * rest))
            row = results[(results["group"] == group) & (results["cell_type"] == cell_type)].iloc[0]
            assert row["auc"] == pytest.approx(auc, abs=1e-9)
            assert row["score"] == pytest.approx(z, abs=1e-9)
            assert row["n_markers"] == len(measured)
    # the overlap reports the markers among the top n_genes of the ranking
    alpha = results[(results["group"] == "A") & (results["cell_type"] == "Alpha")].iloc[0]
    top = sorted(score_a, key=lambda g: -score_a[g])[:5]
    assert set(alpha["overlap"].split(";")) == set(top) & set(markers["Alpha"])
    assert adata.uns["cell_type_query"]["params"]["method"] == "auc"
    with pytest.raises(ValueError, match="takes no `universe`"):
        query_cell_types(adata, markers, key="ranks", method="auc", universe="database")
    with pytest.raises(ValueError, match="needs the record's 'scores'"):
        query_cell_types(adata, markers, method="auc")  # the salient-gene stand-in has no scores


def test_agreeing_queries_name_a_group_and_disagreeing_ones_leave_it_unassigned():
    genes = [f"G{i}" for i in range(30)] + ["CD3E", "CD3D", "CD2", "LYZ", "CD14", "FCN1", "CST3"]
    database = {
        "T cells": ["CD3E", "CD3D", "CD2"],
        "Monocytes": ["LYZ", "CD14", "FCN1"],
        "DC": ["CST3", "LYZ"],
    }
    base = dict.fromkeys(genes, 0.0)
    scores = {
        "t": {**base, "CD3E": 5.0, "CD3D": 4.0, "CD2": 3.0},
        "mono": {**base, "LYZ": 5.0, "CD14": 4.0, "FCN1": 3.0},
        "odd": {**base, "CD3E": 5.0, "CD3D": 4.0, "CD2": 3.0},  # expression says T cells
    }
    adata = scored_record_adata(scores, genes)
    # the first query (salient-gene stand-in) says monocytes for the odd group
    adata.uns[SalientKeys.SALIENT_GENES]["names"] = pd.DataFrame(
        {"t": ["CD3E", "CD3D", "CD2"], "mono": ["LYZ", "CD14", "FCN1"], "odd": ["LYZ", "CD14", "FCN1"]}
    ).to_records(index=False, column_dtypes="O")
    query_cell_types(adata, database)
    query_cell_types(adata, database, key="ranks", method="auc", key_added="expression_query")
    annotate_clusters(adata, "cluster", key=["cell_type_query", "expression_query"])
    labels = dict(
        zip(adata.obs["cluster"].astype(str), adata.obs[NACTKeys.CELL_TYPE].astype(str), strict=True)
    )
    assert labels == {"t": "T cells", "mono": "Monocytes", "odd": "Unassigned"}
    record = adata.uns[NACTKeys.CELL_TYPE]
    groups = record["groups"].set_index("group")
    assert groups.loc["odd", "status"] == "queries disagree"
    assert groups.loc["odd", "best"] == "Monocytes"
    assert groups.loc["odd", "best_expression_query"] == "T cells"
    assert record["params"]["key"] == ["cell_type_query", "expression_query"]
    assert record["params"]["min_margin"] == [0.0, 0.0]
    # a single query names the odd group after its own rank-1 type
    annotate_clusters(adata, "cluster", min_margin=0, key_added="alone")
    assert set(adata.obs.loc[adata.obs["cluster"] == "odd", "alone"].astype(str)) == {"Monocytes"}
    # a further query's own margin and overlap apply to it
    annotate_clusters(
        adata,
        "cluster",
        key=["cell_type_query", "expression_query"],
        min_margin=[0.0, 1e9],
        key_added="strict",
    )
    assert set(adata.obs["strict"].astype(str)) == {"Unassigned"}
    with pytest.raises(ValueError, match="2 queries"):
        annotate_clusters(adata, "cluster", key=["cell_type_query", "expression_query"], min_margin=[0.0])
    with pytest.raises(ValueError, match="twice"):
        annotate_clusters(adata, "cluster", key=["cell_type_query", "cell_type_query"])
    with pytest.raises(KeyError, match="nothing"):
        annotate_clusters(adata, "cluster", key=["cell_type_query", "nothing"])
