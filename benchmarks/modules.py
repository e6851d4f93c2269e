"""Gene programs: ModuleAE units against PCA, NMF and LDVAE, on simulated modules and real PBMCs.

Every system gives a genes x components weight matrix and a cells x components activity, read
out identically:

* **ModuleAE**: saliency (``model.get_saliency()``) and unit activity, default settings; the
  ablation ``moduleae_random_init`` starts its programs from small random values instead of the
  principal axes;
* **PCA**: absolute loadings and scores of ``scanpy.pp.pca`` on log1p CP10k;
* **NMF**: scikit-learn's ``NMF`` (``init="nndsvda"``) on log1p CP10k: components and activities;
* **LDVAE**: absolute loadings of scvi-tools' ``LinearSCVI`` (``get_loadings()``) on counts and its
  latent means, trained for as many epochs as ModuleAE's default run.

All use as many components as ModuleAE has units. ``scsalient.tl.gene_set_impact`` turns the
weights into gene-set impact (detection-matched, per-unit min-max) for every system.

**Simulator** (``scsalient.datasets.simulate``, 1,200 cells x 400 genes, 4 modules of 20 genes,
``module_fold=4``, 8 components): ``scsalient.metrics.module_recovery`` matches modules to
distinct components (Hungarian, on the detection-matched saliency before the per-unit scaling)
and counts a module as recovered when it is the top set of its component, scored against the
planted modules alone and with distractors (each cell type's marker genes and the housekeeping
genes); *activity rho* is the |Spearman| correlation between a
module's planted activity and its matched component's per-cell value. Scenarios ``modules`` (no
cell-type markers, ``marker_fold=1``) and ``celltypes`` (``marker_fold=4``). On data seed 0 the
systems are also trained with further seeds, for stability.

**Real data** (Kang et al. 2018 PBMCs and, in the full budget, the shared transfer sets of raw
counts from human cells with at least 25 Hallmark sets of 10 genes or more), MSigDB Hallmark sets,
ModuleAE's default number of units: ``scsalient.metrics.unit_separation`` (mean correlation of
the units' impact profiles; the set that tops most units, and how many), the correlation of the
weights with the fraction of cells detecting each gene (Spearman per unit, mean over units), and
stability (``scsalient.metrics.matched_unit_correlation`` of the weights between seeds).

Usage: ``python benchmarks/modules.py [--budget small|quick|full] [--out DIR] [--parts sim kang transfer]
[--systems moduleae pca ...] [--from-json modules.json]``.
Writes ``modules.json`` and ``modules.md`` into ``--out`` (default ``results/``).
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
DATA_DIR = BENCH_DIR.parent.parent / "shared" / "data"
HALLMARK = DATA_DIR / "gene_sets" / "h.all.v7.5.1.symbols.gmt"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from report import git_line  # noqa: E402

SIM_UNITS = 8
SIMULATION = {
    "n_cells": 1200,
    "n_genes": 400,
    "n_cell_types": 5,
    "n_modules": 4,
    "module_size": 20,
    "module_fold": 4.0,
}
SCENARIOS = {"modules": {"marker_fold": 1.0}, "celltypes": {"marker_fold": 4.0}}
BUDGETS = {
    "small": {
        "scenarios": ["modules", "celltypes"],
        "data_seeds": [0, 1],
        "stability_seeds": [0, 1, 2],
        "kang_cells": 2000,
        "kang_seeds": [0, 1, 2],
        "transfer": [],
    },
    "quick": {
        "scenarios": ["modules"],
        "data_seeds": [0, 1],
        "stability_seeds": [0, 1],
        "kang_cells": 2000,
        "kang_seeds": [0, 1],
        "transfer": [],
    },
    "full": {
        "scenarios": ["modules", "celltypes"],
        "data_seeds": [0, 1, 2],
        "stability_seeds": [0, 1, 2],
        "kang_cells": None,
        "kang_seeds": [0, 1, 2],
        "transfer": [
            "pbmc_kang_ctrl_muscat",
            "pbmc_kang_stim_muscat",
            "pbmc_ding_celseq2_scmoo",
            "pancreas_baron_cepo",
            "pancreas_segerstolpe_cepo",
            "celllines3_10x_cepo",
            "celllines3_celseq2_mixology",
            "celllines3_dropseq_mixology",
            "celllines5_celseq2_mixology",
        ],
    },
}
SYSTEMS = {
    "moduleae": "ModuleAE",
    "moduleae_random_init": "ModuleAE, random start (ablation)",
    "pca": "PCA",
    "nmf": "NMF",
    "ldvae": "LDVAE (LinearSCVI)",
}
#: systems run on the real data (the ablation runs on the simulator and Kang)
REAL_SYSTEMS = {"kang": list(SYSTEMS), "transfer": ["moduleae", "pca", "nmf", "ldvae"]}


# -------------------------------------------------------------------------------------- systems


def log_normalised(adata) -> np.ndarray:
    from scipy import sparse

    counts = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X, dtype=np.float64)
    library = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts / np.maximum(library, 1e-12) * 1e4)


def run_system(system: str, adata, n_components: int, seed: int) -> dict:
    """Weights (genes x components), activity (cells x components) and fit seconds of a system."""
    start = time.perf_counter()
    if system.startswith("moduleae"):
        weights, activity = _moduleae(adata, n_components, seed, random_init=system.endswith("random_init"))
    elif system == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components, svd_solver="arpack", random_state=seed)
        activity = pca.fit_transform(log_normalised(adata))
        weights = np.abs(pca.components_.T)
    elif system == "nmf":
        from sklearn.decomposition import NMF

        nmf = NMF(n_components, init="nndsvda", max_iter=500, random_state=seed)
        activity = nmf.fit_transform(log_normalised(adata))
        weights = nmf.components_.T
    elif system == "ldvae":
        weights, activity = _ldvae(adata, n_components, seed)
    else:
        raise ValueError(f"Unknown system {system!r}.")
    return {"weights": weights, "activity": activity, "fit_seconds": time.perf_counter() - start}


def _moduleae(adata, n_components: int, seed: int, random_init: bool) -> tuple[np.ndarray, np.ndarray]:
    import scvi

    import scsalient as ss

    scvi.settings.seed = seed
    work = adata.copy()
    ss.model.ModuleAE.setup_anndata(work)
    model = ss.model.ModuleAE(work, n_latent=n_components)
    if random_init:  # the ablation: programs from small random values, gene offsets as usual
        initialize = model.module.initialize_

        def random_start(x):
            import torch

            initialize(x)
            with torch.no_grad():
                model.module.programs.copy_(0.01 * torch.rand_like(model.module.programs))

        model.module.initialize_ = random_start
    model.train(enable_progress_bar=False)
    return model.get_saliency().to_numpy(), model.get_latent_representation()


def _ldvae(adata, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import scvi

    from scsalient.model.moduleae._model import default_epochs

    scvi.settings.seed = seed
    work = adata.copy()
    scvi.model.LinearSCVI.setup_anndata(work)
    model = scvi.model.LinearSCVI(work, n_latent=n_components)
    epochs = default_epochs(work.n_obs, 0.9, None, 128)
    model.train(max_epochs=epochs, plan_kwargs={"lr": 5e-3}, enable_progress_bar=False)
    return np.abs(model.get_loadings().to_numpy()), model.get_latent_representation()


# -------------------------------------------------------------------------------------- scoring


def impact(adata, weights: np.ndarray, gene_sets: dict, gene_symbols: str | None = None) -> dict:
    import scsalient as ss

    work = adata.copy()
    work.varm["weights"] = pd.DataFrame(
        weights, index=work.var_names, columns=[f"unit_{k}" for k in range(weights.shape[1])]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the separation warning: its numbers are recorded
        return ss.tl.gene_set_impact(
            work, gene_sets, saliency_key="weights", gene_symbols=gene_symbols, inplace=False
        )


def score_simulation(adata, weights: np.ndarray, activity: np.ndarray) -> dict:
    import scsalient as ss

    truth = adata.uns["simulation"]
    modules = {name: list(genes) for name, genes in truth["modules"].items()}
    distractors = {f"markers_{t}": list(genes) for t, genes in truth["markers"].items() if len(genes)}
    distractors["housekeeping"] = list(truth["housekeeping"])
    planted = adata.obsm["simulation_module_activity"]
    out = {}
    for name, sets in (("modules_only", modules), ("with_distractors", {**modules, **distractors})):
        record = impact(adata, weights, sets)
        out[f"_impact_{name}"] = record["impact"]
        # matched on the unscaled detection-matched saliency: after the per-unit min-max scaling
        # every unit's top set scores 1, so a unit with a few percent of its weight on a module
        # could be matched to it over a unit that reads the module alone
        result = ss.metrics.module_recovery(record["mean_saliency"], list(modules))
        out[name] = {
            "fraction_recovered": float(result["recovered"].mean()),
            "per_module": result.reset_index().astype({"rank": float}).to_dict(orient="records"),
        }
    rho = []
    for i, unit in enumerate(r["unit"] for r in out["modules_only"]["per_module"]):
        column = int(unit.removeprefix("unit_")) if unit else None
        value = 0.0
        if column is not None:
            value = abs(pd.Series(planted[:, i]).corr(pd.Series(activity[:, column]), method="spearman"))
        rho.append(float(np.nan_to_num(value)))
    out["activity_rho"] = rho
    return out


def score_real(adata, weights: np.ndarray, gene_sets: dict, gene_symbols: str | None) -> dict:
    from scipy.stats import spearmanr

    from scsalient.tl._gene_set_impact import detection_rate

    record = impact(adata, weights, gene_sets, gene_symbols)
    detected = detection_rate(adata)
    correlations = [spearmanr(weights[:, k], detected)[0] for k in range(weights.shape[1])]
    return {
        "_impact": record["impact"],
        **record["separation"],
        "top_sets": record["impact"].idxmax(axis=0).value_counts().to_dict(),
        "detection_rho": float(np.nanmean(correlations)),
    }


def top_set_agreement(
    first: np.ndarray, second: np.ndarray, impacts: tuple[pd.DataFrame, pd.DataFrame]
) -> float:
    """Fraction of units whose top gene set is the same as that of their matched unit in the other run.

    Units are matched as in ``scsalient.metrics.matched_unit_correlation`` (largest summed
    correlation of the weights, Hungarian).
    """
    from scipy.optimize import linear_sum_assignment

    n_first = first.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.nan_to_num(np.corrcoef(first.T, second.T)[:n_first, n_first:], nan=0.0)
    rows, cols = linear_sum_assignment(correlation, maximize=True)
    top_first = impacts[0].idxmax(axis=0).to_numpy()
    top_second = impacts[1].idxmax(axis=0).to_numpy()
    return float(np.mean(top_first[rows] == top_second[cols]))


def stability(weights: list[np.ndarray], impacts: list[pd.DataFrame]) -> dict:
    """Matched-unit correlation of the weights and top-set agreement over all pairs of runs."""
    import scsalient as ss

    pairs = [(i, j) for i in range(len(weights)) for j in range(i + 1, len(weights))]
    correlations = [ss.metrics.matched_unit_correlation(weights[i], weights[j]) for i, j in pairs]
    agreement = [top_set_agreement(weights[i], weights[j], (impacts[i], impacts[j])) for i, j in pairs]
    return {
        "mean": float(np.mean([c.mean() for c in correlations])),
        "per_pair": [float(c.mean()) for c in correlations],
        "lowest_unit": float(min(c.min() for c in correlations)),
        "top_set_agreement": float(np.mean(agreement)),
        "top_set_agreement_per_pair": agreement,
    }


def _public(result: dict) -> dict:
    """The result without the impact tables kept for stability."""
    return {key: value for key, value in result.items() if not key.startswith("_impact")}


# -------------------------------------------------------------------------------------- parts


def run_simulation(budget: dict, systems: list[str]) -> list[dict]:
    import scsalient as ss

    records = []
    for scenario in budget["scenarios"]:
        for data_seed in budget["data_seeds"]:
            adata = ss.datasets.simulate(**SIMULATION, **SCENARIOS[scenario], seed=data_seed)
            model_seeds = budget["stability_seeds"] if data_seed == budget["data_seeds"][0] else [data_seed]
            for system in systems:
                runs, impacts = [], []
                for seed in model_seeds:
                    run = run_system(system, adata, SIM_UNITS, seed)
                    runs.append(run["weights"])
                    result = score_simulation(adata, run["weights"], run["activity"])
                    impacts.append(result["_impact_with_distractors"])
                    records.append(
                        {
                            "part": "sim",
                            "system": system,
                            "scenario": scenario,
                            "data_seed": data_seed,
                            "seed": seed,
                            "fit_seconds": run["fit_seconds"],
                            **_public(result),
                        }
                    )
                    print(
                        f"[sim] {scenario} data {data_seed} {system} seed {seed}: recovered "
                        f"{result['modules_only']['fraction_recovered']:.2f} / "
                        f"{result['with_distractors']['fraction_recovered']:.2f}, activity rho "
                        f"{np.median(result['activity_rho']):.2f}",
                        flush=True,
                    )
                if len(runs) > 1:
                    records.append(
                        {
                            "part": "sim_stability",
                            "system": system,
                            "scenario": scenario,
                            "data_seed": data_seed,
                            "seeds": model_seeds,
                            **stability(runs, impacts),
                        }
                    )
    return records


def run_real(name: str, adata, systems: list[str], seeds: list[int], gene_symbols: str | None) -> list[dict]:
    import inspect

    import scsalient as ss

    n_units = inspect.signature(ss.model.ModuleAE).parameters["n_latent"].default
    gene_sets = ss.datasets.read_gmt(HALLMARK)
    records = []
    for system in systems:
        runs, impacts = [], []
        for seed in seeds:
            run = run_system(system, adata, n_units, seed)
            runs.append(run["weights"])
            result = score_real(adata, run["weights"], gene_sets, gene_symbols)
            impacts.append(result.pop("_impact"))
            records.append(
                {
                    "part": "real",
                    "dataset": name,
                    "n_cells": int(adata.n_obs),
                    "n_genes": int(adata.n_vars),
                    "system": system,
                    "seed": seed,
                    "fit_seconds": run["fit_seconds"],
                    **result,
                }
            )
            print(
                f"[{name}] {system} seed {seed}: impact correlation {result['mean_correlation']:.2f}, "
                f"{result['top_set']} tops {result['top_set_units']} of {result['n_units']} units, "
                f"detection rho {result['detection_rho']:.2f}",
                flush=True,
            )
        if len(runs) > 1:
            records.append(
                {
                    "part": "real_stability",
                    "dataset": name,
                    "system": system,
                    "seeds": seeds,
                    **stability(runs, impacts),
                }
            )
    return records


def kang(n_cells: int | None):
    import anndata as ad

    adata = ad.read_h5ad(DATA_DIR / "kang2018_pbmc_8k.h5ad")
    if n_cells is not None and n_cells < adata.n_obs:
        rows = np.sort(np.random.default_rng(0).choice(adata.n_obs, n_cells, replace=False))
        adata = adata[rows].copy()
    return adata


def transfer(name: str):
    import anndata as ad
    from scipy import sparse

    adata = ad.read_h5ad(DATA_DIR / "transfer" / f"{name}.h5ad")
    adata = adata[:, np.asarray((adata.X != 0).sum(axis=0)).ravel() > 0].copy()  # genes seen at least once
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy()
    adata.X = sparse.csr_matrix(np.rint(adata.X.toarray() if sparse.issparse(adata.X) else adata.X))
    return adata


def run(budget_name: str, parts: list[str], systems: list[str]) -> dict:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    budget = BUDGETS[budget_name]
    records = []
    if "sim" in parts:
        records += run_simulation(budget, systems)
    if "kang" in parts:
        chosen = [s for s in REAL_SYSTEMS["kang"] if s in systems]
        records += run_real("kang", kang(budget["kang_cells"]), chosen, budget["kang_seeds"], "gene_symbols")
    if "transfer" in parts:
        chosen = [s for s in REAL_SYSTEMS["transfer"] if s in systems]
        for name in budget["transfer"]:
            records += run_real(name, transfer(name), chosen, [0], None)
    return {"records": records}


# -------------------------------------------------------------------------------------- report

SIMULATION_NOTE = (
    "{n_cells} cells x {n_genes} genes, {n_modules} modules of {module_size} genes (module_fold "
    "{module_fold}), {n_cell_types} cell types; `modules`: no cell-type markers, `celltypes`: "
    "markers (marker_fold 4). {units} components for every system. One run per data seed (model "
    "seed = data seed), mean ± sd over seeds. *Recovered*: fraction of modules that are the top "
    "set of their matched component; *with distractors* also scores each cell type's markers and "
    "the housekeeping genes. *Activity rho*: |Spearman| of a module's planted activity with its "
    "matched component, over modules and seeds; *every run* also counts the further model seeds on "
    "data seed 0. *Stability*: on data seed 0, models trained with "
    "seeds {seeds}: mean correlation of matched units' weights over pairs of seeds; *top set "
    "agreement*: fraction of matched units whose top set (modules and distractors) is the same."
)
REAL_NOTE = (
    "Components: ModuleAE's default number of units. *Impact correlation*: mean correlation of the "
    "units' gene-set impact profiles (separate units: at most 0.2). *Most frequent top set*: the "
    "Hallmark set that is the most impacted set of the most units, in the seed where it tops most "
    "(separate units: at most 10% of the units, or one when there are fewer than 20). *Separate*: "
    "seeds meeting both. *Detection rho*: Spearman correlation of each unit's weights with the "
    "fraction of cells detecting the gene, mean over units. *Stability*: mean correlation of "
    "matched units' weights over pairs of seeds (and the lowest matched unit); *top set agreement*: "
    "fraction of matched units whose top Hallmark set is the same in both seeds."
)


def _mean_sd(values) -> str:
    values = np.asarray(list(values), dtype=float)
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values.mean():.2f}"


def simulation_table(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([r for r in records if r["part"] == "sim"])
    stable = {(r["system"], r["scenario"]): r for r in records if r["part"] == "sim_stability"}
    rows = []
    for (scenario, system), group in frame.groupby(["scenario", "system"], sort=False):
        # one run per data seed: the run whose model seed is the data seed
        every_run = np.concatenate([np.asarray(r) for r in group["activity_rho"]])
        group = group[group["seed"] == group["data_seed"]]
        rho = np.concatenate([np.asarray(r) for r in group["activity_rho"]])
        stab = stable.get((system, scenario))
        rows.append(
            {
                "scenario": scenario,
                "system": SYSTEMS[system],
                "seeds": ", ".join(str(s) for s in group["data_seed"]),
                "recovered (modules only)": _mean_sd(
                    group["modules_only"].map(lambda r: r["fraction_recovered"])
                ),
                "recovered (with distractors)": _mean_sd(
                    group["with_distractors"].map(lambda r: r["fraction_recovered"])
                ),
                "activity rho (median)": f"{np.median(rho):.2f}",
                "activity rho (mean)": f"{rho.mean():.2f}",
                "activity rho (mean, every run)": f"{every_run.mean():.2f}",
                "modules with rho < 0.1 (every run)": f"{int((every_run < 0.1).sum())} of {len(every_run)}",
                "stability": f"{stab['mean']:.2f}" if stab else "–",
                "top set agreement": f"{stab['top_set_agreement']:.2f}" if stab else "–",
                "fit s": f"{group['fit_seconds'].mean():.0f}",
            }
        )
    return pd.DataFrame(rows)


def real_table(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([r for r in records if r["part"] == "real"])
    stable = {(r["dataset"], r["system"]): r for r in records if r["part"] == "real_stability"}
    rows = []
    for (dataset, system), group in frame.groupby(["dataset", "system"], sort=False):
        worst = group.loc[group["top_set_units"].idxmax()]
        stab = stable.get((dataset, system))
        rows.append(
            {
                "dataset": f"{dataset} ({group['n_cells'].iloc[0]:,} x {group['n_genes'].iloc[0]:,})",
                "system": SYSTEMS[system],
                "seeds": ", ".join(str(s) for s in group["seed"]),
                "impact correlation": _mean_sd(group["mean_correlation"]),
                "most frequent top set (worst seed)": (
                    f"{worst['top_set'].removeprefix('HALLMARK_')}: "
                    f"{worst['top_set_units']} of {worst['n_units']}"
                ),
                "separate (seeds)": f"{int(group['separate'].sum())} of {len(group)}",
                "detection rho": _mean_sd(group["detection_rho"]),
                "stability": f"{stab['mean']:.2f} (lowest unit {stab['lowest_unit']:.2f})" if stab else "–",
                "top set agreement": f"{stab['top_set_agreement']:.2f}" if stab else "–",
                "fit s": f"{group['fit_seconds'].mean():.0f}",
            }
        )
    return pd.DataFrame(rows)


def write(results: dict, budget: str, out_dir: Path, started: str, seconds: float) -> None:
    from run import git_state

    out_dir.mkdir(parents=True, exist_ok=True)
    results.update(
        budget=budget,
        started=started,
        seconds=seconds,
        simulation=SIMULATION,
        scenarios=SCENARIOS,
        budgets=BUDGETS[budget],
        git=results.get("git") or git_state(),  # a report rebuilt from stored results keeps their commit
    )
    (out_dir / "modules.json").write_text(json.dumps(results, indent=1, default=float))
    records = results["records"]
    names = [SYSTEMS[s] for s in SYSTEMS if any(r.get("system") == s for r in records)]
    others = " and ".join([", ".join(names[1:-1]), names[-1]] if len(names) > 2 else names[1:])
    lines = [
        f"# Gene programs: {names[0]} against {others}",
        "",
        f"Budget **{budget}**, started {started}, {seconds / 60:.0f} min on a shared 2-core machine. "
        f"{git_line(results['git'])} Made by `benchmarks/modules.py` (its docstring describes every "
        "system and metric).",
        "",
        *[line for note in results.get("notes", []) for line in (note, "")],
    ]
    if any(r["part"] == "sim" for r in records):
        lines += [
            "## Simulator: planted modules",
            "",
            SIMULATION_NOTE.format(**SIMULATION, units=SIM_UNITS, seeds=BUDGETS[budget]["stability_seeds"]),
            "",
            simulation_table(records).to_markdown(index=False),
            "",
        ]
    if any(r["part"] == "real" for r in records):
        lines += [
            "## Real data: Hallmark gene sets",
            "",
            REAL_NOTE,
            "",
            real_table(records).to_markdown(index=False),
            "",
        ]
    (out_dir / "modules.md").write_text("\n".join(lines))
    print(f"Wrote {out_dir / 'modules.md'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=list(BUDGETS), default="quick")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--parts", nargs="+", choices=["sim", "kang", "transfer"], default=["sim", "kang", "transfer"]
    )
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--from-json", type=Path, help="rebuild the report from a stored modules.json")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        stored = json.loads(args.from_json.read_text())
        write(stored, stored["budget"], args.out, stored["started"], stored["seconds"])
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    clock = time.perf_counter()
    results = run(args.budget, args.parts, args.systems)
    write(results, args.budget, args.out, started, time.perf_counter() - clock)


if __name__ == "__main__":
    main()
