"""Leiden clusters as training labels, optionally with an exact number of clusters."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData

from scsalient._constants import ClusterKeys
from scsalient.model.base._checks import describe_location, inspect_expression

logger = logging.getLogger(__name__)


def cluster_labels(
    adata: AnnData,
    n_clusters: int | None = None,
    resolution: float = 1.0,
    key_added: str = ClusterKeys.LEIDEN,
    *,
    layer: str | None = None,
    n_top_genes: int | None = 2000,
    n_pcs: int = 50,
    n_neighbors: int = 15,
    use_existing_neighbors: bool = True,
    max_iterations: int = 40,
    random_state: int = 0,
) -> None:
    """Cluster cells with scanpy's neighbours + Leiden, to use the clusters as NACT labels.

    Counts are normalised to log1p(CP10k) first (log-normalised input is used as given);
    then highly variable genes, PCA, a kNN graph and Leiden run on a private copy, so only
    ``obs[key_added]`` and ``uns[key_added]`` are written into ``adata``. If ``adata``
    already holds a neighbour graph (from :func:`scanpy.pp.neighbors`) and
    ``use_existing_neighbors`` is true, that graph is used.

    With ``n_clusters``, the Leiden resolution is searched (bisection on a log scale)
    until exactly that many clusters come out.

    Parameters
    ----------
    adata
        Cells x genes data (raw counts or log-normalised).
    n_clusters
        Wanted number of clusters; ``None`` uses ``resolution`` as given.
    resolution
        Leiden resolution (start of the search when ``n_clusters`` is given).
    key_added
        Column of ``obs`` for the cluster labels.
    layer
        Layer holding the expression; ``None`` for ``.X``.
    n_top_genes
        Highly variable genes used for the PCA; ``None`` uses all genes.
    n_pcs
        Principal components for the graph.
    n_neighbors
        Neighbours per cell in the graph.
    use_existing_neighbors
        Reuse ``adata.obsp["connectivities"]`` when present.
    max_iterations
        Most Leiden runs in the resolution search.
    random_state
        Seed for PCA and Leiden.

    Raises
    ------
    ValueError
        If ``n_clusters`` is not reached within ``max_iterations`` runs (the message gives the
        closest count) or is out of range.

    Examples
    --------
    >>> import scsalient as ss
    >>> adata = ss.datasets.simulate(n_cells=500, n_cell_types=4)
    >>> ss.pp.cluster_labels(adata, n_clusters=4)
    >>> adata.obs["leiden"].nunique()
    4
    """
    if n_clusters is not None and not 1 <= n_clusters < adata.n_obs:
        raise ValueError(f"n_clusters must be between 1 and n_obs - 1, got {n_clusters}.")
    graph = _neighbour_graph(
        adata, layer, n_top_genes, n_pcs, n_neighbors, use_existing_neighbors, random_state
    )

    def run(res: float) -> pd.Categorical:
        sc.tl.leiden(
            graph,
            resolution=res,
            key_added="_c",
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=random_state,
        )
        return graph.obs["_c"].values

    labels, used = run(resolution), resolution
    if n_clusters is not None and len(labels.categories) != n_clusters:
        labels, used = _search_resolution(run, n_clusters, resolution, max_iterations)
    adata.obs[key_added] = pd.Categorical(np.asarray(labels).astype(str))
    adata.uns[key_added] = {
        "params": {
            "resolution": float(used),
            "n_clusters": int(len(labels.categories)),
            "n_neighbors": n_neighbors,
            "random_state": random_state,
        }
    }
    logger.info("Leiden at resolution %.4g gave %d clusters.", used, len(labels.categories))


def _neighbour_graph(adata, layer, n_top_genes, n_pcs, n_neighbors, use_existing, random_state) -> AnnData:
    """A private AnnData holding a kNN graph of ``adata``'s cells."""
    if use_existing and "connectivities" in adata.obsp:
        logger.info("Using the existing neighbour graph in adata.obsp['connectivities'].")
        graph = AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()))
        graph.obsp["connectivities"] = adata.obsp["connectivities"]
        graph.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {"method": "umap"}}
        return graph
    x = adata.X if layer is None else adata.layers[layer]
    kind = inspect_expression(x, describe_location(layer), adata.obs_names)
    work = AnnData(
        X=x.copy(),
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    if kind == "counts":
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    if n_top_genes is not None and n_top_genes < work.n_vars:
        sc.pp.highly_variable_genes(work, n_top_genes=n_top_genes, subset=True)
    n_comps = max(2, min(n_pcs, work.n_obs - 1, work.n_vars - 1))
    sc.pp.pca(work, n_comps=n_comps, random_state=random_state)
    sc.pp.neighbors(work, n_neighbors=n_neighbors, random_state=random_state)
    return work


def _search_resolution(run, target: int, start: float, max_iterations: int):
    """Bisection on log(resolution) until Leiden gives ``target`` clusters."""
    low, high = None, None  # resolutions known to give too few / too many clusters
    res, best = start, None
    for _ in range(max_iterations):
        labels = run(res)
        k = len(labels.categories)
        if best is None or abs(k - target) < abs(best[2] - target):
            best = (labels, res, k)
        if k == target:
            return labels, res
        if k < target:
            low = res
            res = res * 2 if high is None else np.sqrt(res * high)
        else:
            high = res
            res = res / 2 if low is None else np.sqrt(low * res)
    raise ValueError(
        f"No Leiden resolution gave exactly {target} clusters in {max_iterations} runs; the closest was "
        f"{best[2]} clusters at resolution {best[1]:.4g}. Pass that resolution, or change n_clusters."
    )
