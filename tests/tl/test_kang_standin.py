"""Salient genes and marker queries on real PBMCs, with normalized expression standing in for attention.

Each cell's "attention" is its log1p(CP10k) expression scaled to sum to 1, so the read-out must
recover the known markers of the four Kang et al. (2018) cell types.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from scsalient._constants import NACTKeys, SalientKeys
from scsalient.datasets import marker_database
from scsalient.tl import query_cell_types, salient_genes

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
KANG = DATA / "kang2018_pbmc_8k.h5ad"
PANGLAO = DATA / "markers" / "PanglaoDB_markers_27_Mar_2020.tsv.gz"
CELLMARKER = DATA / "markers" / "CellMarker2_Human_Aug.csv"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.slow,
    pytest.mark.skipif(not KANG.exists(), reason=f"shared dataset {KANG} not found"),
]


@pytest.fixture(scope="module")
def kang() -> ad.AnnData:
    adata = ad.read_h5ad(KANG)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    row_sums = np.asarray(x.sum(axis=1)).ravel()
    adata.obsm[NACTKeys.ATTENTION] = sp.csr_matrix(sp.diags(1 / row_sums) @ x, dtype=np.float32)
    salient_genes(adata, "cell_type", n_top=100, n_genes=25)
    return adata


def top_symbols(
    adata: ad.AnnData, group: str, key: str = SalientKeys.SALIENT_GENES, n: int = 25
) -> list[str]:
    symbols = adata.var["gene_symbols"]
    return [symbols[gene] for gene in adata.uns[key]["names"][group][:n]]


def test_salient_genes_are_known_markers(kang):
    assert set(top_symbols(kang, "B cells")) >= {"CD79A", "MS4A1", "HLA-DRA", "CD74"}
    assert set(top_symbols(kang, "NK cells")) >= {"GNLY", "NKG7", "GZMB", "PRF1"}
    assert set(top_symbols(kang, "CD14+ Monocytes")) >= {"S100A8", "S100A9", "TYROBP", "FCER1G"}
    assert set(top_symbols(kang, "CD4 T cells")) >= {"CD3D", "CCR7", "IL7R", "LTB"}
    # TF-IDF keeps the ubiquitously expressed genes out
    for group in kang.obs["cell_type"].cat.categories:
        assert not {"MALAT1", "B2M", "TMSB4X"} & set(top_symbols(kang, group))


def test_mean_attention_alone_is_dominated_by_ubiquitous_genes(kang):
    salient_genes(kang, "cell_type", n_top=100, n_genes=25, tfidf=False, key_added="by_mean")
    for group in kang.obs["cell_type"].cat.categories:
        assert "MALAT1" in top_symbols(kang, group, "by_mean", n=5) or "FTH1" in top_symbols(
            kang, group, "by_mean", 5
        )
        assert "B2M" in top_symbols(kang, group, "by_mean", n=10)


def test_sporadic_listings_flood_strict_idf(kang):
    """With min_frequency=0 almost every gene is in every group's document (IDF 0)."""
    record = salient_genes(kang, "cell_type", n_top=100, n_genes=25, min_frequency=0.0, inplace=False)
    in_all = ((record["tf_all"] > 0).sum(axis=1) == 4).sum()
    assert in_all > 0.9 * kang.n_vars
    strict_tf = np.median(record["tf"]["B cells"])
    default_tf = np.median(kang.uns[SalientKeys.SALIENT_GENES]["tf"]["B cells"])
    assert strict_tf < 0.01 < 0.1 < default_tf


def ranks(results: pd.DataFrame, group: str, pattern: str) -> int:
    sub = results[results["group"] == group]
    hits = sub[sub["cell_type"].str.fullmatch(pattern)]
    return int(hits["rank"].min()) if len(hits) else 10**6


def best(results: pd.DataFrame, group: str) -> str:
    return results[(results["group"] == group) & (results["rank"] == 1)]["cell_type"].iloc[0]


@pytest.mark.skipif(not PANGLAO.exists(), reason=f"{PANGLAO} not found")
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"use_weights": False}, {"method": "enrichment"}],
    ids=["likelihood", "unweighted", "enrichment"],
)
def test_panglaodb_query(kang, kwargs):
    database = marker_database(PANGLAO, species="human")
    results = query_cell_types(kang, database, gene_symbols="gene_symbols", **kwargs)
    # The B-cell query is led by MHC class II genes (HLA-DRA, HLA-DRB1, HLA-DP*, CD74), which
    # PanglaoDB lists more completely for dendritic cells: a B-cell type comes second.
    assert best(results, "B cells") == "Dendritic cells"
    assert ranks(results, "B cells", r"B cells( naive| memory)?") == 2
    # The cytotoxic NK genes are shared with gamma-delta T cells in PanglaoDB: NK cells come second.
    assert best(results, "NK cells") == "Gamma delta T cells"
    assert ranks(results, "NK cells", "NK cells") == 2
    assert ranks(results, "CD4 T cells", r"T (memory )?cells( naive)?|T helper cells") == 1
    assert ranks(results, "CD14+ Monocytes", "Monocytes") <= 2


@pytest.mark.skipif(not PANGLAO.exists(), reason=f"{PANGLAO} not found")
def test_ensembl_var_names_are_matched_by_their_symbols(kang):
    """Kang ships Ensembl IDs as var_names and the symbols in var["gene_symbols"]."""
    assert all(gene.startswith("ENSG") for gene in kang.var_names)
    database = marker_database(PANGLAO, species="human")
    with pytest.warns(UserWarning, match=r"Ensembl gene IDs.*adata.var\['gene_symbols'\]"):
        auto = query_cell_types(kang, database, key_added="auto_symbols")
    explicit = query_cell_types(kang, database, gene_symbols="gene_symbols")
    pd.testing.assert_frame_equal(auto, explicit)
    top = auto[auto["rank"] == 1].set_index("group")
    assert (top["n_overlap"] >= 3).all()
    assert top["cell_type"].nunique() == 4  # not one type named from nothing for every group
    assert kang.uns["auto_symbols"]["params"]["gene_symbols"] == "gene_symbols"


@pytest.mark.skipif(not CELLMARKER.exists(), reason=f"{CELLMARKER} not found")
@pytest.mark.parametrize("method", ["likelihood", "enrichment"])
def test_cellmarker_query(kang, method):
    database = marker_database(CELLMARKER, species="human")
    results = query_cell_types(kang, database, method=method, gene_symbols="gene_symbols")
    assert best(results, "B cells") == "B cell"
    assert best(results, "NK cells") == "Natural killer cell"
    assert best(results, "CD14+ Monocytes") == "Monocyte"
    assert "T cell" in best(results, "CD4 T cells")
