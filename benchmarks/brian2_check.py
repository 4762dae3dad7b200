"""Export trained `dcls` runs on the `temporal` task to Brian2 and check them spike for spike.

Two runs: the learner's defaults (1 × 64 LIF, T_d 25, 30 epochs, 1000 test examples) and the small
configuration of the slow test in ``tests/engine/test_export_brian2.py`` (1 × 32 LIF, T_d 11,
6 epochs). Each is exported with ``bioplaus export brian2`` and checked on 100 test examples and on
the whole test set. Writes ``benchmarks/results/brian2_check.json`` and ``.md``:

    python benchmarks/brian2_check.py                      # trains both runs (minutes on one CPU thread)
    python benchmarks/brian2_check.py --default RUN_DIR    # reuse a finished default run
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import bioplaus
from bioplaus.bench import markdown_header, save_results
from bioplaus.export_brian2 import export_run
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
COMMON = ["learner=dcls", "device=cpu", "threads=1", "trainer.progress=none"]
SMALL = ["trainer.epochs=6", "trainer.batch_size=32", "circuit.hidden=[32]", "circuit.max_delay=11",
         "data.channels=6", "data.steps=24", "data.gap=2", "data.train=320", "data.test=200", "seed=0"]


def write_markdown(path: Path, payload: dict) -> None:
    lines = [
        *markdown_header(
            "Brian2 export of dcls runs on temporal: spike-for-spike check", payload,
            f"Commit {payload['commit']}; command `{payload['command']}`. Each row: a `bioplaus run` "
            "(`learner=dcls device=cpu threads=1` plus the overrides shown), then `bioplaus export "
            "brian2 RUN_DIR --check N` (PyTorch in float64 with integer delays vs the exported Brian2 "
            "file, numpy code-generation target). Spike slots are example × hidden neuron × step. "
            "Brian2 seconds: the simulation of the N examples side by side in one Brian2 run."),
        "| run | test accuracy | N | spike slots | spikes (PyTorch / Brian2) | identical spikes "
        "| identical predictions | largest membrane difference | Brian2 seconds | load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        r = row["report"]
        lines.append(
            f"| {row['run']} | {100 * row['test_accuracy']:.2f} % | {r['examples']} "
            f"| {r['spikes_compared']} | {r['torch_spikes']} / {r['brian2_spikes']} "
            f"| {100 * r['identical_spikes']:.4f} % | {100 * r['identical_predictions']:.2f} % "
            f"| {r['max_membrane_difference']:.3g} | {r['seconds']:.1f} | {row['load_avg']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--default", default=None, help="a finished run of the default config")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        configs = [("defaults", [], args.default), ("small (`" + " ".join(SMALL) + "`)", SMALL, None)]
        for label, overrides, run_dir in configs:
            if run_dir is None:
                cfg = bioplaus.compose([*COMMON, *overrides, f"paths.runs={runs}"])
                run_dir = bioplaus.train(cfg, quiet=True)["run_dir"]
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
            for n in (100, 10_000):
                start = time.perf_counter()
                _, report = export_run(run_dir, Path(runs) / f"net_{len(rows)}.py", n, stream=io.StringIO())
                assert report is not None
                rows.append({"run": label, "test_accuracy": summary["test_accuracy"], "report": report,
                             "wall_seconds": time.perf_counter() - start, "load_avg": os.getloadavg()[0]})
                print(label, n, report, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    command = "python benchmarks/brian2_check.py"
    if args.default:
        command += " --default RUN_DIR, RUN_DIR made by: bioplaus run learner=dcls device=cpu threads=1"
    payload = {"machine": machine_description(torch.device("cpu")), "torch": torch.__version__,
               "brian2": __import__("brian2").__version__, "commit": commit, "command": command,
               "updated": dt.date.today().isoformat(), "rows": rows}
    print(save_results(HERE / "results" / "brian2_check.json", payload, write_markdown))


if __name__ == "__main__":
    main()
