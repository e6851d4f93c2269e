"""Integrated gradients of the classifiers' predictions with respect to each gene (via captum)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


def _captum_integrated_gradients():
    try:
        from captum.attr import IntegratedGradients
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "integrated_gradients needs captum: install it with `pip install captum` "
            "(or `pip install 'scsalient[bench]'`)."
        ) from error
    return IntegratedGradients


def integrated_gradients(
    model,
    adata: AnnData | None = None,
    indices: Sequence[int] | None = None,
    *,
    classes: Sequence[str] | None = None,
    n_steps: int = 25,
    batch_size: int = 128,
) -> np.ndarray:
    r"""Integrated gradients :cite:p:`Sundararajan2017` of each cell's class logit, per gene.

    For a cell with expression :math:`x` (as the network sees it: log1p(CP10k) when the model
    was set up on counts) and the all-zero cell as baseline, the attribution of gene :math:`g`
    to the logit :math:`F_c` of class :math:`c` is

    .. math::

        \mathrm{IG}_g = x_g \int_0^1 \frac{\partial F_c(\alpha x)}{\partial x_g}\, d\alpha ,

    computed by captum's Gauss-Legendre rule with ``n_steps`` points. The attributions of a
    cell sum to :math:`F_c(x) - F_c(0)` up to the error of the rule. :math:`F_c` is the
    calibrated logit the model's probabilities come from (for an ensemble, the log of the
    members' mean probability divided by the temperature). Genes the cell does not express get 0.

    Parameters
    ----------
    model
        A trained :class:`~scsalient.model.NACT` or :class:`~scsalient.model.SCTAB`.
    adata
        Data to explain; ``None`` for the training data. Genes are matched by name, as in
        ``model.predict``.
    indices
        Cells of ``adata`` to explain; ``None`` for all.
    classes
        One class name per cell; ``None``: each cell's predicted class.
    n_steps
        Points of the integration rule (each costs one forward and one backward pass).
    batch_size
        Cells per pass; the network sees ``batch_size * n_steps`` rows at once.

    Returns
    -------
    float32 array, cells x the model's genes (in the order of ``model.get_var_names()``).
    Cells with no expression in the model's genes get a row of zeros.
    """
    module = getattr(model, "module", None)
    if module is None or not hasattr(module, "inference_from_views") or not hasattr(model, "classes"):
        raise TypeError(f"integrated_gradients explains NACT and SCTAB models, got {type(model).__name__}.")
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}.")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    IntegratedGradients = _captum_integrated_gradients()
    prepared = model._prepare_adata(adata)
    n = prepared.n_obs if indices is None else len(indices)
    codes = None
    if classes is not None:
        codes = pd.Index(model.classes).get_indexer(np.asarray(classes).astype(str))
        if len(codes) != n or (codes < 0).any():
            raise ValueError(
                "classes must name one of the model's classes for every cell "
                f"({n} cells; the model's classes are {list(model.classes)})."
            )
    module.eval()
    device = next(module.parameters()).device

    def class_logits(x: torch.Tensor) -> torch.Tensor:
        return module.inference_from_views(x)["logits"]

    explainer = IntegratedGradients(class_logits)
    out = np.zeros((n, module.n_input), dtype=np.float32)
    for b in model._iter_inference(prepared, indices, batch_size, ["views", "probabilities"], "attribute"):
        rows = b["positions"]
        target = b["probabilities"].argmax(axis=1) if codes is None else codes[rows]
        x = torch.as_tensor(np.array(b["views"][0]), device=device)
        with torch.enable_grad():
            attribution = explainer.attribute(
                x, baselines=0.0, target=torch.as_tensor(target, device=device), n_steps=int(n_steps)
            )
        out[rows] = attribution.detach().float().cpu().numpy()
    return out
