"""Plotting functions for attention, salient genes, translations and gene-peak links."""

from ._attention import attention_correlation, attention_embedding, salient_genes
from ._query import cell_type_query
from ._translation import peak_gene_links, translation_scatter

__all__ = [
    "attention_correlation",
    "attention_embedding",
    "cell_type_query",
    "peak_gene_links",
    "salient_genes",
    "translation_scatter",
]
