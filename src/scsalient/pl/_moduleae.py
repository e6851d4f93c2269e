"""Plots of ModuleAE read-outs: gene-set impact heatmaps and unit activity on an embedding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy.cluster import hierarchy

from scsalient._constants import ModuleAEKeys

from ._utils import finish_plot, panel_grid, without_grid


def gene_set_impact(
    adata: AnnData,
    kind: Literal["impact", "difference"] = "impact",
    group: str | None = None,
    *,
    key: str = ModuleAEKeys.UNS,
    cluster: bool = True,
    linkage_method: str = "average",
    cmap: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Heatmap of gene-set impact on the representation units (gene sets x units).

    Rows and columns are ordered by hierarchical clustering (Euclidean distance), so gene sets
    read by the same units and units reading the same sets sit together.

    Parameters
    ----------
    adata
        Annotated data with a record of :func:`scsalient.tl.gene_set_impact` in
        ``adata.uns[key]``.
    kind
        ``"impact"``: the scaled impact in [0, 1]; ``"difference"``: a group's impact minus the
        reference's, in [-1, 1].
    group
        With ``kind="impact"``, show this group's impact instead of that over all cells; with
        ``kind="difference"``, the group compared with the reference (needed only when
        several groups were compared).
    key
        Key of the record in ``adata.uns``.
    cluster
        Order rows and columns by hierarchical clustering.
    linkage_method
        Linkage method of :func:`scipy.cluster.hierarchy.linkage`.
    cmap
        Colour map; ``"Reds"`` for impact and ``"RdBu_r"`` for differences by default.
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
    The axes (`None` if shown). The plotted matrix is ``ax.images[0].get_array()``; its row and
    column labels are the tick labels.
    """
    if kind not in ("impact", "difference"):
        raise ValueError(f"`kind` must be 'impact' or 'difference', got {kind!r}.")
    matrix, title = _impact_matrix(adata, key, kind, group)
    if matrix.empty:
        raise ValueError("Nothing to plot: the impact matrix is empty.")
    if cluster:
        matrix = _cluster(matrix, linkage_method)
    n_rows, n_cols = matrix.shape
    if ax is None:
        size = figsize or (max(4.0, 0.22 * n_cols + 4.5), max(3.0, 0.22 * n_rows + 1.5))
        _, ax = plt.subplots(figsize=size)
    if kind == "difference":
        image = ax.imshow(
            matrix.to_numpy(), cmap=cmap or "RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest"
        )
    else:
        image = ax.imshow(
            matrix.to_numpy(), cmap=cmap or "Reds", vmin=0, vmax=1, aspect="auto", interpolation="nearest"
        )
    ax.set_xticks(np.arange(n_cols), labels=[str(c) for c in matrix.columns], rotation=90)
    ax.set_yticks(np.arange(n_rows), labels=[str(r) for r in matrix.index])
    ax.set_xlabel("unit")
    ax.set_title(title)
    colorbar = ax.figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label=title.split(":")[0])
    without_grid(ax, colorbar.ax)
    return finish_plot(ax, show=show, save=save)


def unit_activity(
    adata: AnnData,
    unit: int | str | Sequence[int | str],
    basis: str = "umap",
    *,
    latent_key: str = ModuleAEKeys.LATENT,
    ncols: int = 4,
    cmap: str = "viridis",
    point_size: float | None = None,
    panel_size: tuple[float, float] = (4.0, 3.6),
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure | None:
    """Embedding coloured by the activity of representation units, one panel per unit.

    Parameters
    ----------
    adata
        Annotated data with the representation in ``adata.obsm[latent_key]`` (from
        :meth:`scsalient.model.ModuleAE.get_latent_representation`) and the embedding in
        ``adata.obsm["X_" + basis]``.
    unit
        Unit index, unit name (``"unit_3"``), or a list of them.
    basis
        Embedding name, e.g. ``"umap"`` (``"X_umap"`` also works).
    latent_key
        Key of the cells x units representation in ``adata.obsm``.
    ncols
        Number of panels per row.
    cmap
        Colour map.
    point_size
        Marker size; default ``120000 / n_obs`` as in scanpy, within [0.5, 30].
    panel_size
        Width and height of each panel in inches.
    show
        Show the figure; `None` follows ``scanpy.settings.autoshow``.
    save
        Path to save the figure to.

    Returns
    -------
    The figure (`None` if shown); each panel is titled with the unit's name.
    """
    units = [unit] if isinstance(unit, int | str | np.integer) else list(unit)
    if not units:
        raise ValueError("`unit` must name at least one unit.")
    obsm_key = basis if basis.startswith("X_") else f"X_{basis}"
    for needed in (obsm_key, latent_key):
        if needed not in adata.obsm:
            raise KeyError(
                f"No adata.obsm[{needed!r}] (available: {list(adata.obsm.keys())}). Store the representation "
                "with adata.obsm['X_moduleae'] = model.get_latent_representation() and compute the embedding "
                "(e.g. scanpy.tl.umap)."
            )
    latent = np.asarray(adata.obsm[latent_key])
    columns = [_unit_index(u, latent.shape[1]) for u in units]
    coordinates = np.asarray(adata.obsm[obsm_key])[:, :2]
    size = point_size if point_size is not None else float(np.clip(120000 / max(adata.n_obs, 1), 0.5, 30.0))
    figure, axes = panel_grid(len(columns), ncols=ncols, panel_size=panel_size)
    label = basis.removeprefix("X_").upper()
    for column, ax in zip(columns, axes, strict=True):
        colour = latent[:, column]
        order = np.argsort(colour, kind="stable")
        points = ax.scatter(
            coordinates[order, 0],
            coordinates[order, 1],
            c=colour[order],
            s=size,
            cmap=cmap,
            linewidths=0,
            rasterized=True,
        )
        figure.colorbar(points, ax=ax, label="activity", fraction=0.05, pad=0.02)
        ax.set_title(f"unit_{column}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{label}1")
        ax.set_ylabel(f"{label}2")
    return finish_plot(figure, show=show, save=save)


# --------------------------------------------------------------------------------------------
# helpers


def _impact_matrix(adata: AnnData, key: str, kind: str, group: str | None) -> tuple[pd.DataFrame, str]:
    if key not in adata.uns or not isinstance(adata.uns[key], dict):
        raise KeyError(f"adata.uns has no {key!r} record; run scsalient.tl.gene_set_impact first.")
    record = adata.uns[key]
    if kind == "impact":
        if group is None:
            if "impact" not in record:
                raise KeyError(f"adata.uns[{key!r}] has no 'impact'; pass `group` to show a group's impact.")
            return record["impact"], "impact: all cells"
        groups = record.get("impact_groups", {})
        if group not in groups:
            raise KeyError(
                f"Group {group!r} has no impact in adata.uns[{key!r}] (available: {list(groups)})."
            )
        return groups[group], f"impact: {group}"
    differences = record.get("difference", {})
    if not differences:
        raise KeyError(
            f"adata.uns[{key!r}] has no 'difference'; run scsalient.tl.gene_set_impact with `groupby` and "
            "two groups or a `reference`."
        )
    if group is None:
        if len(differences) > 1:
            raise ValueError(f"Several groups were compared; pass `group` (one of {list(differences)}).")
        group = next(iter(differences))
    if group not in differences:
        raise KeyError(f"Group {group!r} was not compared (available: {list(differences)}).")
    reference = record.get("impact_params", {}).get("reference", "reference")
    return differences[group], f"difference: {group} - {reference}"


def _cluster(matrix: pd.DataFrame, method: str) -> pd.DataFrame:
    values = matrix.to_numpy(dtype=np.float64)
    rows = hierarchy.leaves_list(hierarchy.linkage(values, method=method)) if values.shape[0] > 2 else None
    cols = hierarchy.leaves_list(hierarchy.linkage(values.T, method=method)) if values.shape[1] > 2 else None
    if rows is not None:
        matrix = matrix.iloc[rows]
    if cols is not None:
        matrix = matrix.iloc[:, cols]
    return matrix


def _unit_index(unit: int | str, n_units: int) -> int:
    if isinstance(unit, str):
        name = unit.removeprefix("unit_")
        if not name.isdigit():
            raise KeyError(f"Unit {unit!r} is not a unit name like 'unit_3'.")
        unit = int(name)
    if not 0 <= int(unit) < n_units:
        raise KeyError(f"Unit {unit} is out of range: the representation has {n_units} units.")
    return int(unit)
