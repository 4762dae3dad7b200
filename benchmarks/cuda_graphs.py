"""Eager against CUDA-graph-captured training steps: seconds per epoch of each experiment preset.

Runs each preset (``configs/experiment/``) for ``--epochs`` epochs twice on the GPU, once with
``runtime.cuda_graphs=off`` and once with ``on`` (capture failure is then an error), and compares
the training time of the last epoch, which holds no warm-up and no capture. Test accuracy after
those few epochs is shown as a check that both runs learn alike, not as a result. Writes
``benchmarks/results/cuda_graphs.json`` and ``.md`` with the machine it ran on:

    python benchmarks/cuda_graphs.py fmnist_bp_mlp fmnist_noprop_dt --override data.root=DIR

Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import torch

import bioplaus
from bioplaus.bench import KEPT_FILES, code_version, markdown_header, save_results, timing_lock
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
DEFAULT_EXPERIMENTS = ["fmnist_bp_mlp", "fmnist_mf_mlp", "fmnist_ff_mlp", "fmnist_ccl_mlp",
                       "fmnist_tpsgd_mlp", "fmnist_drtp_mlp", "fmnist_g2g_mf", "fmnist_noprop_dt"]


def last_epoch_seconds(run_dir: str) -> float:
    """Training seconds of the last epoch (``train_seconds`` in metrics.jsonl is cumulative)."""
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "train_seconds" in r]
    previous = epochs[-2]["train_seconds"] if len(epochs) > 1 else 0.0
    return epochs[-1]["train_seconds"] - previous


def measure(name: str, mode: str, epochs: int, overrides: list[str], runs: Path) -> dict:
    cfg = bioplaus.compose([f"experiment={name}", "device=cuda", f"runtime.cuda_graphs={mode}",
                            f"trainer.epochs={epochs}", "trainer.select=last", f"paths.runs={runs}",
                            "trainer.progress=none", *overrides])
    load_before = os.getloadavg()[0]
    summary = bioplaus.train(cfg, quiet=True)
    if summary["captured"] != (mode == "on"):
        raise SystemExit(f"{name}: runtime.cuda_graphs={mode} but the run reports "
                         f"captured={summary['captured']}")
    kept = HERE / "results" / "runs" / "cuda_graphs" / name / mode
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for file in KEPT_FILES:
        shutil.copy2(Path(summary["run_dir"]) / file, kept / file)
    return {"epoch_seconds": last_epoch_seconds(summary["run_dir"]),
            "test_accuracy": summary["test_accuracy"], "captured": summary["captured"],
            "peak_memory_bytes": summary["peak_memory_bytes"],
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "kept_run": kept.relative_to(HERE / "results").as_posix(),
            "batches_per_epoch": summary["train_examples"] // int(cfg.trainer.batch_size)}


def write_markdown(path: Path, payload: dict) -> None:
    lines = [
        *markdown_header(
            "Eager vs CUDA-graph training steps", payload,
            f"Each preset ran {payload['epochs']} epochs per mode; the time is the last epoch's training "
            "time (no evaluation, no warm-up, no capture). Test accuracy after those epochs only checks "
            "that both modes learn alike. `graphed` runs used `runtime.cuda_graphs=on` and report "
            "`captured: true` in their summary.json (kept with metrics.jsonl under `runs/cuda_graphs/`); "
            "each row's commit and command follow the table."),
        "| experiment | batches/epoch | eager s/epoch | graphed s/epoch | speed-up | eager ms/step "
        "| graphed ms/step | test acc. eager | test acc. graphed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        eager, graphed, n = row["off"]["epoch_seconds"], row["on"]["epoch_seconds"], row["batches_per_epoch"]
        lines.append(
            f"| {row['experiment']} | {n} | {eager:.2f} | {graphed:.2f} | {eager / graphed:.1f}× "
            f"| {1000 * eager / n:.2f} | {1000 * graphed / n:.2f} "
            f"| {100 * row['off']['test_accuracy']:.2f} | {100 * row['on']['test_accuracy']:.2f} |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"- {row['experiment']}: `{row.get('command', '?')}` (commit {row.get('commit', '?')}; "
              f"load {row['off'].get('load_before', '?')}→{row['on'].get('load_after', '?')})"
              for row in payload["rows"]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", default=DEFAULT_EXPERIMENTS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench")
    parser.add_argument("--override", action="append", default=[], help="extra key=value for every run")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/cuda_graphs.py needs a CUDA device")

    out_json = HERE / "results" / "cuda_graphs.json"
    payload = json.loads(out_json.read_text()) if out_json.exists() else {"rows": []}
    command = shlex.join(["python", "benchmarks/cuda_graphs.py", *(sys.argv[1:] if argv is None else argv)])
    with timing_lock(command):  # no other benchmark times runs on this machine meanwhile
        for name in args.experiments:
            off = measure(name, "off", args.epochs, args.override, args.runs)
            on = measure(name, "on", args.epochs, args.override, args.runs)
            row = {"experiment": name, "batches_per_epoch": on.pop("batches_per_epoch"),
                   "off": {k: v for k, v in off.items() if k != "batches_per_epoch"}, "on": on,
                   "commit": code_version(), "command": command}
            payload["rows"] = [r for r in payload["rows"] if r["experiment"] != name] + [row]
            print(json.dumps(row), file=sys.stderr)
    payload.update(machine=machine_description(torch.device("cuda")), torch=torch.__version__,
                   epochs=args.epochs, updated=dt.date.today().isoformat())
    print(save_results(out_json, payload, write_markdown))


if __name__ == "__main__":
    main()
