"""Dense (P-body) Hebbian and modern Hopfield circuits against brute force and hand-checkable cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bioplaus import patterns
from bioplaus.circuits.dense_hebbian import DenseHebbian, energy, flip_energy
from bioplaus.circuits.hopfield import Hopfield
from bioplaus.circuits.modern_hopfield import HopfieldLayer, ModernHopfield, update
from bioplaus.circuits.modern_hopfield import energy as modern_energy
from bioplaus.core import Task
from bioplaus.errors import UsageError


def _tensor_energy(vectors: torch.Tensor, sigma: torch.Tensor, p: int) -> torch.Tensor:
    """H = −Σ_{i1…iP} J_{i1…iP} σ_{i1}…σ_{iP} with the explicit N^P Hebbian tensor (float64)."""
    n = vectors.shape[1]
    j = torch.zeros((n,) * p, dtype=torch.float64)
    for v in vectors.double():
        outer = v
        for _ in range(p - 1):
            outer = torch.tensordot(outer, v, dims=0)
        j += outer
    j /= math.factorial(p) * n ** (p - 1)
    out = j
    for _ in range(p):
        out = torch.tensordot(out, sigma.double(), dims=([0], [0]))
    return -out


@pytest.mark.parametrize("protocol", ["hebb", "supervised"])
def test_overlap_flip_energy_equals_the_explicit_tensor_for_every_flip(protocol: str) -> None:
    n, p, k = 8, 4, 3
    gen = torch.Generator().manual_seed(3)
    xi = patterns.rademacher(k, n, gen)
    if protocol == "hebb":
        vectors = xi
    else:                                              # class means of M = 5 examples, r = 0.6
        eta, labels = patterns.examples(xi, 5, 0.6, gen)
        vectors = torch.zeros(k, n).index_add_(0, labels, eta) / (0.6 * 5)
    for _ in range(6):
        sigma = patterns.rademacher(1, n, gen)[0]
        h0 = _tensor_energy(vectors, sigma, p)
        assert float(energy(vectors, sigma[None], p)[0]) == pytest.approx(float(h0), abs=1e-4)
        fast = flip_energy(vectors, sigma[None], p)[0]
        for i in range(n):
            flipped = sigma.clone()
            flipped[i] = -flipped[i]
            brute = _tensor_energy(vectors, flipped, p) - h0
            assert float(fast[i]) == pytest.approx(float(brute), abs=1e-4)


def test_p4_flip_energy_by_hand_for_one_pattern() -> None:
    # one pattern ξ = (1,1,1,1), σ = ξ: m = 1; flipping one spin gives m = 1/2
    # ΔH = −N/4! [(1/2)^4 − 1] = −(4/24)(1/16 − 1) = 0.15625
    v = torch.ones(1, 4)
    assert torch.allclose(flip_energy(v, torch.ones(1, 4), 4), torch.full((1, 4), 0.15625))


def test_dynamics_take_every_spin_down_in_energy_at_zero_temperature() -> None:
    gen = torch.Generator().manual_seed(0)
    net = DenseHebbian(Task((30,), 40, "memory"), p=4, sweeps=1)
    net.set_vectors(patterns.rademacher(40, 30, gen))
    sigma = patterns.rademacher(16, 30, gen)
    e = net.energy(sigma)
    for _ in range(4):
        sigma, _ = net.run(sigma, gen)
        e_new = net.energy(sigma)
        assert bool((e_new <= e + 1e-5).all())
        e = e_new
    # a fixed point: no single flip lowers H
    assert bool((flip_energy(net.vectors, sigma, 4) >= -1e-5).all())


@pytest.mark.parametrize("beta", [None, 3.0])
@pytest.mark.parametrize("protocol", ["hebb", "supervised"])
def test_p2_dense_follows_the_hopfield_trajectory(beta: float | None, protocol: str) -> None:
    n, k = 60, 6
    gen = torch.Generator().manual_seed(5)
    xi = patterns.rademacher(k, n, gen)
    if protocol == "hebb":
        vectors = xi
    else:
        eta, labels = patterns.examples(xi, 4, 0.5, gen)
        vectors = torch.zeros(k, n).index_add_(0, labels, eta) / (0.5 * 4)
    cues, _ = patterns.cues_from(xi, 3, 0.3, gen)
    dense = DenseHebbian(Task((n,), k, "memory"), p=2, beta=beta, sweeps=4)
    dense.set_vectors(vectors)
    for mode in ("dense", "factored"):
        hop = Hopfield(Task((n,), k, "memory"), beta=beta, sweeps=4, couplings=mode)
        hop.set_vectors(vectors)
        a, fa = hop.run(cues, torch.Generator().manual_seed(11))
        b, fb = dense.run(cues, torch.Generator().manual_seed(11))
        assert torch.equal(a, b) and torch.equal(fa, fb)
        assert not torch.equal(a, cues)                  # the dynamics moved
        # energies differ by the constant −(1/2N) Σ_{μ,i} v_{μ,i}²
        const = -(vectors ** 2).sum() / (2 * n)
        assert torch.allclose(dense.energy(b), hop.energy(a) + const, atol=1e-4)


def test_recomputed_overlaps_give_the_same_dynamics() -> None:
    gen = torch.Generator().manual_seed(2)
    net = DenseHebbian(Task((40,), 50, "memory"), p=4, sweeps=3)
    net.set_vectors(patterns.rademacher(50, 40, gen))
    cues = patterns.rademacher(8, 40, gen)
    a, _ = net.run(cues, torch.Generator().manual_seed(1))
    b, _ = net.run(cues, torch.Generator().manual_seed(1), recompute=True)
    assert torch.equal(a, b)


def test_p4_stores_beyond_the_pairwise_capacity() -> None:
    # K = 100 patterns on N = 50 neurons (load 2, far above α_c ≈ 0.14): P = 4 keeps them, P = 2 not
    n, k = 50, 100
    gen = torch.Generator().manual_seed(0)
    xi = patterns.rademacher(k, n, gen)
    result = {}
    for p in (2, 4):
        net = DenseHebbian(Task((n,), k, "memory"), p=p, sweeps=5)
        net.set_vectors(xi)
        final, _ = net.run(xi[:32], torch.Generator().manual_seed(1))
        result[p] = float((final * xi[:32]).sum(dim=1).mean() / n)
    assert result[4] > 0.97 and result[2] < 0.6, result


def test_odd_order_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="even"):
        DenseHebbian(Task((10,), 2, "memory"), p=3)


# -- modern Hopfield -------------------------------------------------------------------------------


def test_modern_energy_never_increases_under_the_update() -> None:
    gen = torch.Generator().manual_seed(0)
    for d, k, beta in itertools.product((4, 16), (3, 50), (0.1, 1.0, 10.0)):
        x = torch.randn(k, d, generator=gen, dtype=torch.float64)
        xi = torch.randn(20, d, generator=gen, dtype=torch.float64) * 2
        e = modern_energy(x, xi, beta)
        for _ in range(5):
            xi = update(x, xi, beta)
            e_new = modern_energy(x, xi, beta)
            assert bool((e_new <= e + 1e-10).all()), (d, k, beta)
            e = e_new


def test_modern_energy_by_hand() -> None:
    # X = {(1,0), (0,1)}, ξ = (1,0), β = 1: −ln(e + 1) + ½ + ln 2 + ½
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    e = modern_energy(x, torch.tensor([[1.0, 0.0]], dtype=torch.float64), 1.0)
    assert float(e) == pytest.approx(-math.log(math.e + 1) + 1 + math.log(2))


def test_one_update_retrieves_well_separated_patterns_from_partial_cues() -> None:
    gen = torch.Generator().manual_seed(1)
    d, k = 64, 200
    x = torch.sign(torch.randn(k, d, generator=gen))                # ±1: ‖x‖² = 64, overlaps ~ ±8
    net = ModernHopfield(Task((d,), k, "memory"), beta=1.0)
    net.set_vectors(x)
    cues = x.clone()
    cues[:, d // 2:] = 0                                           # half the units masked
    final, energies = net.run(cues)
    assert (final - x).abs().max() < 1e-3
    assert bool((energies[1] <= energies[0]).all())
    # the same cue at small β averages the patterns instead
    blurred = update(x, cues, 0.001)
    assert (blurred - x).abs().max() > 0.5


def test_hopfield_layer_is_softmax_attention() -> None:
    torch.manual_seed(0)
    layer = HopfieldLayer(d_in=12, d_k=8, d_out=5)
    r, y = torch.randn(3, 4, 12), torch.randn(3, 7, 12)
    q, k = r @ layer.query.weight.t(), y @ layer.key.weight.t()
    v = k @ layer.value.weight.t()
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v)   # scale 1/√d_k
    assert torch.allclose(layer(r, y), reference, atol=1e-5)
    # and one step of the modern Hopfield update in the association space, projected by W_V
    one = update(k[0], q[0], 1 / math.sqrt(8)) @ layer.value.weight.t()
    assert torch.allclose(layer(r, y)[0], one, atol=1e-5)


def test_appended_examples_grow_the_rows_and_survive_a_checkpoint() -> None:
    gen = torch.Generator().manual_seed(4)
    net = DenseHebbian(Task((12,), 2, "memory"), p=4)
    eta = patterns.rademacher(5, 12, gen)
    net.add_outer(torch.cat([eta[:3], torch.zeros(1, 12)]))       # the zero row is not stored
    net.add_outer(eta[3:])
    assert torch.equal(net.vectors, eta) and int(net.filled) == 5
    again = DenseHebbian(Task((12,), 2, "memory"), p=4)
    again.load_state_dict(net.state_dict())
    assert torch.equal(again.vectors, eta)
    sigma = patterns.rademacher(3, 12, gen)
    assert torch.allclose(again.energy(sigma), energy(eta, sigma, 4))
