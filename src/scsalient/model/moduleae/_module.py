"""ModuleAE network: a small Softplus autoencoder on counts with a Poisson likelihood."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from scsalient.model.base._components import log1p_cp10k, xavier_init

#: counts per cell the normalised input and the decoder's rates refer to
TARGET_SUM = 1e4


class GuidedSoftplus(torch.autograd.Function):
    """Softplus whose backward pass lets only positive gradients through (guided backpropagation).

    The forward pass is :func:`torch.nn.functional.softplus`; the backward pass returns
    ``max(grad, 0) * sigmoid(x)`` instead of ``grad * sigmoid(x)``.
    """

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp_min(0.0) * torch.sigmoid(x)


class ModuleAEModule(BaseModuleClass):
    r"""Torch module of :class:`~scsalient.model.ModuleAE`.

    For a cell with counts :math:`x \in \mathbb{N}^G` and library size :math:`l = \sum_g x_g`:

    .. math::

        h &= \log(1 + 10^4 x / l) \quad (\text{or } h = x \text{ without normalisation}), \\
        z &= \mathrm{softplus}(W_2\, \mathrm{softplus}(W_1 h + b_1) + b_2), \\
        \lambda &= \frac{l}{10^4}\, \mathrm{softplus}(V_2\, \mathrm{softplus}(V_1 z + c_1) + c_2)
            \quad (\text{or without the factor } l / 10^4), \\
        \mathcal{L} &= \frac{1}{BG} \sum_{c, g}
            \bigl(\lambda_{cg} - x_{cg} \log \lambda_{cg} + \log x_{cg}!\bigr)
            + \lambda_\perp \lVert I - W_2 W_2^\top \rVert_F .

    :math:`z` (``n_latent`` units) is the representation whose units are read as modules.

    Parameters
    ----------
    n_input
        Number of genes ``G``.
    n_hidden
        Width of the hidden layers of the encoder and decoder.
    n_latent
        Number of representation units (at most ``n_hidden``).
    lambda_orthogonal
        Weight of the soft orthogonality penalty on the last encoder weight matrix.
    normalize_input
        Feed the encoder log1p(CP10k) instead of raw counts and scale the decoder's rates by
        each cell's library size.
    """

    def __init__(
        self,
        n_input: int,
        *,
        n_hidden: int = 128,
        n_latent: int = 64,
        lambda_orthogonal: float = 0.05,
        normalize_input: bool = True,
    ):
        super().__init__()
        if n_latent > n_hidden:
            raise ValueError(
                f"n_latent ({n_latent}) cannot exceed n_hidden ({n_hidden}): the rows of the "
                "representation weights can only be orthogonal if there are at most n_hidden of them."
            )
        self.n_input = n_input
        self.n_latent = n_latent
        self.lambda_orthogonal = lambda_orthogonal
        self.normalize_input = normalize_input
        self.encoder_hidden = nn.Linear(n_input, n_hidden)
        self.encoder_latent = nn.Linear(n_hidden, n_latent)
        self.decoder = nn.Sequential(
            nn.Linear(n_latent, n_hidden), nn.Softplus(), nn.Linear(n_hidden, n_input), nn.Softplus()
        )
        xavier_init(self)

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict[str, torch.Tensor]:
        return {"z": inference_outputs["z"], "library": inference_outputs["library"]}

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input: log1p(CP10k) of the counts, or the counts themselves.

        Parameters
        ----------
        x
            Counts, cells x genes.
        """
        return log1p_cp10k(x, TARGET_SUM) if self.normalize_input else x

    def encode(self, h: torch.Tensor, guided: bool = False) -> torch.Tensor:
        """Representation of prepared input ``h``.

        Parameters
        ----------
        h
            Output of :meth:`prepare_input`, cells x genes.
        guided
            Use :class:`GuidedSoftplus` activations (for guided-backpropagation saliency).
        """
        activation = GuidedSoftplus.apply if guided else F.softplus
        return activation(self.encoder_latent(activation(self.encoder_hidden(h))))

    @auto_move_data
    def inference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Representation ``z`` and library size of a minibatch of cells.

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
            Representation, cells x units.
        library
            Library size of each cell, cells x 1.
        """
        rate = self.decoder(z)
        if self.normalize_input:
            rate = rate * (library / TARGET_SUM)
        return {"rate": rate}

    def orthogonality_error(self) -> torch.Tensor:
        r""":math:`\lVert I - W W^\top \rVert_F` of the last encoder weight matrix :math:`W`."""
        weight = self.encoder_latent.weight
        identity = torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype)
        return torch.linalg.matrix_norm(identity - weight @ weight.T)

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
    ) -> LossOutput:
        """Mean Poisson negative log-likelihood plus the orthogonality penalty.

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
        loss = nll.mean()
        if self.lambda_orthogonal > 0:
            loss = loss + self.lambda_orthogonal * self.orthogonality_error()
        return LossOutput(loss=loss, reconstruction_loss=nll.sum(dim=-1), n_obs_minibatch=x.shape[0])

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
