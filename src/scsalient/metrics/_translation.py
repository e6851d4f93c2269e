"""Scores of predicted modalities (NeurIPS 2021 "predict modality" metrics) and their controls."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from sklearn.metrics import average_precision_score, roc_auc_score

from scsalient._utils import log1p_cp10k_block

Modality = Literal["rna", "atac"]


def translation_scores(
    true,
    pred,
    modality: Modality = "atac",
    *,
    true_layer: str | None = None,
) -> dict[str, float]:
    """Score a predicted modality against the observed one.

    RNA: the observed counts are turned into log1p(CP10k) (scanpy's default normalisation) and
    compared with ``pred``, which must be on the same scale (as returned by
    :meth:`~scsalient.model.Translator.translate`). ATAC: the observed accessibility is
    binarised (any count > 0 is 1) and ``pred`` holds probabilities or scores.

    Parameters
    ----------
    true
        Observed data, cells x features: an AnnData (``X`` or ``true_layer``) or a dense or
        sparse matrix. RNA: raw counts; ATAC: counts or 0/1.
    pred
        Predictions for the same cells and features, in the same order: an AnnData (``X``) or a
        matrix.
    modality
        ``"rna"`` or ``"atac"``: the modality predicted.
    true_layer
        Layer of ``true`` to read when it is an AnnData.

    Returns
    -------
    dict of floats. RNA: ``rmse`` (on log1p CP10k), ``pearson_per_cell`` and
    ``pearson_per_gene`` (means over cells and genes with non-constant values; constant
    predictions give 0). ATAC: ``auroc`` and ``auprc`` (pooled over all entries, scikit-learn),
    ``auroc_per_cell`` and ``auprc_per_cell`` (means over cells with both classes), ``rmse``
    (against the 0/1 target, the NeurIPS 2021 ranking metric), ``pearson_per_cell`` and
    ``fraction_accessible`` (the share of 1s, the AUPRC of a random scorer).

    Raises
    ------
    ValueError
        If the shapes differ, ``modality`` is unknown or the values are not finite.
    """
    if modality not in ("rna", "atac"):
        raise ValueError(f"modality must be 'rna' or 'atac', got {modality!r}.")
    y = _dense(true, true_layer)
    p = _dense(pred, None)
    if y.shape != p.shape:
        raise ValueError(f"true and pred have different shapes: {y.shape} vs {p.shape}.")
    if not np.isfinite(p).all():
        raise ValueError("pred contains NaN or infinite values.")
    if isinstance(true, AnnData) and isinstance(pred, AnnData):
        if not (true.obs_names.equals(pred.obs_names) and true.var_names.equals(pred.var_names)):
            raise ValueError("true and pred AnnData differ in obs_names or var_names (order included).")
    if modality == "rna":
        y = log1p_cp10k_block(y)
        return {
            "rmse": float(np.sqrt(np.mean((y - p) ** 2))),
            "pearson_per_cell": _mean_pearson(y, p, axis=1),
            "pearson_per_gene": _mean_pearson(y, p, axis=0),
        }
    y = (y > 0).astype(np.float32)
    per_cell_auroc, per_cell_auprc = [], []
    for yi, pi in zip(y, p):
        if 0 < yi.sum() < yi.size:
            per_cell_auroc.append(roc_auc_score(yi, pi))
            per_cell_auprc.append(average_precision_score(yi, pi))
    both = y.min() < y.max()
    return {
        "auroc": float(roc_auc_score(y.ravel(), p.ravel())) if both else float("nan"),
        "auprc": float(average_precision_score(y.ravel(), p.ravel())) if both else float("nan"),
        "auroc_per_cell": float(np.mean(per_cell_auroc)) if per_cell_auroc else float("nan"),
        "auprc_per_cell": float(np.mean(per_cell_auprc)) if per_cell_auprc else float("nan"),
        "rmse": float(np.sqrt(np.mean((y - p) ** 2))),
        "pearson_per_cell": _mean_pearson(y, p, axis=1),
        "fraction_accessible": float(y.mean()),
    }


def translation_controls(
    train, test, modality: Modality = "atac", *, layer: str | None = None
) -> pd.DataFrame:
    """Scores of the two controls every translation result should be read against.

    * ``all_zeros``: predicts 0 everywhere (no accessibility; zero expression).
    * ``feature_mean``: predicts, for every test cell, each feature's mean over the training
      cells (log1p CP10k for RNA, accessible fraction for ATAC).

    Parameters
    ----------
    train
        Observed training data (AnnData or matrix; RNA counts, ATAC counts or 0/1).
    test
        Observed test data with the same features.
    modality
        ``"rna"`` or ``"atac"``.
    layer
        Layer to read from AnnData inputs.

    Returns
    -------
    DataFrame with one row per control and the columns of :func:`translation_scores`.
    """
    if modality not in ("rna", "atac"):
        raise ValueError(f"modality must be 'rna' or 'atac', got {modality!r}.")
    y_test = _dense(test, layer)
    mean = feature_means(train, modality, layer=layer)
    if mean.shape[0] != y_test.shape[1]:
        raise ValueError(
            f"train and test have different numbers of features: {mean.shape[0]} vs {y_test.shape[1]}."
        )
    rows = {
        "all_zeros": translation_scores(y_test, np.zeros_like(y_test), modality),
        "feature_mean": translation_scores(y_test, np.broadcast_to(mean, y_test.shape), modality),
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def feature_means(data, modality: Modality = "atac", *, layer: str | None = None) -> np.ndarray:
    """Per-feature mean on the scale predictions are scored on (log1p CP10k for RNA, 0/1 for ATAC).

    Parameters
    ----------
    data
        Observed data (AnnData or matrix).
    modality
        ``"rna"`` or ``"atac"``.
    layer
        Layer to read from an AnnData.

    Returns
    -------
    float32 array with one value per feature.
    """
    x = _matrix(data, layer)
    if modality == "atac":
        x = (x > 0).astype(np.float32) if sparse.issparse(x) else (np.asarray(x) > 0).astype(np.float32)
        return np.asarray(x.mean(axis=0), dtype=np.float32).ravel()
    total, n = None, 0
    for start in range(0, x.shape[0], 4096):
        block = _to_dense(x[start : start + 4096])
        s = log1p_cp10k_block(block).sum(axis=0)
        total = s if total is None else total + s
        n += block.shape[0]
    return (total / n).astype(np.float32)


def _matrix(data, layer: str | None):
    if isinstance(data, AnnData):
        return data.X if layer is None else data.layers[layer]
    return data


def _to_dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)


def _dense(data, layer: str | None) -> np.ndarray:
    return _to_dense(_matrix(data, layer))


def _mean_pearson(a: np.ndarray, b: np.ndarray, axis: int) -> float:
    """Mean Pearson correlation along rows (``axis=1``) or columns (``axis=0``); constant vectors score 0."""
    constant = (np.ptp(a, axis=axis) == 0) | (np.ptp(b, axis=axis) == 0)
    a = a - a.mean(axis=axis, keepdims=True, dtype=np.float64)
    b = b - b.mean(axis=axis, keepdims=True, dtype=np.float64)
    denominator = np.sqrt((a**2).sum(axis=axis) * (b**2).sum(axis=axis))
    numerator = (a * b).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(constant | (denominator == 0), 0.0, numerator / denominator)
    return float(r.mean())
