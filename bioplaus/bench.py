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

Every experiment and override is checked before the first run (bad input exits 2). Each run is
timed in a process of its own (its peak memory is that run's alone), while this process holds the
machine's benchmark lock (`timing_lock`): a second `bench` started meanwhile exits 2 naming the
holder. Every row records the commit (`code_version`), the exact command, the load average before
and after each run, whether a GPU step was captured as a CUDA graph, and keeps each run's
``summary.json``, ``metrics.jsonl`` and ``config.yaml`` under ``OUT/runs/NAME/EXPERIMENT/seedS/``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
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


LOCK_ENV = "BIOPLAUS_BENCH_LOCK"
KEPT_FILES = ("summary.json", "metrics.jsonl", "config.yaml")  # small: no checkpoints


def lock_path() -> Path:
    """The machine's benchmark lock file: ``$BIOPLAUS_BENCH_LOCK``, else ``bioplaus-bench.lock`` in
    the temporary folder (tests point the variable at their own folder to run in parallel)."""
    return Path(os.environ.get(LOCK_ENV) or Path(tempfile.gettempdir()) / "bioplaus-bench.lock")


@contextlib.contextmanager
def timing_lock(command: str) -> Iterator[Path]:
    """Hold the benchmark lock (an OS lock, ``fcntl.flock``, released when the process ends however
    it ends) while timing; `UsageError` naming the holder when another process holds it. The file
    names the holder: its pid, start time and command."""
    import fcntl

    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (closed below)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not named itself yet"
        handle.close()
        raise UsageError(f"another benchmark is timing runs on this machine ({holder}); runs timed side "
                         f"by side slow each other down. Wait for it to finish and run again (lock {path})."
                         ) from None
    try:
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} since {dt.datetime.now().isoformat(timespec='seconds')}: "
                     f"{command}\n")
        handle.flush()
        yield path
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def run_command(name: str, seed: int, overrides: list[str]) -> str:
    """The `bioplaus run` command line that repeats one benchmark run."""
    return shlex.join(["bioplaus", "run", f"experiment={name}", f"seed={seed}", *overrides])


def run_experiment(name: str, seed: int, overrides: list[str], runs: Path) -> dict[str, Any]:
    """One run of preset ``name`` in a fresh Python process (so that its peak memory is its own),
    with the load average before and after it; returns the run's summary plus bench fields."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "summary.json"
        load_before = os.getloadavg()[0]
        child = subprocess.run([sys.executable, "-m", "bioplaus.bench", "--one", name, str(seed),
                                str(runs), str(result), *overrides], capture_output=True, text=True)
        load_after = os.getloadavg()[0]
        sys.stderr.write(child.stdout + child.stderr)
        if child.returncode != 0 or not result.exists():
            from bioplaus.errors import RunFailed

            tail = (child.stderr or child.stdout).strip().splitlines()[-3:]
            raise RunFailed(f"bench run {name} seed {seed} failed (exit {child.returncode}): "
                            + " / ".join(tail))
        summary = json.loads(result.read_text())
    # how busy the machine was: other processes sharing the cores slow the wall-clock figures
    summary["load_before"], summary["load_after"] = round(load_before, 2), round(load_after, 2)
    summary["load_average"] = round(max(load_before, load_after), 2)
    summary["run_command"] = run_command(name, seed, overrides)
    return summary


def _run_here(name: str, seed: int, overrides: list[str], runs: Path) -> dict[str, Any]:
    """The body of `run_experiment`, in the child process."""
    import bioplaus

    cfg = bioplaus.compose([f"experiment={name}", f"seed={seed}", f"paths.runs={runs}",
                            "trainer.progress=lines", *overrides])
    summary = bioplaus.train(cfg)
    summary["circuit_description"] = describe_circuit(cfg.circuit, summary["input_shape"])
    summary["epochs"] = int(cfg.trainer.epochs)
    summary["batch_size"] = int(cfg.trainer.batch_size)
    summary["overrides"] = list(overrides)
    summary["changed"] = changed_by(overrides)
    # the experiment YAML's `published:` figure, unless the overrides changed what it was measured on
    summary["published"] = "" if summary["changed"] else str(cfg.get("published") or "")
    return summary


#: override groups that change what a preset measures (its paper figure no longer applies)
CHANGING_GROUPS = ("data", "circuit", "learner", "experiment")


def changed_by(overrides: list[str]) -> list[str]:
    """The overrides that change a preset's data, circuit or learner (``data=digits``,
    ``circuit.hidden=[32]``, ``+learner.x=1``); budget and machine overrides (``trainer.*``,
    ``threads``, ``device``) are not among them."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0] in CHANGING_GROUPS]


def aggregate(name: str, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row of an experiment's runs (one per seed)."""
    first = summaries[0]
    metric = first.get("monitor", "accuracy")       # the runs' monitored metric, e.g. overlap
    accs = [s[f"test_{metric}"] for s in summaries]
    changed = first.get("changed", [])
    return {  # a preset run with changed data/circuit/learner is a row of its own, named by the change
        "experiment": f"{name} [{' '.join(changed)}]" if changed else name,
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
        "peak_memory_kind": first.get("peak_memory_kind", ""),
        "device": first["device"],
        "captured": [s.get("captured", False) for s in summaries],
        "load_average": max(s.get("load_average", 0.0) for s in summaries),
        "load_before": [s.get("load_before") for s in summaries],
        "load_after": [s.get("load_after") for s in summaries],
        "machine": first["machine"],
        "torch": first["torch"],
        "paper": first.get("published", ""),
        "other_readouts": {k: v for k, v in first.items()
                           if k.startswith(f"test_{metric}_") and isinstance(v, float)},
        "overrides": first["overrides"],
        "run_dirs": [s["run_dir"] for s in summaries],
        "run_commands": [s.get("run_command", "") for s in summaries],
    }


def keep_runs(row: dict[str, Any], out: Path, name: str) -> None:
    """Copy the small files of each run of ``row`` to ``out/runs/NAME/EXPERIMENT/seedS/`` (replacing
    an earlier row's) and record those folders, relative to ``out``, in ``row['kept_runs']``."""
    folder = out / "runs" / name / re.sub(r"[^\w.=+-]+", "_", row["experiment"]).strip("_")
    shutil.rmtree(folder, ignore_errors=True)
    row["kept_runs"] = []
    for seed, run_dir in zip(row["seeds"], row["run_dirs"], strict=True):
        kept = folder / f"seed{seed}"
        kept.mkdir(parents=True)
        for file in KEPT_FILES:
            if (Path(run_dir) / file).is_file():
                shutil.copy2(Path(run_dir) / file, kept / file)
        row["kept_runs"].append(kept.relative_to(out).as_posix())


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
        "machine's). `device`: `cpu` rows ran on the CPU named in `machine`, `cuda` rows on the GPU "
        "(`graph`: every step captured as a CUDA graph; `eager`: capture off or failed). Peak memory: "
        "each run timed in a process of its own (CPU: its peak resident set; GPU: peak allocated). "
        "`commit`: the code that ran; each row's command and kept runs (`summary.json`, "
        "`metrics.jsonl`, `config.yaml`) are listed below the table.",
        "",
        "| experiment | learner | circuit | test acc. (%) | seeds | epochs | batch | train s | samples/s "
        "| peak mem (MiB) | load | device | machine, torch | commit | paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
            f"| {row.get('load_average', '')} | {_device_cell(row)} "
            f"| {row['machine']}, torch {row.get('torch', '?')} | {row.get('commit', '—')} "
            f"| {row['paper']} |"
        )
    extra = [r for r in payload["rows"] if r["other_readouts"]]
    if extra:
        lines += ["", "Other readouts (first seed):", ""]
        for row in extra:
            prefix = f"test_{row.get('metric', 'accuracy')}_"
            shown = ", ".join(f"{k.removeprefix(prefix)} {100 * v:.2f} %"
                              for k, v in row["other_readouts"].items())
            lines.append(f"- {row['experiment']}: {shown}")
    lines += _provenance(payload["rows"])
    for note in payload.get("notes", []):  # paragraphs kept in OUT/NAME.json across calls
        lines += ["", note]
    path.write_text("\n".join(lines) + "\n")


def _device_cell(row: dict[str, Any]) -> str:
    kind = row["device"].split(":")[0]
    if kind != "cuda" or "captured" not in row:
        return kind
    return f"cuda, {'graph' if all(row['captured']) else 'eager'}"


def _provenance(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: each row's command, per-run commands and kept runs."""
    lines = ["", "Commands and kept runs:", ""]
    for row in rows:
        if row.get("from"):
            lines.append(f"- {row['experiment']}: the row of {row['from']}")
            continue
        if not row.get("command"):
            lines.append(f"- {row['experiment']}: no command recorded (measured before rows kept one)")
            continue
        kept = ", ".join(f"`{k}`" for k in row.get("kept_runs", [])) or "none"
        loads = ", ".join(f"{b}→{a}" for b, a in zip(row.get("load_before", []),
                                                      row.get("load_after", []), strict=False))
        lines.append(f"- {row['experiment']}: `{row['command']}` (commit {row.get('commit', '?')}; "
                     f"load before→after each run {loads}); runs {kept}")
    return lines


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
    Markdown file. Shared by `bioplaus bench` and the scripts in ``benchmarks/``. A row without its
    own ``commit`` / ``command`` takes the payload's, so every row names the code and command that
    measured it."""
    for row in payload.get("rows", []):
        for key in ("commit", "command"):
            if key in payload and isinstance(row, dict):
                row.setdefault(key, payload[key])
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


def time_rows(options: dict[str, Any], command: str) -> list[dict[str, Any]]:
    """The rows of ``options['experiments']``, each run in its own process; seed by seed, the
    experiments alternated (so that a change of machine load falls on every row alike)."""
    commit = code_version()
    summaries: dict[str, list[dict[str, Any]]] = {e: [] for e in options["experiments"]}
    for seed in options["seeds"]:
        for experiment in options["experiments"]:
            summaries[experiment].append(
                run_experiment(experiment, seed, options["overrides"], options["runs"]))
    rows = []
    for experiment, runs in summaries.items():
        row = {**aggregate(experiment, runs), "commit": commit, "command": command}
        keep_runs(row, Path(options["out"]), options["name"])
        rows.append(row)
        metric = row.get("metric", "accuracy")
        shown = ("experiment", f"test_{metric}_mean", "train_seconds_mean")
        print(json.dumps({k: row[k] for k in shown}), file=sys.stderr, flush=True)
    return rows


def _check_out(out: Path) -> None:
    """`UsageError` unless ``out`` is, or can be made, a folder this process can write; checked
    before any run is timed, and leaving nothing behind (a temporary folder is made and removed in
    ``out`` or its nearest existing parent)."""
    import tempfile

    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is a file")
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".write-test-"))  # made and removed: writable
    except OSError as e:
        raise UsageError(f"--out {out}: not a folder bioplaus can write ({e.strerror or e}). "
                         f"Choose another with --out DIR.") from None


def main(args: list[str], default_experiments: list[str] = (), out: Path = Path("benchmarks/results"),
         name: str | None = None, prog: str = "bioplaus bench") -> Path:
    """Run the benchmark that ``args`` names; returns the Markdown file written. ``prog``: how the
    command was started (recorded with ``args`` in every row)."""
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
    if not options["experiments"] and not options["baselines"] and not out_json.exists():
        raise UsageError(f"--no-run: no results file {out_json} to redraw. Name one with --name "
                         f"(and --out DIR), or give EXPERIMENTs to run.")
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
    _check_out(Path(options["out"]))

    command = shlex.join([*shlex.split(prog), *args])
    rows = []
    if options["experiments"]:
        with timing_lock(command):
            rows = time_rows(options, command)
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


if __name__ == "__main__":  # one benchmark run, in its own process: see `run_experiment`
    _, _, _name, _seed, _runs, _result, *_overrides = sys.argv
    Path(_result).write_text(json.dumps(_run_here(_name, int(_seed), _overrides, Path(_runs))))
