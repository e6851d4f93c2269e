"""How far predicted probabilities can be trusted: calibration error and separation of unseen types."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _top_probability(probabilities: np.ndarray | pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be cells x classes, got shape {probs.shape}.")
    return probs.max(axis=1), probs.argmax(axis=1)


def reliability_table(
    probabilities: np.ndarray | pd.DataFrame,
    truth: np.ndarray,
    classes: np.ndarray | None = None,
    n_bins: int = 15,
) -> pd.DataFrame:
    """Cells grouped by their top probability into equal-width bins, with the accuracy of each bin.

    Parameters
    ----------
    probabilities
        Cells x classes; a DataFrame's columns name the classes.
    truth
        True label of each cell.
    classes
        Class names in the order of the columns (taken from a DataFrame's columns if omitted).
    n_bins
        Number of equal-width bins of the top probability over [0, 1].

    Returns
    -------
    One row per bin with ``lower``, ``upper``, ``n_cells``, ``confidence`` (mean top
    probability) and ``accuracy`` (share of cells whose top class is their true label); empty
    bins have NaN confidence and accuracy.
    """
    if classes is None:
        if not isinstance(probabilities, pd.DataFrame):
            raise ValueError("Give classes, or probabilities as a DataFrame whose columns are the classes.")
        classes = probabilities.columns.to_numpy()
    top, arg = _top_probability(probabilities)
    truth = np.asarray(truth).astype(str)
    if len(truth) != len(top):
        raise ValueError(f"truth has {len(truth)} cells, probabilities {len(top)}.")
    correct = np.asarray(classes).astype(str)[arg] == truth
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, top, side="right") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        members = which == b
        n = int(members.sum())
        rows.append(
            {
                "lower": edges[b],
                "upper": edges[b + 1],
                "n_cells": n,
                "confidence": float(top[members].mean()) if n else np.nan,
                "accuracy": float(correct[members].mean()) if n else np.nan,
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(
    probabilities: np.ndarray | pd.DataFrame,
    truth: np.ndarray,
    classes: np.ndarray | None = None,
    n_bins: int = 15,
) -> float:
    r"""Expected calibration error of the top probability :cite:p:`Guo2017`.

    .. math::

        \mathrm{ECE} = \sum_b \frac{n_b}{n} \, |\mathrm{accuracy}_b - \mathrm{confidence}_b|

    over ``n_bins`` equal-width bins of the top probability (15 by default, as in Guo et al.).

    Parameters
    ----------
    probabilities
        Cells x classes.
    truth
        True label of each cell (cells of a type the model never saw count as wrong).
    classes
        Class names of the columns (a DataFrame's columns if omitted).
    n_bins
        Number of bins.

    Returns
    -------
    The ECE, between 0 (calibrated) and 1.
    """
    table = reliability_table(probabilities, truth, classes, n_bins)
    filled = table[table["n_cells"] > 0]
    weights = filled["n_cells"] / filled["n_cells"].sum()
    return float((weights * (filled["accuracy"] - filled["confidence"]).abs()).sum())


def unseen_type_auroc(confidence: np.ndarray, is_unseen: np.ndarray) -> float:
    """AUROC with which a low confidence separates cells of unseen types from the known ones.

    Parameters
    ----------
    confidence
        Per-cell confidence (e.g. the top calibrated probability); lower means less sure.
    is_unseen
        ``True`` for cells whose type the reference did not contain.

    Returns
    -------
    The probability that an unseen-type cell has a lower confidence than a known-type cell
    (ties count one half); 0.5 is chance, 1 perfect separation.
    """
    from scipy.stats import rankdata

    confidence = np.asarray(confidence, dtype=np.float64)
    is_unseen = np.asarray(is_unseen, dtype=bool)
    n_unseen, n_known = int(is_unseen.sum()), int((~is_unseen).sum())
    if n_unseen == 0 or n_known == 0:
        raise ValueError("unseen_type_auroc needs cells of both unseen and known types.")
    ranks = rankdata(-confidence)  # low confidence -> high rank
    return float((ranks[is_unseen].sum() - n_unseen * (n_unseen + 1) / 2) / (n_unseen * n_known))
