"""Precision of ranked gene lists against known marker genes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd


def precision_at_k(
    ranked_genes: Sequence[str],
    true_genes: Iterable[str],
    k: int = 25,
    *,
    case_sensitive: bool = True,
) -> float:
    """Fraction of the top ``k`` ranked genes that are true genes.

    Duplicates in ``ranked_genes`` are dropped (first occurrence kept) before taking the top
    ``k``. The denominator is always ``k``, so a list shorter than ``k`` cannot reach 1.

    Parameters
    ----------
    ranked_genes
        Genes, best first.
    true_genes
        The ground-truth genes (e.g. planted or known markers).
    k
        Number of top genes evaluated.
    case_sensitive
        Compare gene names case-sensitively.

    Returns
    -------
    Precision at ``k``, in [0, 1].

    Examples
    --------
    >>> from scsalient.metrics import precision_at_k
    >>> precision_at_k(["CD3E", "ACTB", "CD3D", "GAPDH"], {"CD3D", "CD3E", "CD3G"}, k=4)
    0.5
    """
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}.")
    if isinstance(ranked_genes, str) or isinstance(true_genes, str):
        raise TypeError("`ranked_genes` and `true_genes` must be collections of gene names, not a string.")

    def normalize(gene: object) -> str:
        return str(gene) if case_sensitive else str(gene).upper()

    top = list(dict.fromkeys(normalize(gene) for gene in ranked_genes))[: int(k)]
    truth = {normalize(gene) for gene in true_genes}
    return sum(gene in truth for gene in top) / int(k)


def precision_at_k_per_group(
    ranked_genes: Mapping[str, Sequence[str]] | pd.DataFrame,
    true_genes: Mapping[str, Iterable[str]],
    k: int = 25,
    *,
    case_sensitive: bool = True,
) -> pd.Series:
    """:func:`~scsalient.metrics.precision_at_k` for every group present in both inputs.

    Parameters
    ----------
    ranked_genes
        Group to ranked genes, or a data frame with one column of ranked genes per group (e.g.
        ``pd.DataFrame(adata.uns["salient_genes"]["names"])``).
    true_genes
        Group to ground-truth genes.
    k
        Number of top genes evaluated.
    case_sensitive
        Compare gene names case-sensitively.

    Returns
    -------
    Precision at ``k`` indexed by group, in the order of ``ranked_genes``.
    """
    if isinstance(ranked_genes, pd.DataFrame):
        ranked_genes = {
            str(column): ranked_genes[column].dropna().tolist() for column in ranked_genes.columns
        }
    ranked = {str(group): genes for group, genes in ranked_genes.items()}
    truth = {str(group): genes for group, genes in true_genes.items()}
    shared = [group for group in ranked if group in truth]
    if not shared:
        raise ValueError(
            f"No group is in both inputs (ranked: {list(ranked)[:10]}, true: {list(truth)[:10]})."
        )
    values = [
        precision_at_k(ranked[group], truth[group], k, case_sensitive=case_sensitive) for group in shared
    ]
    return pd.Series(values, index=pd.Index(shared, name="group"), name=f"precision_at_{k}", dtype=np.float64)
