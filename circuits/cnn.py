"""`cnn` — a small convolutional stack: conv blocks, optional dense blocks, optional head.

Conv block l: a_l = pool(f(conv_l(h_{l−1}))); dense blocks as in `mlp` on the flattened features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bioplaus.circuits.mlp import Dense, initialise
from bioplaus.core import Circuit, Task
from bioplaus.errors import UsageError
from bioplaus.functional import activation
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


@register_circuit
class CNN(Circuit):
    """Conv blocks with ``channels``, then dense blocks ``hidden``, then (``head=True``) a linear head."""

    name = "cnn"

    def __init__(self, task: Task, channels: Sequence[int] = (32, 64), kernel_size: int = 3,
                 pool: int = 2, hidden: Sequence[int] = (), activation: str = "relu",
                 bias: bool = True, init: str = "default", head: bool = True):
        super().__init__(task)
        if len(task.input_shape) != 3:
            raise UsageError(
                f"circuit 'cnn' needs image inputs (channels, height, width); this data has shape "
                f"{task.input_shape}."
            )
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
        self.has_head = head
        self._widths = self._measure_widths()

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
