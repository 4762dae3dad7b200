"""`rnn` — an Elman recurrent network over a sequence, as an ordered list of recurrent blocks.

Recurrent block l maps the sequence h_{l−1}[1..T] of the block below to its hidden states:

    s_{l,t} = f(W_l h_{l−1,t} + U_l s_{l,t−1} + b_l),    s_{l,0} = 0,    t = 1..T

(f = tanh by default; W_l the input weights, U_l the recurrent weights, b_l the bias). The block's
output is the whole sequence s_l[1..T], shape (batch, T, d_l), so the next recurrent block and a
learner's local targets both see every step. With ``head=True`` a readout block maps the last
hidden state of the top layer to the C classes: logits = V s_{L,T} + c.

Input layout. Images (channels, height, width) are read row by row: T = height time steps of
channels·width features each (8 steps of 8 features for digits, 28 of 28 for MNIST). A 2-D input
(T, F) is taken as T steps of F features; a 1-D input (F,) as a single step. The reshaping happens
in the first recurrent block, so ``blocks[0](x)`` accepts the data as the engine delivers it.

Recurrent blocks carry ``is_recurrent = True`` so that learners can tell a sequence of hidden
states (batch, T, d) from a flat activity.

Backprop trains it end to end (backpropagation through time over the whole sequence), e.g.
``bioplaus run learner=backprop circuit=rnn trainer.epochs=10``.

Options (declared in `RNN.Options`; each a ``circuit.*`` config key): hidden (widths of the recurrent layers),
activation (default tanh), bias, init (as in `mlp`: applied to W_l, U_l and the readout; ``default``
keeps PyTorch's U(±1/√fan_in)).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from bioplaus.circuits.mlp import Activation, Init, initialise
from bioplaus.core import Circuit, Task
from bioplaus.functional import activation
from bioplaus.options import CircuitOptions, option
from bioplaus.registry import register_circuit


def as_sequence(x: Tensor) -> Tensor:
    """(batch, C, H, W) -> (batch, H, C·W); (batch, T, F) unchanged; (batch, F) -> (batch, 1, F)."""
    if x.dim() == 4:
        b, c, h, w = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, h, c * w)
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x


def sequence_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(time steps, features per step) of one example of ``input_shape``."""
    if len(input_shape) == 3:
        c, h, w = input_shape
        return h, c * w
    if len(input_shape) == 2:
        return input_shape[0], input_shape[1]
    if len(input_shape) == 1:
        return 1, input_shape[0]
    raise ValueError(f"circuit 'rnn' cannot read inputs of shape {input_shape} as a sequence.")


class RecurrentBlock(nn.Module):
    """s_t = f(W x_t + U s_{t−1} + b) over the whole sequence; output (batch, T, hidden)."""

    is_recurrent = True

    def __init__(self, in_features: int, hidden: int, act: str = "tanh", bias: bool = True,
                 init: str = "default"):
        super().__init__()
        self.input = nn.Linear(in_features, hidden, bias=bias)
        self.recurrent = nn.Linear(hidden, hidden, bias=False)
        self.activation_name = act
        self.act = activation(act)
        initialise(self.input.weight, self.input.bias, init)
        initialise(self.recurrent.weight, None, init)

    @property
    def out_features(self) -> int:
        return self.input.out_features

    def forward(self, h: Tensor) -> Tensor:
        drive = self.input(as_sequence(h))  # W x_t + b for every step at once
        state = self.act(drive[:, 0])
        states = [state]
        for t in range(1, drive.shape[1]):
            state = self.act(drive[:, t] + self.recurrent(state))
            states.append(state)
        return torch.stack(states, dim=1)

    def extra_repr(self) -> str:
        return f"activation={self.activation_name}"


class Readout(nn.Module):
    """logits = V s_T + c: a linear map of the last step of a sequence (or of a flat input)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "default"):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        initialise(self.linear.weight, self.linear.bias, init)

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, h: Tensor) -> Tensor:
        last = h[:, -1] if h.dim() == 3 else h.flatten(1)
        return self.linear(last)


@register_circuit
class RNN(Circuit):
    """Recurrent blocks of widths ``hidden``, then (``head=True``) a readout of the last step."""

    name = "rnn"
    input_ranks: ClassVar[dict[int, str] | None] = {
        1: "vectors", 2: "sequences (time, features)", 3: "images read row by row"}

    class Options(CircuitOptions):
        hidden: list[PositiveInt] = option(
            [128], "widths of the stacked Elman layers; images are read row by row (T = height)",
            min_length=1)
        activation: Activation = option("tanh", "activation f of the recurrent layers")
        bias: bool = option(True, "whether every layer has a bias")
        init: Init = option("default", "weight initialisation (default: PyTorch's own)")

    def __init__(self, task: Task, *, head: bool = True, **options: Any):
        super().__init__(task, head=head, **options)
        o = self.options
        widths, activation, bias, init = o.hidden, o.activation, o.bias, o.init
        self.steps, features = sequence_shape(tuple(task.input_shape))
        for width in widths:
            self.blocks.append(RecurrentBlock(features, width, activation, bias, init))
            features = width
        if head:
            self.blocks.append(Readout(features, task.num_classes, bias, init))

    @property
    def block_widths(self) -> list[int]:
        """Units per time step of each recurrent block; C for the readout."""
        return [b.out_features for b in self.blocks]
