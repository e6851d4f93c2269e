"""Salient genes per group from per-cell gene attention (TF-IDF read-out of N-ACT)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from scsalient._constants import NACTKeys, SalientKeys

logger = logging.getLogger(__name__)

_EPS = 1e-9
_PROGRESS_MIN_BLOCKS = 20


def salient_genes(
    adata: AnnData,
    groupby: str,
    *,
    attention_key: str = NACTKeys.ATTENTION,
    n_top: int = 100,
    n_genes: int | None = None,
    tfidf: bool = True,
    min_frequency: float = 0.05,
    layer: str | None = None,
    use_raw: bool = False,
    key_added: str = SalientKeys.SALIENT_GENES,
    batch_size: int = 2048,
    inplace: bool = True,
) -> dict[str, Any] | None:
    r"""Rank the most salient genes of each group from per-cell gene attention.

    Follows the read-out of N-ACT (Heydari et al., 2022). Every cell contributes the list of its
    ``n_top`` most attended genes; the lists of a group's cells form that group's document.

    * TF of gene *g* in group *k*: the fraction of the group's cells that have *g* in their list.
    * IDF of *g*: :math:`\log(K / K_g)` with *K* groups, :math:`K_g` of which have *g* in their
      document, so genes attended in every group get an IDF of 0. A document holds *g* when at
      least a fraction ``min_frequency`` of the group's cells list it (TF >= ``min_frequency``).
    * Score: TF x IDF x mean attention of *g* in group *k*. Every gene is ranked by this score
      (ties broken by mean attention), as :func:`scanpy.tl.rank_genes_groups` with
      ``n_genes=None`` does; ``n_genes`` keeps only the best ones.

    With ``tfidf=False`` genes are ranked by their mean attention in the group alone.

    The attention matrix is read in blocks of ``batch_size`` rows, so dense arrays, sparse matrices
    and on-disk arrays (e.g. an :class:`h5py.Dataset`) work without loading the whole matrix.
    Only positive attention values enter a cell's list (a sparse matrix may hold fewer than
    ``n_top`` non-zeros per row). When several genes tie at a cell's ``n_top``-th value, each of
    them enters that cell's list with an equal fractional count so that the list still counts
    ``n_top`` genes; the result therefore does not depend on the gene order.

    Cells without a label in ``adata.obs[groupby]`` (missing values, e.g. cells a classifier gave
    no prediction) are ignored, and groups without cells (unused categories, e.g. classes never
    predicted) are skipped with a :class:`UserWarning`. Groups of fewer than 20 cells get a
    :class:`UserWarning` too: their salient genes rest on few cells.

    The fields that :func:`scanpy.tl.rank_genes_groups` fills from expression (``logfoldchanges``,
    ``pts``, ``pts_rest``) are computed from expression here as well, the way scanpy computes them:
    from ``adata.X`` (or ``layer``, or ``adata.raw`` with ``use_raw=True``) after log1p(CP10k)
    normalisation when it holds counts, or as given when it is log-normalised. Without usable
    expression (no ``adata.X``, or negative values such as scaled data) ``logfoldchanges`` is NaN
    and ``pts`` / ``pts_rest`` are left out (with a :class:`UserWarning` for unusable values).

    Parameters
    ----------
    adata
        Annotated data matrix with the attention in ``adata.obsm[attention_key]`` (cells x genes,
        columns in the order of ``adata.var_names``).
    groupby
        Column of ``adata.obs`` with the groups (cell types, clusters, predicted labels).
    attention_key
        Key of the per-cell attention in ``adata.obsm``.
    n_top
        Number of most attended genes taken from each cell.
    n_genes
        Number of genes kept per group; ``None`` (default) keeps every gene.
    tfidf
        Rank by TF-IDF x mean attention (default) or by mean attention alone.
    min_frequency
        Smallest TF for which a group's document counts as holding a gene in the IDF. With 0, a
        single cell listing a gene puts it in its group's document; in groups of hundreds of cells
        nearly every gene is then listed somewhere in every group (in Kang et al. 2018 PBMCs,
        2,346 of 2,511 genes with ``n_top=100``), its IDF drops to 0, and rarely listed genes
        dominate the ranking. The default, 5 % of the group's cells, ignores such sporadic
        listings (e.g. from doublets or mislabelled cells). Keep it above the rate at which a
        gene enters a cell's list by chance, roughly ``n_top / n_vars``.
    layer
        Layer of ``adata`` with the expression for ``logfoldchanges`` and ``pts``; ``None`` for
        ``adata.X``.
    use_raw
        Read that expression from ``adata.raw`` (the columns of ``adata.var_names``) instead.
    key_added
        Key of the record in ``adata.uns``.
    batch_size
        Number of cells read at once.
    inplace
        Write the record to ``adata.uns[key_added]`` (and return `None`) or return it.

    Returns
    -------
    `None` when ``inplace=True``; otherwise the record described below.

    Sets ``adata.uns[key_added]`` to a record in the layout of :func:`scanpy.tl.rank_genes_groups`,
    so :func:`scanpy.get.rank_genes_groups_df` and scanpy's ``rank_genes_groups_*`` plots
    (including ``values_to_plot="logfoldchanges"``) accept ``key=key_added``. Structured arrays
    with one field per group and one row per kept gene:

    ``names``
        Gene names, best first.
    ``scores``
        The ranking score (TF-IDF x mean attention, or mean attention).
    ``logfoldchanges``
        As in scanpy: :math:`\log_2` of the ratio of ``expm1`` of the group's mean log expression
        to that of all other cells; NaN without usable expression.
    ``pvals``, ``pvals_adj``
        One-sided hypergeometric test that the gene is in the attention lists of the group's
        cells more often than in those of the other cells, and Benjamini-Hochberg adjusted
        values (over all genes of the group). A test of the attention, not of expression.
    ``mean_attention``, ``tf``, ``idf``
        The factors of the score.
    ``attention_log2_ratio``
        :math:`\log_2` ratio of the mean attention in the group to that in all other cells.

    Plus data frames (genes x groups): ``pts`` / ``pts_rest`` (as in scanpy: fraction of the
    group's / of the other cells that express the gene; only with usable expression), ``tf_all``
    (TF of every gene) and ``mean_attention_all`` (mean attention of every gene), and ``params``.

    Examples
    --------
    >>> import scanpy as sc
    >>> import scsalient
    >>> scsalient.tl.salient_genes(adata, groupby="nact_prediction")  # doctest: +SKIP
    >>> sc.get.rank_genes_groups_df(adata, group=None, key="salient_genes")  # doctest: +SKIP
    """
    attention = _get_attention(adata, attention_key)
    n_vars = adata.n_vars
    if not isinstance(n_top, int | np.integer) or n_top < 1:
        raise ValueError(f"`n_top` must be a positive integer, got {n_top!r}.")
    if n_top > n_vars:
        raise ValueError(f"`n_top` ({n_top}) is larger than the number of genes (adata.n_vars = {n_vars}).")
    if n_genes is None:
        n_genes = n_vars
    if not isinstance(n_genes, int | np.integer) or n_genes < 1:
        raise ValueError(f"`n_genes` must be a positive integer or None (every gene), got {n_genes!r}.")
    if not 0 <= min_frequency <= 1:
        raise ValueError(f"`min_frequency` must be in [0, 1], got {min_frequency!r}.")
    _check_batch_size(batch_size)
    n_genes = min(int(n_genes), n_vars)
    expression_matrix = _expression_matrix(adata, layer=layer, use_raw=use_raw)

    codes, group_names = _group_codes(adata, groupby)
    n_groups = len(group_names)
    if tfidf and n_groups < 2:
        raise ValueError(
            f"TF-IDF needs at least two groups in adata.obs[{groupby!r}], found {n_groups}; use tfidf=False."
        )

    _warn_small_groups(codes, group_names, groupby)

    stats_ = _group_statistics(
        attention, codes, n_groups, n_top=n_top, batch_size=batch_size, key=attention_key
    )
    expression = None
    if expression_matrix is not None:
        expression = _expression_statistics(
            expression_matrix.matrix,
            codes,
            n_groups,
            where=expression_matrix.where,
            columns=expression_matrix.columns,
            batch_size=batch_size,
        )
    record = _build_record(
        stats_,
        group_names=group_names,
        var_names=adata.var_names,
        n_genes=n_genes,
        tfidf=tfidf,
        min_frequency=min_frequency,
        expression=expression,
    )
    record["params"] = {
        "groupby": groupby,
        "reference": "rest",
        "method": "salient_genes",
        "use_raw": bool(use_raw),
        "layer": layer,
        "corr_method": "benjamini-hochberg",
        "attention_key": attention_key,
        "n_top": int(n_top),
        "n_genes": int(n_genes),
        "tfidf": bool(tfidf),
        "min_frequency": float(min_frequency),
        "expression": None if expression is None else expression.where,
    }
    if not inplace:
        return record
    adata.uns[key_added] = record
    logger.info(
        "Ranked %d salient genes for %d groups of %r; added to adata.uns[%r].",
        n_genes,
        n_groups,
        groupby,
        key_added,
    )
    return None


# --------------------------------------------------------------------------------------------
# streaming statistics (shared with scsalient.pl)


@dataclass
class _GroupStatistics:
    n_cells: np.ndarray  # (groups,)
    sums: np.ndarray  # (groups, genes) attention sums
    counts: np.ndarray | None  # (groups, genes) top-list counts


def _get_attention(adata: AnnData, attention_key: str) -> Any:
    if attention_key not in adata.obsm:
        available = list(adata.obsm.keys())
        raise KeyError(
            f"No attention in adata.obsm[{attention_key!r}] (available keys: {available}). "
            "Run the model's `annotate()` first or pass `attention_key`."
        )
    attention = adata.obsm[attention_key]
    if isinstance(attention, pd.DataFrame):
        attention = attention.to_numpy()
    shape = getattr(attention, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(
            f"adata.obsm[{attention_key!r}] must be a 2-D cells x genes matrix, got shape {shape}."
        )
    if shape[0] != adata.n_obs:
        raise ValueError(
            f"adata.obsm[{attention_key!r}] has {shape[0]} rows but adata has {adata.n_obs} cells."
        )
    if shape[1] != adata.n_vars:
        raise ValueError(
            f"adata.obsm[{attention_key!r}] has {shape[1]} columns but adata has {adata.n_vars} genes "
            "(n_vars); the attention must have one column per gene in adata.var_names."
        )
    return attention


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")


def _group_codes(adata: AnnData, groupby: str) -> tuple[np.ndarray, list[str]]:
    """Integer group code per cell (-1 for unlabelled cells) and the group names."""
    if groupby not in adata.obs.columns:
        raise KeyError(f"adata.obs has no column {groupby!r} (available: {list(adata.obs.columns)}).")
    labels = adata.obs[groupby]
    categorical = (
        labels.astype("category") if not isinstance(labels.dtype, pd.CategoricalDtype) else labels
    ).cat
    codes = np.asarray(categorical.codes, dtype=np.int64)
    names = [str(category) for category in categorical.categories]
    if not names:
        raise ValueError(f"adata.obs[{groupby!r}] holds no labels.")
    if len(set(names)) != len(names):
        raise ValueError(
            f"Groups of adata.obs[{groupby!r}] are not unique once converted to strings: {names}."
        )
    sizes = np.bincount(codes[codes >= 0], minlength=len(names))
    empty = sizes == 0
    if empty.all():
        raise ValueError(f"adata.obs[{groupby!r}] holds no labels (every cell's label is missing).")
    if empty.any():
        # e.g. classes a classifier never predicted: categories without cells
        warnings.warn(
            f"Skipping groups {[name for name, e in zip(names, empty, strict=True) if e]} of "
            f"adata.obs[{groupby!r}]: no cell has these labels.",
            UserWarning,
            stacklevel=3,
        )
        new_code = np.cumsum(~empty) - 1
        codes = np.where(codes >= 0, new_code[np.maximum(codes, 0)], -1)
        names = [name for name, e in zip(names, empty, strict=True) if not e]
    n_unlabelled = int((codes < 0).sum())
    if n_unlabelled:
        logger.info("Ignoring %d cells without a label in adata.obs[%r].", n_unlabelled, groupby)
    return codes, names


def _iter_row_blocks(
    matrix: Any, batch_size: int, *, key: str = "attention"
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, dense block)`` over row blocks of a dense, sparse or on-disk matrix."""
    if sparse.issparse(matrix) and matrix.format != "csr":
        matrix = sparse.csr_matrix(matrix)  # row slices of other formats are slow
    n_rows = matrix.shape[0]
    starts = range(0, n_rows, batch_size)
    iterator = starts
    if len(starts) >= _PROGRESS_MIN_BLOCKS:
        from tqdm.auto import tqdm

        iterator = tqdm(starts, desc=f"Reading {key}", unit="block")
    for start in iterator:
        block = matrix[start : start + batch_size]
        if sparse.issparse(block):
            block = block.toarray()
        block = np.asarray(block)
        if block.ndim != 2:
            raise ValueError(f"Rows of {key} must be 2-D blocks, got shape {block.shape}.")
        if not np.issubdtype(block.dtype, np.floating):
            block = block.astype(np.float64)
        if np.isnan(block).any():
            raise ValueError(f"{key} holds NaN values (first in rows {start}-{start + len(block) - 1}).")
        yield start, block


def _top_membership(block: np.ndarray, n_top: int) -> np.ndarray:
    """Fractional membership of each gene in each row's ``n_top`` list (positive values only)."""
    n_genes = block.shape[1]
    kth = np.partition(block, n_genes - n_top, axis=1)[:, n_genes - n_top]
    positive_kth = kth > 0
    threshold = np.where(positive_kth, kth, 0.0)[:, None]
    membership = (block > threshold).astype(np.float32)
    if positive_kth.any():
        tied = block == kth[:, None]
        tied &= positive_kth[:, None]
        n_tied = tied.sum(axis=1)
        n_above = membership.sum(axis=1)
        share = np.divide(n_top - n_above, n_tied, out=np.zeros(len(block)), where=n_tied > 0)
        membership += tied * share.astype(np.float32)[:, None]
    return membership


def _group_statistics(
    attention: Any,
    codes: np.ndarray,
    n_groups: int,
    *,
    n_top: int | None,
    batch_size: int,
    key: str = "attention",
) -> _GroupStatistics:
    n_vars = attention.shape[1]
    sums = np.zeros((n_groups, n_vars))
    counts = np.zeros((n_groups, n_vars)) if n_top is not None else None
    n_cells = np.bincount(codes[codes >= 0], minlength=n_groups).astype(np.int64)
    what = f"adata.obsm[{key!r}]"
    for start, block in _iter_row_blocks(attention, batch_size, key=what):
        block_codes = codes[start : start + len(block)]
        labelled = block_codes >= 0
        if not labelled.all():
            block, block_codes = block[labelled], block_codes[labelled]
        if len(block) == 0:
            continue
        if (block < 0).any():
            raise ValueError(f"{what} holds negative values; expected non-negative attention weights.")
        order = np.argsort(block_codes, kind="stable")
        sorted_codes = block_codes[order]
        present, first = np.unique(sorted_codes, return_index=True)
        sorted_block = block[order]
        sums[present] += np.add.reduceat(sorted_block, first, axis=0, dtype=np.float64)
        if counts is not None:
            membership = _top_membership(sorted_block, n_top)
            counts[present] += np.add.reduceat(membership, first, axis=0, dtype=np.float64)
    return _GroupStatistics(n_cells=n_cells, sums=sums, counts=counts)


def _group_means(
    adata: AnnData, groupby: str, attention_key: str, batch_size: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Mean attention per group (genes x groups) and the group sizes."""
    attention = _get_attention(adata, attention_key)
    _check_batch_size(batch_size)
    codes, names = _group_codes(adata, groupby)
    group_stats = _group_statistics(
        attention, codes, len(names), n_top=None, batch_size=batch_size, key=attention_key
    )
    means = group_stats.sums / group_stats.n_cells[:, None]
    return pd.DataFrame(means.T, index=adata.var_names.copy(), columns=names), group_stats.n_cells


# --------------------------------------------------------------------------------------------
# expression statistics for the scanpy fields (logfoldchanges, pts, pts_rest)

#: groups with fewer cells get a warning: their salient genes rest on few cells
MIN_GROUP_CELLS = 20
_TARGET_SUM = 1e4  # log1p(CP10k), as scanpy's normalize_total(target_sum=1e4) + log1p


@dataclass
class _ExpressionMatrix:
    matrix: Any
    where: str
    columns: np.ndarray | None  # columns of ``matrix`` in the order of adata.var_names (raw)


@dataclass
class _ExpressionStatistics:
    where: str
    sums: np.ndarray  # (groups, genes) sums of log expression
    nonzero: np.ndarray  # (groups, genes) cells with non-zero expression
    total_sums: np.ndarray  # (genes,) over all labelled cells
    total_nonzero: np.ndarray  # (genes,)


def _expression_matrix(adata: AnnData, *, layer: str | None, use_raw: bool) -> _ExpressionMatrix | None:
    """The matrix the scanpy fields are computed from, or ``None`` when ``adata`` holds none."""
    if use_raw and layer is not None:
        raise ValueError("Pass either `layer` or `use_raw=True`, not both.")
    if use_raw:
        if adata.raw is None:
            raise ValueError("`use_raw=True` but adata.raw is None; pass use_raw=False (adata.X) or `layer`.")
        columns = adata.raw.var_names.get_indexer(adata.var_names)
        if (columns < 0).any():
            missing = list(adata.var_names[columns < 0][:5])
            raise ValueError(
                f"adata.raw lacks genes of adata.var_names (e.g. {missing}); use use_raw=False or `layer`."
            )
        return _ExpressionMatrix(adata.raw.X, "adata.raw.X", columns)
    if layer is not None:
        if layer not in adata.layers:
            raise KeyError(f"adata.layers has no {layer!r} (available: {list(adata.layers.keys())}).")
        return _ExpressionMatrix(adata.layers[layer], f"adata.layers[{layer!r}]", None)
    if adata.X is None:
        logger.info("adata.X is None: the record's logfoldchanges are NaN and it gets no pts.")
        return None
    return _ExpressionMatrix(adata.X, "adata.X", None)


def _expression_statistics(
    matrix: Any,
    codes: np.ndarray,
    n_groups: int,
    *,
    where: str,
    columns: np.ndarray | None,
    batch_size: int,
) -> _ExpressionStatistics | None:
    """Per-group sums of log1p(CP10k) (or log-normalised) expression and non-zero counts."""
    from scsalient.model.base._checks import decide_input_kind, iter_row_blocks, scan_expression

    try:
        scan = scan_expression(matrix, where)
    except ValueError as error:
        warnings.warn(
            f"The record's logfoldchanges are NaN and it gets no pts: {error} These fields need counts or "
            "log-normalised expression; pass `layer` or `use_raw=True` to read such values.",
            UserWarning,
            stacklevel=3,
        )
        return None
    counts = decide_input_kind(scan).kind == "counts"
    n_genes = matrix.shape[1] if columns is None else len(columns)
    sums = np.zeros((n_groups, n_genes))
    nonzero = np.zeros((n_groups, n_genes))
    for start, block in iter_row_blocks(matrix, batch_size):
        block_codes = codes[start : start + block.shape[0]]
        rows = np.flatnonzero(block_codes >= 0)
        if rows.size == 0:
            continue
        block = block[rows]
        if counts:
            totals = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
            scale = np.divide(_TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
            if sparse.issparse(block):
                block = sparse.csr_matrix(sparse.diags(scale) @ block)
                block.data = np.log1p(block.data)
            else:
                block = np.log1p(np.asarray(block, dtype=np.float64) * scale[:, None])
        if columns is not None:
            block = block[:, columns]
        indicator = sparse.csr_matrix(
            (np.ones(rows.size), (block_codes[rows], np.arange(rows.size))), shape=(n_groups, rows.size)
        )
        detected = block != 0
        sums += np.asarray((indicator @ block).toarray() if sparse.issparse(block) else indicator @ block)
        hits = indicator @ (detected.astype(np.float64) if not sparse.issparse(detected) else detected)
        nonzero += np.asarray(hits.toarray() if sparse.issparse(hits) else hits)
    return _ExpressionStatistics(
        where=where,
        sums=sums,
        nonzero=nonzero,
        total_sums=sums.sum(axis=0),
        total_nonzero=nonzero.sum(axis=0),
    )


def _warn_small_groups(codes: np.ndarray, group_names: list[str], groupby: str) -> None:
    sizes = np.bincount(codes[codes >= 0], minlength=len(group_names))
    small = {name: int(size) for name, size in zip(group_names, sizes, strict=True) if size < MIN_GROUP_CELLS}
    if small:
        warnings.warn(
            f"Groups of adata.obs[{groupby!r}] with fewer than {MIN_GROUP_CELLS} cells: {small}. Their "
            "salient genes rest on few cells; merge such groups or read their genes with care.",
            UserWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# scores and the rank_genes_groups-style record


def _build_record(
    group_stats: _GroupStatistics,
    *,
    group_names: list[str],
    var_names: pd.Index,
    n_genes: int,
    tfidf: bool,
    min_frequency: float = 0.0,
    expression: _ExpressionStatistics | None = None,
) -> dict[str, Any]:
    n_cells = group_stats.n_cells.astype(np.float64)
    sums, counts = group_stats.sums, group_stats.counts
    n_groups = len(group_names)
    n_total = n_cells.sum()

    mean = sums / n_cells[:, None]
    tf = counts / n_cells[:, None]
    n_docs = _document_frequency(tf, min_frequency)
    idf = np.log(np.divide(n_groups, n_docs, out=np.ones(counts.shape[1]), where=n_docs > 0))
    score = tf * idf[None, :] * mean if tfidf else mean.copy()

    n_rest = n_total - n_cells
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_rest = (sums.sum(axis=0)[None, :] - sums) / n_rest[:, None]
        attention_log2_ratio = np.log2((mean + _EPS) / (mean_rest + _EPS))
    pvals = _hypergeom_pvals(counts, n_cells)
    pvals_adj = _benjamini_hochberg(pvals, axis=1)

    fields = ["names", "scores", "logfoldchanges", "pvals", "pvals_adj", "mean_attention", "tf", "idf"]
    fields.append("attention_log2_ratio")
    if expression is not None:
        logfoldchanges, pts, pts_rest = _expression_fields(expression, n_cells)
    else:  # not computed: NaN, so that scanpy's readers (which need the field) still work
        logfoldchanges = np.full(score.shape, np.nan)
    columns: dict[str, dict[str, np.ndarray]] = {field: {} for field in fields}
    gene_index = np.arange(len(var_names))
    names = np.asarray(var_names, dtype=object)
    for k, group in enumerate(group_names):
        order = np.lexsort((gene_index, -mean[k], -score[k]))[:n_genes]
        columns["names"][group] = names[order]
        columns["scores"][group] = score[k, order]
        columns["logfoldchanges"][group] = logfoldchanges[k, order]
        columns["pvals"][group] = pvals[k, order]
        columns["pvals_adj"][group] = pvals_adj[k, order]
        columns["mean_attention"][group] = mean[k, order]
        columns["tf"][group] = tf[k, order]
        columns["idf"][group] = idf[order]
        columns["attention_log2_ratio"][group] = attention_log2_ratio[k, order]

    dtypes = {
        "names": "O",
        "scores": "float32",
        "logfoldchanges": "float32",
        "pvals": "float64",
        "pvals_adj": "float64",
        "mean_attention": "float32",
        "tf": "float32",
        "idf": "float32",
        "attention_log2_ratio": "float32",
    }
    record: dict[str, Any] = {
        field: pd.DataFrame(values, columns=group_names).to_records(index=False, column_dtypes=dtypes[field])
        for field, values in columns.items()
    }
    index = pd.Index(var_names, dtype=object)
    if expression is not None:
        record["pts"] = pd.DataFrame(pts.T, index=index, columns=group_names)
        record["pts_rest"] = pd.DataFrame(pts_rest.T, index=index, columns=group_names)
    record["tf_all"] = pd.DataFrame(tf.T, index=index, columns=group_names)
    record["mean_attention_all"] = pd.DataFrame(mean.T.astype(np.float32), index=index, columns=group_names)
    return record


def _expression_fields(
    expression: _ExpressionStatistics, n_cells: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``logfoldchanges``, ``pts`` and ``pts_rest`` of scanpy (groups x genes), group against the rest."""
    n_rest = n_cells.sum() - n_cells
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = expression.sums / n_cells[:, None]
        mean_rest = (expression.total_sums[None, :] - expression.sums) / n_rest[:, None]
        # as scanpy.tl.rank_genes_groups: expm1 of the mean log expression, group over rest
        logfoldchanges = np.log2((np.expm1(mean) + _EPS) / (np.expm1(mean_rest) + _EPS))
        pts = expression.nonzero / n_cells[:, None]
        pts_rest = (expression.total_nonzero[None, :] - expression.nonzero) / n_rest[:, None]
    return logfoldchanges, pts, pts_rest


def _document_frequency(tf: np.ndarray, min_frequency: float) -> np.ndarray:
    """Number of groups (rows of ``tf``) whose document holds each gene."""
    return ((tf > 0) & (tf >= min_frequency - 1e-9)).sum(axis=0)


def _hypergeom_pvals(counts: np.ndarray, n_cells: np.ndarray) -> np.ndarray:
    """P(at least the observed number of the group's cells list the gene), hypergeometric."""
    n_total = int(n_cells.sum())
    listed = np.rint(counts).astype(np.int64)
    listed_total = np.rint(counts.sum(axis=0)).astype(np.int64)
    pvals = np.ones(counts.shape)
    for k, size in enumerate(n_cells.astype(np.int64)):
        hits = listed[k]
        low = np.maximum(0, size + listed_total - n_total)
        high = np.minimum(size, listed_total)
        hits = np.clip(hits, low, high)
        tested = np.flatnonzero(hits > 0)
        if tested.size:
            # many genes share (hits, listed) pairs: evaluate each pair once
            pairs, inverse = np.unique(
                np.column_stack([hits[tested], listed_total[tested]]), axis=0, return_inverse=True
            )
            unique_p = stats.hypergeom.sf(pairs[:, 0] - 1, n_total, pairs[:, 1], size)
            pvals[k, tested] = unique_p[inverse.ravel()]
    return np.clip(pvals, 0.0, 1.0)


def _benjamini_hochberg(pvals: np.ndarray, axis: int = -1) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values along ``axis``."""
    pvals = np.asarray(pvals, dtype=np.float64)
    if pvals.size == 0:
        return pvals.copy()
    try:
        from scipy.stats import false_discovery_control
    except ImportError:  # scipy < 1.11
        moved = np.moveaxis(pvals, axis, -1)
        n = moved.shape[-1]
        order = np.argsort(moved, axis=-1)
        ranked = np.take_along_axis(moved, order, axis=-1) * n / np.arange(1, n + 1)
        ranked = np.minimum.accumulate(ranked[..., ::-1], axis=-1)[..., ::-1]
        adjusted = np.empty_like(moved)
        np.put_along_axis(adjusted, order, np.clip(ranked, 0, 1), axis=-1)
        return np.moveaxis(adjusted, -1, axis)
    return false_discovery_control(pvals, axis=axis, method="bh")
