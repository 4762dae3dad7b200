"""Training throughput of one CPU process against two (torchrun, gloo) at the same global batch.

Runs one configuration alternately as ``python -m bioplaus run ...`` and as
``torchrun --nproc_per_node=2 -m bioplaus run ...`` (one torch thread per process), ``--repeats``
times each, and records every run's training samples per second (``samples_per_second`` of
``summary.json``: training time only, no start-up, no evaluation) with the 1-minute load average
read just before it started. Writes ``benchmarks/results/ddp_cpu.json`` and ``.md``:

    python benchmarks/ddp_cpu.py --repeats 3

On a machine shared with other work the load column says how far the figures can be trusted.
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
from pathlib import Path

import torch

from bioplaus.bench import code_version
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
COMMON = ["learner=backprop", "threads=1", "plots=false", "trainer.progress=none"]
#: configuration name -> overrides: a small net where a message's latency dominates a step, and a
#: Fashion-MNIST net where the step's compute does
CONFIGS = {
    "digits 64-256-256-10, batch 64": ["circuit.hidden=[256,256]", "data=digits", "trainer.epochs=3",
                                       "trainer.batch_size=64"],
    "fashion_mnist 784-1000-1000-10, batch 512": ["circuit.hidden=[1000,1000]", "data=fashion_mnist",
                                                  "trainer.epochs=1", "trainer.batch_size=512"],
}


def command(processes: int, run_dir: Path, config: str) -> list[str]:
    launcher = [sys.executable, "-m", "bioplaus"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", "-m", "bioplaus"]
    return [*launcher, "run", *COMMON, *CONFIGS[config], f"hydra.run.dir={run_dir}"]


def shown(cmd: list[str]) -> str:
    """The command as a user types it (``torchrun`` / ``bioplaus``), run folder left out."""
    text = " ".join(c for c in cmd if not c.startswith("hydra.run.dir="))
    text = text.replace(f"{sys.executable} -m torch.distributed.run", "torchrun")
    return text.replace(f"{sys.executable} -m bioplaus", "bioplaus")


def measure(processes: int, root: Path, index: int, commit: str, config: str) -> dict:
    run_dir = root / f"c{list(CONFIGS).index(config)}_p{processes}_{index}"
    cmd = command(processes, run_dir, config)
    load = os.getloadavg()[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"{shown(cmd)} failed:\n{result.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"config": config, "processes": processes, "samples_per_second": summary["samples_per_second"],
            "train_seconds": summary["train_seconds"], "test_accuracy": summary["test_accuracy"],
            "load_1min": round(load, 2), "command": shown(cmd), "commit": commit}


def write_markdown(path: Path, payload: dict) -> None:
    rows = payload["rows"]
    lines = [
        "# Data-parallel training on CPU: 1 process vs 2 (torchrun, gloo)",
        "",
        f"Machine: {payload['machine']}, torch {payload['torch']}. Commit {payload['commit']}, "
        f"{payload['date']}. Command: `python benchmarks/ddp_cpu.py --repeats {payload['repeats']}`.",
        "",
        "Each row is one run of the command shown; 1 and 2 processes alternate at the same global "
        "batch (each of 2 processes takes half of it). Samples/s counts training time only; load is "
        f"the 1-minute load average before the run, on {payload['cores']} cores (above 1, other work "
        "shared the cores and a second process cannot add a core's worth of work).",
        "",
        "| configuration | processes | samples/s | train s | test accuracy | load | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['config']} | {r['processes']} | {r['samples_per_second']} | {r['train_seconds']} "
                     f"| {r['test_accuracy']:.4f} | {r['load_1min']} | `{r['command']}` |")
    lines += ["", "| configuration | median samples/s, 1 process | 2 processes | 2 over 1 | median load |",
              "|---|---|---|---|---|"]
    for config, ratio in payload["median_ratio_2_over_1"].items():
        mine = [r for r in rows if r["config"] == config]
        one, two = (statistics.median(r["samples_per_second"] for r in mine if r["processes"] == p)
                    for p in (1, 2))
        lines.append(f"| {config} | {one:.1f} | {two:.1f} | {ratio:.2f}× "
                     f"| {statistics.median(r['load_1min'] for r in mine):.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    commit = code_version(REPO)  # the code measured (read before the runs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in CONFIGS:
            for i in range(args.repeats):
                for processes in (1, 2):
                    rows.append(measure(processes, Path(tmp), i, commit, config))
                    print(json.dumps(rows[-1]), flush=True)
    ratio = {}
    for config in CONFIGS:
        one, two = (statistics.median(r["samples_per_second"] for r in rows
                                      if r["config"] == config and r["processes"] == p) for p in (1, 2))
        ratio[config] = two / one
    payload = {"machine": machine_description(torch.device("cpu")), "torch": torch.__version__,
               "cores": os.cpu_count(), "commit": commit, "repeats": args.repeats,
               "date": dt.date.today().isoformat(), "median_ratio_2_over_1": ratio,
               "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ddp_cpu.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(args.out / "ddp_cpu.md", payload)


if __name__ == "__main__":
    main()
