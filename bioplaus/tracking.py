"""Run outputs: the run directory, ``log.txt``, ``metrics.jsonl``, ``summary.json``, progress, W&B.

W&B is imported only when ``logger=wandb``. With no API key, or when the online start fails,
the run is logged offline into ``RUN_DIR/wandb`` (upload later with ``wandb sync``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch


def json_safe(value: Any) -> Any:
    """Floats that JSON can hold (nan/inf become null), containers recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n")
    os.replace(tmp, path)


def machine_description(device: torch.device) -> str:
    """A short description of the machine a run or benchmark used."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated on a GPU run; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def to_stdout(line: str) -> None:
    """Print ``line`` to stdout. If its reader has gone (``bioplaus run ... | head``), stdout is
    pointed at the null device for the rest of the process and the run goes on: its log, metrics,
    checkpoints and summary are written as usual."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class RunLog:
    """Writes lines to ``log.txt`` and, unless quiet, to the terminal."""

    def __init__(self, run_dir: Path, quiet: bool = False):
        self.path = run_dir / "log.txt"
        self.quiet = quiet
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed by close())

    def __call__(self, line: str) -> None:
        self._file.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        if not self.quiet:
            to_stdout(line)

    def close(self) -> None:
        self._file.close()


class MetricsFile:
    """``metrics.jsonl``: one JSON object per logged epoch (or step)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"

    def truncate_after(self, epoch: int) -> None:
        """Drop records past ``epoch`` (a resumed run writes them again)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")


class Progress:
    """A per-epoch progress bar on a terminal (rich), nothing per step otherwise."""

    def __init__(self, mode: str):
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        self.mode = mode
        self._progress: Any = None
        self._task: Any = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.mode != "bar":
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._progress = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(f"epoch {epoch}/{epochs}", total=steps)

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def end_epoch(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @property
    def prints_lines(self) -> bool:
        return self.mode in ("bar", "lines")


class WandbLogger:
    """Logs epoch metrics and the summary to W&B; offline into the run directory without a key.

    One run folder is one W&B run, across resumes: its id is kept in ``RUN_DIR/wandb.json`` and
    a resumed run continues it (W&B's ``resume="allow"``). Every record is logged at
    ``step = epoch``; epochs in ``metrics.jsonl`` that never reached W&B (the run was killed
    between the two writes, or W&B failed) are sent when the run resumes. W&B failing during a
    run never stops it: the failure is logged once and the metrics stay in ``metrics.jsonl``.
    """

    STATE = "wandb.json"

    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any], log: RunLog):
        import wandb

        self.wandb, self.log_line, self.failed = wandb, log, False
        self.state_path = run_dir / self.STATE
        state = self._read_state()
        resumed = "id" in state
        if not resumed:
            state = {"id": _new_run_id(wandb), "logged_epoch": 0}
            self._write_state(state)
        self.state = state
        mode = str(cfg.get("mode", "auto"))
        if mode == "auto":
            has_key = bool(os.environ.get("WANDB_API_KEY")) or _netrc_has_wandb()
            mode = os.environ.get("WANDB_MODE", "online" if has_key else "offline")
        kwargs = dict(project=cfg.get("project", "bioplaus"), entity=cfg.get("entity"),
                      tags=list(cfg.get("tags") or []), dir=str(run_dir), config=config,
                      name=run_dir.name, reinit="finish_previous", id=state["id"], resume="allow")
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as e:
            if mode == "offline":
                raise
            log(f"W&B online start failed ({e}); logging offline into {run_dir / 'wandb'}")
            mode = "offline"
            self.run = wandb.init(mode=mode, **kwargs)
        self.mode = mode
        log(f"W&B logging {mode}" + (f" into {run_dir / 'wandb'} (upload with `wandb sync`)"
                                     if mode == "offline" else "")
            + (f"; continuing W&B run {state['id']}" if resumed else ""))
        self._send_missing(run_dir / "metrics.jsonl")

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) and isinstance(state.get("id"), str) else {}

    def _write_state(self, state: dict[str, Any]) -> None:
        write_json(self.state_path, state)

    def _send_missing(self, metrics_path: Path) -> None:
        """Log the epochs of ``metrics.jsonl`` that W&B has not received (after a resume)."""
        if not metrics_path.is_file():
            return
        for line in metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and int(record.get("epoch", 0)) > int(self.state["logged_epoch"]):
                self.log(record)

    def log(self, record: dict[str, Any]) -> None:
        """Log one epoch's record at ``step = epoch``."""
        if self.failed:
            return
        epoch = int(record.get("epoch", 0))
        try:
            self.run.log(json_safe(record), step=epoch)
        except Exception as e:  # W&B (network, service) failing must not end the run
            self._fail(e)
            return
        self.state["logged_epoch"] = max(epoch, int(self.state["logged_epoch"]))
        self._write_state(self.state)

    def _fail(self, error: Exception) -> None:
        self.failed = True
        self.log_line(f"W&B logging failed ({type(error).__name__}: {error}); the run goes on, its "
                      f"metrics stay in metrics.jsonl and the missing epochs are sent to W&B when the "
                      f"run is resumed.")

    def finish(self, summary: dict[str, Any]) -> None:
        if self.failed:
            return
        try:
            for key, value in json_safe(summary).items():
                if isinstance(value, (int, float, str)) or value is None:
                    self.run.summary[key] = value
            self.run.finish()
        except Exception as e:  # as in log(): the run's own files are already written
            self._fail(e)


def _new_run_id(wandb: Any) -> str:
    util = getattr(wandb, "util", None)
    generate = getattr(util, "generate_id", None)
    if generate is not None:
        return str(generate())
    import secrets

    return secrets.token_hex(4)


def _netrc_has_wandb() -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False
