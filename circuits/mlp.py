"""`mlp` — a multilayer perceptron as an ordered list of dense blocks.

Block l computes a_l = f(z_l), z_l = W_l h_{l−1} + b_l on the flattened input. With ``head=True``
(the engine asks the learner) a final linear block maps to the C classes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from bioplaus.core import Circuit, Task
from bioplaus.errors import UsageError
from bioplaus.functional import activation
from bioplaus.options import CircuitOptions, option
from bioplaus.registry import register_circuit

INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal")
#: the weight initialisations, as an option type
Init = Literal["default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal"]
#: the activations of `bioplaus.functional.activation`, as an option type
Activation = Literal["relu", "tanh", "sigmoid", "elu", "gelu", "leaky_relu", "silu", "identity"]


def initialise(weight: Tensor, bias: Tensor | None, init: str) -> None:
    """Initialise a layer's weight in place by the named scheme; biases start at zero.

    ``default`` is PyTorch's own layer init (kept, bias included). Raises ValueError for a name
    not in `INITS` (configs are checked against `Init` before a circuit is built).
    """
    if init == "default":
        return
    if init not in INITS:
        raise ValueError(f"unknown init '{init}'. Valid inits: {', '.join(INITS)}.")
    with torch.no_grad():
        if init.startswith("kaiming"):
            fan = nn.init._calculate_fan_in_and_fan_out(weight)[0]
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

    def fresh(self, in_shape: tuple[int, ...]) -> Dense:
        """A newly initialised dense block of this width and activation for inputs of ``in_shape``
        (flattened); a sparse block's copy is dense."""
        return Dense(math.prod(in_shape), self.out_features, self.activation_name,
                     bias=self.linear.bias is not None)

    def forward(self, h: Tensor) -> Tensor:
        return self.act(self.pre(h))

    def extra_repr(self) -> str:
        return f"activation={self.activation_name}"


@register_circuit
class MLP(Circuit):
    """Dense blocks of widths ``hidden``, then (``head=True``) a linear block to the C classes."""

    name = "mlp"

    class Options(CircuitOptions):
        hidden: list[PositiveInt] = option([256, 256], "widths of the hidden dense blocks")
        activation: Activation = option("relu", "activation f of the hidden blocks")
        bias: bool = option(True, "whether every block has a bias")
        init: Init = option("default", "weight initialisation (default: PyTorch's own)")

    def __init__(self, task: Task, *, head: bool = True, **options: Any):
        super().__init__(task, head=head, **options)
        o = self.options
        if not o.hidden and not head:
            raise UsageError("circuit.hidden is empty and this learner trains no head: nothing to train.")
        fan_in = task.input_size
        for width in o.hidden:
            self.blocks.append(Dense(fan_in, width, o.activation, o.bias, o.init))
            fan_in = width
        if head:
            self.blocks.append(Dense(fan_in, task.num_classes, "identity", o.bias, o.init))

    @property
    def block_widths(self) -> list[int]:
        return [b.out_features for b in self.blocks]
