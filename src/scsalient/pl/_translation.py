"""Plots of translated modalities and of gene-peak links."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import sparse

from scsalient._constants import TranslatorKeys
from scsalient._utils import log1p_cp10k_block
from scsalient.metrics import feature_means
from scsalient.metrics._translation import _mean_pearson

from ._utils import finish_plot, panel_grid

if TYPE_CHECKING:
    from mudata import MuData


def translation_scatter(
    true: AnnData,
    pred: AnnData,
    modality: Literal["rna", "atac"] = "rna",
    features: Sequence[str] | None = None,
    *,
    reference: AnnData | None = None,
    ncols: int = 4,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | Figure | None:
    """Predicted vs observed values of a translated modality.

    Without ``features``: one point per feature, its observed mean over the cells (log1p CP10k
    for RNA, accessible fraction for ATAC) against its mean prediction. The title gives the mean
    per-cell and per-feature Pearson correlations of the predictions with the observed values,
    each beside that of the per-feature-mean control (every cell predicted as the mean of
    ``reference``, or of ``true`` itself without one). A correlation of the means pooled over
    cells is not shown: the per-feature means alone reach r ~ 0.99 on real data, so it says
    nothing about the translation. With ``features``: one panel per feature; RNA shows each
    cell's observed log1p CP10k against its prediction, ATAC the predicted probability of the
    cells where the peak was observed closed and open.

    Parameters
    ----------
    true
        Observed data of the target modality (RNA counts; ATAC counts or 0/1), cells x features.
    pred
        Output of :meth:`scsalient.model.Translator.translate` for the same cells.
    modality
        The target modality, ``"rna"`` or ``"atac"``.
    features
        Features to plot one by one; ``None`` for the per-feature summary.
    reference
        Observed data of the target modality for the training cells, whose per-feature means
        are the control of the summary (:func:`scsalient.metrics.translation_controls`);
        ``None`` uses the means of ``true`` itself, a control that has seen the test cells.
    ncols
        Panels per row with ``features``.
    ax
        Axes to draw the summary on (without ``features`` only).
    show
        Show the figure; `None` follows ``scanpy.settings.autoshow``.
    save
        Path to save the figure to.

    Returns
    -------
    The Axes of the summary or the Figure of the panels, or `None` when shown.
    """
    common = true.var_names.intersection(pred.var_names, sort=False)
    if len(common) == 0:
        raise ValueError("true and pred share no features (var_names).")
    if not true.obs_names.equals(pred.obs_names):
        raise ValueError("true and pred must hold the same cells in the same order (obs_names).")
    if features is None:
        if ax is None:
            _, ax = plt.subplots(figsize=(4.2, 4))
        values = _observed(true, modality)[:, true.var_names.get_indexer(common)]
        prediction = _dense(pred[:, common].X)
        source = true if reference is None else reference
        missing = common.difference(source.var_names)
        if len(missing):
            raise KeyError(f"reference lacks {len(missing)} of the features, e.g. {list(missing[:3])}.")
        control = feature_means(source.X, modality)[source.var_names.get_indexer(common)]
        scores = _correlations(values, prediction, control)
        observed, predicted = values.mean(axis=0), prediction.mean(axis=0)
        ax.scatter(observed, predicted, s=6, alpha=0.6, linewidths=0)
        low = float(min(observed.min(), predicted.min()))
        high = float(max(observed.max(), predicted.max()))
        ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
        unit = "log1p CP10k" if modality == "rna" else "accessible fraction"
        what = "genes" if modality == "rna" else "peaks"
        ax.set_xlabel(f"observed mean ({unit})")
        ax.set_ylabel("predicted mean")
        ax.set_title(
            f"{len(common)} {what}, {true.n_obs} cells\n"
            f"per-cell r {scores['per_cell']:.2f} (mean control {scores['per_cell_control']:.2f})\n"
            f"per-{what[:-1]} r {scores['per_feature']:.2f} "
            f"(mean control {scores['per_feature_control']:.2f})",
            fontsize=9,
        )
        return finish_plot(ax, show=show, save=save)
    features = [features] if isinstance(features, str) else list(features)
    missing = [f for f in features if f not in common]
    if missing:
        raise KeyError(f"Features {missing[:5]} are not in both true and pred.")
    figure, axes = panel_grid(len(features), ncols=ncols, panel_size=(3.0, 2.8))
    observed = _observed(true, modality)[:, true.var_names.get_indexer(features)]
    predicted = np.asarray(pred[:, features].X, dtype=np.float32)
    for i, (feature, panel) in enumerate(zip(features, axes)):
        if modality == "rna":
            panel.scatter(observed[:, i], predicted[:, i], s=4, alpha=0.5, linewidths=0)
            panel.set_xlabel("observed log1p CP10k")
            panel.set_ylabel("predicted")
        else:
            is_open = observed[:, i] > 0
            groups = [predicted[~is_open, i], predicted[is_open, i]]
            panel.boxplot(groups, showfliers=False)
            panel.set_xticks([1, 2], [f"closed\n(n={len(groups[0])})", f"open\n(n={len(groups[1])})"])
            panel.set_ylabel("predicted probability")
        panel.set_title(feature, fontsize=9)
    return finish_plot(figure, show=show, save=save)


def peak_gene_links(
    mdata: MuData,
    features: Sequence[str] | None = None,
    direction: Literal["rna_to_atac", "atac_to_rna"] = "rna_to_atac",
    n_top: int = 10,
    *,
    truth: pd.DataFrame | None = None,
    key: str = TranslatorKeys.UNS,
    ncols: int = 3,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure | None:
    """Bar charts of the strongest links of chosen peaks (or genes).

    Reads the table :func:`scsalient.tl.peak_gene_links` stored in ``mdata.uns[key]``. For
    ``direction="rna_to_atac"`` each panel is a peak and its bars the genes its predicted
    accessibility is most attributed to; for ``"atac_to_rna"`` each panel is a gene and its bars
    the peaks. Bars of activating links point right, repressing ones left.

    Parameters
    ----------
    mdata
        MuData with the stored links.
    features
        Peaks (``"rna_to_atac"``) or genes (``"atac_to_rna"``) to show; ``None`` for the six with
        the strongest top link.
    direction
        Which attributions to show.
    n_top
        Bars per panel.
    truth
        Optional known links (columns ``gene`` and ``peak``); their bars are highlighted.
    key
        Key of the links in ``mdata.uns``.
    ncols
        Panels per row.
    show
        Show the figure; `None` follows ``scanpy.settings.autoshow``.
    save
        Path to save the figure to.

    Returns
    -------
    The Figure, or `None` when shown.
    """
    if key not in mdata.uns or TranslatorKeys.LINKS not in mdata.uns[key]:
        raise KeyError(f"No links in mdata.uns[{key!r}]; run scsalient.tl.peak_gene_links first.")
    links = mdata.uns[key][TranslatorKeys.LINKS]
    links = links[links["direction"] == direction]
    if links.empty:
        raise ValueError(f"The stored links hold no {direction!r} attributions.")
    target, source = ("peak", "gene") if direction == "rna_to_atac" else ("gene", "peak")
    if features is None:
        best = links[links["rank"] == 1].sort_values("score", ascending=False)
        features = best[target].head(6).tolist()
    features = [features] if isinstance(features, str) else list(features)
    missing = [f for f in features if f not in set(links[target])]
    if missing:
        raise KeyError(f"No stored links for {missing[:5]}; pass them to tl.peak_gene_links.")
    known = set() if truth is None else set(zip(truth["gene"], truth["peak"]))
    figure, axes = panel_grid(len(features), ncols=ncols, panel_size=(3.6, 0.3 * n_top + 1.0))
    for feature, panel in zip(features, axes):
        rows = links[links[target] == feature].sort_values("rank").head(n_top)[::-1]
        values = rows["score"].to_numpy() * rows["sign"].to_numpy()
        colours = ["tab:red" if (g, p) in known else "tab:blue" for g, p in zip(rows["gene"], rows["peak"])]
        panel.barh(np.arange(len(rows)), values, color=colours)
        panel.set_yticks(np.arange(len(rows)), rows[source].tolist(), fontsize=8)
        panel.axvline(0, color="grey", lw=0.6)
        panel.set_title(feature, fontsize=9)
        panel.set_xlabel("signed attribution")
    return finish_plot(figure, show=show, save=save)


def _correlations(observed: np.ndarray, predicted: np.ndarray, control: np.ndarray) -> dict[str, float]:
    """Mean per-cell and per-feature Pearson r of a prediction and of the per-feature-mean control.

    Parameters
    ----------
    observed
        Observed values, cells x features (log1p CP10k, or 0/1 accessibility).
    predicted
        Predictions, same shape.
    control
        Per-feature means predicted for every cell (the control's per-feature r is 0: it is
        constant over cells).

    Returns
    -------
    dict with ``per_cell``, ``per_feature``, ``per_cell_control`` and ``per_feature_control``.
    """
    constant = np.broadcast_to(np.asarray(control, dtype=np.float32), observed.shape)
    return {
        "per_cell": _mean_pearson(observed, predicted, axis=1),
        "per_feature": _mean_pearson(observed, predicted, axis=0),
        "per_cell_control": _mean_pearson(observed, constant, axis=1),
        "per_feature_control": _mean_pearson(observed, constant, axis=0),
    }


def _observed(true: AnnData, modality: str) -> np.ndarray:
    """log1p CP10k (each cell normalised over all its genes) or 0/1 accessibility."""
    if modality == "rna":
        return log1p_cp10k_block(_dense(true.X))
    return (_dense(true.X) > 0).astype(np.float32)


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)
