"""``bioplaus bench EXPERIMENT... [--seeds S...] [--name N] [--out DIR] [OVERRIDES...]``.

Runs experiment presets (``configs/experiment/``) through the library, one or more seeds each,
and writes ``OUT/NAME.json`` (for machines) and ``OUT/NAME.md`` (for people): test accuracy
(mean ± std over seeds), epochs, batch, training wall-clock, samples/s, peak memory, the machine
and torch version of every row, and the published figure each preset answers to; and the picture
``OUT/NAME.png`` (`bioplaus.plots.draw_bench`; not with ``plots=false``). Rows of earlier
invocations are kept unless the same experiment runs again, so a table can be built one row at a
time, on different machines:

    bioplaus bench fmnist_bp_mlp fmnist_mf_mlp threads=1
    bioplaus bench fmnist_noprop_dt fmnist_bp_cnn --name fmnist_local device=cuda
    bioplaus bench --name fmnist_g2g --no-run --baseline fmnist_mlp:fmnist_bp_mlp

Every experiment and override is checked before the first run (bad input exits 2).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
from collections.abc import Callable
from math import prod
from pathlib import Path
from typing import Any

from bioplaus import plots
from bioplaus.errors import UsageError

#: the published figure each preset answers to (ALGORITHMS.md)
PUBLISHED = {
    "fmnist_bp_mlp": "89.13 % (BP, 784-1000-1000, Mono-Forward paper's benchmark)",
    "fmnist_mf_mlp": "89.72 % (Mono-Forward, 784-1000-1000, 3 seeds)",
    "fmnist_ff_mlp": "89.63 % (FF 4×2000, 3 seeds; BP same net 88.88 %)",
    "fmnist_ff_mlp_paper": "89.63 % (FF 4×2000, 3 seeds; BP same net 88.88 %)",
    "fmnist_bp_ff_mlp": "88.88 % (BP on FF's 4×2000 net)",
    "fmnist_ccl_mlp": "\"comparable to other bio-plausible rules\" (table values unverified)",
    "fmnist_tpsgd_mlp": "within 5 % of BP on shallow nets (paper's claim)",
    "fmnist_drtp_mlp": "",
    "fmnist_g2g_bp": "up to +4.3 points over dense (G2GNet paper, across data sets)",
    "fmnist_dgl_mlp": "no published Fashion-MNIST figure",
    "fmnist_auglocal_mlp": "AugLocal: ~40 % less GPU memory at BP-comparable accuracy (paper, ResNets); "
                           "no Fashion-MNIST figure",
    "fmnist_infopro_mlp": "InfoPro: 40–60 % less GPU memory (paper, ResNets); no Fashion-MNIST figure",
    "fmnist_bp_cnn": "backprop beside NoProp-DT: a conv net of one block's image-branch shape",
    "fmnist_noprop_dt": "no F-MNIST figure published (MNIST 99.47–99.54 %); our target ≥ 90.0 %",
}
USAGE = ("usage: bioplaus bench EXPERIMENT... [--seeds S...] [--name NAME] [--title T] [--out DIR] "
         "[--runs DIR] [--baseline STEM:EXPERIMENT] [--no-run] [OVERRIDES...]")


def _widths(widths: Any) -> str:
    return "-".join(map(str, widths))


def describe_circuit(circuit: Any, input_shape: list[int]) -> str:
    """The circuit's name and shape as a table cell: widths for the layered nets, the block
    structure for NoProp's denoising blocks."""
    if circuit.name == "noprop_blocks":
        branch = (f"conv {_widths(circuit.channels)} → {_widths(circuit.image_hidden)}"
                  if circuit.image_branch == "conv" else f"mlp {_widths(circuit.image_hidden)}")
        blocks = f"T={circuit.blocks} blocks" if circuit.variant == "dt" else "one shared block"
        return f"noprop_blocks, {blocks}: image {branch}, head {_widths(circuit.hidden)}"
    if circuit.name == "hopfield":
        beta = circuit.get("beta")
        return (f"hopfield N={prod(input_shape)}, β={'∞' if beta is None else beta}, "
                f"{circuit.get('couplings', 'dense')}")
    if circuit.name == "cnn":
        return f"cnn conv {_widths(circuit.channels)} → {_widths(circuit.hidden)}"
    return f"{circuit.name} {_widths([prod(input_shape), *circuit.get('hidden', [])])}"


def run_experiment(name: str, seed: int, overrides: list[str], runs: Path) -> dict[str, Any]:
    import bioplaus

    cfg = bioplaus.compose([f"experiment={name}", f"seed={seed}", f"paths.runs={runs}",
                            "trainer.progress=lines", *overrides])
    load_before = os.getloadavg()[0]
    summary = bioplaus.train(cfg)
    # how busy the machine was: other processes sharing the cores slow the wall-clock figures
    summary["load_average"] = round(max(load_before, os.getloadavg()[0]), 2)
    summary["circuit_description"] = describe_circuit(cfg.circuit, summary["input_shape"])
    summary["epochs"] = int(cfg.trainer.epochs)
    summary["batch_size"] = int(cfg.trainer.batch_size)
    summary["overrides"] = list(overrides)
    return summary


def aggregate(name: str, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row of an experiment's runs (one per seed)."""
    first = summaries[0]
    metric = first.get("monitor", "accuracy")       # the runs' monitored metric, e.g. overlap
    accs = [s[f"test_{metric}"] for s in summaries]
    return {
        "experiment": name,
        "learner": first["learner"],
        "circuit": first["circuit_description"],
        "data": first["data"],
        "seeds": [s["seed"] for s in summaries],
        **({} if metric == "accuracy" else {"metric": metric}),
        f"test_{metric}_mean": statistics.mean(accs),
        f"test_{metric}_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "test_accuracies" if metric == "accuracy" else f"test_{metric}_values": accs,
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
        "torch": first["torch"],
        "paper": PUBLISHED.get(name, ""),
        "other_readouts": {k: v for k, v in first.items()
                           if k.startswith(f"test_{metric}_") and isinstance(v, float)},
        "overrides": first["overrides"],
        "run_dirs": [s["run_dir"] for s in summaries],
    }


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    lines = [
        f"# {payload['title']}",
        "",
        f"Machines: {payload['machine']}. Updated {payload['updated']}.",
        "Protocol: each preset's data set with a seeded validation split held out of its training "
        "set (`data.val_fraction`); the weights of the best validation epoch are tested on the test "
        "split (`trainer.select=best_val`). Wall-clock is training time only (no evaluation), summed "
        "over epochs; `load` is the machine's 1-minute load average around the run (above the torch "
        "thread count, other processes shared the cores and the times are slower than an idle "
        "machine's). `device`: `cpu` rows ran on the CPU named in `machine`, `cuda` rows on the GPU, "
        "with the training step captured as a CUDA graph.",
        "",
        "| experiment | learner | circuit | test acc. (%) | seeds | epochs | batch | train s | samples/s "
        "| peak mem (MiB) | load | device | machine, torch | paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        metric = row.get("metric", "accuracy")
        if metric == "accuracy":
            acc = f"{100 * row['test_accuracy_mean']:.2f}"
            if len(row["seeds"]) > 1:
                acc += f" ± {100 * row['test_accuracy_std']:.2f}"
        else:  # a memory (or other) run: its monitored metric, named, as a fraction
            acc = f"{metric} {row[f'test_{metric}_mean']:.4f}"
            if len(row["seeds"]) > 1:
                acc += f" ± {row[f'test_{metric}_std']:.4f}"
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
            prefix = f"test_{row.get('metric', 'accuracy')}_"
            shown = ", ".join(f"{k.removeprefix(prefix)} {100 * v:.2f} %"
                              for k, v in row["other_readouts"].items())
            lines.append(f"- {row['experiment']}: {shown}")
    path.write_text("\n".join(lines) + "\n")


def markdown_header(title: str, payload: dict[str, Any], protocol: str) -> list[str]:
    """Title, then one paragraph: the machine, torch version and date of ``payload``, and the
    protocol. The opening lines of a benchmark script's Markdown table."""
    return [f"# {title}", "",
            f"Machine: {payload['machine']}, torch {payload['torch']}. Updated {payload['updated']}. "
            + protocol, ""]


def save_results(out_json: Path, payload: dict[str, Any],
                 render: Callable[[Path, dict[str, Any]], None]) -> Path:
    """Write ``payload`` to ``out_json`` and its Markdown table (``render``) beside it; returns the
    Markdown file. Shared by `bioplaus bench` and the scripts in ``benchmarks/``."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(payload, indent=2) + "\n")
    markdown = out_json.with_suffix(".md")
    render(markdown, payload)
    return markdown


def _parse(args: list[str], default_experiments: list[str], out: Path) -> dict[str, Any]:
    options: dict[str, Any] = {"experiments": [], "overrides": [], "seeds": [], "name": "bench",
                               "title": None, "out": out, "runs": Path("runs") / "bench",
                               "baselines": [], "no_run": False}
    single = {"--name": "name", "--title": "title", "--out": "out", "--runs": "runs",
              "--baseline": "baselines"}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--no-run":
            options["no_run"] = True
        elif arg == "--seeds":
            while i + 1 < len(args) and args[i + 1].isdigit():
                options["seeds"].append(int(args[i + 1]))
                i += 1
            if not options["seeds"]:
                raise UsageError(f"--seeds takes one or more non-negative integers. {USAGE}")
        elif arg in single:
            if i + 1 >= len(args):
                raise UsageError(f"{arg} needs a value. {USAGE}")
            key, value = single[arg], args[i + 1]
            if key == "baselines":
                if ":" not in value:
                    raise UsageError("--baseline takes STEM:EXPERIMENT (a row of OUT/STEM.json); "
                                     f"got '{value}'.")
                options[key].append(value)
            else:
                options[key] = Path(value) if key in ("out", "runs") else value
            i += 1
        elif arg.startswith("-"):
            raise UsageError(f"unknown option '{arg}' of bioplaus bench. {USAGE}")
        elif "=" in arg:
            options["overrides"].append(arg)
        else:
            options["experiments"].append(arg)
        i += 1
    if options["no_run"]:
        options["experiments"] = []
    elif not options["experiments"]:
        options["experiments"] = list(default_experiments)
    options["seeds"] = options["seeds"] or [0]
    return options


def main(args: list[str], default_experiments: list[str] = (), out: Path = Path("benchmarks/results"),
         name: str | None = None) -> Path:
    """Run the benchmark that ``args`` names; returns the Markdown file written."""
    import torch

    import bioplaus
    from bioplaus.config import group_options
    from bioplaus.tracking import machine_description

    options = _parse(args, list(default_experiments), out)
    if name and "--name" not in args:
        options["name"] = name
    if not options["experiments"] and not options["baselines"] and not options["no_run"]:
        raise UsageError(f"bioplaus bench needs at least one EXPERIMENT. {USAGE} "
                         f"Experiments: {', '.join(group_options('experiment'))}.")
    for experiment in options["experiments"]:  # every preset and override checked before any run
        bioplaus.compose([f"experiment={experiment}", *options["overrides"]])
    out_json = Path(options["out"]) / f"{options['name']}.json"
    baselines = []
    for spec in options["baselines"]:
        stem, _, experiment = spec.partition(":")
        source_file = Path(options["out"]) / f"{stem}.json"
        if not source_file.is_file():
            raise UsageError(f"--baseline {spec}: no results file {source_file}.")
        source = json.loads(source_file.read_text())
        row = next((r for r in source["rows"] if r["experiment"] == experiment), None)
        if row is None:
            raise UsageError(f"--baseline {spec}: {source_file} has no row '{experiment}'.")
        baselines.append({**row, "from": f"{stem}.json"})

    rows = []
    for experiment in options["experiments"]:
        summaries = [run_experiment(experiment, seed, options["overrides"], options["runs"])
                     for seed in options["seeds"]]
        rows.append(aggregate(experiment, summaries))
        metric = rows[-1].get("metric", "accuracy")
        shown = ("experiment", f"test_{metric}_mean", "train_seconds_mean")
        print(json.dumps({k: rows[-1][k] for k in shown}), file=sys.stderr, flush=True)
    rows += baselines
    # read the results file only now, so that benchmark processes run side by side keep each other's rows
    payload = json.loads(out_json.read_text()) if out_json.exists() else {"rows": []}
    done = {row["experiment"] for row in rows}
    payload["rows"] = [r for r in payload["rows"] if r["experiment"] not in done] + rows
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    payload.update(
        title=options["title"] or payload.get("title") or f"Benchmark {options['name']}",
        # the machine each row ran on (a render-only call must not describe itself)
        machine="; ".join(sorted({r["machine"] for r in payload["rows"]})) or machine_description(device),
        updated=dt.date.today().isoformat(),
    )
    markdown = save_results(out_json, payload, write_markdown)
    if plots.enabled(options["overrides"]):  # OUT/NAME.png beside the table
        plots.attempt(f"{markdown.with_suffix('.png')}", lambda: plots.draw_bench(
            payload, markdown.with_suffix(".png")), lambda line: print(line, file=sys.stderr))
    return markdown
