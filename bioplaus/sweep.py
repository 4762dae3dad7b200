"""``bioplaus sweep FILE [--local] [--count N] [OVERRIDES...]``: W&B sweeps over ``bioplaus run``.

A sweep file is a W&B sweep spec: ``method`` (grid | random | bayes), ``metric`` (a key of the
runs' ``summary.json``, e.g. ``best_val_accuracy``, and ``goal``), ``parameters`` (flat config
keys such as ``learner.lr``, each with ``value``, ``values`` or a distribution) and a ``command``
that runs ``bioplaus run ... ${args_no_hyphens}``. FILE is a path or the name of a file in
``configs/sweeps/``.

* Without ``--local`` the sweep is registered with W&B and a ``wandb agent`` runs it: each run
  logs to the sweep (the spec's command carries ``logger=wandb``). Needs an API key.
* With ``--local`` the same spec runs here with no server: the W&B sweep engine (the ``sweeps``
  package of ``wandb[sweeps]``) proposes each run from the results so far — grid, random and
  bayes alike — and each run is a ``bioplaus run`` subprocess writing into the sweep folder
  ``runs/sweeps/<date>/<time>_<name>/NNN/``. The folder also holds ``sweep.yaml`` (the spec),
  ``sweep.jsonl`` (one record per run: parameters, status, metric, run directory) and
  ``summary.json`` (the best run). A run that fails or diverges is recorded and the sweep goes
  on; a run refused as bad input (exit 2) stops the sweep. ``bioplaus sweep --resume SWEEP_DIR``
  continues a local sweep that was stopped: it replays the recorded runs to the sweep engine,
  continues a run that was cut off from its checkpoint, and goes on.

OVERRIDES after FILE apply to every run (``device=cuda``, ``data.root=DIR``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import re
import subprocess
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from bioplaus.errors import RunFailed, UsageError

SWEEP_DIR = Path(str(resources.files("bioplaus.configs") / "sweeps"))
METHODS = ("grid", "random", "bayes")
ARGS = "${args_no_hyphens}"


def default_metric(overrides: list[str]) -> dict[str, str]:
    """The metric of a spec that names none: ``best_val_<monitor>`` of the runs' learner, the
    metric their ``summary.json`` calls ``monitor`` (``trainer.monitor`` or the learner's own),
    with its direction."""
    from bioplaus import registry
    from bioplaus.config import compose

    cfg = compose(overrides, check=False)
    metric, mode = registry.get_learner(str(cfg.learner.name)).monitor
    if cfg.trainer.get("monitor") is not None and str(cfg.trainer.monitor) != metric:
        metric, mode = str(cfg.trainer.monitor), "max"
    mode = str(cfg.trainer.get("monitor_mode") or mode)
    return {"name": f"best_val_{metric}", "goal": "maximize" if mode == "max" else "minimize"}


def _sweeps_package() -> Any:
    with warnings.catch_warnings():  # the package's pydantic models warn on import
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def available() -> list[str]:
    return sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")) if SWEEP_DIR.is_dir() else []


def resolve(name_or_path: str) -> Path:
    """The sweep file: an existing path, else ``configs/sweeps/NAME.yaml``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = SWEEP_DIR / f"{path.stem if path.suffix == '.yaml' else name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    names = ", ".join(available()) or "none"
    raise UsageError(f"no sweep file '{name_or_path}': it is neither a file nor a packaged sweep. "
                     f"Packaged sweeps: {names}.")


#: strings Hydra reads back as the same string without quotes
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./]*")
_KEYWORDS = {"null", "true", "false", "nan", "inf", "none"}


def plain(value: Any) -> Any:
    """``value`` as a plain Python value: numpy scalars (the sweep engine's proposals) become
    int/float/bool/str, containers recursively."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    return value


def format_value(value: Any) -> str:
    """A parameter value as Hydra override syntax: one value, never a sweep; strings other than
    plain names are quoted (``'data/a,b'``), so commas, spaces and brackets stay characters."""
    value = plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, str):
        if _BARE.fullmatch(value) and value.lower() not in _KEYWORDS:
            return value
        # Hydra's quoted strings: a backslash escapes only a quote or a backslash before a quote
        return "'" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"
    return str(value)


def overrides_of(config: dict[str, Any]) -> list[str]:
    """``key=value`` overrides of one proposed run (``{"learner.lr": {"value": 1e-3}}``)."""
    return [f"{key}={format_value(entry['value'])}" for key, entry in config.items()]


def _sample_values(entry: dict[str, Any]) -> list[Any]:
    """Values of a parameter to check the key and type with: listed ones, or its bounds."""
    if "value" in entry:
        return [entry["value"]]
    if "values" in entry:
        return list(entry["values"])
    return [entry[k] for k in ("min", "max") if k in entry][:1]


def load(path: Path, extra_overrides: list[str]) -> dict[str, Any]:
    """The spec of ``path``, checked: its schema, its method, and every parameter and extra
    override as a config key with a value of the right type (`UsageError` otherwise)."""
    from bioplaus.config import check_overrides

    spec, params = _read_spec(path)
    if "program" in spec:
        raise UsageError(f"sweep file {path}: 'program' is not used; a bioplaus sweep runs "
                         f"`bioplaus run` (its 'command').")
    program, fixed = check_command(path, spec.get("command", ["bioplaus", "run", "logger=wandb", ARGS]))
    spec["command"] = [*program, "run", *fixed, ARGS]  # rebuilt from the checked parts
    _check_metric(path, spec, params, [*fixed, *extra_overrides])
    checked = [f"{key}={format_value(v)}" for key, entry in params.items() for v in _sample_values(entry)]
    for override in [*checked, *fixed]:
        if "${" in override:
            raise UsageError(f"sweep file {path}: '{override}' holds an interpolation; a sweep file "
                             f"gives plain values only.")
    check_single([*checked, *fixed, *extra_overrides])
    check_overrides([*checked, *fixed, *extra_overrides])
    _check_with_engine(path, spec)
    return spec


def _read_spec(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The spec as a mapping with a known method and flat parameters, and its parameters."""
    spec = read_yaml(path, "sweep file")
    if not isinstance(spec, dict):
        raise UsageError(f"sweep file {path} must hold a mapping (method, metric, parameters, command).")
    method = spec.get("method")
    if method not in METHODS:
        raise UsageError(f"sweep file {path}: method must be one of {', '.join(METHODS)}; got {method!r}.")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise UsageError(f"sweep file {path}: 'parameters' must map config keys to their values.")
    for key, entry in params.items():
        if not isinstance(entry, dict) or "parameters" in entry:
            raise UsageError(f"sweep file {path}: parameter '{key}' must be a flat config key "
                             "(learner.lr) with value, values or a distribution.")
    return spec, params


def _check_metric(path: Path, spec: dict[str, Any], params: dict[str, Any], fixed: list[str]) -> None:
    """Fill in the default metric (the runs' monitored one) and check name and goal."""
    if "metric" not in spec:
        first = [f"{key}={format_value(_sample_values(entry)[0])}" for key, entry in params.items()
                 if _sample_values(entry)]
        spec["metric"] = default_metric([*first, *fixed])
    metric = spec["metric"]
    if not isinstance(metric, dict) or "name" not in metric:
        raise UsageError(f"sweep file {path}: 'metric' needs a name (a summary.json key such as "
                         "best_val_accuracy) and a goal (maximize | minimize).")
    metric.setdefault("goal", "maximize")
    if metric["goal"] not in ("maximize", "minimize"):
        raise UsageError(f"sweep file {path}: metric goal must be maximize or minimize; "
                         f"got {metric['goal']!r}.")


def _check_with_engine(path: Path, spec: dict[str, Any]) -> None:
    """The W&B schema, then the sweep engine's own checks (bayes needs a parameter to search, grid
    needs listed values), which run when it proposes: ask it for a first run now, before anything
    is written, and check that run's overrides."""
    sweeps = _sweeps_package()
    try:
        sweeps.SweepConfig({k: v for k, v in spec.items() if k != "description"})
    except Exception as e:  # the schema's own error: name the first violation
        raise UsageError(f"sweep file {path} breaks the W&B sweep schema: "
                         f"{' '.join(str(e).split())[:400]}") from e
    states = random.getstate(), _numpy_state()
    try:
        first = sweeps.next_run(_engine_spec(spec), [])
    except Exception as e:
        raise UsageError(f"sweep file {path}: the W&B sweep engine refuses this spec: "
                         f"{' '.join(str(e).split())[:400]}") from None
    finally:
        random.setstate(states[0])
        _numpy_state(states[1])
    if first is not None:
        check_single(overrides_of(first.config))


def read_yaml(path: Path, what: str) -> Any:
    """The YAML file ``path`` as plain data (safe loader: a Python tag is an error, never code)."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.constructor.ConstructorError as e:
        raise UsageError(f"{what} {path} holds a tag bioplaus does not read "
                         f"({' '.join(str(e.problem).split())}): YAML files are read as plain data, "
                         f"and tags such as !!python/object are refused.") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{what} {path} is not valid YAML: {' '.join(str(e).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {path} cannot be read as UTF-8 text: {e}") from None


def _numpy_state(state: Any = None) -> Any:
    import numpy as np

    if state is None:
        return np.random.get_state()
    np.random.set_state(state)
    return state


def _engine_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "description"}


#: how a sweep command may start: the entry point, or the module, optionally after W&B's ${env}
PROGRAMS = (["bioplaus"], ["python", "-m", "bioplaus"], ["python3", "-m", "bioplaus"],
            ["${interpreter}", "-m", "bioplaus"])


def check_command(path: Path, command: Any) -> tuple[list[str], list[str]]:
    """(program, fixed overrides) of a sweep spec's ``command``, checked strictly: the program is
    `bioplaus` (or ``python -m bioplaus``, or W&B's ``${env}`` / ``${interpreter}`` macros before
    them), then ``run``, then ``key=value`` overrides only, then ``${args_no_hyphens}`` last.
    Anything else is a `UsageError`: the W&B agent would run it as written."""
    shape = (f"sweep file {path}: 'command' must be [bioplaus, run, KEY=VALUE..., {ARGS}] "
             f"(or start with python -m bioplaus, ${{env}}, ${{interpreter}} -m bioplaus)")
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise UsageError(f"{shape}; got {command!r}.")
    parts = list(command)
    prefix = [parts.pop(0)] if parts[:1] == ["${env}"] else []
    program = next((p for p in PROGRAMS if parts[:len(p)] == p), None)
    if program is None:
        raise UsageError(f"{shape}; its program is {' '.join(command[:3])!r}, which bioplaus does not "
                         f"run.")
    rest = parts[len(program):]
    if rest[:1] != ["run"] or rest[-1:] != [ARGS] or len(rest) < 2:
        raise UsageError(f"{shape}; got {command!r}.")
    fixed = rest[1:-1]
    for arg in fixed:
        if arg.startswith(("-", "$")) or "=" not in arg or arg == ARGS:
            raise UsageError(f"{shape}; '{arg}' is not a KEY=VALUE override.")
    return [*prefix, *program], fixed


def check_single(overrides: list[str]) -> None:
    """`UsageError` unless every override sets one value (no comma list, range or sweep)."""
    from bioplaus.config import _parse

    for override in _parse(overrides):
        if override.is_sweep_override():
            raise UsageError(f"'{override.input_line}' reads as several values (a Hydra sweep); a "
                             f"sweep parameter must give one value per run. Quote strings that hold "
                             f"commas, e.g. \"'a,b'\".")


def fixed_args(spec: dict[str, Any]) -> list[str]:
    """The overrides the spec's command gives every run (between ``run`` and the arguments)."""
    command = [str(c) for c in spec["command"]]
    return [c for c in command[command.index("run") + 1:] if "=" in c and not c.startswith("$")]


# -- local ----------------------------------------------------------------------------------------


def grid_size(spec: dict[str, Any]) -> int:
    """Runs in a grid: the product of the numbers of listed values (a fixed value counts once)."""
    return math.prod(len(entry.get("values", [None])) for entry in spec["parameters"].values())


def _metric_of(summary: dict[str, Any], name: str) -> float | None:
    value = summary.get(name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _best(records: list[dict[str, Any]], goal: str) -> dict[str, Any] | None:
    scored = [r for r in records if r["metric"] is not None]
    if not scored:
        return None
    return (max if goal == "maximize" else min)(scored, key=lambda r: r["metric"])


def start_local(path: Path, spec: dict[str, Any], count: int | None, extra_overrides: list[str],
                runs_root: Path, seed: int = 0) -> Path:
    """Run the sweep here, one ``bioplaus run`` subprocess per proposed run; returns its folder."""
    import yaml

    now = dt.datetime.now()
    sweep_dir = runs_root / "sweeps" / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{path.stem}"
    sweep_dir.mkdir(parents=True, exist_ok=False)
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    state = {"name": path.stem, "count": count, "overrides": list(extra_overrides), "seed": seed}
    (sweep_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    return _run_local(sweep_dir, spec, state)


def resume_local(sweep_dir: Path, count: int | None = None) -> Path:
    """Continue a local sweep that was stopped: recorded runs are kept, a run that was cut off
    continues from its checkpoint, and the sweep goes on to its count (or ``count``)."""
    if not (sweep_dir / "sweep.yaml").is_file() or not (sweep_dir / "state.json").is_file():
        raise UsageError(f"'{sweep_dir}' is not a local sweep folder (it needs sweep.yaml and state.json).")
    spec = read_yaml(sweep_dir / "sweep.yaml", "sweep record")
    try:
        state = json.loads((sweep_dir / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{sweep_dir / 'state.json'} cannot be read ({e}); the sweep cannot "
                         f"resume.") from None
    if count is not None:
        state["count"] = count
    print(f"sweep {state['name']}: resuming {sweep_dir}", flush=True)
    return _run_local(sweep_dir, spec, state)


def _read_records(sweep_dir: Path) -> list[dict[str, Any]]:
    """The runs recorded so far (a line cut off by a kill is dropped; its run is done again)."""
    path = sweep_dir / "sweep.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    if path.is_file():
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _run_local(sweep_dir: Path, spec: dict[str, Any], state: dict[str, Any]) -> Path:
    import numpy as np

    sweeps = _sweeps_package()
    name, count, extra_overrides = state["name"], state["count"], state["overrides"]
    metric, goal = spec["metric"]["name"], spec["metric"]["goal"]
    # the logger of the spec's command is for W&B-hosted sweeps; locally the runs log to disk
    fixed = [a for a in fixed_args(spec) if not a.startswith("logger=")]
    # random and bayes proposals draw from Python's and numpy's global generators
    random.seed(state["seed"])
    np.random.seed(state["seed"])
    records = _read_records(sweep_dir)
    proposed: list[Any] = []
    for record in records:  # replay the proposals, so a resumed sweep proposes what it would have
        run = sweeps.next_run(spec, proposed)
        config = {k: {"value": v} for k, v in record["parameters"].items()}
        if run is None or run.config != config:
            run = sweeps.SweepRun(config=config)
        _finish(sweeps, run, metric, record["metric"])
        proposed.append(run)
    total = str(count) if count is not None else str(grid_size(spec)) if spec["method"] == "grid" else "∞"
    try:
        while count is None or len(records) < count:
            run = sweeps.next_run(spec, proposed)
            if run is None:  # a grid is exhausted
                break
            index = len(records)
            run_dir = sweep_dir / f"{index:03d}"
            overrides = overrides_of(run.config)
            check_single(overrides)
            print(f"sweep {name}: run {index + 1}/{total}: {' '.join(overrides)}", flush=True)
            record = {"parameters": {k: plain(e["value"]) for k, e in run.config.items()},
                      **_run_one(run_dir, [*fixed, *overrides, *extra_overrides], metric, name, index)}
            _finish(sweeps, run, metric, record["metric"])
            proposed.append(run)
            records.append(record)
            with (sweep_dir / "sweep.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            shown = "—" if record["metric"] is None else f"{record['metric']:.4f}"
            print(f"  {record['status']}: {metric} {shown}", flush=True)
    except KeyboardInterrupt:
        raise RunFailed(f"sweep {name} interrupted after {len(records)} runs; continue it with "
                        f"`bioplaus sweep --resume {sweep_dir}`.", status="interrupted",
                        run_dir=str(sweep_dir)) from None
    best = _best(records, goal)
    (sweep_dir / "summary.json").write_text(json.dumps(
        {"sweep": name, "method": spec["method"], "metric": metric, "goal": goal, "seed": state["seed"],
         "runs": len(records), "completed": sum(r["status"] == "completed" for r in records),
         "best": best}, indent=2) + "\n")
    _print_table(records, metric, best)
    return sweep_dir


def _finish(sweeps: Any, run: Any, metric: str, value: float | None) -> None:
    """Tell the sweep engine how a run ended (bayes fits its model to these)."""
    run.state = sweeps.RunState.finished if value is not None else sweeps.RunState.failed
    run.summary_metrics = {metric: value} if value is not None else {}


def _run_one(run_dir: Path, overrides: list[str], metric: str, name: str, index: int) -> dict[str, Any]:
    """One run of the sweep into ``run_dir``: a new `bioplaus run`, or, where a run was cut off
    there, its continuation from the checkpoint. Returns its record, less the parameters."""
    import shutil

    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    if summary.get("status") in ("completed", "diverged", "failed"):
        returncode, stderr = 0, ""  # it ended before the sweep could record it
    else:
        if (run_dir / "checkpoints" / "last.pt").is_file():
            cmd = ["run", f"trainer.resume={run_dir}"]
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = ["run", *overrides, f"hydra.run.dir={run_dir}"]
        proc = subprocess.run([sys.executable, "-m", "bioplaus", *cmd], capture_output=True, text=True)
        returncode, stderr = proc.returncode, proc.stderr
        if returncode == 2:
            message = stderr.strip().removeprefix("bioplaus: error: ")
            raise UsageError(f"run {index + 1} of sweep {name} was refused ({' '.join(overrides)}): "
                             f"{message}")
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    if returncode == 0 and summary and metric not in summary:
        numbers = ", ".join(k for k, v in summary.items() if isinstance(v, float))
        raise UsageError(f"sweep {name}: metric '{metric}' is not in the runs' summary.json; "
                         f"keys there: {numbers}.")
    status = summary.get("status", "failed" if returncode else "completed")
    record = {"index": index, "status": status, "metric": _metric_of(summary, metric),
              "test_accuracy": summary.get("test_accuracy"), "train_seconds": summary.get("train_seconds"),
              "run_dir": str(run_dir)}
    if status != "completed":
        record["reason"] = summary.get("reason") or stderr.strip()[-500:]
    return record


def _print_table(records: list[dict[str, Any]], metric: str, best: dict[str, Any] | None) -> None:
    if not records:
        print("no runs were proposed.")
        return
    keys = list(records[0]["parameters"])
    rows = [[f"{r['index']:03d}", *(format_value(r["parameters"][k]) for k in keys), r["status"],
             "—" if r["metric"] is None else f"{r['metric']:.4f}"] for r in records]
    headers = ["run", *keys, "status", metric]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if best is not None:
        print(f"best: run {best['index']:03d}, {metric} {best['metric']:.4f} ({best['run_dir']})")


# -- W&B-hosted -------------------------------------------------------------------------------------


def has_wandb_key() -> bool:
    from bioplaus.tracking import _netrc_has_wandb

    return bool(os.environ.get("WANDB_API_KEY")) or _netrc_has_wandb()


def agent_command(sweep_id: str, count: int | None) -> list[str]:
    return [sys.executable, "-m", "wandb", "agent", *(["--count", str(count)] if count else []), sweep_id]


def run_wandb(path: Path, spec: dict[str, Any], count: int | None, extra_overrides: list[str],
              project: str, entity: str | None) -> str:
    """Register the sweep with W&B and run an agent on it here; returns the sweep's id path."""
    if not has_wandb_key():
        raise UsageError("`bioplaus sweep` without --local registers the sweep with W&B and needs "
                         "an API key (WANDB_API_KEY or `wandb login`); none is set. Run it here "
                         "without a server with `bioplaus sweep FILE --local`.")
    import wandb

    command = [str(c) for c in spec["command"]]
    at = command.index(ARGS)
    spec = {**spec, "command": [*command[:at], *extra_overrides, *command[at:]]}
    spec.pop("description", None)
    sweep_id = wandb.sweep(spec, project=project, entity=entity)
    full_id = "/".join(p for p in (entity, project, sweep_id) if p)
    print(f"sweep {path.stem}: registered as {full_id}; starting an agent", flush=True)
    proc = subprocess.run(agent_command(full_id, count))
    if proc.returncode != 0:
        raise UsageError(f"the W&B agent of sweep {full_id} exited with code {proc.returncode}.")
    return full_id
