"""Metrics that compare model read-outs with known ground truth."""

from ._markers import precision_at_k, precision_at_k_per_group
from ._translation import feature_means, translation_controls, translation_scores

__all__ = [
    "feature_means",
    "precision_at_k",
    "precision_at_k_per_group",
    "translation_controls",
    "translation_scores",
]
