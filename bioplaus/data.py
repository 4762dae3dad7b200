"""Data sets as tensors on the training device.

Every split is held whole on the device; batches are drawn by an on-device permutation, so no
DataLoader runs in the hot loop. A loader registered with `register_dataset` returns a
`RawData` (float images in their natural range, integer labels, train and test splits); `load`
then carves the seeded validation split, normalises with statistics of the training split, and
moves everything to the device.

Users with their own tensors skip the registry: `from_tensors(x, y, ...)` builds the same
`DataSplits` from any arrays.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.registry import register_dataset

DEFAULT_ROOT = Path(os.environ.get("BIOPLAUS_DATA", Path.home() / ".cache" / "bioplaus" / "data"))


@dataclass
class RawData:
    """What a loader returns: float inputs (N, *input_shape) and int64 labels, train and test."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int


@dataclass
class DataSplits:
    """Train / validation / test tensors on one device, plus the `Task` they define."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    task: Task
    name: str = "tensors"

    @property
    def device(self) -> torch.device:
        return self.train_x.device


def train_batches(
    x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled full batches of a split by one on-device permutation; the partial batch is dropped."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
    for start in range(0, n - batch_size + 1, batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


def eval_batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of a split in order, the last one partial."""
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


# -- building splits ----------------------------------------------------------------------------


def _normalise(raw: RawData, mode: str) -> tuple[Tensor, Tensor]:
    if mode == "none":
        return raw.train_x, raw.test_x
    if mode == "unit":
        scale = raw.train_x.abs().max().clamp_min(1e-12)
        return raw.train_x / scale, raw.test_x / scale
    if mode == "standard":
        # one mean/std per channel (dim 1), computed on the training split only
        dims = [d for d in range(raw.train_x.dim()) if d != 1] if raw.train_x.dim() > 2 else [0, 1]
        mean = raw.train_x.mean(dim=dims, keepdim=True)
        std = raw.train_x.std(dim=dims, keepdim=True).clamp_min(1e-12)
        return (raw.train_x - mean) / std, (raw.test_x - mean) / std
    raise UsageError(f"data.normalize must be one of standard, unit, none; got '{mode}'.")


def from_raw(
    raw: RawData,
    *,
    name: str = "tensors",
    val_fraction: float = 0.1,
    normalize: str = "standard",
    seed: int = 0,
    device: str | torch.device = "cpu",
    train_subset: int | None = None,
) -> DataSplits:
    """Carve a seeded validation split from train, normalise, and move every split to ``device``."""
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"data.val_fraction must lie in [0, 1); got {val_fraction}.")
    train_x, test_x = _normalise(raw, normalize)
    train_y, test_y = raw.train_y.long(), raw.test_y.long()
    order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * train_x.shape[0])
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_subset:
        train_idx = train_idx[:train_subset]
    task = Task(tuple(train_x.shape[1:]), raw.num_classes, "classification")

    def put(t: Tensor) -> Tensor:
        return t.contiguous().to(device)

    return DataSplits(
        put(train_x[train_idx].float()),
        put(train_y[train_idx]),
        put(train_x[val_idx].float()),
        put(train_y[val_idx]),
        put(test_x.float()),
        put(test_y),
        task,
        name,
    )


def from_tensors(
    x: Any,
    y: Any,
    *,
    test_x: Any | None = None,
    test_y: Any | None = None,
    num_classes: int | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    normalize: str = "standard",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> DataSplits:
    """`DataSplits` from your own arrays (numpy or torch), no dataset class needed.

    Without ``test_x``/``test_y`` a seeded ``test_fraction`` of the examples becomes the test split.
    """
    x_t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).float()
    y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).long()
    if x_t.shape[0] != y_t.shape[0]:
        raise UsageError(f"x has {x_t.shape[0]} examples but y has {y_t.shape[0]}.")
    if test_x is None:
        order = torch.randperm(x_t.shape[0], generator=torch.Generator().manual_seed(seed + 1))
        n_test = round(test_fraction * x_t.shape[0])
        tx, ty = x_t[order[:n_test]], y_t[order[:n_test]]
        x_t, y_t = x_t[order[n_test:]], y_t[order[n_test:]]
    else:
        tx, ty = torch.as_tensor(np.asarray(test_x)).float(), torch.as_tensor(np.asarray(test_y)).long()
    classes = num_classes or int(max(int(y_t.max()), int(ty.max()) if ty.numel() else 0) + 1)
    raw = RawData(x_t, y_t, tx, ty, classes)
    return from_raw(raw, val_fraction=val_fraction, normalize=normalize, seed=seed, device=device)


def load(cfg: Any, *, seed: int, device: str | torch.device) -> DataSplits:
    """Load the data set named ``cfg.name`` with the options of a ``data`` config group."""
    from bioplaus.registry import get_dataset

    loader = get_dataset(cfg.name)
    root = Path(os.path.expanduser(str(cfg.root))) if cfg.get("root") else None
    raw = loader(root=root, download=bool(cfg.get("download", False)))
    return from_raw(
        raw,
        name=cfg.name,
        val_fraction=float(cfg.get("val_fraction", 0.1)),
        normalize=str(cfg.get("normalize", "standard")),
        seed=seed,
        device=device,
        train_subset=cfg.get("train_subset"),
    )


def check_available(cfg: Any) -> None:
    """Raise `UsageError` now if the data set cannot be found (before a run directory exists)."""
    from bioplaus.registry import get_dataset

    loader = get_dataset(cfg.name)
    probe = getattr(loader, "locate", None)
    if probe is not None:
        root = Path(os.path.expanduser(str(cfg.root))) if cfg.get("root") else None
        probe(root=root, download=bool(cfg.get("download", False)))


# -- built-in data sets ---------------------------------------------------------------------------


@register_dataset("digits")
def load_digits(root: Path | None = None, download: bool = False) -> RawData:
    """scikit-learn's bundled 8×8 digits (1797 images, 0..16): the embedded default.

    It has no test split of its own: a fixed 20 % (seed 0) is held out as test.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    n_test = 360
    test, train = order[:n_test], order[n_test:]
    return RawData(x[train], y[train], x[test], y[test], 10)


def read_idx(path: Path) -> Tensor:
    """Read one IDX file (optionally gzipped) into a tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UsageError(f"{path} is not an unsigned-byte IDX file.")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return torch.from_numpy(array.copy())


IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _find_idx_folder(candidates: list[Path]) -> Path | None:
    for folder in candidates:
        if all((folder / f).exists() or (folder / (f + ".gz")).exists() for f in IDX_FILES.values()):
            return folder
    return None


def _idx_path(folder: Path, stem: str) -> Path:
    plain = folder / stem
    return plain if plain.exists() else folder / (stem + ".gz")


class _IdxDataset:
    """MNIST-format data set: a folder of the four IDX files, else torchvision's download."""

    def __init__(self, name: str, torchvision_class: str, system_folders: tuple[str, ...]):
        self.name = name
        self.torchvision_class = torchvision_class
        self.system_folders = system_folders

    def candidates(self, root: Path | None) -> list[Path]:
        bases = [root] if root is not None else [DEFAULT_ROOT / self.name]
        out: list[Path] = []
        for base in bases:
            out += [base, base / self.torchvision_class / "raw", base / self.name]
        if root is None:
            out += [Path(p) for p in self.system_folders]
        return out

    def locate(self, root: Path | None, download: bool) -> Path | None:
        folder = _find_idx_folder(self.candidates(root))
        if folder is None and not download:
            looked = ", ".join(str(p) for p in self.candidates(root))
            hint = (
                " On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` installs it in"
                " /usr/share/datasets/fashion-mnist."
                if self.name == "fashion_mnist"
                else ""
            )
            raise UsageError(
                f"data set '{self.name}' not found: looked for the four IDX files "
                f"({', '.join(IDX_FILES.values())}, optionally .gz) in {looked}. Set "
                f"data.root=DIR to a folder holding them, or data.download=true to fetch them "
                f"with torchvision.{hint}"
            )
        return folder

    def __call__(self, root: Path | None = None, download: bool = False) -> RawData:
        folder = self.locate(root, download)
        if folder is None:
            import torchvision.datasets as tvd

            target = root or DEFAULT_ROOT / self.name
            getattr(tvd, self.torchvision_class)(str(target), train=True, download=True)
            getattr(tvd, self.torchvision_class)(str(target), train=False, download=True)
            folder = _find_idx_folder(self.candidates(target))
            assert folder is not None, f"torchvision did not leave IDX files under {target}"
        parts = {key: read_idx(_idx_path(folder, stem)) for key, stem in IDX_FILES.items()}
        return RawData(
            parts["train_x"].float().unsqueeze(1),
            parts["train_y"].long(),
            parts["test_x"].float().unsqueeze(1),
            parts["test_y"].long(),
            10,
        )


register_dataset("mnist")(_IdxDataset("mnist", "MNIST", ()))
register_dataset("fashion_mnist")(
    _IdxDataset("fashion_mnist", "FashionMNIST", ("/usr/share/datasets/fashion-mnist",))
)


class _CifarDataset:
    """CIFAR-10/100 from the python-pickle batches (``cifar-10-batches-py`` / ``cifar-100-python``)."""

    def __init__(self, name: str, folder: str, train_files: tuple[str, ...], test_file: str,
                 label_key: bytes, num_classes: int, torchvision_class: str):
        self.name, self.folder = name, folder
        self.train_files, self.test_file = train_files, test_file
        self.label_key, self.num_classes = label_key, num_classes
        self.torchvision_class = torchvision_class

    def locate(self, root: Path | None, download: bool) -> Path | None:
        base = root if root is not None else DEFAULT_ROOT / self.name
        for folder in (base / self.folder, base):
            if all((folder / f).exists() for f in (*self.train_files, self.test_file)):
                return folder
        if download:
            return None
        raise UsageError(
            f"data set '{self.name}' not found: looked for {self.folder}/ "
            f"({', '.join(self.train_files)}, {self.test_file}) in {base}. Set data.root=DIR to the "
            f"folder that holds {self.folder}/, or data.download=true to fetch it with torchvision."
        )

    def _read(self, path: Path) -> tuple[Tensor, Tensor]:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        x = torch.from_numpy(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
        y = torch.tensor(batch[self.label_key], dtype=torch.long)
        return x.float(), y

    def __call__(self, root: Path | None = None, download: bool = False) -> RawData:
        folder = self.locate(root, download)
        if folder is None:
            import torchvision.datasets as tvd

            target = root or DEFAULT_ROOT / self.name
            getattr(tvd, self.torchvision_class)(str(target), train=True, download=True)
            folder = self.locate(target, False)
            assert folder is not None
        train = [self._read(folder / f) for f in self.train_files]
        test_x, test_y = self._read(folder / self.test_file)
        return RawData(
            torch.cat([t[0] for t in train]), torch.cat([t[1] for t in train]), test_x, test_y,
            self.num_classes,
        )


register_dataset("cifar10")(
    _CifarDataset("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                  "test_batch", b"labels", 10, "CIFAR10")
)
register_dataset("cifar100")(
    _CifarDataset("cifar100", "cifar-100-python", ("train",), "test", b"fine_labels", 100, "CIFAR100")
)
