"""Tools that read out trained models: salient genes, marker-database queries, gene-peak links."""

from ._links import peak_gene_links
from ._query import annotate_clusters, query_cell_types
from ._salient_genes import salient_genes

__all__ = ["annotate_clusters", "peak_gene_links", "query_cell_types", "salient_genes"]
