"""Marker recovery on Kang 2018 PBMCs: precision@25 against PanglaoDB human markers.

Rankers, all given the true cell-type labels of all 8,684 cells:

* NACT salient genes with TF-IDF and with plain mean attention (``tfidf=False``): NACT is
  trained with its defaults (15 epochs for the quick budget; batch augmentation over the donors),
  ``model.annotate()`` stores the attention, then
  ``scsalient.tl.salient_genes(adata, groupby="cell_type", tfidf=...)``;
* SCTAB salient genes from its feature masks (``attention_key="sctab_mask"``), with TF-IDF and
  with the plain mean mask: the default 5-member ensemble, trained like NACT (15 epochs for the
  quick budget, the model's default otherwise; batch augmentation over the donors), and the
  same ensemble with the earlier weight decay of 0.05 and with the paper preset, to show
  whether the masks survive the defaults;
* scanpy ``rank_genes_groups`` with wilcoxon, t-test and logreg on log1p CP10k;
* 25 random genes (mean over 1,000 draws).

Ground truth per Kang type, as in peers.md: primary / broad (primary plus related types)
PanglaoDB human cell types. Kang genes are Ensembl IDs; ranked genes are mapped to
``var["gene_symbols"]`` before scoring.

Usage: ``python benchmarks/markers.py [--budget quick|full] [--seed 0]``. Writes
``results/markers.json`` and ``results/markers.md``.
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

from datasets import DATA_DIR, DATASETS, LABEL_KEY  # noqa: E402
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


def truth_sets(database: pd.DataFrame) -> dict[str, dict[str, set[str]]]:
    sets = {}
    for kang_type, levels in MAPPING.items():
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


def nact_rankings(adata, budget: str, seed: int) -> tuple[dict, dict]:
    from systems import _jsonable, train_classifier

    from scsalient._constants import NACTKeys

    work = adata.copy()
    # the model's default ensemble size (the mean attention of its members)
    model, train_seconds = train_classifier(
        "NACT", work, LABEL_KEY, seed, budget, n_ensemble=default_n_ensemble()
    )
    start = time.perf_counter()
    model.annotate()
    annotate_seconds = time.perf_counter() - start
    agreement = float((work.obs["nact_prediction"].astype(str) == work.obs[LABEL_KEY].astype(str)).mean())
    rankings, seconds = salient_gene_rankings(
        work,
        {True: "NACT salient genes, TF-IDF", False: "NACT mean attention (no TF-IDF)"},
        NACTKeys.ATTENTION,
    )
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
    return rankings, info


#: SCTAB settings read out on Kang (each the default 5-member ensemble): name -> train kwargs
SCTAB_SETTINGS = {
    "default": {},
    "weight decay 0.05 (the earlier default)": {"weight_decay": 0.05},
    "paper preset": {"preset": "paper"},
}
#: the model-based rankers (the others are the baselines they are compared with)
MODELS = ("NACT", "SCTAB")


def sctab_rankings(adata, epochs: int | None, seed: int) -> tuple[dict, dict]:
    """Salient genes of SCTAB's mean feature masks per true type, for each of ``SCTAB_SETTINGS``."""
    from systems import _jsonable, _quiet_lightning

    _quiet_lightning()
    import scvi

    import scsalient as ss
    from scsalient._constants import SCTABKeys

    batch_key = next((key for key in BATCH_KEYS if key in adata.obs), None)
    rankings, info = {}, {}
    for setting, train_kwargs in SCTAB_SETTINGS.items():
        scvi.settings.seed = seed
        work = adata.copy()
        start = time.perf_counter()
        ss.model.SCTAB.setup_anndata(work, labels_key=LABEL_KEY, batch_key=batch_key)
        model = ss.model.SCTAB(work)
        if epochs is not None:
            train_kwargs = {"max_epochs": epochs, **train_kwargs}
        model.train(enable_progress_bar=False, **train_kwargs)
        train_seconds = time.perf_counter() - start
        model.annotate(latent=False)
        predicted = work.obs[SCTABKeys.PREDICTION].astype(str)
        names = {
            True: f"SCTAB {setting}, salient genes (masks), TF-IDF",
            False: f"SCTAB {setting}, mean mask (no TF-IDF)",
        }
        ranked, seconds = salient_gene_rankings(work, names, SCTABKeys.MASK)
        rankings.update(ranked)
        info[setting] = {
            "train_kwargs": train_kwargs,
            "n_ensemble": model.n_ensemble,
            "training_settings": _jsonable(model.training_settings_),
            "max_epochs": model.training_settings_["max_epochs"],
            "epochs_run": len(model.history["f1_macro_train"]),
            "seed": seed,
            "batch_key": batch_key,
            "train_seconds": train_seconds,
            "agreement_with_labels_all_cells": float((predicted == work.obs[LABEL_KEY].astype(str)).mean()),
            "ranking_seconds": seconds,
        }
    return rankings, info


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
    parser.add_argument("--budget", choices=["quick", "full"], default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args(argv)

    import scsalient as ss
    from scsalient.metrics import precision_at_k

    clock = time.perf_counter()
    started = dt.datetime.now().astimezone()
    loadavg = os.getloadavg()[0]
    dataset = DATASETS["kang"]
    for needed in (dataset.path, PANGLAO):
        if not needed.exists():
            raise SystemExit(f"markers.py needs {needed}, which is missing")
    adata = dataset.load()
    adata.obs[LABEL_KEY] = pd.Categorical(adata.obs[LABEL_KEY].astype(str))
    adata.uns["bench_input"] = dataset.input
    symbols = adata.var["gene_symbols"].astype(str)
    database = ss.datasets.marker_database(PANGLAO, species="human")
    truth = truth_sets(database)

    rankings, nact_info = nact_rankings(adata, args.budget, args.seed)
    sctab_ranked, sctab_info = sctab_rankings(
        adata, QUICK_EPOCHS if args.budget == "quick" else None, args.seed
    )
    rankings.update(sctab_ranked)
    scanpy_ranked, scanpy_seconds = scanpy_rankings(adata)
    rankings.update(scanpy_ranked)
    seconds = {**nact_info["ranking_seconds"], **scanpy_seconds}
    for setting in sctab_info.values():
        seconds.update(setting["ranking_seconds"])

    results = {}
    for name, ranked in rankings.items():
        per_type = {}
        for kang_type in MAPPING:
            genes = symbols.loc[ranked[kang_type]].tolist()  # Ensembl ID -> symbol
            per_type[kang_type] = {
                level: precision_at_k(genes, truth[kang_type][level], k=K) for level in ("primary", "broad")
            }
            per_type[kang_type]["top_genes"] = genes
        results[name] = {
            "primary": float(np.mean([v["primary"] for v in per_type.values()])),
            "broad": float(np.mean([v["broad"] for v in per_type.values()])),
            "per_type": per_type,
            "seconds": seconds.get(name),
        }
    rng = np.random.default_rng(args.seed)
    per_type = {}
    for kang_type in MAPPING:
        draws = [symbols.iloc[rng.choice(adata.n_vars, K, replace=False)].tolist() for _ in range(N_RANDOM)]
        per_type[kang_type] = {
            level: float(np.mean([precision_at_k(d, truth[kang_type][level], k=K) for d in draws]))
            for level in ("primary", "broad")
        }
    results["random 25 genes"] = {
        "primary": float(np.mean([v["primary"] for v in per_type.values()])),
        "broad": float(np.mean([v["broad"] for v in per_type.values()])),
        "per_type": per_type,
        "n_draws": N_RANDOM,
    }
    in_panel = {
        kang_type: {level: len(genes & set(symbols)) for level, genes in levels.items()}
        for kang_type, levels in truth.items()
    }
    from run import git_state

    record = {
        "budget": args.budget,
        "git": git_state(),
        "started": started.isoformat(timespec="seconds"),
        "loadavg_start": loadavg,
        "total_seconds": time.perf_counter() - clock,
        "k": K,
        "dataset": {"file": dataset.file, "n_cells": adata.n_obs, "n_genes": adata.n_vars},
        "database": {"file": str(PANGLAO.relative_to(DATA_DIR)), "species": "human"},
        "mapping": MAPPING,
        "truth_genes_in_panel": in_panel,
        "nact": nact_info,
        "sctab": sctab_info,
        "rankers": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "markers.json").write_text(json.dumps(record, indent=1))
    write_markdown(record, args.out / "markers.md")
    print((args.out / "markers.md").read_text())


def _sctab_lines(sctab: dict | None) -> list[str]:
    """How the SCTAB rankers were trained (absent from results made before they were added)."""
    if not sctab:
        return []
    runs = "; ".join(
        f"{setting}: {info['epochs_run']} epochs in {info['train_seconds']:.0f} s, predictions agree "
        f"with the labels on {info['agreement_with_labels_all_cells']:.1%} of the cells"
        for setting, info in sctab.items()
    )
    first = next(iter(sctab.values()))
    return [
        f"SCTAB: {first['n_ensemble']}-member ensembles trained on all cells (at most "
        f"{first['max_epochs']} epochs; batch key {first['batch_key']}, seed "
        f"{first['seed']}) with the default settings, with the earlier weight decay of 0.05 and "
        f"with the paper preset ({runs}). Salient genes from the feature masks "
        "(`attention_key='sctab_mask'`), grouped by the true labels as for NACT.",
        "",
    ]


def write_markdown(record: dict, path: Path) -> None:
    nact = record["nact"]
    rankers = record["rankers"]
    out = [
        "# Marker recovery on Kang 2018 PBMCs",
        "",
        f"Precision@{record['k']} of each ranker's top {record['k']} genes per cell type against PanglaoDB "
        "human markers (27 Mar 2020 export), averaged over the 4 types; *primary* / *broad* truth "
        f"sets as in peers.md. All {record['dataset']['n_cells']:,} cells with their true labels; "
        f"{record['dataset']['n_genes']:,} genes (Ensembl IDs mapped to symbols). Budget "
        f"**{record['budget']}**, started {record['started']}.",
        "",
        f"NACT: {nact['model_settings'].get('n_ensemble', 1)}-member ensemble"
        f"{' (the default)' if nact['model_settings'].get('n_ensemble', 1) == default_n_ensemble() else ''}, "
        f"trained with its defaults for {nact['epochs_run']} epoch(s) "
        f"(batch key "
        f"{nact['training_settings'].get('augment') and 'donor_id' or 'none'}, seed {nact['seed']}) "
        f"in {nact['train_seconds']:.0f} s; "
        f"its predictions agree with the labels on "
        f"{nact['agreement_with_labels_all_cells']:.1%} of the cells. Salient genes grouped by the true "
        "labels (`scsalient.tl.salient_genes(adata, groupby='cell_type', tfidf=...)`, default `n_top=100`, "
        "`min_frequency=0.05`). " + git_line(record.get("git")),
        "",
        *_sctab_lines(record.get("sctab")),
        "| ranker | precision@25 primary | precision@25 broad | peers.md (primary / broad) | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, values in rankers.items():
        peer = PEER_MARKERS.get(name)
        peer_text = f"{peer[0]:.2f} / {peer[1]:.2f}" if peer else "–"
        secs = values.get("seconds")
        secs_text = f"{secs:.1f}" if secs is not None else "–"
        label = f"**{name}**" if name.startswith(MODELS) else name
        out.append(
            f"| {label} | {values['primary']:.2f} | {values['broad']:.2f} | {peer_text} | {secs_text} |"
        )
    best_other = max((n for n in rankers if not n.startswith(MODELS)), key=lambda n: rankers[n]["primary"])
    out += ["", "Compared with the best other ranker:", ""]
    for name in (n for n in rankers if n.startswith(MODELS)):
        for level in ("primary", "broad"):
            gap = rankers[name][level] - rankers[best_other][level]
            where = "below" if gap < 0 else "at or above"
            out.append(
                f"- {name}, {level}: {rankers[name][level]:.2f}, {where} {best_other} "
                f"({rankers[best_other][level]:.2f}) by {abs(gap):.2f}."
            )
    types = list(record["mapping"])
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
    out += [
        "",
        "PanglaoDB markers present in the Kang panel (primary / broad): "
        + "; ".join(f"{t} {panel[t]['primary']} / {panel[t]['broad']}" for t in types)
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
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
