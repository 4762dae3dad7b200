"""The engine: config -> data, circuit, learner (through the registry) -> epochs -> summary.

One loop serves every learner. It knows no rule: it calls `Learner.train_step` through the step
runner, `Learner.evaluate` to evaluate, `on_epoch_end` for host-side schedules, and writes the run
directory: ``config.yaml``, ``log.txt``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/``.

A config is composed and validated once per run (`bioplaus.config.compose`, then `train`
validates a config it did not get validated). Bad input is a `UsageError` before anything is
written; any other exception — a bug in a rule or circuit — is a failed run: exit 1, the
traceback in ``log.txt``, the reason in ``summary.json``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import shutil
import signal
import time
import traceback
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from bioplaus import allocator, checkpoint, distributed, plots, registry
from bioplaus import config as config_module
from bioplaus.core import Circuit, Learner, StepMetrics
from bioplaus.data import DataSplits, load, train_batches
from bioplaus.errors import RunFailed, UsageError
from bioplaus.optim import apply_schedule, lr_factor, mask_optimizer_state
from bioplaus.runtime import StepRunner
from bioplaus.tracking import (
    MetricsFile,
    Progress,
    RunLog,
    WandbLogger,
    machine_description,
    peak_memory_bytes,
    write_json,
)

STATUS_COMPLETED, STATUS_DIVERGED, STATUS_FAILED, STATUS_INTERRUPTED = (
    "completed", "diverged", "failed", "interrupted")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _kwargs(section: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else dict(section)
    values.pop("name", None)
    return values


def build(cfg: Any, data: DataSplits | None = None) -> tuple[DataSplits, Circuit, Learner]:
    """(data, circuit, learner) for a composed config, ready for a loop of your own.

    Validates ``cfg`` (`bioplaus.config.validate`), then seeds the global RNGs with ``cfg.seed``,
    so the same config builds the same weights. ``data`` replaces the configured data set (e.g.
    `bioplaus.data.from_tensors`).
    """
    config_module.validate(cfg, check_data=data is None, check_paths=False)
    return _build(cfg, data)


def _build(cfg: Any, data: DataSplits | None) -> tuple[DataSplits, Circuit, Learner]:
    """`build` of a validated config."""
    device = distributed.setup(resolve_device(str(cfg.device)))
    if device.type == "cpu":
        allocator.keep_freed_memory()  # large batches reuse freed memory (BIOPLAUS_MALLOC=default: off)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    seed_everything(int(cfg.seed))
    if data is None:
        data = load(cfg.data, seed=int(cfg.seed), device=device)
    elif data.device != device:
        raise UsageError(f"the data given live on {data.device} but device={cfg.device}.")
    learner_cls = registry.get_learner(str(cfg.learner.name))
    circuit_cls = registry.get_circuit(str(cfg.circuit.name))
    distributed.check_batch(int(cfg.trainer.batch_size), learner_cls.distributed_batches)
    if data.task.kind not in learner_cls.task_kinds:
        raise UsageError(f"learner '{learner_cls.name}' handles {', '.join(learner_cls.task_kinds)} "
                         f"tasks; data '{data.name}' is a {data.task.kind} task.")
    circuit = circuit_cls(data.task, head=learner_cls.circuit_head, **_kwargs(cfg.circuit))
    learner = learner_cls(circuit.to(device), data.task, **_kwargs(cfg.learner)).to(device)
    distributed.prepare(learner, int(cfg.seed))  # one replica of a torchrun job; no-op otherwise
    return data, circuit, learner


def evaluate(learner: Learner, x: Tensor, y: Tensor, batch_size: int) -> dict[str, float]:
    """The learner's evaluation metrics on (x, y) (`Learner.evaluate`), e.g. ``accuracy``."""
    return learner.evaluate(x, y, batch_size)


def monitored(cfg: Any, learner: Learner) -> tuple[str, str]:
    """(metric, max | min) that selects epochs and stops early: ``trainer.monitor`` /
    ``trainer.monitor_mode``, else the learner's declared `Learner.monitor`."""
    metric, mode = learner.monitor
    name = cfg.trainer.get("monitor")
    if name is not None and str(name) != metric:
        metric, mode = str(name), "max"
    return metric, str(cfg.trainer.get("monitor_mode") or mode)


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def default_run_dir(cfg: Any, data_name: str | None = None) -> Path:
    """``paths.runs/<date>/<time>_<learner>_<circuit>_<data>`` for a run starting now."""
    now = dt.datetime.now()
    name = f"{now:%H-%M-%S}_{cfg.learner.name}_{cfg.circuit.name}_{data_name or cfg.data.name}"
    return Path(str(cfg.paths.runs)) / f"{now:%Y-%m-%d}" / name


def claim_run_dir(path: Path, *, unique: bool) -> Path:
    """Take ``path`` for a new run. Its ``config.yaml`` is created exclusively, so two runs never
    share a folder, even when they start in the same second. If another run holds ``path``, then
    with ``unique`` the first free sibling ``<name>_2``, ``<name>_3``, … is taken; otherwise
    (a folder the user pinned) this raises `UsageError`."""
    for n in itertools.count(1):
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        candidate.mkdir(parents=True, exist_ok=True)
        try:
            (candidate / "config.yaml").open("x").close()
            return candidate
        except FileExistsError:
            if not unique:
                raise UsageError(f"{candidate} already holds a run (config.yaml). Continue it with "
                                 f"trainer.resume={candidate}, or choose another folder.") from None
    raise AssertionError("unreachable")


class _Stop(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def train(cfg: Any, *, run_dir: str | Path | None = None, data: DataSplits | None = None,
          quiet: bool = False, unique_run_dir: bool = False, validated: bool = False) -> dict[str, Any]:
    """Run the composed config to the end and return the summary dict (also in ``summary.json``).

    ``run_dir`` pins the run directory (default ``paths.runs/<date>/<time>_<learner>_<circuit>_<data>``,
    with ``_2``, ``_3``, … when another run started in the same second); a pinned folder that
    already holds a run is a `UsageError` unless ``unique_run_dir`` lets the run take a sibling.
    With ``trainer.resume=RUN_DIR`` the run continues in RUN_DIR from its last checkpoint, with
    the configuration saved there. ``validated`` says that ``cfg`` came from
    `bioplaus.config.compose` (validated there), so it is not validated again. Raises `UsageError`
    for bad input (nothing is written) and `RunFailed` for a run that diverged or failed (its
    summary says why; a bug's traceback is in ``log.txt``).
    """
    from omegaconf import OmegaConf

    resume = cfg.trainer.get("resume")
    if not validated or data is not None:
        config_module.validate(cfg, check_data=data is None, check_paths=not resume)
    if resume and (finished := checkpoint.finished_run(Path(str(resume)), cfg, quiet)) is not None:
        return finished  # it ended by itself and nothing extends it: left as it is
    try:
        built = _build(cfg, data)  # usage errors surface here, before the run directory exists
    except UsageError:
        raise
    except Exception as error:  # a bug in a rule or circuit constructor: a failed run, not bad input
        if not distributed.is_writer():
            raise RunFailed(f"run {STATUS_FAILED}: {type(error).__name__}: {error}",
                            status=STATUS_FAILED) from error
        run_path = _claim(cfg, run_dir, data, unique_run_dir, resume)
        OmegaConf.save(cfg, run_path / "config.yaml", resolve=True)
        _record_failure(cfg, run_path, error, quiet)
    checkpoint.check_batch_fits(built[0].train_x.shape[0], int(cfg.trainer.batch_size))
    run_path = distributed.from_writer(  # rank 0 claims the folder; every rank learns its path
        lambda: _claim_and_save(cfg, run_dir, data, unique_run_dir, resume))
    try:
        return _Loop(cfg, run_path, built, quiet=quiet, resume=bool(resume)).run()
    except UsageError:
        if not resume and distributed.is_writer():  # the folder this run claimed holds nothing worth keeping
            shutil.rmtree(run_path, ignore_errors=True)
        raise


def _claim_and_save(cfg: Any, run_dir: str | Path | None, data: DataSplits | None, unique: bool,
                    resume: Any) -> Path:
    from omegaconf import OmegaConf

    run_path = _claim(cfg, run_dir, data, unique, resume)
    OmegaConf.save(cfg, run_path / "config.yaml", resolve=True)
    return run_path


def _claim(cfg: Any, run_dir: str | Path | None, data: DataSplits | None, unique: bool,
           resume: Any) -> Path:
    if resume:
        return Path(str(resume))
    if run_dir is not None:
        return claim_run_dir(Path(run_dir), unique=unique)
    return claim_run_dir(default_run_dir(cfg, data.name if data is not None else None), unique=True)


def _record_failure(cfg: Any, run_path: Path, error: Exception, quiet: bool) -> None:
    """Write the traceback of a failed build to ``log.txt`` and its reason to ``summary.json``,
    then raise `RunFailed`."""
    log = RunLog(run_path, quiet=quiet)
    reason = f"{type(error).__name__}: {error}"
    log(f"run failed while building {cfg.learner.name} on {cfg.circuit.name}: {reason}")
    _append_traceback(run_path, error)
    write_json(run_path / "summary.json", {
        "status": STATUS_FAILED, "reason": reason, "learner": str(cfg.learner.name),
        "circuit": str(cfg.circuit.name), "data": str(cfg.data.name), "seed": int(cfg.seed),
        "epochs_completed": 0, "run_dir": str(run_path)})
    log.close()
    raise RunFailed(f"run {STATUS_FAILED}: {reason}", status=STATUS_FAILED, run_dir=str(run_path)) from error


def _append_traceback(run_path: Path, error: BaseException) -> None:
    with (run_path / "log.txt").open("a") as f:
        f.write("".join(traceback.format_exception(error)))


#: config roots a resumed run keeps: its checkpoint holds the weights and state they define
FIXED_ON_RESUME = ("learner", "circuit", "data", "seed", "experiment")


def resume_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The saved config of a run, with ``key=value`` overrides (e.g. ``trainer.epochs=30``).

    Only how the run trains on, logs and runs may change (``trainer.*``, ``logger.*``, ``paths.*``,
    ``runtime.*``, ``device``, ``threads``, ``plots``); a key under `FIXED_ON_RESUME` is a
    `UsageError`, since the checkpoint holds the weights and state of the saved learner, circuit
    and data."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / "config.yaml"
    if not (Path(run_dir) / "checkpoints" / "last.pt").exists() or not path.exists():
        raise UsageError(f"trainer.resume={run_dir}: no checkpoints/last.pt and config.yaml there to "
                         f"resume from.")
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.split(".", 1)[0] in FIXED_ON_RESUME:
            raise UsageError(f"{key} cannot change when a run resumes: trainer.resume={run_dir} continues "
                             f"its saved learner, circuit, data and seed, whose weights and state its "
                             f"checkpoint holds. Leave {key} out to resume, or start a new run to change "
                             f"it (trainer.*, logger.*, paths.*, runtime.*, device, threads and plots may "
                             f"change).")
    cfg = checkpoint.read_config(path)  # plain data: a Python tag is a UsageError
    OmegaConf.set_struct(cfg, True)
    try:
        cfg.merge_with_dotlist([o for o in overrides if not o.startswith("trainer.resume=")])
    except Exception as e:
        raise UsageError(f"bad override for a resumed run: {' '.join(str(e).split())}") from None
    OmegaConf.set_struct(cfg, False)
    cfg.trainer.resume = str(run_dir)
    return cfg


def resume(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), **kwargs: Any) -> dict[str, Any]:
    """Continue a killed or stopped run from its last checkpoint, with its saved configuration.

    ``overrides`` may change keys of the saved config, e.g. ``["trainer.epochs=30"]`` to extend it.
    """
    return train(resume_config(run_dir, overrides), **kwargs)


@dataclass
class LoopState:
    """Where a run stands; saved in every checkpoint (``loop``) and restored on resume."""

    epoch: int = 0  #: epochs completed (1-based count of the last one)
    best_val: float | None = None  #: best validation value of the monitored metric
    epochs_since_best: int = 0
    train_seconds: float = 0.0
    samples_seen: int = 0
    val: float | None = None  #: validation value of the monitored metric, last epoch
    reference_loss: float | None = None  #: first training loss (divergence check)
    global_step: int = 0
    best_epoch: int | None = None

    #: keys of checkpoints written before the monitored metric was general -> their names now
    RENAMED: ClassVar[dict[str, str]] = {"best_val_accuracy": "best_val", "val_accuracy": "val"}

    @classmethod
    def from_checkpoint(cls, loop: dict[str, Any], path: Path) -> LoopState:
        """The state saved in a checkpoint, old key names included; `UsageError` when the saved
        loop position is not one this version can continue."""
        values = {cls.RENAMED.get(k, k): v for k, v in loop.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown or "epoch" not in values:
            raise UsageError(f"{path} holds a loop position this version of bioplaus cannot continue "
                             f"(unknown keys: {', '.join(unknown) or 'none'}; epoch given: "
                             f"{'epoch' in values}). Start a new run.")
        return cls(**values)


class _Loop:
    """One run: named steps over a `LoopState` — start or resume, train an epoch, evaluate,
    select and stop, checkpoint, test, summarise."""

    def __init__(self, cfg: Any, run_dir: Path, built: tuple[DataSplits, Circuit, Learner],
                 quiet: bool, resume: bool):
        self.cfg, self.run_dir = cfg, run_dir
        self.data, self.circuit, self.learner = built
        self.device = self.data.device
        self.writer = distributed.is_writer()  # rank 0 of a torchrun job alone writes files
        self.log = RunLog(run_dir, quiet=quiet) if self.writer else distributed.NullLog()
        self.metrics = MetricsFile(run_dir) if self.writer else distributed.NullMetrics()
        self.progress = Progress("none" if quiet or not self.writer else str(cfg.trainer.progress))
        self.ckpt_path = run_dir / "checkpoints" / "last.pt"
        self.best_path = run_dir / "checkpoints" / "best.pt"
        self.select_best = str(cfg.trainer.get("select", "last")) == "best_val"
        self.lr_schedule = str(cfg.trainer.get("lr_schedule", "constant"))
        self.epochs = int(cfg.trainer.epochs)
        self.resume = resume
        self.monitor, self.monitor_mode = monitored(cfg, self.learner)
        self.loss_metric = self.learner.loss_metric
        self.runner = StepRunner(self.learner, self.device,
                                 distributed.graph_mode(str(cfg.runtime.cuda_graphs)),
                                 int(cfg.runtime.warmup_steps), self.log)
        self.wandb: WandbLogger | None = None
        self.state = LoopState()

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if self.device.type == "cuda":  # this run's peak, not an earlier run's in the same process
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start_or_resume()
        previous = signal.signal(signal.SIGTERM, _sigterm)
        status, reason = STATUS_COMPLETED, None
        try:
            while self.state.epoch < self.epochs:
                epoch = self.state.epoch + 1
                train_metrics = self._train_epoch(epoch)
                self._end_epoch(epoch)
                val = self._evaluate_val()
                self._select(epoch, val)
                self._record(epoch, train_metrics, val)
                self._save()
                if self._should_stop():
                    break
        except _Stop as stop:
            status, reason = stop.status, stop.reason
        except KeyboardInterrupt:
            status, reason = STATUS_INTERRUPTED, "interrupted by the user (SIGINT/SIGTERM)"
        except UsageError:
            raise
        except Exception as e:  # a bug in a rule or circuit: the run failed, with its traceback
            status, reason = STATUS_FAILED, f"{type(e).__name__}: {e}"
            self.log(f"run failed: {reason}")
            distributed.record_failure(reason)
            if self.writer:
                _append_traceback(self.run_dir, e)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if status != STATUS_COMPLETED and (peer := distributed.peer_failure()):
            reason = f"{peer} (here: {reason})"
        test = self._test() if status == STATUS_COMPLETED else {}
        return self._finish(status, reason, test)

    # -- steps ----------------------------------------------------------------------------------
    def _start_or_resume(self) -> None:
        from omegaconf import OmegaConf

        cfg = self.cfg
        if self.resume:
            loop = distributed.load_checkpoint(self.ckpt_path, self.learner, self.device)
            self.state = LoopState.from_checkpoint(loop, self.ckpt_path)
            distributed.fork_rng(self.learner, int(cfg.seed), self.state.global_step)
            self.metrics.truncate_after(self.state.epoch)
            self.log(f"resumed from {self.ckpt_path} at epoch {self.state.epoch}")
        else:
            self._save()  # epoch-0 checkpoint: a run that diverges at once still keeps one
        self.log(f"{cfg.learner.name} on {cfg.circuit.name} / {cfg.data.name}: "
                 f"{self.data.train_x.shape[0]} train, {self.data.val_x.shape[0]} val, "
                 f"{self.data.test_x.shape[0]} test; device {self.device}; run dir {self.run_dir}")
        for line in self.learner.plan_warnings(self.epochs):
            self.log(line)
        if cfg.logger.name == "wandb" and self.writer:
            self.wandb = WandbLogger(cfg.logger, self.run_dir,
                                     OmegaConf.to_container(cfg, resolve=True), self.log)

    def _end_epoch(self, epoch: int) -> None:
        """Host-side schedules: the learner's and circuit's own, then ``trainer.lr_schedule`` (the
        two never both set the rate: `bioplaus.config.validate` refuses that combination)."""
        self.learner.on_epoch_end(epoch)
        self.circuit.on_epoch_end(epoch)
        if self.lr_schedule != "constant":
            apply_schedule(self.learner.optimizers.values(), lr_factor(self.lr_schedule, epoch, self.epochs))

    def _evaluate_val(self) -> dict[str, float]:
        """The monitored metric on the validation split (what selection and early stopping need;
        a learner may return more); every metric is evaluated once, at test."""
        x, y, batch = self.data.val_x, self.data.val_y, int(self.cfg.trainer.eval_batch_size)
        val = _prefixed("val", distributed.evaluate(self.learner, x, y, batch, metrics=(self.monitor,)))
        if f"val_{self.monitor}" not in val:
            val = _prefixed("val", distributed.evaluate(self.learner, x, y, batch))
        if f"val_{self.monitor}" not in val:
            raise UsageError(f"trainer.monitor={self.monitor}: the learner reports no such "
                             f"metric. It reports: {', '.join(k[4:] for k in val)}.")
        return val

    def _select(self, epoch: int, val: dict[str, float]) -> None:
        """Track the best epoch by the monitored metric (and keep its weights under select=best_val)."""
        state = self.state
        value = val[f"val_{self.monitor}"]
        state.epoch, state.val = epoch, value
        best = state.best_val
        improved = best is None or (value > best if self.monitor_mode == "max" else value < best)
        if improved:
            state.best_val, state.epochs_since_best, state.best_epoch = value, 0, epoch
            if self.select_best and self.writer:
                checkpoint.save_weights(self.best_path, self.learner)
        else:
            state.epochs_since_best += 1

    def _record(self, epoch: int, train_metrics: dict[str, float], val: dict[str, float]) -> None:
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in train_metrics.items()}, **val,
                  "train_seconds": round(self.state.train_seconds, 3)}
        self.metrics.write(record)
        if self.wandb:
            self.wandb.log(record)
        if self.progress.prints_lines:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                              if k != "epoch" and isinstance(v, float))
            self.log(f"epoch {epoch}/{self.epochs}: {shown}")

    def _should_stop(self) -> bool:
        patience = self.cfg.trainer.get("early_stopping_patience")
        if patience and self.state.epochs_since_best >= patience:
            self.log(f"early stopping: no better validation {self.monitor} for {patience} epochs")
            return True
        return False

    def _save(self) -> None:
        if self.cfg.trainer.checkpoint and self.writer:
            checkpoint.save(self.ckpt_path, self.learner, asdict(self.state))

    def _test(self) -> dict[str, float]:
        if self.select_best and distributed.from_writer(self.best_path.exists):
            if self.writer:
                checkpoint.load_weights(self.best_path, self.learner, map_location=self.device)
            distributed.broadcast_state(self.learner)
            self.log(f"testing the weights of epoch {self.state.best_epoch} (best validation "
                     f"{self.monitor})")
        return distributed.evaluate(self.learner, self.data.test_x, self.data.test_y,
                                     int(self.cfg.trainer.eval_batch_size))

    def _finish(self, status: str, reason: str | None, test: dict[str, float]) -> dict[str, Any]:
        summary = self._summary(status, reason, test)
        if not self.writer:  # another rank of a torchrun job: rank 0 writes
            if status != STATUS_COMPLETED:
                raise RunFailed(f"run {status} (rank {distributed.rank()}): {reason}", status=status,
                                run_dir=str(self.run_dir))
            return summary
        if status == STATUS_COMPLETED:
            summary.update(self.learner.report(self.run_dir, summary))
        write_json(self.run_dir / "summary.json", summary)
        if self.cfg.get("plots", True):  # curves.png and the learner's own pictures
            plots.write_run_figures(self.run_dir, self.learner, self.monitor, self.monitor_mode, self.log,
                                    self.data)
        if status == STATUS_COMPLETED:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items()
                              if k.startswith(f"test_{self.monitor}") and isinstance(v, float))
            self.log(f"done: {shown}; {summary['train_seconds']:.1f} s training, "
                     f"{summary['samples_per_second']} samples/s")
        else:
            self.log(f"run {status}: {reason}; last good checkpoint kept at {self.ckpt_path}")
        if self.wandb:
            self.wandb.finish(summary)
        self.log.close()
        if status != STATUS_COMPLETED:
            raise RunFailed(f"run {status}: {reason}", status=status, run_dir=str(self.run_dir))
        return summary

    # -- pieces ---------------------------------------------------------------------------------
    def _epoch_generator(self, epoch: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(self.cfg.seed) * 1_000_003 + epoch)
        return gen

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        x, y = self.data.train_x, self.data.train_y
        batch_size = int(self.cfg.trainer.batch_size)
        steps = x.shape[0] // batch_size
        if steps == 0:
            raise UsageError(f"trainer.batch_size={batch_size} is larger than the training split "
                             f"({x.shape[0]} examples).")
        check_every = int(self.cfg.trainer.divergence_check_every)
        sums = StepMetrics()
        self.progress.start_epoch(epoch, int(self.cfg.trainer.epochs), steps)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            batches = distributed.shard(train_batches(x, y, batch_size, self._epoch_generator(epoch)),
                                        self.learner.distributed_batches)
            for step, (xb, yb) in enumerate(batches, 1):
                out = self.runner.step(xb, yb)
                sums.add(out)
                self.state.global_step += 1
                if self.circuit.structural_step(self.state.global_step):
                    self._mask_optimizer_state()
                self.progress.advance()
                if self.loss_metric is not None:
                    if self.state.reference_loss is None:
                        self.state.reference_loss = distributed.mean_float(out[self.loss_metric])
                    if step % check_every == 0:
                        self._check_divergence(distributed.mean_float(out[self.loss_metric]), epoch, step)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        finally:
            self.state.train_seconds += time.perf_counter() - start
            self.progress.end_epoch()
        self.state.samples_seen += steps * batch_size
        sums.sums = distributed.mean_sums(sums.sums)  # the same means on every rank
        means = sums.means()
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            raise _Stop(STATUS_DIVERGED, f"non-finite {', '.join(bad)} in epoch {epoch}")
        if self.loss_metric is not None:
            self._check_divergence(means[self.loss_metric], epoch, steps)
        return means

    def _mask_optimizer_state(self) -> None:
        params = dict(self.circuit.named_parameters())
        masks = {params[name]: mask for name, mask in self.circuit.parameter_masks().items()}
        mask_optimizer_state(self.learner.optimizers.values(), masks)

    def _check_divergence(self, loss: float, epoch: int, step: int) -> None:
        """Stop when the loss is non-finite or has grown past ``divergence_factor`` × its first value."""
        where = f"at epoch {epoch}, step {step}"
        if not math.isfinite(loss):
            raise _Stop(STATUS_DIVERGED, f"the training loss became {loss} {where}")
        factor = self.cfg.trainer.get("divergence_factor")
        reference = max(abs(self.state.reference_loss or 0.0), 1.0)
        if factor and loss > factor * reference:
            raise _Stop(STATUS_DIVERGED, f"the training loss grew to {loss:.3g} {where}, over "
                                         f"{factor:g}× its first value {self.state.reference_loss:.3g} "
                                         f"(trainer.divergence_factor)")

    def _summary(self, status: str, reason: str | None, test: dict[str, float]) -> dict[str, Any]:
        seconds = self.state.train_seconds
        summary: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "learner": str(self.cfg.learner.name),
            "circuit": str(self.cfg.circuit.name),
            "data": self.data.name,
            "seed": int(self.cfg.seed),
            "epochs_completed": int(self.state.epoch),
            "monitor": self.monitor,
            f"test_{self.monitor}": None,
            f"best_val_{self.monitor}": self.state.best_val,
            "best_epoch": self.state.best_epoch,
            "tested_weights": "best_val" if self.select_best else "last",
            f"val_{self.monitor}": self.state.val,
            "train_seconds": round(seconds, 3),
            "samples_per_second": round(self.state.samples_seen / seconds, 1) if seconds else None,
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "peak_memory_kind": "cuda_max_allocated" if self.device.type == "cuda" else "process_max_rss",
            "device": str(self.device),
            "machine": machine_description(self.device),
            "cuda_graphs": self.runner.graphed,
            # the steps really ran as CUDA graphs (`auto` falls back to eager steps when capture fails)
            "captured": self.runner.captured,
            "cuda_graph_captures": self.runner.captures,
            "parameters": sum(p.numel() for p in self.learner.parameters()),
            "train_examples": int(self.data.train_x.shape[0]),
            "input_shape": list(self.data.task.input_shape),
            "torch": torch.__version__,
            "processes": distributed.world_size(),
            "run_dir": str(self.run_dir),
        }
        summary.update(_prefixed("test", test))
        summary.update(self.circuit.structure_metrics())
        summary.update(self.learner.rule_metrics())
        return summary

