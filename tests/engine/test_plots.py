"""Pictures: curves.png of every run (and on resume), compare --plot, the bench PNG, plots=false,
the learner's write_figures hook, and a light `import bioplaus`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import bioplaus
from bioplaus import plots
from bioplaus.bench import main as bench_main
from bioplaus.cli import main as cli_main
from bioplaus.engine import resume
from bioplaus.errors import UsageError

TINY = ["data=digits", "circuit.hidden=[16]", "threads=1", "trainer.progress=none"]


def _picture(path: Path, size: tuple[float, float]) -> None:
    """``path`` is a PNG of ``size`` inches at plots.DPI with something drawn on it."""
    import matplotlib.image

    assert path.is_file() and path.stat().st_size > 0, path
    image = matplotlib.image.imread(path)
    width, height = plots.pixel_size(size)
    assert image.shape[:2] == (height, width), (path, image.shape)
    assert image[..., :3].std() > 0.05  # not a blank canvas


def _run(tmp_path: Path, *overrides: str) -> dict:
    cfg = bioplaus.compose([*TINY, f"paths.runs={tmp_path / 'runs'}", *overrides])
    return bioplaus.train(cfg, quiet=True)


def test_import_bioplaus_loads_no_matplotlib() -> None:
    code = ("import sys, bioplaus, bioplaus.plots, bioplaus.engine, bioplaus.cli, bioplaus.bench; "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'PIL')]; "
            "print(loaded); assert not loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_run_draws_its_curves_and_a_resumed_run_draws_them_again(tmp_path: Path) -> None:
    summary = _run(tmp_path, "learner=forward_forward", "trainer.epochs=1")
    run_dir = Path(summary["run_dir"])
    _picture(run_dir / "curves.png", plots.CURVES_SIZE)
    before = (run_dir / "curves.png").read_bytes()
    resumed = resume(run_dir, ["trainer.epochs=2"], quiet=True)
    assert resumed["epochs_completed"] == 2
    _picture(run_dir / "curves.png", plots.CURVES_SIZE)
    assert (run_dir / "curves.png").read_bytes() != before  # redrawn with the second epoch
    assert "could not draw" not in (run_dir / "log.txt").read_text()


def test_curves_show_every_readout_and_the_loss_terms(tmp_path: Path) -> None:
    records = [{"epoch": e, "train_loss": 2.0 / e, "train_ff_loss": 1.0 / e, "train_accuracy": 0.5,
                "val_accuracy": 0.4 + e / 10, "val_accuracy_goodness": 0.4 + e / 10,
                "val_accuracy_softmax": 0.6, "train_seconds": 1.0 * e} for e in (1, 2, 3)]
    assert plots.readout_keys(records, "accuracy") == ["val_accuracy_goodness", "val_accuracy_softmax"]
    assert plots.readout_keys([{"epoch": 1, "val_accuracy": 0.5}], "accuracy") == ["val_accuracy"]
    assert plots.loss_keys(records, "loss") == ["train_loss", "train_ff_loss"]
    hebbian = [{"epoch": 1, "train_energy": -3.0, "train_seconds": 1.0, "val_overlap": 0.9}]
    assert plots.loss_keys(hebbian, None) == ["train_energy"]
    assert plots.readout_keys(hebbian, "overlap") == ["val_overlap"]

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert plots.draw_curves(run_dir) is None  # no epoch recorded yet: nothing drawn
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _picture(plots.draw_curves(run_dir), plots.CURVES_SIZE)


def test_plots_false_draws_nothing_and_plots_must_be_a_boolean(tmp_path: Path, monkeypatch) -> None:
    from learners.backprop import Backprop

    drawn: list[Path] = []
    monkeypatch.setattr(Backprop, "write_figures", lambda self, run_dir, data=None: drawn.append(run_dir),
                        raising=False)
    on = Path(_run(tmp_path, "learner=backprop", "trainer.epochs=1")["run_dir"])
    assert drawn == [on] and (on / "curves.png").is_file()  # the hook runs beside curves.png
    off = Path(_run(tmp_path, "learner=backprop", "trainer.epochs=1", "plots=false")["run_dir"])
    assert not list(off.rglob("*.png")) and drawn == [on]
    for bad in ("plots=maybe", "plots=1"):
        with pytest.raises(UsageError, match="plots"):
            bioplaus.compose([*TINY, bad])


def test_a_failed_picture_is_logged_and_does_not_fail_the_run(tmp_path: Path, monkeypatch) -> None:
    from learners.backprop import Backprop

    def broken(self, run_dir: Path, data=None) -> None:
        raise ValueError("broken picture")

    monkeypatch.setattr(Backprop, "write_figures", broken, raising=False)
    monkeypatch.setenv("BIOPLAUS_STRICT_PLOTS", "0")
    summary = _run(tmp_path, "learner=backprop", "trainer.epochs=1")
    run_dir = Path(summary["run_dir"])
    assert summary["status"] == "completed" and (run_dir / "curves.png").is_file()
    assert "could not draw the backprop figures: ValueError: broken picture" in (
        run_dir / "log.txt").read_text()
    monkeypatch.setenv("BIOPLAUS_STRICT_PLOTS", "1")  # as in the test suite: the bug surfaces
    with pytest.raises(ValueError, match="broken picture"):
        _run(tmp_path, "learner=backprop", "trainer.epochs=1")


def test_compare_plot_pools_seeds_of_one_configuration(tmp_path: Path, capsys) -> None:
    dirs = [Path(_run(tmp_path, "learner=backprop", "trainer.epochs=2", f"seed={s}")["run_dir"])
            for s in (0, 1)]
    dirs.append(Path(_run(tmp_path, "learner=mono_forward", "trainer.epochs=2")["run_dir"]))
    assert plots.configuration(dirs[0]) == plots.configuration(dirs[1]) != plots.configuration(dirs[2])
    picture = tmp_path / "out" / "compare.png"
    cli_main(["compare", str(tmp_path / "runs"), "--plot", str(picture)])
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 4  # the table still printed: header + 3 runs
    assert str(picture) in captured.err
    _picture(picture, plots.COMPARE_SIZE)
    for args in (["--plot", str(tmp_path / "c.txt")], ["--plot"], ["--plots", "x.png"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["compare", str(tmp_path / "runs"), *args])
        assert exit_info.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "c.txt").exists()


def test_bench_writes_a_png_beside_its_table_unless_plots_false(tmp_path: Path) -> None:
    out, runs = tmp_path / "results", tmp_path / "runs"
    common = ["--out", str(out), "--runs", str(runs), *TINY, "trainer.epochs=1"]
    markdown = bench_main(["fmnist_bp_mlp", "--seeds", "0", "1", "--name", "b", *common])
    assert markdown == out / "b.md"
    _picture(out / "b.png", plots.bench_size(1))
    bench_main(["fmnist_mf_mlp", "--name", "b", *common])  # a second row: a taller picture
    _picture(out / "b.png", plots.bench_size(2))
    bench_main(["fmnist_bp_mlp", "--name", "quiet", *common, "plots=false"])
    assert (out / "quiet.md").is_file() and not (out / "quiet.png").exists()
    assert plots.enabled(["circuit.channels=[8]", "plots=true"]) and not plots.enabled(["plots=false"])
    with pytest.raises(UsageError, match="plots"):
        plots.enabled(["plots=often"])
