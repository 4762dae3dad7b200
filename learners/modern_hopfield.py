"""`modern_hopfield` — store vectors in a modern Hopfield network, retrieve them from partial cues.

Storage: every training vector x becomes a stored pattern (a row of X); each `train_step`
appends its batch. Retrieval: ``circuit.steps`` updates ξ ← X softmax(β Xᵀ ξ) from each cue
(Ramsauer et al., "Hopfield Networks is All You Need", ICLR 2021, arXiv 2008.02217).

Cues (``eval_cues``):

    data     the split's cues x with their targets y (data ``patterns``: noisy cues of a pattern)
    stored   ``eval_samples`` stored patterns drawn uniformly, with the last fraction ``mask`` of
             their coordinates set to 0 (for images flattened row by row: the lower part)

Metrics, per cue then averaged:

    overlap              cosine between the final state and the target (stored: the cue's own pattern)
    retrieved_fraction   stored cues only: the final state is nearest (Euclidean) to its own pattern
    energy               E(ξ) after the last update;  energy_rise: the largest increase of E over
                         one update, over all cues (≤ 0 up to rounding: the update never raises E)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from bioplaus.core import Circuit, Learner, Task
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of (B, d) tensors (0 for a zero row); (B,)."""
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


@register_learner
class ModernHopfieldLearner(Learner):
    """Storage of every training vector and retrieval from partial cues (module doc)."""

    name = "modern_hopfield"
    circuits = ("modern_hopfield",)
    task_kinds = ("memory",)
    distributed_batches = "global"  # the stored patterns grow: every process stores the whole batch
    monitor = ("overlap", "max")
    loss_metric = None
    circuit_head = False

    class Options(LearnerOptions):
        eval_cues: Literal["data", "stored"] = option(
            "data", "retrieve from the split's cues, or from masked stored patterns")
        eval_samples: int = option(1000, "eval_cues=stored: stored patterns cued per evaluation", gt=0)
        mask: float = option(0.5, "eval_cues=stored: fraction of the last coordinates set to 0",
                             ge=0, lt=1)
        figure: bool = option(True, "draw the run's figure (PNG) into the run folder at the end")

    def __init__(self, circuit: Circuit, task: Task, **options: Any) -> None:
        super().__init__(circuit, task, **options)
        self.register_buffer("stored", torch.zeros((), dtype=torch.long))
        self.register_buffer("evaluations", torch.zeros((), dtype=torch.long))
        self.register_buffer("seed", torch.randint(0, 2**62, (), dtype=torch.long))
        self.last_eval: dict[str, Any] = {}

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self.circuit.add_vectors(x.reshape(x.shape[0], -1))
        self.stored += x.shape[0]
        return {"stored": torch.tensor(float(x.shape[0]), device=x.device)}

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, batch_size: int) -> dict[str, float]:
        o = self.options
        memory = self.circuit.patterns
        if memory.shape[0] == 0:
            raise ValueError("learner 'modern_hopfield': nothing is stored yet.")
        own = None
        if o.eval_cues == "stored":
            gen = torch.Generator(device=memory.device)
            gen.manual_seed(int(self.seed) + 1_000_003 * int(self.evaluations))
            self.evaluations += 1
            count = min(o.eval_samples, memory.shape[0])
            own = torch.randperm(memory.shape[0], generator=gen, device=memory.device)[:count]
            y = memory[own]
            x = y.clone()
            x[:, round((1 - o.mask) * x.shape[1]):] = 0.0
        x, y = x.reshape(x.shape[0], -1).to(memory), y.reshape(y.shape[0], -1).to(memory)
        finals, energies = [], []
        for start in range(0, x.shape[0], batch_size):
            final, e = self.circuit.run(x[start:start + batch_size])
            finals.append(final)
            energies.append(e)
        final, e = torch.cat(finals), torch.cat(energies, dim=1)          # (B, d), (steps+1, B)
        out = {"overlap": float(cosine(final, y).mean()), "energy": float(e[-1].mean()),
               "energy_rise": float((e[1:] - e[:-1]).max()) if e.shape[0] > 1 else 0.0}
        if own is not None:
            nearest = (final @ memory.t() - 0.5 * (memory * memory).sum(dim=1)).argmax(dim=1)
            out["retrieved_fraction"] = float((nearest == own).float().mean())
        self.last_eval = {"energies": e.mean(dim=1).cpu()}
        return out

    def rule_metrics(self) -> dict[str, Any]:
        return {"stored_patterns": int(self.stored)}

    def report(self, run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
        if not self.options.figure or "energies" not in self.last_eval:
            return {}
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        energies = self.last_eval["energies"].tolist()
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        ax.plot(range(len(energies)), energies, "o-")
        ax.set_xlabel("update")
        ax.set_ylabel("mean energy E(ξ)")
        title = f"β = {self.circuit.beta:g}, K = {int(self.stored)}"
        if "test_retrieved_fraction" in summary:
            title += f", retrieved {summary['test_retrieved_fraction']:.3f}"
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        name = "energy.png"
        fig.savefig(Path(run_dir) / name, dpi=110)
        plt.close(fig)
        return {"figure": name}
