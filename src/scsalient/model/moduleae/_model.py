"""scvi-tools glue for ModuleAE: registration, training, representation and saliency read-out."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.model.base import BaseModelClass
from scvi.utils import setup_anndata_dsp
from tqdm.auto import tqdm

from scsalient._constants import ModuleAEKeys
from scsalient.model.base import ExpressionLayerField, ExpressionModelMixin, SaveLoadMixin

from ._module import ModuleAEModule
from ._plan import ModuleAETrainingPlan

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

#: optimiser steps of a default training run (``max_epochs=None``)
TRAINING_STEPS = 6000
#: bounds of the default number of epochs
_EPOCH_BOUNDS = (20, 1000)
#: dense float32 entries of the training counts used to initialise the programs
_INIT_ENTRIES = 2**25
#: most training cells used to initialise the programs
_INIT_CELLS = 10_000


class ModuleAE(SaveLoadMixin, ExpressionModelMixin, BaseModelClass):
    r"""Poisson autoencoder whose units are non-negative gene programs, after :cite:t:`Kinalis2019`.

    Each unit owns a non-negative weight per gene (its program). The unit's activity is the
    weighted sum of the cell's log1p(CP10k) expression over its program, standardised over
    the cells and passed through a Softplus; the decoder adds each active unit's program to
    the log rates of a Poisson likelihood of the raw counts (with each cell's library size).
    Because a unit reads and writes the same non-negative genes, units cannot cancel one
    another and split the expression into distinct, additive programs. A unit is explained by
    its saliency (:meth:`get_saliency`, the gradient of its activity with respect to the input
    genes), and gene sets are scored per unit with :func:`scsalient.tl.gene_set_impact`.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`~scsalient.model.ModuleAE.setup_anndata`.
    registry
        Registry of a saved model, to build it without data (used by ``load``).
    n_latent
        Number of units (programs).

    Notes
    -----
    How this departs from the published network (a Softplus multilayer perceptron with a soft
    orthogonality penalty on the weights into the representation, read by guided
    backpropagation), and why; the measurements are in the user guide and
    ``benchmarks/results/modules.md``:

    * **Programs shared by encoder and decoder, non-negative.** With a hidden layer, guided
      backpropagation sums every positive path through it, so all units' saliencies share one
      profile (on PBMCs the gene-set impact of the units correlated 0.3 to 0.9 on average,
      and on Kang et al. one Hallmark set topped 62 of 64 units). An orthogonality penalty on
      the weights into the representation does not make units read different genes (the
      first layer mixes them), and a penalty on the programs made the units change from
      seed to seed without separating them further; non-negativity alone separates them,
      and it is dropped.
    * **Standardised units.** Each unit is standardised over the cells before the Softplus
      (batch normalisation without learned scale or shift), so no unit can die (a Softplus unit
      pushed far negative outputs a constant).
    * **Deterministic start.** Programs start from the positive and negative parts of the
      leading principal axes of the training cells (:meth:`ModuleAEModule.initialize_`), so
      seeds change only the data split and minibatch order.
    * **Training.** Adam (learning rate 3e-3, batches of 128 cells) for a fixed number of
      steps with the learning rate decayed to zero along a half cosine; no early stopping.
    * **Library size.** The encoder sees log1p(CP10k); the depth enters only the Poisson rates.

    Examples
    --------
    >>> import scsalient as ss
    >>> adata = ss.datasets.simulate(n_cells=1000, n_genes=300)
    >>> ss.model.ModuleAE.setup_anndata(adata)
    >>> model = ss.model.ModuleAE(adata, n_latent=8)
    >>> model.train()
    >>> adata.obsm["X_moduleae"] = model.get_latent_representation()
    >>> saliency = model.get_saliency()  # also in adata.varm["moduleae_saliency"]
    """

    _module_cls = ModuleAEModule
    _training_plan_cls = ModuleAETrainingPlan

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_latent: int = 16,
    ):
        super().__init__(adata, registry)
        if not isinstance(n_latent, int | np.integer) or n_latent < 1:
            raise ValueError(f"n_latent must be a positive integer, got {n_latent!r}.")
        n_genes = self.summary_stats.n_vars
        self.module = self._module_cls(n_genes, n_latent=int(n_latent))
        self._model_summary_string = (
            f"ModuleAE: {n_genes} genes -> {n_latent} non-negative programs -> {n_genes} genes, "
            f"{n_latent * n_genes + n_genes:,} parameters"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(cls, adata: AnnData, layer: str | None = None, **kwargs) -> None:
        """Register an AnnData of raw counts for ModuleAE.

        The whole matrix is checked: it must hold non-negative integers (raw counts), without
        NaN/inf and without all-zero cells, with unique ``var_names`` and at least 10 cells;
        anything else raises a :class:`ValueError`.

        Parameters
        ----------
        %(param_adata)s
        layer
            Layer holding the raw counts; ``None`` for ``adata.X``.
        **kwargs
            Used by scvi-tools when it re-applies the setup (``load``, query data).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [ExpressionLayerField(REGISTRY_KEYS.X_KEY, layer, allowed=("counts",))]
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        lr: float = 3e-3,
        batch_size: int = 128,
        train_size: float = 0.9,
        validation_size: float | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the autoencoder.

        The first call initialises the programs from the training cells
        (:meth:`ModuleAEModule.initialize_`); a later call continues from the trained
        weights. The learning rate decays to zero along a half cosine over the run.

        Parameters
        ----------
        max_epochs
            Passes over the training cells. ``None``: about 6,000 optimiser steps
            (``6000 / steps per epoch``, within 20 to 1,000 epochs): 97 epochs for 8,684
            cells, 667 for 1,200.
        lr
            Initial learning rate of Adam.
        batch_size
            Cells per minibatch.
        train_size
            Fraction of cells used for training; the rest is the validation split, whose loss
            is logged in :attr:`~scvi.model.base.BaseModelClass.history`
            (``validation_loss``, ``reconstruction_loss_validation``).
        validation_size
            Fraction for validation; ``None`` means ``1 - train_size``.
        accelerator
            Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``, ...).
        devices
            Devices to use, as in Lightning.
        plan_kwargs
            Extra keyword arguments for
            :class:`~scsalient.model.moduleae.ModuleAETrainingPlan` (e.g. ``weight_decay``).
        datasplitter_kwargs
            Extra keyword arguments for :class:`~scvi.dataloaders.DataSplitter`.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (e.g. ``enable_progress_bar=False``).
        """
        if not isinstance(batch_size, int | np.integer) or batch_size < 2:
            raise ValueError(
                f"batch_size must be an integer of at least 2 (units are standardised over the cells "
                f"of a minibatch), got {batch_size!r}."
            )
        if max_epochs is None:
            max_epochs = default_epochs(self.adata.n_obs, train_size, validation_size, batch_size)
        plan = self._training_plan_cls(self.module, lr=lr, **(plan_kwargs or {}))
        self._fit(
            plan,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_size=train_size,
            validation_size=validation_size,
            early_stopping=False,
            early_stopping_patience=0,
            monitor="validation_loss",
            monitor_mode="min",
            accelerator=accelerator,
            devices=devices,
            datasplitter_kwargs=datasplitter_kwargs,
            activation_floats_per_cell=6 * self.module.n_input,
            memory_hint="Use fewer genes (highly variable genes) or a smaller batch size.",
            **trainer_kwargs,
        )

    def _prepare_training(self, train_indices: np.ndarray) -> None:
        """Initialise the programs from (a fixed subsample of) the training cells, once."""
        if self.is_trained_:
            return
        n_cells = int(
            min(_INIT_CELLS, max(2, _INIT_ENTRIES // max(self.module.n_input, 1)), len(train_indices))
        )
        cells = np.sort(np.random.default_rng(0).choice(np.sort(train_indices), n_cells, replace=False))
        counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)[cells]
        counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
        self.module.initialize_(torch.as_tensor(counts, dtype=torch.float32).to(self.device))
        logger.info("Programs initialised from %d training cells.", n_cells)

    # ------------------------------------------------------------------ read-out
    @property
    def unit_names(self) -> list[str]:
        """Names of the units, ``"unit_0"``, ``"unit_1"``, ..."""
        return [f"unit_{k}" for k in range(self.module.n_latent)]

    def _prepare_adata(self, adata: AnnData | None) -> AnnData:
        """The training data, or a query aligned to the model's genes and validated."""
        if adata is None:
            return self._validate_anndata(None)
        return self._validate_anndata(self._align_query(adata))

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = 1024,
    ) -> np.ndarray:
        """Activity of the units in each cell.

        Store it as ``adata.obsm["X_moduleae"]`` to embed the cells
        (``sc.pp.neighbors(adata, use_rep="X_moduleae")``) or to plot a unit with
        :func:`scsalient.pl.unit_activity`.

        Parameters
        ----------
        adata
            Data to embed; ``None`` for the training data. Genes are matched by name (missing
            genes are zero-filled with a warning); the object is not modified.
        indices
            Cells to use; ``None`` for all.
        batch_size
            Cells per forward pass.

        Returns
        -------
        float32 array, cells x units (the columns are :attr:`unit_names`).
        """
        self._check_if_trained(warn=True)
        self.module.eval()
        loader = self._make_data_loader(self._prepare_adata(adata), indices=indices, batch_size=batch_size)
        latent = [
            self.module.inference(**self.module._get_inference_input(tensors))["z"].float().cpu().numpy()
            for tensors in tqdm(loader, desc="latent", disable=len(loader) < 10, leave=False)
        ]
        return np.concatenate(latent)

    def get_programs(self) -> pd.DataFrame:
        """The units' gene programs: the non-negative weights, genes x units.

        Returns
        -------
        DataFrame genes x units (model genes, :attr:`unit_names`). A unit's saliency
        (:meth:`get_saliency`) is its program times a positive factor per unit.
        """
        self._check_if_trained(warn=True)
        weights = self.module.programs.detach().T.float().cpu().numpy()
        return pd.DataFrame(weights, index=pd.Index(self.get_var_names()), columns=self.unit_names)

    @torch.inference_mode()
    def get_saliency(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = 1024,
        groupby: str | None = None,
    ) -> pd.DataFrame:
        r"""Mean absolute saliency of every input gene for every unit.

        For unit :math:`k`, cell :math:`c` and gene :math:`g` the saliency is
        :math:`\partial z_{ck} / \partial h_{cg}`, :math:`h` the encoder's input
        (log1p(CP10k)). For this network it is exact and non-negative:
        :math:`\mathrm{sigmoid}(\hat a_{ck}) v_{kg} / \sigma_k`, the unit's slope in the cell
        times its program weight (:meth:`ModuleAEModule.activity_slope`); the slope is
        averaged over the chosen cells. Guided and plain backpropagation coincide (one layer).

        Written into ``adata`` (the training data when ``adata`` is ``None``):

        * ``varm["moduleae_saliency"]``: DataFrame genes x units (NaN for genes the model does
          not know);
        * ``uns["moduleae"]["saliency_params"]``: ``n_cells``, ``groupby``;
        * with ``groupby``, ``uns["moduleae"]["group_saliency"]``: dict group -> DataFrame
          genes x units of the group's cells, read by :func:`scsalient.tl.gene_set_impact`
          to compare groups. A unit's saliency is larger in the group where the unit is more
          active (the slope grows with the activity).

        Parameters
        ----------
        adata
            Data to explain; ``None`` for the training data. Genes are matched by name.
        indices
            Cells to average over; ``None`` for all.
        batch_size
            Cells per forward pass.
        groupby
            Column of ``adata.obs``: also average the saliency within each of its groups.

        Returns
        -------
        DataFrame genes x units (model genes, :attr:`unit_names`): the mean absolute saliency
        over the chosen cells.
        """
        self._check_if_trained(warn=True)
        if batch_size is not None and (not isinstance(batch_size, int | np.integer) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        target = self.adata if adata is None else adata
        prepared = self._prepare_adata(adata)
        rows = np.arange(target.n_obs) if indices is None else np.asarray(indices)
        codes, groups = None, None
        if groupby is not None:
            if groupby not in target.obs:
                raise KeyError(f"groupby '{groupby}' is not a column of adata.obs.")
            labels = target.obs[groupby].iloc[rows]
            if labels.isna().any():
                raise ValueError(f"adata.obs['{groupby}'] has missing values among the chosen cells.")
            categorical = pd.Categorical(labels.astype(str))
            codes, groups = categorical.codes.astype(np.int64), list(categorical.categories)

        self.module.eval()
        device = self.device
        n_units = self.module.n_latent
        slope_sum = torch.zeros(n_units, dtype=torch.float64, device=device)
        group_sums = torch.zeros(len(groups), n_units, dtype=torch.float64, device=device) if groups else None
        loader = self._make_data_loader(prepared, indices=indices, batch_size=batch_size)
        start = 0
        for tensors in tqdm(loader, desc="saliency", disable=len(loader) < 10, leave=False):
            x = tensors[REGISTRY_KEYS.X_KEY].to(device)
            slope = self.module.activity_slope(self.module.prepare_input(x)).double()  # cells x units
            slope_sum += slope.sum(dim=0)
            if group_sums is not None:
                batch_codes = torch.as_tensor(codes[start : start + len(slope)], device=device)
                group_sums.index_add_(0, batch_codes, slope)
            start += len(slope)

        programs = self.module.programs.detach().double()
        genes = pd.Index(self.get_var_names())

        def frame(mean_slope: torch.Tensor) -> pd.DataFrame:
            values = (programs * mean_slope[:, None]).T.float().cpu().numpy()
            return pd.DataFrame(values, index=genes, columns=self.unit_names)

        mean = frame(slope_sum / max(start, 1))
        target.varm[ModuleAEKeys.SALIENCY] = mean.reindex(target.var_names)
        record = dict(target.uns.get(ModuleAEKeys.UNS, {}))
        record["saliency_params"] = {"n_cells": int(start), "groupby": groupby or ""}
        record.pop("group_saliency", None)
        if group_sums is not None:
            sizes = np.bincount(codes, minlength=len(groups))
            record["group_saliency"] = {
                group: frame(group_sums[i] / max(sizes[i], 1)).reindex(target.var_names)
                for i, group in enumerate(groups)
            }
        target.uns[ModuleAEKeys.UNS] = record
        return mean


def default_epochs(n_cells: int, train_size: float, validation_size: float | None, batch_size: int) -> int:
    """Epochs of a default run: about :data:`TRAINING_STEPS` optimiser steps, within bounds.

    Parameters
    ----------
    n_cells
        Cells in the data.
    train_size
        Fraction of the cells used for training.
    validation_size
        Fraction used for validation (``None``: the rest).
    batch_size
        Cells per minibatch.
    """
    n_train = (
        math.ceil(train_size * n_cells)
        if validation_size is None
        else n_cells - math.ceil(validation_size * n_cells)
    )
    steps_per_epoch = max(1, math.ceil(max(n_train, 1) / batch_size))
    low, high = _EPOCH_BOUNDS
    return int(np.clip(round(TRAINING_STEPS / steps_per_epoch), low, high))
