"""The built wheel carries bioplaus.learners, bioplaus.circuits and bioplaus.configs and imports them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers import REPO


def test_wheel_contains_and_imports_everything(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheel = next(dist.glob("bioplaus-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("bioplaus/learners/backprop.py", "bioplaus/circuits/mlp.py",
                     "bioplaus/configs/config.yaml", "bioplaus/configs/learner/backprop.yaml",
                     "bioplaus/configs/trainer/default.yaml", "bioplaus/configs/sweeps/digits_ff.yaml"):
        assert expected in names, expected
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                              str(site), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    code = (
        "import bioplaus, bioplaus.learners.backprop, bioplaus.circuits.mlp; "
        "from bioplaus.config import group_options; "
        f"assert bioplaus.__file__.startswith({str(site)!r}), bioplaus.__file__; "
        "assert 'backprop' in group_options('learner'); "
        "cfg = bioplaus.compose(['learner=backprop']); print(cfg.learner.name)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("backprop")
