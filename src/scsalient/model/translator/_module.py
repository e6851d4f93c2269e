"""Translator network: feature attention, two encoders into one latent space, RNA and ATAC decoders."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import FCLayers
from torch import nn

from scsalient.model.base._components import GeneMap, attention_softmax, log1p_cp10k, xavier_init

Modality = Literal["rna", "atac"]
#: inputs with at most this fraction of non-zero entries are encoded from their entries in training
SPARSE_INPUT_DENSITY = 0.05


class Entries(NamedTuple):
    """The non-zero entries of a cells x features matrix: cell, feature and value of each."""

    cell: torch.Tensor
    feature: torch.Tensor
    value: torch.Tensor
    n_cells: int

    @classmethod
    def of(cls, x: torch.Tensor) -> Entries:
        """The non-zero entries of the dense matrix ``x`` (row-major order)."""
        cell, feature = torch.nonzero(x, as_tuple=True)
        return cls(cell, feature, x[cell, feature], x.shape[0])

    def per_cell_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``values`` (one per entry, with trailing dimensions) over the entries of each cell."""
        out = values.new_zeros((self.n_cells, *values.shape[1:]))
        return out.index_add(0, self.cell, values)

    def to_dense(self, values: torch.Tensor, n_features: int) -> torch.Tensor:
        """A sparse cells x features tensor holding ``values`` at the entries."""
        index = torch.stack([self.cell, self.feature])
        return torch.sparse_coo_tensor(
            index, values, (self.n_cells, n_features), is_coalesced=True, check_invariants=False
        )


def sparse_linear(layer: nn.Linear, entries: Entries, values: torch.Tensor) -> torch.Tensor:
    """``layer`` applied to the matrix holding ``values`` at ``entries`` (zero elsewhere).

    Costs ``entries x out_features`` instead of ``cells x in_features x out_features``.
    """
    columns = layer.weight.index_select(1, entries.feature)  # (out_features, n_entries)
    out = entries.per_cell_sum(values[:, None] * columns.T)
    return out if layer.bias is None else out + layer.bias


class FeatureAttention(nn.Module):
    r"""Per-cell softmax attention over input features, used as a multiplicative gate.

    For input :math:`x \in \mathbb R^F` with :math:`n_x` non-zero features,
    :math:`a = \mathrm{softmax}(c \tanh((xW + b) / c))` over the non-zero features and the gated
    input is :math:`n_x \, a \odot x`: uniform attention leaves the input unchanged. The map
    :math:`W` is full or low-rank (:class:`~scsalient.model.base.GeneMap`) and starts at zero, so
    training starts from uniform attention. The bound :math:`c` keeps the weight of any two
    present features within a factor :math:`e^{2c}`: without it the softmax collapsed onto a
    single feature during training (one gene carrying the whole cell), which destroyed the
    information the translation needs.

    Parameters
    ----------
    n_features
        Number of input features.
    rank
        Rank of the feature x feature map, ``None`` for a full matrix.
    logit_bound
        The bound :math:`c` of the attention logits.
    """

    def __init__(self, n_features: int, rank: int | None, logit_bound: float = 1.0):
        super().__init__()
        self.logit_bound = logit_bound
        self.map = GeneMap(n_features, n_features, rank)
        last = self.map.layers if rank is None else self.map.layers[-1]
        nn.init.zeros_(last.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the gated input and the attention."""
        c = self.logit_bound
        attention = attention_softmax(c * torch.tanh(self.map(x) / c), x)
        n_expressed = (x != 0).sum(dim=-1, keepdim=True).clamp_min(1)
        return x * attention * n_expressed, attention

    @property
    def reads_entries(self) -> bool:
        """Whether :meth:`forward_entries` applies (a low-rank map)."""
        return isinstance(self.map.layers, nn.Sequential)

    def forward_entries(self, entries: Entries) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on the non-zero entries of a sparse input (low-rank maps only).

        The same maths at the cost of the entries: the logits are needed only at the features a
        cell has (the softmax runs over them), and the gated input is zero elsewhere. The bounded
        logits need no max shift before the exponential. Returns the gated input and the
        attention at the entries.
        """
        first, second = self.map.layers
        c = self.logit_bound
        u = sparse_linear(first, entries, entries.value)  # (cells, rank)
        logits = (u[entries.cell] * second.weight[entries.feature]).sum(-1) + second.bias[entries.feature]
        weight = torch.exp(c * torch.tanh(logits / c))
        attention = weight / entries.per_cell_sum(weight)[entries.cell]
        n_present = entries.per_cell_sum(torch.ones_like(weight))[entries.cell]
        return entries.value * attention * n_present, attention


class TranslatorNetwork(nn.Module):
    """One member of the Translator: attention, encoders and decoders of both modalities.

    Parameters are those of :class:`TranslatorModule` (less ``n_members``).
    """

    def __init__(
        self,
        n_genes: int,
        n_peaks: int,
        n_batch: int,
        *,
        n_latent: int,
        n_hidden: int,
        n_layers: int,
        dropout: float,
        rna_attention_rank: int | None,
        atac_attention_rank: int | None,
    ):
        super().__init__()
        self.n_batch = n_batch
        cats = [n_batch] if n_batch > 1 else None

        def mlp(n_in: int, n_out: int, n_cat_list=None) -> FCLayers:
            return FCLayers(
                n_in,
                n_out,
                n_cat_list=n_cat_list,
                n_layers=n_layers,
                n_hidden=n_hidden,
                dropout_rate=dropout,
                use_batch_norm=False,  # cells stay independent: needed for per-cell attributions
                use_layer_norm=True,
            )

        self.attention = nn.ModuleDict(
            {
                "rna": FeatureAttention(n_genes, rna_attention_rank),
                "atac": FeatureAttention(n_peaks, atac_attention_rank),
            }
        )
        self.encoder = nn.ModuleDict(
            {
                "rna": nn.Sequential(mlp(n_genes, n_hidden), nn.Linear(n_hidden, n_latent)),
                "atac": nn.Sequential(mlp(n_peaks, n_hidden), nn.Linear(n_hidden, n_latent)),
            }
        )
        self.rna_decoder = mlp(n_latent, n_hidden, cats)
        self.rna_output = nn.Linear(n_hidden, n_genes)
        self.library_output = nn.Linear(n_hidden, 1)
        self.atac_decoder = mlp(n_latent, n_hidden, cats)
        self.atac_output = nn.Linear(n_hidden, n_peaks)
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        xavier_init(self.encoder)
        for layer in (self.rna_output, self.library_output, self.atac_output):
            xavier_init(layer)

    @torch.no_grad()
    def init_output_biases(self, log_share: torch.Tensor, peak_logit: torch.Tensor) -> None:
        """Set the output biases (log expression shares, accessibility logits)."""
        self.rna_output.bias.copy_(log_share)
        self.atac_output.bias.copy_(peak_logit)

    def encode(self, modality: Modality, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent representation and feature attention of prepared inputs ``h``."""
        gated, attention = self.attention[modality](h)
        return self.encoder[modality](gated), attention

    def encode_entries(self, modality: Modality, entries: Entries) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` of a sparse input given by its non-zero ``entries``.

        The same maths as :meth:`encode` (up to rounding) at the cost of the entries: attention
        and the encoder's first layer read only the features a cell has. Returns the latents and
        the attention at the entries. Needs a low-rank attention map.
        """
        gated, attention = self.attention[modality].forward_entries(entries)
        fc_layers, latent = self.encoder[modality]
        h = sparse_linear(fc_layers.fc_layers[0][0], entries, gated)
        for i, block in enumerate(fc_layers.fc_layers):
            for layer in list(block)[1:] if i == 0 else block:
                if layer is not None:
                    h = layer(h)
        return latent(h), attention

    def decode_rna(
        self, z: torch.Tensor, batch_index: torch.Tensor | None = None, genes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log normalised expression (over all genes, or ``genes``) and log library size."""
        hidden = self.rna_decoder(z, batch_index) if self.n_batch > 1 else self.rna_decoder(z)
        log_rho = F.log_softmax(self.rna_output(hidden), dim=-1)
        if genes is not None:
            log_rho = log_rho[:, genes]
        return log_rho, self.library_output(hidden).squeeze(-1)

    def decode_atac(
        self, z: torch.Tensor, batch_index: torch.Tensor | None = None, peaks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Accessibility logits (over all peaks, or only ``peaks``)."""
        hidden = self.atac_decoder(z, batch_index) if self.n_batch > 1 else self.atac_decoder(z)
        if peaks is None:
            return self.atac_output(hidden)
        return F.linear(hidden, self.atac_output.weight[peaks], self.atac_output.bias[peaks])


class TranslatorModule(BaseModuleClass):
    r"""Torch module of :class:`~scsalient.model.Translator`.

    Each member (:class:`TranslatorNetwork`) has its own feature attention, encoders and
    decoders. ``encode(m, h)`` maps a prepared input of modality ``m`` (log1p CP10k for RNA,
    0/1 for ATAC) through each member's attention and encoder to its latent :math:`z`;
    ``decode_rna(z)`` gives each member's log normalised expression :math:`\log\rho` (a log
    softmax over genes) and predicted log library size, ``decode_atac(z)`` its accessibility
    logits. Member outputs are stacked along a leading axis of length ``n_members``. The loss
    of a member, per cell, is

    .. math::

        \sum_{s \in \{r, a\}} \big[-\log \mathrm{NB}(x^r \mid \ell \rho(z_s), \theta)
        - \log \mathrm{Bern}(x^a \mid \sigma(\mathrm{dec}_a(z_s)))
        + (\hat\ell(z_s) - \log \ell)^2\big] + \lambda \lVert z_r - z_a \rVert^2,

    self-reconstruction (:math:`s` equal to the target) and translation (:math:`s` the other
    modality) for both modalities, with :math:`\ell` the observed library size; the training
    loss is the sum over members, so each member trains as if alone.

    Parameters
    ----------
    n_genes
        Number of genes.
    n_peaks
        Number of peaks.
    n_batch
        Number of batches (decoders are conditioned on the batch when above 1).
    n_latent
        Size of each member's latent space.
    n_hidden
        Width of the hidden layers.
    n_layers
        Hidden layers in every encoder and decoder.
    dropout
        Dropout in the encoders and decoders.
    rna_attention_rank
        Rank of the RNA attention map, ``None`` for full.
    atac_attention_rank
        Rank of the ATAC attention map, ``None`` for full.
    binarize_atac
        Treat any positive accessibility count as 1 (input and target).
    alignment_weight
        Weight :math:`\lambda` pulling the two encodings of a cell together.
    n_members
        Networks in the deep ensemble :cite:p:`Lakshminarayanan2017` (``members``), trained
        together on the same minibatches from independent initialisations.
    """

    def __init__(
        self,
        n_genes: int,
        n_peaks: int,
        n_batch: int = 0,
        *,
        n_latent: int = 64,
        n_hidden: int = 256,
        n_layers: int = 1,
        dropout: float = 0.3,
        rna_attention_rank: int | None = None,
        atac_attention_rank: int | None = 64,
        binarize_atac: bool = True,
        alignment_weight: float = 1.0,
        n_members: int = 1,
    ):
        super().__init__()
        if isinstance(n_members, bool) or int(n_members) != n_members or n_members < 1:
            raise ValueError(f"n_members must be a positive integer, got {n_members!r}.")
        self.n_genes, self.n_peaks, self.n_batch = n_genes, n_peaks, n_batch
        self.n_latent = n_latent
        self.n_members = int(n_members)
        self.binarize_atac = binarize_atac
        self.alignment_weight = alignment_weight
        self.members = nn.ModuleList(
            TranslatorNetwork(
                n_genes,
                n_peaks,
                n_batch,
                n_latent=n_latent,
                n_hidden=n_hidden,
                n_layers=n_layers,
                dropout=dropout,
                rna_attention_rank=rna_attention_rank,
                atac_attention_rank=atac_attention_rank,
            )
            for _ in range(self.n_members)
        )
        self.register_load_state_dict_pre_hook(_single_network_keys)

    @torch.no_grad()
    def init_output_biases(self, gene_fraction: torch.Tensor, peak_fraction: torch.Tensor) -> None:
        """Start the decoders at the per-feature means: expression shares and accessible fractions."""
        p = peak_fraction.clamp(1e-6, 1 - 1e-6)
        log_share, peak_logit = gene_fraction.clamp_min(1e-8).log(), p.log() - (-p).log1p()
        for member in self.members:
            member.init_output_biases(log_share, peak_logit)

    # ------------------------------------------------------------------ building blocks
    def prepare(self, modality: Modality, x: torch.Tensor) -> torch.Tensor:
        """The input as the network sees it: log1p(CP10k) of RNA counts, 0/1 (or raw) accessibility."""
        if modality == "rna":
            return log1p_cp10k(x)
        return (x > 0).to(x.dtype) if self.binarize_atac else x

    def encode(self, modality: Modality, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents ``(n_members, cells, n_latent)`` and the members' mean attention ``(cells, features)``."""
        latents, attentions = zip(*(member.encode(modality, h) for member in self.members), strict=True)
        return torch.stack(latents), torch.stack(attentions).mean(0)

    def reads_entries(self, modality: Modality, h: torch.Tensor) -> bool:
        """Whether :meth:`encode_fastest` encodes ``h`` from its non-zero entries (:meth:`encode_sparse`).

        Yes for a low-rank attention map over inputs at most :data:`SPARSE_INPUT_DENSITY` non-zero
        (accessibility: about 0.4% of the 25,734 MOp regions per nucleus), where it is many
        times faster than the dense maths it reproduces.
        """
        if not self.members[0].attention[modality].reads_entries or h.numel() == 0:
            return False
        return bool((h != 0).sum() <= SPARSE_INPUT_DENSITY * h.numel())

    def encode_sparse(self, modality: Modality, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` from the non-zero entries of ``h`` (same maths, up to rounding).

        Returns the latents and the members' mean attention as a sparse COO tensor (cells x
        features, holding the attention of the features each cell has; the rest is 0, as in
        :meth:`encode`).
        """
        entries = Entries.of(h)
        latents, attentions = zip(
            *(member.encode_entries(modality, entries) for member in self.members), strict=True
        )
        return torch.stack(latents), entries.to_dense(torch.stack(attentions).mean(0), h.shape[1])

    def encode_fastest(self, modality: Modality, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_sparse` where :meth:`reads_entries` says it is cheaper, else :meth:`encode`.

        The same maths either way; the attention comes as a sparse COO tensor from the sparse path.
        """
        if self.reads_entries(modality, h):
            return self.encode_sparse(modality, h)
        return self.encode(modality, h)

    def decode_rna(
        self, z: torch.Tensor, batch_index: torch.Tensor | None = None, genes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's log normalised expression ``(n_members, cells, genes)`` and log library size."""
        out = [
            member.decode_rna(z_m, batch_index, genes) for member, z_m in zip(self.members, z, strict=True)
        ]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

    def decode_atac(
        self, z: torch.Tensor, batch_index: torch.Tensor | None = None, peaks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each member's accessibility logits ``(n_members, cells, peaks)``."""
        return torch.stack(
            [member.decode_atac(z_m, batch_index, peaks) for member, z_m in zip(self.members, z, strict=True)]
        )

    def log_theta_for(self, genes: torch.Tensor | None = None) -> torch.Tensor:
        """Each member's log inverse dispersion of the genes, ``(n_members, genes)``."""
        log_theta = torch.stack([member.log_theta for member in self.members])
        return log_theta if genes is None else log_theta[:, genes]

    # ------------------------------------------------------------------ scvi-tools contract
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        return {"rna": tensors[REGISTRY_KEYS.X_KEY], "atac": tensors[REGISTRY_KEYS.ATAC_X_KEY]}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        batch = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        return {
            "z_rna": inference_outputs["z_rna"],
            "z_atac": inference_outputs["z_atac"],
            "batch_index": batch,
        }

    @auto_move_data
    def inference(self, rna: torch.Tensor, atac: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode both modalities of paired cells (latents stacked over members)."""
        z_rna, attention_rna = self.encode("rna", self.prepare("rna", rna))
        z_atac, attention_atac = self.encode_fastest("atac", self.prepare("atac", atac))
        return {
            "z_rna": z_rna,
            "z_atac": z_atac,
            "attention_rna": attention_rna,
            "attention_atac": attention_atac,
        }

    def generative(self, z_rna: torch.Tensor, z_atac: torch.Tensor, batch_index=None) -> dict:
        """Decode both latents into both modalities."""
        out = {}
        for source, z in (("rna", z_rna), ("atac", z_atac)):
            out[f"rna_from_{source}"] = self.decode_rna(z, batch_index)
            out[f"atac_from_{source}"] = self.decode_atac(z, batch_index)
        return out

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict,
    ) -> LossOutput:
        """Self-reconstruction and translation losses of both modalities, plus latent alignment.

        The loss is summed over members; the logged terms are the members' means.
        """
        counts = tensors[REGISTRY_KEYS.X_KEY]
        library = counts.sum(dim=-1)
        target_atac = self.prepare("atac", tensors[REGISTRY_KEYS.ATAC_X_KEY])
        theta = self.log_theta_for().exp()[:, None, :]
        terms = {}
        for source in ("rna", "atac"):
            log_rho, log_library = generative_outputs[f"rna_from_{source}"]
            mu = log_rho.exp() * library[None, :, None]
            nll_rna = -NegativeBinomial(mu=mu, theta=theta).log_prob(counts).sum(-1)
            nll_library = (log_library - library.clamp_min(1).log()) ** 2
            logits = generative_outputs[f"atac_from_{source}"]
            nll_atac = F.binary_cross_entropy_with_logits(
                logits, target_atac.expand_as(logits), reduction="none"
            ).sum(-1)
            terms[f"rna_from_{source}"] = nll_rna + nll_library  # (n_members, cells)
            terms[f"atac_from_{source}"] = nll_atac
        alignment = ((inference_outputs["z_rna"] - inference_outputs["z_atac"]) ** 2).sum(-1)
        total = sum(terms.values()) + self.alignment_weight * alignment
        return LossOutput(
            loss=total.mean(-1).sum(),
            reconstruction_loss={key: value.mean(0) for key, value in terms.items()},
            kl_local={"alignment": alignment.mean(0)},
            n_obs_minibatch=counts.shape[0],
        )

    def sample(self, *args, **kwargs):
        """Not available: use :meth:`~scsalient.model.Translator.translate`."""
        raise NotImplementedError("Use Translator.translate to predict a modality.")


def _single_network_keys(module, state_dict, prefix, *args) -> None:
    """Read weights saved before the module held members as those of its first member."""
    for key in list(state_dict):
        if key.startswith(prefix) and not key.startswith(prefix + "members."):
            state_dict[prefix + "members.0." + key[len(prefix) :]] = state_dict.pop(key)
