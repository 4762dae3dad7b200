"""NoProp: schedule, SNR weights, posterior coefficients and KL by hand; block isolation; the
circuit layouts; usage errors; learning on digits for dt (defaults), ct and fm."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import bioplaus.learners.noprop as npl
from bioplaus.circuits.noprop import NoPropBlocks
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.learners.noprop import NoProp
from bioplaus.registry import get_circuit, get_learner
from tests.floors import assert_above
from tests.helpers import capture_train_step

TASK = Task((1, 4, 4), 3)


def make(variant="dt", blocks=3, embedding="onehot", task=TASK, circuit_kw=None, **kw) -> NoProp:
    torch.manual_seed(0)
    circuit = NoPropBlocks(task, variant=variant, blocks=blocks, image_hidden=[8], label_hidden=[8],
                           hidden=[8], time_features=4, **(circuit_kw or {}))
    return NoProp(circuit, task, variant=variant, embedding=embedding, **kw)


def test_registered():
    assert get_learner("noprop") is NoProp
    assert get_circuit("noprop_blocks") is NoPropBlocks
    assert NoProp.supports("noprop_blocks") and not NoProp.supports("mlp")


# -- schedule and coefficients by hand --------------------------------------------------------------


def test_cosine_schedule_by_hand():
    # ᾱ_t = f(τ_t)/f(0), f(τ) = cos²(π/2·(τ + 0.008)/1.008), τ_t = (T + 1 − t)/(T + 1); T = 2:
    # f(0) = cos²(π/2·0.008/1.008) = 0.99984459
    # ᾱ_1 = cos²(π/2·(2/3 + 0.008)/1.008)/f(0) = 0.24644817
    # ᾱ_2 = cos²(π/2·(1/3 + 0.008)/1.008)/f(0) = 0.74288363
    ab = npl.cosine_alpha_bar(2)
    assert ab.shape == (3,)
    assert 0.0 <= float(ab[0]) < 1e-30  # z_0 is pure noise
    assert float(ab[1]) == pytest.approx(0.24644817, abs=1e-7)
    assert float(ab[2]) == pytest.approx(0.74288363, abs=1e-7)
    # T = 10: the last two latents
    ab10 = npl.cosine_alpha_bar(10)
    assert float(ab10[10]) == pytest.approx(0.97658, abs=1e-5)
    assert float(ab10[9]) == pytest.approx(0.91517, abs=1e-5)
    assert torch.all(ab10[1:] > ab10[:-1])  # the signal grows towards z_T


def test_snr_and_weights_by_hand():
    ab = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    # SNR = ᾱ/(1 − ᾱ) = 0.25, 1, 9
    torch.testing.assert_close(npl.snr(ab), torch.tensor([0.25, 1.0, 9.0], dtype=torch.float64))
    # (T/2)·η·(SNR(t) − SNR(t−1)), T = 2, η = 0.1: 0.1·0.75 = 0.075 and 0.1·8 = 0.8
    torch.testing.assert_close(npl.snr_weights(ab, 0.1), torch.tensor([0.075, 0.8], dtype=torch.float64))
    # cosine, T = 2: SNR(1) = 0.24644817/0.75355183 = 0.32704873, SNR(2) = 2.8892895
    w = npl.snr_weights(npl.cosine_alpha_bar(2), 0.1)
    torch.testing.assert_close(w, torch.tensor([0.032704873, 0.25622408], dtype=torch.float64),
                               rtol=0, atol=1e-7)


def test_posterior_coefficients_by_hand():
    ab = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    a, b, c = npl.posterior_coefficients(ab)
    # t = 1: α_0 = 0.2/0.5 = 0.4; a = √0.5·0.6/0.8, b = √0.4·0.5/0.8, c = 0.5·0.6/0.8 = 0.375
    # t = 2: α_1 = 5/9;           a = √0.9·(4/9)/0.5, b = √(5/9)·0.1/0.5, c = 0.1·(4/9)/0.5 = 4/45
    expected_a = [0.75 * math.sqrt(0.5), (8 / 9) * math.sqrt(0.9)]
    expected_b = [0.625 * math.sqrt(0.4), 0.2 * math.sqrt(5 / 9)]
    expected_c = [0.375, 4 / 45]
    for got, want in ((a, expected_a), (b, expected_b), (c, expected_c)):
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(a, torch.tensor([0.53033009, 0.84327404], dtype=torch.float64),
                               rtol=0, atol=1e-8)


def test_posterior_step_preserves_the_marginals():
    # z_{t−1} ~ q(z_{t−1}|y) and the true u_y: a_t u + b_t z_{t−1} + √c_t ε ~ q(z_t|y), i.e.
    # mean a_t + b_t √ᾱ_{t−1} = √ᾱ_t and variance b_t²(1 − ᾱ_{t−1}) + c_t = 1 − ᾱ_t.
    ab = npl.cosine_alpha_bar(10)
    a, b, c = npl.posterior_coefficients(ab)
    torch.testing.assert_close(a + b * ab[:-1].sqrt(), ab[1:].sqrt())
    torch.testing.assert_close(b.pow(2) * (1 - ab[:-1]) + c, 1 - ab[1:])
    # ᾱ_0 = 0: the first step ignores z_0 and draws from q(z_1|y) itself
    assert abs(float(b[0])) < 1e-12
    assert float(a[0]) == pytest.approx(math.sqrt(float(ab[1])))


def test_kl_by_hand():
    # KL(N(√0.2·u, 0.8 I) ‖ N(0, I)), u = (1, −2), d = 2:
    # ½(0.2·5 − 2·0.2 − 2·log 0.8) = ½(1 − 0.4 + 0.44628710) = 0.52314355
    u = torch.tensor([[1.0, -2.0], [0.0, 0.0]], dtype=torch.float64)
    kl = npl.kl_to_standard_normal(u, 0.2)
    assert float(kl[0]) == pytest.approx(0.52314355, abs=1e-8)
    # u = 0: ½(−0.4 − 2 log 0.8) = 0.02314355
    assert float(kl[1]) == pytest.approx(0.02314355, abs=1e-8)
    ref = kl_divergence(Normal(math.sqrt(0.2) * u, math.sqrt(0.8)), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl, ref)


def test_class_mixture_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    torch.testing.assert_close(npl.class_mixture(logits, torch.eye(2)), torch.tensor([[0.25, 0.75]]))
    U = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    torch.testing.assert_close(npl.class_mixture(logits, U), torch.tensor([[0.5, 3.0]]))


def test_learner_holds_the_schedule():
    learner = make(blocks=2, eta=0.1)
    ab = npl.cosine_alpha_bar(2)
    torch.testing.assert_close(learner.alpha_bar, ab.float())
    torch.testing.assert_close(learner.block_weights, npl.snr_weights(ab, 0.1).float())
    a, b, c = npl.posterior_coefficients(ab)
    torch.testing.assert_close(learner.coef_b, b.float())
    torch.testing.assert_close(learner.coef_c, c.float())
    torch.testing.assert_close(learner.coef_a, a.float())


def test_learned_schedule_is_monotone_with_the_right_derivative():
    schedule = npl.LearnedSchedule(-4.0, 4.0)
    with torch.no_grad():
        schedule.amplitude.fill_(0.5)  # a non-linear shape
    t = torch.linspace(0.0, 1.0, 101, requires_grad=True)
    lam, dlam = schedule(t)
    (grad,) = torch.autograd.grad(lam.sum(), t)
    lam, dlam = lam.detach(), dlam.detach()
    torch.testing.assert_close(dlam, grad)
    assert float(lam[0]) == pytest.approx(-4.0, abs=1e-5)
    assert float(lam[-1]) == pytest.approx(4.0, abs=1e-5)
    assert torch.all(lam[1:] > lam[:-1]) and torch.all(dlam > 0)


# -- isolation, layouts, errors ---------------------------------------------------------------------


def test_no_gradient_crosses_blocks():
    learner = make(blocks=3)
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    blocks = [list(b.parameters()) for b in learner.circuit.blocks]
    torch.manual_seed(1)
    out = learner.dt_losses(x, y)
    out["blocks"][1].backward()  # block 2's own term
    assert all(p.grad is None for p in blocks[0] + blocks[2])  # no other block is touched
    assert all(p.grad is None for p in learner.classifier.parameters())
    assert all(p.grad is not None for p in blocks[1])
    own = [p.grad.clone() for p in blocks[1]]

    # the summed objective of a step gives block 2 exactly the gradient of its own term
    learner.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = learner.dt_losses(x, y)
    (torch.stack(out["blocks"]).sum() + 3 * (out["ce"] + out["kl"])).backward()
    for p, g in zip(blocks[1], own, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_train_step_metrics_and_update():
    learner = make(blocks=3)
    before = [p.detach().clone() for p in learner.circuit.parameters()]
    metrics = learner.train_step(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))
    assert {"loss", "accuracy", "ce", "kl", "denoise", "loss_b1", "loss_b2", "loss_b3"} <= set(metrics)
    assert all(v.dim() == 0 for v in metrics.values())
    torch.testing.assert_close(metrics["loss"], metrics["ce"] + metrics["kl"] + metrics["denoise"])
    torch.testing.assert_close(metrics["denoise"], (metrics["loss_b1"] + metrics["loss_b2"]
                                                    + metrics["loss_b3"]) / 3)
    assert all(not torch.equal(b, p) for b, p in zip(before, learner.circuit.parameters(), strict=True))


@pytest.mark.parametrize("variant", ["ct", "fm"])
@pytest.mark.parametrize("embedding", ["onehot", "learned", "prototype"])
def test_continuous_variants_step_and_predict(variant, embedding):
    task = Task((1, 4, 4), 3)
    width = 16 if embedding == "prototype" else None
    learner = make(variant, embedding=embedding, task=task, ode_steps=4,
                   circuit_kw={"label_features": width, "outputs": width if variant == "fm" else None})
    assert len(learner.circuit.blocks) == 1  # one shared, time-conditioned block
    metrics = learner.train_step(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))
    assert all(torch.isfinite(v) for v in metrics.values())
    learner.eval()
    out = learner.predictions(torch.randn(5, 1, 4, 4))
    assert list(out) == ["classifier", "nearest"] and all(s.shape == (5, 3) for s in out.values())


def test_prototypes_come_from_the_first_batch_of_each_class():
    learner = make(embedding="prototype", circuit_kw={"label_features": 16})
    x = torch.randn(4, 1, 4, 4)
    learner.train_step(x, torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(learner.embeddings[0], x[:2].flatten(1).mean(0))
    torch.testing.assert_close(learner.embeddings[1], x[2:].flatten(1).mean(0))
    assert not bool(learner.prototype_ready[2]) and torch.all(learner.embeddings[2] == 0)
    x2 = torch.randn(4, 1, 4, 4)
    learner.train_step(x2, torch.tensor([0, 2, 2, 1]))  # classes 0, 1 keep their prototypes
    torch.testing.assert_close(learner.embeddings[0], x[:2].flatten(1).mean(0))
    torch.testing.assert_close(learner.embeddings[2], x2[1:3].flatten(1).mean(0))


@pytest.mark.parametrize("kw", [{"variant": "diffusion"}, {"embedding": "random"}, {"eta": 0.0},
                                {"ode_steps": 0}, {"optimizer": "lbfgs"}, {"logsnr_min": 5.0},
                                {"embedding_dim": 4}, {"weight_decay": -1.0}])
def test_bad_options_are_usage_errors(kw):
    with pytest.raises(UsageError):
        make(**kw)


def test_circuit_layouts_and_shapes():
    images = Task((1, 8, 8), 10)
    dt = NoPropBlocks(images, variant="dt", blocks=4, image_branch="conv", channels=[4, 8], norm="batch")
    assert len(dt.blocks) == 4 and dt.block_widths == [10] * 4 and not dt.shared
    x, z = torch.randn(5, 1, 8, 8), torch.randn(5, 10)
    assert dt(x, z, block=3).shape == (5, 10)
    assert dt.blocks[0].convs[0].conv.in_channels == 1  # conv image branch
    shared = NoPropBlocks(images, variant="fm", blocks=4, label_features=64, outputs=64)
    assert len(shared.blocks) == 1 and shared.shared
    out = shared(x, torch.randn(5, 64), torch.rand(5))
    assert out.shape == (5, 64)
    with pytest.raises(ValueError):
        shared(x, torch.randn(5, 64))  # the shared block needs t
    # no parameter is shared between the dt blocks
    ids = [{id(p) for p in b.parameters()} for b in dt.blocks]
    assert all(not (ids[i] & ids[j]) for i in range(4) for j in range(i + 1, 4))


def test_layout_and_widths_must_fit_the_variant():
    circuit = NoPropBlocks(TASK, variant="dt", blocks=2)
    with pytest.raises(UsageError, match=r"circuit\.variant=ct"):
        NoProp(circuit, TASK, variant="ct")
    with pytest.raises(UsageError, match=r"circuit\.label_features=16"):
        NoProp(circuit, TASK, embedding="prototype")
    fm = NoPropBlocks(TASK, variant="fm", label_features=16)
    with pytest.raises(UsageError, match=r"circuit\.outputs=16"):
        NoProp(fm, TASK, variant="fm", embedding="prototype")
    with pytest.raises(UsageError):
        NoPropBlocks(TASK, variant="sde")
    with pytest.raises(UsageError):
        NoPropBlocks(TASK, head=False)


def test_config_sets_the_circuit_layout_from_the_variant():
    from omegaconf import OmegaConf

    from bioplaus.config import compose
    from bioplaus.engine import build

    cfg = compose(["learner=noprop", "learner.variant=fm"])
    assert cfg.circuit.name == "noprop_blocks" and cfg.data.name == "digits"
    assert cfg.circuit.variant == "fm"
    keys = {k for k in cfg.learner if k != "name"}
    assert keys == set(NoProp.Options.fields())
    circuit_keys = set(OmegaConf.to_container(cfg.circuit)) - {"name"}
    assert circuit_keys == set(NoPropBlocks.Options.fields())
    bad = compose(["learner=noprop", "learner.variant=ct", "circuit.variant=dt"])
    with pytest.raises(UsageError, match=r"circuit\.variant=ct"):
        build(bad)


# -- learning on digits -----------------------------------------------------------------------------


def run(tmp_path, *overrides):
    from bioplaus.config import compose
    from bioplaus.engine import train

    cfg = compose(["learner=noprop", "trainer.checkpoint=false", "trainer.progress=none",
                   f"paths.runs={tmp_path}", *overrides])
    return train(cfg, run_dir=tmp_path / "run", quiet=True)


SMALL_DT = ["circuit.blocks=4", "trainer.epochs=15"]


def test_dt_learns_digits_with_four_blocks(tmp_path, untrained):
    """T = 4 blocks, 15 epochs: far above the same run with its blocks frozen (classifier trained)."""
    summary = run(tmp_path, *SMALL_DT)
    assert summary["status"] == "completed"
    assert summary["test_accuracy"] >= 0.8
    frozen = untrained.run(["learner=noprop", *SMALL_DT])
    assert_above("noprop dt 4 blocks", summary["test_accuracy"], frozen["test_accuracy"], 0.5)


@pytest.mark.slow
def test_dt_learns_digits_with_defaults(tmp_path, untrained):
    summary = run(tmp_path)
    assert summary["status"] == "completed"
    assert summary["test_accuracy"] >= 0.93
    frozen = untrained.run(["learner=noprop"])  # blocks frozen; classifier (and U) still trained
    assert_above("noprop dt", summary["test_accuracy"], frozen["test_accuracy"], 0.5)


@pytest.mark.parametrize("variant", ["ct", "fm"])
def test_continuous_variants_learn_digits(tmp_path, variant, untrained):
    summary = run(tmp_path, f"learner.variant={variant}")  # defaults, 60 epochs: a few seconds
    assert summary["test_accuracy"] >= 0.80
    frozen = untrained.run(["learner=noprop", f"learner.variant={variant}"])
    assert_above(f"noprop {variant}", summary["test_accuracy"], frozen["test_accuracy"], 0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", ["dt", "ct", "fm"])
def test_train_step_captures_as_cuda_graph(variant):
    torch.manual_seed(0)
    task = Task((1, 4, 4), 3)
    circuit = NoPropBlocks(task, variant=variant, blocks=3, image_hidden=[8], label_hidden=[8],
                           hidden=[8], time_features=4).cuda()
    learner = NoProp(circuit, task, variant=variant)
    x, y = torch.randn(16, 1, 4, 4, device="cuda"), torch.randint(0, 3, (16,), device="cuda")
    graph, out = capture_train_step(learner, x, y)
    before = [p.detach().clone() for p in learner.circuit.parameters()]
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(out["loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, learner.circuit.parameters(), strict=True))


# -- inference and the per-block term against values computed here ---------------------------------


def _cosine_alpha_bar_by_hand(blocks: int, offset: float = 0.008) -> list[float]:
    """ᾱ_t, t = 0..T: f(τ_t)/f(0), f(τ) = cos²(π/2 · (τ + s)/(1 + s)), τ_t = (T + 1 − t)/(T + 1)."""
    def f(tau: float) -> float:
        return math.cos((tau + offset) / (1 + offset) * math.pi / 2) ** 2

    return [max(f((blocks + 1 - t) / (blocks + 1)) / f(0.0), 0.0) for t in range(blocks + 1)]


def test_dt_inference_is_the_posterior_chain_with_fixed_noise():
    """infer(x) = z_T of z_t = a_t û_t(z_{t−1}, x) + b_t z_{t−1} + √c_t ε_t from z_0 ~ N(0, I), the
    coefficients computed here from ᾱ and the noise drawn in the same order from the same seed."""
    learner = make(blocks=3)
    for _ in range(5):  # blocks that are not at their initial weights
        learner.train_step(torch.randn(16, 1, 4, 4), torch.randint(0, 3, (16,)))
    x = torch.randn(6, 1, 4, 4)
    torch.manual_seed(11)
    got = learner.infer(x)

    ab = _cosine_alpha_bar_by_hand(3)
    torch.manual_seed(11)
    z = torch.randn(6, 3).double()
    for t in range(1, 4):
        alpha_prev = ab[t - 1] / ab[t]
        a = math.sqrt(ab[t]) * (1 - alpha_prev) / (1 - ab[t - 1])
        b = math.sqrt(alpha_prev) * (1 - ab[t]) / (1 - ab[t - 1])
        c = (1 - ab[t]) * (1 - alpha_prev) / (1 - ab[t - 1])
        with torch.no_grad():
            mixture = torch.softmax(learner.circuit.blocks[t - 1](x, z.float(), None).double(), 1)  # U = I
        z = a * mixture + b * z + math.sqrt(c) * torch.randn(6, 3).double()
    torch.testing.assert_close(got.double(), z, rtol=0, atol=1e-5)


def test_dt_per_block_terms_and_ce_by_hand():
    """loss_b_t = (T/2)·η·(SNR(t) − SNR(t−1))·mean_batch ‖softmax(block_t(x, z_{t−1})) − u_y‖², with
    z_{t−1} = √ᾱ_{t−1} u_y + √(1 − ᾱ_{t−1}) ε drawn from the step's seed; CE on z_T through the
    (zero-initialised) classifier is log C."""
    import copy

    learner = make(blocks=3, eta=0.5)
    blocks = copy.deepcopy(learner.circuit.blocks)  # the weights the step's losses are computed with
    x, y = torch.randn(8, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
    torch.manual_seed(5)
    metrics = learner.train_step(x, y)

    ab = _cosine_alpha_bar_by_hand(3)
    snr = [a / (1 - a) for a in ab]
    u = torch.eye(3)[y].double()
    torch.manual_seed(5)
    terms = []
    for t in range(1, 4):
        z = math.sqrt(ab[t - 1]) * u + math.sqrt(1 - ab[t - 1]) * torch.randn(8, 3).double()
        with torch.no_grad():
            p = torch.softmax(blocks[t - 1](x, z.float(), None).double(), 1)
        weight = 3 / 2 * 0.5 * (snr[t] - snr[t - 1])
        terms.append(weight * (p - u).pow(2).sum(1).mean())
        torch.testing.assert_close(metrics[f"loss_b{t}"].double(), terms[-1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["ce"].double(), torch.tensor(math.log(3), dtype=torch.float64))
    torch.testing.assert_close(metrics["denoise"].double(), sum(terms) / 3, rtol=1e-5, atol=1e-6)
