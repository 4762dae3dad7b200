"""Tests of `hebbian`: the Krotov, SoftHebb and Oja updates by hand, their fixed points (unit
p-norm rows, the top principal subspace), stop-gradient features, the plasticity schedule, the
receptive-field picture, and learning on digits above the same readout on untrained hidden weights."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from bioplaus.circuits.cnn import CNN
from bioplaus.circuits.mlp import MLP
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.learners.hebbian import (
    Hebbian,
    krotov_activity,
    krotov_drive,
    krotov_update,
    oja_update,
    row_norms,
    softhebb_update,
)
from bioplaus.registry import get_learner
from tests.floors import assert_above
from tests.helpers import REPO, fit


def learner_on(hidden=(3,), features=2, classes=3, **kw) -> Hebbian:
    torch.manual_seed(0)
    task = Task((features,), classes)
    return Hebbian(MLP(task, hidden=hidden, head=False), task, **kw)


def set_weight(learner: Hebbian, weight: list) -> None:
    with torch.no_grad():
        learner.circuit.blocks[0].linear.weight.copy_(torch.tensor(weight))


def test_registered_and_config_equals_declaration():
    assert get_learner("hebbian") is Hebbian
    assert Hebbian.supports("mlp") and Hebbian.supports("cnn") and Hebbian.circuit_head is False
    config = yaml.safe_load((REPO / "configs" / "learner" / "hebbian.yaml").read_text())["learner"]
    config.pop("name")
    assert config == Hebbian.Options.defaults()


W3 = [[1.0, 0.0], [0.5, 0.5], [0.0, -1.0]]


def test_krotov_ranking_anti_hebbian_and_scaling_by_hand():
    """Three units, p = 3: I = v·(sgn W |W|²)ᵀ; top unit +1, k-th −Δ; update scaled to max 1."""
    W, v = torch.tensor(W3), torch.tensor([[4.0, 2.0]])
    # sgn(W)|W|² = [[1, 0], [.25, .25], [0, −1]] → I = [4, 1.5, −2]
    drive = krotov_drive(W, v, 3.0)
    torch.testing.assert_close(drive, torch.tensor([[4.0, 1.5, -2.0]]))
    torch.testing.assert_close(krotov_activity(drive, 2, 0.4), torch.tensor([[1.0, -0.4, 0.0]]))
    torch.testing.assert_close(krotov_activity(drive, 3, 0.4), torch.tensor([[1.0, 0.0, -0.4]]))
    # k = 2: D_0 = v − 4·W_0 = [0, 2]; D_1 = −0.4·(v − 1.5·W_1) = [−1.3, −0.5]; D_2 = 0; max|D| = 2
    expected_k2 = torch.tensor([[0.0, 1.0], [-0.65, -0.25], [0.0, 0.0]])
    torch.testing.assert_close(krotov_update(W, v, 3.0, 2, 0.4), expected_k2)
    # k = 3: D_2 = −0.4·(v + 2·W_2) = [−1.6, 0]; max|D| = 2
    expected_k3 = torch.tensor([[0.0, 1.0], [0.0, 0.0], [-0.8, 0.0]])
    torch.testing.assert_close(krotov_update(W, v, 3.0, 3, 0.4), expected_k3)
    # through the learner: W ← W + ε·D/max|D| with ε the first epoch's rate
    learner = learner_on(hebbian_lr=0.1, k=2)
    set_weight(learner, W3)
    learner.train_step(v, torch.tensor([0]))
    torch.testing.assert_close(learner.circuit.blocks[0].linear.weight.detach(),
                               torch.tensor(W3) + 0.1 * expected_k2)


def test_krotov_rows_reach_unit_p_norm():
    """Rows that keep winning converge to ‖W_μ‖_p = 1 under the rule (annealed rate)."""
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(2000, 10, generator=gen)
    W = torch.randn(6, 10, generator=gen) * 0.8
    steps = 3000
    for t in range(steps):
        v = data[torch.randint(0, 2000, (20,), generator=gen)]
        W += 0.02 * (1 - t / steps) * krotov_update(W, v, 3.0, 3, 0.4)
    winners = torch.unique(krotov_drive(W, data, 3.0).argmax(1))
    norms = row_norms(W, 3.0)[winners]
    assert len(winners) >= 2
    assert torch.allclose(norms, torch.ones_like(norms), atol=0.02), norms


def test_softhebb_update_by_hand():
    W = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    x = torch.tensor([[1.0, 2.0]])
    # u = [0.6 + 1.6, 1.0] = [2.2, 1.0]; y = softmax(2 u) (1/τ = 2)
    e = [math.exp(4.4), math.exp(2.0)]
    y = [e[0] / sum(e), e[1] / sum(e)]
    expected = torch.tensor([
        [y[0] * (1.0 - 2.2 * 0.6), y[0] * (2.0 - 2.2 * 0.8)],
        [y[1] * (1.0 - 1.0 * 1.0), y[1] * (2.0 - 1.0 * 0.0)],
    ])
    torch.testing.assert_close(softhebb_update(W, x, 2.0), expected)
    # through the learner with the adaptive rate η_k = ε·(|‖W_k‖ − 1| + 1e-10)^0.5
    learner = learner_on(hidden=(2,), rule="softhebb", inv_temperature=2.0, hebbian_lr=0.5)
    W2 = torch.tensor([[1.2, 1.6], [0.5, 0.0]])  # norms 2 and 0.5
    set_weight(learner, W2.tolist())
    learner.train_step(x, torch.tensor([0]))
    rates = 0.5 * torch.tensor([[1.0 + 1e-10], [0.5 + 1e-10]]).sqrt()
    torch.testing.assert_close(learner.circuit.blocks[0].linear.weight.detach(),
                               W2 + rates * softhebb_update(W2, x, 2.0))


def test_oja_update_by_hand():
    W, x = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 1.0]])
    # y = 2; (y xᵀ − y² W)/‖x‖² = ([4, 2] − [4, 0]) / 5
    torch.testing.assert_close(oja_update(W, x), torch.tensor([[0.0, 0.4]]))


def test_oja_finds_the_top_principal_subspace():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen))
    scales = torch.tensor([3.0, 2.5, 1.0, 0.7, 0.5, 0.3])  # standard deviations along q's columns
    W = torch.randn(2, 6, generator=gen) * 0.3
    for _ in range(4000):
        x = (torch.randn(32, 6, generator=gen) * scales) @ q.t()
        W += 0.05 * oja_update(W, x)
    basis, _ = torch.linalg.qr(W.t())
    cosines = torch.linalg.svdvals(q[:, :2].t() @ basis)
    largest_angle = math.degrees(math.acos(min(1.0, float(cosines.min()))))
    assert largest_angle < 5.0
    torch.testing.assert_close(W @ W.t(), torch.eye(2), atol=0.05, rtol=0)


def test_no_gradient_reaches_the_hidden_layers():
    learner = learner_on(hidden=(9, 8), features=5)
    learner.hebb_lr.zero_()  # no plasticity: the hidden weights must not move at all
    before = [p.detach().clone() for p in learner.circuit.parameters()]
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(3):
        learner.train_step(x, y)
    assert all(p.requires_grad and p.grad is None for p in learner.circuit.parameters())
    assert learner.readout_layer.weight.grad is not None
    assert all(torch.equal(a, b) for a, b in zip(before, learner.circuit.parameters(), strict=True))


def test_schedule_falls_linearly_and_is_capture_safe():
    learner = learner_on(hidden=(9, 8), features=5, hebbian_lr=0.2, hebbian_epochs=4)
    rates = learner.hebb_lr
    assert learner.rates(0) == [0.2, 0.2] and learner.rates(2) == pytest.approx([0.1, 0.1])
    assert learner.rates(4) == [0.0, 0.0]
    learner.on_epoch_end(1)
    assert learner.hebb_lr is rates and torch.allclose(rates, torch.tensor([0.15, 0.15]))
    layerwise = learner_on(hidden=(9, 8), features=5, hebbian_lr=0.2, hebbian_epochs=4, schedule="layerwise")
    assert layerwise.rates(1) == pytest.approx([0.15, 0.0])
    assert layerwise.rates(5) == pytest.approx([0.0, 0.15])
    assert layerwise.rates(8) == [0.0, 0.0]
    # a run too short for the second layer's turn is warned about; one epoch into it is not
    assert learner.plan_warnings(1) == [] and layerwise.plan_warnings(5) == []
    (warning,) = layerwise.plan_warnings(4)
    assert "layer(s) 2 never learn in 4 epochs" in warning and "epoch 5" in warning


def test_bad_options():
    task = Task((1, 8, 8), 10)
    with pytest.raises(UsageError, match=r"learner\.k"):
        Hebbian(CNN(task, channels=(4,), head=False), task)
    with pytest.raises(UsageError, match=r"learner\.k"):
        Hebbian(MLP(task, hidden=(5,), head=False), task, k=7)
    with pytest.raises(UsageError, match=r"learner\.rule"):
        Hebbian(MLP(task, hidden=(10,), head=False), task, rule="bcm")


def test_receptive_fields_picture(tmp_path):
    pytest.importorskip("matplotlib")
    task = Task((1, 8, 8), 10)
    for learner in (Hebbian(MLP(task, hidden=(12,), head=False), task),
                    Hebbian(CNN(task, channels=(6,), head=False), task, rule="softhebb")):
        (path,) = learner.write_figures(tmp_path)
        assert path.name == "receptive_fields.png" and path.read_bytes()[:4] == b"\x89PNG"
        path.unlink()


def trained_and_untrained(digits, make, epochs=30) -> tuple[float, float]:
    """Test accuracy of the learner, and of the same readout on the same (untrained) init."""
    out = []
    for plastic in (True, False):
        torch.manual_seed(0)
        learner = make()
        if not plastic:
            learner.rates = lambda epochs_done, n=len(learner.circuit.blocks): [0.0] * n
            learner.hebb_lr.zero_()
        out.append(fit(learner, digits, epochs=epochs)[""])
    return out[0], out[1]


@pytest.mark.floors  # measured against its untrained hidden layer: see trained_and_untrained
def test_krotov_learns_digits_above_untrained(digits):
    trained, untrained = trained_and_untrained(
        digits, lambda: Hebbian(MLP(digits.task, hidden=(100,), head=False), digits.task))
    assert trained >= 0.93, (trained, untrained)
    assert_above("hebbian krotov mlp", trained, untrained, 0.02)


@pytest.mark.floors  # measured against its untrained hidden layer: see trained_and_untrained
def test_krotov_learns_whitened_digits_above_untrained():
    """The input the Fashion-MNIST preset uses (data.normalize=zca): measured 0.956 vs 0.806."""
    from bioplaus.data import from_raw, load_digits

    white = from_raw(load_digits(), name="digits", seed=0, normalize="zca")
    trained, untrained = trained_and_untrained(
        white, lambda: Hebbian(MLP(white.task, hidden=(100,), head=False), white.task))
    assert trained >= 0.93, (trained, untrained)
    assert_above("hebbian krotov mlp zca", trained, untrained, 0.05)


@pytest.mark.floors  # measured against its untrained hidden layer: see trained_and_untrained
@pytest.mark.slow
@pytest.mark.parametrize(("rule", "floor"), [("softhebb", 0.93), ("oja", 0.85)])
def test_softhebb_and_oja_learn_digits_above_untrained(digits, rule, floor):
    trained, untrained = trained_and_untrained(
        digits, lambda: Hebbian(MLP(digits.task, hidden=(100,), head=False), digits.task, rule=rule))
    assert trained >= floor, (trained, untrained)
    assert_above(f"hebbian {rule} mlp", trained, untrained, 0.02)


@pytest.mark.floors  # measured against its untrained hidden layer: see trained_and_untrained
@pytest.mark.slow
def test_krotov_paper_readout_learns_digits_above_untrained(digits):
    trained, untrained = trained_and_untrained(
        digits, lambda: Hebbian(MLP(digits.task, hidden=(100,), head=False), digits.task, readout="krotov",
                                power=4.5, lr=0.01))
    assert trained >= 0.95, (trained, untrained)
    assert_above("hebbian krotov paper readout mlp", trained, untrained, 0.05)


def test_conv_plasticity_acts_on_every_patch():
    """On a conv block the rule sees every 3×3 patch (zero padding) as one example."""
    task = Task((1, 3, 3), 2)
    learner = Hebbian(CNN(task, channels=(2,), pool=1, head=False), task, rule="softhebb",
                      inv_temperature=2.0, hebbian_lr=0.5, adaptive_lr=False)
    conv = learner.circuit.blocks[0].conv
    W = conv.weight.detach().reshape(2, 9).clone()
    x = torch.arange(9.0).reshape(1, 1, 3, 3) / 9
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))[0, 0]
    rows = torch.stack([padded[i:i + 3, j:j + 3].reshape(9) for i in range(3) for j in range(3)])
    learner.train_step(x, torch.tensor([0]))
    torch.testing.assert_close(conv.weight.detach().reshape(2, 9), W + 0.5 * softhebb_update(W, rows, 2.0))


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "known limitation: on 8×8 digits SoftHebb's convolutional plasticity does not beat the same conv "
    "net with random filters (trained 0.964 vs frozen 0.978 with 32 channels; 0.914 vs 0.931 with 8; "
    "0.853 vs 0.878 with 4). Open: remove this mark when the conv path beats its random filters."))
def test_softhebb_learns_digits_on_a_cnn(digits, untrained):
    def make():
        return Hebbian(CNN(digits.task, channels=(32,), head=False), digits.task, rule="softhebb", power=1.0)

    torch.manual_seed(0)
    trained = fit(make(), digits, epochs=15)[""]
    assert trained >= 0.9
    frozen = untrained.fit("hebbian softhebb cnn", make, digits, epochs=15)[""]
    assert_above("hebbian softhebb cnn", trained, frozen, 0.02)
