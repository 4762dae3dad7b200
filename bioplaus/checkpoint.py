"""Checkpoints: circuit + learner (parameters, buffers, optimizer states), RNG states, loop position.

Written atomically (temporary file, then rename), so a run killed while saving keeps its previous
checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bioplaus.core import Learner


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, learner: Learner, loop: dict[str, Any]) -> None:
    """Save the learner (its circuit included) and the loop position ``loop`` to ``path``."""
    payload = {
        "learner": learner.state_dict(),
        "optimizers": learner.optimizer_state_dict(),
        "rng": rng_state(),
        "loop": loop,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: Path, learner: Learner, map_location: Any = "cpu") -> dict[str, Any]:
    """Restore the learner and RNG states from ``path``; return the saved loop position."""
    payload = torch.load(path, map_location=map_location, weights_only=False)
    learner.load_state_dict(payload["learner"])
    learner.load_optimizer_state_dict(payload["optimizers"])
    set_rng_state(payload["rng"])
    return payload["loop"]


def save_weights(path: Path, learner: Learner) -> None:
    """Save only the learner's parameters and buffers (e.g. the best-validation weights)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(learner.state_dict(), tmp)
    os.replace(tmp, path)


def load_weights(path: Path, learner: Learner, map_location: Any = "cpu") -> None:
    learner.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))
