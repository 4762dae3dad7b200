"""Dense Hebbian networks learning from examples: archetype retrieval against the dataset entropy
ρ = (1 − r²)/(M r²), supervised and unsupervised, P = 2 and P = 4, at a low and a high load, and
the big-data limit (M grows at fixed r: the example-trained network retrieves like the one that
stored the archetypes).

K random ±1 archetypes ξ^μ of N spins, M examples each, η^{μ,a} = χ^{μ,a} ξ^μ with P(χ = +1) = (1+r)/2.
Supervised storage: the K class means ξ̂^μ = Σ_a η^{μ,a}/(rM); unsupervised: all K·M examples, each
its own row (``dense_hebbian`` circuit, the protocols of its module doc). ``cues`` archetypes start
from themselves and run ``sweeps`` zero-temperature sweeps; reported: the mean final Mattis overlap
with the archetype. ρ is scanned at fixed M by the quality r = 1/√(1 + Mρ). The threshold ρ* is
the largest ρ of the grid whose mean overlap is ≥ 0.9 (every smaller ρ included).

Writes ``benchmarks/results/dense_examples.json``, ``.md`` and ``.png``:

    python benchmarks/dense_examples.py [--neurons 100] [--examples 20]
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

import torch

from bioplaus import patterns
from bioplaus.bench import code_version, markdown_header, save_results
from bioplaus.circuits.dense_hebbian import DenseHebbian
from bioplaus.core import Task
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
THRESHOLD = 0.9
#: rows beyond which an unsupervised point is skipped (its cost grows as K·M per update)
MAX_ROWS = 60_000


def _commit() -> str:
    return code_version(HERE)


def archetype_overlap(p: int, n: int, k: int, m: int, r: float, protocol: str, cues: int,
                      sweeps: int, seed: int) -> float:
    """Mean final overlap of ``cues`` archetypes started from themselves in the network trained on
    M examples of quality r per archetype (protocol ``hebb`` stores the archetypes themselves)."""
    gen = torch.Generator().manual_seed(seed)
    xi = patterns.rademacher(k, n, gen)
    eta, labels = patterns.examples(xi, m, r, gen)
    if protocol == "hebb":
        vectors, scale = xi, 1.0
    elif protocol == "supervised":
        vectors, scale = torch.zeros(k, n).index_add_(0, labels, eta) / (r * m), 1.0
    else:
        vectors, scale = eta, 1.0 / (r ** p * m)
    net = DenseHebbian(Task((n,), vectors.shape[0], "memory"), p=p, sweeps=sweeps)
    net.set_vectors(vectors)
    net.scale.fill_(scale)
    start = xi[:cues]
    final, _ = net.run(start, gen)
    return float((final * start).sum(dim=1).mean() / n)


def figure(path: Path, payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = ["low", "high"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, load in zip(axes[:2], loads, strict=True):
        for i, p in enumerate(payload["orders"]):
            for ls, protocol in (("-", "supervised"), ("--", "unsupervised")):
                rows = [r for r in payload["scan"] if r["P"] == p and r["load"] == load
                        and r["protocol"] == protocol and r["overlap"] is not None]
                if rows:
                    k = rows[0]["K"]
                    ax.semilogx([r["rho"] for r in rows], [r["overlap"] for r in rows], "o" + ls,
                                color=f"C{i}", ms=3, label=f"P = {p}, {protocol} (K = {k})")
        ax.axhline(THRESHOLD, color="grey", ls=":", lw=1)
        ax.set_xlabel("ρ = (1 − r²)/(M r²)")
        ax.set_ylabel("archetype overlap")
        ax.set_ylim(-0.05, 1.02)
        ax.set_title(f"{load} load, N = {payload['N']}, M = {payload['M']}", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[2]
    for i, p in enumerate(payload["orders"]):
        for ls, protocol in (("-", "supervised"), ("--", "unsupervised")):
            rows = [r for r in payload["big_data"] if r["P"] == p and r["protocol"] == protocol
                    and r["overlap"] is not None]
            if rows:
                ax.semilogx([r["M"] for r in rows], [r["overlap"] for r in rows], "o" + ls,
                            color=f"C{i}", ms=3, label=f"P = {p}, {protocol}")
        ref = next(r for r in payload["big_data"] if r["P"] == p and r["protocol"] == "hebb")
        ax.axhline(ref["overlap"], color=f"C{i}", ls=":", lw=1, label=f"P = {p}, archetypes stored")
    ax.set_xlabel("examples per archetype M")
    ax.set_ylabel("archetype overlap")
    ax.set_title(f"big-data limit, r = {payload['big_data_r']}, high load", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(markdown: Path, payload: dict[str, Any]) -> None:
    lines = markdown_header(
        "Dense Hebbian networks from examples: archetype retrieval against ρ", payload,
        f"Commit {payload['commit']}. Command: `{payload['command']}`. N = {payload['N']}, "
        f"M = {payload['M']} examples per archetype (ρ scanned through r), {payload['cues']} "
        f"archetypes started from themselves, {payload['sweeps']} zero-temperature sweeps. "
        "ρ*: the largest ρ of the grid with mean archetype overlap ≥ 0.9. Figure: dense_examples.png.")
    lines += ["| P | protocol | load | K | ρ* | overlap at ρ* | overlap at the next ρ | seconds | "
              "load average |", "|---|---|---|---|---|---|---|---|---|"]
    for t in payload["thresholds"]:
        nxt = "—" if t["next_overlap"] is None else f"{t['next_overlap']:.3f}"
        rho = "none" if t["rho_star"] is None else f"{t['rho_star']:.3g}"
        at = "—" if t["overlap_at"] is None else f"{t['overlap_at']:.3f}"
        lines.append(f"| {t['P']} | {t['protocol']} | {t['load']} | {t['K']} | {rho} | {at} | {nxt} | "
                     f"{t['seconds']:.0f} | {t['load_average']:.1f} |")
    lines += ["", f"Big-data limit at r = {payload['big_data_r']}, high load:", "",
              "| P | protocol | M | ρ | overlap |", "|---|---|---|---|---|"]
    for r in payload["big_data"]:
        ov = "skipped (K·M rows)" if r["overlap"] is None else f"{r['overlap']:.3f}"
        rho = "0 (archetypes)" if r["protocol"] == "hebb" else f"{r['rho']:.3g}"
        lines.append(f"| {r['P']} | {r['protocol']} | {r['M'] or '—'} | {rho} | {ov} |")
    markdown.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=100)
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--low", type=int, nargs="+", default=[2, 2], help="low-load K per P")
    parser.add_argument("--high", type=int, nargs="+", default=[10, 1000], help="high-load K per P")
    parser.add_argument("--rhos", type=float, nargs="+",
                        default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0])
    parser.add_argument("--big-data-r", type=float, default=0.2)
    parser.add_argument("--big-data-m", type=int, nargs="+", default=[5, 20, 80, 320])
    parser.add_argument("--cues", type=int, default=16)
    parser.add_argument("--sweeps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, m = args.neurons, args.examples
    scan, thresholds, big = [], [], []
    for i, p in enumerate(args.orders):
        for load, k in (("low", args.low[i]), ("high", args.high[i])):
            for protocol in ("supervised", "unsupervised"):
                t0, la = time.time(), os.getloadavg()[0]
                curve = []
                for j, rho in enumerate(args.rhos):
                    r = 1 / math.sqrt(1 + m * rho)
                    ov = None
                    if protocol == "supervised" or k * m <= MAX_ROWS:
                        ov = archetype_overlap(p, n, k, m, r, protocol, min(k, args.cues), args.sweeps,
                                               seed=1000 * p + 100 * j + k)
                    row = {"P": p, "load": load, "K": k, "protocol": protocol, "rho": rho, "r": r,
                           "overlap": ov}
                    print(row, flush=True)
                    scan.append(row)
                    curve.append(row)
                star, at, nxt = None, None, None
                for row in curve:
                    if row["overlap"] is None:
                        break
                    if row["overlap"] >= THRESHOLD:
                        star, at = row["rho"], row["overlap"]
                    else:
                        nxt = row["overlap"]
                        break
                thresholds.append({"P": p, "protocol": protocol, "load": load, "K": k, "rho_star": star,
                                   "overlap_at": at, "next_overlap": nxt, "seconds": time.time() - t0,
                                   "load_average": round(max(la, os.getloadavg()[0]), 2)})
        k = args.high[i]
        r = args.big_data_r
        big.append({"P": p, "protocol": "hebb", "K": k, "M": 0, "rho": 0.0,
                    "overlap": archetype_overlap(p, n, k, 1, 1.0, "hebb", min(k, args.cues), args.sweeps,
                                                 seed=7 + p)})
        for protocol in ("supervised", "unsupervised"):
            for mm in args.big_data_m:
                ov = None
                if protocol == "supervised" or k * mm <= MAX_ROWS:
                    ov = archetype_overlap(p, n, k, mm, r, protocol, min(k, args.cues), args.sweeps,
                                           seed=7 + p)
                row = {"P": p, "protocol": protocol, "K": k, "M": mm, "rho": (1 - r * r) / (mm * r * r),
                       "overlap": ov}
                print(row, flush=True)
                big.append(row)
    payload = {"machine": machine_description(torch.device("cpu")), "torch": torch.__version__,
               "commit": _commit(),
               "updated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python benchmarks/dense_examples.py " + " ".join(sys.argv[1:]),
               "N": n, "M": m, "orders": args.orders, "cues": args.cues, "sweeps": args.sweeps,
               "big_data_r": args.big_data_r, "scan": scan, "thresholds": thresholds, "big_data": big}
    out = RESULTS / "dense_examples.json"
    save_results(out, payload, render)
    figure(out.with_suffix(".png"), payload)
    for t in thresholds:
        print(t)


if __name__ == "__main__":
    main()
