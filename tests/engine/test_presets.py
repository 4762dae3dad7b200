"""Every experiment preset composes and passes the run's validation (data files aside)."""

from __future__ import annotations

import pytest

from bioplaus import config, data

PRESETS = config.group_options("experiment")


def test_there_are_presets() -> None:
    assert "fmnist_hebbian_krotov" in PRESETS and len(PRESETS) > 10


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_validates(name: str) -> None:
    cfg = config.compose([f"experiment={name}"], check=False)
    config.validate(cfg, check_data=False, check_paths=False)
    assert cfg.data.get("normalize", "standard") in data.NORMALIZE
