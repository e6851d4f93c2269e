"""The unsupervised N-ACT pipeline on real PBMCs: clusters -> attention -> salient genes -> names."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scsalient as ss

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

#: PanglaoDB types that count as a match for each author label of the Kang data
MATCHES = {
    "B cells": {"B cells", "B cells naive", "B cells memory"},
    "CD4 T cells": {"T cells", "T helper cells", "T memory cells", "T regulatory cells", "T cells naive"},
    "CD14+ Monocytes": {"Monocytes"},
    "NK cells": {"NK cells"},
}


def test_clusters_are_named_by_their_salient_genes(shared_data):
    path = shared_data / "kang2018_pbmc_8k.h5ad"
    markers = shared_data / "markers" / "PanglaoDB_markers_27_Mar_2020.tsv.gz"
    if not (path.exists() and markers.exists()):
        pytest.skip("Kang data or the PanglaoDB export not found in the shared data")
    adata = ad.read_h5ad(path)
    adata.var_names = adata.var["gene_symbols"].astype(str).to_numpy()
    adata.var_names_make_unique()

    ss.pp.cluster_labels(adata, n_clusters=4)  # no author labels from here on
    ss.model.NACT.setup_anndata(adata, labels_key="leiden")
    model = ss.model.NACT(adata, n_ensemble=1)
    model.train(max_epochs=3, lr=1e-3, batch_size=256, enable_progress_bar=False)
    model.annotate()
    database = ss.datasets.marker_database(markers, species="human", tissue=["Immune system", "Blood"])
    by_cluster = adata.obs.groupby("leiden", observed=True)["cell_type"]
    majority = by_cluster.agg(lambda labels: labels.value_counts().index[0])
    assert sorted(majority) == sorted(MATCHES)  # one cluster per author type

    ranks = {}
    for tfidf in (True, False):
        ss.tl.salient_genes(adata, groupby="leiden", tfidf=tfidf)
        results = ss.tl.query_cell_types(adata, database, method="likelihood")
        for cluster, label in majority.items():
            hits = results[results["group"].astype(str) == str(cluster)].sort_values("rank")
            matching = hits[hits["cell_type"].isin(MATCHES[label])]
            ranks[tfidf, label] = int(matching["rank"].min()) if len(matching) else np.inf
    ranks = pd.Series(ranks).unstack(0)
    # Measured over four runs (3 and 6 epochs, one thread): TF-IDF ranks 1/1/1/1 twice and
    # 1/2/1/1 twice (CD14+ monocytes second behind dendritic cells, whose PanglaoDB markers share
    # LYZ, CST3 and the HLA class II genes); plain mean attention ranks monocytes 2-3 and NK
    # cells 1-2 (gamma-delta T cells first), never better than TF-IDF in total.
    assert (ranks[True] <= 2).all(), ranks
    assert (ranks[True] == 1).sum() >= 3, ranks
    assert ranks[True].sum() <= ranks[False].sum(), ranks
