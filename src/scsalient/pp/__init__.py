"""Preprocessing: labels for unsupervised training."""

from ._cluster_labels import cluster_labels

__all__ = ["cluster_labels"]
