"""`modern_hopfield` — continuous modern Hopfield network: stored patterns, softmax retrieval.

    X = [x_1 … x_K] ∈ ℝ^{d×K}  stored patterns,  ξ ∈ ℝ^d  state,  β > 0 inverse temperature
    lse(β, z) = β⁻¹ ln Σ_μ exp(β z_μ)
    E(ξ) = −lse(β, Xᵀξ) + ½ ξᵀξ + β⁻¹ ln K + ½ M²,          M = max_μ ‖x_μ‖
    update (a concave–convex procedure step, E never increases):  ξ ← X softmax(β Xᵀ ξ)

Ramsauer, Schäfl, Lehner, Seidl, Widrich, Adler, Gruber, Holzleitner, Pavlović, Sandve, Greiff,
Kreil, Kopp, Klambauer, Brandstetter & Hochreiter, "Hopfield Networks is All You Need", ICLR 2021
(arXiv 2008.02217). Well-separated patterns are retrieved in one update with an error exponentially
small in β times the separation Δ_μ = x_μᵀx_μ − max_{ν≠μ} x_μᵀx_ν.

The same update with learned projections is softmax attention (`HopfieldLayer`): for state
(query) patterns R (B, S, d_in), stored (key) patterns Y (B, T, d_in),

    Q = R W_Q,  K = Y W_K,  V = K W_V,    Z = softmax(β Q Kᵀ) V,   β = 1/√d_k by default,

which is one update ξ ← X softmax(β Xᵀ ξ) in the association space (X = Kᵀ, ξ = Q rows) with the
retrieved pattern projected by W_V (eq. (10) of the paper).

Rows, not columns, hold the patterns in code: ``patterns`` (K, d) = Xᵀ, states (B, d).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bioplaus.core import Circuit, Task
from bioplaus.options import CircuitOptions, option
from bioplaus.registry import register_circuit


def lse(beta: float, z: Tensor) -> Tensor:
    """β⁻¹ ln Σ_μ exp(β z_μ) over the last dimension."""
    return torch.logsumexp(beta * z, dim=-1) / beta


def energy(patterns: Tensor, xi: Tensor, beta: float) -> Tensor:
    """E(ξ) = −lse(β, Xᵀξ) + ½ξᵀξ + β⁻¹ ln K + ½M² for ``patterns`` (K, d) and states (B, d);
    returns (B,)."""
    k = patterns.shape[0]
    big_m = patterns.norm(dim=1).max()
    return (-lse(beta, xi @ patterns.t()) + 0.5 * (xi * xi).sum(dim=-1)
            + math.log(k) / beta + 0.5 * big_m * big_m)


def update(patterns: Tensor, xi: Tensor, beta: float) -> Tensor:
    """One update ξ ← X softmax(β Xᵀ ξ) of each row of ``xi`` (B, d); ``patterns`` (K, d)."""
    return torch.softmax(beta * (xi @ patterns.t()), dim=-1) @ patterns


class HopfieldLayer(nn.Module):
    """One Hopfield update with separate query / key / value projections (attention form).

    ``forward(state, stored)``: state patterns R (…, S, d_in), stored patterns Y (…, T, d_in) →
    Z = softmax(β (R W_Q)(Y W_K)ᵀ) (Y W_K W_V), shape (…, S, d_out). ``beta`` defaults to
    1/√``d_k``. Source: Ramsauer et al. 2020 (arXiv 2008.02217), eq. (10).
    """

    def __init__(self, d_in: int, d_k: int, d_out: int, beta: float | None = None,
                 bias: bool = False) -> None:
        super().__init__()
        self.query = nn.Linear(d_in, d_k, bias=bias)
        self.key = nn.Linear(d_in, d_k, bias=bias)
        self.value = nn.Linear(d_k, d_out, bias=bias)
        self.beta = 1.0 / math.sqrt(d_k) if beta is None else beta

    def forward(self, state: Tensor, stored: Tensor) -> Tensor:
        q = self.query(state)                                  # (…, S, d_k)
        k = self.key(stored)                                   # (…, T, d_k)
        retrieved = update_batched(k, q, self.beta)            # (…, S, d_k): X softmax(β Xᵀ ξ)
        return self.value(retrieved)


def update_batched(patterns: Tensor, xi: Tensor, beta: float) -> Tensor:
    """`update` with leading batch dimensions: ``patterns`` (…, K, d), ``xi`` (…, S, d)."""
    return torch.softmax(beta * (xi @ patterns.transpose(-1, -2)), dim=-1) @ patterns


@register_circuit
class ModernHopfield(Circuit):
    """Modern Hopfield network on d = ``task.input_shape[0]`` continuous units (module doc).

    Buffer ``patterns`` (K, d), empty until `set_vectors` / `add_vectors` store patterns.
    `forward(ξ)` runs ``steps`` updates from ξ (B, d); `run` also returns the energy after
    each step.
    """

    name = "modern_hopfield"
    input_ranks: ClassVar[dict[int, str] | None] = {1: "vectors (data=patterns)"}

    class Options(CircuitOptions):
        beta: float = option(8.0, "inverse temperature β of the softmax", gt=0)
        steps: int = option(1, "updates ξ ← X softmax(β Xᵀ ξ) per retrieval", gt=0)

    def __init__(self, task: Task, head: bool = False, **options: Any) -> None:
        super().__init__(task, head=head, **options)
        self.d = task.input_shape[0]
        self.beta = self.options.beta
        self.steps = self.options.steps
        self.register_buffer("patterns", torch.zeros(0, self.d))

    def set_vectors(self, vectors: Tensor) -> None:
        """Store exactly ``vectors`` (K, d) (replacing what was stored)."""
        self.patterns = vectors.detach().clone().to(self.patterns)

    def add_vectors(self, vectors: Tensor) -> None:
        """Append ``vectors`` (B, d) to the stored patterns."""
        self.patterns = torch.cat([self.patterns, vectors.detach().to(self.patterns)])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # the number of stored patterns is part of the state: restore it before the copy
        saved = state_dict.get(prefix + "patterns")
        if saved is not None and saved.shape != self.patterns.shape:
            self.patterns = self.patterns.new_zeros(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def energy(self, xi: Tensor) -> Tensor:
        """E(ξ) of each state (B, d); (B,)."""
        return energy(self.patterns, xi, self.beta)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x)[0]

    def run(self, xi: Tensor, steps: int | None = None) -> tuple[Tensor, Tensor]:
        """``steps`` updates from ξ (B, d). Returns (final states (B, d), energies (steps + 1, B):
        E before the first update and after each)."""
        steps = self.steps if steps is None else steps
        xi = xi.to(self.patterns.dtype)
        energies = [self.energy(xi)]
        for _ in range(steps):
            xi = update(self.patterns, xi, self.beta)
            energies.append(self.energy(xi))
        return xi, torch.stack(energies)

    def structure_metrics(self) -> dict[str, float]:
        return {"units": float(self.d), "stored": float(self.patterns.shape[0])}
