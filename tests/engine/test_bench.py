"""`bioplaus bench`: preset rows with seeds into JSON and Markdown, rows kept across calls, bad input."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import last_line, run_cli

ON_DIGITS = ["data=digits", "trainer.epochs=2", "circuit.hidden=[16]", "threads=1"]


def test_bench_writes_rows_keeps_them_and_copies_baselines(tmp_path: Path) -> None:
    out, runs = tmp_path / "results", tmp_path / "runs"
    common = ["--name", "t", "--out", str(out), "--runs", str(runs), *ON_DIGITS]
    first = run_cli("bench", "fmnist_bp_mlp", "--seeds", "0", "1", *common)
    assert first.returncode == 0, first.stderr
    assert last_line(first.stdout) == str(out / "t.md")
    second = run_cli("bench", "fmnist_mf_mlp", *common)
    assert second.returncode == 0, second.stderr

    payload = json.loads((out / "t.json").read_text())
    rows = {r["experiment"]: r for r in payload["rows"]}
    # presets run on other data and another net: rows of their own, named by the change, no paper figure
    bp_name, mf_name = (f"{e} [data=digits circuit.hidden=[16]]" for e in ("fmnist_bp_mlp", "fmnist_mf_mlp"))
    assert set(rows) == {bp_name, mf_name}  # the first call's row was kept
    bp = rows[bp_name]
    assert bp["paper"] == "" == rows[mf_name]["paper"]
    assert bp["seeds"] == [0, 1] and len(bp["run_dirs"]) == 2
    for run_dir, accuracy in zip(bp["run_dirs"], bp["test_accuracies"], strict=True):
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        assert summary["test_accuracy"] == accuracy and summary["data"] == "digits"
    assert abs(bp["test_accuracy_mean"] - sum(bp["test_accuracies"]) / 2) < 1e-12
    assert bp["circuit"] == "mlp 64-16" and bp["epochs"] == 2 and bp["overrides"] == ON_DIGITS
    assert bp["machine"] and bp["torch"] and bp["samples_per_second_mean"] > 0
    # provenance: the code, the exact command, the load around each run, the kept small files
    assert re.fullmatch(r"[0-9a-f]{7,40}", bp["commit"]) and bp["commit"] == rows[mf_name]["commit"]
    assert bp["command"] == shlex.join(["bioplaus", "bench", "fmnist_bp_mlp", "--seeds", "0", "1", *common])
    assert bp["run_commands"][1] == shlex.join(["bioplaus", "run", "experiment=fmnist_bp_mlp", "seed=1",
                                                *ON_DIGITS])
    assert len(bp["load_before"]) == len(bp["load_after"]) == 2 and bp["captured"] == [False, False]
    folder = "runs/t/fmnist_bp_mlp_data=digits_circuit.hidden=_16"
    assert bp["kept_runs"] == [f"{folder}/seed0", f"{folder}/seed1"]
    for kept, run_dir in zip(bp["kept_runs"], bp["run_dirs"], strict=True):
        assert sorted(p.name for p in (out / kept).iterdir()) == ["config.yaml", "metrics.jsonl",
                                                                   "summary.json"]
        assert (out / kept / "summary.json").read_text() == (Path(run_dir) / "summary.json").read_text()
    table = (out / "t.md").read_text()
    assert f"| {bp_name} | backprop | mlp 64-16 |" in table and "±" in table
    assert f"| {mf_name} | mono_forward |" in table
    assert f"- {bp_name}: `{bp['command']}` (commit {bp['commit']}" in table

    copy = run_cli("bench", "--no-run", "--name", "u", "--out", str(out), "--baseline", f"t:{bp_name}")
    assert copy.returncode == 0, copy.stderr
    copied = json.loads((out / "u.json").read_text())["rows"]
    assert [r["experiment"] for r in copied] == [bp_name] and copied[0]["from"] == "t.json"
    assert f"{bp_name} (from t.json)" in (out / "u.md").read_text()


def test_bad_bench_input_exits_2_before_any_run(tmp_path: Path) -> None:
    cases = {
        "unknown experiment": (["no_such_preset"], ["no_such_preset", "fmnist_bp_mlp"]),
        "misspelt key": (["fmnist_bp_mlp", "trainer.epochz=2"], ["trainer.epochz"]),
        "unknown option": (["fmnist_bp_mlp", "--seed", "1"], ["unknown option", "--seed"]),
        "bad seeds": (["fmnist_bp_mlp", "--seeds", "x"], ["--seeds"]),
        "missing baseline": (["--no-run", "--baseline", "nope:fmnist_bp_mlp"], ["no results file"]),
        "baseline without colon": (["--no-run", "--baseline", "nope"], ["STEM:EXPERIMENT"]),
        "nothing to redraw": (["--no-run", "--name", "nosuch"], ["no results file", "nosuch.json"]),
        "out is a file": (["fmnist_bp_mlp", "--out", str(tmp_path / "a-file" / "out")], ["--out", "a-file"]),
    }
    (tmp_path / "a-file").write_text("not a folder")
    for case, (args, needles) in cases.items():
        runs, out = tmp_path / "runs", tmp_path / "out"
        where = [] if "--out" in args else ["--out", str(out)]
        result = run_cli("bench", *args, *where, "--runs", str(runs), "data=digits")
        assert result.returncode == 2, (case, result.stderr)
        assert result.stderr.startswith("bioplaus: error:") and "Traceback" not in result.stderr, case
        for needle in needles:
            assert needle in result.stderr, (case, needle, result.stderr)
        assert not runs.exists() and not out.exists(), case


@pytest.mark.slow
def test_per_run_peak_memory_is_not_the_high_water_mark_of_an_earlier_run(tmp_path: Path) -> None:
    """A small net timed after a large one reports its own peak: each run has its own process."""
    out, runs = tmp_path / "results", tmp_path / "runs"
    common = ["--name", "m", "--out", str(out), "--runs", str(runs), "data=digits", "trainer.epochs=1",
              "threads=1"]
    big = run_cli("bench", "fmnist_bp_mlp", *common, "circuit.hidden=[4000,4000]")
    assert big.returncode == 0, big.stderr
    small = run_cli("bench", "fmnist_mf_mlp", *common, "circuit.hidden=[8]")
    assert small.returncode == 0, small.stderr
    rows = {r["experiment"].split(" ")[0]: r for r in json.loads((out / "m.json").read_text())["rows"]}
    big_peak, small_peak = (rows[e]["peak_memory_bytes_max"] for e in ("fmnist_bp_mlp", "fmnist_mf_mlp"))
    # 784·4000 + 4000² float32 weights with Adam's two moments and gradients: > 250 MiB more
    assert big_peak - small_peak > 250 * 2**20, (big_peak, small_peak)


def test_a_second_bench_refuses_to_time_while_one_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "held.lock"
    env = {**os.environ, "BIOPLAUS_BENCH_LOCK": str(lock)}
    holder = subprocess.Popen(  # holds the lock as a timing bench does, naming itself in the file
        [sys.executable, "-c", "import sys, time; from bioplaus.bench import timing_lock\n"
         "with timing_lock('bioplaus bench fmnist_ff_mlp'):\n print('held', flush=True); time.sleep(60)"],
        env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out, runs = tmp_path / "out", tmp_path / "runs"
        second = run_cli("bench", "fmnist_bp_mlp", "--out", str(out), "--runs", str(runs), *ON_DIGITS,
                         env=env)
        assert second.returncode == 2, second.stderr
        assert "another benchmark is timing runs" in second.stderr and "Traceback" not in second.stderr
        assert f"pid {holder.pid}" in second.stderr and "bioplaus bench fmnist_ff_mlp" in second.stderr
        assert str(lock) in second.stderr  # names the lock it found held
        assert not runs.exists() and not out.exists()  # nothing timed, nothing written
    finally:
        holder.kill()
        holder.wait()
    # the OS released the lock with the killed holder: the lock is free again
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_markdown_lists_each_rows_provenance_and_keeps_notes(tmp_path: Path) -> None:
    from bioplaus.bench import write_markdown

    row = {"experiment": "e", "learner": "backprop", "circuit": "mlp 64-16", "seeds": [0, 1],
           "test_accuracy_mean": 0.5, "test_accuracy_std": 0.1, "epochs": 1, "batch_size": 8,
           "train_seconds_mean": 2.0, "samples_per_second_mean": 4.0, "peak_memory_bytes_max": 2**20,
           "load_average": 1.5, "load_before": [1.0, 1.2], "load_after": [1.5, 1.1], "device": "cuda:0",
           "captured": [True, False], "machine": "m", "torch": "t", "paper": "", "other_readouts": {},
           "commit": "abc1234", "command": "bioplaus bench e",
           "kept_runs": ["runs/x/e/seed0", "runs/x/e/seed1"]}
    old = {**row, "experiment": "old", "device": "cpu"}
    for key in ("commit", "command", "kept_runs", "captured", "load_before", "load_after"):
        del old[key]
    write_markdown(tmp_path / "x.md", {"title": "T", "machine": "m", "updated": "d", "rows": [row, old],
                                       "notes": ["A note kept across calls."]})
    text = (tmp_path / "x.md").read_text()
    assert "| e | backprop | mlp 64-16 | 50.00 ± 10.00 |" in text
    assert "| cuda, eager | m, torch t | abc1234 |" in text  # one of its runs was not captured
    assert ("- e: `bioplaus bench e` (commit abc1234; load before→after each run 1.0→1.5, 1.2→1.1); "
            "runs `runs/x/e/seed0`, `runs/x/e/seed1`") in text
    assert "- old: no command recorded" in text and "| cpu | m, torch t | — |" in text
    assert text.rstrip().endswith("A note kept across calls.")
