"""scvi-tools glue for N-ACT: AnnData registration, training, prediction and attention read-out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.model.base import BaseModelClass
from scvi.utils import setup_anndata_dsp

from scsalient._constants import ClusterKeys, NACTKeys
from scsalient.model.base import (
    ClassifierMixin,
    ExpressionLayerField,
    LabelsField,
    SaveLoadMixin,
    check_labels,
)
from scsalient.model.base._blocks import is_backed
from scsalient.model.base._checks import check_batch_key
from scsalient.model.base._memory import check_training_memory

from ._module import NACTModule

if TYPE_CHECKING:
    from anndata import AnnData
    from scipy import sparse

logger = logging.getLogger(__name__)

#: training settings of :meth:`NACT.train` (see the N-ACT user guide, "Defaults")
DEFAULT_TRAINING: dict = {
    "lr": 1e-2,
    "batch_size": 128,
}

#: training arguments of earlier versions that no default used, and were removed
REMOVED_TRAINING_ARGUMENTS = ("input_dropout", "label_smoothing", "balance_classes")


#: fewest optimiser steps of a training run (see :func:`default_epochs`)
MIN_STEPS = 2000


def default_epochs(n_train: int, batch_size: int = 128) -> int:
    """Epochs of :meth:`NACT.train`: 60 for 2,000 to 20,000 training cells.

    Beyond 20,000 cells the number falls with the square root of the number of cells (at least
    10), so the optimiser steps still grow with the data while the cost per cell falls. Below,
    the epochs rise so that training takes at least ``MIN_STEPS`` optimiser steps: with a few
    hundred cells and tens of thousands of genes, 60 epochs are a few hundred steps, too few
    for Adam to reach the optimum of the regularised loss, and the network then rests on genes
    seen in a handful of training cells.
    """
    epochs = int(np.clip(round(60 * np.sqrt(20_000 / max(n_train, 1))), 10, 60))
    steps_per_epoch = int(np.ceil(max(n_train, 1) / batch_size))
    return max(epochs, int(np.ceil(MIN_STEPS / steps_per_epoch)))


class NACT(SaveLoadMixin, ClassifierMixin, BaseModelClass):
    r"""Neural additive attention for cell-type identification (N-ACT) :cite:p:`Heydari2022`.

    Every cell gets its own attention over the genes it expresses; the attention-weighted
    expression is read out by a linear classifier, so each prediction is a sum of per-gene
    contributions. The attention says which genes each prediction rests on; averaged per
    cluster it gives salient (marker) genes (:func:`scsalient.tl.salient_genes`).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`~scsalient.model.NACT.setup_anndata`; it may be backed
        (on disk).
    registry
        Registry of a saved model, to build it without data (used by ``load``).
    n_latent
        Width of the latent representation the classifier reads (and
        :meth:`get_latent_representation` returns).
    attention_rank
        Rank of the gene x gene attention map: it costs ``2 * attention_rank`` weights per gene,
        so time and memory grow linearly with the number of genes.
    n_ensemble
        Number of networks in a deep ensemble :cite:p:`Lakshminarayanan2017`, trained together
        from independent initialisations; predictions are the mean of their probabilities and
        the attention the mean of theirs. Time grows with the number of members.

    Notes
    -----
    How it works and where it departs from the published N-ACT (see the user guide):

    * **Attention.** N-ACT's attention logits :math:`xW + b` with the gene x gene map
      :math:`W` factorised, :math:`W = W_q K^\top`, so that every gene of a transcriptome can be
      read. Each expressed gene's attention is a gate :math:`a_g = 2\sigma(\cdot) \in (0, 2)`,
      1 at the start of training. The paper's softmax over genes makes the genes compete for
      one unit of attention, so a gene the reference rarely expressed (interferon-stimulated
      genes after stimulation, a technology's own genes) takes attention away from every other
      gene of the cell; that made the published network fall below logistic regression on
      studies, conditions and technologies other than the reference.
    * **Read-out.** The gene scores :math:`s = a \odot x` are projected to ``n_latent``
      dimensions and classified linearly. The paper's projection blocks are left out: the
      logits are then an exact sum of per-gene contributions (:meth:`get_contributions`).
    * **Training.** Adam at a learning rate of 0.01, batches of 128 cells, L2 weight decay of
      10 / (training cells) (ten times the penalty of logistic regression with ``C=1``: the
      penalty acts on the factors of a low-rank map, and the weaker one let the network rest on
      genes seen in few cells of the rarer types) and a fixed number
      of epochs (:func:`default_epochs`), without early stopping: on small references a
      validation split is too small to stop on reliably. 10% of the cells are held out to
      calibrate the probabilities (temperature scaling) and to report validation metrics.
      With a ``batch_key`` each training cell is shifted by random differences between the
      batches' centroids of its type (batch-difference augmentation, as in scTab).

    Examples
    --------
    >>> import scsalient as ss
    >>> adata = ss.datasets.simulate(n_cells=1000, n_genes=300)
    >>> ss.model.NACT.setup_anndata(adata, labels_key="cell_type")
    >>> model = ss.model.NACT(adata)
    >>> model.train()
    >>> model.annotate()
    >>> adata.obs["nact_prediction"].head()
    """

    _module_cls = NACTModule
    _keys = NACTKeys
    _explanation_output = "scores"
    _latent_output = "latent"

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_latent: int = 64,
        attention_rank: int = 64,
        n_ensemble: int = 1,
    ):
        super().__init__(adata, registry)
        if int(n_ensemble) != n_ensemble or n_ensemble < 1:
            raise ValueError(f"n_ensemble must be a positive integer, got {n_ensemble!r}.")
        for name, value in (("n_latent", n_latent), ("attention_rank", attention_rank)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        n_genes = self.summary_stats.n_vars
        module_kwargs = {
            "n_latent": int(n_latent),
            "attention_rank": int(attention_rank),
            "n_members": int(n_ensemble),
        }
        n_params = NACTModule.n_parameters(n_genes, self.summary_stats.n_labels, **module_kwargs)
        check_training_memory(n_params, 0, device="cpu", hint=self._memory_hint())
        self.module = NACTModule(
            n_input=n_genes,
            n_labels=self.summary_stats.n_labels,
            normalize_input=self.input_kind == "counts",
            **module_kwargs,
        )
        self._model_summary_string = (
            f"NACT: {n_genes} genes ({self.input_kind}), {self.summary_stats.n_labels} classes, "
            f"attention rank {attention_rank}, latent {n_latent}"
            + (f", {n_ensemble} ensemble members" if n_ensemble > 1 else "")
            + f", {n_params:,} parameters"
        )
        self.init_params_ = self._get_init_params(locals())

    @staticmethod
    def _memory_hint() -> str:
        return "Lower attention_rank or n_latent, the batch size, the number of genes or of ensemble members."

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        labels_key: str | None = None,
        layer: str | None = None,
        batch_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData for N-ACT.

        The expression can be raw counts (normalised inside the model to log1p(CP10k)) or
        log-normalised values; which one is detected and shown by
        :meth:`~scvi.model.base.BaseModelClass.view_anndata_setup`; any decision other than
        integer counts comes with a warning (see the user guide, "Inputs"). The whole matrix is
        checked: NaN/inf, negative values, all-zero cells, duplicated ``var_names`` and fewer
        than 10 cells raise a :class:`ValueError`. Labels mixing strings and other types are
        used as strings, and unused categories are left out of the classes (each with a
        warning; ``adata.obs[labels_key]`` is not changed).

        Parameters
        ----------
        %(param_adata)s
        labels_key
            Column of ``adata.obs`` with the cell types to learn. ``None`` trains on clusters
            (unsupervised use, as in the N-ACT paper): an existing ``adata.obs["leiden"]``
            is used, otherwise it is computed with :func:`scsalient.pp.cluster_labels`.
        layer
            Layer holding the expression (counts or log-normalised); ``None`` for ``adata.X``.
        batch_key
            Column of ``adata.obs`` with the batch (donor, sample, library) of each cell.
            Enables the batch-difference augmentation of :meth:`~scsalient.model.NACT.train`;
            query data do not need it.
        **kwargs
            Used by scvi-tools when it re-applies the setup (``load``, query data).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if labels_key is None:
            labels_key = ClusterKeys.LEIDEN
            if labels_key not in adata.obs and is_backed(adata):
                raise ValueError(
                    "labels_key=None clusters the cells, which needs the expression in memory, but this "
                    "AnnData is backed (on disk). Give labels_key, or load the data with "
                    "`adata = adata.to_memory()` first."
                )
            if labels_key not in adata.obs:
                from scsalient.pp import cluster_labels

                logger.info("No labels_key given: clustering with Leiden into adata.obs['%s'].", labels_key)
                cluster_labels(adata, layer=layer, key_added=labels_key)
        if "source_registry" not in kwargs:
            check_labels(adata, labels_key)
            check_batch_key(adata, batch_key)
        fields = [
            ExpressionLayerField(REGISTRY_KEYS.X_KEY, layer, empty_query_cells="keep"),
            LabelsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        weight_decay: float | None = None,
        augment: bool | None = None,
        early_stopping: bool = False,
        early_stopping_patience: int = 10,
        train_size: float = 0.9,
        validation_size: float | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the classifier, then calibrate its probabilities on the validation cells.

        Every setting left at ``None`` takes its default (see Notes of :class:`NACT`); the
        settings used are kept in ``model.training_settings_`` and written by :meth:`annotate`
        into ``uns["nact"]``.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; ``None``: :func:`default_epochs` (60 up to 20,000
            training cells).
        lr
            Adam learning rate (0.01).
        batch_size
            Cells per minibatch (128).
        weight_decay
            L2 penalty; ``None``: 10 / (number of training cells).
        augment
            Shift each training cell by a random difference between two batches' centroids of
            the same cell type (see :func:`~scsalient.model.base._augment.batch_difference_vectors`).
            ``None``: on when a ``batch_key`` was given to :meth:`setup_anndata`.
        early_stopping
            Stop when the validation macro-F1 has not improved for
            ``early_stopping_patience`` epochs, and keep the weights of the best epoch (off by
            default: see Notes of :class:`NACT`).
        early_stopping_patience
            Epochs without improvement before stopping.
        train_size
            Fraction of cells used for training; the rest (stratified by class) calibrates the
            probabilities and gives ``f1_macro_validation``, ``accuracy_validation`` and
            ``ce_validation`` in :attr:`~scvi.model.base.BaseModelClass.history`. ``1.0``
            trains on every cell and leaves the probabilities uncalibrated.
        validation_size
            Fraction for validation; ``None`` means ``1 - train_size``.
        accelerator
            Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``, ...).
        devices
            Devices to use, as in Lightning.
        plan_kwargs
            Extra keyword arguments for :class:`~scsalient.model.base.ClassifierTrainingPlan`.
        datasplitter_kwargs
            Extra keyword arguments for the data splitter.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (e.g. ``enable_progress_bar=False``).

        Raises
        ------
        TypeError
            If given ``input_dropout``, ``label_smoothing`` or ``balance_classes``: earlier
            versions took them, but no default used them and they were removed.
        """
        removed = [name for name in REMOVED_TRAINING_ARGUMENTS if name in trainer_kwargs]
        if removed:
            what = "this option was" if len(removed) == 1 else "these options were"
            raise TypeError(
                f"NACT.train() got {', '.join(removed)}: {what} removed, as no default used it. Leave the "
                "argument out (models saved with it still load)."
            )
        n_train = int(round(self.adata.n_obs * train_size))
        chosen = dict(DEFAULT_TRAINING)
        given = {"lr": lr, "batch_size": batch_size}
        chosen.update({k: v for k, v in given.items() if v is not None})
        chosen["max_epochs"] = (
            default_epochs(n_train, int(chosen["batch_size"])) if max_epochs is None else int(max_epochs)
        )
        chosen["weight_decay"] = 10.0 / max(n_train, 1) if weight_decay is None else float(weight_decay)
        chosen["early_stopping"] = bool(early_stopping)
        chosen["augment"] = self._resolve_augment(augment)
        self.training_settings_ = dict(chosen)
        steps = chosen["max_epochs"] * int(np.ceil(max(n_train, 1) / int(chosen["batch_size"])))
        plan = {
            "lr": chosen["lr"],
            # the learning rate falls linearly to 0 over the run (not with early stopping)
            "linear_decay_steps": None if chosen["early_stopping"] else steps,
            "weight_decay": chosen["weight_decay"],
            **(plan_kwargs or {}),
        }
        n_genes = self.module.n_input
        if not chosen["early_stopping"]:
            # validation only reports progress: about 50 times a run, not after each of hundreds
            # of short epochs
            trainer_kwargs.setdefault("check_val_every_n_epoch", max(1, chosen["max_epochs"] // 50))
        self._train_classifier(
            max_epochs=chosen["max_epochs"],
            batch_size=int(chosen["batch_size"]),
            train_size=train_size,
            validation_size=validation_size,
            early_stopping=chosen["early_stopping"],
            early_stopping_patience=early_stopping_patience,
            accelerator=accelerator,
            devices=devices,
            plan_kwargs=plan,
            datasplitter_kwargs=datasplitter_kwargs,
            activation_floats_per_cell=self.module.n_members * n_genes * 8,
            memory_hint=self._memory_hint(),
            **trainer_kwargs,
        )

    # ------------------------------------------------------------------ read-out
    def get_attention(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_top_genes: int | None = None,
        dense: bool = False,
        batch_size: int | None = None,
    ) -> sparse.csr_matrix | np.ndarray:
        r"""Per-cell attention: the share of each gene in the cell's attention-weighted expression.

        Row :math:`i` holds :math:`a_g x_g / \sum_h a_h x_h` for the genes the cell expresses
        (0 for the others), so each row sums to 1: what :meth:`annotate` stores. Computed block
        by block. It is not signed by class; :meth:`get_attributions` gives each gene's part in
        the predicted class's logit.

        Parameters
        ----------
        adata
            Data to explain; ``None`` for the training data. Aligned to the model's genes by
            name, as in :meth:`predict`.
        indices
            Cells to use; ``None`` for all.
        n_top_genes
            Keep only each cell's largest shares (sparse result only); ``None`` keeps all.
        dense
            Return a dense float32 array (4 bytes per cell and gene) instead of a CSR matrix.
        batch_size
            Cells per forward pass; ``None`` sizes the blocks to the number of genes (about
            500,000 values, 64 to 1,024 cells), small enough to stay in the CPU's cache.

        Returns
        -------
        Cells x the model's genes (in the order of
        :meth:`~scvi.model.base.BaseModelClass.get_var_names`), float32.
        """
        return self._explanations(adata, indices, batch_size, n_top_genes, dense, output="scores")

    def get_attributions(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_top_genes: int | None = None,
        dense: bool = False,
        batch_size: int | None = None,
    ) -> sparse.csr_matrix | np.ndarray:
        r"""Per-cell attribution of the prediction to the genes, as shares.

        Row :math:`i` holds the positive part of each gene's exact contribution to the logit of
        the predicted class, :math:`\max(0,\ a_g x_g (VU)_{gc})` (see :meth:`get_contributions`),
        divided by its total: the genes whose attention-weighted expression argues for the
        predicted class, and by how much. Unlike :meth:`get_attention` (the share of each gene in
        the attention-weighted expression, whichever class it argues for), a gene whose
        expression argues against the predicted class gets nothing. On the faithfulness
        benchmark (remove each cell's top genes, watch the predicted probability) it is as
        faithful as integrated gradients on the same network at about 25 times less cost, and
        far more faithful than the attention shares; the attention shares with TF-IDF find
        more known markers on real PBMCs, which is why :meth:`annotate` stores those (see the
        user guide). Computed block by block, without a backward pass.

        Parameters
        ----------
        adata
            Data to explain; ``None`` for the training data (genes matched by name).
        indices
            Cells to use; ``None`` for all.
        n_top_genes
            Keep only each cell's largest shares (sparse result only); ``None`` keeps all.
        dense
            Return a dense float32 array instead of a CSR matrix.
        batch_size
            Cells per forward pass; ``None`` sizes the blocks to the number of genes (about
            500,000 values, 64 to 1,024 cells), small enough to stay in the CPU's cache.

        Returns
        -------
        Cells x the model's genes, rows summing to 1 (0 for a cell no gene argues for).
        """
        return self._explanations(adata, indices, batch_size, n_top_genes, dense, output="attribution")

    def _inference_outputs(self, tensors: dict, keys: Sequence[str]) -> dict:
        """Inference outputs, with the attribution to the predicted class when ``keys`` asks for it."""
        out = super()._inference_outputs(tensors, keys)
        if "attribution" in keys:
            out["attribution"] = self.module.attribution(out["views"], out["logits"])
        return out

    @torch.inference_mode()
    def get_contributions(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        r"""Each gene's contribution to each cell's logit of its predicted class (or of ``classes``).

        The logit of class :math:`c` is :math:`\sum_g a_g x_g (VU)_{gc}` plus a bias, so the
        contribution of gene :math:`g` is :math:`a_g x_g (VU)_{gc}`: exact for one network, the
        members' mean for an ensemble. Positive contributions argue for the class, negative
        ones against it.

        Parameters
        ----------
        adata
            Data to explain; ``None`` for the training data.
        indices
            Cells to use; ``None`` for all.
        classes
            One class name per cell; ``None``: each cell's predicted class.
        batch_size
            Cells per forward pass; ``None`` sizes the blocks to the number of genes (about
            500,000 values, 64 to 1,024 cells), small enough to stay in the CPU's cache.

        Returns
        -------
        float32 array, cells x the model's genes.
        """
        prepared = self._prepare_adata(adata)
        n = prepared.n_obs if indices is None else len(indices)
        codes = None
        if classes is not None:
            codes = pd.Index(self.classes).get_indexer(np.asarray(classes).astype(str))
            if len(codes) != n or (codes < 0).any():
                raise ValueError("classes must give one of the model's classes for every cell.")
        out = np.zeros((n, self.module.n_input), dtype=np.float32)
        device = next(self.module.parameters()).device
        for b in self._iter_inference(
            prepared, indices, batch_size, ["views", "probabilities"], "contributions"
        ):
            rows = b["positions"]
            wanted = b["probabilities"].argmax(axis=1) if codes is None else codes[rows]
            x = torch.as_tensor(b["views"][0], device=device)
            out[rows] = self.module.contributions(x, torch.as_tensor(wanted, device=device)).cpu().numpy()
        return out
