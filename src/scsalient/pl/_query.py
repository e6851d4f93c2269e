"""Plot of the marker-database query results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.figure import Figure

from scsalient._constants import SalientKeys
from scsalient._utils import select_groups

from ._utils import finish_plot, panel_grid

_SCORE_LABELS = {"likelihood": "log-likelihood", "enrichment": "-log10 p-value", "auc": "rank test z-score"}


def cell_type_query(
    adata: AnnData,
    *,
    key: str = SalientKeys.CELL_TYPE_QUERY,
    groups: Sequence[str] | None = None,
    n_types: int = 5,
    ncols: int = 4,
    color: str = "tab:blue",
    panel_size: tuple[float, float] = (4.0, 2.6),
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure | None:
    """Horizontal bars of the best candidate cell types of each group.

    One panel per group with its ``n_types`` highest-ranked types (rank 1 on top) and their
    scores; each bar is annotated with the number of query genes among the type's markers.

    Parameters
    ----------
    adata
        Annotated data matrix with the results of :func:`scsalient.tl.query_cell_types` in
        ``adata.uns[key]``.
    key
        Key of the query results in ``adata.uns``.
    groups
        Groups to show (default: all queried groups).
    n_types
        Number of candidate types per group.
    ncols
        Number of panels per row.
    color
        Bar colour.
    panel_size
        Width and height of each panel in inches.
    show
        Show the figure; `None` follows ``scanpy.settings.autoshow``.
    save
        Path to save the figure to.

    Returns
    -------
    The figure (`None` if shown); each group's panel is titled with the group name.
    """
    if not isinstance(n_types, int | np.integer) or n_types < 1:
        raise ValueError(f"`n_types` must be a positive integer, got {n_types!r}.")
    if key not in adata.uns:
        raise KeyError(f"adata.uns has no {key!r}; run scsalient.tl.query_cell_types first.")
    entry = adata.uns[key]
    if not isinstance(entry, Mapping) or "results" not in entry:
        raise ValueError(f"adata.uns[{key!r}] is not a query_cell_types result (no 'results' table).")
    results = entry["results"]
    method = entry.get("params", {}).get("method", "")
    available = [str(group) for group in dict.fromkeys(results["group"].astype(str))]
    groups = select_groups(groups, available, key)

    figure, axes = panel_grid(len(groups), ncols=ncols, panel_size=panel_size)
    group_labels = results["group"].astype(str)
    for group, ax in zip(groups, axes, strict=True):
        top = results.loc[group_labels == group].sort_values("rank").head(n_types)
        scores = top["score"].to_numpy(dtype=np.float64)
        low, high = float(np.min(scores)), float(np.max(scores))
        base = 0.0 if low >= 0 else low - 0.05 * ((high - low) or 1.0)
        y = np.arange(len(top))[::-1]
        ax.barh(y, scores - base, left=base, color=color)
        for position, score, overlap in zip(y, scores, top["n_overlap"], strict=True):
            ax.annotate(
                f" {int(overlap)}",
                (score, position),
                va="center",
                ha="left",
                fontsize="small",
                annotation_clip=False,
            )
        ax.set_yticks(y, labels=top["cell_type"].astype(str).tolist())
        ax.set_xlabel(_SCORE_LABELS.get(method, "score"))
        ax.set_title(group)
        ax.margins(x=0.15)
    return finish_plot(figure, show=show, save=save)
