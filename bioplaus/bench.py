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
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bioplaus import plots
from bioplaus.errors import UsageError

USAGE = ("usage: bioplaus bench EXPERIMENT... [--seeds S...] [--name NAME] [--title T] [--out DIR] "
         "[--runs DIR] [--baseline STEM:EXPERIMENT] [--no-run] [OVERRIDES...]")


def describe_circuit(circuit: Any, input_shape: list[int]) -> str:
    """The circuit's name and shape as a table cell (`Circuit.describe` of its class)."""
    from bioplaus import registry

    cls = registry.get_circuit(str(circuit.name))
    return cls.describe(cls.Options.parse(f"circuit '{circuit.name}'", circuit), tuple(input_shape))


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
    summary["published"] = str(cfg.get("published") or "")  # the experiment YAML's `published:`
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
        "paper": first.get("published", ""),
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
    sourced = [r for r in payload["rows"] if r.get("command")]
    if sourced:
        lines += ["", "Commit and command of each row:", ""]
        lines += [f"- {r['experiment']}: commit {r.get('commit', '?')}, `{r['command']}`" for r in sourced]
    path.write_text("\n".join(lines) + "\n")


def code_version(folder: str | Path | None = None) -> str:
    """The short git commit of the checkout holding ``folder`` (default: this package), or
    ``unknown`` outside a git checkout — recorded with every benchmark row."""
    import subprocess

    where = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=where, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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


def _parser(out: Path) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="bioplaus bench", add_help=False, exit_on_error=False,
                                     allow_abbrev=False)
    parser.add_argument("items", nargs="*", help="EXPERIMENT names and key=value overrides")
    parser.add_argument("--seeds", nargs="+", default=[])  # leading integers; the rest are items
    parser.add_argument("--name", default="bench")
    parser.add_argument("--title", default=None)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench")
    parser.add_argument("--baseline", dest="baselines", action="append", default=[])
    parser.add_argument("--no-run", dest="no_run", action="store_true")
    return parser


def _parse(args: list[str], default_experiments: list[str], out: Path) -> dict[str, Any]:
    """The options of ``bioplaus bench ARGS`` (argparse); `UsageError` for bad ones."""
    import argparse

    try:
        parsed, unknown = _parser(out).parse_known_intermixed_args(args)
    except (argparse.ArgumentError, ValueError) as e:
        raise UsageError(f"{e}. {USAGE}") from None
    if unknown:
        raise UsageError(f"unknown option '{unknown[0]}' of bioplaus bench. {USAGE}")
    given = list(parsed.seeds)
    parsed.seeds = []
    while given and given[0].isdigit():
        parsed.seeds.append(int(given.pop(0)))
    if given and not parsed.seeds:
        raise UsageError(f"--seeds takes one or more non-negative integers; got '{given[0]}'. {USAGE}")
    parsed.items += given
    for spec in parsed.baselines:
        if ":" not in spec:
            raise UsageError(f"--baseline takes STEM:EXPERIMENT (a row of OUT/STEM.json); got '{spec}'.")
    options = vars(parsed)
    items = options.pop("items")
    options["overrides"] = [a for a in items if "=" in a]
    options["experiments"] = [] if options["no_run"] else (
        [a for a in items if "=" not in a] or list(default_experiments))
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
        # where the row came from: the code's commit and the exact command
        rows[-1].update(commit=code_version(), command="bioplaus bench " + shlex.join(args))
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
