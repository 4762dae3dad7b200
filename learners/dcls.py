"""`dcls` — surrogate-gradient training of spiking nets with learnable synaptic delays.

Hammouamri, Khalfaoui-Hassani & Masquelier, "Learning Delays in Spiking Neural Networks using
Dilated Convolutions with Learnable Spacings", ICLR 2024 (arXiv 2306.17670). The circuit is `snn`
(see ``circuits/snn.py`` for the neuron, the delay synapse and the readout).

Loss (the paper's code, not a per-step cross-entropy): with U[t] the output membranes,

    score_c = Σ_t softmax_c(U[t]),      L = CE(score, y) = −log softmax_y(score),

i.e. a softmax at each step, summed over time, then a cross-entropy that applies its own
log-softmax on top. The prediction is argmax_c score_c.

Two optimisers: the synaptic weights (and BatchNorm) with Adam, weight decay 1e-5 (none on
BatchNorm), under the one-cycle schedule (peak 5e-3, which replaces the paper's base rate 1e-3 from
the first step) stepped once per epoch; the delay
positions with Adam, lr 0.1, under cosine annealing over the epochs. After every step the positions
are clamped to [−⌊T_d/2⌋, ⌊T_d/2⌋]. The Gaussian tap width decays per epoch:

    σ_e = s_e + 0.27,   s_0 = ⌊T_d/2⌋,   s_e = s_0 · (0.23/s_0)^{e/E_f}  for e ≤ E_f = ⌊E/4⌋,

so σ reaches 0.5 at epoch ⌊E/4⌋ and stays there. Evaluation uses integer delays: positions
rounded, one-hot taps, through a forward path that changes no parameter.

``bptt=sltt`` (Meng et al., "Towards Memory- and Time-Efficient Backpropagation for Training
Spiking Neural Networks", ICCV 2023, arXiv 2302.14311): the net runs one step at a time with the
membranes detached across steps (and, with delays, the spikes buffered from earlier steps), a loss
and a backward at every step, the gradients accumulated and one optimiser step per batch; the
activation memory then does not grow with T. The summed-softmax loss does not split over steps,
so SLTT uses the SLTT paper's per-step loss, L = Σ_t CE(U[t], y)/T'. With no leak between steps
(τ = 1) and no delays its gradient equals that of backpropagation through time on the same loss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from bioplaus.circuits.snn import SIGMA_OFFSET, SNN
from bioplaus.core import Circuit, Learner, Task
from bioplaus.functional import accuracy
from bioplaus.optim import make_optimizer, set_lr
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner

SIGMA_FINAL = 0.5


def sigma_at(epoch: int, epochs: int, max_delay: int, fraction: float = 0.25) -> float:
    """σ after ``epoch`` epochs (0: before training) of ``epochs``: s_0 = ⌊T_d/2⌋ decays
    geometrically to 0.23 at epoch ⌊fraction·E⌋ (σ = s + 0.27 = 0.5), then stays."""
    s0 = float(max_delay // 2)
    final = SIGMA_FINAL - SIGMA_OFFSET
    if s0 <= final:
        return SIGMA_FINAL
    span = math.floor(fraction * epochs)
    if span <= 0 or epoch >= span:
        return SIGMA_FINAL
    return s0 * (final / s0) ** (epoch / span) + SIGMA_OFFSET


def one_cycle_lr(epoch: int, epochs: int, peak: float, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    """The learning rate of PyTorch's ``OneCycleLR`` (cosine annealing, two phases) after ``epoch``
    of ``epochs`` scheduler steps: from peak/25 up to ``peak`` over 30 % of the steps, then down
    to peak/25/10⁴. Computed here so that the rate stays one device tensor changed in place."""
    initial, minimum = peak / div_factor, peak / div_factor / final_div_factor
    total = max(epochs, 2)
    up_end = float(pct_start * total) - 1
    down_end = float(total - 1)

    def cos(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    step = min(epoch, total - 1)
    if step <= up_end:
        return cos(initial, peak, step / up_end if up_end > 0 else 1.0)
    return cos(peak, minimum, (step - up_end) / (down_end - up_end))


@register_learner
class Dcls(Learner):
    """Weights and delay positions trained by surrogate gradients through an `snn` circuit."""

    name = "dcls"
    circuits = ("snn",)

    class Options(LearnerOptions):
        max_lr: float = option(5e-3, "peak of the weights' one-cycle schedule", gt=0)
        weight_decay: float = option(1e-5, "weight decay of the synaptic weights (none on BatchNorm)", ge=0)
        lr_positions: float = option(0.1, "Adam learning rate of the delay positions (cosine-annealed)", gt=0)
        epochs: int = option(150, "epochs the schedules span (the config ties it to trainer.epochs)", ge=1)
        sigma_fraction: float = option(0.25, "fraction of the epochs over which σ decays to 0.5", gt=0, le=1)
        bptt: Literal["full", "sltt"] = option("full", "full backpropagation through time, or SLTT")

    def __init__(self, circuit: Circuit, task: Task, **options: Any):
        super().__init__(circuit, task, **options)
        task.require_classification("dcls")
        assert isinstance(circuit, SNN)
        o = self.options
        self.snn = circuit
        weights = [b.synapse.conv.weight if b.synapse.has_delays else b.synapse.weight
                   for b in circuit.blocks]
        norms = [p for b in circuit.blocks if getattr(b, "norm", None) is not None
                 for p in b.norm.parameters()]
        first_lr = one_cycle_lr(0, o.epochs, o.max_lr)
        self.weight_opt = self.add_optimizer(
            "weights", make_optimizer(weights, "adam", first_lr, o.weight_decay))
        if norms:
            self.weight_opt.add_param_group({"params": norms, "weight_decay": 0.0,
                                             "lr": self.weight_opt.param_groups[0]["lr"]})
        positions = circuit.position_parameters()
        self.position_opt = (
            self.add_optimizer("positions", make_optimizer(positions, "adam", o.lr_positions))
            if positions else None)
        self.max_delay = max((s.max_delay for s in circuit.delay_synapses()), default=1)
        self._epochs_done = 0
        self._apply_sigma(0)

    # -- schedules (host side, per epoch) -----------------------------------------------------------
    lr_schedule_keys = "learner.max_lr, learner.lr_positions: one-cycle and cosine"

    @classmethod
    def schedules_lr(cls, options: LearnerOptions) -> bool:
        return True  # one-cycle for the weights, cosine for the positions, both set in on_epoch_end

    def _apply_sigma(self, epoch: int) -> None:
        sigma = sigma_at(epoch, self.options.epochs, self.max_delay, self.options.sigma_fraction)
        for syn in self.snn.delay_synapses():
            syn.set_sigma(sigma)
        self.sigma = sigma

    def on_epoch_end(self, epoch: int) -> None:
        o = self.options
        self._epochs_done = epoch
        lr = one_cycle_lr(epoch, o.epochs, o.max_lr)
        for group in self.weight_opt.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        if self.position_opt is not None:
            cosine = 0.5 * (1 + math.cos(math.pi * min(epoch, o.epochs) / o.epochs))
            set_lr(self.position_opt, o.lr_positions * cosine)
        self._apply_sigma(epoch)

    # -- training -----------------------------------------------------------------------------------
    def _zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def _step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()
        for syn in self.snn.delay_synapses():
            syn.clamp_positions()

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self._zero_grad()
        if self.options.bptt == "sltt":
            loss, scores = self.sltt_backward(x, y)
        else:
            scores = self.snn(x)
            loss = F.cross_entropy(scores, y)
            loss.backward()
        self._step()
        return {"loss": loss.detach(), "accuracy": accuracy(scores.detach(), y)}

    def sltt_backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Accumulate the SLTT gradient of Σ_t CE(U[t], y)/T' into ``.grad``; returns (loss, scores)."""
        total = self.snn.output_steps()
        losses = []

        def on_step(t: int, u: Tensor) -> None:
            loss = F.cross_entropy(u, y) / total
            loss.backward()
            losses.append(loss.detach())

        readout = self.snn.run_steps(x, on_step)
        return torch.stack(losses).sum(), readout.softmax(-1).sum(0)

    # -- evaluation: integer delays, nothing mutated --------------------------------------------------
    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.snn(x, quantised=True)

    def rule_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bptt": self.options.bptt}
        syn = self.snn.delay_synapses()
        if syn:
            out["sigma"] = round(syn[0].sigma, 4)  # read from the synapse: right after a resume too
            d = torch.cat([s.delays().flatten() for s in syn]).float()
            out["delay_mean_steps"] = round(float(d.mean()), 3)
            out["delay_max_steps"] = int(d.max())
        return out

    def write_figures(self, run_dir: Path, data: Any = None) -> list[Path]:
        """``spike_raster.png`` (the first test example, every layer, integer delays) and
        ``delay_histogram.png`` (learned delays of every layer) in ``run_dir``."""
        from bioplaus.spiking_plots import delay_histogram, spike_raster

        written = []
        if data is not None and data.test_x.shape[0]:
            written.append(spike_raster(self.snn, data.test_x[:1], Path(run_dir) / "spike_raster.png"))
        if self.snn.delay_synapses():
            written.append(delay_histogram(self.snn, Path(run_dir) / "delay_histogram.png"))
        return written
