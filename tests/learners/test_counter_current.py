"""Tests of `counter_current`: the level loss by hand, the feedback net's prototypes, level-wise
gradient isolation in both nets, capture-safe clipping, the conv mirror, options, and learning on
digits with the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bioplaus
from bioplaus.circuits.cnn import CNN
from bioplaus.circuits.mlp import MLP
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.learners.counter_current import CounterCurrent, level_loss
from bioplaus.registry import get_learner
from tests.floors import assert_above
from tests.helpers import capture_train_step, default_learner_options, forbid_host_reads

IMAGES = Task((1, 8, 8), 3)


def tiny(hidden=(6, 5), task=Task((4,), 3), **kw) -> CounterCurrent:
    torch.manual_seed(0)
    return CounterCurrent(MLP(task, hidden=hidden, activation="elu", bias=False), task, **kw)


def test_registered():
    cls = get_learner("counter_current")
    assert cls is CounterCurrent
    assert cls.supports("mlp") and cls.supports("cnn") and not cls.supports("rnn")
    assert cls.circuit_head is True


def test_level_loss_by_hand():
    A = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # batch 2, d 2
    P = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # C 2 prototypes
    Y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # labels 0, 1
    # S = A Pᵀ = [[1, 3], [0, 1]]; S − Y = [[0, 3], [0, 0]]; mean((S−Y)²) = 9/4
    # weight 256·λ/d = 256·0.5/2 = 64  ->  64 · 2.25 = 144
    torch.testing.assert_close(level_loss(A, P, Y), torch.tensor(144.0))
    torch.testing.assert_close(level_loss(A, P, Y, lam=0.25), torch.tensor(72.0))
    # pairwise: A − P[y] = [[0, 2], [−1, 0]]; mean_i ‖·‖² = (4 + 1)/2 = 2.5  ->  64 · 2.5 = 160
    torch.testing.assert_close(level_loss(A, P, Y, kind="pairwise"), torch.tensor(160.0))


def test_normalised_level_loss_by_hand():
    A = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # rows -> [.6, .8], [0, 1]
    P = torch.tensor([[1.0, 0.0], [0.0, 5.0]])  # rows -> [1, 0], [0, 1]
    Y = torch.eye(2)
    # S = Â P̂ᵀ = [[.6, .8], [0, 1]]; (S − Y)² = [[.16, .64], [0, 0]]; mean .2; ×64 = 12.8
    torch.testing.assert_close(level_loss(A, P, Y, normalize=True), torch.tensor(12.8))
    # ÂÂᵀ − I = [[0, .8], [.8, 0]] -> mean .32; P̂P̂ᵀ − I = 0; λ_ssl = 0.5 adds .16
    torch.testing.assert_close(level_loss(A, P, Y, normalize=True, ssl_weight=0.5), torch.tensor(12.96))
    torch.testing.assert_close(level_loss(A, P, Y, normalize=True, ssl_weight=0.5, activity_ssl=False),
                               torch.tensor(12.8))


def test_prototypes_run_the_feedback_net_on_the_class_codes():
    learner = tiny()
    protos = learner.prototypes()
    assert [tuple(p.shape) for p in protos] == [(3, 4), (3, 6), (3, 5)]  # levels 0, 1, 2
    B3 = learner.feedback[2].linear.weight.detach()  # mirror of the head: C -> 5
    B2 = learner.feedback[1].linear.weight.detach()  # 5 -> 6
    B1 = learner.feedback[0].linear.weight.detach()  # 6 -> input (linear, no ELU)
    c2 = F.elu(torch.eye(3) @ B3.T)
    c1 = F.elu(c2 @ B2.T)
    c0 = c1 @ B1.T
    for got, want in zip(protos, [c0, c1, c2], strict=True):
        torch.testing.assert_close(got, want)
    assert all(p.bias is None for m in learner.feedback for p in [m.linear])


def test_each_level_trains_only_its_own_pair():
    """Level l reaches F_l and B_{l+1} only; the head's CE reaches F_L only."""
    learner = tiny()
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    forward, feedback = list(learner.circuit.blocks), list(learner.feedback)
    L = len(forward)
    for which in range(L + 1):  # levels 0..L−1, then the CE
        learner.zero_grad(set_to_none=True)
        levels, ce, _, _ = learner.losses(x, y)
        [*levels, ce][which].backward()
        for l in range(L):
            f_grad = forward[l].linear.weight.grad
            b_grad = feedback[l].linear.weight.grad
            # forward block index l is F_{l+1}: trained by level l+1 (or the CE for the head)
            assert (f_grad is not None) == (l + 1 == which or (l == L - 1 and which == L)), (which, l)
            assert (b_grad is not None) == (l == which), (which, l)


def test_train_step_metrics_and_both_nets_move():
    learner = tiny()
    before_f = [p.detach().clone() for p in learner.forward_params]
    before_b = [p.detach().clone() for p in learner.feedback_params]
    metrics = learner.train_step(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    assert {"loss", "ce", "level_loss", "accuracy"} <= set(metrics)
    assert all(v.dim() == 0 for v in metrics.values())
    torch.testing.assert_close(metrics["loss"], metrics["level_loss"] + metrics["ce"])
    assert all(not torch.equal(a, p) for a, p in zip(before_f, learner.forward_params, strict=True))
    assert all(not torch.equal(a, p) for a, p in zip(before_b, learner.feedback_params, strict=True))


def test_clipping_bounds_each_net():
    # after a step with large inputs, each net's gradient has norm ≤ clip
    learner = tiny(clip=0.5)
    learner.train_step(100 * torch.randn(8, 4), torch.randint(0, 3, (8,)))
    for group in (learner.forward_params, learner.feedback_params):
        total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in group]))
        assert total <= 0.5 + 1e-4


@pytest.mark.parametrize("shape,channels,kernel", [((1, 8, 8), (3, 4), 3), ((1, 28, 28), (2, 3, 4), 3),
                                                   ((3, 9, 9), (2,), 2)])
def test_conv_mirror_lands_on_every_level(shape, channels, kernel):
    torch.manual_seed(0)
    task = Task(shape, 3)
    circuit = CNN(task, channels=channels, kernel_size=kernel, hidden=(5,), activation="elu", bias=False)
    learner = CounterCurrent(circuit, task)
    assert learner.normalize  # auto: on for a cnn
    acts = learner.forward_activities(torch.randn(2, *shape))
    protos = learner.prototypes()
    assert len(protos) == len(acts) - 1
    for a, p in zip(acts, protos, strict=False):
        assert a.shape[1:] == p.shape[1:]
    assert not tiny().normalize  # auto: off for an mlp
    assert tiny(loss="pairwise").normalize  # auto: on for the pairwise loss, which collapses without


def test_cnn_levels_are_isolated():
    torch.manual_seed(0)
    circuit = CNN(IMAGES, channels=(3, 4), hidden=(5,), activation="elu", bias=False)
    learner = CounterCurrent(circuit, IMAGES)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    levels = learner.losses(x, y)[0]
    levels[2].backward()  # level 2 = output of the second conv block
    touched = [all(p.grad is not None for p in b.parameters()) for b in learner.circuit.blocks]
    assert touched == [False, True, False, False]
    touched = [all(p.grad is not None for p in m.parameters()) for m in learner.feedback]
    assert touched == [False, False, True, False]


@pytest.mark.parametrize(
    "kw", [{"loss": "cosine"}, {"normalize": "yes"}, {"lam": -1.0}, {"clip": -1.0},
           {"optimizer": "lbfgs"}, {"lr": 0.0}, {"ssl_weight": -0.1}],
)
def test_bad_options_are_usage_errors(kw):
    with pytest.raises(UsageError):
        tiny(**kw)


def test_needs_a_head():
    task = Task((4,), 3)
    with pytest.raises(UsageError, match="head"):
        CounterCurrent(MLP(task, hidden=(5,), head=False), task)


def test_config_keys_match_constructor():
    cfg, _ = default_learner_options("counter_current", CounterCurrent)
    assert cfg.circuit.name == "mlp" and cfg.data.name == "digits"
    assert cfg.circuit.activation == "elu" and cfg.circuit.bias is False


def test_learns_digits_with_its_defaults(tmp_path: Path, untrained):
    cfg = bioplaus.compose(["learner=counter_current", f"paths.runs={tmp_path}", "device=cpu",
                            "trainer.checkpoint=false"])
    summary = bioplaus.train(cfg, quiet=True)
    assert summary["status"] == "completed"
    assert summary["test_accuracy"] >= 0.90, summary["test_accuracy"]
    # the prototypes of the feedback net classify too: both nets learned to align
    assert summary["test_accuracy_prototype"] >= 0.90, summary["test_accuracy_prototype"]
    # above the same readouts with the forward net's hidden levels frozen (head and feedback net trained)
    frozen = untrained.run(["learner=counter_current", "device=cpu"])
    for readout, margin in (("logits", 0.01), ("prototype", 0.1)):
        key = f"test_accuracy_{readout}"
        assert_above(f"counter_current mlp {readout}", summary[key], frozen[key], margin)


CNN_RUN = ["learner=counter_current", "circuit=cnn", "circuit.channels=[4,8]", "circuit.hidden=[]",
           "trainer.epochs=8", "device=cpu"]


def test_learns_digits_on_a_cnn(tmp_path: Path, untrained):
    cfg = bioplaus.compose([*CNN_RUN, f"paths.runs={tmp_path}", "trainer.checkpoint=false"])
    summary = bioplaus.train(cfg, quiet=True)
    assert summary["status"] == "completed"
    assert summary["test_accuracy"] >= 0.7, summary["test_accuracy"]  # chance is 0.1
    frozen = untrained.run(CNN_RUN)
    assert_above("counter_current cnn", summary["test_accuracy"], frozen["test_accuracy"], 0.05)


def test_train_step_never_reads_a_tensor_on_the_host(monkeypatch):
    """No .item(), bool(), float() or int() of a tensor inside train_step (what would sync a GPU)."""
    learner = tiny()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    learner.train_step(x, y)  # optimizer state created outside the check

    forbid_host_reads(monkeypatch)
    learner.train_step(x, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_step_captures_as_cuda_graph():
    torch.manual_seed(0)
    task = Task((4,), 3)
    learner = CounterCurrent(MLP(task, hidden=(6, 5), activation="elu", bias=False).cuda(), task).cuda()
    x, y = torch.randn(16, 4, device="cuda"), torch.randint(0, 3, (16,), device="cuda")
    graph, _ = capture_train_step(learner, x, y, forbid_sync=True)
    before = [p.detach().clone() for p in learner.feedback_params]
    graph.replay()
    torch.cuda.synchronize()
    assert all(not torch.equal(b, p) for b, p in zip(before, learner.feedback_params, strict=True))


def test_state_dict_round_trip():
    learner = tiny()
    learner.train_step(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    state = learner.state_dict()
    assert any(k.startswith("feedback.") for k in state) and "class_codes" in state
    torch.manual_seed(5)
    fresh = CounterCurrent(MLP(Task((4,), 3), hidden=(6, 5), activation="elu", bias=False), Task((4,), 3))
    fresh.load_state_dict(state)
    x = torch.randn(5, 4)
    for key, scores in learner.predictions(x).items():
        torch.testing.assert_close(fresh.predictions(x)[key], scores)
