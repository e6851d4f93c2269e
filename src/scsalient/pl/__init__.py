"""Plotting functions for attention, salient genes, gene-set impact, translations and gene-peak links."""

from ._attention import attention_correlation, attention_embedding, salient_genes
from ._moduleae import gene_set_impact, unit_activity
from ._query import cell_type_query
from ._translation import peak_gene_links, translation_scatter

__all__ = [
    "attention_correlation",
    "attention_embedding",
    "cell_type_query",
    "gene_set_impact",
    "peak_gene_links",
    "salient_genes",
    "translation_scatter",
    "unit_activity",
]
