"""`backprop` — end-to-end backpropagation: the baseline every other rule is compared against.

    L = CE(softmax(F(x)), y),    θ ← opt(θ, ∇_θ L)   for every parameter θ of the circuit F.

On the spiking circuit `snn` the circuit's output is the score Σ_t softmax(U[t]) of its output
membranes, so this is full backpropagation through time on the loss of the `dcls` rule, with one
optimiser for weights (and delay positions, when the circuit has them).

Rumelhart, Hinton & Williams, "Learning representations by back-propagating errors", Nature 1986.
"""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor

from bioplaus.core import Circuit, Learner, Task
from bioplaus.functional import accuracy
from bioplaus.optim import make_optimizer
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner


@register_learner
class Backprop(Learner):
    """Cross-entropy on the circuit's head, gradient through every block."""

    name = "backprop"
    circuits = ("mlp", "cnn", "rnn", "g2g", "snn")

    class Options(LearnerOptions):
        optimizer: Literal["adam", "adamw", "sgd"] = option("adam", "optimizer of every circuit parameter")
        lr: float = option(1e-3, "learning rate", gt=0)
        weight_decay: float = option(0.0, "L2 (adam, sgd) or decoupled (adamw) weight decay", ge=0)
        momentum: float = option(0.9, "SGD momentum (sgd only)", ge=0)

    def __init__(self, circuit: Circuit, task: Task, **options: Any):
        super().__init__(circuit, task, **options)
        o = self.options
        self.optimizer = self.add_optimizer(
            "circuit", make_optimizer(circuit.parameters(), o.optimizer, o.lr, o.weight_decay, o.momentum)
        )

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        logits = self.circuit(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "accuracy": accuracy(logits.detach(), y)}
