"""Spiking data: the `shd` / `ssc` loaders on small HDF5 files written here, missing files, the
synthetic `temporal` set, and the `shd_dcls` preset composing and running one step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bioplaus.errors import UsageError
from bioplaus.spiking_data import bin_spikes, load_temporal
from tests.helpers import run_cli

h5py = pytest.importorskip("h5py", reason="the snn extra is not installed: pip install 'bioplaus[snn]'")


def write_heidelberg(path: Path, times: list[list[float]], units: list[list[int]], labels: list[int]) -> None:
    """A file laid out like the published SHD/SSC ones: spikes/times, spikes/units (ragged), labels."""
    with h5py.File(path, "w") as f:
        spikes = f.create_group("spikes")
        t_type, u_type = h5py.vlen_dtype(np.float16), h5py.vlen_dtype(np.uint16)
        t_set = spikes.create_dataset("times", (len(times),), dtype=t_type)
        u_set = spikes.create_dataset("units", (len(units),), dtype=u_type)
        for i, (t, u) in enumerate(zip(times, units, strict=True)):
            t_set[i] = np.asarray(t, dtype=np.float16)
            u_set[i] = np.asarray(u, dtype=np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))


def test_binning_sums_five_channels_and_ten_millisecond_bins():
    times = [np.array([0.0, 0.004, 0.012, 0.012, 0.095, 0.2])]
    units = [np.array([0, 4, 5, 699, 3, 1])]
    x = bin_spikes(times, units, steps=10, dt=0.01)
    assert x.shape == (1, 10, 140)
    assert x[0, 0, 0] == 2  # units 0 and 4 in [0, 10) ms share channel 0
    assert x[0, 1, 1] == 1 and x[0, 1, 139] == 1
    assert x[0, 9, 0] == 1  # 95 ms -> bin 9
    assert x.sum() == 5  # the spike at 200 ms lies past T·Δt and is dropped


@pytest.mark.parametrize("name,classes", [("shd", 20), ("ssc", 35)])
def test_heidelberg_loader_reads_generated_files(tmp_path, name, classes):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 5)):
        times = [sorted(rng.uniform(0, 0.5, 30).round(3).tolist()) for _ in range(n)]
        units = [rng.integers(0, 700, 30).tolist() for _ in range(n)]
        write_heidelberg(tmp_path / f"{name}_{split}.h5", times, units, list(rng.integers(0, classes, n)))
    from bioplaus.registry import get_dataset

    raw = get_dataset(name)(root=tmp_path)
    assert raw.train_x.shape[0] == 12 and raw.test_x.shape[0] == 5
    assert raw.train_x.shape[2] == 140 and raw.num_classes == classes
    assert 50 <= raw.train_x.shape[1] <= 51  # ⌈0.5 s / 10 ms⌉ bins (times stored as float16)
    assert raw.train_x.sum() == 12 * 30  # counts: every spike lands in one bin
    raw = get_dataset(name)(root=tmp_path, dt_ms=20.0, duration_ms=100.0)
    assert raw.train_x.shape[1] == 5


def test_missing_heidelberg_files_say_where_to_get_them(tmp_path):
    from bioplaus.registry import get_dataset

    with pytest.raises(UsageError, match=r"zenkelab\.org"):
        get_dataset("shd")(root=tmp_path)
    result = run_cli("run", "learner=dcls", "data=shd", f"data.root={tmp_path}",
                     f"paths.runs={tmp_path}/runs", timeout=120)
    assert result.returncode == 2, result.stderr
    assert "shd_train.h5" in result.stderr and "zenkelab.org" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))


def test_temporal_data_differ_only_in_relative_timing():
    a = load_temporal(seed=3)
    assert torch.equal(a.train_x, load_temporal(seed=3).train_x)
    assert not torch.equal(a.train_x, load_temporal(seed=4).train_x)
    x = torch.cat([a.train_x, a.test_x])
    assert x.shape[1:] == (40, 8) and a.num_classes == 4
    assert torch.equal(x.sum(dim=1), torch.ones(x.shape[0], 8))  # every channel fires once
    assert int(x.sum(dim=2).max()) == 1  # never two spikes in one step
    # spikes of one example are at least `gap` steps apart
    times = x.argmax(dim=1).sort(dim=1).values
    assert int((times[:, 1:] - times[:, :-1]).min()) >= 3
    assert torch.bincount(a.train_y).tolist() == [500] * 4


def test_shd_dcls_preset_composes_and_runs_one_step(tmp_path):
    pytest.importorskip("DCLS", reason="the snn extra is not installed")
    from bioplaus.config import compose
    from bioplaus.engine import build

    rng = np.random.default_rng(1)
    for split, n in (("train", 330), ("test", 20)):
        times = [sorted(rng.uniform(0, 0.2, 40).tolist()) for _ in range(n)]
        units = [rng.integers(0, 700, 40).tolist() for _ in range(n)]
        write_heidelberg(tmp_path / f"shd_{split}.h5", times, units, list(rng.integers(0, 20, n)))
    cfg = compose(["experiment=shd_dcls", f"data.root={tmp_path}", "device=cpu", f"paths.runs={tmp_path}"])
    assert cfg.trainer.epochs == 150 and cfg.trainer.batch_size == 256 and cfg.learner.epochs == 150
    assert list(cfg.circuit.hidden) == [256, 256] and cfg.circuit.max_delay == 25
    assert cfg.circuit.dropout == 0.4
    data, circuit, learner = build(cfg)
    assert data.task.input_shape[1] == 140
    n = (sum(s.weight.numel() for s in circuit.synapses())
         + sum(p.numel() for p in circuit.position_parameters()))
    assert n == 2 * (140 * 256 + 256 * 256 + 256 * 20)
    out = learner.train_step(data.train_x[:256], data.train_y[:256])
    assert torch.isfinite(out["loss"])
