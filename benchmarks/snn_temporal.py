"""`learner=dcls` on the synthetic `temporal` task, with learned delays and with delays fixed at
zero (plain synapses), on CPU. The task needs delays: classes differ only in the relative timing of
spikes across channels (see `bioplaus.spiking_data`). Writes ``benchmarks/results/snn_temporal.json``
and ``.md`` and copies the delay run's ``spike_raster.png`` and ``delay_histogram.png`` beside them
(``snn_temporal_raster.png``, ``snn_temporal_delays.png``):

    python benchmarks/snn_temporal.py           # a few minutes on one CPU thread
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

import bioplaus
from bioplaus.bench import markdown_header, save_results
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent


def write_markdown(path: Path, payload: dict) -> None:
    lines = [
        *markdown_header(
            "dcls on the temporal task: learned delays vs none", payload,
            f"Commit {payload['commit']}; command `{payload['command']}`; each row is `bioplaus run "
            "learner=dcls device=cpu threads=1` with the override shown (the learner's defaults: 1 × 64 "
            "LIF, τ 1.005, T_d 25, 30 epochs of batch 64; data: 4 classes, 8 channels, T 40, 2000 train "
            "(10 % carved for validation) / 1000 test, seed 0). Chance is 25 %. Pictures of the delay "
            "run: `snn_temporal_raster.png`, `snn_temporal_delays.png`."),
        "| override | test accuracy | train seconds | load avg (1 min, at the end) |",
        "|---|---|---|---|",
    ]
    for row in payload["rows"]:
        lines.append(f"| `{row['override']}` | {100 * row['test_accuracy']:.2f} % "
                     f"| {row['train_seconds']:.1f} | {row['load_avg']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for override in ("circuit.delays=true", "circuit.delays=false"):
            cfg = bioplaus.compose(["learner=dcls", override, "device=cpu", "threads=1",
                                    f"paths.runs={runs}", "trainer.progress=none"])
            summary = bioplaus.train(cfg, quiet=True)
            rows.append({"override": override, "test_accuracy": summary["test_accuracy"],
                         "train_seconds": summary["train_seconds"], "load_avg": os.getloadavg()[0],
                         "summary": summary})
            print(override, summary["test_accuracy"], summary["train_seconds"], flush=True)
            if override.endswith("true"):
                run_dir = Path(summary["run_dir"])
                shutil.copy(run_dir / "spike_raster.png", HERE / "results" / "snn_temporal_raster.png")
                shutil.copy(run_dir / "delay_histogram.png", HERE / "results" / "snn_temporal_delays.png")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    payload = {"machine": machine_description(torch.device("cpu")), "torch": torch.__version__,
               "commit": commit, "command": "python benchmarks/snn_temporal.py",
               "updated": dt.date.today().isoformat(), "rows": rows}
    print(save_results(HERE / "results" / "snn_temporal.json", payload, write_markdown))


if __name__ == "__main__":
    main()
