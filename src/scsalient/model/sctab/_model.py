"""scvi-tools glue for scTab: registration, training presets, ensembles, augmentation, read-out."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.model.base import BaseModelClass
from scvi.utils import setup_anndata_dsp

from scsalient._constants import SCTABKeys
from scsalient.model.base import (
    ClassifierMixin,
    ExpressionLayerField,
    LabelsField,
    SaveLoadMixin,
    check_labels,
)
from scsalient.model.base._checks import check_batch_key
from scsalient.model.base._expression import has_validation_split
from scsalient.model.base._memory import check_training_memory

from ._module import SCTABModule

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

Preset = Literal["auto", "paper"]

#: training settings of the scTab paper (22M cells)
PAPER = {"lr": 5e-3, "weight_decay": 0.05, "batch_size": 2048, "lr_decay": 0.9}


#: batch-norm momentum of TabNet's ghost batch norms
PAPER_MOMENTUM = 0.02


def auto_momentum(n_train: int, batch_size: int, virtual_batch_size: int) -> float:
    """Ghost batch-norm momentum whose running statistics settle within about half an epoch.

    TabNet's momentum (0.02) averages the statistics over the last 50 updates: a fraction of an
    epoch on an atlas, but dozens of epochs on 10,000 cells, where the running statistics used
    at prediction time then lag far behind the network's weights.
    """
    steps = max(int(np.ceil(n_train / batch_size)), 1)
    ghost_updates = steps * max(batch_size // virtual_batch_size, 1)
    return float(np.clip(2.0 / ghost_updates, PAPER_MOMENTUM, 0.5))


#: values (members x cells x genes) of one forward pass in training above which a minibatch is
#: split into parts whose gradients are accumulated (each cells x genes tensor of the forward pass
#: is then at most 128 MiB)
MAX_STEP_VALUES = 2**25


def micro_batch_size(batch_size: int, n_members: int, n_genes: int, virtual_batch_size: int | None) -> int:
    """Cells per forward pass in training: ``batch_size``, or a part of it when that is too wide.

    A minibatch whose ``n_members x batch_size x n_genes`` values exceed
    :data:`MAX_STEP_VALUES` is run in equal parts, the largest power of two that fits but not
    below ``virtual_batch_size``, and their gradients are summed before the optimiser steps.
    As the ghost batch normalisation already normalises each ``virtual_batch_size`` cells on
    their own, the parts see the same statistics; the class-weighted cross-entropy is then
    averaged within each part and the parts averaged. A batch size that the part does not
    divide is not split, nor is any minibatch without ghost batch normalisation
    (``virtual_batch_size`` ``None``), whose statistics are those of the whole minibatch.
    """
    if not virtual_batch_size or n_members * batch_size * n_genes <= MAX_STEP_VALUES:
        return batch_size
    fits = MAX_STEP_VALUES // max(n_members * n_genes, 1)
    part = max(int(virtual_batch_size), 2 ** int(np.floor(np.log2(max(fits, 1)))))
    return part if part < batch_size and batch_size % part == 0 else batch_size


def auto_training(n_train: int) -> dict:
    """Training settings that suit ``n_train`` cells (see :class:`SCTAB`, Notes).

    The batch holds about 1/32 of the training cells (32 to 2048), so an epoch has about 32
    optimiser steps up to some 65,000 cells. The weight decay is 0.5 up to 65,536 cells and
    falls in proportion to 1 / ``n_train`` beyond (the batch is then capped, so the steps per
    epoch, and the decay applied per epoch, grow with the data), down to the published 0.05
    from 655,360 cells on.
    """
    n_train = max(n_train, 1)
    batch_size = int(np.clip(2 ** np.round(np.log2(n_train / 32)), 32, 2048))
    weight_decay = float(np.clip(0.5 * 65_536 / n_train, PAPER["weight_decay"], 0.5))
    return {"lr": 5e-3, "weight_decay": weight_decay, "batch_size": batch_size, "lr_decay": 0.9}


class SCTAB(SaveLoadMixin, ClassifierMixin, BaseModelClass):
    r"""scTab: cell-type annotation with a TabNet and sparse feature attention :cite:p:`Fischer2024`.

    A TabNet :cite:p:`Arik2021` encoder picks, for every cell, a sparse set of genes (a
    1.5-entmax :cite:p:`Peters2019` feature mask) and classifies the cell from them. An
    ensemble of ``n_ensemble`` independently initialised networks (a deep ensemble
    :cite:p:`Lakshminarayanan2017`) gives calibrated probabilities and an uncertainty per cell.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`~scsalient.model.SCTAB.setup_anndata`; may be opened
        backed (``anndata.read_h5ad(path, backed="r")``) or hold anndata's on-disk sparse
        dataset of a zarr store as ``X`` (``anndata.io.sparse_dataset(zarr_group["X"])``).
    registry
        Registry of a saved model, to build it without data (used by ``load``).
    n_ensemble
        Ensemble members, trained together in one batched network.
    n_d
        Width of the decision features (the embedding of each member).
    n_a
        Width of the attention features.
    n_steps
        Decision steps (each with its own feature mask).
    n_shared
        GLU layers shared by the feature transformers (scTab: 3; see Notes).
    n_independent
        GLU layers specific to each feature transformer (scTab: 5; see Notes).
    gamma
        Prior relaxation between decision steps.
    virtual_batch_size
        Cells per ghost batch norm.
    lambda_sparse
        Weight of the mask sparsity penalty.
    mask_init_scale
        Initial scale of the mask logits (the weight of the batch norm in front of the
        1.5-entmax). TabNet uses 1, which starts from masks of a few random genes; the default
        0.01 starts from nearly uniform masks (see Notes).

    Notes
    -----
    **Network.** As in scTab: counts are normalised inside the model to log1p(CP10k)
    (log-normalised input is used as given) and passed, without scTab's input batch norm, to
    a TabNet encoder with one decision step, ``n_d=128``, ``n_a=64``, one shared and one
    independent GLU layer per feature transformer (scTab: 3 and 5), ghost batch norm (virtual
    batch 256), an attentive transformer with prior scaling and 1.5-entmax masks, and a
    mask-entropy penalty ``lambda_sparse=1e-5``; a linear head maps the decision features to
    the classes. The network is written here rather than taken from ``pytorch-tabnet``
    because every layer carries an ensemble-member dimension (all members train in one
    batched pass, with separate weights, batch-norm statistics and per-member gradient
    clipping), which ``pytorch-tabnet``'s modules do not support, and because its training
    loop (its own ``fit``) does not fit into scvi-tools/Lightning. The 1.5-entmax mapping
    comes from the ``entmax`` package (its authors' exact, sort-based implementation with a
    closed-form backward pass), which we preferred to a re-implementation.

    **Depth.** scTab's feature transformers stack 3 shared and 5 independent GLU layers. On
    references of a few hundred cells that network varied from seed to seed and often fitted
    features of the reference that did not carry over to a query from another condition or
    study. One layer of each, over three seeds: Kang control -> stimulated macro-F1 0.896
    (deep 0.858, seeds 0.789-0.906), PBMC 10x -> CEL-Seq2 0.799 (0.776), tumour
    micro-environment -> melanoma 0.542 (0.463); cell lines CEL-Seq2 -> Drop-seq 0.960 (0.971,
    within the seed spread) and MOp's and Kang's held-out training cells unchanged, at 0.6-0.8
    of the training time (``benchmarks/results/defaults.md``). At atlas scale the deeper network may
    pay off (untested here); ``n_shared=3, n_independent=5`` restores it.

    **Training** (:meth:`train`). Class-weighted cross-entropy
    (:math:`w_c = n / (C\,n_c)`), AdamW, learning rate decayed by 0.9 every epoch, gradient
    norm clipped to 1 (per member), and the weights of the epoch with the best validation
    macro-F1 kept. ``preset="paper"`` uses the published settings (learning rate 0.005,
    weight decay 0.05, batch size 2048, TabNet's batch-norm momenta 0.01 and 0.02). The default
    ``preset="auto"`` keeps the learning rate and its decay; the batch size scales with the data
    (about 1/32 of the training cells, between 32 and 2048), the batch-norm momenta are set so
    that the running statistics used at prediction time settle within about half an epoch, and
    the weight decay is 0.5 up to 65,536 training cells, falling as 1 / cells to the published
    0.05 at 655,360 cells. The stronger weight decay was chosen on sub-libraries held out inside
    the MOp training cells (one network: macro-F1 0.635 against 0.605 with 0.05; the ensemble
    0.691 against 0.684), and was neutral on Kang's and Spectra's held-out training cells; above
    65,536 cells it is untested, so it returns to scTab's value at atlas scale. With the
    published settings a 10,000-cell dataset gets 4 optimiser steps per epoch while the
    learning rate decays by 0.9 per epoch, and the running statistics barely leave their
    initial values: on the MOp sub-library holdout the published settings (with TabNet's mask
    initialisation) gave a test macro-F1 of 0.03, the defaults 0.64 (one member) and 0.71 (five;
    means over seeds 0, 1, 2).

    **Mask initialisation.** With TabNet's initialisation (``mask_init_scale=1``) the first
    masks keep a handful of random genes, and the 1.5-entmax passes no gradient to the genes it
    leaves out, so a network trained on a few thousand cells memorises instead of finding the
    informative genes. On simulated data with planted markers (1,080 training cells) the
    validation macro-F1 was 0.49 with ``mask_init_scale=1`` and 1.0 with 0.01; on the MOp
    sub-library holdout (7,844 training cells) the test macro-F1 was 0.58 with 0.1 and 0.63 with
    0.01. After training on some thousands of cells the masks stay nearly dense.

    **Explanation.** What :meth:`annotate` stores as ``obsm["sctab_mask"]`` (the key keeps its
    name) and averages per predicted class into ``varm["sctab_mask_mean"]`` is the attribution
    of each cell's prediction to its genes (:meth:`get_attributions`): the positive part of
    gradient x input of the predicted class's log-probability, as shares of the cell's total.
    It names the genes whose expression argues for the predicted class against the others.
    The feature masks (:meth:`get_masks`) select the genes the decision step reads, whichever
    class they argue for; nearly dense, their mean over a type's cells follows detection
    rates. On simulated data with planted markers, the attributions of a type's cells put
    1,500 to 8,000 times as much weight on its markers as on another type's, the masks 1.3 to
    2 times. Against PanglaoDB markers, their salient genes (:func:`scsalient.tl.salient_genes`)
    reach a precision@25 above scanpy's Wilcoxon test on Kang 2018 PBMCs and below it on
    ``pbmc68k_reduced`` and on Ding 2020 PBMCs (``benchmarks/results/markers*.md``). A stray
    read gets none of a cell's attribution when it argues against the predicted class (one
    CD14 count in a Kang CD4 T cell: share 0.0000, against 0.006 of the cell's mask).

    **Augmentation.** With a ``batch_key`` (donors, samples), training cells are shifted by
    differences between batches of the same cell type (scTab's donor-difference augmentation;
    see :meth:`train`).

    **Uncertainty.** Predictions are the mean of the members' probabilities; the uncertainty is
    1 minus the largest mean probability, and the disagreement is the fraction of members whose
    own prediction differs from the ensemble's.

    Examples
    --------
    >>> import scsalient as ss
    >>> adata = ss.datasets.simulate(n_cells=1000, n_genes=300)
    >>> ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type", batch_key="donor")
    >>> model = ss.model.SCTAB(adata, n_ensemble=3)
    >>> model.train(max_epochs=20)
    >>> model.annotate()
    >>> adata.obs[["sctab_prediction", "sctab_uncertainty"]].head()
    """

    _module_cls = SCTABModule
    _keys = SCTABKeys
    #: what ``annotate`` stores as ``obsm["sctab_mask"]`` (the key name is kept from when it held
    #: the feature masks): the class-specific gradient x input (see :meth:`get_attributions`)
    _explanation_output = "attribution"
    _latent_output = "embedding"
    _default_min_confidence = None
    #: the distilled network is this many times as wide as a member (user guide: "The
    #: distilled network is four times as wide as a member")
    _distill_width = 4

    def _distill_train_kwargs(self) -> dict[str, Any]:
        """No early stopping for the distilled network: it trains every epoch and keeps the last weights.

        Its later epochs generalise better to unseen batches than the epoch with the best
        validation macro-F1 (user guide: "One network from the ensemble").
        """
        return {"early_stopping": False}

    def _distill_model_kwargs(self) -> dict[str, Any]:
        """The distilled network's ``n_d`` and ``n_a``: :attr:`_distill_width` times a member's."""
        settings_ = self.init_params_["non_kwargs"]
        return {key: self._distill_width * int(settings_[key]) for key in ("n_d", "n_a")}

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_ensemble: int = 5,
        n_d: int = 128,
        n_a: int = 64,
        n_steps: int = 1,
        n_shared: int = 1,
        n_independent: int = 1,
        gamma: float = 1.3,
        virtual_batch_size: int = 256,
        lambda_sparse: float = 1e-5,
        mask_init_scale: float = 0.01,
    ):
        super().__init__(adata, registry)
        for name, value in (("n_ensemble", n_ensemble), ("n_d", n_d), ("n_a", n_a), ("n_steps", n_steps)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if n_shared < 0 or n_independent < 0 or n_shared + n_independent < 1:
            raise ValueError("n_shared and n_independent must be >= 0 and not both 0.")
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}.")
        if lambda_sparse < 0:
            raise ValueError(f"lambda_sparse must be >= 0, got {lambda_sparse}.")
        n_genes, n_labels = self.summary_stats.n_vars, self.summary_stats.n_labels
        self.module = SCTABModule(
            n_input=n_genes,
            n_labels=n_labels,
            n_members=n_ensemble,
            n_d=n_d,
            n_a=n_a,
            n_steps=n_steps,
            n_shared=n_shared,
            n_independent=n_independent,
            gamma=gamma,
            virtual_batch_size=virtual_batch_size,
            lambda_sparse=lambda_sparse,
            mask_init_scale=mask_init_scale,
            normalize_input=self.input_kind == "counts",
            class_weights=self._class_weights() if adata is not None else None,
        )
        n_params = sum(p.numel() for p in self.module.parameters())
        check_training_memory(n_params, 0, device="cpu", hint="Use fewer ensemble members or genes.")
        self._model_summary_string = (
            f"SCTAB: {n_genes} genes ({self.input_kind}), {n_labels} classes, {n_ensemble} member(s), "
            f"n_d={n_d}, n_a={n_a}, {n_steps} step(s), {n_params:,} parameters"
        )
        self.init_params_ = self._get_init_params(locals())

    @property
    def n_ensemble(self) -> int:
        """Number of ensemble members."""
        return self.module.n_members

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        labels_key: str,
        layer: str | None = None,
        batch_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData for scTab.

        The expression should be raw counts (normalised inside the model to log1p(CP10k), as
        scTab); log-normalised values are used as given. The whole matrix is checked block by
        block (so a backed AnnData is never loaded at once): NaN/inf, negative values, all-zero
        cells, duplicated ``var_names`` and fewer than 10 cells raise a :class:`ValueError`.
        Non-integer values are taken as counts or as log-normalised values from their row
        totals and distribution, with a warning saying which (see the NACT user guide,
        "Inputs"). Labels mixing strings and other types are used as strings, and unused
        categories are left out of the classes (each with a warning; ``adata.obs[labels_key]``
        is not changed).

        Parameters
        ----------
        %(param_adata)s
        labels_key
            Column of ``adata.obs`` with the cell types to learn.
        layer
            Layer holding the expression; ``None`` for ``adata.X``.
        batch_key
            Column of ``adata.obs`` with the batch (donor, sample) of each cell. Enables the
            batch-difference augmentation in :meth:`~scsalient.model.SCTAB.train`; query data
            do not need it.
        **kwargs
            Used by scvi-tools when it re-applies the setup (``load``, query data).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
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
        max_epochs: int = 30,
        preset: Preset = "auto",
        lr: float | None = None,
        weight_decay: float | None = None,
        batch_size: int | None = None,
        lr_decay: float | None = None,
        augment: bool | None = None,
        train_size: float = 0.9,
        validation_size: float | None = None,
        early_stopping: bool | None = None,
        early_stopping_patience: int = 5,
        gradient_clip_norm: float | None = 1.0,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        block_size: int = 256,
        buffer_blocks: int = 32,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the ensemble.

        Parameters
        ----------
        max_epochs
            Largest number of passes over the training cells.
        preset
            ``"paper"``: scTab's published settings (AdamW, learning rate 0.005, weight decay
            0.05, batch size 2048, learning rate x 0.9 per epoch). ``"auto"``: the same with a
            batch size and weight decay scaled to the data (see Notes of :class:`SCTAB`). Any
            of ``lr``, ``weight_decay``, ``batch_size`` and ``lr_decay`` overrides the preset.
        lr
            AdamW learning rate.
        weight_decay
            AdamW (decoupled) weight decay.
        batch_size
            Cells per minibatch (per optimiser step). A minibatch too wide for memory (members
            x cells x genes above 2^25 values) runs in parts of whole ghost batches with their
            gradients summed, unless ``accumulate_grad_batches`` is given among ``trainer_kwargs``.
        lr_decay
            Factor applied to the learning rate after every epoch (``None``: the preset's).
        augment
            Add batch-difference vectors to the training cells. ``None`` (default): on when
            ``batch_key`` was given to :meth:`setup_anndata`. The vectors are the differences
            between the log1p(CP10k) centroids of two batches of the same cell type (training
            cells only), entries below 0.25 in absolute value set to 0, clipped to
            ``[-1.5, 1.5]``, and kept if they fall in the larger k-means clusters; each
            training cell of each member gets a random vector added or subtracted, and the
            result is clamped to ``[0, 9]``.
        train_size
            Fraction of cells used for training; the rest is the validation split, on which
            ``f1_macro_validation`` is logged and early stopping decides.
        validation_size
            Fraction for validation; ``None`` means ``1 - train_size``.
        early_stopping
            Stop when the validation macro-F1 (of the ensemble) has not improved for
            ``early_stopping_patience`` epochs, and keep the weights of the best epoch.
            ``None`` (default): on when there is a validation split (``train_size < 1`` or a
            ``validation_size``), off with ``train_size=1``, as in
            :meth:`~scsalient.model.NACT.train`.
        early_stopping_patience
            Epochs without improvement before stopping.
        gradient_clip_norm
            Largest gradient norm of each member; ``None`` for no clipping.
        accelerator
            Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``, ...).
        devices
            Devices to use, as in Lightning (e.g. ``devices=2, strategy="ddp"``).
        block_size
            For backed AnnData: rows read from disk at once.
        buffer_blocks
            For backed AnnData: blocks held in memory and shuffled together.
        plan_kwargs
            Extra keyword arguments for :class:`~scsalient.model.base.ClassifierTrainingPlan`.
        datasplitter_kwargs
            Extra keyword arguments for the data splitter.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (e.g. ``enable_progress_bar=False``,
            ``strategy="ddp"``).

        Raises
        ------
        TypeError
            If given ``average_epochs`` (N-ACT's weight averaging) or
            ``plan_kwargs={"label_smoothing": ...}`` (removed: no default used it).
        """
        if preset not in ("auto", "paper"):
            raise ValueError(f"preset must be 'auto' or 'paper', got {preset!r}.")
        if "average_epochs" in trainer_kwargs:
            # measured on MOp: a 3-epoch average of SCTAB's weights scored at chance while the
            # network itself learnt (not investigated further)
            raise TypeError("SCTAB.train() has no weight averaging (average_epochs): it is NACT's.")
        if "label_smoothing" in (plan_kwargs or {}):
            raise TypeError(
                "SCTAB.train() got plan_kwargs={'label_smoothing': ...}: the option was removed, as no "
                "default used it. Leave it out."
            )
        n_train = int(round(self.adata.n_obs * train_size))
        settings_ = dict(PAPER) if preset == "paper" else auto_training(n_train)
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("batch_size", batch_size),
                            ("lr_decay", lr_decay)):  # fmt: skip
            if value is not None:
                settings_[name] = value
        augment = self._resolve_augment(augment)
        if early_stopping is None:  # nothing to stop on without validation cells
            early_stopping = has_validation_split(train_size, validation_size)
        momentum = PAPER_MOMENTUM
        if preset == "auto":
            momentum = auto_momentum(
                n_train, int(settings_["batch_size"]), self.init_params_["non_kwargs"]["virtual_batch_size"]
            )
        self.module.set_batch_norm_momentum(momentum)
        settings_.update(bn_momentum=momentum)
        self.training_settings_ = {
            "preset": preset,
            **settings_,
            "augment": bool(augment),
            "max_epochs": max_epochs,
            "early_stopping": bool(early_stopping),
            "early_stopping_patience": early_stopping_patience,
        }
        plan = {
            "lr": settings_["lr"],
            "weight_decay": settings_["weight_decay"],
            "optimizer": "AdamW",
            "lr_decay": settings_["lr_decay"],
            "lr_decay_every": 1,
            "gradient_clip_norm": gradient_clip_norm,
            **(plan_kwargs or {}),
        }
        module = self.module
        per_cell = module.n_members * (12 * module.n_input + 40 * (module.n_d + module.n_a))
        batch = int(settings_["batch_size"])
        virtual = self.init_params_["non_kwargs"]["virtual_batch_size"]
        part = micro_batch_size(batch, module.n_members, module.n_input, virtual)
        if part < batch and "accumulate_grad_batches" not in trainer_kwargs:  # a user's own is kept
            # a wide minibatch in parts with their gradients summed: the same step in less memory
            trainer_kwargs["accumulate_grad_batches"] = batch // part
            self.training_settings_["cells_per_forward_pass"] = part
            logger.info("SCTAB: minibatches of %d cells run in %d parts of %d.", batch, batch // part, part)
        else:
            part = batch
        self._train_classifier(
            max_epochs=max_epochs,
            batch_size=part,
            train_size=train_size,
            validation_size=validation_size,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            accelerator=accelerator,
            devices=devices,
            plan_kwargs=plan,
            datasplitter_kwargs={
                "block_size": block_size,
                "buffer_blocks": buffer_blocks,
                **(datasplitter_kwargs or {}),
            },  # fmt: skip
            activation_floats_per_cell=per_cell,
            memory_hint="Use a smaller batch_size or fewer ensemble members.",
            **trainer_kwargs,
        )

    # ------------------------------------------------------------------ read-out
    _annotate_extras_outputs = ("member_logits",)

    def _annotate_extras(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The members' disagreement: the fraction whose own prediction differs from the ensemble's."""
        predicted = batch["probabilities"].argmax(axis=1)
        member_votes = batch["member_logits"].argmax(axis=-1)  # (E, B)
        return {SCTABKeys.DISAGREEMENT: (member_votes != predicted[None]).mean(axis=0)}

    def _write_confidence(
        self, target: AnnData, confidence: np.ndarray, extras: dict[str, np.ndarray]
    ) -> None:
        """``obs["sctab_uncertainty"]`` (1 - the calibrated top probability) and the disagreement."""
        target.obs[SCTABKeys.UNCERTAINTY] = 1.0 - confidence
        for name, values in extras.items():
            target.obs[name] = values

    def _inference_outputs(self, tensors: dict, keys: Sequence[str]) -> dict:
        """Inference outputs, with the attribution (one backward pass) when ``keys`` asks for it."""
        if "attribution" not in keys:
            return super()._inference_outputs(tensors, keys)
        return self.module.attribution(self.module._get_inference_input(tensors)["x"])

    def get_attributions(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_top_genes: int | None = None,
        dense: bool = False,
        batch_size: int | None = None,
    ) -> sparse.csr_matrix | np.ndarray:
        """Per-cell attributions to the predicted class, as shares (what ``annotate`` stores).

        Gradient x input of the log-probability of the class the ensemble predicts, with
        respect to the expression the network sees (log1p(CP10k) of counts), its positive part,
        divided by its total per cell (see
        :meth:`~scsalient.model.sctab._module.SCTABModule.attribution`). Each row says which of
        the cell's expressed genes raise the predicted class against the others, and by how
        much; genes the cell does not express get 0. It takes one backward pass per block of
        cells. Unlike the feature masks (:meth:`get_masks`), which select
        the genes passed to the decision step whichever class they argue for, the attributions
        point at markers of the predicted class (see the user guide).

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
            Cells per forward and backward pass; ``None`` sizes the blocks to the number of
            genes (about 500,000 values, 64 to 1,024 cells), small enough to stay in the CPU's cache.

        Returns
        -------
        Cells x the model's genes, rows summing to 1 (0 for a cell no gene argues for).
        """
        return self._explanations(adata, indices, batch_size, n_top_genes, dense, output="attribution")

    def get_masks(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_top_genes: int | None = None,
        dense: bool = False,
        batch_size: int | None = None,
    ) -> sparse.csr_matrix | np.ndarray:
        """Per-cell feature masks (the members' mean), over the genes each cell expresses.

        Parameters
        ----------
        adata
            Data to explain; ``None`` for the training data (genes matched by name).
        indices
            Cells to use; ``None`` for all.
        n_top_genes
            Keep only each cell's largest mask values (sparse result only); ``None`` keeps all.
        dense
            Return a dense float32 array instead of a CSR matrix.
        batch_size
            Cells per forward pass; ``None`` sizes the blocks to the number of genes (about
            500,000 values, 64 to 1,024 cells), small enough to stay in the CPU's cache.

        Returns
        -------
        Cells x the model's genes, rows summing to 1.

        Notes
        -----
        A mask selects the genes the decision step reads, whichever class they argue for:
        after training on some thousands of cells it stays nearly even over the genes a cell
        expresses (on Kang 2018 PBMCs and ``pbmc68k_reduced``, an effective number of genes,
        the exponential of its entropy, close to the number expressed), so its mean over the
        cells of a type follows detection rates. For the genes behind a prediction use
        :meth:`get_attributions` (what :meth:`annotate` stores).
        """
        return self._explanations(adata, indices, batch_size, n_top_genes, dense, output="mask")
