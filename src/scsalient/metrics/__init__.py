"""Metrics that compare model read-outs with known ground truth."""

from ._markers import precision_at_k, precision_at_k_per_group
from ._modules import module_recovery
from ._ontology import ontology_f1, ontology_f1_report

__all__ = [
    "module_recovery",
    "ontology_f1",
    "ontology_f1_report",
    "precision_at_k",
    "precision_at_k_per_group",
]
