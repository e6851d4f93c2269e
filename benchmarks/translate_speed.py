"""Cost of the Translator's two directions on the same cells, and the error of its RNA expectation.

``Translator.translate`` returns accessibility probabilities (RNA -> ATAC: one sigmoid per
region) or the expected log1p(CP10k) expression under the predicted negative binomial (ATAC ->
RNA: :func:`~scsalient.model.translator._expectation.expected_log1p_cp10k`, an exact sum over
the first 16 counts and a 48-point integral over the rest). This benchmark times both on the
held-out MOp nuclei with every region (25,734), on one thread, alternating the directions over
``--repeats`` rounds (medians reported), and measures the error of the fast expectation against
the exact sum over every count (float64) on the negative binomials a trained model predicts.

* Timing model: the default Translator (five members) on every region, trained for one epoch on
  ``--train-cells`` training nuclei: the cost of a translation depends on the shapes, not on
  the weights.
* Error model: the default Translator on the 10,000 regions most often accessible in training
  nuclei, trained on ``--error-train-cells`` training nuclei for ``--error-epochs`` epochs; the
  error is measured for ``--error-cells`` held-out nuclei, every gene and member.

Usage: ``python benchmarks/translate_speed.py [--budget quick|full] [--repeats 5] [--out results/]``. Writes
``translate_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import mudata as md
import numpy as np
import torch
from translation import load

import scsalient as ss
from scsalient.model.translator._expectation import (
    expected_log1p_cp10k,
    expected_log1p_cp10k_exact,
)

RESULTS = Path(__file__).resolve().parent / "results"
ALL_REGIONS = 10**9


def train(mdata, cells: np.ndarray, epochs: int) -> tuple[ss.model.Translator, float]:
    """The default Translator trained on ``cells`` for ``epochs`` epochs, and its training seconds."""
    with md.set_options(pull_on_update=False):
        paired = md.MuData({"rna": mdata["rna"][cells].copy(), "atac": mdata["atac"][cells].copy()})
    ss.model.Translator.setup_mudata(paired)
    model = ss.model.Translator(paired)
    started = time.perf_counter()
    model.train(max_epochs=epochs, lr=1e-3, enable_progress_bar=False)
    return model, time.perf_counter() - started


def timings(model, mdata, test: np.ndarray, repeats: int) -> dict:
    """Median seconds of each direction over ``repeats`` alternating rounds.

    ``atac_to_rna_dense`` is the same translation with the accessibility encoded densely (every
    region through the attention and the encoder's first layer), as translations were before
    they read sparse accessibility from its entries: the same maths, the earlier cost.
    """
    rna, atac = mdata["rna"][test].copy(), mdata["atac"][test].copy()
    module = model.module
    sparse_rule = module.reads_entries

    def dense_rule(*args):
        return False

    runs = {
        "rna_to_atac": (rna, "atac", sparse_rule),
        "atac_to_rna": (atac, "rna", sparse_rule),
        "atac_to_rna_dense": (atac, "rna", dense_rule),
    }
    model.translate(rna[:64], to="atac")  # warm-up: first-call allocations
    model.translate(atac[:64], to="rna")
    seconds = {direction: [] for direction in runs}
    for _ in range(repeats):
        for direction, (source, to, rule) in runs.items():
            module.reads_entries = rule
            started = time.perf_counter()
            model.translate(source, to=to)
            seconds[direction].append(time.perf_counter() - started)
    module.reads_entries = sparse_rule
    out = {
        direction: {"seconds": values, "median": statistics.median(values)}
        for direction, values in seconds.items()
    }
    out["ratio_atac_to_rna_over_rna_to_atac"] = out["atac_to_rna"]["median"] / out["rna_to_atac"]["median"]
    out["n_cells"] = int(len(test))
    return out


def expectation_error(model, mdata, test: np.ndarray, n_cells: int, seed: int) -> dict:
    """Fast against exact expectation on the negative binomials the model predicts for held-out cells."""
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(test, min(n_cells, len(test)), replace=False))
    adata, x = model._aligned(mdata["atac"][cells].copy(), "atac")
    errors, means, thetas, seconds_fast, seconds_exact = [], [], [], 0.0, 0.0
    with torch.inference_mode():
        for _, z, _, batch_index in model._iter_encoded(x, None, "atac", 256, "error"):
            log_rho, log_library = model.module.decode_rna(z, batch_index, None)
            theta = model.module.log_theta_for(None).exp()
            for member in range(log_rho.shape[0]):
                started = time.perf_counter()
                fast = expected_log1p_cp10k(log_rho[member], log_library[member], theta[member]).double()
                seconds_fast += time.perf_counter() - started
                started = time.perf_counter()
                exact = expected_log1p_cp10k_exact(log_rho[member], log_library[member], theta[member])
                seconds_exact += time.perf_counter() - started
                errors.append((fast - exact).abs().flatten().numpy())
                means.append((log_rho[member].exp() * log_library[member].exp()[:, None]).flatten().numpy())
                thetas.append(theta[member].expand_as(log_rho[member]).flatten().numpy())
    error, mean = np.concatenate(errors), np.concatenate(means)
    return {
        "n_cells": int(len(cells)),
        "n_values": int(error.size),
        "max_abs_error": float(error.max()),
        "median_abs_error": float(np.median(error)),
        "p99_abs_error": float(np.quantile(error, 0.99)),
        "mean_count_range": [float(mean.min()), float(mean.max())],
        "theta_range": [float(np.concatenate(thetas).min()), float(np.concatenate(thetas).max())],
        "seconds_fast": seconds_fast,
        "seconds_exact": seconds_exact,
    }


def render(record: dict) -> str:
    t, e = record["timing"], record["error"]
    return "\n".join(
        [
            "# Translator: cost of each direction, and the error of the RNA expectation",
            "",
            f"Started {record['started']}, package at commit `{record['git'].get('commit', '?')[:10]}`, "
            f"{record['threads']} thread(s). Made by `benchmarks/translate_speed.py` (its docstring "
            "says how).",
            "",
            f"**Cost** on the {t['n_cells']:,} held-out MOp nuclei (sub-libraries 09J-L), every one of "
            f"the {record['n_regions']:,} regions and {record['n_genes']:,} genes, the default five-member "
            f"Translator; median of {record['repeats']} rounds, the directions alternating:",
            "",
            "| direction | median s | cells/s | rounds (s) |",
            "|---|---|---|---|",
            *[
                f"| {label} | {t[key]['median']:.2f} | {t['n_cells'] / t[key]['median']:,.0f} | "
                f"{', '.join(f'{s:.2f}' for s in t[key]['seconds'])} |"
                for key, label in (
                    ("rna_to_atac", "RNA -> ATAC (probabilities)"),
                    ("atac_to_rna", "ATAC -> RNA (expected log1p CP10k)"),
                    (
                        "atac_to_rna_dense",
                        "ATAC -> RNA, accessibility encoded densely (the earlier read-out)",
                    ),
                )
            ],
            "",
            f"ATAC -> RNA takes **{t['ratio_atac_to_rna_over_rna_to_atac']:.2f}x** the time of RNA -> "
            f"ATAC for the same cells ({t['atac_to_rna_dense']['median'] / t['rna_to_atac']['median']:.2f}x "
            "with the dense encoding).",
            "",
            f"**Error of the fast expectation** against the exact sum over every count (float64), on the "
            f"negative binomials the default Translator (10,000 regions, {record['error_train_cells']:,} "
            f"training nuclei, {record['error_epochs']} epochs) "
            f"predicts for {e['n_cells']} held-out nuclei, every gene and member ({e['n_values']:,} values; "
            f"means {e['mean_count_range'][0]:.2g}-{e['mean_count_range'][1]:.3g} counts, inverse "
            f"dispersions {e['theta_range'][0]:.2g}-{e['theta_range'][1]:.3g}): largest absolute error "
            f"**{e['max_abs_error']:.2g}**, 99th percentile {e['p99_abs_error']:.2g}, median "
            f"{e['median_abs_error']:.2g} (log1p CP10k units); {e['seconds_fast']:.2f} s against "
            f"{e['seconds_exact']:.0f} s for the exact sum.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget",
        choices=["quick", "full"],
        default="full",
        help="quick: 3 rounds and 5 cells for the error",
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds of timing (5; quick 3)")
    parser.add_argument("--train-cells", type=int, default=600)
    parser.add_argument(
        "--error-cells", type=int, default=None, help="held-out nuclei for the error (10; quick 5)"
    )
    parser.add_argument("--error-epochs", type=int, default=5)
    parser.add_argument("--error-train-cells", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    quick = args.budget == "quick"
    args.repeats = args.repeats or (3 if quick else 5)
    args.error_cells = args.error_cells or (5 if quick else 10)
    from report import write_results
    from run import git_state

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    warnings.filterwarnings("ignore")
    import scvi

    scvi.settings.seed = args.seed
    record = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "error_epochs": args.error_epochs,
        "error_train_cells": args.error_train_cells,
    }
    mdata, train_cells, test = load(ALL_REGIONS)
    record["n_regions"], record["n_genes"] = int(mdata["atac"].n_vars), int(mdata["rna"].n_vars)
    subset = np.sort(np.random.default_rng(args.seed).choice(train_cells, args.train_cells, replace=False))
    model, _ = train(mdata, subset, epochs=1)
    record["timing"] = timings(model, mdata, test, args.repeats)
    print(json.dumps(record["timing"]), flush=True)
    mdata, train_cells, test = load(10_000)
    subset = np.sort(
        np.random.default_rng(args.seed).choice(train_cells, args.error_train_cells, replace=False)
    )
    model, seconds = train(mdata, subset, epochs=args.error_epochs)
    record["error_fit_seconds"] = seconds
    record["error"] = expectation_error(model, mdata, test, args.error_cells, args.seed)
    print(json.dumps(record["error"]), flush=True)
    write_results(args.out, "translate_speed", record, render(record))


if __name__ == "__main__":
    main()
