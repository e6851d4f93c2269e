"""scTab network: a TabNet encoder with 1.5-entmax feature masks, batched over ensemble members."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from entmax import entmax15
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from scsalient.model.base._augment import BatchShift
from scsalient.model.base._components import (
    MASKED_LOGIT,
    TemperatureScaled,
    log1p_cp10k,
    mean_probability_logits,
    per_member,
)

#: above this many genes, 1.5-entmax partially sorts the top entries instead of sorting all
_ENTMAX_FULL_SORT_MAX = 1024
_ENTMAX_TOPK = 256


class _MaskEntropy(torch.autograd.Function):
    r""":math:`\sum_g M_g \log(M_g + \epsilon)` per cell, averaged over cells: ``(E, B, G) -> (E,)``.

    The same value and gradient as writing it out with tensor operations, which keeps two more
    cells x genes tensors per member (``M + eps`` and its log) alive until the backward pass; this
    keeps only ``M`` (already kept by the entmax) and recomputes the log in the backward pass.
    """

    @staticmethod
    def forward(ctx, mask: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.eps = eps
        return (mask * torch.log(mask + eps)).sum(-1).mean(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        shifted = mask + ctx.eps
        local = torch.log(shifted).add_(mask / shifted)
        return local.mul_((grad / mask.shape[-2])[..., None, None]), None


def mask_entropy(mask: torch.Tensor, eps: float = 1e-15) -> torch.Tensor:
    """Negative entropy of the masks, per member: see :class:`_MaskEntropy`."""
    return _MaskEntropy.apply(mask, eps)


class MemberLinear(nn.Module):
    """``n_members`` independent linear maps (no bias), applied in one batched product.

    The input is either shared by every member, shape ``(B, n_in)``, or per member,
    ``(E, B, n_in)``; the output is ``(E, B, n_out)``.

    Parameters
    ----------
    n_members
        Number of members ``E``.
    n_in
        Input size.
    n_out
        Output size.
    gain
        Gain of the Xavier-normal initialisation (TabNet's choice per layer type).
    """

    def __init__(self, n_members: int, n_in: int, n_out: int, gain: float = 1.0):
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.weight = nn.Parameter(torch.empty(n_members, n_in, n_out))
        std = gain * math.sqrt(2.0 / (n_in + n_out))
        nn.init.normal_(self.weight, 0.0, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every member's map."""
        if x.dim() == 2:  # shared input: one (B, n_in) x (n_in, E * n_out) product
            n_members = self.weight.shape[0]
            w = self.weight.permute(1, 0, 2).reshape(self.n_in, n_members * self.n_out)
            return (x @ w).view(x.shape[0], n_members, self.n_out).transpose(0, 1)
        return torch.bmm(x, self.weight)


class MemberBatchNorm(nn.Module):
    """Batch norm of ``(E, B, F)`` tensors with separate statistics per member and feature.

    With ``virtual_batch_size`` it is ghost batch norm :cite:p:`Hoffer2017`: the minibatch is
    normalised in chunks of that many cells during training.

    Parameters
    ----------
    n_members
        Number of members ``E``.
    n_features
        Number of features ``F``.
    virtual_batch_size
        Cells per ghost batch; ``None`` normalises the whole minibatch at once.
    momentum
        Momentum of the running statistics.
    """

    def __init__(self, n_members: int, n_features: int, virtual_batch_size: int | None, momentum: float):
        super().__init__()
        self.n_members, self.n_features = n_members, n_features
        self.virtual_batch_size = virtual_batch_size
        self.bn = nn.BatchNorm1d(n_members * n_features, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``(E, B, F)``."""
        n_members, n_cells, n_features = x.shape
        flat = x.transpose(0, 1).reshape(n_cells, n_members * n_features)
        if self.training and self.virtual_batch_size and n_cells > self.virtual_batch_size:
            chunks = flat.chunk(max(n_cells // self.virtual_batch_size, 1), dim=0)
            flat = torch.cat([self.bn(chunk) for chunk in chunks], dim=0)
        else:
            flat = self.bn(flat)
        return flat.view(n_cells, n_members, n_features).transpose(0, 1)


class GLULayer(nn.Module):
    """Linear map (own or shared) -> ghost batch norm -> gated linear unit."""

    def __init__(
        self, fc: MemberLinear, n_members: int, n_out: int, virtual_batch_size: int, momentum: float
    ):
        super().__init__()
        self.fc = fc
        self.n_out = n_out
        self.bn = MemberBatchNorm(n_members, 2 * n_out, virtual_batch_size, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer."""
        h = self.bn(self.fc(x))
        return h[..., : self.n_out] * torch.sigmoid(h[..., self.n_out :])


class FeatureTransformer(nn.Module):
    r"""TabNet feature transformer: shared GLU layers, then step-specific ones, with scaled residuals.

    The first layer maps the genes to ``n_out``; every later layer is added to its input and
    scaled by :math:`\sqrt{0.5}`.
    """

    def __init__(
        self,
        shared: nn.ModuleList,
        n_members: int,
        n_in: int,
        n_out: int,
        n_independent: int,
        virtual_batch_size: int,
        momentum: float,
    ):
        super().__init__()
        layers = [GLULayer(fc, n_members, n_out, virtual_batch_size, momentum) for fc in shared]
        for i in range(n_independent):
            first = not layers and i == 0
            fan_in = n_in if first else n_out
            fc = MemberLinear(n_members, fan_in, 2 * n_out, gain=_glu_gain(fan_in, 2 * n_out))
            layers.append(GLULayer(fc, n_members, n_out, virtual_batch_size, momentum))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the transformer."""
        h = self.layers[0](x)
        for layer in self.layers[1:]:
            h = (h + layer(h)) * math.sqrt(0.5)
        return h


def _glu_gain(n_in: int, n_out: int) -> float:
    return math.sqrt((n_in + n_out) / math.sqrt(n_in))


def _non_glu_gain(n_in: int, n_out: int) -> float:
    return math.sqrt((n_in + n_out) / math.sqrt(4 * n_in))


class AttentiveTransformer(nn.Module):
    """Feature mask ``entmax15(GBN(W a) * prior)`` from the attention features ``a``."""

    def __init__(
        self,
        n_members: int,
        n_a: int,
        n_genes: int,
        virtual_batch_size: int,
        momentum: float,
        init_scale: float = 1.0,
    ):
        super().__init__()
        self.fc = MemberLinear(n_members, n_a, n_genes, gain=_non_glu_gain(n_a, n_genes))
        self.bn = MemberBatchNorm(n_members, n_genes, virtual_batch_size, momentum)
        nn.init.constant_(self.bn.bn.weight, init_scale)
        self.k = None if n_genes <= _ENTMAX_FULL_SORT_MAX else _ENTMAX_TOPK

    def forward(self, prior: torch.Tensor | None, a: torch.Tensor, expressed: torch.Tensor) -> torch.Tensor:
        """Sparse mask over the genes each cell expresses (``expressed``), rows summing to 1.

        ``prior`` ``None`` stands for a prior of ones (the first step), saving two cells x genes
        tensors per member.
        """
        logits = self.bn(self.fc(a))
        if prior is not None:
            logits = logits * prior
        return entmax15(logits.masked_fill(~expressed, MASKED_LOGIT), dim=-1, k=self.k)


class SCTABModule(BaseModuleClass, TemperatureScaled):
    r"""Torch module of :class:`~scsalient.model.SCTAB`: ``n_members`` TabNet classifiers in one network.

    For the log1p(CP10k) expression :math:`x` of a cell, each member computes (one decision
    step shown; ``n_steps`` repeats the masked part, with the prior
    :math:`p \leftarrow (\gamma - M) \odot p`):

    .. math::

        \tilde x = \mathrm{BN}(x), \quad a = \mathrm{FT}_0(\tilde x)_{n_d:}, \quad
        M = \mathrm{entmax}_{1.5}(\mathrm{GBN}(W_a a) \odot p), \quad
        d = \mathrm{ReLU}(\mathrm{FT}_1(M \odot \tilde x)_{:n_d}), \quad
        \mathrm{logits} = W_o d .

    Every parameter carries the member dimension first (members share no weights), so the
    members train as independent networks on the same minibatches, in one batched pass.

    Parameters
    ----------
    n_input
        Number of genes.
    n_labels
        Number of classes.
    n_members
        Ensemble members.
    n_d
        Width of the decision (embedding) features.
    n_a
        Width of the attention features.
    n_steps
        Decision steps.
    n_shared
        GLU layers shared by the feature transformers of all steps.
    n_independent
        GLU layers specific to each feature transformer.
    gamma
        Prior relaxation: how much a gene used in one step may be reused in the next.
    virtual_batch_size
        Cells per ghost batch.
    momentum
        Momentum of the ghost batch norms.
    lambda_sparse
        Weight of the mask-entropy (sparsity) penalty.
    mask_init_scale
        Initial scale (batch-norm weight) of the mask logits. TabNet uses 1; a small value
        starts training from nearly uniform, dense masks.
    normalize_input
        If ``True``, the input holds counts and is turned into log1p(CP10k) first.
    class_weights
        Cross-entropy weight of each class; ``None`` weighs all classes equally.
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        *,
        n_members: int = 1,
        n_d: int = 128,
        n_a: int = 64,
        n_steps: int = 1,
        n_shared: int = 1,
        n_independent: int = 1,
        gamma: float = 1.3,
        virtual_batch_size: int = 256,
        momentum: float = 0.02,
        lambda_sparse: float = 1e-5,
        mask_init_scale: float = 1.0,
        normalize_input: bool = True,
        class_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        if n_shared + n_independent < 1:
            raise ValueError("n_shared and n_independent cannot both be 0.")
        self.n_input, self.n_labels, self.n_members = n_input, n_labels, n_members
        self.n_d, self.n_a, self.n_steps, self.gamma = n_d, n_a, n_steps, gamma
        self.lambda_sparse = lambda_sparse
        self.normalize_input = normalize_input
        width = n_d + n_a
        shared = nn.ModuleList(
            MemberLinear(n_members, n_input if i == 0 else width, 2 * width,
                         gain=_glu_gain(n_input if i == 0 else width, 2 * width))
            for i in range(n_shared)
        )  # fmt: skip
        args = (n_members, n_input, width, n_independent, virtual_batch_size, momentum)
        self.initial_transformer = FeatureTransformer(shared, *args)
        self.step_transformers = nn.ModuleList(FeatureTransformer(shared, *args) for _ in range(n_steps))
        self.attentive = nn.ModuleList(
            AttentiveTransformer(n_members, n_a, n_input, virtual_batch_size, momentum, mask_init_scale)
            for _ in range(n_steps)
        )
        self.head = MemberLinear(n_members, n_d, n_labels, gain=_non_glu_gain(n_d, n_labels))
        weights = torch.ones(n_labels) if class_weights is None else torch.as_tensor(class_weights).float()
        self.register_buffer("class_weights", weights)
        self.batch_shift = BatchShift(n_input)

    def set_batch_norm_momentum(self, momentum: float) -> None:
        """Momentum of the running statistics of the ghost batch norms."""
        for layer in self.modules():
            if isinstance(layer, MemberBatchNorm):
                layer.bn.momentum = momentum

    # ------------------------------------------------------------------ forward
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        x = tensors[REGISTRY_KEYS.X_KEY]
        # scvi-tools' distributed sampler delivers minibatches with a leading dimension of 1
        return {"x": x.reshape(-1, x.shape[-1])}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return {}

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Expression as the network sees it (log1p(CP10k) when the input holds counts)."""
        return log1p_cp10k(x) if self.normalize_input else x

    @auto_move_data
    def inference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Masks, embeddings and class probabilities of every member for a minibatch.

        Returns a dict with ``member_logits`` ``(E, B, C)``, ``logits`` (log of the mean member
        probabilities, ``(B, C)``), ``embedding`` ``(E, B, n_d)``, ``mask`` (the per-cell gene
        importance of each member, ``(E, B, G)``, rows summing to 1) and ``mask_entropy``
        (:math:`\sum_g M \log M` averaged over cells and steps, per member, ``(E,)``) and
        ``views`` (see :meth:`inference_from_views`).
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
        x = views
        expressed = x != 0
        a = self.initial_transformer(x)[..., self.n_d :]
        prior = None  # ones at the first step; kept only while a later step needs it
        embedding = torch.zeros(*x.shape[:2], self.n_d, device=x.device, dtype=x.dtype)
        importance = torch.zeros_like(x) if self.n_steps > 1 else None
        entropy = x.new_zeros(self.n_members)
        mask = None
        for step, (attentive, transformer) in enumerate(zip(self.attentive, self.step_transformers)):
            mask = attentive(prior, a, expressed)
            entropy = entropy + mask_entropy(mask)
            if step + 1 < self.n_steps:
                prior = self.gamma - mask if prior is None else (self.gamma - mask) * prior
            out = transformer(mask * x)
            d = F.relu(out[..., : self.n_d])
            embedding = embedding + d
            if importance is not None:
                importance = importance + mask * d.sum(-1, keepdim=True)
            a = out[..., self.n_d :]
        if importance is not None:
            mask = importance / importance.sum(-1, keepdim=True).clamp_min(1e-12)
        member_logits = self.head(embedding)
        return {
            "member_logits": member_logits,
            "logits": self.calibrated(mean_probability_logits(member_logits)),
            "embedding": embedding,
            "mask": mask,
            "mask_entropy": entropy / self.n_steps,
            "views": views,
        }

    def attribution(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r""":meth:`inference` outputs plus ``attribution``: how much each gene argues for the predicted class.

        For the expression :math:`\tilde x` the network sees (log1p(CP10k) of counts) and the
        log-probability :math:`\log p_c` of the class :math:`c` the ensemble predicts (the log of
        the members' mean probability), the attribution of gene :math:`g` is the positive part
        of gradient x input, :math:`\max(0,\ \tilde x_g\, \partial \log p_c / \partial
        \tilde x_g)`: the genes whose expression raises the predicted class against the others,
        in a first-order expansion around the cell (one backward pass; genes a cell does not
        express get 0). Unlike the feature mask, which selects the genes passed to the decision
        step whichever class they argue for, it is specific to the class.

        Returns the outputs of :meth:`inference` (detached) with ``attribution`` ``(B, G)``.
        Runs with gradients even when called in inference mode.
        """
        device = next(self.parameters()).device
        with torch.inference_mode(False), torch.enable_grad():
            # a tensor made in inference mode cannot enter autograd: clone it outside that mode
            views = self.prepare_input(x.to(device).clone()).detach().requires_grad_(True)
            out = self.inference_from_views(views)
            log_p = torch.log_softmax(out["logits"], dim=-1)
            target = log_p.gather(1, log_p.argmax(dim=-1, keepdim=True)).sum()
            (grad,) = torch.autograd.grad(target, views)
            attribution = (grad * views).clamp_min(0.0)
        outputs = {key: value.detach() for key, value in out.items()}
        outputs["attribution"] = attribution.detach()
        return outputs

    def generative(self, **kwargs) -> dict:
        """Nothing to generate: scTab is discriminative."""
        return {}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict,
    ) -> LossOutput:
        """Sum over members of the class-weighted cross-entropy minus ``lambda_sparse`` x mask entropy."""
        member_logits = inference_outputs["member_logits"]
        labels = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
        ce = torch.stack(
            [F.cross_entropy(logits, labels, weight=self.class_weights) for logits in member_logits]
        )
        loss = (ce - self.lambda_sparse * inference_outputs["mask_entropy"]).sum()
        return LossOutput(
            loss=loss,
            n_obs_minibatch=labels.shape[0],
            classification_loss=ce.mean(),
            logits=inference_outputs["logits"],
            true_labels=labels,
        )

    def clip_grad_norm_(self, max_norm: float) -> None:
        """Clip the gradient norm of each member separately (as if each were trained alone).

        Every parameter stores its members contiguously along the first dimension, so a
        member's gradient is a slice of each parameter's gradient.
        """
        grads = [p.grad.view(self.n_members, -1) for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch.sqrt(sum(g.pow(2).sum(dim=1) for g in grads))
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale[:, None])

    def sample(self, *args, **kwargs):
        """Not available: scTab is not a generative model."""
        raise NotImplementedError("SCTAB is a classifier and cannot sample expression.")
