"""Small functional helpers shared by circuits and learners (no modules), and a meter of the
activation memory a training step holds for backward."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bioplaus.errors import UsageError

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
    "gelu": F.gelu,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation function called ``name``; a clear error for an unknown one."""
    if name not in ACTIVATIONS:
        raise UsageError(f"unknown activation '{name}'. Valid activations: {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def accuracy(scores: Tensor, y: Tensor) -> Tensor:
    """Fraction of rows whose argmax equals the label, as a 0-d tensor (no host sync)."""
    return (scores.argmax(dim=1) == y).float().mean()


def one_hot(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return F.one_hot(y, num_classes).to(dtype)


# -- memory held for backward -----------------------------------------------------------------------


class SavedActivationMeter:
    """Bytes of the tensors autograd holds for backward inside a ``with`` block: live and peak.

    Counts each storage once however many operations save it (a ReLU output saved by the ReLU and
    by the next linear map is one storage), and releases it when autograd frees the last
    reference (after backward, or when the graph is dropped). Tensors listed in ``exclude``
    (parameters: held anyway) are not counted. This is the activation memory a training step
    needs, measured the same way on any device.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()):
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [references, bytes]
        self.live = 0
        self.peak = 0
        self._hooks: Any = None

    def __enter__(self) -> SavedActivationMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: Tensor) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._excluded or key == 0:
            return tensor
        entry = self._storages.setdefault(key, [0, storage.nbytes()])
        if entry[0] == 0:
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        return _Held(tensor, self, key)

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._storages[key]


class _Held:
    """A saved tensor with a note to the meter when autograd lets it go."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, tensor: Tensor, meter: SavedActivationMeter, key: int):
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self) -> None:
        self.meter._release(self.key)


def _unpack(held: Any) -> Tensor:
    return held.tensor if isinstance(held, _Held) else held


def saved_activation_peak(step: Callable[[], Any], parameters: Iterable[Tensor]) -> int:
    """Peak bytes autograd holds for backward while ``step()`` runs (parameters not counted)."""
    with SavedActivationMeter(exclude=parameters) as meter:
        step()
    return meter.peak
