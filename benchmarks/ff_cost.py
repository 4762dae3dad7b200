"""What a Forward-Forward run costs: time per training step, per validation evaluation, and the
kernel (system) time of the process — two checkouts side by side, runs alternated.

    python benchmarks/ff_cost.py --before /path/to/old/checkout [--reps 2] [--cases b100 fb50000]

Cases (Fashion-MNIST, one thread):

* ``b100``: MLP 784-1000×3, batch 100, ``learner.readout=softmax`` (the ``fmnist_ff_mlp`` preset):
  60 timed steps; one per-epoch validation evaluation, done as the checkout's engine does it
  (the monitored metric where the engine asks for it alone, every readout otherwise), beside one
  plain forward pass of the circuit over the validation split.
* ``fb50000``: MLP 784-500-500, one full batch of 50 000, ``learner.readout=goodness``: 3 timed
  steps; one validation evaluation.

Each case runs in a fresh process of each checkout (``<checkout>/.venv/bin/python``); the process
reports its own timings and ``getrusage`` kernel/user time. ``after-malloc-default`` is this
checkout with ``BIOPLAUS_MALLOC=default`` (the allocator left as it is). Every row carries the
checkout's commit, the command and the 1-minute load average at its start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CASES = {
    "b100": {"overrides": ["experiment=fmnist_ff_mlp", "learner.readout=softmax", "trainer.batch_size=100"],
             "warmup": 3, "steps": 60, "forward": True},
    "fb50000": {"overrides": ["experiment=fmnist_ff_mlp", "circuit.hidden=[500,500]",
                              "learner.readout=goodness", "trainer.batch_size=50000"],
                "warmup": 1, "steps": 3, "forward": False},
}

CHILD = r'''
import json, resource, sys, time
import torch
import bioplaus
from bioplaus import core
from bioplaus.data import train_batches
case = json.loads(sys.argv[1])
cfg = bioplaus.compose(case["overrides"] + ["threads=1", "paths.runs=/tmp"])
data, circuit, learner = bioplaus.build(cfg)
batch = int(cfg.trainer.batch_size)
eval_batch = int(cfg.trainer.eval_batch_size)
gen = torch.Generator().manual_seed(0)
steps, times = 0, []
r0 = resource.getrusage(resource.RUSAGE_SELF)
while steps < case["warmup"] + case["steps"]:
    for xb, yb in train_batches(data.train_x, data.train_y, batch, gen):
        t = time.perf_counter()
        learner.train_step(xb, yb)
        if steps >= case["warmup"]:
            times.append(time.perf_counter() - t)
        steps += 1
        if steps == case["warmup"] + case["steps"]:
            break
r1 = resource.getrusage(resource.RUSAGE_SELF)
monitor = learner.monitor[0]
t = time.perf_counter()
if hasattr(core, "evaluate_learner"):  # the engine asks for the monitored metric alone
    val = core.evaluate_learner(learner, data.val_x, data.val_y, eval_batch, metrics=(monitor,))
else:
    val = learner.evaluate(data.val_x, data.val_y, eval_batch)
eval_s = time.perf_counter() - t
forward_s = None
if case["forward"]:
    t = time.perf_counter()
    with torch.no_grad():
        for start in range(0, data.val_x.shape[0], eval_batch):
            circuit(data.val_x[start:start + eval_batch])
    forward_s = time.perf_counter() - t
r2 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "step_s": sorted(times)[len(times) // 2], "step_mean_s": sum(times) / len(times),
    "eval_s": eval_s, "forward_s": forward_s, "val": val,
    "train_sys_s": r1.ru_stime - r0.ru_stime, "train_user_s": r1.ru_utime - r0.ru_utime,
    "train_minflt": r1.ru_minflt - r0.ru_minflt,
    "run_sys_s": r2.ru_stime, "run_user_s": r2.ru_utime, "run_minflt": r2.ru_minflt,
    "maxrss_mb": r2.ru_maxrss / 1024}))
'''


def commit_of(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_child(checkout: Path, case: str, env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BIOPLAUS_MALLOC"}
    env.update(OMP_NUM_THREADS="1", **env_extra)
    load = os.getloadavg()[0]
    started = dt.datetime.now(dt.timezone.utc)
    out = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c", CHILD, json.dumps(CASES[case])],
                         cwd=checkout, env=env, capture_output=True, text=True)
    wall = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    if out.returncode != 0:
        raise SystemExit(f"{checkout} {case} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(run_wall_s=wall, load_1min=round(load, 2), started=started.isoformat(timespec="seconds"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout to compare with (its .venv)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ff_cost.json")
    args = parser.parse_args()
    variants = {"before": (args.before.resolve(), {}), "after": (REPO, {}),
                "after-malloc-default": (REPO, {"BIOPLAUS_MALLOC": "default"})}
    command = "python benchmarks/ff_cost.py " + " ".join(sys.argv[1:])
    rows = []
    for rep in range(args.reps):
        for case in args.cases:
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for name in order:
                checkout, env = variants[name]
                row = run_child(checkout, case, env)
                row.update(case=case, variant=name, rep=rep, commit=commit_of(checkout), command=command,
                           overrides=CASES[case]["overrides"], env=env)
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("case", "variant", "step_s", "eval_s", "forward_s",
                                                      "run_sys_s", "run_wall_s", "load_1min")}), flush=True)
    payload = {"benchmark": "ff_cost", "machine": machine(), "threads": 1,
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "command": command, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(payload))
    print(args.out.with_suffix(".md"))


def machine() -> str:
    import torch

    from bioplaus.tracking import machine_description

    return machine_description(torch.device("cpu"))


def render(payload: dict) -> str:
    lines = [
        "# Forward-Forward cost: before and after", "",
        f"Machine: {payload['machine']}, one torch thread. {payload['date']}. Command: "
        f"`{payload['command']}`. Each cell: median over the alternated runs (rows in ff_cost.json, "
        "each with its commit and the 1-minute load average at its start — the machine was shared).",
        "", "| case | variant | commit | step (s) | evaluation (s) | forward pass over val (s) | "
        "eval / forward | kernel per run (s) | kernel share of CPU | page faults per run | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in payload["rows"]:
        groups.setdefault((row["case"], row["variant"]), []).append(row)
    for (case, variant), rows in groups.items():
        def med(key: str, rows: list[dict] = rows) -> float | None:
            values = [r[key] for r in rows if r.get(key) is not None]
            return statistics.median(values) if values else None
        fwd = med("forward_s")
        ratio = f"{med('eval_s') / fwd:.2f}" if fwd else "—"
        share = statistics.median(r["run_sys_s"] / (r["run_sys_s"] + r["run_user_s"]) for r in rows)
        loads = ", ".join(f"{r['load_1min']:.1f}" for r in rows)
        lines.append(f"| {case} | {variant} | {rows[0]['commit']} | {med('step_s'):.4f} | "
                     f"{med('eval_s'):.3f} | "
                     f"{'—' if fwd is None else f'{fwd:.3f}'} | {ratio} | {med('run_sys_s'):.2f} | "
                     f"{share:.1%} | {med('run_minflt'):.0f} | {loads} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
