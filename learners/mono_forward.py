"""`mono_forward` — each block learns alone from a class projection of its own activity.

Gong, Li & Abdulla, "Mono-Forward: Backpropagation-Free Algorithm for Efficient Neural Network
Training Harnessing Local Errors", arXiv 2501.09238 (2025).

Every block l of the circuit owns a projection matrix M_l ∈ R^{C×d_l} (d_l the block's flattened
output width). With h_0 = x and sg(·) the stop-gradient:

    a_l = f_l(sg(a_{l−1}))                    block l sees its input as a constant
    G_l = flatten(a_l) M_lᵀ ∈ R^{B×C}         class scores ("goodness") of block l
    L_l = CE(softmax(G_l), y)                 local loss, mean over the batch
    (W_l, b_l, M_l) ← opt((W_l, b_l, M_l), ∇ L_l)

so that ∂L_l/∂G_l = (softmax(G_l) − onehot(y)) / B, ∂L_l/∂M_l = (∂L_l/∂G_l)ᵀ a_l and
∂L_l/∂a_l = (∂L_l/∂G_l) M_l: the error never leaves block l and no backward pass crosses blocks.
One backward of Σ_l L_l computes every block's local gradient at once (the graphs are disjoint).

Inference: ``readout="last"`` (default, the paper's) predicts argmax G_L of the last block, one
forward pass; ``readout="sum"`` predicts argmax Σ_l G_l. `predictions` reports both, the
configured one first.

Schedules:

* ``simultaneous`` (default, the paper's): every block updates on every batch.
* ``greedy``: layer by layer. Block l (0-based) is the only one that changes during epochs
  [l·E, (l+1)·E) with E = ``greedy_epochs``; earlier blocks are frozen, later ones wait. The last
  block keeps training after its stage begins, until the trainer stops. Plan
  ``trainer.epochs ≥ (L−1)·E + 1`` so that every block gets a stage (E·L gives each E epochs).
  The stage counts the calls of `on_epoch_end`, so it does not depend on how the engine numbers
  epochs.

Capture safety. `train_step` runs the same tensor program in both schedules and at every stage:
the active stage is a device buffer (``stage``, checkpointed with the learner, so a resumed run
continues in its stage) that `on_epoch_end` changes in place. In the greedy schedule every block
still computes its local loss and gradient and the optimizer steps all of them; afterwards each
block that is not the active one is put back to the values it had before the step,
θ_l ← where(l = stage, θ_l^new, θ_l^old), so frozen and waiting blocks do not change (bit-exact).
This costs the compute of the simultaneous schedule (it does not save the backward of the frozen
blocks) but needs no new graph capture when the stage changes; optimizer moments of inactive
blocks keep tracking their gradients, which gives a block a warm optimizer state when its stage
starts.

Options (declared in `MonoForward.Options`; each a ``learner.*`` config key):
    optimizer      adam | adamw | sgd; one optimizer over every block and projection
    lr             learning rate (paper, Fashion-MNIST: Adam 3.9e-4, batch 128)
    weight_decay   L2 (adam, sgd) or decoupled (adamw) weight decay on W_l, b_l and M_l
    momentum       SGD momentum (ignored by adam/adamw)
    schedule       simultaneous | greedy
    readout        last | sum — which scores `predict` returns
    greedy_epochs  epochs each block trains alone under ``schedule=greedy`` (ignored otherwise)
    lr_decay       per-epoch learning-rate factor γ: lr_k = lr·γ^k after k epochs (under greedy, k
                   counts the epochs of the current stage, so each block starts at lr); 1 = constant

Deviations / choices not fixed by the paper: the greedy schedule and the exponential lr decay
(off by default) are ours; M_l starts uniform in ±1/√d_l (PyTorch's linear init), without a bias;
one optimizer holds every block's parameters (each gets only its own block's gradient); the
training metric ``loss`` is Σ_l L_l (per-block terms are reported as ``loss_l1``, ``loss_l2``, ...,
and ``stage`` under greedy), ``accuracy`` is the last block's training accuracy.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.core import Circuit, Learner, Task
from bioplaus.functional import accuracy
from bioplaus.greedy import GreedyStages
from bioplaus.optim import make_optimizer, set_lr
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner


def class_scores(activity: Tensor, projection: Tensor) -> Tensor:
    """G = flatten(a) Mᵀ: the block's class scores, (batch, C)."""
    return activity.flatten(1) @ projection.t()


@register_learner
class MonoForward(GreedyStages, Learner):
    """Local cross-entropy on a learned class projection of every block; inputs detached."""

    name = "mono_forward"
    circuits = ("mlp", "cnn", "g2g")
    circuit_head = False

    class Options(LearnerOptions):
        optimizer: Literal["adam", "adamw", "sgd"] = option(
            "adam", "one optimizer over every block and projection")
        lr: float = option(2e-3, "learning rate", gt=0)
        weight_decay: float = option(0.0, "L2 (adam, sgd) or decoupled (adamw) weight decay on W_l, b_l, M_l",
                                     ge=0)
        momentum: float = option(0.9, "SGD momentum (sgd only)", ge=0)
        schedule: Literal["simultaneous", "greedy"] = option(
            "simultaneous", "every block on every batch, or block by block (greedy_epochs each)")
        readout: Literal["last", "sum"] = option("last", "scores of the last block, or summed over blocks")
        greedy_epochs: int = option(10, "epochs per block under schedule=greedy", ge=1)
        lr_decay: float = option(1.0, "lr × lr_decay after every epoch (per stage under greedy); 1: constant",
                                 gt=0, le=1)

    lr_schedule_keys = "learner.lr_decay"

    @classmethod
    def schedules_lr(cls, options: LearnerOptions) -> bool:
        return options.lr_decay != 1.0  # type: ignore[attr-defined]

    def __init__(self, circuit: Circuit, task: Task, **options: Any):
        super().__init__(circuit, task, **options)
        o = self.options
        task.require_classification("mono_forward")
        self.schedule = o.schedule
        self.readout = o.readout
        self.greedy_epochs = o.greedy_epochs
        self.lr = o.lr
        self.lr_decay = o.lr_decay
        self.epochs_seen = 0  # calls of on_epoch_end (host side, checkpointed as extra state)

        device = next(circuit.parameters()).device
        self.projections = nn.ParameterList()
        for width in circuit.block_widths:
            bound = 1.0 / math.sqrt(width)
            weight = torch.empty(task.num_classes, width, device=device).uniform_(-bound, bound)
            self.projections.append(nn.Parameter(weight))
        # the active greedy stage, read in-graph; changed in place by on_epoch_end
        self.register_buffer("stage", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("block_index", torch.arange(len(circuit.blocks), device=device))

        self.block_params: list[list[nn.Parameter]] = [
            [p for p in block.parameters() if p.requires_grad] + [proj]
            for block, proj in zip(circuit.blocks, self.projections, strict=True)
        ]
        params = [p for group in self.block_params for p in group]
        self.optimizer = self.add_optimizer(
            "local", make_optimizer(params, o.optimizer, o.lr, o.weight_decay, o.momentum, device=device)
        )

    # -- training -------------------------------------------------------------------------------
    def local_losses(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
        """Every block's local loss L_l (graphs disjoint) and the last block's scores."""
        losses = []
        h = x
        scores = x
        for block, projection in zip(self.circuit.blocks, self.projections, strict=True):
            a = block(h.detach())
            scores = class_scores(a, projection)
            losses.append(F.cross_entropy(scores.float(), y))
            h = a
        return losses, scores

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        losses, scores = self.local_losses(x, y)
        total = torch.stack(losses).sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.schedule == "greedy":  # a config constant, not a tensor value
            with torch.no_grad():
                before = [[p.detach().clone() for p in group] for group in self.block_params]
            self.optimizer.step()
            with torch.no_grad():
                active = self.block_index == self.stage
                for l, group in enumerate(self.block_params):
                    for p, old in zip(group, before[l], strict=True):
                        p.copy_(torch.where(active[l], p, old))
        else:
            self.optimizer.step()
        metrics = {"loss": total.detach(), "accuracy": accuracy(scores.detach(), y)}
        for l, loss in enumerate(losses, start=1):
            metrics[f"loss_l{l}"] = loss.detach()
        if self.schedule == "greedy":
            metrics["stage"] = self.stage.float()
        return metrics

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def block_scores(self, x: Tensor) -> list[Tensor]:
        """G_l of every block for input ``x``."""
        out = []
        for block, projection in zip(self.circuit.blocks, self.projections, strict=True):
            x = block(x)
            out.append(class_scores(x, projection))
        return out

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        if self.readout == "last":
            h = x
            for block in self.circuit.blocks:
                h = block(h)
            return class_scores(h, self.projections[-1])
        return torch.stack(self.block_scores(x)).sum(0)

    @torch.no_grad()
    def predictions(self, x: Tensor) -> dict[str, Tensor]:
        scores = self.block_scores(x)
        out = {"last": scores[-1], "sum": torch.stack(scores).sum(0)}
        first = self.readout
        return {first: out[first], **{k: v for k, v in out.items() if k != first}}

    # -- schedule -------------------------------------------------------------------------------
    def lr_after(self, epochs_seen: int) -> float:
        """lr · lr_decay^k, k the epochs done since the current stage began (all epochs if simultaneous)."""
        stage = self.stage_after(epochs_seen)
        return self.lr * self.lr_decay ** (epochs_seen - stage * self.greedy_epochs)

    def on_epoch_end(self, epoch: int) -> None:
        self.epochs_seen += 1
        self.stage.fill_(self.stage_after(self.epochs_seen))
        if self.lr_decay != 1.0:  # in place: a captured graph sees the new rate
            set_lr(self.optimizer, self.lr_after(self.epochs_seen))
