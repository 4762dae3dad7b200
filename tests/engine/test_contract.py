"""The core contract: options declared once and refused by their declaration, one composition and
one validation per run, bugs reported as failed runs, one owner per learning-rate schedule,
checkpoints of earlier versions, plugins through entry points."""

from __future__ import annotations

import copy
import json
import os
import textwrap
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import bioplaus
from bioplaus import config, registry
from bioplaus.errors import RunFailed, UsageError
from bioplaus.options import Options
from tests.helpers import cli_in_process, last_line, run_cli, summary_of

CONFIGS = Path(bioplaus.__file__).parent.parent / "configs"
QUICK = ["device=cpu", "threads=1", "trainer.progress=none"]


# -- every declared option refused by its declaration -----------------------------------------------


def _wrong_type(annotation: Any) -> Any:
    """A value of the wrong type for ``annotation``."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return 12345
    if get_origin(annotation) is list:
        return "not-a-list"
    if isinstance(annotation, type) and issubclass(annotation, Options):
        return 5
    if args and get_origin(annotation) is not Literal:  # X | None, X | Y | None
        return 3.5 if all(a in (str, int) or get_origin(a) is list for a in args) else "not-a-number"
    if annotation is dict or get_origin(annotation) is dict:
        return "not-a-mapping"
    return {bool: "yes", int: 1.5, float: "not-a-number", str: 12345}.get(annotation, {"not": "this"})


def _out_of_range(field: Any) -> Any | None:
    """A value of the right type outside the declared range or choices; None when unbounded."""
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return "not-a-choice"
    if get_origin(annotation) is list:
        item = get_args(annotation)[0] if get_args(annotation) else None
        for m in getattr(item, "__metadata__", ()):
            if getattr(m, "gt", None) is not None:
                return [m.gt]
        for m in field.metadata:
            if getattr(m, "min_length", None):
                return []
        return None
    integer = annotation is int or int in get_args(annotation)
    for m in field.metadata:
        for attr, step in (("gt", 0), ("ge", -1), ("lt", 0), ("le", 1)):
            bound = getattr(m, attr, None)
            if bound is not None:
                value = bound + step if integer else bound + (0.5 * step if step else 0.0)
                return int(value) if integer else float(value)
        if getattr(m, "multiple_of", None):
            return 3
    return None


def _cases(declaration: type[Options], prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted option, bad value, kind) for every option of a declaration, nested ones included."""
    cases = []
    for name, field in declaration.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Options):
            cases += _cases(annotation, f"{prefix}{name}.")
        cases.append((f"{prefix}{name}", _wrong_type(annotation), "type"))
        bad = _out_of_range(field)
        if bad is not None:
            cases.append((f"{prefix}{name}", bad, "range"))
    return cases


def _base_config(section: str, name: str) -> Any:
    if section == "learner":
        return config.compose([f"learner={name}"], check=False)
    learner = next(lname for lname, cls in registry.learners().items() if cls.supports(name))
    return config.compose([f"learner={learner}", f"circuit={name}"], check=False)


def _allowed(declaration: type[Options], dotted: str) -> str:
    *outer, leaf = dotted.split(".")
    for part in outer:
        declaration = declaration.model_fields[part].annotation
    return declaration.allowed(leaf)


@pytest.mark.parametrize("section", ["learner", "circuit"])
def test_every_declared_option_refuses_a_wrong_type_and_an_out_of_range_value(section: str) -> None:
    table = registry.learners() if section == "learner" else registry.circuits()
    checked = 0
    for name, cls in table.items():
        base = _base_config(section, name)
        config.validate(base, check_data=False, check_paths=False)  # the defaults are valid
        for dotted, value, kind in _cases(cls.Options):
            cfg = copy.deepcopy(base)
            OmegaConf.update(cfg, f"{section}.{dotted}", value, force_add=True)
            with pytest.raises(UsageError) as error:
                config.validate(cfg, check_data=False, check_paths=False)
            message = str(error.value)
            assert f"{section}.{dotted} must be {_allowed(cls.Options, dotted)}" in message, \
                (name, dotted, kind, value, message)
            checked += 1
    assert checked > 50


BAD_OPTIONS = [
    (["learner=mono_forward", "learner.lr=-1"], "learner.lr must be a number > 0; got -1"),
    (["learner=forward_forward", "learner.norm=l3"], "learner.norm must be one of rms, l2; got 'l3'"),
    (["learner=backprop", "circuit=g2g", "circuit.dst.every=0"], "circuit.dst.every must be an integer ≥ 1"),
    (["learner=tpsgd", "circuit.bias=yes"], "circuit.bias must be a boolean; got 'yes'"),
]


@pytest.mark.parametrize("overrides, expected", BAD_OPTIONS)
def test_bad_options_exit_2_naming_key_value_and_allowed(overrides: list[str], expected: str,
                                                          tmp_path: Path) -> None:
    result = cli_in_process("run", *overrides, *QUICK, f"paths.runs={tmp_path}/runs", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_yaml_files_hold_every_declared_option_with_its_default() -> None:
    for name, cls in registry.learners().items():
        path = CONFIGS / "learner" / f"{name}.yaml"
        if not path.exists():
            continue  # a plugin: its section comes from the declaration
        section = dict(yaml.safe_load(path.read_text())["learner"])
        assert section.pop("name") == name
        defaults = cls.Options.defaults()
        assert set(section) == set(defaults), name
        plain = [k for k, v in section.items() if not (isinstance(v, str) and v.startswith("${"))]
        assert {k: section[k] for k in plain} == {k: defaults[k] for k in plain}, name
    for name, cls in registry.circuits().items():
        path = CONFIGS / "circuit" / f"{name}.yaml"
        if not path.exists():
            continue
        section = dict(yaml.safe_load(path.read_text()))
        assert section.pop("name") == name
        defaults = cls.Options.defaults()
        assert section.keys() == defaults.keys(), name
        for key, value in section.items():
            if not (isinstance(value, str) and "${" in value):  # an interpolation, e.g. ${seed}
                assert value == defaults[key], (name, key)


def test_docs_options_table_is_current() -> None:
    from bioplaus.cli import options_markdown

    docs = Path(bioplaus.__file__).parent.parent / "docs" / "options.md"
    assert docs.read_text().strip() == options_markdown().strip(), \
        "regenerate with: bioplaus list --markdown > docs/options.md"


def test_list_name_shows_the_declared_options() -> None:
    result = cli_in_process("list", "mono_forward")
    assert result.returncode == 0, result.stderr
    assert "lr_decay" in result.stdout and "a number > 0 and ≤ 1" in result.stdout


# -- composed and validated once ----------------------------------------------------------------------


def test_a_run_composes_and_validates_its_config_once(tmp_path: Path, monkeypatch, capsys) -> None:
    from bioplaus import cli

    calls = {"compose": 0, "validate": 0}
    compose, validate = config._hydra_compose, config.validate

    def counting_compose(*args: Any, **kwargs: Any) -> Any:
        calls["compose"] += 1
        return compose(*args, **kwargs)

    def counting_validate(*args: Any, **kwargs: Any) -> Any:
        calls["validate"] += 1
        return validate(*args, **kwargs)

    monkeypatch.setattr(config, "_hydra_compose", counting_compose)
    monkeypatch.setattr(config, "validate", counting_validate)
    cli.main(["run", "learner=backprop", "trainer.epochs=1", "circuit.hidden=[16]", *QUICK,
              f"paths.runs={tmp_path}"])
    run_dir = Path(last_line(capsys.readouterr().out))
    assert summary_of(run_dir)["status"] == "completed"
    assert calls == {"compose": 1, "validate": 1}


# -- bugs stay bugs -------------------------------------------------------------------------------------


def _with_learner(name: str, tmp_path: Path) -> Any:
    cfg = bioplaus.compose(["learner=backprop", "trainer.epochs=1", "circuit.hidden=[8]", *QUICK,
                            f"paths.runs={tmp_path}"])
    cfg.learner = OmegaConf.create({"name": name, "lr": 1e-3})
    return cfg


def test_a_bug_in_a_constructor_is_a_failed_run_with_its_traceback(tmp_path: Path) -> None:
    from bioplaus.learners.backprop import Backprop

    @registry.register_learner
    class Broken(Backprop):
        name = "test_broken_constructor"

        def __init__(self, circuit: Any, task: Any, **options: Any):
            super().__init__(circuit, task, **options)
            raise TypeError("a bug, not bad input")

    try:
        with pytest.raises(RunFailed) as failed:
            bioplaus.train(_with_learner(Broken.name, tmp_path), quiet=True)
    finally:
        registry._LEARNERS.pop(Broken.name)
    run_dir = Path(failed.value.run_dir)
    summary = summary_of(run_dir)
    assert summary["status"] == "failed" and "TypeError: a bug, not bad input" in summary["reason"]
    log = (run_dir / "log.txt").read_text()
    assert "Traceback" in log and "raise TypeError" in log


def test_a_bug_in_train_step_is_a_failed_run_with_its_traceback(tmp_path: Path) -> None:
    from bioplaus.learners.backprop import Backprop

    @registry.register_learner
    class Broken(Backprop):
        name = "test_broken_step"

        def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": torch.zeros(()) / self.no_such_attribute}

    try:
        with pytest.raises(RunFailed) as failed:
            bioplaus.train(_with_learner(Broken.name, tmp_path), quiet=True)
    finally:
        registry._LEARNERS.pop(Broken.name)
    run_dir = Path(failed.value.run_dir)
    assert "AttributeError" in summary_of(run_dir)["reason"]
    assert "Traceback" in (run_dir / "log.txt").read_text()


# -- one owner per learning-rate schedule -------------------------------------------------------------


def test_a_learner_schedule_and_a_trainer_schedule_together_are_refused() -> None:
    with pytest.raises(UsageError, match=r"learner\.lr_decay"):
        config.compose(["learner=mono_forward", "learner.lr_decay=0.5", "trainer.lr_schedule=cosine"])
    config.compose(["learner=mono_forward", "learner.lr_decay=0.5"])  # each alone is fine
    config.compose(["learner=mono_forward", "trainer.lr_schedule=cosine"])


@pytest.mark.parametrize("overrides, expected", [
    (["learner.lr_decay=0.5"], [0.005 * 0.5 ** k for k in range(1, 4)]),
    (["trainer.lr_schedule=cosine"],
     [0.005 * f for f in (0.5 * (1 + 0.5 ** 0.5), 0.5, 0.5 * (1 - 0.5 ** 0.5))]),
])
def test_the_learning_rate_follows_its_one_owner(overrides: list[str], expected: list[float],
                                                  tmp_path: Path, monkeypatch) -> None:
    from bioplaus import engine

    seen: list[float] = []
    end_epoch = engine._Loop._end_epoch

    def recording(self: Any, epoch: int) -> None:
        end_epoch(self, epoch)
        seen.append(float(self.learner.optimizer.param_groups[0]["lr"]))

    monkeypatch.setattr(engine._Loop, "_end_epoch", recording)
    cfg = bioplaus.compose(["learner=mono_forward", "learner.lr=0.005", "trainer.epochs=4",
                            "circuit.hidden=[16]", *QUICK, f"paths.runs={tmp_path}", *overrides])
    bioplaus.train(cfg, quiet=True)
    assert seen[:3] == pytest.approx(expected, rel=1e-6)


# -- checkpoints of earlier versions --------------------------------------------------------------------


def _old_format(run_dir: Path) -> None:
    """Rewrite a checkpoint's loop position with the key names of earlier versions."""
    path = run_dir / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=False)
    loop = payload["loop"]
    loop["best_val_accuracy"], loop["val_accuracy"] = loop.pop("best_val"), loop.pop("val")
    torch.save(payload, path)


def test_a_checkpoint_of_an_earlier_version_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    from bioplaus.engine import resume

    run = ["learner=backprop", "circuit.hidden=[16]", "seed=2", *QUICK]
    full = bioplaus.train(bioplaus.compose([*run, "trainer.epochs=3", f"paths.runs={tmp_path}/a"]),
                          quiet=True)
    first = bioplaus.train(bioplaus.compose([*run, "trainer.epochs=2", f"paths.runs={tmp_path}/b"]),
                           quiet=True)
    _old_format(Path(first["run_dir"]))
    resumed = resume(first["run_dir"], ["trainer.epochs=3"], quiet=True)
    for key in ("test_accuracy", "best_val_accuracy", "epochs_completed", "best_epoch"):
        assert resumed[key] == full[key], key


def test_a_checkpoint_this_version_cannot_continue_is_refused_with_why(tmp_path: Path) -> None:
    cfg = bioplaus.compose(["learner=backprop", "circuit.hidden=[8]", "trainer.epochs=1", *QUICK,
                            f"paths.runs={tmp_path}"])
    run_dir = Path(bioplaus.train(cfg, quiet=True)["run_dir"])
    path = run_dir / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=False)
    payload["loop"]["stage_of_a_future_version"] = 3
    torch.save(payload, path)
    result = run_cli("run", f"trainer.resume={run_dir}", "trainer.epochs=2")
    assert result.returncode == 2, result.stderr
    assert "stage_of_a_future_version" in result.stderr and "cannot continue" in result.stderr


# -- plugins ------------------------------------------------------------------------------------------


PLUGIN = '''
"""A plugin rule: a least-squares readout trained by the delta rule on the circuit's head."""

from typing import Any

import torch

from bioplaus import Learner, register_learner
from bioplaus.functional import accuracy, one_hot
from bioplaus.options import LearnerOptions, option


@register_learner
class Delta(Learner):
    """Delta rule on the head: W ← W + η (y − Wx) xᵀ / B."""

    name = "plugin_delta"
    circuits = ("mlp",)

    class Options(LearnerOptions):
        lr: float = option(0.05, "η", gt=0)

    def __init__(self, circuit: Any, task: Any, **options: Any):
        super().__init__(circuit, task, **options)

    @torch.no_grad()
    def train_step(self, x, y):
        layer = self.circuit.blocks[-1].linear
        h = x.flatten(1)
        error = one_hot(y, self.task.num_classes) - layer(h)
        layer.weight += self.options.lr * error.t() @ h / x.shape[0]
        layer.bias += self.options.lr * error.mean(0)
        return {"loss": (error ** 2).mean(), "accuracy": accuracy(layer(h), y)}
'''


def test_a_plugin_learner_installs_through_the_entry_point_and_runs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "bioplaus_plugin_delta").mkdir(parents=True)
    (site / "bioplaus_plugin_delta" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "bioplaus_plugin_delta-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bioplaus-plugin-delta\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bioplaus.learners]\ndelta = bioplaus_plugin_delta\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    listed = run_cli("list", "plugin_delta", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "lr" in listed.stdout and "a number > 0" in listed.stdout
    result = run_cli("run", "learner=plugin_delta", "circuit.hidden=[]", "trainer.epochs=3", *QUICK,
                     f"paths.runs={tmp_path}/runs", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((Path(last_line(result.stdout)) / "summary.json").read_text())
    assert summary["learner"] == "plugin_delta" and summary["status"] == "completed"
    assert summary["test_accuracy"] > 0.5  # a linear readout of digits trained by the delta rule
    bad = run_cli("run", "learner=plugin_delta", "learner.lr=0", *QUICK, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "learner.lr must be a number > 0" in bad.stderr
