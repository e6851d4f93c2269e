"""Training plan of ModuleAE: Adam with a cosine learning-rate decay, programs kept non-negative."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from scsalient.model.base._training_plan import EpochTrainingPlan

if TYPE_CHECKING:
    from scvi.module.base import LossOutput

    from ._module import ModuleAEModule


class ModuleAETrainingPlan(EpochTrainingPlan):
    """:class:`~scvi.train.TrainingPlan` for :class:`~scsalient.model.moduleae.ModuleAEModule`.

    Adam whose learning rate decays to zero along a half cosine over all the steps of the run
    (so the last weights are those of a converged, not a still-moving, network), and the
    module's programs projected back to non-negative values after every step. Logs, once per
    epoch and for ``train`` and ``validation``, ``reconstruction_loss_{mode}`` (Poisson
    negative log-likelihood per cell, summed over genes), besides the ``train_loss`` /
    ``validation_loss`` that the base class logs.

    Parameters
    ----------
    module
        The module to train.
    lr
        Initial learning rate.
    weight_decay
        L2 penalty.
    eps
        Adam epsilon (the PyTorch default; scvi-tools' 0.01 damps small learning rates).
    """

    def __init__(
        self, module: ModuleAEModule, *, lr: float = 3e-3, weight_decay: float = 0.0, eps: float = 1e-8
    ):
        super().__init__(module, optimizer="Adam", lr=lr, weight_decay=weight_decay, eps=eps)

    def configure_optimizers(self):
        """Adam with a per-step half-cosine decay of the learning rate to zero."""
        config = super().configure_optimizers()
        total = max(int(self.trainer.estimated_stepping_batches), 1)

        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

        scheduler = torch.optim.lr_scheduler.LambdaLR(config["optimizer"], factor)
        return {
            "optimizer": config["optimizer"],
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Keep the programs non-negative after the optimiser step.

        Parameters
        ----------
        outputs
            Output of the training step (unused).
        batch
            The minibatch (unused).
        batch_idx
            Index of the minibatch (unused).
        """
        self.module.project_()

    def compute_and_log_metrics(self, loss_output: LossOutput, metrics: dict, mode: str) -> None:
        """Log the reconstruction loss per cell for ``mode``.

        Parameters
        ----------
        loss_output
            The module's loss output.
        metrics
            The base class's ELBO metrics (unused: the model is not variational).
        mode
            ``"train"`` or ``"validation"``.
        """
        n_obs = loss_output.n_obs_minibatch
        self.log_epoch(
            f"reconstruction_loss_{mode}", loss_output.reconstruction_loss_sum.detach() / n_obs, n_obs
        )
