"""Helpers shared by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`bioplaus ARGS` in a subprocess; ``env`` replaces the environment when given."""
    full_env = dict(env) if env is not None else dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "bioplaus", *args], cwd=cwd, env=full_env, capture_output=True,
        text=True, timeout=timeout,
    )


def cli_in_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`bioplaus ARGS` through ``bioplaus.cli.main`` in this process, for input the CLI refuses
    before any run: the exit code (``SystemExit``), stdout and stderr as from a subprocess, without
    an interpreter start per case. An uncaught exception propagates (the test fails), as a traceback
    in a subprocess would. Use ``run_cli`` where the process boundary matters (signals, the
    environment, ``python -m``)."""
    import contextlib
    import io

    from bioplaus.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    previous = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["bioplaus", *args], code, out.getvalue(), err.getvalue())


def summary_of(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def capture_train_step(learner: Any, x: Any, y: Any, warmup: int = 3, forbid_sync: bool = False) -> Any:
    """Warm ``learner.train_step`` up on a side stream, capture one step as a CUDA graph; return
    (graph, the step's output tensors). With ``forbid_sync`` a host sync during capture is an error."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            learner.train_step(x, y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    if forbid_sync:
        torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            out = learner.train_step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return graph, out


def forbid_host_reads(monkeypatch: Any) -> None:
    """Make every host read of a tensor (.item(), bool(), float(), int(), .tolist()) fail."""
    import torch

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("host read of a tensor inside train_step")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def fit(learner: Any, data: Any, epochs: int, batch_size: int = 64) -> dict[str, float]:
    """Train ``learner`` on ``data`` with `Learner.train_step` (seeded batch order, epoch-end hook)
    and return the test accuracy of each of its readouts."""
    import torch

    from bioplaus.data import train_batches

    generator = torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):  # 1-based, as the engine counts (see `Learner.on_epoch_end`)
        for x, y in train_batches(data.train_x, data.train_y, batch_size, generator):
            learner.train_step(x, y)
        learner.on_epoch_end(epoch)
    return {k: float((s.argmax(1) == data.test_y).float().mean())
            for k, s in learner.predictions(data.test_x).items()}


def default_learner_options(name: str, cls: type) -> tuple[Any, dict[str, Any]]:
    """The composed default config of learner ``name`` and its ``learner.*`` options, asserted to
    be exactly ``cls``'s declared options and defaults."""
    from omegaconf import OmegaConf

    from bioplaus.config import compose

    cfg = compose([f"learner={name}"], check=False)
    options = OmegaConf.to_container(cfg.learner)
    options.pop("name")
    assert options == cls.Options.defaults()
    return cfg, options
