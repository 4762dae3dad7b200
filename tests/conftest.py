"""Shared test setup: W&B disabled, runs under a temporary folder, deterministic torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# a picture that fails to draw is logged and skipped in a user's run; in tests it is an error
os.environ.setdefault("BIOPLAUS_STRICT_PLOTS", "1")
# runs a test starts in a subprocess use one thread too: the suite runs one worker per core
os.environ.setdefault("OMP_NUM_THREADS", "1")

@pytest.fixture(autouse=True)
def _own_bench_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own `bioplaus bench` lock file, so that tests running in parallel (and a
    benchmark timing on the same machine) never refuse each other."""
    monkeypatch.setenv("BIOPLAUS_BENCH_LOCK", str(tmp_path / "bench.lock"))


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, and one CPU thread: the test models are small, and one thread is fastest for them
    and immune to oversubscription when other processes share the cores."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def untrained(tmp_path_factory: pytest.TempPathFactory):
    """Frozen-hidden-layer baselines (`tests.floors.Floors`), each measured once per session."""
    from tests.floors import Floors

    return Floors(tmp_path_factory.mktemp("untrained"))


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    return root


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "floors: a learning test measured against frozen hidden layers "
                                       "(it uses the ``untrained`` fixture; see benchmarks/floors.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that use the ``untrained`` fixture ``floors``; skip tests marked ``gpu`` when no
    CUDA device is present."""
    for item in items:
        if "untrained" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.floors)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
