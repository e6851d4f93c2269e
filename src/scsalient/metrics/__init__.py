"""Metrics that compare model read-outs with known ground truth."""

from ._markers import precision_at_k, precision_at_k_per_group
from ._modules import matched_unit_correlation, module_recovery, unit_separation
from ._ontology import ontology_f1, ontology_f1_report
from ._translation import feature_means, translation_controls, translation_scores

__all__ = [
    "feature_means",
    "matched_unit_correlation",
    "module_recovery",
    "ontology_f1",
    "ontology_f1_report",
    "precision_at_k",
    "precision_at_k_per_group",
    "translation_controls",
    "translation_scores",
    "unit_separation",
]
