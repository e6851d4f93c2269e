"""Which gene names of an AnnData to match against marker databases and gene sets."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable

import pandas as pd
from anndata import AnnData

#: Ensembl gene IDs of any species (ENSG..., ENSMUSG..., ENSDARG..., with or without version)
ENSEMBL_GENE_ID = re.compile(r"^ENS[A-Z]*G\d+")
#: columns of ``adata.var`` that commonly hold gene symbols, in the order they are tried
SYMBOL_COLUMNS = (
    "gene_symbols",
    "gene_symbol",
    "symbol",
    "symbols",
    "gene_name",
    "gene_names",
    "feature_name",
)


def looks_like_ensembl(names: Iterable[object]) -> bool:
    """Whether most names are Ensembl gene IDs (``ENSG00000...``, ``ENSMUSG00000...``)."""
    names = [str(name) for name in names]
    if not names:
        return False
    n_ensembl = sum(bool(ENSEMBL_GENE_ID.match(name)) for name in names)
    return n_ensembl > len(names) / 2


def resolve_gene_symbols(
    adata: AnnData,
    gene_symbols: str | None,
    reference: set[str],
    *,
    normalize: Callable[[str], str],
    what: str,
    argument: str = "gene_symbols",
) -> str | None:
    """The column of ``adata.var`` whose names to match against ``reference`` (``None``: var_names).

    An explicit ``gene_symbols`` is checked and returned. Otherwise ``adata.var_names`` are used,
    unless they look like Ensembl IDs or share no gene with ``reference``: then the column of
    :data:`SYMBOL_COLUMNS` sharing most genes with ``reference`` is used instead, with a
    :class:`UserWarning` naming it.

    Parameters
    ----------
    adata
        The data whose genes are matched.
    gene_symbols
        Column chosen by the user, or ``None``.
    reference
        Genes of the database or gene sets, already passed through ``normalize``.
    normalize
        Applied to every name of ``adata`` before matching (e.g. upper-casing).
    what
        What ``reference`` is, for messages (e.g. ``"the marker database"``).
    argument
        Name of the caller's argument for the column, for messages.

    Raises
    ------
    KeyError
        If ``gene_symbols`` is not a column of ``adata.var``.
    ValueError
        If ``adata.var_names`` look like Ensembl IDs, share no gene with ``reference``, and no
        symbol column does either.
    """
    if gene_symbols is not None:
        if gene_symbols not in adata.var.columns:
            raise KeyError(
                f"adata.var has no column {gene_symbols!r} (available: {list(adata.var.columns)})."
            )
        return gene_symbols

    def overlap(names: Iterable[object]) -> int:
        return len({normalize(str(name)) for name in names} & reference)

    n_var_names = overlap(adata.var_names)
    ensembl = looks_like_ensembl(adata.var_names)
    if n_var_names > 0 and not ensembl:
        return None
    by_lower = {str(column).lower(): column for column in adata.var.columns}
    candidates = [by_lower[name] for name in SYMBOL_COLUMNS if name in by_lower]
    overlaps = {column: overlap(pd.Series(adata.var[column]).dropna()) for column in candidates}
    best = max(overlaps, key=overlaps.get, default=None)
    example = str(adata.var_names[0]) if adata.n_vars else ""
    reason = (
        f"adata.var_names look like Ensembl gene IDs (e.g. {example!r})"
        if ensembl
        else f"none of adata.var_names (e.g. {example!r}) is in {what}"
    )
    if best is not None and overlaps[best] > n_var_names:
        warnings.warn(
            f"{reason}; matching {what} by the gene symbols in adata.var[{best!r}] instead "
            f"({overlaps[best]} of its genes are in the data). Pass {argument}={best!r} to choose "
            "the column explicitly.",
            UserWarning,
            stacklevel=3,
        )
        return best
    if ensembl and n_var_names == 0:
        looked = ", ".join(repr(name) for name in SYMBOL_COLUMNS)
        found = (
            f"the symbol column(s) {candidates} share none either"
            if candidates
            else f"adata.var has no symbol column (looked for {looked})"
        )
        raise ValueError(
            f"{reason} and share no gene with {what}, and {found}. Pass {argument}=<column of "
            "adata.var with gene symbols>, or set adata.var_names to gene symbols."
        )
    return None
