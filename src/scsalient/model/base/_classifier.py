"""Training, prediction and query handling shared by the cell-type classifiers."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.model._utils import parse_device_args
from scvi.train import TrainRunner
from tqdm.auto import tqdm

from ._blocks import BlockDataSplitter, block_loader, is_backed
from ._memory import check_training_memory
from ._query import align_genes
from ._training_plan import ClassifierTrainingPlan, RestoreBestState

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

#: metric used for early stopping and best-epoch selection
MONITOR = "f1_macro_validation"


class ClassifierMixin:
    """Training and prediction for models whose module returns ``logits`` from ``inference``.

    The model class must register ``REGISTRY_KEYS.X_KEY`` with an
    :class:`~scsalient.model.base.ExpressionLayerField` and ``REGISTRY_KEYS.LABELS_KEY`` with a
    :class:`~scvi.data.fields.CategoricalObsField`.
    """

    _training_plan_cls = ClassifierTrainingPlan
    _data_splitter_cls = BlockDataSplitter
    _train_runner_cls = TrainRunner

    # ------------------------------------------------------------------ registry helpers
    @property
    def classes(self) -> np.ndarray:
        """Class names, in the order of the columns of predicted probabilities."""
        return np.asarray(self._field_state(REGISTRY_KEYS.LABELS_KEY)["categorical_mapping"]).astype(str)

    @property
    def labels_key(self) -> str:
        """Column of ``obs`` that held the training labels."""
        return self._field_state(REGISTRY_KEYS.LABELS_KEY)["original_key"]

    @property
    def input_kind(self) -> str:
        """What the model was set up on, ``"counts"`` or ``"lognorm"``."""
        return self._field_state(REGISTRY_KEYS.X_KEY)["input_kind"]

    def _field_state(self, key: str) -> dict:
        return self.registry_["field_registries"][key]["state_registry"]

    def _expression_layer(self) -> str | None:
        return self.registry_["setup_args"].get("layer")

    # ------------------------------------------------------------------ training
    def _train_classifier(
        self,
        *,
        max_epochs: int,
        batch_size: int,
        train_size: float,
        validation_size: float | None,
        early_stopping: bool,
        early_stopping_patience: int,
        accelerator: str,
        devices: int | list[int] | str,
        plan_kwargs: dict,
        datasplitter_kwargs: dict | None,
        activation_floats_per_cell: int,
        memory_hint: str,
        **trainer_kwargs,
    ) -> None:
        """Build the data splitter, plan and runner, then fit."""
        _, _, device = parse_device_args(accelerator=accelerator, devices=devices, return_device="torch")
        check_training_memory(
            sum(p.numel() for p in self.module.parameters()),
            activation_floats_per_cell * batch_size,
            device=device,
            hint=memory_hint,
        )
        has_validation = train_size < 1.0 or (validation_size is not None and validation_size > 0)
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
        plan = self._training_plan_cls(self.module, n_classes=len(self.classes), **plan_kwargs)
        callbacks = list(trainer_kwargs.pop("callbacks", []))
        if early_stopping:
            callbacks.append(RestoreBestState(monitor=MONITOR, mode="max"))
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1 if has_validation else None)
        runner = self._train_runner_cls(
            self,
            training_plan=plan,
            data_splitter=splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_monitor=MONITOR,
            early_stopping_mode="max",
            early_stopping_patience=early_stopping_patience,
            callbacks=callbacks,
            **trainer_kwargs,
        )
        self.module.train()  # a re-train (or training after load) would otherwise start in eval mode
        runner()
        self.module.eval()

    def _prepare_training(self, train_indices: np.ndarray) -> None:
        """Hook run before fitting, with the training cells (e.g. to derive augmentations)."""

    # ------------------------------------------------------------------ query data
    def _prepare_adata(self, adata: AnnData | None) -> AnnData:
        """The training data, or a query aligned to the model's genes and validated."""
        if adata is None:
            return self._validate_anndata(None)
        query = align_genes(adata, pd.Index(self.get_var_names()), self._expression_layer())
        placeholder = pd.Categorical([self.classes[0]] * query.n_obs, categories=self.classes)
        query.obs[self.labels_key] = placeholder
        return self._validate_anndata(query)

    @torch.inference_mode()
    def _iter_inference(
        self,
        adata: AnnData,
        indices: Sequence[int] | None,
        batch_size: int | None,
        keys: Sequence[str],
        desc: str,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield the module's inference outputs ``keys`` (softmaxed logits as ``"probabilities"``)."""
        self._check_if_trained(warn=True)
        self.module.eval()
        batch_size = batch_size or 1024
        if is_backed(adata):  # contiguous reads instead of one read per cell
            rows = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
            loader = block_loader(self.get_anndata_manager(adata), rows, batch_size, shuffle=False)
        else:
            loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        for tensors in tqdm(loader, desc=desc, disable=len(loader) < 10, leave=False):
            out = self.module.inference(**self.module._get_inference_input(tensors))
            batch = {}
            for key in keys:
                if key == "probabilities":
                    batch[key] = torch.softmax(out["logits"], dim=-1).cpu().numpy()
                else:
                    batch[key] = out[key].float().cpu().numpy()
            yield batch

    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Predict cell types.

        Parameters
        ----------
        adata
            Data to predict; ``None`` for the training data. Genes are matched by name (missing
            genes zero-filled with a warning; under 50% overlap is an error) and the object is
            not modified.
        indices
            Cells of ``adata`` to predict; ``None`` for all.
        soft
            Return class probabilities instead of labels.
        batch_size
            Cells per forward pass.

        Returns
        -------
        With ``soft=False`` an array of predicted labels; with ``soft=True`` a DataFrame of
        probabilities (cells x classes, indexed by ``obs_names``).
        """
        prepared = self._prepare_adata(adata)
        probs = np.concatenate(
            [
                b["probabilities"]
                for b in self._iter_inference(prepared, indices, batch_size, ["probabilities"], "predict")
            ]
        )
        if not soft:
            return self.classes[probs.argmax(axis=1)]
        names = prepared.obs_names if indices is None else prepared.obs_names[np.asarray(indices)]
        return pd.DataFrame(probs, index=names, columns=self.classes)
