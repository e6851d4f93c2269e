"""Genomic positions of genes and peaks, and the gene-peak pairs within a window of each other."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scsalient.model.base._fields import _COORDINATE_COLUMNS, PEAK_NAME

#: default half-width of the window around a gene's TSS in which peaks are linked to it (bp)
DEFAULT_WINDOW = 500_000
_CHROM, _START, _END = _COORDINATE_COLUMNS
_TSS = ("tss", "transcription_start_site")
_STRAND = ("strand",)


def _column(var: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    lower = {str(column).lower(): column for column in var.columns}
    return next((lower[name] for name in names if name in lower), None)


def gene_positions(var: pd.DataFrame) -> pd.DataFrame:
    """Chromosome and transcription start site of every gene, from the RNA ``var``.

    The TSS is the ``tss`` column when there is one; otherwise ``start`` (``end`` for genes on the
    ``-`` strand, when a ``strand`` column says so). Genes without a chromosome or position
    (missing values) get ``NaN`` and are linked to nothing.

    Parameters
    ----------
    var
        The RNA modality's ``var``, with ``chrom`` and ``tss`` or ``start`` (optionally ``end``
        and ``strand``) columns.

    Returns
    -------
    DataFrame indexed like ``var`` with ``chrom`` (str, ``""`` when unknown) and ``tss``
    (float, ``NaN`` when unknown).

    Raises
    ------
    KeyError
        If ``var`` has no chromosome column or no TSS/start column. No gene coordinates are
        guessed: windowed links need them from the user.
    """
    chrom, tss, start = _column(var, _CHROM), _column(var, _TSS), _column(var, _START)
    if chrom is None or (tss is None and start is None):
        raise KeyError(
            "Windowed gene-peak links need gene coordinates in the RNA var: a 'chrom' column and a "
            "'tss' or 'start' column (with 'end' and 'strand' for genes on the minus strand); the RNA "
            f"var has {list(var.columns)[:8]}. Add them from the genome annotation the data were "
            "aligned to (e.g. the GTF of the reference), or pass window=None for links without a "
            "window or distances."
        )
    if tss is not None:
        position = pd.to_numeric(var[tss], errors="coerce").to_numpy(dtype=float)
    else:
        position = pd.to_numeric(var[start], errors="coerce").to_numpy(dtype=float)
        end, strand = _column(var, _END), _column(var, _STRAND)
        if end is not None and strand is not None:
            minus = var[strand].astype(str).isin(["-", "-1"]).to_numpy()
            position[minus] = pd.to_numeric(var[end], errors="coerce").to_numpy(dtype=float)[minus]
    names = var[chrom].astype("string").fillna("").astype(str).to_numpy()
    position[names == ""] = np.nan
    return pd.DataFrame({"chrom": names, "tss": position}, index=var.index.copy())


def peak_positions(var: pd.DataFrame) -> pd.DataFrame:
    """Chromosome and centre of every peak, from ``var`` columns or names such as ``chr1:100-200``.

    Parameters
    ----------
    var
        The ATAC modality's ``var``.

    Returns
    -------
    DataFrame indexed like ``var`` with ``chrom`` (str) and ``centre`` (float, ``NaN`` when the
    peak has no coordinates).

    Raises
    ------
    KeyError
        If neither the columns ``chrom``, ``start``, ``end`` nor the peak names give coordinates.
    """
    chrom, start, end = _column(var, _CHROM), _column(var, _START), _column(var, _END)
    if chrom is not None and start is not None and end is not None:
        names = var[chrom].astype("string").fillna("").astype(str).to_numpy()
        lo = pd.to_numeric(var[start], errors="coerce").to_numpy(dtype=float)
        hi = pd.to_numeric(var[end], errors="coerce").to_numpy(dtype=float)
    else:
        index = pd.Series(var.index.astype(str), index=var.index)
        parsed = index.str.extract(r"^([\w.]+?)[:_-](\d+)[-_](\d+)$")
        if not index.str.match(PEAK_NAME).any():
            raise KeyError(
                "Peaks need coordinates for windowed links: ATAC var columns 'chrom', 'start', 'end' "
                "or names such as 'chr1:100-200'; neither was found."
            )
        names = parsed[0].fillna("").to_numpy(dtype=str)
        lo, hi = parsed[1].astype(float).to_numpy(), parsed[2].astype(float).to_numpy()
    centre = (lo + hi) / 2
    centre[names == ""] = np.nan
    return pd.DataFrame({"chrom": names, "centre": centre}, index=var.index.copy())


def pairs_in_window(genes: pd.DataFrame, peaks: pd.DataFrame, window: float) -> pd.DataFrame:
    """Every (gene, peak) pair on the same chromosome with the peak centre within ``window`` bp of the TSS.

    Parameters
    ----------
    genes
        Output of :func:`gene_positions` (or a subset of its rows).
    peaks
        Output of :func:`peak_positions` (or a subset of its rows).
    window
        Largest distance, in bp.

    Returns
    -------
    DataFrame with integer positions ``gene_index`` and ``peak_index`` (rows of ``genes`` and
    ``peaks``) and ``distance`` (peak centre minus TSS, bp), sorted by gene then peak.
    """
    if not window > 0:
        raise ValueError(f"window must be a positive number of bp, got {window!r}.")
    out_gene, out_peak = [], []
    peak_chrom = peaks["chrom"].to_numpy(dtype=str)
    peak_centre = peaks["centre"].to_numpy(dtype=float)
    gene_chrom = genes["chrom"].to_numpy(dtype=str)
    gene_tss = genes["tss"].to_numpy(dtype=float)
    for chrom in np.unique(gene_chrom[np.isfinite(gene_tss)]):
        on = np.flatnonzero((peak_chrom == chrom) & np.isfinite(peak_centre))
        if on.size == 0:
            continue
        on = on[np.argsort(peak_centre[on], kind="stable")]
        centres = peak_centre[on]
        for g in np.flatnonzero((gene_chrom == chrom) & np.isfinite(gene_tss)):
            lo = np.searchsorted(centres, gene_tss[g] - window, side="left")
            hi = np.searchsorted(centres, gene_tss[g] + window, side="right")
            out_peak.append(on[lo:hi])
            out_gene.append(np.full(hi - lo, g))
    gene_index = np.concatenate(out_gene) if out_gene else np.empty(0, dtype=np.int64)
    peak_index = np.concatenate(out_peak) if out_peak else np.empty(0, dtype=np.int64)
    order = np.lexsort((peak_index, gene_index))
    gene_index, peak_index = gene_index[order].astype(np.int64), peak_index[order].astype(np.int64)
    distance = peak_centre[peak_index] - gene_tss[gene_index]
    return pd.DataFrame({"gene_index": gene_index, "peak_index": peak_index, "distance": distance})
