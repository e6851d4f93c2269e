"""N-ACT's training time against the bound its arithmetic sets on this machine.

The bound: the floating-point operations of one training step (forward, loss and backward,
counted by PyTorch's ``torch.utils.flop_counter.FlopCounterMode`` on a real minibatch) times the
steps of a default training run, divided by the rate this machine multiplies matrices of the
step's shapes at (``torch.mm`` of a minibatch x genes matrix by a genes x rank matrix, single
precision, the same threads, best of several repeats). The measured time is the default
``NACT.train()`` as the annotation benchmark runs it (batch augmentation where the data have a
batch column, the validation passes, the data loading and the optimiser included), in the same
process. A ratio of 1 would mean the run does nothing but its matrix products at full speed.

Usage: ``python benchmarks/nact_flops.py [--datasets kang celllines_dropseq] [--out results/]``.
Writes ``nact_flops.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from datasets import LABEL_KEY, load_split
from systems import batch_key_of

import scsalient as ss

RESULTS = Path(__file__).resolve().parent / "results"


def step_flops(model, adata) -> int:
    """FLOPs of one training step on a full minibatch."""
    from torch.utils.flop_counter import FlopCounterMode

    batch_size = int(model.training_settings_["batch_size"])
    loader = model._make_data_loader(adata=adata, indices=np.arange(batch_size), batch_size=batch_size)
    tensors = next(iter(loader))
    module = model.module
    module.train()
    with FlopCounterMode(display=False) as counter:
        _, _, loss = module(tensors)
        loss.loss.backward()
    module.zero_grad(set_to_none=True)
    module.eval()
    return int(counter.get_total_flops())


def sgemm_rate(batch_size: int, n_genes: int, rank: int, repeats: int = 30) -> float:
    """FLOP/s of ``torch.mm`` (batch x genes) @ (genes x rank), single precision, best of ``repeats``."""
    a = torch.randn(batch_size, n_genes)
    b = torch.randn(n_genes, rank)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - started) / 10)
    return 2.0 * batch_size * n_genes * rank / best


def measure(name: str, seed: int) -> dict:
    import scvi

    train, _, dataset = load_split(name)
    scvi.settings.seed = seed
    adata = train.copy()
    ss.model.NACT.setup_anndata(adata, labels_key=LABEL_KEY, batch_key=batch_key_of(adata))
    model = ss.model.NACT(adata)
    started = time.perf_counter()
    model.train(enable_progress_bar=False)
    fit_seconds = time.perf_counter() - started
    settings = model.training_settings_
    n_train = len(model.train_indices)
    batch_size = int(settings["batch_size"])
    steps = int(settings["max_epochs"]) * int(np.ceil(n_train / batch_size))
    flops = step_flops(model, adata)
    rank = int(model.init_params_["non_kwargs"]["attention_rank"])
    rate = sgemm_rate(batch_size, adata.n_vars, rank)
    bound = flops * steps / rate
    return {
        "dataset": name,
        "title": dataset.title,
        "n_train": n_train,
        "n_genes": int(adata.n_vars),
        "batch_size": batch_size,
        "epochs": int(settings["max_epochs"]),
        "steps": steps,
        "augment": bool(settings.get("augment")),
        "flops_per_step": flops,
        "flops_per_cell": flops / batch_size,
        "sgemm_gflops": rate / 1e9,
        "bound_seconds": bound,
        "fit_seconds": fit_seconds,
        "ratio": fit_seconds / bound,
    }


def render(record: dict) -> str:
    lines = [
        "# N-ACT training time against the sgemm bound",
        "",
        f"Started {record['started']}, package at commit `{record['git'].get('commit', '?')[:10]}`, "
        f"{record['threads']} thread(s), seed {record['seed']}. Made by `benchmarks/nact_flops.py` (its "
        "docstring says how). *Bound*: FLOPs of a training step (forward, loss, backward; "
        "`FlopCounterMode`) × the run's steps ÷ the machine's `torch.mm` rate at the step's shapes; "
        "*fit*: the default `NACT.train()` in the same process (augmentation, validation, data "
        "loading and optimiser included).",
        "",
        "| task | training cells × genes | steps | GFLOP per cell | sgemm GFLOP/s | bound s | fit s "
        "| fit ÷ bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["runs"]:
        lines.append(
            f"| {r['dataset']} | {r['n_train']:,} × {r['n_genes']:,} | {r['steps']:,} | "
            f"{r['flops_per_cell'] / 1e9:.4f} | {r['sgemm_gflops']:.1f} | {r['bound_seconds']:.1f} | "
            f"{r['fit_seconds']:.1f} | **{r['ratio']:.2f}** |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["kang", "celllines_dropseq"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", choices=["quick", "full"], default="full", help="quick: Kang only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from report import write_results
    from run import git_state
    from systems import _quiet_lightning

    _quiet_lightning()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    datasets = ["kang"] if args.budget == "quick" else args.datasets
    record = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "runs": [],
    }
    for name in datasets:
        record["runs"].append(measure(name, args.seed))
        print(json.dumps(record["runs"][-1]), flush=True)
    write_results(args.out, "nact_flops", record, render(record))


if __name__ == "__main__":
    main()
