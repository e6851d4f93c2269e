"""Training, prediction and query handling shared by the cell-type classifiers."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS, settings
from tqdm.auto import tqdm

from scsalient._utils import group_sums

from ._annotate import (
    UNASSIGNED,
    fit_temperature,
    majority_vote,
    over_cluster,
    place_rows,
    top_per_row,
)
from ._augment import batch_difference_vectors
from ._blocks import BlockDataset, BlockDataSplitter, prediction_block_size
from ._expression import ExpressionModelMixin
from ._familiarity import MAX_FIT_CELLS, UNFAMILIAR_WARNING_SHARE
from ._training_plan import MONITOR, ClassifierTrainingPlan

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

#: cells from which a prediction shows a progress bar
PROGRESS_MIN_CELLS = 10_000


def predicted_labels(probs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The most probable class of each row; ``None`` (in an object array) for rows of NaN."""
    missing = np.isnan(probs).any(axis=1)
    labels = classes[np.where(missing, 0, np.nan_to_num(probs).argmax(axis=1))]
    if missing.any():
        labels = labels.astype(object)
        labels[missing] = None
    return labels


def predicted_codes(probs: np.ndarray) -> np.ndarray:
    """The most probable class of each row, ``-1`` (missing in a categorical) for rows of NaN."""
    return np.where(np.isnan(probs).any(axis=1), -1, np.nan_to_num(probs).argmax(axis=1))


def _best_validation_f1(model) -> float | None:
    """The best validation macro-F1 in a model's training history, if it has one."""
    history = getattr(model, "history_", None) or {}
    if MONITOR not in history or len(history[MONITOR]) == 0:
        return None
    return float(history[MONITOR].iloc[:, 0].max())


class ClassifierMixin(ExpressionModelMixin):
    """Training and prediction for models whose module returns ``logits`` from ``inference``.

    The model class must register ``REGISTRY_KEYS.X_KEY`` with an
    :class:`~scsalient.model.base.ExpressionLayerField` and ``REGISTRY_KEYS.LABELS_KEY`` with a
    :class:`~scvi.data.fields.CategoricalObsField`. A ``batch_key`` given to ``setup_anndata``
    is kept in the setup arguments (not registered: query data do not need it) and enables the
    batch-difference augmentation, for a module with a ``batch_shift``
    (:class:`~scsalient.model.base._augment.BatchShift`).
    """

    _training_plan_cls = ClassifierTrainingPlan
    _data_splitter_cls = BlockDataSplitter

    def _distill_model_kwargs(self) -> dict[str, Any]:
        """Settings in which :meth:`distill`'s network differs from a member by default (none)."""
        return {}

    def _distill_train_kwargs(self) -> dict[str, Any]:
        """Training settings in which :meth:`distill`'s network differs from the ensemble's (none)."""
        return {}

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
    def batch_key(self) -> str | None:
        """Column of ``obs`` with the batches (donors, samples) used for augmentation, if any."""
        return self.registry_["setup_args"].get("batch_key")

    def _class_weights(self) -> torch.Tensor:
        """Balanced class weights :math:`w_c = n / (C n_c)` of the registered labels."""
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1)
        counts = np.bincount(codes, minlength=self.summary_stats.n_labels).astype(np.float64)
        return torch.as_tensor(len(codes) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)

    def _resolve_augment(self, augment: bool | None) -> bool:
        """``augment=None`` means on when a ``batch_key`` was registered; ``True`` needs one."""
        if augment is None:
            augment = self.batch_key is not None
        if augment and self.batch_key is None:
            raise ValueError(
                f"augment=True needs a batch_key: set it in {type(self).__name__}.setup_anndata."
            )
        self._augment_requested = bool(augment)
        return bool(augment)

    def _prepare_training(self, train_indices: np.ndarray) -> None:
        """Derive the batch-difference vectors from the training cells (or switch them off)."""
        settings_ = getattr(self, "training_settings_", None)
        if not getattr(self, "_augment_requested", False):
            self.module.batch_shift.set_vectors(None)
            if settings_ is not None:
                settings_["n_augmentation_vectors"] = 0
            return
        batches = pd.Categorical(self.adata.obs[self.batch_key]).codes.astype(np.int64)
        labels = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1)
        vectors = batch_difference_vectors(
            self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY),
            train_indices,
            labels,
            batches,
            normalize=self.input_kind == "counts",
            seed=settings.seed,
        )
        if len(vectors) == 0:
            logger.warning(
                "No cell type has two batches with enough training cells: training without augmentation."
            )
        self.module.batch_shift.set_vectors(vectors)
        if settings_ is not None:
            settings_["n_augmentation_vectors"] = len(vectors)

    # ------------------------------------------------------------------ training
    def _train_classifier(
        self,
        *,
        plan_kwargs: dict,
        **fit_kwargs,
    ) -> None:
        """Build the classifier's training plan and fit (see ``ExpressionModelMixin._fit``)."""
        plan = self._training_plan_cls(self.module, n_classes=len(self.classes), **plan_kwargs)
        monitor, mode = plan.monitor
        self._fit(plan, monitor=monitor, monitor_mode=mode, **fit_kwargs)
        self._calibrate()
        self._fit_familiarity()

    def _validation_indices(self) -> np.ndarray:
        """Indices of the validation cells of the last training run (empty without any)."""
        validation = getattr(self, "validation_indices", None)
        return np.asarray([] if validation is None else validation, dtype=np.int64)

    def _calibrate(self) -> None:
        """Temperature scaling of the predicted probabilities on the validation cells :cite:p:`Guo2017`.

        The temperature that minimises the cross-entropy of the validation cells is kept in the
        module (and so in the saved model) and recorded in ``training_settings_``. Without
        validation cells (``train_size=1``) the probabilities are left as they are.
        """
        self.module.set_temperature(1.0)
        validation = self._validation_indices()
        settings_ = getattr(self, "training_settings_", None)
        if len(validation) == 0:
            logger.info("No validation cells: the predicted probabilities are not calibrated.")
            if settings_ is not None:
                settings_["temperature"] = None
            return
        adata = self._validate_anndata(None)
        logits = np.concatenate(
            [b["logits"] for b in self._iter_inference(adata, validation, None, ["logits"], "calibrate")]
        )
        labels = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1)
        temperature = fit_temperature(logits, labels[validation])
        self.module.set_temperature(temperature)
        logger.info(
            "Probabilities calibrated on %d validation cells: temperature %.3g.", len(validation), temperature
        )
        if settings_ is not None:
            settings_["temperature"] = temperature

    def _fit_familiarity(self) -> None:
        """Fit the familiarity score (:class:`~scsalient.model.base.LatentFamiliarity`) after training.

        One-vs-rest logistic regressions on the latent representation of the training cells;
        the validation cells are its reference. Without validation cells (``train_size=1``)
        there is no familiarity.
        """
        familiarity = self.module.familiarity
        familiarity.__init__()  # a model trained again starts from an empty score
        validation = self._validation_indices()
        settings_ = getattr(self, "training_settings_", None)
        if len(validation) == 0:
            logger.info("No validation cells: no familiarity score.")
            if settings_ is not None:
                settings_["familiarity"] = False
            return
        train = np.setdiff1d(np.asarray(self.train_indices, dtype=np.int64), validation)
        if len(train) > MAX_FIT_CELLS:
            train = np.sort(np.random.default_rng(settings.seed).choice(train, MAX_FIT_CELLS, replace=False))
        labels = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1)
        familiarity.fit(
            self.get_latent_representation(indices=train),
            labels[train],
            len(self.classes),
            self.get_latent_representation(indices=validation),
        )
        if settings_ is not None:
            settings_["familiarity"] = True

    def distill(
        self,
        temperature: float = 2.0,
        weight: float = 1.0,
        model_kwargs: dict[str, Any] | None = None,
        consistent: bool = False,
        select_on: Literal["f1", "kl"] = "f1",
        **train_kwargs,
    ):
        """A single network trained to reproduce this ensemble's predictions.

        Knowledge distillation :cite:p:`Hinton2015`: a new model with the same settings but
        ``n_ensemble=1`` is trained on the same training and validation cells as this one, with
        the same training settings (``training_settings_``), its cross-entropy replaced by the
        Kullback-Leibler divergence from the ensemble's class probabilities (both softened by
        ``temperature``; see :class:`~scsalient.model.base.ClassifierTrainingPlan`). It predicts
        and explains (one attention map or one set of masks) at the cost of one network, and
        is usually more accurate than a network trained on the labels alone.

        Parameters
        ----------
        temperature
            Softening temperature of both class distributions.
        weight
            Weight of the ensemble's probabilities against the labels: ``1`` (default) learns
            from the ensemble only, ``0`` from the labels only.
        model_kwargs
            Settings of the network that differ from a member's, passed to the model's
            constructor (``n_ensemble`` is always 1); ``{}`` keeps a member's. By default
            (``None``) NACT's network is a member's and SCTAB's is four times as wide (``n_d``
            and ``n_a`` four times a member's): it follows the ensemble more closely than one as
            wide as a member and scored higher on unseen batches (see the SCTAB user guide), at
            about twice the distillation time.
        consistent
            Compute the ensemble's probabilities on each cell as the network sees it in
            training, after its batch-difference shift (the teacher and the network see the
            same view of the cell :cite:p:`Beyer2022`), instead of on the unshifted cell. Without
            a ``batch_key`` (no shift) both are the same.
        select_on
            With early stopping, the epoch kept is the best on the validation cells by
            ``"f1"``, the macro-F1 against the labels, or ``"kl"``, the divergence of the
            network's probabilities from the ensemble's (which keeps falling after the
            macro-F1 has reached its ceiling).
        **train_kwargs
            Override training settings of the ensemble (e.g. ``max_epochs``) or pass trainer
            arguments (e.g. ``enable_progress_bar=False``). NACT's network trains as the
            ensemble did (a fixed schedule, without early stopping, by default); SCTAB's trains
            every epoch and keeps its last weights unless ``early_stopping=True`` is passed (see
            the SCTAB user guide). Settings the ensemble recorded that ``train`` no longer takes
            (those of a model saved by an earlier version) are left out.

        Returns
        -------
        The trained single-network model, on the same AnnData. Its ``training_settings_``
        record ``"distilled_from"``: the ensemble's size, the temperature, the weight,
        ``model_kwargs``, ``consistent``, ``select_on`` and the best validation macro-F1 of the
        ensemble and of the network. A
        warning is logged when the network's is more than 0.05 below the ensemble's (it did not
        learn the ensemble's predictions: seen on Kang PBMCs, where one class was missed).

        Examples
        --------
        >>> ensemble = ss.model.NACT(adata, n_ensemble=5)
        >>> ensemble.train()
        >>> single = ensemble.distill()
        >>> single.annotate()
        """
        self._check_if_trained(warn=False)
        n_members = int(getattr(self.module, "n_members", 1))
        if n_members < 2:
            raise ValueError("distill() needs an ensemble (n_ensemble >= 2); this model is one network.")
        model_kwargs = self._distill_model_kwargs() if model_kwargs is None else dict(model_kwargs)
        consistent = bool(consistent)
        settings = set(inspect.signature(type(self).__init__).parameters) - {"self", "adata", "registry"}
        unknown = sorted(set(model_kwargs) - settings)
        if unknown:
            raise ValueError(f"model_kwargs {unknown} are not settings of {type(self).__name__}'s network.")
        if model_kwargs.get("n_ensemble", 1) != 1:
            raise ValueError("The distilled model is one network: model_kwargs cannot set n_ensemble.")
        params = {**self.init_params_["non_kwargs"], **model_kwargs, "n_ensemble": 1}
        student = type(self)(self.adata, **params)
        signature = inspect.signature(student.train).parameters
        settings_ = getattr(self, "training_settings_", {})
        kwargs = {k: v for k, v in settings_.items() if k in signature}
        kwargs.update(self._distill_train_kwargs())
        kwargs.update(train_kwargs)
        train_idx = np.asarray(self.train_indices, dtype=int)
        validation = getattr(self, "validation_indices", None)
        validation_idx = np.asarray([] if validation is None else validation, dtype=int)
        if len(validation_idx) == 0:
            kwargs["train_size"] = 1.0
            kwargs.setdefault("early_stopping", False)
        else:
            kwargs.setdefault("datasplitter_kwargs", {})
            kwargs["datasplitter_kwargs"] = {
                **kwargs["datasplitter_kwargs"],
                "external_indexing": [train_idx, validation_idx, np.array([], dtype=int)],
            }
        kwargs["plan_kwargs"] = {
            **(kwargs.get("plan_kwargs") or {}),
            "teacher": self.module,
            "distill_temperature": temperature,
            "distill_weight": weight,
            "distill_consistent": consistent,
            "distill_select": select_on,
        }
        student.train(**kwargs)
        record = {
            "n_members": n_members,
            "temperature": float(temperature),
            "weight": float(weight),
            "model_kwargs": model_kwargs,
            "consistent": consistent,
            "select_on": select_on,
        }
        best = {name: _best_validation_f1(m) for name, m in (("ensemble", self), ("network", student))}
        if None not in best.values():
            record["best_validation_f1"] = best
            if best["network"] < best["ensemble"] - 0.05:
                logger.warning(
                    "The distilled network reached a validation macro-F1 of %.3f against %.3f for the "
                    "ensemble: it did not learn the ensemble's predictions. Check its per-class "
                    "predictions, train it longer (max_epochs, early_stopping_patience) or keep the "
                    "ensemble.",
                    best["network"],
                    best["ensemble"],
                )
        student.training_settings_["distilled_from"] = record
        return student

    # ------------------------------------------------------------------ query data
    def _prepare_adata(self, adata: AnnData | None) -> AnnData:
        """The training data, or a query aligned to the model's genes and validated.

        Query cells with no expression in the model's genes (all-zero after alignment) are not
        an error: they are named in a :class:`UserWarning` and get no prediction (see
        :meth:`_empty_cells`).
        """
        if adata is None:
            return self._validate_anndata(None)
        query = self._align_query(adata)
        placeholder = pd.Categorical([self.classes[0]] * query.n_obs, categories=self.classes)
        query.obs[self.labels_key] = placeholder
        prepared = self._validate_anndata(query)
        empty = self._empty_cells(prepared)
        if len(empty):
            warnings.warn(
                f"{len(empty)} of {prepared.n_obs} query cell(s) have no expression in any of the model's "
                f"genes (e.g. {prepared.obs_names[empty[:5]].tolist()}) and get no prediction: NaN "
                "probabilities and a missing label.",
                UserWarning,
                stacklevel=3,
            )
        return prepared

    def _empty_cells(self, prepared: AnnData) -> np.ndarray:
        """Rows of a prepared AnnData with no expression in the model's genes (none for training data)."""
        state = self.get_anndata_manager(prepared).get_state_registry(REGISTRY_KEYS.X_KEY)
        return np.asarray(state.get("empty_cells", []), dtype=np.int64)

    def _inference_outputs(
        self, tensors: dict[str, torch.Tensor], keys: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """The module's inference outputs for one minibatch (run in inference mode).

        A model whose explanation needs gradients overrides this when ``keys`` asks for it.
        """
        return self.module.inference(**self.module._get_inference_input(tensors))

    @torch.inference_mode()
    def _iter_inference(
        self,
        adata: AnnData,
        indices: Sequence[int] | None,
        batch_size: int | None,
        keys: Sequence[str],
        desc: str,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield the module's inference outputs ``keys`` (softmaxed logits as ``"probabilities"``).

        Cells with no expression in the model's genes (:meth:`_empty_cells`) are skipped; each
        batch carries ``"positions"``, the places of its cells among the cells asked for
        (``indices``, or all cells).
        """
        self._check_if_trained(warn=True)
        self.module.eval()
        batch_size = batch_size or prediction_block_size(adata.n_vars)
        rows = np.arange(adata.n_obs) if indices is None else np.asarray(indices, dtype=np.int64)
        positions = np.flatnonzero(~np.isin(rows, self._empty_cells(adata)))
        rows = rows[positions]
        if len(rows) == 0:
            return
        # blocks of rows sliced from the matrix (one slice per block, in memory as on disk) rather
        # than scvi-tools' loader, which gathers each minibatch's rows by index; only the block in
        # hand is made dense
        loader = BlockDataset(self.get_anndata_manager(adata), rows, batch_size, shuffle=False)
        start = 0
        for tensors in tqdm(loader, desc=desc, disable=len(rows) < PROGRESS_MIN_CELLS, leave=False):
            out = self._inference_outputs(tensors, keys)
            n = len(out["logits"])
            batch = {"positions": positions[start : start + n]}
            start += n
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
            Cells per forward pass; ``None`` sizes the blocks to the number of genes (about
            500,000 values, 64 to 1,024 cells), small enough to stay in the CPU's cache.

        Returns
        -------
        With ``soft=False`` an array of predicted labels; with ``soft=True`` a DataFrame of
        probabilities (cells x classes, indexed by ``obs_names``). Query cells with no
        expression in any of the model's genes get no prediction (with a warning naming
        them): a row of NaN probabilities, and ``None`` among the labels (the array is then of
        dtype ``object``).
        """
        prepared = self._prepare_adata(adata)
        names = prepared.obs_names if indices is None else prepared.obs_names[np.asarray(indices)]
        probs = np.full((len(names), len(self.classes)), np.nan, dtype=np.float32)
        for b in self._iter_inference(prepared, indices, batch_size, ["probabilities"], "predict"):
            probs[b["positions"]] = b["probabilities"]
        if soft:
            return pd.DataFrame(probs, index=names, columns=self.classes)
        return predicted_labels(probs, self.classes)

    # ------------------------------------------------------------------ read-outs shared by the classifiers
    #: keys of what :meth:`annotate` writes (a class of ``scsalient._constants``)
    _keys: Any = None
    #: inference output holding the per-cell explanation over genes, ``(B, G)`` or ``(E, B, G)``
    _explanation_output: str = ""
    #: inference output holding the latent representation, ``(B, D)`` or ``(E, B, D)``
    _latent_output: str = ""
    #: default of :meth:`annotate`'s ``min_confidence`` (see the user guide, "How far to trust a prediction")
    _default_min_confidence: float | None = None
    #: default of :meth:`annotate`'s ``min_familiarity``: the largest of 1e-4, 1e-3, 1e-2, 0.05 at
    #: which the benchmark's selection tasks lose at most 2% of known-type cells on average
    #: (``benchmarks/results/defaults.md``)
    _default_min_familiarity: float | None = 1e-3

    #: inference outputs (besides ``"probabilities"``) that :meth:`_annotate_extras` reads
    _annotate_extras_outputs: tuple[str, ...] = ()

    def _annotate_extras(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-cell values (besides probabilities) a model writes into ``obs``: name -> values."""
        return {}

    @staticmethod
    def _cells_first(values: np.ndarray) -> np.ndarray:
        """``(E, B, D)`` members' outputs side by side as ``(B, E * D)``; ``(B, D)`` unchanged."""
        if values.ndim == 3:
            return values.transpose(1, 0, 2).reshape(values.shape[1], -1)
        return values

    @staticmethod
    def _row_shares(values: np.ndarray) -> np.ndarray:
        """Explanation rows as shares of their total (``(E, B, G)`` averaged over members first)."""
        if values.ndim == 3:
            values = values.mean(axis=0)
        totals = values.sum(axis=1, keepdims=True)
        return np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """The model's representation of each cell (its last hidden layer), cells x dimensions.

        Computed block by block. Use it like scANVI's: ``adata.obsm["X_nact"] =
        model.get_latent_representation(adata)``, then ``sc.pp.neighbors(adata, use_rep="X_nact")``.

        Parameters
        ----------
        adata
            Data to represent; ``None`` for the training data. Genes are matched by name, as in
            :meth:`predict`.
        indices
            Cells of ``adata``; ``None`` for all.
        batch_size
            Cells per forward pass; ``None`` sizes the blocks to the number of genes (about
            500,000 values, 64 to 1,024 cells), small enough to stay in the CPU's cache.

        Returns
        -------
        float32 array; for an ensemble the members' representations side by side. Query cells
        with no expression in the model's genes get a row of NaN.
        """
        prepared = self._prepare_adata(adata)
        n = prepared.n_obs if indices is None else len(indices)
        out = None
        for b in self._iter_inference(prepared, indices, batch_size, [self._latent_output], "latent"):
            values = self._cells_first(b[self._latent_output])
            if out is None:
                out = np.full((n, values.shape[1]), np.nan, dtype=np.float32)
            out[b["positions"]] = values
        if out is None:
            raise ValueError("No cell of adata expresses any of the model's genes.")
        return out

    def _explanations(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        n_top_genes: int | None,
        dense: bool,
        output: str | None = None,
    ) -> np.ndarray | sparse.csr_matrix:
        """Per-cell explanation over the model's genes, rows as shares, streamed block by block.

        ``output`` is the inference output to read (``None``: the model's explanation).
        """
        output = output or self._explanation_output
        prepared = self._prepare_adata(adata)
        n = prepared.n_obs if indices is None else len(indices)
        n_genes = len(self.get_var_names())
        columns = np.arange(n_genes)
        out = np.zeros((n, n_genes), dtype=np.float32) if dense else None
        blocks, rows = [], []
        for b in self._iter_inference(prepared, indices, batch_size, [output], "explain"):
            shares = self._row_shares(b[output])
            if dense:
                out[b["positions"]] = shares
            else:
                blocks.append(top_per_row(shares, n_top_genes, columns, n_genes))
                rows.append(b["positions"])
        if dense:
            return out
        matrix = place_rows(blocks, rows, n)
        return sparse.csr_matrix(matrix, shape=(n, n_genes))

    def annotate(
        self,
        adata: AnnData | None = None,
        *,
        min_confidence: float | None | Literal["default"] = "default",
        min_familiarity: float | None | Literal["default"] = "default",
        majority_voting: bool = False,
        explanation: bool | Literal["dense"] = True,
        n_top_genes: int | None = 100,
        latent: bool = True,
        batch_size: int | None = None,
    ) -> None:
        """Write predictions, their confidence and their explanation into ``adata``.

        One pass over the cells writes (``<p>`` is the model's prefix, ``nact`` or ``sctab``;
        the table "Where results are stored" of the docs lists every key):

        * ``obs["<p>_prediction"]``: predicted cell type (categorical), ``"Unassigned"`` where
          the confidence is below ``min_confidence`` or the familiarity below ``min_familiarity``;
        * the model's confidence column (NACT ``obs["nact_confidence"]``: the calibrated top
          probability; SCTAB ``obs["sctab_uncertainty"]``: 1 - that probability, and
          ``obs["sctab_disagreement"]``);
        * ``obs["<p>_familiarity"]``: how much the cell resembles some type of the reference, a
          conformal p-value in (0, 1] (:class:`~scsalient.model.base.LatentFamiliarity`): about
          uniform for cells of the reference's types, small for cells of a type it never saw;
          NaN when the model had no validation cells;
        * ``obsm["<p>_probabilities"]``: DataFrame of calibrated class probabilities;
        * the per-cell explanation (NACT ``obsm["nact_attention"]``, SCTAB ``obsm["sctab_mask"]``):
          cells x ``adata.var_names``, each row the shares of the cell's explanation (summing to
          1 over all genes), sparse with the ``n_top_genes`` largest of each cell kept;
        * the mean explanation of the cells predicted as each class, genes x classes
          (``varm``; computed from every gene, not only the kept ones; not with
          ``explanation=False``);
        * the latent representation (``obsm["X_nact"]`` / ``obsm["X_sctab"]``);
        * with ``majority_voting``: ``obs["<p>_over_clustering"]``, ``obs["<p>_majority_voting"]``
          and ``obs["<p>_agreement"]``;
        * ``uns["<p>"]``: classes, labels key, input kind, settings and the threshold used.

        Query cells with no expression in any of the model's genes get no prediction (with a
        warning naming them): a missing label and NaN confidence and probabilities.

        Parameters
        ----------
        adata
            Data to annotate; ``None`` for the training data. Genes are matched by name;
            nothing else in ``adata`` is changed.
        min_confidence
            Cells whose calibrated top probability is below this are labelled ``"Unassigned"``
            (their probabilities and confidence are kept). ``"default"``: the model's default,
            chosen on the annotation benchmark; ``None``: no threshold.
        min_familiarity
            Cells whose familiarity is below this are labelled ``"Unassigned"``: they look less
            like any reference type than all but this share of the validation cells, which are
            of known types. ``"default"``: the model's default, chosen on the annotation
            benchmark; ``None``: no threshold (every cell gets a type unless ``min_confidence``
            says otherwise).
        majority_voting
            Over-cluster the cells (Leiden on a kNN graph of the model's latent representation,
            at CellTypist's resolution for the number of cells :cite:p:`DominguezConde2022`) and
            give each cell its cluster's most frequent prediction; the share of the cluster that
            agrees is written as the agreement.
        explanation
            Store the per-cell explanation: ``True`` sparse (CSR), ``"dense"`` as a float32 array
            (4 bytes per cell and gene), ``False`` not at all (nor its mean per class in
            ``varm``; SCTAB then skips the backward pass its explanation takes).
        n_top_genes
            Genes kept per cell in the sparse explanation; ``None`` keeps every non-zero one.
        latent
            Store the latent representation.
        batch_size
            Cells per forward pass; ``None`` sizes the blocks to the number of genes (about
            500,000 values, 64 to 1,024 cells), small enough to stay in the CPU's cache.
        """
        keys = self._keys
        if min_confidence == "default":
            min_confidence = self._default_min_confidence
        if min_familiarity == "default":
            min_familiarity = self._default_min_familiarity
        for name, value in (("min_confidence", min_confidence), ("min_familiarity", min_familiarity)):
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] or None, got {value!r}.")
        if explanation not in (True, False, "dense"):
            raise ValueError(f"explanation must be True, False or 'dense', got {explanation!r}.")
        if n_top_genes is not None and n_top_genes < 1:
            raise ValueError(f"n_top_genes must be a positive integer or None, got {n_top_genes!r}.")
        target = self.adata if adata is None else adata
        prepared = self._prepare_adata(adata)
        model_genes = pd.Index(self.get_var_names())
        columns = pd.Index(target.var_names).get_indexer(model_genes)  # adata column of each model gene
        n_classes = len(self.classes)
        probs = np.full((target.n_obs, n_classes), np.nan, dtype=np.float32)
        sums = np.zeros((n_classes, len(model_genes)), dtype=np.float64)
        extras: dict[str, np.ndarray] = {}
        latent_values = None
        familiarity = np.full(target.n_obs, np.nan, dtype=np.float32)
        blocks, block_rows = [], []
        dense = np.zeros((target.n_obs, target.n_vars), dtype=np.float32) if explanation == "dense" else None
        # only the outputs that are stored (SCTAB's explanation costs a backward pass)
        outputs = ["probabilities", *self._annotate_extras_outputs]
        # the latent representation: stored, clustered on, or scored for familiarity
        read_latent = latent or majority_voting or self.module.familiarity.fitted
        if read_latent:
            outputs.append(self._latent_output)
        if explanation:
            outputs.append(self._explanation_output)
        for batch in self._iter_inference(prepared, None, batch_size, outputs, "annotate"):
            rows = batch["positions"]
            probs[rows] = batch["probabilities"]
            if explanation:
                shares = self._row_shares(batch[self._explanation_output])
                sums += group_sums(batch["probabilities"].argmax(axis=1), shares, n_classes)
            for name, values in self._annotate_extras(batch).items():
                extras.setdefault(name, np.full(target.n_obs, np.nan, dtype=np.float32))[rows] = values
            if read_latent:
                values = self._cells_first(batch[self._latent_output])
                familiarity[rows] = self.module.familiarity.score(values)
            if latent or majority_voting:
                if latent_values is None:
                    latent_values = np.full((target.n_obs, values.shape[1]), np.nan, dtype=np.float32)
                latent_values[rows] = values
            if dense is not None:
                dense[np.ix_(rows, columns[columns >= 0])] = shares[:, columns >= 0]
            elif explanation:
                blocks.append(top_per_row(shares, n_top_genes, columns, target.n_vars))
                block_rows.append(rows)
        predicted = predicted_codes(probs)
        codes = predicted
        confidence = np.max(probs, axis=1)
        categories = list(self.classes)
        unsure = np.zeros(target.n_obs, dtype=bool)
        if min_confidence is not None:
            unsure |= confidence < min_confidence
        if min_familiarity is not None:
            unfamiliar = familiarity < min_familiarity  # NaN (no familiarity score) never unassigns
            unsure |= unfamiliar
            share = unfamiliar[codes >= 0].mean() if (codes >= 0).any() else 0.0
            if share > UNFAMILIAR_WARNING_SHARE:
                warnings.warn(
                    f"{share:.0%} of the cells have a familiarity below {min_familiarity} and are "
                    "labelled Unassigned: the query holds types the reference lacks, or differs from "
                    "the reference as a whole (another study or technology moves every cell). Look at "
                    f"obs['{keys.FAMILIARITY}'] by cluster; if whole clusters of known types fall "
                    "below the threshold, lower min_familiarity or set it to None.",
                    UserWarning,
                    stacklevel=2,
                )
        unsure &= codes >= 0
        if unsure.any():  # no empty "Unassigned" category, which every groupby would then skip
            categories.append(UNASSIGNED)
            codes = np.where(unsure, n_classes, codes)
        prediction = pd.Categorical.from_codes(codes, categories=categories)
        target.obs[keys.PREDICTION] = prediction
        self._write_confidence(target, confidence, extras)
        target.obs[keys.FAMILIARITY] = familiarity
        target.obsm[keys.PROBABILITIES] = pd.DataFrame(probs, index=target.obs_names, columns=self.classes)
        if dense is not None:
            target.obsm[keys.EXPLANATION] = dense
        elif explanation:
            target.obsm[keys.EXPLANATION] = place_rows(blocks, block_rows, target.n_obs)
        if explanation:
            counts = np.bincount(predicted[predicted >= 0], minlength=n_classes).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                means = sums / counts[:, None]
            mean_df = pd.DataFrame(np.nan, index=target.var_names, columns=self.classes)
            mean_df.iloc[columns[columns >= 0]] = means[:, columns >= 0].T
            target.varm[keys.EXPLANATION_MEAN] = mean_df
        if latent and latent_values is not None:
            target.obsm[keys.LATENT] = latent_values
        if majority_voting:
            if latent_values is None:
                latent_values = self.get_latent_representation(adata, batch_size=batch_size)
            clusters = over_cluster(latent_values, seed=0)
            voted, agreement = majority_vote(prediction, clusters)
            target.obs[keys.OVER_CLUSTERING] = pd.Categorical(clusters)
            target.obs[keys.MAJORITY_VOTING] = voted
            target.obs[keys.AGREEMENT] = agreement.astype(np.float32)
        target.uns[keys.UNS] = {
            "classes": self.classes.tolist(),
            "labels_key": self.labels_key,
            "input_kind": self.input_kind,
            "n_ensemble": int(getattr(self.module, "n_members", 1)),
            "n_model_genes": len(model_genes),
            "n_genes_known": int((columns >= 0).sum()),
            "min_confidence": min_confidence,
            "min_familiarity": min_familiarity,
            "n_top_genes": n_top_genes if explanation is True else None,
            "settings": {k: v for k, v in self.init_params_["non_kwargs"].items() if v is not None},
            "training": dict(getattr(self, "training_settings_", {})),
        }

    def _write_confidence(
        self, target: AnnData, confidence: np.ndarray, extras: dict[str, np.ndarray]
    ) -> None:
        """Write the model's confidence column(s) and the per-cell extras into ``target.obs``."""
        target.obs[self._keys.CONFIDENCE] = confidence
        for name, values in extras.items():
            target.obs[name] = values
