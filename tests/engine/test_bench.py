"""`bioplaus bench`: preset rows with seeds into JSON and Markdown, rows kept across calls, bad input."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert set(rows) == {"fmnist_bp_mlp", "fmnist_mf_mlp"}  # the first call's row was kept
    bp = rows["fmnist_bp_mlp"]
    assert bp["seeds"] == [0, 1] and len(bp["run_dirs"]) == 2
    for run_dir, accuracy in zip(bp["run_dirs"], bp["test_accuracies"], strict=True):
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        assert summary["test_accuracy"] == accuracy and summary["data"] == "digits"
    assert abs(bp["test_accuracy_mean"] - sum(bp["test_accuracies"]) / 2) < 1e-12
    assert bp["circuit"] == "mlp 64-16" and bp["epochs"] == 2 and bp["overrides"] == ON_DIGITS
    assert bp["machine"] and bp["torch"] and bp["samples_per_second_mean"] > 0
    assert bp["commit"] and bp["command"].startswith("bioplaus bench fmnist_bp_mlp --seeds 0 1 --name t")
    table = (out / "t.md").read_text()
    assert "| fmnist_bp_mlp | backprop | mlp 64-16 |" in table and "±" in table
    assert "| fmnist_mf_mlp | mono_forward |" in table
    assert f"- fmnist_bp_mlp: commit {bp['commit']}, `bioplaus bench fmnist_bp_mlp" in table

    copy = run_cli("bench", "--no-run", "--name", "u", "--out", str(out), "--baseline", "t:fmnist_bp_mlp")
    assert copy.returncode == 0, copy.stderr
    copied = json.loads((out / "u.json").read_text())["rows"]
    assert [r["experiment"] for r in copied] == ["fmnist_bp_mlp"] and copied[0]["from"] == "t.json"
    assert "fmnist_bp_mlp (from t.json)" in (out / "u.md").read_text()


def test_bad_bench_input_exits_2_before_any_run(tmp_path: Path) -> None:
    cases = {
        "unknown experiment": (["no_such_preset"], ["no_such_preset", "fmnist_bp_mlp"]),
        "misspelt key": (["fmnist_bp_mlp", "trainer.epochz=2"], ["trainer.epochz"]),
        "unknown option": (["fmnist_bp_mlp", "--seed", "1"], ["unknown option", "--seed"]),
        "bad seeds": (["fmnist_bp_mlp", "--seeds", "x"], ["--seeds"]),
        "missing baseline": (["--no-run", "--baseline", "nope:fmnist_bp_mlp"], ["no results file"]),
        "baseline without colon": (["--no-run", "--baseline", "nope"], ["STEM:EXPERIMENT"]),
    }
    for case, (args, needles) in cases.items():
        runs, out = tmp_path / "runs", tmp_path / "out"
        result = run_cli("bench", *args, "--out", str(out), "--runs", str(runs), "data=digits")
        assert result.returncode == 2, (case, result.stderr)
        assert result.stderr.startswith("bioplaus: error:") and "Traceback" not in result.stderr, case
        for needle in needles:
            assert needle in result.stderr, (case, needle, result.stderr)
        assert not runs.exists() and not out.exists(), case
