from ._model import SCTAB
from ._module import SCTABModule

__all__ = ["SCTAB", "SCTABModule"]
