"""Training SCTAB from disk: cells per second and peak memory at 100,000 and 1,000,000 cells.

Usage::

    python benchmarks/scale.py                       # 100k and 1M cells x 2,000 genes
    python benchmarks/scale.py --cells 100000        # one size only
    python benchmarks/scale.py --workdir /data/tmp   # where the synthetic .h5ad files go

For each size, synthetic counts (10 cell types with their own marker genes, Poisson counts,
about 1,500 per cell) are written to an ``.h5ad`` file in chunks of 20,000 cells, so the
matrix is never held in memory. A fresh process then opens the file backed, registers it
(one block-wise validation pass over the matrix), trains one epoch of a one-member SCTAB
(10% of the cells held out for validation, read as well) and reports cells per second and
its peak resident memory. The goal is a peak that does not grow with the number of cells.
Results go to ``results/scale.json`` and ``results/scale.md``.
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
CHUNK = 20_000


def write_counts(path: Path, n_cells: int, seed: int = 0) -> float:
    """Write ``n_cells`` x ``N_GENES`` synthetic counts to ``path`` chunk by chunk; return seconds."""
    import anndata as ad
    import h5py
    import pandas as pd
    from scipy import sparse

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    baseline = rng.lognormal(0.0, 1.5, N_GENES)
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
    var = pd.DataFrame(index=pd.Index([f"gene_{g}" for g in range(N_GENES)]))
    first = min(CHUNK, n_cells)
    ad.AnnData(chunk(0, first), obs=obs.iloc[:first], var=var).write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        matrix = ad.io.sparse_dataset(handle["X"])
        for lo in range(first, n_cells, CHUNK):
            matrix.append(chunk(lo, min(lo + CHUNK, n_cells)))
        del handle["obs"]
        ad.io.write_elem(handle, "obs", obs)
    return time.perf_counter() - start


def train_from_disk(path: Path, batch_size: int) -> dict:
    """Open ``path`` backed, train one epoch of SCTAB, return timings and peak memory."""
    import logging
    import warnings

    import anndata as ad
    import scvi
    import torch

    import scsalient as ss

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    scvi.settings.seed = 0
    adata = ad.read_h5ad(path, backed="r")
    start = time.perf_counter()
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type")
    setup_seconds = time.perf_counter() - start
    model = ss.model.SCTAB(adata, n_ensemble=1)
    start = time.perf_counter()
    model.train(max_epochs=1, batch_size=batch_size, early_stopping=False, enable_progress_bar=False)
    train_seconds = time.perf_counter() - start
    f1 = float(model.history["f1_macro_validation"].iloc[-1, 0])
    adata.file.close()
    return {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "batch_size": batch_size,
        "setup_seconds": round(setup_seconds, 1),
        "epoch_seconds": round(train_seconds, 1),
        "cells_per_second": round(adata.n_obs / train_seconds, 1),
        "validation_f1_after_one_epoch": round(f1, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--budget", choices=["quick", "full"], default="full")
    parser.add_argument("--cells", type=int, nargs="+", help="default: 100,000 (quick); + 1,000,000 (full)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=BENCH_DIR / "results" / "scale_data")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files")
    parser.add_argument("--train-one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_one is not None:  # child process: train only, so its peak memory is its own
        print(json.dumps(train_from_disk(args.train_one, args.batch_size)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    cells = args.cells or ([100_000] if args.budget == "quick" else [100_000, 1_000_000])
    rows = []
    for n_cells in cells:
        path = args.workdir / f"synthetic_{n_cells}.h5ad"
        write_seconds = write_counts(path, n_cells)
        print(f"{n_cells:,} cells written in {write_seconds:.0f} s ({path.stat().st_size / 2**30:.2f} GiB)")
        child = subprocess.run(
            [sys.executable, __file__, "--train-one", str(path), "--batch-size", str(args.batch_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(child.stdout.strip().splitlines()[-1])
        row.update(write_seconds=round(write_seconds, 1), file_gib=round(path.stat().st_size / 2**30, 2))
        rows.append(row)
        print(json.dumps(row))
        if not args.keep:
            path.unlink()
    record = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads 1",
        "load_average_1min": round(__import__("os").getloadavg()[0], 2),
        "runs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(record, indent=2))
    lines = [
        "# SCTAB trained from disk (one epoch, backed .h5ad)",
        "",
        f"Machine: {record['machine']}; 1-min load average at the end: {record['load_average_1min']}.",
        "",
        "| cells | genes | file GiB | setup s | epoch s | cells/s | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['n_cells']:,} | {r['n_genes']:,} | {r['file_gib']} | {r['setup_seconds']} | "
            f"{r['epoch_seconds']} | {r['cells_per_second']:,} | {r['peak_rss_mb']:,} |"
        )
    (args.out / "scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
