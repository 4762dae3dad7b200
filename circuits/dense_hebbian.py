"""`dense_hebbian` — N Ising neurons with P-body Hebbian couplings (even P) and Glauber dynamics.

    m_μ(σ) = (1/N) Σ_i v^μ_i σ_i                                   overlaps with the R stored vectors
    H(σ)   = −c · N Σ_μ (m_μ)^P / P!                                 (even P = 2, 4, 6, …)

which is the P-body Hamiltonian H = −c Σ_{i1…iP} J_{i1…iP} σ_{i1}…σ_{iP} of the Hebbian tensor
J_{i1…iP} = (1/(P! N^{P−1})) Σ_μ v^μ_{i1}…v^μ_{iP}, every index tuple included (repeated indices too).
c is the circuit's ``scale`` buffer, set by the storage protocol. The tensor is never built: flipping
σ_i changes every overlap by δ_μ = −2 v^μ_i σ_i / N, so

    ΔH_i = H(…, −σ_i, …) − H(σ) = −(c N / P!) Σ_μ [(m_μ + δ_μ)^P − (m_μ)^P]
         = −(c N / P!) Σ_μ δ_μ Σ_{j=0}^{P−1} (m_μ + δ_μ)^j (m_μ)^{P−1−j}

exactly, in O(R) per update (the factored sum has no cancellation between large terms).
Glauber (heat bath) at inverse temperature β, one spin at a time, with the field
h_i = [H(σ_i = −1) − H(σ_i = +1)] / 2 = σ_i ΔH_i / 2:

    P(σ_i ← +1) = ½ [1 + tanh(β h_i)];   β = ∞ (``beta: null``): σ_i ← sign(h_i), kept when h_i = 0.

At P = 2, H = −(c/2N) Σ_μ (v^μ·σ)² differs from the pairwise Hopfield energy −½ c σᵀJσ
(J = (1/N) Σ v vᵀ, J_ii = 0) by the constant −(c/2N) Σ_{μ,i} (v^μ_i)², so ΔH_i and h_i are the
Hopfield ones: with the same random numbers the two circuits follow the same trajectory. Krotov &
Hopfield, "Dense associative memory for pattern recognition", NeurIPS 2016 (arXiv 1606.01164),
use F(x) = x^P, i.e. H = −Σ_μ (v^μ·σ)^P = −N^P Σ_μ m_μ^P: the same dynamics at β = ∞.

Storage protocols (driven by the ``hopfield`` learner; examples η^{μ,a} = χ^{μ,a} ξ^μ of K archetypes,
M per archetype, quality r = E[χ], dataset entropy ρ = (1 − r²)/(M r²)):

    hebb          v^μ = ξ^μ,                                    c = 1
    supervised    v^μ = ξ̂^μ = (1/(r M)) Σ_a η^{μ,a},             c = 1
    unsupervised  one vector per example, v^{μ,a} = η^{μ,a},   c = 1 / (r^P M)

so that H_sup = −(N/P!) Σ_μ ((1/N) ξ̂^μ·σ)^P and H_unsup = −(N/P!) (1/M) Σ_{μ,a} ((1/(rN)) η^{μ,a}·σ)^P,
the forms of Agliari, Albanese, Alemanno, Alessandrelli, Barra, Giannotti, Lotito & Pedreschi,
"Dense Hebbian neural networks: a replica symmetric picture of supervised learning", Physica A 626
(2023) 129076 (arXiv 2212.00606), and "… of unsupervised learning" (arXiv 2211.14067). Their
variants normalise by R^{P/2}, R = r² + (1 − r²)/M, in place of r^P: a positive factor on H, i.e. a
rescaled β, which leaves the β = ∞ dynamics unchanged.

One sweep updates every spin of every replica once in a random order drawn afresh each sweep; all
replicas (cues) advance together, each with its own overlaps m (B, R). A call runs a fixed number of
sweeps, random numbers from a device generator, no host synchronisation (capturable). Random
numbers are drawn exactly as in ``hopfield`` (one order, then one (N, B) uniform draw per sweep).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import model_validator
from torch import Tensor

from bioplaus.circuits.hopfield import TIE
from bioplaus.core import Circuit, Task
from bioplaus.errors import UsageError
from bioplaus.options import CircuitOptions, option
from bioplaus.registry import register_circuit


def overlaps(vectors: Tensor, sigma: Tensor) -> Tensor:
    """m = σ Vᵀ / N for stored vectors V (R, N) and states σ (B, N); returns (B, R)."""
    return sigma @ vectors.t() / vectors.shape[1]


def energy(vectors: Tensor, sigma: Tensor, p: int, mask: Tensor | None = None) -> Tensor:
    """H(σ) = −N Σ_μ m_μ^P / P! of each row of ``sigma`` (B, N); ``mask`` (B, R) selects the rows
    each replica sees. Returns (B,)."""
    terms = overlaps(vectors, sigma).pow(p)
    if mask is not None:
        terms = terms * mask
    return -vectors.shape[1] * terms.sum(dim=1) / math.factorial(p)


def power_difference(m: Tensor, d: Tensor, p: int) -> Tensor:
    """Σ_{j=0}^{P−1} (m + d)^j m^{P−1−j}, so that (m + d)^P − m^P = d · (this), elementwise."""
    a = m + d
    s = torch.ones_like(m)
    b = m
    for _ in range(p - 1):                    # S_{k+1} = a S_k + m^k
        s = torch.addcmul(b, a, s)
        b = b * m
    return s


def flip_energy(vectors: Tensor, sigma: Tensor, p: int) -> Tensor:
    """ΔH_i = H(σ with σ_i flipped) − H(σ) for every spin, from the overlaps only; (B, N).

    O(B·N·R·P) work; used to check the dynamics and for tests (the dynamics compute one i at a time).
    """
    n = vectors.shape[1]
    m = overlaps(vectors, sigma)                                  # (B, R)
    d = -2.0 / n * sigma[:, :, None] * vectors.t()[None]          # (B, N, R)
    s = power_difference(m[:, None, :].expand_as(d), d, p)
    return -n / math.factorial(p) * (d * s).sum(dim=2)


@register_circuit
class DenseHebbian(Circuit):
    """P-body Hebbian network of N = ``task.input_shape[0]`` Ising neurons (see the module doc).

    Buffers: ``vectors`` (R, N), R = ``rows`` (default ``task.num_classes``; rows of zeros add
    nothing to H; appending examples grows it); ``scale`` (the factor c); ``filled`` (rows
    appended by `add_outer` without row indices). `forward(σ)` runs the dynamics from σ (B, N)
    and returns the final states.
    """

    name = "dense_hebbian"
    input_ranks: ClassVar[dict[int, str] | None] = {1: "vectors of N spins (data=patterns)"}
    #: the ``hopfield`` learner stores per-pattern rows (``add_outer(v, rows)``), like hopfield's
    #: factored couplings
    factored = True
    #: appends one row per example for protocol=unsupervised
    stores_examples = True

    class Options(CircuitOptions):
        p: int = option(4, "interaction order P (even): H = −N Σ_μ m_μ^P / P!", ge=2, le=12)
        beta: float | None = option(None, "inverse temperature β of the Glauber dynamics; null: ∞, "
                                          "the zero-temperature sign rule", gt=0)
        sweeps: int = option(20, "asynchronous sweeps per retrieval (every spin once per sweep)", gt=0)
        rows: int = option(0, "stored vectors it holds (0: the task's number of patterns; "
                              "grows as examples are appended)", ge=0)

        @model_validator(mode="after")
        def _even_order(self) -> DenseHebbian.Options:
            if self.p % 2:
                raise ValueError(f"circuit.p={self.p}: the dense Hebbian energy needs an even interaction "
                                 f"order P (2, 4, 6, …).")
            return self

    def __init__(self, task: Task, head: bool = False, **options: Any) -> None:
        super().__init__(task, head=head, **options)
        self.n = task.input_shape[0]
        self.p = self.options.p
        self.beta = self.options.beta
        self.sweeps = self.options.sweeps
        rows = self.options.rows or max(1, task.num_classes)
        self.register_buffer("vectors", torch.zeros(rows, self.n))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    # -- storage ----------------------------------------------------------------------------------
    def set_vectors(self, vectors: Tensor) -> None:
        """Store exactly ``vectors`` (K, N), K ≤ rows (the other rows are zeroed)."""
        if vectors.shape[0] > self.vectors.shape[0]:
            raise UsageError(f"circuit.rows={self.vectors.shape[0]} cannot hold {vectors.shape[0]} "
                             f"stored vectors; raise circuit.rows.")
        self.vectors.zero_()
        self.vectors[: vectors.shape[0]].copy_(vectors)
        self.filled.fill_(vectors.shape[0])

    def add_outer(self, vectors: Tensor, rows: Tensor | None = None) -> None:
        """Add ``vectors`` (B, N) to the stored rows ``rows`` (B,), or, without ``rows``, append the
        non-zero ones as new rows (one per example: protocol=unsupervised; the buffer grows)."""
        if rows is not None:
            self.vectors.index_add_(0, rows, vectors)
            return
        vectors = vectors[vectors.abs().sum(dim=1) > 0]
        start = int(self.filled)
        need = start + vectors.shape[0]
        if need > self.vectors.shape[0]:                   # grow: one row per stored example
            extra = self.vectors.new_zeros(need - self.vectors.shape[0], self.n)
            self.vectors = torch.cat([self.vectors, extra])
        self.vectors[start:need].copy_(vectors)
        self.filled.add_(vectors.shape[0])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # a checkpoint of a network that grew (appended examples) restores its number of rows
        saved = state_dict.get(prefix + "vectors")
        if saved is not None and saved.shape != self.vectors.shape:
            self.vectors = self.vectors.new_zeros(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- dynamics ---------------------------------------------------------------------------------
    def energy(self, sigma: Tensor, mask: Tensor | None = None) -> Tensor:
        """H(σ) = −c N Σ_μ m_μ^P / P! of each replica, (B,)."""
        return energy(self.vectors, sigma.to(self.vectors.dtype), self.p, mask) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x)[0]

    def run(self, sigma: Tensor, generator: torch.Generator | None = None, sweeps: int | None = None,
            mask: Tensor | None = None, recompute: bool = False) -> tuple[Tensor, Tensor]:
        """Asynchronous Glauber dynamics from ``sigma`` (B, N) in {−1, +1} for ``sweeps`` sweeps
        (default ``circuit.sweeps``); ``mask`` (B, R): the stored rows each replica sees.
        ``recompute``: recompute the overlaps from all N spins before every update, O(N R) instead of
        O(R) (the same dynamics; a reference for speed comparisons).

        Returns (final states (B, N), fraction of spins flipped in the last sweep per replica (B,)).
        """
        v = self.vectors
        dtype = v.dtype
        b, n = sigma.shape
        device = sigma.device
        sweeps = self.sweeps if sweeps is None else sweeps
        p = self.p
        coef = n / math.factorial(p)                      # ΔH = −coef Σ_μ δ_μ S_μ (c enters β)
        scale = self.scale
        sp = sigma.to(dtype).t().contiguous()             # (N, B): spin-major states
        m = overlaps(v, sp.t())                           # (B, R)
        if mask is not None:
            mask = mask.to(dtype)
        flipped = torch.zeros(b, device=device, dtype=dtype)
        for _ in range(sweeps):
            order = torch.rand(n, generator=generator, device=device).argsort()
            sp = sp[order]
            start = sp.clone()
            noise = torch.rand(n, b, generator=generator, device=device)  # same stream as hopfield
            if self.beta is None:
                bias = TIE * sp
            else:
                # σ_i ← sign(h_i − θ_i + τσ_i), θ_i = logit(u_i)/(2βc): the heat-bath rule for the
                # field c·h_i; τ σ_i keeps the spin when |h_i| < τ (the sign rule's tie)
                bias = torch.special.logit(noise, eps=1e-12) / (-2.0 * self.beta * scale)
                bias = bias + TIE * sp
            vp = v.t()[order].contiguous()                # (N, R): row t = v_{order[t]}
            for t in range(n):
                s = sp[t]                                 # (B,)
                if recompute:
                    m = sp.t() @ vp / n
                d = torch.outer(s * (-2.0 / n), vp[t])    # (B, R): δ_μ of flipping spin t
                terms = power_difference(m, d, p)
                if mask is not None:
                    terms = terms * mask
                # ΔH_t = −coef Σ_μ δ_μ S_μ = coef (2 s/N) Σ_μ v_μ S_μ;  h = s ΔH / 2
                h = (terms @ vp[t]) * (coef / n)          # s² = 1: h = coef/N · Σ_μ v_μ S_μ
                new = torch.sign(h + bias[t])
                m.addr_((new - s) / n, vp[t])
                sp[t] = new
            flipped = (sp != start).sum(dim=0).to(dtype) / n
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(n, device=device)
            sp = sp[inverse]
        return sp.t().contiguous(), flipped

    def structure_metrics(self) -> dict[str, float]:
        return {"neurons": float(self.n), "order": float(self.p)}
