"""Config composition and validation.

`compose(overrides)` builds the run config from the YAML groups in ``bioplaus.configs`` with
Hydra's compose API (no ``@hydra.main`` needed, so notebooks and tests use it too), then
`validate` checks it. Every problem becomes a `UsageError` whose message names the valid choices:
unknown group option, unknown key, wrong type, bad value, incompatible learner×circuit, missing
data, unwritable runs root.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from bioplaus.errors import UsageError
from bioplaus.optim import LR_SCHEDULES

CONFIG_MODULE = "bioplaus.configs"
GROUPS = ("learner", "circuit", "data", "trainer", "logger", "experiment")
#: hydra command-line flags that take a value (skipped when checking overrides)
HYDRA_FLAGS_WITH_VALUE = {
    "--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
    "--config-dir", "-cd", "--info", "-i", "--shell-completion", "-sc",
}


def group_options(group: str) -> list[str]:
    """Names of the YAML options of a config group (``learner`` -> ``backprop``, ...)."""
    folder = resources.files(CONFIG_MODULE) / group
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise UsageError(f"could not parse the overrides {list(overrides)}: {e}") from None


def _hydra_compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except Exception as e:  # hydra's composition errors carry a readable message
        text = " ".join(str(e).split())
        raise UsageError(f"invalid config: {text}") from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra", None)
    return cfg


def _sweep_values(override: Any) -> list[Any]:
    if override.is_sweep_override():
        try:
            return list(override.sweep_iterator())
        except Exception:
            return []
    return [override.value()]


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list"}.get(type(value), type(value).__name__)


def _check_type(key: str, reference: Any, value: Any) -> None:
    """Raise when ``value`` does not fit the type of the default ``reference`` for ``key``."""
    from omegaconf import DictConfig, ListConfig

    if reference is None or value is None:
        return
    if isinstance(reference, bool):
        ok = isinstance(value, bool)
    elif isinstance(reference, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(reference, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(reference, (list, ListConfig)):
        ok = isinstance(value, list)
    elif isinstance(reference, (dict, DictConfig)):
        ok = isinstance(value, dict)
    else:
        ok = not isinstance(value, (list, dict))
    if not ok:
        raise UsageError(
            f"{key} must be {_type_name(reference if not isinstance(reference, ListConfig) else [])}; "
            f"got {value!r}."
        )


def _check_overrides(parsed: list[Any], base: Any) -> None:
    """Unknown group options, unknown keys and wrong types, against the composed defaults."""
    from omegaconf import OmegaConf

    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete():
            continue
        if key in GROUPS:  # a group selection: learner=NAME
            choices = group_options(key)
            for value in _sweep_values(o):
                if value is not None and str(value) not in choices and not (key == "experiment"
                                                                            and value == "null"):
                    kind = "experiment" if key == "experiment" else key
                    raise UsageError(
                        f"unknown {kind} '{value}'. Valid {kind}s: {', '.join(choices) or '(none)'}."
                    )
            continue
        if o.is_add():
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if node is None or not OmegaConf.is_dict(node) or leaf not in node:
            where = f"'{parent}'" if parent else "the top level"
            valid = ", ".join(str(k) for k in node) if OmegaConf.is_dict(node) else ""
            hint = f" Valid keys of {where}: {valid}." if valid else ""
            raise UsageError(
                f"unknown config key '{key}'.{hint} (Use +{key}=VALUE to add a new key on purpose.)"
            )
        reference = node[leaf]
        for value in _sweep_values(o):
            _check_type(key, OmegaConf.to_object(reference) if OmegaConf.is_config(reference)
                        else reference, value)


def check_overrides(overrides: Sequence[str]) -> None:
    """Check overrides (sweeps included) for unknown group options, unknown keys and wrong types.

    Keys and types are checked against the defaults composed for the chosen groups alone.
    """
    from bioplaus.guards import refuse_unsafe_overrides

    refuse_unsafe_overrides(overrides)
    parsed = _parse(overrides)
    _check_overrides([o for o in parsed if o.key_or_group in GROUPS], None)
    groups = [o.input_line for o in parsed
              if o.key_or_group in GROUPS and not o.is_sweep_override() and not o.is_delete()]
    if any(o.key_or_group not in GROUPS for o in parsed):
        _check_overrides(parsed, _hydra_compose(groups))


def compose(overrides: Sequence[str] = (), *, check: bool = True) -> Any:
    """The run config for these Hydra-style overrides (``["learner=mono_forward", "seed=1"]``).

    Returns an OmegaConf ``DictConfig``. With ``check`` (default) it is validated with `validate`.
    """
    overrides = [str(o) for o in overrides]
    check_overrides(overrides)
    cfg = _hydra_compose(overrides)
    if check:
        validate(cfg)
    return cfg


# -- semantic validation ------------------------------------------------------------------------


def _positive_int(cfg: Any, key: str) -> None:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"{key} must be a positive integer; got {value!r}.")


def constructor_keys(cls: type) -> tuple[list[str], bool]:
    """Keyword arguments a learner/circuit constructor accepts, and whether it takes **kwargs."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def _check_keys(kind: str, cls: type, section: Any, skip: set[str]) -> None:
    declared = getattr(cls, "Options", None)
    if declared is not None and declared.fields():  # options declared once (bioplaus.options)
        declared.parse(f"{kind} '{section.name}'", {k: v for k, v in section.items()})
        return
    names, var_kw = constructor_keys(cls)
    if var_kw:
        return
    accepted = [n for n in names if n not in skip]
    for key in section:
        if key == "name":
            continue
        if key not in accepted:
            raise UsageError(
                f"{kind} '{section.name}' has no option '{key}'. Its options: {', '.join(accepted)}."
            )


def check_runs_root(root: str | Path) -> Path:
    """Prove the runs root writable (or creatable) without creating it; `UsageError` if it is not."""
    path = Path(os.path.expanduser(str(root)))
    try:  # nothing is created here: the run creates its folder once the config is valid
        existing = path.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a directory", str(existing))
        if existing != path.absolute() and not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(13, "permission denied", str(existing))
        if existing == path.absolute():
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
                pass
    except OSError as e:
        raise UsageError(
            f"the runs root '{path}' is not writable ({e.strerror or e}). "
            f"Choose another with paths.runs=DIR."
        ) from None
    return path


def validate(cfg: Any, *, check_data: bool = True, check_paths: bool = True) -> None:
    """Raise `UsageError` for anything that would make the run fail before it starts."""
    from bioplaus import data as data_module
    from bioplaus import registry

    learner_cls = registry.get_learner(str(cfg.learner.name))
    circuit_cls = registry.get_circuit(str(cfg.circuit.name))
    registry.get_dataset(str(cfg.data.name))
    registry.check_compatible(str(cfg.learner.name), str(cfg.circuit.name))
    _check_keys("learner", learner_cls, cfg.learner, {"circuit", "task"})
    _check_keys("circuit", circuit_cls, cfg.circuit, {"task", "head"})
    for key in ("trainer.epochs", "trainer.batch_size", "trainer.eval_batch_size",
                "trainer.divergence_check_every"):
        _positive_int(cfg, key)
    patience = cfg.trainer.get("early_stopping_patience")
    if patience is not None and (not isinstance(patience, int) or patience <= 0):
        raise UsageError(f"trainer.early_stopping_patience must be null or a positive integer; "
                         f"got {patience!r}.")
    threads = cfg.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0):
        raise UsageError(f"threads must be null (all cores) or a positive integer; got {threads!r}.")
    if not isinstance(cfg.get("plots", True), bool):
        raise UsageError(f"plots must be true or false; got {cfg.plots!r}.")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise UsageError(f"seed must be an integer; got {cfg.seed!r}.")
    if cfg.device not in ("auto", "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise UsageError(f"device must be auto, cpu or cuda; got '{cfg.device}'.")
    if str(cfg.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError("device=cuda was asked for but no CUDA device is available; "
                             "use device=auto or device=cpu.")
    if cfg.runtime.cuda_graphs not in ("auto", "on", "off"):
        raise UsageError(f"runtime.cuda_graphs must be auto, on or off; got '{cfg.runtime.cuda_graphs}'.")
    if cfg.trainer.progress not in ("auto", "bar", "lines", "none"):
        raise UsageError(f"trainer.progress must be auto, bar, lines or none; got '{cfg.trainer.progress}'.")
    if cfg.trainer.get("select", "last") not in ("last", "best_val"):
        raise UsageError(f"trainer.select must be last or best_val; got '{cfg.trainer.select}'.")
    if cfg.trainer.get("monitor_mode") not in (None, "max", "min"):
        raise UsageError(f"trainer.monitor_mode must be null, max or min; got '{cfg.trainer.monitor_mode}'.")
    if cfg.trainer.get("lr_schedule", "constant") not in LR_SCHEDULES:
        raise UsageError(f"trainer.lr_schedule must be one of {', '.join(LR_SCHEDULES)}; "
                         f"got '{cfg.trainer.lr_schedule}'.")
    if cfg.logger.name not in ("none", "wandb"):
        raise UsageError(f"unknown logger '{cfg.logger.name}'. Valid loggers: none, wandb.")
    if check_data:
        data_module.check_available(cfg.data)
    if check_paths and not cfg.trainer.get("resume"):
        check_runs_root(cfg.paths.runs)
    resume = cfg.trainer.get("resume")
    if resume and not (Path(str(resume)) / "checkpoints" / "last.pt").exists():
        raise UsageError(f"trainer.resume={resume}: no checkpoints/last.pt there to resume from. "
                         f"Give the run directory of an earlier run.")
