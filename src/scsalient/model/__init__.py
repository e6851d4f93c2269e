"""scsalient models (scvi-tools models with explanations)."""

from .nact import NACT
from .sctab import SCTAB

__all__ = ["NACT", "SCTAB"]
