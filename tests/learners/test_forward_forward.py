"""Forward-Forward: the math against hand-computed cases, layer isolation, readouts, learning."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

import bioplaus.learners.forward_forward as ff
from bioplaus import data as D
from bioplaus.circuits.mlp import MLP
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.learners.forward_forward import ForwardForward
from tests.floors import assert_above
from tests.helpers import fit

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "learner" / "forward_forward.yaml"


def make(hidden=(16, 12, 8), input_shape=(1, 4, 4), classes=3, **kw) -> ForwardForward:
    task = Task(input_shape, classes)
    return ForwardForward(MLP(task, hidden=hidden, head=False), task, **kw)


# -- functional math ------------------------------------------------------------------------------


def test_rms_and_l2_normalisation_by_hand():
    h = torch.tensor([[3.0, 4.0]])
    rms = math.sqrt((9 + 16) / 2)
    assert torch.allclose(ff.normalise(h, "rms"), torch.tensor([[3 / rms, 4 / rms]]))
    assert torch.allclose(ff.normalise(h, "rms").pow(2).sum(), torch.tensor(2.0))  # Σĥ² = dim
    assert torch.allclose(ff.normalise(h, "l2"), torch.tensor([[0.6, 0.8]]))
    # rows are normalised independently, images are flattened
    img = torch.arange(1.0, 9.0).reshape(2, 1, 2, 2)
    out = ff.normalise(img, "rms")
    assert out.shape == (2, 4)
    assert torch.allclose(out.pow(2).sum(dim=1), torch.tensor([4.0, 4.0]))
    with pytest.raises(ValueError):
        ff.normalise(h, "max")


def test_goodness_sum_and_mean_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 2.0]])
    assert torch.allclose(ff.goodness(a, "sum"), torch.tensor([14.0, 4.0]))
    assert torch.allclose(ff.goodness(a, "mean"), torch.tensor([14.0 / 3, 4.0 / 3]))


def test_standard_loss_by_hand():
    g_pos, g_neg = torch.tensor([3.0, 0.0]), torch.tensor([1.0, 4.0])
    theta = 2.0

    def softplus(v):
        return math.log(1 + math.exp(v))

    row0 = softplus(2 - 3) + softplus(1 - 2)  # both on the right side of θ by 1
    row1 = softplus(2 - 0) + softplus(4 - 2)  # both wrong by 2
    assert row0 == pytest.approx(2 * math.log(1 + math.exp(-1)))
    expected = (row0 + row1) / 2
    assert float(ff.standard_loss(g_pos, g_neg, theta)) == pytest.approx(expected, rel=1e-6)
    assert float(ff.ff_loss(g_pos, g_neg, theta, "standard")) == pytest.approx(expected, rel=1e-6)
    # pushing G⁺ up and G⁻ down lowers it
    assert float(ff.standard_loss(g_pos + 1, g_neg - 1, theta)) < expected


def test_symba_loss_by_hand():
    g_pos, g_neg = torch.tensor([3.0, 1.0]), torch.tensor([2.5, 2.0])
    # α = 4: softplus(−4·0.5) and softplus(−4·(−1))
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(4.0))) / 2
    assert float(ff.symba_loss(g_pos, g_neg, 4.0)) == pytest.approx(expected, rel=1e-6)
    assert float(ff.ff_loss(g_pos, g_neg, 123.0, "symba", 4.0)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        ff.ff_loss(g_pos, g_neg, 1.0, "hinge")


def test_overlay_writes_one_hot_over_first_c_inputs():
    x = torch.arange(32.0).reshape(2, 1, 4, 4) + 100
    out = ff.overlay_label(x, torch.tensor([2, 0]), 3)
    assert out.shape == (2, 16)
    assert torch.equal(out[:, :3], torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert torch.equal(out[:, 3:], x.flatten(1)[:, 3:])
    assert float(x.flatten(1)[0, 0]) == 100  # the input itself is untouched
    scaled = ff.overlay_label(x, torch.tensor([1, 1]), 3, scale=2.5)
    assert torch.equal(scaled[:, :3], torch.tensor([[0.0, 2.5, 0.0]] * 2))


def test_neutral_overlay_is_one_over_c():
    x = torch.randn(4, 1, 4, 4)
    out = ff.overlay_neutral(x, 5)
    assert torch.allclose(out[:, :5], torch.full((4, 5), 0.2))
    assert torch.equal(out[:, 5:], x.flatten(1)[:, 5:])


def test_random_negatives_never_true_and_cover_every_wrong_label():
    torch.manual_seed(0)
    c = 10
    y = torch.arange(c).repeat_interleave(2000)
    neg = ff.random_wrong_labels(y, c)
    assert neg.dtype == y.dtype and neg.shape == y.shape
    assert not bool((neg == y).any())
    assert int(neg.min()) >= 0 and int(neg.max()) < c
    counts = torch.zeros(c, c)
    counts.index_put_((y, neg), torch.ones_like(y, dtype=torch.float), accumulate=True)
    off_diagonal = counts[~torch.eye(c, dtype=torch.bool)]
    # 2000 draws over 9 wrong labels: ≈ 222 each, all present, roughly uniform
    assert bool((off_diagonal > 150).all()) and bool((off_diagonal < 300).all())
    assert float(counts.diagonal().sum()) == 0


@pytest.mark.parametrize("negatives", ["random", "hard"])
def test_train_step_never_overlays_the_true_label_on_a_negative(negatives):
    """Through `train_step`: the rows the first layer sees in the positive/negative pass carry a
    one-hot label over their first C inputs — the true one on the B positives, never the true one on
    the B negatives (random: and every wrong label turns up)."""
    c, batch = 3, 32
    learner = make(hidden=(8,), negatives=negatives)
    seen = []

    def record(module, args):
        if args[0].shape[0] == 2 * batch:  # the positive + negative pass (not readout passes)
            seen.append(args[0][:, :c].detach().clone())

    learner.circuit.blocks[0].register_forward_pre_hook(record)
    torch.manual_seed(0)
    pairs = torch.zeros(c, c)
    for _ in range(100):
        x, y = torch.rand(batch, 1, 4, 4), torch.randint(0, c, (batch,))
        seen.clear()
        learner.train_step(x, y)
        (labels,) = seen
        assert bool(((labels > 0).sum(1) == 1).all()), "a row without a one-hot label"
        pos, neg = labels[:batch].argmax(1), labels[batch:].argmax(1)
        assert torch.equal(pos, y)
        assert not bool((neg == y).any()), f"{int((neg == y).sum())} negatives carry the true label"
        pairs.index_put_((y, neg), torch.ones(batch), accumulate=True)
    if negatives == "random":
        assert bool((pairs + torch.eye(c) > 0).all()), pairs


def test_hardest_wrong_label_skips_the_true_one():
    scores = torch.tensor([[5.0, 4.0, 1.0], [0.0, 2.0, 3.0], [1.0, 9.0, 2.0]])
    y = torch.tensor([0, 1, 1])
    assert torch.equal(ff.hardest_wrong_labels(scores, y), torch.tensor([1, 2, 2]))


def test_default_threshold_and_override():
    assert ff.default_threshold(256, 64, "rms", "sum") == 256.0
    assert ff.default_threshold(256, 64, "rms", "mean") == 1.0
    assert ff.default_threshold(256, 64, "l2", "sum") == 4.0
    assert ff.default_threshold(256, 64, "l2", "mean") == 1.0 / 64
    assert make().thresholds.tolist() == [16.0, 12.0, 8.0]
    assert make(threshold=3.0).thresholds.tolist() == [3.0, 3.0, 3.0]


def test_peer_penalty_by_hand():
    m = torch.tensor([1.0, 3.0])  # mean 2, deviations ±1
    assert float(ff.peer_penalty(m)) == pytest.approx(1.0)


# -- layer isolation ---------------------------------------------------------------------------------


def test_no_gradient_crosses_layers():
    torch.manual_seed(0)
    learner = make()
    x = torch.randn(8, 1, 4, 4)
    acts = learner.layer_activities(ff.overlay_label(x, torch.randint(0, 3, (8,)), 3))
    ff.goodness(acts[1]).sum().backward()
    first, second = learner.circuit.blocks[0], learner.circuit.blocks[1]
    assert first.linear.weight.grad is None and first.linear.bias.grad is None
    assert second.linear.weight.grad is not None and float(second.linear.weight.grad.abs().sum()) > 0


def test_each_layer_gets_only_its_own_loss_gradient():
    """The summed loss of train_step gives layer 1 exactly the gradient of layer 1's loss alone."""
    torch.manual_seed(0)
    learner = make()
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    y_neg = ff.random_wrong_labels(y, 3)
    both = torch.cat([ff.overlay_label(x, y, 3), ff.overlay_label(x, y_neg, 3)])

    def layer_loss(a, i):
        g = ff.goodness(a)
        return ff.ff_loss(g[:8], g[8:], learner.thresholds[i])

    acts = learner.layer_activities(both)
    sum(layer_loss(a, i) for i, a in enumerate(acts)).backward()
    full = learner.circuit.blocks[0].linear.weight.grad.clone()
    learner.zero_grad()
    alone = learner.circuit.blocks[0](ff.normalise(both))
    layer_loss(alone, 0).backward()
    assert torch.allclose(full, learner.circuit.blocks[0].linear.weight.grad)


# -- the learner -------------------------------------------------------------------------------------


def _record_first_block_inputs(learner):
    seen = []
    handle = learner.circuit.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    return seen, handle


def test_goodness_readout_makes_c_passes_one_per_label():
    torch.manual_seed(0)
    learner = make(classes=4)
    seen, handle = _record_first_block_inputs(learner)
    scores = learner.predict(torch.randn(5, 1, 4, 4))
    handle.remove()
    assert scores.shape == (5, 4)
    assert len(seen) == 4
    for c, inp in enumerate(seen):
        assert inp.shape == (5, 16)
        assert bool((inp[:, :4].argmax(dim=1) == c).all())  # label c overlaid (then normalised)


def test_goodness_readout_sums_layers_two_to_l():
    torch.manual_seed(0)
    learner = make(classes=3)
    x = torch.randn(4, 1, 4, 4)
    with torch.no_grad():
        acts = learner.layer_activities(ff.overlay_label(x, torch.full((4,), 2), 3))
        expected = ff.goodness(acts[1]) + ff.goodness(acts[2])
    assert torch.allclose(learner.goodness_scores(x)[:, 2], expected)
    one_layer = make(hidden=(16,), classes=3)
    with torch.no_grad():
        a = one_layer.layer_activities(ff.overlay_label(x, torch.zeros(4, dtype=torch.long), 3))[0]
    assert torch.allclose(one_layer.goodness_scores(x)[:, 0], ff.goodness(a))


def test_softmax_readout_is_one_neutral_pass_and_predictions_order():
    torch.manual_seed(0)
    learner = make(classes=3, readout="softmax")
    seen, handle = _record_first_block_inputs(learner)
    scores = learner.predict(torch.randn(5, 1, 4, 4))
    handle.remove()
    assert scores.shape == (5, 3) and len(seen) == 1
    neutral = seen[0][:, :3]
    assert torch.allclose(neutral, neutral[:, :1].expand(-1, 3))  # all C entries equal
    assert learner.classifier.in_features == 12 + 8  # layers 2..L
    assert list(learner.predictions(torch.randn(2, 1, 4, 4))) == ["softmax", "goodness"]
    assert list(make().predictions(torch.randn(2, 1, 4, 4))) == ["goodness", "softmax"]


@pytest.mark.parametrize("options", [
    {}, {"loss": "symba"}, {"negatives": "hard"}, {"norm": "l2", "goodness": "mean"},
    {"peer_norm": 0.03, "optimizer": "adamw", "weight_decay": 1e-3},
])
def test_train_step_returns_scalar_metrics_and_updates(options):
    torch.manual_seed(0)
    learner = make(**options)
    before = [p.detach().clone() for p in learner.circuit.parameters()]
    out = learner.train_step(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))
    assert "loss" in out and "accuracy" in out
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in out.values())
    assert all(bool(torch.isfinite(v)) for v in out.values())
    after = list(learner.circuit.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_peer_normalisation_state_lives_in_buffers():
    torch.manual_seed(0)
    learner = make(peer_norm=0.03)
    assert "peer_mean_0" in dict(learner.named_buffers())
    learner.train_step(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))
    assert float(learner.peer_mean_0.abs().sum()) > 0
    off = make()
    off.train_step(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))
    assert float(off.peer_mean_0.abs().sum()) == 0


@pytest.mark.parametrize("options", [
    {"norm": "max"}, {"goodness": "max"}, {"loss": "hinge"}, {"negatives": "easy"},
    {"readout": "vote"}, {"threshold": -1.0}, {"symba_alpha": 0.0}, {"peer_norm": -0.1},
    {"optimizer": "rmsprop"}, {"label_scale": 0.0},
])
def test_bad_options_are_usage_errors(options):
    with pytest.raises(UsageError):
        make(**options)


def test_too_few_inputs_for_the_overlay_is_a_usage_error():
    with pytest.raises(UsageError, match="first C"):
        make(input_shape=(3,), classes=3)


def test_config_holds_every_declared_option_with_its_default():
    cfg = yaml.safe_load(CONFIG.read_text())
    options = {k: v for k, v in cfg["learner"].items() if k != "name"}
    assert options == ForwardForward.Options.defaults()
    assert cfg["learner"]["name"] == "forward_forward"


# -- learning ----------------------------------------------------------------------------------------


HIDDEN = (256, 256)


def _make(splits: D.DataSplits) -> ForwardForward:
    return ForwardForward(MLP(splits.task, hidden=HIDDEN, head=False), splits.task, lr=3e-3)


def test_learns_digits(digits, untrained):
    """Both readouts above the same readouts of the same net with its layers frozen at their
    initial weights (the softmax classifier still trained; the goodness readout then has nothing)."""
    torch.manual_seed(0)
    acc = fit(_make(digits), digits, epochs=20)
    frozen = untrained.fit("forward_forward mlp", lambda: _make(digits), digits, epochs=20)
    assert acc["goodness"] >= 0.85, acc
    assert_above("forward_forward mlp goodness", acc["goodness"], frozen["goodness"], 0.5)
    assert_above("forward_forward mlp softmax", acc["softmax"], frozen["softmax"], 0.01)


def test_negatives_equal_to_positives_cannot_pass_the_floor(monkeypatch, digits):
    """The floor above means something: with x⁻ = x⁺ the goodness readout learns nothing."""
    monkeypatch.setattr(ff, "random_wrong_labels", lambda y, c: y)
    torch.manual_seed(0)
    acc = fit(_make(digits), digits, epochs=10)
    assert acc["goodness"] < 0.5, acc
