"""scsalient models (scvi-tools models with explanations)."""

from .nact import NACT
from .translator import Translator

__all__ = ["NACT", "Translator"]
