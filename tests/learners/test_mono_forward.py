"""Tests of `mono_forward`: local loss and gradients by hand, block isolation, schedules, readouts,
learning on digits with an MLP and a CNN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bioplaus.circuits.cnn import CNN
from bioplaus.circuits.mlp import MLP
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.learners.mono_forward import MonoForward
from bioplaus.registry import get_learner
from tests.floors import assert_above
from tests.helpers import capture_train_step, default_learner_options, fit


def tiny(hidden=(5,), classes=3, features=4, **kw) -> MonoForward:
    torch.manual_seed(0)
    task = Task((features,), classes)
    return MonoForward(MLP(task, hidden=hidden, head=False), task, **kw)


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_registered():
    cls = get_learner("mono_forward")
    assert cls is MonoForward
    assert cls.supports("mlp") and cls.supports("cnn")
    assert cls.circuit_head is False


def test_local_loss_and_gradients_by_hand():
    learner = tiny(optimizer="sgd", lr=0.1, momentum=0.0)
    dense = learner.circuit.blocks[0].linear
    W, b = dense.weight.detach().clone(), dense.bias.detach().clone()
    M = learner.projections[0].detach().clone()
    x = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 2, 1, 0])

    # closed form: z = xWᵀ + b, a = relu(z), G = aMᵀ, L = mean(logsumexp(G) − G_y)
    z = x @ W.t() + b
    a = z.clamp_min(0)
    G = a @ M.t()
    p = torch.exp(G - G.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    Y = torch.zeros_like(G)
    Y[torch.arange(6), y] = 1.0
    loss = (-torch.log(p[torch.arange(6), y])).mean()
    dG = (p - Y) / 6
    dM = dG.t() @ a
    dz = (dG @ M) * (z > 0).float()
    dW = dz.t() @ x
    db = dz.sum(0)

    metrics = learner.train_step(x, y)
    torch.testing.assert_close(metrics["loss_l1"], loss)
    torch.testing.assert_close(metrics["loss"], loss)
    torch.testing.assert_close(learner.projections[0].grad, dM)
    torch.testing.assert_close(dense.weight.grad, dW)
    torch.testing.assert_close(dense.bias.grad, db)
    # plain SGD: θ ← θ − lr ∇θ L
    torch.testing.assert_close(learner.projections[0].detach(), M - 0.1 * dM)
    torch.testing.assert_close(dense.weight.detach(), W - 0.1 * dW)
    assert metrics["accuracy"].shape == ()
    torch.testing.assert_close(metrics["accuracy"], (G.argmax(1) == y).float().mean())


def test_no_gradient_crosses_blocks():
    learner = tiny(hidden=(6, 5))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    losses, _ = learner.local_losses(x, y)
    losses[1].backward()
    for p in learner.block_params[0]:
        assert p.grad is None  # block 2's loss does not reach block 1 (nor M_1)
    assert all(p.grad is not None for p in learner.block_params[1])

    # the summed loss gives block 1 exactly the gradient of its own loss
    learner.zero_grad(set_to_none=True)
    losses, _ = learner.local_losses(x, y)
    losses[0].backward()
    own = [p.grad.clone() for p in learner.block_params[0]]
    learner.zero_grad(set_to_none=True)
    losses, _ = learner.local_losses(x, y)
    torch.stack(losses).sum().backward()
    for p, g in zip(learner.block_params[0], own, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_metrics_are_zero_dim():
    learner = tiny(hidden=(6, 5))
    metrics = learner.train_step(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    assert {"loss", "accuracy", "loss_l1", "loss_l2"} <= set(metrics)
    assert all(v.dim() == 0 for v in metrics.values())
    torch.testing.assert_close(metrics["loss"], metrics["loss_l1"] + metrics["loss_l2"])


def test_greedy_freezes_all_but_the_active_block():
    learner = tiny(hidden=(6, 5), schedule="greedy", greedy_epochs=2, weight_decay=1e-2)
    first, second = learner.block_params
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    def epoch():
        for _ in range(3):
            learner.train_step(x, y)

    assert int(learner.stage) == 0
    b1, b2 = snapshot(first), snapshot(second)
    epoch()
    assert not same(b1, first) and same(b2, second)  # stage 0: block 1 trains, block 2 waits
    learner.on_epoch_end(0)
    assert int(learner.stage) == 0  # greedy_epochs=2: still block 1
    learner.on_epoch_end(1)
    assert int(learner.stage) == 1
    b1, b2 = snapshot(first), snapshot(second)
    epoch()
    assert same(b1, first) and not same(b2, second)  # stage 1: block 1 frozen, block 2 trains
    for e in range(2, 6):
        learner.on_epoch_end(e)
    assert int(learner.stage) == 1  # the last block keeps training
    assert learner.rule_metrics()["greedy_stage_reached"] == 2


def test_a_run_that_ends_before_the_last_greedy_stage_is_warned_about(tmp_path):
    """The learner names the blocks that would never train; the engine logs it at the start."""
    learner = tiny(hidden=(6, 5, 4), schedule="greedy", greedy_epochs=2)
    assert learner.plan_warnings(5) == [] and tiny(hidden=(6, 5, 4)).plan_warnings(1) == []
    (warning,) = learner.plan_warnings(3)
    assert "blocks 1-2 of 3 in 3 epochs" in warning and "epoch 5" in warning
    import bioplaus

    cfg = bioplaus.compose(["learner=mono_forward", "learner.schedule=greedy", "learner.greedy_epochs=2",
                            "circuit.hidden=[8,8]", "trainer.epochs=2", f"paths.runs={tmp_path}"])
    summary = bioplaus.train(cfg, quiet=True)
    log = (Path(summary["run_dir"]) / "log.txt").read_text()
    assert "trains block 1 of 2 in 2 epochs; block 2 is never trained" in log


def test_greedy_stage_is_checkpointed():
    learner = tiny(hidden=(6, 5), schedule="greedy", greedy_epochs=1)
    learner.on_epoch_end(0)
    state = learner.state_dict()
    assert "stage" in state
    fresh = tiny(hidden=(6, 5), schedule="greedy", greedy_epochs=1)
    assert int(fresh.stage) == 0
    fresh.load_state_dict(state)
    assert int(fresh.stage) == 1 and fresh.epochs_seen == 1
    fresh.on_epoch_end(1)
    assert fresh.epochs_seen == 2 and int(fresh.stage) == 1


def test_simultaneous_updates_every_block():
    learner = tiny(hidden=(6, 5))
    before = [snapshot(g) for g in learner.block_params]
    learner.train_step(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    assert all(not same(b, g) for b, g in zip(before, learner.block_params, strict=True))


def test_lr_decay_per_epoch_and_per_stage():
    learner = tiny(hidden=(6, 5), lr=1e-2, lr_decay=0.5, schedule="greedy", greedy_epochs=2)
    rates = []
    for epoch in range(5):
        learner.on_epoch_end(epoch)
        rates.append(learner.optimizer.param_groups[0]["lr"])
    # stage 0 for epochs 1..2, then block 2 starts again from lr
    assert rates == pytest.approx([5e-3, 1e-2, 5e-3, 2.5e-3, 1.25e-3])


@pytest.mark.parametrize("readout", ["last", "sum"])
def test_readouts(readout):
    learner = tiny(hidden=(6, 5), readout=readout)
    x = torch.randn(7, 4)
    scores = learner.block_scores(x)
    out = learner.predictions(x)
    assert next(iter(out)) == readout and set(out) == {"last", "sum"}
    assert all(s.shape == (7, 3) for s in out.values())
    torch.testing.assert_close(out["last"], scores[-1])
    torch.testing.assert_close(out["sum"], scores[0] + scores[1])
    torch.testing.assert_close(learner.predict(x), out[readout])


@pytest.mark.parametrize(
    "kw", [{"schedule": "backwards"}, {"readout": "mean"}, {"greedy_epochs": 0}, {"optimizer": "lbfgs"},
           {"lr": -1.0}, {"weight_decay": -0.1}, {"lr_decay": 0.0}, {"lr_decay": 1.5}],
)
def test_bad_options_are_usage_errors(kw):
    with pytest.raises(UsageError):
        tiny(**kw)


def test_learns_digits_mlp(digits, untrained):
    def make():
        return MonoForward(MLP(digits.task, hidden=(128, 128), head=False), digits.task, lr=2e-3)

    torch.manual_seed(0)
    acc = fit(make(), digits, epochs=8)
    assert acc["last"] >= 0.93 and acc["sum"] >= 0.93
    frozen = untrained.fit("mono_forward mlp", make, digits, epochs=8)
    assert_above("mono_forward mlp last", acc["last"], frozen["last"], 0.05)
    assert_above("mono_forward mlp sum", acc["sum"], frozen["sum"], 0.03)


def test_learns_digits_greedy(digits, untrained):
    def make():
        return MonoForward(MLP(digits.task, hidden=(128, 128), head=False), digits.task, lr=2e-3,
                           schedule="greedy", greedy_epochs=4)

    torch.manual_seed(0)
    learner = make()
    acc = fit(learner, digits, epochs=8)
    assert int(learner.stage) == 1
    assert acc["last"] >= 0.9
    frozen = untrained.fit("mono_forward greedy", make, digits, epochs=8)
    assert_above("mono_forward greedy last", acc["last"], frozen["last"], 0.05)


def test_learns_digits_cnn(digits, untrained):
    def make():
        return MonoForward(CNN(digits.task, channels=(8, 16), head=False), digits.task, lr=2e-3)

    torch.manual_seed(0)
    learner = make()
    assert [p.shape[1] for p in learner.projections] == learner.circuit.block_widths
    acc = fit(learner, digits, epochs=3)
    assert acc["last"] >= 0.7  # chance is 0.1
    frozen = untrained.fit("mono_forward cnn", make, digits, epochs=3)
    assert_above("mono_forward cnn last", acc["last"], frozen["last"], 0.2)


def test_config_keys_match_constructor():
    cfg, options = default_learner_options("mono_forward", MonoForward)
    assert cfg.circuit.name == "mlp" and cfg.data.name == "digits"
    task = Task((1, 8, 8), 10)
    MonoForward(MLP(task, hidden=cfg.circuit.hidden, head=False), task, **options)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_greedy_train_step_captures_as_cuda_graph():
    torch.manual_seed(0)
    task = Task((4,), 3)
    learner = MonoForward(MLP(task, hidden=(6, 5), head=False).cuda(), task, schedule="greedy",
                          greedy_epochs=1)
    first, second = learner.block_params
    x, y = torch.randn(16, 4, device="cuda"), torch.randint(0, 3, (16,), device="cuda")
    graph, _ = capture_train_step(learner, x, y)
    b1, b2 = snapshot(first), snapshot(second)
    graph.replay()
    torch.cuda.synchronize()
    assert not same(b1, first) and same(b2, second)
    learner.on_epoch_end(0)  # the stage changes in place: the same graph now trains block 2
    b1, b2 = snapshot(first), snapshot(second)
    graph.replay()
    torch.cuda.synchronize()
    assert same(b1, first) and not same(b2, second)


def test_readouts_against_scores_computed_here():
    """`last` is G_L and `sum` is Σ_l G_l, with G_l = relu(a_{l−1} W_lᵀ + b_l) M_lᵀ computed in numpy
    from the weights (not from the learner's own block scores)."""
    import numpy as np

    learner = tiny(hidden=(6, 5))
    x = torch.randn(7, 4)
    a = x.numpy().astype(np.float64)
    scores = []
    for block, M in zip(learner.circuit.blocks, learner.projections, strict=True):
        W = block.linear.weight.detach().numpy().astype(np.float64)
        b = block.linear.bias.detach().numpy().astype(np.float64)
        a = np.maximum(a @ W.T + b, 0.0)
        scores.append(a @ M.detach().numpy().astype(np.float64).T)
    out = learner.predictions(x)
    np.testing.assert_allclose(out["last"].numpy(), scores[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["sum"].numpy(), scores[0] + scores[1], rtol=1e-5, atol=1e-6)
