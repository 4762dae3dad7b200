"""Activation memory of one `dcls` training step: SLTT against full backpropagation through time.

For SHD-shaped input (140 channels, 20 classes, batch ``--batch``) and sequence lengths T, one
training step of `learner=dcls` runs inside `bioplaus.functional.SavedActivationMeter`, which
counts the peak bytes of the distinct storages autograd holds for backward (parameters excluded).
Full BPTT keeps every step's activations until its one backward, so its peak grows with T; SLTT
runs one step at a time with a backward per step, so its peak should not. Both nets of the paper's
SHD shape (2 × 256 LIF), with and without delay synapses (T_d = 25). Writes
``benchmarks/results/snn_memory.json`` and ``.md``:

    python benchmarks/snn_memory.py            # about a minute on CPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
from pathlib import Path

import torch

from bioplaus.bench import markdown_header, save_results
from bioplaus.circuits.snn import SNN
from bioplaus.core import Task
from bioplaus.functional import saved_activation_peak
from bioplaus.learners.dcls import Dcls
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent


def measure(steps: int, delays: bool, bptt: str, batch: int, device: torch.device) -> int:
    torch.manual_seed(0)
    task = Task((steps, 140), 20)
    net = SNN(task, hidden=[256, 256], delays=delays, max_delay=25, dropout=0.4).to(device)
    learner = Dcls(net, task, bptt=bptt, epochs=10)
    x = (torch.rand(batch, steps, 140, device=device) < 0.05).float()
    y = torch.randint(0, 20, (batch,), device=device)
    learner.train_step(x, y)  # optimizer state allocated outside the measured step
    return saved_activation_peak(lambda: learner.train_step(x, y), learner.parameters())


def write_markdown(path: Path, payload: dict) -> None:
    lines = [
        *markdown_header(
            "Activation memory of a dcls training step: SLTT vs full BPTT", payload,
            f"Commit {payload['commit']}; command `{payload['command']}`. Input 140 channels × T steps, "
            f"batch {payload['batch']}, net 2 × 256 LIF → 20, T_d 25 when delays are on. `saved for "
            "backward`: peak bytes of the distinct storages autograd holds during one step (parameters "
            "excluded). `T=200 / T=50`: the ratio of the two peaks."),
        "| synapses | bptt | T=50 (MiB) | T=100 (MiB) | T=200 (MiB) | T=200 / T=50 |",
        "|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        mib = {t: row["saved_activation_bytes"][str(t)] / 2**20 for t in (50, 100, 200)}
        lines.append(f"| {row['synapses']} | {row['bptt']} | {mib[50]:.2f} | {mib[100]:.2f} | {mib[200]:.2f} "
                     f"| {row['ratio_200_50']:.3f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for delays in (False, True):
        for bptt in ("full", "sltt"):
            peaks = {str(t): measure(t, delays, bptt, args.batch, device) for t in (50, 100, 200)}
            row = {"synapses": "delay (DCLS)" if delays else "linear", "bptt": bptt,
                   "saved_activation_bytes": peaks, "ratio_200_50": peaks["200"] / peaks["50"]}
            rows.append(row)
            print(json.dumps(row))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    payload = {"machine": machine_description(device), "torch": torch.__version__, "batch": args.batch,
               "commit": commit, "command": "python benchmarks/snn_memory.py",
               "updated": dt.date.today().isoformat(), "rows": rows}
    print(save_results(HERE / "results" / "snn_memory.json", payload, write_markdown))


if __name__ == "__main__":
    main()
