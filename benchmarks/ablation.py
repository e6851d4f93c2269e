"""Ablation of the training defaults of NACT and SCTAB: from the published settings to the default.

Each model is trained with a cumulative series of settings, from its paper preset to its
default (then the regularisers and sizes that were tried and not adopted, and for both the
default ensemble distilled into one network), on the fixed splits of the
classification benchmark (MOp: unseen sub-libraries; Kang: unseen donors). Every setting was
chosen on a validation split inside the training cells, never on the test cells (see the user
guides). For NACT on Kang the table also gives the precision@25 of its salient genes against
PanglaoDB (the test cells' attention, grouped by their true labels), to show that the
explanations survive the new defaults.

Usage::

    python benchmarks/ablation.py --budget quick     # seed 0
    python benchmarks/ablation.py --budget full      # seeds 0, 1, 2
    python benchmarks/ablation.py --models nact --datasets mop --seeds 0 1

Writes ``results/ablation.{json,md}``; with ``--merge`` keeps the runs of an earlier
``ablation.json`` that this invocation does not repeat.

``--split inner`` runs the same steps without the test cells: inside the training cells, the
last third of the training batches (sorted by name; MOp sub-libraries 09G/H/I, Kang donor 1244)
is held out and scored, the rest is trained on. This is the split on which the defaults are
chosen; it writes ``results/ablation_inner.{json,md}``.

``--from-classification`` (test split only) takes the steps that the classification benchmark
also runs (the default settings: NACT's distilled network; SCTAB's one network, ensemble and
distilled network; see ``CLASSIFICATION_SYSTEMS``) from its runs in
``results/classification.json`` instead of training them again; the table names the commit
those runs were made at. To copy them and train nothing::

    python benchmarks/ablation.py --budget full --merge --from-classification --steps
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from datasets import LABEL_KEY, inner_held_out, load_split  # noqa: E402
from paired import encode_labels  # noqa: E402
from report import threads_line  # noqa: E402
from run import DEFAULT_THREADS  # noqa: E402
from systems import (  # noqa: E402
    BATCH_KEYS,
    NACT_EARLIER_DISTILL,
    SCTAB_WIDE,
    _quiet_lightning,
    distilled,
    teacher_record,
)

SEEDS = {"quick": [0], "full": [0, 1, 2]}
#: classes of MOp whose errors dominate (peers.md, issue notes): their F1 is reported separately
WEAK_CLASSES = ("Mis", "E3Rmst", "E5Sulf1", "Mic", "Endo", "Peri")
MAX_EPOCHS = 30

#: NACT's distilled networks: before and after the consistent teacher and the input dropout
NACT_EARLIER_STEP = (
    "default, distilled into one network, the earlier distill() "
    "(teacher on unshifted cells, no input dropout)"
)
NACT_DISTILLED_STEP = (
    "default, distilled into one network (distill(): teacher on the shifted cells, input dropout 0.25)"
)
#: SCTAB's distilled networks: as wide as a member (the earlier default) and four times as wide
SCTAB_MEMBER_WIDE_STEP = "default, distilled into one network as wide as a member (the earlier distill())"
SCTAB_DISTILLED_STEP = "default, distilled into one network 4x as wide as a member (distill())"

#: cumulative steps: (name, setup kwargs, model kwargs, train kwargs); "BATCH" = the data's batch column;
#: train kwargs ``distill``: True, or the keyword arguments of ``distill()``
STEPS = {
    "nact": [
        (
            "paper preset (Adam 1e-4, batch 128, 50 epochs)",
            {},
            {"n_ensemble": 1},
            {"preset": "paper"},
        ),
        (
            "+ lr 1e-3, batch 256, early stopping on validation macro-F1",
            {},
            {"n_ensemble": 1},
            {"augment": False},
        ),
        (
            "+ batch augmentation (default settings, one network)",
            {"batch_key": "BATCH"},
            {"n_ensemble": 1},
            {},
        ),
        (
            "one network + standardized attention input (not adopted)",
            {"batch_key": "BATCH"},
            {"attention_input": "standardized", "n_ensemble": 1},
            {},
        ),
        (
            "one network + input dropout 0.5 (not adopted)",
            {"batch_key": "BATCH"},
            {"n_ensemble": 1},
            {"input_dropout": 0.5},
        ),
        (
            "one network + label smoothing 0.1 (not adopted)",
            {"batch_key": "BATCH"},
            {"n_ensemble": 1},
            {"label_smoothing": 0.1},
        ),
        ("+ 5-member ensemble (default, n_ensemble=5)", {"batch_key": "BATCH"}, {}, {}),
        (NACT_EARLIER_STEP, {"batch_key": "BATCH"}, {}, {"distill": NACT_EARLIER_DISTILL}),
        (NACT_DISTILLED_STEP, {"batch_key": "BATCH"}, {}, {"distill": True}),
        (
            "one network + weight average over 1 epoch (average_epochs=1, not the default)",
            {"batch_key": "BATCH"},
            {"n_ensemble": 1},
            {"average_epochs": 1},
        ),
        (
            "5-member ensemble + weight average over 1 epoch (average_epochs=1, not the default)",
            {"batch_key": "BATCH"},
            {},
            {"average_epochs": 1},
        ),
        (
            "one network + centred attention input (not adopted)",
            {"batch_key": "BATCH"},
            {"attention_input": "centered", "n_ensemble": 1},
            {},
        ),
        (
            "5-member ensemble + centred attention input (not adopted)",
            {"batch_key": "BATCH"},
            {"attention_input": "centered"},
            {},
        ),
        (
            "5-member ensemble + centred attention input, distilled (not adopted)",
            {"batch_key": "BATCH"},
            {"attention_input": "centered"},
            {"distill": NACT_EARLIER_DISTILL},
        ),
        (
            "one network + centred input, genes in > 50 % of cells out of the attention "
            "(attention_max_detection=0.5, not adopted)",
            {"batch_key": "BATCH"},
            {"attention_input": "centered", "attention_max_detection": 0.5, "n_ensemble": 1},
            {},
        ),
        (
            "5-member ensemble + centred input, genes in > 50 % of cells out of the attention (not adopted)",
            {"batch_key": "BATCH"},
            {"attention_input": "centered", "attention_max_detection": 0.5},
            {},
        ),
    ],
    "sctab": [
        ("paper preset, 1 member", {}, {"n_ensemble": 1}, {"preset": "paper"}),
        (
            "auto preset with scTab's weight decay 0.05, 1 member",
            {},
            {"n_ensemble": 1},
            {"weight_decay": 0.05},
        ),
        (
            "+ batch augmentation, 1 member",
            {"batch_key": "BATCH"},
            {"n_ensemble": 1},
            {"weight_decay": 0.05},
        ),
        ("+ weight decay 0.5 (default settings, 1 member)", {"batch_key": "BATCH"}, {"n_ensemble": 1}, {}),
        ("+ 5-member ensemble (default)", {"batch_key": "BATCH"}, {}, {}),
        (
            SCTAB_MEMBER_WIDE_STEP,
            {"batch_key": "BATCH"},
            {},
            {"distill": {"model_kwargs": {}}},
        ),
        (
            SCTAB_DISTILLED_STEP,
            {"batch_key": "BATCH"},
            {},
            {"distill": {"model_kwargs": SCTAB_WIDE}},
        ),
        (
            "5-member ensemble with weight decay 0.05 (the earlier default)",
            {"batch_key": "BATCH"},
            {},
            {"weight_decay": 0.05},
        ),
        (
            "5-member ensemble with weight decay 0.05, distilled (the earlier default)",
            {"batch_key": "BATCH"},
            {},
            {"weight_decay": 0.05, "distill": {"model_kwargs": {}}},
        ),
        (
            "1 member, weight decay 0.05, n_d 64, n_a 32 (not adopted)",
            {"batch_key": "BATCH"},
            {"n_ensemble": 1, "n_d": 64, "n_a": 32},
            {"weight_decay": 0.05},
        ),
        (
            "1 member, weight decay 0.05, 2 shared + 2 independent GLU layers (not adopted)",
            {"batch_key": "BATCH"},
            {"n_ensemble": 1, "n_shared": 2, "n_independent": 2},
            {"weight_decay": 0.05},
        ),
        (
            "1 member, weight decay 0.05, learning rate 1e-3 (not adopted)",
            {"batch_key": "BATCH"},
            {"n_ensemble": 1},
            {"lr": 1e-3, "weight_decay": 0.05},
        ),
        (
            "1 member, weight decay 0.05, learning-rate decay 0.95 per epoch (not adopted)",
            {"batch_key": "BATCH"},
            {"n_ensemble": 1},
            {"lr_decay": 0.95, "weight_decay": 0.05},
        ),
    ],
}
SPLITS = ("test", "inner")


def load_data(dataset: str, split: str):
    """Cells to train on and cells to score: the benchmark's split, or the inner one (module doc)."""
    train, test, _ = load_split(dataset)
    if split == "test":
        return train, test
    key = next(k for k in BATCH_KEYS if k in train.obs)
    inner = train.obs[key].astype(str).isin(inner_held_out(train.obs[key])).to_numpy()
    fit, score = train[~inner].copy(), train[inner].copy()
    for part in (fit, score):
        part.obs[LABEL_KEY] = part.obs[LABEL_KEY].cat.remove_unused_categories()
    return fit, score


def train_and_score(model_name: str, step: tuple, dataset: str, seed: int, split: str = "test") -> dict:
    """Train one step on one split and score it on the held-out cells (see :func:`load_data`)."""
    _quiet_lightning()
    import scvi
    from sklearn.metrics import accuracy_score, f1_score

    import scsalient as ss

    name, setup_kwargs, model_kwargs, train_kwargs = step
    train_kwargs = dict(train_kwargs)
    distill = train_kwargs.pop("distill", False)
    train, test = load_data(dataset, split)
    setup_kwargs = dict(setup_kwargs)
    if setup_kwargs.get("batch_key") == "BATCH":
        setup_kwargs["batch_key"] = next((k for k in BATCH_KEYS if k in train.obs), None)
    scvi.settings.seed = seed
    cls = ss.model.NACT if model_name == "nact" else ss.model.SCTAB
    start = time.perf_counter()
    cls.setup_anndata(train, labels_key=LABEL_KEY, **setup_kwargs)
    model = cls(train, **model_kwargs)
    epochs = None if train_kwargs.get("preset") == "paper" and model_name == "nact" else MAX_EPOCHS
    model.train(max_epochs=epochs, enable_progress_bar=False, **train_kwargs)
    if distill:  # the ensemble's probabilities, taught to one network (fit time includes both)
        distill_kwargs = distill if isinstance(distill, dict) else {}  # e.g. the network's model_kwargs
        model = distilled(model, max_epochs=epochs, **distill_kwargs)
    fit_seconds = time.perf_counter() - start
    predictions = np.asarray(model.predict(test)).astype(str)
    truth = test.obs[LABEL_KEY].astype(str).to_numpy()
    labels = np.unique(np.concatenate([truth, predictions]))
    per_class = f1_score(truth, predictions, labels=labels, average=None, zero_division=0)
    history = model.history["f1_macro_validation"].iloc[:, 0]
    record = {
        "model": model_name,
        "step": name,
        "dataset": dataset,
        "split": split,
        "seed": seed,
        "macro_f1": float(f1_score(truth, predictions, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(truth, predictions)),
        "per_class_f1": {str(c): float(v) for c, v in zip(labels, per_class)},
        "labels": encode_labels(truth, predictions),  # per cell, for paired comparisons
        "best_validation_f1": float(history.max()),
        "epochs_run": int(len(history)),
        "fit_seconds": fit_seconds,
        "training_settings": {
            k: v if isinstance(v, bool | int | float | str | type(None)) else repr(v)
            for k, v in model.training_settings_.items()
        },
    }
    record.update(teacher_record(model, test, LABEL_KEY))  # the ensemble's score, if distilled
    if model_name == "nact" and dataset == "kang":
        record["salient_precision_at_25"] = kang_salient_precision(model, test)
    return record


#: steps with the configuration of a classification benchmark system (same split, seeds and
#: epochs): on the test split their runs are copied from that benchmark, not trained twice
CLASSIFICATION_SYSTEMS = {
    "nact": {"nact_distilled_earlier": NACT_EARLIER_STEP, "nact_distilled": NACT_DISTILLED_STEP},
    "sctab": {
        "sctab": "+ weight decay 0.5 (default settings, 1 member)",
        "sctab_ensemble": "+ 5-member ensemble (default)",
        "sctab_distilled": SCTAB_MEMBER_WIDE_STEP,
        "sctab_distilled_wide": SCTAB_DISTILLED_STEP,
    },
}


def from_classification(
    classification: dict, models: list[str], datasets: list[str], seeds: list[int]
) -> list[dict]:
    """The steps of :data:`CLASSIFICATION_SYSTEMS` as ablation records, from that benchmark's runs.

    Those runs train the same configuration on the same test split, so the ablation reuses
    them instead of training them twice; each record keeps the commit it was made at.
    """
    wanted = {system: (m, step) for m in models for system, step in CLASSIFICATION_SYSTEMS[m].items()}
    records = []
    for run in classification["runs"]:
        model_name, step = wanted.get(run.get("system"), (None, None))
        if model_name is None or run.get("status") != "ok":
            continue
        if run["dataset"] not in datasets or run["seed"] not in seeds:
            continue
        extra = run.get("extra", {})
        git = run.get("environment", {}).get("git") or {}
        records.append(
            {
                "model": model_name,
                "step": step,
                "dataset": run["dataset"],
                "split": "test",
                "seed": run["seed"],
                "macro_f1": run["macro_f1"],
                "accuracy": run["accuracy"],
                "per_class_f1": run["per_class_f1"],
                "best_validation_f1": max(extra["f1_macro_validation_per_epoch"]),
                "epochs_run": extra["epochs_run"],
                "fit_seconds": run["fit_seconds"],
                "training_settings": extra.get("training_settings", {}),
                "teacher_macro_f1": extra.get("teacher_macro_f1"),
                "source": {"system": run["system"]},
                "git": git,
                # per-cell labels and thread count, where the run recorded them
                **{key: run[key] for key in ("labels", "threads") if key in run},
            }
        )
    return records


def _source_notes(runs: list[dict]) -> list[str]:
    """One line naming the classification runs that a table's rows were taken from."""
    copied = [r for r in runs if isinstance(r.get("source"), dict)]
    if not copied:
        return []
    systems = sorted({r["source"]["system"] for r in copied})
    seeds = sorted({r["seed"] for r in copied})
    return [
        "The rows of the default settings on this split (one network, ensemble, distilled) are "
        "the classification benchmark's runs of the same configuration (systems "
        f"{', '.join(f'`{s}`' for s in systems)}, seeds {', '.join(map(str, seeds))}), copied here "
        "rather than trained twice (`--from-classification`)."
    ]


def _git_lines(record: dict) -> list[str]:
    """The package state of the runs: one sentence, or one line per state when merged runs differ."""
    from report import git_line

    def key(git: dict | None) -> tuple:
        git = git or {}
        return (
            git.get("commit"),
            tuple(git.get("uncommitted_changes_in_src") or []),
            bool(git.get("inherited")),
        )

    def sentence(git: dict) -> str:
        text = git_line(git)[:-1]
        if git.get("inherited"):  # a run recorded before runs named their commit
            text += " or earlier (the commit of the table these runs were merged from)"
        return text

    runs = record["runs"]
    states = {key(r.get("git")): r["git"] for r in runs if (r.get("git") or {}).get("commit")}
    if len(states) < 2:
        state = next(iter(states.values()), record.get("git"))
        return [sentence(state) + ".", ""] if (state or {}).get("commit") else []
    lines = ["Runs made at different states of the package:", ""]
    for state_key, state in states.items():
        steps = sorted({f"{r['model']} {r['step']}" for r in runs if key(r.get("git")) == state_key})
        lines.append(f"- {sentence(state)}: {'; '.join(steps)}.")
    return [*lines, ""]


def kang_salient_precision(model, test) -> dict:
    """Precision@25 of NACT's salient genes on the test cells against PanglaoDB (primary / broad)."""
    from markers import MAPPING, PANGLAO, K, truth_sets

    import scsalient as ss
    from scsalient.metrics import precision_at_k

    if not PANGLAO.exists():
        return {}
    truth = truth_sets(ss.datasets.marker_database(PANGLAO, species="human"))
    query = test.copy()
    model.annotate(query)
    symbols = query.var["gene_symbols"].astype(str)
    out = {}
    for tfidf in (True, False):
        record = ss.tl.salient_genes(query, groupby=LABEL_KEY, tfidf=tfidf, n_genes=K, inplace=False)
        names = record["names"]
        scores = {
            level: float(
                np.mean(
                    [
                        precision_at_k(symbols.loc[list(names[t])].tolist(), truth[t][level], k=K)
                        for t in MAPPING
                    ]
                )
            )
            for level in ("primary", "broad")
        }
        out["tfidf" if tfidf else "mean_attention"] = scores
    return out


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for model_name, steps in STEPS.items():
        for name, *_ in steps:
            for dataset in sorted({r["dataset"] for r in runs}):
                mine = [
                    r
                    for r in runs
                    if r["model"] == model_name and r["step"] == name and r["dataset"] == dataset
                ]
                if not mine:
                    continue
                row = {
                    "model": model_name,
                    "step": name,
                    "dataset": dataset,
                    "seeds": [r["seed"] for r in mine],
                }
                for metric in ("macro_f1", "accuracy", "best_validation_f1", "epochs_run", "fit_seconds"):
                    values = np.array([r[metric] for r in mine], dtype=float)
                    row[metric] = (
                        float(values.mean()),
                        float(values.std(ddof=1)) if len(values) > 1 else None,
                    )
                classes = sorted({c for r in mine for c in r["per_class_f1"]})
                row["per_class_f1"] = {
                    c: float(np.mean([r["per_class_f1"].get(c, 0.0) for r in mine])) for c in classes
                }
                salient = [r["salient_precision_at_25"] for r in mine if r.get("salient_precision_at_25")]
                if salient:
                    row["salient_precision_at_25"] = {
                        kind: {
                            level: float(np.mean([s[kind][level] for s in salient]))
                            for level in ("primary", "broad")
                        }
                        for kind in salient[0]
                    }
                rows.append(row)
    return rows


def _fmt(value: tuple[float, float | None], digits: int = 3) -> str:
    mean, sd = value
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def write_markdown(record: dict, path: Path) -> None:
    rows = record["summary"]
    inner = record.get("split", "test") == "inner"
    datasets = [d for d in ("mop", "kang") if any(r["dataset"] == d for r in rows)]
    if inner:
        title = {"mop": "MOp, held-out sub-libraries 09G/H/I", "kang": "Kang, held-out training donor"}
        intro = (
            "Macro-F1 (mean ± sd over seeds) on the last third of the *training* batches (MOp "
            "sub-libraries 09G/H/I, Kang donor 1244), each model trained on the other training "
            "batches: no test cell is used. This is the table on which the defaults are chosen. "
        )
        selection = ""
    else:
        title = {"mop": "MOp, unseen sub-libraries 09J/K/L", "kang": "Kang, unseen donors"}
        intro = "Test macro-F1 (mean ± sd over seeds) on the fixed splits of the classification benchmark. "
        selection = (
            "The settings were chosen on batches held out inside the training cells, never on the "
            "test cells: see the same ablation on that split (`ablation_inner.md`). SCTAB's default "
            "preset was first compared with the published one on this MOp split itself; the "
            "inner-split table repeats that comparison without the test cells. "
        )
    lines = [
        "# Ablation: from the published settings to the defaults"
        + (" (inner split, no test cells)" if inner else ""),
        "",
        f"Budget **{record['budget']}**, seeds {', '.join(map(str, record['seeds']))}; started "
        f"{record['started']}, {record['total_seconds'] / 60:.0f} min. "
        + intro
        + "Each step adds one ingredient to the one above (rows marked *not adopted* add it to the "
        "default settings of one network, for SCTAB to those before the weight decay of 0.5; "
        "*distilled* rows train one network on the default ensemble's probabilities, with "
        "`distill()`). "
        "*val* is the best macro-F1 on the validation split (10 % of the "
        f"training cells) and *epochs* the epochs run (at most {MAX_EPOCHS}; 50 for NACT's paper "
        "preset). " + selection.rstrip(),
        "",
        *_git_lines(record),
    ]
    if line := threads_line(record["runs"]):
        lines += [line, ""]
    for note in _source_notes(record["runs"]):  # rows taken from the classification benchmark
        lines += [note, ""]
    for model_name in STEPS:
        mine = [r for r in rows if r["model"] == model_name]
        if not mine:
            continue
        used = sorted({seed for r in mine for seed in r["seeds"]})
        # the number of seeds of most rows; a row with another number says how many it has
        usual = Counter(len(r["seeds"]) for r in mine).most_common(1)[0][0]
        lines += [
            f"## {'NACT' if model_name == 'nact' else 'SCTAB'}",
            "",
            f"Seeds {', '.join(map(str, used))} (no ± with a single seed); {usual} seeds a row unless "
            "it says otherwise.",
            "",
        ]
        header = "| step |"
        rule = "|---|"
        for d in datasets:
            header += f" {title[d]}: macro-F1 | val | epochs |"
            rule += "---|---|---|"
        if model_name == "nact" and "kang" in datasets:
            header += " Kang salient p@25 vs PanglaoDB (TF-IDF / mean attention) |"
            rule += "---|"
        lines += [header, rule]
        for name, *_ in STEPS[model_name]:
            line = f"| {name} |"
            found = False
            for d in datasets:
                row = next((r for r in mine if r["step"] == name and r["dataset"] == d), None)
                if row is None:
                    line += " – | – | – |"
                    continue
                found = True
                f1, val = _fmt(row["macro_f1"]), _fmt(row["best_validation_f1"])
                if len(row["seeds"]) != usual:
                    n = len(row["seeds"])
                    f1 += f" ({n} seed{'s' if n > 1 else ''})"
                line += f" {f1} | {val} | {row['epochs_run'][0]:.0f} |"
            if model_name == "nact" and "kang" in datasets:
                row = next((r for r in mine if r["step"] == name and r["dataset"] == "kang"), None)
                sal = row.get("salient_precision_at_25") if row else None
                line += (
                    f" {sal['tfidf']['primary']:.2f} / {sal['mean_attention']['primary']:.2f} |"
                    if sal
                    else " – |"
                )
            if found:
                lines.append(line)
        lines.append("")
        mop_rows = [r for r in mine if r["dataset"] == "mop"]
        if mop_rows:
            lines += [
                f"Per-class F1 on MOp of the weak classes ({', '.join(WEAK_CLASSES)}):",
                "",
                "| step | " + " | ".join(WEAK_CLASSES) + " |",
                "|---|" + "---|" * len(WEAK_CLASSES),
            ]
            for row in mop_rows:
                lines.append(
                    f"| {row['step']} | "
                    + " | ".join(f"{row['per_class_f1'].get(c, float('nan')):.2f}" for c in WEAK_CLASSES)
                    + " |"
                )
            lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=["quick", "full"], default="quick")
    parser.add_argument("--models", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--datasets", nargs="+", choices=["mop", "kang"], default=["mop", "kang"])
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0 quick, 0 1 2 full)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--merge", action="store_true", help="keep the runs of an earlier ablation.json")
    parser.add_argument(
        "--steps", nargs="*", type=int, help="run only these steps (1-based) of each model; none: no step"
    )
    parser.add_argument(
        "--split", choices=SPLITS, default="test", help="score on test cells or held-out training batches"
    )
    parser.add_argument(
        "--from-classification",
        action="store_true",
        help="test split: take the steps run by the classification benchmark (the default settings) "
        "from results/classification.json instead of training them",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"threads (default {DEFAULT_THREADS}, as the classification runs); results depend on it",
    )
    args = parser.parse_args(argv)
    if args.from_classification and args.split != "test":
        parser.error("--from-classification needs --split test (the classification split)")
    from run import git_state, limit_threads

    limit_threads(args.threads)

    seeds = args.seeds if args.seeds is not None else SEEDS[args.budget]
    started = dt.datetime.now().astimezone()
    clock = time.perf_counter()
    stem = "ablation" if args.split == "test" else "ablation_inner"
    path = args.out / f"{stem}.json"
    kept, previous_seconds = [], 0.0
    if args.merge and path.exists():
        previous = json.loads(path.read_text())
        kept, previous_seconds = previous["runs"], previous.get("total_seconds", 0.0)
        for run in kept:  # runs recorded before each run named its own commit: the table's
            if "git" not in run:
                run["git"] = {**(previous.get("git") or {}), "inherited": True}
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []

    def write() -> None:
        # after every run, so that an interrupted ablation keeps what it measured
        done = {(r["model"], r["step"], r["dataset"], r["seed"]) for r in runs}
        merged = [r for r in kept if (r["model"], r["step"], r["dataset"], r["seed"]) not in done] + runs
        record = {
            "budget": args.budget,
            "split": args.split,
            "git": git_state(),
            "started": started.isoformat(timespec="seconds"),
            "total_seconds": previous_seconds + time.perf_counter() - clock,
            "seeds": sorted({r["seed"] for r in merged}),
            "summary": summarise(merged),
            "runs": merged,
        }
        path.write_text(json.dumps(record, indent=1))
        write_markdown(record, args.out / f"{stem}.md")

    if args.from_classification:
        classification = json.loads((args.out / "classification.json").read_text())
        runs += from_classification(classification, args.models, args.datasets, seeds)
        print(f"[ablation test] {len(runs)} run(s) taken from classification.json", flush=True)
        write()
    # the copied steps without a classification run (e.g. another budget's seeds) are trained
    copied = {(r["model"], r["step"], r["dataset"], r["seed"]) for r in runs}
    # seed-major order: a partial run has every step for the first seeds
    for seed in seeds:
        for model_name in args.models:
            for number, step in enumerate(STEPS[model_name], start=1):
                if args.steps is not None and number not in args.steps:
                    continue
                for dataset in args.datasets:
                    if (model_name, step[0], dataset, seed) in copied:
                        continue  # taken from the classification runs above
                    label = f"[ablation {args.split}] {model_name} | {step[0]} | {dataset} | seed {seed} ..."
                    print(label, end=" ", flush=True)
                    state = git_state()  # the package as the run found it
                    record = train_and_score(model_name, step, dataset, seed, args.split)
                    record["git"] = state
                    record["threads"] = args.threads
                    runs.append(record)
                    print(f"macro-F1 {record['macro_f1']:.3f} ({record['epochs_run']} epochs)", flush=True)
                    write()
    print((args.out / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
