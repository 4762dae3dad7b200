"""`hebbian` — hidden layers learn by local, unsupervised plasticity; a readout learns on their
frozen (stop-gradient) features.

Krotov & Hopfield, "Unsupervised learning by competing hidden units", PNAS 116(16):7723–7731, 2019
(arXiv 1806.10122) — ``rule=krotov``.
Journé, Garcia Rodriguez, Guo & Moraitis, "Hebbian deep learning without feedback", ICLR 2023
(arXiv 2209.11883) — ``rule=softhebb``.
Oja, "A simplified neuron model as a principal component analyzer", J. Math. Biol. 15, 1982, and
"Neural networks, principal components, and subspaces", Int. J. Neural Syst. 1, 1989 — ``rule=oja``.

Every hidden block l of the circuit (dense rows W_μ ∈ R^D, or a convolution's kernels unrolled to
rows over its input patches) changes only by its rule below, computed from its input v = h_{l−1}
(B examples) and its drive; no label and no error signal reach it. ε_l is the layer's scheduled
learning rate (below), ⊙ the elementwise product, 1/B the batch mean.

``krotov`` (p-norm competition; one minibatch update, R = 1):

    I_μ = Σ_i sgn(W_μi)|W_μi|^{p−1} v_i             drive of unit μ in the p-norm metric
    g_μ = 1 for the unit with the largest I, −Δ for the k-th largest, 0 for the rest (per example)
    D_μi = Σ_b g_μ (v_i − I_μ W_μi)                  summed over the batch
    W ← W + ε · D / max|D|                          largest entry of each update equals ε

Under this rule each row W_μ that wins converges to unit p-norm, ‖W_μ‖_p = 1 (its fixed point).

``softhebb`` (soft winner-take-all, Oja-like plasticity; p = 2 soft version of the above):

    u = W v,   y = softmax(u / τ)                    over the units (channels at each position)
    ΔW_k = η_k · (1/B) Σ_b y_k (v − u_k W_k)
    η_k = ε · (|‖W_k‖₂ − 1| + 10⁻¹⁰)^q              adaptive rate (``adaptive_lr``, q = ``lr_norm_power``)

On a ``cnn`` block v runs over every input patch of every example (unfolded with the
convolution's own kernel and padding); u is the convolution's output there, and the competition
runs over the channels at each position. The same patch view serves ``krotov`` and ``oja`` on
convolutions (an extension of ours: their papers treat dense layers).

``oja`` (Oja's subspace rule, the plain linear baseline):

    y = W v,   ΔW = (ε / ⟨‖v‖²⟩) · (1/B) Σ_b (y vᵀ − y yᵀ W)

With no more units than inputs the rows converge to an orthonormal basis of the top principal
subspace of v's second moment. The step is divided by the batch's mean input power ⟨‖v‖²⟩ so that
one ε suits inputs of any dimension and scale (plain Oja diverges for ε‖v‖² ≳ 1).

Layer outputs and features. Hidden block l passes on h_l = max(W_l h_{l−1}, 0) (a conv block
pools after it, with its own pooling); the last hidden block gives the readout's features
f = max(W_L h_{L−1}, 0)^n, n = ``power`` (the rectified power units of the Krotov paper; n = 1 is
ReLU; for ``oja`` the rule itself stays linear in y = W v). The circuit's own activation is not
used; hidden biases are set to zero and stay there. The readout sees sg(h_L):

* ``readout=linear``: logits = A h_L + a, cross-entropy.
* ``readout=krotov`` (the paper's): c = tanh(β S h_L), targets t = ±1 (one-hot mapped to ±1), loss
  mean over the batch of Σ_c |c − t|^m (m = ``loss_power``); predictions argmax c.

Schedules. ε_l falls linearly from ``hebbian_lr`` to 0 over ``hebbian_epochs`` epochs (the Krotov
schedule, used for every rule): with e the epochs completed, ε_l = ε₀·max(0, 1 − e/E) under
``schedule=simultaneous``; under ``layerwise`` layer l learns alone during epochs [l·E, (l+1)·E)
with ε_l = ε₀·(1 − (e − l·E)/E) there and 0 elsewhere. The readout learns on every batch of every
epoch (so it keeps learning on the frozen features once the plasticity has stopped; plan
``trainer.epochs`` > E·L under layerwise). The rates live in a device buffer changed in place by
`on_epoch_end`; `train_step` runs the same tensor program at every stage (capture-safe), a layer at
rate 0 computing a zero update.

Options (``learner.*``): ``rule``; ``schedule``; ``hebbian_epochs`` E; ``hebbian_lr`` ε₀; krotov
``p``, ``k``, ``delta``; softhebb ``inv_temperature`` 1/τ, ``adaptive_lr``, ``lr_norm_power``;
``init_norm``; ``power`` n; ``readout``, ``beta``, ``loss_power``; the readout's ``optimizer``,
``lr``, ``weight_decay``, ``momentum``.

Deviations and choices of ours:

* Krotov: ranking by I_μ itself (as the authors' published code does) rather than by
  Q_μ = I_μ/‖W_μ‖_p^{p−1} of the paper's continuous-time equations; the learning rate is annealed
  per epoch. The paper's readout (``readout=krotov``) is offered beside a linear softmax readout.
  The rule sees the inputs the data config gives it: the paper trains on raw MNIST pixels in
  [0, 1]; on Fashion-MNIST, whose garments share one bright blob, the rule on raw pixels lets a
  handful of units win every image and drives the rest to negative drive, so the
  ``fmnist_hebbian_krotov`` preset trains on ZCA-whitened pixels (``data.normalize=zca``) with
  n = 2 (measured on the validation split; docs/learners.md).
* SoftHebb: no bias (the paper's log-prior bias is not learned); a fixed temperature τ (a single
  ``inv_temperature``, the paper's 1/τ = 12 for its first layer) — the paper's per-layer temperature
  choices for deep nets are not reproduced; the adaptive learning rate follows the weight-norm form
  above; the soft anti-Hebbian variant of the deep convolutional version (non-winners' y negated) is
  not implemented; plasticity runs for ``hebbian_epochs`` with the linear annealing above instead
  of the paper's single unsupervised epoch (set ``hebbian_epochs: 1`` for that).
* Oja: the symmetric subspace rule, no sequential deflation (Sanger's rule would order the
  components; the subspace rule learns a rotation of them); the step normalised by the input
  power (above); its layer output is rectified like the others' (φ above).
* Initial weights: ``krotov`` and ``softhebb`` rows are drawn N(0, 1) and rescaled to the norm
  ``init_norm`` (p-norm, resp. 2-norm); rows that start above the fixed point ‖W_μ‖ = 1 shrink as
  they win, which lets the other units win in turn (the Krotov code draws N(0, 1), whose 3-norm is
  about 10.8 over 784 inputs). ``oja`` (and ``init_norm: 0``) keep the circuit's initialisation.
  Hidden biases are zeroed and stay zero.
* SoftHebb's adaptive rate is implemented as η_k = ε·|‖W_k‖ − 1|^q (q = 1/2): each unit's rate
  shrinks as its weight norm approaches the unit sphere. This form is our reading of the paper and
  has not been checked line by line against it; set ``adaptive_lr: false`` for a plain rate ε.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.core import Circuit, Learner, Task
from bioplaus.errors import UsageError
from bioplaus.functional import accuracy
from bioplaus.optim import make_optimizer
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner

# -- the rules (functional) ------------------------------------------------------------------------


def krotov_drive(weight: Tensor, v: Tensor, p: float) -> Tensor:
    """I = v·(sgn(W)|W|^{p−1})ᵀ, shape (B, units), for W (units, D) and v (B, D)."""
    metric = weight if p == 2 else weight * (weight.abs() if p == 3 else weight.abs().pow(p - 2))
    return v @ metric.t()  # sgn(w)|w|^{p−1} = w|w|^{p−2} (p ≥ 2)


def krotov_ranked(drive: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per example (row of ``drive``, shape (B, units)): the unit of largest drive and the unit of
    k-th largest drive, two index tensors of shape (B,)."""
    ranked = torch.topk(drive, k, dim=1).indices
    return ranked[:, 0], ranked[:, k - 1]


def krotov_activity(drive: Tensor, k: int, delta: float) -> Tensor:
    """g (B, units): 1 at each row's largest drive, −Δ at its k-th largest, 0 elsewhere."""
    first, kth = krotov_ranked(drive, k)
    g = torch.zeros_like(drive)
    g.scatter_(1, kth.unsqueeze(1), -delta)
    g.scatter_(1, first.unsqueeze(1), 1.0)
    return g


def krotov_update(weight: Tensor, v: Tensor, p: float, k: int, delta: float) -> Tensor:
    """D / max|D| with D_μi = Σ_b g_μ (v_i − I_μ W_μi): the update of unit size (largest entry 1).

    g (`krotov_activity`) has two nonzero entries per example, so Σ_b g_μ v_i and Σ_b g_μ I_μ are
    sums over each example's winner (weight 1) and k-th unit (weight −Δ), added row by row instead of
    multiplying by the dense g."""
    drive = krotov_drive(weight, v, p)
    first, kth = krotov_ranked(drive, k)
    hebb = torch.zeros_like(weight).index_add_(0, first, v).index_add_(0, kth, v, alpha=-delta)
    drive_sum = (torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
                 .index_add_(0, first, drive.gather(1, first.unsqueeze(1)).squeeze(1))
                 .index_add_(0, kth, drive.gather(1, kth.unsqueeze(1)).squeeze(1), alpha=-delta))
    d = hebb - drive_sum.unsqueeze(1) * weight
    return d / d.abs().amax().clamp_min(1e-30)


def softhebb_update(weight: Tensor, v: Tensor, inv_temperature: float) -> Tensor:
    """(1/B) Σ_b y_k (v − u_k W_k) with u = W v, y = softmax(u/τ) over units; shape of ``weight``."""
    u = v @ weight.t()
    y = torch.softmax(u * inv_temperature, dim=1)
    return (y.t() @ v - (y * u).sum(0).unsqueeze(1) * weight) / v.shape[0]


def softhebb_rates(weight: Tensor, lr: Tensor, power: float) -> Tensor:
    """η_k = ε·(|‖W_k‖₂ − 1| + 1e-10)^q per unit, shape (units, 1)."""
    radius = weight.norm(dim=1, keepdim=True)
    return lr * ((radius - 1.0).abs() + 1e-10).pow(power)


def oja_update(weight: Tensor, v: Tensor) -> Tensor:
    """(1/B) Σ_b (y vᵀ − y yᵀ W) / ⟨‖v‖²⟩, y = W v: Oja's subspace rule, step measured in units of
    the batch's mean input power; shape of ``weight``."""
    y = v @ weight.t()
    power = v.pow(2).sum(1).mean().clamp_min(1e-12)
    # yᵀ(y W), not (yᵀy) W: B·units·D multiply-adds instead of units²·D (2000 units: 20× fewer)
    return (y.t() @ (v - y @ weight)) / (v.shape[0] * power)


def row_norms(weight: Tensor, p: float) -> Tensor:
    """‖W_μ‖_p of every row, shape (units,)."""
    return weight.abs().pow(p).sum(1).pow(1.0 / p)


def krotov_readout_loss(scores: Tensor, y: Tensor, m: float) -> Tensor:
    """mean_b Σ_c |c − t|^m, c = tanh(scores), t = 2·onehot(y) − 1."""
    t = 2.0 * F.one_hot(y, scores.shape[1]).to(scores.dtype) - 1.0
    return (torch.tanh(scores) - t).abs().pow(m).sum(1).mean()


def patches(block: nn.Module, h: Tensor) -> Tensor:
    """Every input patch a conv block's kernel sees, as rows (B·positions, C_in·k·k)."""
    conv = block.conv
    cols = F.unfold(h, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


# -- the learner -------------------------------------------------------------------------------------


@register_learner
class Hebbian(Learner):
    """Unsupervised local plasticity in every hidden block; a readout on stop-gradient features."""

    name = "hebbian"
    circuits = ("mlp", "cnn")
    circuit_head = False

    class Options(LearnerOptions):
        rule: Literal["krotov", "softhebb", "oja"] = option("krotov", "plasticity of the hidden layers")
        schedule: Literal["simultaneous", "layerwise"] = option(
            "simultaneous", "hidden layers learn together, or one after another")
        hebbian_epochs: int = option(
            25, "E: epochs of plasticity per layer; its rate falls linearly to 0 over them", ge=1)
        hebbian_lr: float = option(0.1, "ε₀: initial plasticity rate", gt=0)
        p: float = option(3.0, "krotov: p of the Lebesgue norm", ge=2)
        k: int = option(7, "krotov: rank of the unit that gets the anti-Hebbian −Δ", ge=2)
        delta: float = option(0.4, "krotov: Δ, strength of the anti-Hebbian term", ge=0)
        inv_temperature: float = option(12.0, "softhebb: 1/τ of the soft winner-take-all", gt=0)
        adaptive_lr: bool = option(True, "softhebb: per-unit rate ε·|‖w‖−1|^q")
        lr_norm_power: float = option(0.5, "softhebb: q of the adaptive rate", ge=0)
        init_norm: float = option(
            4.0, "krotov, softhebb: rows start N(0, 1) rescaled to this norm (p-norm for krotov, 2-norm "
                 "for softhebb); 0 keeps the circuit's initialisation", ge=0)
        power: float = option(3.0, "n: hidden outputs max(z, 0)^n", gt=0)
        readout: Literal["linear", "krotov"] = option(
            "linear", "linear softmax + CE, or tanh(β S f) with Σ|c − t|^m")
        beta: float = option(1e-4, "krotov readout: β", gt=0)
        loss_power: float = option(6.0, "krotov readout: m of Σ|c − t|^m", ge=1)
        optimizer: Literal["adam", "adamw", "sgd"] = option("adam", "optimizer of the readout")
        lr: float = option(1e-3, "learning rate of the readout", gt=0)
        weight_decay: float = option(0.0, "weight decay of the readout", ge=0)
        momentum: float = option(0.9, "sgd momentum of the readout", ge=0)

    def __init__(self, circuit: Circuit, task: Task, **options: Any):
        super().__init__(circuit, task, **options)
        o = self.options
        task.require_classification("hebbian")
        blocks = list(circuit.blocks)
        for block in blocks:
            if o.rule == "krotov" and self._units(block) < o.k:
                raise UsageError(f"learner.k={o.k} exceeds the {self._units(block)} units of a hidden "
                                 "block (krotov ranks k units).")
        device = next(circuit.parameters()).device
        with torch.no_grad():  # hidden biases are not part of these rules
            for block in blocks:
                layer = block.conv if hasattr(block, "conv") else block.linear
                if layer.bias is not None:
                    layer.bias.zero_()
                if o.rule != "oja" and o.init_norm > 0:
                    w = layer.weight.view(layer.weight.shape[0], -1)
                    w.normal_()
                    w.mul_(o.init_norm / row_norms(w, o.p if o.rule == "krotov" else 2.0).unsqueeze(1))
        width = circuit.block_widths[-1]
        self.readout_layer = nn.Linear(width, task.num_classes, bias=o.readout == "linear").to(device)
        # per-layer plasticity rates, read in-graph; on_epoch_end changes them in place
        self.register_buffer("hebb_lr", torch.zeros(len(blocks), device=device))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long, device=device))
        self._set_rates(0)
        self.optimizer = self.add_optimizer("readout", make_optimizer(
            self.readout_layer.parameters(), o.optimizer, o.lr, o.weight_decay, o.momentum, device=device))

    @staticmethod
    def _units(block: nn.Module) -> int:
        return block.conv.out_channels if hasattr(block, "conv") else block.linear.out_features

    # -- schedule -------------------------------------------------------------------------------
    def rates(self, epochs_done: int) -> list[float]:
        """ε_l of every hidden layer after ``epochs_done`` epochs."""
        o = self.options
        count = len(self.circuit.blocks)
        out = []
        for layer in range(count):
            start = layer * o.hebbian_epochs if o.schedule == "layerwise" else 0
            into = epochs_done - start
            active = 0 <= into < o.hebbian_epochs
            out.append(o.hebbian_lr * (1.0 - into / o.hebbian_epochs) if active else 0.0)
        return out

    def plan_warnings(self, epochs: int) -> list[str]:
        """A warning when ``epochs`` epochs end before a layer's plasticity starts (layerwise)."""
        idle = [layer + 1 for layer in range(len(self.circuit.blocks))
                if all(self.rates(e)[layer] == 0 for e in range(epochs))]
        if not idle:
            return []
        start = self.options.hebbian_epochs * (idle[0] - 1) + 1
        return [f"warning: schedule=layerwise with hebbian_epochs={self.options.hebbian_epochs}: hidden "
                f"layer(s) {', '.join(map(str, idle))} never learn in {epochs} epochs and keep their "
                f"initial weights. Layer {idle[0]} starts learning at epoch {start}: set trainer.epochs "
                f"to at least that."]

    def _set_rates(self, epochs_done: int) -> None:
        self.hebb_lr.copy_(torch.tensor(self.rates(epochs_done), dtype=self.hebb_lr.dtype))

    def on_epoch_end(self, epoch: int) -> None:
        self.epochs_done += 1
        self._set_rates(int(self.epochs_done))

    # -- forward pieces -------------------------------------------------------------------------
    def phi(self, z: Tensor, last: bool) -> Tensor:
        """Hidden output nonlinearity: max(z, 0)^n for the last hidden block, max(z, 0) before it."""
        z = z.clamp_min(0)
        return z.pow(self.options.power) if last and self.options.power != 1.0 else z

    def layer_output(self, block: nn.Module, h: Tensor, last: bool) -> Tensor:
        """h_l = φ(W_l h_{l−1}) (pooled for a conv block)."""
        if hasattr(block, "conv"):
            return block.pool(self.phi(block.conv(h), last))
        return self.phi(block.linear(h.flatten(1)), last)

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """sg(h_L), flattened: the readout's input (B, width)."""
        h = x
        last = len(self.circuit.blocks) - 1
        for layer, block in enumerate(self.circuit.blocks):
            h = self.layer_output(block, h, layer == last)
        return h.flatten(1)

    def scores(self, features: Tensor) -> Tensor:
        """Class scores of the readout: A f + a (linear) or β S f (krotov; tanh is applied in the loss)."""
        out = self.readout_layer(features)
        return out * self.options.beta if self.options.readout == "krotov" else out

    # -- plasticity -----------------------------------------------------------------------------
    def plasticity(self, block: nn.Module, h: Tensor, lr: Tensor) -> None:
        """Apply block's rule for input ``h`` at rate ``lr`` (a 0-d device tensor), in place."""
        o = self.options
        if hasattr(block, "conv"):
            weight = block.conv.weight
            v = patches(block, h)
        else:
            weight = block.linear.weight
            v = h.flatten(1)
        w = weight.view(weight.shape[0], -1)
        if o.rule == "krotov":
            w.add_(lr * krotov_update(w, v, o.p, o.k, o.delta))
        elif o.rule == "softhebb":
            rate = softhebb_rates(w, lr, o.lr_norm_power) if o.adaptive_lr else lr
            w.add_(rate * softhebb_update(w, v, o.inv_temperature))
        else:
            w.add_(lr * oja_update(w, v))

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            h = x
            last = len(self.circuit.blocks) - 1
            for layer, block in enumerate(self.circuit.blocks):
                self.plasticity(block, h, self.hebb_lr[layer])
                h = self.layer_output(block, h, layer == last)
            f = h.flatten(1)
        self.optimizer.zero_grad(set_to_none=True)
        scores = self.scores(f)
        if self.options.readout == "krotov":
            loss = krotov_readout_loss(scores, y, self.options.loss_power)
        else:
            loss = F.cross_entropy(scores, y)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "accuracy": accuracy(scores.detach(), y)}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.scores(self.features(x))

    def rule_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.options.rule}
        first = self.circuit.blocks[0]
        w = (first.conv.weight if hasattr(first, "conv") else first.linear.weight).detach()
        w = w.reshape(w.shape[0], -1)
        norm_p = self.options.p if self.options.rule == "krotov" else 2.0
        norms = row_norms(w, norm_p)
        out["first_layer_row_norm_mean"] = float(norms.mean())
        out["first_layer_row_norm_p"] = norm_p
        return out

    # -- pictures -------------------------------------------------------------------------------
    def write_figures(self, run_dir: str | Path, data: Any = None) -> list[Path]:
        """The first hidden layer's receptive fields as an image grid, ``receptive_fields.png``."""
        first = self.circuit.blocks[0]
        if hasattr(first, "conv"):
            fields = first.conv.weight.detach().cpu()
        else:
            shape = self.task.input_shape
            fields = first.linear.weight.detach().cpu().reshape(-1, *shape)
            if len(shape) == 1:
                side = math.isqrt(shape[0])
                if side * side != shape[0]:
                    return []
                fields = fields.reshape(-1, 1, side, side)
        path = Path(run_dir) / "receptive_fields.png"
        draw_receptive_fields(fields, path, f"hebbian rule={self.options.rule}: first-layer receptive fields")
        return [path]


def draw_receptive_fields(fields: Tensor, path: Path, title: str, limit: int = 100) -> None:
    """Draw up to ``limit`` fields (units, C, H, W) as a grid, each scaled to its own max |w| on a
    blue-white-red map (colour images: the mean over channels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = fields[:limit]
    if fields.dim() == 4:
        fields = fields.mean(1)
    count = fields.shape[0]
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0 + 0.5, rows * 1.0 + 0.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < count:
            img = fields[i].numpy()
            bound = float(abs(img).max()) or 1.0
            ax.imshow(img, cmap="bwr", vmin=-bound, vmax=bound)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
