"""How well scored gene-peak pairs recover known links."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score


def link_recovery(pairs: pd.DataFrame, truth: pd.DataFrame, score: str = "score") -> dict[str, float]:
    """Precision of scored gene-peak pairs against known links.

    Every pair of ``pairs`` is a candidate (e.g. every gene-peak pair within a window, as
    :func:`scsalient.tl.peak_gene_links` and :func:`scsalient.tl.peak_gene_correlation`
    return them); a candidate is positive when ``(gene, peak)`` is in ``truth``.

    * ``precision_at_1``: for each peak of ``truth`` among the candidates, whether its
      highest-scoring gene is its true gene (mean over those peaks).
    * ``hit_at_10``: whether the true gene is among the peak's 10 highest-scoring genes.
    * ``precision_at_10``: the share of true links among the 10 highest-scoring pairs
      overall.
    * ``auprc``: average precision of the score over all candidate pairs; ``positive_rate``,
      the share of positive candidates, is the AUPRC of a random score.

    Ties are broken at random (a fixed seed) for the per-peak and top-10 measures, and count
    as one threshold in the AUPRC (scikit-learn); a missing score (NaN) ranks last.

    Parameters
    ----------
    pairs
        Candidate pairs with columns ``gene``, ``peak`` and ``score``.
    truth
        Known links, columns ``gene`` and ``peak``.
    score
        Column of ``pairs`` to rank by (larger = stronger link).

    Returns
    -------
    dict with ``precision_at_1``, ``hit_at_10``, ``precision_at_10``, ``auprc``,
    ``positive_rate``, ``n_pairs``, ``n_true_in_candidates`` and ``n_true``.
    """
    for frame, name, columns in (
        (pairs, "pairs", ("gene", "peak", score)),
        (truth, "truth", ("gene", "peak")),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise KeyError(f"{name} lacks the columns {missing} (it has {list(frame.columns)}).")
    known = set(zip(truth["gene"].astype(str), truth["peak"].astype(str)))
    table = pairs[["gene", "peak"]].astype(str).copy()
    values = pd.to_numeric(pairs[score], errors="coerce").to_numpy(dtype=float)
    table["value"] = np.where(np.isfinite(values), values, -np.inf)
    table["positive"] = [key in known for key in zip(table["gene"], table["peak"])]
    n_positive = int(table["positive"].sum())
    nan = float("nan")
    if n_positive == 0:
        return {
            "precision_at_1": nan,
            "hit_at_10": nan,
            "precision_at_10": nan,
            "auprc": nan,
            "positive_rate": 0.0,
            "n_pairs": len(table),
            "n_true_in_candidates": 0,
            "n_true": len(known),
        }
    shuffled = table.iloc[np.random.default_rng(0).permutation(len(table))]
    ranked = shuffled.sort_values("value", ascending=False, kind="stable")
    ranked["rank"] = ranked.groupby("peak", sort=False).cumcount() + 1
    per_peak = ranked[ranked["positive"]].groupby("peak")["rank"].min()
    value = table["value"].to_numpy()
    finite = np.isfinite(value)
    value = np.where(finite, value, value[finite].min() - 1 if finite.any() else 0.0)
    return {
        "precision_at_1": float((per_peak == 1).mean()),
        "hit_at_10": float((per_peak <= 10).mean()),
        "precision_at_10": float(ranked["positive"].head(10).mean()),
        "auprc": float(average_precision_score(table["positive"].to_numpy(), value)),
        "positive_rate": float(n_positive / len(table)),
        "n_pairs": int(len(table)),
        "n_true_in_candidates": n_positive,
        "n_true": len(known),
    }
