"""End-to-end demo of scsalient on real PBMCs bundled with scanpy (pbmc68k_reduced).

1. Supervised NACT on the author labels (``bulk_labels``) with a held-out 20% of the cells:
   prints accuracy and macro-F1 next to a logistic regression on the same split.
2. Unsupervised NACT: Leiden clusters as labels, then salient genes per cluster (TF-IDF on
   the attention); if marker databases are found beside the checkout, each cluster is named
   by a PanglaoDB query.
3. Writes ``<out>/pbmc68k_nact.h5ad`` and PNG figures.

Usage: ``python demo/run_demo.py --out demo_output``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import scanpy as sc
import scvi
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

import scsalient as ss

MARKERS = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "markers"
    / "PanglaoDB_markers_27_Mar_2020.tsv.gz"
)


def load_pbmc() -> sc.AnnData:
    """pbmc68k_reduced with its log-normalised expression (``.raw``) as the data."""
    reduced = sc.datasets.pbmc68k_reduced()
    adata = reduced.raw.to_adata()
    adata.obsm["X_umap"] = reduced.obsm["X_umap"]
    adata.obs = reduced.obs[["bulk_labels", "n_counts"]].copy()
    return adata


def supervised(adata: sc.AnnData, out: Path) -> None:
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    train_idx, test_idx = train_test_split(
        np.arange(adata.n_obs), test_size=0.2, stratify=labels, random_state=0
    )
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    ss.model.NACT.setup_anndata(train, labels_key="bulk_labels")
    model = ss.model.NACT(train)
    start = time.perf_counter()
    model.train(enable_progress_bar=False)
    seconds = time.perf_counter() - start
    predicted = model.predict(test)
    truth = test.obs["bulk_labels"].astype(str)
    logreg = LogisticRegression(max_iter=2000).fit(train.X, train.obs["bulk_labels"].astype(str))
    baseline = logreg.predict(test.X)
    print(
        f"\n[supervised] NACT on {train.n_obs} cells x {train.n_vars} genes, {len(model.classes)} types, "
        f"trained in {seconds:.1f} s"
    )
    print(
        f"  held-out {test.n_obs} cells: accuracy {accuracy_score(truth, predicted):.3f}, "
        f"macro-F1 {f1_score(truth, predicted, average='macro'):.3f}"
    )
    print(
        f"  logistic regression, same split: accuracy {accuracy_score(truth, baseline):.3f}, "
        f"macro-F1 {f1_score(truth, baseline, average='macro'):.3f}"
    )

    model.annotate(adata)  # all 700 cells: calibrated predictions, explanations, latent space
    sc.pl.umap(adata, color=["bulk_labels", "nact_prediction", "nact_confidence"], wspace=0.45, show=False)
    matplotlib.pyplot.savefig(out / "umap_prediction.png", dpi=120, bbox_inches="tight")
    matplotlib.pyplot.close("all")
    test.obs["truth"] = truth.to_numpy()
    model.annotate(test, explanation=False)
    ece = ss.metrics.expected_calibration_error(test.obsm["nact_probabilities"], test.obs["truth"].to_numpy())
    print(f"  expected calibration error of the probabilities on the held-out cells: {ece:.3f}")
    ss.pl.reliability_diagram(test, "truth", "nact_probabilities", show=False, save=out / "reliability.png")
    ss.tl.salient_genes(adata, groupby="nact_prediction", key_added="salient_genes")
    ss.pl.salient_genes(
        adata,
        n_genes=5,
        kind="heatmap",
        standard_scale="var",
        show=False,
        save=out / "attention_top_genes.png",
    )
    ss.pl.attention_correlation(
        adata, groupby="nact_prediction", show=False, save=out / "attention_correlation.png"
    )
    top = sc.get.rank_genes_groups_df(adata, group=None, key="salient_genes")
    print("  most salient genes per predicted type:")
    for group, frame in top.groupby("group", observed=True):
        print(f"    {group:<28} {', '.join(frame['names'].head(6))}")


def unsupervised(adata: sc.AnnData, out: Path) -> None:
    work = adata.copy()
    ss.pp.cluster_labels(work, n_clusters=8, key_added="leiden")
    ss.model.NACT.setup_anndata(work, labels_key="leiden")
    model = ss.model.NACT(work)
    model.train(enable_progress_bar=False)
    model.annotate()
    ss.tl.salient_genes(work, groupby="leiden", key_added="salient_genes_leiden")
    agreement = (work.obs["nact_prediction"].astype(str) == work.obs["leiden"].astype(str)).mean()
    print(f"\n[unsupervised] NACT on 8 Leiden clusters: agreement with the clusters {agreement:.3f}")
    if MARKERS.exists():
        database = ss.datasets.marker_database(MARKERS, species="human", tissue=["Immune system", "Blood"])
        ss.tl.query_cell_types(work, database, key="salient_genes_leiden", key_added="cell_type_query")
        # checked against the expression ranks of every gene: a cluster is named when both agree
        sc.tl.rank_genes_groups(work, "leiden", method="wilcoxon", n_genes=None, key_added="wilcoxon_leiden")
        ss.tl.query_cell_types(
            work, database, key="wilcoxon_leiden", method="auc", key_added="expression_query"
        )
        ss.tl.annotate_clusters(
            work, "leiden", key=["cell_type_query", "expression_query"], key_added="nact_cell_type"
        )
        groups = work.uns["nact_cell_type"]["groups"].set_index("group")
        table = work.obs.groupby("leiden", observed=True).agg(
            named=("nact_cell_type", "first"),
            majority_author_label=("bulk_labels", lambda s: s.value_counts().index[0]),
        )
        table["salient_genes_say"] = groups["best"].reindex(table.index.astype(str)).to_numpy()
        table["expression_says"] = groups["best_expression_query"].reindex(table.index.astype(str)).to_numpy()
        print("  clusters named where the query of their salient genes and of their expression ranks agree:")
        print(table.to_string())
        ss.pl.cell_type_query(work, n_types=3, show=False, save=out / "cluster_queries.png")
        adata.obs["nact_cell_type"] = work.obs["nact_cell_type"]
    else:
        print(f"  (marker database not found at {MARKERS}; skipping the cell-type query)")
    adata.obs["leiden"] = work.obs["leiden"]
    adata.uns["salient_genes_leiden"] = work.uns["salient_genes_leiden"]
    sc.pl.umap(work, color=["leiden", "nact_prediction"], show=False)
    matplotlib.pyplot.savefig(out / "umap_unsupervised.png", dpi=120, bbox_inches="tight")
    matplotlib.pyplot.close("all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    scvi.settings.seed = 0
    start = time.perf_counter()
    adata = load_pbmc()
    supervised(adata, args.out)
    unsupervised(adata, args.out)
    path = args.out / "pbmc68k_nact.h5ad"
    adata.write_h5ad(path)
    print(f"\nWrote {path} and figures to {args.out}/ in {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
