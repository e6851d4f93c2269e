"""What every scsalient training plan shares: the fused Adam/AdamW update."""

from __future__ import annotations

import pytest
import torch

from scsalient.model.base._training_plan import ClassifierTrainingPlan
from scsalient.model.moduleae._module import ModuleAEModule
from scsalient.model.moduleae._plan import ModuleAETrainingPlan
from scsalient.model.nact._module import NACTModule
from scsalient.model.sctab._module import SCTABModule
from scsalient.model.translator._model import TranslatorTrainingPlan
from scsalient.model.translator._module import TranslatorModule


def _plans(optimizer: str):
    yield ClassifierTrainingPlan(NACTModule(40, 3, n_members=2), n_classes=3, lr=0.01, optimizer=optimizer)
    yield ClassifierTrainingPlan(SCTABModule(40, 3, n_members=2), n_classes=3, lr=0.01, optimizer=optimizer)
    yield TranslatorTrainingPlan(TranslatorModule(20, 60, n_members=2), lr=0.01, optimizer=optimizer)
    if optimizer == "Adam":  # ModuleAE's plan is Adam only
        yield ModuleAETrainingPlan(ModuleAEModule(40, n_latent=4), lr=0.01)


@pytest.mark.parametrize("optimizer", ["Adam", "AdamW"])
def test_every_plan_runs_its_optimizer_fused_on_cpu(optimizer):
    for plan in _plans(optimizer):
        # what configure_optimizers builds (ModuleAE's adds a schedule that needs a trainer)
        opt = plan.get_optimizer_creator()(p for p in plan.module.parameters() if p.requires_grad)
        assert type(opt).__name__ == optimizer, type(plan).__name__
        assert opt.defaults["fused"] is True, type(plan).__name__
        assert opt.defaults["lr"] == 0.01


@pytest.mark.parametrize("optimizer", ["Adam", "AdamW"])
def test_fused_step_is_the_default_step(optimizer):
    # same maths as PyTorch's default (foreach) update, to float32 rounding
    module = NACTModule(40, 3)
    plan = ClassifierTrainingPlan(module, n_classes=3, lr=0.01, weight_decay=0.1, optimizer=optimizer)
    torch.manual_seed(0)
    start = {k: v.clone() for k, v in plan.module.state_dict().items()}
    grads = [torch.randn_like(p) for p in plan.module.parameters()]

    def run(make):
        plan.module.load_state_dict(start)
        opt = make(list(plan.module.parameters()))
        for _ in range(3):
            for p, g in zip(plan.module.parameters(), grads):
                p.grad = g.clone()
            opt.step()
        return [p.detach().clone() for p in plan.module.parameters()]

    fused = run(plan.get_optimizer_creator())
    cls = getattr(torch.optim, optimizer)
    default = run(lambda params: cls(params, lr=0.01, eps=plan.eps, weight_decay=0.1))
    for a, b in zip(fused, default):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
