"""Cell-type classification benchmark of scsalient's models against peer classifiers.

Usage::

    python benchmarks/run.py --budget quick     # Kang + MOp; nact, sctab, logreg, mlp; 1 seed
    python benchmarks/run.py --budget full      # + Spectra TILs; all systems; 3 seeds
    python benchmarks/run.py --budget quick --systems nact logreg --datasets kang --no-markers

Each (system, dataset, seed) runs in its own subprocess
(``python benchmarks/run.py --one SYSTEM DATASET SEED --json OUT``), so its wall time and
peak resident memory are its own. Results go to ``benchmarks/results/``:
``classification.json`` (every run, with per-class F1), ``classification.md`` (mean ± sd over
seeds) and ``classification.png``. The other benchmarks (``EXTRA_BENCHMARKS``: marker recovery
on Kang and on simulated data, module recovery, RNA <-> ATAC translation, training from disk
at scale, faithfulness of the per-cell explanations) run afterwards with the same budget unless
``--no-markers`` is given; each writes its own tables into the results folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from datasets import DATASETS, LABEL_KEY, label_to_cl_id  # noqa: E402
from paired import encode_labels  # noqa: E402
from systems import SYSTEMS  # noqa: E402

#: environment variables that set the thread pools of the numerical libraries
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
#: threads per run: at a fixed seed, a network's result depends on the thread count (the order
#: of its floating-point reductions), so every run uses the same number and records it
DEFAULT_THREADS = 1
#: the annotation tasks: within-study splits, then reference -> query pairs across studies,
#: technologies, conditions and species (``datasets.TRANSFER_TASKS``)
ANNOTATION_TASKS = [
    "kang",
    "mop",
    "spectra",
    "pbmc68k",
    "kang_stim",
    "pbmc_celseq2",
    "pancreas_smartseq2",
    "pancreas_c1",
    "pancreas_xin_wang",
    "tme",
    "kidney",
    "celllines_dropseq",
    "celllines_10x",
    "celllines5",
    "mesc",
    "kang_without_nk",
    "mop_without_ast",
]
BUDGET_DATASETS = {"quick": ["kang_stim", "pbmc_celseq2", "pancreas_smartseq2"], "full": ANNOTATION_TASKS}
BUDGET_SEEDS = {"quick": [0], "full": [0, 1, 2]}
#: scripts run after the classification benchmark, each as ``script [args] --budget B --out DIR``
EXTRA_BENCHMARKS = [
    # the Translator's settings (dropout of single networks, the default ensemble), scored on
    # held-out training sub-libraries before the test run
    "translation.py --split inner --no-links --systems feature_mean svd_krr translator",
    *(
        f"translation.py --split inner --no-links --merge --systems translator --n-ensemble 1 --dropout {p}"
        for p in ("0.1", "0.3", "0.5", "0.7")
    ),
    "markers.py",
    "markers_simulated.py",
    "naming.py",
    "naming.py --seed 1",
    "naming.py --seed 2",
    "naming.py --summarise",
    "modules.py",
    "translation.py",
    "translation.py --merge --systems translator --n-ensemble 1",
    "translation.py --merge --systems translator --n-ensemble 1 --dropout 0.7",
    "translate_speed.py",
    "nact_flops.py",
    "scale.py",
    "faithfulness.py",
]
PACKAGES = (
    "scsalient",
    "torch",
    "scvi-tools",
    "scikit-learn",
    "scanpy",
    "anndata",
    "numpy",
    "celltypist",
    "xgboost",
)


# ---------------------------------------------------------------------------------- one run


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (ru_maxrss is in KB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 2**20 if sys.platform == "darwin" else value / 1024


#: confidence thresholds at which the share of cells left unassigned is recorded
UNASSIGNED_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: familiarity thresholds (NACT's and SCTAB's ``min_familiarity``) at which the same is recorded
FAMILIARITY_THRESHOLDS = (0.0001, 0.001, 0.01, 0.05)


def score(truth: np.ndarray, predictions: np.ndarray, known: set[str] | None = None) -> dict:
    """Macro-F1 and accuracy over the test cells of the types the training cells contain.

    Cells of a type the reference never saw (``known`` lacks it) cannot be labelled right by a
    classifier; they are left out here and scored by :func:`trust_scores` instead.
    """
    from sklearn.metrics import accuracy_score, f1_score

    if known is not None:
        keep = np.isin(truth, sorted(known))
        truth, predictions = truth[keep], predictions[keep]
    labels = np.unique(np.concatenate([truth, predictions]))
    per_class = f1_score(truth, predictions, labels=labels, average=None, zero_division=0)
    support = {label: int((truth == label).sum()) for label in labels}
    return {
        "macro_f1": float(f1_score(truth, predictions, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(truth, predictions)),
        "per_class_f1": {str(label): float(value) for label, value in zip(labels, per_class)},
        "test_support": {str(label): count for label, count in support.items()},
        "n_predicted_classes_absent_from_test": int(sum(support[label] == 0 for label in labels)),
    }


def trust_scores(truth: np.ndarray, probabilities, known: set[str], familiarity=None) -> dict:
    """How far the predicted probabilities can be trusted, from a system's per-cell probabilities.

    ``ece``: expected calibration error (15 bins of the top probability) on the cells of known
    types; ``unseen_auroc``: how well a low top probability separates cells of types the
    reference lacks from the others (when the test cells have such types); and the share of
    unseen- and known-type cells whose top probability is under each threshold of
    ``UNASSIGNED_THRESHOLDS`` (they would be left unassigned). With ``familiarity`` (NACT's
    and SCTAB's per-cell score for resembling a reference type) the same for it:
    ``familiarity_auroc`` and the shares under each of ``FAMILIARITY_THRESHOLDS``.
    """
    from scsalient.metrics import expected_calibration_error, reliability_table, unseen_type_auroc

    probs = probabilities.to_numpy(dtype=np.float64)
    classes = probabilities.columns.astype(str).to_numpy()
    valid = ~np.isnan(probs).any(axis=1)
    probs, truth = probs[valid], truth[valid]
    if familiarity is not None:
        familiarity = np.asarray(familiarity, dtype=np.float64)[valid]
        if np.isnan(familiarity).all():
            familiarity = None
    confidence = probs.max(axis=1)
    is_known = np.isin(truth, sorted(known))
    out = {
        "ece": expected_calibration_error(probs[is_known], truth[is_known], classes),
        "reliability": _reliability_record(reliability_table(probs[is_known], truth[is_known], classes)),
        "mean_confidence_known": float(confidence[is_known].mean()),
        "known_left_unassigned": {
            str(t): float((confidence[is_known] < t).mean()) for t in UNASSIGNED_THRESHOLDS
        },
    }
    if (~is_known).any():
        out["unseen_types"] = sorted(set(truth[~is_known]))
        out["n_unseen_cells"] = int((~is_known).sum())
        out["unseen_auroc"] = unseen_type_auroc(confidence, ~is_known)
        out["unseen_left_unassigned"] = {
            str(t): float((confidence[~is_known] < t).mean()) for t in UNASSIGNED_THRESHOLDS
        }
    if familiarity is not None:
        out["known_below_familiarity"] = {
            str(t): float((familiarity[is_known] < t).mean()) for t in FAMILIARITY_THRESHOLDS
        }
        if (~is_known).any():
            out["familiarity_auroc"] = unseen_type_auroc(familiarity, ~is_known)
            out["unseen_below_familiarity"] = {
                str(t): float((familiarity[~is_known] < t).mean()) for t in FAMILIARITY_THRESHOLDS
            }
    return out


def _reliability_record(table) -> dict:
    """A reliability table as JSON lists (``None`` for the confidence and accuracy of empty bins)."""
    return {
        "n_cells": [int(v) for v in table["n_cells"]],
        "confidence": [None if np.isnan(v) else round(float(v), 4) for v in table["confidence"]],
        "accuracy": [None if np.isnan(v) else round(float(v), 4) for v in table["accuracy"]],
    }


#: CL ID given to a predicted label without one: the root term "cell", never a true type or a
#: descendant of one, so such a prediction is wrong under the ontology rule
CL_ROOT = "CL:0000000"


def ontology_score(train_obs, test_obs, predictions: np.ndarray) -> dict:
    """Ontology-aware macro-F1 of the predictions, where the cells carry Cell Ontology IDs.

    Predicted labels are mapped to CL IDs with the label -> ID pairs of the training cells, the
    truth is each test cell's own ID, and :func:`scsalient.metrics.ontology_f1` scores them:
    predicting the true term or one of its descendants (a more specific type) is correct, an
    ancestor or a sibling is wrong.

    Returns
    -------
    ``{"ontology_macro_f1": value}``; ``{}`` when the dataset has no CL IDs;
    ``{"ontology_note": why}`` when the score could not be computed (no ontology file, an ID
    missing from the ontology).
    """
    from datasets import ONTOLOGY_FILE, ONTOLOGY_ID_KEY, cell_ontology

    mapping = label_to_cl_id(train_obs)
    if mapping is None:
        return {}
    from scsalient.metrics import ontology_f1

    ontology = cell_ontology()
    if ontology is None:
        return {"ontology_note": f"Cell Ontology not found at {ONTOLOGY_FILE}"}
    truth = test_obs[ONTOLOGY_ID_KEY].astype(str).to_numpy()
    predicted = np.array([mapping.get(label, CL_ROOT) for label in predictions])
    try:
        return {"ontology_macro_f1": ontology_f1(truth, predicted, ontology, average="macro")}
    except ValueError as error:
        return {"ontology_note": str(error)}


def limit_threads(n: int) -> None:
    """Use ``n`` threads in BLAS, OpenMP, numba and torch, in this process and its children.

    Libraries not imported yet read the variables when they are (torch is not imported here:
    a peer's peak memory would then include it).
    """
    from threadpoolctl import threadpool_limits

    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    numba = sys.modules.get("numba")
    for variable in THREAD_VARIABLES:
        # numba reads its variable once: changed after its import, its next compilation fails
        if variable != "NUMBA_NUM_THREADS" or numba is None:
            os.environ[variable] = str(n)
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(n)  # pools already loaded (numpy's BLAS) ignore the variables
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def thread_environment(n: int) -> dict[str, str]:
    """This process's environment with every thread pool set to ``n``, for a child process."""
    return {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(n))}


def run_one(system_name: str, dataset_name: str, seed: int, budget: str, out: Path, threads: int) -> int:
    from datasets import load_split

    limit_threads(threads)
    record = {
        "system": system_name,
        "dataset": dataset_name,
        "seed": seed,
        "budget": budget,
        "threads": threads,
        "loadavg_start": os.getloadavg()[0],
    }
    try:
        system = SYSTEMS[system_name]
        missing = system.missing()
        if missing:
            record.update(status="skipped", reason=missing)
            out.write_text(json.dumps(record, indent=1))
            return 0
        start = time.perf_counter()
        train, test, _ = load_split(dataset_name)
        record["load_seconds"] = time.perf_counter() - start
        record["rss_after_load_mb"] = peak_rss_mb()
        record.update(n_train=train.n_obs, n_test=test.n_obs, n_genes=train.n_vars)
        result = system.fit_predict(train, test, LABEL_KEY, seed, budget)
        predictions = np.asarray(result["predictions"]).astype(str)
        truth = test.obs[LABEL_KEY].astype(str).to_numpy()
        known = set(train.obs[LABEL_KEY].astype(str))
        if predictions.shape != truth.shape:
            raise ValueError(
                f"{system_name} returned {predictions.shape} predictions for {truth.shape} cells"
            )
        record.update(score(truth, predictions, known))
        record.update(
            status="ok",
            # per-cell labels, for paired comparisons on the same cells (paired.py)
            labels=encode_labels(truth, predictions),
            fit_seconds=float(result["fit_seconds"]),
            predict_seconds=float(result["predict_seconds"]),
            predict_cells_per_second=test.n_obs / max(float(result["predict_seconds"]), 1e-9),
            peak_rss_mb=peak_rss_mb(),
            extra=result.get("extra", {}),
            loadavg_end=os.getloadavg()[0],
        )
        # after peak_rss_mb: the ontology and scsalient's imports are not the system's memory
        record.update(ontology_score(train.obs, test.obs, predictions))
        if result.get("probabilities") is not None:
            record.update(trust_scores(truth, result["probabilities"], known, result.get("familiarity")))
    except Exception as error:  # noqa: BLE001 - any failure of a system is recorded, not fatal
        record.update(
            status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()
        )
        out.write_text(json.dumps(record, indent=1))
        print(record["traceback"], file=sys.stderr)
        return 1
    out.write_text(json.dumps(record, indent=1))
    return 0


# ---------------------------------------------------------------------------------- the suite


def git_state() -> dict:
    """Commit of the checkout and the files of the package that differ from it."""
    root = BENCH_DIR.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return ""
        return done.stdout.rstrip("\n")

    changed = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_changes_in_src": changed}


def environment() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "git": git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }


def prepare_splits(dataset_names: list[str]) -> dict:
    """Create (or check) the stored split of every dataset; return a description of each."""
    from datasets import load_split

    info = {}
    for name in dataset_names:
        train, test, dataset = load_split(name)
        info[name] = {
            "title": dataset.title,
            "file": dataset.file,
            "input": dataset.input,
            "split": dataset.split_rule,
            "n_train": train.n_obs,
            "n_test": test.n_obs,
            "n_genes": train.n_vars,
            "n_classes_train": int(train.obs[LABEL_KEY].nunique()),
            "n_classes_test": int(test.obs[LABEL_KEY].nunique()),
            # raises here, before any training, if a label carries several CL IDs
            "cl_ids": label_to_cl_id(train.obs),
        }
        del train, test
    return info


def run_child(
    system: str, dataset: str, seed: int, budget: str, timeout: float, out_dir: Path, threads: int
) -> dict:
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{system}_{dataset}_{seed}.log"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--one", system, dataset, str(seed)]
        command += ["--budget", budget, "--json", str(out), "--threads", str(threads)]
        # set before the child's first import: some pools read them only once
        env = thread_environment(threads)
        start = time.perf_counter()
        with open(log_path, "w") as log:
            try:
                process = subprocess.run(
                    command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False, env=env
                )
                returncode = process.returncode
            except subprocess.TimeoutExpired:
                returncode = None
        wall = time.perf_counter() - start
        if out.exists():
            record = json.loads(out.read_text())
        else:
            reason = f"timed out after {timeout:.0f} s" if returncode is None else f"exit code {returncode}"
            record = {"system": system, "dataset": dataset, "seed": seed, "budget": budget, "status": "error"}
            record["threads"] = threads
            record["error"] = f"no result ({reason}); see {log_path}"
    record["wall_seconds"] = wall
    return record


def system_records(names: list[str]) -> dict[str, dict]:
    """What the results record of each system: label, family, description and input."""
    return {
        name: {
            "label": SYSTEMS[name].label,
            "family": SYSTEMS[name].family,
            "description": SYSTEMS[name].description,
            "input": SYSTEMS[name].input,
        }
        for name in names
    }


def write_results(results: dict, out: Path) -> None:
    """Summarise the runs of ``results`` and write classification.json, .md and .png into ``out``."""
    from report import write_classification_figure, write_classification_markdown, write_reliability_figure

    results["summary"] = summarise(results["runs"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "classification.json").write_text(json.dumps(results, indent=1))
    write_classification_markdown(results, out / "classification.md")
    write_classification_figure(results, out / "classification.png")
    write_reliability_figure(results, out / "classification_reliability.png")


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["dataset"], r["system"]) for r in runs if r["status"] == "ok"})
    for dataset, system in keys:
        ok = [r for r in runs if r["dataset"] == dataset and r["system"] == system and r["status"] == "ok"]
        row = {"dataset": dataset, "system": system, "n_seeds": len(ok), "seeds": [r["seed"] for r in ok]}
        for metric in (
            "macro_f1",
            "ontology_macro_f1",
            "accuracy",
            "fit_seconds",
            "predict_cells_per_second",
            "peak_rss_mb",
            "wall_seconds",
        ):
            # runs recorded before a metric existed (kept by --merge) lack it
            values = np.array([r[metric] for r in ok if r.get(metric) is not None], dtype=float)
            if not len(values):
                row[metric] = None
                continue
            row[metric] = {
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
                "values": values.tolist(),
            }
        notes = sorted({r["ontology_note"] for r in ok if r.get("ontology_note")})
        if notes:
            row["ontology_notes"] = notes
        classes = sorted({c for r in ok for c in r["per_class_f1"]})
        row["per_class_f1_mean"] = {
            c: float(np.mean([r["per_class_f1"].get(c, 0.0) for r in ok])) for c in classes
        }
        rows.append(row)
    return rows


def merge_results(previous_path: Path, results: dict) -> dict:
    """Add to ``results`` the runs of an earlier invocation (same budget) that were not re-run.

    Lets the systems of one table be run in separate invocations (for example the peers once,
    scsalient's models after a change); every run keeps its own environment record.
    """
    if not previous_path.exists():
        return results
    previous = json.loads(previous_path.read_text())
    if previous.get("budget") != results["budget"]:
        raise SystemExit(
            f"--merge: {previous_path} holds a {previous.get('budget')!r} budget, this run is "
            f"{results['budget']!r}; use another --out folder."
        )
    done = {(r["system"], r["dataset"], r["seed"]) for r in results["runs"]}
    kept = [r for r in previous["runs"] if (r["system"], r["dataset"], r["seed"]) not in done]
    for run in kept:  # runs recorded before each run named its own environment
        run.setdefault("environment", previous.get("environment"))
    merged = dict(results)
    merged["runs"] = kept + results["runs"]
    merged["systems"] = {**previous.get("systems", {}), **results["systems"]}
    merged["datasets"] = {**previous.get("datasets", {}), **results["datasets"]}
    merged["seeds"] = sorted({r["seed"] for r in merged["runs"]})
    merged["skipped"] = [
        entry
        for i, entry in enumerate(previous.get("skipped", []) + results["skipped"])
        if entry not in (previous.get("skipped", []) + results["skipped"])[:i]
    ]
    merged["invocations"] = previous.get(
        "invocations", [{"started": previous.get("started"), "total_seconds": previous.get("total_seconds")}]
    ) + [{"started": results["started"], "total_seconds": results["total_seconds"]}]
    merged["total_seconds"] = sum(i["total_seconds"] or 0 for i in merged["invocations"])
    print(f"Merged {len(kept)} earlier run(s) from {previous_path}", flush=True)
    return merged


def check_nothing_lost(path: Path, planned: set[tuple[str, str, int]], args: argparse.Namespace) -> None:
    """Refuse to replace a results table that holds runs this invocation will not repeat.

    Without ``--merge`` the table is rewritten from this invocation's runs alone, so a subset
    of systems, datasets or seeds would drop the others' runs; ``--overwrite`` allows it.
    """
    if args.merge or args.overwrite or not path.exists():
        return
    previous = json.loads(path.read_text())
    lost = sorted(
        {
            f"{r['system']}/{r['dataset']}/{r['seed']}"
            for r in previous.get("runs", [])
            if (r["system"], r["dataset"], r["seed"]) not in planned
        }
    )
    if lost:
        raise SystemExit(
            f"{path} holds {len(lost)} run(s) that this invocation does not repeat "
            f"({', '.join(lost[:5])}{', ...' if len(lost) > 5 else ''}): pass --merge to keep "
            "them, --overwrite to replace the table, or --out another folder."
        )


def main_suite(args: argparse.Namespace) -> None:
    budget = args.budget
    dataset_names = args.datasets or BUDGET_DATASETS[budget]
    system_names = args.systems or [name for name, s in SYSTEMS.items() if budget in s.budgets]
    seeds = args.seeds if args.seeds is not None else BUDGET_SEEDS[budget]
    for name in system_names:
        if name not in SYSTEMS:
            raise SystemExit(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
    for name in dataset_names:
        if name not in DATASETS:
            raise SystemExit(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    planned = {
        (system, dataset, seed) for system in system_names for dataset in dataset_names for seed in seeds
    }
    check_nothing_lost(args.out / "classification.json", planned, args)

    started = dt.datetime.now().astimezone()
    clock = time.perf_counter()
    skipped = []
    available = []
    for name in dataset_names:
        reason = DATASETS[name].available()
        if reason:
            print(f"[skip] dataset {name}: {reason}", flush=True)
            skipped.append({"dataset": name, "reason": reason})
        else:
            available.append(name)
    dataset_info = prepare_splits(available)
    # every finished run is appended to runs.jsonl at once, so an interrupted invocation keeps
    # what it measured (``report.py --from-runs`` renders the tables from that file)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "datasets.json").write_text(json.dumps(dataset_info, indent=1))

    runs = []
    for dataset in available:
        for system_name in system_names:
            system = SYSTEMS[system_name]
            missing = system.missing()
            if missing:
                if not any(s.get("system") == system_name for s in skipped):
                    print(f"[skip] {system_name}: {missing}", flush=True)
                    skipped.append({"system": system_name, "reason": missing})
                continue
            unsupported = system.unsupported(DATASETS[dataset].input)
            if unsupported:
                print(f"[skip] {system_name} on {dataset}: {unsupported}", flush=True)
                skipped.append({"system": system_name, "dataset": dataset, "reason": unsupported})
                continue
            system_seeds = seeds[: system.max_seeds] if system.max_seeds else seeds
            for seed in system_seeds:
                print(f"[run] {system_name:<11} {dataset:<8} seed {seed} ...", end=" ", flush=True)
                state = environment()  # the package as this run found it (it may change later)
                record = run_child(system_name, dataset, seed, budget, args.timeout, args.out, args.threads)
                record["environment"] = state
                runs.append(record)
                with open(args.out / "runs.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                if record["status"] == "ok":
                    onto = record.get("ontology_macro_f1")
                    print(
                        f"macro-F1 {record['macro_f1']:.3f}  "
                        + (f"ontology macro-F1 {onto:.3f}  " if onto is not None else "")
                        + f"acc {record['accuracy']:.3f}  "
                        f"fit {record['fit_seconds']:.1f} s  wall {record['wall_seconds']:.0f} s  "
                        f"RSS {record['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
                else:
                    print(
                        f"{record['status'].upper()}: {record.get('error', record.get('reason'))}", flush=True
                    )

    results = {
        "budget": budget,
        "started": started.isoformat(timespec="seconds"),
        "total_seconds": time.perf_counter() - clock,
        "seeds": seeds,
        "threads": args.threads,
        "environment": environment(),
        "datasets": dataset_info,
        "systems": system_records(system_names),
        "skipped": skipped,
        "runs": runs,
    }
    if args.merge:
        results = merge_results(args.out / "classification.json", results)
    write_results(results, args.out)
    written = ", ".join(str(args.out / f"classification.{ext}") for ext in ("json", "md", "png"))
    print(f"Classification done in {time.perf_counter() - clock:.0f} s; wrote {written}", flush=True)
    failed = [r for r in runs if r["status"] == "error"]

    if not args.no_markers:
        for script in EXTRA_BENCHMARKS:
            name, *extra = script.split()
            command = [sys.executable, str(BENCH_DIR / name), *extra]
            command += ["--budget", budget, "--out", str(args.out)]
            env = None  # the other benchmarks keep their own thread settings
            print(f"[run] {script} ...", flush=True)
            returncode = subprocess.run(command, check=False, env=env).returncode
            if returncode:
                print(f"{script} failed with exit code {returncode}", flush=True)
                failed.append({script: returncode})
    print(f"Total {time.perf_counter() - clock:.0f} s.", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed; see {args.out / 'logs'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=["quick", "full"], default="quick")
    parser.add_argument("--systems", nargs="+", help="systems to run (default: those of the budget)")
    parser.add_argument("--datasets", nargs="+", help="datasets to run (default: those of the budget)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0 for quick, 0 1 2 for full)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"threads per run (default {DEFAULT_THREADS}); a seed's result depends on it",
    )
    parser.add_argument(
        "--no-markers", action="store_true", help="skip the benchmarks after classification (markers, ...)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for the results (default: results/)"
    )
    parser.add_argument(
        "--one", nargs=3, metavar=("SYSTEM", "DATASET", "SEED"), help="run one system (internal)"
    )
    parser.add_argument("--json", type=Path, help="with --one: where to write the result")
    parser.add_argument(
        "--from-runs",
        type=Path,
        nargs="+",
        metavar="FOLDER",
        help="write the results into --out from the runs.jsonl of earlier invocations (no training)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of an earlier classification.json in --out that this invocation does not repeat",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier classification.json in --out holding runs this invocation does not repeat",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        if args.json is None:
            raise SystemExit("--one needs --json OUT")
        system, dataset, seed = args.one
        raise SystemExit(run_one(system, dataset, int(seed), args.budget, args.json, args.threads))
    if args.from_runs:
        assemble(args)
        return
    main_suite(args)


def assemble(args: argparse.Namespace) -> None:
    """Results of the finished runs in the ``runs.jsonl`` of ``args.from_runs``, written to ``args.out``.

    For invocations that ran side by side or were interrupted: the last record of each
    (system, dataset, seed) wins, the datasets keep the order of :data:`ANNOTATION_TASKS`.
    """
    runs: dict[tuple, dict] = {}
    dataset_info: dict = {}
    for folder in args.from_runs:
        dataset_info.update(json.loads((folder / "datasets.json").read_text()))
        for line in (folder / "runs.jsonl").read_text().splitlines():
            record = json.loads(line)
            runs[(record["system"], record["dataset"], record["seed"])] = record
    order = ANNOTATION_TASKS + [d for d in dataset_info if d not in ANNOTATION_TASKS]
    datasets = {name: dataset_info[name] for name in order if name in dataset_info}
    systems = [name for name in SYSTEMS if any(key[0] == name for key in runs)]
    records = sorted(
        runs.values(), key=lambda r: (order.index(r["dataset"]), systems.index(r["system"]), r["seed"])
    )
    # each invocation writes datasets.json when it starts
    started = min(os.path.getmtime(folder / "datasets.json") for folder in args.from_runs)
    results = {
        "budget": args.budget,
        "started": dt.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
        "total_seconds": float(sum(r.get("wall_seconds", 0.0) for r in records)),
        "seeds": sorted({r["seed"] for r in records}),
        "threads": args.threads,
        "environment": environment(),
        "datasets": datasets,
        "systems": system_records(systems),
        "skipped": [],
        "runs": records,
    }
    write_results(results, args.out)
    print(f"wrote {args.out / 'classification.md'} from {len(records)} runs", flush=True)


if __name__ == "__main__":
    main()
