"""`bioplaus sweep`: local grid/random/bayes sweeps over `bioplaus run`, bad sweep files, W&B path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from bioplaus import sweep as sweep_module
from bioplaus.errors import UsageError
from tests.helpers import cli_in_process, last_line, run_cli

QUICK = {"learner": {"value": "backprop"}, "circuit.hidden": {"value": [16]}}
COMMAND = ["bioplaus", "run", "logger=wandb", "${args_no_hyphens}"]


def write_spec(tmp_path: Path, method: str, parameters: dict, **extra) -> Path:
    spec = {"method": method, "metric": {"name": "best_val_accuracy", "goal": "maximize"},
            "parameters": parameters, "command": COMMAND, **extra}
    path = tmp_path / f"{method}_sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def records_of(sweep_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep_dir / "sweep.jsonl").read_text().splitlines()]


def test_local_grid_runs_every_point_and_names_the_best(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "grid", {**QUICK, "trainer.epochs": {"values": [1, 4]},
                                         "learner.lr": {"values": [1e-4, 3e-3]}})
    result = run_cli("sweep", str(spec), "--local", f"paths.runs={tmp_path}/runs", "threads=1")
    assert result.returncode == 0, result.stderr
    sweep_dir = Path(last_line(result.stdout))
    assert sweep_dir.parent.parent == tmp_path / "runs" / "sweeps"
    records = records_of(sweep_dir)
    points = {(r["parameters"]["trainer.epochs"], r["parameters"]["learner.lr"]) for r in records}
    assert points == {(1, 1e-4), (1, 3e-3), (4, 1e-4), (4, 3e-3)}
    for record in records:  # each run is a real run with the proposed parameters
        assert record["status"] == "completed"
        run_cfg = yaml.safe_load((Path(record["run_dir"]) / "config.yaml").read_text())
        assert run_cfg["trainer"]["epochs"] == record["parameters"]["trainer.epochs"]
        assert run_cfg["learner"]["lr"] == record["parameters"]["learner.lr"]
        assert run_cfg["threads"] == 1
        summary = json.loads((Path(record["run_dir"]) / "summary.json").read_text())
        assert record["metric"] == summary["best_val_accuracy"]
    best = json.loads((sweep_dir / "summary.json").read_text())["best"]
    assert best["metric"] == max(r["metric"] for r in records)
    # 4 epochs at lr 3e-3 beat 1 epoch at lr 1e-4 by far on digits
    worst = next(r for r in records if r["parameters"] == {**best["parameters"], "trainer.epochs": 1,
                                                           "learner.lr": 1e-4})
    assert best["metric"] > worst["metric"] + 0.1
    assert f"best: run {best['index']:03d}" in result.stdout
    assert "run 4/4:" in result.stdout


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_propose_count_runs_within_the_bounds(tmp_path: Path, method: str) -> None:
    params = {**QUICK, "trainer.epochs": {"value": 1},
              "learner.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
              "trainer.batch_size": {"values": [32, 64]}}
    spec = write_spec(tmp_path, method, params)
    runs = tmp_path / "runs"
    result = run_cli("sweep", str(spec), "--local", "--count", "3", f"paths.runs={runs}", "threads=1")
    assert result.returncode == 0, result.stderr
    records = records_of(Path(last_line(result.stdout)))
    assert len(records) == 3 and all(r["status"] == "completed" for r in records)
    for r in records:
        assert 1e-4 <= r["parameters"]["learner.lr"] <= 1e-2
        assert r["parameters"]["trainer.batch_size"] in (32, 64)
        assert 0.0 < r["metric"] <= 1.0
    if method == "random":  # the same --seed proposes the same runs
        again = run_cli("sweep", str(spec), "--local", "--count", "2", "--seed", "0",
                        f"paths.runs={tmp_path}/again", "threads=1")
        assert again.returncode == 0, again.stderr
        repeated = records_of(Path(last_line(again.stdout)))
        assert [r["parameters"] for r in repeated] == [r["parameters"] for r in records[:2]]


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "grid", {**QUICK, "trainer.epochs": {"value": 2},
                                         "learner.lr": {"values": [1e6, 1e-3]}})
    result = run_cli("sweep", str(spec), "--local", f"paths.runs={tmp_path}/runs", "threads=1")
    assert result.returncode == 0, result.stderr
    records = {r["parameters"]["learner.lr"]: r for r in records_of(Path(last_line(result.stdout)))}
    assert records[1e6]["status"] == "diverged" and records[1e6]["metric"] is None
    assert "grew" in records[1e6]["reason"]
    assert records[1e-3]["status"] == "completed"
    best = json.loads((Path(last_line(result.stdout)) / "summary.json").read_text())["best"]
    assert best["parameters"]["learner.lr"] == 1e-3


def _bad_specs(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    def spec(name: str, text: str) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return str(path)

    good = yaml.safe_dump({"method": "grid", "parameters": {"learner.lr": {"values": [1e-3]}},
                           "command": COMMAND})
    return {
        "unknown key": ([write_spec(tmp_path, "grid", {"learner.lrr": {"values": [1e-3]}})],
                        ["learner.lrr"]),
        "wrong type": ([write_spec(tmp_path, "random", {"trainer.epochs": {"values": ["abc"]}})],
                       ["trainer.epochs", "integer"]),
        "unknown method": ([spec("hyper", good.replace("grid", "hyperband"))],
                           ["method", "grid, random, bayes"]),
        "missing file": (["no_such_sweep"], ["no sweep file", "digits_ff"]),
        "not a mapping": ([spec("list", "- a\n- b\n")], ["mapping"]),
        "nested parameters": ([spec("nested", yaml.safe_dump(
            {"method": "grid", "parameters": {"learner": {"parameters": {"lr": {"value": 1}}}},
             "command": COMMAND}))], ["flat config key"]),
        "command without arguments": ([spec("cmd", good.replace("${args_no_hyphens}", "x"))],
                                      ["args_no_hyphens"]),
        "bad extra override": ([spec("ok", good), "trainer.epochz=2"], ["trainer.epochz"]),
        "zero count": ([spec("ok2", good), "--local", "--count", "0"], ["--count", "positive"]),
        "unknown option": ([spec("ok3", good), "--locale"], ["unknown option", "--locale"]),
        "no file": (["--local"], ["needs a sweep FILE"]),
    }


def test_bad_sweeps_exit_2_with_a_message_before_any_run(tmp_path: Path) -> None:
    for case, (args, needles) in _bad_specs(tmp_path).items():
        runs = tmp_path / f"runs_{case.replace(' ', '_')}"
        result = cli_in_process("sweep", *args, "--local", f"paths.runs={runs}")
        assert result.returncode == 2, (case, result.stdout, result.stderr)
        assert result.stderr.startswith("bioplaus: error:"), case
        assert "Traceback" not in result.stderr, case
        for needle in needles:
            assert needle in result.stderr, (case, needle, result.stderr)
        assert not runs.exists(), case


def test_a_metric_missing_from_the_summary_stops_the_sweep(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "grid", {**QUICK, "trainer.epochs": {"value": 1}})
    spec = yaml.safe_load(path.read_text())
    spec["metric"]["name"] = "val_acc"
    path.write_text(yaml.safe_dump(spec))
    result = run_cli("sweep", str(path), "--local", f"paths.runs={tmp_path}/runs", "threads=1")
    assert result.returncode == 2
    assert "val_acc" in result.stderr and "best_val_accuracy" in result.stderr


def test_without_local_and_without_a_key_exits_2_pointing_to_local(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env["HOME"] = str(tmp_path)  # no ~/.netrc
    path = write_spec(tmp_path, "grid", {**QUICK})
    result = run_cli("sweep", str(path), env=env)
    assert result.returncode == 2
    assert "API key" in result.stderr and "--local" in result.stderr


def test_hosted_sweep_registers_the_spec_and_runs_an_agent(tmp_path: Path, monkeypatch) -> None:
    """Without --local: the spec goes to wandb.sweep with the extra overrides in its command, and
    `wandb agent --count N ENTITY/PROJECT/ID` runs it."""
    path = sweep_module.resolve("digits_ff")
    spec = sweep_module.load(path, ["device=cpu"])
    registered: dict = {}
    fake_wandb = types.SimpleNamespace(
        sweep=lambda spec, project, entity: registered.update(spec=spec, project=project, entity=entity)
        or "abc123")
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setattr(sweep_module, "has_wandb_key", lambda: True)
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep_module.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    full_id = sweep_module.run_wandb(path, spec, 5, ["device=cpu"], "proj", "me")
    assert full_id == "me/proj/abc123"
    assert registered["project"] == "proj" and registered["entity"] == "me"
    assert registered["spec"]["command"] == ["bioplaus", "run", "logger=wandb", "device=cpu",
                                             "${args_no_hyphens}"]
    assert registered["spec"]["parameters"] == spec["parameters"]
    assert calls == [[sys.executable, "-m", "wandb", "agent", "--count", "5", "me/proj/abc123"]]


def test_packaged_sweeps_are_valid_specs() -> None:
    names = sweep_module.available()
    assert {"digits_ff", "fmnist_tpsgd_mse"} <= set(names)
    for name in names:
        spec = sweep_module.load(sweep_module.resolve(name), [])
        assert spec["metric"]["name"] == "best_val_accuracy"


def test_format_value_writes_hydra_syntax() -> None:
    assert sweep_module.overrides_of({"a": {"value": [1, 2]}, "b": {"value": None},
                                      "c": {"value": True}, "d": {"value": 0.5}}) == \
        ["a=[1,2]", "b=null", "c=true", "d=0.5"]
    with pytest.raises(UsageError, match="no sweep file"):
        sweep_module.resolve("definitely_not_a_sweep")


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path: Path) -> None:
    """SIGKILL to the sweep and its run inside run 2 of 3; --resume keeps run 1, continues run 2
    from its checkpoint and runs run 3."""
    spec = write_spec(tmp_path, "grid", {**QUICK, "trainer.batch_size": {"value": 8},
                                         "trainer.epochs": {"value": 6},
                                         "learner.lr": {"values": [1e-3, 2e-3, 3e-3]}})
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "bioplaus", "sweep", str(spec), "--local",
                             f"paths.runs={runs}", "threads=1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    second = None
    while time.time() < deadline and proc.poll() is None:
        found = list(runs.glob("sweeps/*/*/001/metrics.jsonl"))
        if found and found[0].read_text().count("\n") >= 2:  # two epochs of run 2 written
            second = found[0].parent
            break
        time.sleep(0.05)
    assert second is not None and proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    sweep_dir = second.parent
    assert len(records_of(sweep_dir)) == 1 and not (second / "summary.json").exists()
    first_summary = (sweep_dir / "000" / "summary.json").read_text()

    result = run_cli("sweep", "--resume", str(sweep_dir))
    assert result.returncode == 0, result.stderr
    assert last_line(result.stdout) == str(sweep_dir)
    records = records_of(sweep_dir)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["parameters"]["learner.lr"] for r in records] == [1e-3, 2e-3, 3e-3]
    assert all(r["status"] == "completed" for r in records)
    assert (sweep_dir / "000" / "summary.json").read_text() == first_summary  # not run again
    epochs = [json.loads(line)["epoch"] for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]  # continued from its checkpoint, no epoch twice

    again = run_cli("sweep", "--resume", str(sweep_dir), "learner.lr=1")
    assert again.returncode == 2 and "takes no FILE or overrides" in again.stderr
    missing = run_cli("sweep", "--resume", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not a local sweep folder" in missing.stderr
