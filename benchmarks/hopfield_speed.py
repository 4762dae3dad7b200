"""Spin updates per second of the Hopfield retrieval dynamics, bioplaus beside plain NumPy.

N = 1000 neurons, K = 138 stored random patterns (load 0.138), 256 cues (stored patterns with 10 %
of their spins flipped), zero temperature, asynchronous updates in a random order per sweep. Three
implementations of the same dynamics run alternately in one process, ``--rounds`` times each:

* ``numpy``   — a straightforward NumPy loop: per sweep a random permutation, then for each spin
  i the fields of every cue h = σ J[:, i] and σ_i ← sign(h) (kept at h = 0);
* ``dense``   — `bioplaus` circuit ``hopfield``, ``couplings=dense`` (the N × N matrix);
* ``factored`` — the same circuit, ``couplings=factored`` (K stored vectors, per-cue overlaps).

Writes ``benchmarks/results/hopfield_speed.json`` and ``.md`` with the machine, commit, command
and the 1-minute load average of every timed row (the machine may be shared; ratios measured side
by side are the trustworthy figure):

    OMP_NUM_THREADS=1 python benchmarks/hopfield_speed.py [--rounds 3] [--sweeps 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bioplaus import patterns
from bioplaus.bench import code_version, markdown_header, save_results
from bioplaus.circuits.hopfield import Hopfield
from bioplaus.core import Task
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
N, K, B = 1000, 138, 256


def numpy_dynamics(j: np.ndarray, sigma: np.ndarray, sweeps: int, rng: np.random.Generator) -> np.ndarray:
    """Asynchronous zero-temperature dynamics, the plain way: sigma (B, N), J (N, N) symmetric."""
    sigma = sigma.copy()
    n = sigma.shape[1]
    for _ in range(sweeps):
        for i in rng.permutation(n):
            h = sigma @ j[:, i]
            sigma[:, i] = np.where(h > 0, 1.0, np.where(h < 0, -1.0, sigma[:, i]))
    return sigma


def _commit() -> str:
    return code_version(HERE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweeps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    xi = patterns.rademacher(K, N, gen)
    cues, targets = patterns.cues_from(xi[torch.randint(0, K, (B,), generator=gen)], 1, 0.1, gen)
    nets = {}
    for mode in ("dense", "factored"):
        net = Hopfield(Task((N,), K, "memory"), couplings=mode, sweeps=args.sweeps)
        net.set_vectors(xi)
        nets[mode] = net
    j = nets["dense"].J.numpy().astype(np.float32)
    sigma0 = cues.numpy().astype(np.float32)
    updates = B * N * args.sweeps

    def run(name: str, seed: int) -> tuple[float, float]:
        start = time.perf_counter()
        if name == "numpy":
            final = torch.from_numpy(numpy_dynamics(j, sigma0, args.sweeps, np.random.default_rng(seed)))
        else:
            final, _ = nets[name].run(cues, torch.Generator().manual_seed(seed))
        seconds = time.perf_counter() - start
        return seconds, float((final * targets).mean())

    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for name in ("numpy", "dense", "factored"):
            load = os.getloadavg()[0]
            seconds, overlap = run(name, r)
            rows.append({"implementation": name, "round": r, "seconds": round(seconds, 4),
                         "spin_updates_per_second": round(updates / seconds),
                         "final_overlap": round(overlap, 4),
                         "load_average": round(max(load, os.getloadavg()[0]), 2)})
            print(rows[-1], file=sys.stderr, flush=True)
    summary = {}
    for name in ("numpy", "dense", "factored"):
        rates = [row["spin_updates_per_second"] for row in rows if row["implementation"] == name]
        summary[name] = {"median_updates_per_second": statistics.median(rates)}
    for name in ("dense", "factored"):
        ratios = [a["seconds"] / b["seconds"] for a, b in zip(
            [row for row in rows if row["implementation"] == "numpy"],
            [row for row in rows if row["implementation"] == name], strict=True)]
        summary[name]["median_speedup_over_numpy"] = round(statistics.median(ratios), 2)
    device = torch.device("cpu")
    payload = {"rows": rows, "summary": summary, "machine": machine_description(device),
               "torch": torch.__version__, "numpy": np.__version__, "commit": _commit(),
               "updated": dt.date.today().isoformat(),
               "command": "OMP_NUM_THREADS=1 python benchmarks/hopfield_speed.py " + " ".join(sys.argv[1:]),
               "setup": {"neurons": N, "patterns": K, "cues": B, "sweeps": args.sweeps,
                         "threads": args.threads}}
    print(save_results(HERE / "results" / "hopfield_speed.json", payload, render))


def render(path: Path, payload: dict[str, Any]) -> None:
    s = payload["setup"]
    lines = markdown_header(
        "Hopfield retrieval speed (CPU)", payload,
        f"Commit {payload['commit']}; command `{payload['command']}`; numpy {payload['numpy']}. "
        f"N = {s['neurons']}, K = {s['patterns']}, {s['cues']} cues, {s['sweeps']} asynchronous "
        f"zero-temperature sweeps per call, {s['threads']} thread(s). The three implementations ran "
        "alternately in one process; the machine is shared with other work, so absolute rates vary "
        "with its load (`load`, the 1-minute load average around each row); the speed-up over NumPy, "
        "measured side by side, is the figure to read.")
    lines += ["| implementation | median spin updates/s | median speed-up over NumPy |", "|---|---|---|"]
    for name, row in payload["summary"].items():
        speed = row.get("median_speedup_over_numpy", 1.0)
        lines.append(f"| {name} | {row['median_updates_per_second'] / 1e6:.2f} M | {speed:.2f}× |")
    lines += ["", "| implementation | round | seconds | spin updates/s | final overlap | load |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['implementation']} | {r['round']} | {r['seconds']} | "
              f"{r['spin_updates_per_second'] / 1e6:.2f} M | {r['final_overlap']} | {r['load_average']} |"
              for r in payload["rows"]]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
