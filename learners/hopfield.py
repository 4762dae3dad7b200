"""`hopfield` — Hebbian storage in a Hopfield network and retrieval by its dynamics.

Storage protocols (``protocol``), with stored vectors v and J = (1/N) Σ v vᵀ, J_ii = 0:

    hebb          v^μ = ξ^μ, the patterns themselves                                 (Hopfield 1982)
    supervised    v^μ = ξ̂^μ = (1/(r M_μ)) Σ_a η^{μ,a}, the class mean of the examples of μ
    unsupervised  every example: J = (1/N) Σ_{μ,a} η^{μ,a} η^{μ,a}ᵀ / (r² M̄), M̄ = examples per class
                  (Agliari, Alemanno, Barra, De Marzo, "The emergence of a concept in shallow neural
                  networks", Neural Networks 148 (2022) 232–253, arXiv 2109.00454)

r is the examples' quality (``quality``); it and M only rescale J, which matters at finite β.
The same protocols drive the P-body circuit ``dense_hebbian`` (stored vectors as above; unsupervised
appends one row per example and sets the factor 1/(r^P M̄) on its energy).
Storage is incremental: each `train_step` adds its batch — patterns whose index y lies in the
epoch's window [(e−1)·p, e·p) for ``patterns_per_epoch`` = p, or every vector in epoch 1 when
p = 0 — so an epoch can be one load step and each vector is stored exactly once.

Retrieval (`evaluate`): the circuit's dynamics run from each cue x (B, N) toward the pattern y
(B, N) it should retrieve. Metrics, per cue then averaged:

    overlap              Mattis overlap m = (1/N) Σ_i y_i σ_i of the final state σ
    retrieved_fraction   fraction of cues with m ≥ 0.95
    energy               E(σ)/N,  flipped: fraction of spins flipped in the last sweep
    load                 α = K_stored / N, patterns (or classes) stored so far
    archetype_accuracy   (several distinct targets) the target the final state overlaps most is the
                         cue's own — classification by the attractor
    ncm_accuracy         (supervised / unsupervised) nearest class mean: the class whose mean of
                         stored examples is nearest the cue (Euclidean), mapped to its archetype
    overlap_1..K         (``network_size`` = K > 0) the K overlaps with the stored patterns of the
                         cue's network sorted by magnitude, |m_1| ≥ … ≥ |m_K|; and per network j
                         ``net{j}_overlap_{k}``, its measured dilution ``net{j}_dilution``

With ``eval_cues=stored`` the split's cues are ignored: ``eval_samples`` stored patterns, drawn
uniformly, start from themselves (initial overlap 1) — the classic capacity measurement.
Random orders and heat-bath numbers come from a generator seeded by the run's seed and the number
of evaluations so far, so a resumed run evaluates exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import model_validator
from torch import Tensor

from bioplaus.core import Circuit, Learner, Task
from bioplaus.errors import UsageError
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner

RETRIEVED = 0.95


def class_means(sums: Tensor, counts: Tensor, quality: float) -> Tensor:
    """ξ̂^μ = Σ_a η^{μ,a} / (r M_μ) (zero rows for classes with no example yet)."""
    return sums / (quality * counts.clamp_min(1.0))[:, None]


def mattis(targets: Tensor, states: Tensor) -> Tensor:
    """m = (1/N) Σ_i ξ_i σ_i per row, (B,)."""
    return (targets * states).sum(dim=1) / states.shape[1]


def ags_overlap(alpha: float) -> float:
    """Retrieval overlap m(α) of the Hopfield model at T = 0 in the replica-symmetric theory of
    Amit, Gutfreund & Sompolinsky (1985): the largest root of y(√(2α) + (2/√π) e^{−y²}) = erf(y),
    m = erf(y); NaN where no retrieval solution exists (α > α_c ≈ 0.138)."""
    def f(y: float) -> float:
        return math.erf(y) - y * (math.sqrt(2 * alpha) + 2 / math.sqrt(math.pi) * math.exp(-y * y))

    ys = [0.01 * k for k in range(1, 1001)]
    positive = [y for y in ys if f(y) > 0]
    if not positive:
        return float("nan")
    lo, hi = positive[-1], positive[-1] + 0.01
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return math.erf((lo + hi) / 2)


@register_learner
class HopfieldLearner(Learner):
    """Hebbian storage (hebb | supervised | unsupervised) and retrieval metrics (module doc)."""

    name = "hopfield"
    circuits = ("hopfield", "dense_hebbian")
    task_kinds = ("memory",)
    distributed_batches = "global"  # storage sums: every process stores the whole batch
    monitor = ("overlap", "max")
    loss_metric = None
    circuit_head = False

    class Options(LearnerOptions):
        protocol: Literal["hebb", "supervised", "unsupervised"] = option(
            "hebb", "store the patterns, the class means of the examples, or every example")
        quality: float = option(1.0, "r in the normalisations 1/(rM), 1/(r²M); rescales J only", gt=0, le=1)
        patterns_per_epoch: int = option(0, "store patterns (classes) with index in [(e−1)p, ep) in "
                                            "epoch e; 0: everything in epoch 1", ge=0)
        eval_cues: Literal["data", "stored"] = option(
            "data", "retrieve from the split's cues, or start stored patterns from themselves")
        eval_samples: int = option(128, "eval_cues=stored: stored patterns started per evaluation", gt=0)
        network_size: int = option(0, "patterns per independent network (multitasking; needs "
                                      "couplings=factored); 0: all stored patterns form one network", ge=0)
        figure: bool = option(True, "draw the run's figure (PNG) into the run folder at the end")

        @model_validator(mode="after")
        def _stored_cues_need_hebb(self) -> HopfieldLearner.Options:
            if self.eval_cues == "stored" and self.protocol != "hebb":
                raise ValueError("learner.eval_cues=stored starts stored patterns from themselves: it "
                                 "needs learner.protocol=hebb.")
            return self

    def __init__(self, circuit: Circuit, task: Task, **options: Any) -> None:
        super().__init__(circuit, task, **options)
        o = self.options
        self.k = task.num_classes
        n = task.input_shape[0]
        refused = _refused_with(o, circuit.factored, getattr(circuit, "stores_examples", False), self.k)
        if refused:
            raise UsageError(refused)
        self.register_buffer("sums", torch.zeros(self.k, n))
        self.register_buffer("counts", torch.zeros(self.k))
        p = o.patterns_per_epoch
        self.register_buffer("window", torch.tensor([0, p if p else self.k]))
        self.register_buffer("evaluations", torch.zeros((), dtype=torch.long))
        self.register_buffer("seed", torch.randint(0, 2**62, (), dtype=torch.long))
        self.last_eval: dict[str, Any] = {}

    # -- storage ----------------------------------------------------------------------------------
    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        o = self.options
        x = x.to(self.sums.dtype)
        keep = ((y >= self.window[0]) & (y < self.window[1])).to(x.dtype)
        v = x * keep[:, None]
        self.sums.index_add_(0, y, v)
        self.counts.index_add_(0, y, keep)
        if o.protocol == "supervised":
            self.circuit.set_vectors(class_means(self.sums, self.counts, o.quality))
        elif o.protocol == "unsupervised":
            self.circuit.add_outer(v)
            per_class = self.counts.sum() / self.k
            # 1/(r^P M̄): P = 2 for pairwise couplings, the circuit's order for dense ones
            power = getattr(self.circuit, "p", 2)
            self.circuit.scale.copy_(1.0 / (o.quality ** power * per_class.clamp_min(1.0)))
        elif self.circuit.factored:
            self.circuit.add_outer(v, y)
        else:
            self.circuit.add_outer(v)
        return {"stored": keep.sum()}

    def on_epoch_end(self, epoch: int) -> None:
        p = self.options.patterns_per_epoch
        if p:
            self.window.copy_(torch.tensor([epoch * p, (epoch + 1) * p]))
        else:
            self.window.fill_(self.k)

    # -- retrieval --------------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        gen = torch.Generator(device=self.sums.device)
        gen.manual_seed(int(self.seed) + 1_000_003 * int(self.evaluations))
        self.evaluations += 1
        return gen

    def _stored_vectors(self) -> Tensor:
        """The vectors each class stored (hebb: the pattern; else the class mean), (K, N)."""
        return class_means(self.sums, self.counts, 1.0)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, batch_size: int) -> dict[str, float]:
        o = self.options
        gen = self._generator()
        stored = (self.counts > 0).nonzero().flatten()
        if o.eval_cues == "stored":
            if stored.numel() == 0:
                raise ValueError("eval_cues=stored: nothing is stored yet.")
            pick = stored[torch.randint(0, stored.numel(), (o.eval_samples,), generator=gen,
                                        device=gen.device).to(stored.device)]
            x = y = self._stored_vectors()[pick]
        x, y = x.to(self.sums.dtype), y.to(self.sums.dtype)
        memory = self._stored_vectors()
        network = None
        if o.network_size:
            match = (y @ memory.t()).abs()                               # (B, K): own pattern is max
            network = match.argmax(dim=1) // o.network_size
        finals, flips = [], []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            mask = None
            if network is not None:
                nb = network[start:start + batch_size]
                mask = (torch.arange(self.k, device=x.device)[None, :] // o.network_size
                        == nb[:, None]).to(x.dtype)
            state, flipped = self.circuit.run(xb, gen, mask=mask)
            finals.append(state)
            flips.append(flipped)
        sigma, flipped = torch.cat(finals), torch.cat(flips)
        m = mattis(y, sigma)
        n = sigma.shape[1]
        energies = []
        for start in range(0, sigma.shape[0], batch_size):
            sb = sigma[start:start + batch_size]
            mask = None
            if network is not None:
                nb = network[start:start + batch_size]
                mask = (torch.arange(self.k, device=x.device)[None, :] // o.network_size
                        == nb[:, None]).to(x.dtype)
            energies.append(self.circuit.energy(sb, mask))
        out = {
            "overlap": float(m.mean()),
            "retrieved_fraction": float((m >= RETRIEVED).float().mean()),
            "energy": float(torch.cat(energies).mean()) / n,
            "flipped": float(flipped.mean()),
            "load": stored.numel() / n,
        }
        self.last_eval = {"overlaps": m.cpu()}
        if network is not None:
            out.update(self._network_overlaps(sigma, memory, network))
        else:
            out.update(self._classification(x, y, sigma))
        return out

    def _network_overlaps(self, sigma: Tensor, memory: Tensor, network: Tensor) -> dict[str, float]:
        g = self.options.network_size
        m = sigma @ memory.t() / sigma.shape[1]                          # (B, K)
        own = m.reshape(m.shape[0], -1, g)[torch.arange(m.shape[0]), network]   # (B, g)
        ranked = own.abs().sort(dim=1, descending=True).values
        out = {f"overlap_{k + 1}": float(ranked[:, k].mean()) for k in range(g)}
        for j in network.unique().tolist():
            rows = network == j
            for k in range(g):
                out[f"net{j}_overlap_{k + 1}"] = float(ranked[rows, k].mean())
            patterns = memory[j * g:(j + 1) * g]
            out[f"net{j}_dilution"] = float((patterns == 0).float().mean())
        return out

    def _classification(self, x: Tensor, y: Tensor, sigma: Tensor) -> dict[str, float]:
        archetypes, own = torch.unique(y, dim=0, return_inverse=True)   # (G, N), (B,)
        if archetypes.shape[0] < 2:
            return {}
        n = sigma.shape[1]
        attractor_overlaps = sigma @ archetypes.t() / n                  # (B, G)
        out = {"archetype_accuracy": float((attractor_overlaps.argmax(dim=1) == own).float().mean())}
        # class index of each archetype: the class whose stored mean overlaps it most
        present = self.counts > 0
        means = self._stored_vectors()
        arche_of_class = (means @ archetypes.t()).argmax(dim=1)          # (K,)
        if self.options.protocol != "hebb" and bool(present.any()):
            # nearest in Euclidean distance: argmin ‖x − ξ̄_c‖² = argmax x·ξ̄_c − ½‖ξ̄_c‖²
            scores = (x @ means.t() - 0.5 * (means * means).sum(dim=1)[None, :])
            scores = scores.masked_fill(~present[None, :], -math.inf)
            predicted = arche_of_class[scores.argmax(dim=1)]
            out["ncm_accuracy"] = float((predicted == own).float().mean())
        # archetype × archetype matrix of mean attractor overlaps, in class order when every class
        # maps to its own archetype (for the figure)
        matrix = torch.zeros(archetypes.shape[0], archetypes.shape[0])
        for g in range(archetypes.shape[0]):
            rows = own == g
            if bool(rows.any()):
                matrix[g] = attractor_overlaps[rows].mean(dim=0).cpu()
        order = arche_of_class.cpu().tolist()
        if sorted(order) == list(range(archetypes.shape[0])):
            matrix = matrix[order][:, order]
        self.last_eval["archetype_matrix"] = matrix
        return out

    # -- report -----------------------------------------------------------------------------------
    def rule_metrics(self) -> dict[str, Any]:
        return {"stored_patterns": int((self.counts > 0).sum()), "protocol": self.options.protocol}

    def report(self, run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
        from bioplaus import memory_figures

        records = []
        path = Path(run_dir) / "metrics.jsonl"
        if path.exists():
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out: dict[str, Any] = {}
        order = getattr(self.circuit, "p", 2)
        if self.options.eval_cues == "stored" and records and order != 2:
            from bioplaus import dense_figures

            alpha = memory_figures.critical_load(records)
            out["k_max"] = None if alpha is None else round(alpha * self.circuit.n)
            if self.options.figure:
                out["figure"] = dense_figures.capacity(run_dir, records, self.circuit.n, order)
        elif self.options.eval_cues == "stored" and records:
            out["alpha_c"] = memory_figures.critical_load(records)
            if self.options.figure:
                out["figure"] = memory_figures.capacity(run_dir, records, self.circuit.n)
        elif self.options.network_size and self.options.figure:
            out["figure"] = memory_figures.hierarchy(run_dir, summary, self.options.network_size)
        elif "archetype_matrix" in self.last_eval and self.options.figure:
            out["figure"] = memory_figures.archetypes(run_dir, self.last_eval["archetype_matrix"], summary)
        elif self.options.figure:
            out["figure"] = memory_figures.overlaps(run_dir, self.last_eval.get("overlaps"))
        return out


def _refused_with(o: Any, factored: bool, stores_examples: bool, stored: int) -> str | None:
    """Why these options cannot run on a circuit with (or without) factored couplings, one that can
    (or cannot) grow a row per stored example, that stores ``stored`` patterns; or None."""
    if o.protocol == "unsupervised" and factored and not stores_examples:
        return "protocol=unsupervised stores every example: use circuit.couplings=dense."
    if o.network_size and (not factored or stored % o.network_size):
        return (f"learner.network_size={o.network_size} needs circuit.couplings=factored and a number "
                f"of stored patterns ({stored}) that it divides.")
    return None
