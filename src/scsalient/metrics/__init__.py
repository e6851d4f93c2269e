"""Metrics that compare model read-outs with known ground truth."""

from ._links import link_recovery
from ._markers import precision_at_k, precision_at_k_per_group
from ._modules import module_recovery
from ._ontology import ontology_f1, ontology_f1_report
from ._translation import feature_means, translation_controls, translation_scores

__all__ = [
    "feature_means",
    "link_recovery",
    "module_recovery",
    "ontology_f1",
    "ontology_f1_report",
    "precision_at_k",
    "precision_at_k_per_group",
    "translation_controls",
    "translation_scores",
]
