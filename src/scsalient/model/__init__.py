"""scsalient models (scvi-tools models with explanations)."""

from .moduleae import ModuleAE
from .nact import NACT

__all__ = ["ModuleAE", "NACT"]
