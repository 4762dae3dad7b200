"""Circuits `mlp` and `cnn`: block structure, per-block access, head on request, bad options."""

from __future__ import annotations

import pytest
import torch

from bioplaus.circuits.cnn import CNN
from bioplaus.circuits.mlp import MLP, Dense
from bioplaus.core import Task
from bioplaus.errors import UsageError

IMAGES = Task((1, 8, 8), 10)


def test_mlp_blocks_and_widths() -> None:
    net = MLP(IMAGES, hidden=[20, 30], activation="tanh")
    assert net.block_widths == [20, 30, 10]
    x = torch.randn(4, 1, 8, 8)
    acts = net.activations(x)
    assert [a.shape for a in acts] == [(4, 20), (4, 30), (4, 10)]
    assert torch.allclose(acts[-1], net(x))
    # a dense block is f(W flatten(h) + b)
    block = net.blocks[0]
    assert isinstance(block, Dense)
    expected = torch.tanh(x.flatten(1) @ block.linear.weight.T + block.linear.bias)
    assert torch.allclose(block(x), expected)


def test_mlp_without_head_ends_at_the_last_hidden_layer() -> None:
    net = MLP(IMAGES, hidden=[16], head=False)
    assert net.block_widths == [16]


def test_mlp_options() -> None:
    net = MLP(IMAGES, hidden=[8], bias=False, init="kaiming_normal")
    assert net.blocks[0].linear.bias is None
    with pytest.raises(UsageError, match="activation"):
        MLP(IMAGES, activation="swishy")
    with pytest.raises(UsageError, match="init"):
        MLP(IMAGES, init="orthogonalish")
    with pytest.raises(UsageError, match=r"circuit\.hidden must be a list of integers, each > 0"):
        MLP(IMAGES, hidden=[0])


def test_kaiming_init_has_the_expected_scale() -> None:
    torch.manual_seed(0)
    net = MLP(Task((1000,), 2), hidden=[500], init="kaiming_normal")
    std = float(net.blocks[0].linear.weight.detach().std())
    assert abs(std - (2.0 / 1000) ** 0.5) < 0.002
    assert float(net.blocks[0].linear.bias.detach().abs().max()) == 0.0


def test_cnn_blocks_and_widths() -> None:
    net = CNN(IMAGES, channels=[4, 8], kernel_size=3, pool=2, hidden=[12])
    x = torch.randn(2, 1, 8, 8)
    acts = net.activations(x)
    assert [tuple(a.shape) for a in acts] == [(2, 4, 4, 4), (2, 8, 2, 2), (2, 12), (2, 10)]
    assert net.block_widths == [64, 32, 12, 10]
    assert CNN(IMAGES, channels=[4], head=False).block_widths == [64]


def test_cnn_needs_images() -> None:
    with pytest.raises(UsageError, match="image"):
        CNN(Task((64,), 10))
