"""Planted-marker recovery on simulated data: NACT and SCTAB salient genes vs scanpy's marker tests.

``scsalient.datasets.simulate`` plants ``n_markers=25`` marker genes per cell type (4 types, 1,200
cells, 500 genes, 8-fold markers, 20 housekeeping genes expressed everywhere). Every ranker gets
the true labels and returns 25 genes per type; we score

* precision@25 against the type's planted markers (1.0 = all 25 markers found), and
* the fraction of housekeeping genes among the 25 (0 is best; TF-IDF should keep them out).

Rankers: NACT salient genes with and without TF-IDF, from the default single network (default
training, no validation split) and from a 5-member ensemble, trained on all cells; scanpy
``rank_genes_groups`` wilcoxon and t-test on log1p CP10k; SCTAB salient genes from what
``annotate()`` stores (the attributions to the predicted class) and from its feature masks
(``get_masks()``), of the default 5-member ensemble (30 epochs, no validation split); and a
control that spreads each cell's attention evenly over its detected genes (what detection rates
alone give). ``n_top`` of the salient-gene read-out is given both at its default (100 of 500
genes, i.e. a fifth of the panel) and at 25 (5 %, the share that the default takes of a
2,000-gene panel).

Usage: ``python benchmarks/markers_simulated.py [--budget quick|full]`` (quick: seed 0; full:
seeds 0, 1, 2). Writes ``results/markers_simulated.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

K = 25
SIMULATION = {
    "n_cells": 1200,
    "n_genes": 500,
    "n_cell_types": 4,
    "n_donors": 2,
    "n_markers": K,
    "marker_fold": 8.0,
    "library_size": 1500,
}
#: name -> (model kwargs, train kwargs)
NACT_SETTINGS = {
    "default (one network)": ({}, {}),
    "5-member ensemble": ({"n_ensemble": 5}, {}),
}

#: SCTAB settings (each the default 5-member ensemble): name -> train kwargs (the weight decay
#: of 0.05 and the paper preset, read out in earlier runs, are left out: the budget)
SCTAB_SETTINGS = {
    "default (5-member ensemble)": {},
}

N_TOPS = (100, 25)
SEEDS = {"quick": [0], "full": [0, 1, 2]}


def salient_rankings(
    adata, label: str, plain: str, attention_key: str = "nact_attention"
) -> dict[str, dict[str, list[str]]]:
    """Salient genes per type at each ``n_top``, with TF-IDF and plain (named ``plain``)."""
    import scsalient as ss

    rankings = {}
    for n_top in N_TOPS:
        for tfidf in (True, False):
            record = ss.tl.salient_genes(
                adata, "cell_type", attention_key=attention_key, n_top=n_top, tfidf=tfidf, inplace=False
            )
            names = record["names"]
            name = f"{label}, {'TF-IDF' if tfidf else plain}, n_top={n_top}"
            rankings[name] = {str(c): list(pd.DataFrame(names)[c]) for c in names.dtype.names}
    return rankings


def rank_one_seed(seed: int) -> dict[str, dict[str, list[str]]]:
    import scanpy as sc
    import scvi

    import scsalient as ss

    adata = ss.datasets.simulate(**SIMULATION, seed=seed)
    rankings: dict[str, dict[str, list[str]]] = {}
    for setting, (model_kwargs, train_kwargs) in NACT_SETTINGS.items():
        scvi.settings.seed = seed
        data = adata.copy()
        ss.model.NACT.setup_anndata(data, labels_key="cell_type")
        model = ss.model.NACT(data, **model_kwargs)
        model.train(train_size=1.0, enable_progress_bar=False, **train_kwargs)
        model.annotate(latent=False)
        rankings.update(salient_rankings(data, f"NACT {setting}", "mean attention"))
        if setting == "default (one network)":
            data.obsm["nact_attribution"] = model.get_attributions()
            rankings.update(
                salient_rankings(data, "NACT default, attributions", "mean attribution", "nact_attribution")
            )
    for setting, train_kwargs in SCTAB_SETTINGS.items():
        scvi.settings.seed = seed
        data = adata.copy()
        ss.model.SCTAB.setup_anndata(data, labels_key="cell_type")
        model = ss.model.SCTAB(data)
        model.train(max_epochs=30, train_size=1.0, enable_progress_bar=False, **train_kwargs)
        model.annotate(latent=False)
        rankings.update(salient_rankings(data, f"SCTAB {setting}, attributions", "mean", "sctab_mask"))
        data.obsm["sctab_feature_mask"] = model.get_masks()
        rankings.update(
            salient_rankings(data, f"SCTAB {setting}, feature masks", "mean mask", "sctab_feature_mask")
        )
    # control: "attention" spread evenly over each cell's detected genes, read out the same way;
    # a learned attention has to beat what detection rates alone give
    detected = (adata.X > 0).astype(np.float32)
    detected = np.asarray(detected.todense()) if hasattr(detected, "todense") else detected
    control = adata.copy()
    control.obsm["detected"] = detected / np.maximum(detected.sum(axis=1, keepdims=True), 1)
    rankings.update(salient_rankings(control, "control: uniform over detected genes", "mean", "detected"))
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    for method in ("wilcoxon", "t-test"):
        sc.tl.rank_genes_groups(lognorm, "cell_type", method=method, n_genes=K)
        names = lognorm.uns["rank_genes_groups"]["names"]
        rankings[f"scanpy {method}"] = {str(c): list(names[c]) for c in names.dtype.names}
    truth = adata.uns["simulation"]
    scores = {}
    for name, ranked in rankings.items():
        precision = [np.isin(ranked[t][:K], truth["markers"][t]).sum() / K for t in ranked]
        housekeeping = [np.isin(ranked[t][:K], truth["housekeeping"]).mean() for t in ranked]
        scores[name] = {"precision": float(np.mean(precision)), "housekeeping": float(np.mean(housekeeping))}
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=["quick", "full"], default="quick")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    clock = time.perf_counter()
    started = dt.datetime.now().astimezone()
    per_seed = {}
    for seed in SEEDS[args.budget]:
        print(f"[markers_simulated] seed {seed} ...", flush=True)
        per_seed[seed] = rank_one_seed(seed)
    names = list(next(iter(per_seed.values())))
    summary = {}
    for name in names:
        summary[name] = {}
        for metric in ("precision", "housekeeping"):
            values = np.array([per_seed[s][name][metric] for s in per_seed])
            summary[name][metric] = {
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            }
    from run import git_state

    record = {
        "budget": args.budget,
        "git": git_state(),
        "started": started.isoformat(timespec="seconds"),
        "total_seconds": time.perf_counter() - clock,
        "k": K,
        "simulation": SIMULATION,
        "seeds": list(per_seed),
        "summary": summary,
        "per_seed": {str(s): v for s, v in per_seed.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "markers_simulated.json").write_text(json.dumps(record, indent=1))
    write_markdown(record, args.out / "markers_simulated.md")
    print((args.out / "markers_simulated.md").read_text())


#: what the table says (measured with seed 0 of the quick budget, 7 Dec 2026)
READING = [
    "**Where each ranker wins.** SCTAB's default explanation (what `annotate()` stores: the "
    "attribution of the predicted class's log-probability to the genes) and N-ACT's attributions "
    "(`get_attributions()`: the positive part of each gene's exact contribution to the predicted "
    "logit) recover every planted marker, as Wilcoxon's and the t-test's ranks do, with or "
    "without TF-IDF. N-ACT's stored attention shares recover them read out as the plain mean "
    "(`tfidf=False`), but its default read-out, TF-IDF with `n_top=100`, recovers almost none. "
    "Why: every cell of this simulation detects about 350 of the 500 genes, the other types' "
    "markers among them at a low level, and the attention shares (attention x expression) are "
    "not signed by the class: a type's markers are among the 100 most attended genes of many "
    "other types' cells too, so every marker is in every type's document, its IDF is 0, and "
    "TF-IDF ranks the rest. SCTAB's feature masks fail the same way. On real PBMCs "
    "(`markers*.md`) the ranking turns: there the attention shares with TF-IDF find more known "
    "markers than the attributions and than Wilcoxon's test, which is why N-ACT stores them.",
    "",
    "A classifier needs only enough markers to separate the types; a differential-expression "
    "test ranks every gene a type expresses more. The control spreads each cell's attention "
    "evenly over the genes it expresses: what detection rates alone give.",
]


def write_markdown(record: dict, path: Path) -> None:
    sim = record["simulation"]
    seeds = record["seeds"]
    lines = [
        "# Planted-marker recovery on simulated data",
        "",
        f"`scsalient.datasets.simulate` with {sim['n_cells']:,} cells, {sim['n_genes']} genes, "
        f"{sim['n_cell_types']} types, {sim['n_markers']} planted markers per type "
        f"({sim['marker_fold']:g}-fold), 20 housekeeping genes. Top {record['k']} genes per type "
        f"from each ranker, given the true labels; mean ± sd over seeds {', '.join(map(str, seeds))}. "
        f"Budget **{record['budget']}**, started {record['started']}, {record['total_seconds']:.0f} s.",
        "",
        "| ranker | precision@25 of planted markers | housekeeping genes in top 25 |",
        "|---|---|---|",
    ]
    for name, values in record["summary"].items():
        p, h = values["precision"], values["housekeeping"]
        lines.append(f"| {name} | {p['mean']:.2f} ± {p['sd']:.2f} | {h['mean']:.2f} ± {h['sd']:.2f} |")
    lines += ["", *READING, ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
