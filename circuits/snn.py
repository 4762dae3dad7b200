"""`snn` — layers of leaky integrate-and-fire neurons, optionally with a learnable delay on every synapse.

Neuron (LIF, multi-step, no input decay, hard reset to 0; τ in time steps, V_th = 1):

    H[t] = (1 − 1/τ) V[t−1] + I[t]                       charge
    S[t] = Θ(H[t] − V_th)                                 fire
    V[t] = H[t] (1 − sg(S[t]))                            hard reset, the reset detached from the graph

Θ is the Heaviside step in the forward pass; its surrogate derivative (ATan, Fang et al. 2021) is

    ∂S/∂H = (α/2) / (1 + (π α (H − V_th) / 2)²),          α = 5, so ∂S/∂H = α/2 at the threshold.

Synapses. Without delays, I_i[t] = Σ_j w_ij S_j[t]. With ``delays=true`` every synapse also has a
delay d_ij ∈ {0, …, T_d − 1} (Hammouamri, Khalfaoui-Hassani & Masquelier, "Learning Delays in
Spiking Neural Networks using Dilated Convolutions with Learnable Spacings", ICLR 2024,
arXiv 2306.17670):

    I_i[t] = Σ_j w_ij S_j[t − d_ij]

computed as a temporal 1-D convolution whose kernel holds one tap per synapse (the `dcls`
package's ``Dcls1d``, ``kernel_count=1``). The tap sits at the learnable position p_ij ∈
[−⌊T_d/2⌋, ⌊T_d/2⌋]; the input (batch, channels, time) is zero-padded T_d − 1 steps on the left and
(T_d − 1)//2 on the right, so tap n carries delay T_d − 1 − n and

    d_ij = (T_d − 1)/2 − p_ij.

Each delay layer lengthens the sequence by (T_d − 1)//2 steps. In training the tap is a Gaussian of
width σ (renormalised to sum 1, so w_ij stays the synapse's total efficacy):

    k_ij[n] = w_ij g_ij[n] / Σ_m g_ij[m],   g_ij[n] = exp(−½ ((n − p_ij − ⌊T_d/2⌋)/σ)²),   σ = s + 0.27,

with s a frozen value the learner schedules (`set_sigma`). As in the paper's code, weights start
Kaiming-uniform (ReLU gain) and positions uniform in [−⌊T_d/2⌋, ⌊T_d/2⌋]; synapses have no bias.
``quantised=True`` evaluates with integer delays instead — positions rounded, one-hot taps —
without touching any parameter.

Block l (hidden): synapse → BatchNorm over channels (statistics over batch × time) → LIF →
dropout on the spikes (one mask per example and neuron, shared by every time step). The output
block is a synapse into non-spiking leaky integrators, U[t] = (1 − 1/τ) U[t−1] + I[t]; their
membranes over time are the readout, and `forward` returns the class scores
score_c = Σ_t softmax(U[t])_c (the readout of the paper's code; a cross-entropy on it is the
paper's loss, see `learners/dcls.py`).

Layout. Spiking data are (batch, T, channels) — ``input_layout = "batch_time"`` — so the engine stores,
shuffles and splits them along dim 0 like any other data; the circuit transposes to (T, batch,
channels) inside, the layout of multi-step neuron kernels (SpikingJelly's ``lif_multi_step``,
one time step per loop iteration of snnTorch), where a step is a contiguous slice.

Neuron kernels: ``neurons=spikingjelly`` (``spikingjelly.activation_based`` functional LIF) or
``neurons=snntorch`` (``snntorch.Leaky`` with zero reset); both compute the equations above and
give the same spikes (snnTorch fires at H > V_th, SpikingJelly at H ≥ V_th: they differ only when
H equals the threshold exactly). Both packages, and ``dcls``, come with the ``snn`` extra.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt, model_validator
from torch import Tensor, nn

from bioplaus.circuits.rnn import as_sequence, sequence_shape
from bioplaus.core import Circuit, Task
from bioplaus.errors import require_package
from bioplaus.options import CircuitOptions, option
from bioplaus.registry import register_circuit

V_THRESHOLD = 1.0
SIGMA_OFFSET = 0.27  # σ = s + 0.27 in the Gaussian tap of `dcls`


def _require(package: str) -> Any:
    return require_package(package, "circuit 'snn'", "snn")


# -- neurons -------------------------------------------------------------------------------------


def atan_surrogate_grad(h: Tensor, alpha: float, v_threshold: float = V_THRESHOLD) -> Tensor:
    """∂S/∂H of the ATan surrogate: (α/2) / (1 + (π α (H − V_th)/2)²)."""
    return (alpha / 2) / (1 + (math.pi * alpha * (h - v_threshold) / 2) ** 2)


class LIF(nn.Module):
    """Multi-step LIF of the module docstring; ``forward(current, state)`` on (T, batch, n).

    ``state`` is the neuron's memory after the previous step (None: zeros) and is returned with
    the spikes; callers may detach it between calls (SLTT). What the state holds depends on the
    kernel (SpikingJelly: V after reset; snnTorch: H before reset, reset applied at the next step);
    both give the same V[t].
    """

    def __init__(self, tau: float, alpha: float, kernel: str):
        super().__init__()
        self.tau, self.alpha, self.kernel = float(tau), float(alpha), kernel
        if kernel == "spikingjelly":
            _require("spikingjelly")
            from spikingjelly.activation_based import surrogate
            from spikingjelly.activation_based.functional.neuron import lif_multi_step

            self._surrogate = surrogate.ATan(alpha=self.alpha)
            self._lif_multi_step = lif_multi_step
        else:
            snntorch = _require("snntorch")
            from snntorch import surrogate as snn_surrogate

            self.leaky = snntorch.Leaky(beta=1.0 - 1.0 / self.tau, threshold=V_THRESHOLD,
                                        spike_grad=snn_surrogate.atan(alpha=self.alpha),
                                        reset_mechanism="zero", init_hidden=False)

    def forward(self, current: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if state is None:
            state = torch.zeros_like(current[0])
        if self.kernel == "spikingjelly":
            spikes, v, _ = self._lif_multi_step(current, state, self.tau, False, V_THRESHOLD, 0.0,
                                                self._surrogate, True, False)
            return spikes, v
        out = []
        mem = state
        for t in range(current.shape[0]):
            spk, mem = self.leaky(current[t], mem)
            out.append(spk.to(current.dtype))  # snnTorch's spikes are float32 whatever the input
        return torch.stack(out), mem

    def extra_repr(self) -> str:
        return f"tau={self.tau}, alpha={self.alpha}, kernel={self.kernel}"


def leaky_integrate(current: Tensor, tau: float, state: Tensor | None = None) -> Tensor:
    """U[t] = (1 − 1/τ) U[t−1] + I[t] over (T, batch, n): the membranes of non-spiking neurons."""
    decay = 1.0 - 1.0 / tau
    u = torch.zeros_like(current[0]) if state is None else state
    out = []
    for t in range(current.shape[0]):
        u = decay * u + current[t]
        out.append(u)
    return torch.stack(out)


# -- synapses ------------------------------------------------------------------------------------


class LinearSynapse(nn.Module):
    """I[t] = W S[t] at every step, (T, batch, in) -> (T, batch, out); no bias."""

    has_delays = False
    extra_steps = 0

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: Tensor, quantised: bool = False) -> Tensor:
        return x @ self.weight.t()


class DelaySynapse(nn.Module):
    """A weight and a learnable delay on every synapse (module docstring), (T, batch, in) ->
    (T + (T_d − 1)//2, batch, out). ``max_delay`` T_d must be odd.

    Parameters: ``weight`` (out, in) and ``positions`` (out, in), both views of the wrapped
    ``Dcls1d``'s tensors; its ``SIG`` is frozen and set by `set_sigma`.
    """

    has_delays = True

    def __init__(self, in_features: int, out_features: int, max_delay: int):
        super().__init__()
        dcls = _require("DCLS.construct.modules")
        self.max_delay = int(max_delay)
        self.limit = self.max_delay // 2
        self.extra_steps = (self.max_delay - 1) // 2
        self.conv = dcls.Dcls1d(in_features, out_features, kernel_count=1,
                                dilated_kernel_size=self.max_delay, bias=False, version="gauss")
        self.conv.SIG.requires_grad_(False)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.conv.weight, nonlinearity="relu")
            self.conv.P.uniform_(-self.limit, self.limit)
        self.set_sigma(float(self.limit) + SIGMA_OFFSET)

    @property
    def weight(self) -> Tensor:
        """(out, in) synaptic weights."""
        return self.conv.weight[:, :, 0]

    @property
    def positions(self) -> Tensor:
        """(out, in) tap positions p_ij, centred at 0."""
        return self.conv.P[0, :, :, 0]

    @property
    def sigma(self) -> float:
        return float(self.conv.SIG.abs().flatten()[0]) + SIGMA_OFFSET

    @torch.no_grad()
    def set_sigma(self, sigma: float) -> None:
        """Gaussian tap width σ ≥ 0.27 (in place: a captured graph sees it)."""
        self.conv.SIG.fill_(max(sigma - SIGMA_OFFSET, 0.0))

    @torch.no_grad()
    def clamp_positions(self) -> None:
        """Keep every p_ij in [−⌊T_d/2⌋, ⌊T_d/2⌋]."""
        self.conv.P.clamp_(-self.limit, self.limit)

    def delays(self) -> Tensor:
        """(out, in) integer delays in steps of the rounded positions: (T_d − 1)/2 − round(p)."""
        p = self.positions.detach().round().clamp(-self.limit, self.limit)
        return ((self.max_delay - 1) // 2 - p).long()

    def kernel(self, quantised: bool = False) -> Tensor:
        """The dense (out, in, T_d) kernel: Gaussian taps, or one-hot taps at rounded positions."""
        if not quantised:
            return self.conv.DCK(self.conv.weight, self.conv.P, self.conv.SIG)
        tap = (self.positions.detach().round().clamp(-self.limit, self.limit) + self.limit).long()
        onehot = F.one_hot(tap, self.max_delay).to(self.weight.dtype)
        return onehot * self.weight.unsqueeze(-1)

    def forward(self, x: Tensor, quantised: bool = False) -> Tensor:
        seq = x.permute(1, 2, 0)  # (batch, in, T)
        seq = F.pad(seq, (self.max_delay - 1, self.extra_steps))
        out = F.conv1d(seq, self.kernel(quantised))
        return out.permute(2, 0, 1)


# -- blocks --------------------------------------------------------------------------------------


class SpikingBlock(nn.Module):
    """synapse → BatchNorm (over batch × time) → LIF → dropout on spikes (mask shared over time)."""

    def __init__(self, synapse: nn.Module, width: int, tau: float, alpha: float, kernel: str,
                 batchnorm: bool, dropout: float):
        super().__init__()
        self.synapse = synapse
        self.norm = nn.BatchNorm1d(width) if batchnorm else None
        self.neuron = LIF(tau, alpha, kernel)
        self.dropout = float(dropout)

    @property
    def out_features(self) -> int:
        return self.synapse.weight.shape[0]

    def normalise(self, current: Tensor) -> Tensor:
        if self.norm is None:
            return current
        shape = current.shape
        return self.norm(current.reshape(-1, shape[-1])).reshape(shape)

    def dropout_mask(self, like: Tensor) -> Tensor | None:
        """(batch, n) mask scaled by 1/(1 − p) in training, None otherwise."""
        if not self.training or self.dropout == 0.0:
            return None
        keep = torch.full_like(like, 1.0 - self.dropout)
        return torch.bernoulli(keep) / (1.0 - self.dropout)

    def forward(self, x: Tensor, quantised: bool = False) -> Tensor:
        spikes, _ = self.neuron(self.normalise(self.synapse(x, quantised)))
        mask = self.dropout_mask(spikes[0])
        return spikes if mask is None else spikes * mask


class OutputBlock(nn.Module):
    """synapse → non-spiking leaky integrators; returns their membranes (T, batch, C)."""

    def __init__(self, synapse: nn.Module, tau: float):
        super().__init__()
        self.synapse = synapse
        self.tau = float(tau)

    @property
    def out_features(self) -> int:
        return self.synapse.weight.shape[0]

    def forward(self, x: Tensor, quantised: bool = False) -> Tensor:
        return leaky_integrate(self.synapse(x, quantised), self.tau)


def readout_scores(membranes: Tensor) -> Tensor:
    """(T, batch, C) output membranes -> (batch, C) scores Σ_t softmax_c(U[t])."""
    return membranes.softmax(dim=-1).sum(dim=0)


@register_circuit
class SNN(Circuit):
    """LIF layers of widths ``hidden`` (optionally with learnable delays), a non-spiking readout."""

    name = "snn"
    input_layout = "batch_time"

    class Options(CircuitOptions):
        hidden: list[PositiveInt] = option([256, 256], "widths of the spiking hidden layers", min_length=1)
        neurons: Literal["spikingjelly", "snntorch"] = option("spikingjelly", "LIF kernel package")
        tau: float = option(1.005, "membrane time constant τ in time steps (leak factor 1 − 1/τ)", ge=1)
        alpha: float = option(5.0, "sharpness α of the ATan surrogate gradient", gt=0)
        delays: bool = option(False, "a learnable delay on every synapse (DCLS taps)")
        max_delay: int = option(25, "T_d: delays span 0..T_d−1 steps (odd)", ge=1)
        batchnorm: bool = option(True, "BatchNorm over channels after each hidden synapse")
        dropout: float = option(0.0, "dropout probability on hidden spikes", ge=0, lt=1)

        @model_validator(mode="after")
        def _odd_max_delay(self) -> SNN.Options:
            if self.delays and self.max_delay % 2 == 0:
                raise ValueError(f"circuit.max_delay must be odd with circuit.delays=true (delays span "
                                 f"0..T_d−1 around a centred tap); got {self.max_delay}.")
            return self

    def __init__(self, task: Task, head: bool = True, **options: Any):
        super().__init__(task, head=head, **options)
        o = self.options
        self.steps, features = sequence_shape(tuple(task.input_shape))
        for width in o.hidden:
            self.blocks.append(SpikingBlock(self._synapse(features, width), width, o.tau, o.alpha,
                                            o.neurons, o.batchnorm, o.dropout))
            features = width
        self.has_head = head
        if head:
            self.blocks.append(OutputBlock(self._synapse(features, task.num_classes), o.tau))

    def _synapse(self, n_in: int, n_out: int) -> nn.Module:
        if self.options.delays:
            return DelaySynapse(n_in, n_out, self.options.max_delay)
        return LinearSynapse(n_in, n_out)

    # -- structure -------------------------------------------------------------------------------
    @property
    def block_widths(self) -> list[int]:
        return [b.out_features for b in self.blocks]

    def synapses(self) -> list[nn.Module]:
        return [b.synapse for b in self.blocks]

    def delay_synapses(self) -> list[DelaySynapse]:
        return [s for s in self.synapses() if isinstance(s, DelaySynapse)]

    def output_steps(self) -> int:
        """Length of the readout sequence: T + (T_d − 1)//2 per delay layer."""
        return self.steps + sum(s.extra_steps for s in self.synapses())

    def synapse_parameters(self) -> list[nn.Parameter]:
        """Weights of every synapse (and BatchNorm's affine parameters) — not the positions."""
        out: list[nn.Parameter] = []
        for block in self.blocks:
            out.append(block.synapse.conv.weight if block.synapse.has_delays else block.synapse.weight)
            if getattr(block, "norm", None) is not None:
                out += list(block.norm.parameters())
        return out

    def position_parameters(self) -> list[nn.Parameter]:
        return [s.conv.P for s in self.delay_synapses()]

    def structure_metrics(self) -> dict[str, float]:
        syn = self.synapses()
        out = {"synapses": float(sum(s.weight.numel() for s in syn))}
        delays = self.delay_synapses()
        if delays:
            d = torch.cat([s.delays().flatten().float() for s in delays])
            out["mean_delay_steps"] = float(d.mean())
        return out

    # -- forward passes (full sequence) -----------------------------------------------------------
    def layer_outputs(self, x: Tensor, quantised: bool = False) -> list[Tensor]:
        """Every block's output for (batch, T, channels) input, time first: spikes (T_l, batch,
        n_l) of each hidden block, then (with a head) the output membranes (T', batch, C)."""
        h = as_sequence(x).transpose(0, 1)
        outs = []
        for block in self.blocks:
            h = block(h, quantised)
            outs.append(h)
        return outs

    def membranes(self, x: Tensor, quantised: bool = False) -> Tensor:
        """Output membranes (T', batch, C) for input (batch, T, channels)."""
        if not self.has_head:
            raise ValueError("circuit 'snn' was built without its output layer (head=False).")
        return self.layer_outputs(x, quantised)[-1]

    def forward(self, x: Tensor, quantised: bool = False) -> Tensor:
        """Class scores (batch, C): Σ_t softmax(U[t]) of the output membranes."""
        return readout_scores(self.membranes(x, quantised))

    def activations(self, x: Tensor) -> list[Tensor]:
        return [h.transpose(0, 1) for h in self.layer_outputs(x)]

    # -- SLTT: one time step at a time ----------------------------------------------------------------
    def run_steps(self, x: Tensor, on_step: Callable[[int, Tensor], None]) -> Tensor:
        """Run the net one time step at a time with no graph across steps (SLTT, Meng et al. 2023).

        At each step t of the T' readout steps, ``on_step(t, U[t])`` receives the output membrane
        (with its graph to this step's inputs) and is expected to call backward on a loss of it.
        Across steps the membranes, and the spikes a delay synapse buffers from earlier steps,
        are detached: only the spatial route of step t carries gradient. Delay kernels are built
        once; their gradient, accumulated over the steps, reaches weights and positions at the
        end. BatchNorm uses the statistics of each step's batch. Returns the readout sequence
        (T', batch, C), detached.
        """
        if not self.has_head:
            raise ValueError("circuit 'snn' was built without its output layer (head=False).")
        xs = as_sequence(x).transpose(0, 1)
        batch, total = xs.shape[1], self.output_steps()
        kernels, leaves, buffers, lengths, n = [], [], [], [], self.steps
        for syn in self.synapses():
            k = syn.kernel() if syn.has_delays else None
            kernels.append(k)
            leaves.append(None if k is None else k.detach().requires_grad_(k.requires_grad))
            buffers.append(xs.new_zeros(syn.max_delay, batch, syn.weight.shape[1]) if syn.has_delays
                           else None)
            n += syn.extra_steps
            lengths.append(n)
        states: list[Tensor | None] = [None] * len(self.blocks)
        masks: list[Tensor | None] = [None] * len(self.blocks)
        readout = []
        for t in range(total):
            # a copy of step t's input: what the step's graph keeps is this step's slice, not the
            # storage of the whole sequence
            h = xs[t].clone() if t < self.steps else xs.new_zeros(batch, xs.shape[2])
            for i, block in enumerate(self.blocks):
                syn = block.synapse
                if syn.has_delays:
                    buffers[i] = torch.cat([buffers[i][1:].detach(), h.unsqueeze(0)])
                    current = torch.einsum("oin,nbi->bo", leaves[i], buffers[i])
                else:
                    current = syn(h)
                h, states[i] = _step_block(block, current, states[i])
                if t == 0 and not isinstance(block, OutputBlock):
                    masks[i] = block.dropout_mask(h)
                if masks[i] is not None:
                    h = h * masks[i]
                if t >= lengths[i] and not isinstance(block, OutputBlock):
                    h = torch.zeros_like(h)
            on_step(t, h)
            readout.append(h.detach())
        for k, leaf in zip(kernels, leaves, strict=True):
            if k is not None and leaf.grad is not None:
                k.backward(leaf.grad)
        return torch.stack(readout)


def _step_block(block: nn.Module, current: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
    """One time step of a block given its synaptic current (batch, n) and its state from the
    previous step, detached (the SLTT cut): (output, new state). The output layer integrates
    U[t] = (1 − 1/τ) U[t−1] + I[t] and returns U; a spiking block normalises the current and
    returns its spikes."""
    previous = None if state is None else state.detach()
    if isinstance(block, OutputBlock):
        u = current if previous is None else (1.0 - 1.0 / block.tau) * previous + current
        return u, u
    if block.norm is not None:
        current = block.norm(current)
    spikes, state = block.neuron(current.unsqueeze(0), previous)
    return spikes[0], state
