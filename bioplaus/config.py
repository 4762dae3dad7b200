"""Config composition and validation.

`compose(overrides)` builds the run config from the YAML groups in ``bioplaus.configs`` with
Hydra's compose API (no ``@hydra.main`` needed, so notebooks and tests use it too), then
`validate` checks it. Every problem becomes a `UsageError` whose message names the valid choices:
unknown group option, unknown key, wrong type, bad value, incompatible learner×circuit, missing
data, unwritable runs root.
"""

from __future__ import annotations

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


def _declared_only(key: str, value: Any) -> bool:
    """Whether ``key=value`` selects a learner or circuit that a plugin registered without a YAML
    in ``bioplaus.configs`` (its config section then comes from its declaration alone)."""
    if key not in DECLARED_SECTIONS or value is None or str(value) in group_options(key):
        return False
    from bioplaus import registry

    table = registry.learners() if key == "learner" else registry.circuits()
    return str(value) in table


def _check_group_choice(o: Any) -> None:
    """A group selection (``learner=NAME``) names an existing YAML of that group, or a learner or
    circuit registered by a plugin."""
    key = o.key_or_group
    choices = group_options(key)
    for value in _sweep_values(o):
        if value is None or str(value) in choices or (key == "experiment" and value == "null"):
            continue
        if _declared_only(key, value):
            continue
        if key in DECLARED_SECTIONS:
            from bioplaus import registry

            table = registry.learners() if key == "learner" else registry.circuits()
            choices = sorted(set(choices) | set(table))
        raise UsageError(f"unknown {key} '{value}'. Valid {key}s: {', '.join(choices) or '(none)'}.")


def _section_from_declaration(cfg: Any, key: str, name: str) -> None:
    """Fill ``cfg[key]`` with ``name`` and its declared defaults (a plugin without a YAML); a
    learner whose circuit is not one it trains gets the first circuit it names."""
    from omegaconf import OmegaConf

    from bioplaus import registry

    cls = registry.get_learner(name) if key == "learner" else registry.get_circuit(name)
    cfg[key] = OmegaConf.create({"name": name, **cls.Options.defaults()})
    if key == "learner" and not cls.supports(str(cfg.circuit.name)) and cls.circuits:
        circuit = registry.get_circuit(cls.circuits[0])
        cfg.circuit = OmegaConf.create({"name": circuit.name, **circuit.Options.defaults()})


#: config sections whose values are checked by a declaration (`bioplaus.options`), not by the
#: type of the YAML default
DECLARED_SECTIONS = ("learner", "circuit")


def _check_declared(key: str, base: Any, values: list[Any]) -> None:
    """Each value of ``learner.X`` / ``circuit.X`` against the declaration of the learner or
    circuit that ``base`` selects (field by field; `validate` checks the whole section)."""
    from bioplaus import registry

    section, _, rest = key.partition(".")
    name = str(base[section].name)
    table = registry.learners() if section == "learner" else registry.circuits()
    if name not in table or not rest:
        return
    for value in values:
        table[name].Options.check_value(rest.split("."), value)


def _check_overrides(parsed: list[Any], base: Any, declared: bool = True) -> None:
    """Unknown group options, unknown keys and wrong types, against the composed defaults;
    with ``declared``, values of learner and circuit options against their declarations."""
    from omegaconf import OmegaConf

    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete():
            continue
        if key in GROUPS:
            _check_group_choice(o)
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
        if key.split(".", 1)[0] in DECLARED_SECTIONS:  # the declaration checks the value
            if declared:
                _check_declared(key, base, _sweep_values(o))
            continue
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
    Hydra composes once: the group selections (``learner=NAME``) pick the YAML files, then every
    ``key=value`` override is checked against the composed defaults (unknown key, wrong type) and
    applied with Hydra's own override semantics (``+key``, ``++key``, ``~key``).
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from bioplaus.guards import refuse_unsafe_overrides

    refuse_unsafe_overrides([str(o) for o in overrides])  # nothing that would import code or copy secrets
    parsed = _parse([str(o) for o in overrides])
    groups = [o for o in parsed if o.key_or_group in GROUPS]
    values = [o for o in parsed if o.key_or_group not in GROUPS and not o.key_or_group.startswith("hydra")]
    for o in groups:
        if not o.is_delete():
            _check_group_choice(o)
    declared = [o for o in groups if not o.is_delete() and _declared_only(o.key_or_group, o.value())]
    cfg = _hydra_compose([o.input_line for o in groups if o not in declared])
    for o in declared:  # plugins without a YAML: the section comes from the declaration
        _section_from_declaration(cfg, o.key_or_group, str(o.value()))
    _check_overrides(values, cfg, declared=not check)  # with check, `validate` parses the sections
    OmegaConf.set_struct(cfg, True)
    try:
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    except ConfigCompositionException as e:
        raise UsageError(f"invalid config: {' '.join(str(e).split())}") from None
    finally:
        OmegaConf.set_struct(cfg, False)
    if check:
        validate(cfg)
    return cfg


# -- semantic validation ------------------------------------------------------------------------


def _positive_int(cfg: Any, key: str) -> None:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"{key} must be a positive integer; got {value!r}.")


def check_runs_root(root: str | Path) -> Path:
    """Prove the runs root writable (or creatable) without leaving anything behind; `UsageError` if
    it is not. The probe creates (and removes) a file in the root, or a folder in its nearest
    existing parent: permission bits alone would pass a root user, or a parent such as /proc where
    nothing can be created."""
    path = Path(os.path.expanduser(str(root)))
    try:  # nothing is created here: the run creates its folder once the config is valid
        existing = path.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a directory", str(existing))
        if existing != path.absolute():  # a folder made and removed where the root would go
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-test-"))
        else:
            handle, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
            os.close(handle)
            os.remove(probe)  # a file made and removed: the folder is writable
    except OSError as e:
        raise UsageError(
            f"the runs root '{path}' is not writable ({e.strerror or e}). "
            f"Choose another with paths.runs=DIR."
        ) from None
    return path


def validate(cfg: Any, *, check_data: bool = True, check_paths: bool = True) -> None:
    """Raise `UsageError` for anything that would make the run fail before it starts.

    The learner's and circuit's sections are parsed by their declarations (`bioplaus.options`):
    unknown keys, wrong types and out-of-range values are refused there, naming the key, the value
    and what is allowed.
    """
    from bioplaus import registry

    learner_cls = registry.get_learner(str(cfg.learner.name))
    circuit_cls = registry.get_circuit(str(cfg.circuit.name))
    registry.get_dataset(str(cfg.data.name))
    registry.check_compatible(str(cfg.learner.name), str(cfg.circuit.name))
    learner_options = learner_cls.Options.parse(f"learner '{cfg.learner.name}'", cfg.learner)
    circuit_cls.Options.parse(f"circuit '{cfg.circuit.name}'", cfg.circuit)
    _check_trainer(cfg)
    _check_machine(cfg)
    schedule = cfg.trainer.get("lr_schedule", "constant")
    if schedule != "constant" and learner_cls.schedules_lr(learner_options):
        raise UsageError(f"trainer.lr_schedule={schedule} and the learner's own learning-rate schedule "
                         f"({learner_cls.lr_schedule_keys}) would both set the learning rate. Use one: "
                         f"trainer.lr_schedule=constant, or the learner's schedule off.")
    if cfg.logger.name not in ("none", "wandb"):
        raise UsageError(f"unknown logger '{cfg.logger.name}'. Valid loggers: none, wandb.")
    if check_data:
        from bioplaus import data as data_module

        data_module.check_available(cfg.data)
    _check_paths(cfg, check_paths)


def _check_trainer(cfg: Any) -> None:
    for key in ("trainer.epochs", "trainer.batch_size", "trainer.eval_batch_size",
                "trainer.divergence_check_every"):
        _positive_int(cfg, key)
    patience = cfg.trainer.get("early_stopping_patience")
    if patience is not None and (not isinstance(patience, int) or patience <= 0):
        raise UsageError(f"trainer.early_stopping_patience must be null or a positive integer; "
                         f"got {patience!r}.")
    choices = {"progress": ("auto", "bar", "lines", "none"), "select": ("last", "best_val"),
               "monitor_mode": (None, "max", "min"), "lr_schedule": LR_SCHEDULES}
    for key, allowed in choices.items():
        value = cfg.trainer.get(key, allowed[0])
        if value not in allowed:
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise UsageError(f"trainer.{key} must be one of {shown}; got '{value}'.")


def _check_machine(cfg: Any) -> None:
    from bioplaus import allocator

    allocator.setting()  # BIOPLAUS_MALLOC
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


def _check_paths(cfg: Any, check_paths: bool) -> None:
    resume = cfg.trainer.get("resume")
    if check_paths and not resume:
        check_runs_root(cfg.paths.runs)
    if resume and not (Path(str(resume)) / "checkpoints" / "last.pt").exists():
        raise UsageError(f"trainer.resume={resume}: no checkpoints/last.pt there to resume from. "
                         f"Give the run directory of an earlier run.")
