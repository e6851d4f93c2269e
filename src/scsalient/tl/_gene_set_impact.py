"""Gene-set impact on the units of a ModuleAE: detection-matched saliency of each set's genes per unit."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from scsalient._constants import ModuleAEKeys
from scsalient._gene_symbols import resolve_gene_symbols
from scsalient._utils import group_sums
from scsalient.datasets import read_gmt
from scsalient.metrics._modules import MAX_IMPACT_CORRELATION, MAX_TOP_SET_FRACTION, unit_separation

logger = logging.getLogger(__name__)

#: largest number of detection-rate bins, and fewest genes per bin
_MAX_BINS = 20
_MIN_BIN_GENES = 50
#: cells read at once to count detections
_DETECTION_CHUNK = 10_000


def gene_set_impact(
    adata: AnnData,
    gene_sets: Mapping[str, Sequence[str]] | str | os.PathLike,
    groupby: str | None = None,
    reference: str | None = None,
    *,
    groups: Sequence[str] | None = None,
    saliency_key: str = ModuleAEKeys.SALIENCY,
    gene_symbols: str | None = None,
    min_genes: int = 10,
    key_added: str = ModuleAEKeys.UNS,
    inplace: bool = True,
) -> dict[str, Any] | None:
    r"""Score gene sets on the units of a ModuleAE (or any genes x units weights).

    **Detection-matched saliency.** A gene's saliency is first divided, per unit, by the mean
    saliency of the genes detected in a similar fraction of cells (equal-sized bins of the
    detection rate in ``adata.X``, at most 20 bins of at least 50 genes), so that being
    detected in many cells cannot by itself make a gene, or a set, read strongly: a value of 2
    means twice as salient as genes detected as often. **Impact.** The raw impact of gene set
    :math:`S` on unit :math:`k` is the mean of this relative saliency over the set's genes
    present in the data. It is min-max scaled per unit into [0, 1] (each unit's most
    impacted set gets 1), and units whose scaled impact is 0 for every set are dropped.

    **Groups.** With ``groupby``, each group's saliency is divided by the same detection-
    matched means (those of all cells) and scaled per unit with one minimum and maximum over
    all groups, so a unit used more in one group has larger impacts there. With two groups
    (or a ``reference``), the difference of the groups' scaled impacts is divided by its
    largest absolute value, giving values in [-1, 1]: positive where the unit reads the set
    more in the group than in the reference.

    **Separation check.** The impact over all cells is summarised by
    :func:`scsalient.metrics.unit_separation` (mean correlation of the units' impact profiles,
    and the largest number of units one set tops), stored as ``separation``; a
    :class:`UserWarning` names both numbers when the correlation exceeds 0.2 or one set tops
    more than 10% of the units (more than one unit when there are fewer than 20).

    Parameters
    ----------
    adata
        Annotated data with the saliency of :meth:`scsalient.model.ModuleAE.get_saliency` in
        ``adata.varm[saliency_key]`` (genes x units; any non-negative genes x units matrix,
        such as absolute PCA loadings, works too). ``adata.X`` (counts or log-normalised; only
        its zeros matter) gives the detection rates; without ``X`` every gene counts as
        detected equally.
    gene_sets
        Gene-set name to member genes, or the path of a GMT file (read with
        :func:`scsalient.datasets.read_gmt`).
    groupby
        Compare groups of cells: the saliency per group that
        :meth:`~scsalient.model.ModuleAE.get_saliency` stored with the same ``groupby`` in
        ``adata.uns["moduleae"]["group_saliency"]`` is scored per group.
    reference
        Group the others are compared with. With ``None`` and exactly two groups, the second
        (in category order, or in the order of ``groups``) is the reference.
    groups
        Groups to score (default: all groups of ``groupby``).
    saliency_key
        Key of the genes x units saliency in ``adata.varm``.
    gene_symbols
        Column of ``adata.var`` holding the names used in ``gene_sets``. With ``None``,
        ``adata.var_names`` are used unless they look like Ensembl IDs or share no gene with the
        sets: then a symbol column of ``adata.var`` (``gene_symbols``, ``gene_symbol``,
        ``symbol``, ``gene_name``, ...) that shares genes with them is used, with a warning.
    min_genes
        Gene sets with fewer genes in the data are skipped (reported in the ``gene_sets``
        table). Means over few genes are noisy and top the per-unit ranking by chance.
    key_added
        Key in ``adata.uns`` of the record (a dict, updated in place).
    inplace
        Write the record into ``adata.uns[key_added]``; otherwise return it.

    Returns
    -------
    `None` when ``inplace=True``; otherwise a dict with

    ``impact``
        DataFrame gene sets x units of the scaled impact over all explained cells (when
        ``adata.varm[saliency_key]`` exists).
    ``mean_saliency``
        The same before scaling and without dropping units: the mean detection-matched
        relative saliency of each set's genes.
    ``separation``
        With ``impact``: the dict of :func:`scsalient.metrics.unit_separation`.
    ``impact_groups``
        With ``groupby``: dict group -> DataFrame gene sets x units.
    ``difference``
        With two groups or a ``reference``: dict group -> DataFrame gene sets x units of the
        group's scaled impact minus the reference's, divided by its largest absolute value.
    ``gene_sets``
        DataFrame per gene set: ``n_genes`` (in the set), ``n_in_data`` (of those, in the
        data with a saliency) and ``used`` (``n_in_data >= min_genes``).
    ``impact_params``
        Dict of the arguments, with ``n_detection_bins``.
    """
    if not isinstance(min_genes, int | np.integer) or min_genes < 1:
        raise ValueError(f"`min_genes` must be a positive integer, got {min_genes!r}.")
    if not isinstance(gene_sets, Mapping):
        gene_sets = read_gmt(gene_sets)
    if not gene_sets:
        raise ValueError("`gene_sets` is empty.")
    set_genes = {str(gene) for genes in gene_sets.values() for gene in genes}
    gene_symbols = resolve_gene_symbols(adata, gene_symbols, set_genes, normalize=str, what="the gene sets")

    saliency = (
        _as_frame(adata.varm[saliency_key], adata, saliency_key) if saliency_key in adata.varm else None
    )
    group_saliency: dict[str, pd.DataFrame] = {}
    if groupby is not None:
        group_saliency = _group_saliency(adata, groupby, groups)
    elif saliency is None:
        raise KeyError(
            f"adata.varm has no {saliency_key!r}; run model.get_saliency() first (or pass `saliency_key`)."
        )
    any_saliency = saliency if saliency is not None else next(iter(group_saliency.values()))
    _check_saliency(any_saliency, saliency_key)
    membership, table = _membership(adata, gene_sets, gene_symbols, any_saliency, min_genes)
    baseline_source = saliency if saliency is not None else _average(group_saliency.values())
    bins = _detection_bins(adata, any_saliency.index)
    baseline = _bin_means(baseline_source, bins)

    record: dict[str, Any] = {"gene_sets": table}
    if saliency is not None:
        raw = _mean_saliency(_relative(saliency, baseline, bins), membership)
        record["mean_saliency"] = raw
        record["impact"] = _drop_zero_units(_scale_per_unit([raw])[0])
        record["separation"] = _check_separation(record["impact"])
    if group_saliency:
        raws = [_mean_saliency(_relative(s, baseline, bins), membership) for s in group_saliency.values()]
        scaled = dict(zip(group_saliency, _scale_per_unit(raws), strict=True))
        kept = [unit for unit in any_saliency.columns if any((df[unit] > 0).any() for df in scaled.values())]
        record["impact_groups"] = {group: df[kept] for group, df in scaled.items()}
        names = list(scaled)
        if reference is None and len(names) == 2:
            reference = names[1]
        if reference is not None:
            if reference not in scaled:
                raise KeyError(f"reference {reference!r} is not among the groups {names}.")
            record["difference"] = {
                group: _scale_difference(scaled[group][kept] - scaled[reference][kept])
                for group in names
                if group != reference
            }
    record["impact_params"] = {
        "saliency_key": saliency_key,
        "groupby": groupby or "",
        "reference": reference or "",
        "groups": list(group_saliency),
        "gene_symbols": gene_symbols or "",
        "min_genes": int(min_genes),
        "n_detection_bins": int(bins.max()) + 1,
    }
    if not inplace:
        return record
    stored = dict(adata.uns.get(key_added, {}))
    for entry in ("impact", "mean_saliency", "separation", "impact_groups", "difference"):
        stored.pop(entry, None)
    stored.update(record)
    adata.uns[key_added] = stored
    return None


# --------------------------------------------------------------------------------------------
# helpers


def _as_frame(values: Any, adata: AnnData, key: str) -> pd.DataFrame:
    if isinstance(values, pd.DataFrame):
        return values
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"adata.varm[{key!r}] must be a genes x units matrix, got shape {values.shape}.")
    return pd.DataFrame(values, index=adata.var_names, columns=[f"unit_{k}" for k in range(values.shape[1])])


def _group_saliency(adata: AnnData, groupby: str, groups: Sequence[str] | None) -> dict[str, pd.DataFrame]:
    record = adata.uns.get(ModuleAEKeys.UNS, {})
    stored_groupby = record.get("saliency_params", {}).get("groupby", "")
    if "group_saliency" not in record or stored_groupby != groupby:
        raise KeyError(
            f"No saliency per {groupby!r} group in adata.uns[{ModuleAEKeys.UNS!r}]; run "
            f"model.get_saliency(adata, groupby={groupby!r}) first."
        )
    available = {
        str(group): _as_frame(df, adata, "group_saliency") for group, df in record["group_saliency"].items()
    }
    if groups is None:
        return available
    groups = [str(group) for group in groups]
    missing = [group for group in groups if group not in available]
    if missing:
        raise KeyError(f"Groups {missing} have no saliency (available: {list(available)}).")
    if len(set(groups)) != len(groups):
        raise ValueError(f"`groups` has duplicates: {groups}.")
    return {group: available[group] for group in groups}


def _membership(
    adata: AnnData,
    gene_sets: Mapping[str, Sequence[str]],
    gene_symbols: str | None,
    saliency: pd.DataFrame,
    min_genes: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gene x set membership (float, rows follow ``saliency``) of the usable sets, and the table."""
    if gene_symbols is None:
        names = pd.Index(saliency.index.astype(str))
    else:
        names = pd.Index(adata.var[gene_symbols].reindex(saliency.index).astype(str))
    has_value = saliency.notna().all(axis=1).to_numpy()
    rows, table = {}, []
    for name, genes in gene_sets.items():
        genes = list(dict.fromkeys(str(gene) for gene in genes))
        in_set = names.isin(genes) & has_value
        n_in_data = len(set(names[in_set]))
        used = n_in_data >= min_genes
        table.append({"gene_set": str(name), "n_genes": len(genes), "n_in_data": n_in_data, "used": used})
        if used:
            rows[str(name)] = in_set
    table = pd.DataFrame(table).set_index("gene_set")
    skipped = table.index[~table["used"]].tolist()
    if skipped:
        logger.info(
            "%d gene set(s) with fewer than %d genes in the data are skipped.", len(skipped), min_genes
        )
    if not rows:
        where = "adata.var_names" if gene_symbols is None else f"adata.var[{gene_symbols!r}]"
        raise ValueError(
            f"No gene set has at least min_genes={min_genes} genes in {where} "
            f"(best: {int(table['n_in_data'].max())}). Check the gene identifiers (symbols vs Ensembl IDs; "
            "use `gene_symbols`) and the species."
        )
    membership = pd.DataFrame(rows, index=saliency.index, dtype=np.float64)
    return membership, table


def _check_saliency(saliency: pd.DataFrame, key: str) -> None:
    values = saliency.to_numpy(dtype=np.float64)
    if (values[~np.isnan(values)] < 0).any():
        raise ValueError(
            f"The saliency in adata.varm[{key!r}] has negative values; gene-set impact needs non-negative "
            "weights (take absolute values, e.g. of PCA loadings)."
        )


def _average(frames) -> pd.DataFrame:
    frames = list(frames)
    return sum(frame.fillna(0.0) for frame in frames) / len(frames)


def detection_rate(adata: AnnData) -> np.ndarray:
    """Fraction of cells with a non-zero value in ``adata.X``, per gene (ones without ``X``).

    Parameters
    ----------
    adata
        Annotated data; ``X`` may be sparse, dense or backed.
    """
    if adata.X is None or adata.n_obs == 0:
        return np.ones(adata.n_vars)
    nonzero = np.zeros(adata.n_vars)
    for start in range(0, adata.n_obs, _DETECTION_CHUNK):
        block = adata.X[start : start + _DETECTION_CHUNK]
        nonzero += np.asarray((block != 0).sum(axis=0)).ravel()
    return nonzero / adata.n_obs


def _detection_bins(adata: AnnData, genes: pd.Index) -> np.ndarray:
    """Equal-sized detection-rate bins (codes 0, 1, ...) of ``genes``, ties kept in one bin."""
    rate = pd.Series(detection_rate(adata), index=adata.var_names).reindex(genes).fillna(0.0)
    n_bins = int(np.clip(len(genes) // _MIN_BIN_GENES, 1, _MAX_BINS))
    codes = pd.qcut(rate.rank(method="average"), q=n_bins, labels=False, duplicates="drop")
    return np.asarray(codes, dtype=np.int64)


def _bin_means(saliency: pd.DataFrame, bins: np.ndarray) -> np.ndarray:
    """Mean saliency per detection bin and unit (bins x units), over genes with a saliency."""
    values = saliency.to_numpy(dtype=np.float64)
    present = ~np.isnan(values)
    values = np.where(present, values, 0.0)
    n_bins = int(bins.max()) + 1
    sums = group_sums(bins, values, n_bins)
    counts = group_sums(bins, present, n_bins)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def _relative(saliency: pd.DataFrame, baseline: np.ndarray, bins: np.ndarray) -> pd.DataFrame:
    """Saliency divided by the mean of its detection bin (0 where that mean is 0)."""
    values = saliency.to_numpy(dtype=np.float64)
    denominator = baseline[bins]
    relative = np.divide(values, denominator, out=np.zeros_like(values), where=denominator > 0)
    return pd.DataFrame(relative, index=saliency.index, columns=saliency.columns)


def _mean_saliency(saliency: pd.DataFrame, membership: pd.DataFrame) -> pd.DataFrame:
    values = saliency.to_numpy(dtype=np.float64)
    values = np.where(np.isnan(values), 0.0, values)
    weights = membership.to_numpy()
    mean = weights.T @ values / weights.sum(axis=0)[:, None]
    return pd.DataFrame(mean, index=membership.columns, columns=saliency.columns)


def _scale_per_unit(raws: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """Min-max scale each unit into [0, 1] with one minimum and maximum over all the matrices."""
    stacked = np.stack([raw.to_numpy() for raw in raws])  # matrices x sets x units
    low = stacked.min(axis=(0, 1), keepdims=True)
    span = stacked.max(axis=(0, 1), keepdims=True) - low
    scaled = np.divide(stacked - low, span, out=np.zeros_like(stacked), where=span > 0)
    return [
        pd.DataFrame(values, index=raw.index, columns=raw.columns)
        for values, raw in zip(scaled, raws, strict=True)
    ]


def _drop_zero_units(impact: pd.DataFrame) -> pd.DataFrame:
    keep = (impact > 0).any(axis=0)
    if not keep.all():
        logger.info("%d unit(s) with zero impact on every gene set are dropped.", int((~keep).sum()))
    return impact.loc[:, keep]


def _check_separation(impact: pd.DataFrame) -> dict[str, Any]:
    """The units' separation (:func:`unit_separation`), with a warning when they do not separate."""
    if impact.shape[0] < 2 or impact.shape[1] == 0:
        return {}
    separation = unit_separation(impact)
    if not separation["separate"]:
        n_units = separation["n_units"]
        warnings.warn(
            "The units do not read separate gene programs: their gene-set impact correlates "
            f"{separation['mean_correlation']:.2f} on average between units (separate units: at most "
            f"{MAX_IMPACT_CORRELATION}), and {separation['top_set']} is the most impacted set of "
            f"{separation['top_set_units']} of {n_units} units (separate units: at most "
            f"{max(1, int(MAX_TOP_SET_FRACTION * n_units + 1e-9))}). Read the units with care: check that "
            "the model was trained to the end, try fewer units (n_latent), and check that the gene sets "
            "cover the data's genes (the `gene_sets` table).",
            UserWarning,
            stacklevel=3,
        )
    return separation


def _scale_difference(difference: pd.DataFrame) -> pd.DataFrame:
    largest = float(np.abs(difference.to_numpy()).max()) if difference.size else 0.0
    return difference / largest if largest > 0 else difference
