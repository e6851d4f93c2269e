"""Shared show / save / return behaviour of the plotting functions."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TypeVar

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

_Plot = TypeVar("_Plot", Axes, Figure)


def without_grid(*axes: Axes) -> None:
    """Switch the grid of ``axes`` off (heatmaps and their colour bars).

    Styles such as scanpy's ``set_figure_params`` turn ``axes.grid`` on; grid lines drawn over
    heatmap cells or a colour bar cross the values they show.
    """
    for ax in axes:
        ax.grid(False)


def finish_plot(plot: _Plot, *, show: bool | None = None, save: str | Path | None = None) -> _Plot | None:
    """Save and/or show a figure, scanpy style, and return what the caller should return.

    Parameters
    ----------
    plot
        The :class:`~matplotlib.axes.Axes` or :class:`~matplotlib.figure.Figure` that the plotting
        function returns.
    show
        Show the figure with :func:`matplotlib.pyplot.show`. `None` follows
        ``scanpy.settings.autoshow``.
    save
        Write the figure to this path (the format follows the extension) before showing it.

    Returns
    -------
    ``plot``, or `None` when the figure was shown.
    """
    figure = plot if isinstance(plot, Figure) else plot.get_figure()
    if save is not None:
        path = Path(save)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, bbox_inches="tight")
        logger.info("Saved figure to %s.", path)
    if show is None:
        show = _autoshow()
    if show:
        plt.show()
        return None
    return plot


def _autoshow() -> bool:
    try:
        import scanpy as sc
    except ImportError:  # pragma: no cover - scanpy is a dependency
        return True
    return bool(sc.settings.autoshow)


def panel_grid(n_panels: int, *, ncols: int, panel_size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A figure with ``n_panels`` axes on a grid of at most ``ncols`` columns; extra cells are hidden."""
    if n_panels < 1:
        raise ValueError("Nothing to plot: no panels.")
    if ncols < 1:
        raise ValueError(f"`ncols` must be a positive integer, got {ncols!r}.")
    ncols = min(ncols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    figure, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        figure.delaxes(ax)
    return figure, flat[:n_panels]
