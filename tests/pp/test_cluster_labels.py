from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

import scsalient as ss


@pytest.fixture(scope="module")
def sim():
    return ss.datasets.simulate(
        n_cells=600, n_genes=300, n_cell_types=4, marker_fold=8.0, library_size=1500, seed=3
    )


def test_exact_number_of_clusters_recovers_planted_types(sim):
    adata = sim.copy()
    keys_before = set(adata.obs) | set(adata.uns) | set(adata.obsm) | set(adata.obsp)
    ss.pp.cluster_labels(adata, n_clusters=4)
    assert adata.obs["leiden"].nunique() == 4
    assert adata.uns["leiden"]["params"]["n_clusters"] == 4
    # planted types come back as clusters
    assert adjusted_rand_score(adata.obs["cell_type"], adata.obs["leiden"]) > 0.9
    # nothing but the documented keys is written
    assert (set(adata.obs) | set(adata.uns) | set(adata.obsm) | set(adata.obsp)) - keys_before == {"leiden"}


def test_resolution_search_reaches_other_counts(sim):
    adata = sim.copy()
    ss.pp.cluster_labels(adata, n_clusters=6, key_added="fine")
    assert adata.obs["fine"].nunique() == 6


def test_lognormalised_input_and_existing_graph(sim):
    adata = sim.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    ss.pp.cluster_labels(adata, resolution=0.5)
    first = adata.obs["leiden"].copy()
    sc.pp.pca(adata)
    sc.pp.neighbors(adata)
    ss.pp.cluster_labels(adata, resolution=0.5, key_added="from_graph")
    assert adjusted_rand_score(first, adata.obs["from_graph"]) > 0.8


def test_unreachable_count_raises(sim):
    adata = sim.copy()
    with pytest.raises(ValueError, match="n_clusters"):
        ss.pp.cluster_labels(adata, n_clusters=0)
    with pytest.raises(ValueError, match="exactly 250 clusters"):
        ss.pp.cluster_labels(adata, n_clusters=250, max_iterations=3)
    bad = adata.copy()
    bad.X = bad.X.toarray()
    bad.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ss.pp.cluster_labels(bad, n_clusters=3)


def test_more_cells_than_the_exact_neighbour_search_handles():
    # scanpy switches to an approximate neighbour search above 8,192 cells
    adata = ss.datasets.simulate(n_cells=9000, n_genes=150, n_cell_types=3, marker_fold=8.0, seed=4)
    ss.pp.cluster_labels(adata, n_clusters=3, n_top_genes=None, n_pcs=20)
    assert adata.obs["leiden"].nunique() == 3
    assert adjusted_rand_score(adata.obs["cell_type"], adata.obs["leiden"]) > 0.9
