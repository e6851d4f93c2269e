"""Naming benchmark: are cluster names right, and does the margin rule say "Unassigned" when unsure?

For every labelled dataset with a marker database that covers its types, cells are clustered
(Leiden with scanpy's defaults, :func:`scsalient.pp.cluster_labels`) and every cluster is named by

* ``nact``: the unsupervised N-ACT workflow (N-ACT trained on the clusters, salient genes per
  cluster into :func:`scsalient.tl.query_cell_types`, checked against scanpy's Wilcoxon ranks of
  every gene into the same database with ``method="auc"``; :func:`scsalient.tl.annotate_clusters`
  names a cluster when both queries rank the same type first);
* ``nact_chosen``: the same with the agreement rule's settings chosen on the SELECTION datasets;
* ``nact_alone``: the salient-gene query alone with its margin rule (the default before);
* ``nact_top1``: the salient-gene query's rank-1 candidate with no rule;
* ``wilcoxon``: scanpy's Wilcoxon ranks into the same likelihood query, rank-1 candidate (a user's
  baseline); ``wilcoxon_auc``: the Wilcoxon ranks of every gene into the ``"auc"`` query, rank-1;
* ``wilcoxon_margin``: the same with the margin rule (to separate the rule from the ranking);
* ``decoupler_ora`` / ``decoupler_ulm``: decoupler's ORA and ULM per cell, then its
  ``rankby_group`` per cluster (the decoupler tutorial's annotation recipe);
* ``marker_gene_overlap``: :func:`scanpy.tl.marker_gene_overlap` of the Wilcoxon ranks with the
  database, the type with the largest overlap.

All methods see the same clusters and the same PanglaoDB markers (human markers with immune and
blood types for blood and tumour immune cells, pancreas types for pancreas; mouse markers with
brain and vasculature types for the mouse motor cortex). Each cluster's name is scored
against the cluster's majority label through the Cell Ontology: correct when the name is the
label's term, its parent (one ``is_a`` step up) or a descendant; wrong otherwise; "Unassigned"
(and no name at all) counted apart. The margin rule's two settings (``min_margin``,
``min_overlap``) are chosen on the SELECTION datasets only and reported on the others.

Run: ``python benchmarks/naming.py [--budget quick|full] [--seed N] [--out DIR]`` (one thread
each); ``--datasets NAME ... --merge`` re-runs some datasets and keeps the others' rows;
a seed other than 0 writes ``naming_seed<N>.{json,md}``; ``--summarise [RUN.json ...]`` writes
``naming_seeds.{json,md}`` in ``--out``: the counts of every method averaged over the runs with
different seeds (each seed draws its own clusters, subsample and N-ACT network; without paths,
``naming.json`` and ``naming_seed*.json`` in ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from datasets import DATA_DIR, ONTOLOGY_FILE  # noqa: E402
from datasets import DATASETS as LOADERS  # noqa: E402
from naming_terms import DATABASE_TERMS, LABEL_TERMS  # noqa: E402

RESULTS = BENCH_DIR / "results"
PANGLAO = DATA_DIR / "markers" / "PanglaoDB_markers_27_Mar_2020.tsv.gz"
IMMUNE = ["Immune system", "Blood"]
PANCREAS = ["Pancreas"]
#: PanglaoDB files the brain's endothelial cells and pericytes under "Vasculature"
BRAIN = ["Brain", "Vasculature"]


class Source(NamedTuple):
    """Where a dataset's cells come from and which PanglaoDB markers name them."""

    #: file under the shared data folder, "scanpy" (pbmc68k_reduced) or a loader name of
    #: ``datasets.py`` (MOp: its RNA modality with the global labels)
    data: str
    #: PanglaoDB organs
    tissues: list[str]
    #: PanglaoDB species ("human" or "mouse"): the markers of that species, in its symbol style
    species: str = "human"


DATASETS = {
    "kang2018_pbmc_8k": Source("kang2018_pbmc_8k.h5ad", IMMUNE),
    "pbmc68k_reduced": Source("scanpy", IMMUNE),
    "spectra_tils_1k": Source("spectra_tils_1k_lognorm.h5ad", IMMUNE),
    "pbmc_ding_celseq2": Source("transfer/pbmc_ding_celseq2_scmoo.h5ad", IMMUNE),
    "pbmc_kang_ctrl": Source("transfer/pbmc_kang_ctrl_muscat.h5ad", IMMUNE),
    "pbmc_kang_stim": Source("transfer/pbmc_kang_stim_muscat.h5ad", IMMUNE),
    "pancreas_baron": Source("transfer/pancreas_baron_cepo.h5ad", PANCREAS),
    "pancreas_lawlor": Source("transfer/pancreas_lawlor_cepo.h5ad", PANCREAS),
    "pancreas_segerstolpe": Source("transfer/pancreas_segerstolpe_cepo.h5ad", PANCREAS),
    "pancreas_wang": Source("transfer/pancreas_wang_scclassify.h5ad", PANCREAS),
    "pancreas_xin": Source("transfer/pancreas_xin_scclassify.h5ad", PANCREAS),
    "mop_snareseq2": Source("mop", BRAIN, species="mouse"),
}
#: the margin rule is chosen on these datasets and reported on the others
SELECTION = ("pbmc_ding_celseq2", "pbmc_kang_stim", "pancreas_xin")
MARGINS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
#: settings of query_cell_types tried for the N-ACT path (the first is the package default)
QUERY_VARIANTS = {
    "likelihood": {},
    "likelihood_unweighted": {"use_weights": False},
    "likelihood_50_genes": {"n_genes": 50},
    "enrichment": {"method": "enrichment"},
}
OVERLAPS = (1, 2, 3)
MAX_CELLS = 3000  # Kang and MOp are subsampled to keep training small
EPOCHS = {"quick": 10, "full": 30}
#: margins of the agreement rule (the likelihood's and the auc query's) tried on the SELECTION datasets
AGREEMENT_MARGINS = (0.0, 0.5, 1.0, 2.0, 3.0)
METHODS = (
    "nact",
    "nact_chosen",
    "nact_alone",
    "nact_top1",
    "wilcoxon",
    "wilcoxon_auc",
    "wilcoxon_margin",
    "decoupler_ora",
    "decoupler_ulm",
    "marker_gene_overlap",
)
BASELINES = ("wilcoxon", "wilcoxon_auc", "decoupler_ora", "decoupler_ulm", "marker_gene_overlap")
UNASSIGNED = "Unassigned"


# --------------------------------------------------------------------------------------------
# data


def load(name: str, seed: int):
    import anndata as ad
    import scanpy as sc

    source = DATASETS[name].data
    if source == "scanpy":
        reduced = sc.datasets.pbmc68k_reduced()  # X is scaled; raw holds log-normalised values
        adata = ad.AnnData(
            X=reduced.raw.X.copy(), obs=reduced.obs[["bulk_labels"]].copy(), var=reduced.raw.var
        )
        adata.obs["cell_type"] = adata.obs.pop("bulk_labels").astype(str)
    elif source in LOADERS:
        adata = LOADERS[source].load()
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    else:
        adata = ad.read_h5ad(DATA_DIR / source)
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    adata.var_names_make_unique()
    if adata.n_obs > MAX_CELLS:
        rng = np.random.default_rng(seed)
        adata = adata[np.sort(rng.choice(adata.n_obs, MAX_CELLS, replace=False))].copy()
    return adata


def lognormalised(adata):
    """log1p(CP10k) of counts, log-normalised input as given; var_names as gene symbols."""
    import anndata as ad
    import scanpy as sc

    from scsalient.model.base._checks import describe_location, inspect_expression

    work = ad.AnnData(X=adata.X.copy(), obs=adata.obs.copy(), var=adata.var.copy())
    if inspect_expression(work.X, describe_location(None), work.obs_names, warn=False) == "counts":
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    if "gene_symbols" in work.var.columns and str(work.var_names[0]).startswith("ENS"):
        work.var_names = work.var["gene_symbols"].astype(str).to_numpy()
        work.var_names_make_unique()
    return work


def database(source: Source) -> pd.DataFrame:
    """PanglaoDB markers of the dataset's species and organs."""
    import scsalient as ss

    return ss.datasets.marker_database(PANGLAO, species=source.species, tissue=source.tissues)


# --------------------------------------------------------------------------------------------
# names per method


def nact_query(adata, db: pd.DataFrame, epochs: int, seed: int) -> tuple[dict[str, pd.DataFrame], dict]:
    """The unsupervised workflow: N-ACT on the clusters -> salient genes -> query results per variant."""
    import scsalient as ss

    work = adata.copy()
    ss.model.NACT.setup_anndata(work, labels_key="leiden")
    model = ss.model.NACT(work, n_ensemble=1)
    start = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=256, enable_progress_bar=False)
    seconds = time.perf_counter() - start
    model.annotate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small clusters, symbol column found
        ss.tl.salient_genes(work, groupby="leiden")
        results = {
            name: ss.tl.query_cell_types(work, db, **kwargs) for name, kwargs in QUERY_VARIANTS.items()
        }
    agreement = float((work.obs["nact_prediction"].astype(str) == work.obs["leiden"].astype(str)).mean())
    gene_symbols = work.uns["cell_type_query"]["params"]["gene_symbols"]
    return results, {
        "train_seconds": seconds,
        "agreement_with_clusters": agreement,
        "gene_symbols": gene_symbols,
    }


#: genes per group scanpy's rank_genes_groups keeps by default: what a user's marker_gene_overlap reads
SCANPY_N_GENES = 100


def wilcoxon_queries(lognorm, db: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """scanpy's Wilcoxon ranks of every gene, once, into the likelihood query (its top 25 genes)
    and into the ``"auc"`` query (the whole ranking)."""
    import scanpy as sc

    import scsalient as ss

    sc.tl.rank_genes_groups(lognorm, "leiden", method="wilcoxon", n_genes=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        likelihood = ss.tl.query_cell_types(lognorm, db, key="rank_genes_groups", key_added="wilcoxon_query")
        auc = ss.tl.query_cell_types(
            lognorm, db, key="rank_genes_groups", method="auc", key_added="auc_query"
        )
    return likelihood, auc


def agreeing(
    first: pd.DataFrame, second: pd.DataFrame, margins: tuple[float, float], min_overlap: int
) -> dict[str, str | None]:
    """Names of :func:`scsalient.tl.annotate_clusters` with two queries that must agree."""
    import anndata as ad

    import scsalient as ss

    groups = sorted(set(first["group"].astype(str)))
    work = ad.AnnData(obs=pd.DataFrame({"leiden": pd.Categorical(groups)}, index=[f"g{g}" for g in groups]))
    work.uns["first"] = {"results": first, "params": {"method": "likelihood"}}
    work.uns["second"] = {"results": second, "params": {"method": "auc"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ss.tl.annotate_clusters(
            work,
            "leiden",
            key=["first", "second"],
            min_margin=list(margins),
            min_overlap=min_overlap,
            key_added="names",
        )
    names = work.uns["names"]["groups"].set_index("group")["name"]
    return {str(g): (None if n is None else str(n)) for g, n in names.items()}


def top1(results: pd.DataFrame) -> dict[str, str | None]:
    best = results.loc[results["rank"] == 1]
    return {
        str(g): (str(t) if n > 0 else None)
        for g, t, n in zip(best["group"], best["cell_type"], best["n_overlap"], strict=True)
    }


def with_margin(results: pd.DataFrame, min_margin: float, min_overlap: int) -> dict[str, str | None]:
    from scsalient.tl._query import cluster_names

    names = cluster_names(results, min_margin=min_margin, min_overlap=min_overlap)["name"]
    return {str(g): (None if n is None else str(n)) for g, n in names.items()}


def decoupler_names(lognorm, db: pd.DataFrame) -> dict[str, dict[str, str | None]]:
    """decoupler's annotation recipe: per-cell ORA / ULM scores, ranked per cluster."""
    import decoupler as dc

    net = db.rename(columns={"cell_type": "source", "gene": "target"})[["source", "target"]].drop_duplicates()
    net = net.assign(weight=1.0)
    out = {}
    for method in ("ora", "ulm"):
        work = lognorm.copy()
        getattr(dc.mt, method)(data=work, net=net, tmin=3)
        scores = dc.pp.get_obsm(work, key=f"score_{method}")
        ranked = dc.tl.rankby_group(
            adata=scores, groupby="leiden", reference="rest", method="t-test_overestim_var"
        )
        ranked = ranked[ranked["stat"] > 0]
        best = ranked.groupby("group", observed=True).head(1).set_index("group")["name"]
        out[f"decoupler_{method}"] = {
            str(g): (str(best[g]) if g in best.index else None) for g in lognorm.obs["leiden"].cat.categories
        }
    return out


def overlap_names(lognorm, db: pd.DataFrame) -> dict[str, str | None]:
    import scanpy as sc

    markers = {t: set(frame["gene"].astype(str)) for t, frame in db.groupby("cell_type")}
    overlap = sc.tl.marker_gene_overlap(
        lognorm, markers, key="rank_genes_groups", top_n_markers=SCANPY_N_GENES
    )
    out = {}
    for cluster in overlap.columns:
        column = overlap[cluster]
        out[str(cluster)] = str(column.idxmax()) if column.max() > 0 else None
    return out


# --------------------------------------------------------------------------------------------
# scoring through the Cell Ontology


class OntologyJudge:
    """Correct / wrong for a (name, label) pair through the Cell Ontology."""

    def __init__(self) -> None:
        from scsalient.datasets import cell_ontology

        self.ontology = cell_ontology(ONTOLOGY_FILE)
        by_name = {}
        for term in self.ontology.terms():
            if term.name is not None:
                by_name.setdefault(term.name.lower(), term.id)
        self.by_name = by_name
        self.labels = {label: self._resolve(name) for label, name in LABEL_TERMS.items()}
        self.database = {label: self._resolve(name) for label, name in DATABASE_TERMS.items()}

    def _resolve(self, name: str) -> str:
        if name.startswith("CL:"):
            return self.ontology[name].id
        try:
            return self.by_name[name.lower()]
        except KeyError:
            raise ValueError(f"{name!r} is not a term name of {ONTOLOGY_FILE}") from None

    def is_correct(self, name: str, label: str, steps: int = 1) -> bool | None:
        """True / False; None when the database name has no term (counted wrong, and reported).

        Correct: the label's term, an ancestor within ``steps`` ``is_a`` steps, or a descendant.
        """
        truth = self.labels[label]
        term = self.database.get(name)
        if term is None:
            return None
        label_term = self.ontology[truth]
        if term == truth:
            return True
        if term in {t.id for t in label_term.superclasses(distance=steps, with_self=False)}:
            return True
        return term in {t.id for t in label_term.subclasses(with_self=False)}


#: scorings: "strict" is the issue's rule (an ancestor within one step); "lineage" also accepts
#: ancestors up to three steps (PanglaoDB's "T cells" for a CD4-positive, alpha-beta T cell
#: cluster: three is_a steps up, and PanglaoDB has no name in between)
SCORINGS = {"strict": 1, "lineage": 3}


def score_names(
    names: dict[str, str | None], majority: dict[str, str], judge: OntologyJudge, steps: int = 1
) -> tuple[dict, list[dict]]:
    counts = {"correct": 0, "wrong": 0, "unassigned": 0}
    rows, unmapped = [], set()
    for cluster, label in majority.items():
        name = names.get(cluster)
        if name is None or name == UNASSIGNED:
            verdict = "unassigned"
        else:
            correct = judge.is_correct(name, label, steps)
            if correct is None:
                unmapped.add(name)
            verdict = "correct" if correct else "wrong"
        counts[verdict] += 1
        rows.append({"cluster": cluster, "label": label, "name": name, "verdict": verdict})
    named = counts["correct"] + counts["wrong"]
    counts["n_clusters"] = len(majority)
    counts["coverage"] = named / len(majority) if majority else float("nan")
    counts["accuracy"] = counts["correct"] / named if named else float("nan")
    if unmapped:
        counts["names_without_term"] = sorted(unmapped)
    return counts, rows


# --------------------------------------------------------------------------------------------
# the run


def run_dataset(name: str, judge: OntologyJudge, epochs: int, seed: int) -> dict:
    import scsalient as ss

    clock = time.perf_counter()
    adata = load(name, seed)
    unknown = sorted(set(adata.obs["cell_type"]) - set(LABEL_TERMS))
    if unknown:
        raise ValueError(
            f"{name}: labels without a Cell Ontology term in naming_terms.LABEL_TERMS: {unknown}"
        )
    ss.pp.cluster_labels(adata, resolution=1.0, random_state=seed)  # Leiden, scanpy defaults
    lognorm = lognormalised(adata)
    lognorm.obs["leiden"] = adata.obs["leiden"].to_numpy()
    lognorm.obs["leiden"] = lognorm.obs["leiden"].astype("category")
    majority = {
        str(c): labels.value_counts().index[0]
        for c, labels in adata.obs.groupby("leiden", observed=True)["cell_type"]
    }
    db = database(DATASETS[name])

    nact_variants, nact_info = nact_query(adata, db, epochs, seed)
    nact_results = nact_variants["likelihood"]
    wilcoxon_results, auc_results = wilcoxon_queries(lognorm, db)
    names = {
        "nact_top1": top1(nact_results),
        "wilcoxon": top1(wilcoxon_results),
        "wilcoxon_auc": top1(auc_results),
        **decoupler_names(lognorm, db),
        "marker_gene_overlap": overlap_names(lognorm, db),
    }
    grid = {}
    sources = [(f"nact:{variant}", results) for variant, results in nact_variants.items()]
    sources.append(("wilcoxon", wilcoxon_results))
    sources.append(("wilcoxon_auc", auc_results))
    for first in AGREEMENT_MARGINS:
        for second in AGREEMENT_MARGINS:
            for overlap in OVERLAPS:
                agreed = agreeing(nact_results, auc_results, (first, second), overlap)
                for scoring, steps in SCORINGS.items():
                    counts, _ = score_names(agreed, majority, judge, steps)
                    grid[f"{scoring}|agree|{first}|{second}|{overlap}"] = {
                        k: counts[k] for k in ("correct", "wrong", "unassigned")
                    }
    for margin in MARGINS:
        for overlap in OVERLAPS:
            for source, results in sources:
                for scoring, steps in SCORINGS.items():
                    counts, _ = score_names(with_margin(results, margin, overlap), majority, judge, steps)
                    grid[f"{scoring}|{source}|{margin}|{overlap}"] = {
                        k: counts[k] for k in ("correct", "wrong", "unassigned")
                    }
    return {
        "dataset": name,
        "n_cells": int(adata.n_obs),
        "n_clusters": len(majority),
        "majority_labels": majority,
        "database": f"PanglaoDB ({', '.join(DATASETS[name].tissues)}), {db['cell_type'].nunique()} types",
        "species": DATASETS[name].species,
        "nact": nact_info,
        "names": names,
        "nact_results": nact_results,
        "auc_results": auc_results,
        "nact_variants": nact_variants,
        "wilcoxon_results": wilcoxon_results,
        "grid": grid,
        "seconds": time.perf_counter() - clock,
    }


def _best_on_selection(runs: dict[str, dict], candidates: list[tuple[dict, tuple, str]]) -> dict:
    """The candidate with the most correct minus twice the wrong names on the SELECTION datasets.

    ``candidates`` are ``(settings, tie_group, grid_key)`` in order of preference; on a tie the
    first wins, except within one tie group (the same settings but for ``min_overlap``, listed
    from small to large), where the later, more cautious overlap wins.
    """
    best = None
    for settings, tie_group, grid_key in candidates:
        total = {"correct": 0, "wrong": 0, "unassigned": 0}
        for name in SELECTION:
            for key, value in runs[name]["grid"][grid_key].items():
                total[key] += value
        objective = total["correct"] - 2 * total["wrong"]
        tied_in_group = best is not None and objective == best["objective"] and tie_group == best["tie_group"]
        if best is None or objective > best["objective"] or tied_in_group:
            best = {**settings, "objective": objective, **total, "tie_group": tie_group}
    best.pop("tie_group")
    return {
        **best,
        "chosen_on": list(SELECTION),
        "objective_rule": "correct - 2 x wrong, summed",
    }


def choose_rule(
    runs: dict[str, dict], scoring: str = "lineage", variants: tuple[str, ...] | None = None
) -> dict:
    """The (query setting, min_margin, min_overlap) of the salient-gene query alone with the most
    correct minus twice the wrong names of N-ACT on the SELECTION datasets (ties: the first query
    setting, the smaller margin, then the larger, more cautious overlap).

    Chosen under the lineage scoring: under the strict one no PanglaoDB name is right for a
    CD4- or CD8-positive alpha-beta T cell cluster, so it would reward never naming T cells.
    """
    candidates = [
        (
            {"query": variant, "min_margin": margin, "min_overlap": overlap},
            (variant, margin),
            f"{scoring}|nact:{variant}|{margin}|{overlap}",
        )
        for variant in variants or tuple(QUERY_VARIANTS)
        for margin in MARGINS
        for overlap in OVERLAPS
    ]
    return {**_best_on_selection(runs, candidates), "scoring": scoring}


def choose_agreement(runs: dict[str, dict], scoring: str = "lineage") -> dict:
    """The agreement rule's (likelihood margin, auc margin, min_overlap) with the most correct minus
    twice the wrong names on the SELECTION datasets (ties: smaller margins, then the larger overlap)."""
    candidates = [
        (
            {"margins": [first, second], "min_overlap": overlap},
            (first, second),
            f"{scoring}|agree|{first}|{second}|{overlap}",
        )
        for first in AGREEMENT_MARGINS
        for second in AGREEMENT_MARGINS
        for overlap in OVERLAPS
    ]
    return {**_best_on_selection(runs, candidates), "scoring": scoring}


# --------------------------------------------------------------------------------------------
# keeping the datasets of an earlier invocation

#: settings that must match for an earlier invocation's rows to stand beside this one's
MERGE_SETTINGS = ("budget", "seed", "epochs", "max_cells", "default_rule")


def _rule_key(rule: dict | None) -> tuple | None:
    return None if rule is None else (rule["query"], rule["min_margin"], rule["min_overlap"])


def check_mergeable(previous: dict, settings: dict, path: Path) -> None:
    """Refuse to merge with an earlier ``naming.json`` run under other settings."""
    differ = [key for key in MERGE_SETTINGS if previous.get(key) != settings[key]]
    if differ:
        found = ", ".join(f"{key}={previous.get(key)!r} there, {settings[key]!r} here" for key in differ)
        raise SystemExit(
            f"--merge: {path} was written with other settings ({found}); its rows cannot stand "
            "beside this run's. Run with those settings, pass --overwrite instead of --merge to replace "
            "them, or use another --out."
        )


def kept_datasets(previous: dict | None, rerun: list[str]) -> dict[str, dict]:
    """The earlier invocation's per-dataset records (with their rule grids) not re-run now."""
    if previous is None:
        return {}
    return {name: entry for name, entry in previous["datasets"].items() if name not in rerun}


def merge_record(record: dict, previous: dict, path: Path) -> dict:
    """Add to ``record`` the rows, clusters and records of the datasets it did not re-run.

    The kept datasets' ``nact_chosen`` names were made with the earlier chosen rule, so the
    rule of the merged record (chosen on the grids of both) must be the same one.
    """
    check_mergeable(previous, record, path)
    kept = kept_datasets(previous, list(record["datasets"]))
    if not kept:
        return record
    now, before = record.get("chosen_agreement"), previous.get("chosen_agreement")
    if (now and (now["margins"], now["min_overlap"])) != (
        before and (before["margins"], before["min_overlap"])
    ):
        raise SystemExit(
            f"--merge: the agreement rule chosen now ({now}) differs from the one {path} named its "
            f"datasets with ({before}); re-run every dataset so that all use one rule."
        )
    order = [name for name in DATASETS if name in kept or name in record["datasets"]]
    order += [name for name in {**kept, **record["datasets"]} if name not in order]
    clusters = {**previous["clusters"], **record["clusters"]}
    datasets = {**kept, **record["datasets"]}
    merged = dict(record)
    merged["table"] = [row for row in previous["table"] if row["dataset"] in kept] + record["table"]
    merged["clusters"] = {name: clusters[name] for name in order}
    merged["datasets"] = {name: datasets[name] for name in order}
    merged["kept_from_earlier_run"] = sorted(kept)
    print(f"[naming] kept {len(kept)} dataset(s) of {path}: {', '.join(sorted(kept))}", flush=True)
    return merged


def check_nothing_lost(path: Path, datasets: list[str]) -> None:
    """Refuse to replace a ``naming.json`` holding datasets this invocation does not run."""
    if not path.exists():
        return
    lost = sorted(set(json.loads(path.read_text()).get("datasets", {})) - set(datasets))
    if lost:
        raise SystemExit(
            f"{path} holds {len(lost)} dataset(s) this invocation does not run ({', '.join(lost)}): "
            "pass --merge to keep them, --overwrite to replace the results, or --out another folder."
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=["quick", "full"], default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    replace = parser.add_mutually_exclusive_group()
    replace.add_argument(
        "--merge",
        action="store_true",
        help="keep the datasets of an earlier naming.json in --out that this invocation does not run",
    )
    replace.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier naming.json in --out that holds datasets this invocation does not run",
    )
    parser.add_argument(
        "--summarise",
        nargs="*",
        type=Path,
        metavar="RUN_JSON",
        help="average the naming.json of runs with different seeds into naming_seeds.{json,md} in --out "
        "(no paths: naming.json and naming_seed*.json in --out)",
    )
    args = parser.parse_args(argv)
    if args.summarise is not None:
        paths = args.summarise or [args.out / "naming.json", *sorted(args.out.glob("naming_seed[0-9]*.json"))]
        summarise(paths, args.out)
        return
    unknown = sorted(set(args.datasets) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")

    import scanpy as sc
    import torch

    import scsalient as ss
    from scsalient.tl._query import AGREEMENT_MIN_MARGIN, DEFAULT_MIN_MARGIN, DEFAULT_MIN_OVERLAP

    epochs = EPOCHS[args.budget]
    default = {
        "min_margin": DEFAULT_MIN_MARGIN["likelihood"],
        "min_overlap": DEFAULT_MIN_OVERLAP,
        "agreement_margin": AGREEMENT_MIN_MARGIN,
    }
    settings = {
        "budget": args.budget,
        "seed": args.seed,
        "epochs": epochs,
        "max_cells": MAX_CELLS,
        "default_rule": default,
    }
    stem = "naming" if args.seed == 0 else f"naming_seed{args.seed}"  # seed 0 is the main record
    result_path = args.out / f"{stem}.json"
    previous = None
    if args.merge and result_path.exists():
        previous = json.loads(result_path.read_text())
        check_mergeable(previous, settings, result_path)  # before any training
    elif not args.overwrite:
        check_nothing_lost(result_path, args.datasets)

    torch.manual_seed(args.seed)
    sc.settings.verbosity = 0
    judge = OntologyJudge()
    runs = {}
    for name in args.datasets:
        print(f"[naming] {name} ...", flush=True)
        runs[name] = run_dataset(name, judge, epochs, args.seed)
        print(
            f"[naming] {name}: {runs[name]['n_clusters']} clusters, {runs[name]['seconds']:.0f} s", flush=True
        )
    # the rule is chosen on the selection datasets' grids, re-run or kept from the earlier run
    grids = {**kept_datasets(previous, list(runs)), **runs}
    missing = [name for name in SELECTION if name not in grids]
    rule = choose_rule(grids) if not missing else None
    rule_default_query = choose_rule(grids, variants=("likelihood",)) if not missing else None
    agreement = choose_agreement(grids) if not missing else None

    table, clusters = [], {}
    for name, run in runs.items():
        majority = run["majority_labels"]
        names = dict(run["names"])
        margin = default["agreement_margin"]
        names["nact"] = agreeing(
            run["nact_results"], run["auc_results"], (margin, margin), default["min_overlap"]
        )
        names["nact_alone"] = with_margin(run["nact_results"], default["min_margin"], default["min_overlap"])
        if agreement is not None:
            names["nact_chosen"] = agreeing(
                run["nact_results"], run["auc_results"], tuple(agreement["margins"]), agreement["min_overlap"]
            )
        else:
            names["nact_chosen"] = {}
        names["wilcoxon_margin"] = with_margin(
            run["wilcoxon_results"], default["min_margin"], default["min_overlap"]
        )
        clusters[name] = {}
        for method in METHODS:
            for scoring, steps in SCORINGS.items():
                counts, rows = score_names(names[method], majority, judge, steps)
                table.append(
                    {
                        "dataset": name,
                        "method": method,
                        "scoring": scoring,
                        "selection": name in SELECTION,
                        **counts,
                    }
                )
            clusters[name][method] = rows
    record = {
        "benchmark": "naming",
        **settings,
        "chosen_rule": rule,
        "chosen_rule_default_query": rule_default_query,
        "chosen_agreement": agreement,
        "selection_datasets": list(SELECTION),
        "table": table,
        "clusters": clusters,
        "datasets": {
            name: {
                k: run[k] for k in ("n_cells", "n_clusters", "database", "species", "nact", "seconds", "grid")
            }
            for name, run in runs.items()
        },
        "package_version": ss.__version__,
    }
    if previous is not None:
        record = merge_record(record, previous, result_path)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(record, indent=1, default=str))
    write_markdown(record, args.out / f"{stem}.md")
    print((args.out / f"{stem}.md").read_text())


def against_best_baseline(
    table: pd.DataFrame, baselines: tuple[str, ...] = BASELINES, method: str = "nact"
) -> pd.DataFrame:
    """Per dataset of one scoring: ``method``'s counts beside the best baseline's (most correct
    names, then fewest wrong), and whether it names as many right and at most half as many wrong."""
    rows = []
    for dataset, frame in table.groupby("dataset"):
        frame = frame.set_index("method")
        base = frame.loc[list(baselines)].sort_values(["correct", "wrong"], ascending=[False, True])
        best, ours = base.iloc[0], frame.loc[method]
        rows.append(
            {
                "dataset": dataset,
                f"{method} correct": int(ours["correct"]),
                "best baseline": base.index[0],
                "its correct": int(best["correct"]),
                f"{method} wrong": int(ours["wrong"]),
                "its wrong": int(best["wrong"]),
                "correct >= best": bool(ours["correct"] >= best["correct"]),
                "wrong <= half": bool(ours["wrong"] <= best["wrong"] / 2),
            }
        )
    return pd.DataFrame(rows)


def targets_met(
    table: pd.DataFrame, baselines: tuple[str, ...] = BASELINES, method: str = "nact"
) -> pd.Series:
    """Per dataset: ``method``'s correct >= the best baseline's and its wrong <= half of that baseline's."""
    verdict = against_best_baseline(table, baselines, method).set_index("dataset")
    return verdict[["correct >= best", "wrong <= half"]].all(axis=1)


def summarise(paths: list[Path], out: Path) -> None:
    """Mean counts per method over runs with different seeds, and the targets met in each run."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--summarise: the runs must have different seeds, got {seeds}")
    if len({(run["budget"], json.dumps(run["default_rule"], sort_keys=True)) for run in runs}) != 1:
        raise SystemExit("--summarise: the runs differ in budget or default rule")
    rows, met_rows = [], []
    for run in runs:
        table = pd.DataFrame(run["table"])
        for scoring in SCORINGS:
            sub = table[table["scoring"] == scoring]
            totals = sub.groupby("method")[["correct", "wrong", "unassigned"]].sum()
            for method, counts in totals.iterrows():
                rows.append({"seed": run["seed"], "scoring": scoring, "method": method, **counts.to_dict()})
            four = tuple(b for b in BASELINES if b != "wilcoxon_auc")
            met_rows.append(
                {
                    "seed": run["seed"],
                    "scoring": scoring,
                    "met (five baselines)": int(targets_met(sub).sum()),
                    "met (without wilcoxon_auc)": int(targets_met(sub, four).sum()),
                    "nact_alone met (five / four)": f"{int(targets_met(sub, method='nact_alone').sum())} / "
                    f"{int(targets_met(sub, four, method='nact_alone').sum())}",
                    "datasets": int(sub["dataset"].nunique()),
                    "chosen agreement": run.get("chosen_agreement")
                    and {k: run["chosen_agreement"][k] for k in ("margins", "min_overlap")},
                }
            )
    frame = pd.DataFrame(rows)
    met = pd.DataFrame(met_rows)
    record = {"benchmark": "naming_seeds", "runs": [str(p) for p in paths], "seeds": seeds}
    record["totals"] = frame.to_dict(orient="records")
    record["targets"] = met.to_dict(orient="records")
    out.mkdir(parents=True, exist_ok=True)
    (out / "naming_seeds.json").write_text(json.dumps(record, indent=1, default=str))
    lines = [
        "# Cluster naming over seeds",
        "",
        f"Written by `benchmarks/naming.py --summarise` from {len(runs)} runs (seeds {seeds}; "
        f"{runs[0]['budget']} budget). Each seed draws its own Leiden clusters, subsample and N-ACT network; "
        "the methods are those of `naming.md`. Counts are clusters summed over the datasets of a run, "
        "then averaged over the runs (min-max over runs in brackets).",
        "",
    ]
    for scoring in SCORINGS:
        sub = frame[frame["scoring"] == scoring]
        cells = {}
        for method, group in sub.groupby("method"):
            cells[method] = {
                key: f"{group[key].mean():.1f} ({group[key].min()}-{group[key].max()})"
                for key in ("correct", "wrong", "unassigned")
            }
        wide = pd.DataFrame(cells).T.reindex([m for m in METHODS if m in cells])
        lines += [f"## Correct / wrong / unassigned clusters, {scoring} scoring", "", wide.to_markdown(), ""]
    lines += [
        "## Targets met per run",
        "",
        "Datasets where N-ACT's `nact` names at least as many clusters right as the best baseline and at "
        "most half as many wrong; with the five baselines of `naming.md`, and without `wilcoxon_auc` "
        "(the Wilcoxon ranks into the package's auc query: the issue's four baselines); the same for "
        "`nact_alone` (the salient-gene query with its margin rule) in the last column but one.",
        "",
        met.to_markdown(index=False),
        "",
    ]
    (out / "naming_seeds.md").write_text("\n".join(lines))
    print((out / "naming_seeds.md").read_text())


def write_markdown(record: dict, path: Path) -> None:
    table = pd.DataFrame(record["table"])
    rule, default = record["chosen_rule"], record["default_rule"]
    lines = [
        '# Cluster naming: right, wrong or "Unassigned"',
        "",
        "Written by `benchmarks/naming.py`. Each dataset is clustered once (Leiden, scanpy defaults via "
        "`scsalient.pp.cluster_labels(resolution=1.0)`), and every method names the same clusters with the "
        "same PanglaoDB markers (human markers with immune and blood types for blood and tumour immune "
        "cells, pancreas types for pancreas; mouse markers with brain and vasculature types for the mouse "
        "motor cortex, `mop_snareseq2`). A name is **correct** when its Cell Ontology term is the term of "
        "the cluster's majority label, that term's parent (one `is_a` step) or a descendant; otherwise "
        '**wrong**; **unassigned** counts clusters written as "Unassigned" or left without a name. '
        "Coverage = named / clusters; accuracy = correct / named. Term mappings: "
        "`benchmarks/naming_terms.py`.",
        "",
        f"N-ACT: one network (`n_ensemble=1`), {record['epochs']} epochs (batch 256) on the Leiden clusters "
        f"({record['budget']} budget); datasets above {record['max_cells']} cells are subsampled to "
        f"{record['max_cells']} cells (Kang 2018: 8,684 -> 3,000; MOp: 10,309 -> 3,000). "
        f"Seed {record['seed']}.",
        "",
        "Methods: `nact` = the package's recipe: salient genes -> `query_cell_types` (likelihood), "
        "checked against scanpy Wilcoxon ranks of every gene -> `query_cell_types(method='auc')`; "
        "`annotate_clusters` with both keys names a cluster when both rank the same type first "
        f"(margins {default.get('agreement_margin', 0.0)}, `min_overlap={default['min_overlap']}` in each); "
        "`nact_chosen` = the same with the agreement settings chosen on the selection datasets "
        "(below); "
        "`nact_alone` = the salient-gene query alone with its margin rule "
        f"(`min_margin={default['min_margin']}`, `min_overlap={default['min_overlap']}`; "
        "the default before); "
        "`nact_top1` = the salient-gene query's rank-1 candidate without a rule; "
        "`wilcoxon` = scanpy Wilcoxon ranks -> the likelihood query, rank-1; `wilcoxon_auc` = the Wilcoxon "
        "ranks of every gene -> the auc query, rank-1; "
        "`wilcoxon_margin` = Wilcoxon into the likelihood query with its margin rule; "
        "`decoupler_ora` / `decoupler_ulm` = "
        "decoupler's per-cell ORA / ULM, then `rankby_group` per cluster (top positive); "
        "`marker_gene_overlap` = `sc.tl.marker_gene_overlap` of the Wilcoxon ranks, largest overlap.",
        "",
    ]
    if rule is not None:
        lines += [
            f"The margin rule was chosen on {', '.join(rule['chosen_on'])} only (datasets marked * below), "
            f"maximising N-ACT's correct minus twice its wrong names ({rule['scoring']} scoring) over "
            f"the query settings {list(QUERY_VARIANTS)}, `min_margin` {list(MARGINS)} and `min_overlap` "
            f"{list(OVERLAPS)}: "
            f"chosen query `{rule['query']}`, `min_margin={rule['min_margin']}`, "
            f"`min_overlap={rule['min_overlap']}` ({rule['correct']} correct, {rule['wrong']} wrong, "
            f"{rule['unassigned']} unassigned there). For the package's default query (weighted likelihood) "
            f"alone the same search chose `min_margin={record['chosen_rule_default_query']['min_margin']}`, "
            f"`min_overlap={record['chosen_rule_default_query']['min_overlap']}` (the package default of a "
            f"single query, `nact_alone` below: `min_margin={default['min_margin']}`, "
            f"`min_overlap={default['min_overlap']}`).",
            "",
        ]
    agreement = record.get("chosen_agreement")
    if agreement is not None:
        lines += [
            "The agreement rule (`nact`) was chosen the same way: over the likelihood query's and the "
            f"auc query's margins {list(AGREEMENT_MARGINS)} and `min_overlap` {list(OVERLAPS)}, on "
            f"{', '.join(agreement['chosen_on'])} ({agreement['scoring']} scoring, "
            f"{agreement['objective_rule']}): margins {agreement['margins']}, "
            f"`min_overlap={agreement['min_overlap']}` ({agreement['correct']} correct, "
            f"{agreement['wrong']} wrong, {agreement['unassigned']} unassigned there); `nact_chosen` "
            "below. The package defaults used by `nact`: margins "
            f"{default.get('agreement_margin', 0.0)}, `min_overlap={default['min_overlap']}`.",
            "",
        ]
    all_table = table
    verdict_tables = {}
    for scoring in SCORINGS:
        table = all_table[all_table["scoring"] == scoring]
        title = (
            "strict: an ancestor within one step"
            if scoring == "strict"
            else "lineage: ancestors within three steps"
        )
        lines += [f"## Correct / wrong / unassigned clusters ({title})", ""]
        pivot = table.assign(cell=table.apply(lambda r: f"{r.correct} / {r.wrong} / {r.unassigned}", axis=1))
        wide = pivot.pivot(index="dataset", columns="method", values="cell")[list(METHODS)]
        n_clusters = table.groupby("dataset")["n_clusters"].first()
        wide.insert(0, "clusters", [int(n_clusters[d]) for d in wide.index])
        wide.index = [f"{d}{' *' if d in record['selection_datasets'] else ''}" for d in wide.index]
        lines += [wide.to_markdown(), ""]
        lines += [f"Coverage / accuracy ({scoring}):", ""]
        cov = table.assign(cell=table.apply(lambda r: f"{r.coverage:.2f} / {r.accuracy:.2f}", axis=1))
        lines += [
            cov.pivot(index="dataset", columns="method", values="cell")[list(METHODS)].to_markdown(),
            "",
        ]
        verdict = against_best_baseline(table)
        selection = verdict["dataset"].isin(record["selection_datasets"])
        verdict.loc[selection, "dataset"] += " *"
        verdict_tables[scoring] = verdict
        lines += [f"Against the targets ({scoring}):", "", verdict.to_markdown(index=False), ""]
        met = verdict[["correct >= best", "wrong <= half"]].all(axis=1)
        lines += [f"Both targets met on {int(met.sum())} of {len(met)} datasets ({scoring} scoring).", ""]
    lines += [
        "A `False` in `correct >= best` means that baseline wrote more correct names than N-ACT on that "
        "dataset; a `False` in `wrong <= half` means N-ACT wrote more than half as many wrong names.",
        "",
        "## Per cluster (names; majority label of the cluster)",
        "",
    ]
    for dataset, methods in record["clusters"].items():
        rows = []
        for method, entries in methods.items():
            for entry in entries:
                rows.append({"method": method, **entry})
        frame = pd.DataFrame(rows)
        wide_names = frame.pivot(index=["cluster", "label"], columns="method", values="name")[list(METHODS)]
        lines += [f"### {dataset}", "", wide_names.fillna("-").to_markdown(), ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
