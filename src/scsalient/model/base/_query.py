"""Aligning query data to the genes a model was trained on."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

logger = logging.getLogger(__name__)

#: a query must share at least this fraction of the model's genes
MIN_GENE_OVERLAP = 0.5


def align_genes(
    adata: AnnData,
    var_names: pd.Index,
    layer: str | None,
    *,
    min_overlap: float = MIN_GENE_OVERLAP,
    what: str = "genes",
) -> AnnData:
    """Return a light AnnData holding ``adata``'s expression in the model's gene order.

    Genes are matched by name. Model genes missing from the query are zero-filled (with a
    warning giving the fraction), query genes unknown to the model are ignored, and the
    result carries only ``obs_names`` and the model's ``var_names``; ``adata`` itself is left
    untouched. When the genes already match, the expression matrix is shared, not copied.

    Parameters
    ----------
    adata
        Query data.
    var_names
        The model's genes, in the model's order.
    layer
        Layer holding the expression (``None`` for ``.X``); the result keeps the same layer.
    min_overlap
        Smallest accepted fraction of the model's genes present in the query.
    what
        What the features are, for messages (``"genes"``, ``"peaks"``).

    Raises
    ------
    ValueError
        If the query has duplicated gene names or shares fewer than ``min_overlap`` of the
        model's genes.
    """
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"The model reads adata.layers['{layer}'], which the query does not have.")
    x = adata.X if layer is None else adata.layers[layer]
    query_genes = pd.Index(adata.var_names)
    if query_genes.equals(var_names):
        aligned = x
    else:
        if query_genes.has_duplicates:
            dup = query_genes[query_genes.duplicated()].unique()[:5].tolist()
            raise ValueError(
                f"Query var_names contain duplicates (e.g. {dup}); run adata.var_names_make_unique()."
            )
        source = query_genes.get_indexer(var_names)
        present = source >= 0
        overlap = present.mean()
        if overlap < min_overlap:
            raise ValueError(
                f"The query holds only {present.sum()} of the model's {len(var_names)} {what} "
                f"({overlap:.1%}); at least {min_overlap:.0%} are needed. Check that both use the same "
                "identifiers (gene symbols vs Ensembl IDs, peak names), species and genome."
            )
        if overlap < 1:
            warnings.warn(
                f"{(~present).sum()} of the model's {len(var_names)} {what} ({1 - overlap:.1%}) are "
                "missing from the query and are filled with zeros.",
                UserWarning,
                stacklevel=3,
            )
        else:
            logger.info("Query %s reordered to the model's order.", what)
        n_extra = len(query_genes) - int(present.sum())
        if n_extra:
            logger.info("%d query %s unknown to the model are ignored.", n_extra, what)
        aligned = _select_columns(x, source[present], np.flatnonzero(present), len(var_names))
    obs = pd.DataFrame(index=adata.obs_names.copy())
    var = pd.DataFrame(index=pd.Index(var_names, dtype=str))
    if layer is None:
        return AnnData(X=aligned, obs=obs, var=var)
    return AnnData(obs=obs, var=var, layers={layer: aligned})


def _select_columns(x, source: np.ndarray, dest: np.ndarray, n_out: int):
    """Columns ``source`` of ``x`` placed at positions ``dest`` of an ``n_out``-column matrix."""
    if sparse.issparse(x):
        x = sparse.csr_matrix(x)
        mapping = sparse.csr_matrix(
            (np.ones(len(source), dtype=x.dtype), (source, dest)), shape=(x.shape[1], n_out)
        )
        return sparse.csr_matrix(x @ mapping)
    x = np.asarray(x)
    out = np.zeros((x.shape[0], n_out), dtype=x.dtype)
    out[:, dest] = x[:, source]
    return out


def conform_genes(
    adata: AnnData,
    var_names: pd.Index,
    layer: str | None,
    *,
    min_overlap: float = MIN_GENE_OVERLAP,
    what: str = "genes",
) -> AnnData:
    """``adata`` itself when its genes are the model's in the model's order, else a copy that is.

    The copy is matched by name as in :func:`align_genes` (missing genes zero-filled with a
    warning, under ``min_overlap`` an error) and holds the expression of ``layer`` (``None``:
    ``.X``), ``adata``'s ``obs``, ``obsm`` and ``uns`` (without scvi-tools' set-up keys) and
    the model's ``var_names`` with ``adata``'s ``var`` columns (missing for features ``adata``
    lacks; peak coordinates are kept): a model can be set up on it for training and read-outs.

    Parameters
    ----------
    adata
        Data to attach to a model.
    var_names
        The model's genes, in the model's order.
    layer
        Layer holding the expression (``None`` for ``.X``).
    min_overlap
        Smallest accepted fraction of the model's genes present in ``adata``.
    what
        What the features are, for messages (``"genes"``, ``"peaks"``).
    """
    if pd.Index(adata.var_names).equals(var_names):
        return adata
    aligned = align_genes(adata, var_names, layer, min_overlap=min_overlap, what=what)
    aligned.obs = adata.obs.copy()
    aligned.var = adata.var.reindex(aligned.var_names)
    for key, value in adata.obsm.items():
        aligned.obsm[key] = value.copy()
    aligned.uns = {key: value for key, value in adata.uns.items() if not key.startswith("_scvi")}
    return aligned
