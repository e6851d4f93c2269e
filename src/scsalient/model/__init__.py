"""scsalient models (scvi-tools models with explanations)."""

from .nact import NACT

__all__ = ["NACT"]
