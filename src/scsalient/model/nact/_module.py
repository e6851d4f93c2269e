"""N-ACT network: additive gene attention, multi-head projection blocks, classification head."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from scsalient.model.base._augment import BatchShift
from scsalient.model.base._components import (
    GeneMap,
    attention_softmax,
    log1p_cp10k,
    mean_probability_logits,
    per_member,
    split_sizes,
    xavier_init,
)

#: what the attention map can read (see :class:`NACTModule`)
ATTENTION_INPUTS = ("expression", "centered", "standardized")


class ProjectionBlock(nn.Module):
    """One N-ACT projection block.

    ``z = LayerNorm(h + Dropout(concat_i P_i h))`` followed by a point-wise feed-forward
    ``out = LayerNorm(z + Dropout(W_2 ReLU(W_1 z)))``. Head ``i`` maps the ``G`` gene-sized
    input to its own slice of ``G / n_heads`` outputs; with a ``rank`` each head is factorised
    through ``max(1, rank // n_heads)`` dimensions.

    Parameters
    ----------
    n_features
        Size of the gene-sized vectors (number of genes).
    n_heads
        Number of projection heads.
    n_hidden_ff
        Hidden size of the feed-forward layer.
    dropout
        Dropout on the projection and feed-forward outputs.
    rank
        Rank of each head's factorisation in total, or ``None`` for full heads.
    """

    def __init__(self, n_features: int, n_heads: int, n_hidden_ff: int, dropout: float, rank: int | None):
        super().__init__()
        head_rank = None if rank is None else max(1, rank // n_heads)
        self.heads = nn.ModuleList(
            GeneMap(n_features, size, head_rank) for size in split_sizes(n_features, n_heads)
        )
        self.norm_projection = nn.LayerNorm(n_features)
        self.feed_forward = nn.Sequential(
            nn.Linear(n_features, n_hidden_ff), nn.ReLU(), nn.Linear(n_hidden_ff, n_features)
        )
        xavier_init(self.feed_forward)
        self.norm_feed_forward = nn.LayerNorm(n_features)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        projected = torch.cat([head(h) for head in self.heads], dim=-1)
        z = self.norm_projection(h + self.dropout(projected))
        return self.norm_feed_forward(z + self.dropout(self.feed_forward(z)))


class NACTNetwork(nn.Module):
    """One N-ACT network: gene attention map, projection blocks and classification head.

    Parameters are those of :class:`NACTModule`; ``fixed_bias`` freezes the attention bias at 0
    (for centred attention inputs).
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        *,
        n_blocks: int,
        n_heads: int,
        n_hidden_ff: int,
        dropout: float,
        attention_rank: int | None,
        attention_init: Literal["zeros", "xavier"],
        fixed_bias: bool,
    ):
        super().__init__()
        self.attention = GeneMap(n_input, n_input, attention_rank)
        last = self.attention.layers if attention_rank is None else self.attention.layers[-1]
        if attention_init == "zeros":
            nn.init.zeros_(last.weight)
        if fixed_bias:
            # centred input and no bias: the attention logits average to zero over the cells
            nn.init.zeros_(last.bias)
            last.bias.requires_grad_(False)
        self.blocks = nn.ModuleList(
            ProjectionBlock(n_input, n_heads, n_hidden_ff, dropout, attention_rank) for _ in range(n_blocks)
        )
        self.classifier = nn.Linear(n_input, n_labels)
        xavier_init(self.classifier)

    def forward(
        self,
        x: torch.Tensor,
        query: torch.Tensor,
        mask_unexpressed: bool,
        allowed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and attention of cells ``x`` whose attention map reads ``query``.

        Genes where ``allowed`` is ``False`` get no attention in any cell.
        """
        attention = attention_softmax(self.attention(query), x, mask_unexpressed, allowed)
        h = attention * x
        for block in self.blocks:
            h = block(h)
        return self.classifier(h), attention


class NACTModule(BaseModuleClass):
    r"""Torch module of :class:`~scsalient.model.NACT`.

    For a cell with (log-normalised) expression :math:`x \in \mathbb{R}^G`:

    .. math::

        a = \mathrm{softmax}(x W + b), \qquad g = a \odot x, \qquad
        h_0 = g, \quad h_k = \mathrm{Block}_k(h_{k-1}), \qquad
        \mathrm{logits} = h_K V + c .

    Parameters
    ----------
    n_input
        Number of genes ``G``.
    n_labels
        Number of classes.
    n_blocks
        Number of projection blocks ``K``.
    n_heads
        Projection heads per block.
    n_hidden_ff
        Hidden size of each block's feed-forward layer.
    dropout
        Dropout inside the projection blocks.
    attention_rank
        Rank of the gene x gene maps (attention and projection heads); ``None`` for full maps.
    normalize_input
        If ``True``, the input holds counts and is turned into log1p(CP10k) first.
    input_dropout
        Dropout on the (normalised) expression before the attention (changed for training by
        :meth:`set_input_dropout`).
    attention_init
        ``"zeros"`` starts from uniform attention (the attention weights start at zero);
        ``"xavier"`` draws them like every other layer, as in the authors' code.
    mask_unexpressed
        Restrict each cell's attention softmax to the genes it expresses (non-zero input).
    class_weights
        Weight of each class in the cross-entropy; ``None`` for equal weights.
    attention_input
        What the attention map reads: ``"expression"`` (the normalised expression, as
        published) or ``"standardized"`` (each gene centred and scaled by its mean and standard
        deviation over the training cells, held in the buffers ``gene_mean`` and ``gene_scale``,
        and no bias), so that no gene can be preferred in every cell alike; ``"centered"``
        (centred only).
    restrict_attention
        Hold a boolean buffer ``attention_allowed`` (set by :meth:`set_attention_allowed`);
        genes where it is ``False`` get no attention in any cell.
    n_members
        Networks in the deep ensemble :cite:p:`Lakshminarayanan2017` (``members``), trained
        together on the same minibatches from independent initialisations, each on its own
        cross-entropy. The class probabilities are the mean of the members' probabilities and
        the attention is the mean of their attention (rows still sum to 1).

    Notes
    -----
    At training time, before the input dropout, each cell may be shifted by a batch-difference
    vector (:class:`~scsalient.model.base._augment.BatchShift`, empty unless the model sets
    vectors); each member draws its own shifts and input dropout.
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        *,
        n_blocks: int = 2,
        n_heads: int = 8,
        n_hidden_ff: int = 128,
        dropout: float = 0.0,
        attention_rank: int | None = None,
        normalize_input: bool = True,
        input_dropout: float = 0.0,
        attention_init: Literal["zeros", "xavier"] = "zeros",
        mask_unexpressed: bool = True,
        class_weights: torch.Tensor | None = None,
        attention_input: Literal["expression", "centered", "standardized"] = "expression",
        restrict_attention: bool = False,
        n_members: int = 1,
    ):
        super().__init__()
        if attention_input not in ATTENTION_INPUTS:
            raise ValueError(f"attention_input must be one of {ATTENTION_INPUTS}, got {attention_input!r}.")
        if attention_init not in ("zeros", "xavier"):
            raise ValueError(f"attention_init must be 'zeros' or 'xavier', got {attention_init!r}.")
        if int(n_members) != n_members or n_members < 1:
            raise ValueError(f"n_members must be a positive integer, got {n_members!r}.")
        self.attention_input = attention_input
        self.n_input = n_input
        self.n_labels = n_labels
        self.n_members = int(n_members)
        self.normalize_input = normalize_input
        self.members = nn.ModuleList(
            NACTNetwork(
                n_input,
                n_labels,
                n_blocks=n_blocks,
                n_heads=n_heads,
                n_hidden_ff=n_hidden_ff,
                dropout=dropout,
                attention_rank=attention_rank,
                attention_init=attention_init,
                fixed_bias=attention_input != "expression",
            )
            for _ in range(self.n_members)
        )
        self.register_buffer("gene_mean", torch.zeros(n_input))
        self.register_buffer("gene_scale", torch.ones(n_input))
        # only when asked, so that the saved state of models without it is unchanged
        # (a None buffer is not saved)
        allowed = torch.ones(n_input, dtype=torch.bool) if restrict_attention else None
        self.register_buffer("attention_allowed", allowed)
        self.input_dropout = nn.Dropout(input_dropout)
        self.mask_unexpressed = mask_unexpressed
        self.batch_shift = BatchShift(n_input)
        weights = torch.ones(n_labels) if class_weights is None else torch.as_tensor(class_weights).float()
        self.register_buffer("class_weights", weights)

    @property
    def n_blocks(self) -> int:
        """Projection blocks per member."""
        return len(self.members[0].blocks)

    def set_gene_moments(self, mean: torch.Tensor, sd: torch.Tensor) -> None:
        """Per-gene mean and standard deviation of the training cells, for the attention input.

        ``"centered"`` uses the mean only; ``"standardized"`` also divides by the standard
        deviation (1 for genes constant over the training cells).
        """
        device = self.gene_mean.device
        self.gene_mean = torch.as_tensor(mean, dtype=torch.float32).to(device)
        if self.attention_input == "standardized":
            sd = torch.as_tensor(sd, dtype=torch.float32).to(device)
            self.gene_scale = torch.where(sd > 1e-3, sd, torch.ones_like(sd))

    def set_attention_allowed(self, allowed: torch.Tensor) -> None:
        """Genes the attention may use (boolean, one per gene); the others get none in any cell."""
        if self.attention_allowed is None:
            raise RuntimeError("This module was built without restrict_attention=True.")
        allowed = torch.as_tensor(allowed, dtype=torch.bool)
        if allowed.shape != (self.n_input,):
            raise ValueError(
                f"allowed must have one entry per gene ({self.n_input}), got {tuple(allowed.shape)}."
            )
        self.attention_allowed = allowed.to(self.gene_mean.device)

    def set_input_dropout(self, p: float) -> None:
        """Dropout rate on the expression before the attention (used in training mode only)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {p}.")
        self.input_dropout.p = p

    @staticmethod
    def n_parameters(
        n_input: int,
        n_labels: int,
        *,
        n_blocks: int = 2,
        n_heads: int = 8,
        n_hidden_ff: int = 128,
        attention_rank: int | None = None,
        n_members: int = 1,
        **_,
    ) -> int:
        """Number of trainable parameters, computed without building the network."""
        g = n_input

        def gene_map(n_out: int, rank: int | None) -> int:
            return g * n_out + n_out if rank is None else g * rank + rank * n_out + n_out

        head_rank = None if attention_rank is None else max(1, attention_rank // n_heads)
        block = sum(gene_map(size, head_rank) for size in split_sizes(g, n_heads))
        block += 2 * g * n_hidden_ff + n_hidden_ff + g + 4 * g  # feed-forward + two LayerNorms
        member = gene_map(g, attention_rank) + n_blocks * block + g * n_labels + n_labels
        return n_members * member

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return {}

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Expression as the attention sees it (log1p(CP10k) when the input holds counts)."""
        return log1p_cp10k(x) if self.normalize_input else x

    @auto_move_data
    def inference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Attention and class logits for a minibatch of cells.

        Returns ``member_logits`` ``(E, B, C)``, ``logits`` (log of the mean member
        probabilities, ``(B, C)``), ``attention`` (the members' mean, ``(B, G)``) and ``views``
        (see :meth:`inference_from_views`).
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
        member_logits, attention = [], 0.0
        for member, x_member in zip(self.members, views):
            if self.training:
                x_member = self.input_dropout(x_member)
            # a gene the cell does not express scores a * 0 = 0 whatever its attention; keeping it
            # out of the softmax puts the cell's attention on the genes it expresses
            query = (
                x_member
                if self.attention_input == "expression"
                else (x_member - self.gene_mean) / self.gene_scale
            )
            logits, member_attention = member(x_member, query, self.mask_unexpressed, self.attention_allowed)
            member_logits.append(logits)
            attention = attention + member_attention / self.n_members
        member_logits = torch.stack(member_logits)
        return {
            "member_logits": member_logits,
            "logits": mean_probability_logits(member_logits),
            "attention": attention,
            "views": views,
        }

    def generative(self, **kwargs) -> dict:
        """N-ACT is discriminative: nothing to generate."""
        return {}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict,
        label_smoothing: float = 0.0,
        balance_classes: bool = False,
    ) -> LossOutput:
        """Cross-entropy between each member's logits and the registered labels, summed over members.

        With ``balance_classes`` each class is weighted by ``class_weights``; with
        ``label_smoothing`` the targets are smoothed towards the uniform distribution.
        """
        labels = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
        weight = self.class_weights if balance_classes else None
        # each member is trained on its own cross-entropy, as if it were trained alone
        ce = torch.stack(
            [
                F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)
                for logits in inference_outputs["member_logits"]
            ]
        )
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
