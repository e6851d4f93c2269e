"""Markdown tables and figures of the benchmark results."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
from datasets import DATASETS, SELECTION_TASKS
from paired import paired_difference
from peers import CLASSIFICATION, NEVER_RUN, PEERS_SOURCE, SYSTEM_TO_PEER


def write_results(out: Path, stem: str, record: dict, markdown: str) -> None:
    """Write ``<stem>.json`` (the record) and ``<stem>.md`` (its report) into ``out``; print the report."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)


def fmt(stat: dict | None, digits: int = 3) -> str:
    if stat is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    if stat.get("sd") is not None:
        text += f" ± {stat['sd']:.{digits}f}"
    return text


def fmt_partial(stat: dict | None, n_seeds: int) -> str:
    """:func:`fmt`, saying how many seeds have the value when runs recorded before it lack it."""
    text = fmt(stat)
    if stat is not None and len(stat["values"]) < n_seeds:
        text += f" ({len(stat['values'])} of {n_seeds} seeds)"
    return text


def fmt_rate(stat: dict) -> str:
    mean = stat["mean"]
    text = f"{mean / 1000:.1f}k" if mean >= 1000 else f"{mean:.0f}"
    if stat.get("sd") is not None:
        sd = stat["sd"]
        text += f" ± {sd / 1000:.1f}k" if mean >= 1000 else f" ± {sd:.0f}"
    return text


def git_line(git: dict | None) -> str:
    """One sentence naming the commit the package was at, and its uncommitted changes."""
    if not git or not git.get("commit"):
        return ""
    text = f"Package at commit `{git['commit'][:10]}`"
    changed = git.get("uncommitted_changes_in_src") or []
    return text + (
        f" plus uncommitted changes to {', '.join(f'`{c}`' for c in changed)}." if changed else "."
    )


def when_line(results: dict) -> str:
    """When the results were made: one invocation, or the span of those merged with ``--merge``."""
    invocations = results.get("invocations")
    minutes = f"{results['total_seconds'] / 60:.1f} min"
    if not invocations or len(invocations) < 2:
        return f"started {results['started']}, {minutes} in total"
    starts = sorted(i["started"] for i in invocations if i.get("started"))
    span = f"first started {starts[0]}, last {starts[-1]}" if starts else "start times unknown"
    return f"merged from {len(invocations)} invocations ({span}), {minutes} of runner time in total"


def git_lines(results: dict) -> list[str]:
    """The commit(s) of the package the runs used (merged runs may come from several)."""
    states = [run.get("environment", {}).get("git") for run in results["runs"] if run.get("environment")]
    states = [state for state in states if state and state.get("commit")]
    distinct = {(s["commit"], tuple(s.get("uncommitted_changes_in_src") or [])): s for s in states}
    if len(distinct) < 2:
        line = git_line(results["environment"].get("git"))
        return [line] if line else []
    lines = ["", "Runs made at different states of the package (each run's record names its own):", ""]
    for state in distinct.values():
        runs = [
            f"{r['system']}/{r['dataset']}/{r['seed']}"
            for r in results["runs"]
            if r.get("environment", {}).get("git") == state
        ]
        lines.append(f"- {git_line(state)[:-1]} — {', '.join(runs)}.")
    return [*lines, ""]


def _gap(gap: float) -> str:
    """Absolute difference in macro-F1, with 4 decimals when 3 would show 0.000."""
    return f"{abs(gap):.3f}" if abs(gap) >= 0.0005 else f"{abs(gap):.4f}"


def _rows(results: dict, dataset: str) -> list[dict]:
    order = list(results["systems"])
    rows = [row for row in results["summary"] if row["dataset"] == dataset]
    return sorted(rows, key=lambda row: order.index(row["system"]))


def paired_differences(results: dict, dataset: str) -> dict[tuple[str, str], dict]:
    """Paired bootstrap differences (:func:`paired.paired_difference`) of each scsalient system
    against each peer on ``dataset``, keyed ``(ours, peer)``; pairs where a run did not store its
    per-cell labels are left out."""
    systems = results["systems"]
    stored = {}
    for system in {r["system"] for r in results["runs"] if r["dataset"] == dataset}:
        runs = [
            r for r in results["runs"] if (r["system"], r["dataset"], r["status"]) == (system, dataset, "ok")
        ]
        if runs and all(r.get("labels") for r in runs):
            stored[system] = [r["labels"] for r in runs]
    ours = [name for name in stored if systems[name]["family"] == "scsalient"]
    peers = [name for name in stored if systems[name]["family"] == "peer"]
    return {(a, b): paired_difference(stored[a], stored[b]) for a in ours for b in peers}


def _interval(d: dict) -> str:
    return f"{d['difference']:+.4f} ({d['low']:+.4f} to {d['high']:+.4f})"


def paired_table_lines(results: dict, dataset: str, differences: dict[tuple[str, str], dict]) -> list[str]:
    """Paired bootstrap differences of each scsalient system against each peer (stored labels only)."""
    systems = results["systems"]
    order = [row["system"] for row in _rows(results, dataset)]
    # every stored (ours, peer) pair is in ``differences``: the table is complete
    ours = [a for a in order if any(key[0] == a for key in differences)]
    peers = [b for b in order if any(key[1] == b for key in differences)]
    if not differences:
        return []
    out = [
        "",
        "Macro-F1 of each scsalient model minus each peer's, on the same test cells (mean over each "
        "system's seeds), with a 95 % paired bootstrap interval over the test cells (2,000 "
        "resamples; runs that stored their per-cell labels only):",
        "",
        "| system | " + " | ".join(systems[b]["label"] for b in peers) + " |",
        "|---|" + "---|" * len(peers),
    ]
    for a in ours:
        cells = " | ".join(_interval(differences[a, b]) for b in peers)
        out.append(f"| {systems[a]['label']} | {cells} |")
    return out


def comparison_lines(results: dict, differences: dict[str, dict]) -> list[str]:
    """Plain statements of where each scsalient model stands against the best peer.

    ``differences``: per dataset, its :func:`paired_differences`, quoted for the best peer.
    """
    systems = results["systems"]
    lines = []
    for dataset, info in results["datasets"].items():
        rows = _rows(results, dataset)
        ours = [row for row in rows if systems[row["system"]]["family"] == "scsalient"]
        peers = [row for row in rows if systems[row["system"]]["family"] == "peer"]
        if not ours:
            continue
        paired = differences[dataset]
        reference = CLASSIFICATION.get(dataset, {})
        best_reference = max(reference.items(), key=lambda item: item[1][0]) if reference else None
        for row in ours:
            label = systems[row["system"]]["label"]
            f1 = row["macro_f1"]["mean"]
            parts = []
            if peers:
                best = max(peers, key=lambda r: r["macro_f1"]["mean"])
                best_f1 = best["macro_f1"]["mean"]
                gap = f1 - best_f1
                name = systems[best["system"]]["label"]
                where = f"the best peer run here, {name} ({best_f1:.3f}), by {_gap(gap)} macro-F1"
                verdict = f"**below {where}**" if gap < 0 else f"at or above {where}"
                sds = [s for s in (row["macro_f1"]["sd"], best["macro_f1"]["sd"]) if s is not None]
                if sds and abs(gap) <= max(sds):
                    verdict += " (within one seed sd)"
                d = paired.get((row["system"], best["system"]))
                if d:
                    verdict += (
                        f"; paired bootstrap over the test cells, difference {d['difference']:+.4f} "
                        f"(95 % interval {d['low']:+.4f} to {d['high']:+.4f})"
                    )
                parts.append(verdict)
            if best_reference is not None:
                ref_name, (ref_f1, *_rest) = best_reference
                gap = f1 - ref_f1
                where = f"the best number in peers.md, {ref_name} ({ref_f1:.3f}), by {_gap(gap)}"
                parts.append(f"**below {where}**" if gap < 0 else f"at or above {where}")
            lines.append(f"- **{info['title']}** — {label}: macro-F1 {f1:.3f}; " + "; ".join(parts) + ".")
    return lines


def _mean_over_seeds(results: dict, field: str) -> dict[tuple[str, str], float]:
    """(dataset, system) -> mean of a run field over the seeds that have it."""
    values: dict[tuple[str, str], list[float]] = {}
    for run in results["runs"]:
        value = run.get(field) if run["status"] == "ok" else None
        if value is not None and np.isfinite(value):
            values.setdefault((run["dataset"], run["system"]), []).append(float(value))
    return {key: float(np.mean(v)) for key, v in values.items()}


def overview_lines(results: dict) -> list[str]:
    """Task x system tables: macro-F1, calibration error, and the cells of types the reference lacks."""
    systems = list(results["systems"])
    datasets = list(results["datasets"])
    f1 = _mean_over_seeds(results, "macro_f1")
    ece = _mean_over_seeds(results, "ece")
    auroc = _mean_over_seeds(results, "unseen_auroc")

    def table(values: dict, best=max) -> list[str]:
        lines = ["| task | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
        for dataset in datasets:
            row = [values.get((dataset, s)) for s in systems]
            present = [v for v in row if v is not None]
            top = best(present) if present else None
            cells = ["–" if v is None else (f"**{v:.3f}**" if v == top else f"{v:.3f}") for v in row]
            role = "selection" if dataset in SELECTION_TASKS else "report"
            lines.append(f"| {dataset} ({role}) | " + " | ".join(cells) + " |")
        return lines

    out = [
        "## Overview",
        "",
        "Mean over seeds. *selection*: a task on which NACT's and SCTAB's defaults were chosen "
        "(`results/defaults.md`); *report*: a task the defaults never saw. Best of each row in bold.",
        "",
        "**Macro-F1** (over the types of the reference):",
        "",
        *table(f1),
        "",
        "**Expected calibration error** of the top probability (15 bins; cells of the reference's "
        "types; lower is better):",
        "",
        *table(ece, best=min),
        "",
    ]
    if any(r.get("reliability") for r in results["runs"]):
        out += [
            "Reliability diagrams of every task (bins pooled over the seeds that recorded them): "
            "`classification_reliability.png`.",
            "",
        ]
    unseen = [d for d in datasets if any((d, s) in auroc for s in systems)]
    if unseen:
        out += [
            "**Cells of types the reference lacks**: AUROC of 1 − top probability for separating them "
            "from the cells of known types, and at a threshold of 0.5 the share of unseen-type cells "
            "left unassigned / the share of known-type cells lost:",
            "",
            "| task | unseen types (cells) | " + " | ".join(systems) + " |",
            "|---|---|" + "---|" * len(systems),
        ]
        for dataset in unseen:
            runs = [
                r for r in results["runs"] if r["dataset"] == dataset and r.get("unseen_auroc") is not None
            ]
            types = ", ".join(runs[0]["unseen_types"]) + f" ({runs[0]['n_unseen_cells']})"
            cells = []
            for system in systems:
                mine = [r for r in runs if r["system"] == system]
                if not mine:
                    cells.append("–")
                    continue
                caught = np.mean([r["unseen_left_unassigned"]["0.5"] for r in mine])
                lost = np.mean([r["known_left_unassigned"]["0.5"] for r in mine])
                cells.append(f"{auroc[(dataset, system)]:.2f} ({caught:.0%} / {lost:.0%})")
            out.append(f"| {dataset} | {types} | " + " | ".join(cells) + " |")
        out.append("")
    out += familiarity_lines(results)
    return out


def familiarity_lines(results: dict) -> list[str]:
    """NACT's and SCTAB's familiarity: unseen-type detection, and known-type cells lost on every task."""
    import scsalient as ss

    default = ss.model.NACT._default_min_familiarity
    runs = [r for r in results["runs"] if r.get("known_below_familiarity")]
    if not runs:
        return []
    systems = [s for s in results["systems"] if any(r["system"] == s for r in runs)]
    thresholds = list(runs[0]["known_below_familiarity"])
    shown = [t for t in thresholds if default is None or float(t) >= default][:3]

    def cell(mine: list[dict], key: str | None) -> str:
        if not mine:
            return "–"
        parts = [f"{np.mean([r[key] for r in mine]):.2f}"] if key else []
        for t in shown:
            lost = np.mean([r["known_below_familiarity"][t] for r in mine])
            if mine[0].get("unseen_below_familiarity"):
                caught = np.mean([r["unseen_below_familiarity"][t] for r in mine])
                parts.append(f"{caught:.0%} / {lost:.0%}")
            else:
                parts.append(f"{lost:.0%}")
        return " · ".join(parts)

    default_text = "no default threshold" if default is None else f"default `min_familiarity={default}`"
    out = [
        '**Familiarity** (NACT, SCTAB: `obs["<p>_familiarity"]`, one-vs-rest regressions on the '
        f"latent space against the validation cells; {default_text}): on tasks with types the reference "
        "lacks, the AUROC for their cells, then at each threshold "
        + ", ".join(f"{t}" for t in shown)
        + " the share of unseen-type cells left unassigned / the share of known-type cells lost; on "
        "the other tasks, the share of (known-type) cells lost at each threshold:",
        "",
        "| task | " + " | ".join(systems) + " |",
        "|---|" + "---|" * len(systems),
    ]
    for dataset in results["datasets"]:
        mine = {s: [r for r in runs if r["dataset"] == dataset and r["system"] == s] for s in systems}
        if not any(mine.values()):
            continue
        has_auroc = any(r.get("familiarity_auroc") is not None for v in mine.values() for r in v)
        key = "familiarity_auroc" if has_auroc else None
        role = "selection" if dataset in SELECTION_TASKS else "report"
        out.append(f"| {dataset} ({role}) | " + " | ".join(cell(mine[s], key) for s in systems) + " |")
    out.append("")
    return out


def threads_line(runs: list[dict]) -> str:
    """How many threads the runs used (a seed's result depends on it), or ``""`` if none says."""
    counts = Counter(r.get("threads") for r in runs)
    if set(counts) == {None}:
        return ""
    parts = [f"{n} run(s) with {t} thread(s)" for t, n in sorted((t, n) for t, n in counts.items() if t)]
    if counts.get(None):
        parts.append(f"{counts[None]} run(s) made before the thread count was recorded")
    return "Threads per run (BLAS and torch; a seed's result depends on them): " + "; ".join(parts) + "."


def write_classification_markdown(results: dict, path: Path) -> None:
    env = results["environment"]
    packages = env["packages"]
    systems = results["systems"]
    runs_ok = [r for r in results["runs"] if r["status"] == "ok"]
    loads = [r["loadavg_start"] for r in runs_ok if "loadavg_start" in r]
    # each pair bootstrapped once, quoted in the comparison lines and the per-dataset tables
    differences = {dataset: paired_differences(results, dataset) for dataset in results["datasets"]}
    seeds = ", ".join(str(s) for s in results["seeds"])
    versions = ", ".join(f"{name} {version}" for name, version in packages.items() if version)
    out = [
        "# Cell-type classification benchmark",
        "",
        f"Budget **{results['budget']}** (seeds {seeds}), {when_line(results)}. "
        f"Machine: {env['cpu_count']} CPU cores, "
        f"{env['platform']}, Python {env['python']}; {versions}.",
    ]
    out += git_lines(results)
    if line := threads_line(runs_ok):
        out.append(line)
    if loads:
        text = f"1-min load average at the start of the runs: {min(loads):.1f}–{max(loads):.1f}"
        if max(loads) > 0.75 * (env["cpu_count"] or 1):
            text += (
                f" on {env['cpu_count']} cores: other jobs shared the machine, so the times are upper "
                "bounds of what free cores give"
            )
        out.append(text + ".")
    out += [
        "",
        "Scores are on the held-out test cells: macro-F1 over the classes present in the test labels or "
        "predictions, accuracy, mean ± sd over seeds (no sd with one seed). *Fit s*: training time "
        "(NACT: setup, model construction and all epochs). *Predict cells/s*: test cells divided by "
        "prediction time. *Peak RSS*: peak resident memory of the run's own process, data loading "
        "included. Each run is a separate process. Rows marked *from peers.md* were not run here; "
        f"they come from {PEERS_SOURCE}.",
        "",
        "*Ontology macro-F1* (datasets whose cells carry Cell Ontology IDs; – on the others and for runs "
        "recorded before this score existed): every "
        "label is mapped to the CL term its training cells carry, and a prediction counts as correct "
        "when it is the true term or one of its descendants in the Cell Ontology (a more specific "
        "type), while an ancestor (a coarser type) or a sibling is wrong, as in scTab's evaluation "
        "(`scsalient.metrics.ontology_f1`); macro-averaged like macro-F1. When no label's term lies "
        "below another's, it equals macro-F1.",
        "",
        *overview_lines(results),
        "## scsalient against the best peer",
        "",
        *(comparison_lines(results, differences) or ["No scsalient model was run."]),
        "",
    ]
    for dataset, info in results["datasets"].items():
        rows = _rows(results, dataset)
        out += [
            f"## {info['title']}",
            "",
            f"Split: {info['split']} — {info['n_train']:,} train / {info['n_test']:,} test cells, "
            f"{info['n_genes']:,} features, input {info['input']} "
            f"({info['n_classes_train']} classes in train, {info['n_classes_test']} in test).",
        ]
        if info.get("cl_ids"):
            terms = ", ".join(f"{label} = `{term}`" for label, term in info["cl_ids"].items())
            out.append(f"Cell Ontology terms of the labels: {terms}.")
        out += [
            "",
            "| system | macro-F1 | ontology macro-F1 | accuracy | fit s | predict cells/s | peak RSS MB "
            "| seeds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            label = systems[row["system"]]["label"]
            if systems[row["system"]]["family"] == "scsalient":
                label = f"**{label}**"
            cells = [
                label,
                fmt(row["macro_f1"]),
                fmt_partial(row.get("ontology_macro_f1"), row["n_seeds"]),
                fmt(row["accuracy"]),
                fmt(row["fit_seconds"], 1),
                fmt_rate(row["predict_cells_per_second"]),
                fmt(row["peak_rss_mb"], 0),
                str(row["n_seeds"]),
            ]
            out.append("| " + " | ".join(cells) + " |")
        run_peers = {SYSTEM_TO_PEER.get(row["system"]) for row in rows}
        for name, (f1, acc, fit, rate) in CLASSIFICATION.get(dataset, {}).items():
            if name in run_peers:
                continue
            out.append(f"| {name} *(from peers.md)* | {f1:.3f} | – | {acc:.3f} | {fit} | {rate} | – | – |")
        out += paired_table_lines(results, dataset, differences[dataset])
        notes = sorted({note for row in rows for note in row.get("ontology_notes", [])})
        if notes:
            out += ["", "Ontology macro-F1 not computed: " + "; ".join(notes) + "."]
        # per-class F1
        if rows:
            classes = sorted({c for row in rows for c in row["per_class_f1_mean"]})
            support = {}
            for run in results["runs"]:
                if run["status"] == "ok" and run["dataset"] == dataset:
                    support.update(run["test_support"])
            out += [
                "",
                "Per-class F1 (mean over seeds; test cells per class):",
                "",
                "| class | test cells | " + " | ".join(row["system"] for row in rows) + " |",
                "|---|---|" + "---|" * len(rows),
            ]
            for c in classes:
                values = " | ".join(f"{row['per_class_f1_mean'].get(c, 0.0):.2f}" for row in rows)
                out.append(f"| {c} | {support.get(c, 0)} | {values} |")
        out.append("")
    not_run = []
    for name, why in NEVER_RUN.items():
        numbers = "; ".join(
            f"{DATASETS[d].title}: macro-F1 {v[name][0]:.3f}, accuracy {v[name][1]:.3f}, fit {v[name][2]} s"
            for d, v in CLASSIFICATION.items()
            if name in v
        )
        not_run.append(f"- {name}: not run ({why}). From peers.md: {numbers}.")
    for item in results["skipped"]:
        what = " on ".join(item[k] for k in ("system", "dataset") if k in item)
        not_run.append(f"- {what}: skipped — {item['reason']}.")
    errors = [r for r in results["runs"] if r["status"] == "error"]
    for run in errors:
        not_run.append(
            f"- {run['system']} on {run['dataset']} (seed {run['seed']}): failed — {run.get('error')}."
        )
    if not_run:
        out += ["## Not run", "", *not_run, ""]
    out += ["Systems:", ""]
    for name, meta in systems.items():
        out.append(f"- `{name}` ({meta['label']}): {meta['description']}; input: {meta['input']}.")
    path.write_text("\n".join(out) + "\n")


def write_classification_figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in results["datasets"] if any(r["dataset"] == d for r in results["summary"])]
    systems = [s for s in results["systems"] if any(r["system"] == s for r in results["summary"])]
    if not datasets or not systems:
        return
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(1.5 + len(datasets) * (0.6 + 0.4 * len(systems)), 3.8))
    colors = plt.get_cmap("tab10")
    for i, system in enumerate(systems):
        means, sds, xs = [], [], []
        for j, dataset in enumerate(datasets):
            row = next(
                (r for r in results["summary"] if r["dataset"] == dataset and r["system"] == system), None
            )
            if row is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            means.append(row["macro_f1"]["mean"])
            sds.append(row["macro_f1"]["sd"] or 0.0)
        family = results["systems"][system]["family"]
        ax.bar(
            xs,
            means,
            width,
            yerr=sds if any(sds) else None,
            label=results["systems"][system]["label"],
            color=colors(i),
            edgecolor="black" if family == "scsalient" else "none",
            linewidth=1.2,
            capsize=2,
        )
        for x, m in zip(xs, means):
            ax.text(x, m + 0.01, f"{m:.3f}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(np.arange(len(datasets)))
    ax.set_xticklabels([textwrap.fill(results["datasets"][d]["title"], 18) for d in datasets], fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("macro-F1 (test cells)")
    ax.set_title(f"Cell-type classification, budget {results['budget']}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def pooled_reliability(results: dict, dataset: str, system: str) -> dict | None:
    """The reliability bins of one system on one task, pooled over the seeds that recorded them.

    Returns ``{"n_cells", "confidence", "accuracy"}`` arrays (NaN for empty bins) or ``None``
    when no run of the pair recorded its bins (runs made before they were recorded).
    """
    tables = [
        r["reliability"]
        for r in results["runs"]
        if r["status"] == "ok" and r["dataset"] == dataset and r["system"] == system and r.get("reliability")
    ]
    if not tables:
        return None
    n = np.array([t["n_cells"] for t in tables], dtype=float)
    nan = np.nan

    def weighted(field: str) -> np.ndarray:
        values = np.array([[nan if v is None else v for v in t[field]] for t in tables], dtype=float)
        total = n.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, np.nansum(values * n, axis=0) / total, nan)

    return {"n_cells": n.sum(axis=0), "confidence": weighted("confidence"), "accuracy": weighted("accuracy")}


def write_reliability_figure(results: dict, path: Path) -> bool:
    """One reliability diagram per task, every system that recorded its bins drawn on it.

    Each point is a bin of the top probability (15 equal-width bins, pooled over seeds): its
    mean confidence against its accuracy, the area proportional to the cells in it. A
    calibrated system follows the diagonal; below it is overconfident. Returns whether a
    figure was written (runs recorded before the bins were kept have none).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(results["systems"])
    panels = []
    for dataset in results["datasets"]:
        curves = {s: pooled_reliability(results, dataset, s) for s in systems}
        curves = {s: c for s, c in curves.items() if c is not None}
        if curves:
            panels.append((dataset, curves))
    if not panels:
        return False
    ece = _mean_over_seeds(results, "ece")
    n_cols = min(5, len(panels))
    n_rows = int(np.ceil(len(panels) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.0 * n_cols, 3.0 * n_rows), squeeze=False)
    colors = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(systems)}
    for ax, (dataset, curves) in zip(axes.flat, panels):
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
        for system, curve in curves.items():
            filled = curve["n_cells"] > 0
            x, y, n = curve["confidence"][filled], curve["accuracy"][filled], curve["n_cells"][filled]
            label = f"{system} ({ece.get((dataset, system), np.nan):.3f})"
            ax.plot(x, y, color=colors[system], lw=1.0, label=label)
            ax.scatter(x, y, s=4 + 60 * n / n.sum(), color=colors[system], zorder=3)
        role = "selection" if dataset in SELECTION_TASKS else "report"
        ax.set_title(f"{dataset} ({role})", fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left", frameon=False, title="system (ECE)", title_fontsize=6)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("mean top probability", fontsize=8)
    fig.suptitle("Reliability of the top probability per task (cells of the reference's types)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def main() -> None:
    """Re-render classification.md and .png from results/classification.json."""
    import json

    results_dir = Path(__file__).resolve().parent / "results"
    results = json.loads((results_dir / "classification.json").read_text())
    write_classification_markdown(results, results_dir / "classification.md")
    write_classification_figure(results, results_dir / "classification.png")
    write_reliability_figure(results, results_dir / "classification_reliability.png")


if __name__ == "__main__":
    main()
