"""Gene-peak links: the Translator's attributions against genomic distance and gene-peak correlation.

Every score ranks the same candidate pairs: each gene and each peak on the same chromosome with
the peak centre within 500 kb of the gene's TSS (:func:`scsalient.tl.peak_gene_links`). Scores:

* ``translator_rna_to_atac`` / ``translator_atac_to_rna``: the Translator's integrated-gradient
  attributions (``score`` of :func:`scsalient.tl.peak_gene_links`) in each direction;
* ``distance``: ``exp(-|d| / 50 kb)`` (:func:`scsalient.tl.distance_score`), the nearest-gene rule;
* ``correlation`` and ``correlation_z``: LinkPeaks-style Pearson correlation and its z-score
  against accessibility-matched background peaks (:func:`scsalient.tl.peak_gene_correlation`);
* ``distance_x_correlation``: the distance score times the correlation z-score's logistic,
  ``distance * sigmoid(z)`` (near peaks first, correlated ones ahead within a distance).

Truth: the simulator's planted links (``scsalient.datasets.simulate``, 1,200 cells, 300 genes,
800 peaks, 30 links, seeds 0-1) and MOp's ``atac.var["linked_gene"]`` (the gene whose body or
promoter each region lies in). MOp's RNA ``var`` has no gene coordinates: the TSS of each gene
is read from the mm10 TSS table that the ``celloracle`` package (Apache-2.0) ships
(``motif_analysis/tss_ref_data/mm10_tss_info.bed``); pass the file or the package's wheel with
``--tss`` (``pip download celloracle==0.20.0 --no-deps``). The Translator on MOp is trained on
the peaks of ``--chromosomes`` only (all cells).

    python benchmarks/links.py --tss celloracle-0.20.0-py3-none-any.whl

Metrics (:func:`scsalient.metrics.link_recovery`): precision at 1 (for each true peak, whether
its top-ranked gene is the true one), hit at 10, precision of the 10 top pairs overall, AUPRC
over all candidate pairs (and the positive rate, a random score's AUPRC). Results in
``results/links.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
import zipfile
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import scvi
from datasets import DATA_DIR

import scsalient as ss
from scsalient.metrics import link_recovery

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW = 500_000
TSS_MEMBER = "celloracle/motif_analysis/tss_ref_data/mm10_tss_info.bed"
METRICS = ("precision_at_1", "hit_at_10", "precision_at_10", "auprc", "positive_rate")
logger = logging.getLogger("links")


def read_tss(path: Path) -> pd.DataFrame:
    """Gene TSS (chrom, tss) from celloracle's mm10 table, given as the bed file or the wheel."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            text = wheel.read(TSS_MEMBER).decode()
    else:
        text = path.read_text()
    bed = pd.read_csv(io.StringIO(text), sep="\t", header=None, usecols=[0, 1, 2, 3])
    bed.columns = ["chrom", "start", "end", "gene"]
    bed["tss"] = (bed["start"] + bed["end"]) / 2  # rows are ~1.1 kb around a TSS
    # one TSS per gene: the median of its rows on its most frequent chromosome
    chrom = bed.groupby("gene")["chrom"].agg(lambda c: c.value_counts().index[0])
    bed = bed[bed["chrom"].to_numpy() == chrom.reindex(bed["gene"]).to_numpy()]
    return pd.DataFrame({"chrom": chrom, "tss": bed.groupby("gene")["tss"].median()})


def score_table(mdata, model, peaks, n_cells: int, seed: int, atac=None) -> pd.DataFrame:
    """Every candidate pair of ``peaks`` with each link score.

    The correlation background is drawn from all peaks of ``atac`` (default: ``mdata``'s).
    """
    atac = mdata["atac"] if atac is None else atac
    table = ss.tl.peak_gene_correlation(mdata["rna"], atac, window=WINDOW, seed=seed)
    table = table[table["peak"].isin(set(peaks))].reset_index(drop=True)
    table = table.rename(columns={"zscore": "correlation_z"})
    table["distance_score"] = ss.tl.distance_score(table["distance"])
    table["distance_x_correlation"] = ss.tl.distance_correlation_score(
        table["distance"], table["correlation_z"]
    )
    if model is not None:
        for direction in ("rna_to_atac", "atac_to_rna"):
            links = ss.tl.peak_gene_links(
                model, mdata, peaks=list(peaks), direction=direction, n_cells=n_cells, n_steps=8, copy=True
            )
            scores = links.set_index(["gene", "peak"])["score"].rename(f"translator_{direction}")
            table = table.join(scores, on=["gene", "peak"])
    return table


def evaluate(table: pd.DataFrame, truth: pd.DataFrame) -> dict[str, dict]:
    scores = [c for c in table.columns if c not in ("gene", "peak", "distance")]
    return {s: link_recovery(table, truth, score=s) for s in scores}


def simulated(seed: int, epochs: int, n_cells: int) -> dict:
    sim = ss.datasets.simulate(
        1200, 300, modalities="rna+atac", n_peaks=800, n_links=30, library_size=10000, seed=seed
    )
    truth = sim.uns["simulation"]["links"]
    scvi.settings.seed = seed
    mdata = sim.copy()
    ss.model.Translator.setup_mudata(mdata)
    model = ss.model.Translator(mdata)
    start = time.perf_counter()
    model.train(max_epochs=epochs, lr=3e-3, enable_progress_bar=False)
    logger.info("simulation seed %d: trained in %.0f s", seed, time.perf_counter() - start)
    # the planted peaks and as many other peaks, drawn at random
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(mdata["atac"].var_names, truth["peak"])
    peaks = np.concatenate([truth["peak"].to_numpy(), rng.choice(others, size=len(truth), replace=False)])
    table = score_table(mdata, model, peaks, n_cells, seed)
    return evaluate(table, truth)


def mop(
    tss: pd.DataFrame, chromosomes: list[str], epochs: int, n_peaks: int, n_cells: int, seed: int
) -> dict:
    mdata = md.read_h5mu(DATA_DIR / "mop_snareseq2_multiome_10k.h5mu")
    rna = mdata["rna"]
    positions = tss.reindex(rna.var_names)
    logger.info("MOp: %d of %d genes have a TSS in the table", positions["tss"].notna().sum(), rna.n_vars)
    rna.var["chrom"] = positions["chrom"].fillna("").to_numpy(dtype=str)
    rna.var["tss"] = positions["tss"].to_numpy()
    atac = mdata["atac"]
    keep = atac.var["chrom"].isin(chromosomes).to_numpy()
    mdata = md.MuData({"rna": rna.copy(), "atac": atac[:, keep].copy()})
    mdata.mod["rna"].var = rna.var.copy()
    truth = pd.DataFrame(
        {"gene": mdata["atac"].var["linked_gene"].astype(str).to_numpy(), "peak": mdata["atac"].var_names}
    )
    rng = np.random.default_rng(seed)
    peaks = np.sort(
        rng.choice(mdata["atac"].var_names, size=min(n_peaks, mdata["atac"].n_vars), replace=False)
    )
    model = None
    if epochs > 0:
        scvi.settings.seed = seed
        ss.model.Translator.setup_mudata(mdata)
        model = ss.model.Translator(mdata, n_ensemble=1)
        start = time.perf_counter()
        model.train(max_epochs=epochs, enable_progress_bar=False)
        logger.info("MOp: trained on %d peaks in %.0f s", mdata["atac"].n_vars, time.perf_counter() - start)
    table = score_table(mdata, model, peaks, n_cells, seed, atac=atac)
    out = evaluate(table, truth)
    out["_setup"] = {
        "chromosomes": chromosomes,
        "n_model_peaks": int(mdata["atac"].n_vars),
        "n_scored_peaks": len(peaks),
        "genes_with_tss": int(positions["tss"].notna().sum()),
        "translator_epochs": epochs,
    }
    return out


def render(results: dict) -> str:
    lines = [
        "# Gene-peak links",
        "",
        "Candidates: gene-peak pairs on one chromosome within 500 kb of the TSS. "
        "P@1: share of true peaks whose top gene is the true one; hit@10: true gene among the "
        "peak's top 10; P@10: true links among the 10 top pairs; AUPRC over all candidates "
        "(random: the positive rate).",
        "",
    ]
    for name, runs in results["data"].items():
        scores = [s for s in next(iter(runs.values())) if not s.startswith("_")]
        lines += [
            f"## {name}",
            "",
            "| score | " + " | ".join(METRICS) + " |",
            "|---" * (len(METRICS) + 1) + "|",
        ]
        for s in scores:
            values = [np.nanmean([run[s][m] for run in runs.values()]) for m in METRICS]
            lines.append(f"| {s} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
        lines += ["", f"mean over {len(runs)} run(s): {', '.join(runs)}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tss", type=Path, required=True, help="mm10_tss_info.bed or the celloracle wheel")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sim-epochs", type=int, default=60)
    parser.add_argument("--mop-epochs", type=int, default=10)
    parser.add_argument("--chromosomes", nargs="+", default=["chr1", "chr2"])
    parser.add_argument("--mop-peaks", type=int, default=300, help="peaks scored on MOp")
    parser.add_argument("--n-cells", type=int, default=150, help="cells the attributions average over")
    parser.add_argument("--skip", choices=["simulation", "mop"], nargs="*", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = {"window": WINDOW, "data": {}}
    if "simulation" not in args.skip:
        results["data"]["simulation (planted links)"] = {
            f"seed {s}": simulated(s, args.sim_epochs, args.n_cells) for s in args.seeds
        }
    if "mop" not in args.skip:
        tss = read_tss(args.tss)
        results["data"]["MOp (linked_gene)"] = {
            "seed 0": mop(tss, args.chromosomes, args.mop_epochs, args.mop_peaks, args.n_cells, 0)
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "links.json").write_text(json.dumps(results, indent=2, default=float))
    (RESULTS / "links.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
