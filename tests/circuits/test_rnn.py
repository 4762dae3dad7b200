"""Circuit `rnn`: sequence layout, the Elman recurrence by hand, readout of the last step, options,
and that backprop trains it well above chance on digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bioplaus
from bioplaus.circuits.rnn import RNN, Readout, RecurrentBlock, as_sequence
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.registry import check_compatible, get_learner
from tests.floors import assert_above

IMAGES = Task((1, 8, 8), 10)


def test_shapes_and_widths() -> None:
    net = RNN(IMAGES, hidden=[16, 12])
    assert net.block_widths == [16, 12, 10]
    assert isinstance(net.blocks[0], RecurrentBlock) and isinstance(net.blocks[-1], Readout)
    x = torch.randn(5, 1, 8, 8)
    acts = net.activations(x)
    assert [tuple(a.shape) for a in acts] == [(5, 8, 16), (5, 8, 12), (5, 10)]  # 8 rows = 8 steps
    torch.testing.assert_close(acts[-1], net(x))
    assert net.blocks[0].is_recurrent and not getattr(net.blocks[-1], "is_recurrent", False)
    headless = RNN(IMAGES, hidden=[16], head=False)
    assert headless.block_widths == [16]


def test_images_are_read_row_by_row() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)  # (B, C, H, W)
    seq = as_sequence(x)
    assert seq.shape == (2, 4, 15)  # T = H steps of C·W features
    torch.testing.assert_close(seq[1, 2], x[1, :, 2, :].reshape(-1))
    assert as_sequence(torch.zeros(2, 7)).shape == (2, 1, 7)
    assert RNN(Task((6, 3), 2), hidden=[4])(torch.randn(3, 6, 3)).shape == (3, 2)
    assert RNN(Task((5,), 2), hidden=[4])(torch.randn(3, 5)).shape == (3, 2)


def test_recurrence_by_hand() -> None:
    net = RNN(Task((3, 2), 2), hidden=[4])
    block, head = net.blocks
    W, b = block.input.weight.detach(), block.input.bias.detach()
    U = block.recurrent.weight.detach()
    x = torch.randn(2, 3, 2)  # 3 steps of 2 features
    s1 = torch.tanh(x[:, 0] @ W.T + b)
    s2 = torch.tanh(x[:, 1] @ W.T + s1 @ U.T + b)
    s3 = torch.tanh(x[:, 2] @ W.T + s2 @ U.T + b)
    states = block(x)
    torch.testing.assert_close(states, torch.stack([s1, s2, s3], dim=1))
    V, c = head.linear.weight.detach(), head.linear.bias.detach()
    torch.testing.assert_close(net(x), s3 @ V.T + c)  # the readout sees the last step only


def test_options() -> None:
    net = RNN(IMAGES, hidden=[8], activation="relu", bias=False, init="xavier_uniform")
    assert net.blocks[0].input.bias is None and net.blocks[-1].linear.bias is None
    with pytest.raises(UsageError, match="at least 1 entries"):
        RNN(IMAGES, hidden=[])
    with pytest.raises(UsageError, match="each > 0"):
        RNN(IMAGES, hidden=[0])
    with pytest.raises(UsageError, match="activation"):
        RNN(IMAGES, activation="swishy")
    with pytest.raises(UsageError, match="init"):
        RNN(IMAGES, init="bogus")


def test_compatibility() -> None:
    assert get_learner("backprop").supports("rnn") and get_learner("tpsgd").supports("rnn")
    with pytest.raises(UsageError, match="cannot train circuit 'rnn'"):
        check_compatible("counter_current", "rnn")


def test_backprop_trains_the_rnn_on_digits(tmp_path: Path, untrained) -> None:
    run = ["learner=backprop", "circuit=rnn", "trainer.epochs=10", "device=cpu"]
    cfg = bioplaus.compose([*run, f"paths.runs={tmp_path}", "trainer.checkpoint=false"])
    summary = bioplaus.train(cfg, quiet=True)
    assert summary["status"] == "completed"
    assert summary["test_accuracy"] >= 0.85, summary["test_accuracy"]  # chance is 0.1
    assert_above("backprop rnn", summary["test_accuracy"], untrained.run(run)["test_accuracy"], 0.2)
