"""`cnn` — a small convolutional stack: conv blocks, optional dense blocks, optional head.

Conv block l: a_l = pool(f(conv_l(h_{l−1}))); dense blocks as in `mlp` on the flattened features.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from bioplaus.circuits.mlp import Activation, Dense, Init, initialise
from bioplaus.core import Circuit, Task
from bioplaus.errors import UsageError
from bioplaus.functional import activation
from bioplaus.options import CircuitOptions, option
from bioplaus.registry import register_circuit


class ConvBlock(nn.Module):
    """a = maxpool(f(conv(h))). `pre` gives the convolution output z."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, act: str, pool: int,
                 bias: bool, init: str):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.act = activation(act)
        self.pool = nn.MaxPool2d(pool) if pool > 1 else nn.Identity()
        initialise(self.conv.weight, self.conv.bias, init)

    def pre(self, h: Tensor) -> Tensor:
        return self.conv(h)

    def forward(self, h: Tensor) -> Tensor:
        return self.pool(self.act(self.pre(h)))

    def fresh(self, in_shape: tuple[int, ...]) -> ConvBlock:
        """A newly initialised block of this kind and width (its own activation and pooling) for
        inputs of ``in_shape`` (channels, height, width)."""
        copy = ConvBlock(in_shape[0], self.conv.out_channels, self.conv.kernel_size[0], "relu", 1,
                         self.conv.bias is not None, "default")
        copy.act, copy.pool = self.act, self.pool
        return copy


@register_circuit
class CNN(Circuit):
    """Conv blocks with ``channels``, then dense blocks ``hidden``, then (``head=True``) a linear head."""

    name = "cnn"
    input_ranks: ClassVar[dict[int, str] | None] = {3: "image inputs (channels, height, width)"}

    class Options(CircuitOptions):
        channels: list[PositiveInt] = option([32, 64], "output channels of the conv blocks")
        kernel_size: int = option(3, "side of the square convolution kernels (padding keeps the size)", ge=1)
        pool: int = option(2, "max-pooling window after each conv block; 1: none", ge=1)
        hidden: list[PositiveInt] = option([], "widths of the dense blocks after the conv blocks")
        activation: Activation = option("relu", "activation f of the conv and dense blocks")
        bias: bool = option(True, "whether every block has a bias")
        init: Init = option("default", "weight initialisation (default: PyTorch's own)")

    def __init__(self, task: Task, *, head: bool = True, **options: Any):
        super().__init__(task, head=head, **options)
        o = self.options
        channels, kernel_size, pool, hidden = o.channels, o.kernel_size, o.pool, o.hidden
        activation, bias, init = o.activation, o.bias, o.init
        in_ch = task.input_shape[0]
        for ch in channels:
            self.blocks.append(ConvBlock(in_ch, int(ch), kernel_size, activation, pool, bias, init))
            in_ch = int(ch)
        with torch.no_grad():
            fan_in = self._feature_size()
        for width in hidden:
            self.blocks.append(Dense(fan_in, int(width), activation, bias, init))
            fan_in = int(width)
        if head:
            self.blocks.append(Dense(fan_in, task.num_classes, "identity", bias, init))
        self._widths = self._measure_widths()

    @classmethod
    def describe(cls, options: CircuitOptions, input_shape: tuple[int, ...]) -> str:
        o = options
        return f"cnn conv {'-'.join(map(str, o.channels))} → {'-'.join(map(str, o.hidden))}"

    def _feature_size(self) -> int:
        x = torch.zeros(1, *self.task.input_shape)
        for block in self.blocks:
            x = block(x)
        if x.shape[-1] < 1:
            raise UsageError("circuit 'cnn': too many pooling stages for this input size.")
        return x[0].numel()

    def _measure_widths(self) -> list[int]:
        x = torch.zeros(1, *self.task.input_shape)
        widths = []
        with torch.no_grad():
            for block in self.blocks:
                x = block(x)
                widths.append(x[0].numel())
        return widths

    @property
    def block_widths(self) -> list[int]:
        return list(self._widths)
