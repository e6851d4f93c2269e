"""Gene-peak links from integrated gradients of a trained Translator."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from scsalient._constants import TranslatorKeys

if TYPE_CHECKING:
    from mudata import MuData

    from scsalient.model import Translator

Direction = Literal["rna_to_atac", "atac_to_rna", "both"]
#: floats of input gradients held at once (per batched backward pass)
_GRADIENT_BUDGET = 2**24


def peak_gene_links(
    model: Translator,
    mdata: MuData,
    genes: Sequence[str] | None = None,
    peaks: Sequence[str] | None = None,
    n_top: int = 10,
    direction: Direction = "both",
    n_cells: int | None = 256,
    n_steps: int = 16,
    baseline: Literal["mean", "zero"] = "mean",
    batch_size: int = 32,
    seed: int = 0,
    key_added: str = TranslatorKeys.UNS,
    copy: bool = False,
) -> pd.DataFrame | None:
    r"""Link genes and peaks through integrated gradients of the Translator's predictions.

    ``"rna_to_atac"``: for every peak :math:`p`, the attribution of its predicted accessibility
    (logit :math:`f_p`) to each input gene, by integrated gradients :cite:p:`Sundararajan2017`
    from a baseline :math:`b` to the cell's log1p(CP10k) expression :math:`x`,

    .. math::

        \mathrm{IG}_{g}(x) = (x_g - b_g) \int_0^1
        \frac{\partial f_p(b + \alpha (x - b))}{\partial x_g}\, d\alpha .

    ``"atac_to_rna"``: the same for the predicted log normalised expression of each gene with
    respect to the input peaks (0/1). For an ensemble (``n_ensemble > 1``), :math:`f` is the
    members' mean logit (or log expression), so a cell's attributions are the mean of the
    members'. The attributions of one cell sum to :math:`f(x) - f(b)`. The score of a
    (source, target) pair is the mean absolute attribution over cells, so it measures how much
    the source moves the prediction from cell to cell;
    ``sign`` says in which direction (the sign of the mean of :math:`\mathrm{IG}_g (x_g - b_g)`,
    +1 when more of the source raises the target).

    With the default ``baseline="mean"`` (the mean input over the cells used) a feature that is
    constant across cells, however abundant, gets no attribution, which is what a link should
    mean; ``baseline="zero"`` (no expression, all peaks closed) is the textbook choice but
    credits abundant features.

    Cost: one backward pass per target feature and block of ``batch_size`` cells x ``n_steps``;
    restrict ``peaks`` (for ``"rna_to_atac"``) or ``genes`` (for ``"atac_to_rna"``) to the
    features you want explained.

    Parameters
    ----------
    model
        A trained :class:`~scsalient.model.Translator`.
    mdata
        Paired cells with both modalities (the training MuData or new cells), with the
        model's modality names.
    genes
        Genes to consider (targets of ``"atac_to_rna"``, candidate sources of
        ``"rna_to_atac"``); ``None`` for all the model's genes.
    peaks
        Peaks to consider (targets of ``"rna_to_atac"``, candidate sources of
        ``"atac_to_rna"``); ``None`` for all the model's peaks.
    n_top
        Links kept per target feature (largest scores).
    direction
        ``"rna_to_atac"``, ``"atac_to_rna"`` or ``"both"``.
    n_cells
        Cells the attributions are averaged over (a random subset); ``None`` for all.
    n_steps
        Riemann steps (midpoint rule) of the integral.
    baseline
        ``"mean"``: the mean input of the cells used; ``"zero"``: no expression / all closed.
    batch_size
        Cells per forward pass (each expanded to ``n_steps`` inputs).
    seed
        Seed for the choice of cells.
    key_added
        Key in ``mdata.uns`` for the result.
    copy
        Return the table instead of writing it into ``mdata.uns``.

    Returns
    -------
    With ``copy=True`` a DataFrame with one row per link: ``gene``, ``peak``, ``score`` (mean
    absolute attribution over cells), ``sign`` (+1 or -1), ``direction``, ``rank`` (1 =
    strongest for the target feature) and
    ``distance`` (peak centre minus gene start in bp, when ``var`` of both modalities holds
    ``chrom`` and ``start``/``end`` and they share a chromosome; NaN otherwise). Otherwise
    ``None``, and ``mdata.uns[key_added]`` holds ``{"links": <that table>, "params": {...}}``.
    """
    if direction not in ("rna_to_atac", "atac_to_rna", "both"):
        raise ValueError(f"direction must be 'rna_to_atac', 'atac_to_rna' or 'both', got {direction!r}.")
    if baseline not in ("mean", "zero"):
        raise ValueError(f"baseline must be 'mean' or 'zero', got {baseline!r}.")
    if n_top < 1 or n_steps < 1 or batch_size < 1:
        raise ValueError("n_top, n_steps and batch_size must be positive.")
    model._check_if_trained(warn=True)
    gene_names, gene_index = model._feature_index("rna", genes)
    peak_names, peak_index = model._feature_index("atac", peaks)
    rng = np.random.default_rng(seed)
    n_obs = mdata.n_obs
    cells = (
        np.arange(n_obs)
        if n_cells is None or n_cells >= n_obs
        else np.sort(rng.choice(n_obs, n_cells, replace=False))
    )
    tables = []
    for current in ("rna_to_atac", "atac_to_rna") if direction == "both" else (direction,):
        source, target = ("rna", "atac") if current == "rna_to_atac" else ("atac", "rna")
        target_index = peak_index if target == "atac" else gene_index
        target_names = peak_names if target == "atac" else gene_names
        source_index = gene_index if source == "rna" else peak_index
        source_names = gene_names if source == "rna" else peak_names
        scores, signs = _integrated_gradients(
            model, mdata, source, target_index, cells, n_steps, batch_size, baseline
        )
        if source_index is not None:
            scores, signs = scores[:, source_index], signs[:, source_index]
        tables.append(_top_links(scores, signs, target_names, source_names, n_top, current, target))
    links = pd.concat(tables, ignore_index=True)
    links["distance"] = _distances(model, mdata, links)
    if copy:
        return links
    mdata.uns[key_added] = {
        TranslatorKeys.LINKS: links,
        "params": {
            "direction": direction,
            "n_top": int(n_top),
            "n_cells": int(len(cells)),
            "n_steps": int(n_steps),
            "baseline": baseline,
            "seed": int(seed),
            "method": "integrated_gradients",
        },
    }
    return None


def _integrated_gradients(
    model: Translator,
    mdata: MuData,
    source: str,
    target_index: np.ndarray | None,
    cells: np.ndarray,
    n_steps: int,
    batch_size: int,
    baseline: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean absolute integrated gradients over ``cells`` and their signs: targets x source features."""
    module = model.module
    module.eval()
    adata, x = model._aligned(mdata, source)
    codes = model._batch_codes(mdata, adata, None)
    n_targets = (
        (module.n_peaks if source == "rna" else module.n_genes) if target_index is None else len(target_index)
    )
    targets = torch.arange(n_targets) if target_index is None else torch.as_tensor(target_index)
    n_features = x.shape[1]
    total = torch.zeros(n_targets, n_features, dtype=torch.float64)
    signed = torch.zeros(n_targets, n_features, dtype=torch.float64)
    alphas = (torch.arange(n_steps, dtype=torch.float32) + 0.5) / n_steps
    device = model.device
    reference = torch.zeros(n_features, dtype=torch.float32, device=device)
    if baseline == "mean":
        for start in range(0, len(cells), 1024):
            block = x[cells[start : start + 1024]]
            dense = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
            reference += module.prepare(
                source, torch.as_tensor(dense, dtype=torch.float32, device=device)
            ).sum(0)
        reference /= len(cells)
    n_blocks = math.ceil(len(cells) / batch_size)
    for b in tqdm(range(n_blocks), desc=f"links from {source}", disable=n_blocks < 3, leave=False):
        rows = cells[b * batch_size : (b + 1) * batch_size]
        block = x[rows]
        dense = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        h = module.prepare(source, torch.as_tensor(dense, dtype=torch.float32, device=device))
        delta = h - reference
        path = reference + alphas.to(device)[:, None, None] * delta[None]
        path = path.reshape(-1, n_features).requires_grad_(True)
        batch_index = None
        if codes is not None:
            batch_index = torch.as_tensor(codes[rows], device=device).repeat(n_steps)[:, None]
        chunk = max(1, _GRADIENT_BUDGET // (path.shape[0] * n_features))
        for start in range(0, n_targets, chunk):
            selected = targets[start : start + chunk].to(device)
            with torch.enable_grad():
                z, _ = module.encode(source, path)
                # an ensemble's members' mean: the attributions are the mean of the members'
                if source == "rna":
                    out = module.decode_atac(z, batch_index, selected).mean(0)
                else:
                    out = module.decode_rna(z, batch_index, selected)[0].mean(0)
                k = out.shape[1]
                one_hot = torch.eye(k, device=device)[:, None, :].expand(k, out.shape[0], k)
                (grads,) = torch.autograd.grad(out, path, grad_outputs=one_hot, is_grads_batched=True)
            attribution = grads.reshape(k, n_steps, len(rows), n_features).mean(dim=1) * delta[None]
            total[start : start + k] += attribution.abs().sum(dim=1).double().cpu()
            signed[start : start + k] += (attribution * delta[None]).sum(dim=1).double().cpu()
    return (total / len(cells)).numpy(), np.where(signed.numpy() < 0, -1, 1)


def _top_links(
    scores: np.ndarray,
    signs: np.ndarray,
    target_names: pd.Index,
    source_names: pd.Index,
    n_top: int,
    direction: str,
    target: str,
) -> pd.DataFrame:
    """The ``n_top`` sources with the largest score for every target."""
    n_top = min(n_top, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n_top]
    top = np.take_along_axis(scores, order, axis=1)
    top_sign = np.take_along_axis(signs, order, axis=1)
    target_col = np.repeat(np.asarray(target_names, dtype=object), n_top)
    source_col = np.asarray(source_names, dtype=object)[order.ravel()]
    genes, peaks = (source_col, target_col) if target == "atac" else (target_col, source_col)
    return pd.DataFrame(
        {
            "gene": genes.astype(str),
            "peak": peaks.astype(str),
            "score": top.ravel(),
            "sign": top_sign.ravel().astype(np.int8),
            "direction": direction,
            "rank": np.tile(np.arange(1, n_top + 1), len(target_names)),
        }
    )


def _distances(model: Translator, mdata: MuData, links: pd.DataFrame) -> np.ndarray:
    """Peak centre minus gene start, where both have coordinates on the same chromosome."""
    rna_var = mdata.mod[model.modality_name("rna")].var
    atac_var = mdata.mod[model.modality_name("atac")].var
    out = np.full(len(links), np.nan)
    if not (
        {"chrom", "start"} <= set(rna_var.columns) and {"chrom", "start", "end"} <= set(atac_var.columns)
    ):
        return out
    gene = rna_var.reindex(links["gene"])
    peak = atac_var.reindex(links["peak"])
    centre = (peak["start"].to_numpy(dtype=float) + peak["end"].to_numpy(dtype=float)) // 2
    same = (gene["chrom"].astype(str).to_numpy() == peak["chrom"].astype(str).to_numpy()) & gene[
        "chrom"
    ].notna().to_numpy()
    out[same] = centre[same] - gene["start"].to_numpy(dtype=float)[same]
    return out
