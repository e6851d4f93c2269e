"""Marker recovery on real PBMCs: precision@25 against PanglaoDB human markers.

Datasets (``--dataset``): Kang 2018 PBMCs (8,684 cells, 4 types, counts), scanpy's
``pbmc68k_reduced`` (700 cells, 10 sorted-population labels, log-normalised) and Ding 2020
PBMCs (243 CEL-Seq2 cells, 6 types, counts; ``transfer/pbmc_ding_celseq2_scmoo.h5ad``). Rankers, all given
the true cell-type labels of all cells:

* NACT salient genes with TF-IDF and with plain mean attention (``tfidf=False``): NACT is
  trained with its defaults (15 epochs for the quick budget; batch augmentation over the donors
  where the data have donors), ``model.annotate()`` stores the attention, then
  ``scsalient.tl.salient_genes(adata, groupby="cell_type", tfidf=...)``;
* SCTAB salient genes from what ``annotate()`` stores (``obsm["sctab_mask"]``: the attributions
  to the predicted class, ``SCTAB.get_attributions``) and, for comparison, from its feature
  masks (``SCTAB.get_masks``, what it stored before), each with TF-IDF and plain means: the
  default 5-member ensemble, trained like NACT;
* scanpy ``rank_genes_groups`` with wilcoxon, t-test and logreg on log1p CP10k;
* 25 random genes (mean over 1,000 draws).

Ground truth per type: primary / broad (primary plus related types) PanglaoDB human cell types
(for Kang as in peers.md). Kang genes are Ensembl IDs; ranked genes are mapped to
``var["gene_symbols"]`` before scoring.

For Kang the record also measures how much of each per-cell explanation a stray read captures
(``stray_reads.py``), and how even SCTAB's feature masks are (effective number of genes).

Usage: ``python benchmarks/markers.py [--dataset kang|pbmc68k|pbmc_ding] [--budget quick|full]
[--seed 0]``. Writes ``results/markers.{json,md}`` (Kang) or ``results/markers_<dataset>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from datasets import DATA_DIR, DATASETS, LABEL_KEY, Dataset  # noqa: E402
from peers import MARKERS as PEER_MARKERS  # noqa: E402
from report import git_line  # noqa: E402
from systems import BATCH_KEYS, QUICK_EPOCHS, lognorm  # noqa: E402

K = 25
N_RANDOM = 1000
PANGLAO = DATA_DIR / "markers" / "PanglaoDB_markers_27_Mar_2020.tsv.gz"
MAPPING = {
    "B cells": {"primary": ["B cells"], "broad": ["B cells", "B cells naive", "B cells memory"]},
    "CD4 T cells": {
        "primary": ["T helper cells"],
        "broad": ["T helper cells", "T cells", "T memory cells", "T regulatory cells"],
    },
    "CD14+ Monocytes": {"primary": ["Monocytes"], "broad": ["Monocytes"]},
    "NK cells": {"primary": ["NK cells"], "broad": ["NK cells"]},
}
#: pbmc68k_reduced's bulk labels (sorted populations) -> PanglaoDB types; the T-cell subsets'
#: broad sets add the T-cell types they belong to
_T = ["T cells"]
MAPPING_PBMC68K = {
    "CD14+ Monocyte": {"primary": ["Monocytes"], "broad": ["Monocytes"]},
    "Dendritic": {
        "primary": ["Dendritic cells"],
        "broad": ["Dendritic cells", "Plasmacytoid dendritic cells"],
    },
    "CD19+ B": {"primary": ["B cells"], "broad": ["B cells", "B cells naive", "B cells memory"]},
    "CD56+ NK": {"primary": ["NK cells"], "broad": ["NK cells"]},
    "CD34+": {"primary": ["Hematopoietic stem cells"], "broad": ["Hematopoietic stem cells"]},
    "CD4+/CD25 T Reg": {
        "primary": ["T regulatory cells"],
        "broad": ["T regulatory cells", "T helper cells", *_T],
    },
    "CD4+/CD45RO+ Memory": {
        "primary": ["T memory cells"],
        "broad": ["T memory cells", "T helper cells", *_T],
    },
    "CD4+/CD45RA+/CD25- Naive T": {
        "primary": ["T cells naive"],
        "broad": ["T cells naive", "T helper cells", *_T],
    },
    "CD8+ Cytotoxic T": {"primary": ["T cytotoxic cells"], "broad": ["T cytotoxic cells", *_T]},
    "CD8+/CD45RA+ Naive Cytotoxic": {
        "primary": ["T cytotoxic cells"],
        "broad": ["T cytotoxic cells", "T cells naive", *_T],
    },
}
#: Ding et al. 2020 PBMCs (CEL-Seq2) -> PanglaoDB types
MAPPING_DING = {
    "Cytotoxic T cell": {"primary": ["T cytotoxic cells"], "broad": ["T cytotoxic cells", *_T]},
    "CD4+ T cell": {"primary": ["T helper cells"], "broad": ["T helper cells", *_T]},
    "CD14+ monocyte": {"primary": ["Monocytes"], "broad": ["Monocytes"]},
    "CD16+ monocyte": {"primary": ["Monocytes"], "broad": ["Monocytes"]},
    "Megakaryocyte": {"primary": ["Megakaryocytes"], "broad": ["Megakaryocytes", "Platelets"]},
    "B cell": {"primary": ["B cells"], "broad": ["B cells", "B cells naive", "B cells memory"]},
}
#: dataset -> (label mapping, title, results file stem)
DATASET_MARKERS = {
    "kang": (MAPPING, "Kang 2018 PBMCs", "markers"),
    "pbmc68k": (MAPPING_PBMC68K, "scanpy pbmc68k_reduced", "markers_pbmc68k"),
    "pbmc_ding": (MAPPING_DING, "Ding 2020 PBMCs (CEL-Seq2)", "markers_pbmc_ding"),
}


def _load_ding():
    import anndata as ad

    adata = ad.read_h5ad(DATA_DIR / "transfer" / "pbmc_ding_celseq2_scmoo.h5ad")
    adata.obs = adata.obs[["cell_type"]].rename(columns={"cell_type": LABEL_KEY})
    return adata


#: marker datasets that are not among the benchmark's classification datasets
EXTRA_DATASETS = {
    "pbmc_ding": Dataset(
        name="pbmc_ding",
        title="Ding 2020 PBMCs, CEL-Seq2 (243 cells, 6 types)",
        file="transfer/pbmc_ding_celseq2_scmoo.h5ad",
        input="counts",
        split_rule="all cells",
        load=_load_ding,
        split=lambda adata: (np.arange(adata.n_obs), np.arange(0)),
    )
}


def truth_sets(database: pd.DataFrame, mapping: dict = MAPPING) -> dict[str, dict[str, set[str]]]:
    sets = {}
    for kang_type, levels in mapping.items():
        sets[kang_type] = {}
        for level, panglao_types in levels.items():
            missing = [t for t in panglao_types if t not in set(database["cell_type"])]
            if missing:
                raise ValueError(f"PanglaoDB has no cell type(s) {missing}")
            sets[kang_type][level] = set(database.loc[database["cell_type"].isin(panglao_types), "gene"])
    return sets


def default_n_ensemble() -> int:
    """NACT's default number of ensemble members (read from its signature)."""
    import inspect

    import scsalient as ss

    return inspect.signature(ss.model.NACT).parameters["n_ensemble"].default


def salient_gene_rankings(adata, names: dict[bool, str], attention_key: str) -> tuple[dict, dict]:
    """Top ``K`` salient genes per true type, with and without TF-IDF (``names``: tfidf -> ranker name)."""
    import scsalient as ss

    rankings, seconds = {}, {}
    for tfidf, name in names.items():
        start = time.perf_counter()
        record = ss.tl.salient_genes(
            adata, groupby=LABEL_KEY, attention_key=attention_key, tfidf=tfidf, n_genes=K, inplace=False
        )
        seconds[name] = time.perf_counter() - start
        ranked = pd.DataFrame(record["names"])
        rankings[name] = {str(group): ranked[group].tolist() for group in ranked.columns}
    return rankings, seconds


def nact_rankings(adata, budget: str, seed: int) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """NACT's salient genes from each of ``NACT_EXPLANATIONS``, and the dense explanations."""
    from systems import _jsonable, train_classifier

    from scsalient._constants import NACTKeys

    work = adata.copy()
    model, train_seconds = train_classifier(
        "NACT", work, LABEL_KEY, seed, budget, n_ensemble=default_n_ensemble()
    )
    start = time.perf_counter()
    model.annotate(explanation="dense", latent=False)
    annotate_seconds = time.perf_counter() - start
    agreement = float((work.obs["nact_prediction"].astype(str) == work.obs[LABEL_KEY].astype(str)).mean())
    # the attributions to the predicted class (get_attributions), read out the same way
    work.obsm["nact_attribution"] = model.get_attributions(dense=True)
    rankings, seconds = {}, {}
    for key, (with_tfidf, plain) in NACT_EXPLANATIONS.items():
        ranked, secs = salient_gene_rankings(work, {True: with_tfidf, False: plain}, key)
        rankings.update(ranked)
        seconds.update(secs)
    info = {
        "model_settings": _jsonable(model.init_params_["non_kwargs"]),
        "training_settings": _jsonable(model.training_settings_),
        "max_epochs": model.training_settings_["max_epochs"],
        "epochs_run": len(model.history["f1_macro_train"]),
        "seed": seed,
        "train_seconds": train_seconds,
        "annotate_seconds": annotate_seconds,
        "agreement_with_labels_all_cells": agreement,
        "ranking_seconds": seconds,
    }
    return (
        rankings,
        info,
        {
            "NACT attention (default)": np.asarray(work.obsm[NACTKeys.ATTENTION]),
            "NACT attributions": work.obsm["nact_attribution"],
        },
    )


#: NACT's explanations read out: obsm key -> (ranker name with TF-IDF, without)
NACT_EXPLANATIONS = {
    "nact_attention": ("NACT salient genes, TF-IDF", "NACT mean attention (no TF-IDF)"),
    "nact_attribution": ("NACT attributions, TF-IDF", "NACT mean attribution (no TF-IDF)"),
}
#: the model-based rankers (the others are the baselines they are compared with)
MODELS = ("NACT", "SCTAB")
#: SCTAB's explanations read out: obsm key -> (ranker name with TF-IDF, without)
SCTAB_EXPLANATIONS = {
    "sctab_mask": (
        "SCTAB salient genes (attributions, the default), TF-IDF",
        "SCTAB mean attribution (no TF-IDF)",
    ),
    "sctab_feature_mask": ("SCTAB feature masks, TF-IDF", "SCTAB mean feature mask (no TF-IDF)"),
}


def mask_evenness(masks: np.ndarray, counts) -> dict[str, float]:
    """How even the feature masks are: effective number of genes (exp entropy) vs genes expressed."""
    from scipy import sparse

    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(masks > 0, masks * np.log(masks), 0.0).sum(axis=1)
    expressed = np.asarray((sparse.csr_matrix(counts) > 0).sum(axis=1)).ravel()
    return {
        "mean_genes_expressed": float(expressed.mean()),
        "mean_genes_in_mask": float((masks > 0).sum(axis=1).mean()),
        "mean_effective_genes_in_mask": float(np.exp(entropy).mean()),
    }


def sctab_rankings(adata, epochs: int | None, seed: int) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """SCTAB's salient genes from each of ``SCTAB_EXPLANATIONS``, and the dense explanations."""
    from systems import _jsonable, _quiet_lightning

    _quiet_lightning()
    import scvi

    import scsalient as ss
    from scsalient._constants import SCTABKeys

    batch_key = next((key for key in BATCH_KEYS if key in adata.obs), None)
    scvi.settings.seed = seed
    work = adata.copy()
    start = time.perf_counter()
    ss.model.SCTAB.setup_anndata(work, labels_key=LABEL_KEY, batch_key=batch_key)
    model = ss.model.SCTAB(work)
    train_kwargs = {} if epochs is None else {"max_epochs": epochs}
    model.train(enable_progress_bar=False, **train_kwargs)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model.annotate(explanation="dense", latent=False)
    annotate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    work.obsm["sctab_feature_mask"] = model.get_masks(dense=True)
    mask_seconds = time.perf_counter() - start
    predicted = work.obs[SCTABKeys.PREDICTION].astype(str)
    rankings, seconds = {}, {}
    for key, (with_tfidf, plain) in SCTAB_EXPLANATIONS.items():
        ranked, secs = salient_gene_rankings(work, {True: with_tfidf, False: plain}, key)
        rankings.update(ranked)
        seconds.update(secs)
    info = {
        "train_kwargs": train_kwargs,
        "n_ensemble": model.n_ensemble,
        "training_settings": _jsonable(model.training_settings_),
        "max_epochs": model.training_settings_["max_epochs"],
        "epochs_run": len(model.history["f1_macro_train"]),
        "seed": seed,
        "batch_key": batch_key,
        "train_seconds": train_seconds,
        "annotate_seconds": annotate_seconds,
        "feature_mask_seconds": mask_seconds,
        "agreement_with_labels_all_cells": float((predicted == work.obs[LABEL_KEY].astype(str)).mean()),
        "ranking_seconds": seconds,
        "feature_masks": mask_evenness(work.obsm["sctab_feature_mask"], adata.X),
    }
    explanations = {
        "SCTAB attributions (default)": np.asarray(work.obsm[SCTABKeys.MASK]),
        "SCTAB feature masks": work.obsm["sctab_feature_mask"],
    }
    return rankings, info, explanations


def scanpy_rankings(adata) -> tuple[dict, dict]:
    import anndata as ad
    import scanpy as sc

    ln = ad.AnnData(lognorm(adata), obs=adata.obs[[LABEL_KEY]].copy(), var=adata.var[[]].copy())
    ln.uns["log1p"] = {"base": None}
    rankings, seconds = {}, {}
    for method, name in (
        ("wilcoxon", "scanpy wilcoxon"),
        ("t-test", "scanpy t-test"),
        ("logreg", "scanpy logreg"),
    ):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.tl.rank_genes_groups(ln, LABEL_KEY, method=method, n_genes=K, key_added=method)
        seconds[name] = time.perf_counter() - start
        names = pd.DataFrame(ln.uns[method]["names"])
        rankings[name] = {str(group): names[group].tolist() for group in names.columns}
    return rankings, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASET_MARKERS), default="kang")
    parser.add_argument("--budget", choices=["quick", "full"], default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args(argv)

    import scsalient as ss
    from scsalient.metrics import precision_at_k

    mapping, title, stem = DATASET_MARKERS[args.dataset]
    clock = time.perf_counter()
    started = dt.datetime.now().astimezone()
    loadavg = os.getloadavg()[0]
    dataset = {**DATASETS, **EXTRA_DATASETS}[args.dataset]
    for needed in (dataset.path, PANGLAO) if dataset.file else (PANGLAO,):
        if not needed.exists():
            raise SystemExit(f"markers.py needs {needed}, which is missing")
    adata = dataset.load()
    adata.obs[LABEL_KEY] = pd.Categorical(adata.obs[LABEL_KEY].astype(str))
    adata.uns["bench_input"] = dataset.input
    if "gene_symbols" in adata.var:
        symbols = adata.var["gene_symbols"].astype(str)
    else:
        symbols = pd.Series(adata.var_names.astype(str), index=adata.var_names)
    database = ss.datasets.marker_database(PANGLAO, species="human")
    truth = truth_sets(database, mapping)

    rankings, nact_info, nact_explanations = nact_rankings(adata, args.budget, args.seed)
    sctab_ranked, sctab_info, sctab_explanations = sctab_rankings(
        adata, QUICK_EPOCHS if args.budget == "quick" else None, args.seed
    )
    rankings.update(sctab_ranked)
    scanpy_ranked, scanpy_seconds = scanpy_rankings(adata)
    rankings.update(scanpy_ranked)
    seconds = {**nact_info["ranking_seconds"], **sctab_info["ranking_seconds"], **scanpy_seconds}

    stray = None
    if dataset.input == "counts":
        from stray_reads import stray_read_record

        explanations = {**nact_explanations, **sctab_explanations}
        stray = {
            name: stray_read_record(adata.X, values, adata.obs[LABEL_KEY], symbols)
            for name, values in explanations.items()
        }

    results = {}
    for name, ranked in rankings.items():
        per_type = {}
        for cell_type in mapping:
            genes = symbols.loc[ranked[cell_type]].tolist()  # Ensembl ID -> symbol
            per_type[cell_type] = {
                level: precision_at_k(genes, truth[cell_type][level], k=K) for level in ("primary", "broad")
            }
            per_type[cell_type]["top_genes"] = genes
        results[name] = {
            "primary": float(np.mean([v["primary"] for v in per_type.values()])),
            "broad": float(np.mean([v["broad"] for v in per_type.values()])),
            "per_type": per_type,
            "seconds": seconds.get(name),
        }
    rng = np.random.default_rng(args.seed)
    per_type = {}
    for cell_type in mapping:
        draws = [symbols.iloc[rng.choice(adata.n_vars, K, replace=False)].tolist() for _ in range(N_RANDOM)]
        per_type[cell_type] = {
            level: float(np.mean([precision_at_k(d, truth[cell_type][level], k=K) for d in draws]))
            for level in ("primary", "broad")
        }
    results["random 25 genes"] = {
        "primary": float(np.mean([v["primary"] for v in per_type.values()])),
        "broad": float(np.mean([v["broad"] for v in per_type.values()])),
        "per_type": per_type,
        "n_draws": N_RANDOM,
    }
    in_panel = {
        cell_type: {level: len(genes & set(symbols)) for level, genes in levels.items()}
        for cell_type, levels in truth.items()
    }
    from run import git_state

    record = {
        "dataset_name": args.dataset,
        "title": title,
        "budget": args.budget,
        "git": git_state(),
        "started": started.isoformat(timespec="seconds"),
        "loadavg_start": loadavg,
        "total_seconds": time.perf_counter() - clock,
        "k": K,
        "dataset": {
            "file": dataset.file or dataset.title,
            "input": dataset.input,
            "n_cells": adata.n_obs,
            "n_genes": adata.n_vars,
        },
        "database": {"file": str(PANGLAO.relative_to(DATA_DIR)), "species": "human"},
        "mapping": mapping,
        "truth_genes_in_panel": in_panel,
        "nact": nact_info,
        "sctab": sctab_info,
        "stray_reads": stray,
        "rankers": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=1))
    write_markdown(record, args.out / f"{stem}.md")
    print((args.out / f"{stem}.md").read_text())


def _sctab_lines(sctab: dict) -> list[str]:
    """How the SCTAB rankers were trained and read out."""
    evenness = sctab["feature_masks"]
    return [
        f"SCTAB: the default {sctab['n_ensemble']}-member ensemble trained on all cells "
        f"({sctab['epochs_run']} of at most {sctab['max_epochs']} epochs, early stopping; batch key "
        f"{sctab['batch_key'] or 'none'}, seed {sctab['seed']}) in {sctab['train_seconds']:.0f} s; its "
        f"predictions agree with the labels on {sctab['agreement_with_labels_all_cells']:.1%} of the "
        "cells. Salient genes grouped by the true labels as for NACT, from what `annotate()` stores "
        "(`obsm['sctab_mask']`: the attributions to the predicted class, gradient x input, "
        f"{sctab['annotate_seconds']:.1f} s for all cells) and from the feature masks "
        f"(`get_masks()`, {sctab['feature_mask_seconds']:.1f} s). The earlier comparison of SCTAB "
        "settings (weight decay 0.05, the paper preset) is not repeated: in the run of 22 Nov 2026 "
        "neither gave masks better than the default's.",
        "",
        "The feature masks are nearly even over the genes a cell expresses: "
        f"{evenness['mean_genes_in_mask']:.0f} genes per cell in the mask, an effective number "
        "(exp entropy) of "
        f"{evenness['mean_effective_genes_in_mask']:.0f}, out of {evenness['mean_genes_expressed']:.0f} "
        "expressed. A mask selects what the decision step reads, whichever class a gene argues for, "
        "so its mean over a type's cells follows detection rates; the attribution is signed by the "
        "predicted class and keeps only the genes that raise its log-probability.",
        "",
    ]


#: what the run of 22 Nov 2026 gave on Kang, before NACT and SCTAB were redesigned
EARLIER = [
    "The run of 22 Nov 2026, with the N-ACT and SCTAB of then (full budget, a 5-member N-ACT "
    "ensemble; SCTAB with an input batch norm and masks over all genes), gave N-ACT's salient genes "
    "0.33 / 0.46 and SCTAB's (from its masks) 0.06 / 0.15.",
    "",
]


def write_markdown(record: dict, path: Path) -> None:
    nact = record["nact"]
    rankers = record["rankers"]
    types = list(record["mapping"])
    n_ensemble = nact["model_settings"].get("n_ensemble", 1)
    out = [
        f"# Marker recovery on {record.get('title', 'Kang 2018 PBMCs')}",
        "",
        f"Precision@{record['k']} of each ranker's top {record['k']} genes per cell type against PanglaoDB "
        f"human markers (27 Mar 2020 export), averaged over the {len(types)} types; *primary* / *broad* "
        f"truth sets (below). All {record['dataset']['n_cells']:,} cells with their true labels; "
        f"{record['dataset']['n_genes']:,} genes. Budget **{record['budget']}** (NACT and SCTAB at most "
        f"15 epochs with the quick budget, the models' defaults with the full one), started "
        f"{record['started']}.",
        "",
        f"NACT: {n_ensemble} network(s){' (the default)' if n_ensemble == default_n_ensemble() else ''}, "
        f"trained with its defaults for {nact['epochs_run']} epoch(s) of at most {nact['max_epochs']} "
        f"(augmentation {'on' if nact['training_settings'].get('augment') else 'off'}, seed {nact['seed']}) "
        f"in {nact['train_seconds']:.0f} s; its predictions agree with the labels on "
        f"{nact['agreement_with_labels_all_cells']:.1%} of the cells. Salient genes grouped by the true "
        "labels (`scsalient.tl.salient_genes(adata, groupby='cell_type', tfidf=...)`, default `n_top=100`, "
        "`min_frequency=0.05`). " + git_line(record.get("git")),
        "",
        *_sctab_lines(record["sctab"]),
        *(EARLIER if record.get("dataset_name", "kang") == "kang" else []),
        "| ranker | precision@25 primary | precision@25 broad | peers.md (primary / broad) | seconds |",
        "|---|---|---|---|---|",
    ]
    peers = PEER_MARKERS if record.get("dataset_name", "kang") == "kang" else {}
    for name, values in rankers.items():
        peer = peers.get(name)
        peer_text = f"{peer[0]:.2f} / {peer[1]:.2f}" if peer else "–"
        secs = values.get("seconds")
        secs_text = f"{secs:.1f}" if secs is not None else "–"
        label = f"**{name}**" if name.startswith(MODELS) else name
        out.append(
            f"| {label} | {values['primary']:.2f} | {values['broad']:.2f} | {peer_text} | {secs_text} |"
        )
    out += ["", "Compared with scanpy's Wilcoxon test and with the best other ranker (by primary):", ""]
    best_other = max((n for n in rankers if not n.startswith(MODELS)), key=lambda n: rankers[n]["primary"])
    for name in (n for n in rankers if n.startswith(MODELS)):
        for level in ("primary", "broad"):
            parts = []
            for other in dict.fromkeys(("scanpy wilcoxon", best_other)):
                gap = rankers[name][level] - rankers[other][level]
                where = "below" if gap < -1e-9 else "at or above"
                parts.append(f"{where} {other} ({rankers[other][level]:.2f}) by {abs(gap):.2f}")
            out.append(f"- {name}, {level}: {rankers[name][level]:.2f}, " + "; ".join(parts) + ".")
    out += [
        "",
        "Per type (primary / broad):",
        "",
        "| ranker | " + " | ".join(types) + " |",
        "|---|" + "---|" * len(types),
    ]
    for name, values in rankers.items():
        cells = " | ".join(
            f"{values['per_type'][t]['primary']:.2f} / {values['per_type'][t]['broad']:.2f}" for t in types
        )
        out.append(f"| {name} | {cells} |")
    panel = record["truth_genes_in_panel"]
    mapping = record["mapping"]
    out += [
        "",
        "Truth sets (PanglaoDB types, primary / broad) and their markers present in the panel: "
        + "; ".join(
            f"{t}: {', '.join(mapping[t]['primary'])} / {', '.join(mapping[t]['broad'])} "
            f"({panel[t]['primary']} / {panel[t]['broad']})"
            for t in types
        )
        + ". A precision of 1 is out of reach where fewer than 25 markers are in the panel.",
        "",
        "Top 10 genes per type:",
        "",
        "| ranker | " + " | ".join(types) + " |",
        "|---|" + "---|" * len(types),
    ]
    for name, values in rankers.items():
        if "top_genes" not in values["per_type"][types[0]]:
            continue
        cells = " | ".join(", ".join(values["per_type"][t]["top_genes"][:10]) for t in types)
        out.append(f"| {name} | {cells} |")
    if any(stray["cases"] for stray in (record.get("stray_reads") or {}).values()):
        from stray_reads import markdown_lines

        out += [
            "",
            "## Stray reads",
            "",
            "How much of each per-cell explanation (dense, rows summing to 1) sits on a cell's genes "
            "with a single count, and the classic case of a stray read of another type's marker "
            "(e.g. one CD14 count in a CD4 T cell): the marker's mean share in those cells and its "
            "median rank among their genes, against its share in the type it marks. In brackets: "
            "an even spread over the cell's detected genes. The earlier N-ACT (softmax attention) "
            "gave CD14 0.29 of the attention of T cells with a stray CD14 read, against 0.077 in "
            "monocytes.",
            "",
            *markdown_lines(record["stray_reads"]),
        ]
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
