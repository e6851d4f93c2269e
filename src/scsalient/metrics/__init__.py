"""Metrics that compare model read-outs with known ground truth."""

from ._markers import precision_at_k, precision_at_k_per_group
from ._modules import module_recovery

__all__ = ["module_recovery", "precision_at_k", "precision_at_k_per_group"]
