"""bioplaus — train neural circuits with biologically plausible learning rules.

The public API is small and light to import (no Hydra, W&B, Brian2 or SpikingJelly until used)::

    import bioplaus
    cfg = bioplaus.compose(["learner=mono_forward", "trainer.epochs=5"])
    summary = bioplaus.train(cfg)              # runs it, returns summary.json as a dict
    data, circuit, learner = bioplaus.build(cfg)   # for a loop of your own
"""

from __future__ import annotations

from typing import Any

from bioplaus.core import Circuit, Learner, Task
from bioplaus.errors import RunFailed, UsageError
from bioplaus.registry import (
    circuits,
    datasets,
    learners,
    register_circuit,
    register_dataset,
    register_learner,
)

__version__ = "0.1.0"

__all__ = [
    "Circuit",
    "Learner",
    "RunFailed",
    "Task",
    "UsageError",
    "build",
    "circuits",
    "compose",
    "datasets",
    "evaluate",
    "from_tensors",
    "learners",
    "register_circuit",
    "register_dataset",
    "register_learner",
    "train",
]


def compose(overrides: list[str] | tuple[str, ...] = (), *, check: bool = True) -> Any:
    """The run config for Hydra-style overrides, e.g. ``["learner=mono_forward", "seed=1"]``."""
    from bioplaus.config import compose as _compose

    return _compose(overrides, check=check)


def train(cfg: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a composed config; returns the summary dict. See `bioplaus.engine.train`."""
    from bioplaus.engine import train as _train

    return _train(cfg, **kwargs)


def build(cfg: Any, data: Any = None) -> tuple[Any, Circuit, Learner]:
    """(data, circuit, learner) for a composed config. See `bioplaus.engine.build`."""
    from bioplaus.engine import build as _build

    return _build(cfg, data)


def evaluate(learner: Learner, x: Any, y: Any, batch_size: int = 1000) -> dict[str, float]:
    """Accuracy of every readout of ``learner`` on (x, y)."""
    from bioplaus.engine import evaluate as _evaluate

    return _evaluate(learner, x, y, batch_size)


def from_tensors(x: Any, y: Any, **kwargs: Any) -> Any:
    """Train/val/test splits from your own arrays. See `bioplaus.data.from_tensors`."""
    from bioplaus.data import from_tensors as _from_tensors

    return _from_tensors(x, y, **kwargs)
