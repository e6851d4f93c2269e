"""Plots of gene attention: group correlations, salient genes and attention on an embedding."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mpl_toolkits.axes_grid1 import make_axes_locatable
from scipy import sparse, stats
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from scsalient._constants import NACTKeys, SalientKeys
from scsalient._utils import select_groups
from scsalient.tl._salient_genes import (
    _check_batch_size,
    _document_frequency,
    _get_attention,
    _group_means,
)

from ._utils import finish_plot, panel_grid, without_grid

logger = logging.getLogger(__name__)

#: colour of the diagonal of :func:`attention_correlation` (outside its colour scale)
DIAGONAL_COLOUR = "lightgrey"


def attention_correlation(
    adata: AnnData,
    groupby: str | None = None,
    *,
    attention_key: str = NACTKeys.ATTENTION,
    method: Literal["pearson", "spearman"] = "pearson",
    cluster: bool = True,
    linkage_method: str = "average",
    cmap: str = "RdBu_r",
    vmin: float | None = None,
    vmax: float | None = None,
    batch_size: int = 2048,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Heatmap of the correlations between the groups' mean attention profiles.

    The mean attention of every group is computed by streaming over the cells; groups are
    ordered by hierarchical clustering of the correlation distance (1 - r) and the dendrogram
    is drawn above the heatmap, as in Fig. 2 of the N-ACT paper.

    Parameters
    ----------
    adata
        Annotated data matrix with per-cell attention in ``adata.obsm[attention_key]``.
    groupby
        Column of ``adata.obs`` with the groups. With `None` the per-class means that the model
        stored in ``adata.varm["nact_attention_mean"]`` are used.
    attention_key
        Key of the per-cell attention in ``adata.obsm``.
    method
        ``"pearson"`` or ``"spearman"`` correlation over genes.
    cluster
        Order the groups by hierarchical clustering and draw the dendrogram.
    linkage_method
        Linkage method of :func:`scipy.cluster.hierarchy.linkage`.
    cmap
        Colour map of the heatmap.
    vmin, vmax
        Colour limits; by default symmetric around 0 and covering all off-diagonal values.
        The diagonal (1 by definition) is drawn grey, outside the colour scale, so that no
        pair of groups looks as correlated as a group with itself.
    batch_size
        Number of cells read at once.
    ax
        Axes to draw the heatmap in; the dendrogram and colour bar are appended next to it.
    figsize
        Figure size when ``ax`` is `None`.
    show
        Show the figure; `None` follows ``scanpy.settings.autoshow``.
    save
        Path to save the figure to.

    Returns
    -------
    The heatmap axes (`None` if shown). The correlation matrix in plotting order is
    ``ax.images[0].get_array()`` (a masked array: the diagonal is masked, its values kept).
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"`method` must be 'pearson' or 'spearman', got {method!r}.")
    if groupby is None:
        means = _stored_means(adata)
        label = NACTKeys.ATTENTION_MEAN
    else:
        means, _ = _group_means(adata, groupby, attention_key, batch_size)
        label = groupby
    if means.shape[1] < 2:
        raise ValueError(f"Need at least two groups to correlate, found {means.shape[1]}.")
    values = means.to_numpy(dtype=np.float64)
    if method == "spearman":
        values = stats.rankdata(values, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(values.T)
    undefined = np.isnan(corr)
    if undefined.any():
        logger.warning("Some groups have constant mean attention; their correlations are set to 0.")
        corr[undefined] = 0.0
        np.fill_diagonal(corr, 1.0)
    names = [str(column) for column in means.columns]

    order = np.arange(len(names))
    linkage = None
    if cluster:
        distance = np.clip(1.0 - corr, 0.0, 2.0)
        np.fill_diagonal(distance, 0.0)
        distance = (distance + distance.T) / 2
        linkage = hierarchy.linkage(squareform(distance, checks=False), method=linkage_method)
        order = hierarchy.leaves_list(linkage)
    corr = corr[np.ix_(order, order)]
    names = [names[i] for i in order]

    n = len(names)
    if ax is None:
        size = figsize or (max(4.0, 0.35 * n + 2.5), max(3.5, 0.35 * n + 2.0))
        _, ax = plt.subplots(figsize=size)
    if vmin is None or vmax is None:
        off_diagonal = corr[~np.eye(n, dtype=bool)]
        limit = float(np.max(np.abs(off_diagonal))) if off_diagonal.size else 1.0
        limit = limit if limit > 0 else 1.0
        vmin = -limit if vmin is None else vmin
        vmax = limit if vmax is None else vmax
    # the diagonal (1 by definition) lies above a scale fitted to the off-diagonal values; drawn
    # clipped to the top colour it would look like the strongest pair, so it is masked (grey)
    shown = np.ma.masked_array(corr, mask=np.eye(n, dtype=bool))
    colours = plt.get_cmap(cmap).with_extremes(bad=DIAGONAL_COLOUR)
    image = ax.imshow(shown, cmap=colours, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(n), labels=names, rotation=90)
    ax.set_yticks(np.arange(n), labels=names)
    ax.set_xlabel(label)
    ax.set_ylabel(label)

    divider = make_axes_locatable(ax)
    colorbar_ax = divider.append_axes("right", size=0.15, pad=0.1)
    ax.figure.colorbar(image, cax=colorbar_ax, label=f"{method.capitalize()} correlation of mean attention")
    without_grid(ax, colorbar_ax)
    if linkage is not None:
        dendrogram_ax = divider.append_axes("top", size=0.6, pad=0.05)
        hierarchy.dendrogram(
            linkage, ax=dendrogram_ax, no_labels=True, color_threshold=0, link_color_func=lambda _: "black"
        )
        dendrogram_ax.set_xlim(0, 10 * n)
        dendrogram_ax.set_axis_off()
    return finish_plot(ax, show=show, save=save)


def salient_genes(
    adata: AnnData,
    groupby: str | None = None,
    *,
    key: str = SalientKeys.SALIENT_GENES,
    groups: Sequence[str] | None = None,
    n_genes: int = 10,
    kind: Literal["dotplot", "heatmap"] = "dotplot",
    gene_symbols: str | None = None,
    standard_scale: Literal["var"] | None = None,
    cmap: str = "Reds",
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Dot plot or heatmap of the salient genes of each group.

    Columns are the top ``n_genes`` genes of each selected group (blocks labelled by group at
    the top), rows are all groups of the record, so specific genes show up as a block diagonal.
    The colour is the ranking score of the gene in the row's group (TF-IDF x mean attention, or
    mean attention when the record was computed with ``tfidf=False``); in the dot plot the dot
    size is the fraction of the row group's cells that have the gene among their most attended
    genes (TF).

    Parameters
    ----------
    adata
        Annotated data matrix with a record of :func:`scsalient.tl.salient_genes` in
        ``adata.uns[key]``.
    groupby
        Optional check: the ``groupby`` the record must have been computed for.
    key
        Key of the record in ``adata.uns``.
    groups
        Groups whose genes are shown (default: all).
    n_genes
        Number of genes per group.
    kind
        ``"dotplot"`` or ``"heatmap"``.
    gene_symbols
        Column of ``adata.var`` used to label the genes.
    standard_scale
        ``"var"`` scales the colour of each gene (column) to [0, 1].
    cmap
        Colour map.
    ax
        Axes to draw in.
    figsize
        Figure size when ``ax`` is `None`.
    show
        Show the figure; `None` follows ``scanpy.settings.autoshow``.
    save
        Path to save the figure to.

    Returns
    -------
    The axes (`None` if shown).
    """
    if kind not in ("dotplot", "heatmap"):
        raise ValueError(f"`kind` must be 'dotplot' or 'heatmap', got {kind!r}.")
    if standard_scale not in (None, "var"):
        raise ValueError(f"`standard_scale` must be None or 'var', got {standard_scale!r}.")
    if not isinstance(n_genes, int | np.integer) or n_genes < 1:
        raise ValueError(f"`n_genes` must be a positive integer, got {n_genes!r}.")
    record = _salient_record(adata, key)
    params = record.get("params", {})
    if groupby is not None and params.get("groupby") not in (None, groupby):
        raise ValueError(
            f"adata.uns[{key!r}] was computed for groupby={params.get('groupby')!r}, not {groupby!r}."
        )
    all_groups = list(record["names"].dtype.names)
    shown = select_groups(groups, all_groups, key)

    blocks = {group: [str(gene) for gene in record["names"][group][:n_genes]] for group in shown}
    genes = [gene for block in blocks.values() for gene in block]
    tf = record["tf_all"]
    mean = record["mean_attention_all"]
    if params.get("tfidf", True):
        n_docs = _document_frequency(tf.to_numpy().T, float(params.get("min_frequency", 0.0)))
        idf = np.log(len(all_groups) / np.maximum(n_docs, 1)) * (n_docs > 0)
        full_score = tf * mean * idf[:, None]
        colour_label = "TF-IDF x mean attention"
    else:
        full_score = mean
        colour_label = "mean attention"
    colour = full_score.loc[genes, all_groups].to_numpy(dtype=np.float64).T  # groups x genes
    size = tf.loc[genes, all_groups].to_numpy(dtype=np.float64).T
    if standard_scale == "var":
        low, high = colour.min(axis=0), colour.max(axis=0)
        colour = np.divide(colour - low, high - low, out=np.zeros_like(colour), where=high > low)
        colour_label += " (scaled per gene)"
    labels = _gene_labels(adata, genes, gene_symbols)

    n_rows, n_cols = colour.shape
    if ax is None:
        size_in = figsize or (max(4.0, 0.3 * n_cols + 2.5), max(2.5, 0.35 * n_rows + 1.8))
        _, ax = plt.subplots(figsize=size_in)
    if kind == "heatmap":
        image = ax.imshow(colour, cmap=cmap, aspect="auto", interpolation="nearest")
        colorbar = ax.figure.colorbar(image, ax=ax, label=colour_label, fraction=0.05, pad=0.02)
    else:
        x, y = np.meshgrid(np.arange(n_cols), np.arange(n_rows))
        max_area = 200.0
        points = ax.scatter(
            x.ravel(),
            y.ravel(),
            s=size.ravel() * max_area,
            c=colour.ravel(),
            cmap=cmap,
            edgecolors="grey",
            linewidths=0.3,
        )
        colorbar = ax.figure.colorbar(points, ax=ax, label=colour_label, fraction=0.05, pad=0.02)
        ax.set_xlim(-0.5, n_cols - 0.5)
        ax.set_ylim(n_rows - 0.5, -0.5)
        handles = [
            Line2D([], [], marker="o", linestyle="", color="grey", markersize=np.sqrt(fraction * max_area))
            for fraction in (0.25, 0.5, 1.0)
        ]
        ax.legend(
            handles,
            ["25%", "50%", "100%"],
            title="cells listing\nthe gene",
            loc="upper left",
            bbox_to_anchor=(1.18, 1.0),
            frameon=False,
        )
    without_grid(ax, colorbar.ax)  # a grid would cross every cell, and every dot at its centre
    ax.set_xticks(np.arange(n_cols), labels=labels, rotation=90)
    ax.set_yticks(np.arange(n_rows), labels=all_groups)
    ax.set_ylabel(params.get("groupby") or "group")

    # group blocks: separators and labels on top
    edges = np.cumsum([len(block) for block in blocks.values()])
    for edge in edges[:-1]:
        ax.axvline(edge - 0.5, color="black", linewidth=0.8)
    centres = edges - np.array([len(block) for block in blocks.values()]) / 2 - 0.5
    top = ax.secondary_xaxis("top")
    top.set_xticks(centres, labels=list(blocks), rotation=90)
    top.tick_params(length=0)
    return finish_plot(ax, show=show, save=save)


def attention_embedding(
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    basis: str = "umap",
    attention_key: str = NACTKeys.ATTENTION,
    gene_symbols: str | None = None,
    ncols: int = 4,
    cmap: str = "viridis",
    vmax: float | None = None,
    point_size: float | None = None,
    sort_order: bool = True,
    batch_size: int = 2048,
    panel_size: tuple[float, float] = (4.0, 3.6),
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure | None:
    """Embedding coloured by each cell's attention to a gene, one panel per gene.

    Parameters
    ----------
    adata
        Annotated data matrix with per-cell attention in ``adata.obsm[attention_key]`` and the
        embedding in ``adata.obsm["X_" + basis]``.
    genes
        Gene names (``adata.var_names``, or values of ``adata.var[gene_symbols]``).
    basis
        Embedding name, e.g. ``"umap"`` (``"X_umap"`` also works).
    attention_key
        Key of the per-cell attention in ``adata.obsm``.
    gene_symbols
        Column of ``adata.var`` in which to look up ``genes``.
    ncols
        Number of panels per row.
    cmap
        Colour map.
    vmax
        Upper colour limit shared by all panels (default: each panel's maximum).
    point_size
        Marker size; default ``120000 / n_obs`` as in scanpy, within [0.5, 30].
    sort_order
        Draw cells with high attention on top.
    batch_size
        Number of cells read at once from on-disk attention.
    panel_size
        Width and height of each panel in inches.
    show
        Show the figure; `None` follows ``scanpy.settings.autoshow``.
    save
        Path to save the figure to.

    Returns
    -------
    The figure (`None` if shown); each gene's panel is titled with the gene name.
    """
    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("`genes` must name at least one gene.")
    _check_batch_size(batch_size)
    obsm_key = basis if basis.startswith("X_") else f"X_{basis}"
    if obsm_key not in adata.obsm:
        raise KeyError(
            f"No embedding in adata.obsm[{obsm_key!r}] (available: {list(adata.obsm.keys())}); compute it "
            "first, e.g. with scanpy.tl.umap, or pass `basis`."
        )
    coordinates = np.asarray(adata.obsm[obsm_key])[:, :2]
    attention = _get_attention(adata, attention_key)
    index = _gene_index(adata, genes, gene_symbols)
    values = _attention_columns(attention, index, batch_size)

    size = point_size if point_size is not None else float(np.clip(120000 / max(adata.n_obs, 1), 0.5, 30.0))
    figure, axes = panel_grid(len(genes), ncols=ncols, panel_size=panel_size)
    for column, (gene, ax) in enumerate(zip(genes, axes, strict=True)):
        colour = values[:, column]
        order = np.argsort(colour, kind="stable") if sort_order else np.arange(len(colour))
        points = ax.scatter(
            coordinates[order, 0],
            coordinates[order, 1],
            c=colour[order],
            s=size,
            cmap=cmap,
            vmin=0.0,
            vmax=vmax,
            linewidths=0,
            rasterized=True,
        )
        figure.colorbar(points, ax=ax, label="attention", fraction=0.05, pad=0.02)
        ax.set_title(gene)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{basis.removeprefix('X_').upper()}1")
        ax.set_ylabel(f"{basis.removeprefix('X_').upper()}2")
    return finish_plot(figure, show=show, save=save)


# --------------------------------------------------------------------------------------------
# helpers


def _stored_means(adata: AnnData) -> pd.DataFrame:
    key = NACTKeys.ATTENTION_MEAN
    if key not in adata.varm:
        raise KeyError(
            f"adata.varm has no {key!r}; pass `groupby` to compute group means from the per-cell attention."
        )
    means = adata.varm[key]
    if isinstance(means, pd.DataFrame):
        return means
    means = np.asarray(means)
    return pd.DataFrame(means, index=adata.var_names, columns=[str(i) for i in range(means.shape[1])])


def _salient_record(adata: AnnData, key: str) -> dict[str, Any]:
    if key not in adata.uns:
        raise KeyError(f"adata.uns has no {key!r}; run scsalient.tl.salient_genes first.")
    record = adata.uns[key]
    missing = [field for field in ("names", "tf_all", "mean_attention_all") if field not in record]
    if missing:
        raise ValueError(
            f"adata.uns[{key!r}] lacks {missing}; plot a record written by scsalient.tl.salient_genes."
        )
    return record


def _gene_labels(adata: AnnData, genes: list[str], gene_symbols: str | None) -> list[str]:
    if gene_symbols is None:
        return genes
    if gene_symbols not in adata.var.columns:
        raise KeyError(f"adata.var has no column {gene_symbols!r}.")
    symbols = adata.var[gene_symbols].astype(str)
    return [symbols.get(gene, gene) for gene in genes]


def _gene_index(adata: AnnData, genes: list[str], gene_symbols: str | None) -> np.ndarray:
    if gene_symbols is None:
        names = adata.var_names
        where = "adata.var_names"
    else:
        if gene_symbols not in adata.var.columns:
            raise KeyError(f"adata.var has no column {gene_symbols!r}.")
        names = pd.Index(adata.var[gene_symbols].astype(str))
        where = f"adata.var[{gene_symbols!r}]"
    index = names.get_indexer(genes) if names.is_unique else np.array([_first(names, g) for g in genes])
    missing = [gene for gene, i in zip(genes, index, strict=True) if i < 0]
    if missing:
        raise KeyError(f"Genes {missing} are not in {where}.")
    return np.asarray(index, dtype=np.int64)


def _first(names: pd.Index, gene: str) -> int:
    hits = np.flatnonzero(names == gene)
    return int(hits[0]) if hits.size else -1


def _attention_columns(attention: Any, index: np.ndarray, batch_size: int) -> np.ndarray:
    """Dense cells x len(index) array of the attention to the selected genes."""
    if isinstance(attention, np.ndarray):
        return np.asarray(attention[:, index], dtype=np.float64)
    if sparse.issparse(attention):
        return np.asarray(sparse.csr_matrix(attention)[:, index].toarray(), dtype=np.float64)
    blocks = []
    for start in range(0, attention.shape[0], batch_size):
        block = attention[start : start + batch_size]
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        blocks.append(block[:, index].astype(np.float64))
    return np.concatenate(blocks, axis=0)
