from ._model import NACT
from ._module import NACTModule

__all__ = ["NACT", "NACTModule"]
