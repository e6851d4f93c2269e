"""Tools that read out trained models: salient genes per group and marker-database queries."""

from ._query import annotate_clusters, query_cell_types
from ._salient_genes import salient_genes

__all__ = ["annotate_clusters", "query_cell_types", "salient_genes"]
