"""Pieces shared by two or more scsalient models."""

from ._checks import check_labels, inspect_expression, iter_row_blocks
from ._classifier import ClassifierMixin
from ._components import GeneMap, attention_softmax, log1p_cp10k
from ._expression import ExpressionModelMixin, TrainingMixin
from ._familiarity import LatentFamiliarity
from ._fields import AccessibilityLayerField, ExpressionLayerField, LabelsField, check_accessibility
from ._memory import check_training_memory
from ._query import align_genes, conform_genes
from ._save_load import SaveLoadMixin
from ._training_plan import BestEpochEMA, ClassifierTrainingPlan, EpochTrainingPlan, RestoreBestState

__all__ = [
    "AccessibilityLayerField",
    "BestEpochEMA",
    "ClassifierMixin",
    "ClassifierTrainingPlan",
    "EpochTrainingPlan",
    "ExpressionLayerField",
    "ExpressionModelMixin",
    "GeneMap",
    "LabelsField",
    "LatentFamiliarity",
    "RestoreBestState",
    "SaveLoadMixin",
    "TrainingMixin",
    "align_genes",
    "attention_softmax",
    "check_accessibility",
    "check_labels",
    "check_training_memory",
    "conform_genes",
    "inspect_expression",
    "iter_row_blocks",
    "log1p_cp10k",
]
