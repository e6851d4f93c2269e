"""The training loop shared by every scsalient model; registry helpers and query alignment."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS
from scvi.dataloaders import DataSplitter
from scvi.model._utils import parse_device_args
from scvi.train import TrainRunner

from ._components import count_parameters
from ._memory import check_training_memory
from ._query import align_genes
from ._training_plan import BestEpochEMA, RestoreBestState

if TYPE_CHECKING:
    from anndata import AnnData
    from scvi.train import TrainingPlan

logger = logging.getLogger(__name__)


def has_validation_split(train_size: float, validation_size: float | None) -> bool:
    """Whether a split with these fractions holds validation cells (early stopping needs them)."""
    return train_size < 1.0 or (validation_size is not None and validation_size > 0)


class TrainingMixin:
    """The training loop shared by every scsalient model: memory check, data split, runner.

    Subclasses pick ``_data_splitter_cls`` and may override :meth:`_prepare_training`.
    """

    _data_splitter_cls = DataSplitter
    _train_runner_cls = TrainRunner

    def _fit(
        self,
        plan: TrainingPlan,
        *,
        max_epochs: int,
        batch_size: int,
        train_size: float,
        validation_size: float | None,
        early_stopping: bool,
        early_stopping_patience: int,
        monitor: str,
        monitor_mode: str,
        accelerator: str,
        devices: int | list[int] | str,
        datasplitter_kwargs: dict | None,
        activation_floats_per_cell: int,
        memory_hint: str,
        average_epochs: float | None = None,
        **trainer_kwargs,
    ) -> None:
        """Check memory, build the data splitter and runner around ``plan``, then fit.

        With ``early_stopping`` the run stops after ``early_stopping_patience`` epochs without
        improvement of ``monitor`` and the weights of the best epoch are restored. With
        ``average_epochs``, an exponential moving average of the weights over about that many
        epochs is validated, restored and kept instead of the last weights.
        """
        _, _, device = parse_device_args(accelerator=accelerator, devices=devices, return_device="torch")
        check_training_memory(
            count_parameters(self.module),
            activation_floats_per_cell * batch_size,
            device=device,
            hint=memory_hint,
        )
        has_validation = has_validation_split(train_size, validation_size)
        if early_stopping and not has_validation:
            raise ValueError("early_stopping needs a validation split: use train_size < 1.")
        splitter = self._data_splitter_cls(
            self.adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size,
            **(datasplitter_kwargs or {}),
        )
        splitter.setup()  # the split is seeded: the runner's own setup() draws the same one
        self._prepare_training(np.asarray(splitter.train_idx))
        callbacks = list(trainer_kwargs.pop("callbacks", []))
        if early_stopping:
            callbacks.append(RestoreBestState(monitor=monitor, mode=monitor_mode))
        if average_epochs:  # after RestoreBestState: it keeps the averaged weights it validated
            steps_per_epoch = max(1, int(np.ceil(len(splitter.train_idx) / batch_size)))
            decay = 1.0 - 1.0 / (average_epochs * steps_per_epoch)
            callbacks.append(BestEpochEMA(decay=decay, best_epoch_restored=early_stopping))
        if has_validation:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        else:  # no validation cells: no validation loop, whatever interval a model asked for
            trainer_kwargs["check_val_every_n_epoch"] = None
        runner = self._train_runner_cls(
            self,
            training_plan=plan,
            data_splitter=splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_monitor=monitor,
            early_stopping_mode=monitor_mode,
            early_stopping_patience=early_stopping_patience,
            callbacks=callbacks,
            **trainer_kwargs,
        )
        self.module.train()  # a re-train (or training after load) would otherwise start in eval mode
        runner()
        self.module.eval()

    def _prepare_training(self, train_indices: np.ndarray) -> None:
        """Hook run before fitting, with the training cells (e.g. to derive augmentations)."""


class ExpressionModelMixin(TrainingMixin):
    """Helpers for models whose expression is registered with an :class:`ExpressionLayerField`.

    The model class must register ``REGISTRY_KEYS.X_KEY`` with an
    :class:`~scsalient.model.base.ExpressionLayerField`.
    """

    @property
    def input_kind(self) -> str:
        """What the model was set up on, ``"counts"`` or ``"lognorm"``."""
        return self._field_state(REGISTRY_KEYS.X_KEY)["input_kind"]

    def _field_state(self, key: str) -> dict:
        return self.registry_["field_registries"][key]["state_registry"]

    def _expression_layer(self) -> str | None:
        return self.registry_["setup_args"].get("layer")

    def _align_query(self, adata: AnnData) -> AnnData:
        """A light copy of ``adata`` with the model's genes in the model's order (not validated)."""
        return align_genes(adata, pd.Index(self.get_var_names()), self._expression_layer())
