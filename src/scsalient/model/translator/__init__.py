from ._model import Translator, TranslatorTrainingPlan
from ._module import FeatureAttention, TranslatorModule

__all__ = ["FeatureAttention", "Translator", "TranslatorModule", "TranslatorTrainingPlan"]
