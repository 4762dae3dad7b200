"""The `bioplaus` command: ``run``, ``sweep``, ``bench``, ``list``, ``compare``.

``bioplaus run OVERRIDES...`` hands its arguments to a ``@hydra.main`` entry, so Hydra's syntax
works as usual (``key=value``, ``+key=value``, ``~key``, ``-m`` multirun, ``--cfg job``). Before
Hydra starts, the overrides are checked so that bad input exits 2 with one clear paragraph and
no run directory is created.

Exit codes: 0 done; 2 usage or config error; 1 a run that failed or diverged.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bioplaus.errors import RunFailed, UsageError

USAGE = """usage: bioplaus COMMAND [ARGS]

commands:
  run [OVERRIDES...]   train: bioplaus run learner=forward_forward trainer.epochs=5
                       (Hydra syntax: key=value, +key=value, ~key, -m for multirun, --cfg job)
  sweep FILE [--local] [--count N] [--seed S] [--project P] [--entity E] [OVERRIDES...]
                       a W&B sweep spec (a path, or a name in configs/sweeps/) over `bioplaus run`;
                       --local runs it here with the W&B sweep engine and no server;
                       sweep --resume SWEEP_DIR continues a stopped local sweep
  bench EXPERIMENT... [--seeds S...] [--name N] [--out DIR] [OVERRIDES...]
                       run presets, one or more seeds each, into OUT/NAME.json, .md and .png (accuracy,
                       wall-clock, samples/s, memory, machine); default OUT: benchmarks/results
  list [NAME | --markdown]
                       learners, circuits, data sets, experiments, learner×circuit compatibility;
                       NAME: the declared options of one learner or circuit
  compare RUN_DIR... [--plot FILE]
                       one table of the summaries of several runs (also a parent folder of runs);
                       --plot draws their validation curves and test metric (seeds pooled) into FILE
  export brian2 RUN_DIR [--out FILE] [--check N]
                       a trained snn run as a Brian2 script; --check N compares N test examples

The run directory is printed as the last line. Exit codes: 0 done, 1 run failed or diverged,
2 usage error."""


def _error(message: str, code: int = 2) -> None:
    print(f"bioplaus: error: {message}", file=sys.stderr)
    sys.exit(code)


# -- run ----------------------------------------------------------------------------------------

def _split_hydra_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, hydra flags) of a `bioplaus run` command line."""
    from bioplaus.config import HYDRA_FLAGS_WITH_VALUE

    overrides, flags = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            flags.append(arg)
            if arg in HYDRA_FLAGS_WITH_VALUE and i + 1 < len(args) and "=" not in args[i + 1]:
                flags.append(args[i + 1])
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return overrides, flags


def _resume_dir(overrides: list[str]) -> str | None:
    for o in overrides:
        if o.startswith("trainer.resume="):
            value = o.split("=", 1)[1]
            return value if value not in ("", "null") else None
    return None


def _print_run_dir(run_dir: str) -> None:
    """The last line of a run: its folder (once per job: rank 0 of a torchrun job prints it)."""
    from bioplaus.distributed import is_writer
    from bioplaus.tracking import to_stdout

    if is_writer():
        to_stdout(run_dir)


def _resume(run_dir: str, overrides: list[str]) -> None:
    """`bioplaus run trainer.resume=DIR [key=value...]`: continue DIR with its saved config."""
    from bioplaus.engine import resume

    try:
        summary = resume(run_dir, overrides)
    except UsageError as e:
        _error(str(e))
    except RunFailed as e:
        print(f"bioplaus: {e}", file=sys.stderr)
        print(e.run_dir or run_dir, flush=True)
        sys.exit(1)
    _print_run_dir(summary["run_dir"])


def _pinned_dir(overrides: list[str]) -> tuple[str | None, bool]:
    """(``hydra.run.dir`` given on the command line, whether the run can skip Hydra's own app:
    no other ``hydra.*`` / ``hydra/`` override and no interpolation in the folder name)."""
    pinned, plain = None, True
    for o in overrides:
        if o.startswith("hydra.run.dir="):
            pinned = o.split("=", 1)[1]
            plain = plain and "${" not in pinned
        elif o.startswith("hydra"):
            plain = False
    return pinned, plain


def _run_once(overrides: list[str], pinned: str | None) -> None:
    """One run without Hydra's app: the config is composed and validated once (`compose`), the
    run folder claimed only after it is valid."""
    from bioplaus import config
    from bioplaus.engine import train

    try:
        cfg = config.compose([o for o in overrides if not o.startswith("hydra")])
        summary = train(cfg, run_dir=pinned, unique_run_dir=pinned is None, validated=True)
    except UsageError as e:
        _error(str(e))
    except RunFailed as e:
        print(f"bioplaus: {e}", file=sys.stderr)
        print(e.run_dir, flush=True)
        sys.exit(1)
    _print_run_dir(summary["run_dir"])


#: (the runs root or pinned folder, the outermost folder a Hydra-launched run would create):
#: removed again when that run is refused
_ROOT: tuple[Path, Path | None] | None = None


def _task(cfg: Any) -> None:
    """The @hydra.main task: one run into hydra's output directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from bioplaus.engine import train

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    existed = run_dir.exists() and any(run_dir.iterdir())
    # a folder named on the command line is the user's; the dated default may be taken by a run
    # that started in the same second, and then this run takes a sibling <name>_2
    pinned = any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)
    try:
        summary = train(cfg, run_dir=run_dir, unique_run_dir=not pinned)
    except UsageError as e:
        if not existed and run_dir.exists():
            from bioplaus.guards import remove_new_dirs

            remove_new_dirs(run_dir, *(_ROOT or (run_dir, None)))
        print(f"bioplaus: error: {e}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        return
    except RunFailed as e:
        print(f"bioplaus: {e}", file=sys.stderr)
        print(e.run_dir or run_dir, flush=True)
        if not multirun:
            sys.exit(1)
        return
    _print_run_dir(summary["run_dir"])


def run(args: list[str]) -> None:
    import hydra

    overrides, flags = _split_hydra_args(args)
    try:  # before anything else: an override that would have Hydra import code
        from bioplaus.guards import refuse_unsafe_overrides

        refuse_unsafe_overrides(overrides)
    except UsageError as e:
        _error(str(e))
    resume_dir = _resume_dir(overrides)
    if resume_dir is not None:
        _resume(resume_dir, overrides)
        return
    pinned, plain = _pinned_dir(overrides)
    if not flags and plain:
        _run_once(overrides, pinned)
        return
    help_only = any(f in ("--help", "-h", "--hydra-help", "--info", "-i") for f in flags)
    multirun = any(f in ("-m", "--multirun") for f in flags)
    if not help_only and not any(f in ("--cfg", "-c") for f in flags):
        from bioplaus import config

        plain_overrides = [o for o in overrides if not o.startswith("hydra")]
        try:
            if multirun:
                config.check_overrides(plain_overrides)
            else:
                from bioplaus.guards import missing_ancestor

                global _ROOT
                root = Path(pinned or str(config.compose(plain_overrides).paths.runs))
                _ROOT = (root, missing_ancestor(root))
        except UsageError as e:
            _error(str(e))
    sys.argv = ["bioplaus run", *flags, *overrides]
    main_fn = hydra.main(config_path="pkg://bioplaus.configs", config_name="config",
                         version_base=None)(_task)
    main_fn()


# -- sweep ----------------------------------------------------------------------------------------

SWEEP_USAGE = ("usage: bioplaus sweep FILE [--local] [--count N] [--seed S] [--project P] "
               "[--entity E] [OVERRIDES...] | bioplaus sweep --resume SWEEP_DIR [--count N]")


def _count(flag: str, allow_zero: bool = False) -> Any:
    """argparse type: a positive (``--count``) or non-negative (``--seed``) integer."""
    import argparse

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < 0 or (number == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{flag} takes a {'non-negative' if allow_zero else 'positive'} "
                                             f"integer; got '{value}'.")
        return number

    return parse


def _sweep_options(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(options, positional FILE and overrides) of ``bioplaus sweep ARGS`` (argparse)."""
    import argparse

    parser = argparse.ArgumentParser(prog="bioplaus sweep", add_help=False, exit_on_error=False,
                                     allow_abbrev=False)
    parser.add_argument("--local", action="store_true")
    parser.add_argument("--count", type=_count("--count"), default=None)
    parser.add_argument("--seed", type=_count("--seed", allow_zero=True), default=0)
    parser.add_argument("--project", default="bioplaus")
    parser.add_argument("--entity", default=None)
    parser.add_argument("--resume", default=None)
    try:
        parsed, positional = parser.parse_known_args(args)
    except argparse.ArgumentError as e:
        message = str(e).removeprefix(f"argument {e.argument_name}: ") if e.argument_name else str(e)
        if "expected one argument" in message:
            message = f"{e.argument_name} needs a value."
        raise UsageError(f"{message} {SWEEP_USAGE}") from None
    unknown = [a for a in positional if a.startswith("-")]
    if unknown:
        raise UsageError(f"unknown option '{unknown[0]}' of bioplaus sweep. {SWEEP_USAGE}")
    return {f"--{k}": v for k, v in vars(parsed).items()}, positional


def sweep(args: list[str]) -> None:
    from bioplaus import sweep as sweeps

    options, positional = _sweep_options(args)
    try:
        if options["--resume"] is not None:
            if positional:
                raise UsageError("bioplaus sweep --resume SWEEP_DIR takes no FILE or overrides: the "
                                 "sweep continues with its own (saved in SWEEP_DIR/state.json).")
            print(sweeps.resume_local(Path(options["--resume"]), options["--count"]), flush=True)
            return
        if not positional or "=" in positional[0]:
            packaged = ", ".join(sweeps.available()) or "none"
            raise UsageError(f"bioplaus sweep needs a sweep FILE first. {SWEEP_USAGE}. "
                             f"Packaged sweeps: {packaged}.")
        path = sweeps.resolve(positional[0])
        overrides = positional[1:]
        spec = sweeps.load(path, overrides)
        if options["--local"]:
            root = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("paths.runs=")),
                        "runs")
            sweep_dir = sweeps.start_local(path, spec, options["--count"], overrides, Path(root),
                                           options["--seed"])
            print(sweep_dir, flush=True)
        else:
            print(sweeps.run_wandb(path, spec, options["--count"], overrides, options["--project"],
                                   options["--entity"]), flush=True)
    except RunFailed as e:
        print(f"bioplaus: {e}", file=sys.stderr)
        print(e.run_dir, flush=True)
        sys.exit(1)


# -- bench ----------------------------------------------------------------------------------------


def bench(args: list[str]) -> None:
    from bioplaus.bench import main as bench_main

    print(bench_main(args), flush=True)


# -- list -----------------------------------------------------------------------------------------


def options_table(cls: type, markdown: bool = False) -> str:
    """The declared options of a learner or circuit class: name, allowed values, default, meaning."""
    import json

    rows = [(name, allowed, json.dumps(default, ensure_ascii=False), meaning)
            for name, allowed, default, meaning in cls.Options.describe()]
    if markdown:
        lines = ["| option | allowed | default | meaning |", "| --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    if not rows:
        return "  (no options)"
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"  {r[0]:<{widths[0]}}  {r[2]:<{widths[2]}}  {r[1]:<{widths[1]}}  {r[3]}" for r in rows)


def options_markdown() -> str:
    """docs/options.md: every registered learner's and circuit's declared options."""
    from bioplaus import registry

    parts = ["# Options of every learner and circuit", "",
             "Generated from the declarations (`Options` beside each class) by "
             "`bioplaus list --markdown > docs/options.md`; a test keeps it current. Set an option "
             "with `learner.NAME=VALUE` / `circuit.NAME=VALUE`.", ""]
    for kind, table in (("learner", registry.learners()), ("circuit", registry.circuits())):
        for name, cls in table.items():
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            parts += [f"## {kind} `{name}`", "", doc, "", options_table(cls, markdown=True), ""]
    return "\n".join(parts)


def list_command(args: list[str]) -> None:
    """``bioplaus list`` (everything), ``bioplaus list NAME`` (one learner's or circuit's options),
    ``bioplaus list --markdown`` (the options of all, as docs/options.md)."""
    from bioplaus import registry

    if args == ["--markdown"]:
        print(options_markdown())
        return
    if not args:
        list_all()
        return
    for name in args:
        learners, circuits = registry.learners(), registry.circuits()
        if name not in learners and name not in circuits:
            raise UsageError(f"'{name}' is neither a learner nor a circuit. Learners: {', '.join(learners)}; "
                             f"circuits: {', '.join(circuits)}.")
        for kind, table in (("learner", learners), ("circuit", circuits)):
            if name in table:
                cls = table[name]
                doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
                print(f"{kind} {name}: {doc}\noptions ({kind}.NAME=VALUE): name, default, allowed, meaning")
                print(options_table(cls))


def list_all() -> None:
    from bioplaus import registry
    from bioplaus.config import group_options

    learners = registry.learners()
    circuits = registry.circuits()
    print("learners:")
    for name, cls in learners.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"  {name:<18} circuits: {', '.join(c for c in circuits if cls.supports(c)):<24} {doc}")
    print("circuits:")
    for name, cls in circuits.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"  {name:<18} {doc}")
    print("data:")
    for name in registry.datasets():
        print(f"  {name}")
    print("experiments:")
    for name in group_options("experiment"):
        print(f"  {name}")
    from bioplaus.sweep import available

    print("sweeps (bioplaus sweep NAME --local):")
    for name in available():
        print(f"  {name}")
    print("compatibility (learner × circuit, + = supported):")
    names = list(circuits)
    width = max(len(n) for n in learners) + 2
    print(" " * (width + 2) + " ".join(names))
    for name, row in registry.compatibility().items():
        marks = " ".join(("+" if row[c] else ".").center(len(c)) for c in names)
        print(f"  {name:<{width}}{marks}")


# -- compare ------------------------------------------------------------------------------------

#: columns of `bioplaus compare`; ``test`` and ``best_val`` are the run's monitored ``metric``
#: (summary keys ``test_<metric>``, ``best_val_<metric>``)
COMPARE_COLUMNS = ("learner", "circuit", "data", "seed", "status", "epochs_completed", "metric", "test",
                   "best_val", "train_seconds", "samples_per_second", "peak_memory_bytes")


def _plot_option(args: list[str]) -> tuple[list[str], str | None]:
    """(run paths, FILE of ``--plot FILE`` or None) of a `bioplaus compare` command line."""
    paths, plot = [], None
    i = 0
    while i < len(args):
        if args[i] == "--plot":
            if i + 1 >= len(args):
                raise UsageError("--plot needs a FILE (e.g. --plot curves.png).")
            plot, i = args[i + 1], i + 1
        elif args[i].startswith("-"):
            raise UsageError(f"unknown option '{args[i]}' of bioplaus compare. "
                             "usage: bioplaus compare RUN_DIR... [--plot FILE]")
        else:
            paths.append(args[i])
        i += 1
    return paths, plot


def _run_dirs(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        path = Path(p)
        if (path / "summary.json").is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(s.parent for s in path.rglob("summary.json"))
        else:
            raise UsageError(f"'{p}' is neither a run directory (with summary.json) nor a folder of runs.")
    if not found:
        raise UsageError(f"no summary.json found under {', '.join(paths)}.")
    return found


def compare(args: list[str]) -> None:
    """Print one row per run: the headline figures of each summary.json; with ``--plot FILE``,
    also draw the runs' validation curves and test metric into FILE (`bioplaus.plots`)."""
    import json

    paths, plot = _plot_option(args)
    if not paths:
        raise UsageError("compare needs at least one RUN_DIR.")
    run_dirs = _run_dirs(paths)
    rows = []
    for run_dir in run_dirs:
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{run_dir / 'summary.json'} cannot be read as JSON ({e}).") from None
        if not isinstance(summary, dict):
            raise UsageError(f"{run_dir / 'summary.json'} holds no mapping; it is not a run summary.")
        row = {"run": run_dir.name}
        # the monitored metric of each run: accuracy for classifiers, a named readout's accuracy
        # (trainer.monitor), overlap for memory tasks
        monitor = summary.get("monitor", "accuracy")
        figures = {"metric": monitor, "test": summary.get(f"test_{monitor}"),
                   "best_val": summary.get(f"best_val_{monitor}")}
        for key in COMPARE_COLUMNS:
            value = figures[key] if key in figures else summary.get(key)
            if key == "peak_memory_bytes" and isinstance(value, (int, float)):
                key, value = "peak_mem_mib", round(value / 2**20)
            elif isinstance(value, float):
                value = round(value, 4)
            row[key] = "" if value is None else value
        rows.append(row)
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    print("  ".join(h.ljust(widths[h]) for h in headers))
    for row in rows:
        print("  ".join(str(row[h]).ljust(widths[h]) for h in headers))
    if plot is not None:
        from bioplaus.plots import draw_comparison

        print(f"picture: {draw_comparison(run_dirs, plot)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "run":
        run(rest)
    elif command in ("list", "compare", "sweep", "bench", "export"):
        handler = {"list": list_command, "compare": compare, "sweep": sweep, "bench": bench,
                   "export": lambda a: __import__("bioplaus.export_brian2").export_brian2.main(a)}[command]
        try:
            handler(rest)
        except UsageError as e:
            _error(str(e))
    else:
        _error(f"unknown command '{command}'. Valid commands: run, sweep, bench, list, compare, export.")


if __name__ == "__main__":
    main()
