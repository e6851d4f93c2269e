"""ModuleAE network: non-negative gene programs shared by encoder and decoder, Poisson likelihood."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from scsalient.model.base._components import log1p_cp10k

#: counts per cell the normalised input refers to
TARGET_SUM = 1e4
#: smallest gene frequency the initial gene offsets use (genes absent from the training cells)
_MIN_FREQUENCY = 1e-8


class ModuleAEModule(BaseModuleClass):
    r"""Torch module of :class:`~scsalient.model.ModuleAE`.

    Every unit :math:`k` owns a non-negative gene program :math:`v_k \in \mathbb{R}_{\ge 0}^G`
    (a row of ``programs``), used both to read the unit from the cell and to write the cell
    back. For a cell with counts :math:`x`, library size :math:`l = \sum_g x_g` and
    :math:`h = \log(1 + 10^4 x / l)`:

    .. math::

        a_k &= v_k^\top h, \qquad
        z_k = \mathrm{softplus}\Bigl(\frac{a_k - \mu_k}{\sigma_k}\Bigr), \\
        \lambda &= l \,\mathrm{softmax}\Bigl(c + \sum_k z_k v_k\Bigr), \qquad
        \mathcal{L} = \frac{1}{BG} \sum_{c, g}
            \bigl(\lambda_{cg} - x_{cg} \log \lambda_{cg} + \log x_{cg}!\bigr),

    :math:`\mu_k, \sigma_k` being the unit's mean and standard deviation over the cells
    (batch statistics in training, running estimates afterwards: batch normalisation without
    learned scale or shift) and :math:`c` a learned per-gene offset. A unit's activity is the
    standardised weighted sum of its program's log expression; decoding adds :math:`z_k v_k`
    to the log rates, so a unit can only raise the genes it reads. The programs are kept
    non-negative by projection after every optimiser step (:meth:`project_`).

    Parameters
    ----------
    n_input
        Number of genes ``G``.
    n_latent
        Number of units (programs).
    """

    def __init__(self, n_input: int, *, n_latent: int = 16):
        super().__init__()
        if n_input < 1 or n_latent < 1:
            raise ValueError(f"n_input and n_latent must be positive, got {n_input} and {n_latent}.")
        self.n_input = n_input
        self.n_latent = n_latent
        self.programs = nn.Parameter(torch.zeros(n_latent, n_input))
        self.gene_offset = nn.Parameter(torch.zeros(n_input))
        self.standardize = nn.BatchNorm1d(n_latent, affine=False)

    # ------------------------------------------------------------------ set-up
    @torch.no_grad()
    def initialize_(self, x: torch.Tensor) -> None:
        r"""Initialise the gene offsets and programs from counts ``x`` (cells x genes), deterministically.

        The offsets are the log mean fraction of each gene's counts. The programs are the
        positive and the negative gene loadings of the leading principal axes of the centred
        log1p(CP10k) expression (as in NNDSVD initialisation of NMF, Boutsidis and Gallopoulos
        2008), each scaled by the axis' standard deviation: axis :math:`j` gives units
        :math:`2j` and :math:`2j + 1`. Signs are fixed so that each axis' largest loading is
        positive, and the randomised SVD runs on its own seeded generator, so the result does
        not depend on the global seed. Units beyond twice the data's rank start from small
        deterministic values.

        Parameters
        ----------
        x
            Counts of the training cells (or a subsample of them), dense.
        """
        x = x.float()
        library = x.sum(dim=-1, keepdim=True).clamp_min(1e-8)
        frequency = (x / library).mean(dim=0).clamp_min(_MIN_FREQUENCY)
        self.gene_offset.copy_(frequency.log().to(self.gene_offset))
        h = log1p_cp10k(x, TARGET_SUM)
        n_axes = min(math.ceil(self.n_latent / 2), min(h.shape) - 1)
        parts = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if n_axes > 0:
                q = min(n_axes + 10, min(h.shape))
                _, values, loadings = torch.svd_lowrank(h, q=q, niter=6, M=h.mean(dim=0, keepdim=True))
                for j in range(n_axes):
                    axis = loadings[:, j]
                    if axis[axis.abs().argmax()] < 0:
                        axis = -axis
                    scale = values[j] / math.sqrt(max(h.shape[0] - 1, 1))
                    parts += [scale * axis.clamp_min(0.0), scale * (-axis).clamp_min(0.0)]
            filler = 0.01 * torch.rand(self.n_latent, self.n_input)
        parts = parts[: self.n_latent]
        programs = torch.stack(parts) if parts else filler[:0]
        programs = torch.cat([programs, filler[len(parts) :].to(programs)])
        self.programs.copy_(programs.to(self.programs))
        self.standardize.reset_running_stats()

    @torch.no_grad()
    def project_(self) -> None:
        """Set negative program weights to zero (run after every optimiser step)."""
        self.programs.clamp_(min=0.0)

    # ------------------------------------------------------------------ scvi-tools interface
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict[str, torch.Tensor]:
        return {"z": inference_outputs["z"], "library": inference_outputs["library"]}

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input: log1p(CP10k) of the counts.

        Parameters
        ----------
        x
            Counts, cells x genes.
        """
        return log1p_cp10k(x, TARGET_SUM)

    def standardized_activation(self, h: torch.Tensor) -> torch.Tensor:
        r"""The units' standardised pre-activations :math:`(v_k^\top h - \mu_k) / \sigma_k`.

        In training mode a minibatch of one cell is standardised with the running estimates
        (batch statistics need two cells).

        Parameters
        ----------
        h
            Output of :meth:`prepare_input`, cells x genes.
        """
        activation = h @ self.programs.T
        if self.training and activation.shape[0] < 2:
            bn = self.standardize
            return F.batch_norm(activation, bn.running_mean, bn.running_var, training=False, eps=bn.eps)
        return self.standardize(activation)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Unit activities of prepared input ``h`` (cells x units).

        Parameters
        ----------
        h
            Output of :meth:`prepare_input`, cells x genes.
        """
        return F.softplus(self.standardized_activation(h))

    def activity_slope(self, h: torch.Tensor) -> torch.Tensor:
        r"""Derivative of each unit's activity with respect to its pre-activation :math:`a_k`.

        :math:`\partial z_k / \partial a_k = \mathrm{sigmoid}(\hat a_k) / \sigma_k`, with the
        running :math:`\sigma_k` (evaluation mode). The saliency of gene :math:`g` for unit
        :math:`k` is this slope times :math:`v_{kg}`.

        Parameters
        ----------
        h
            Output of :meth:`prepare_input`, cells x genes.
        """
        bn = self.standardize
        scale = torch.sqrt(bn.running_var + bn.eps)
        activation = (h @ self.programs.T - bn.running_mean) / scale
        return torch.sigmoid(activation) / scale

    @auto_move_data
    def inference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unit activities ``z`` and library size of a minibatch of cells.

        Parameters
        ----------
        x
            Counts, cells x genes.
        """
        return {"z": self.encode(self.prepare_input(x)), "library": x.sum(dim=-1, keepdim=True)}

    @auto_move_data
    def generative(self, z: torch.Tensor, library: torch.Tensor) -> dict[str, torch.Tensor]:
        """Poisson rates of every gene.

        Parameters
        ----------
        z
            Unit activities, cells x units.
        library
            Library size of each cell, cells x 1.
        """
        return {"rate": library * torch.softmax(self.gene_offset + z @ self.programs, dim=-1)}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
    ) -> LossOutput:
        """Poisson negative log-likelihood, averaged over cells and genes.

        Parameters
        ----------
        tensors
            Minibatch, with the counts under ``REGISTRY_KEYS.X_KEY``.
        inference_outputs
            Output of :meth:`inference`.
        generative_outputs
            Output of :meth:`generative`.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        rate = generative_outputs["rate"]
        nll = F.poisson_nll_loss(rate, x, log_input=False, full=False, reduction="none") + torch.lgamma(x + 1)
        return LossOutput(loss=nll.mean(), reconstruction_loss=nll.sum(dim=-1), n_obs_minibatch=x.shape[0])

    @torch.inference_mode()
    def sample(self, tensors: dict[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
        """Poisson counts drawn from the reconstruction of ``tensors``: ``n_samples`` x cells x genes.

        Parameters
        ----------
        tensors
            Minibatch, with the counts under ``REGISTRY_KEYS.X_KEY``.
        n_samples
            Number of draws per cell.
        """
        inference_outputs = self.inference(**self._get_inference_input(tensors))
        rate = self.generative(**self._get_generative_input(tensors, inference_outputs))["rate"]
        return torch.poisson(rate.expand(n_samples, *rate.shape))
