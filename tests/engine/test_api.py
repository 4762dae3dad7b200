"""The library API: a light import, compose/train/build, training on your own tensors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bioplaus


def test_import_is_light() -> None:
    code = ("import sys, bioplaus; heavy = [m for m in ('hydra', 'wandb', 'brian2', 'spikingjelly', "
            "'omegaconf', 'snntorch', 'dcls') if m in sys.modules]; print(heavy); assert not heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_and_train_return_the_summary(tmp_path: Path) -> None:
    cfg = bioplaus.compose(["learner=mono_forward", "trainer.epochs=2", f"paths.runs={tmp_path}"])
    assert cfg.learner.name == "mono_forward" and cfg.trainer.epochs == 2
    summary = bioplaus.train(cfg, quiet=True)
    assert summary["status"] == "completed" and summary["learner"] == "mono_forward"
    assert 0.5 < summary["test_accuracy"] <= 1.0
    assert Path(summary["run_dir"]).parent.parent == tmp_path


def test_build_returns_parts_for_an_own_loop() -> None:
    cfg = bioplaus.compose(["learner=backprop", "circuit.hidden=[16]"])
    data, circuit, learner = bioplaus.build(cfg)
    assert [b.out_features for b in circuit.blocks] == [16, 10]
    metrics = learner.train_step(data.train_x[:32], data.train_y[:32])
    assert set(metrics) >= {"loss", "accuracy"} and metrics["loss"].dim() == 0
    assert learner.predict(data.test_x[:5]).shape == (5, 10)


def test_same_seed_same_metrics_on_cpu(tmp_path: Path) -> None:
    args = ["learner=backprop", "trainer.epochs=2", "circuit.hidden=[32]", f"paths.runs={tmp_path}"]
    a = bioplaus.train(bioplaus.compose(args), quiet=True)
    b = bioplaus.train(bioplaus.compose(args), quiet=True)
    ra = (Path(a["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    rb = (Path(b["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(line).items() if k != "train_seconds"}
             for line in ra + rb]
    assert strip[: len(ra)] == strip[len(ra):]
    assert a["test_accuracy"] == b["test_accuracy"]


def test_train_on_user_tensors(tmp_path: Path) -> None:
    # two Gaussian blobs per class in 6-D: learnable, not trivially separable by one feature
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 6)) * 2.0
    y = np.repeat(np.arange(3), 200)
    x = centres[y] + rng.normal(size=(600, 6))
    data = bioplaus.from_tensors(x.astype(np.float32), y)
    cfg = bioplaus.compose(["learner=backprop", "circuit.hidden=[32]", "trainer.epochs=15",
                            f"paths.runs={tmp_path}"])
    summary = bioplaus.train(cfg, data=data, quiet=True)
    assert summary["status"] == "completed" and summary["data"] == "tensors"
    assert summary["test_accuracy"] > 0.85
    _, circuit, _ = bioplaus.build(cfg, data)
    assert circuit.blocks[0].linear.in_features == 6


def test_unknown_learner_raises_usage_error() -> None:
    with pytest.raises(bioplaus.UsageError, match="Valid learners"):
        bioplaus.compose(["learner=nope"])


def test_plugins_register_through_the_decorators() -> None:
    from bioplaus import registry
    from bioplaus.learners.backprop import Backprop

    @bioplaus.register_learner
    class Plugin(Backprop):
        name = "test_plugin_rule"

    try:
        assert registry.get_learner("test_plugin_rule") is Plugin
        assert registry.compatibility()["test_plugin_rule"]["mlp"]
    finally:
        registry._LEARNERS.pop("test_plugin_rule")


def test_resume_api_extends_a_run(tmp_path: Path) -> None:
    cfg = bioplaus.compose(["learner=backprop", "trainer.epochs=1", "circuit.hidden=[16]",
                            f"paths.runs={tmp_path}"])
    first = bioplaus.train(cfg, quiet=True)
    from bioplaus.engine import resume

    second = resume(first["run_dir"], ["trainer.epochs=2"], quiet=True)
    assert second["epochs_completed"] == 2 and second["run_dir"] == first["run_dir"]
    assert torch.is_tensor(torch.load(Path(first["run_dir"]) / "checkpoints/last.pt",
                                      weights_only=False)["learner"]["circuit.blocks.0.linear.weight"])
