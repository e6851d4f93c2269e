"""Tools that read out trained models: salient genes, marker queries, gene-set impact, gene-peak links."""

from ._gene_set_impact import gene_set_impact
from ._genome import gene_positions, peak_positions
from ._link_baselines import distance_correlation_score, distance_score, peak_gene_correlation
from ._links import peak_gene_links
from ._query import annotate_clusters, query_cell_types
from ._salient_genes import salient_genes

__all__ = [
    "annotate_clusters",
    "distance_correlation_score",
    "distance_score",
    "gene_positions",
    "gene_set_impact",
    "peak_gene_correlation",
    "peak_gene_links",
    "peak_positions",
    "query_cell_types",
    "salient_genes",
]
