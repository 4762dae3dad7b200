"""Storage capacity of the dense (P-body) Hebbian network against N: the largest K at which stored
patterns started from themselves keep a mean overlap ≥ 0.9, found by bisection over K, and a
log–log fit K_max ∝ N^a (ultra-storage: a = P − 1, up to a logarithm).

For each (P, N): K random ±1 patterns (fresh for each K, seed fixed by P, N, K) are stored (hebb,
c = 1), ``cues`` of them start from themselves and run ``sweeps`` zero-temperature sweeps of the
``dense_hebbian`` circuit; the mean final overlap m(K) decides. The bracket starts at the
error-free estimate of Krotov & Hopfield (2016), K ≈ N^{P−1} / (2 (2P−3)!! ln N), doubles (or
halves) until it brackets the 0.9 crossing, then bisects geometrically to a ratio ``precision``.

Writes ``benchmarks/results/dense_storage.json``, ``.md`` and ``.png``:

    python benchmarks/dense_storage.py [--orders 2 4] [--neurons 2:50,100,200,400,800,1600 4:50,100,200]
                                       [--cues 64 16] [--sweeps 20 3] [--out dense_storage]

``--neurons`` takes the sizes N for every order (``50 100 200``) or per order (``P:N,N,...``). The
default runs P = 2 up to N = 1600: at N ≤ 200 the pairwise network's K_max/N still carries a
finite-size excess (0.22 at N = 50 against α_c ≈ 0.138), which the fit over a wider range averages
out; P = 4 stops at N = 200 (K_max ≈ 1.4·10⁵ there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bioplaus import patterns
from bioplaus.bench import code_version, markdown_header, save_results
from bioplaus.circuits.dense_hebbian import DenseHebbian
from bioplaus.core import Task
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
THRESHOLD = 0.9


def _commit() -> str:
    return code_version(HERE)


def mean_overlap(p: int, n: int, k: int, cues: int, sweeps: int) -> float:
    """m(K): mean final overlap of ``cues`` stored patterns started from themselves."""
    gen = torch.Generator().manual_seed(1_000_003 * p + 7919 * n + k)
    xi = patterns.rademacher(k, n, gen)
    net = DenseHebbian(Task((n,), k, "memory"), p=p, sweeps=sweeps)
    net.set_vectors(xi)
    start = xi[:cues]
    final, _ = net.run(start, gen)
    return float((final * start).sum(dim=1).mean() / n)


def k_max(p: int, n: int, cues: int, sweeps: int, precision: float) -> tuple[int, list[list[float]]]:
    """Largest K with m(K) ≥ 0.9 (geometric bisection), and every (K, m) evaluated."""
    double_fact = math.prod(range(2 * p - 3, 0, -2))
    guess = max(2, round(n ** (p - 1) / (2 * double_fact * math.log(n))))
    seen: list[list[float]] = []

    def good(k: int) -> bool:
        m = mean_overlap(p, n, k, min(cues, k), sweeps)
        seen.append([k, m])
        print(f"  P={p} N={n} K={k}: m={m:.4f}", flush=True)
        return m >= THRESHOLD

    lo, hi = None, None
    k = guess
    while lo is None or hi is None:
        if good(k):
            lo = k
            k *= 2
        else:
            hi = k
            if k <= 1:
                return 0, seen
            k = max(1, k // 2)
        if lo is not None and hi is not None and lo > hi:          # a noisy non-monotone start
            lo, hi = None, None
            k = max(1, k // 2)
    while hi / lo > precision and hi - lo > 1:
        mid = max(lo + 1, min(hi - 1, round(math.sqrt(lo * hi))))
        if good(mid):
            lo = mid
        else:
            hi = mid
    return lo, seen


def neuron_sizes(specs: list[str], orders: list[int]) -> dict[int, list[int]]:
    """``["50", "100"]`` (every order) or ``["2:50,100", "4:50"]`` (per order) → {P: [N, ...]}."""
    try:
        if all(":" in spec for spec in specs):
            sizes = {int(p): [int(n) for n in ns.split(",")]
                     for p, ns in (spec.split(":", 1) for spec in specs)}
        else:
            sizes = {p: [int(n) for n in specs] for p in orders}
    except ValueError:
        raise SystemExit(f"--neurons: expected integers or P:N,N,... entries, got {specs}") from None
    missing = [p for p in orders if p not in sizes]
    if missing:
        raise SystemExit(f"--neurons: no sizes for P = {missing}")
    return sizes


def figure(path: Path, payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    for i, (p, fit) in enumerate(payload["fits"].items()):
        rows = [r for r in payload["rows"] if r["P"] == int(p)]
        ns = np.array([r["N"] for r in rows], dtype=float)
        ks = np.array([r["K_max"] for r in rows], dtype=float)
        ax.loglog(ns, ks, "o", color=f"C{i}", label=f"P = {p}: K_max ∝ N^{fit['exponent']:.2f}")
        grid = np.geomspace(ns.min(), ns.max(), 20)
        ax.loglog(grid, np.exp(fit["intercept"]) * grid ** fit["exponent"], "-", color=f"C{i}", lw=1)
    ax.set_xlabel("neurons N")
    ax.set_ylabel("K_max (mean overlap ≥ 0.9)")
    ax.set_title("Dense Hebbian network: storage against N", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(markdown: Path, payload: dict[str, Any]) -> None:
    lines = markdown_header(
        "Dense Hebbian storage capacity", payload,
        f"Commit {payload['commit']}. Command: `{payload['command']}`. K random ±1 patterns stored "
        f"(hebb), {payload['cues']} (per P) of them started from themselves, {payload['sweeps']} "
        f"zero-temperature sweeps (per P); K_max is the largest K with mean final overlap ≥ 0.9 "
        f"(geometric bisection to a ratio {payload['precision']}). Figure: {payload['figure']}.")
    lines += ["| P | N | K_max | K_max / N^(P−1) | evaluations | seconds | load average |",
              "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['P']} | {r['N']} | {r['K_max']} | {r['K_max'] / r['N'] ** (r['P'] - 1):.4f} "
                     f"| {len(r['evaluated'])} | {r['seconds']:.0f} | {r['load_average']:.1f} |")
    lines += ["", "| P | N fitted | fitted exponent a (K_max ∝ N^a) | P − 1 |", "|---|---|---|---|"]
    for p, fit in payload["fits"].items():
        sizes = [r["N"] for r in payload["rows"] if r["P"] == int(p)]
        lines.append(f"| {p} | {min(sizes)}–{max(sizes)} | {fit['exponent']:.3f} | {int(p) - 1} |")
    markdown.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--neurons", nargs="+", default=["2:50,100,200,400,800,1600", "4:50,100,200"],
                        help="N for every order (50 100 200) or per order (2:50,100 4:50)")
    parser.add_argument("--cues", type=int, nargs="+", default=[64, 16],
                        help="stored patterns started per evaluation, per P")
    parser.add_argument("--sweeps", type=int, nargs="+", default=[20, 3],
                        help="sweeps per P (in the order of --orders)")
    parser.add_argument("--precision", type=float, default=1.05)
    parser.add_argument("--out", default="dense_storage", help="results file stem in benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = neuron_sizes(args.neurons, args.orders)
    rows = []
    for p, sweeps, cues in zip(args.orders, args.sweeps, args.cues, strict=True):
        for n in sizes[p]:
            t0, load = time.time(), os.getloadavg()[0]
            k, seen = k_max(p, n, cues, sweeps, args.precision)
            rows.append({"P": p, "N": n, "K_max": k, "sweeps": sweeps, "cues": cues, "evaluated": seen,
                         "seconds": time.time() - t0,
                         "load_average": round(max(load, os.getloadavg()[0]), 2)})
    fits = {}
    for p in args.orders:
        sel = [r for r in rows if r["P"] == p and r["K_max"] > 0]
        log_n, log_k = np.log([r["N"] for r in sel]), np.log([r["K_max"] for r in sel])
        slope, intercept = np.polyfit(log_n, log_k, 1)
        fits[str(p)] = {"exponent": float(slope), "intercept": float(intercept)}
    per_p = {"cues": args.cues, "sweeps": args.sweeps}
    payload = {"machine": machine_description(torch.device("cpu")), "torch": torch.__version__,
               "commit": _commit(),
               "updated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python benchmarks/dense_storage.py " + " ".join(sys.argv[1:]),
               "neurons": {str(p): sizes[p] for p in args.orders},
               **{key: dict(zip(map(str, args.orders), values, strict=True))
                  for key, values in per_p.items()},
               "precision": args.precision, "figure": f"{args.out}.png", "rows": rows, "fits": fits}
    out = RESULTS / f"{args.out}.json"
    save_results(out, payload, render)
    figure(out.with_suffix(".png"), payload)
    for p, fit in fits.items():
        print(f"P = {p}: K_max ∝ N^{fit['exponent']:.3f}")


if __name__ == "__main__":
    main()
