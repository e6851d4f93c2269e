"""Metrics that compare model read-outs with known ground truth."""

from ._markers import precision_at_k, precision_at_k_per_group

__all__ = ["precision_at_k", "precision_at_k_per_group"]
