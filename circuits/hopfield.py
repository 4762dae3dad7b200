"""`hopfield` — N Ising neurons with Hebbian pairwise couplings and Glauber retrieval dynamics.

    J_ij = (1/N) Σ_μ v^μ_i v^μ_j  (i ≠ j),   J_ii = 0                    (stored vectors v^μ)
    E(σ) = −½ Σ_{i≠j} J_ij σ_i σ_j,          h_i(σ) = Σ_{j≠i} J_ij σ_j
    Glauber (heat bath) at inverse temperature β, one spin at a time:
        P(σ_i ← +1) = ½ [1 + tanh(β h_i)] = 1 / (1 + e^{−2β h_i})
    β = ∞ (``beta: null``): the zero-temperature sign rule σ_i ← sign(h_i), σ_i kept when h_i = 0.

Hopfield, "Neural networks and physical systems with emergent collective computational
abilities", PNAS 79 (1982) 2554–2558; Glauber, J. Math. Phys. 4 (1963) 294.

One sweep updates every spin of every replica once, asynchronously, in an order drawn afresh for
each replica and sweep (a random permutation). All replicas (cues) of a batch advance together:
step t updates spin i_b(t) of every replica b at once, each with the field of its own current state,
so each replica follows exact asynchronous dynamics. A call runs a fixed number of sweeps with
random numbers from a device generator and no host synchronisation (capturable), and reports the
fraction of spins flipped in the last sweep as the convergence figure.

Two storages of the same couplings (``couplings``):

* ``dense`` — the N × N matrix J in a buffer; h_i = J_i · σ costs O(N) per update.
* ``factored`` — the stored vectors V (R × N) and, per replica, the overlaps u = V σ (R per
  replica). Then h_i = (1/N) Σ_μ v^μ_i u_μ − (1/N) Σ_μ (v^μ_i)² σ_i exactly (the second term
  removes the self-coupling), and a flip updates u by v_i Δσ_i: O(R) per update, and J is
  never built — the way to run N ≥ 10⁴ at low load. A mask (B, R) can restrict each replica to its
  own subset of rows (independent networks simulated side by side).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from bioplaus.core import Circuit, Task
from bioplaus.errors import UsageError
from bioplaus.options import CircuitOptions, option
from bioplaus.registry import register_circuit


def couplings(vectors: Tensor) -> Tensor:
    """J = (1/N) Vᵀ V with a zero diagonal, for stored vectors V of shape (R, N); returns (N, N)."""
    n = vectors.shape[1]
    j = vectors.t() @ vectors / n
    j.fill_diagonal_(0.0)
    return j


def energy(j: Tensor, sigma: Tensor) -> Tensor:
    """E(σ) = −½ σᵀ J σ for each row of ``sigma`` (B, N); returns (B,)."""
    return -0.5 * ((sigma @ j) * sigma).sum(dim=1)


def factored_energy(vectors: Tensor, sigma: Tensor, mask: Tensor | None = None) -> Tensor:
    """E(σ) of the couplings of ``vectors`` (R, N) without building J; ``mask`` (B, R) selects
    each replica's rows. Returns (B,)."""
    n = vectors.shape[1]
    u = sigma @ vectors.t()                              # (B, R) overlaps × N
    diag = (vectors * vectors).sum(dim=1)                # (R,)  Σ_i (v^μ_i)²
    if mask is not None:
        u, diag = u * mask, diag * mask
    return -0.5 * ((u * u).sum(dim=1) - diag.sum(dim=-1)) / n


#: fields with |h| below TIE count as zero: the spin keeps its value (sign rule) — far below the
#: 1/N resolution of Hebbian fields, far above float32 rounding of their sums
TIE = 1e-5
#: spins whose fields are computed together by one matrix product at the start of a block
BLOCK = 64


@register_circuit
class Hopfield(Circuit):
    """Hopfield network of N = ``task.input_shape[0]`` Ising neurons (see the module doc).

    Buffers: ``J`` (N, N) for ``couplings=dense``; ``vectors`` (R, N) for ``couplings=factored``,
    R = ``rows`` (default: ``task.num_classes``). Learners write them through `set_vectors` /
    `add_outer`. `forward(σ)` runs the dynamics from σ (B, N) and returns the final states.
    """

    name = "hopfield"
    input_ranks: ClassVar[dict[int, str] | None] = {1: "vectors of N spins (data=patterns)"}

    class Options(CircuitOptions):
        beta: float | None = option(None, "inverse temperature β of the Glauber dynamics; null: ∞, "
                                          "the zero-temperature sign rule", gt=0)
        sweeps: int = option(20, "asynchronous sweeps per retrieval (every spin once per sweep)", gt=0)
        couplings: Literal["dense", "factored"] = option(
            "dense", "keep the N×N matrix J, or only the stored vectors and per-replica overlaps")
        rows: int = option(0, "factored: stored vectors it holds (0: the task's number of patterns)",
                           ge=0)

    def __init__(self, task: Task, head: bool = False, **options: Any) -> None:
        super().__init__(task, head=head, **options)
        self.n = task.input_shape[0]
        self.beta = self.options.beta
        self.sweeps = self.options.sweeps
        self.factored = self.options.couplings == "factored"
        rows = self.options.rows or max(1, task.num_classes)
        if self.factored:
            self.register_buffer("vectors", torch.zeros(rows, self.n))
        else:
            self.register_buffer("J", torch.zeros(self.n, self.n))
        #: a positive factor c on every coupling (J → c J): normalisations set by the learner
        self.register_buffer("scale", torch.ones(()))

    # -- storage ----------------------------------------------------------------------------------
    def set_vectors(self, vectors: Tensor) -> None:
        """Make the couplings those of ``vectors`` (R, N): J = (1/N) Vᵀ V, J_ii = 0 (in place)."""
        if self.factored:
            if vectors.shape[0] > self.vectors.shape[0]:
                raise UsageError(f"circuit.rows={self.vectors.shape[0]} cannot hold {vectors.shape[0]} "
                                 f"stored vectors; raise circuit.rows or use couplings=dense.")
            self.vectors.zero_()
            self.vectors[: vectors.shape[0]].copy_(vectors)
        else:
            self.J.copy_(couplings(vectors))

    def add_outer(self, vectors: Tensor, rows: Tensor | None = None) -> None:
        """Add the outer products of ``vectors`` (B, N) to the couplings (in place). ``factored``
        needs ``rows`` (B,), the row of each vector (rows of zeros add nothing)."""
        if self.factored:
            if rows is None:
                raise ValueError("couplings=factored stores each vector in a row of its own; this "
                                 "storage protocol adds unindexed outer products: use couplings=dense.")
            self.vectors.index_add_(0, rows, vectors)
        else:
            self.J.add_(couplings(vectors))

    def coupling_matrix(self) -> Tensor:
        """c·J (N, N), built from the stored vectors when ``factored``."""
        return (couplings(self.vectors) if self.factored else self.J) * self.scale

    # -- dynamics ---------------------------------------------------------------------------------
    def energy(self, sigma: Tensor, mask: Tensor | None = None) -> Tensor:
        """E(σ) = −½ σᵀ J σ of each replica, (B,)."""
        e = factored_energy(self.vectors, sigma, mask) if self.factored else energy(self.J, sigma)
        return e * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x)[0]

    def run(self, sigma: Tensor, generator: torch.Generator | None = None, sweeps: int | None = None,
            mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Asynchronous Glauber dynamics from ``sigma`` (B, N) in {−1, +1} for ``sweeps`` sweeps
        (default ``circuit.sweeps``). ``mask`` (B, R), factored only: the rows each replica sees.

        Returns (final states (B, N), fraction of spins flipped in the last sweep per replica (B,)).
        No host synchronisation; random orders and heat-bath numbers come from ``generator``.
        """
        if mask is not None and not self.factored:
            raise ValueError("a per-replica row mask needs circuit.couplings=factored.")
        dtype = self.vectors.dtype if self.factored else self.J.dtype
        b, n = sigma.shape
        device = sigma.device
        sweeps = self.sweeps if sweeps is None else sweeps
        scale = float(self.scale)
        sp = sigma.to(dtype).t().contiguous()                        # (N, B): spin-major states
        flipped = torch.zeros(b, device=device, dtype=dtype)
        if self.factored:
            u = (self.vectors @ sp).t().contiguous()                 # (B, R): N × overlaps
            if mask is not None:
                u = u * mask
        for _ in range(sweeps):
            # One random order per sweep, shared by the replicas (their states and heat-bath
            # numbers stay independent). Every array is permuted into that order, so step t reads
            # contiguous rows by the Python counter t: no host sync, no gather.
            order = torch.rand(n, generator=generator, device=device).argsort()
            sp = sp[order]
            start = sp.clone()
            # the decision σ_i ← sign(h_i − θ_i + τ σ_i): θ_i = logit(u_i)/(2β) is the heat-bath
            # threshold (P(h_i > θ_i) = sigmoid(2βh_i) for u_i uniform), θ = 0 at β = ∞; τ σ_i keeps
            # the spin when |h_i| < τ (the sign rule's tie); the self-coupling term joins it
            noise = torch.rand(n, b, generator=generator, device=device)  # drawn at any β: same stream
            if self.beta is None:
                bias = TIE * sp
            else:
                bias = torch.special.logit(noise, eps=1e-12).div_(-2.0 * self.beta * scale)
                bias.add_(sp, alpha=TIE)
            if self.factored:
                vp = self.vectors.t()[order].contiguous()             # (N, R): row t = v_{order[t]}
                self_term = (vp * vp) @ (mask.t() if mask is not None else
                                         torch.ones(vp.shape[1], 1, device=device, dtype=dtype))
                bias.sub_(self_term * sp / n)
                for b0 in range(0, n, BLOCK):
                    b1 = min(n, b0 + BLOCK)
                    h = torch.addmm(bias[b0:b1], vp[b0:b1] / n, u.t())   # (blk, B)
                    jbb = (vp[b0:b1] @ (vp[b0:b1] / n).t() if mask is None else
                           torch.einsum("sr,tr,br->bst", vp[b0:b1], vp[b0:b1] / n, mask))
                    old = sp[b0:b1].clone()
                    _decide_block(h, jbb, sp[b0:b1], old)
                    step = (sp[b0:b1] - old).t() @ vp[b0:b1]            # (B, R)
                    u += step if mask is None else step * mask
            else:
                jp = self.J[order][:, order].contiguous()            # (N, N) in the sweep's order
                for b0 in range(0, n, BLOCK):
                    b1 = min(n, b0 + BLOCK)
                    h = torch.addmm(bias[b0:b1], jp[b0:b1], sp)          # (blk, B)
                    _decide_block(h, jp[b0:b1, b0:b1], sp[b0:b1], sp[b0:b1].clone())
            flipped = (sp != start).sum(dim=0).to(dtype) / n
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(n, device=device)
            sp = sp[inverse]
        return sp.t().contiguous(), flipped

    def structure_metrics(self) -> dict[str, float]:
        return {"neurons": float(self.n)}

    @classmethod
    def describe(cls, options: Any, input_shape: tuple[int, ...]) -> str:
        beta = options.beta
        return f"hopfield N={math.prod(input_shape)}, β={'∞' if beta is None else beta}, {options.couplings}"


def _decide_block(h: Tensor, jbb: Tensor, block: Tensor, old: Tensor) -> None:
    """Decide a block's spins in order, in place in ``block`` (blk, B), from their fields ``h``
    (blk, B) computed from the state ``old`` at the block's start, with the block's couplings
    ``jbb`` (blk, blk), or (B, blk, blk) per replica. Each update adds its coupling to the later
    spins of the block: h_s += Σ_{t<s} J_st (σ_t^new − σ_t^old) — the −σ^old half for the whole
    block at once (strictly lower triangle), the σ^new half as each spin is decided — exactly the
    sequential dynamics, in O(B · blk) per update."""
    per_replica = jbb.dim() == 3
    if per_replica:
        h.sub_(torch.einsum("bst,tb->sb", torch.tril(jbb, diagonal=-1), old))
    else:
        h.sub_(torch.tril(jbb, diagonal=-1) @ old)
    size = block.shape[0]
    for t in range(size):
        torch.sign(h[t], out=block[t])
        if t + 1 < size:                                                 # J_st for s > t only
            if per_replica:
                h[t + 1:].addcmul_(jbb[:, t + 1:, t].t(), block[t])
            else:
                h[t + 1:].addr_(jbb[t + 1:, t], block[t])
