"""Data-parallel training over several processes, launched by ``torchrun``.

    torchrun --nproc_per_node=N -m bioplaus run learner=NAME trainer.batch_size=B ...

runs one training job over N processes (ranks): NCCL between GPUs (rank r uses ``cuda:LOCAL_RANK``),
gloo on CPU. Several machines join through torchrun's rendezvous (``--nnodes``, ``--rdzv-backend=c10d``,
``--rdzv-endpoint=HOST:PORT``); see ``docs/scale.md``. Without torchrun (``WORLD_SIZE`` unset or 1)
every function here is a no-op and a run is the single-process run.

What a step computes. ``trainer.batch_size`` B is the *global* batch: every rank draws the same seeded
permutation of the training split, cuts it into the same global batches of B, and takes its shard,
examples [r·B/N, (r+1)·B/N) of each (B must be a multiple of N, a `UsageError` otherwise). The last
partial global batch is dropped, as in a single-process run, so every shard holds exactly B/N
examples: a loss that is a mean over the shard then has gradients whose average over the ranks is
the gradient of the mean over the global batch,

    ∇_θ (1/B) Σ_{i∈batch} ℓ_i = (1/N) Σ_r ∇_θ (1/(B/N)) Σ_{i∈shard r} ℓ_i ,

and one mechanism applies it to every rule: every optimiser the learner registers
(`Learner.add_optimizer`) has the gradients of its parameters averaged over the ranks: by a
post-accumulate-grad hook on each parameter that collects the gradients ``backward`` writes and
averages them, in one all-reduce, when that ``backward`` ends (so gradient clipping and masks
between ``backward`` and ``step`` see the averaged gradient), and by a step
pre-hook for any gradient set by hand — however often the learner itself calls ``backward`` and
``step`` inside ``train_step``. The weights of a rule whose
update is a function of these gradients therefore equal those of one process at batch B (up to
floating-point summation order).

State changed inside a step without an optimiser — buffers (running means, correlation moments,
masks) and parameters no optimiser owns (Hebbian weights) — is kept identical on every rank by a
wrapper of ``train_step``: each rank keeps the value it had before the step, s₀, and after the step
all ranks take

    s ← s₀ + (1/N) Σ_r (s_r − s₀)

— exact for updates linear in batch means (exponential moving averages such as g2g's correlation
moments, mean Hebbian increments; a state that did not change stays bit-identical), the average of
the shard updates otherwise (e.g. a Hebbian rule normalised per batch). A rule whose step reads a
statistic of the batch takes the global one: forward_forward's peer-normalisation mean through
`batch_mean` (differentiable, so its gradient is the single-process one), noprop's class prototypes
through `global_sum`. Storage rules whose state is a running sum or grows with every stored
example (hopfield, modern_hopfield) declare ``Learner.distributed_batches = "global"``: every rank
stores the whole global batch, so their state is identical by construction (storage is cheap; their
evaluation — retrieval — is what costs, see below).

Randomness: the weights are built from the same seed on every rank and then broadcast from rank 0;
afterwards rank r > 0 reseeds PyTorch's global generator from (seed, r, step), so random draws
inside a step (negative labels, noise) differ between shards, as they would between examples of
one large batch (they are not the draws of a single-process run).

Rank 0 alone writes: the run folder (its path is broadcast), ``config.yaml``, ``log.txt``,
``metrics.jsonl``, checkpoints, ``summary.json``, figures and W&B. On resume rank 0 reads the
checkpoint and broadcasts weights, optimiser states and loop position (other machines need no
access to the run folder). Evaluation: the default classification `Learner.evaluate` runs on
each rank's contiguous share of the split and the correct counts are summed over ranks; a learner
with its own ``evaluate`` (memory tasks) is evaluated by rank 0 on the whole split and the result
broadcast. Training metrics are averaged over ranks (every rank then takes the same decisions:
divergence, early stopping).

Failure. Collectives time out after ``BIOPLAUS_DIST_TIMEOUT`` seconds (default 300). A rank that
fails records its reason in torchrun's store and exits non-zero; torchrun then stops the other
ranks (a rank waiting in a collective on a vanished peer gets an error at once under gloo), and
rank 0 writes the failed rank's reason to ``summary.json`` when it gets the chance. The last
checkpoint is written atomically, so it stays resumable.

CUDA graphs. The gradient all-reduce runs inside ``train_step`` (the optimiser hook), so when the
step runner captures ``train_step`` into a CUDA graph the NCCL all-reduces are captured with it
and replayed every step; the NCCL communicator is created before capture (the initial broadcast).
gloo collectives cannot be captured: with gloo on CUDA devices the runner runs eagerly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from bioplaus.errors import UsageError

_ERROR_KEY = "bioplaus/failed_rank"


def requested_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def active() -> bool:
    """Whether this process is one rank of a data-parallel job of more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the torchrun job (once) and return this rank's device.

    NCCL for CUDA devices (rank uses ``cuda:LOCAL_RANK``), gloo otherwise. A no-op returning
    ``device`` when torchrun started one process or none.
    """
    if requested_world_size() <= 1:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = dt.timedelta(seconds=float(os.environ.get("BIOPLAUS_DIST_TIMEOUT", "300")))
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    return device


def check_batch(batch_size: int, batches: str = "shard") -> None:
    """`UsageError` unless the global batch splits into equal shards over the ranks (for a rule
    with ``distributed_batches="shard"``)."""
    n = requested_world_size()
    if n > 1 and batches == "shard" and batch_size % n:
        raise UsageError(f"trainer.batch_size={batch_size} does not split into {n} equal shards "
                         f"(one per process): use a multiple of {n}.")


def graph_mode(mode: str) -> str:
    """The step runner's CUDA-graph mode: ``off`` when the ranks talk through gloo (its collectives
    cannot be captured), ``mode`` otherwise."""
    import torch.distributed as dist

    if active() and dist.get_backend() != "nccl":
        return "off"
    return mode


# -- the learner ------------------------------------------------------------------------------------

def prepare(learner: torch.nn.Module, seed: int) -> None:
    """Make ``learner`` one replica of a data-parallel job: weights and buffers broadcast from rank 0,
    the gradients of its optimisers averaged over the ranks (`_average_gradients`), state
    synchronised after every ``train_step``, and this rank's own random stream. A rule fed the
    global batch (``distributed_batches="global"``) gets only the broadcast. A no-op in a single
    process."""
    if not active() or getattr(learner, "_distributed_ready", False):
        return
    broadcast_state(learner)
    learner._distributed_ready = True
    if learner.distributed_batches == "global":  # the same batch and update on every rank
        return
    _average_gradients(learner.optimizers.values())
    learner.train_step = _synchronised_step(learner, learner.train_step)
    fork_rng(learner, seed, 0)


def fork_rng(learner: Any, seed: int, step: int) -> None:
    """Reseed PyTorch's global generator of rank r > 0 from (seed, r, step); rank 0 keeps its own.
    Not for a rule fed the global batch (``distributed_batches="global"``): its ranks keep the
    same stream."""
    r = rank()
    if r > 0 and learner.distributed_batches != "global":
        torch.manual_seed((int(seed) * 1_000_003 + r * 7_919 + int(step) * 104_729) % 2**63)


@torch.no_grad()
def broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    import torch.distributed as dist

    if not active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def _by_dtype(tensors: Iterable[Tensor]) -> dict[Any, list[Tensor]]:
    groups: dict[Any, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


@torch.no_grad()
def _all_reduce_(tensors: list[Tensor], average: bool) -> None:
    """Sum (or average) a list of same-dtype tensors over the ranks in place, in one all-reduce."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    if average:
        flat.div_(dist.get_world_size())
    for t, reduced in zip(tensors, _unflatten_dense_tensors(flat, tensors), strict=True):
        t.copy_(reduced)


def _average_gradients(optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Average over the ranks every gradient the optimisers will use.

    A post-accumulate-grad hook on each parameter notes its gradient as soon as a ``backward`` has
    accumulated it, and the first one of a backward queues a callback that runs when that backward
    ends: it averages every noted gradient in one all-reduce per dtype (one message, not one per
    parameter — on gloo the latency of a message dominates small nets). So whatever the learner does
    between ``backward`` and ``step`` (gradient clipping, masking) sees the averaged gradient;
    averaging is linear, so several backwards into the same ``.grad`` stay right. A step pre-hook
    then averages any gradient that did not come from ``backward`` (assigned to ``.grad`` by hand)
    right before ``optimizer.step()``.
    """
    reduced: set[int] = set()
    pending: list[Tensor] = []

    def end_of_backward() -> None:
        grads = [p.grad for p in pending if p.grad is not None]
        pending.clear()
        for same in _by_dtype(grads).values():
            _all_reduce_(same, average=True)

    def after_backward(p: Tensor) -> None:
        if not pending:
            torch.autograd.Variable._execution_engine.queue_callback(end_of_backward)
        pending.append(p)
        reduced.add(id(p))

    def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None and id(p) not in reduced]
        for same in _by_dtype(grads).values():
            _all_reduce_(same, average=True)
        reduced.difference_update(id(p) for p in params)

    hooked: set[int] = set()
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in hooked and p.requires_grad:
                    p.register_post_accumulate_grad_hook(after_backward)
                    hooked.add(id(p))
        optimizer.register_step_pre_hook(before_step)


def _free_state(learner: torch.nn.Module) -> list[Tensor]:
    """Tensors a step may change outside any optimiser: floating buffers and parameters no
    optimiser owns."""
    owned = {id(p) for opt in learner.optimizers.values() for g in opt.param_groups for p in g["params"]}
    state: list[Tensor] = []
    seen: set[int] = set()
    for t in [*learner.parameters(), *learner.buffers()]:
        if id(t) in owned or id(t) in seen or not t.is_floating_point():
            continue
        seen.add(id(t))
        state.append(t)
    return state


def _synchronised_step(learner: torch.nn.Module, step: Callable[[Tensor, Tensor], dict[str, Tensor]]
                       ) -> Callable[[Tensor, Tensor], dict[str, Tensor]]:
    state = _free_state(learner)

    def synchronised_step(x: Tensor, y: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            before = [t.detach().clone() for t in state]
        out = step(x, y)
        with torch.no_grad():
            deltas = [t.detach() - b for t, b in zip(state, before, strict=True)]
            for same in _by_dtype(deltas).values():
                _all_reduce_(same, average=True)
            for t, b, d in zip(state, before, deltas, strict=True):
                t.copy_(b + d)
        return out

    return synchronised_step


@torch.no_grad()
def global_sum(t: Tensor) -> Tensor:
    """``t`` summed over the ranks (a new tensor; ``t`` itself in one process), e.g. per-class
    counts and sums of a batch statistic the step stores."""
    import torch.distributed as dist

    if not active():
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out


def batch_mean(a: Tensor) -> Tensor:
    """``a.mean(dim=0)`` over the global batch (all ranks' equal shards), differentiable: the
    gradient each rank gets is that of its own examples, so averaged gradients equal the
    single-process ones. ``a.mean(dim=0)`` in a single process."""
    local = a.mean(dim=0)
    if not active():
        return local
    import torch.distributed.nn.functional as dist_fn

    return dist_fn.all_reduce(local) / world_size()


# -- data -------------------------------------------------------------------------------------------

def shard(batches: Iterable[tuple[Tensor, Tensor]], mode: str = "shard") -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's equal, contiguous shard of every global batch (``mode="global"``: the whole
    batch, see `Learner.distributed_batches`)."""
    n, r = world_size(), rank()
    for xb, yb in batches:
        if n == 1 or mode == "global":
            yield xb, yb
            continue
        size = xb.shape[0] // n
        yield xb[r * size:(r + 1) * size], yb[r * size:(r + 1) * size]


# -- metrics and evaluation ---------------------------------------------------------------------

def mean_float(value: Tensor) -> float:
    """The mean over ranks of a 0-d tensor, as a float (the value itself in one process)."""
    import torch.distributed as dist

    if not active():
        return float(value)
    v = value.detach().float().reshape(1).clone()
    dist.all_reduce(v)
    return float(v) / dist.get_world_size()


def mean_sums(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """Running metric sums averaged over ranks (same keys on every rank)."""
    import torch.distributed as dist

    if not active() or not sums:
        return sums
    keys = list(sums)
    stacked = torch.stack([sums[k].detach().float().reshape(()) for k in keys])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.unbind(), strict=True))


def evaluate(learner: Any, x: Tensor, y: Tensor, batch_size: int,
             metrics: Collection[str] | None = None) -> dict[str, float]:
    """`Learner.evaluate` (asked for ``metrics`` where it takes them) over the ranks: the default
    classification evaluation on each rank's share, correct counts summed; another learner's own
    evaluation by rank 0, its metrics and the learner's state afterwards broadcast."""
    import torch.distributed as dist

    from bioplaus.core import Learner, evaluate_learner

    if not active():
        return evaluate_learner(learner, x, y, batch_size, metrics)

    n, r, count = world_size(), rank(), x.shape[0]
    if type(learner).evaluate is Learner.evaluate and count >= n:
        lo, hi = r * count // n, (r + 1) * count // n
        shard = evaluate_learner(learner, x[lo:hi], y[lo:hi], batch_size, metrics)
        keys = sorted(shard)
        counts = torch.tensor([shard[k] * (hi - lo) for k in keys], dtype=torch.float64,
                              device=x.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(counts)
        return {k: float(c) / count for k, c in zip(keys, counts.tolist(), strict=True)}
    result = from_writer(lambda: evaluate_learner(learner, x, y, batch_size, metrics))
    broadcast_state(learner)  # state the evaluation changed (e.g. a count seeding its noise)
    return result


def from_writer(make: Callable[[], Any]) -> Any:
    """``make()`` run by rank 0 and its result (or its `UsageError`) given to every rank."""
    import torch.distributed as dist

    if not active():
        return make()
    box: list[Any] = [None]
    if is_writer():
        try:
            box[0] = ("ok", make())
        except UsageError as e:
            box[0] = ("usage", str(e))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "usage":
        raise UsageError(value)
    return value


def barrier() -> None:
    import torch.distributed as dist

    if active():
        dist.barrier()


# -- checkpoints ------------------------------------------------------------------------------------

def load_checkpoint(path: Any, learner: Any, device: torch.device) -> dict[str, Any]:
    """Restore a checkpoint on every rank: rank 0 reads it, then weights, buffers, optimiser states
    and the loop position go to the others. Returns the loop position."""
    from bioplaus import checkpoint

    if not active():
        return checkpoint.load(path, learner, map_location=device)
    payload = from_writer(lambda: _read_for_peers(checkpoint, path, learner, device))
    if not is_writer():
        learner.load_state_dict(payload["learner"])
        learner.load_optimizer_state_dict(payload["optimizers"])
        checkpoint.set_rng_state(payload["rng"])  # rank 0's; `fork_rng` then gives each its own
    return payload["loop"]


def _read_for_peers(checkpoint: Any, path: Any, learner: Any, device: torch.device) -> dict[str, Any]:
    loop = checkpoint.load(path, learner, map_location=device)
    return {"learner": _to_cpu(learner.state_dict()), "optimizers": _to_cpu(learner.optimizer_state_dict()),
            "rng": checkpoint.rng_state(), "loop": loop}


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


# -- failure ----------------------------------------------------------------------------------------

def _store() -> Any:
    from torch.distributed import distributed_c10d

    try:
        return distributed_c10d._get_default_store()
    except (RuntimeError, ValueError):
        return None


def record_failure(reason: str) -> None:
    """On a rank other than 0: leave ``reason`` where rank 0 can read it (torchrun's store)."""
    if not active() or is_writer():
        return
    store = _store()
    if store is not None:
        with contextlib.suppress(Exception):  # the store may be gone with the job (reason in stderr)
            store.set(_ERROR_KEY, f"rank {rank()}: {reason}")


def peer_failure() -> str | None:
    """The reason another rank recorded with `record_failure`, if any (rank 0)."""
    if not active():
        return None
    store = _store()
    if store is None:
        return None
    try:
        if store.check([_ERROR_KEY]):
            return store.get(_ERROR_KEY).decode()
    except Exception:  # the store went away with the failed job
        return None
    return None


class NullLog:
    """The run log of a rank that writes nothing: lines are dropped."""

    quiet = True

    def __call__(self, line: str) -> None:
        """Drop ``line``: rank 0 alone logs."""

    def close(self) -> None:
        """Nothing was opened."""


class NullMetrics:
    """``metrics.jsonl`` of a rank that writes nothing."""

    def truncate_after(self, epoch: int) -> None:
        """Nothing was written to cut."""

    def write(self, record: dict[str, Any]) -> None:
        """Drop ``record``: rank 0 alone writes metrics."""
