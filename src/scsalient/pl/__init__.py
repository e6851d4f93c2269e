"""Plotting functions for attention, salient genes and gene-set impact."""

from ._attention import attention_correlation, attention_embedding, salient_genes
from ._moduleae import gene_set_impact, unit_activity
from ._query import cell_type_query

__all__ = [
    "attention_correlation",
    "attention_embedding",
    "cell_type_query",
    "gene_set_impact",
    "salient_genes",
    "unit_activity",
]
