"""Classification scores that respect the Cell Ontology hierarchy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_fscore_support

if TYPE_CHECKING:
    import pronto

Average = Literal["macro", "micro", "weighted"]


def _term_ids(labels: np.ndarray, ontology: pronto.Ontology, what: str) -> dict[str, str]:
    """CL ID of every distinct label (given as an ID or as a term name, case-insensitive)."""
    by_name: dict[str, str] | None = None
    resolved, unknown = {}, []
    for label in pd.unique(labels):
        if label in ontology:
            resolved[label] = ontology[label].id
            continue
        if by_name is None:
            by_name = {}
            for term in ontology.terms():
                if term.name is not None:
                    by_name.setdefault(term.name.lower(), term.id)
        term_id = by_name.get(str(label).lower())
        if term_id is None:
            unknown.append(label)
        else:
            resolved[label] = term_id
    if unknown:
        raise ValueError(
            f"{len(unknown)} {what} label(s) are neither IDs nor names of terms of the ontology: "
            f"{unknown[:5]}."
        )
    return resolved


def ontology_corrected(
    y_true: Sequence[str], y_pred: Sequence[str], ontology: pronto.Ontology
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions with every subtype of the true label replaced by the true label.

    A prediction counts as correct when it is the true cell type or one of its subtypes
    (a descendant along ``is_a``): predicting "CD4-positive, alpha-beta T cell" for a cell
    labelled "T cell" is right, since the prediction is more precise than the label. Predicting
    a supertype (ancestor) or a sibling is wrong. This is scTab's evaluation rule.

    Parameters
    ----------
    y_true
        True labels, as CL IDs (``"CL:0000084"``) or term names (``"T cell"``).
    y_pred
        Predicted labels, in the same form as ``y_true`` or the other.
    ontology
        The Cell Ontology (see :func:`scsalient.datasets.cell_ontology`).

    Returns
    -------
    The true labels and the corrected predictions, as arrays of strings. Labels keep their
    spelling (ID or name); a term spelled both ways is written as first met in ``y_true``,
    then in ``y_pred``.

    Raises
    ------
    ValueError
        If the inputs differ in length or a label is not a term of the ontology.
    """
    true_out, pred_out, _ = _correct(y_true, y_pred, ontology)
    return true_out, pred_out


def _correct(y_true, y_pred, ontology) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`ontology_corrected`, plus a mask of the predictions that were strict subtypes."""
    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-d and of equal length, got {y_true.shape} and {y_pred.shape}."
        )
    true_ids = _term_ids(y_true, ontology, "true")
    pred_ids = _term_ids(y_pred, ontology, "predicted")
    # one spelling per term (a term given once as an ID and once as a name is one class): the
    # first spelling met in y_true, then in y_pred
    spelling: dict[str, str] = {}
    for label, term_id in [*true_ids.items(), *pred_ids.items()]:
        spelling.setdefault(term_id, label)
    true_out = np.array([spelling[true_ids[label]] for label in y_true], dtype=object).astype(str)
    pred_out = np.array([spelling[pred_ids[label]] for label in y_pred], dtype=object).astype(str)
    for term_id in set(true_ids.values()):
        descendants = {term.id for term in ontology[term_id].subclasses(with_self=True)}
        rows = np.flatnonzero(true_out == spelling[term_id])
        hit = np.array([pred_ids[p] in descendants for p in y_pred[rows]], dtype=bool)
        pred_out[rows[hit]] = spelling[term_id]
    subtype = (pred_out == true_out) & np.array(
        [pred_ids[p] != true_ids[t] for p, t in zip(y_pred, y_true)], dtype=bool
    )
    return true_out, pred_out, subtype


def ontology_f1(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    ontology: pronto.Ontology,
    average: Average = "macro",
) -> float:
    """F1 score where predicting a subtype of the true cell type counts as correct.

    Predictions equal to the true label or to one of its descendants (``is_a``) in the Cell
    Ontology are correct; an ancestor (a coarser type) or a sibling is wrong, as in scTab's
    evaluation. The F1 is then computed as by :func:`sklearn.metrics.f1_score` over the classes
    present in the true or corrected predicted labels.

    Parameters
    ----------
    y_true
        True labels, as CL IDs (``"CL:0000084"``) or term names (``"T cell"``).
    y_pred
        Predicted labels, as CL IDs or term names.
    ontology
        The Cell Ontology (see :func:`scsalient.datasets.cell_ontology`).
    average
        ``"macro"`` (unweighted mean over classes), ``"weighted"`` (by support) or ``"micro"``.

    Returns
    -------
    The F1 score, in [0, 1].

    Raises
    ------
    ValueError
        If a label is not a term of the ontology, the inputs differ in length, or ``average``
        is unknown.

    Examples
    --------
    >>> from scsalient.metrics import ontology_f1
    >>> onto = ss.datasets.cell_ontology("cl-basic.obo")  # doctest: +SKIP
    >>> ontology_f1(["T cell"], ["CD4-positive, alpha-beta T cell"], onto)  # doctest: +SKIP
    1.0
    """
    if average not in ("macro", "micro", "weighted"):
        raise ValueError(f"average must be 'macro', 'micro' or 'weighted', got {average!r}.")
    y_true, corrected = ontology_corrected(y_true, y_pred, ontology)
    return float(f1_score(y_true, corrected, average=average, zero_division=0))


def ontology_f1_report(
    y_true: Sequence[str], y_pred: Sequence[str], ontology: pronto.Ontology
) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support under the ontology rule of :func:`ontology_f1`.

    Parameters
    ----------
    y_true
        True labels, as CL IDs or term names.
    y_pred
        Predicted labels, as CL IDs or term names.
    ontology
        The Cell Ontology (see :func:`scsalient.datasets.cell_ontology`).

    Returns
    -------
    DataFrame indexed by class (the labels as given), with columns ``precision``, ``recall``,
    ``f1``, ``support`` (true cells of the class) and ``n_subtype_predictions`` (cells of the
    class predicted as a strict subtype, counted as correct).
    """
    y_true, corrected, subtype = _correct(y_true, y_pred, ontology)
    classes = np.union1d(y_true, corrected)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, corrected, labels=classes, zero_division=0
    )
    n_subtype = pd.Series(y_true[subtype]).value_counts().reindex(classes, fill_value=0).to_numpy()
    return pd.DataFrame(
        {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
            "n_subtype_predictions": n_subtype,
        },
        index=pd.Index(classes, name="cell_type"),
    )
