"""Bad input, tried as users try it: every case exits 2 (`UsageError` in the API) with one
paragraph naming what is wrong, no traceback, and nothing written — the runs root and the
current folder stay empty.

The battery runs in this process (`bioplaus.cli.main`, the API); two cases run as subprocesses
to prove the exit code and the absence of a traceback end to end. The tests after the battery
each cover one kind of fault that once gave a traceback, a poisoned run or a silent error.
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import bioplaus
from bioplaus import cli, data
from bioplaus import sweep as sweep_module
from bioplaus.errors import RunFailed, UsageError
from bioplaus.registry import get_dataset
from tests.helpers import run_cli

QUICK = ["learner=backprop", "circuit.hidden=[8]", "trainer.epochs=1", "threads=1", "trainer.progress=none"]


class Sandbox(types.SimpleNamespace):
    cwd: Path
    runs: Path
    data: Path

    def clean(self) -> bool:
        return not any(self.cwd.iterdir()) and not any(self.runs.iterdir())


@pytest.fixture
def sb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """An empty current folder and an empty runs root; data fixtures live elsewhere."""
    box = Sandbox(cwd=tmp_path / "cwd", runs=tmp_path / "runs", data=tmp_path / "data")
    for folder in (box.cwd, box.runs, box.data):
        folder.mkdir()
    monkeypatch.chdir(box.cwd)
    return box


def main_exit(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = sys.argv[:]
    try:
        cli.main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err.strip()


def assert_one_paragraph(message: str) -> None:
    assert message and "\n\n" not in message and "Traceback" not in message, message
    assert len(message.splitlines()) <= 3, message


# -- data-file fixtures ----------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def mnist_folder(root: Path, damage: str | None = None, n: int = 20) -> Path:
    """The four gzipped IDX files of an MNIST-format folder, one of them damaged as ``damage`` says."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {name: idx_bytes(array) for name, array in {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n) % 10,
    }.items()}
    raw: dict[str, bytes] = {}
    if damage == "html":
        raw["train-images-idx3-ubyte"] = b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>"
    elif damage == "empty_labels":
        files["train-labels-idx1-ubyte"] = b""
    elif damage == "truncated_images":
        files["t10k-images-idx3-ubyte"] = files["t10k-images-idx3-ubyte"][:-100]
    elif damage == "fewer_labels":
        files["train-labels-idx1-ubyte"] = idx_bytes(np.arange(n - 3) % 10)
    elif damage == "label_out_of_range":
        files["t10k-labels-idx1-ubyte"] = idx_bytes(np.array([0, 1, 12] + [0] * (n - 3)))
    elif damage == "truncated_gzip":
        raw["train-labels-idx1-ubyte"] = gzip.compress(files["train-labels-idx1-ubyte"])[:15]
    for name, payload in files.items():
        (root / f"{name}.gz").write_bytes(raw.get(name) or gzip.compress(payload))
    return root


def cifar_folder(root: Path, damage: str | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch: object = {b"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), b"labels": [0, 1, 2, 3]}
        payload = pickle.dumps(batch)
        if name == "data_batch_2":
            if damage == "truncated":
                payload = payload[: len(payload) // 2]
            elif damage == "labels_out_of_range":
                payload = pickle.dumps({**batch, b"labels": [0, 1, 2, 10]})
            elif damage == "fewer_labels":
                payload = pickle.dumps({**batch, b"labels": [0, 1]})
            elif damage == "not_a_dict":
                payload = pickle.dumps([1, 2, 3])
            elif damage == "wrong_shape":
                payload = pickle.dumps({**batch, b"data": np.zeros((4, 100), np.uint8)})
            elif damage == "html":
                payload = b"<html><body>404</body></html>"
        (folder / name).write_bytes(payload)
    return root


# -- the battery -----------------------------------------------------------------------------------

def _folder_case(name: str, kind: str) -> Callable[[Sandbox], list[str]]:
    """Overrides for data ``name`` read from a folder whose files are damaged as ``kind`` says."""
    def args(sb: Sandbox) -> list[str]:
        make = mnist_folder if name == "mnist" else cifar_folder
        return [f"data={name}", "circuit=mlp", f"data.root={make(sb.data / kind, kind)}"]

    return args


def _a_file(sb: Sandbox) -> Path:
    (sb.data / "f").write_text("a file, not a folder")
    return sb.data / "f"


RUN: dict[str, tuple[Callable[[Sandbox], list[str]], str]] = {
    "unknown learner": (lambda sb: ["learner=no_such_rule"], "unknown learner"),
    "unknown circuit": (lambda sb: ["circuit=no_such_net"], "unknown circuit"),
    "unknown data": (lambda sb: ["data=no_such_data"], "unknown data"),
    "misspelt key": (lambda sb: ["trainer.epochz=3"], "trainer.epochz"),
    "wrong type": (lambda sb: ["trainer.epochs=abc"], "trainer.epochs"),
    "zero epochs": (lambda sb: ["trainer.epochs=0"], "positive"),
    "negative batch": (lambda sb: ["trainer.batch_size=-4"], "batch_size"),
    "negative learning rate": (lambda sb: ["learner.lr=-0.1"], "learner.lr must be a number > 0"),
    "bad device": (lambda sb: ["device=tpu"], "device"),
    "float seed": (lambda sb: ["seed=1.5"], "seed"),
    "bad select": (lambda sb: ["trainer.select=worst"], "trainer.select"),
    "unknown logger": (lambda sb: ["logger=tensorboard"], "logger"),
    "zero threads": (lambda sb: ["threads=0"], "threads"),
    "zero patience": (lambda sb: ["trainer.early_stopping_patience=0"], "patience"),
    "bad progress": (lambda sb: ["trainer.progress=loud"], "trainer.progress"),
    "unparsable override": (lambda sb: ["learner=[backprop"], "parse"),
    "val fraction out of range": (lambda sb: ["data.val_fraction=1.5"], "val_fraction"),
    "zca epsilon not positive": (lambda sb: ["data.normalize=zca", "data.zca_epsilon=0"], "zca_epsilon"),
    "resume of nothing": (lambda sb: [f"trainer.resume={sb.data}/nothing"], "last.pt"),
    "runs root is a file": (lambda sb: [f"paths.runs={_a_file(sb)}/runs"], "not writable"),
    # nothing can be created under /proc, whatever the permission bits say (and root passes those)
    "runs root under /proc": (lambda sb: ["paths.runs=/proc/bioplaus-runs"], "not writable"),
    "missing mnist": (lambda sb: ["data=mnist", f"data.root={sb.data}/none"], "not found"),
    "instantiation key": (lambda sb: ["+_target_=os.system"], "_target_"),
    "hydra callback": (lambda sb: ["+hydra.callbacks.x._target_=builtins.print"], "_target_"),
    "secret interpolation": (lambda sb: ["+note=${oc.env:WANDB_API_KEY}"], "secrets"),
    "incompatible pair": (lambda sb: ["learner=forward_forward", "circuit=cnn"], "cannot train"),
    **{f"mnist {kind}": (_folder_case("mnist", kind), word)
       for kind, word in [("html", "HTML"), ("empty_labels", "empty"), ("truncated_images", "cut short"),
                          ("fewer_labels", "labels"), ("label_out_of_range", "label 12"),
                          ("truncated_gzip", "gzip")]},
    **{f"cifar {kind}": (_folder_case("cifar10", kind), word)
       for kind, word in [("truncated", "data_batch_2"), ("labels_out_of_range", "label 10"),
                          ("fewer_labels", "2 labels"), ("not_a_dict", "list"),
                          ("wrong_shape", "3072"), ("html", "data_batch_2")]},
}

SWEEP: dict[str, tuple[Callable[[Sandbox], list[str]], str]] = {}


def _sweep_case(name: str, spec: object | str, word: str, extra: tuple[str, ...] = ("--local",)) -> None:
    def args(sb: Sandbox) -> list[str]:
        path = sb.data / f"{name.replace(' ', '_')}.yaml"
        path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
        return [str(path), *extra, f"paths.runs={sb.runs}"]

    SWEEP[name] = (args, word)


_P = {"learner": {"value": "backprop"}}
_sweep_case("not yaml", "method: [grid\n", "not valid YAML")
_sweep_case("not a mapping", "- grid\n", "mapping")
_sweep_case("bad method", {"method": "annealing", "parameters": _P}, "method")
_sweep_case("no parameters", {"method": "grid"}, "parameters")
_sweep_case("unknown key", {"method": "grid", "parameters": {**_P, "learner.lrr": {"value": 1}}}, "lrr")
_sweep_case("wrong type", {"method": "grid", "parameters": {**_P, "trainer.epochs": {"values": ["x"]}}},
            "trainer.epochs")
_sweep_case("bad goal", {"method": "grid", "parameters": _P, "metric": {"name": "m", "goal": "up"}}, "goal")
_sweep_case("foreign program", {"method": "grid", "parameters": _P,
                                "command": ["sh", "-c", "echo", "run", "${args_no_hyphens}"]}, "command")
_sweep_case("bayes all fixed", {"method": "bayes", "parameters": {**_P, "trainer.epochs": {"value": 1}}},
            "sweep engine")
_sweep_case("grid over a distribution", {"method": "grid", "parameters": {**_P, "learner.lr": {
    "distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}}}, "sweep engine")
_sweep_case("python tag", "method: !!python/object/apply:os.getcwd []\nparameters: {}\n", "python")
_sweep_case("zero count", {"method": "grid", "parameters": _P}, "--count", ("--local", "--count", "0"))
_sweep_case("unknown option", {"method": "grid", "parameters": _P}, "--fast", ("--local", "--fast"))
SWEEP["missing file"] = (lambda sb: ["no_such_sweep.yaml", "--local"], "no sweep file")
SWEEP["resume of a non-sweep"] = (lambda sb: ["--resume", str(sb.data)], "not a local sweep")
SWEEP["no file"] = (lambda sb: [], "needs a sweep FILE")

BENCH: dict[str, tuple[Callable[[Sandbox], list[str]], str]] = {
    "unknown experiment": (lambda sb: ["no_such_experiment", "--out", str(sb.runs)], "no_such_experiment"),
    "no experiment": (lambda sb: [], "EXPERIMENT"),
    "bad seeds": (lambda sb: ["fmnist_bp_mlp", "--seeds", "x"], "--seeds"),
    "bad override": (lambda sb: ["fmnist_bp_mlp", "trainer.epochz=1"], "trainer.epochz"),
}


def _damaged_summary(sb: Sandbox) -> list[str]:
    (sb.data / "run").mkdir()
    (sb.data / "run" / "summary.json").write_text("{not json")
    return [str(sb.data / "run")]


COMPARE: dict[str, tuple[Callable[[Sandbox], list[str]], str]] = {
    "no run": (lambda sb: [], "RUN_DIR"),
    "missing folder": (lambda sb: [str(sb.data / "nothing")], "neither"),
    "folder without runs": (lambda sb: [str(sb.data)], "no summary.json"),
    "damaged summary": (_damaged_summary, "JSON"),
}

CLI_CASES = [(f"{cmd} {name}", cmd, case) for cmd, table in
             (("run", RUN), ("sweep", SWEEP), ("bench", BENCH), ("compare", COMPARE))
             for name, case in table.items()]


@pytest.mark.parametrize(("name", "command", "case"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_one_paragraph_and_writes_nothing(
        name: str, command: str, case: tuple, sb: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    build, word = case
    args = build(sb)
    if command == "run":
        args = [*QUICK, *args]
        if not any(a.startswith("paths.runs=") for a in args):
            args.append(f"paths.runs={sb.runs}")
    code, err = main_exit([command, *args], capsys)
    assert code == 2, (name, err)
    assert err.startswith("bioplaus: error:"), err
    assert_one_paragraph(err)
    assert word.lower() in err.lower(), (word, err)
    assert sb.clean(), (list(sb.cwd.rglob("*")), list(sb.runs.rglob("*")))


def _x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(60, 4))


def _y() -> np.ndarray:
    return np.arange(60) % 3


API: dict[str, tuple[Callable[[Sandbox], object], str]] = {
    "compose unknown learner": (lambda sb: bioplaus.compose(["learner=nope"]), "unknown learner"),
    "compose bad type": (lambda sb: bioplaus.compose(["trainer.epochs=x"]), "trainer.epochs"),
    "compose target": (lambda sb: bioplaus.compose(["+learner._target_=os.system"]), "_target_"),
    "train negative lr": (lambda sb: bioplaus.train(bioplaus.compose(
        [*QUICK, "learner.lr=-1.0", f"paths.runs={sb.runs}"], check=False)), "learner.lr must be a number"),
    "train data on another device": (lambda sb: bioplaus.train(bioplaus.compose(
        [*QUICK, "device=cpu", f"paths.runs={sb.runs}"]),
        data=data.from_tensors(_x(), _y(), device="meta")), "device"),
    "train batch larger than the data": (lambda sb: bioplaus.train(bioplaus.compose(
        [*QUICK, "trainer.batch_size=100000", f"paths.runs={sb.runs}"])), "larger than the training"),
    "from_tensors one-hot labels": (lambda sb: data.from_tensors(_x(), np.eye(3)[_y()]), "one-hot"),
    "from_tensors label -1": (lambda sb: data.from_tensors(_x(), _y() - 1), "label -1"),
    "from_tensors label >= num_classes": (lambda sb: data.from_tensors(_x(), _y(), num_classes=2),
                                          "label 2"),
    "from_tensors float labels": (lambda sb: data.from_tensors(_x(), _y() + 0.5), "float64"),
    "from_tensors NaN in x": (lambda sb: data.from_tensors(np.where(_x() > 2, np.nan, _x()), _y()),
                              "rows of x"),
    "from_tensors inf in test_x": (lambda sb: data.from_tensors(
        _x(), _y(), test_x=np.full((5, 4), np.inf), test_y=_y()[:5]), "5 of the 5 rows of test_x"),
    "from_tensors 1-D x": (lambda sb: data.from_tensors(_x()[:, 0], _y()), "shape"),
    "from_tensors length mismatch": (lambda sb: data.from_tensors(_x(), _y()[:10]), "10 labels"),
    "from_tensors strings": (lambda sb: data.from_tensors([["a", "b"]], [0]), "numeric"),
    "from_tensors bad normalize": (lambda sb: data.from_tensors(_x(), _y(), normalize="zscore"),
                                   "normalize"),
    "from_tensors test_fraction 1": (lambda sb: data.from_tensors(_x(), _y(), test_fraction=1.0),
                                     "test_fraction"),
    "from_tensors test_x alone": (lambda sb: data.from_tensors(_x(), _y(), test_x=_x()), "together"),
    "from_tensors test_x shape": (lambda sb: data.from_tensors(
        _x(), _y(), test_x=_x()[:, :2], test_y=_y()), "shape"),
    "from_tensors one class": (lambda sb: data.from_tensors(_x(), np.zeros(60, int)), "two"),
}


@pytest.mark.parametrize("name", sorted(API))
def test_api_bad_input_raises_usage_error_and_writes_nothing(name: str, sb: Sandbox) -> None:
    call, word = API[name]
    with pytest.raises(UsageError) as info:
        call(sb)
    message = str(info.value)
    assert_one_paragraph(message)
    assert word.lower() in message.lower(), (word, message)
    assert sb.clean()


def test_the_battery_holds_at_least_40_distinct_cases() -> None:
    assert len(CLI_CASES) + len(API) >= 40
    assert {c[1] for c in CLI_CASES} == {"run", "sweep", "bench", "compare"}


def test_end_to_end_exit_code_and_no_traceback(tmp_path: Path) -> None:
    """As a subprocess: the exit status a shell sees, and stderr free of any traceback."""
    for args in (["run", "learner.lr=-0.1", *QUICK[1:], f"paths.runs={tmp_path / 'runs'}"],
                 ["run", *QUICK, "data=mnist", f"data.root={mnist_folder(tmp_path / 'd', 'html')}",
                  f"paths.runs={tmp_path / 'runs'}"]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("bioplaus: error:") and "Traceback" not in result.stderr
        assert not (tmp_path / "runs").exists()


# -- one test per fault kind -----------------------------------------------------------------------


def test_fault1_sweep_specs_the_engine_rejects_exit_2_and_leave_no_folder(
        sb: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("bayes all fixed", "grid over a distribution"):
        code, err = main_exit(["sweep", *SWEEP[name][0](sb)], capsys)
        assert code == 2 and "sweep engine" in err
    assert sb.clean()


def _fake_runs(monkeypatch: pytest.MonkeyPatch, seen: list[list[str]]) -> None:
    """Stand-in for the `bioplaus run` subprocess of each sweep run: records its overrides."""
    def run_one(run_dir: Path, overrides: list[str], metric: str, name: str, index: int) -> dict:
        seen.append(overrides)
        return {"index": index, "status": "completed", "metric": 0.5 + 0.01 * index,
                "test_accuracy": None, "train_seconds": 0.0, "run_dir": str(run_dir)}

    monkeypatch.setattr(sweep_module, "_run_one", run_one)


def test_fault2_numpy_scalar_values_are_recorded_plain_and_the_sweep_resumes(
        sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_path = sb.data / "q.yaml"
    spec_path.write_text(yaml.safe_dump({"method": "random", "parameters": {
        **_P, "trainer.batch_size": {"distribution": "q_uniform", "min": 32, "max": 128, "q": 32}}}))
    seen: list[list[str]] = []
    _fake_runs(monkeypatch, seen)
    spec = sweep_module.load(spec_path, [])
    sweep_dir = sweep_module.start_local(spec_path, spec, 2, [], sb.runs)
    records = [json.loads(line) for line in (sweep_dir / "sweep.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record, overrides in zip(records, seen, strict=True):
        size = record["parameters"]["trainer.batch_size"]
        assert type(size) in (int, float) and size in (32, 64, 96, 128)
        assert f"trainer.batch_size={size}" in overrides
    sweep_module.resume_local(sweep_dir, 3)
    assert len((sweep_dir / "sweep.jsonl").read_text().splitlines()) == 3


def test_fault3_string_values_are_quoted_and_each_run_gets_one_value(
        sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    from bioplaus.config import _parse

    roots = ["data/my data", "data/a,b", "it's [x]"]
    spec_path = sb.data / "s.yaml"
    spec_path.write_text(yaml.safe_dump({"method": "grid", "parameters": {
        **_P, "data.root": {"values": roots}}}))
    seen: list[list[str]] = []
    _fake_runs(monkeypatch, seen)
    sweep_dir = sweep_module.start_local(spec_path, sweep_module.load(spec_path, []), None, [], sb.runs)
    assert len(seen) == 3
    parsed = [next(o for o in _parse(overrides) if o.key_or_group == "data.root") for overrides in seen]
    assert [o.value() for o in parsed] == roots and not any(o.is_sweep_override() for o in parsed)
    assert {r["parameters"]["data.root"] for r in map(json.loads, (sweep_dir / "sweep.jsonl").open())} \
        == set(roots)


def test_fault4a_standardisation_is_per_feature_and_per_channel() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)) * np.array([1.0, 100.0, 10_000.0]) + np.array([0.0, 50.0, -3e4])
    y = (x[:, 0] + x[:, 1] / 100 + x[:, 2] / 10_000 > 0).astype(int)
    splits = data.from_tensors(x, y)
    # statistics of the training split before the validation rows are held out: close to 0 and 1
    # for every column (one mean/std for the whole matrix gives stds of about 1e-4, 0.01 and 1.7)
    assert torch.allclose(splits.train_x.std(0), torch.ones(3), atol=0.05)
    assert torch.allclose(splits.train_x.mean(0), torch.zeros(3), atol=0.05)
    images = torch.randn(50, 3, 4, 4) * torch.tensor([1.0, 100.0, 1e4]).view(1, 3, 1, 1)
    standard = data.from_tensors(images, np.arange(50) % 2, test_fraction=0.0, val_fraction=0.0,
                                 test_x=images[:5], test_y=np.arange(5) % 2)
    assert torch.allclose(standard.train_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)


def test_fault4b_non_finite_cells_are_refused_naming_rows_and_split() -> None:
    x = np.random.default_rng(0).normal(size=(50, 3))
    x[[3, 7], 1] = np.nan
    x[9, 2] = np.inf
    with pytest.raises(UsageError, match="3 of the 50 rows of x"):
        data.from_tensors(x, np.arange(50) % 2)
    clean = np.where(np.isfinite(x), x, 0.0)
    test_x = clean[:10].copy()
    test_x[4, 0] = -np.inf
    with pytest.raises(UsageError, match="1 of the 10 rows of test_x"):
        data.from_tensors(clean, np.arange(50) % 2, test_x=test_x, test_y=np.arange(10) % 2)


def test_fault4c_labels_must_be_1d_integers_in_range() -> None:
    x = np.random.default_rng(0).normal(size=(30, 3))
    y = np.arange(30) % 3
    with pytest.raises(UsageError, match=r"1-D integer array .* \[0, C\).*one-hot"):
        data.from_tensors(x, np.eye(3)[y])
    with pytest.raises(UsageError, match="label -1"):
        data.from_tensors(x, np.where(y == 2, -1, y))
    with pytest.raises(UsageError, match="label 2"):
        data.from_tensors(x, y, num_classes=2)
    assert data.from_tensors(x, y.astype(float)).task.num_classes == 3  # integral floats are labels


@pytest.mark.parametrize("kind", ["html", "empty_labels", "truncated_images", "fewer_labels",
                                  "label_out_of_range", "truncated_gzip"])
def test_fault5_damaged_idx_files_name_the_file(kind: str, tmp_path: Path) -> None:
    folder = mnist_folder(tmp_path / kind, kind)
    with pytest.raises(UsageError, match=r"data file .*idx.*ubyte\.gz is damaged"):
        get_dataset("mnist")(root=folder)


@pytest.mark.parametrize("kind", ["truncated", "labels_out_of_range", "fewer_labels", "not_a_dict",
                                  "wrong_shape", "html"])
def test_fault5_damaged_cifar_batches_name_the_file(kind: str, tmp_path: Path) -> None:
    folder = cifar_folder(tmp_path / kind, kind)
    with pytest.raises(UsageError, match=r"data file .*data_batch_2 is damaged"):
        get_dataset("cifar10")(root=folder)


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("ending", ["completed", "early_stopped", "diverged"])
def test_fault6_resuming_a_finished_run_changes_nothing_unless_extended(
        ending: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bioplaus.engine import resume

    extra = {"completed": ["trainer.epochs=2"],
             "early_stopped": ["trainer.epochs=6", "learner.lr=1e-12", "trainer.early_stopping_patience=1"],
             "diverged": ["trainer.epochs=3", "learner.lr=1e6"]}[ending]
    cfg = bioplaus.compose([*QUICK, *extra, f"paths.runs={tmp_path}"])
    if ending == "diverged":
        with pytest.raises(RunFailed) as info:
            bioplaus.train(cfg, quiet=True)
        run_dir = Path(info.value.run_dir)
    else:
        run_dir = Path(bioplaus.train(cfg, quiet=True)["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    if ending == "early_stopped":
        assert summary["epochs_completed"] < 6
    before = _snapshot(run_dir)
    capsys.readouterr()
    if ending == "diverged":
        with pytest.raises(RunFailed, match=r"already diverged.*nothing changed"):
            resume(run_dir)
    else:
        assert resume(run_dir)["epochs_completed"] == summary["epochs_completed"]
        assert "nothing changed" in capsys.readouterr().out
    assert _snapshot(run_dir) == before
    if ending == "completed":  # extended: it trains on
        assert resume(run_dir, ["trainer.epochs=3"], quiet=True)["epochs_completed"] == 3


def test_fault7_one_wandb_run_across_resume_at_step_epoch(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from bioplaus.engine import resume
    from tests.engine.test_security import fake_wandb_module

    sink: dict = {}
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb_module(sink))
    cfg = bioplaus.compose([*QUICK, "trainer.epochs=2", "logger=wandb", "logger.mode=offline",
                            f"paths.runs={tmp_path}"])
    run_dir = Path(bioplaus.train(cfg, quiet=True)["run_dir"])
    state = json.loads((run_dir / "wandb.json").read_text())
    assert state["logged_epoch"] == 2
    # as if the run had been killed after writing epoch 2 to metrics.jsonl but before W&B got it
    (run_dir / "wandb.json").write_text(json.dumps({**state, "logged_epoch": 1}))
    resume(run_dir, ["trainer.epochs=4"], quiet=True)
    assert [i["id"] for i in sink["inits"]] == [state["id"], state["id"]]
    assert all(i["resume"] == "allow" for i in sink["inits"])
    steps = [step for step, _ in sink["logs"]]
    assert steps == [1, 2, 2, 3, 4]  # epoch 2 sent again on resume, then 3 and 4
    assert all(record["epoch"] == step for step, record in sink["logs"])


def test_fault7_wandb_failing_mid_run_does_not_stop_it(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.engine.test_security import fake_wandb_module

    sink: dict = {}
    module = fake_wandb_module(sink)
    real_init = module.init

    def init(**kwargs):
        run = real_init(**kwargs)
        run.log = lambda record, step=None: (_ for _ in ()).throw(ConnectionError("network down"))
        return run

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    cfg = bioplaus.compose([*QUICK, "trainer.epochs=2", "logger=wandb", f"paths.runs={tmp_path}"])
    summary = bioplaus.train(cfg, quiet=True)
    run_dir = Path(summary["run_dir"])
    assert summary["status"] == "completed"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert "W&B logging failed" in (run_dir / "log.txt").read_text()


def test_fault8_a_refused_option_leaves_no_folder(sb: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    """A refused learning rate, with the run folder pinned through Hydra, leaves no folder."""
    code, err = main_exit(["run", *QUICK, "learner.lr=-0.1", f"paths.runs={sb.runs / 'new' / 'root'}"],
                          capsys)
    assert code == 2 and "learner.lr must be a number > 0" in err
    assert sb.clean()
    code, _ = main_exit(["run", *QUICK, "learner.lr=-0.1"], capsys)  # default root: ./runs
    assert code == 2 and sb.clean()
