"""Floors measured, not guessed: the accuracy a learning test must beat is what the same learner,
circuit, data and readout reach when the rule's hidden layers learn nothing.

The *frozen-hidden* mutation restores every hidden block of the circuit (parameters and buffers)
to its initial value after each ``train_step``; everything else keeps training — the circuit's
head, the learner's projections, classifiers, feedback matrices and auxiliary nets. A rule whose
hidden layers learn nothing scores exactly this; a learning test asserts its trained accuracy
exceeds it by a stated margin (`assert_above`).

`Floors` (the session fixture ``untrained`` of ``tests/conftest.py``) measures each baseline once
per configuration and session. With ``BIOPLAUS_FLOORS_LOG=FILE`` every `assert_above` appends its
figures (test, trained, untrained, margin) to FILE as a JSON line, which
``benchmarks/floors.py`` collects into a table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

#: circuits whose blocks are all hidden even when built with ``head=True`` (the classifier is the
#: learner's own, e.g. NoProp's denoising blocks)
ALL_HIDDEN = ("noprop_blocks",)


def hidden_blocks(circuit: Any) -> list[nn.Module]:
    """The circuit's hidden blocks: every block but the head (the last block when it has one)."""
    blocks = list(circuit.blocks)
    if circuit.has_head and circuit.name not in ALL_HIDDEN:
        blocks = blocks[:-1]
    assert blocks, f"circuit {circuit.name} has no hidden block"
    return blocks


def freeze_hidden(learner: Any) -> Any:
    """Apply the frozen-hidden mutation to ``learner`` (before its first step) and return it: after
    every ``train_step`` its circuit's hidden blocks are restored in place to their present values."""
    tensors = [t for block in hidden_blocks(learner.circuit)
               for t in (*block.parameters(), *block.buffers())]
    initial = [t.detach().clone() for t in tensors]
    step = learner.train_step

    def frozen_step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out = step(x, y)
        with torch.no_grad():
            for t, t0 in zip(tensors, initial, strict=True):
                t.copy_(t0)
        return out

    learner.train_step = frozen_step
    return learner


@contextmanager
def frozen_hidden_runs() -> Iterator[None]:
    """Within the block, every learner the engine builds (`bioplaus.train`, `bioplaus.build`) has
    the frozen-hidden mutation applied."""
    from bioplaus import engine

    build = engine._build

    def frozen_build(cfg: Any, data: Any) -> Any:
        data, circuit, learner = build(cfg, data)
        return data, circuit, freeze_hidden(learner)

    with mock.patch.object(engine, "_build", frozen_build):
        yield


def assert_above(test: str, trained: float, untrained: float, margin: float) -> None:
    """Assert ``trained > untrained + margin`` and log the figures (see module doc)."""
    log = os.environ.get("BIOPLAUS_FLOORS_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"test": test, "trained": trained, "untrained": untrained,
                                "margin": margin, "floor": untrained + margin,
                                "passed": trained > untrained + margin}) + "\n")
    assert trained > untrained + margin, (
        f"{test}: trained {trained:.4f} is not above the frozen-hidden-layer accuracy "
        f"{untrained:.4f} + {margin}")


class Floors:
    """Frozen-hidden baselines, measured once per configuration (key) in a session."""

    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[Any, Any] = {}

    def fit(self, key: str, make: Callable[[], Any], data: Any, epochs: int, batch_size: int = 64,
            seed: int = 0) -> dict[str, float]:
        """Test accuracy of every readout of ``make()`` trained by `tests.helpers.fit` with its
        hidden layers frozen (torch seeded with ``seed`` before ``make``, as the autouse fixture
        seeds it before a test)."""
        from tests.helpers import fit

        if key not in self.cache:
            torch.manual_seed(seed)
            self.cache[key] = fit(freeze_hidden(make()), data, epochs, batch_size)
        return self.cache[key]

    def run(self, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
        """``summary.json`` of the run ``bioplaus run OVERRIDES`` with its hidden layers frozen
        (no checkpoints, no pictures)."""
        import bioplaus

        key = tuple(overrides)
        if key not in self.cache:
            folder = self.root / f"run{len(self.cache)}"
            cfg = bioplaus.compose([*overrides, "trainer.checkpoint=false", "plots=false"])
            with frozen_hidden_runs():
                self.cache[key] = bioplaus.train(cfg, run_dir=folder, quiet=True)
        return self.cache[key]
