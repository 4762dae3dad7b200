"""`g2g` — G2GNet: sparse layers wired ensemble-to-ensemble, with optional dynamic sparse training.

G2GNet: Konstantaropoulos, Smirnakis & Papadopouli, arXiv 2508.14140 (2025) — feed-forward
networks wired after the ensemble-to-ensemble connectivity of mouse visual cortex.

Structure. Each hidden block l is a sparse layer z_l = (W_l ⊙ M_l) h_{l−1} + b_l, a_l = f(z_l),
whose n_in inputs and n_out outputs are each assigned to one of G ensembles (groupings g_in,
g_out: unit → {0..G−1}, balanced sizes). The 0/1 mask M_l (out × in, a registered buffer) is

    M_ij = 1                          if g_out(i) = g_in(j)   (dense within matching ensembles)
    M_ij ~ Bernoulli(p′)              otherwise               (sparse between ensembles)

so the expected sparsity is (1 − 1/G)(1 − p′): 74.4 % at the defaults G = 8, p′ = 0.15. With
``head=True`` a dense linear block (`bioplaus.circuits.mlp.Dense`) maps the last hidden layer to
the C classes. Groupings (``grouping``), with contiguous(n)_k = ⌊kG/n⌋ and interleaved(n)_k = k mod G:

* ``index``  — contiguous inputs and outputs in every layer: G parallel pathways linked by p′.
* ``random`` — in every layer a fresh random balanced assignment of the inputs and of the outputs.
* ``mixer``  — outputs contiguous; inputs contiguous in layers 1, 3, 5, … and interleaved in
  layers 2, 4, …: ensemble k of an interleaved layer reads units k, k+G, k+2G, … of the layer
  below, i.e. 1/G of every ensemble there, so information mixes across ensembles every other layer.

Masks are drawn from a generator seeded with ``mask_seed`` (the config sets it to the global
``seed``; null in the API: ``torch.initial_seed()``), independently of the weight init.
``masks`` replaces the construction by explicit masks: a path to a ``.pt`` file holding a list
(or tuple) of 0/1 tensors, or such a list in the API; one (n_out × n_in) mask per hidden layer, in
order; ``groups``, ``p_between`` and ``grouping`` are then ignored.

Initialisation is fan-in corrected: every row i is scaled by its number of active inputs
k_i = Σ_j M_ij instead of n_in. ``default`` (PyTorch's Linear scheme): W_ij, b_i ~ U(±1/√k_i);
``kaiming_uniform``: W_ij ~ U(±√(6/k_i)); ``kaiming_normal``: N(0, 2/k_i); ``xavier_uniform`` /
``xavier_normal``: variance 2/(k_i + o_j) with o_j the active outputs of input j (U(±√(3·var)) /
N(0, var)); biases zero except under ``default``. Masked entries start at exactly zero.

Training. The masked weight W ⊙ M is formed in the forward pass (`MaskedLinear`), so masked
entries get exactly zero gradient from any loss, under every learner, and — being zero and
receiving zero gradient — stay zero with their Adam / momentum state at zero (L2 weight decay of
a zero entry is zero). The blocks are `Dense` subclasses: learners reach them through ``pre``,
``act``, ``forward``, ``out_features`` and ``linear.weight`` and never special-case g2g.

Dynamic sparse training (``dst``; off by default — the static G2G wiring is the base circuit;
the ``*_dst`` presets turn it on). After every ``dst.every`` training steps, host-side in
`structural_step` (outside `train_step`, buffers changed in place, so a captured CUDA graph
stays valid), in every sparse layer:

    k = ⌊ζ · #active⌋                                        ζ = dst.prune_fraction (0.1)
    prune  the k active edges with the lowest score:  |W_ij| (magnitude) | random | |ρ_ij| (correlation)
    regrow k edges among those inactive before pruning, highest |ρ_ij| (correlation) | random
    W_ij ← 0 for pruned and regrown edges;   M ← new mask (#active unchanged, exactly)

where ρ_ij is the Pearson correlation of post-synaptic activity a_i and pre-synaptic activity
h_j, computed from exponential moving averages (decay β = dst.ema, bias-corrected) of E[a_i h_j],
E[a_i], E[a_i²], E[h_j], E[h_j²] over every training-mode forward pass (buffers, updated in
place in ``pre``: one extra (n_out × B)(B × n_in) matmul per pass — the cost of a weight
gradient — only when a correlation criterion is in use). Edges are ranked by |ρ| (a strongly
anti-correlated pair is as informative as a correlated one; the regrown weight starts at zero and
its sign is learned). ``dst.scope=between`` restricts pruning and regrowth to edges between
different ensembles, keeping the within-ensemble blocks intact (``all``, default: every edge).
When the structure changes `structural_step` returns True and the engine zeroes the optimizer
state of every masked-out entry (`parameter_masks`), so pruned edges keep no stale moments and
regrown ones start clean. Random choices use a generator of the circuit, checkpointed with it.

Compute path (``path``). The G within-ensemble blocks alone are one batched matmul
(`block_linear`), much cheaper than the dense layer; the masked dense product F.linear(h, W ⊙ M)
costs about a dense layer, and the blocks plus an unstructured Bernoulli(p′) remainder cost more
than the masked product (benchmarks/g2g_layer.py; figures in benchmarks/results/g2g_layer.md).
So ``auto`` (default) uses the block path exactly when a layer's mask is block-diagonal on
contiguous equal ensembles (``grouping=index``, ``p_between=0``, widths divisible by G, and DST
off or ``scope=between`` so no edge can leave the blocks), and the masked dense
path otherwise — that is, for every layer of the default configuration. ``masked`` always uses the
masked path; ``block`` demands the block path (a usage error when a layer's mask is not
block-diagonal). In the block path the off-block weights are never read and get no gradient.

Reported in ``summary.json``: ``circuit_sparsity`` (fraction of zero mask entries over all sparse
layers), ``circuit_sparsity_layers``, ``circuit_active_edges``, ``circuit_rewirings`` and
``circuit_paths``.

Deviations / choices not fixed by the paper: the exact mixer and random assignments above; the
between-ensemble edges are i.i.d. Bernoulli(p′) (their count is random, the sparsity 74.4 % only
in expectation; it is fixed once drawn); the input layer is sparse like every hidden layer and
the head is dense; correlation ranking by |ρ| from bias-corrected EMAs; just-pruned edges are not
candidates for regrowth in the same step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor, nn

from bioplaus.circuits.mlp import INITS, Activation, Dense, Init
from bioplaus.core import Circuit, Task
from bioplaus.errors import UsageError
from bioplaus.functional import activation as activation_fn
from bioplaus.options import CircuitOptions, option
from bioplaus.registry import register_circuit

GROUPINGS = ("index", "random", "mixer")


# -- groupings and masks ---------------------------------------------------------------------------


def contiguous_groups(n: int, groups: int) -> Tensor:
    """Ensemble of each of n units in contiguous runs: unit k -> ⌊k·G/n⌋ (sizes differ by ≤ 1)."""
    return torch.arange(n) * groups // n


def interleaved_groups(n: int, groups: int) -> Tensor:
    """Ensemble of each of n units dealt round-robin: unit k -> k mod G."""
    return torch.arange(n) % groups


def random_groups(n: int, groups: int, generator: torch.Generator) -> Tensor:
    """A random balanced assignment: the contiguous one under a random permutation of the units."""
    return contiguous_groups(n, groups)[torch.randperm(n, generator=generator)]


def layer_groupings(grouping: str, layer: int, n_in: int, n_out: int, groups: int,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(input groups, output groups) of hidden layer ``layer`` (0-based) under ``grouping``."""
    if grouping == "index":
        return contiguous_groups(n_in, groups), contiguous_groups(n_out, groups)
    if grouping == "random":
        return random_groups(n_in, groups, generator), random_groups(n_out, groups, generator)
    if grouping == "mixer":
        inputs = contiguous_groups(n_in, groups) if layer % 2 == 0 else interleaved_groups(n_in, groups)
        return inputs, contiguous_groups(n_out, groups)
    raise ValueError(f"unknown grouping '{grouping}'. Valid groupings: {', '.join(GROUPINGS)}.")


def within_mask(in_groups: Tensor, out_groups: Tensor) -> Tensor:
    """0/1 (out × in): 1 where output i and input j belong to the same ensemble."""
    return (out_groups.unsqueeze(1) == in_groups.unsqueeze(0)).float()


def ensemble_mask(in_groups: Tensor, out_groups: Tensor, p_between: float,
                  generator: torch.Generator) -> Tensor:
    """G2G mask: dense within matching ensembles, Bernoulli(p′) between the others."""
    within = within_mask(in_groups, out_groups)
    between = (torch.rand(within.shape, generator=generator) < p_between).float()
    return torch.maximum(within, between)


# -- initialisation --------------------------------------------------------------------------------


@torch.no_grad()
def fan_in_corrected_init(weight: Tensor, bias: Tensor | None, mask: Tensor, init: str) -> None:
    """Initialise in place with each row's actual number of active inputs as its fan-in; masked
    entries are set to zero. Schemes as in the module docstring."""
    if init not in INITS:
        raise ValueError(f"unknown init '{init}'. Valid inits: {', '.join(INITS)}.")
    fan_in = mask.sum(dim=1, keepdim=True).clamp_min(1.0)  # (out, 1)
    if init in ("default", "kaiming_uniform"):
        scale = 1.0 if init == "default" else math.sqrt(6.0)  # bound = scale / √k_i
        weight.uniform_(-1.0, 1.0).mul_(scale / fan_in.sqrt())
    elif init == "kaiming_normal":
        weight.normal_(0.0, 1.0).mul_(math.sqrt(2.0) / fan_in.sqrt())
    else:  # xavier: variance 2 / (k_i + o_j)
        fan_out = mask.sum(dim=0, keepdim=True).clamp_min(1.0)  # (1, in)
        std = (2.0 / (fan_in + fan_out)).sqrt()
        if init == "xavier_uniform":
            weight.uniform_(-1.0, 1.0).mul_(std * math.sqrt(3.0))
        else:
            weight.normal_(0.0, 1.0).mul_(std)
    weight.mul_(mask)
    if bias is not None:
        if init == "default":
            bias.uniform_(-1.0, 1.0).mul_(1.0 / fan_in.squeeze(1).sqrt())
        else:
            bias.zero_()


# -- the compute paths -----------------------------------------------------------------------------


def block_linear(h: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    """z = h Wᵀ + b using only the G diagonal blocks of W (contiguous, equal ensembles): one
    batched matmul of G (B × n_in/G)(n_in/G × n_out/G) products. Off-block entries of W are
    neither read nor given a gradient."""
    batch = h.shape[0]
    n_out, n_in = weight.shape
    blocks = weight.view(groups, n_out // groups, groups, n_in // groups)
    blocks = blocks.diagonal(dim1=0, dim2=2).permute(2, 1, 0)  # (G, in/G, out/G)
    z = torch.bmm(h.reshape(batch, groups, n_in // groups).transpose(0, 1), blocks)  # (G, B, out/G)
    z = z.transpose(0, 1).reshape(batch, n_out)
    return z + bias if bias is not None else z


def is_block_diagonal(mask: Tensor, groups: int) -> bool:
    """Whether ``mask`` is exactly the within-ensemble mask of G contiguous equal ensembles."""
    n_out, n_in = mask.shape
    if n_out % groups or n_in % groups:
        return False
    expected = within_mask(contiguous_groups(n_in, groups), contiguous_groups(n_out, groups))
    return torch.equal(mask.detach().cpu().float(), expected)


class MaskedLinear(nn.Linear):
    """A linear map whose weight is used as W ⊙ M (``mask`` a 0/1 buffer), or through its G
    diagonal blocks alone (``path="block"``, valid only for a block-diagonal mask)."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor, bias: bool = True,
                 path: str = "masked", groups: int = 1):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.detach().float().clone())
        self.path = path
        self.groups = groups

    def forward(self, h: Tensor) -> Tensor:
        if self.path == "block":
            return block_linear(h, self.weight, self.bias, self.groups)
        return F.linear(h, self.weight * self.mask.to(self.weight.dtype), self.bias)

    def used_entries(self) -> Tensor:
        """(out, in) booleans: the weight entries this layer's forward pass reads, read off the pass
        itself — the support of ∂Σ forward(I)/∂W (entry (i, j) gets M_ij). A pass that skipped its
        mask would show every entry; a regrown edge still at zero counts as used."""
        eye = torch.eye(self.in_features, device=self.weight.device, dtype=self.weight.dtype)
        weight = self.weight.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = torch.func.functional_call(self, {"weight": weight}, (eye,), strict=False)
            (grad,) = torch.autograd.grad(out.sum(), weight)
        return grad != 0

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, path={self.path}"


# -- correlations and rewiring ---------------------------------------------------------------------


def pearson_from_moments(cross: Tensor, post_mean: Tensor, post_sq: Tensor, pre_mean: Tensor,
                         pre_sq: Tensor, eps: float = 1e-8) -> Tensor:
    """ρ_ij = (E[a_i h_j] − E[a_i]E[h_j]) / (σ(a_i) σ(h_j)); 0 where a variance is 0."""
    cov = cross - post_mean.unsqueeze(1) * pre_mean.unsqueeze(0)
    post_std = (post_sq - post_mean.pow(2)).clamp_min(0.0).sqrt()
    pre_std = (pre_sq - pre_mean.pow(2)).clamp_min(0.0).sqrt()
    return cov / (post_std.unsqueeze(1) * pre_std.unsqueeze(0) + eps)


def choose_rewiring(mask: Tensor, prune_score: Tensor, regrow_score: Tensor, fraction: float,
                    eligible: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(pruned, regrown) boolean masks: the k = ⌊fraction · #active⌋ eligible active edges with the
    lowest ``prune_score`` and as many eligible inactive edges with the highest ``regrow_score``
    (k shrinks to the number of inactive candidates when there are fewer)."""
    active = mask > 0
    inactive = ~active
    if eligible is not None:
        active, inactive = active & eligible, inactive & eligible
    n_active, n_inactive = int(active.sum()), int(inactive.sum())
    k = min(int(fraction * n_active), n_inactive)
    pruned = torch.zeros_like(active)
    regrown = torch.zeros_like(active)
    if k == 0:
        return pruned, regrown
    inf = torch.tensor(float("inf"), device=mask.device)
    low = torch.where(active, prune_score.float(), inf).flatten()
    high = torch.where(inactive, regrow_score.float(), -inf).flatten()
    pruned.view(-1)[torch.topk(low, k, largest=False).indices] = True
    regrown.view(-1)[torch.topk(high, k, largest=True).indices] = True
    return pruned, regrown


class SparseDense(Dense):
    """A `Dense` block whose linear map is a `MaskedLinear`: a = f((W ⊙ M)·flatten(h) + b).

    With ``track_correlation`` it keeps EMAs of the pre/post activity moments for DST in buffers,
    updated in place by every training-mode ``pre`` (pure tensor work, capture-safe).
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor, act: str = "relu",
                 bias: bool = True, init: str = "default", path: str = "masked", groups: int = 1,
                 track_correlation: bool = False, ema: float = 0.99):
        nn.Module.__init__(self)  # Dense's own init would build a plain nn.Linear
        self.linear = MaskedLinear(in_features, out_features, mask, bias, path, groups)
        self.activation_name = act
        self.act = activation_fn(act)
        fan_in_corrected_init(self.linear.weight, self.linear.bias, self.linear.mask, init)
        self.track_correlation = track_correlation
        self.ema = float(ema)
        if track_correlation:
            self.register_buffer("corr_cross", torch.zeros(out_features, in_features))
            self.register_buffer("corr_post_mean", torch.zeros(out_features))
            self.register_buffer("corr_post_sq", torch.zeros(out_features))
            self.register_buffer("corr_pre_mean", torch.zeros(in_features))
            self.register_buffer("corr_pre_sq", torch.zeros(in_features))
            self.register_buffer("corr_updates", torch.zeros(()))

    @property
    def mask(self) -> Tensor:
        return self.linear.mask

    def pre(self, h: Tensor) -> Tensor:
        h = h.flatten(1)
        z = self.linear(h)
        if self.track_correlation and self.training:
            self.track(h, z)
        return z

    @torch.no_grad()
    def track(self, h: Tensor, z: Tensor) -> None:
        """EMA update of E[a hᵀ], E[a], E[a²], E[h], E[h²] with a = f(z), on this batch."""
        pre = h.detach().float()
        post = self.act(z.detach()).float()
        b, n = self.ema, pre.shape[0]
        self.corr_cross.mul_(b).addmm_(post.t(), pre, alpha=(1.0 - b) / n)
        self.corr_post_mean.mul_(b).add_(post.mean(0), alpha=1.0 - b)
        self.corr_post_sq.mul_(b).add_(post.pow(2).mean(0), alpha=1.0 - b)
        self.corr_pre_mean.mul_(b).add_(pre.mean(0), alpha=1.0 - b)
        self.corr_pre_sq.mul_(b).add_(pre.pow(2).mean(0), alpha=1.0 - b)
        self.corr_updates.add_(1.0)

    @torch.no_grad()
    def correlation(self) -> Tensor:
        """ρ (out × in) from the bias-corrected EMAs (zeros before the first training pass)."""
        if not self.track_correlation:
            raise RuntimeError("this sparse layer does not track correlations (no correlation criterion).")
        updates = float(self.corr_updates)
        if updates == 0:
            return torch.zeros_like(self.corr_cross)
        c = 1.0 / (1.0 - self.ema ** updates)
        return pearson_from_moments(self.corr_cross * c, self.corr_post_mean * c, self.corr_post_sq * c,
                                    self.corr_pre_mean * c, self.corr_pre_sq * c)

    def extra_repr(self) -> str:
        return f"activation={self.activation_name}, active={int(self.linear.mask.sum())}"


# -- the circuit -----------------------------------------------------------------------------------


class DSTOptions(CircuitOptions):
    """Dynamic sparse training: prune and regrow host-side between steps."""

    enabled: bool = option(False, "whether DST runs")
    every: int = option(100, "training steps between prune-and-regrow rounds", ge=1)
    prune_fraction: float = option(
        0.1, "ζ: fraction of active edges pruned (and as many regrown) per round", gt=0, lt=1)
    prune: Literal["magnitude", "random", "correlation"] = option(
        "magnitude", "pruning criterion: lowest |W|, random, or lowest |ρ|")
    regrow: Literal["correlation", "random"] = option(
        "correlation", "regrowth criterion: highest |ρ| (EMA of pre/post activity), or random")
    ema: float = option(0.99, "decay of the correlation moments' moving averages", ge=0, lt=1)
    scope: Literal["all", "between"] = option(
        "all", "all edges, or only between ensembles (the within-ensemble blocks stay)")


def load_masks(masks: str | Sequence[Tensor], fans: list[int]) -> tuple[list[Tensor], list[str]]:
    """Explicit masks from a ``.pt`` path (a list/tuple of tensors) or a sequence of tensors, and
    what is wrong with them for layers of sizes ``fans`` (input, hidden widths...)."""
    if isinstance(masks, (str, Path)):
        path = Path(masks).expanduser()
        if not path.is_file():
            return [], [f"circuit.masks: no file '{path}' (a .pt file holding a list of 0/1 masks)."]
        masks = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(masks, (list, tuple)) or not all(isinstance(m, Tensor) for m in masks):
        return [], ["circuit.masks must be a path to a .pt file holding a list of mask tensors, "
                    "or (API) a list of tensors."]
    out, problems = [], []
    if len(masks) != len(fans) - 1:
        problems.append(f"circuit.masks holds {len(masks)} masks for {len(fans) - 1} hidden layers.")
    for i, m in enumerate(masks):
        m = m.detach().cpu().float()
        if m.dim() != 2 or not bool(((m == 0) | (m == 1)).all()):
            problems.append(f"circuit.masks[{i}] must be a 2-D tensor of 0s and 1s; got shape "
                            f"{tuple(m.shape)}.")
        elif i + 1 < len(fans) and tuple(m.shape) != (fans[i + 1], fans[i]):
            problems.append(f"circuit.masks[{i}] has shape {tuple(m.shape)}; layer {i + 1} needs "
                            f"({fans[i + 1]}, {fans[i]}) (out, in).")
        out.append(m)
    return out, problems


@register_circuit
class G2G(Circuit):
    """Sparse ensemble-to-ensemble blocks of widths ``hidden``, then (``head=True``) a dense head."""

    name = "g2g"

    class Options(CircuitOptions):
        hidden: list[PositiveInt] = option([256, 256], "widths of the sparse hidden layers", min_length=1)
        groups: int = option(8, "ensembles G per layer (inputs and outputs)", ge=1)
        p_between: float = option(0.15, "p′: connection probability between non-matching ensembles",
                                  ge=0, le=1)
        grouping: Literal["index", "random", "mixer"] = option(
            "index", "index (contiguous) | random | mixer (inputs contiguous / interleaved in "
                     "alternate layers)")
        activation: Activation = option("relu", "activation f of the hidden layers")
        bias: bool = option(True, "whether every layer has a bias")
        init: Init = option("default", "fan-in corrected weight initialisation")
        mask_seed: int | None = option(
            None, "seed of the mask draw (and of DST's random choices); the config sets it to ${seed}; "
                  "null: torch.initial_seed()")
        masks: str | list[Any] | None = option(
            None, "path to a .pt file with a list of 0/1 (out, in) masks, one per hidden layer; "
                  "replaces groups/p_between/grouping")
        path: Literal["auto", "masked", "block"] = option(
            "auto", "auto (block-diagonal masks: batched block matmul; else masked dense) | masked | block")
        dst: DSTOptions = option(DSTOptions(), "dynamic sparse training, host-side between steps")

    def __init__(self, task: Task, *, head: bool = True, **options: Any):
        super().__init__(task, head=head, **options)
        o = self.options
        widths, groups, p_between, grouping = o.hidden, o.groups, o.p_between, o.grouping
        activation, bias, init, masks, path = o.activation, o.bias, o.init, o.masks, o.path
        self.dst = o.dst.model_dump()
        fans = [task.input_size, *widths]
        problems = []
        if masks is not None:
            explicit, problems = load_masks(masks, fans)
            if self.dst["scope"] == "between":
                problems.append("circuit.dst.scope=between needs ensembles; explicit circuit.masks have "
                                "none. Use dst.scope=all.")
        elif min(fans) < groups:
            problems.append(f"circuit.groups={groups} exceeds the smallest layer size {min(fans)}.")
        if problems:
            raise UsageError(" ".join(problems))
        seed = (o.mask_seed if o.mask_seed is not None else torch.initial_seed()) % 2**63
        generator = torch.Generator().manual_seed(seed)
        self.dst_generator = torch.Generator().manual_seed((seed + 104_729) % 2**63)

        correlate = self.dst["enabled"] and "correlation" in (self.dst["prune"], self.dst["regrow"])
        self.sparse_blocks: list[SparseDense] = []
        self.paths: list[str] = []
        for l, (n_in, n_out) in enumerate(itertools.pairwise(fans)):
            if masks is not None:
                mask, in_groups, out_groups = explicit[l], None, None
            else:
                in_groups, out_groups = layer_groupings(grouping, l, n_in, n_out, groups, generator)
                mask = ensemble_mask(in_groups, out_groups, float(p_between), generator)
            block_ok = is_block_diagonal(mask, groups) and (not self.dst["enabled"]
                                                            or self.dst["scope"] == "between")
            if path == "block" and not block_ok:
                raise UsageError(f"circuit.path=block needs block-diagonal masks (grouping=index, "
                                 f"p_between=0, widths divisible by groups, DST off or scope=between); "
                                 f"layer {l + 1} is not. Use path=auto or masked.")
            layer_path = "block" if block_ok and path != "masked" else "masked"
            block = SparseDense(n_in, n_out, mask, activation, bias, init, layer_path, groups,
                                track_correlation=correlate, ema=float(self.dst["ema"]))
            if in_groups is not None:
                block.register_buffer("in_groups", in_groups)
                block.register_buffer("out_groups", out_groups)
            self.blocks.append(block)
            self.sparse_blocks.append(block)
            self.paths.append(layer_path)
        if head:
            self.blocks.append(Dense(widths[-1], task.num_classes, "identity", bias, init))
        self.rewirings = 0

    @property
    def block_widths(self) -> list[int]:
        return [b.out_features for b in self.blocks]

    # -- structure ------------------------------------------------------------------------------
    def masks(self) -> list[Tensor]:
        """The mask of every sparse layer, in order (the live buffers)."""
        return [b.linear.mask for b in self.sparse_blocks]

    def parameter_masks(self) -> dict[str, Tensor]:
        return {f"blocks.{i}.linear.weight": b.linear.mask
                for i, b in enumerate(self.blocks) if isinstance(b, SparseDense)}

    def active_edges(self) -> list[int]:
        return [int(m.sum()) for m in self.masks()]

    def structure_metrics(self) -> dict[str, Any]:
        """Sparsity and edge counts of the weights the forward pass reads (`MaskedLinear.used_entries`),
        DST rewirings and the matmul paths."""
        sizes = [m.numel() for m in self.masks()]
        active = [int(b.linear.used_entries().sum()) for b in self.sparse_blocks]
        return {
            "circuit_sparsity": 1.0 - sum(active) / sum(sizes),
            "circuit_sparsity_layers": [round(1.0 - a / s, 6) for a, s in zip(active, sizes, strict=True)],
            "circuit_active_edges": sum(active),
            "circuit_rewirings": self.rewirings,
            "circuit_paths": list(self.paths),
        }

    # -- dynamic sparse training ----------------------------------------------------------------
    def _scores(self, block: SparseDense, criterion: str, correlation: Tensor | None) -> Tensor:
        if criterion == "magnitude":
            return block.linear.weight.detach().abs()
        if criterion == "correlation":
            assert correlation is not None
            return correlation.abs()
        noise = torch.rand(block.linear.mask.shape, generator=self.dst_generator)
        return noise.to(block.linear.mask.device)

    @torch.no_grad()
    def rewire(self) -> bool:
        """One prune-and-regrow round in every sparse layer (see the module docstring)."""
        changed = False
        for block in self.sparse_blocks:
            mask, weight = block.linear.mask, block.linear.weight
            correlation = block.correlation() if block.track_correlation else None
            eligible = None
            if self.dst["scope"] == "between":
                eligible = block.out_groups.unsqueeze(1) != block.in_groups.unsqueeze(0)
            pruned, regrown = choose_rewiring(
                mask, self._scores(block, self.dst["prune"], correlation),
                self._scores(block, self.dst["regrow"], correlation),
                float(self.dst["prune_fraction"]), eligible)
            if not bool(pruned.any()):
                continue
            mask.masked_fill_(pruned, 0.0).masked_fill_(regrown, 1.0)
            weight.masked_fill_(pruned | regrown, 0.0)
            changed = True
        self.rewirings += 1
        return changed

    def structural_step(self, step: int) -> bool:
        if not self.dst["enabled"] or step % int(self.dst["every"]):
            return False
        return self.rewire()

    def get_extra_state(self) -> Any:
        return {"rewirings": self.rewirings, "dst_generator": self.dst_generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        self.rewirings = int(state["rewirings"])
        self.dst_generator.set_state(state["dst_generator"])
