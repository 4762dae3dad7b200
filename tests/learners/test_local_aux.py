"""Tests of `local_aux`: module split, DGL and InfoPro losses by hand, gradient isolation between
modules, K = 1 is backprop, activation memory against backprop, learning on digits."""

from __future__ import annotations

import math

import pytest
import torch

from bioplaus.circuits.cnn import CNN
from bioplaus.circuits.mlp import MLP
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.functional import SavedActivationMeter, saved_activation_peak
from bioplaus.learners.backprop import Backprop
from bioplaus.learners.local_aux import (
    LocalAux,
    auglocal_depths,
    fresh_copy,
    pick_uniformly,
    split_into_modules,
)
from tests.floors import assert_above
from tests.helpers import default_learner_options, fit


def set_linear(linear: torch.nn.Linear, weight: list, bias: list) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))


def test_split_into_modules():
    assert split_into_modules(3, None) == [range(0, 1), range(1, 2), range(2, 3)]
    assert split_into_modules(5, 2) == [range(0, 3), range(3, 5)]
    assert split_into_modules(5, 1) == [range(0, 5)]
    for bad in (0, 6, True, 2.5):
        with pytest.raises(UsageError, match=r"learner\.modules"):
            split_into_modules(5, bad)


def two_class_net(aux="dgl", **kw) -> LocalAux:
    """x ∈ R², one hidden ReLU block of 2 units (identity weights), head of 2 classes."""
    task = Task((2,), 2)
    circuit = MLP(task, hidden=(2,))
    learner = LocalAux(circuit, task, aux=aux, **kw)
    set_linear(circuit.blocks[0].linear, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    set_linear(learner.classifiers[0].mlp[0], [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    return learner


def test_dgl_loss_by_hand():
    learner = two_class_net()
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    h = learner.run_module(0, x)
    assert torch.equal(h, torch.tensor([[1.0, 2.0]]))  # ReLU(I x)
    # logits = I h = (1, 2); CE for class 1 = −log(e²/(e¹+e²)) = log(1 + e^{−1})
    expected = math.log(1.0 + math.exp(-1.0))
    assert learner.module_loss(0, h, x, y).item() == pytest.approx(expected, abs=1e-6)


def test_infopro_loss_by_hand():
    learner = two_class_net(aux="infopro", recon_weight=0.5)
    set_linear(learner.decoders[0].linear, [[0.0, 1.0], [1.0, 0.0]], [0.5, 0.0])  # x̂ = swap(h) + (.5, 0)
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    h = learner.run_module(0, x)
    # x̂ = (2.5, 1): squared errors (1.5², 1²) = (2.25, 1), mean 1.625, times λ = 0.5
    expected = math.log(1.0 + math.exp(-1.0)) + 0.5 * 1.625
    assert learner.module_loss(0, h, x, y).item() == pytest.approx(expected, abs=1e-6)


def three_module_net(aux="dgl") -> LocalAux:
    torch.manual_seed(0)
    task = Task((6,), 3)
    return LocalAux(MLP(task, hidden=(5, 4)), task, aux=aux)


def test_auglocal_depths_and_choice_by_hand():
    # d_k = round(4·(1 − 0.5·k/2)) for k = 0, 1, 2: 4, 3, 2; capped by the blocks left
    assert auglocal_depths([6, 5, 4], 4, 0.5) == [4, 3, 2]
    assert auglocal_depths([6, 2, 0], 4, 0.5) == [4, 2, 0]
    assert auglocal_depths([3, 3, 3], 2, 0.0) == [2, 2, 2]
    assert pick_uniformly([3, 4, 5, 6], 2) == [4, 6]
    assert pick_uniformly([3, 4, 5, 6], 1) == [6]
    assert pick_uniformly([3, 4, 5, 6], 4) == [3, 4, 5, 6]


def test_auglocal_copies_later_blocks_afresh():
    torch.manual_seed(0)
    task = Task((6,), 3)
    circuit = MLP(task, hidden=(5, 7, 7, 4))
    learner = LocalAux(circuit, task, aux="auglocal", aux_depth=2, depth_decay=0.5)
    # hidden modules 1..4 have 3, 2, 1, 0 hidden blocks after them; depths round(2·(1 − 0.5·k/3))
    assert learner.aux_blocks == [[2, 3], [2, 3], [3], []]
    first = learner.classifiers[0]
    assert [m.out_features for m in first[:2]] == [7, 4]
    assert first[0].linear.in_features == 5  # chained from module 1's output, not block 2's input
    assert not torch.equal(first[1].linear.weight, circuit.blocks[3].linear.weight)  # fresh weights
    assert len(learner.classifiers[3]) == 1  # the last hidden module: the classifier alone
    conv = CNN(Task((1, 8, 8), 3), channels=(4, 6))
    copy = fresh_copy(conv.blocks[1], (2, 8, 8))
    assert copy.conv.in_channels == 2 and copy.conv.out_channels == 6
    assert copy(torch.zeros(1, 2, 8, 8)).shape == (1, 6, 4, 4)


@pytest.mark.parametrize("aux", ["dgl", "infopro", "auglocal"])
def test_a_module_loss_reaches_only_its_module(aux):
    learner = three_module_net(aux)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    h1 = learner.run_module(0, x)
    h2 = learner.run_module(1, h1.detach())
    learner.module_loss(1, h2, x, y).backward()
    blocks = learner.circuit.blocks
    own = [*blocks[1].parameters(), *learner.classifiers[1].parameters()]
    if aux == "infopro":
        own += list(learner.decoders[1].parameters())
    others = [*blocks[0].parameters(), *blocks[2].parameters(), *learner.classifiers[0].parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    assert all(p.grad is None for p in others)


@pytest.mark.parametrize("aux", ["dgl", "infopro", "auglocal", "man"])
def test_train_step_isolates_the_first_module_from_the_later_ones(aux):
    """Through `train_step` alone: two nets equal in module 1 and different in modules 2 and 3 give
    module 1 (its block and auxiliary nets) bit-identical gradients — no later loss reaches it."""
    first = ("circuit.blocks.0.", "classifiers.0.", "decoders.0.", "lb_copies.0.")
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    grads = []
    for perturb in (False, True):
        learner = three_module_net(aux)
        if perturb:
            with torch.no_grad():
                for name, p in learner.named_parameters():
                    if not name.startswith(first) and not name.startswith("ema_copies"):
                        p.add_(torch.randn_like(p))
        torch.manual_seed(1)
        learner.train_step(x, y)
        grads.append({n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None})
    module_one = [n for n in grads[0] if n.startswith(first)]
    assert any(n.startswith("circuit.blocks.0.") for n in module_one)
    for name in module_one:
        assert torch.equal(grads[0][name], grads[1][name]), name
    later = [n for n in grads[0] if n.startswith("circuit.blocks.1.")]
    assert later and any(not torch.equal(grads[0][n], grads[1][n]) for n in later)


def test_train_step_gives_each_module_its_own_gradient():
    learner = three_module_net("infopro")
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    expected = {}
    h = x
    for k in range(3):  # each module's loss alone, on the detached output of the one before
        learner.zero_grad(set_to_none=True)
        h = learner.run_module(k, h.detach())
        learner.module_loss(k, h, x, y).backward()
        expected.update({n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None})
    learner.optimizer.step = lambda *a, **k: None  # keep the weights: compare the gradients
    learner.train_step(x, y)
    for name, param in learner.named_parameters():
        assert torch.allclose(param.grad, expected[name], atol=1e-7), name


def test_one_module_is_backprop():
    """K = 1: the whole circuit is one module ending in the head — exactly backprop's step."""
    task = Task((6,), 3)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    weights = []
    for make in (lambda c: Backprop(c, task, lr=1e-2), lambda c: LocalAux(c, task, modules=1, lr=1e-2)):
        torch.manual_seed(0)
        learner = make(MLP(task, hidden=(5, 4)))
        for _ in range(3):
            learner.train_step(x, y)
        weights.append([p.detach().clone() for p in learner.circuit.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_saved_activation_meter_by_hand():
    x = torch.randn(4, 8)  # 128 bytes
    w = torch.randn(8, 8, requires_grad=True)
    with SavedActivationMeter(exclude=[w]) as meter:
        out = torch.relu(x @ w)  # mm saves x (for ∂/∂w); relu saves its output: 128 bytes
        loss = out.sum()
        assert meter.live == 256
        loss.backward()
        del out, loss
    assert meter.peak == 256 and meter.live == 0


def test_local_modules_hold_less_activation_memory_than_backprop():
    """Four 512-unit blocks: backprop holds every block's activations, local_aux one module's."""
    task = Task((1, 28, 28), 10)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    peaks = {}
    for name, make in {"backprop": lambda c: Backprop(c, task),
                       "dgl": lambda c: LocalAux(c, task, aux="dgl")}.items():
        torch.manual_seed(0)
        learner = make(MLP(task, hidden=(512, 512, 512, 512)))
        peaks[name] = saved_activation_peak(lambda l=learner: l.train_step(x, y), learner.parameters())
    # backprop: the input and four 512-wide activations (each saved once as ReLU output and linear
    # input) and the logits; dgl: one module — its input, output and auxiliary logits
    assert peaks["backprop"] >= 64 * 4 * (784 + 4 * 512)
    assert peaks["dgl"] <= 64 * 4 * (784 + 512 + 2 * 10) + 1024
    assert peaks["dgl"] < 0.5 * peaks["backprop"]


def test_bad_options():
    task = Task((6,), 3)
    for kw, needle in [({"aux": "nope"}, r"learner\.aux"), ({"aux_pool": 0}, "aux_pool"),
                       ({"aux_depth": 0}, "aux_depth"), ({"depth_decay": 1.5}, "depth_decay"),
                       ({"recon_weight": -1.0}, "recon_weight"), ({"aux_hidden": [0]}, "aux_hidden"),
                       ({"modules": 9}, r"learner\.modules")]:
        with pytest.raises(UsageError, match=needle):
            LocalAux(MLP(task, hidden=(5, 4)), task, **kw)
    with pytest.raises(UsageError, match="head"):
        LocalAux(MLP(task, hidden=(5, 4), head=False), task)


@pytest.mark.parametrize(("aux", "floor"), [("dgl", 0.95), ("infopro", 0.93), ("auglocal", 0.95)])
def test_learns_digits_mlp(digits, aux, floor, untrained):
    def make():
        return LocalAux(MLP(digits.task, hidden=(256, 256)), digits.task, aux=aux)

    torch.manual_seed(0)
    trained = fit(make(), digits, epochs=15)[""]
    assert trained >= floor
    # frozen hidden blocks: only the head trains, by the last module's CE, whatever the aux nets
    frozen = untrained.fit("local_aux mlp", make, digits, epochs=15)[""]
    assert_above(f"local_aux {aux} mlp", trained, frozen, 0.05)


def test_learns_digits_cnn(digits, untrained):
    def make():
        return LocalAux(CNN(digits.task, channels=(16, 32)), digits.task, aux="dgl", aux_hidden=[64])

    torch.manual_seed(0)
    learner = make()
    assert [c.pool.output_size for c in learner.classifiers] == [2, 2]
    trained = fit(learner, digits, epochs=10)[""]
    assert trained >= 0.9
    frozen = untrained.fit("local_aux dgl cnn", make, digits, epochs=10)[""]
    assert_above("local_aux dgl cnn", trained, frozen, 0.03)


def test_config_keys_match_constructor():
    cfg, options = default_learner_options("local_aux", LocalAux)
    task = Task((1, 8, 8), 10)
    LocalAux(MLP(task, hidden=cfg.circuit.hidden), task, **options)
