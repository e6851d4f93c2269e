"""Query marker databases with the salient genes of each group."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from scsalient._constants import NACTKeys, SalientKeys
from scsalient._gene_symbols import resolve_gene_symbols
from scsalient._utils import select_groups

from ._salient_genes import _benjamini_hochberg

logger = logging.getLogger(__name__)

_METHODS = ("likelihood", "enrichment")
_UNIVERSES = ("database", "var_names")


def query_cell_types(
    adata: AnnData,
    database: str | os.PathLike | Mapping[str, Any] | pd.DataFrame,
    *,
    key: str = SalientKeys.SALIENT_GENES,
    method: Literal["likelihood", "enrichment"] = "likelihood",
    n_genes: int = 25,
    alpha: float = 0.1,
    species: Literal["human", "mouse"] = "human",
    case_sensitive: bool = False,
    use_weights: bool = True,
    universe: Literal["database", "var_names"] | None = None,
    groups: Sequence[str] | None = None,
    gene_symbols: str | None = None,
    key_added: str = SalientKeys.CELL_TYPE_QUERY,
) -> pd.DataFrame:
    r"""Rank candidate cell types for each group by querying a marker database with its salient genes.

    The query of a group is its top ``n_genes`` genes in ``adata.uns[key]`` (written by
    :func:`scsalient.tl.salient_genes`, or any :func:`scanpy.tl.rank_genes_groups` record).

    ``method="likelihood"`` (after CellMeSH, Mao et al., 2022): every candidate type *C* is a
    multinomial over the gene universe *U* with smoothed probabilities

    .. math::

        P(g \mid C) = \frac{w_C(g) + \alpha}{\sum_{g' \in U} w_C(g') + \alpha |U|},

    where :math:`w_C(g)` is the database weight of *g* for *C* (0 for non-markers). The score of *C*
    is the log-likelihood :math:`\sum_{g \in q \cap U} \log P(g \mid C)` of the query genes *q*;
    the type with the highest score is ranked first.

    ``method="enrichment"``: one-sided hypergeometric test for over-representation of each type's
    markers among the query genes, in the universe of database genes measured in ``adata``;
    p-values are Benjamini-Hochberg adjusted over the types of each group and the score is
    :math:`-\log_{10} p`.

    Parameters
    ----------
    adata
        Annotated data matrix with the salient-gene record in ``adata.uns[key]``.
    database
        Marker table with columns ``cell_type``, ``gene`` and ``weight`` (see
        :func:`scsalient.datasets.marker_database`), or anything that function reads (a file
        path, a mapping; the names ``"panglaodb"`` and ``"cellmarker"`` need a local copy there,
        so read those with :func:`~scsalient.datasets.marker_database` and its ``path=``).
    key
        Key of the salient-gene record in ``adata.uns``.
    method
        ``"likelihood"`` or ``"enrichment"``.
    n_genes
        Number of top genes per group used as the query.
    alpha
        Pseudo-count of the likelihood model; smaller values reward marker hits more and
        penalize types with many markers more.
    species
        Species passed to :func:`~scsalient.datasets.marker_database` when ``database`` is not a
        data frame.
    case_sensitive
        Match gene symbols case-sensitively. The default ignores case, so human-style and
        mouse-style symbols match.
    use_weights
        Use the database weights in the likelihood model; with `False` every listed marker
        counts with weight 1 (useful for PanglaoDB, where many markers have a sensitivity of 0).
        Enrichment ignores weights.
    universe
        Gene universe *U*: ``"database"`` (all database genes) or ``"var_names"`` (database genes
        that are also in ``adata.var_names``). Defaults to ``"database"`` for the likelihood and
        ``"var_names"`` for enrichment.
    groups
        Query only these groups (default: all groups of the record).
    gene_symbols
        Column of ``adata.var`` with the gene symbols to match against the database, when
        ``adata.var_names`` hold other identifiers (e.g. Ensembl IDs). With ``None``,
        ``adata.var_names`` are used unless they look like Ensembl IDs (``ENSG...``,
        ``ENSMUSG...``) or share no gene with the database: then the first of the columns
        ``gene_symbols``, ``gene_symbol``, ``symbol``, ``symbols``, ``gene_name``,
        ``gene_names``, ``feature_name`` sharing most genes with the database is used, with a
        warning naming it; Ensembl IDs without such a column raise a :class:`ValueError`.
    key_added
        Key under which the results are stored in ``adata.uns``.

    Returns
    -------
    Tidy results with one row per group and candidate type: ``group``, ``cell_type``, ``rank``
    (1 = best), ``score``, ``n_overlap`` (query genes listed for the type), ``n_query`` (query genes
    in the universe), ``n_markers`` (type genes in the universe), ``overlap`` (the overlapping query
    genes, ``";"``-joined, in query order) and, for enrichment, ``pvalue`` and ``fdr``.

    A group whose rank-1 type has ``n_overlap == 0`` (none of its query genes is listed for that
    type, e.g. because no query gene is in the database) is never named: a :class:`UserWarning`
    lists such groups and :func:`~scsalient.tl.annotate_clusters` leaves their cells unlabelled.

    Sets ``adata.uns[key_added]`` to ``{"results": <the data frame>, "params": {...}}``;
    ``params["gene_symbols"]`` is the column of ``adata.var`` that was matched (``None`` for
    ``adata.var_names``).
    """
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
    if universe is None:
        universe = "database" if method == "likelihood" else "var_names"
    if universe not in _UNIVERSES:
        raise ValueError(f"`universe` must be one of {_UNIVERSES}, got {universe!r}.")
    if not isinstance(n_genes, int | np.integer) or n_genes < 1:
        raise ValueError(f"`n_genes` must be a positive integer, got {n_genes!r}.")
    if method == "likelihood" and not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"`alpha` must be a positive number, got {alpha!r}.")

    record = _get_record(adata, key)
    queries = _queries(record, key=key, n_genes=int(n_genes), groups=groups)
    table = _database_table(database, species=species)
    source = str(table.attrs.get("source", _describe(database)))

    normalize = (lambda gene: gene) if case_sensitive else (lambda gene: gene.upper())
    table = table.assign(key=table["gene"].astype(str).map(normalize))
    gene_symbols = resolve_gene_symbols(
        adata, gene_symbols, set(table["key"]), normalize=normalize, what="the marker database"
    )
    measured_genes = [str(gene) for gene in adata.var_names]
    if gene_symbols is not None:
        symbols = adata.var[gene_symbols].astype(str).to_numpy()
        to_symbol = dict(zip(measured_genes, symbols, strict=True))
        queries = {group: [to_symbol.get(gene, gene) for gene in genes] for group, genes in queries.items()}
        measured_genes = list(symbols)
    table = table.groupby(["cell_type", "key"], sort=False, as_index=False)["weight"].max()
    if universe == "var_names":
        measured = {normalize(gene) for gene in measured_genes}
        table = table.loc[table["key"].isin(measured)]
        if table.empty:
            raise ValueError(
                "No database gene is in "
                + ("adata.var_names" if gene_symbols is None else f"adata.var[{gene_symbols!r}]")
                + ("" if not case_sensitive else " (matching case-sensitively; try case_sensitive=False)")
                + "; if adata.var_names are not gene symbols, pass `gene_symbols`."
            )

    cell_types = pd.Index(pd.unique(table["cell_type"]))
    genes = pd.Index(pd.unique(table["key"]))
    rows = cell_types.get_indexer(table["cell_type"])
    cols = genes.get_indexer(table["key"])
    weights = table["weight"].to_numpy(dtype=np.float64)
    membership = sparse.csr_matrix(
        (np.ones(len(table)), (rows, cols)), shape=(len(cell_types), len(genes))
    ).tocsc()
    n_markers = np.asarray(membership.sum(axis=1)).ravel().astype(np.int64)
    if method == "likelihood":
        if not use_weights:
            weights = np.ones_like(weights)
        total_weight = np.bincount(rows, weights=weights, minlength=len(cell_types))
        if (total_weight == 0).any():
            logger.warning(
                "%d cell types have only zero weights; the likelihood treats them as uniform over the "
                "universe. Pass use_weights=False to count every listed marker.",
                int((total_weight == 0).sum()),
            )
        log_gain = sparse.csr_matrix(
            (np.log1p(weights / alpha), (rows, cols)), shape=(len(cell_types), len(genes))
        ).tocsc()
        log_denominator = np.log(total_weight + alpha * len(genes))

    frames = []
    for group, query in queries.items():
        keys = [normalize(gene) for gene in query]
        # query genes in the universe, first occurrence of each (case-insensitive duplicates)
        seen: dict[str, str] = {}
        for gene, gene_key in zip(query, keys, strict=True):
            if gene_key in genes and gene_key not in seen:
                seen[gene_key] = gene
        in_universe = list(seen)
        n_query = len(in_universe)
        idx = genes.get_indexer(in_universe)
        hits = membership[:, idx]
        n_overlap = np.asarray(hits.sum(axis=1)).ravel().astype(np.int64)
        overlap = _overlap_strings(hits.tocsr(), [seen[g] for g in in_universe])
        frame = pd.DataFrame(
            {
                "group": group,
                "cell_type": np.asarray(cell_types, dtype=object),
                "n_overlap": n_overlap,
                "n_query": n_query,
                "n_markers": n_markers,
                "overlap": overlap,
            }
        )
        if method == "likelihood":
            gain = np.asarray(log_gain[:, idx].sum(axis=1)).ravel()
            frame["score"] = n_query * np.log(alpha) + gain - n_query * log_denominator
            order = np.lexsort(
                (np.arange(len(frame)), -frame["n_overlap"].to_numpy(), -frame["score"].to_numpy())
            )
        else:
            n_universe = len(genes)
            pvalue = np.ones(len(frame))
            tested = n_overlap > 0
            pvalue[tested] = stats.hypergeom.sf(n_overlap[tested] - 1, n_universe, n_markers[tested], n_query)
            pvalue = np.clip(pvalue, 0.0, 1.0)
            frame["pvalue"] = pvalue
            frame["fdr"] = _benjamini_hochberg(pvalue)
            frame["score"] = -np.log10(np.maximum(pvalue, np.finfo(np.float64).tiny))
            order = np.lexsort((np.arange(len(frame)), -frame["n_overlap"].to_numpy(), pvalue))
        frame = frame.iloc[order].reset_index(drop=True)
        frame["rank"] = np.arange(1, len(frame) + 1)
        frames.append(frame)

    columns = ["group", "cell_type", "rank", "score", "n_overlap", "n_query", "n_markers", "overlap"]
    if method == "enrichment":
        columns += ["pvalue", "fdr"]
    results = pd.concat(frames, ignore_index=True)[columns]
    results["group"] = pd.Categorical(results["group"], categories=list(queries))
    best = results.loc[results["rank"] == 1]
    _warn_unnamed(best, where="the query")

    params = {
        "key": key,
        "groupby": str(record.get("params", {}).get("groupby", "")),
        "method": method,
        "n_genes": int(n_genes),
        "alpha": float(alpha),
        "case_sensitive": bool(case_sensitive),
        "use_weights": bool(use_weights),
        "universe": universe,
        "n_universe": len(genes),
        "n_cell_types": len(cell_types),
        "database": source,
        "gene_symbols": gene_symbols,
    }
    adata.uns[key_added] = {"results": results, "params": params}
    logger.info(
        "Queried %d cell types for %d groups (%s); added to adata.uns[%r]. Best: %s",
        len(cell_types),
        len(queries),
        method,
        key_added,
        _names(best),
    )
    return results


#: defaults of :func:`annotate_clusters`, chosen on the naming benchmark (benchmarks/naming.py)
DEFAULT_MIN_MARGIN = {"likelihood": 3.0, "enrichment": 1.0}
DEFAULT_MIN_OVERLAP = 2


def annotate_clusters(
    adata: AnnData,
    groupby: str,
    *,
    key: str = SalientKeys.CELL_TYPE_QUERY,
    key_added: str = NACTKeys.CELL_TYPE,
    min_margin: float | None = None,
    min_overlap: int = DEFAULT_MIN_OVERLAP,
    n_candidates: int = 3,
) -> None:
    r"""Label every cell with the best candidate type of its group, or ``"Unassigned"`` when unsure.

    A group is named after its rank-1 candidate of :func:`scsalient.tl.query_cell_types` only
    when that candidate is clearly ahead: its score beats the rank-2 candidate's by at least
    ``min_margin`` and its markers share at least ``min_overlap`` genes with the group's query.
    Otherwise the group's cells get ``"Unassigned"`` and the candidates stay in ``adata.uns`` for
    the user to judge. A group whose rank-1 candidate shares no gene with its query is never
    named (its cells stay unlabelled, with a :class:`UserWarning`).

    Parameters
    ----------
    adata
        Annotated data matrix with the results of :func:`scsalient.tl.query_cell_types` in
        ``adata.uns[key]``.
    groupby
        Column of ``adata.obs`` with the groups that were queried.
    key
        Key of the query results in ``adata.uns``.
    key_added
        Column of ``adata.obs`` to write, and key of the per-group record in ``adata.uns``.
    min_margin
        Smallest score gap between the rank-1 and the rank-2 candidate. With
        ``method="likelihood"`` the score is a log-likelihood, so the gap is a log-likelihood
        ratio (in nats: 3.0 means the query is about 20 times likelier under the rank-1 type);
        with ``method="enrichment"`` it is a gap in :math:`-\log_{10} p`. ``None`` takes the
        default of the query's method: 3.0 for the likelihood and 1.0 for enrichment, each
        chosen on three datasets of the naming benchmark (``benchmarks/naming.py``) and
        reported on eight others. 0 names every group after its rank-1 candidate.
    min_overlap
        Fewest query genes the rank-1 candidate must list.
    n_candidates
        Candidates per group kept in ``adata.uns[key_added]["candidates"]``.

    Returns
    -------
    `None`. Sets

    ``adata.obs[key_added]``
        Categorical: the name of each cell's group, ``"Unassigned"`` for groups without a clear
        winner; missing for groups that were not queried or whose rank-1 type shares no gene
        with their query.
    ``adata.uns[key_added]``
        Dict with ``groups`` (a data frame, one row per group: ``name``, ``status`` (``"named"``,
        ``"low margin"``, ``"few overlapping genes"`` or ``"no overlapping gene"``), ``best`` and
        ``second`` (the rank-1 and rank-2 candidates), ``margin``, ``n_overlap`` and ``overlap``
        of the rank-1 candidate), ``candidates`` (the ``n_candidates`` best candidates of every
        group with ``rank``, ``score``, ``n_overlap`` and ``overlap``) and ``params``.
    """
    from scsalient.model.base._annotate import UNASSIGNED

    if key not in adata.uns:
        raise KeyError(f"adata.uns has no {key!r}; run scsalient.tl.query_cell_types first.")
    entry = adata.uns[key]
    if not isinstance(entry, Mapping) or "results" not in entry:
        raise ValueError(f"adata.uns[{key!r}] is not a query_cell_types result (no 'results' table).")
    if groupby not in adata.obs.columns:
        raise KeyError(f"adata.obs has no column {groupby!r} (available: {list(adata.obs.columns)}).")
    method = str(entry.get("params", {}).get("method", "likelihood"))
    if min_margin is None:
        min_margin = DEFAULT_MIN_MARGIN.get(method, DEFAULT_MIN_MARGIN["likelihood"])
    if not (np.isfinite(min_margin) and min_margin >= 0):
        raise ValueError(f"`min_margin` must be a non-negative number, got {min_margin!r}.")
    if not isinstance(min_overlap, int | np.integer) or min_overlap < 1:
        raise ValueError(
            f"`min_overlap` must be a positive integer, got {min_overlap!r} (a group is never named "
            "from zero overlapping genes)."
        )
    if not isinstance(n_candidates, int | np.integer) or n_candidates < 1:
        raise ValueError(f"`n_candidates` must be a positive integer, got {n_candidates!r}.")
    queried_groupby = entry.get("params", {}).get("groupby")
    if queried_groupby and queried_groupby != groupby:
        logger.warning(
            "adata.uns[%r] was computed for groups of %r, not %r; matching groups by name.",
            key,
            queried_groupby,
            groupby,
        )
    results = entry["results"]
    groups = cluster_names(results, min_margin=float(min_margin), min_overlap=int(min_overlap))
    labels = adata.obs[groupby]
    keys = labels.astype(str).where(labels.notna())
    queried = set(groups.index)
    missing = sorted(set(keys.dropna()) - queried)
    if len(missing) == keys.dropna().nunique():
        raise ValueError(f"None of the groups of adata.obs[{groupby!r}] is in adata.uns[{key!r}].")
    if missing:
        logger.warning("Groups %s were not queried; their cells get no label.", missing)
    best = results.loc[results["rank"] == 1]
    _warn_unnamed(best.loc[best["group"].astype(str).isin(set(keys.dropna()))], where=f"adata.uns[{key!r}]")
    unsure = groups.loc[groups["status"].isin(["low margin", "few overlapping genes"])]
    if len(unsure):
        logger.info(
            "Groups %s are %r: their best candidate is not clearly ahead (see adata.uns[%r]).",
            list(unsure.index),
            UNASSIGNED,
            key_added,
        )
    mapping = groups["name"].dropna().to_dict()
    named = [name for name in dict.fromkeys(mapping.values()) if name != UNASSIGNED]
    categories = named + ([UNASSIGNED] if UNASSIGNED in mapping.values() else [])
    adata.obs[key_added] = pd.Categorical(keys.map(mapping), categories=categories)
    candidates = results.loc[results["rank"] <= n_candidates]
    candidates = candidates[["group", "rank", "cell_type", "score", "n_overlap", "overlap"]].reset_index(
        drop=True
    )
    adata.uns[key_added] = {
        "groups": groups.reset_index(),
        "candidates": candidates,
        "params": {
            "key": key,
            "groupby": groupby,
            "method": method,
            "min_margin": float(min_margin),
            "min_overlap": int(min_overlap),
            "n_candidates": int(n_candidates),
        },
    }
    logger.info(
        "Added adata.obs[%r] with %d cell types (%d of %d groups unassigned).",
        key_added,
        len(named),
        len(unsure),
        len(groups),
    )


def cluster_names(results: pd.DataFrame, *, min_margin: float, min_overlap: int) -> pd.DataFrame:
    """Name (or ``"Unassigned"``) of every group of a query result, with the evidence for it.

    Parameters
    ----------
    results
        The ``results`` table of :func:`scsalient.tl.query_cell_types`.
    min_margin, min_overlap
        See :func:`annotate_clusters`.

    Returns
    -------
    Data frame indexed by group (as strings) with ``name`` (``None`` without overlapping gene),
    ``status``, ``best``, ``second``, ``score``, ``margin``, ``n_overlap`` and ``overlap``.
    """
    from scsalient.model.base._annotate import UNASSIGNED

    rows = {}
    ordered = results.sort_values(["group", "rank"])
    for group, frame in ordered.groupby("group", observed=True, sort=False):
        first = frame.iloc[0]
        second = frame.iloc[1] if len(frame) > 1 else None
        margin = float(first["score"] - second["score"]) if second is not None else float("inf")
        n_overlap = int(first["n_overlap"])
        if n_overlap <= 0:
            status, name = "no overlapping gene", None
        elif n_overlap < min_overlap:
            status, name = "few overlapping genes", UNASSIGNED
        elif margin < min_margin:
            status, name = "low margin", UNASSIGNED
        else:
            status, name = "named", str(first["cell_type"])
        rows[str(group)] = {
            "name": name,
            "status": status,
            "best": str(first["cell_type"]),
            "second": None if second is None else str(second["cell_type"]),
            "score": float(first["score"]),
            "margin": margin,
            "n_overlap": n_overlap,
            "overlap": str(first["overlap"]),
        }
    groups = pd.DataFrame.from_dict(rows, orient="index")
    groups.index.name = "group"
    return groups


# --------------------------------------------------------------------------------------------
# helpers


def _get_record(adata: AnnData, key: str) -> Mapping[str, Any]:
    if key not in adata.uns:
        raise KeyError(f"adata.uns has no {key!r}; run scsalient.tl.salient_genes first.")
    record = adata.uns[key]
    if not isinstance(record, Mapping) or "names" not in record:
        raise ValueError(f"adata.uns[{key!r}] is not a salient-gene record (no 'names').")
    return record


def _queries(
    record: Mapping[str, Any], *, key: str, n_genes: int, groups: Sequence[str] | None
) -> dict[str, list[str]]:
    names = record["names"]
    available = list(names.dtype.names)
    groups = select_groups(groups, available, key)
    if n_genes > len(names):
        logger.info("adata.uns[%r] holds %d genes per group; using all of them.", key, len(names))
    queries = {}
    for group in groups:
        genes = [str(gene) for gene in names[group][:n_genes] if isinstance(gene, str) and gene]
        queries[group] = list(dict.fromkeys(genes))
    return queries


def _database_table(database: Any, *, species: str) -> pd.DataFrame:
    from scsalient.datasets._markers import marker_database

    if isinstance(database, pd.DataFrame):
        missing = [column for column in ("cell_type", "gene") if column not in database.columns]
        if missing:
            raise ValueError(
                f"The database misses the column(s) {missing}; see scsalient.datasets.marker_database."
            )
        if "weight" in database.columns:
            table = database[["cell_type", "gene", "weight"]].copy()
            if table["weight"].isna().any() or (table["weight"] < 0).any():
                raise ValueError("Database weights must be non-negative numbers.")
        else:
            table = database[["cell_type", "gene"]].assign(weight=1.0)
        table = table.dropna(subset=["cell_type", "gene"])
        table.attrs = dict(database.attrs)
    else:
        table = marker_database(database, species=species)
    if table.empty:
        raise ValueError("The marker database is empty.")
    table["cell_type"] = table["cell_type"].astype(str)
    table["weight"] = table["weight"].astype(np.float64)
    return table


def _names(best: pd.DataFrame) -> dict[str, str | None]:
    """Group -> its rank-1 cell type, or ``None`` when that type shares no gene with the query."""
    return {
        str(group): (str(cell_type) if n_overlap > 0 else None)
        for group, cell_type, n_overlap in zip(
            best["group"], best["cell_type"], best["n_overlap"], strict=True
        )
    }


def _warn_unnamed(best: pd.DataFrame, *, where: str) -> None:
    """Warn about groups whose rank-1 type shares no gene with their query (they get no name)."""
    unnamed = best.loc[best["n_overlap"] <= 0]
    if unnamed.empty:
        return
    no_query = unnamed.loc[unnamed["n_query"] <= 0, "group"].astype(str).tolist()
    details = []
    if no_query:
        details.append(
            f"none of the query genes of {no_query} is in the database (check the species, and "
            "`gene_symbols` if adata.var_names are not gene symbols)"
        )
    other = unnamed.loc[unnamed["n_query"] > 0, "group"].astype(str).tolist()
    if other:
        details.append(f"the best-ranked type of {other} lists none of their query genes")
    warnings.warn(
        f"Groups {unnamed['group'].astype(str).tolist()} get no cell-type name from {where}: "
        + "; ".join(details)
        + ". A group is never named from zero overlapping genes; their cells stay unlabelled.",
        UserWarning,
        stacklevel=3,
    )


def _overlap_strings(hits: sparse.csr_matrix, genes: list[str]) -> list[str]:
    out = []
    for row in range(hits.shape[0]):
        columns = np.sort(hits.indices[hits.indptr[row] : hits.indptr[row + 1]])
        out.append(";".join(genes[c] for c in columns))
    return out


def _describe(database: Any) -> str:
    if isinstance(database, str | os.PathLike):
        return str(database)
    return type(database).__name__
