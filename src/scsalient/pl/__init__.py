"""Plotting functions for calibration, attention, salient genes, gene-set impact, translations and links."""

from ._attention import attention_correlation, attention_embedding, salient_genes
from ._calibration import reliability_diagram
from ._moduleae import gene_set_impact, unit_activity
from ._query import cell_type_query
from ._translation import peak_gene_links, translation_scatter

__all__ = [
    "attention_correlation",
    "attention_embedding",
    "cell_type_query",
    "gene_set_impact",
    "peak_gene_links",
    "reliability_diagram",
    "salient_genes",
    "translation_scatter",
    "unit_activity",
]
