"""Recovery of planted gene modules: ModuleAE units against PCA and LDVAE loadings.

The simulator (``scsalient.datasets.simulate``) plants gene modules with a per-cell activity.
Every system gives a genes x components weight matrix, read out identically:

* **ModuleAE**: mean absolute guided-backprop saliency (``model.get_saliency()``), default
  settings (Adam, lr 1e-2, early stopping with patience 10); ablations with the plain gradient
  and without the orthogonality penalty;
* **PCA**: absolute loadings of ``scanpy.pp.pca`` on log1p CP10k;
* **LDVAE**: absolute loadings of scvi-tools' ``LinearSCVI`` (``get_loadings()``) on counts.

All use as many components as ModuleAE has units (``N_UNITS``). ``scsalient.tl.gene_set_impact``
turns the weights into gene-set impact (per-unit min-max), ``scsalient.metrics.module_recovery``
matches modules to distinct components (Hungarian) and counts a module as recovered when it is
the top set of its component. Two sets of scored gene sets: the planted modules alone, and the
modules plus distractors (each cell type's marker genes and the housekeeping genes). A second
read-out, independent of the weights: the Spearman correlation between each module's planted
activity and the per-cell value of its matched component (ModuleAE unit activity, PC score,
LDVAE latent mean).

Scenarios: ``modules`` (no cell-type signal, ``marker_fold=1``) and ``celltypes`` (the
simulator's default cell-type markers, ``marker_fold=4``). 1,200 cells x 400 genes, 4 modules
of 20 genes, ``module_fold=4``.

Usage: ``python benchmarks/modules.py [--budget quick|full] [--out DIR]``. Writes
``results/modules.json`` and ``results/modules.md``.
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

from report import git_line  # noqa: E402

N_UNITS = 8
SEEDS = {"quick": [0, 1], "full": [0, 1, 2, 3, 4]}
SCENARIOS = {"modules": {"marker_fold": 1.0}, "celltypes": {"marker_fold": 4.0}}
SIMULATION = {
    "n_cells": 1200,
    "n_genes": 400,
    "n_cell_types": 5,
    "n_modules": 4,
    "module_size": 20,
    "module_fold": 4.0,
}
LDVAE_EPOCHS = {"quick": 100, "full": 250}
SYSTEMS = {
    "moduleae": "ModuleAE, guided saliency",
    "moduleae_plain": "ModuleAE, plain gradient",
    "moduleae_no_orth": "ModuleAE without orthogonality penalty",
    "pca": "PCA loadings",
    "ldvae": "LDVAE (LinearSCVI) loadings",
}


def simulate(scenario: str, seed: int):
    import scsalient as ss

    return ss.datasets.simulate(**SIMULATION, **SCENARIOS[scenario], seed=seed)


def gene_sets(adata) -> tuple[dict, dict]:
    truth = adata.uns["simulation"]
    modules = {name: list(genes) for name, genes in truth["modules"].items()}
    distractors = {f"markers_{t}": list(genes) for t, genes in truth["markers"].items() if len(genes)}
    distractors["housekeeping"] = list(truth["housekeeping"])
    return modules, {**modules, **distractors}


def score(adata, weights: np.ndarray, activity: np.ndarray) -> dict:
    """Module recovery of a genes x components weight matrix and its per-cell activities."""
    import scsalient as ss

    modules, with_distractors = gene_sets(adata)
    work = adata.copy()
    work.varm["weights"] = pd.DataFrame(
        np.abs(weights), index=work.var_names, columns=[f"unit_{k}" for k in range(weights.shape[1])]
    )
    out = {}
    planted = adata.obsm["simulation_module_activity"]
    for name, sets in (("modules_only", modules), ("with_distractors", with_distractors)):
        record = ss.tl.gene_set_impact(work, sets, saliency_key="weights", inplace=False)
        result = ss.metrics.module_recovery(record["impact"], list(modules))
        rho = []
        for i, unit in enumerate(result["unit"]):
            if not unit:
                rho.append(0.0)
                continue
            column = int(unit.removeprefix("unit_"))
            rho.append(
                float(abs(pd.Series(planted[:, i]).corr(pd.Series(activity[:, column]), method="spearman")))
            )
        out[name] = {
            "fraction_recovered": float(result["recovered"].mean()),
            "per_module": result.assign(rho=rho)
            .reset_index()
            .astype({"rank": float})
            .to_dict(orient="records"),
        }
    out["activity_rho"] = [module["rho"] for module in out["modules_only"]["per_module"]]
    return out


def run_moduleae(adata, seed: int, *, lambda_orthogonal: float = 0.05) -> tuple[dict, dict]:
    import scvi

    import scsalient as ss

    scvi.settings.seed = seed
    work = adata.copy()
    start = time.perf_counter()
    ss.model.ModuleAE.setup_anndata(work)
    model = ss.model.ModuleAE(work, n_latent=N_UNITS, lambda_orthogonal=lambda_orthogonal)
    model.train(enable_progress_bar=False)
    fit = time.perf_counter() - start
    latent = model.get_latent_representation()
    out = {}
    for guided in (True, False):
        start = time.perf_counter()
        saliency = model.get_saliency(guided=guided).to_numpy()
        out[guided] = (saliency, latent, fit, time.perf_counter() - start)
    info = {"epochs": len(model.history["train_loss"]), "orthogonality_error": model.orthogonality_error()}
    return out, info


def run_pca(adata, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    import scanpy as sc

    work = adata.copy()
    start = time.perf_counter()
    sc.pp.normalize_total(work, target_sum=1e4)
    sc.pp.log1p(work)
    sc.pp.pca(work, n_comps=N_UNITS, random_state=seed)
    return work.varm["PCs"], work.obsm["X_pca"], time.perf_counter() - start


def run_ldvae(adata, seed: int, epochs: int) -> tuple[np.ndarray, np.ndarray, float]:
    import scvi

    scvi.settings.seed = seed
    work = adata.copy()
    start = time.perf_counter()
    scvi.model.LinearSCVI.setup_anndata(work)
    model = scvi.model.LinearSCVI(work, n_latent=N_UNITS)
    model.train(max_epochs=epochs, plan_kwargs={"lr": 5e-3}, enable_progress_bar=False)
    fit = time.perf_counter() - start
    return model.get_loadings().to_numpy(), model.get_latent_representation(), fit


def run(budget: str, out_dir: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    records = []
    for scenario in SCENARIOS:
        for seed in SEEDS[budget]:
            adata = simulate(scenario, seed)
            print(f"[modules] {scenario} seed {seed}", flush=True)
            ae, info = run_moduleae(adata, seed)
            ae_off, info_off = run_moduleae(adata, seed, lambda_orthogonal=0.0)
            pca = run_pca(adata, seed)
            ldvae = run_ldvae(adata, seed, LDVAE_EPOCHS[budget])
            runs = {
                "moduleae": (
                    ae[True][0],
                    ae[True][1],
                    ae[True][2],
                    {**info, "saliency_seconds": ae[True][3]},
                ),
                "moduleae_plain": (ae[False][0], ae[False][1], ae[False][2], info),
                "moduleae_no_orth": (ae_off[True][0], ae_off[True][1], ae_off[True][2], info_off),
                "pca": (*pca, {}),
                "ldvae": (*ldvae, {"epochs": LDVAE_EPOCHS[budget]}),
            }
            for system, (weights, activity, seconds, extra) in runs.items():
                result = score(adata, weights, activity)
                records.append(
                    {
                        "system": system,
                        "scenario": scenario,
                        "seed": seed,
                        "fit_seconds": seconds,
                        **extra,
                        **result,
                    }
                )
                print(
                    f"  {system}: {result['modules_only']['fraction_recovered']:.2f} / "
                    f"{result['with_distractors']['fraction_recovered']:.2f}",
                    flush=True,
                )
    return {"records": records}


def summarise(records: list[dict]) -> pd.DataFrame:
    rows = []
    for (system, scenario), group in pd.DataFrame(records).groupby(["system", "scenario"], sort=False):
        rho = np.array([r for rs in group["activity_rho"] for r in rs])
        rows.append(
            {
                "system": SYSTEMS[system],
                "scenario": scenario,
                "recovered (modules only)": _mean_sd(
                    group["modules_only"].map(lambda r: r["fraction_recovered"])
                ),
                "recovered (with distractors)": _mean_sd(
                    group["with_distractors"].map(lambda r: r["fraction_recovered"])
                ),
                "activity rho (median)": f"{np.median(rho):.2f}",
                "fit s": f"{group['fit_seconds'].mean():.0f}",
            }
        )
    return pd.DataFrame(rows)


def _mean_sd(values: pd.Series) -> str:
    values = values.to_numpy(dtype=float)
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values.mean():.2f}"


def write(results: dict, budget: str, out_dir: Path, started: str, seconds: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    from run import git_state

    results.update(
        budget=budget,
        started=started,
        seconds=seconds,
        simulation=SIMULATION,
        scenarios=SCENARIOS,
        n_units=N_UNITS,
        git=git_state(),
    )
    (out_dir / "modules.json").write_text(json.dumps(results, indent=1, default=float))
    table = summarise(results["records"])
    lines = [
        "# Planted module recovery: ModuleAE vs PCA vs LDVAE",
        "",
        f"Simulator: {SIMULATION['n_cells']} cells x {SIMULATION['n_genes']} genes, "
        f"{SIMULATION['n_modules']} modules of {SIMULATION['module_size']} genes (module_fold "
        f"{SIMULATION['module_fold']}), {SIMULATION['n_cell_types']} cell types; scenario `modules` has no "
        "cell-type markers (marker_fold 1), `celltypes` has the default markers (marker_fold 4). "
        f"{N_UNITS} components for every system; seeds {SEEDS[budget]} (budget **{budget}**, "
        f"started {started}, "
        f"{seconds / 60:.0f} min on a shared 2-core machine). {git_line(results['git'])}",
        "",
        "*Recovered*: fraction of modules that are the top gene set of the component matched to them "
        "(Hungarian matching on gene-set impact, `scsalient.metrics.module_recovery`), mean ± sd over seeds; "
        "*with distractors* also scores each cell type's marker genes and the housekeeping genes. "
        "*Activity rho*: |Spearman| between a module's planted activity and its matched component's "
        "per-cell value, median over modules and seeds.",
        "",
        table.to_markdown(index=False),
        "",
    ]
    (out_dir / "modules.md").write_text("\n".join(lines))
    print(f"Wrote {out_dir / 'modules.md'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=["quick", "full"], default="quick")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    clock = time.perf_counter()
    results = run(args.budget, args.out)
    write(results, args.budget, args.out, started, time.perf_counter() - clock)


if __name__ == "__main__":
    main()
