"""Reliability diagram: how often predictions of a given confidence are right."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scsalient.metrics import expected_calibration_error, reliability_table

from ._utils import finish_plot

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes


def reliability_diagram(
    adata: AnnData,
    labels_key: str,
    probabilities_key: str = "nact_probabilities",
    *,
    n_bins: int = 15,
    ax: Axes | None = None,
    title: str | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Accuracy of the predictions against their confidence, in bins of the top probability.

    A calibrated model's bars follow the diagonal: of the cells predicted with probability
    0.8, 80% are right. Bars below the diagonal mean overconfidence. The bar widths are the
    bins; the grey histogram underneath shows how many cells fall in each. The expected
    calibration error (:func:`scsalient.metrics.expected_calibration_error`) is in the title.

    Parameters
    ----------
    adata
        Annotated data with the class probabilities in ``obsm[probabilities_key]`` (a
        DataFrame whose columns are the classes, as written by ``annotate``) and the true labels
        in ``obs[labels_key]``.
    labels_key
        Column of ``obs`` with the true labels. Cells whose label is not among the classes
        count as wrong (a type the model never saw).
    probabilities_key
        Key of the probabilities in ``obsm`` (``"nact_probabilities"`` or ``"sctab_probabilities"``).
    n_bins
        Equal-width bins of the top probability.
    ax
        Axes to draw into; a new figure otherwise.
    title
        Title; by default the ECE.
    show
        Show the figure (``None``: scanpy's ``autoshow``).
    save
        Write the figure to this path.

    Returns
    -------
    The axes, unless the figure was shown.
    """
    if labels_key not in adata.obs:
        raise KeyError(f"labels_key {labels_key!r} is not a column of adata.obs.")
    if probabilities_key not in adata.obsm:
        raise KeyError(
            f"No probabilities in adata.obsm[{probabilities_key!r}]; run the model's annotate() first."
        )
    probabilities = adata.obsm[probabilities_key]
    if not isinstance(probabilities, pd.DataFrame):
        raise TypeError(
            f"adata.obsm[{probabilities_key!r}] must be a DataFrame whose columns are the classes."
        )
    valid = ~probabilities.isna().any(axis=1).to_numpy()
    probabilities = probabilities[valid]
    truth = adata.obs[labels_key].astype(str).to_numpy()[valid]
    table = reliability_table(probabilities, truth, n_bins=n_bins)
    ece = expected_calibration_error(probabilities, truth, n_bins=n_bins)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.2))
    width = 1.0 / n_bins
    filled = table["n_cells"] > 0
    ax.bar(
        table.loc[filled, "lower"],
        table.loc[filled, "accuracy"],
        width=width,
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy",
    )
    share = table["n_cells"] / max(int(table["n_cells"].sum()), 1)
    ax.bar(table["lower"], share, width=width, align="edge", color="0.7", alpha=0.6, label="share of cells")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.3", linewidth=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.grid(False)
    ax.legend(loc="upper left", frameon=False, fontsize="small")
    ax.set_title(title if title is not None else f"ECE {ece:.3f} ({int(np.sum(valid))} cells)")
    return finish_plot(ax, show=show, save=save)
