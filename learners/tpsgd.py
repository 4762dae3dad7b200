"""`tpsgd` — target projection: every hidden block learns from a fixed random projection of the label.

Lomnitz et al., target projection stochastic gradient descent (tpSGD), arXiv 2208.08503 (2022).
Frenkel, Lefebvre & Bol, "Learning without feedback: Fixed random learning signals allow for
feedforward training of deep neural networks" (direct random target projection, DRTP), Frontiers
in Neuroscience 15 (2021).

Blocks l = 1..L of the circuit (the last one, L, is the head that maps to the C classes); y* the
one-hot label; sg(·) the stop-gradient; a_l = block_l(sg(a_{l−1})), a_0 = x. Every hidden block l
owns a fixed random matrix P_l ∈ R^{d_l×C} (d_l the block's flattened width; units per time step
for a recurrent block), drawn once from the seed at construction and kept in a registered buffer
(``projection_l``), never trained.

``variant=tpsgd`` (default). The local target of block l is the projected label t_l = P_l y*, and
block l minimises a local loss J(a_l, t_l) on its detached input:

    mse:  J = mean_{batch, units} (a_l − t_l)²
    l1:   J = mean_{batch, units} |a_l − t_l|
    ce:   s_{l,c} = ⟨a_l, P_l e_c⟩ / √d_l      (similarity of the activity to class c's target code)
          J = CE(softmax(s_l), y)
          — "cross-entropy on projected targets": the block must resemble its own class's target
          code more than any other class's. This choice is ours; the paper leaves J open.

``variant=drtp``. The gradient that reaches the block's output is replaced by a fixed random
projection of the label, independent of the block's output and of the error:

    ∂J/∂a_l := g_l = B_lᵀ y*         (B_l ∈ R^{C×d_l} fixed random; stored as P_l = B_lᵀ)
    ΔW_l = −η · mean_batch[(g_l ⊙ f′(z_l)) h_{l−1}ᵀ]      for a dense block z_l = W_l h_{l−1} + b_l

implemented as the surrogate J_l = mean_batch Σ_j sg(g_l)_j a_{l,j}, whose gradient through
autograd is exactly that (and, for a conv block, the same signal pushed through its max-pool and
f′ to the convolution). The surrogate's value carries no meaning and is not reported as a loss.

Both variants: the head (block L) minimises the task loss CE(softmax(a_L), y) on sg(a_{L−1}) — in
DRTP too, as in Frenkel et al., where only the output layer receives the true error. Every block's
input is detached, so no gradient crosses blocks; one backward of Σ_l J_l gives each block exactly
the gradient of its own J_l. One optimizer holds every block (each gets only its own gradient).

Recurrent circuits (``rnn``). A recurrent block's output is its sequence of hidden states
s_l[1..T]. ``sequence_target=last`` (default) applies the target (tpsgd) or the replaced gradient
(drtp) to the last step s_{l,T} only; ``all`` applies it to every step, averaging over the steps
(the same target t_l = P_l y* at every step). Within a layer the local gradient is carried back
through time by the layer's own recurrence (backpropagation through time confined to the layer:
no truncation over time); it never crosses layers, because the next layer sees sg(s_l). For DRTP
this means the replaced gradient at the targeted step(s) flows back through U_l within the layer —
a recurrent extension of the feed-forward rule that is ours, documented here.

Options (declared in the class's `Options`; each a ``learner.*`` config key):
    variant          tpsgd | drtp
    local_loss       mse | l1 | ce — J of the hidden blocks (tpsgd only; drtp has no local loss)
    optimizer        adam | adamw | sgd (one optimizer over all blocks)
    lr, weight_decay, momentum (sgd only)
    projection       uniform | normal — entries of P_l: U(−1, 1), or N(0, 1)
    projection_scale multiplier of P_l (targets t_l = scale · column y of P_l)
    sequence_target  last | all (recurrent blocks only, see above)

Deviations / choices not fixed by the papers: P_l is drawn with PyTorch's generator seeded from the
run's seed, on the CPU (so CPU and CUDA runs draw the same matrices) with entries U(−1, 1) by
default — targets inside tanh's range; the `ce` local loss above; the recurrent extension above;
Adam by default (tpSGD, as its name says, updates with plain SGD; ``optimizer=sgd`` gives that).
With unbounded activations (ReLU, ELU) DRTP's constant output gradient can grow activities without
limit (deep ELU MLPs diverge); the learner config uses tanh.

Defaults (configs/learner/tpsgd.yaml): MLP 64-256-256-10 with tanh on digits, Adam lr 1e-3,
batch 64, 30 epochs. Measured accuracies and timings are in ``benchmarks/results/``.

Metrics of `train_step` (0-d tensors): ``loss`` = CE of the head + Σ_l J_l (tpsgd) or CE of the
head alone (drtp; its surrogates are not losses), ``ce`` (the head's CE), ``accuracy`` (the
head's training accuracy), ``loss_l1``.. per hidden block (tpsgd), ``alignment_l1``.. per hidden
block (drtp: mean cos(a_l, −B_lᵀ y*) of the batch before the step, see `signal_alignment`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.core import Circuit, Learner, Task
from bioplaus.functional import accuracy, one_hot
from bioplaus.optim import make_optimizer
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner


def projected_target(y_onehot: Tensor, projection: Tensor) -> Tensor:
    """t = P y* for every row: (batch, C) @ (d, C)ᵀ -> (batch, d)."""
    return y_onehot @ projection.t()


def local_loss(activity: Tensor, target: Tensor, kind: str, projection: Tensor, y: Tensor) -> Tensor:
    """J(a, t) of a hidden block. ``activity`` is (batch, d) or (batch, T, d); ``target`` (batch, d).

    ``ce`` scores the activity against every class's target code: s_c = ⟨a, P e_c⟩ / √d.
    """
    if kind == "ce":
        scores = activity @ projection / math.sqrt(projection.shape[0])
        if scores.dim() == 3:  # every step of a sequence is scored against the label
            labels = y.unsqueeze(1).expand(-1, scores.shape[1])
            return F.cross_entropy(scores.reshape(-1, scores.shape[-1]).float(), labels.reshape(-1))
        return F.cross_entropy(scores.float(), y)
    if activity.dim() == 3:
        target = target.unsqueeze(1).expand_as(activity)
    if kind == "mse":
        return F.mse_loss(activity.float(), target.float())
    return F.l1_loss(activity.float(), target.float())


def drtp_surrogate(activity: Tensor, signal: Tensor) -> Tensor:
    """mean_batch Σ_j sg(g)_j a_j: its gradient w.r.t. the activity is g / batch (DRTP's signal).

    For a sequence (batch, T, d) the signal is applied at every step and averaged over steps.
    """
    signal = signal.detach()
    if activity.dim() == 3:
        return (activity * signal.unsqueeze(1)).sum(-1).mean()
    return (activity * signal).sum(-1).mean()


def signal_alignment(activity: Tensor, signal: Tensor) -> Tensor:
    """mean_batch cos(a, −g): how far a block has moved its activity along the direction that DRTP's
    signal g = Bᵀy* descends (≈ 0 at init, towards 1 as the block learns). Steps of a sequence count
    as examples."""
    if activity.dim() == 3:
        signal = signal.unsqueeze(1).expand_as(activity)
    return F.cosine_similarity(activity.float(), -signal.float(), dim=-1).mean()


@register_learner
class TargetProjection(Learner):
    """Fixed random label projections as local targets (tpsgd) or output gradients (drtp)."""

    name = "tpsgd"
    circuits = ("mlp", "cnn", "rnn", "g2g")
    circuit_head = True

    class Options(LearnerOptions):
        variant: Literal["tpsgd", "drtp"] = option(
            "tpsgd", "tpsgd (local target t = P y*) | drtp (output gradient replaced by Bᵀ y*)")
        local_loss: Literal["mse", "l1", "ce"] = option(
            "mse", "mse | l1 | ce (CE of similarities to the class target codes); tpsgd only")
        optimizer: Literal["adam", "adamw", "sgd"] = option("adam", "optimizer of every circuit parameter")
        lr: float = option(1e-3, "learning rate", gt=0)
        weight_decay: float = option(0.0, "L2 (adam, sgd) or decoupled (adamw) weight decay", ge=0)
        momentum: float = option(0.9, "SGD momentum (sgd only)", ge=0)
        projection: Literal["uniform", "normal"] = option(
            "uniform", "entries of the fixed projections: U(−1, 1) or N(0, 1)")
        projection_scale: float = option(1.0, "scale of the fixed projections", gt=0)
        sequence_target: Literal["last", "all"] = option(
            "last", "rnn only: target on the last hidden state, or on every step")

    def __init__(self, circuit: Circuit, task: Task, **options: Any):
        super().__init__(circuit, task, **options)
        o = self.options
        variant, local_loss, sequence_target = o.variant, o.local_loss, o.sequence_target
        projection, projection_scale = o.projection, o.projection_scale
        task.require_classification("tpsgd")
        self.variant = variant
        self.local_loss_kind = local_loss
        self.sequence_target = sequence_target

        device = next(circuit.parameters()).device
        self.hidden_count = len(circuit.blocks) - 1
        for l, width in enumerate(circuit.block_widths[:-1], start=1):
            shape = (width, task.num_classes)
            cpu = torch.empty(shape).uniform_(-1.0, 1.0) if projection == "uniform" else torch.randn(shape)
            self.register_buffer(f"projection_{l}", (projection_scale * cpu).to(device))
        self.optimizer = self.add_optimizer("local", make_optimizer(
            circuit.parameters(), o.optimizer, o.lr, o.weight_decay, o.momentum, device=device))

    @property
    def projections(self) -> list[Tensor]:
        """P_1 .. P_{L−1}, each (d_l, C)."""
        return [getattr(self, f"projection_{l}") for l in range(1, self.hidden_count + 1)]

    def targets(self, y: Tensor) -> list[Tensor]:
        """t_l = P_l y* of every hidden block, (batch, d_l) each."""
        y_onehot = one_hot(y, self.task.num_classes)
        return [projected_target(y_onehot, p) for p in self.projections]

    def activity(self, a: Tensor, block: nn.Module) -> Tensor:
        """The part of a block's output that the target acts on: (batch, d) or (batch, T, d)."""
        if getattr(block, "is_recurrent", False):
            return a[:, -1] if self.sequence_target == "last" else a
        return a.flatten(1)

    def local_losses(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """(J_l of every hidden block, CE of the head, logits); graphs disjoint between blocks."""
        losses, ce, logits, _ = self._local_pass(x, y)
        return losses, ce, logits

    def _local_pass(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor, Tensor, list[Tensor]]:
        """`local_losses` plus the targeted activity and target/signal of every hidden block."""
        y_onehot = one_hot(y, self.task.num_classes, dtype=x.dtype)
        losses = []
        pairs = []
        h = x
        blocks = list(self.circuit.blocks)
        for block, projection in zip(blocks[:-1], self.projections, strict=True):
            a = block(h.detach())
            act = self.activity(a, block)
            target = projected_target(y_onehot, projection)
            pairs.append((act.detach(), target))
            if self.variant == "drtp":
                losses.append(drtp_surrogate(act, target))
            else:
                losses.append(local_loss(act, target, self.local_loss_kind, projection, y))
            h = a
        logits = blocks[-1](h.detach())
        return losses, F.cross_entropy(logits.float(), y), logits, pairs

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        losses, ce, logits, pairs = self._local_pass(x, y)
        total = torch.stack([ce, *losses]).sum() if losses else ce
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        metrics = {"ce": ce.detach(), "accuracy": accuracy(logits.detach(), y)}
        if self.variant == "drtp":
            metrics["loss"] = ce.detach()
            for l, (act, signal) in enumerate(pairs, start=1):
                metrics[f"alignment_l{l}"] = signal_alignment(act, signal)
        else:
            metrics["loss"] = total.detach()
            for l, loss in enumerate(losses, start=1):
                metrics[f"loss_l{l}"] = loss.detach()
        return metrics

    def rule_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant}
        if self.variant == "tpsgd":
            out["local_loss"] = self.local_loss_kind
        return out
