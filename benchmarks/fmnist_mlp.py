"""Fashion-MNIST MLP comparison: backprop vs the local rules on the same data and budget.

Runs experiment presets (``configs/experiment/``) through the library API, one or more seeds
each, and writes ``benchmarks/results/<name>.json`` and ``.md``: test accuracy, epochs, training
wall-clock, samples/s, peak memory, and the machine. Rows of earlier invocations are kept unless
the same experiment is run again, so rows can be produced one at a time:

    python benchmarks/fmnist_mlp.py fmnist_bp_mlp fmnist_mf_mlp
    python benchmarks/fmnist_mlp.py fmnist_ff_mlp --seeds 0 1 2

Needs the Fashion-MNIST IDX files (``apt-get install dataset-fashion-mnist`` on Debian, or
``data.root=DIR``, or ``data.download=true`` where there is internet).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path

import torch

import bioplaus
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
DEFAULT_EXPERIMENTS = ["fmnist_bp_mlp", "fmnist_mf_mlp", "fmnist_ff_mlp"]
#: published figures each row answers to (ALGORITHMS.md)
PAPER = {
    "fmnist_bp_mlp": "89.13 % (BP, 784-1000-1000, Mono-Forward paper's benchmark)",
    "fmnist_mf_mlp": "89.72 % (Mono-Forward, 784-1000-1000, 3 seeds)",
    "fmnist_ff_mlp": "89.63 % (FF 4×2000, 3 seeds; BP same net 88.88 %)",
    "fmnist_ff_mlp_paper": "89.63 % (FF 4×2000, 3 seeds; BP same net 88.88 %)",
    "fmnist_bp_ff_mlp": "88.88 % (BP on FF's 4×2000 net)",
    "fmnist_ccl_mlp": "\"comparable to other bio-plausible rules\" (table values unverified)",
    "fmnist_tpsgd_mlp": "within 5 % of BP on shallow nets (paper's claim)",
    "fmnist_drtp_mlp": "",
    "fmnist_g2g_bp": "up to +4.3 points over dense (G2GNet paper, across data sets)",
    "fmnist_bp_cnn": "backprop beside NoProp-DT: a conv net of one block's image-branch shape",
    "fmnist_noprop_dt": "no F-MNIST figure published (MNIST 99.47–99.54 %); our target ≥ 90.0 %",
}


def describe_circuit(circuit) -> str:
    """The circuit's name and shape as a table cell: widths for the layered nets, the block
    structure for NoProp's denoising blocks."""
    if circuit.name == "noprop_blocks":
        branch = (f"conv {'-'.join(map(str, circuit.channels))} → {'-'.join(map(str, circuit.image_hidden))}"
                  if circuit.image_branch == "conv" else f"mlp {'-'.join(map(str, circuit.image_hidden))}")
        blocks = f"T={circuit.blocks} blocks" if circuit.variant == "dt" else "one shared block"
        return f"noprop_blocks, {blocks}: image {branch}, head {'-'.join(map(str, circuit.hidden))}"
    if circuit.name == "cnn":
        return f"cnn conv {'-'.join(map(str, circuit.channels))} → {'-'.join(map(str, circuit.hidden))}"
    return f"{circuit.name} {'-'.join(['784', *map(str, circuit.get('hidden', []))])}"


def run_experiment(name: str, seed: int, overrides: list[str], runs: Path) -> dict:
    cfg = bioplaus.compose([f"experiment={name}", f"seed={seed}", f"paths.runs={runs}",
                            "trainer.progress=lines", *overrides])
    load_before = os.getloadavg()[0]
    summary = bioplaus.train(cfg)
    # how busy the machine was: other processes sharing the cores slow the wall-clock figures
    summary["load_average"] = round(max(load_before, os.getloadavg()[0]), 2)
    summary["circuit_description"] = describe_circuit(cfg.circuit)
    summary["epochs"] = int(cfg.trainer.epochs)
    summary["batch_size"] = int(cfg.trainer.batch_size)
    return summary


def aggregate(name: str, summaries: list[dict]) -> dict:
    accs = [s["test_accuracy"] for s in summaries]
    first = summaries[0]
    row = {
        "experiment": name,
        "learner": first["learner"],
        "circuit": first["circuit_description"],
        "seeds": [s["seed"] for s in summaries],
        "test_accuracy_mean": statistics.mean(accs),
        "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "test_accuracies": accs,
        "epochs": first["epochs"],
        "epochs_completed": [s["epochs_completed"] for s in summaries],
        "best_epochs": [s.get("best_epoch") for s in summaries],
        "batch_size": first["batch_size"],
        "train_seconds_mean": statistics.mean(s["train_seconds"] for s in summaries),
        "samples_per_second_mean": statistics.mean(s["samples_per_second"] for s in summaries),
        "peak_memory_bytes_max": max(s["peak_memory_bytes"] for s in summaries),
        "device": first["device"],
        "load_average": max(s.get("load_average", 0.0) for s in summaries),
        "machine": first["machine"],
        "torch": torch.__version__,
        "paper": PAPER.get(name, ""),
        "other_readouts": {k: v for k, v in first.items()
                           if k.startswith("test_accuracy_") and isinstance(v, float)},
        "run_dirs": [s["run_dir"] for s in summaries],
    }
    return row


def write_markdown(path: Path, payload: dict) -> None:
    lines = [
        f"# {payload['title']}",
        "",
        f"Machines: {payload['machine']}. Updated {payload['updated']}.",
        "Protocol: 54k train / 6k validation (seeded split) / 10k test; the weights of the best "
        "validation epoch are tested (`trainer.select=best_val`). Wall-clock is training time only "
        "(no evaluation), summed over epochs; "
        "`load` is the machine's 1-minute load average around the run (above the torch thread count, "
        "other processes shared the cores and the times are slower than an idle machine's). "
        "`device`: `cpu` rows ran on the CPU named in `machine`, `cuda` rows on the GPU, with the "
        "training step captured as a CUDA graph.",
        "",
        "| experiment | learner | circuit | test acc. (%) | seeds | epochs | batch | train s | samples/s "
        "| peak mem (MiB) | load | device | machine, torch | paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        acc = f"{100 * row['test_accuracy_mean']:.2f}"
        if len(row["seeds"]) > 1:
            acc += f" ± {100 * row['test_accuracy_std']:.2f}"
        source = f" (from {row['from']})" if row.get("from") else ""
        lines.append(
            f"| {row['experiment']}{source} | {row['learner']} | {row['circuit']} | {acc} "
            f"| {len(row['seeds'])} "
            f"| {row['epochs']} | {row['batch_size']} | {row['train_seconds_mean']:.0f} "
            f"| {row['samples_per_second_mean']:.0f} | {row['peak_memory_bytes_max'] / 2**20:.0f} "
            f"| {row.get('load_average', '')} | {row['device'].split(':')[0]} "
            f"| {row['machine']}, torch {row.get('torch', '?')} | {row['paper']} |"
        )
    extra = [r for r in payload["rows"] if r["other_readouts"]]
    if extra:
        lines += ["", "Other readouts (first seed):", ""]
        for row in extra:
            shown = ", ".join(f"{k.removeprefix('test_accuracy_')} {100 * v:.2f} %"
                              for k, v in row["other_readouts"].items())
            lines.append(f"- {row['experiment']}: {shown}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", default=DEFAULT_EXPERIMENTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--name", default="fmnist_mlp", help="results file stem")
    parser.add_argument("--title", default=None, help="title of the Markdown table")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench")
    parser.add_argument("--override", action="append", default=[], help="extra key=value for every run")
    parser.add_argument("--baseline", action="append", default=[], metavar="STEM:EXPERIMENT",
                        help="copy a row measured into results/STEM.json (e.g. the dense baseline)")
    parser.add_argument("--no-run", action="store_true", help="run nothing: only copy baselines and render")
    args = parser.parse_args(argv)
    if args.no_run:
        args.experiments = []

    out_json = HERE / "results" / f"{args.name}.json"
    rows = []
    for name in args.experiments:
        summaries = [run_experiment(name, seed, args.override, args.runs) for seed in args.seeds]
        rows.append(aggregate(name, summaries))
        rows[-1]["overrides"] = list(args.override)
        shown = ("experiment", "test_accuracy_mean", "train_seconds_mean")
        print(json.dumps({k: rows[-1][k] for k in shown}), file=sys.stderr)
    for spec in args.baseline:
        stem, _, experiment = spec.partition(":")
        source = json.loads((HERE / "results" / f"{stem}.json").read_text())
        row = next(r for r in source["rows"] if r["experiment"] == experiment)
        rows.append({**row, "from": f"{stem}.json"})
    # read the results file only now, so that benchmark processes run side by side keep each other's rows
    payload = json.loads(out_json.read_text()) if out_json.exists() else {"rows": []}
    done = {row["experiment"] for row in rows}
    payload["rows"] = [r for r in payload["rows"] if r["experiment"] not in done] + rows
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    payload.update(
        title=args.title or payload.get("title") or "Fashion-MNIST MLP comparison",
        # the machine each row ran on (a render-only call must not describe itself)
        machine="; ".join(sorted({r["machine"] for r in payload["rows"]})) or machine_description(device),
        updated=dt.date.today().isoformat(),
    )
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(out_json.with_suffix(".md"), payload)
    print(out_json.with_suffix(".md"))


if __name__ == "__main__":
    main()
