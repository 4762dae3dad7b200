"""A run killed with SIGKILL mid-epoch and resumed ends exactly where the uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

import bioplaus
from bioplaus.errors import UsageError
from tests.helpers import last_line, run_cli, summary_of

# slow enough per epoch (small batches) that a kill lands inside an epoch
RUN = ["learner=backprop", "trainer.epochs=4", "trainer.batch_size=8", "circuit.hidden=[128,128]",
       "seed=3", "threads=1", "trainer.progress=lines"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["learner"]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    full = tmp_path / "full"
    result = run_cli("run", *RUN, f"hydra.run.dir={full}")
    assert result.returncode == 0, result.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bioplaus", "run", *RUN, f"hydra.run.dir={killed}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    # wait until epoch 2 has been written, then kill inside epoch 3
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            time.sleep(0.15)
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed; make it slower"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    epochs_before = len(metrics.read_text().splitlines())
    assert epochs_before < 4

    resumed = run_cli("run", f"trainer.resume={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert last_line(resumed.stdout) == str(killed)

    a, b = summary_of(full), summary_of(killed)
    assert b["status"] == "completed" and b["epochs_completed"] == 4
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["best_val_accuracy"] == b["best_val_accuracy"]
    wa, wb = _weights(full), _weights(killed)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    epochs = [line for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 4  # no duplicate records after the resume


def test_resume_without_a_checkpoint_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("run", f"trainer.resume={tmp_path / 'nothing'}")
    assert result.returncode == 2
    assert "no checkpoints/last.pt" in result.stderr and "Traceback" not in result.stderr


# learners that draw random numbers while training: negatives (forward_forward), noise levels and
# latents (noprop), random pruning and regrowth (g2g with dynamic sparse training)
RANDOM_RUNS = {
    "forward_forward": ["learner=forward_forward", "circuit.hidden=[32]"],
    "noprop": ["learner=noprop", "circuit.blocks=3", "circuit.image_hidden=[16]",
               "circuit.label_hidden=[16]", "circuit.hidden=[16]"],
    "g2g_dst": ["learner=backprop", "circuit=g2g", "circuit.hidden=[32,32]", "circuit.dst.enabled=true",
                "circuit.dst.every=7", "circuit.dst.prune=random", "circuit.dst.regrow=random"],
}


@pytest.mark.parametrize("name", sorted(RANDOM_RUNS))
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path, name: str) -> None:
    """A run stopped after epoch 1 (interrupted while ending epoch 2) and resumed ends with the very
    weights, buffers and per-epoch metrics of the uninterrupted run: the checkpoint carries the RNG
    states the rule draws from."""
    import bioplaus
    from bioplaus import registry
    from bioplaus.engine import resume
    from bioplaus.errors import RunFailed

    run = [*RANDOM_RUNS[name], "trainer.epochs=3", "device=cpu", "plots=false", "seed=4"]
    full = bioplaus.train(bioplaus.compose(run), run_dir=tmp_path / "full", quiet=True)
    cls = registry.get_learner(run[0].split("=")[1])
    original = cls.on_epoch_end

    def interrupt(self: Any, epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt
        original(self, epoch)

    with mock.patch.object(cls, "on_epoch_end", interrupt), pytest.raises(RunFailed, match="interrupted"):
        bioplaus.train(bioplaus.compose(run), run_dir=tmp_path / "cut", quiet=True)
    resumed = resume(tmp_path / "cut", quiet=True)
    assert resumed["epochs_completed"] == 3 and resumed["test_accuracy"] == full["test_accuracy"]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key

    def epochs(run_dir: Path) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in rows]

    assert epochs(tmp_path / "full") == epochs(tmp_path / "cut")


@pytest.mark.parametrize("override", ["learner=forward_forward", "circuit.hidden=[8]", "data=fashion_mnist",
                                      "seed=3"])
def test_resume_refuses_to_change_what_the_checkpoint_holds(override: str, tmp_path: Path) -> None:
    """A resumed run keeps its learner, circuit, data and seed: changing one is a UsageError naming
    the key, before anything is loaded (no traceback from the config or the checkpoint)."""
    from bioplaus.engine import resume_config

    run = bioplaus.compose(["learner=backprop", "circuit.hidden=[16]", "trainer.epochs=1", "plots=false"])
    done = bioplaus.train(run, run_dir=tmp_path / "run", quiet=True)
    with pytest.raises(UsageError, match=override.split("=")[0].replace("[", r"\[")):
        resume_config(done["run_dir"], [override, "trainer.epochs=2"])
    assert resume_config(done["run_dir"], ["trainer.epochs=2", "threads=1"]).trainer.epochs == 2
