"""How much a cell looks like some type of the reference: a score for cells of types it never saw."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Inverse L2 strength of the one-vs-rest regressions (scikit-learn's ``C``): strong, so that each
#: regression stays close to its type's mean direction. Chosen on the selection tasks
#: (``benchmarks/results/defaults.md``).
FAMILIARITY_C = 1e-3
#: at most this many training cells fit the regressions (drawn at random, seeded)
MAX_FIT_CELLS = 20_000

#: share of a query's cells under ``min_familiarity`` above which ``annotate`` warns (about 100
#: times what the default threshold withholds from cells like the reference's)
UNFAMILIAR_WARNING_SHARE = 0.1

_BUFFERS = ("mean", "scale", "coef", "intercept", "reference")
#: smallest spread of the validation cells' decision values (a reference of identical values)
_MIN_SPREAD = 1e-6


class LatentFamiliarity(nn.Module):
    """One-vs-rest logistic regressions on the standardised latent space, and reference scores.

    The top class probability says which known type a cell most resembles, not whether it resembles
    any: a softmax spreads a cell of an unseen type over the known ones and often still puts most of
    it on one. One-vs-rest logistic regressions on the model's latent representation (the form of
    CellTypist's per-class sigmoids) give each known type its own yes/no, so a cell that none of them
    claims gets a low largest decision value. That value is turned into a p-value against the
    validation cells (reference cells the network did not train on), as in outlier testing with
    held-out scores :cite:p:`Bates2023`: the share of validation cells expected to look less like
    their best type than the query cell does, under a normal model of their decision values (a
    normal model rather than their ranks: a reference of 20 validation cells could not otherwise
    give a value under 1/21, and every cell below the lowest would tie). A cell like the validation
    cells gets a familiarity spread over (0, 1); a cell unlike every type, a small one.

    Buffers (saved with the model; empty until :meth:`fit`): ``mean`` and ``scale`` of the
    latent dimensions over the training cells, ``coef`` (classes x dimensions) and ``intercept``
    of the regressions, and ``reference``: mean and standard deviation of the validation cells'
    largest decision values. A model saved before these existed loads with them empty.
    """

    def __init__(self):
        super().__init__()
        for name in _BUFFERS:
            self.register_buffer(name, torch.zeros(0))

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has set the regressions and the reference scores."""
        return self.reference.numel() > 0

    def fit(
        self,
        latent: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        validation_latent: np.ndarray,
        seed: int = 0,
    ) -> None:
        """Fit the regressions on training cells and score the validation cells as the reference.

        Parameters
        ----------
        latent
            Latent representation of the training cells, cells x dimensions.
        labels
            Their class codes, ``0 .. n_classes - 1``.
        n_classes
            Number of classes (a class without training cells gets a regression that never says yes).
        validation_latent
            Latent representation of the validation cells (not trained on).
        seed
            Seed of the subsample of training cells when there are more than ``MAX_FIT_CELLS``.
        """
        from sklearn.linear_model import LogisticRegression

        latent = np.asarray(latent, dtype=np.float64)
        labels = np.asarray(labels).reshape(-1)
        kept = ~np.isnan(latent).any(axis=1)  # cells without any expressed model gene
        latent, labels = latent[kept], labels[kept]
        validation_latent = np.asarray(validation_latent, dtype=np.float32)
        validation_latent = validation_latent[~np.isnan(validation_latent).any(axis=1)]
        if len(latent) > MAX_FIT_CELLS:
            keep = np.random.default_rng(seed).choice(len(latent), MAX_FIT_CELLS, replace=False)
            latent, labels = latent[keep], labels[keep]
        mean = latent.mean(axis=0)
        scale = latent.std(axis=0)
        scale[scale < 1e-8] = 1.0
        z = (latent - mean) / scale
        coef = np.zeros((n_classes, z.shape[1]))
        intercept = np.full(n_classes, -1e4)  # a class absent from training is never claimed
        C = FAMILIARITY_C
        for c in range(n_classes):
            target = labels == c
            if not target.any():
                continue
            if target.all():
                intercept[c] = 1e4
                continue
            regression = LogisticRegression(C=C, max_iter=1000).fit(z, target)
            coef[c], intercept[c] = regression.coef_[0], regression.intercept_[0]
        device = self.reference.device
        for name, value in (("mean", mean), ("scale", scale), ("coef", coef), ("intercept", intercept)):
            setattr(self, name, torch.as_tensor(value, dtype=torch.float32, device=device))
        if len(validation_latent) < 2:
            raise ValueError("The familiarity score needs at least 2 validation cells.")
        decision = self.decision(validation_latent)
        reference = [decision.mean(), max(decision.std(), _MIN_SPREAD)]
        self.reference = torch.as_tensor(reference, dtype=torch.float32, device=device)
        logger.info(
            "Familiarity: one-vs-rest regressions on %d training cells, %d validation cells as reference.",
            len(z),
            len(decision),
        )

    def decision(self, latent: np.ndarray) -> np.ndarray:
        """Largest one-vs-rest decision value of each cell (NaN rows stay NaN).

        Parameters
        ----------
        latent
            Latent representation, cells x dimensions.
        """
        mean, scale = self.mean.cpu().numpy(), self.scale.cpu().numpy()
        coef, intercept = self.coef.cpu().numpy(), self.intercept.cpu().numpy()
        z = (np.asarray(latent, dtype=np.float32) - mean) / scale
        return (z @ coef.T + intercept).max(axis=1)

    def score(self, latent: np.ndarray) -> np.ndarray:
        r"""Familiarity of each cell in (0, 1): the p-value of its largest decision value.

        :math:`\Phi((d - \mu) / \sigma)`, with :math:`d` the cell's largest decision value and
        :math:`\mu, \sigma` those of the validation cells; NaN for rows of NaN and when the
        model was not fitted.

        Parameters
        ----------
        latent
            Latent representation, cells x dimensions.
        """
        from scipy.special import ndtr

        latent = np.asarray(latent, dtype=np.float32)
        if not self.fitted:
            return np.full(len(latent), np.nan, dtype=np.float32)
        center, spread = self.reference.cpu().numpy().astype(np.float64)
        return ndtr((self.decision(latent) - center) / spread).astype(np.float32)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # take the saved shapes (the buffers are empty until fitted), and load a model saved
        # before familiarity existed with empty buffers
        for name in _BUFFERS:
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
            else:
                state_dict[key] = getattr(self, name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
