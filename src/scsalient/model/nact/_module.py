"""N-ACT network: per-cell gene attention (gates) over the expressed genes and an additive read-out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from scsalient.model.base._augment import BatchShift
from scsalient.model.base._components import (
    TemperatureScaled,
    log1p_cp10k,
    mean_probability_logits,
    per_member,
)


class NACTNetwork(nn.Module):
    r"""One N-ACT network: gene attention, attention-weighted expression, linear read-out.

    For a cell with expression :math:`x \in \mathbb{R}^G`:

    .. math::

        a_g = 2\,\sigma\!\big((x W_q) k_g + b_g\big)\,[x_g > 0], \qquad
        s = a \odot x, \qquad z = s V, \qquad \mathrm{logits} = z U + c .

    The attention logits :math:`x W_q K^\top + b` are N-ACT's :math:`xW + b` with the
    gene x gene map factorised through ``attention_rank`` dimensions (linear in the number of
    genes). Each gene's attention is a gate in :math:`(0, 2)`, 1 at initialisation (``K`` and
    ``b`` start at zero), and 0 for genes the cell does not express.

    Parameters
    ----------
    n_input
        Number of genes ``G``.
    n_labels
        Number of classes.
    n_latent
        Width of the latent representation ``z``.
    attention_rank
        Rank of the attention map (columns of ``W_q`` and ``K``).
    """

    def __init__(self, n_input: int, n_labels: int, *, n_latent: int, attention_rank: int):
        super().__init__()
        # PyTorch's default initialisation (uniform within 1 / sqrt(fan-in)) for the query and the
        # classifier: Xavier's larger weights made transfer to another condition unstable (see the
        # user guide, "Defaults")
        self.query = nn.Linear(n_input, attention_rank, bias=False)
        self.keys = nn.Parameter(torch.zeros(n_input, attention_rank))
        self.gate_bias = nn.Parameter(torch.zeros(n_input))
        self.values = nn.Linear(n_input, n_latent, bias=False)
        nn.init.xavier_uniform_(self.values.weight)
        self.classifier = nn.Linear(n_latent, n_labels)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Gene attention (gates) of cells ``x``: in (0, 2) for expressed genes, 0 for the others."""
        if torch.is_grad_enabled():
            logits = self.query(x) @ self.keys.T + self.gate_bias
            return 2.0 * torch.sigmoid(logits) * (x != 0)
        # without gradients (prediction), the same values computed in place: each step would
        # otherwise allocate and fill another cells x genes array; |sign(x)| is the mask (x != 0)
        # as 0/1, which multiplies in a tenth of the time masked_fill_ takes
        logits = self.query(x) @ self.keys.T
        return logits.add_(self.gate_bias).sigmoid_().mul_(2.0).mul_(x.sign().abs_())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits, attention, gene scores and latent representation of cells ``x``."""
        attention = self.attention(x)
        scores = attention * x
        latent = self.values(scores)
        return {"logits": self.classifier(latent), "attention": attention, "scores": scores, "latent": latent}

    def gene_class_weights(self) -> torch.Tensor:
        """``V U``: the weight of each gene's score in each class's logit, genes x classes."""
        return self.values.weight.T @ self.classifier.weight.T


class NACTModule(BaseModuleClass, TemperatureScaled):
    r"""Torch module of :class:`~scsalient.model.NACT`: one network or a deep ensemble.

    Each member is an :class:`NACTNetwork`. Its class logits are additive in the genes,

    .. math::

        \mathrm{logits}_c = c_c + \sum_g a_g(x)\, x_g\, (VU)_{gc},

    so the contribution of gene :math:`g` to class :math:`c` in a cell is exactly
    :math:`a_g x_g (VU)_{gc}` (see :meth:`contributions`).

    Parameters
    ----------
    n_input
        Number of genes.
    n_labels
        Number of classes.
    n_latent
        Width of each member's latent representation.
    attention_rank
        Rank of the attention map.
    normalize_input
        If ``True``, the input holds counts and is turned into log1p(CP10k) first.
    n_members
        Networks in the deep ensemble :cite:p:`Lakshminarayanan2017` (``members``), trained
        together on the same minibatches from independent initialisations, each on its own
        cross-entropy. Class probabilities are the mean of the members' probabilities; the
        attention and gene scores are the members' means.

    Notes
    -----
    At training time each cell may be shifted by a batch-difference vector
    (:class:`~scsalient.model.base._augment.BatchShift`, empty unless the model sets vectors);
    each member draws its own shifts. The temperature buffer (1 until
    :meth:`set_temperature` is called) divides the logits of the ensemble's mean probabilities
    at prediction time (temperature scaling :cite:p:`Guo2017`).
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        *,
        n_latent: int = 64,
        attention_rank: int = 64,
        normalize_input: bool = True,
        n_members: int = 1,
    ):
        super().__init__()
        if int(n_members) != n_members or n_members < 1:
            raise ValueError(f"n_members must be a positive integer, got {n_members!r}.")
        self.n_input = n_input
        self.n_labels = n_labels
        self.n_latent = n_latent
        self.n_members = int(n_members)
        self.normalize_input = normalize_input
        self.members = nn.ModuleList(
            NACTNetwork(n_input, n_labels, n_latent=n_latent, attention_rank=attention_rank)
            for _ in range(self.n_members)
        )
        self.batch_shift = BatchShift(n_input)
        self.register_load_state_dict_pre_hook(_without_class_weights)

    @staticmethod
    def n_parameters(
        n_input: int, n_labels: int, *, n_latent: int = 64, attention_rank: int = 64, n_members: int = 1, **_
    ) -> int:
        """Number of trainable parameters, computed without building the network."""
        member = n_input * (2 * attention_rank + 1 + n_latent) + n_latent * n_labels + n_labels
        return n_members * member

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return {}

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Expression as the network sees it (log1p(CP10k) when the input holds counts)."""
        return log1p_cp10k(x) if self.normalize_input else x

    @auto_move_data
    def inference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class logits, attention, gene scores and latent representation of a minibatch.

        Returns ``member_logits`` ``(E, B, C)``, ``logits`` (log of the mean member
        probabilities divided by the temperature outside training, ``(B, C)``), the members'
        mean ``attention`` and ``scores`` ``(B, G)``, ``latent`` (the members' latent
        representations side by side, ``(B, E * n_latent)``), and ``views`` (see
        :meth:`inference_from_views`).
        """
        x = self.prepare_input(x)
        # each member its own batch-difference draws (none without vectors or outside training)
        return self.inference_from_views(self.batch_shift(x, n_draws=self.n_members))

    def inference_from_views(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`inference` from the members' views of the cells.

        ``views`` is the prepared expression after the batch shift, ``(E, B, G)``, or one
        ``(B, G)`` view shared by every member (how a distilled network's teacher sees the
        cells the network sees). The outputs also hold ``views`` ``(E, B, G)``.
        """
        if views.dim() == 2:
            views = per_member(views, self.n_members)
        member_logits, latents, sums = [], [], {}
        for member, x_member in zip(self.members, views):
            out = member(x_member)
            member_logits.append(out.pop("logits"))
            latents.append(out.pop("latent"))
            for key, value in out.items():  # one network: its own outputs, not copies
                share = value if self.n_members == 1 else value / self.n_members
                sums[key] = sums[key] + share if key in sums else share
        member_logits = torch.stack(member_logits)
        logits = self.calibrated(mean_probability_logits(member_logits))
        latent = torch.cat(latents, dim=-1)
        return {"member_logits": member_logits, "logits": logits, "latent": latent, **sums, "views": views}

    def attribution(self, views: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        r"""How much each gene argues for the predicted class, ``(B, G)``.

        The positive part of each gene's exact contribution to the logit of the predicted class
        :math:`c` (see :meth:`contributions`), :math:`\max(0,\ a_g x_g (VU)_{gc})`, the members'
        mean for an ensemble. Genes the cell does not express get 0, and so does a gene whose
        expression argues against the predicted class (such as a stray read of another type's
        marker). No backward pass: the read-out is linear in the gene scores.

        Parameters
        ----------
        views
            The members' views of the cells, ``(E, B, G)`` (the ``views`` output of
            :meth:`inference`).
        logits
            The ensemble's logits ``(B, C)`` (the ``logits`` output of :meth:`inference`).
        """
        return self.contributions(views, logits.argmax(dim=-1)).clamp_min(0.0)

    def contributions(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Each gene's contribution to the logit of class ``classes[i]`` in cell ``i``, ``(B, G)``.

        ``x`` is the prepared expression (:meth:`prepare_input`), ``(B, G)``, or the members' views
        ``(E, B, G)``. For one network the class logit is exactly the sum of the contributions
        plus the class bias; for an ensemble, the members' contributions are averaged (the logit
        of the members' mean logits).
        """
        if x.dim() == 2:
            x = per_member(x, self.n_members)
        total = 0.0
        for member, x_member in zip(self.members, x):
            weights = member.gene_class_weights()  # (G, C)
            total = total + member.attention(x_member) * x_member * weights[:, classes].T
        return total / self.n_members

    def generative(self, **kwargs) -> dict:
        """N-ACT is discriminative: nothing to generate."""
        return {}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict,
    ) -> LossOutput:
        """Cross-entropy between each member's logits and the registered labels, summed over members."""
        labels = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
        ce = torch.stack([F.cross_entropy(logits, labels) for logits in inference_outputs["member_logits"]])
        return LossOutput(
            loss=ce.sum(),
            n_obs_minibatch=labels.shape[0],
            classification_loss=ce.mean(),
            logits=inference_outputs["logits"],
            true_labels=labels,
        )

    def sample(self, *args, **kwargs):
        """Not available: N-ACT is not a generative model."""
        raise NotImplementedError("NACT is a classifier and cannot sample expression.")


def _without_class_weights(module, state_dict, prefix, *args) -> None:
    """Drop the ``class_weights`` buffer of models saved before the loss lost its class weighting."""
    state_dict.pop(prefix + "class_weights", None)
