"""Per-cell predictions of the classification runs, and paired bootstrap intervals from them.

Each run stores its test cells' true and predicted labels (:func:`encode_labels`, one
character per cell), so two systems can be compared on the same cells: the test cells are
resampled with replacement and both systems' macro-F1 recomputed on every resample
(:func:`paired_difference`). The interval says how much of a difference in macro-F1 comes from
which cells happen to be in the test set; the spread over seeds is reported separately.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

#: one character per cell and class, classes numbered by position (at most 62 classes)
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase


def encode_labels(truth: np.ndarray, predictions: np.ndarray) -> dict | None:
    """True and predicted labels of the test cells, one character per cell.

    Returns ``{"classes": [...], "truth": "0A3...", "predicted": "0A1..."}`` (the character
    at position *i* is cell *i*'s class, numbered in ``classes``), or ``None`` when there are
    more classes than characters.
    """
    classes = np.unique(np.concatenate([truth, predictions]).astype(str))
    if len(classes) > len(ALPHABET):
        return None
    position = {label: ALPHABET[i] for i, label in enumerate(classes)}
    return {
        "classes": classes.tolist(),
        "truth": "".join(position[label] for label in np.asarray(truth, dtype=str)),
        "predicted": "".join(position[label] for label in np.asarray(predictions, dtype=str)),
    }


def decode_labels(stored: dict) -> tuple[np.ndarray, np.ndarray]:
    """The true and predicted labels that :func:`encode_labels` stored."""
    classes = np.asarray(stored["classes"])
    index = {char: i for i, char in enumerate(ALPHABET)}

    def decode(text: str) -> np.ndarray:
        return classes[np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))]

    return decode(stored["truth"]), decode(stored["predicted"])


def _macro_f1(truth: np.ndarray, predicted: np.ndarray, n_classes: int, weights: np.ndarray) -> np.ndarray:
    """Macro-F1 of integer labels under each row of cell weights ``(B, n)``.

    A class counts when it is among the (weighted) true or predicted labels, as in the
    benchmark's own score (scikit-learn's macro-F1 over the labels present).
    """
    eye = np.eye(n_classes)
    true_counts = weights @ eye[truth]
    predicted_counts = weights @ eye[predicted]
    hits = weights @ (eye[truth] * (truth == predicted)[:, None])
    present = (true_counts + predicted_counts) > 0
    f1 = np.divide(2 * hits, true_counts + predicted_counts, out=np.zeros_like(hits), where=present)
    return (f1 * present).sum(1) / present.sum(1)


def paired_difference(
    ours: Sequence[dict], theirs: Sequence[dict], n_resamples: int = 2000, seed: int = 0
) -> dict:
    """Macro-F1 difference (ours - theirs) with a paired bootstrap interval over the test cells.

    Parameters
    ----------
    ours, theirs
        Stored labels (:func:`encode_labels`) of each system's runs (one per seed) on the same
        test cells. A system's macro-F1 is its mean over its runs.
    n_resamples
        Bootstrap resamples of the test cells; every run is scored on the same resamples.
    seed
        Seed of the resampling.

    Returns
    -------
    ``{"difference", "low", "high", "n_resamples"}``: the difference on the test cells as they
    are, and the 2.5 and 97.5 percentiles of the resampled differences.
    """
    decoded = [decode_labels(s) for s in (*ours, *theirs)]
    truths = [truth for truth, _ in decoded]
    if any(len(t) != len(truths[0]) or not np.array_equal(t, truths[0]) for t in truths):
        raise ValueError("The runs were scored on different test cells.")
    classes = np.unique(np.concatenate([truths[0], *(pred for _, pred in decoded)]))
    truth = np.searchsorted(classes, truths[0])
    predictions = [np.searchsorted(classes, pred) for _, pred in decoded]
    n = len(truth)
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1 / n), size=n_resamples)])
    scores = np.array([_macro_f1(truth, pred, len(classes), weights) for pred in predictions])
    difference = scores[: len(ours)].mean(0) - scores[len(ours) :].mean(0)
    low, high = np.percentile(difference[1:], [2.5, 97.5])
    return {
        "difference": float(difference[0]),
        "low": float(low),
        "high": float(high),
        "n_resamples": n_resamples,
    }
