"""Every registered learner × circuit pair: a compatible pair composes, builds and takes a finite
training step; an incompatible one is refused with a message naming what the learner trains."""

from __future__ import annotations

import pytest
import torch

import bioplaus
from bioplaus import registry
from bioplaus.errors import UsageError

PAIRS = [(learner, circuit) for learner in registry.learners() for circuit in registry.circuits()]


@pytest.mark.parametrize(("learner", "circuit"), PAIRS, ids=[f"{l}-{c}" for l, c in PAIRS])
def test_every_pair_builds_and_steps_or_is_refused(learner: str, circuit: str) -> None:
    overrides = [f"learner={learner}", f"circuit={circuit}", "device=cpu"]
    if not registry.get_learner(learner).supports(circuit):
        with pytest.raises(UsageError, match="cannot train"):
            bioplaus.compose(overrides)
        return
    cfg = bioplaus.compose(overrides)
    data, built_circuit, model = bioplaus.build(cfg)
    assert built_circuit is model.circuit
    rule = registry.get_learner(learner)
    # what the rule learns: its parameters, or (Hebbian storage, no parameters) its buffers
    state = list(model.parameters()) or list(model.buffers())
    before = [p.detach().clone() for p in state]
    out = model.train_step(data.train_x[:32], data.train_y[:32])
    assert all(torch.isfinite(v).all() for v in out.values()), out
    if rule.loss_metric is not None:
        assert rule.loss_metric in out, out
    assert any(not torch.equal(b, p) for b, p in zip(before, state, strict=True))
    if data.task.kind == "classification":
        scores = model.predict(data.test_x[:16])
        assert scores.shape == (16, data.task.num_classes)
    else:  # memory and other kinds: the learner's own evaluation names the monitored metric
        metrics = model.evaluate(data.test_x[:16], data.test_y[:16], 16)
        assert rule.monitor[0] in metrics
