"""Datasets: a ground-truth simulator and readers for marker databases and gene sets."""

from ._markers import marker_database, read_gmt
from ._simulate import simulate

__all__ = ["marker_database", "read_gmt", "simulate"]
