"""Checkpoints: circuit + learner (parameters, buffers, optimizer states), RNG states, loop position.

Written atomically (temporary file, then rename), so a run killed while saving keeps its previous
checkpoint intact. Read with ``torch.load(weights_only=True)``: a checkpoint holds tensors and
plain values only, and one that names any other Python object (which a full unpickler would
build, running code) is refused with a `UsageError`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bioplaus.core import Learner
from bioplaus.errors import RunFailed, UsageError

#: statuses of a run that ended by itself (a resume with the same config has nothing to do)
FINISHED = ("completed", "diverged")
#: keys a resume may change without extending the run
_COSMETIC = ("trainer.resume", "trainer.progress")


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, learner: Learner, loop: dict[str, Any]) -> None:
    """Save the learner (its circuit included) and the loop position ``loop`` to ``path``."""
    payload = {
        "learner": learner.state_dict(),
        "optimizers": learner.optimizer_state_dict(),
        "rng": rng_state(),
        "loop": loop,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain values, never code. (The numpy
    arrays of checkpoints written before the RNG states were stored as tensors are admitted as
    data.) A file holding other objects, or damaged, is a `UsageError` naming it."""
    import pickle

    from numpy.core.multiarray import _reconstruct

    arrays = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(arrays):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).split("\n")[0].strip()
        raise UsageError(f"checkpoint {path} holds Python objects other than tensors and plain values, "
                         f"and bioplaus loads checkpoints with weights_only=True: it is refused "
                         f"({first[:200]}).") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UsageError(f"checkpoint {path} cannot be read ({' '.join(str(e).split())[:200]}); it "
                         f"is damaged or not a bioplaus checkpoint.") from None


def _restore(path: Path, load: Any, state: Any) -> None:
    try:
        load(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise UsageError(f"checkpoint {path} does not fit this run's learner and circuit "
                         f"({' '.join(str(e).split())[:300]}).") from None


def load(path: Path, learner: Learner, map_location: Any = "cpu") -> dict[str, Any]:
    """Restore the learner and RNG states from ``path``; return the saved loop position."""
    payload = read(path, map_location)
    if not isinstance(payload, dict) or not {"learner", "optimizers", "rng", "loop"} <= set(payload):
        raise UsageError(f"checkpoint {path} is not a bioplaus run checkpoint (it needs learner, "
                         f"optimizers, rng and loop entries).")
    _restore(path, learner.load_state_dict, payload["learner"])
    _restore(path, learner.load_optimizer_state_dict, payload["optimizers"])
    set_rng_state(payload["rng"])
    return payload["loop"]


def save_weights(path: Path, learner: Learner) -> None:
    """Save only the learner's parameters and buffers (e.g. the best-validation weights)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(learner.state_dict(), tmp)
    os.replace(tmp, path)


def load_weights(path: Path, learner: Learner, map_location: Any = "cpu") -> None:
    _restore(path, learner.load_state_dict, read(path, map_location))


def check_batch_fits(train_examples: int, batch_size: int) -> None:
    """`UsageError` before a run folder exists when not one full batch fits the training split."""
    if batch_size > train_examples:
        raise UsageError(f"trainer.batch_size={batch_size} is larger than the training split "
                         f"({train_examples} examples).")


def read_config(path: Path) -> Any:
    """A run's saved ``config.yaml`` as data (OmegaConf's safe YAML loader: a Python tag is
    refused, never built); unreadable or tagged YAML is a `UsageError` naming the file."""
    import yaml
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except yaml.constructor.ConstructorError as e:
        raise UsageError(f"{path} holds a tag bioplaus does not read ({' '.join(str(e.problem).split())}): "
                         f"configs are read as plain data, and tags such as !!python/object are "
                         f"refused.") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not a readable YAML config: {' '.join(str(e).split())[:300]}") from None
    if not OmegaConf.is_dict(cfg):
        raise UsageError(f"{path} holds no mapping of config keys; it is not a run's config.yaml.")
    return cfg


def finished_run(run_dir: Path, cfg: Any, quiet: bool = False) -> dict[str, Any] | None:
    """For ``trainer.resume=run_dir``, before anything is written: the run's summary if it already
    ended by itself (completed, early-stopped or diverged) and ``cfg`` does not change it (e.g.
    more epochs, another learning rate), else None (the run goes on). A finished run is left as it
    is and this says so; a diverged one raises `RunFailed` again (exit 1), nothing rewritten. A
    checkpoint that is not plain data is refused here (`UsageError`), before the run writes."""
    import json

    from omegaconf import OmegaConf

    summary_path, saved_path = Path(run_dir) / "summary.json", Path(run_dir) / "config.yaml"
    last = Path(run_dir) / "checkpoints" / "last.pt"
    if last.is_file():
        read(last)  # refused (UsageError) before the run writes anything, if it is not plain data
    if not summary_path.is_file() or not saved_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text())
        saved = OmegaConf.to_container(read_config(saved_path), resolve=True)
    except (OSError, ValueError) as e:
        raise UsageError(f"trainer.resume={run_dir}: its summary.json or config.yaml cannot be read "
                         f"({e}).") from None
    if not isinstance(summary, dict) or summary.get("status") not in FINISHED:
        return None
    wanted = OmegaConf.to_container(cfg, resolve=True)
    for config in (saved, wanted):
        for key in _COSMETIC:
            section, _, leaf = key.rpartition(".")
            config.get(section, {}).pop(leaf, None)
    if saved != wanted:
        return None  # extended or changed: the run goes on from its checkpoint
    status = summary["status"]
    how = (f"diverged ({summary.get('reason')})" if status == "diverged" else
           f"completed after {summary.get('epochs_completed')} epochs"
           + (" (stopped early)" if summary.get("epochs_completed", 0) < cfg.trainer.epochs else ""))
    message = (f"run {run_dir} already {how}; nothing changed. To train it further, extend it, e.g. "
               f"trainer.epochs={int(cfg.trainer.epochs) + 10}"
               + (" or another learner.lr" if status == "diverged" else "") + ".")
    if status == "diverged":
        raise RunFailed(message, status=status, run_dir=str(run_dir))
    if not quiet:
        print(message, flush=True)
    return summary
