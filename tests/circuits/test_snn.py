"""The `snn` circuit: LIF charge/fire/reset, the ATan surrogate, SpikingJelly vs snnTorch, the
delay synapse's index convention, the SHD parameter count, and step-by-step (SLTT) running."""

from __future__ import annotations

import pytest
import torch

for _package in ("spikingjelly", "snntorch", "DCLS"):
    pytest.importorskip(_package, reason="the snn extra is not installed: pip install 'bioplaus[snn]'")

from bioplaus.circuits.snn import LIF, SNN, DelaySynapse, atan_surrogate_grad  # noqa: E402
from bioplaus.core import Task  # noqa: E402

KERNELS = ("spikingjelly", "snntorch")


def _step_by_step(lif: LIF, current: torch.Tensor) -> tuple[list[float], list[float]]:
    state, spikes, states = None, [], []
    for t in range(current.shape[0]):
        s, state = lif(current[t:t + 1], state)
        spikes.append(float(s[0, 0, 0]))
        states.append(float(state[0, 0]))
    return spikes, states


@pytest.mark.parametrize("kernel", KERNELS)
def test_lif_charge_fire_reset_match_a_hand_computed_trace(kernel):
    # τ = 2: H[t] = V[t−1]/2 + I[t]; spike when H ≥ 1, then V = 0
    current = torch.tensor([0.6, 0.6, 0.6, 1.5, 0.0, -0.2, 0.4]).reshape(-1, 1, 1)
    spikes, states = _step_by_step(LIF(2.0, 5.0, kernel), current)
    assert spikes == [0, 0, 1, 1, 0, 0, 0]
    h = [0.6, 0.9, 1.05, 1.5, 0.0, -0.2, 0.3]  # charge, by hand
    v = [0.6, 0.9, 0.0, 0.0, 0.0, -0.2, 0.3]  # after the hard reset
    # SpikingJelly keeps V (after reset); snnTorch keeps H and resets at the next step
    assert states == pytest.approx(v if kernel == "spikingjelly" else h, abs=1e-6)
    # the multi-step call gives the same spikes as the step-by-step one
    s, _ = LIF(2.0, 5.0, kernel)(current)
    assert s.flatten().tolist() == spikes


@pytest.mark.parametrize("kernel", KERNELS)
def test_atan_surrogate_derivative_at_threshold_is_half_alpha(kernel):
    alpha = 5.0
    current = torch.ones(1, 1, 1, requires_grad=True)  # H = V_th exactly at the first step
    spikes, _ = LIF(2.0, alpha, kernel)(current)
    spikes.sum().backward()
    assert float(current.grad) == pytest.approx(alpha / 2)
    assert float(atan_surrogate_grad(torch.tensor(1.0), alpha)) == pytest.approx(alpha / 2)
    assert float(atan_surrogate_grad(torch.tensor(1.2), alpha)) == pytest.approx(
        2.5 / (1 + (torch.pi * 5 * 0.2 / 2) ** 2))


@pytest.mark.parametrize("delays", [False, True])
def test_spikingjelly_and_snntorch_neurons_give_identical_spikes(delays):
    task = Task((30, 12), 5)
    torch.manual_seed(0)
    sj = SNN(task, hidden=[40, 30], neurons="spikingjelly", tau=2.0, delays=delays, max_delay=7)
    st = SNN(task, hidden=[40, 30], neurons="snntorch", tau=2.0, delays=delays, max_delay=7)
    missing, unexpected = st.load_state_dict(sj.state_dict(), strict=False)
    assert not unexpected and all(".leaky." in k for k in missing)  # snnTorch's own constants
    x = (torch.rand(16, 30, 12) < 0.3).float()
    out_sj, out_st = sj.layer_outputs(x), st.layer_outputs(x)
    assert sum(float(o.sum()) for o in out_sj[:-1]) > 100  # the layers do spike
    for a, b in zip(out_sj[:-1], out_st[:-1], strict=True):
        assert torch.equal(a, b)
    assert torch.allclose(out_sj[-1], out_st[-1], atol=1e-5)  # output membranes (no spikes)


def _explicit_shift(x: torch.Tensor, weight: torch.Tensor, delays: torch.Tensor, extra: int) -> torch.Tensor:
    """out[t, b, o] = Σ_i w[o, i] x[t − d[o, i], b, i], t = 0..T+extra−1, written out by loops."""
    steps, batch, n_in = x.shape
    out = torch.zeros(steps + extra, batch, weight.shape[0])
    for o in range(weight.shape[0]):
        for i in range(n_in):
            d = int(delays[o, i])
            out[d:d + steps, :, o] += weight[o, i] * x[:steps + extra - d, :, i]
    return out


def test_integer_delay_synapse_equals_an_explicit_shift_bit_for_bit():
    torch.manual_seed(1)
    t_d, n_in, n_out = 9, 5, 4
    syn = DelaySynapse(n_in, n_out, t_d)
    with torch.no_grad():  # dyadic weights and 0/1 inputs: every sum is exact in float32
        syn.conv.weight.copy_(torch.randint(-8, 9, syn.conv.weight.shape) / 8)
        syn.conv.P.copy_(torch.randint(-(t_d // 2), t_d // 2 + 1, syn.conv.P.shape).float())
    x = (torch.rand(20, 3, n_in) < 0.4).float()
    delays = (t_d - 1) // 2 - syn.positions.detach()
    assert torch.equal(syn.delays(), delays.long())
    expected = _explicit_shift(x, syn.weight.detach(), delays, syn.extra_steps)
    assert torch.equal(syn(x, quantised=True), expected)
    # the trained (Gaussian) tap approaches the same shift as σ shrinks to its floor 0.27
    syn.set_sigma(0.27)
    assert torch.allclose(syn(x).detach(), expected, atol=0.05)
    syn.set_sigma(4.0)
    assert not torch.allclose(syn(x).detach(), expected, atol=0.05)


def test_quantised_forward_changes_no_parameter():
    torch.manual_seed(2)
    net = SNN(Task((15, 6), 3), hidden=[8], delays=True, max_delay=5, tau=2.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    net(torch.rand(4, 15, 6).round(), quantised=True)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(net.delay_synapses()[0].positions, net.delay_synapses()[0].positions.round())


def test_shd_configuration_has_212992_weights_and_positions():
    net = SNN(Task((100, 140), 20), hidden=[256, 256], delays=True, max_delay=25, dropout=0.4)
    weights = sum(s.weight.numel() for s in net.synapses())
    positions = sum(p.numel() for p in net.position_parameters())
    assert weights == positions == 106_496
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == 212_992 + 2 * 2 * 256  # + BatchNorm's scale and shift per hidden neuron
    assert net.output_steps() == 100 + 3 * 12
    assert net(torch.zeros(2, 100, 140)).shape == (2, 20)


@pytest.mark.parametrize("delays", [False, True])
def test_step_by_step_run_computes_the_same_readout_as_the_full_sequence(delays):
    torch.manual_seed(3)
    net = SNN(Task((18, 6), 3), hidden=[10, 8], delays=delays, max_delay=5, tau=2.0, batchnorm=False)
    x = (torch.rand(4, 18, 6) < 0.5).float() * 3.0
    full = net.membranes(x).detach()
    steps = net.run_steps(x, lambda t, u: None)
    assert steps.shape == full.shape
    assert torch.allclose(steps, full, atol=1e-5)


def test_odd_max_delay_is_required_and_images_are_read_row_by_row():
    from bioplaus.errors import UsageError

    with pytest.raises(UsageError, match="max_delay must be odd"):
        SNN(Task((10, 4), 2), hidden=[4], delays=True, max_delay=4)
    net = SNN(Task((1, 8, 8), 3), hidden=[4])
    assert net.steps == 8 and net(torch.rand(2, 1, 8, 8)).shape == (2, 3)
