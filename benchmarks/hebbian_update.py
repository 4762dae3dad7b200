"""The Krotov and Oja plasticity steps of `hebbian`, as the learner computes them beside the direct
transcription of their equations, on the CPU.

    python benchmarks/hebbian_update.py [--repeats 30]

* Krotov, ``dense g``: D = gᵀv − (Σ_b g ⊙ I) ⊙ W with the dense activity matrix g (B × units)
  and the metric weights sgn(W)|W|^{p−1}; ``learner``: `krotov_update`, which adds each example's
  two active units row by row (index_add) and forms the metric as W|W|^{p−2}.
* Oja, ``(yᵀy)W``: (yᵀv − (yᵀy) W)/(B⟨‖v‖²⟩), units² · D multiply-adds; ``learner``: `oja_update`,
  yᵀ(v − yW), B · units · D.

Both pairs are checked equal (float64, relative 1e-12) before timing. Shapes: 2000 units over 784
inputs at batch 100 (the Fashion-MNIST presets) and 100 units over 64 inputs at batch 64 (digits).
Median ms per step over ``--repeats``, the two alternated, one torch thread, glibc told to keep
freed memory as the engine does (`bioplaus.allocator`); the JSON rows carry the commit, command
and load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from bioplaus import allocator
from bioplaus.bench import code_version
from bioplaus.learners.hebbian import krotov_activity, krotov_update, oja_update
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
SHAPES = [(2000, 784, 100), (100, 64, 64)]  # units, inputs, batch
P, K, DELTA = 3.0, 7, 0.4


def krotov_dense(weight: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    drive = v @ (weight.sign() * weight.abs().pow(P - 1)).t()
    g = krotov_activity(drive, K, DELTA)
    d = g.t() @ v - (g * drive).sum(0).unsqueeze(1) * weight
    return d / d.abs().amax().clamp_min(1e-30)


def oja_square(weight: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    y = v @ weight.t()
    power = v.pow(2).sum(1).mean().clamp_min(1e-12)
    return (y.t() @ v - (y.t() @ y) @ weight) / (v.shape[0] * power)


PAIRS = {
    "krotov": (("dense g", krotov_dense), ("learner", lambda w, v: krotov_update(w, v, P, K, DELTA))),
    "oja": (("(yᵀy)W", oja_square), ("learner", oja_update)),
}


def median_ms(fn, weight: torch.Tensor, v: torch.Tensor, repeats: int) -> float:
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        fn(weight, v)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    allocator.keep_freed_memory()
    command = " ".join(["python benchmarks/hebbian_update.py", *sys.argv[1:]])
    rows = []
    for rule, ((ref_name, ref), (new_name, new)) in PAIRS.items():
        for units, inputs, batch in SHAPES:
            gen = torch.Generator().manual_seed(0)
            weight, v = torch.randn(units, inputs, generator=gen), torch.rand(batch, inputs, generator=gen)
            w64, v64 = weight.double(), v.double()
            torch.testing.assert_close(new(w64, v64), ref(w64, v64), rtol=1e-12, atol=1e-12)
            load = os.getloadavg()[0]
            ms = {ref_name: [], new_name: []}
            for _ in range(3):  # alternated
                for name, fn in ((ref_name, ref), (new_name, new)):
                    ms[name].append(median_ms(fn, weight, v, args.repeats))
            ref_ms, new_ms = statistics.median(ms[ref_name]), statistics.median(ms[new_name])
            row = {"rule": rule, "units": units, "inputs": inputs, "batch": batch, "reference": ref_name,
                   "reference_ms": round(ref_ms, 3), "learner_ms": round(new_ms, 3),
                   "speedup": round(ref_ms / new_ms, 2), "load_1min": round(load, 2),
                   "commit": code_version(), "command": command}
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = machine_description(torch.device("cpu"))
    payload = {"benchmark": "hebbian_update", "machine": machine, "threads": 1, "torch": torch.__version__,
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    out = HERE / "results" / "hebbian_update.json"
    out.write_text(json.dumps(payload, indent=1) + "\n")
    lines = ["# Hebbian plasticity steps: the learner's form beside the equations' direct form (CPU)", "",
             f"Machine: {machine}, torch {torch.__version__}, {payload['date']}. Command: `{command}`. "
             "One plasticity step (no learning-rate scaling or weight update), median ms, the two forms "
             "alternated and checked equal in float64 first. `load`: 1-minute load average before the "
             "pair (the machine has 2 cores; above 1 other processes shared them).", "",
             "| rule | units × inputs, batch | direct form | ms | learner | ms | speed-up | load | commit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rule']} | {r['units']} × {r['inputs']}, {r['batch']} | {r['reference']} | "
                     f"{r['reference_ms']} | learner | {r['learner_ms']} | {r['speedup']}× | "
                     f"{r['load_1min']} | {r['commit']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md"))


if __name__ == "__main__":
    main()
