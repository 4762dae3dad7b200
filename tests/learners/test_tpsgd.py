"""Tests of `tpsgd` (target projection) and its `drtp` variant: targets and updates by hand, no
gradient across blocks on mlp / cnn / rnn, options, and learning on digits with the defaults."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bioplaus
from bioplaus.circuits.cnn import CNN
from bioplaus.circuits.mlp import MLP
from bioplaus.circuits.rnn import RNN
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.learners.tpsgd import TargetProjection
from bioplaus.registry import get_learner
from tests.floors import assert_above
from tests.helpers import capture_train_step, default_learner_options, forbid_host_reads

TASK = Task((3,), 4)


def tiny(hidden=(5,), task=TASK, **kw) -> TargetProjection:
    torch.manual_seed(0)
    return TargetProjection(MLP(task, hidden=hidden, activation="tanh"), task, **kw)


def test_registered():
    cls = get_learner("tpsgd")
    assert cls is TargetProjection
    assert all(cls.supports(c) for c in ("mlp", "cnn", "rnn"))
    assert cls.circuit_head is True


def test_target_is_the_projected_label():
    learner = tiny(hidden=(5, 6))
    y = torch.tensor([2, 0, 3])
    targets = learner.targets(y)
    assert [t.shape for t in targets] == [(3, 5), (3, 6)]
    for P, t in zip(learner.projections, targets, strict=True):
        assert P.shape[1] == 4
        for i, label in enumerate(y.tolist()):
            torch.testing.assert_close(t[i], P[:, label])  # P y* picks column y
    # fixed: buffers in the state dict, no parameters, identical for the same seed
    assert "projection_1" in learner.state_dict()
    assert not any(p is learner.projection_1 for p in learner.parameters())
    torch.testing.assert_close(tiny(hidden=(5, 6)).projection_2, learner.projection_2)
    torch.manual_seed(1)
    other = TargetProjection(MLP(TASK, hidden=(5, 6), activation="tanh"), TASK)
    assert not torch.equal(other.projection_1, learner.projection_1)


def test_drtp_hidden_update_by_hand():
    """W ← W − lr · mean_i[(Bᵀy*_i ⊙ f′(z_i)) x_iᵀ] with SGD lr 1, whatever the head does."""
    learner = tiny(variant="drtp", optimizer="sgd", lr=1.0, momentum=0.0)
    dense = learner.circuit.blocks[0].linear
    W, b = dense.weight.detach().clone(), dense.bias.detach().clone()
    B_t = learner.projection_1.clone()  # (d, C) = Bᵀ
    x = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]])
    y = torch.tensor([1, 3])
    z = x @ W.T + b
    signal = torch.stack([B_t[:, 1], B_t[:, 3]])  # Bᵀ y* per example
    delta = signal * (1 - torch.tanh(z) ** 2)  # ⊙ f′(z), f = tanh
    expected_dW = (delta.T @ x) / 2
    learner.train_step(x, y)
    torch.testing.assert_close(dense.weight.detach(), W - expected_dW)
    torch.testing.assert_close(dense.bias.detach(), b - delta.mean(0))
    metrics = learner.train_step(x, y)
    assert set(metrics) == {"loss", "ce", "accuracy", "alignment_l1"}
    torch.testing.assert_close(metrics["loss"], metrics["ce"])


def test_drtp_signal_ignores_the_output():
    """The hidden block's gradient is the same whatever the head computes."""
    learner = tiny(variant="drtp")
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])

    def hidden_grad():
        learner.zero_grad(set_to_none=True)
        losses, ce, _ = learner.local_losses(x, y)
        (torch.stack(losses).sum() + ce).backward()
        return learner.circuit.blocks[0].linear.weight.grad.clone()

    before = hidden_grad()
    with torch.no_grad():
        learner.circuit.blocks[-1].linear.weight.mul_(-7.0).add_(1.0)
    torch.testing.assert_close(hidden_grad(), before)


def test_tpsgd_mse_update_by_hand():
    learner = tiny(optimizer="sgd", lr=0.5, momentum=0.0)
    dense = learner.circuit.blocks[0].linear
    W, b = dense.weight.detach().clone(), dense.bias.detach().clone()
    P = learner.projection_1.clone()
    x = torch.tensor([[1.0, 2.0, -1.0], [0.0, -1.0, 0.5], [2.0, 0.0, 1.0]])
    y = torch.tensor([0, 2, 2])
    z = x @ W.T + b
    a = torch.tanh(z)
    t = P[:, y].T
    J = ((a - t) ** 2).mean()
    dz = 2 * (a - t) / a.numel() * (1 - a**2)
    metrics = learner.train_step(x, y)
    torch.testing.assert_close(metrics["loss_l1"], J)
    torch.testing.assert_close(dense.weight.detach(), W - 0.5 * dz.T @ x)
    torch.testing.assert_close(dense.bias.detach(), b - 0.5 * dz.sum(0))


def test_l1_and_ce_local_losses_by_hand():
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    for kind in ("l1", "ce"):
        learner = tiny(local_loss=kind)
        losses, _, _ = learner.local_losses(x, y)
        a = learner.circuit.blocks[0](x)
        P = learner.projection_1
        if kind == "l1":
            expected = (a - P[:, y].T).abs().mean()
        else:  # s_c = ⟨a, P e_c⟩ / √d
            expected = F.cross_entropy(a @ P / math.sqrt(5), y)
        torch.testing.assert_close(losses[0], expected)


def isolated(learner: TargetProjection, x: torch.Tensor, y: torch.Tensor) -> None:
    """A loss at one block leaves every other block's gradients untouched (None)."""
    blocks = list(learner.circuit.blocks)
    n = len(blocks)
    for which in range(n):
        learner.zero_grad(set_to_none=True)
        losses, ce, _ = learner.local_losses(x, y)
        [*losses, ce][which].backward()
        for l, block in enumerate(blocks):
            grads = [p.grad for p in block.parameters()]
            if l == which:
                assert all(g is not None and g.abs().sum() > 0 for g in grads), (which, l)
            else:
                assert all(g is None for g in grads), (which, l)


@pytest.mark.parametrize("variant", ["tpsgd", "drtp"])
def test_no_gradient_crosses_blocks(variant):
    torch.manual_seed(0)
    images = Task((1, 8, 8), 3)
    x, y = torch.randn(8, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for circuit in (MLP(images, hidden=(6, 5), activation="tanh"),
                    CNN(images, channels=(3, 4), hidden=(5,), activation="tanh"),
                    RNN(images, hidden=(6, 5))):
        isolated(TargetProjection(circuit, images, variant=variant), x, y)
    isolated(TargetProjection(RNN(images, hidden=(6, 5)), images, variant=variant,
                              sequence_target="all"), x, y)


def test_sequence_targets():
    torch.manual_seed(0)
    task = Task((4, 3), 2)
    x, y = torch.randn(5, 4, 3), torch.tensor([0, 1, 1, 0, 1])
    last = TargetProjection(RNN(task, hidden=(6,)), task)
    every = TargetProjection(RNN(task, hidden=(6,)), task, sequence_target="all")
    every.load_state_dict(last.state_dict())
    states = last.circuit.blocks[0](x)  # (5, 4 steps, 6)
    t = last.projection_1[:, y].T
    torch.testing.assert_close(last.local_losses(x, y)[0][0], ((states[:, -1] - t) ** 2).mean())
    torch.testing.assert_close(every.local_losses(x, y)[0][0], ((states - t[:, None]) ** 2).mean())
    # drtp on every step: the surrogate is the step-mean of ⟨g, s_t⟩
    drtp = TargetProjection(RNN(task, hidden=(6,)), task, variant="drtp", sequence_target="all")
    drtp.load_state_dict(last.state_dict())
    expected = (states * t[:, None]).sum(-1).mean()
    torch.testing.assert_close(drtp.local_losses(x, y)[0][0], expected)


def test_metrics_are_zero_dim():
    learner = tiny(hidden=(6, 5))
    metrics = learner.train_step(torch.randn(8, 3), torch.randint(0, 4, (8,)))
    assert {"loss", "ce", "accuracy", "loss_l1", "loss_l2"} <= set(metrics)
    assert all(v.dim() == 0 for v in metrics.values())
    torch.testing.assert_close(metrics["loss"], metrics["ce"] + metrics["loss_l1"] + metrics["loss_l2"])


@pytest.mark.parametrize(
    "kw", [{"variant": "fa"}, {"local_loss": "hinge"}, {"projection": "sparse"},
           {"sequence_target": "first"}, {"projection_scale": 0.0}, {"optimizer": "lbfgs"},
           {"lr": -1.0}, {"weight_decay": -1.0}],
)
def test_bad_options_are_usage_errors(kw):
    with pytest.raises(UsageError):
        tiny(**kw)


def test_needs_a_head():
    with pytest.raises(UsageError, match="head"):
        TargetProjection(MLP(TASK, hidden=(5,), head=False), TASK)


def test_config_keys_match_constructor():
    cfg, _ = default_learner_options("tpsgd", TargetProjection)
    assert cfg.circuit.name == "mlp" and cfg.data.name == "digits"


def run_defaults(tmp_path: Path, *overrides: str) -> tuple[dict, list[dict]]:
    cfg = bioplaus.compose(["learner=tpsgd", f"paths.runs={tmp_path}", "device=cpu",
                            "trainer.checkpoint=false", *overrides])
    summary = bioplaus.train(cfg, quiet=True)
    assert summary["status"] == "completed"
    epochs = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").open()]
    return summary, epochs


def test_tpsgd_learns_digits_with_its_defaults(tmp_path: Path):
    summary, epochs = run_defaults(tmp_path)
    assert summary["test_accuracy"] >= 0.88, summary["test_accuracy"]
    # the hidden blocks learn their targets (a frozen or broken hidden rule would not)
    for key in ("train_loss_l1", "train_loss_l2"):
        assert epochs[-1][key] <= 0.5 * epochs[0][key], (key, epochs[0][key], epochs[-1][key])


def test_drtp_learns_digits_with_its_defaults(tmp_path: Path):
    summary, epochs = run_defaults(tmp_path, "learner.variant=drtp")
    assert summary["test_accuracy"] >= 0.85, summary["test_accuracy"]
    # the hidden activity moves along −Bᵀy* (cosine ≈ 0 for an untrained block)
    for key in ("train_alignment_l1", "train_alignment_l2"):
        assert epochs[-1][key] >= 0.5, (key, epochs[-1][key])


RNN_RUN = ("circuit=rnn", "circuit.hidden=[64]", "trainer.epochs=10")


def test_tpsgd_trains_an_rnn(tmp_path: Path, untrained):
    """Above the same RNN with its recurrent block frozen at its initial weights (readout trained)."""
    summary, _ = run_defaults(tmp_path, *RNN_RUN)
    frozen = untrained.run(["learner=tpsgd", "device=cpu", *RNN_RUN])
    assert_above("tpsgd rnn", summary["test_accuracy"], frozen["test_accuracy"], 0.1)


@pytest.mark.parametrize("variant", ["tpsgd", "drtp"])
def test_train_step_never_reads_a_tensor_on_the_host(monkeypatch, variant):
    """No .item(), bool(), float() or int() of a tensor inside train_step (what would sync a GPU)."""
    # sgd: CPU Adam (not capturable there) reads its step count on the host by design; on CUDA
    # make_optimizer builds it capturable
    learner = tiny(hidden=(6, 5), variant=variant, optimizer="sgd")
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    learner.train_step(x, y)

    forbid_host_reads(monkeypatch)
    learner.train_step(x, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", ["tpsgd", "drtp"])
def test_train_step_captures_as_cuda_graph(variant):
    torch.manual_seed(0)
    task = Task((1, 8, 8), 3)
    learner = TargetProjection(RNN(task, hidden=(6,)).cuda(), task, variant=variant).cuda()
    x, y = torch.randn(16, 1, 8, 8, device="cuda"), torch.randint(0, 3, (16,), device="cuda")
    graph, _ = capture_train_step(learner, x, y)
    before = [p.detach().clone() for p in learner.circuit.parameters()]
    graph.replay()
    torch.cuda.synchronize()
    assert all(not torch.equal(b, p) for b, p in zip(before, learner.circuit.parameters(), strict=True))
