"""Training from disk: cells per second and peak memory at 100,000 and 1,000,000 cells.

Usage::

    python benchmarks/scale.py                       # SCTAB, 100k and 1M cells x 2,000 genes
    python benchmarks/scale.py --cells 100000        # one size only
    python benchmarks/scale.py --model nact --genes 25000 --annotate   # a whole transcriptome
    python benchmarks/scale.py --workdir /data/tmp   # where the synthetic .h5ad files go

For each size, synthetic counts (10 cell types with their own marker genes, Poisson counts,
about 1,500 per cell) are written to an ``.h5ad`` file in chunks (at most 40 million values
each), so the matrix is never held in memory. A fresh process then opens the file backed,
registers it (one block-wise validation pass over the matrix), trains one epoch of the model
with its default settings but early stopping off (so SCTAB keeps no copy of its best weights;
SCTAB with one member at 2,000 genes, so that the 1M-cell epoch fits in an hour; 10% of the
cells held out for validation, read as well), with ``--annotate`` writes its
predictions and sparse top-100 explanations for every cell into the backed AnnData's ``obs``
and ``obsm``, and reports cells per second and its own peak resident memory. The goal is a peak
that grows with neither the number of cells nor the number of genes beyond what the model's
weights need. Rows go to ``results/scale.json`` and ``results/scale.md``, replacing earlier
rows of the same model, size and steps and keeping the others.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
N_GENES = 2000
N_TYPES = 10
#: values (cells x genes) per chunk written; the dense Poisson draw of a chunk takes 4 bytes each
CHUNK_VALUES = 40_000_000


def write_counts(path: Path, n_cells: int, n_genes: int = N_GENES, seed: int = 0) -> float:
    """Write ``n_cells`` x ``n_genes`` synthetic counts to ``path`` chunk by chunk; return seconds."""
    import anndata as ad
    import h5py
    import pandas as pd
    from scipy import sparse

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    chunk_cells = max(1_000, CHUNK_VALUES // n_genes)
    baseline = rng.lognormal(0.0, 1.5, n_genes)
    profiles = np.tile(baseline, (N_TYPES, 1))
    for t in range(N_TYPES):  # 20 markers per type, 8-fold up
        profiles[t, t * 20 : (t + 1) * 20] *= 8.0
    profiles /= profiles.sum(axis=1, keepdims=True)
    labels = rng.integers(0, N_TYPES, n_cells)

    def chunk(lo: int, hi: int) -> sparse.csr_matrix:
        library = rng.lognormal(np.log(1500), 0.3, hi - lo)[:, None]
        counts = rng.poisson(library * profiles[labels[lo:hi]]).astype(np.float32)
        return sparse.csr_matrix(counts)

    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type_{t}" for t in labels])},
        index=pd.Index([f"cell_{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene_{g}" for g in range(n_genes)]))
    first = min(chunk_cells, n_cells)
    ad.AnnData(chunk(0, first), obs=obs.iloc[:first], var=var).write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        matrix = ad.io.sparse_dataset(handle["X"])
        for lo in range(first, n_cells, chunk_cells):
            matrix.append(chunk(lo, min(lo + chunk_cells, n_cells)))
        del handle["obs"]
        ad.io.write_elem(handle, "obs", obs)
    return time.perf_counter() - start


def train_from_disk(
    path: Path, model_name: str, batch_size: int | None, max_batches: int | None, annotate: bool
) -> dict:
    """Open ``path`` backed, train one epoch of the model (and annotate), return timings and peak memory."""
    import logging
    import warnings

    import anndata as ad
    import scvi
    import torch

    import scsalient as ss
    from scsalient._constants import NACTKeys, SCTABKeys

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    scvi.settings.seed = 0
    adata = ad.read_h5ad(path, backed="r")
    cls = {"sctab": ss.model.SCTAB, "nact": ss.model.NACT}[model_name]
    start = time.perf_counter()
    cls.setup_anndata(adata, labels_key="cell_type")
    setup_seconds = time.perf_counter() - start
    # SCTAB with one member as in the first rows of the table (a 1M-cell epoch of five takes hours)
    model = cls(adata, n_ensemble=1) if model_name == "sctab" and adata.n_vars <= N_GENES else cls(adata)
    # the epoch ends after max_batches minibatches; validation on every validation cell still runs
    extra = {} if max_batches is None else {"limit_train_batches": max_batches}
    start = time.perf_counter()
    model.train(max_epochs=1, batch_size=batch_size, early_stopping=False, enable_progress_bar=False, **extra)
    train_seconds = time.perf_counter() - start
    rss_after_training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_train = len(model.train_indices)
    used_batch = int(model.training_settings_["batch_size"])
    per_pass = int(model.training_settings_.get("cells_per_forward_pass", used_batch))
    trained = n_train if max_batches is None else min(n_train, max_batches * per_pass)
    row = {
        "model": model_name,
        "n_members": int(model.module.n_members),
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "batch_size": used_batch,
        "cells_per_forward_pass": per_pass,
        "cells_trained": trained,
        "setup_seconds": round(setup_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "cells_per_second": round(trained / train_seconds, 1),
        "peak_rss_mb_training": round(rss_after_training, 1),
    }
    if annotate:
        start = time.perf_counter()
        model.annotate(adata)
        seconds = time.perf_counter() - start
        keys = {
            "nact": (NACTKeys.ATTENTION, NACTKeys.PREDICTION),
            "sctab": (SCTABKeys.MASK, SCTABKeys.PREDICTION),
        }
        explanation_key, prediction_key = keys[model_name]
        explanation = adata.obsm[explanation_key]
        truth = adata.obs["cell_type"].astype(str).to_numpy()
        predicted = adata.obs[prediction_key].astype(str).to_numpy()
        row.update(
            annotate_seconds=round(seconds, 1),
            annotate_cells_per_second=round(adata.n_obs / seconds, 1),
            accuracy_all_cells=round(float(np.mean(truth == predicted)), 4),
            explanation_mb=round(explanation.data.nbytes / 2**20, 1),
        )
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    adata.file.close()
    return row


def _key(row: dict) -> tuple:
    return (row.get("model", "sctab"), row["n_cells"], row["n_genes"], row.get("cells_trained"))


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--budget", choices=["quick", "full"], default="full")
    parser.add_argument("--cells", type=int, nargs="+", help="default: 100,000 (quick); + 1,000,000 (full)")
    parser.add_argument("--genes", type=int, default=N_GENES, help="genes of the synthetic data (2,000)")
    parser.add_argument("--model", choices=["sctab", "nact"], default="sctab")
    parser.add_argument("--annotate", action="store_true", help="also annotate every cell after training")
    parser.add_argument(
        "--max-batches", type=int, help="end the epoch after this many forward passes (minibatches or parts)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--batch-size", type=int, help="default: the model's (SCTAB, 2,000 genes: 2,048)")
    parser.add_argument("--workdir", type=Path, default=BENCH_DIR / "results" / "scale_data")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files")
    parser.add_argument("--train-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--table-only", action="store_true", help="rewrite scale.md from scale.json")
    args = parser.parse_args()
    if args.table_only:
        write_table(json.loads((args.out / "scale.json").read_text()), args.out / "scale.md")
        return
    if args.batch_size is None and args.model == "sctab" and args.genes <= N_GENES:
        args.batch_size = 2048
    if args.train_one is not None:  # child process: train only, so its peak memory is its own
        row = train_from_disk(args.train_one, args.model, args.batch_size, args.max_batches, args.annotate)
        print(json.dumps(row))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    cells = args.cells or ([100_000] if args.budget == "quick" else [100_000, 1_000_000])
    rows = []
    for n_cells in cells:
        path = args.workdir / f"synthetic_{n_cells}x{args.genes}.h5ad"
        write_seconds = None
        if path.exists():
            print(f"{path} exists: reused")
        else:
            write_seconds = write_counts(path, n_cells, args.genes)
            size = path.stat().st_size / 2**30
            print(f"{n_cells:,} cells written in {write_seconds:.0f} s ({size:.2f} GiB)")
        command = [sys.executable, __file__, "--train-one", str(path), "--model", args.model]
        command += ["--genes", str(args.genes)]
        command += [] if args.batch_size is None else ["--batch-size", str(args.batch_size)]
        command += [] if args.max_batches is None else ["--max-batches", str(args.max_batches)]
        command += ["--annotate"] if args.annotate else []
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(child.stdout.strip().splitlines()[-1])
        row.update(file_gib=round(path.stat().st_size / 2**30, 2))
        if write_seconds is not None:
            row["write_seconds"] = round(write_seconds, 1)
        rows.append(row)
        print(json.dumps(row))
        if not args.keep:
            path.unlink()
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "scale.json"
    kept = []
    if previous.exists():
        new_keys = {_key(r) for r in rows}
        kept = [r for r in json.loads(previous.read_text()).get("runs", []) if _key(r) not in new_keys]
    record = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads 1",
        "runs": kept + rows,
    }
    previous.write_text(json.dumps(record, indent=2))
    write_table(record, args.out / "scale.md")


def write_table(record: dict, path: Path) -> None:
    """The Markdown table of ``record``'s runs."""
    lines = [
        "# Training from disk (one epoch, backed .h5ad)",
        "",
        f"Machine: {record['machine']}. Each row is a fresh process; its peak RSS covers opening the "
        "file, registering it, training (early stopping off; with the validation pass over the 10% "
        "validation cells and, "
        "in the 25,000-gene rows, the familiarity pass over the training cells, which the package did not "
        "have when the 2,000-gene rows were measured) and, where a rate is given, annotating every cell. "
        "*Batch (per pass)*: cells per optimiser step "
        "(cells per forward pass where a minibatch runs in parts). A row with fewer cells trained than "
        "90% of the cells ended its epoch early (`--max-batches`); its time includes the validation and "
        "familiarity passes, so its rate is not a training rate.",
        "",
        "| model | members | cells | genes | file GiB | batch (per pass) | cells trained | setup s | "
        "train s | cells trained / s | annotate cells/s | accuracy | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["runs"]:
        trained = r.get("cells_trained", int(round(r["n_cells"] * 0.9)))
        seconds = r.get("train_seconds", r.get("epoch_seconds"))
        batch = f"{r['batch_size']:,}"
        if r.get("cells_per_forward_pass", r["batch_size"]) != r["batch_size"]:
            batch += f" ({r['cells_per_forward_pass']:,})"
        lines.append(
            f"| {r.get('model', 'sctab')} | {r.get('n_members', 1)} | {r['n_cells']:,} | {r['n_genes']:,} | "
            f"{r['file_gib']} | {batch} | {trained:,} | {r['setup_seconds']} | {seconds} | "
            f"{r['cells_per_second']:,} | {r.get('annotate_cells_per_second', '–')} | "
            f"{r.get('accuracy_all_cells', '–')} | {r['peak_rss_mb']:,} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
