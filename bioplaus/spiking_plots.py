"""Pictures of a spiking run: a spike raster of one example per layer, the histogram of delays.

matplotlib (Agg backend) is imported inside each drawing function only, so ``import bioplaus``
stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@torch.no_grad()
def spike_raster(circuit: Any, x: Tensor, path: Path) -> Path:
    """One panel per layer for the single example ``x`` (1, T, channels) — input spikes, the
    spikes of every hidden layer (integer delays, evaluation mode) and the output membranes —
    saved to ``path`` (PNG)."""
    plt = _pyplot()
    was_training = circuit.training
    circuit.eval()
    outs = circuit.layer_outputs(x, quantised=True)
    circuit.train(was_training)
    panels = [("input", x[0].cpu())] + [
        (f"hidden {i + 1}" if i < len(outs) - 1 or not circuit.has_head else "output membranes",
         o[:, 0].cpu()) for i, o in enumerate(outs)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), sharex=True)
    for ax, (title, seq) in zip(list(axes), panels, strict=True):
        if title == "output membranes":
            for c in range(seq.shape[1]):
                ax.plot(seq[:, c].numpy(), lw=1, label=str(c))
            ax.set_ylabel("U")
            if seq.shape[1] <= 10:
                ax.legend(fontsize=6, ncol=seq.shape[1], loc="upper right")
        else:
            t, n = torch.nonzero(seq > 0, as_tuple=True)
            ax.scatter(t.numpy(), n.numpy(), s=2, c="k", marker="|")
            ax.set_ylabel("neuron")
            ax.set_ylim(-0.5, seq.shape[1] - 0.5)
        ax.set_title(title, fontsize=9)
    axes[-1].set_xlabel("time step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def delay_histogram(circuit: Any, path: Path) -> Path:
    """Histogram of the integer delays (rounded positions) of every delay layer, saved to ``path``."""
    plt = _pyplot()
    layers = circuit.delay_synapses()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 2.6), squeeze=False)
    names = {id(b.synapse): (f"into hidden {i + 1}" if hasattr(b, "neuron") else "into the output")
             for i, b in enumerate(circuit.blocks)}
    for ax, syn in zip(axes[0], layers, strict=True):
        d = syn.delays().flatten().cpu().numpy()
        ax.hist(d, bins=range(syn.max_delay + 1), color="0.3")
        ax.set_title(f"delays {names[id(syn)]}", fontsize=9)
        ax.set_xlabel("delay (steps)")
    axes[0][0].set_ylabel("synapses")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
