"""Tests of `local_aux` with ``aux=man``: the momentum copy after one step by the formula, the
learnable copy starting at N_{k+1} and leaving it, no gradient across modules through `train_step`,
and learning on digits above the same head on untrained hidden blocks."""

from __future__ import annotations

import pytest
import torch

from bioplaus.circuits.mlp import MLP
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.learners.local_aux import LocalAux
from tests.floors import assert_above
from tests.helpers import fit


def man_net(**kw) -> LocalAux:
    """Blocks 6→5→4→3 (two hidden blocks and the head), one module per block."""
    torch.manual_seed(0)
    task = Task((6,), 3)
    return LocalAux(MLP(task, hidden=(5, 4)), task, aux="man", **kw)


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_copies_start_as_the_next_block():
    learner = man_net()
    blocks = learner.circuit.blocks
    assert len(learner.ema_copies) == len(learner.lb_copies) == 2
    for k in range(2):
        nxt = blocks[k + 1]
        assert torch.equal(flat(learner.ema_copies[k]), flat(nxt))
        assert torch.equal(flat(learner.lb_copies[k]), flat(nxt))
        assert all(not p.requires_grad for p in learner.ema_copies[k].parameters())
        assert all(p.requires_grad for p in learner.lb_copies[k].parameters())
        # the copies are new tensors, not N_{k+1}'s own
        assert all(a.data_ptr() != b.data_ptr()
                   for a, b in zip(learner.lb_copies[k].parameters(), nxt.parameters(), strict=True))
    # InfoPro's heads act on y_k, of N_{k+1}'s width
    assert learner.classifiers[0].mlp[0].in_features == 4
    assert learner.classifiers[1].mlp[0].in_features == 3
    assert learner.decoders[0].linear.in_features == 4


def test_ema_after_one_step_is_the_formula_and_lb_departs():
    learner = man_net(ema_momentum=0.9, optimizer="sgd", lr=0.1, momentum=0.0)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    ema_before = [flat(e) for e in learner.ema_copies]
    lb_before = [flat(b) for b in learner.lb_copies]
    learner.train_step(x, y)
    for k in range(2):
        nxt_after = flat(learner.circuit.blocks[k + 1])
        expected = 0.9 * ema_before[k] + 0.1 * nxt_after
        torch.testing.assert_close(flat(learner.ema_copies[k]), expected)
        lb = flat(learner.lb_copies[k])
        assert not torch.allclose(lb, lb_before[k])  # trained by module k's loss
        assert not torch.allclose(lb, nxt_after)     # and not N_{k+1}: it follows its own gradient


def test_no_gradient_crosses_modules_through_train_step():
    learner = man_net()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    expected = {}
    h = x
    for k in range(3):  # each module's loss alone, on the detached output of the one before
        learner.zero_grad(set_to_none=True)
        h = learner.run_module(k, h.detach())
        learner.module_loss(k, h, x, y).backward()
        own = {n for n, p in learner.named_parameters() if p.grad is not None}
        # module k's loss reaches module k's block, its LB copy and heads, never another block
        blocks = {f"circuit.blocks.{i}." for i in range(3) if i != k}
        assert not any(n.startswith(tuple(blocks)) for n in own), (k, own)
        expected.update({n: learner.get_parameter(n).grad.clone() for n in own})
    learner.optimizer.step = lambda *a, **kw: None  # keep the weights: compare the gradients
    learner.train_step(x, y)
    for name, param in learner.named_parameters():
        if name.startswith("ema_copies"):
            assert param.grad is None, name
        else:
            assert torch.allclose(param.grad, expected[name], atol=1e-7), name


def test_bad_momentum():
    with pytest.raises(UsageError, match="ema_momentum"):
        man_net(ema_momentum=1.0)


@pytest.mark.slow
def test_man_learns_digits_above_untrained_hidden_blocks(digits, untrained):
    def make():
        return LocalAux(MLP(digits.task, hidden=(256, 256)), digits.task, aux="man")

    torch.manual_seed(0)
    trained = fit(make(), digits, epochs=15)[""]
    assert trained >= 0.95
    frozen = untrained.fit("local_aux man mlp", make, digits, epochs=15)[""]
    assert_above("local_aux man mlp", trained, frozen, 0.01)
