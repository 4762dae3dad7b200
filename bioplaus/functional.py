"""Small functional helpers shared by circuits and learners (no state, no modules)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bioplaus.errors import UsageError

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
    "gelu": F.gelu,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation function called ``name``; a clear error for an unknown one."""
    if name not in ACTIVATIONS:
        raise UsageError(f"unknown activation '{name}'. Valid activations: {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def accuracy(scores: Tensor, y: Tensor) -> Tensor:
    """Fraction of rows whose argmax equals the label, as a 0-d tensor (no host sync)."""
    return (scores.argmax(dim=1) == y).float().mean()


def one_hot(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return F.one_hot(y, num_classes).to(dtype)
