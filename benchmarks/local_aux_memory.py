"""Activation memory of one training step: backprop against local_aux (dgl, infopro, auglocal, man).

For each net (Fashion-MNIST-shaped input, batch ``--batch``), one training step of each learner
runs inside `bioplaus.functional.SavedActivationMeter`, which counts the bytes of the distinct
storages autograd holds for backward (parameters excluded) and reports their peak. Backprop holds
every block's activations until its one backward; local_aux runs backward module by module, so it
holds one module's (plus its auxiliary net's) at a time. On CUDA the peak of allocated memory
during the step is reported as well. Writes ``benchmarks/results/local_aux_memory.json`` and
``.md`` with the machine:

    python benchmarks/local_aux_memory.py            # seconds, any device
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

from bioplaus.bench import code_version, markdown_header, save_results
from bioplaus.circuits.cnn import CNN
from bioplaus.circuits.mlp import MLP
from bioplaus.core import Task
from bioplaus.functional import saved_activation_peak
from bioplaus.learners.backprop import Backprop
from bioplaus.learners.local_aux import LocalAux
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
TASK = Task((1, 28, 28), 10)
NETS = {
    "mlp 784-1000-1000": lambda: MLP(TASK, hidden=(1000, 1000)),
    "mlp 784-1000-1000-1000": lambda: MLP(TASK, hidden=(1000, 1000, 1000)),
    "mlp 784-2000×4": lambda: MLP(TASK, hidden=(2000, 2000, 2000, 2000)),
    "mlp 784-1000×8": lambda: MLP(TASK, hidden=(1000,) * 8),
    "cnn conv 32-64-128 → 256": lambda: CNN(TASK, channels=(32, 64, 128), hidden=(256,)),
}
LEARNERS = {
    "backprop": lambda c: Backprop(c, TASK),
    "local_aux dgl": lambda c: LocalAux(c, TASK, aux="dgl"),
    "local_aux infopro": lambda c: LocalAux(c, TASK, aux="infopro"),
    "local_aux auglocal": lambda c: LocalAux(c, TASK, aux="auglocal"),
    "local_aux man": lambda c: LocalAux(c, TASK, aux="man"),
}


def measure(make_net, make_learner, batch: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    learner = make_learner(make_net().to(device))
    x = torch.randn(batch, *TASK.input_shape, device=device)
    y = torch.randint(0, TASK.num_classes, (batch,), device=device)
    learner.train_step(x, y)  # optimizer state allocated outside the measured step
    row = {"modules": len(getattr(learner, "module_blocks", [None]))}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    row["saved_activation_bytes"] = saved_activation_peak(lambda: learner.train_step(x, y),
                                                         learner.parameters())
    if device.type == "cuda":
        torch.cuda.synchronize()
        row["cuda_step_peak_bytes"] = torch.cuda.max_memory_allocated() - base
    return row


def write_markdown(path: Path, payload: dict) -> None:
    lines = [
        *markdown_header(
            "Activation memory of a training step: backprop vs local_aux", payload,
            f"Batch {payload['batch']}, input 1×28×28, 10 classes. `saved for backward`: peak bytes of "
            "the distinct storages autograd holds during one step (parameters excluded), the same on "
            "any device; `vs backprop`: the ratio to backprop on the same net. local_aux runs one "
            f"module per block (the head alone last). Commit {payload['commit']}. Command: "
            f"`{payload['command']}`."),
        "| net | learner | modules | saved for backward (MiB) | vs backprop |"
        + (" CUDA step peak (MiB) |" if payload["cuda"] else ""),
        "|---|---|---|---|---|" + ("---|" if payload["cuda"] else ""),
    ]
    for row in payload["rows"]:
        line = (f"| {row['net']} | {row['learner']} | {row['modules'] or '—'} "
                f"| {row['saved_activation_bytes'] / 2**20:.2f} | {row['vs_backprop']:.2f} |")
        if payload["cuda"]:
            line += f" {row['cuda_step_peak_bytes'] / 2**20:.1f} |"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for net, make_net in NETS.items():
        baseline = None
        for learner, make_learner in LEARNERS.items():
            row = {"net": net, "learner": learner, **measure(make_net, make_learner, args.batch, device)}
            if learner == "backprop":
                row["modules"] = None
                baseline = row["saved_activation_bytes"]
            row["vs_backprop"] = row["saved_activation_bytes"] / baseline
            rows.append(row)
            print(json.dumps(row))
    payload = {"machine": machine_description(device), "torch": torch.__version__, "batch": args.batch,
               "cuda": device.type == "cuda", "updated": dt.date.today().isoformat(),
               "commit": code_version(HERE),
               "command": " ".join(["python benchmarks/local_aux_memory.py",
                                    *(argv if argv is not None else sys.argv[1:])]),
               "rows": rows}
    print(save_results(HERE / "results" / "local_aux_memory.json", payload, write_markdown))


if __name__ == "__main__":
    main()
