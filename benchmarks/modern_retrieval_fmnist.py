"""Retrieval of stored Fashion-MNIST images from half-masked cues by the modern Hopfield network.

K training images (the first K of a fixed random permutation) are stored as patterns of the
``modern_hopfield`` circuit, binarised to ±1 (pixel > 127.5 → +1, else −1; d = 784), so that every
stored pattern has the same norm. A cue is a stored image with its lower half (rows 14–27) set to
0, i.e. unknown; ``steps`` updates
ξ ← X softmax(β Xᵀ ξ) follow. A cue counts as retrieved when its final state is nearest (Euclidean)
to its own stored image. Reported against K and β: the retrieved fraction, and the mean energy
E(ξ) after each update (it never increases), with the largest energy rise seen over all
trajectories (float32 rounding only).

Writes ``benchmarks/results/modern_retrieval_fmnist.json``, ``.md`` and ``.png``:

    python benchmarks/modern_retrieval_fmnist.py [--stored 100 1000 10000] [--betas 0.01 0.03 0.1 1 10]
                                                 [--cues 1000] [--steps 3]
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

from bioplaus import registry
from bioplaus.bench import code_version, markdown_header, save_results
from bioplaus.circuits.modern_hopfield import ModernHopfield
from bioplaus.core import Task
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _commit() -> str:
    return code_version(HERE)


def images() -> torch.Tensor:
    """Training images binarised to ±1, (60000, 784), in a fixed random order."""
    raw = registry.get_dataset("fashion_mnist")()
    x = torch.where(raw.train_x.reshape(raw.train_x.shape[0], -1) > 127.5, 1.0, -1.0)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    return x[order]


def retrieval(stored: torch.Tensor, beta: float, cues: int, steps: int) -> dict[str, Any]:
    k, d = stored.shape
    net = ModernHopfield(Task((d,), k, "memory"), beta=beta, steps=steps)
    net.set_vectors(stored)
    pick = torch.randperm(k, generator=torch.Generator().manual_seed(k))[:cues]
    cue = stored[pick].clone().reshape(-1, 28, 28)
    cue[:, 14:, :] = 0.0
    final, energies = net.run(cue.reshape(-1, d))
    # nearest stored image: argmin ‖ξ − x‖² = argmax ξ·x − ½‖x‖²
    nearest = (final @ stored.t() - 0.5 * (stored * stored).sum(dim=1)).argmax(dim=1)
    rise = (energies[1:] - energies[:-1]).max()
    return {"K": k, "beta": beta, "cues": len(pick), "steps": steps,
            "retrieved": float((nearest == pick).float().mean()),
            "energy": [float(e) for e in energies.mean(dim=1)],
            "largest_energy_rise": float(rise)}


def figure(path: Path, payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    ks = sorted({r["K"] for r in rows})
    betas = sorted({r["beta"] for r in rows})
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, k in enumerate(ks):
        sel = [r for r in rows if r["K"] == k]
        a.semilogx([r["beta"] for r in sel], [r["retrieved"] for r in sel], "o-", color=f"C{i}",
                   label=f"K = {k}")
    a.axhline(0.95, color="grey", ls=":", lw=1)
    a.set_xlabel("β")
    a.set_ylabel("cues retrieving their own image")
    a.set_ylim(0, 1.02)
    a.legend(fontsize=8)
    a.set_title("half-masked Fashion-MNIST cues", fontsize=9)
    k = 1000 if 1000 in ks else ks[0]
    for i, beta in enumerate(betas):
        r = next(r for r in rows if r["K"] == k and r["beta"] == beta)
        b.plot(range(len(r["energy"])), r["energy"], "o-", color=f"C{i}", label=f"β = {beta:g}")
    b.set_xlabel("update")
    b.set_ylabel("mean energy E(ξ)")
    b.set_title(f"energy along the trajectories, K = {k}", fontsize=9)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(markdown: Path, payload: dict[str, Any]) -> None:
    lines = markdown_header(
        "Modern Hopfield retrieval of half-masked Fashion-MNIST images", payload,
        f"Commit {payload['commit']}. Command: `{payload['command']}`. Stored: K training "
        "images binarised to ±1 (pixel > 127.5); cue: a stored image with its lower half set to "
        "0; retrieved: the final state is nearest its own image. Figure: modern_retrieval_fmnist.png.")
    lines += ["| K | β | cues | updates | retrieved | E before → after each update | largest rise |"
              " seconds | load average |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        energy = " → ".join(f"{e:.4f}" for e in r["energy"])
        lines.append(f"| {r['K']} | {r['beta']:g} | {r['cues']} | {r['steps']} | {r['retrieved']:.3f} | "
                     f"{energy} | {r['largest_energy_rise']:.1e} | {r['seconds']:.1f} | "
                     f"{r['load_average']:.1f} |")
    markdown.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.03, 0.1, 1, 10])
    parser.add_argument("--cues", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = images()
    rows = []
    for k in args.stored:
        for beta in args.betas:
            t0, load = time.time(), os.getloadavg()[0]
            row = retrieval(x[:k], beta, args.cues, args.steps)
            row["seconds"] = time.time() - t0
            row["load_average"] = round(max(load, os.getloadavg()[0]), 2)
            print(row, flush=True)
            rows.append(row)
    payload = {"machine": machine_description(torch.device("cpu")), "torch": torch.__version__,
               "commit": _commit(),
               "updated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python benchmarks/modern_retrieval_fmnist.py " + " ".join(sys.argv[1:]),
               "rows": rows}
    out = RESULTS / "modern_retrieval_fmnist.json"
    save_results(out, payload, render)
    figure(out.with_suffix(".png"), payload)


if __name__ == "__main__":
    main()
