from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from scsalient.model.base import BestEpochEMA, RestoreBestState

#: the validation score of each epoch, scripted: the best epoch is known in advance
SCORES = [0.2, 0.9, 0.5, 0.4]


class Plan(pl.LightningModule):
    """A training plan in miniature: the weights live in ``self.module``, as in scvi-tools' plans."""

    def __init__(self):
        super().__init__()
        self.module = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.module(x).squeeze(-1) - y) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        score = SCORES[self.current_epoch]
        self.log("score", torch.tensor(score), on_epoch=True)
        self.log("loss", torch.tensor(1.0 - score), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Validated(pl.Callback):
    """Records the module weights each validation epoch ran with (the average under EMA)."""

    def __init__(self):
        self.weights = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.weights.append({k: v.clone() for k, v in pl_module.module.state_dict().items()})


def _fit(tmp_path, callbacks) -> Plan:
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    loader = DataLoader(TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5])), batch_size=8)
    plan = Plan()
    trainer = pl.Trainer(
        max_epochs=len(SCORES),
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(plan, loader, loader)
    return plan


@pytest.mark.parametrize(("monitor", "mode"), [("score", "max"), ("loss", "min")])
def test_restores_the_weights_validated_at_the_best_epoch(tmp_path, monitor, mode):
    validated = Validated()
    restore = RestoreBestState(monitor=monitor, mode=mode)
    plan = _fit(tmp_path, [validated, restore])
    assert restore.best_epoch == 1
    for name, value in plan.module.state_dict().items():
        torch.testing.assert_close(value, validated.weights[1][name])
    assert not torch.equal(plan.module.weight, validated.weights[-1]["weight"])
    assert list(tmp_path.iterdir()) == []  # kept in memory: nothing written to disk


def test_with_weight_averaging_restores_the_average_that_was_validated(tmp_path):
    # the average is in the module only during validation; the best epoch's average is kept,
    # neither the raw weights of that epoch nor the average at the end
    validated = Validated()
    raw = []

    class RawWeights(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            raw.append(pl_module.module.weight.detach().clone())

    plan = _fit(
        tmp_path,
        [
            RawWeights(),
            validated,
            RestoreBestState("score", "max"),
            BestEpochEMA(0.8, best_epoch_restored=True),
        ],
    )
    torch.testing.assert_close(plan.module.weight, validated.weights[1]["weight"])
    assert not torch.allclose(plan.module.weight, raw[1])
    assert not torch.allclose(plan.module.weight, validated.weights[-1]["weight"])
