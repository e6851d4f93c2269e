"""Torch building blocks shared by scsalient modules."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._familiarity import LatentFamiliarity


def log1p_cp10k(x: torch.Tensor, target_sum: float = 1e4) -> torch.Tensor:
    """Normalise counts per cell to ``target_sum`` and apply ``log1p`` (scanpy's default).

    Cells with zero total stay zero instead of producing NaN.
    """
    library = x.sum(dim=-1, keepdim=True).clamp_min(1e-8)
    scaled = x * (target_sum / library)
    # in place without gradients (prediction): one cells x genes block fewer
    return torch.log1p(scaled) if torch.is_grad_enabled() else scaled.log1p_()


#: attention logit of absent features (finite, so a cell with no features gets uniform attention)
MASKED_LOGIT = -1e4


def attention_softmax(
    logits: torch.Tensor, x: torch.Tensor, mask_absent: bool = True, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax of attention ``logits`` over features, restricted to the features present in ``x``.

    A feature with value 0 contributes nothing to ``attention * x`` whatever its attention; with
    ``mask_absent`` it is kept out of the softmax, so each cell's attention sits on the features
    it has. Features where the boolean vector ``allowed`` is ``False`` are kept out in every cell.
    """
    if mask_absent:
        logits = logits.masked_fill(x == 0, MASKED_LOGIT)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, MASKED_LOGIT)
    return torch.softmax(logits, dim=-1)


class GeneMap(nn.Module):
    """A linear map between gene-sized vectors, full or low-rank.

    With ``rank=None`` this is ``nn.Linear(n_in, n_out)``; with a rank ``r`` it is
    ``nn.Linear(n_in, r, bias=False)`` followed by ``nn.Linear(r, n_out)``, which costs
    ``r * (n_in + n_out)`` weights instead of ``n_in * n_out``.

    Parameters
    ----------
    n_in
        Input size.
    n_out
        Output size.
    rank
        Rank of the factorisation, or ``None`` for a full matrix.
    """

    def __init__(self, n_in: int, n_out: int, rank: int | None = None):
        super().__init__()
        self.rank = rank
        if rank is None:
            self.layers = nn.Linear(n_in, n_out)
        else:
            self.layers = nn.Sequential(nn.Linear(n_in, rank, bias=False), nn.Linear(rank, n_out))
        xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the map."""
        return self.layers(x)


def per_member(x: torch.Tensor, n_members: int) -> torch.Tensor:
    """The same cells ``(B, G)`` for each of ``n_members`` networks, ``(E, B, G)`` (a view, no copy)."""
    return x.unsqueeze(0).expand(n_members, *x.shape)


def mean_probability_logits(member_logits: torch.Tensor) -> torch.Tensor:
    """Log of the mean of an ensemble's class probabilities: ``(E, B, C)`` logits -> ``(B, C)``."""
    return torch.log(torch.softmax(member_logits, dim=-1).mean(0).clamp_min(1e-12))


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every linear layer in ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of ``parts`` nearly equal consecutive slices of ``n`` items."""
    return [len(s) for s in np.array_split(np.arange(n), parts)]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class TemperatureScaled(nn.Module):
    """Base of classifier modules whose logits are divided by a calibrated temperature at prediction time.

    Holds the buffer ``temperature`` (1 until :meth:`set_temperature` is called; saved with the
    model). :meth:`calibrated` divides logits by it outside training (temperature scaling
    :cite:p:`Guo2017`), leaving training untouched. Also holds ``familiarity``, the
    :class:`~scsalient.model.base.LatentFamiliarity` fitted after training.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("temperature", torch.ones(()))
        self.familiarity = LatentFamiliarity()

    def set_temperature(self, temperature: float) -> None:
        """Temperature dividing the logits at prediction time (1: none)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = torch.as_tensor(float(temperature), device=self.temperature.device)

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits / temperature`` outside training, ``logits`` in training."""
        return logits if self.training else logits / self.temperature
