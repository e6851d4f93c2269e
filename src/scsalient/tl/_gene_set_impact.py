"""Gene-set impact on the units of a ModuleAE: mean saliency of each set's genes per unit."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from scsalient._constants import ModuleAEKeys
from scsalient._gene_symbols import resolve_gene_symbols
from scsalient.datasets import read_gmt

logger = logging.getLogger(__name__)

_SCALES = ("unit", "set", "global")


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
    scale: Literal["unit", "set", "global"] = "unit",
    key_added: str = ModuleAEKeys.UNS,
    inplace: bool = True,
) -> dict[str, Any] | None:
    r"""Score gene sets on the representation units of a ModuleAE (or any genes x units weights).

    The raw impact of gene set :math:`S` on unit :math:`k` is the mean saliency of the set's
    genes, :math:`\frac{1}{|S|} \sum_{g \in S} s_{gk}`, over the genes of :math:`S` present in
    the data. It is min-max scaled into [0, 1] (``scale``), and units whose scaled impact is 0
    for every set are dropped. With two groups (or a ``reference``), the difference of the
    groups' scaled impacts is divided by its largest absolute value, giving values in
    [-1, 1]: positive where the unit reads the set more in the group than in the reference.

    Parameters
    ----------
    adata
        Annotated data with the saliency of :meth:`scsalient.model.ModuleAE.get_saliency` in
        ``adata.varm[saliency_key]`` (genes x units; any non-negative genes x units matrix,
        such as absolute PCA loadings, works too).
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
        table). Means over few genes are noisy and top the per-unit ranking by chance: on the
        Kang et al. PBMCs with ``min_genes=5``, a Hallmark set with 5 genes in the data was the
        most impacted set of 24 of 64 units.
    scale
        How impacts are min-max scaled into [0, 1]: ``"unit"`` per unit over the sets (each
        unit's most impacted set gets 1; default), ``"set"`` per set over the units, or
        ``"global"`` over the whole matrix.
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
        The same before scaling and without dropping units.
    ``impact_groups``
        With ``groupby``: dict group -> DataFrame gene sets x units.
    ``difference``
        With two groups or a ``reference``: dict group -> DataFrame gene sets x units of the
        group's scaled impact minus the reference's, divided by its largest absolute value.
    ``gene_sets``
        DataFrame per gene set: ``n_genes`` (in the set), ``n_in_data`` (of those, in the
        data with a saliency) and ``used`` (``n_in_data >= min_genes``).
    ``impact_params``
        Dict of the arguments.
    """
    if scale not in _SCALES:
        raise ValueError(f"`scale` must be one of {_SCALES}, got {scale!r}.")
    if not isinstance(min_genes, int | np.integer) or min_genes < 1:
        raise ValueError(f"`min_genes` must be a positive integer, got {min_genes!r}.")
    if not isinstance(gene_sets, Mapping):
        gene_sets = read_gmt(gene_sets)
    if not gene_sets:
        raise ValueError("`gene_sets` is empty.")
    set_genes = {str(gene) for genes in gene_sets.values() for gene in genes}
    gene_symbols = resolve_gene_symbols(adata, gene_symbols, set_genes, normalize=str, what="the gene sets")

    saliencies: dict[str, pd.DataFrame] = {}
    if saliency_key in adata.varm:
        saliencies[""] = _as_frame(adata.varm[saliency_key], adata, saliency_key)
    group_saliency: dict[str, pd.DataFrame] = {}
    if groupby is not None:
        group_saliency = _group_saliency(adata, groupby, groups)
    elif not saliencies:
        raise KeyError(
            f"adata.varm has no {saliency_key!r}; run model.get_saliency() first (or pass `saliency_key`)."
        )
    any_saliency = next(iter(saliencies.values()), None)
    if any_saliency is None:
        any_saliency = next(iter(group_saliency.values()))
    membership, table = _membership(adata, gene_sets, gene_symbols, any_saliency, min_genes)

    record: dict[str, Any] = {"gene_sets": table}
    if "" in saliencies:
        raw = _mean_saliency(saliencies[""], membership)
        record["mean_saliency"] = raw
        record["impact"] = _drop_zero_units(_scale(raw, scale))
    if group_saliency:
        scaled = {group: _scale(_mean_saliency(s, membership), scale) for group, s in group_saliency.items()}
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
        "scale": scale,
    }
    if not inplace:
        return record
    stored = dict(adata.uns.get(key_added, {}))
    for entry in ("impact", "mean_saliency", "impact_groups", "difference"):
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


def _mean_saliency(saliency: pd.DataFrame, membership: pd.DataFrame) -> pd.DataFrame:
    values = saliency.to_numpy(dtype=np.float64)
    values = np.where(np.isnan(values), 0.0, values)
    weights = membership.to_numpy()
    mean = weights.T @ values / weights.sum(axis=0)[:, None]
    return pd.DataFrame(mean, index=membership.columns, columns=saliency.columns)


def _minmax(values: np.ndarray, axis: int | None) -> np.ndarray:
    low = values.min(axis=axis, keepdims=True)
    span = values.max(axis=axis, keepdims=True) - low
    return np.divide(values - low, span, out=np.zeros_like(values), where=span > 0)


def _scale(raw: pd.DataFrame, scale: str) -> pd.DataFrame:
    axis = {"unit": 0, "set": 1, "global": None}[scale]
    return pd.DataFrame(_minmax(raw.to_numpy(), axis), index=raw.index, columns=raw.columns)


def _drop_zero_units(impact: pd.DataFrame) -> pd.DataFrame:
    keep = (impact > 0).any(axis=0)
    if not keep.all():
        logger.info("%d unit(s) with zero impact on every gene set are dropped.", int((~keep).sum()))
    return impact.loc[:, keep]


def _scale_difference(difference: pd.DataFrame) -> pd.DataFrame:
    largest = float(np.abs(difference.to_numpy()).max()) if difference.size else 0.0
    return difference / largest if largest > 0 else difference
