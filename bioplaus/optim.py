"""Optimizers for learners, built from config names.

Learning rates are held as 0-d tensors so that a captured CUDA graph sees schedule changes made
in place between replays (DESIGN.md §5); on CUDA the optimizers are created ``capturable``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from bioplaus.errors import UsageError

OPTIMIZERS = ("adam", "adamw", "sgd")


def make_optimizer(
    params: Iterable[nn.Parameter],
    name: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    device: torch.device | str | None = None,
) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over ``params`` with a tensor learning rate on ``device``."""
    params = list(params)
    if not params:
        raise ValueError("make_optimizer got no parameters")
    device = torch.device(device) if device is not None else params[0].device
    cuda = device.type == "cuda"
    if lr <= 0:
        raise UsageError(f"learning rate must be positive; got {lr}.")
    lr_value: float | torch.Tensor = torch.tensor(float(lr), device=device) if cuda else float(lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr_value, weight_decay=weight_decay, capturable=cuda)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr_value, weight_decay=weight_decay, capturable=cuda)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr_value, momentum=momentum, weight_decay=weight_decay)
    raise UsageError(f"unknown optimizer '{name}'. Valid optimizers: {', '.join(OPTIMIZERS)}.")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Change every group's learning rate in place (the tensor stays the same object)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
