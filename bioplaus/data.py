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
import math
import os
import pickle
import struct
import zlib
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


NORMALIZE = ("standard", "unit", "zca", "none")


def zca(train_x: Tensor, test_x: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """ZCA whitening with statistics of the training split (Bell & Sejnowski 1997; the usual
    preprocessing before competitive feature learning, e.g. Coates, Lee & Ng, AISTATS 2011).

    Inputs are flattened to (N, D); with μ the training mean and C = U Λ Uᵀ the training covariance,
    x ← (x − μ) U (Λ + ε)^{−1/2} Uᵀ, reshaped back. ε = ``epsilon`` · mean(Λ) (the mean input
    variance), so ``epsilon`` is free of the input's scale; it damps the low-variance directions
    (pixel noise) that plain whitening would blow up. The map is linear and invertible.
    """
    shape = train_x.shape[1:]
    flat = train_x.reshape(train_x.shape[0], -1)
    mean = flat.double().mean(0)
    cov = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64)
    for start in range(0, flat.shape[0], 8192):  # float64 sums, in chunks: bounded memory
        chunk = flat[start : start + 8192].double() - mean
        cov += chunk.t() @ chunk
    lam, u = torch.linalg.eigh(cov / flat.shape[0])
    lam = lam.clamp_min(0.0)
    whiten = (u * (lam + epsilon * lam.mean().clamp_min(1e-12)).rsqrt()) @ u.t()

    def apply(x: Tensor) -> Tensor:
        return ((x.reshape(x.shape[0], -1).double() - mean) @ whiten).to(x.dtype).reshape(x.shape[0], *shape)

    return apply(train_x), apply(test_x)


def _normalise(raw: RawData, mode: str, zca_epsilon: float = 1.0) -> tuple[Tensor, Tensor]:
    if mode == "zca":
        return zca(raw.train_x.float(), raw.test_x.float(), zca_epsilon)
    if mode == "none":
        return raw.train_x, raw.test_x
    if mode == "unit":
        scale = raw.train_x.abs().max().clamp_min(1e-12)
        return raw.train_x / scale, raw.test_x / scale
    if mode == "standard":
        # computed on the training split only: one mean/std per feature of (N, D) data, per
        # channel (dim 1) of (N, C, ...) data; a constant feature/channel is only centred
        dims = [d for d in range(raw.train_x.dim()) if d != 1] if raw.train_x.dim() > 2 else [0]
        mean = raw.train_x.mean(dim=dims, keepdim=True)
        std = raw.train_x.std(dim=dims, keepdim=True) if raw.train_x.shape[0] > 1 else torch.zeros_like(mean)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        return (raw.train_x - mean) / std, (raw.test_x - mean) / std
    raise UsageError(f"data.normalize must be one of {', '.join(NORMALIZE)}; got '{mode}'.")


def from_raw(
    raw: RawData,
    *,
    name: str = "tensors",
    val_fraction: float = 0.1,
    normalize: str = "standard",
    seed: int = 0,
    device: str | torch.device = "cpu",
    train_subset: int | None = None,
    zca_epsilon: float = 1.0,
) -> DataSplits:
    """Carve a seeded validation split from train, normalise, and move every split to ``device``."""
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"data.val_fraction must lie in [0, 1); got {val_fraction}.")
    if isinstance(zca_epsilon, bool) or not isinstance(zca_epsilon, (int, float)) or not zca_epsilon > 0:
        raise UsageError(f"data.zca_epsilon must be a number > 0; got {zca_epsilon!r}.")
    train_x, test_x = _normalise(raw, normalize, float(zca_epsilon))
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


def _inputs(name: str, x: Any) -> Tensor:
    """``x`` as a float tensor of shape (N, ...), N ≥ 1, every cell finite (`UsageError` otherwise)."""
    try:
        t = (x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))).float()
    except (TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"{name} must be a numeric array (numpy or torch) of shape (N, ...); "
                         f"it could not be read as one ({' '.join(str(e).split())}).") from None
    if t.dim() < 2 or t.shape[0] == 0:
        raise UsageError(f"{name} must have shape (N, features...) with N ≥ 1 examples; got shape "
                         f"{tuple(t.shape)}.")
    bad = int((~torch.isfinite(t)).flatten(1).any(dim=1).sum())
    if bad:
        raise UsageError(f"{bad} of the {t.shape[0]} rows of {name} hold NaN or inf values; remove "
                         f"or impute them before training (one non-finite cell poisons the "
                         f"normalisation of every split).")
    return t


def _labels(name: str, y: Any, n: int, num_classes: int | None) -> Tensor:
    """``y`` as int64 class indices: a 1-D integer array of length ``n`` in [0, C)."""
    try:
        array = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{name} must be a 1-D integer array of class indices: {e}") from None
    rule = f"{name} must be a 1-D integer array of class indices in [0, C)"
    if array.ndim != 1:
        hint = " (one-hot labels? pass y.argmax(1))" if array.ndim == 2 else ""
        raise UsageError(f"{rule}; got an array of shape {array.shape}{hint}.")
    if array.dtype.kind not in "iu":
        integral = array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all()
        if not integral or array.dtype.kind == "b":
            raise UsageError(f"{rule}; got dtype {array.dtype}"
                             + (f" (e.g. {array.flat[0]!r})" if array.size else "") + ".")
    if array.shape[0] != n:
        raise UsageError(f"{name} has {array.shape[0]} labels but its inputs have {n} examples.")
    if array.size and array.min() < 0:
        raise UsageError(f"{rule}; it holds the label {int(array.min())}.")
    if num_classes is not None and array.size and array.max() >= num_classes:
        raise UsageError(f"{rule} with C = num_classes = {num_classes}; it holds the label "
                         f"{int(array.max())}.")
    return torch.as_tensor(array.astype(np.int64))


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
    zca_epsilon: float = 1.0,
) -> DataSplits:
    """`DataSplits` from your own arrays (numpy or torch), no dataset class needed.

    ``x``: (N, D) features or (N, C, H, W) images (any (N, ...) shape), finite numbers.
    ``y``: (N,) integer class indices in [0, C); C is ``num_classes`` or the largest label + 1.
    Without ``test_x``/``test_y`` a seeded ``test_fraction`` of the examples becomes the test split;
    then a seeded ``val_fraction`` of the rest becomes the validation split.
    ``normalize="standard"`` standardises with statistics of the training split: one mean and
    standard deviation per feature for (N, D) data, per channel (dim 1) for (N, C, ...) data;
    ``"unit"`` divides by the largest absolute value; ``"zca"`` whitens (`zca`, regularised by
    ``zca_epsilon`` times the mean input variance); ``"none"`` leaves the values.

    Raises `UsageError` before anything runs for: arrays that are not numeric, a NaN or inf cell
    (naming how many rows of which array), labels that are not a 1-D integer array in [0, C)
    (naming the offending value), lengths that differ, and fractions or options out of range.
    """
    from bioplaus.errors import check_choice

    check_choice("normalize", normalize, NORMALIZE)
    if isinstance(num_classes, bool) or (num_classes is not None and (
            not isinstance(num_classes, (int, np.integer)) or num_classes < 2)):
        raise UsageError(f"num_classes must be an integer ≥ 2 (or None to infer it); got {num_classes!r}.")
    for key, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise UsageError(f"{key} must lie in [0, 1); got {value!r}.")
    if (test_x is None) != (test_y is None):
        raise UsageError("give test_x and test_y together (or neither, to split off test_fraction).")
    x_t = _inputs("x", x)
    y_t = _labels("y", y, x_t.shape[0], num_classes)
    if test_x is None:
        order = torch.randperm(x_t.shape[0], generator=torch.Generator().manual_seed(seed + 1))
        n_test = round(test_fraction * x_t.shape[0])
        tx, ty = x_t[order[:n_test]], y_t[order[:n_test]]
        x_t, y_t = x_t[order[n_test:]], y_t[order[n_test:]]
    else:
        tx = _inputs("test_x", test_x)
        ty = _labels("test_y", test_y, tx.shape[0], num_classes)
        if tx.shape[1:] != x_t.shape[1:]:
            raise UsageError(f"test_x has examples of shape {tuple(tx.shape[1:])} but x has "
                             f"{tuple(x_t.shape[1:])}.")
    n_train = x_t.shape[0] - round(val_fraction * x_t.shape[0])
    if n_train < 1 or tx.shape[0] < 1:
        raise UsageError(f"too few examples ({x_t.shape[0] + tx.shape[0]}) for a training, validation "
                         f"and test split (test_fraction={test_fraction}, val_fraction={val_fraction}).")
    classes = int(num_classes) if num_classes is not None else int(max(int(y_t.max()), int(ty.max())) + 1)
    if classes < 2:
        raise UsageError("y holds a single class (0); classification needs at least two.")
    raw = RawData(x_t, y_t, tx, ty, classes)
    return from_raw(raw, val_fraction=val_fraction, normalize=normalize, seed=seed, device=device,
                    zca_epsilon=zca_epsilon)


COMMON_KEYS = ("name", "root", "download", "val_fraction", "normalize", "zca_epsilon", "train_subset")


def load(cfg: Any, *, seed: int, device: str | torch.device) -> DataSplits:
    """Load the data set named ``cfg.name`` with the options of a ``data`` config group."""
    from bioplaus.registry import get_dataset

    loader = get_dataset(cfg.name)
    splits = getattr(loader, "build_splits", None)
    if splits is not None:  # a data set built from its own options (e.g. `patterns`)
        return splits(cfg, seed=seed, device=device)
    root = Path(os.path.expanduser(str(cfg.root))) if cfg.get("root") else None
    # keys beyond the common ones are the data set's own options (e.g. `temporal`'s seed, `shd`'s dt_ms)
    extra = {k: v for k, v in cfg.items() if k not in COMMON_KEYS}
    raw = loader(root=root, download=bool(cfg.get("download", False)), **extra)
    return from_raw(
        raw,
        name=cfg.name,
        val_fraction=float(cfg.get("val_fraction", 0.1)),
        normalize=str(cfg.get("normalize", "standard")),
        seed=seed,
        device=device,
        train_subset=cfg.get("train_subset"),
        zca_epsilon=cfg.get("zca_epsilon", 1.0),
    )


def check_available(cfg: Any) -> None:
    """Raise `UsageError` now if the data set cannot be found (before a run directory exists)."""
    from bioplaus.registry import get_dataset

    loader = get_dataset(cfg.name)
    check = getattr(loader, "check_config", None)
    if check is not None:  # a data set built from its own options checks them all
        check(cfg)
        return
    probe = getattr(loader, "locate", None)
    if probe is not None:
        root = Path(os.path.expanduser(str(cfg.root))) if cfg.get("root") else None
        probe(root=root, download=bool(cfg.get("download", False)))


# -- built-in data sets ---------------------------------------------------------------------------


@register_dataset("digits")
def load_digits(root: Path | None = None, download: bool = False) -> RawData:
    """scikit-learn's bundled 8×8 digits (1797 images, 0..16): the embedded default.

    It has no test split of its own: a fixed 20 % (seed 0) is held out as test. The file is read
    from scikit-learn's package folder (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the
    label per row, the order of ``sklearn.datasets.load_digits``) without importing scikit-learn,
    which would add about a second to every start.
    """
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the digits data set ships with scikit-learn, which is not installed: "
                         "pip install scikit-learn")
    table = np.loadtxt(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz",
                       delimiter=",", dtype=np.float32)
    x = torch.from_numpy(table[:, :-1].reshape(-1, 1, 8, 8).copy())
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    n_test = 360
    test, train = order[:n_test], order[n_test:]
    return RawData(x[train], y[train], x[test], y[test], 10)


def damaged(path: Path, problem: str) -> UsageError:
    """The `UsageError` of a damaged data file: which file, what is wrong, what to do."""
    return UsageError(f"data file {path} is damaged: {problem}. Delete it and download it again "
                      f"(data.download=true), or point data.root=DIR at an intact copy.")


def read_idx(path: Path, ndim: int | None = None) -> Tensor:
    """Read one IDX file (optionally gzipped) into a uint8 tensor of the shape its header gives.

    A file that is not gzip where its name says so, is empty, is not unsigned-byte IDX (e.g. an
    HTML page saved by a failed download), has ``ndim`` other than expected, or holds fewer or
    more bytes than its header announces is a `UsageError` naming the file.
    """
    gz = path.suffix == ".gz"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        looks = ""
        if gz and path.is_file():
            with open(path, "rb") as f:
                html = f.read(64).lstrip()[:1] == b"<"
            looks = ", it looks like an HTML page (a failed download?)" if html else ""
        raise damaged(path, f"it cannot be read{' as gzip' if gz else ''} ({e}{looks})") from None
    if len(data) < 4:
        raise damaged(path, f"it is empty or cut short ({len(data)} bytes, not even an IDX header)")
    zero, dtype_code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        looks = " (it looks like an HTML page, e.g. a failed download)" if data.lstrip()[:1] == b"<" else ""
        raise damaged(path, f"it is not an unsigned-byte IDX file{looks}")
    if ndim is not None and dims != ndim:
        raise damaged(path, f"it holds a {dims}-dimensional array where a {ndim}-dimensional one belongs")
    header = 4 + 4 * dims
    if len(data) < header:
        raise damaged(path, "its header is cut short")
    shape = struct.unpack(">" + "I" * dims, data[4:header])
    expected, held = math.prod(shape), len(data) - header
    if held != expected:
        raise damaged(path, f"its header announces an array of shape {shape} ({expected} bytes) but "
                            f"it holds {held} bytes ({'cut short' if held < expected else 'extra bytes'})")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(array.copy())


def check_labels(name: str, labels: Tensor, images: Tensor, num_classes: int,
                 labels_path: Path, images_path: Path) -> None:
    """`UsageError` naming the file when labels and images disagree in number, or a label is not
    a class index in [0, num_classes)."""
    if labels.shape[0] != images.shape[0]:
        raise damaged(labels_path, f"it holds {labels.shape[0]} labels but {images_path.name} holds "
                                   f"{images.shape[0]} images")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        value = int(labels.max()) if int(labels.max()) >= num_classes else int(labels.min())
        raise damaged(labels_path, f"it holds the label {value}, but {name} has {num_classes} classes "
                                   f"(0–{num_classes - 1})")


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
        paths = {key: _idx_path(folder, stem) for key, stem in IDX_FILES.items()}
        parts = {key: read_idx(path, ndim=3 if key.endswith("_x") else 1) for key, path in paths.items()}
        for split in ("train", "test"):
            check_labels(self.name, parts[f"{split}_y"], parts[f"{split}_x"], 10, paths[f"{split}_y"],
                         paths[f"{split}_x"])
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


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers and numpy arrays: any other global a
    pickle names (a function to call, a class to build) is refused, so a file cannot run code."""

    ALLOWED = frozenset({
        (module, name)
        for prefix in ("numpy.core", "numpy._core")
        for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                             (f"{prefix}.numeric", "_frombuffer"))
    } | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a data batch never holds "
                                     f"(only arrays, lists, dicts, numbers and bytes are read)")


def read_cifar_pickle(path: Path) -> dict[Any, Any]:
    """A CIFAR python batch as data: builtin containers and numpy arrays only (`_DataUnpickler`).
    A pickle naming anything else, cut short, or not a dict is a `UsageError` naming the file."""
    try:
        with open(path, "rb") as f:
            batch = _DataUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise damaged(path, f"it is not a CIFAR batch: {e}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, struct.error) as e:
        raise damaged(path, f"it cannot be unpickled as a CIFAR batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise damaged(path, f"it holds a {type(batch).__name__}, not the dict of a CIFAR batch")
    return batch


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
        """One batch file: a dict with ``data`` (N, 3072) uint8 and the labels, read by
        `read_cifar_pickle` (data only, never code); anything else is a damaged-data error."""
        batch = read_cifar_pickle(path)
        images, labels = batch.get(b"data"), batch.get(self.label_key)
        if not isinstance(images, np.ndarray) or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
            raise damaged(path, f"its {b'data'!r} entry is not an (N, 3072) array of 32×32 RGB images")
        if not isinstance(labels, (list, np.ndarray)) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
            raise damaged(path, f"its {self.label_key!r} entry is not a list of integer labels")
        x = torch.from_numpy(np.asarray(images, dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
        y = torch.tensor(np.asarray(labels, dtype=np.int64).reshape(-1), dtype=torch.long)
        check_labels(self.name, y, x, self.num_classes, path, path)
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
