"""Training plan for classifiers: cross-entropy, accuracy and macro-F1 logged per epoch."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from scvi.train import TrainingPlan
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from scvi.module.base import BaseModuleClass, LossOutput

MODES = ("train", "validation")
#: devices on which the optimiser runs fused (PyTorch's single-kernel Adam/AdamW)
FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")
#: metric used for early stopping and best-epoch selection (unless a distillation selects on the KL)
MONITOR = "f1_macro_validation"


class EpochTrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` base of scsalient's plans.

    Fixes a trap of scvi-tools 1.4.2 with Lightning >= 2.6 (the module is put in training mode
    when a fit starts; a second ``train()`` would otherwise run with dropout off) and logs
    per-epoch values with :meth:`log_epoch` rather than through ``LossOutput.extra_metrics``
    (which crashes under DDP).

    Parameters
    ----------
    module
        The module to train.
    **kwargs
        Passed to :class:`~scvi.train.TrainingPlan` (learning rate, optimiser, loss arguments).
    """

    def __init__(self, module: BaseModuleClass, **kwargs):
        super().__init__(module, **kwargs)

    def on_train_start(self) -> None:
        """Put the module in training mode (Lightning >= 2.6 no longer does)."""
        self.module.train()

    def get_optimizer_creator(self):
        """The optimiser, as scvi-tools builds it, but with PyTorch's fused (single-kernel) update.

        The same Adam or AdamW maths in one pass over the parameters, without the temporary
        copies of PyTorch's default (``foreach``) update. With the ~100M parameters of a
        five-member Translator over 25,734 regions the default update took about a quarter of
        each step on one CPU thread, the fused one a fifth of that; for the classifiers' smaller
        networks the difference was within the run-to-run spread (N-ACT on Kang) or small (a
        five-member SCTAB step over 25,000 genes peaked 21 MB lower). Devices without a fused
        kernel get the default.
        """
        if self.optimizer_name not in ("Adam", "AdamW"):
            return super().get_optimizer_creator()
        cls = torch.optim.AdamW if self.optimizer_name == "AdamW" else torch.optim.Adam

        def create(params):
            params = list(params)
            fused = all(p.device.type in FUSED_OPTIMIZER_DEVICES and p.is_floating_point() for p in params)
            return cls(params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=fused or None)

        return create

    def log_epoch(self, name: str, value, n_obs: int) -> None:
        """Log ``value`` as the epoch mean of ``name``, weighted by the cells of each minibatch.

        Parameters
        ----------
        name
            Metric name, e.g. ``"ce_validation"``.
        value
            This minibatch's value (a scalar tensor, detached).
        n_obs
            Cells in the minibatch, the weight of ``value`` in the epoch mean.
        """
        self.log(name, value, on_step=False, on_epoch=True, batch_size=n_obs, sync_dist=self.use_sync_dist)


class ClassifierTrainingPlan(EpochTrainingPlan):
    """:class:`~scvi.train.TrainingPlan` for modules whose loss is a classification loss.

    Logs ``ce_{mode}``, ``accuracy_{mode}`` and ``f1_macro_{mode}`` (mode ``train`` or
    ``validation``) once per epoch through torchmetrics objects, so the values are exact over
    the epoch and synchronised across processes under DDP. It also fixes two traps of
    scvi-tools 1.4.2: the module is put in training mode when a fit starts (a second
    ``train()`` would otherwise run with dropout off), and nothing is logged through
    ``LossOutput.extra_metrics`` (which crashes under DDP).

    Parameters
    ----------
    module
        The module to train; its ``loss`` must return ``logits`` and ``true_labels``.
    n_classes
        Number of classes, for the metrics.
    lr
        Learning rate.
    weight_decay
        Weight decay (L2 for Adam, decoupled for AdamW).
    optimizer
        ``"Adam"`` or ``"AdamW"``.
    eps
        Optimiser epsilon. The scvi-tools default (0.01) damps small learning rates; we use
        the PyTorch default.
    lr_decay
        If given, multiply the learning rate by this factor every ``lr_decay_every`` epochs.
    lr_decay_every
        Epochs between learning-rate decays.
    linear_decay_steps
        If given, the learning rate falls linearly from ``lr`` to 0 over this many optimiser
        steps (then stays at 0), so that training ends at a (near) optimum of the regularised
        loss rather than wherever the last steps left it.
    gradient_clip_norm
        If given, clip the gradient norm to this value before each step. A module with a
        ``clip_grad_norm_(max_norm)`` method (an ensemble clipping each member separately)
        does the clipping itself.
    teacher
        A trained module of the same kind (typically an ensemble) to distil into the module,
        which must be a single network :cite:p:`Hinton2015`: at training time the module's
        classification loss ``ce`` becomes
        ``(1 - distill_weight) * ce + distill_weight * T^2 * KL(p_teacher^T || p^T)``, with
        both class distributions softened by the temperature ``T`` (other terms of the loss,
        such as a sparsity penalty, are kept). The teacher is not trained
        (its weights get no gradient). Validation metrics are those of the module alone.
    distill_temperature
        Temperature ``T`` of the distillation.
    distill_weight
        Weight of the distillation term; ``1`` learns from the teacher's probabilities only.
    distill_consistent
        If ``True``, the teacher sees each cell as the module sees it, after the module's
        batch-difference shift (the ``views`` its ``inference`` returns, given to the teacher's
        ``inference_from_views``); if ``False``, as the data loader gives it, before the shift.
    distill_select
        What :attr:`monitor` watches with a ``teacher``: ``"f1"`` the validation macro-F1 against
        the labels, ``"kl"`` the validation ``KL(p_teacher^T || p^T)`` (logged as
        ``kl_teacher_validation``, as ``kl_teacher_train`` in training).
    **loss_kwargs
        Passed to the module's ``loss``.
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        n_classes: int,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        optimizer: Literal["Adam", "AdamW"] = "Adam",
        eps: float = 1e-8,
        lr_decay: float | None = None,
        lr_decay_every: int = 10,
        linear_decay_steps: int | None = None,
        gradient_clip_norm: float | None = None,
        teacher: BaseModuleClass | None = None,
        distill_temperature: float = 2.0,
        distill_weight: float = 1.0,
        distill_consistent: bool = False,
        distill_select: Literal["f1", "kl"] = "f1",
        **loss_kwargs,
    ):
        super().__init__(
            module, lr=lr, weight_decay=weight_decay, optimizer=optimizer, eps=eps, **loss_kwargs
        )
        if teacher is not None and getattr(module, "n_members", 1) != 1:
            raise ValueError("Distillation trains a single network: the module must have one member.")
        if distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be positive, got {distill_temperature}.")
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight}.")
        # held outside the registered submodules: its weights stay out of the optimiser, the
        # checkpoints and Lightning's train/eval switching (it is moved to the module's device)
        self._teacher = (teacher,) if teacher is not None else None
        self.distill_temperature = distill_temperature
        self.distill_weight = distill_weight
        self.distill_consistent = distill_consistent
        if distill_select not in ("f1", "kl"):
            raise ValueError(f"distill_select must be 'f1' or 'kl', got {distill_select!r}.")
        self.distill_select = distill_select
        self._teacher_kl: torch.Tensor | None = None
        self.lr_decay = lr_decay
        self.lr_decay_every = lr_decay_every
        if linear_decay_steps is not None and linear_decay_steps < 1:
            raise ValueError(f"linear_decay_steps must be a positive integer, got {linear_decay_steps}.")
        self.linear_decay_steps = linear_decay_steps
        self.gradient_clip_norm = gradient_clip_norm
        # keyed "<mode>_<metric>": a bare "train" key would clash with nn.Module.train
        self.epoch_metrics = nn.ModuleDict()
        for mode in MODES:
            self.epoch_metrics[f"{mode}_f1"] = MulticlassF1Score(num_classes=n_classes, average="macro")
            self.epoch_metrics[f"{mode}_accuracy"] = MulticlassAccuracy(
                num_classes=n_classes, average="micro"
            )
        # the training epoch's weighted means, logged once at the epoch's end: Lightning's
        # ``self.log`` costs milliseconds per call, which at one call per metric and step was
        # most of the training time of a small network on a few hundred cells
        self.train_means = nn.ModuleDict(
            {name: MeanMetric() for name in ("train_loss", "ce_train", "kl_teacher_train")}
        )

    @property
    def monitor(self) -> tuple[str, Literal["min", "max"]]:
        """The logged value that early stopping and best-epoch selection watch, and its better direction."""
        if self._teacher is not None and self.distill_select == "kl":
            return "kl_teacher_validation", "min"
        return MONITOR, "max"

    def forward(self, tensors: dict[str, torch.Tensor], **kwargs):
        """The module's forward pass; in training with a ``teacher``, the loss includes distillation.

        Parameters
        ----------
        tensors
            A minibatch, as the data loader gives it.
        **kwargs
            Passed to the module's forward (``loss_kwargs``, ...).

        Returns
        -------
        The module's inference outputs, generative outputs and :class:`~scvi.module.base.LossOutput`.
        """
        inference_outputs, generative_outputs, loss_output = super().forward(tensors, **kwargs)
        self._teacher_kl = None
        if self._teacher is not None:
            # the raw logits of the single network: ``loss_output.logits`` are log-probabilities
            # clamped at log(1e-12), whose gradient vanishes for a class the network has pushed
            # below that probability (it could then never learn the class back)
            member_logits = inference_outputs.get("member_logits")
            logits = member_logits[0] if member_logits is not None else loss_output.logits
            training = self.module.training
            views = inference_outputs.get("views") if self.distill_consistent and training else None
            kl = self._kl_from_teacher(tensors, logits, views)
            self._teacher_kl = kl.detach()
            if training:
                w, t = self.distill_weight, self.distill_temperature
                loss_output.loss = loss_output.loss - w * loss_output.classification_loss + w * t * t * kl
        return inference_outputs, generative_outputs, loss_output

    def _kl_from_teacher(
        self, tensors: dict[str, torch.Tensor], logits: torch.Tensor, views: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``KL(p_teacher^T || p^T)``, the mean over the minibatch's cells.

        With ``views`` (the module's, ``(1, B, G)``) the teacher sees the cells as the module saw them.
        """
        teacher = self._teacher[0].eval()  # no dropout or augmentation of its own in the teacher
        if next(teacher.parameters()).device != logits.device:
            teacher.to(logits.device)
        with torch.no_grad():
            if views is not None:
                teacher_logits = teacher.inference_from_views(views[0].detach())["logits"]
            else:
                teacher_logits = teacher.inference(**teacher._get_inference_input(tensors))["logits"]
        t = self.distill_temperature
        return F.kl_div(
            F.log_softmax(logits / t, dim=-1),
            F.log_softmax(teacher_logits / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimiser step's loss; the epoch's metrics are accumulated and logged at its end.

        Parameters
        ----------
        batch
            The minibatch, as the data loader gives it.
        batch_idx
            Its index in the epoch.

        Returns
        -------
        The loss to minimise.
        """
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        n_obs = loss_output.n_obs_minibatch
        self.train_means["train_loss"].update(loss_output.loss.detach(), n_obs)
        self.train_means["ce_train"].update(loss_output.classification_loss.detach(), n_obs)
        if self._teacher_kl is not None:
            self.train_means["kl_teacher_train"].update(self._teacher_kl, n_obs)
        self._update_class_metrics(loss_output, "train")
        return loss_output.loss

    def _update_class_metrics(self, loss_output: LossOutput, mode: str) -> None:
        """Add a minibatch's predictions to the epoch's macro-F1 and accuracy of ``mode``."""
        predictions = loss_output.logits.detach().argmax(dim=-1)
        truth = loss_output.true_labels.view(-1)
        self.epoch_metrics[f"{mode}_f1"].update(predictions, truth)
        self.epoch_metrics[f"{mode}_accuracy"].update(predictions, truth)

    def on_train_epoch_end(self) -> None:
        """Log the training epoch's loss, cross-entropy, accuracy and macro-F1, then reset them."""
        values = {
            name: metric.compute()
            for name, metric in self.train_means.items()
            if metric.update_called  # kl_teacher_train only with a teacher
        }
        values["f1_macro_train"] = self.epoch_metrics["train_f1"].compute()
        values["accuracy_train"] = self.epoch_metrics["train_accuracy"].compute()
        for name, value in values.items():
            self.log(name, value, on_step=False, on_epoch=True, prog_bar=name == "train_loss")
        for metric in (
            *self.train_means.values(),
            self.epoch_metrics["train_f1"],
            self.epoch_metrics["train_accuracy"],
        ):
            metric.reset()

    def compute_and_log_metrics(self, loss_output: LossOutput, metrics: dict, mode: str) -> None:
        """Log cross-entropy, accuracy and macro-F1 for ``mode``.

        Parameters
        ----------
        loss_output
            The module's loss output, with ``logits`` and ``true_labels``.
        metrics
            The base class's ELBO metrics (unused: a classifier has no ELBO).
        mode
            ``"train"`` or ``"validation"``.
        """
        n_obs = loss_output.n_obs_minibatch
        self._update_class_metrics(loss_output, mode)
        f1, accuracy = self.epoch_metrics[f"{mode}_f1"], self.epoch_metrics[f"{mode}_accuracy"]
        self.log_epoch(f"ce_{mode}", loss_output.classification_loss.detach(), n_obs)
        self.log(f"f1_macro_{mode}", f1, on_step=False, on_epoch=True, batch_size=n_obs)
        self.log(f"accuracy_{mode}", accuracy, on_step=False, on_epoch=True, batch_size=n_obs)
        if self._teacher_kl is not None:
            self.log_epoch(f"kl_teacher_{mode}", self._teacher_kl, n_obs)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip to ``gradient_clip_norm`` (per member for ensembles), then apply the trainer's clipping.

        Parameters
        ----------
        optimizer
            The optimiser about to step.
        gradient_clip_val
            Clipping value given to the trainer, if any.
        gradient_clip_algorithm
            Clipping algorithm given to the trainer, if any.
        """
        if self.gradient_clip_norm is not None:
            if hasattr(self.module, "clip_grad_norm_"):
                self.module.clip_grad_norm_(self.gradient_clip_norm)
            else:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.gradient_clip_norm)
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        """Optimiser plus an optional decay of the learning rate (per epoch, or linear per step)."""
        config = super().configure_optimizers()
        if self.linear_decay_steps is not None:
            steps = self.linear_decay_steps
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                config["optimizer"], lambda step: max(0.0, 1.0 - step / steps)
            )
            config["lr_scheduler"] = {"scheduler": scheduler, "interval": "step"}
        elif self.lr_decay is not None:
            scheduler = torch.optim.lr_scheduler.StepLR(
                config["optimizer"], step_size=self.lr_decay_every, gamma=self.lr_decay
            )
            config["lr_scheduler"] = {"scheduler": scheduler, "interval": "epoch"}
        return config


# Why an in-memory copy rather than Lightning's ModelCheckpoint or scvi-tools' SaveCheckpoint
# (read against Lightning 2.6 and scvi-tools 1.4.2):
#
# * With weight averaging (BestEpochEMA) the weights that are validated, and so the ones to keep,
#   are the average, swapped into the module for the validation epoch only. ModelCheckpoint
#   saves in ``on_validation_end``, after the swap back: with ``save_weights_only=True`` it stores
#   the raw weights, not those that scored (checked on a toy model). Only a full checkpoint holds
#   the average (WeightAveraging's ``on_save_checkpoint`` moves it into ``state_dict``), and a
#   full checkpoint also holds the raw weights, Adam's two moments, the loops' and callbacks'
#   states and the plan's hyper-parameters: about four copies of the weights written to disk at
#   every improvement, and read back with a pickle-enabled ``torch.load``.
# * SaveCheckpoint saves the whole model with ``model.save`` at every improvement (for scsalient:
#   the registry, gene names, history and indices as JSON besides the weights) and, to do so,
#   switches the module to eval mode and marks the model trained in the middle of the fit; its
#   ``load_best_on_end`` reads scvi-tools' pickled ``model.pt``, which scsalient's ``save`` does
#   not write (safetensors + JSON), so it cannot restore anything.
# * Only the module's weights matter (they are what the model saves and predicts with); the
#   plan's metric states and the distillation teacher (held outside the plan's submodules) do
#   not. One copy of the module's state dict, on the module's device, replaced at each
#   improvement, is the whole cost; nothing touches the disk.
class RestoreBestState(Callback):
    """Keep the module weights of the best epoch in memory and restore them when training ends.

    Used with early stopping instead of a checkpoint on disk (see the comment above the class):
    the copy is taken in ``on_validation_epoch_end``, while the weights that were validated
    (with :class:`BestEpochEMA`, the averaged ones) are still in the module, so the callback
    must come before :class:`BestEpochEMA` in the callback list.

    Parameters
    ----------
    monitor
        Logged metric to watch, e.g. ``"f1_macro_validation"``.
    mode
        ``"max"`` when larger is better.
    """

    def __init__(self, monitor: str = MONITOR, mode: Literal["min", "max"] = "max"):
        super().__init__()
        self.monitor = monitor
        self.mode = mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self._best_state: dict | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remember the weights if the monitored value improved."""
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        better = self.best_score is None or (
            score > self.best_score if self.mode == "max" else score < self.best_score
        )
        if better:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self._best_state = copy.deepcopy(pl_module.module.state_dict())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Load the best weights back into the module."""
        if self._best_state is not None:
            pl_module.module.load_state_dict(self._best_state)


class BestEpochEMA(EMAWeightAveraging):
    """Lightning's moving average of the weights, validated and kept by :class:`RestoreBestState`.

    The averaged weights are swapped in for each validation epoch (Lightning's behaviour), so
    the validation metrics, early stopping and the best epoch kept by
    :class:`RestoreBestState` (which must come before this callback) are those of the average.
    When training ends, the average is loaded unless :class:`RestoreBestState` restored the
    best epoch's averaged weights.

    Parameters
    ----------
    decay
        Weight of the running average at each optimiser step.
    best_epoch_restored
        Whether a :class:`RestoreBestState` runs before this callback (early stopping).
    """

    def __init__(self, decay: float, best_epoch_restored: bool):
        super().__init__(decay=decay)
        self.best_epoch_restored = best_epoch_restored

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Load the averaged weights, unless the best epoch's were restored."""
        if not self.best_epoch_restored:
            super().on_train_end(trainer, pl_module)
