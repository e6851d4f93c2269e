from ._model import ModuleAE
from ._module import ModuleAEModule
from ._plan import ModuleAETrainingPlan

__all__ = ["ModuleAE", "ModuleAEModule", "ModuleAETrainingPlan"]
