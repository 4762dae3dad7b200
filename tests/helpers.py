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


def summary_of(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
