"""Speed of the dense (P-body) Hebbian dynamics: spin updates per second with the O(K) overlap
update beside the same dynamics with the overlaps recomputed from all N spins before every update
(O(NK)), measured side by side in one process, alternated, one sweep per measurement.

Writes ``benchmarks/results/dense_speed.json`` and ``.md`` (machine, commit, command, load average):

    python benchmarks/dense_speed.py [--order 4] [--neurons 1000] [--stored 10000] [--replicas 1 16]
                                     [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bioplaus import patterns
from bioplaus.bench import code_version, markdown_header, save_results
from bioplaus.circuits.dense_hebbian import DenseHebbian
from bioplaus.core import Task
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _commit() -> str:
    return code_version(HERE)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render(markdown: Path, payload: dict[str, Any]) -> None:
    lines = markdown_header(
        "Dense Hebbian dynamics: O(K) overlap updates against O(NK) recomputation", payload,
        f"Commit {payload['commit']}. Command: `{payload['command']}`. P = {payload['P']}, "
        f"N = {payload['N']}, K = {payload['K']} random ±1 patterns, zero temperature; one sweep "
        "(N updates per replica) per measurement, the two variants alternated in one process. "
        "Updates/s counts spin updates summed over replicas.")
    lines += ["| replicas | round | O(K) updates/s | O(NK) updates/s | ratio | load average |",
              "|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['replicas']} | {r['round']} | {r['overlap_rate']:.0f} | "
                     f"{r['recompute_rate']:.0f} | {r['overlap_rate'] / r['recompute_rate']:.1f} | "
                     f"{r['load_average']:.1f} |")
    markdown.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--neurons", type=int, default=1000)
    parser.add_argument("--stored", type=int, default=10000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    gen = torch.Generator(device=device).manual_seed(0)
    n, k = args.neurons, args.stored
    net = DenseHebbian(Task((n,), k, "memory"), p=args.order, sweeps=1).to(device)
    net.set_vectors(patterns.rademacher(k, n, gen))
    rows = []
    for b in args.replicas:
        sigma = patterns.rademacher(b, n, gen)
        net.run(sigma, gen)                                    # warm-up
        for rnd in range(1, args.rounds + 1):
            rates = {}
            load = os.getloadavg()[0]
            for variant, recompute in (("overlap", False), ("recompute", True)):
                _sync(device)
                t0 = time.perf_counter()
                net.run(sigma, gen, recompute=recompute)
                _sync(device)
                rates[variant] = n * b / (time.perf_counter() - t0)
            row = {"replicas": b, "round": rnd, "overlap_rate": rates["overlap"],
                   "recompute_rate": rates["recompute"],
                   "load_average": round(max(load, os.getloadavg()[0]), 2)}
            print(row, flush=True)
            rows.append(row)
    payload = {"machine": machine_description(device), "torch": torch.__version__,
               "commit": _commit(),
               "updated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python benchmarks/dense_speed.py " + " ".join(sys.argv[1:]),
               "P": args.order, "N": n, "K": k, "rows": rows}
    save_results(RESULTS / f"dense_speed{'' if device.type == 'cpu' else '_' + device.type}.json",
                 payload, render)


if __name__ == "__main__":
    main()
