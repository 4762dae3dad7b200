"""Figures of associative-memory runs, each with its theory curve; PNGs written into the run folder.

matplotlib is imported inside each drawing function (Agg backend), so importing this module costs
nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: the mean overlap a load must keep to count as retrieving, for the α_c estimate
CAPACITY_OVERLAP = 0.9


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def critical_load(records: list[dict[str, Any]], key: str = "val") -> float | None:
    """α_c: the largest load α whose mean overlap is ≥ 0.9, from ``metrics.jsonl`` records."""
    loads = [r[f"{key}_load"] for r in records
             if r.get(f"{key}_overlap") is not None and r[f"{key}_overlap"] >= CAPACITY_OVERLAP]
    return max(loads) if loads else None


def capacity(run_dir: Path, records: list[dict[str, Any]], neurons: int) -> str:
    """m(α) of stored patterns started from themselves, beside the T = 0 replica-symmetric theory
    (Amit, Gutfreund & Sompolinsky 1985). Returns the file name."""
    from bioplaus.learners.hopfield import ags_overlap

    plt = _pyplot()
    loads = [r["val_load"] for r in records]
    overlaps = [r["val_overlap"] for r in records]
    grid = [0.005 * k for k in range(1, int(max([*loads, 0.2]) / 0.005) + 1)]
    theory = [ags_overlap(a) for a in grid]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(grid, theory, "k-", lw=1.2, label="theory (AGS 1985, T = 0)")
    ax.plot(loads, overlaps, "o-", ms=4, label=f"measured, N = {neurons}")
    ax.axvline(0.138, color="grey", ls=":", lw=1)
    alpha_c = critical_load(records)
    if alpha_c is not None:
        ax.axvline(alpha_c, color="C1", ls="--", lw=1, label=f"α_c (m ≥ 0.9) = {alpha_c:.3f}")
    ax.set_xlabel("load α = K / N")
    ax.set_ylabel("mean overlap m")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Hopfield capacity: stored patterns started from themselves", fontsize=9)
    fig.tight_layout()
    name = "capacity.png"
    fig.savefig(Path(run_dir) / name, dpi=110)
    plt.close(fig)
    return name


def hierarchy(run_dir: Path, summary: dict[str, Any], k: int) -> str:
    """Sorted |m_k| against d for each independent network (test split), beside the hierarchical
    prediction (1 − d) d^{k−1} and the parallel regime 1 − d. Returns the file name."""
    plt = _pyplot()
    nets = sorted({int(key.split("_")[1][3:]) for key in summary if key.startswith("test_net")
                   and key.endswith("_dilution")})
    ds = [summary[f"test_net{j}_dilution"] for j in nets]
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    grid = [0.01 * i for i in range(1, 100)]
    for level in range(1, k + 1):
        color = f"C{level - 1}"
        ax.plot(grid, [(1 - d) * d ** (level - 1) for d in grid], "-", color=color, lw=1,
                label=f"(1−d)d^{level - 1}" if level > 1 else "(1−d)  (also the parallel regime)")
        ax.plot(ds, [summary[f"test_net{j}_overlap_{level}"] for j in nets], "o", color=color, ms=4,
                label=f"|m_{level}| measured")
    edge = {2: 1.0, 3: (math.sqrt(5) - 1) / 2, 4: 0.544}.get(k)
    if edge is not None and edge < 1:
        ax.axvline(edge, color="grey", ls=":", lw=1, label=f"hierarchy stable below d ≈ {edge:.3f}")
    ax.set_xlabel("dilution d")
    ax.set_ylabel("sorted |m_k|")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"Multitasking network, K = {k}: hierarchical and parallel retrieval", fontsize=9)
    fig.tight_layout()
    name = "hierarchy.png"
    fig.savefig(Path(run_dir) / name, dpi=110)
    plt.close(fig)
    return name


def archetypes(run_dir: Path, matrix: Any, summary: dict[str, Any]) -> str:
    """Mean overlap of the attractors reached from the cues of each class (rows) with every class
    archetype (columns). Returns the file name."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4))
    image = ax.imshow(matrix.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xlabel("archetype")
    ax.set_ylabel("class of the cue")
    acc = summary.get("test_archetype_accuracy")
    ncm = summary.get("test_ncm_accuracy")
    title = "attractor × archetype overlap"
    if acc is not None:
        title += f"\nattractor class. {acc:.3f}" + (f", nearest class mean {ncm:.3f}" if ncm else "")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    name = "archetypes.png"
    fig.savefig(Path(run_dir) / name, dpi=110)
    plt.close(fig)
    return name


def overlaps(run_dir: Path, values: Any) -> str:
    """Histogram of the final overlaps of the test cues, with the retrieval threshold 0.95."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    if values is not None:
        ax.hist(values.numpy(), bins=40, range=(-1, 1))
    ax.axvline(0.95, color="k", ls="--", lw=1, label="retrieved (m ≥ 0.95)")
    ax.set_xlabel("final overlap m with the cued pattern")
    ax.set_ylabel("cues")
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = "overlaps.png"
    fig.savefig(Path(run_dir) / name, dpi=110)
    plt.close(fig)
    return name
