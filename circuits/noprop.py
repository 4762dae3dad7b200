"""`noprop_blocks` — the denoising blocks NoProp trains (Li, Teh & Pascanu 2025, arXiv 2503.24322,
Fig. 6): each block sees the image x and a noisy label embedding z and maps them to C logits.

One block::

    h_x = image branch(x)           mlp: dense layers ``image_hidden`` on the flattened image
                                    conv: conv blocks ``channels`` (3×3, ReLU, 2×2 max-pool), then
                                          dense layers ``image_hidden``
    h_z = label branch(z)           dense layers ``label_hidden`` on z (``label_features`` wide)
    h_t = f(W_t · sin/cos(t·ω))     time branch, only in the shared layout (ct, fm): sinusoidal
                                    features of t ∈ [0, 1] (``time_features`` wide), one dense layer
    out = head(dense layers ``hidden``(concat(h_x, h_z[, h_t])))      ``outputs`` wide (default C)

Layouts (option ``variant``, which the `noprop` learner config sets from ``learner.variant``):

* ``dt``: ``blocks`` = T independent blocks, no time input; block t (1-based) denoises z_{t−1}.
  Blocks share no parameter, so a loss on one block's output reaches no other block.
* ``ct``, ``fm``: one shared block with the time branch; ``blocks`` is then ignored.

The learner checks that the layout fits its variant and its label embedding (``label_features``
must equal the embedding width, ``outputs`` the velocity width under fm) and raises a
`UsageError` naming the option to change otherwise.

``forward(x, z, t=None, block=0)`` runs one block (``t`` a (B,) tensor of times in the shared
layout). Every block ends in its output layer: the circuit has no headless form (``head`` must be
True, as the learner declares). Options ``norm`` (``none`` | ``batch``: BatchNorm after every hidden
dense layer, as in the paper's blocks) and ``dropout`` apply to every hidden dense layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from bioplaus.circuits.cnn import ConvBlock
from bioplaus.circuits.mlp import Activation, Init, initialise
from bioplaus.core import Circuit, Task
from bioplaus.errors import UsageError
from bioplaus.functional import activation as activation_fn
from bioplaus.options import CircuitOptions, option
from bioplaus.registry import register_circuit


def time_features(t: Tensor, width: int, max_period: float = 1000.0) -> Tensor:
    """Sinusoidal features of times t ∈ [0, 1]: [sin(t·ω_k), cos(t·ω_k)], ω_k geometric in
    [1, max_period]; shape (B, width) (``width`` even)."""
    half = width // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_period), half, device=t.device, dtype=t.dtype))
    angles = t.reshape(-1, 1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _DenseStack(nn.Module):
    """Dense layers with activation, optional BatchNorm and dropout."""

    def __init__(self, in_features: int, widths: Sequence[int], act: str, norm: str, dropout: float,
                 init: str):
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            linear = nn.Linear(in_features, int(width))
            initialise(linear.weight, linear.bias, init)
            layers.append(linear)
            if norm == "batch":
                layers.append(nn.BatchNorm1d(int(width)))
            layers.append(_Activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = int(width)
        self.layers = nn.Sequential(*layers)
        self.out_features = in_features

    def forward(self, h: Tensor) -> Tensor:
        return self.layers(h.flatten(1))


class _Activation(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = activation_fn(name)

    def forward(self, h: Tensor) -> Tensor:
        return self.fn(h)

    def extra_repr(self) -> str:
        return self.name


class NoPropBlock(nn.Module):
    """One denoising block: image branch ‖ label branch (‖ time branch) → dense layers → outputs."""

    def __init__(self, task: Task, image_branch: str, image_hidden: Sequence[int], channels: Sequence[int],
                 kernel_size: int, label_features: int, label_hidden: Sequence[int], time_width: int,
                 hidden: Sequence[int], outputs: int, act: str, norm: str, dropout: float, init: str):
        super().__init__()
        if image_branch == "conv":
            convs: list[nn.Module] = []
            in_ch = task.input_shape[0]
            for ch in channels:
                convs.append(ConvBlock(in_ch, int(ch), kernel_size, act, 2, True, init))
                if norm == "batch":
                    convs.append(nn.BatchNorm2d(int(ch)))
                in_ch = int(ch)
            self.convs = nn.Sequential(*convs)
            with torch.no_grad():
                probe = self.convs(torch.zeros(1, *task.input_shape))
            if probe.shape[-1] < 1 or probe.shape[-2] < 1:
                raise UsageError("circuit 'noprop_blocks': too many conv stages (circuit.channels) for "
                                 f"this input size {task.input_shape}.")
            image_in = probe[0].numel()
        else:
            self.convs = nn.Sequential()
            image_in = task.input_size
        self.image = _DenseStack(image_in, image_hidden, act, norm, dropout, init)
        self.label = _DenseStack(label_features, label_hidden, act, norm, dropout, init)
        self.time_width = time_width
        fused = self.image.out_features + self.label.out_features
        if time_width:
            self.time = _DenseStack(time_width, [time_width], act, "none", 0.0, init)
            fused += time_width
        self.trunk = _DenseStack(fused, hidden, act, norm, dropout, init)
        self.out = nn.Linear(self.trunk.out_features, outputs)
        initialise(self.out.weight, self.out.bias, init)
        self.label_features = label_features

    def forward(self, x: Tensor, z: Tensor, t: Tensor | None = None) -> Tensor:
        parts = [self.image(self.convs(x)), self.label(z)]
        if self.time_width:
            if t is None:
                raise ValueError("this NoProp block is time-conditioned: pass t")
            parts.append(self.time(time_features(t.to(z.dtype), self.time_width)))
        return self.out(self.trunk(torch.cat(parts, dim=1)))


@register_circuit
class NoPropBlocks(Circuit):
    """NoProp denoising blocks: image branch + label branch → C logits (T blocks, or one shared)."""

    name = "noprop_blocks"
    headless = False

    class Options(CircuitOptions):
        variant: Literal["dt", "ct", "fm"] = option(
            "dt", "dt: `blocks` independent blocks | ct, fm: one shared block with a time input "
                  "(the noprop learner config sets it from learner.variant)")
        blocks: int = option(10, "T, the number of blocks under variant=dt", ge=1)
        image_branch: Literal["mlp", "conv"] = option("mlp", "dense or convolutional image branch")
        image_hidden: list[PositiveInt] = option(
            [256], "dense widths of the image branch (after the conv stages under conv)")
        channels: list[PositiveInt] = option(
            [32, 64], "conv channels, one 3×3 conv + ReLU + 2×2 max-pool each (image_branch=conv)")
        kernel_size: int = option(3, "side of the conv kernels", ge=1)
        label_features: int | None = option(
            None, "width of the label input z; null: C (one-hot / learned of width C)", ge=1)
        label_hidden: list[PositiveInt] = option([256], "dense widths of the label branch")
        time_features: int = option(
            64, "width of the sinusoidal time embedding (ct, fm; even)", ge=2, multiple_of=2)
        hidden: list[PositiveInt] = option([256], "dense widths after the concatenation")
        outputs: int | None = option(
            None, "output width; null: C logits (fm reads a velocity of the embedding width)", ge=1)
        activation: Activation = option("relu", "activation of the hidden layers")
        norm: Literal["none", "batch"] = option("none", "BatchNorm after every hidden layer, or none")
        dropout: float = option(0.0, "dropout after every hidden layer", ge=0, lt=1)
        init: Init = option("default", "weight initialisation (default: PyTorch's own)")

    def __init__(self, task: Task, *, head: bool = True, **options: Any):
        super().__init__(task, head=head, **options)
        o = self.options
        self.variant = o.variant
        if o.image_branch == "conv" and len(task.input_shape) != 3:
            raise UsageError("circuit.image_branch=conv needs image inputs (channels, height, width); "
                             f"this data has shape {task.input_shape}.")
        shared = self.variant != "dt"
        self.label_features = o.label_features if o.label_features is not None else task.num_classes
        self.outputs = o.outputs if o.outputs is not None else task.num_classes
        image_branch, image_hidden, channels, kernel_size = o.image_branch, o.image_hidden, o.channels, \
            o.kernel_size
        label_hidden, time_features, hidden, activation = o.label_hidden, o.time_features, o.hidden, \
            o.activation
        norm, dropout, init, blocks = o.norm, o.dropout, o.init, o.blocks
        self.shared = shared
        count = 1 if shared else blocks
        for _ in range(count):
            self.blocks.append(NoPropBlock(
                task, image_branch, image_hidden, channels, kernel_size, self.label_features,
                label_hidden, time_features if shared else 0, hidden, self.outputs, activation, norm,
                dropout, init))

    @classmethod
    def describe(cls, options: CircuitOptions, input_shape: tuple[int, ...]) -> str:
        o = options

        def widths(ws: list[int]) -> str:
            return "-".join(map(str, ws))

        branch = (f"conv {widths(o.channels)} → {widths(o.image_hidden)}" if o.image_branch == "conv"
                  else f"mlp {widths(o.image_hidden)}")
        blocks = f"T={o.blocks} blocks" if o.variant == "dt" else "one shared block"
        return f"noprop_blocks, {blocks}: image {branch}, head {widths(o.hidden)}"

    def forward(self, x: Tensor, z: Tensor, t: Tensor | None = None, block: int = 0) -> Tensor:  # type: ignore[override]
        """Output of block ``block`` (0-based) for image ``x``, label embedding ``z`` and, in the
        shared layout, times ``t`` (B,)."""
        return self.blocks[block](x, z, t)

    def activations(self, x: Tensor) -> list[Tensor]:
        raise TypeError("noprop_blocks blocks take (x, z[, t]), not a chain: call "
                        "forward(x, z, t, block) for one block")

    @property
    def block_widths(self) -> list[int]:
        return [self.outputs] * len(self.blocks)
