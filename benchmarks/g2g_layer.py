"""Forward+backward time of one G2G sparse layer against the dense layer of the same shape.

Times, per layer shape (batch B, n_in -> n_out) with G ensembles, one forward and one backward
(gradients of the input and of the weight, as in training):

* ``dense``               — nn.Linear, the MLP layer of the same shape;
* ``masked``              — F.linear(h, W ⊙ M), p′ = 0.15 (the path `circuit=g2g` uses by default);
* ``block``               — batched matmul over the G within-ensemble blocks alone (p′ = 0, the
                            path ``path=auto`` picks for block-diagonal masks);
* ``block+masked_rest``   — the G blocks by batched matmul plus the Bernoulli(p′) remainder as a
                            masked dense product (p′ = 0.15);
* ``sparse_coo``          — torch.sparse.mm with the active weights as a COO tensor (p′ = 0.15;
                            gradient for the active values only).

Median of ``--repeats`` timed rounds after warm-up (variants interleaved within a round), one
CPU thread by default. Writes
``benchmarks/results/g2g_layer.json`` and ``.md`` with the machine it ran on:

    python benchmarks/g2g_layer.py            # ~1 minute on one CPU thread
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bioplaus.bench import code_version
from bioplaus.circuits.g2g import (
    block_linear,
    contiguous_groups,
    ensemble_mask,
    within_mask,
)
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
SHAPES = [(128, 784, 1000), (128, 1000, 1000), (128, 2000, 2000)]


def timed(fns: dict[str, Callable[[], None]], repeats: int, warmup: int,
          device: torch.device) -> dict[str, list[float]]:
    """Seconds of every call of each function: ``repeats`` rounds after ``warmup`` rounds, the
    variants interleaved within each round so that a change in the machine's load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def variants(batch: int, n_in: int, n_out: int, groups: int, p_between: float,
             device: torch.device) -> dict[str, Callable[[], None]]:
    gen = torch.Generator().manual_seed(0)
    in_groups, out_groups = contiguous_groups(n_in, groups), contiguous_groups(n_out, groups)
    mask = ensemble_mask(in_groups, out_groups, p_between, gen).to(device)
    within = within_mask(in_groups, out_groups).to(device)
    rest = mask - within
    h = torch.randn(batch, n_in, device=device, requires_grad=True)
    weight = (torch.randn(n_out, n_in, device=device) / n_in**0.5).requires_grad_(True)
    bias = torch.zeros(n_out, device=device, requires_grad=True)
    grad_out = torch.randn(batch, n_out, device=device)
    index = mask.nonzero().t()
    values = weight.detach()[mask.bool()].clone().requires_grad_(True)

    def run(z: torch.Tensor, *params: torch.Tensor) -> None:
        z.backward(grad_out)
        for p in params:
            p.grad = None

    return {
        "dense": lambda: run(F.linear(h, weight, bias), h, weight, bias),
        "masked": lambda: run(F.linear(h, weight * mask, bias), h, weight, bias),
        "block": lambda: run(block_linear(h, weight, bias, groups), h, weight, bias),
        "block+masked_rest": lambda: run(
            block_linear(h, weight, bias, groups) + F.linear(h, weight * rest), h, weight, bias),
        "sparse_coo": lambda: run(
            torch.sparse.mm(torch.sparse_coo_tensor(index, values, (n_out, n_in), is_coalesced=True,
                                                    check_invariants=False),
                            h.t()).t() + bias, h, values, bias),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--p-between", type=float, default=0.15)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "g2g_layer"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = round(os.getloadavg()[0], 2)
    rows = []
    for batch, n_in, n_out in SHAPES:
        samples = timed(variants(batch, n_in, n_out, args.groups, args.p_between, device),
                        args.repeats, args.warmup, device)
        times = {name: statistics.median(t) for name, t in samples.items()}
        row = {"batch": batch, "in": n_in, "out": n_out,
               "ms": {k: round(v * 1e3, 3) for k, v in times.items()},
               "min_ms": {k: round(min(t) * 1e3, 3) for k, t in samples.items()},
               "vs_dense": {k: round(v / times["dense"], 3) for k, v in times.items()}}
        rows.append(row)
        print(f"{batch}×{n_in}→{n_out}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row["ms"].items()),
              flush=True)
    payload = {
        "benchmark": "g2g_layer",
        "what": "forward + backward (input and weight gradients) of one layer, median ms",
        "groups": args.groups, "p_between": args.p_between, "repeats": args.repeats,
        "device": str(device), "threads": torch.get_num_threads(),
        "machine": machine_description(device), "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min": round(os.getloadavg()[0], 2), "load_before": load_before,
        "commit": code_version(), "command": shlex.join(["python", "benchmarks/g2g_layer.py", *sys.argv[1:]]),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:  # every row names the code and command that measured it
        row.update(commit=payload["commit"], command=payload["command"])
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    names = list(rows[0]["ms"])
    lines = [
        "# G2G sparse layer vs dense layer: forward + backward time",
        "",
        f"Machine: {payload['machine']} (device {payload['device']}); torch {payload['torch']}; "
        f"G = {args.groups}, p′ = {args.p_between} (block: p′ = 0); median of {args.repeats}; "
        f"{payload['date']}; 1-minute load average {payload['load_before']} before, "
        f"{payload['load_average_1min']} after (other jobs share the machine: rounds interleave the "
        f"variants). Command: `{payload['command']}` (commit {payload['commit']}).",
        "",
        "Cells: median ms (min ms; median ÷ dense median).",
        "",
        "| batch × in → out | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = [f"{r['ms'][n]:.2f} ({r['min_ms'][n]:.2f}; {r['vs_dense'][n]:.2f}×)" for n in names]
        lines.append(f"| {r['batch']} × {r['in']} → {r['out']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "`masked` is the path `circuit=g2g` uses for every layer with p′ > 0 (W ⊙ M formed in the "
        "forward pass); `block` is the path `path=auto` takes when a layer's mask is block-diagonal "
        "(grouping=index, p_between=0). `block+masked_rest` and `sparse_coo` are the alternatives "
        "for p′ > 0 layers that were measured and not adopted.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
