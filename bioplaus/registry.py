"""Name -> class registries for learners, circuits and data sets.

Built-in rules and circuits register themselves with the decorators below when their package is
imported; third-party plugins register through the ``bioplaus.learners`` /
``bioplaus.circuits`` / ``bioplaus.data`` entry-point groups (each entry point names a module or
an object; loading it is enough, the decorators do the rest). The engine finds every learner and
circuit here and nowhere else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from bioplaus.core import Circuit, Learner
from bioplaus.errors import UsageError

_LEARNERS: dict[str, type[Learner]] = {}
_CIRCUITS: dict[str, type[Circuit]] = {}
_DATASETS: dict[str, Callable[..., Any]] = {}
_loaded = False

L = TypeVar("L", bound=type[Learner])
C = TypeVar("C", bound=type[Circuit])
F = TypeVar("F", bound=Callable[..., Any])


def register_learner(cls: L) -> L:
    """Class decorator: make a `Learner` subclass available under ``cls.name``."""
    _LEARNERS[cls.name] = cls
    return cls


def register_circuit(cls: C) -> C:
    """Class decorator: make a `Circuit` subclass available under ``cls.name``."""
    _CIRCUITS[cls.name] = cls
    return cls


def register_dataset(name: str) -> Callable[[F], F]:
    """Function decorator: register a data set loader under ``name`` (see `bioplaus.data`)."""

    def decorate(fn: F) -> F:
        _DATASETS[name] = fn
        return fn

    return decorate


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("bioplaus.circuits")
    importlib.import_module("bioplaus.learners")
    importlib.import_module("bioplaus.data")
    importlib.import_module("bioplaus.patterns")
    importlib.import_module("bioplaus.spiking_data")
    for group in ("bioplaus.circuits", "bioplaus.learners", "bioplaus.data"):
        for ep in entry_points(group=group):
            ep.load()


def learners() -> dict[str, type[Learner]]:
    _load()
    return dict(sorted(_LEARNERS.items()))


def circuits() -> dict[str, type[Circuit]]:
    _load()
    return dict(sorted(_CIRCUITS.items()))


def datasets() -> dict[str, Callable[..., Any]]:
    _load()
    return dict(sorted(_DATASETS.items()))


def _lookup(kind: str, table: dict[str, Any], name: str) -> Any:
    if name not in table:
        valid = ", ".join(table) or "(none registered)"
        raise UsageError(f"unknown {kind} '{name}'. Valid {kind}s: {valid}.")
    return table[name]


def get_learner(name: str) -> type[Learner]:
    return _lookup("learner", learners(), name)


def get_circuit(name: str) -> type[Circuit]:
    return _lookup("circuit", circuits(), name)


def get_dataset(name: str) -> Callable[..., Any]:
    return _lookup("data set", datasets(), name)


def check_compatible(learner_name: str, circuit_name: str) -> None:
    """Raise `UsageError` when the learner cannot train the circuit, naming what it can train."""
    learner = get_learner(learner_name)
    get_circuit(circuit_name)
    if not learner.supports(circuit_name):
        able = ", ".join(c for c in circuits() if learner.supports(c))
        raise UsageError(
            f"learner '{learner_name}' cannot train circuit '{circuit_name}'. "
            f"It trains: {able}. Choose one with circuit=NAME."
        )


def compatibility() -> dict[str, dict[str, bool]]:
    """learner -> circuit -> whether that pair is supported."""
    cs = circuits()
    return {name: {c: cls.supports(c) for c in cs} for name, cls in learners().items()}
