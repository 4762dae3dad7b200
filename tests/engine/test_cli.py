"""The `bioplaus` command: run directory contents, exit codes, bad input, listing, W&B offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import cli_in_process, last_line, run_cli, summary_of

SUMMARY_KEYS = {
    "status", "learner", "circuit", "data", "seed", "epochs_completed", "test_accuracy",
    "best_val_accuracy", "train_seconds", "samples_per_second", "peak_memory_bytes", "device",
}
QUICK = ["learner=backprop", "trainer.epochs=2", "circuit.hidden=[32]"]


def test_run_writes_the_run_directory(tmp_path: Path) -> None:
    result = run_cli("run", *QUICK, f"paths.runs={tmp_path}/runs")
    assert result.returncode == 0, result.stderr
    run_dir = Path(last_line(result.stdout))
    assert run_dir.parent.parent == tmp_path / "runs"
    assert run_dir.name.endswith("_backprop_mlp_digits")
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "log.txt", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    summary = summary_of(run_dir)
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert "val_accuracy" in records[-1] and "train_loss" in records[-1]


def test_a_reader_that_goes_away_does_not_stop_the_run(tmp_path: Path) -> None:
    """`bioplaus run ... | head -1`: stdout's reader leaves after the first line; the run goes on
    and completes (summary, log, metrics), exit 0, no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "bioplaus", "run", *QUICK, "trainer.epochs=3",
                             f"paths.runs={tmp_path}/runs"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert first.startswith("backprop on mlp / digits")
    (run_dir,) = (tmp_path / "runs").glob("*/*")
    summary = summary_of(run_dir)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3


def test_hydra_run_dir_pins_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "exact"
    result = run_cli("run", *QUICK, "trainer.epochs=1", f"hydra.run.dir={target}")
    assert result.returncode == 0, result.stderr
    assert last_line(result.stdout) == str(target)
    assert summary_of(target)["status"] == "completed"


def _not_writable_root(tmp_path: Path) -> str:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return f"paths.runs={blocker}/runs"


BAD_INPUT = {
    "unknown learner": (["learner=no_such_rule"], ["unknown learner", "backprop", "forward_forward"]),
    "misspelt key": (["learner=backprop", "trainer.epochz=3"], ["trainer.epochz", "epochs"]),
    "wrong type": (["learner=backprop", "trainer.epochs=abc"], ["trainer.epochs", "integer"]),
    "non-positive batch": (["learner=backprop", "trainer.batch_size=0"], ["batch_size", "positive"]),
    "incompatible pair": (["learner=forward_forward", "circuit=cnn"], ["cannot train", "mlp"]),
    "missing data": (["learner=backprop", "data=fashion_mnist", "data.download=false"],
                     ["not found", "looked", "data.download=true"]),
    "unwritable root": (None, ["not writable", "paths.runs"]),
    "unknown learner option": (["learner=backprop", "+learner.momentun=0.5"], ["momentun", "momentum"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_a_message_and_no_run(case: str, tmp_path: Path) -> None:
    overrides, expected = BAD_INPUT[case]
    if overrides is None:
        overrides = ["learner=backprop", _not_writable_root(tmp_path)]
    else:
        overrides = [*overrides, f"paths.runs={tmp_path}/runs"]
    if case == "missing data":
        overrides.append(f"data.root={tmp_path}/no-data-here")
    result = cli_in_process("run", *overrides, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    message = result.stderr.strip()
    assert message.startswith("bioplaus: error:")
    assert "\n\n" not in message  # one paragraph
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))


def test_diverging_run_exits_1_and_keeps_a_finite_checkpoint(tmp_path: Path) -> None:
    import torch

    result = run_cli("run", *QUICK, "trainer.epochs=3", "learner.lr=1e6", f"paths.runs={tmp_path}")
    assert result.returncode == 1, result.stderr
    assert "diverged" in result.stderr
    run_dir = Path(last_line(result.stdout))
    summary = summary_of(run_dir)
    assert summary["status"] == "diverged"
    assert "loss" in summary["reason"]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["learner"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_list_prints_everything() -> None:
    result = cli_in_process("list")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for section in ("learners:", "circuits:", "data:", "experiments:", "compatibility"):
        assert section in out
    for name in ("backprop", "forward_forward", "mono_forward", "mlp", "cnn", "digits", "fashion_mnist"):
        assert name in out


def test_unknown_command_exits_2() -> None:
    result = cli_in_process("frobnicate")
    assert result.returncode == 2
    assert "unknown command" in result.stderr


def test_wandb_without_a_key_logs_offline_into_the_run_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true", NETRC=str(tmp_path / "no-netrc"))
    result = run_cli("run", *QUICK, "trainer.epochs=1", "logger=wandb", f"paths.runs={tmp_path}/runs",
                     env=env)
    assert result.returncode == 0, result.stderr
    run_dir = Path(last_line(result.stdout))
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline, list(run_dir.rglob("*"))
    assert any(offline[0].rglob("*.wandb"))


def test_compare_tabulates_runs(tmp_path: Path) -> None:
    first = run_cli("run", *QUICK, "trainer.epochs=1", f"paths.runs={tmp_path}/runs")
    assert first.returncode == 0, first.stderr
    result = cli_in_process("compare", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.split()[7:10] == ["metric", "test", "best_val"] and "samples_per_second" in header
    assert "backprop" in row and row.split()[7] == "accuracy"
    missing = cli_in_process("compare", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path, monkeypatch) -> None:
    """The dated default folder is claimed atomically: a second run that finds it taken (same
    learner, circuit, data and second) takes <name>_2; a pinned folder that holds a run is refused."""
    import bioplaus
    from bioplaus import engine
    from bioplaus.errors import UsageError

    fixed = tmp_path / "runs" / "2026-01-01" / "10-00-00_backprop_mlp_digits"
    monkeypatch.setattr(engine, "default_run_dir", lambda cfg, data_name=None: fixed)
    cfg = bioplaus.compose([*QUICK, "trainer.epochs=1"])
    first = bioplaus.train(cfg, quiet=True)
    second = bioplaus.train(cfg, quiet=True)
    assert first["run_dir"] == str(fixed)
    assert second["run_dir"] == str(fixed.with_name(fixed.name + "_2"))
    assert summary_of(fixed)["status"] == summary_of(second["run_dir"])["status"] == "completed"
    with pytest.raises(UsageError, match="already holds a run"):
        bioplaus.train(cfg, run_dir=fixed, quiet=True)
    assert summary_of(fixed) == first  # the pinned folder's run is untouched

    result = run_cli("run", *QUICK, "trainer.epochs=1", f"hydra.run.dir={fixed}")
    assert result.returncode == 2 and "already holds a run" in result.stderr
