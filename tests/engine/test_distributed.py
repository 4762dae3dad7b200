"""Data-parallel training (`bioplaus.distributed`): two gloo processes on CPU at global batch B end
one epoch with the weights of one process at batch B; rank 0 alone writes; state changed inside a
step (g2g's correlations and masks) stays identical on both ranks; a killed rank ends the job.

The ranks are forked from the test process (the library's own torchrun code path: RANK,
WORLD_SIZE, MASTER_ADDR/PORT in the environment), which starts in a fraction of torchrun's time;
the slow tests launch the real ``torchrun``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch

from bioplaus import distributed, engine
from bioplaus.config import compose
from bioplaus.errors import UsageError
from tests.helpers import REPO, summary_of

BASE = ["trainer.epochs=1", "trainer.batch_size=32", "plots=false", "threads=1", "trainer.progress=none"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fail_at_step(learner_name: str, step: int) -> None:
    """Make ``learner_name``'s train_step raise at its ``step``-th call (in this process only)."""
    from bioplaus import registry

    cls = registry.get_learner(learner_name)
    original, calls = cls.train_step, [0]

    def failing(self: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        calls[0] += 1
        if calls[0] == step:
            raise RuntimeError("injected failure")
        return original(self, x, y)

    cls.train_step = failing


def _rank_main(rank: int, world: int, port: int, overrides: list[str], run_dir: Path, out: Path,
               fail_rank: int | None = None) -> None:
    """One forked rank: train, then save this rank's learner state to ``out/rank{rank}.pt``."""
    code = 0
    try:
        if rank == fail_rank:
            _fail_at_step("backprop", 5)
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                          BIOPLAUS_DIST_TIMEOUT="60")
        torch.set_num_threads(1)
        original = engine._Loop.run

        def run_and_keep(loop: Any) -> dict[str, Any]:
            summary = original(loop)
            torch.save(loop.learner.state_dict(), out / f"rank{rank}.pt")
            return summary

        engine._Loop.run = run_and_keep  # this forked process only
        if overrides[:1] == ["RESUME"]:  # continue run_dir with its saved config
            engine.resume(run_dir, overrides[1:], quiet=True)
        else:
            engine.train(compose(overrides), run_dir=run_dir, quiet=True, validated=True)
    except BaseException:  # reported to the test through the exit code and stderr
        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def _ranks(overrides: list[str], run_dir: Path, out: Path, world: int = 2, timeout: float = 240,
           fail_rank: int | None = None) -> list[int | None]:
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, overrides, run_dir, out, fail_rank))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.time() + timeout
    for p in procs:
        p.join(max(1.0, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    codes = [p.exitcode for p in procs]
    assert fail_rank is not None or codes == [0] * world
    return codes


def _single(overrides: list[str], run_dir: Path) -> dict[str, torch.Tensor]:
    engine.train(compose(overrides), run_dir=run_dir, quiet=True, validated=True)
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["learner"]


def _worst_relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for key in a:
        if isinstance(a[key], dict):  # a circuit's extra state (counters, generator state)
            assert a[key].keys() == b[key].keys()
            for k, va in a[key].items():
                vb = b[key][k]
                assert torch.equal(va, vb) if torch.is_tensor(va) else va == vb, (key, k)
        elif a[key].is_floating_point():
            diff = (a[key].double() - b[key].double()).norm()
            worst = max(worst, float(diff / a[key].double().norm().clamp_min(1e-12)))
        else:
            assert torch.equal(a[key], b[key]), key
    return worst


def _check_equal_to_single(tmp_path: Path, overrides: list[str]) -> float:
    single = _single(overrides, tmp_path / "single")
    out = tmp_path / "out"
    out.mkdir()
    _ranks(overrides, tmp_path / "ddp", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "out", "single"]  # one run folder
    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=False)["learner"]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert _worst_relative(rank0, rank1) == 0.0  # the replicas never drift apart
    assert _worst_relative(ddp, rank0) == 0.0
    worst = _worst_relative(single, ddp)
    assert worst < 1e-5, worst
    summary = summary_of(tmp_path / "ddp")
    assert summary["status"] == "completed" and summary["processes"] == 2
    assert summary["test_accuracy"] == summary_of(tmp_path / "single")["test_accuracy"]
    return worst


def test_backprop_two_processes_equal_one_process_at_the_global_batch(tmp_path: Path) -> None:
    _check_equal_to_single(tmp_path, ["learner=backprop", "circuit.hidden=[64]", *BASE])


SLOW_LEARNERS = {
    "mono_forward": ["learner=mono_forward", "circuit.hidden=[64,64]"],
    # hard negatives are chosen deterministically; peer normalisation reads the global batch mean
    "forward_forward": ["learner=forward_forward", "circuit.hidden=[64,64]", "learner.negatives=hard",
                        "learner.peer_norm=0.03"],
    # gradient clipping between backward and step sees the averaged gradient. (At the default
    # lr 1.0 the SGD dynamics amplify the float32 rounding of the other summation order past 1e-5
    # within one epoch; at lr 0.1 the runs agree to ~1e-7.)
    "counter_current": ["learner=counter_current", "circuit.hidden=[64,64]", "learner.clip=1.0",
                        "learner.lr=0.1"],
    "tpsgd": ["learner=tpsgd", "circuit.hidden=[64,64]"],
    "local_aux": ["learner=local_aux", "circuit.hidden=[64,64]"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_LEARNERS))
def test_local_rules_two_processes_equal_one_process(tmp_path: Path, name: str) -> None:
    _check_equal_to_single(tmp_path, [*SLOW_LEARNERS[name], *BASE])


@pytest.mark.slow
def test_g2g_rewiring_identical_on_both_ranks(tmp_path: Path) -> None:
    overrides = ["learner=backprop", "circuit=g2g", "circuit.hidden=[64,64]", "circuit.dst.enabled=true",
                 "circuit.dst.every=5", "circuit.dst.prune=correlation", "circuit.dst.regrow=correlation",
                 *BASE]
    worst = _check_equal_to_single(tmp_path, overrides)
    assert worst < 1e-5
    out = tmp_path / "out"
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["circuit._extra_state"]["rewirings"] > 0
    masks = [k for k in rank0 if k.endswith("linear.mask")]
    assert masks
    first = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=False)["learner"]
    for key in masks:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(k.startswith("circuit") and "corr_" in k for k in first)


def _ranks_agree(tmp_path: Path, overrides: list[str]) -> dict[str, torch.Tensor]:
    out = tmp_path / "out"
    out.mkdir()
    _ranks(overrides, tmp_path / "ddp", out)
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert _worst_relative(rank0, rank1) == 0.0
    return rank0


@pytest.mark.slow
def test_noprop_prototypes_identical_on_both_ranks(tmp_path: Path) -> None:
    # each rank draws its own noise, so the weights are not those of one process; the class
    # prototypes are the class means of the global batch, the same on both ranks
    state = _ranks_agree(tmp_path, ["learner=noprop", "learner.embedding=prototype",
                                    "circuit.label_features=64", *BASE])
    assert bool(state["prototype_ready"].all())


@pytest.mark.slow
def test_hebbian_weights_identical_on_both_ranks(tmp_path: Path) -> None:
    # the Hebbian weights have no optimiser: their per-shard updates are averaged after each step
    _ranks_agree(tmp_path, ["learner=hebbian", "circuit.hidden=[64]", *BASE])
    assert summary_of(tmp_path / "ddp")["status"] == "completed"


@pytest.mark.slow
def test_hopfield_storage_identical_to_one_process(tmp_path: Path) -> None:
    overrides = ["learner=hopfield", "trainer.batch_size=5", "plots=false", "trainer.progress=none",
                 "threads=1"]
    engine.train(compose(overrides), run_dir=tmp_path / "single", quiet=True, validated=True)
    state = _ranks_agree(tmp_path, overrides)
    single = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=False)["learner"]
    for key in ("sums", "counts", "circuit.J"):
        assert torch.equal(state[key], single[key]), key
    a, b = summary_of(tmp_path / "single"), summary_of(tmp_path / "ddp")
    assert a["monitor"] == b["monitor"] and a[f"test_{a['monitor']}"] == b[f"test_{b['monitor']}"]


@pytest.mark.slow
def test_two_processes_resume_a_run_exactly(tmp_path: Path) -> None:
    overrides = ["learner=backprop", "circuit.hidden=[32]", *BASE]
    for name in ("full", "cut", "out"):
        (tmp_path / name).mkdir()
    _ranks([*overrides, "trainer.epochs=2"], tmp_path / "full" / "run", tmp_path / "out")
    _ranks(overrides, tmp_path / "cut" / "run", tmp_path / "out")  # stops after epoch 1
    _ranks(["RESUME", "trainer.epochs=2"], tmp_path / "cut" / "run", tmp_path / "out")
    full, cut = (torch.load(tmp_path / n / "run" / "checkpoints" / "last.pt", weights_only=False)
                 for n in ("full", "cut"))
    assert cut["loop"]["epoch"] == 2
    assert _worst_relative(full["learner"], cut["learner"]) == 0.0
    assert summary_of(tmp_path / "cut" / "run")["processes"] == 2


@pytest.mark.slow
def test_an_error_on_one_rank_stops_both_with_its_reason(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    start = time.time()
    codes = _ranks(["learner=backprop", "circuit.hidden=[32]", *BASE], tmp_path / "ddp", out,
                   timeout=120, fail_rank=1)
    assert time.time() - start < 120 and codes == [1, 1]  # neither rank hangs; both fail
    summary = summary_of(tmp_path / "ddp")  # written by rank 0 alone
    assert summary["status"] == "failed"
    assert "rank 1: RuntimeError: injected failure" in summary["reason"]
    assert (tmp_path / "ddp" / "checkpoints" / "last.pt").exists()


def test_global_batch_must_split_into_equal_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="multiple of 2"):
        distributed.check_batch(33)
    distributed.check_batch(32)
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.check_batch(33)


def test_shard_takes_equal_contiguous_slices() -> None:
    # one process: the batches themselves; the slicing of two ranks is checked end to end above
    x, y = torch.arange(12).reshape(6, 2), torch.arange(6)
    assert [b[1].tolist() for b in distributed.shard([(x, y)])] == [y.tolist()]
    assert not distributed.active() and distributed.is_writer() and distributed.world_size() == 1


# -- real torchrun ----------------------------------------------------------------------------------

def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
            "--rdzv-endpoint=localhost:0", "--max-restarts=0", "-m", "bioplaus", *args]


def _children_ranks(pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes torchrun ``pid`` started."""
    ranks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            items = (entry / "environ").read_text().split("\0")
            env = dict(item.split("=", 1) for item in items if "=" in item)
        except (OSError, ValueError):
            continue
        if "RANK" in env:
            ranks[int(env["RANK"])] = int(entry.name)
    return ranks


@pytest.mark.slow
def test_torchrun_cli_run_writes_one_folder_and_prints_it_once(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(_torchrun("run", "learner=backprop", "circuit.hidden=[32]", *BASE,
                                      f"paths.runs={runs}"),
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    folders = list(runs.rglob("config.yaml"))
    assert len(folders) == 1  # the default dated folder, claimed by rank 0 alone
    run_dir = folders[0].parent
    assert result.stdout.count(str(run_dir)) == 1 + result.stdout.count(f"run dir {run_dir}")
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)
    assert summary_of(run_dir)["processes"] == 2


@pytest.mark.slow
def test_sigkill_of_one_rank_ends_the_job_and_the_checkpoint_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["run", "learner=backprop", "circuit.hidden=[256,256]", "trainer.epochs=200",
            "trainer.batch_size=8", "plots=false", "threads=1", "trainer.progress=none",
            f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIOPLAUS_DIST_TIMEOUT": "60"}
    proc = subprocess.Popen(_torchrun(*args), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    ranks = _children_ranks(proc.pid)
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.time()
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert time.time() - killed < 60
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["loop"]["epoch"]
    assert saved >= 1
    summary = engine.resume(run_dir, ["trainer.epochs=" + str(saved + 1)], quiet=True)
    assert summary["status"] == "completed" and summary["epochs_completed"] == saved + 1
