"""Metrics that compare model read-outs with known ground truth."""

from ._calibration import expected_calibration_error, reliability_table, unseen_type_auroc
from ._links import link_recovery
from ._markers import precision_at_k, precision_at_k_per_group
from ._modules import matched_unit_correlation, module_recovery, unit_separation
from ._ontology import ontology_f1, ontology_f1_report
from ._translation import feature_means, translation_controls, translation_scores

__all__ = [
    "expected_calibration_error",
    "feature_means",
    "link_recovery",
    "matched_unit_correlation",
    "module_recovery",
    "ontology_f1",
    "ontology_f1_report",
    "precision_at_k",
    "precision_at_k_per_group",
    "reliability_table",
    "translation_controls",
    "translation_scores",
    "unit_separation",
    "unseen_type_auroc",
]
