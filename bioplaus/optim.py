"""Optimizers for learners, built from config names.

Learning rates are held as 0-d tensors so that a captured CUDA graph sees schedule changes made
in place between replays; on CUDA the optimizers are created ``capturable``.
"""

from __future__ import annotations

import math
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
        # SGD has no `capturable` mode; its fused CUDA kernel reads a tensor lr on the device, where
        # the foreach path would copy it to the host (a sync that breaks graph capture)
        return torch.optim.SGD(params, lr=lr_value, momentum=momentum, weight_decay=weight_decay,
                               fused=True if cuda else None)
    raise UsageError(f"unknown optimizer '{name}'. Valid optimizers: {', '.join(OPTIMIZERS)}.")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Change every group's learning rate in place (the tensor stays the same object)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


LR_SCHEDULES = ("constant", "cosine", "cooldown")


def lr_factor(schedule: str, epochs_done: int, epochs: int) -> float:
    """Multiplier of the base learning rate after ``epochs_done`` of ``epochs`` epochs.

    ``constant``: 1. ``cosine``: ½(1 + cos(π·e/E)). ``cooldown``: 1 for the first half, then
    linear down to 0 at the last epoch (the schedule of Hinton's Forward-Forward experiments).
    """
    if schedule == "constant" or epochs <= 0:
        return 1.0
    progress = min(max(epochs_done / epochs, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "cooldown":
        return 1.0 if progress <= 0.5 else 2.0 * (1.0 - progress)
    raise UsageError(f"unknown lr schedule '{schedule}'. Valid schedules: {', '.join(LR_SCHEDULES)}.")


def apply_schedule(optimizers: Iterable[torch.optim.Optimizer], factor: float) -> None:
    """Set every group's lr to its base lr (remembered on first use as ``base_lr``) × ``factor``."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            if "base_lr" not in group:
                lr = group["lr"]
                group["base_lr"] = float(lr) if isinstance(lr, torch.Tensor) else lr
            value = group["base_lr"] * factor
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value


@torch.no_grad()
def mask_optimizer_state(optimizers: Iterable[torch.optim.Optimizer],
                         masks: dict[torch.nn.Parameter, torch.Tensor]) -> None:
    """Zero every per-entry optimizer state (Adam moments, momentum) where a mask is 0.

    Called when a circuit's sparsity pattern changes, so that pruned entries keep no stale
    momentum and regrown entries start from a clean state.
    """
    for optimizer in optimizers:
        for param, state in optimizer.state.items():
            mask = masks.get(param)
            if mask is None:
                continue
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.mul_(mask.to(value.dtype))
