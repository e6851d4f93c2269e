"""scsalient models (scvi-tools models with explanations)."""

from .moduleae import ModuleAE
from .nact import NACT
from .sctab import SCTAB
from .translator import Translator

__all__ = ["ModuleAE", "NACT", "SCTAB", "Translator"]
