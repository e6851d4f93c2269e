"""Tools that read out trained models: salient genes, marker-database queries, gene-set impact."""

from ._gene_set_impact import gene_set_impact
from ._query import annotate_clusters, query_cell_types
from ._salient_genes import salient_genes

__all__ = ["annotate_clusters", "gene_set_impact", "query_cell_types", "salient_genes"]
