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
    before = [p.detach().clone() for p in model.parameters()]
    out = model.train_step(data.train_x[:32], data.train_y[:32])
    assert torch.isfinite(out["loss"]), out
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    scores = model.predict(data.test_x[:16])
    assert scores.shape == (16, data.task.num_classes)
