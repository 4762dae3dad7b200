"""Data: splits on the device, seeded validation split, IDX and CIFAR readers on generated files."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bioplaus import data
from bioplaus.errors import UsageError


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_idx_folder(folder: Path, n_train: int = 50, n_test: int = 20, compress: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28)),
        "train_y": np.arange(n_train) % 10,
        "test_x": rng.integers(0, 256, (n_test, 28, 28)),
        "test_y": np.arange(n_test) % 10,
    }
    for key, stem in data.IDX_FILES.items():
        _write_idx(folder / stem, arrays[key], compress)


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x", array, compress=True)
    _write_idx(tmp_path / "y", array, compress=False)
    assert torch.equal(data.read_idx(tmp_path / "x.gz"), torch.from_numpy(array))
    assert torch.equal(data.read_idx(tmp_path / "y"), torch.from_numpy(array))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_loads(name: str, compress: bool, tmp_path: Path) -> None:
    make_idx_folder(tmp_path, compress=compress)
    cfg = OmegaConf.create({"name": name, "root": str(tmp_path), "download": False, "val_fraction": 0.2})
    splits = data.load(cfg, seed=0, device="cpu")
    assert splits.train_x.shape == (40, 1, 28, 28) and splits.val_x.shape == (10, 1, 28, 28)
    assert splits.test_x.shape == (20, 1, 28, 28)
    assert splits.task.num_classes == 10 and splits.task.input_shape == (1, 28, 28)
    # standardised with the training split's statistics
    assert abs(float(torch.cat([splits.train_x, splits.val_x]).mean())) < 1e-4


def test_torchvision_layout_is_found(tmp_path: Path) -> None:
    make_idx_folder(tmp_path / "FashionMNIST" / "raw")
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(tmp_path)})
    assert data.load(cfg, seed=0, device="cpu").test_x.shape[0] == 20


def test_missing_idx_data_says_where_it_looked(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"name": "mnist", "root": str(tmp_path / "empty"), "download": False})
    with pytest.raises(UsageError, match="looked for the four IDX files") as info:
        data.check_available(cfg)
    assert str(tmp_path / "empty") in str(info.value) and "data.download=true" in str(info.value)


def test_cifar_pickles_load(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), b"labels": [0, 1, 2, 3]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    cfg = OmegaConf.create({"name": "cifar10", "root": str(tmp_path), "val_fraction": 0.25})
    splits = data.load(cfg, seed=0, device="cpu")
    assert splits.train_x.shape == (15, 3, 32, 32) and splits.test_x.shape == (4, 3, 32, 32)
    missing = OmegaConf.create({"name": "cifar100", "root": str(tmp_path)})
    with pytest.raises(UsageError, match="cifar-100-python"):
        data.check_available(missing)


def test_digits_split_is_seeded_and_disjoint() -> None:
    raw = data.load_digits()
    a = data.from_raw(raw, seed=1)
    b = data.from_raw(raw, seed=1)
    c = data.from_raw(raw, seed=2)
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)
    assert a.train_x.shape[0] + a.val_x.shape[0] == 1437 and a.test_x.shape[0] == 360
    rows = {tuple(r.tolist()) for r in a.train_x.flatten(1)}
    assert not any(tuple(r.tolist()) in rows for r in a.val_x.flatten(1)[:20])


def test_train_batches_cover_the_split_once_and_drop_the_partial_batch() -> None:
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)
    gen = torch.Generator().manual_seed(0)
    batches = list(data.train_batches(x, y, 3, gen))
    assert len(batches) == 3 and all(b[0].shape[0] == 3 for b in batches)
    seen = torch.cat([b[1] for b in batches])
    assert len(set(seen.tolist())) == 9
    assert all(torch.equal(bx.squeeze(1).long(), by) for bx, by in batches)


def test_from_tensors_builds_splits_and_task() -> None:
    x = np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32)
    y = np.arange(100) % 3
    splits = data.from_tensors(x, y, test_fraction=0.2, val_fraction=0.1)
    assert splits.test_x.shape == (20, 5) and splits.val_x.shape == (8, 5) and splits.train_x.shape == (72, 5)
    assert splits.task.num_classes == 3 and splits.task.input_shape == (5,)
    with pytest.raises(UsageError, match="examples"):
        data.from_tensors(x, y[:50])


def test_normalisation_modes() -> None:
    raw = data.load_digits()
    unit = data.from_raw(raw, normalize="unit")
    assert float(unit.train_x.max()) <= 1.0 and float(unit.train_x.min()) >= 0.0
    with pytest.raises(UsageError, match="normalize"):
        data.from_raw(raw, normalize="zscore")


def test_zca_whitens_with_training_statistics() -> None:
    """Hand-built covariance: x = z·A with z white, so C = AᵀA; after ZCA with ε → 0 the training
    covariance is the identity, and with ε = e·mean(λ) each eigenvalue λ becomes λ / (λ + e·mean(λ))
    along the same eigenvector (ZCA keeps the axes: the map is symmetric)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.2]], dtype=torch.float64)
    train = (torch.randn(20000, 3, generator=gen, dtype=torch.float64) @ a + 5.0).float().reshape(20000, 1, 3)
    test = train[:7] * 2.0
    white, white_test = data.zca(train, test, 1e-9)
    assert white.shape == train.shape and white_test.shape == test.shape
    flat = white.reshape(20000, 3).double()
    assert flat.mean(0).abs().max() < 1e-4
    cov = flat.t() @ flat / 20000
    assert torch.allclose(cov, torch.eye(3, dtype=torch.float64), atol=1e-4)
    # the test split goes through the same affine map: x ↦ (x − μ) M, so 2x ↦ 2(x − μ)M + μM
    mu = train.reshape(20000, 3).double().mean(0)
    m = torch.linalg.lstsq(train.reshape(20000, 3).double() - mu, flat).solution
    expected = (test.reshape(7, 3).double() - mu) @ m
    assert torch.allclose(white_test.reshape(7, 3).double(), expected, atol=1e-4)
    # regularised: eigenvalues λ/(λ + ε), ε = 0.5·mean(λ)
    x = train.reshape(20000, 3).double()
    c = (x - mu).t() @ (x - mu) / 20000
    lam, u = torch.linalg.eigh(c)
    eps = 0.5 * lam.mean()
    damped = data.zca(train, test, 0.5)[0].reshape(20000, 3).double()
    got = u.t() @ (damped.t() @ damped / 20000) @ u
    assert torch.allclose(got, torch.diag(lam / (lam + eps)), atol=1e-4)


def test_zca_normalisation_through_from_tensors_and_bad_epsilon() -> None:
    x = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32) * [1, 2, 3, 4] + 7
    splits = data.from_tensors(x, np.arange(300) % 2, normalize="zca", zca_epsilon=1e-6)
    assert abs(float(splits.train_x.mean())) < 0.2 and abs(float(splits.train_x.std()) - 1.0) < 0.1
    for bad in (0, -1.0, "x", True):
        with pytest.raises(UsageError, match="zca_epsilon"):
            data.from_tensors(x, np.arange(300) % 2, normalize="zca", zca_epsilon=bad)


def test_digits_are_scikit_learns_bundled_digits_with_a_fixed_test_split() -> None:
    """The digits file is read without importing scikit-learn; it must equal its loader's output."""
    from sklearn.datasets import load_digits as sklearn_digits

    from bioplaus.data import load_digits

    raw = load_digits()
    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    assert torch.equal(raw.train_x, images[order[360:]]) and torch.equal(raw.test_x, images[order[:360]])
    assert torch.equal(raw.train_y, labels[order[360:]]) and torch.equal(raw.test_y, labels[order[:360]])
    assert raw.train_y.dtype == torch.long and raw.num_classes == 10
