"""Plotting functions for attention and salient genes."""

from ._attention import attention_correlation, attention_embedding, salient_genes
from ._query import cell_type_query

__all__ = ["attention_correlation", "attention_embedding", "cell_type_query", "salient_genes"]
