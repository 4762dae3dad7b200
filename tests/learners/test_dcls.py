"""The `dcls` learner: σ and learning-rate schedules, SLTT against BPTT, capture-safe steps, the
integer-delay evaluation, and learning on the `temporal` task that needs delays."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

for _package in ("spikingjelly", "snntorch", "DCLS"):
    pytest.importorskip(_package, reason="the snn extra is not installed: pip install 'bioplaus[snn]'")

from bioplaus.circuits.snn import SNN  # noqa: E402
from bioplaus.core import Task  # noqa: E402
from bioplaus.data import from_raw  # noqa: E402
from bioplaus.learners.dcls import Dcls, one_cycle_lr, sigma_at  # noqa: E402
from bioplaus.spiking_data import load_temporal  # noqa: E402
from tests.floors import assert_above  # noqa: E402
from tests.helpers import fit, forbid_host_reads  # noqa: E402


def test_sigma_reaches_half_at_a_quarter_of_the_epochs():
    for epochs, t_d in ((150, 25), (60, 31), (9, 7)):
        final = epochs // 4
        values = [sigma_at(e, epochs, t_d) for e in range(epochs + 1)]
        assert values[0] == pytest.approx(t_d // 2 + 0.27)
        assert values[final] == pytest.approx(0.5)
        assert values[final - 1] > 0.5
        assert all(a > b for a, b in itertools.pairwise(values[:final + 1]))
        assert all(v == pytest.approx(0.5) for v in values[final:])
    # the learner applies it to every delay synapse at epoch ends
    net = SNN(Task((10, 4), 2), hidden=[6], delays=True, max_delay=25)
    learner = Dcls(net, net.task, epochs=150)
    assert net.delay_synapses()[0].sigma == pytest.approx(12.27)
    learner.on_epoch_end(36)
    assert all(s.sigma > 0.5 for s in net.delay_synapses())
    learner.on_epoch_end(37)
    assert all(s.sigma == pytest.approx(0.5) for s in net.delay_synapses())


def test_weight_lr_follows_pytorch_one_cycle_stepped_per_epoch():
    epochs = 150
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs)
    for epoch in range(epochs):
        assert one_cycle_lr(epoch, epochs, 5e-3) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()
    net = SNN(Task((10, 4), 2), hidden=[6], delays=True, max_delay=5)
    learner = Dcls(net, net.task, epochs=epochs)
    learner.on_epoch_end(44)  # the peak: step 0.3·E − 1
    assert learner.weight_opt.param_groups[0]["lr"] == pytest.approx(5e-3, rel=1e-6)  # the peak
    cosine = 0.5 * (1 + math.cos(math.pi * 44 / 150))
    assert learner.position_opt.param_groups[0]["lr"] == pytest.approx(0.1 * cosine)


def _per_step_loss(net: SNN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    u = net.membranes(x)
    return sum(F.cross_entropy(u[t], y) for t in range(u.shape[0])) / u.shape[0]


@pytest.mark.parametrize("kernel", ["spikingjelly", "snntorch"])
def test_sltt_gradient_equals_bptt_gradient_without_leak(kernel):
    torch.manual_seed(0)
    x = (torch.rand(8, 20, 6) < 0.4).float() * 2.0
    y = torch.randint(0, 3, (8,))
    grads = {}
    for tau in (1.0, 2.0):
        net = SNN(Task((20, 6), 3), hidden=[16, 12], tau=tau, neurons=kernel, batchnorm=False)
        learner = Dcls(net, net.task, bptt="sltt", epochs=10)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        bptt = torch.autograd.grad(_per_step_loss(net, x, y), net.synapse_parameters())
        net.load_state_dict(state)
        learner._zero_grad()
        learner.sltt_backward(x, y)
        sltt = [p.grad for p in net.synapse_parameters()]
        grads[tau] = max(float((a - b).abs().max()) for a, b in zip(bptt, sltt, strict=True))
        assert max(float(g.abs().max()) for g in bptt) > 1e-3
    assert grads[1.0] < 1e-6  # τ = 1: nothing crosses time, SLTT drops nothing
    assert grads[2.0] > 1e-4  # with a leak the temporal route SLTT drops is real


@pytest.mark.parametrize("bptt", ["full", "sltt"])
def test_train_step_reads_nothing_back_to_the_host(bptt, monkeypatch):
    torch.manual_seed(0)
    net = SNN(Task((12, 5), 3), hidden=[8], delays=True, max_delay=5, dropout=0.2)
    learner = Dcls(net, net.task, bptt=bptt, epochs=4)
    x, y = (torch.rand(6, 12, 5) < 0.4).float(), torch.randint(0, 3, (6,))
    p_before = net.position_parameters()[0].detach().clone()
    learner.train_step(x, y)  # optimizer state created outside the check
    # CPU Adam reads its step count on the host by design (on CUDA make_optimizer builds it
    # capturable): the optimizer steps are left out of the check, everything else is in it
    for opt in learner.optimizers.values():
        monkeypatch.setattr(opt, "step", lambda: None)
    forbid_host_reads(monkeypatch)
    out = learner.train_step(x, y)
    monkeypatch.undo()
    assert set(out) == {"loss", "accuracy"} and out["loss"].dim() == 0
    p_after = net.position_parameters()[0].detach()
    assert not torch.equal(p_before, p_after)  # positions learn ...
    assert float(p_after.abs().max()) <= 2.0  # ... and stay clamped to ±⌊T_d/2⌋


def _small_temporal():
    raw = load_temporal(seed=0, classes=4, channels=6, steps=24, gap=2, train=320, test=200)
    return from_raw(raw, name="temporal", normalize="none", seed=0, val_fraction=0.0)


def test_learned_delays_solve_a_timing_task_a_net_without_delays_cannot(untrained):
    data = _small_temporal()
    accuracy = {}
    for delays in (True, False):
        torch.manual_seed(0)
        net = SNN(data.task, hidden=[32], delays=delays, max_delay=11)
        learner = Dcls(net, data.task, epochs=6)
        accuracy[delays] = fit(learner, data, 6, batch_size=32)[""]
    chance = 1 / data.task.num_classes
    assert accuracy[True] >= 0.9
    assert accuracy[False] <= chance + 0.2
    # the hidden block's weights and delays frozen at their initial values, the output layer trained
    frozen = untrained.fit("dcls snn temporal", lambda: Dcls(SNN(data.task, hidden=[32], delays=True,
                                                                 max_delay=11), data.task, epochs=6),
                           data, 6, batch_size=32)[""]
    assert_above("dcls snn temporal", accuracy[True], frozen, 0.2)


def test_backprop_trains_the_snn_circuit_as_the_baseline():
    from bioplaus.learners.backprop import Backprop

    data = _small_temporal()
    torch.manual_seed(0)
    net = SNN(data.task, hidden=[32], delays=True, max_delay=11)
    learner = Backprop(net, data.task, lr=5e-3)
    x, y = data.train_x[:64], data.train_y[:64]
    first = float(learner.train_step(x, y)["loss"])
    for _ in range(30):
        last = float(learner.train_step(x, y)["loss"])
    assert last < 0.5 * first


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bptt", ["full", "sltt"])
def test_train_step_is_captured_as_a_cuda_graph_without_host_sync(bptt):
    from tests.helpers import capture_train_step

    torch.manual_seed(0)
    task = Task((40, 140), 20)
    net = SNN(task, hidden=[64, 64], delays=True, max_delay=25, dropout=0.4).cuda()
    learner = Dcls(net, task, bptt=bptt, epochs=10)
    x = (torch.rand(32, 40, 140, device="cuda") < 0.05).float()
    y = torch.randint(0, 20, (32,), device="cuda")
    graph, out = capture_train_step(learner, x, y, forbid_sync=True)
    before = net.position_parameters()[0].detach().clone()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(out["loss"])
    assert not torch.equal(before, net.position_parameters()[0])


@pytest.mark.slow
def test_cli_dcls_on_temporal_needs_the_delays(tmp_path):
    """`bioplaus run learner=dcls` (the temporal default) reaches ≥ 0.95 test accuracy; the same net
    with delays fixed at zero (plain synapses) stays within 20 points of chance. Minutes on CPU."""
    from tests.helpers import last_line, run_cli, summary_of

    accuracy = {}
    for delays in ("true", "false"):
        result = run_cli("run", "learner=dcls", f"circuit.delays={delays}", "device=cpu", "threads=1",
                         f"paths.runs={tmp_path}", "trainer.progress=none", timeout=1800)
        assert result.returncode == 0, result.stderr
        run_dir = last_line(result.stdout)
        accuracy[delays] = summary_of(run_dir)["test_accuracy"]
        if delays == "true":
            from pathlib import Path

            assert (Path(run_dir) / "spike_raster.png").stat().st_size > 1000
            assert (Path(run_dir) / "delay_histogram.png").stat().st_size > 1000
    assert accuracy["true"] >= 0.95
    assert accuracy["false"] <= 0.25 + 0.20
