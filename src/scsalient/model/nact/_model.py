"""scvi-tools glue for N-ACT: AnnData registration, training, prediction and attention read-out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

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
from scsalient.model.base._classifier import predicted_codes
from scsalient.model.base._expression import has_validation_split
from scsalient.model.base._memory import check_training_memory
from scsalient.model.base._moments import expression_moments

from ._module import NACTModule

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

Preset = Literal["auto", "paper"]

#: training settings of each preset (see :meth:`NACT.train`)
PRESETS: dict[str, dict] = {
    # the N-ACT paper: Adam 1e-4, batch 128, 50 epochs, plain cross-entropy, no regularisation
    "paper": {
        "max_epochs": 50,
        "lr": 1e-4,
        "batch_size": 128,
        "weight_decay": 0.0,
        "input_dropout": 0.0,
        "label_smoothing": 0.0,
        "balance_classes": False,
        "early_stopping": False,
    },
    "auto": {
        "max_epochs": 30,
        "lr": 1e-3,
        "batch_size": 256,
        "weight_decay": 0.0,
        "input_dropout": 0.0,
        "label_smoothing": 0.0,
        "balance_classes": False,
        "early_stopping": True,
    },
}


class NACT(SaveLoadMixin, ClassifierMixin, BaseModelClass):
    r"""Neural additive attention for cell-type identification (N-ACT) :cite:p:`Heydari2022`.

    Every cell gets its own attention over genes; the attention-weighted expression goes
    through projection blocks to a cell-type classifier. The attention says which genes each
    prediction rests on; averaged per cluster it gives salient (marker) genes
    (:func:`scsalient.tl.salient_genes`).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`~scsalient.model.NACT.setup_anndata`.
    registry
        Registry of a saved model, to build it without data (used by ``load``).
    n_blocks
        Number of projection blocks.
    n_heads
        Linear projection heads per block.
    n_hidden_ff
        Hidden size of each block's point-wise feed-forward layer.
    dropout
        Dropout inside the projection blocks.
    attention_rank
        If given, every gene x gene map (attention and projection heads) is factorised through
        this many dimensions. Needed for large gene panels: the full attention holds 25M
        weights at 5,000 genes but 400M at 20,000.
    attention_init
        ``"zeros"`` (default) starts training from uniform attention; ``"xavier"`` initialises
        the attention like the other layers, as the authors' code does.
    mask_unexpressed
        Give each cell attention only over the genes it expresses (``True``, default); ``False``
        spreads the softmax over all genes, as published.
    attention_input
        ``"expression"`` (default, as published): the attention map reads the normalised
        expression. ``"standardized"``: it reads each gene centred and scaled by its mean and
        standard deviation over the training cells, without a bias, so it cannot prefer a gene
        in every cell alike and must attend to what sets a cell apart (see Notes);
        ``"centered"``: centred only. Both make one network more accurate across batches
        but move its attention to highly expressed genes on PBMCs (see Notes).
    attention_max_detection
        Keep the genes detected (non-zero) in more than this fraction of the training cells
        out of the attention: they get no attention in any cell, so the network does not use
        them. ``None`` (default) keeps every gene. With ``attention_input="centered"``, ``0.5``
        keeps the centred input's accuracy and brings its attention back to markers (see
        Notes). The fraction counts all training cells, so markers of a type that makes up
        most of them can be left out too: check :attr:`genes_out_of_attention`.
    n_ensemble
        Number of N-ACT networks in a deep ensemble :cite:p:`Lakshminarayanan2017`, trained
        together from independent initialisations (each on its own cross-entropy, batch shifts
        and input dropout). Predictions are the mean of the members' class probabilities and
        the attention is the mean of their attention. Training time and memory grow with the
        number of members: ``1`` trains a single network, five times faster;
        :meth:`distill` turns a trained ensemble into one network (see Notes).

    Notes
    -----
    Design, per the N-ACT paper, and where it departs from the authors' public code:

    * **Attention.** :math:`a = \mathrm{softmax}(xW + b)` over genes, with :math:`x` the
      log1p(CP10k) expression (counts are normalised inside the model; log-normalised input
      is used as given), and gene scores :math:`g = a \odot x`.
    * **Projection blocks.** ``n_blocks`` blocks, each ``LayerNorm(h + concat_i P_i h)`` with
      ``n_heads`` linear heads, each mapping the gene scores to its own slice of the output,
      then a point-wise feed-forward (ReLU) with its own residual and LayerNorm. Each block
      has its own feed-forward weights (the authors' code shares one feed-forward module
      across blocks). A concatenation of linear heads is one block-structured linear map, so
      heads differ by their slice and initialisation; with ``attention_rank`` each head is
      low-rank and the heads become distinct subspace projections.
    * **Attention over expressed genes.** A gene a cell does not express contributes
      :math:`a_j \cdot 0 = 0` whatever its attention, yet in the published design it still takes
      attention mass; the network then parks attention on the (absent) markers of other types
      and the per-type attention stops being type-specific. We take the softmax over the genes
      each cell expresses. On Kang et al. PBMCs (held-out donors, 3 epochs) this raised
      macro-F1 from 0.979 to 0.992 and turned the salient genes from ribosomal genes into
      textbook markers (NK: GZMB, KLRD1, PRF1, NKG7; CD4 T: CD3D, CD3G, IL7R; monocytes: CD14,
      FCN1, S100A9). ``mask_unexpressed=False`` restores the published softmax over all genes.
    * **Initialisation.** Xavier for every layer except the attention weights, which start at
      zero so that training starts from uniform attention and moves it only where the loss
      asks. With Xavier-initialised attention (the authors' code), the random initial
      attention persists: on simulated data with planted markers, 31-38% of the 10 most attended
      genes per cell type were planted markers with Xavier and 84-85% with zero initialisation
      (two runs each; chance 8%), at equal or better accuracy. ``attention_init="xavier"`` restores the
      published behaviour.
    * **Centred or standardised attention input** (``attention_input="centered"`` or
      ``"standardized"``, opt-in). A classifier can read every cell type from the same few
      genes (the markers of all types, attended in every cell), so mean attention per type then
      mixes the markers of all types. With centred (and scaled) input and no bias the attention
      logits average to zero over the training cells, so a gene gets more attention only in the
      cells whose expression calls for it. One network is then more accurate across batches:
      macro-F1 on held-out MOp training sub-libraries 0.686 ± 0.005 (centred) and 0.685 ± 0.006
      (standardised) against 0.656 ± 0.010 (six seeds), on the unseen test sub-libraries 0.706
      ± 0.009 (centred) against 0.678 ± 0.012; with standardised input precision@25 of planted
      markers rose from 0.22 to 0.51. But on Kang et al. PBMCs the attention moves to highly
      expressed genes every cell carries (ribosomal proteins, FTL, B2M): the salient genes match
      PanglaoDB less well (precision@25 0.17 against 0.24, three seeds) and the unsupervised
      query misnames CD4 T cells, so neither is the default.
    * **Ubiquitous genes out of the attention** (``attention_max_detection``, opt-in). With the
      centred input and ``attention_max_detection=0.5`` (genes detected in more than half of
      the training cells get no attention), one network keeps the centred input's accuracy
      (held-out MOp training sub-libraries 0.697 ± 0.008, unseen test sub-libraries 0.704 ±
      0.017) and its salient genes on Kang match PanglaoDB nearly as well as the default's
      (precision@25 primary / broad 0.23 / 0.32 against 0.24 / 0.36 on a held-out training
      donor). The same mask on the published input does not raise accuracy. On small data
      neither input helps: on 800 Spectra TILs one network scored 0.562 (centred) and 0.473
      (centred, ``0.5``) against 0.637 with the published input (three seeds).
    * **Ensemble by default.** Five networks, each from its own initialisation: on unseen
      MOp sub-libraries macro-F1 0.720 ± 0.006 against 0.678 ± 0.012 for one network, and
      on simulated data the mean attention recovers more planted markers (precision@25
      0.50 against 0.22), because each member attends to its own few markers. One network
      distilled from the ensemble (:meth:`distill`, which learns the ensemble's probabilities
      of the batch-shifted cells it sees, with input dropout 0.25) keeps part of the accuracy
      gain (0.697 ± 0.002 on the same split; on unseen Kang donors 0.9938 ± 0.0005, against
      0.9947 for its ensembles and 0.9938 for logistic regression).
    * **Head.** A linear classifier on the last block's output. The authors' code applies a
      LeakyReLU to the logits, which we do not.
    * **Training.** Adam, learning rate 1e-4, 50 epochs, batch size 128, cross-entropy, Xavier
      initialisation, optional step decay of the learning rate (0.95 every 10 epochs), as
      published. 10% of the training cells are held out to report validation metrics.

    Examples
    --------
    >>> import scsalient as ss
    >>> adata = ss.datasets.simulate(n_cells=1000, n_genes=300)
    >>> ss.model.NACT.setup_anndata(adata, labels_key="cell_type")
    >>> model = ss.model.NACT(adata)  # 5 networks; n_ensemble=1 for one
    >>> model.train(max_epochs=20)
    >>> model.annotate()
    >>> adata.obs["nact_prediction"].head()
    """

    _module_cls = NACTModule
    #: the distilled network learns the ensemble's probabilities of the batch-shifted cells it sees
    _distill_consistent = True
    #: input dropout of the distilled network (the user guide, "One network from the ensemble")
    _distill_input_dropout = 0.25

    def _distill_train_kwargs(self) -> dict[str, Any]:
        """The distilled network trains with input dropout :attr:`_distill_input_dropout`.

        It learns the ensemble's probabilities, computed on every gene, from a quarter fewer
        genes, so it cannot rest on a few of them: on held-out training donors of PBMCs it
        scored about as well as the ensemble, and without it far below.
        """
        return {"input_dropout": self._distill_input_dropout}

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_blocks: int = 2,
        n_heads: int = 8,
        n_hidden_ff: int = 128,
        dropout: float = 0.0,
        attention_rank: int | None = None,
        attention_init: Literal["zeros", "xavier"] = "zeros",
        mask_unexpressed: bool = True,
        attention_input: Literal["expression", "centered", "standardized"] = "expression",
        attention_max_detection: float | None = None,
        n_ensemble: int = 5,
    ):
        super().__init__(adata, registry)
        if int(n_ensemble) != n_ensemble or n_ensemble < 1:
            raise ValueError(f"n_ensemble must be a positive integer, got {n_ensemble!r}.")
        if n_blocks < 0 or n_heads < 1 or n_hidden_ff < 1:
            raise ValueError("n_blocks must be >= 0, n_heads and n_hidden_ff >= 1.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        if attention_max_detection is not None and not 0.0 < attention_max_detection <= 1.0:
            raise ValueError(
                f"attention_max_detection must be in (0, 1] or None, got {attention_max_detection!r}."
            )
        if attention_rank is not None and attention_rank < 1:
            raise ValueError(f"attention_rank must be a positive integer or None, got {attention_rank}.")
        n_genes = self.summary_stats.n_vars
        if n_heads > n_genes:
            raise ValueError(f"n_heads ({n_heads}) cannot exceed the number of genes ({n_genes}).")
        module_kwargs = {
            "n_blocks": n_blocks,
            "n_heads": n_heads,
            "n_hidden_ff": n_hidden_ff,
            "attention_rank": attention_rank,
            "n_members": int(n_ensemble),
        }
        n_params = NACTModule.n_parameters(n_genes, self.summary_stats.n_labels, **module_kwargs)
        check_training_memory(n_params, 0, device="cpu", hint=self._memory_hint(attention_rank))
        self.module = NACTModule(
            n_input=n_genes,
            n_labels=self.summary_stats.n_labels,
            dropout=dropout,
            attention_init=attention_init,
            mask_unexpressed=mask_unexpressed,
            normalize_input=self.input_kind == "counts",
            class_weights=self._class_weights() if adata is not None else None,
            attention_input=attention_input,
            restrict_attention=attention_max_detection is not None,
            **module_kwargs,
        )
        rank = "full" if attention_rank is None else f"rank {attention_rank}"
        self._model_summary_string = (
            f"NACT: {n_genes} genes ({self.input_kind}), {self.summary_stats.n_labels} classes, "
            f"{rank} attention, {n_blocks} blocks x {n_heads} heads"
            + (f", {n_ensemble} ensemble members" if n_ensemble > 1 else "")
            + f", {n_params:,} parameters"
        )
        self.init_params_ = self._get_init_params(locals())

    def _prepare_training(self, train_indices: np.ndarray) -> None:
        """Augmentation vectors, the gene moments of a centred attention input and its gene mask."""
        super()._prepare_training(train_indices)
        centred = self.module.attention_input != "expression"
        threshold = self.init_params_["non_kwargs"].get("attention_max_detection")
        if not centred and threshold is None:
            return
        # one pass over the training cells for both
        mean, sd, rates = expression_moments(
            self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY),
            train_indices,
            normalize=self.input_kind == "counts",
        )
        if centred:
            self.module.set_gene_moments(torch.from_numpy(mean), torch.from_numpy(sd))
        if threshold is not None:
            allowed = rates <= threshold
            if not allowed.any():
                raise ValueError(
                    f"Every gene is detected in more than {threshold:.0%} of the training cells: "
                    "attention_max_detection would leave the attention no gene. Raise it."
                )
            self.module.set_attention_allowed(torch.from_numpy(allowed))
            left_out = self.get_var_names()[~allowed]
            logger.info(
                "%d of %d genes are detected in more than %.0f%% of the training cells and get no attention.",
                len(left_out),
                len(allowed),
                100 * threshold,
            )
            if getattr(self, "training_settings_", None) is not None:
                self.training_settings_["genes_out_of_attention"] = [str(g) for g in left_out]

    @property
    def genes_out_of_attention(self) -> pd.Index:
        """Genes kept out of the attention by ``attention_max_detection`` (empty without it)."""
        allowed = getattr(self.module, "attention_allowed", None)
        names = pd.Index(self.get_var_names())
        return names[:0] if allowed is None else names[~allowed.cpu().numpy()]

    @staticmethod
    def _memory_hint(attention_rank: int | None) -> str:
        if attention_rank is None:
            return (
                "Use a low-rank attention (e.g. attention_rank=256), fewer genes (highly variable genes) "
                "or fewer ensemble members."
            )
        return "Lower attention_rank, the batch size, or the number of genes."

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
        preset: Preset = "auto",
        lr: float | None = None,
        batch_size: int | None = None,
        weight_decay: float | None = None,
        input_dropout: float | None = None,
        label_smoothing: float | None = None,
        balance_classes: bool | None = None,
        augment: bool | None = None,
        early_stopping: bool | None = None,
        early_stopping_patience: int = 5,
        lr_decay: float | None = None,
        lr_decay_every: int = 10,
        average_epochs: float | None = None,
        train_size: float = 0.9,
        validation_size: float | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the classifier.

        Every setting left at ``None`` comes from the ``preset``; the settings used are kept in
        ``model.training_settings_`` and written by :meth:`annotate` into ``uns["nact"]``.

        Parameters
        ----------
        max_epochs
            Largest number of passes over the training cells.
        preset
            ``"paper"``: the published N-ACT training (Adam, learning rate 1e-4, batch size 128,
            50 epochs, plain cross-entropy, no early stopping). ``"auto"`` (default): the
            settings chosen on held-out training batches (see Notes of :class:`NACT`).
        lr
            Adam learning rate.
        batch_size
            Cells per minibatch.
        weight_decay
            L2 penalty.
        input_dropout
            Dropout on the expression before the attention, at training time.
        label_smoothing
            Label smoothing of the cross-entropy.
        balance_classes
            Weight each class by :math:`n / (C n_c)` in the cross-entropy.
        augment
            Shift each training cell by a random difference between two batches' centroids of
            the same cell type (see :func:`~scsalient.model.base._augment.batch_difference_vectors`).
            ``None``: on when a ``batch_key`` was given to :meth:`setup_anndata`.
        early_stopping
            Stop when the validation macro-F1 has not improved for
            ``early_stopping_patience`` epochs, and keep the weights of the best epoch. The
            ``"auto"`` preset turns it off when there is no validation split
            (``train_size=1``).
        early_stopping_patience
            Epochs without improvement before stopping.
        lr_decay
            Multiply the learning rate by this factor every ``lr_decay_every`` epochs (the
            paper's option: 0.95); ``None`` keeps it constant.
        lr_decay_every
            Epochs between decays.
        average_epochs
            If given, an exponential moving average of the weights over about this many epochs
            (Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging`) is what is
            validated, kept at the best epoch and returned, instead of the weights of the last
            step. ``None`` (default): no averaging. Not the default because, for one network
            on held-out MOp training sub-libraries (six seeds), it gave no gain on average
            (0.656 with and without); see the N-ACT user guide.
        train_size
            Fraction of cells used for training; the rest is the validation split on which
            ``f1_macro_validation``, ``accuracy_validation`` and ``ce_validation`` are logged
            in :attr:`~scvi.model.base.BaseModelClass.history`. ``1.0`` trains on every cell.
        validation_size
            Fraction for validation; ``None`` means ``1 - train_size``.
        accelerator
            Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``, ...).
        devices
            Devices to use, as in Lightning.
        plan_kwargs
            Extra keyword arguments for :class:`~scsalient.model.base.ClassifierTrainingPlan`
            (e.g. ``optimizer="AdamW"``).
        datasplitter_kwargs
            Extra keyword arguments for the data splitter.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (e.g. ``enable_progress_bar=False``).
        """
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
        chosen = dict(PRESETS[preset])
        given = {
            "max_epochs": max_epochs,
            "lr": lr,
            "batch_size": batch_size,
            "weight_decay": weight_decay,
            "input_dropout": input_dropout,
            "label_smoothing": label_smoothing,
            "balance_classes": balance_classes,
            "early_stopping": early_stopping,
        }
        chosen.update({k: v for k, v in given.items() if v is not None})
        if early_stopping is None and not has_validation_split(train_size, validation_size):
            chosen["early_stopping"] = False  # nothing to stop on
        if augment is None and preset == "paper":
            augment = False
        chosen["augment"] = self._resolve_augment(augment)
        self.module.set_input_dropout(chosen["input_dropout"])
        self.training_settings_ = {
            "preset": preset,
            **chosen,
            "lr_decay": lr_decay,
            "average_epochs": average_epochs,
        }
        plan = {
            "lr": chosen["lr"],
            "weight_decay": chosen["weight_decay"],
            "lr_decay": lr_decay,
            "lr_decay_every": lr_decay_every,
            "label_smoothing": chosen["label_smoothing"],
            "balance_classes": chosen["balance_classes"],
            **(plan_kwargs or {}),
        }
        n_genes, n_blocks = self.module.n_input, self.module.n_blocks
        self._train_classifier(
            max_epochs=int(chosen["max_epochs"]),
            batch_size=int(chosen["batch_size"]),
            train_size=train_size,
            validation_size=validation_size,
            early_stopping=bool(chosen["early_stopping"]),
            early_stopping_patience=early_stopping_patience,
            accelerator=accelerator,
            devices=devices,
            plan_kwargs=plan,
            datasplitter_kwargs=datasplitter_kwargs,
            activation_floats_per_cell=self.module.n_members * n_genes * (4 + 8 * n_blocks),
            memory_hint=self._memory_hint(self.init_params_["non_kwargs"]["attention_rank"]),
            average_epochs=average_epochs,
            **trainer_kwargs,
        )

    # ------------------------------------------------------------------ read-out
    def get_attention(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = 1024,
    ) -> np.ndarray:
        """Per-cell gene attention.

        Parameters
        ----------
        adata
            Data to explain; ``None`` for the training data. Aligned to the model's genes by
            name, as in :meth:`predict`.
        indices
            Cells to use; ``None`` for all.
        batch_size
            Cells per forward pass; the result is filled batch by batch.

        Returns
        -------
        float32 array, cells x the model's genes (in the order of
        :meth:`~scvi.model.base.BaseModelClass.get_var_names`); each row sums to 1, except
        for query cells with no expression in the model's genes, whose rows are 0.
        """
        prepared = self._prepare_adata(adata)
        n = prepared.n_obs if indices is None else len(indices)
        out = np.zeros((n, self.module.n_input), dtype=np.float32)
        for batch in self._iter_inference(prepared, indices, batch_size, ["attention"], "attention"):
            out[batch["positions"]] = batch["attention"]
        return out

    def annotate(
        self,
        adata: AnnData | None = None,
        attention: bool = True,
        batch_size: int | None = 1024,
    ) -> None:
        """Write predictions and attention into ``adata``.

        One pass over the cells writes

        * ``obs["nact_prediction"]``: predicted cell type (categorical),
        * ``obs["nact_confidence"]``: its probability,
        * ``obsm["nact_probabilities"]``: DataFrame of class probabilities,
        * ``obsm["nact_attention"]``: float32 attention, cells x ``adata.var_names`` (only with
          ``attention=True``; genes the model does not know get 0),
        * ``varm["nact_attention_mean"]``: DataFrame genes x classes, the mean attention of the
          cells predicted as each class (NaN for classes no cell is predicted as, and for genes
          the model does not know),
        * ``uns["nact"]``: classes, labels key, input kind and model settings.

        Query cells with no expression in any of the model's genes get no prediction (with a
        warning naming them): a missing prediction, NaN confidence and probabilities, and
        attention 0.

        Parameters
        ----------
        adata
            Data to annotate; ``None`` for the training data. Nothing else in it is changed.
        attention
            Also store the per-cell attention (cells x genes float32: 4 bytes per entry).
        batch_size
            Cells per forward pass.
        """
        target = self.adata if adata is None else adata
        prepared = self._prepare_adata(adata)
        model_genes = pd.Index(self.get_var_names())
        gene_pos = model_genes.get_indexer(target.var_names)  # model column of each adata gene
        known = gene_pos >= 0
        n_classes = len(self.classes)
        probs = np.full((target.n_obs, n_classes), np.nan, dtype=np.float32)
        att = np.zeros((target.n_obs, target.n_vars), dtype=np.float32) if attention else None
        sums = np.zeros((n_classes, len(model_genes)), dtype=np.float64)
        for batch in self._iter_inference(
            prepared, None, batch_size, ["probabilities", "attention"], "annotate"
        ):
            rows = batch["positions"]
            probs[rows] = batch["probabilities"]
            predicted = batch["probabilities"].argmax(axis=1)
            np.add.at(sums, predicted, batch["attention"])
            if att is not None:
                att[np.ix_(rows, np.flatnonzero(known))] = batch["attention"][:, gene_pos[known]]
        predicted = predicted_codes(probs)
        counts = np.bincount(predicted[predicted >= 0], minlength=n_classes).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / counts[:, None]
        mean_df = pd.DataFrame(np.nan, index=target.var_names, columns=self.classes)
        mean_df.loc[known] = means[:, gene_pos[known]].T
        target.obs[NACTKeys.PREDICTION] = pd.Categorical.from_codes(predicted, categories=self.classes)
        target.obs[NACTKeys.CONFIDENCE] = np.max(probs, axis=1)
        target.obsm[NACTKeys.PROBABILITIES] = pd.DataFrame(
            probs, index=target.obs_names, columns=self.classes
        )
        if att is not None:
            target.obsm[NACTKeys.ATTENTION] = att
        target.varm[NACTKeys.ATTENTION_MEAN] = mean_df
        target.uns[NACTKeys.UNS] = {
            "classes": self.classes.tolist(),
            "labels_key": self.labels_key,
            "input_kind": self.input_kind,
            "n_model_genes": len(model_genes),
            "n_genes_known": int(known.sum()),
            "settings": {k: v for k, v in self.init_params_["non_kwargs"].items() if v is not None},
            "training": dict(getattr(self, "training_settings_", {})),
        }
