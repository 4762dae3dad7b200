"""The engine's overhead: `bioplaus run` beside a bare PyTorch loop of the same math, alternated.

    python benchmarks/engine_overhead.py [--reps 3] [--epochs 2]

Both sides train the ``fmnist_bp_mlp`` preset (MLP 784-1000-1000-10, Adam lr 3.9e-4, batch 128,
cross-entropy) on the same Fashion-MNIST split for ``--epochs`` epochs with one thread, evaluate
the validation split after every epoch and the test split at the end. The engine side is the CLI
(``bioplaus run experiment=fmnist_bp_mlp trainer.epochs=E threads=1 plots=false``: it also writes
checkpoints, metrics and the summary); the bare side is a plain loop in a fresh Python process
that loads the data with the same loader (`bioplaus.data.from_raw`) and nothing else of bioplaus.
Each process is timed whole (start to exit) and its training loop alone (the engine's
``train_seconds``; the bare loop times the same span). Rows alternate engine / bare and carry the
commit, the command and the 1-minute load average; the Markdown shows the medians and their ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

BARE = r'''
import json, sys, time
import torch
import torch.nn.functional as F
from torch import nn
from bioplaus.data import from_raw
from bioplaus.registry import get_dataset
epochs = int(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
data = from_raw(get_dataset("fashion_mnist")(), name="fashion_mnist", seed=0)
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(),
                      nn.Linear(1000, 10))
opt = torch.optim.Adam(model.parameters(), lr=3.9e-4)
gen = torch.Generator().manual_seed(0)

def accuracy(x, y):
    with torch.no_grad():
        return sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum())
                   for i in range(0, x.shape[0], 1000)) / x.shape[0]

train_seconds, best = 0.0, -1.0
for epoch in range(epochs):
    start = time.perf_counter()
    order = torch.randperm(data.train_x.shape[0], generator=gen)
    for i in range(0, order.shape[0] - 127, 128):
        index = order[i:i + 128]
        loss = F.cross_entropy(model(data.train_x[index]), data.train_y[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_seconds += time.perf_counter() - start
    best = max(best, accuracy(data.val_x, data.val_y))
print(json.dumps({"train_seconds": train_seconds, "best_val": best,
                  "test_accuracy": accuracy(data.test_x, data.test_y)}))
'''


def run_engine(epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as runs:
        cmd = [str(REPO / ".venv" / "bin" / "bioplaus"), "run", "experiment=fmnist_bp_mlp",
               f"trainer.epochs={epochs}", "threads=1", "plots=false", f"paths.runs={runs}",
               "trainer.progress=none"]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=_env())
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"engine run failed:\n{out.stderr[-3000:]}")
        summary = json.loads(next(Path(runs).rglob("summary.json")).read_text())
    return {"process_s": wall, "train_s": summary["train_seconds"],
            "test_accuracy": summary["test_accuracy"]}


def run_bare(epochs: int) -> dict:
    start = time.perf_counter()
    out = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", BARE, str(epochs)],
                         capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"bare loop failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"process_s": wall, "train_s": row["train_seconds"], "test_accuracy": row["test_accuracy"]}


#: ``--malloc-default``: the engine leaves glibc's allocator as the bare loop has it (`bioplaus.allocator`)
MALLOC_DEFAULT = {"BIOPLAUS_MALLOC": "default"}
EXTRA_ENV: dict[str, str] = {}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **EXTRA_ENV}


def main() -> None:
    from ff_cost import machine  # the sibling script

    from bioplaus.bench import code_version

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--malloc-default", action="store_true",
                        help="BIOPLAUS_MALLOC=default: the engine leaves the C allocator as it is")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.malloc_default:
        EXTRA_ENV.update(MALLOC_DEFAULT)
    name = "engine_overhead_malloc_default" if args.malloc_default else "engine_overhead"
    args.out = args.out or HERE / "results" / f"{name}.json"
    command = "python benchmarks/engine_overhead.py " + " ".join(sys.argv[1:])
    commit = code_version(REPO)
    rows = []
    for rep in range(args.reps):
        order = ("engine", "bare") if rep % 2 == 0 else ("bare", "engine")
        for side in order:
            load = os.getloadavg()[0]
            row = run_engine(args.epochs) if side == "engine" else run_bare(args.epochs)
            row.update(side=side, rep=rep, load_1min=round(load, 2), commit=commit, command=command,
                       epochs=args.epochs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    payload = {"benchmark": "engine_overhead", "env": EXTRA_ENV, "machine": machine(), "threads": 1,
               "commit": commit,
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
               "rows": rows}
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(payload))
    print(args.out.with_suffix(".md"))


def render(payload: dict) -> str:
    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in payload["rows"] if r["side"] == side)

    def pair_ratios(key: str) -> list[float]:  # engine / bare of each repetition (run side by side)
        by_rep: dict[int, dict[str, float]] = {}
        for r in payload["rows"]:
            by_rep.setdefault(r["rep"], {})[r["side"]] = r[key]
        return [p["engine"] / p["bare"] for p in by_rep.values() if len(p) == 2]

    loads = ", ".join(f"{r['load_1min']:.1f}" for r in payload["rows"])
    lines = [
        "# Engine overhead: `bioplaus run` beside a bare PyTorch loop", "",
        f"Machine: {payload['machine']}, one torch thread, commit {payload['commit']}, {payload['date']}. "
        f"Command: `{payload['command']}`. Environment: {payload.get('env') or 'as is'}. "
        "fmnist_bp_mlp (784-1000-1000-10, Adam, batch 128), "
        f"{payload['rows'][0]['epochs']} epochs, runs alternated; 1-minute load at each start: {loads} "
        "(the machine was shared: compare the ratios of neighbouring runs).", "",
        "| | engine (median s) | bare loop (median s) | engine / bare (median of paired ratios) |",
        "|---|---|---|---|"]
    for key, label in (("train_s", "training"), ("process_s", "whole process")):
        lines.append(f"| {label} | {med('engine', key):.2f} | {med('bare', key):.2f} | "
                     f"{statistics.median(pair_ratios(key)):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
