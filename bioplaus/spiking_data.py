"""Spiking data sets: `temporal` (synthetic, generated from the seed), `shd` and `ssc`.

Every example is a (T, channels) array of spike counts per time bin; a batch is (batch, T,
channels), the ``batch_time`` layout of the `snn` circuit.

`temporal` — classes told apart only by the relative timing of spikes across channels. Every
class owns a template: a permutation r_c of the slots {0, g, 2g, …, (channels − 1)·g} (g = ``gap``
steps), channel k firing at offset r_c[k]. An example of class c fires each channel k exactly once,
at t_0 + r_c[k], with the onset t_0 drawn uniformly. Every example, whatever its class, thus holds
one spike per channel, each alone in its time step and ≥ g steps from the next: the multiset of
per-step input vectors is the same for every class. A network whose neurons keep (almost) nothing
from one step to the next (leak factor 1 − 1/τ ≈ 0, e.g. τ = 1.005 as for SHD: a trace shrinks by
0.005^g over the gap) and whose readout sums evidence over the steps therefore stays at chance;
with delays d_k = D − r_c[k] the spikes of a template coincide at one neuron, which can fire. The
templates span (channels − 1)·g + 1 steps (22 by default), which delays up to T_d − 1 = 24 cover.
Templates and examples come from ``data.seed`` (the run's seed by default).

`shd` / `ssc` — the Spiking Heidelberg Digits (20 classes) and Spiking Speech Commands (35
classes) of Cramer, Stradmann, Schemmel & Zenke, "The Heidelberg Spiking Data Sets for the
Systematic Evaluation of Spiking Neural Networks", IEEE TNNLS 2022 (arXiv 1910.07407), read from
the published HDF5 files ``shd_train.h5`` / ``shd_test.h5`` and ``ssc_train.h5`` / ``ssc_test.h5``
(download from https://zenkelab.org/datasets/, gunzip, put them in ``data.root`` or in
``$BIOPLAUS_DATA/shd`` resp. ``/ssc``). Each file holds ``spikes/times`` (seconds),
``spikes/units`` (0..699) and ``labels``. The 700 channels are summed in groups of
``channel_bin`` (5 → 140 channels) and time in bins of ``dt_ms`` (10 ms): x[t, c] = number of
spikes of units 5c..5c+4 in [t·Δt, (t+1)·Δt). T = ⌈duration/Δt⌉ with ``duration_ms`` (default the
longest example of the files), later spikes dropped.

Protocols. bioplaus carves a seeded validation split (``data.val_fraction``, default 0.2 for
these sets) from the training file, selects the epoch on it (``trainer.select=best_val``) and
tests once. SHD has no official validation split, and the paper's code (Hammouamri et al. 2024)
picks its best epoch on the test set itself; its published SHD accuracy follows that optimistic
protocol, so compare figures across the two protocols only with the difference stated. SSC ships
a validation file (``ssc_valid.h5``); bioplaus does not read it and carves its split from train
the same way for both sets.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from bioplaus.data import DEFAULT_ROOT, RawData
from bioplaus.errors import UsageError
from bioplaus.registry import register_dataset

SOURCE = "https://zenkelab.org/datasets/"


# -- temporal ----------------------------------------------------------------------------------


def temporal_templates(classes: int, channels: int, gap: int, rng: np.random.Generator) -> np.ndarray:
    """(classes, channels) spike offsets: each class a random permutation of 0, gap, …, (channels−1)·gap."""
    return np.stack([gap * rng.permutation(channels) for _ in range(classes)])


def make_temporal(n: int, templates: np.ndarray, steps: int, rng: np.random.Generator) -> tuple[
        torch.Tensor, torch.Tensor]:
    """``n`` examples (n, steps, channels) of 0/1 spikes and their labels, balanced classes."""
    classes, channels = templates.shape
    span = int(templates.max()) + 1
    if steps < span:
        raise UsageError(f"data.steps ({steps}) must cover a template: at least (data.channels − 1)·data.gap "
                         f"+ 1 = {span}.")
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    onsets = rng.integers(0, steps - span + 1, size=n)
    x = np.zeros((n, steps, channels), dtype=np.float32)
    times = onsets[:, None] + templates[labels]  # (n, channels)
    x[np.arange(n)[:, None], times, np.arange(channels)[None, :]] = 1.0
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


@register_dataset("temporal")
def load_temporal(root: Path | None = None, download: bool = False, seed: int = 0, classes: int = 4,
                  channels: int = 8, steps: int = 40, gap: int = 3, train: int = 2000,
                  test: int = 1000) -> RawData:
    """The synthetic relative-timing task (module docstring), generated from ``seed``."""
    for key, value in (("classes", classes), ("channels", channels), ("steps", steps), ("gap", gap),
                       ("train", train), ("test", test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "classes" else 1):
            raise UsageError(f"data.{key} must be a positive integer"
                             f"{' ≥ 2' if key == 'classes' else ''}; got {value!r}.")
    rng = np.random.default_rng(int(seed))
    templates = temporal_templates(classes, channels, gap, rng)
    train_x, train_y = make_temporal(train, templates, steps, rng)
    test_x, test_y = make_temporal(test, templates, steps, rng)
    return RawData(train_x, train_y, test_x, test_y, classes)


# -- SHD / SSC -----------------------------------------------------------------------------------


def read_spike_h5(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """(times in seconds, units, labels) of every example of a Heidelberg spiking HDF5 file."""
    import h5py

    with h5py.File(path, "r") as f:
        times = [np.asarray(t, dtype=np.float64) for t in f["spikes"]["times"]]
        units = [np.asarray(u, dtype=np.int64) for u in f["spikes"]["units"]]
        labels = np.asarray(f["labels"], dtype=np.int64)
    return times, units, labels


def bin_spikes(times: list[np.ndarray], units: list[np.ndarray], steps: int, dt: float,
               channels: int = 700, channel_bin: int = 5) -> torch.Tensor:
    """Spike counts (n, steps, ⌈channels/channel_bin⌉): unit u in time bin ⌊t/dt⌋ counts in channel
    ⌊u/channel_bin⌋; spikes at or after steps·dt are dropped."""
    out_channels = math.ceil(channels / channel_bin)
    x = np.zeros((len(times), steps, out_channels), dtype=np.float32)
    for i, (t, u) in enumerate(zip(times, units, strict=True)):
        b = np.floor(t / dt).astype(np.int64)
        keep = (b >= 0) & (b < steps) & (u >= 0) & (u < channels)
        np.add.at(x[i], (b[keep], u[keep] // channel_bin), 1.0)
    return torch.from_numpy(x)


class _HeidelbergDataset:
    """Loader of one Heidelberg set from ``<prefix>_train.h5`` and ``<prefix>_test.h5``."""

    def __init__(self, name: str, classes: int):
        self.name, self.classes = name, classes

    def files(self, folder: Path) -> tuple[Path, Path]:
        return folder / f"{self.name}_train.h5", folder / f"{self.name}_test.h5"

    def locate(self, root: Path | None = None, download: bool = False, **_: object) -> Path:
        candidates = []
        if root is not None:
            candidates += [root, root / self.name]
        candidates += [DEFAULT_ROOT / self.name, DEFAULT_ROOT]
        for folder in candidates:
            if all(p.exists() for p in self.files(folder)):
                return folder
        where = ", ".join(str(c) for c in dict.fromkeys(candidates))
        raise UsageError(f"data set '{self.name}' not found: {self.name}_train.h5 and {self.name}_test.h5 "
                         f"are in none of {where}. Download them from {SOURCE} (gunzip the .h5.gz files) "
                         f"and set data.root=DIR (or BIOPLAUS_DATA). They cannot be downloaded "
                         f"automatically{' (data.download is not supported here)' if download else ''}.")

    def __call__(self, root: Path | None = None, download: bool = False, dt_ms: float = 10.0,
                 channel_bin: int = 5, duration_ms: float | None = None, **_: object) -> RawData:
        for key, value in (("dt_ms", dt_ms), ("channel_bin", channel_bin)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UsageError(f"data.{key} must be a positive number; got {value!r}.")
        folder = self.locate(root, download)
        train_file, test_file = self.files(folder)
        train = read_spike_h5(train_file)
        test = read_spike_h5(test_file)
        dt = float(dt_ms) / 1000.0
        if duration_ms is None:
            longest = max((float(t.max()) for t in train[0] + test[0] if t.size), default=dt)
            steps = math.floor(longest / dt) + 1
        else:
            steps = max(1, math.ceil(float(duration_ms) / 1000.0 / dt))
        train_x = bin_spikes(train[0], train[1], steps, dt, channel_bin=int(channel_bin))
        test_x = bin_spikes(test[0], test[1], steps, dt, channel_bin=int(channel_bin))
        return RawData(train_x, torch.from_numpy(train[2]), test_x, torch.from_numpy(test[2]), self.classes)


load_shd = register_dataset("shd")(_HeidelbergDataset("shd", 20))
load_ssc = register_dataset("ssc")(_HeidelbergDataset("ssc", 35))

__all__ = ["bin_spikes", "load_shd", "load_ssc", "load_temporal", "make_temporal", "read_spike_h5"]
