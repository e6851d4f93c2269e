"""RNA <-> ATAC translation on MOp SNARE-seq2 (paired, 10k nuclei), whole sub-libraries held out.

Systems, both directions: the per-feature training mean, truncated SVD + RBF kernel ridge (the
NeurIPS 2021 "Dengkw" recipe, scikit-learn), scvi-tools MULTIVI imputing the missing modality,
and scsalient's Translator. Metrics: :func:`scsalient.metrics.translation_scores`. Then gene-peak
links: how often the gene a region's predicted accessibility is most attributed to is the
region's ``linked_gene``, against a gene-peak correlation ranking and chance.

    python benchmarks/translation.py --budget quick     # minutes on 2 cores
    python benchmarks/translation.py --budget full
    python benchmarks/translation.py --split inner --systems translator --dropout 0.5
    python benchmarks/translation.py --budget full --systems translator --n-ensemble 5 --merge

``--split inner`` uses no test cell: the training sub-libraries 09G, 09H and 09I are held out
and scored, the models train on the other six, and results go to ``translation_inner.{json,md}``
(with ``--merge``, rows of earlier runs with other systems or Translator settings are kept).
The Translator's settings are compared on that table.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import time
import warnings
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import torch
from datasets import DATA_DIR, MOP_TEST_SUFFIXES, inner_held_out
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from sklearn.kernel_ridge import KernelRidge

import scsalient as ss
from scsalient.metrics import feature_means, translation_scores

RESULTS = Path(__file__).resolve().parent / "results"
BUDGETS = {
    "quick": {"translator_epochs": 10, "multivi_epochs": 10, "n_link_peaks": 200},
    "full": {"translator_epochs": 60, "multivi_epochs": 40, "n_link_peaks": 500},
}
DIRECTIONS = {"rna_to_atac": ("rna", "atac"), "atac_to_rna": ("atac", "rna")}
logger = logging.getLogger("translation")


# ---------------------------------------------------------------------------------- data


def load(n_peaks: int, split: str = "test") -> tuple[md.MuData, np.ndarray, np.ndarray]:
    """Paired MOp data with the ``n_peaks`` peaks most often accessible in training cells.

    ``split="inner"`` then holds out the training sub-libraries of
    :func:`datasets.inner_held_out` instead of the test ones (the peaks stay those of the whole
    training set; no test cell is used).
    """
    with md.set_options(pull_on_update=False):
        mdata = md.read_h5mu(DATA_DIR / "mop_snareseq2_multiome_10k.h5mu")
    batch = mdata.obs["batch"].astype(str)
    is_test = batch.str.endswith(MOP_TEST_SUFFIXES).to_numpy()
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    atac = mdata["atac"]
    n_open = np.asarray((atac.X[train] > 0).sum(axis=0)).ravel()
    keep = np.sort(np.argsort(-n_open, kind="stable")[:n_peaks])
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": mdata["rna"].copy(), "atac": atac[:, keep].copy()}, obs=mdata.obs.copy())
    if split == "inner":
        inner = batch.iloc[train].isin(inner_held_out(batch.iloc[train])).to_numpy()
        train, test = train[~inner], train[inner]
    return mdata, train, test


def log1p_cp10k(x) -> np.ndarray:
    x = np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)
    return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1e-8) * 1e4)


def binary(x) -> np.ndarray:
    return (np.asarray(x.toarray() if sparse.issparse(x) else x) > 0).astype(np.float32)


# ---------------------------------------------------------------------------------- systems


def fit_feature_mean(mdata, train, test, source, target, budget):
    mean = feature_means(mdata[target].X[train], target)
    return np.broadcast_to(mean, (len(test), mean.size))


def fit_svd_krr(mdata, train, test, source, target, budget):
    """TruncatedSVD of input and target, row-standardised inputs, RBF kernel ridge (Dengkw-style)."""
    n_in, n_out = (64, 50) if source == "rna" else (100, 70)
    x = log1p_cp10k(mdata[source].X) if source == "rna" else binary(mdata[source].X)
    y = log1p_cp10k(mdata[target].X[train]) if target == "rna" else binary(mdata[target].X[train])
    svd_in = TruncatedSVD(n_in, random_state=0).fit(x[train])
    z = svd_in.transform(x)
    z = (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)
    svd_out = TruncatedSVD(n_out, random_state=0).fit(y)
    krr = KernelRidge(alpha=0.1, kernel="rbf", gamma=1 / (2 * 10.0**2)).fit(z[train], svd_out.transform(y))
    pred = svd_out.inverse_transform(krr.predict(z[test]))
    return np.clip(pred, 0, 1 if target == "atac" else None).astype(np.float32)


def fit_multivi(mdata, train, test, source, target, budget):
    """MULTIVI on all cells with the test cells' target modality zeroed, then imputed."""
    import scvi

    rna, atac = mdata["rna"].copy(), mdata["atac"].copy()
    hidden = rna if target == "rna" else atac
    x = hidden.X.tolil()
    x[test] = 0
    hidden.X = sparse.csr_matrix(x)
    with md.set_options(pull_on_update=False):
        data = md.MuData({"rna": rna, "atac": atac})
    scvi.model.MULTIVI.setup_mudata(data, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    model = scvi.model.MULTIVI(data, n_genes=rna.n_vars, n_regions=atac.n_vars)
    model.train(max_epochs=budget["multivi_epochs"], enable_progress_bar=False)
    if target == "atac":
        return np.asarray(
            model.get_normalized_accessibility(data, indices=test, return_numpy=True), np.float32
        )
    expr = model.get_normalized_expression(data, indices=test, return_numpy=True)
    return np.log1p(np.asarray(expr, np.float32) * 1e4)


_TRANSLATORS: dict[str, ss.model.Translator] = {}


def translator(mdata, train, budget) -> ss.model.Translator:
    """One Translator for both directions, trained on the paired training cells."""
    if "model" not in _TRANSLATORS:
        with md.set_options(pull_on_update=False):
            paired = md.MuData({"rna": mdata["rna"][train].copy(), "atac": mdata["atac"][train].copy()})
        ss.model.Translator.setup_mudata(paired)
        model = ss.model.Translator(paired, **budget.get("translator", {}))
        model.train(
            max_epochs=budget["translator_epochs"], lr=1e-3, enable_progress_bar=False, early_stopping=True
        )
        _TRANSLATORS["model"], _TRANSLATORS["paired"] = model, paired
    return _TRANSLATORS["model"]


def fit_translator(mdata, train, test, source, target, budget):
    model = translator(mdata, train, budget)
    return model.translate(mdata[source][test].copy(), to=target).X


SYSTEMS = {
    "feature_mean": fit_feature_mean,
    "svd_krr": fit_svd_krr,
    "multivi": fit_multivi,
    "translator": fit_translator,
}


# ---------------------------------------------------------------------------------- links


def link_recovery(mdata, train, budget, seed: int = 0) -> dict:
    """Top-attributed gene of sampled regions vs their ``linked_gene``; correlation ranking and chance."""
    model = translator(mdata, train, budget)
    paired = _TRANSLATORS["paired"]
    var = mdata["atac"].var
    genes = pd.Index(mdata["rna"].var_names)
    candidates = np.flatnonzero(var["linked_gene"].isin(genes).to_numpy())
    rng = np.random.default_rng(seed)
    peaks = mdata["atac"].var_names[np.sort(rng.choice(candidates, budget["n_link_peaks"], replace=False))]
    start = time.perf_counter()
    links = ss.tl.peak_gene_links(
        model, paired, peaks=list(peaks), direction="rna_to_atac", n_top=10, n_cells=256, n_steps=8, copy=True
    )
    seconds = time.perf_counter() - start
    truth = var.loc[peaks, "linked_gene"]
    top = links.pivot_table(index="peak", columns="rank", values="gene", aggfunc="first").loc[peaks]
    hit1 = float((top[1].to_numpy() == truth.to_numpy()).mean())
    hit10 = float(np.mean([truth[p] in set(top.loc[p]) for p in peaks]))
    # correlation ranking on the same training cells
    x = log1p_cp10k(mdata["rna"].X[train])
    y = binary(mdata["atac"][:, peaks].X[train])
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    y = (y - y.mean(0)) / (y.std(0) + 1e-8)
    corr = y.T @ x / len(x)
    best = genes[np.argmax(corr, axis=1)]
    order = np.argsort(-corr, axis=1)[:, :10]
    corr_hit1 = float((best.to_numpy() == truth.to_numpy()).mean())
    corr_hit10 = float(np.mean([truth.iloc[i] in set(genes[order[i]]) for i in range(len(peaks))]))
    return {
        "n_regions": int(len(peaks)),
        "n_genes": int(len(genes)),
        "translator_top1": hit1,
        "translator_top10": hit10,
        "correlation_top1": corr_hit1,
        "correlation_top10": corr_hit10,
        "chance_top1": 1 / len(genes),
        "chance_top10": 10 / len(genes),
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------- report


def render(results: dict) -> str:
    inner = results.get("split") == "inner"
    lines = [
        "# RNA <-> ATAC translation on MOp SNARE-seq2" + (" (inner split)" if inner else ""),
        "",
        f"Held-out sub-libraries {', '.join(results.get('held_out', MOP_TEST_SUFFIXES))} "
        f"({results['n_test']} {'held-out training' if inner else 'test'} / "
        f"{results['n_train']} training cells); {results['n_genes']} genes, the {results['n_peaks']} peaks "
        f"most often accessible in training cells. Budget `{results['budget']}` ({results['settings']}).",
        "",
        "## ATAC -> RNA (target log1p CP10k)",
        "",
        "| system | RMSE | Pearson per cell | Pearson per gene | fit + predict s |",
        "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if row["direction"] == "atac_to_rna":
            lines.append(
                f"| {row['system']} | {row['rmse']:.3f} | {row['pearson_per_cell']:.3f} | "
                f"{row['pearson_per_gene']:.3f} | {row['seconds']:.0f} |"
            )
    lines += [
        "",
        "## RNA -> ATAC (binarised target)",
        "",
        "| system | AUROC | AUPRC | AUROC per cell | AUPRC per cell | RMSE | Pearson per cell "
        "| fit + predict s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if row["direction"] == "rna_to_atac":
            lines.append(
                f"| {row['system']} | {row['auroc']:.3f} | {row['auprc']:.4f} | "
                f"{row['auroc_per_cell']:.3f} | "
                f"{row['auprc_per_cell']:.4f} | {row['rmse']:.5f} | {row['pearson_per_cell']:.3f} | "
                f"{row['seconds']:.0f} |"
            )
    if inner:
        lines += [
            "",
            "No test cell is used here: the Translator's settings are compared on this table.",
        ]
    elif any(row["system"].startswith("translator (") for row in results["rows"]):
        defaults = translator_settings(None, None)
        lines += [
            "",
            f"`translator` is the default model, an ensemble of {defaults['n_ensemble']} networks at "
            f"dropout {defaults['dropout']:g}; rows with settings in brackets change the dropout or "
            "the number of members. More dropout gives a single network better translations but "
            "loses its gene-peak links, an ensemble improves both (see the Translator user guide); "
            "the inner split "
            "(`translation_inner.md`) makes the same comparison without test nuclei.",
        ]
    if "threads" in results:
        lines += ["", f"Times: {results['threads']} CPU thread(s) per benchmark process."]
    zeros = results.get("all_zeros_rmse_atac")
    if zeros is not None:
        lines += [
            "",
            f"All-zeros control on ATAC: RMSE {zeros:.4f}; accessible fraction {results['fraction']:.4f}.",
        ]
    links = links_by_system(results)
    if links:
        first = next(iter(links.values()))
        lines += [
            "",
            "## Gene-peak links",
            "",
            f"{first['n_regions']} random regions (with a linked gene in the panel, the same for every "
            "row); the gene each region's predicted accessibility is most attributed to (integrated "
            "gradients) vs its `linked_gene`:",
            "",
            "| ranking | top-1 is the linked gene | linked gene in top 10 | s |",
            "|---|---|---|---|",
        ]
        for system, scores in links.items():
            lines.append(
                f"| {system} attributions | {scores['translator_top1']:.3f} | "
                f"{scores['translator_top10']:.3f} | {scores['seconds']:.0f} |"
            )
        lines += [
            f"| gene-peak Pearson correlation (training cells) | {first['correlation_top1']:.3f} | "
            f"{first['correlation_top10']:.3f} | |",
            f"| chance | {first['chance_top1']:.4f} | {first['chance_top10']:.4f} | |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="quick")
    parser.add_argument("--systems", nargs="+", choices=sorted(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--epochs", type=int, help="override the Translator's epochs of the budget")
    parser.add_argument("--n-peaks", type=int, default=10_000)
    parser.add_argument("--split", choices=["test", "inner"], default="test")
    parser.add_argument("--dropout", type=float, help="Translator dropout (default: the model's)")
    parser.add_argument("--n-ensemble", type=int, help="Translator ensemble members (default: the model's)")
    parser.add_argument("--no-links", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of systems not run now from an existing results file of the same settings",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    budget = dict(BUDGETS[args.budget])
    if args.epochs:
        budget["translator_epochs"] = args.epochs
    settings = ", ".join(f"{k} {v}" for k, v in budget.items())
    label = {system: system for system in args.systems}
    label["translator"] = translator_label(args.dropout, args.n_ensemble, args.split)
    budget["translator"] = translator_settings(args.dropout, args.n_ensemble)
    mdata, train, test = load(args.n_peaks, args.split)
    results = {
        "split": args.split,
        "held_out": sorted(mdata.obs["batch"].iloc[test].astype(str).unique()),
        "threads": args.threads,
        "budget": args.budget,
        "settings": settings,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "n_genes": int(mdata["rna"].n_vars),
        "n_peaks": int(mdata["atac"].n_vars),
        "rows": [],
    }
    previous = args.out / f"{stem(results)}.json"
    if args.merge and previous.exists():
        old = json.loads(previous.read_text())
        same = ("budget", "settings", "n_train", "n_test", "n_genes", "n_peaks")
        if any(old.get(key) != results[key] for key in same):
            raise SystemExit(f"--merge: {previous} was run with other settings; run without --merge")
        results["rows"] = [row for row in old["rows"] if row["system"] not in label.values()]
        results["links"] = {
            system: scores
            for system, scores in links_by_system(old).items()
            if system != label["translator"] or "translator" not in args.systems or args.no_links
        }
    truth = {"rna": mdata["rna"].X[test], "atac": mdata["atac"].X[test]}
    zeros = translation_scores(truth["atac"], np.zeros(truth["atac"].shape, np.float32), "atac")
    results["all_zeros_rmse_atac"], results["fraction"] = zeros["rmse"], zeros["fraction_accessible"]
    for system in args.systems:
        for direction, (source, target) in DIRECTIONS.items():
            logger.info("%s %s", system, direction)
            start = time.perf_counter()
            pred = SYSTEMS[system](mdata, train, test, source, target, budget)
            seconds = time.perf_counter() - start
            scores = translation_scores(truth[target], np.asarray(pred, np.float32), target)
            row = {"system": label[system], "direction": direction, "seconds": seconds, **scores}
            results["rows"].append(row)
            logger.info("%s", {k: round(v, 4) for k, v in scores.items()})
            write(results, args.out)  # partial results survive an interrupted run
        if system == "translator" and not args.no_links:
            results.setdefault("links", {})[label[system]] = link_recovery(mdata, train, budget)
            logger.info("links %s", results["links"][label[system]])
            write(results, args.out)
    print(render(results))


def translator_settings(dropout: float | None, members: int | None) -> dict:
    """The Translator's ``dropout`` and ``n_ensemble``: the given ones, else the model's defaults."""
    defaults = inspect.signature(ss.model.Translator).parameters
    return {
        "dropout": defaults["dropout"].default if dropout is None else dropout,
        "n_ensemble": defaults["n_ensemble"].default if members is None else members,
    }


def translator_label(dropout: float | None, members: int | None, split: str) -> str:
    """``translator`` for the defaults on the test split, else the settings in brackets."""
    settings, defaults = translator_settings(dropout, members), translator_settings(None, None)
    if settings == defaults and split == "test":
        return "translator"
    n = settings["n_ensemble"]
    text = f"dropout {settings['dropout']:g}, {n} member{'s' if n > 1 else ''}"
    return f"translator ({text}{', default' if settings == defaults else ''})"


def links_by_system(results: dict) -> dict[str, dict]:
    """Link recovery per Translator row (a single block, as first written, is ``translator``'s)."""
    links = results.get("links") or {}
    return {"translator": links} if "translator_top1" in links else dict(links)


def stem(results: dict) -> str:
    """File name of the results: ``translation`` or ``translation_inner``."""
    return "translation_inner" if results.get("split") == "inner" else "translation"


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem(results)}.json").write_text(json.dumps(results, indent=2))
    (out / f"{stem(results)}.md").write_text(render(results))


if __name__ == "__main__":
    main()
