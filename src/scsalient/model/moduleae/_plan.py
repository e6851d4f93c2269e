"""Training plan of ModuleAE: Adam or the published Nesterov SGD, with module-specific metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from scsalient.model.base._training_plan import EpochTrainingPlan

if TYPE_CHECKING:
    from scvi.module.base import LossOutput

    from ._module import ModuleAEModule


class ModuleAETrainingPlan(EpochTrainingPlan):
    r""":class:`~scvi.train.TrainingPlan` for :class:`~scsalient.model.moduleae.ModuleAEModule`.

    Logs, once per epoch and for ``train`` and ``validation``, ``reconstruction_loss_{mode}``
    (Poisson negative log-likelihood per cell, summed over genes) and
    ``orthogonality_error_{mode}`` (:math:`\lVert I - W W^\top \rVert_F`), besides the
    ``train_loss`` / ``validation_loss`` that the base class logs. It logs nothing through
    ``LossOutput.extra_metrics`` and no ELBO (the model is not variational).

    Parameters
    ----------
    module
        The module to train.
    optimizer
        ``"Adam"``, or ``"SGD"``: stochastic gradient descent with Nesterov momentum, as
        published.
    lr
        Learning rate.
    weight_decay
        L2 penalty.
    eps
        Adam epsilon (the PyTorch default; scvi-tools' 0.01 damps small learning rates).
    momentum
        Nesterov momentum of ``"SGD"``.
    """

    def __init__(
        self,
        module: ModuleAEModule,
        *,
        optimizer: Literal["Adam", "SGD"] = "Adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        momentum: float = 0.9,
    ):
        if optimizer not in ("Adam", "SGD"):
            raise ValueError(f"optimizer must be 'Adam' or 'SGD', got {optimizer!r}.")
        creator = None
        if optimizer == "SGD":

            def creator(params):
                return torch.optim.SGD(
                    params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay
                )

        super().__init__(
            module,
            optimizer="Custom" if creator is not None else "Adam",
            optimizer_creator=creator,
            lr=lr,
            weight_decay=weight_decay,
            eps=eps,
        )

    def compute_and_log_metrics(self, loss_output: LossOutput, metrics: dict, mode: str) -> None:
        """Log the reconstruction loss per cell and the orthogonality error for ``mode``.

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
        self.log_epoch(f"orthogonality_error_{mode}", self.module.orthogonality_error().detach(), n_obs)
