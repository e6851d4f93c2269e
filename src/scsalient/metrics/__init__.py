"""Metrics that compare model read-outs with known ground truth."""

from ._markers import precision_at_k, precision_at_k_per_group
from ._ontology import ontology_f1, ontology_f1_report

__all__ = ["ontology_f1", "ontology_f1_report", "precision_at_k", "precision_at_k_per_group"]
