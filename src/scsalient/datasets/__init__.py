"""Datasets: a ground-truth simulator, the Cell Ontology, and readers for marker databases and gene sets."""

from ._markers import marker_database, read_gmt
from ._ontology import cell_ontology
from ._simulate import simulate

__all__ = ["cell_ontology", "marker_database", "read_gmt", "simulate"]
