"""The step runner: eager on CPU; on CUDA a captured graph that computes what eager steps compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bioplaus
from bioplaus.runtime import StepRunner
from tests.floors import assert_above


def test_cpu_runner_is_eager() -> None:
    cfg = bioplaus.compose(["learner=backprop", "circuit.hidden=[8]", "device=cpu"])
    data, _, learner = bioplaus.build(cfg)
    runner = StepRunner(learner, torch.device("cpu"), "auto")
    out = runner.step(data.train_x[:16], data.train_y[:16])
    assert not runner.graphed and out["loss"].dim() == 0


@pytest.mark.gpu
@pytest.mark.parametrize("learner", ["backprop", "mono_forward", "counter_current", "tpsgd", "local_aux"])
def test_graphed_steps_match_eager_steps(learner: str) -> None:
    """Same seed, same batches: graph replays leave the same weights as eager steps."""
    overrides = [f"learner={learner}", "circuit.hidden=[64,64]", "device=cuda"]
    weights = {}
    for mode in ("off", "on"):
        cfg = bioplaus.compose(overrides)
        data, _, model = bioplaus.build(cfg)
        runner = StepRunner(model, torch.device("cuda"), mode, warmup_steps=2)
        gen = torch.Generator(device="cuda").manual_seed(0)
        torch.manual_seed(1)
        for _ in range(8):
            index = torch.randint(0, data.train_x.shape[0], (32,), device="cuda", generator=gen)
            runner.step(data.train_x[index], data.train_y[index])
        torch.cuda.synchronize()
        assert runner.graphed == (mode == "on")
        tensors = [*model.named_parameters(), *model.named_buffers()]
        weights[mode] = {k: v.detach().clone() for k, v in tensors}
    for key, value in weights["off"].items():
        assert torch.allclose(value, weights["on"][key], atol=1e-4, rtol=1e-4), key


# learner (and overrides) -> margin over the accuracy of the same run with the circuit's hidden
# blocks frozen at their initial values; None: the hidden blocks' own local objective is checked
CAPTURED = {
    "backprop": 0.03,
    "mono_forward": 0.03,
    "forward_forward": 0.5,  # goodness readout: nothing to read without trained layers
    "noprop": 0.3,
    "counter_current": 0.01,
    "tpsgd": None,
    "tpsgd learner.variant=drtp": None,
    "mono_forward circuit=g2g": 0.03,
    "local_aux": 0.03,
    "local_aux learner.aux=infopro circuit=cnn": 0.03,
}
LOCAL_OBJECTIVE = {"tpsgd": ("train_loss_l1", "train_loss_l2"),
                   "tpsgd learner.variant=drtp": ("train_alignment_l1", "train_alignment_l2")}


@pytest.mark.gpu
@pytest.mark.parametrize("learner", list(CAPTURED))
def test_every_learner_is_captured_and_trains(learner: str, tmp_path, untrained) -> None:
    """A run with its defaults and runtime.cuda_graphs=on (capture failure is an error) learns above
    the same run with its hidden blocks frozen (eager), by the stated margin — or, for tpsgd/DRTP,
    its hidden blocks' local objective improves (loss halves / alignment reaches 0.5)."""
    run = [f"learner={learner.split()[0]}", *learner.split()[1:], "device=cuda"]
    cfg = bioplaus.compose([*run, "runtime.cuda_graphs=on", f"paths.runs={tmp_path}"])
    summary = bioplaus.train(cfg, quiet=True)
    assert summary["cuda_graphs"] is True
    margin = CAPTURED[learner]
    if margin is not None:
        frozen = untrained.run([*run, "runtime.cuda_graphs=off"])
        assert_above(f"{learner} captured", summary["test_accuracy"], frozen["test_accuracy"], margin)
        return
    epochs = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").open()]
    for key in LOCAL_OBJECTIVE[learner]:
        if "loss" in key:
            assert epochs[-1][key] <= 0.5 * epochs[0][key], (key, epochs[0][key], epochs[-1][key])
        else:
            assert epochs[-1][key] >= 0.5, (key, epochs[-1][key])


@pytest.mark.gpu
def test_summary_says_whether_the_steps_were_captured(tmp_path, monkeypatch) -> None:
    """`captured` is true only when the steps really ran as CUDA graphs: under `auto` a step that
    cannot be captured (here: a host read of its loss) falls back to eager steps, and says so."""
    from bioplaus import registry

    common = ["learner=backprop", "data=digits", "trainer.epochs=1", "device=cuda"]
    graphed = bioplaus.train(bioplaus.compose([*common, "runtime.cuda_graphs=on",
                                               f"paths.runs={tmp_path / 'on'}"]), quiet=True)
    assert graphed["captured"] is True and graphed["cuda_graph_captures"] >= 1
    cls = registry.get_learner("backprop")
    step = cls.train_step

    def syncing_step(self, x, y):
        out = step(self, x, y)
        float(out["loss"])  # a host read: not capturable
        return out

    monkeypatch.setattr(cls, "train_step", syncing_step)
    fallback = bioplaus.train(bioplaus.compose([*common, "runtime.cuda_graphs=auto",
                                                f"paths.runs={tmp_path / 'auto'}"]), quiet=True)
    assert fallback["captured"] is False and fallback["cuda_graph_captures"] == 0
    assert fallback["test_accuracy"] > 0.5  # it went on eagerly


def test_cpu_summary_reports_no_capture(tmp_path) -> None:
    summary = bioplaus.train(bioplaus.compose(["learner=backprop", "data=digits", "trainer.epochs=1",
                                               "circuit.hidden=[16]", "threads=1",
                                               f"paths.runs={tmp_path}"]), quiet=True)
    assert summary["captured"] is False and summary["cuda_graph_captures"] == 0
    assert summary["cuda_graphs"] is False
