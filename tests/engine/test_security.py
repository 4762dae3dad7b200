"""Nothing a file or an override holds runs code, and no secret is written.

Each test hands bioplaus what a user might be handed by someone else (a sweep spec, a data
folder, a checkpoint, a config, a command line) whose content would run code if bioplaus read it
as anything but data: a marker file appears if it does. Each must exit 2 (`UsageError` in the
API) with a message, and the marker must stay absent.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

import bioplaus
from bioplaus import cli, data
from bioplaus import sweep as sweep_module
from bioplaus.errors import UsageError

SECRET = "dummy-wandb-key-0123456789abcdef0123456789abcdef"
QUICK = ["learner=backprop", "circuit.hidden=[8]", "trainer.epochs=1", "threads=1", "trainer.progress=none"]


class _Touch:
    """Pickles as a call of os.system that creates ``marker``: code a full unpickler would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`bioplaus ARGS` in this process: (exit code, stderr)."""
    argv = sys.argv[:]
    try:
        cli.main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# -- sweep specs -----------------------------------------------------------------------------------


def _spec(tmp_path: Path, command: list[str], name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"method": "grid", "parameters": {"learner": {"value": "backprop"}},
                                    "command": command}))
    return path


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> dict:
    """W&B as a key holder would have it, mocked: what is registered and what agent runs."""
    calls: dict = {"sweep": [], "agent": []}
    module = types.SimpleNamespace(sweep=lambda spec, project, entity: calls["sweep"].append(spec) or "id1")
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setattr(sweep_module, "has_wandb_key", lambda: True)
    monkeypatch.setattr(sweep_module, "agent_command", lambda sweep_id, count: ["agent", sweep_id])
    real_run = subprocess.run

    def run(cmd, **kwargs):
        if cmd[:1] != ["agent"]:
            return real_run(cmd, **kwargs)
        calls["agent"].append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(sweep_module.subprocess, "run", run)
    return calls


def test_a_sweep_command_with_a_foreign_program_is_never_registered(
        tmp_path: Path, fake_wandb: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """cbacd3b registered ``sh -c '...; echo' run ${args_no_hyphens}`` as written, and the W&B
    agent would have run the shell command."""
    marker = tmp_path / "PWNED"
    for i, command in enumerate([
        ["sh", "-c", f"touch {marker}; echo", "run", "${args_no_hyphens}"],
        ["/tmp/bioplaus", "run", "${args_no_hyphens}"],
        ["bioplaus", "run", "--config-dir=/elsewhere", "${args_no_hyphens}"],
        ["bioplaus", "run", "${args_no_hyphens}", "&&", "sh"],
        ["${env}", "sh", "-c", "x", "run", "${args_no_hyphens}"],
    ]):
        code, err = _main(["sweep", str(_spec(tmp_path, command, f"s{i}.yaml"))], capsys)
        assert code == 2, command
        assert "command" in err
    assert fake_wandb["sweep"] == [] and fake_wandb["agent"] == []
    assert not marker.exists()


def test_the_registered_command_is_the_one_bioplaus_builds(tmp_path: Path, fake_wandb: dict,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    command = ["${env}", "${interpreter}", "-m", "bioplaus", "run", "logger=wandb", "${args_no_hyphens}"]
    code, err = _main(["sweep", str(_spec(tmp_path, command)), "device=cpu"], capsys)
    assert code == 0, err
    assert fake_wandb["sweep"][0]["command"] == [*command[:-1], "device=cpu", "${args_no_hyphens}"]
    assert fake_wandb["agent"][0][-1] == "bioplaus/id1"


def test_a_sweep_value_that_copies_a_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """cbacd3b ran it and wrote the key into every run's config.yaml."""
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    path = tmp_path / "leak.yaml"
    path.write_text(yaml.safe_dump({"method": "grid", "parameters": {
        "learner": {"value": "backprop"}, "+note": {"value": "${oc.env:WANDB_API_KEY}"}}}))
    monkeypatch.chdir(tmp_path)
    code, err = _main(["sweep", str(path), "--local", f"paths.runs={tmp_path / 'runs'}"], capsys)
    assert code == 2 and "WANDB_API_KEY" in err
    assert not (tmp_path / "runs").exists()


def test_python_tags_in_a_sweep_file_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "tagged.yaml"
    path.write_text(f"method: !!python/object/apply:os.system ['touch {marker}']\n"
                    "parameters: {learner: {value: backprop}}\n")
    code, err = _main(["sweep", str(path), "--local"], capsys)
    assert code == 2 and "python/object" in err and str(path) in err
    assert not marker.exists()


# -- configs and the command line ------------------------------------------------------------------


def _finished_run(tmp_path: Path) -> Path:
    cfg = bioplaus.compose([*QUICK, f"paths.runs={tmp_path / 'runs'}"])
    return Path(bioplaus.train(cfg, quiet=True)["run_dir"])


def test_python_tags_in_a_config_file_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder handed over with a tagged config.yaml: cbacd3b ended in a traceback."""
    run_dir = _finished_run(tmp_path)
    marker = tmp_path / "PWNED"
    config = run_dir / "config.yaml"
    config.write_text(config.read_text()
                      + f"note: !!python/object/apply:os.system ['touch {marker}']\n")
    code, err = _main(["run", f"trainer.resume={run_dir}", "trainer.epochs=2"], capsys)
    assert code == 2 and "python/object" in err and "config.yaml" in err
    assert not marker.exists()


@pytest.mark.parametrize("override", [
    "+_target_=os.system",
    "+learner._target_=os.system",
    "+hydra.callbacks.evil._target_=builtins.open",
    "hydra/job_logging=default",
])
def test_instantiation_keys_on_the_command_line_are_refused(
        override: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """cbacd3b ran the first (and ignored the key) and, for the third, had Hydra instantiate the
    callback (``open(MARKER, 'w')``) before the run."""
    marker = tmp_path / "PWNED"
    monkeypatch.chdir(tmp_path)
    extra = [f"+hydra.callbacks.evil.file={marker}", "+hydra.callbacks.evil.mode=w"] \
        if "callbacks" in override else []
    code, err = _main(["run", *QUICK, override, *extra, f"paths.runs={tmp_path / 'runs'}"], capsys)
    assert code == 2 and err.startswith("bioplaus: error:")
    assert not marker.exists() and not (tmp_path / "runs").exists()
    with pytest.raises(UsageError):
        bioplaus.compose([*QUICK, override])


# -- data files and checkpoints ---------------------------------------------------------------------


def test_a_cifar_batch_whose_pickle_would_run_code_is_refused(tmp_path: Path) -> None:
    """cbacd3b read the batches with pickle.load: the marker appeared."""
    marker = tmp_path / "PWNED"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), b"labels": [0, 1, 2, 3]}
        if name == "data_batch_3":
            batch[b"labels"] = _Touch(marker)
        (folder / name).write_bytes(pickle.dumps(batch))
    cfg = OmegaConf.create({"name": "cifar10", "root": str(tmp_path)})
    with pytest.raises(UsageError, match="data_batch_3") as info:
        data.load(cfg, seed=0, device="cpu")
    assert "posix.system" in str(info.value) or "os.system" in str(info.value)
    assert not marker.exists()


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path: Path) -> None:
    """cbacd3b loaded checkpoints with weights_only=False: the marker appeared on resume."""
    run_dir = _finished_run(tmp_path)
    marker = tmp_path / "PWNED"
    last = run_dir / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    payload["loop"]["note"] = _Touch(marker)
    torch.save(payload, last)
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(UsageError, match="weights_only=True"):
        bioplaus.train(OmegaConf.merge(bioplaus.compose(QUICK), {"trainer": {
            "resume": str(run_dir), "epochs": 2}}), quiet=True)
    assert not marker.exists()
    assert (run_dir / "metrics.jsonl").read_text() == before


# -- secrets ----------------------------------------------------------------------------------------


class _FakeWandbRun:
    def __init__(self, sink: dict):
        self.sink, self.summary = sink, {}

    def log(self, record, step=None):
        self.sink["logs"].append((step, record))

    def finish(self):
        self.sink["summary"] = dict(self.summary)


def fake_wandb_module(sink: dict) -> types.ModuleType:
    """A wandb stand-in recording what W&B would receive (init kwargs, logs, summary)."""
    module = types.ModuleType("wandb")
    sink.setdefault("logs", [])
    sink.setdefault("inits", [])

    def init(**kwargs):
        sink["inits"].append(kwargs)
        return _FakeWandbRun(sink)

    module.init = init
    module.util = types.SimpleNamespace(generate_id=lambda: f"run{len(sink['inits'])}x")
    return module


def test_no_secret_is_written_to_the_run_folder_or_wandb(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("BIOPLAUS_TEST_TOKEN", SECRET + "-token")
    sink: dict = {}
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb_module(sink))
    cfg = bioplaus.compose([*QUICK, "logger=wandb", "logger.mode=offline", f"paths.runs={tmp_path}"])
    run_dir = Path(bioplaus.train(cfg, quiet=True)["run_dir"])
    for name in ("config.yaml", "log.txt", "summary.json", "metrics.jsonl", "wandb.json"):
        assert SECRET not in (run_dir / name).read_text(), name
    assert SECRET not in repr(sink)  # the W&B config, records and summary
    assert sink["inits"][0]["config"]["learner"]["name"] == "backprop"
    # an override that would copy it into the config is refused (cbacd3b wrote it to config.yaml)
    for override in ("+note=${oc.env:WANDB_API_KEY}", "data.root=${oc.env:BIOPLAUS_TEST_TOKEN}"):
        with pytest.raises(UsageError, match="never writes secrets"):
            bioplaus.compose([*QUICK, override])


@pytest.mark.slow
def test_real_offline_wandb_keeps_one_run_and_no_secret(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the installed wandb, offline: a resumed run continues the same W&B run id, and no
    file of the run folder (W&B's own offline files included) holds the key."""
    from bioplaus.engine import resume

    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = bioplaus.compose([*QUICK, "trainer.epochs=2", "logger=wandb", f"paths.runs={tmp_path}"])
    run_dir = Path(bioplaus.train(cfg, quiet=True)["run_dir"])
    resume(run_dir, ["trainer.epochs=3"], quiet=True)
    run_id = json.loads((run_dir / "wandb.json").read_text())["id"]
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline)
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
