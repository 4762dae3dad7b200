"""Optimizer helpers: lr schedules, optimizer-state masking, and the engine's structural-step hook."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import bioplaus
from bioplaus import registry
from bioplaus.circuits.mlp import MLP
from bioplaus.errors import UsageError
from bioplaus.optim import apply_schedule, lr_factor, make_optimizer, mask_optimizer_state, set_lr


def test_lr_factors_by_hand() -> None:
    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert lr_factor("cosine", 2, 8) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("cooldown", 5, 10) == 1.0
    assert lr_factor("cooldown", 6, 10) == pytest.approx(0.8)
    assert lr_factor("cooldown", 9, 10) == pytest.approx(0.2)
    with pytest.raises(UsageError, match="cosine"):
        lr_factor("step", 1, 10)


def test_apply_schedule_scales_from_the_base_lr() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([p], "sgd", lr=0.2)
    apply_schedule([opt], 0.5)
    apply_schedule([opt], 0.25)  # from the base 0.2, not compounded
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    set_lr(opt, 0.3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3)


def test_mask_optimizer_state_zeroes_masked_moments() -> None:
    w = torch.nn.Parameter(torch.ones(2, 3))
    opt = make_optimizer([w], "adam", lr=0.1)
    w.grad = torch.ones(2, 3)
    opt.step()
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    mask_optimizer_state([opt], {w: mask})
    state = opt.state[w]
    assert torch.equal(state["exp_avg"] == 0, mask == 0)
    assert torch.equal(state["exp_avg_sq"] == 0, mask == 0)


class _PruningMLP(MLP):
    """Test circuit: prunes the first block's weight column 0 at step 3."""

    name = "test_pruning_mlp"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def structural_step(self, step: int) -> bool:
        self.calls.append(step)
        if step == 3:
            with torch.no_grad():
                self.blocks[0].linear.weight[:, 0] = 0.0
            return True
        return False

    def parameter_masks(self) -> dict[str, torch.Tensor]:
        mask = torch.ones_like(self.blocks[0].linear.weight)
        mask[:, 0] = 0.0
        return {"blocks.0.linear.weight": mask}


def test_engine_calls_structural_step_and_masks_optimizer_state(tmp_path: Path) -> None:
    registry.register_circuit(_PruningMLP)
    try:
        cfg = bioplaus.compose(["learner=backprop", "circuit.hidden=[16]", "trainer.epochs=1"], check=False)
        cfg.circuit.name = "test_pruning_mlp"
        registry.get_learner("backprop").circuits += ("test_pruning_mlp",)
        data, circuit, learner = bioplaus.build(cfg)
        from bioplaus.engine import _Loop

        loop = _Loop(cfg, tmp_path, (data, circuit, learner), quiet=True, resume=False)
        # stop after 3 steps: a batch size that gives exactly 3 steps per epoch
        cfg.trainer.batch_size = data.train_x.shape[0] // 3
        loop._train_epoch(1)
        assert circuit.calls == [1, 2, 3]
        state = learner.optimizer.state[circuit.blocks[0].linear.weight]
        assert float(state["exp_avg"][:, 0].abs().sum()) == 0.0
        assert float(state["exp_avg"][:, 1:].abs().sum()) > 0.0
    finally:
        registry._CIRCUITS.pop("test_pruning_mlp", None)
        backprop = registry._LEARNERS["backprop"]
        backprop.circuits = tuple(c for c in backprop.circuits if c != "test_pruning_mlp")
