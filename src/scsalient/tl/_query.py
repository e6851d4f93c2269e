"""Query marker databases with the salient genes of each group."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
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

_METHODS = ("likelihood", "enrichment", "auc")
_UNIVERSES = ("database", "var_names")


def query_cell_types(
    adata: AnnData,
    database: str | os.PathLike | Mapping[str, Any] | pd.DataFrame,
    *,
    key: str = SalientKeys.SALIENT_GENES,
    method: Literal["likelihood", "enrichment", "auc"] = "likelihood",
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

    ``method="auc"``: a rank test over the group's whole ranking instead of its top genes. Every
    gene of the record is ranked by its score (ties share their mean rank; genes of the universe
    missing from the record tie at the bottom), and the score of type *C* is the Mann-Whitney
    statistic of its :math:`n` markers against the other :math:`N - n` genes, as a z-score,

    .. math::

        z_C = \frac{\mathrm{AUC}_C - 1/2}{\sqrt{(N + 1) / (12\, n\, (N - n))}},

    where :math:`\mathrm{AUC}_C` is the chance that a marker of *C* ranks above another gene. A
    type's markers that rank low count against it, so it suits full rankings such as
    :func:`scanpy.tl.rank_genes_groups` with ``n_genes=None`` (scanpy keeps 100 genes per group by
    default; the rest then tie at the bottom, with a warning). On the naming benchmark it named more clusters
    right from Wilcoxon ranks than the likelihood did (``benchmarks/naming.py``); N-ACT's salient
    genes, which give most genes a score of 0, suit the likelihood better.

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
        ``"likelihood"``, ``"enrichment"`` or ``"auc"``.
    n_genes
        Number of top genes per group used as the query (for ``"auc"``, only to report the
        overlapping genes: the score uses the whole ranking).
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
        ``"var_names"`` for enrichment. ``"auc"`` ranks every gene of ``adata.var_names`` (its
        markers are the database genes among them) and takes no ``universe``.
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
    if method == "auc" and universe is not None:
        raise ValueError("method='auc' ranks every gene of adata.var_names and takes no `universe`.")
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
    rankings = _rankings(record, groups=list(queries)) if method == "auc" else {}
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
        rankings = {
            group: (np.asarray([to_symbol.get(gene, gene) for gene in genes], dtype=object), scores)
            for group, (genes, scores) in rankings.items()
        }
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
    if method == "auc":  # every measured gene is ranked; the markers are the database genes among them
        genes = pd.Index(pd.unique(np.asarray([normalize(gene) for gene in measured_genes], dtype=object)))
        _warn_truncated(rankings, len(genes), key)
    else:
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
        elif method == "auc":
            frame["score"], frame["auc"] = _auc_scores(
                rankings[group], genes, membership, n_markers, normalize=normalize
            )
            order = np.lexsort((np.arange(len(frame)), -frame["score"].to_numpy()))
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
    elif method == "auc":
        columns += ["auc"]
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
    if method == "auc":  # neither weights nor a pseudo-count enter the rank test
        del params["alpha"], params["use_weights"]
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


def _warn_truncated(rankings: dict[str, tuple[np.ndarray, np.ndarray]], n_universe: int, key: str) -> None:
    """Warn when a record ranks fewer genes than the data hold (``method="auc"``)."""
    listed = min((len(genes) for genes, _ in rankings.values()), default=n_universe)
    if listed < n_universe:
        warnings.warn(
            f"adata.uns[{key!r}] ranks as few as {listed} of the {n_universe} genes of a group; "
            "method='auc' ties the others at the bottom, which loses what their ranks say. Rank "
            "every gene, e.g. scanpy.tl.rank_genes_groups(..., n_genes=None).",
            UserWarning,
            stacklevel=3,
        )


def _auc_scores(
    ranking: tuple[np.ndarray, np.ndarray],
    genes: pd.Index,
    membership: sparse.csc_matrix,
    n_markers: np.ndarray,
    *,
    normalize: Callable[[str], str],
) -> tuple[np.ndarray, np.ndarray]:
    """Mann-Whitney z-score and AUC of each type's markers in one group's ranking of ``genes``.

    Types with no marker, or only markers, among ``genes`` get a z-score of -inf and no AUC.
    """
    listed, scores = ranking
    position = genes.get_indexer([normalize(str(gene)) for gene in listed])
    keep = position >= 0
    position, scores = position[keep], scores[keep]
    _, first = np.unique(position, return_index=True)  # a gene listed twice: its first entry
    position, scores = position[first], scores[first]
    # genes missing from the record tie below every listed gene
    finite = scores[np.isfinite(scores)]
    floor = float(finite.min()) - 1.0 if finite.size else 0.0
    full = np.full(len(genes), floor, dtype=np.float64)
    full[position] = np.where(np.isfinite(scores), scores, floor)
    ranks = stats.rankdata(full)  # 1 = lowest score; ties share their mean rank
    n, n_universe = n_markers.astype(np.float64), len(genes)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (membership @ ranks - n * (n + 1) / 2) / (n * (n_universe - n))
        z = (auc - 0.5) / np.sqrt((n_universe + 1) / (12 * n * (n_universe - n)))
    usable = (n_markers > 0) & (n_markers < n_universe)
    return np.where(usable, z, -np.inf), np.where(usable, auc, np.nan)


#: defaults of :func:`annotate_clusters`, chosen on the naming benchmark (benchmarks/naming.py)
DEFAULT_MIN_MARGIN = {"likelihood": 3.0, "enrichment": 1.0, "auc": 0.0}
#: margin when several queries must agree: their agreement replaces the margin rule
AGREEMENT_MIN_MARGIN = 0.0
DEFAULT_MIN_OVERLAP = 3


def annotate_clusters(
    adata: AnnData,
    groupby: str,
    *,
    key: str | Sequence[str] = SalientKeys.CELL_TYPE_QUERY,
    key_added: str = NACTKeys.CELL_TYPE,
    min_margin: float | Sequence[float] | None = None,
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

    With several queries (``key`` a list, e.g. one of N-ACT's salient genes and one of the
    expression ranks of :func:`scanpy.tl.rank_genes_groups` with ``method="auc"``), a group is
    named only when every query ranks the same type first (and its markers share at least
    ``min_overlap`` genes with each query); a group whose queries disagree is ``"Unassigned"``
    with status ``"queries disagree"``. Two rankings from different evidence that name the same
    type are the confidence signal, in place of the margin: on the naming benchmark, N-ACT's
    salient genes checked against Wilcoxon ranks this way named more clusters right and fewer
    wrong than either query with its margin rule (``benchmarks/naming.py``; the recipe is in the
    N-ACT user guide).

    Parameters
    ----------
    adata
        Annotated data matrix with the results of :func:`scsalient.tl.query_cell_types` in
        ``adata.uns[key]``.
    groupby
        Column of ``adata.obs`` with the groups that were queried.
    key
        Key of the query results in ``adata.uns``, or several keys whose queries must agree
        (the first one's candidates are the ones kept).
    key_added
        Column of ``adata.obs`` to write, and key of the per-group record in ``adata.uns``.
    min_margin
        Smallest score gap between the rank-1 and the rank-2 candidate, one number for every
        query or one per key. With ``method="likelihood"`` the score is a log-likelihood, so the
        gap is a log-likelihood ratio (in nats: 3.0 means the query is about 20 times likelier
        under the rank-1 type); with ``method="enrichment"`` it is a gap in
        :math:`-\log_{10} p`; with ``method="auc"`` a gap in z-scores. ``None`` takes the
        default of the query's method, chosen on three datasets of the naming benchmark
        (``benchmarks/naming.py``) and reported on nine others: 3.0 for the likelihood, 1.0 for
        enrichment and 0 for auc; with several queries 0 (their agreement is the check, chosen
        the same way). 0 names every group after its rank-1 candidate.
    min_overlap
        Fewest query genes the rank-1 candidate must list (in every query).
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
        ``"low margin"``, ``"few overlapping genes"``, ``"no overlapping gene"`` or, with several
        queries, ``"queries disagree"``), ``best`` and ``second`` (the rank-1 and rank-2
        candidates), ``margin``, ``n_overlap`` and ``overlap`` of the rank-1 candidate of the
        first query; with several queries also ``best_<key>`` and ``margin_<key>`` of each
        further query), ``candidates`` (the ``n_candidates`` best candidates of every group of
        the first query with ``rank``, ``score``, ``n_overlap`` and ``overlap``) and
        ``params``.
    """
    from scsalient.model.base._annotate import UNASSIGNED

    keys_ = [key] if isinstance(key, str) else [str(k) for k in key]
    if not keys_:
        raise ValueError("`key` names no query.")
    if len(set(keys_)) != len(keys_):
        raise ValueError(f"`key` names a query twice: {keys_}.")
    entries = []
    for k in keys_:
        if k not in adata.uns:
            raise KeyError(f"adata.uns has no {k!r}; run scsalient.tl.query_cell_types first.")
        entry = adata.uns[k]
        if not isinstance(entry, Mapping) or "results" not in entry:
            raise ValueError(f"adata.uns[{k!r}] is not a query_cell_types result (no 'results' table).")
        entries.append(entry)
    if groupby not in adata.obs.columns:
        raise KeyError(f"adata.obs has no column {groupby!r} (available: {list(adata.obs.columns)}).")
    methods = [str(entry.get("params", {}).get("method", "likelihood")) for entry in entries]
    if min_margin is None and len(keys_) > 1:
        margins = [AGREEMENT_MIN_MARGIN] * len(keys_)
    elif min_margin is None:
        margins = [DEFAULT_MIN_MARGIN.get(methods[0], DEFAULT_MIN_MARGIN["likelihood"])]
    elif np.ndim(min_margin) == 0:
        margins = [min_margin] * len(keys_)
    else:
        margins = list(min_margin)
        if len(margins) != len(keys_):
            raise ValueError(f"`min_margin` gives {len(margins)} margins for {len(keys_)} queries.")
    for margin in margins:
        number = isinstance(margin, int | float | np.integer | np.floating)
        if not (number and np.isfinite(margin) and margin >= 0):
            raise ValueError(f"`min_margin` must be a non-negative number, got {margin!r}.")
    if not isinstance(min_overlap, int | np.integer) or min_overlap < 1:
        raise ValueError(
            f"`min_overlap` must be a positive integer, got {min_overlap!r} (a group is never named "
            "from zero overlapping genes)."
        )
    if not isinstance(n_candidates, int | np.integer) or n_candidates < 1:
        raise ValueError(f"`n_candidates` must be a positive integer, got {n_candidates!r}.")
    for k, entry in zip(keys_, entries, strict=True):
        queried_groupby = entry.get("params", {}).get("groupby")
        if queried_groupby and queried_groupby != groupby:
            logger.warning(
                "adata.uns[%r] was computed for groups of %r, not %r; matching groups by name.",
                k,
                queried_groupby,
                groupby,
            )
    results = entries[0]["results"]
    groups = cluster_names(results, min_margin=float(margins[0]), min_overlap=int(min_overlap))
    for k, entry, margin in zip(keys_[1:], entries[1:], margins[1:], strict=True):
        other = cluster_names(entry["results"], min_margin=float(margin), min_overlap=int(min_overlap))
        groups = _agree(groups, other, k, unassigned=UNASSIGNED)
    labels = adata.obs[groupby]
    keys = labels.astype(str).where(labels.notna())
    queried = set(groups.index)
    missing = sorted(set(keys.dropna()) - queried)
    if len(missing) == keys.dropna().nunique():
        raise ValueError(f"None of the groups of adata.obs[{groupby!r}] is in adata.uns[{keys_[0]!r}].")
    if missing:
        logger.warning("Groups %s were not queried; their cells get no label.", missing)
    best = results.loc[results["rank"] == 1]
    queried_best = best.loc[best["group"].astype(str).isin(set(keys.dropna()))]
    _warn_unnamed(queried_best, where=f"adata.uns[{keys_[0]!r}]")
    unsure = groups.loc[groups["status"].isin(["low margin", "few overlapping genes", "queries disagree"])]
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
            "key": keys_[0] if len(keys_) == 1 else keys_,
            "groupby": groupby,
            "method": methods[0] if len(keys_) == 1 else methods,
            "min_margin": float(margins[0]) if len(keys_) == 1 else [float(m) for m in margins],
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


def _agree(groups: pd.DataFrame, other: pd.DataFrame, key: str, *, unassigned: str) -> pd.DataFrame:
    """Keep a group's name only when ``other`` (a further query's :func:`cluster_names`) agrees."""
    groups = groups.copy()
    other = other.reindex(groups.index)
    groups[f"best_{key}"] = other["best"]
    groups[f"margin_{key}"] = other["margin"]
    for group in groups.index:
        if groups.at[group, "name"] is None or groups.at[group, "name"] == unassigned:
            continue  # not named by the first query: its status stands
        status = other.at[group, "status"]
        if (
            pd.isna(status) or other.at[group, "best"] != groups.at[group, "best"]
        ):  # unqueried or another type
            groups.at[group, "name"], groups.at[group, "status"] = unassigned, "queries disagree"
        elif status != "named":
            groups.at[group, "name"] = unassigned
            no_gene = status == "no overlapping gene"
            groups.at[group, "status"] = "few overlapping genes" if no_gene else status
    return groups


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


def _rankings(record: Mapping[str, Any], *, groups: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each group's genes and scores in the record (``method="auc"`` needs the scores)."""
    if "scores" not in record:
        raise ValueError("method='auc' needs the record's 'scores' (a rank_genes_groups-style record).")
    names, scores = record["names"], record["scores"]
    out = {}
    for group in groups:
        genes = np.asarray(names[group], dtype=object)
        values = np.asarray(scores[group], dtype=np.float64)
        listed = np.asarray([isinstance(gene, str) and bool(gene) for gene in genes], dtype=bool)
        out[group] = (genes[listed], values[listed])
    return out


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
