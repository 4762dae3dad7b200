"""The backprop baseline: one step equals a hand-computed SGD step; it learns digits."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

import bioplaus
from bioplaus.circuits.mlp import MLP
from bioplaus.core import Task
from bioplaus.learners.backprop import Backprop
from tests.floors import assert_above


def test_one_sgd_step_matches_the_hand_computed_gradient() -> None:
    task = Task((3,), 2)
    net = MLP(task, hidden=[], head=True)  # a single linear layer: logits = W x + b
    learner = Backprop(net, task, optimizer="sgd", lr=0.5, momentum=0.0)
    w0 = net.blocks[0].linear.weight.detach().clone()
    b0 = net.blocks[0].linear.bias.detach().clone()
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])
    y = torch.tensor([1, 0])
    # dL/dlogits = (softmax - onehot) / B ; dL/dW = that^T x
    logits = x @ w0.T + b0
    delta = (torch.softmax(logits, 1) - F.one_hot(y, 2).float()) / 2
    metrics = learner.train_step(x, y)
    assert torch.allclose(metrics["loss"], F.cross_entropy(logits, y))
    assert torch.allclose(net.blocks[0].linear.weight, w0 - 0.5 * delta.T @ x, atol=1e-6)
    assert torch.allclose(net.blocks[0].linear.bias, b0 - 0.5 * delta.sum(0), atol=1e-6)


def test_backprop_learns_digits_with_its_defaults(tmp_path: Path, untrained) -> None:
    summary = bioplaus.train(bioplaus.compose(["learner=backprop", f"paths.runs={tmp_path}"]), quiet=True)
    assert summary["status"] == "completed"
    assert summary["test_accuracy"] >= 0.96, summary["test_accuracy"]
    frozen = untrained.run(["learner=backprop"])
    assert_above("backprop mlp", summary["test_accuracy"], frozen["test_accuracy"], 0.05)


def test_backprop_trains_a_cnn(tmp_path: Path, untrained) -> None:
    run = ["learner=backprop", "circuit=cnn", "circuit.channels=[8,16]", "trainer.epochs=8"]
    summary = bioplaus.train(bioplaus.compose([*run, f"paths.runs={tmp_path}"]), quiet=True)
    assert summary["test_accuracy"] >= 0.85, summary["test_accuracy"]
    assert_above("backprop cnn", summary["test_accuracy"], untrained.run(run)["test_accuracy"], 0.2)
