"""Fixtures of the learner tests."""

from __future__ import annotations

import pytest

from bioplaus.data import DataSplits, from_raw, load_digits


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    """The bundled digits, split with seed 0 (8×8 images, 10 classes)."""
    return from_raw(load_digits(), name="digits", seed=0)
