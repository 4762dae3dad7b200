"""`mlp` — a multilayer perceptron as an ordered list of dense blocks.

Block l computes a_l = f(z_l), z_l = W_l h_{l−1} + b_l on the flattened input. With ``head=True``
(the engine asks the learner) a final linear block maps to the C classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bioplaus.core import Circuit, Task
from bioplaus.errors import UsageError
from bioplaus.functional import activation
from bioplaus.registry import register_circuit

INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal")


def hidden_widths(hidden: Sequence[int], empty_message: str | None = None) -> list[int]:
    """``circuit.hidden`` as a list of ints, each checked positive; ``empty_message`` (if given)
    is the `UsageError` for an empty list."""
    widths = [int(w) for w in hidden]
    if not widths and empty_message:
        raise UsageError(empty_message)
    if any(w <= 0 for w in widths):
        raise UsageError(f"circuit.hidden widths must be positive; got {widths}.")
    return widths


def initialise(weight: Tensor, bias: Tensor | None, init: str, fan_in: int | None = None) -> None:
    """Initialise a layer's weight in place by the named scheme; biases start at zero.

    ``default`` is PyTorch's own layer init (kept, bias included). ``fan_in`` overrides the fan-in
    used by the Kaiming schemes (for sparse layers whose effective fan-in is smaller).
    """
    if init == "default":
        return
    if init not in INITS:
        raise UsageError(f"unknown circuit.init '{init}'. Valid inits: {', '.join(INITS)}.")
    with torch.no_grad():
        if init.startswith("kaiming"):
            fan = fan_in or nn.init._calculate_fan_in_and_fan_out(weight)[0]
            gain = math.sqrt(2.0)
            if init == "kaiming_uniform":
                bound = gain * math.sqrt(3.0 / fan)
                weight.uniform_(-bound, bound)
            else:
                weight.normal_(0.0, gain / math.sqrt(fan))
        elif init == "xavier_uniform":
            nn.init.xavier_uniform_(weight)
        else:
            nn.init.xavier_normal_(weight)
        if bias is not None:
            bias.zero_()


class Dense(nn.Module):
    """a = f(W·flatten(h) + b). `pre` gives z without the activation."""

    def __init__(self, in_features: int, out_features: int, act: str = "relu", bias: bool = True,
                 init: str = "default"):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_name = act
        self.act = activation(act)
        initialise(self.linear.weight, self.linear.bias, init)

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def pre(self, h: Tensor) -> Tensor:
        return self.linear(h.flatten(1))

    def forward(self, h: Tensor) -> Tensor:
        return self.act(self.pre(h))

    def extra_repr(self) -> str:
        return f"activation={self.activation_name}"


@register_circuit
class MLP(Circuit):
    """Dense blocks of widths ``hidden``, then (``head=True``) a linear block to the C classes."""

    name = "mlp"

    def __init__(self, task: Task, hidden: Sequence[int] = (256, 256), activation: str = "relu",
                 bias: bool = True, init: str = "default", head: bool = True):
        super().__init__(task)
        widths = hidden_widths(hidden, None if head else
                               "circuit.hidden is empty and this learner trains no head: nothing to train.")
        fan_in = task.input_size
        for width in widths:
            self.blocks.append(Dense(fan_in, width, activation, bias, init))
            fan_in = width
        if head:
            self.blocks.append(Dense(fan_in, task.num_classes, "identity", bias, init))
        self.has_head = head

    @property
    def block_widths(self) -> list[int]:
        return [b.out_features for b in self.blocks]
