"""Figures of dense (P-body) Hebbian memory runs; PNGs written into the run folder.

matplotlib is imported inside the drawing function (Agg backend), so importing this module costs
nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bioplaus.memory_figures import CAPACITY_OVERLAP, critical_load


def capacity(run_dir: Path, records: list[dict[str, Any]], neurons: int, order: int) -> str:
    """m(K) of stored patterns started from themselves in the P-body network, against K/N^{P−1},
    with the K_max of the 0.9 criterion and the error-free estimate of Krotov & Hopfield (2016),
    K ≈ N^{P−1} / (2 (2P−3)!! ln N). Returns the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = neurons ** (order - 2)                       # load = K/N in the records → K/N^{P−1}
    loads = [r["val_load"] / scale for r in records]
    overlaps = [r["val_overlap"] for r in records]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(loads, overlaps, "o-", ms=4, label=f"measured, N = {neurons}, P = {order}")
    errorless = 1 / (2 * math.prod(range(2 * order - 3, 0, -2)) * math.log(neurons))
    ax.axvline(errorless, color="grey", ls=":", lw=1, label="error-free estimate (Krotov & Hopfield)")
    alpha = critical_load(records)
    if alpha is not None:
        ax.axvline(alpha / scale, color="C1", ls="--", lw=1,
                   label=f"K_max (m ≥ {CAPACITY_OVERLAP}) = {round(alpha * neurons)}")
    ax.set_xlabel(f"load K / N^{order - 1}")
    ax.set_ylabel("mean overlap m")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Dense Hebbian capacity: stored patterns started from themselves", fontsize=9)
    fig.tight_layout()
    name = "capacity.png"
    fig.savefig(Path(run_dir) / name, dpi=110)
    plt.close(fig)
    return name
