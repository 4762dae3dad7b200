"""The allocator setting that keeps freed memory for reuse (`bioplaus.allocator`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from bioplaus import allocator
on = allocator.keep_freed_memory()
for step in range(10):
    if step == 7:  # steady state: the last three allocations
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(16_000_000)  # 64 MB: above glibc's largest (dynamic) mmap threshold
    del a
print(on, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "BIOPLAUS_MALLOC"}
    if env_value is not None:
        env["BIOPLAUS_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    on, faults = out.stdout.split()
    return on == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_blocks_are_reused_and_the_setting_can_be_switched_off():
    on, faults_on = _probe(None)
    off, faults_off = _probe("default")
    assert on and not off
    # 3 × 64 MB freshly mapped: ≈ 3 × 15 600 page faults; reused: next to none
    assert faults_off > 40_000, faults_off
    assert faults_on < 2_000, faults_on


def test_idempotent_and_never_raises():
    from bioplaus import allocator

    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is first


@pytest.mark.parametrize("value", ["bogus", "defualt", "2"])
def test_a_bad_setting_is_refused_before_the_run(value, tmp_path, monkeypatch):
    """A misspelt BIOPLAUS_MALLOC exits 2 naming the variable and its values; no run folder."""
    from tests.helpers import cli_in_process

    monkeypatch.setenv("BIOPLAUS_MALLOC", value)
    result = cli_in_process("run", "trainer.epochs=1", f"paths.runs={tmp_path}/runs")
    assert result.returncode == 2
    assert "BIOPLAUS_MALLOC" in result.stderr and "default" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["default", "OFF", "keep", ""])
def test_good_settings_pass_validation(value, monkeypatch):
    from bioplaus import allocator

    monkeypatch.setenv("BIOPLAUS_MALLOC", value)
    assert allocator.setting() == value.lower()
