"""`local_aux` — supervised local learning: gradient-isolated modules, each trained through a small
auxiliary net of its own.

Belilovsky, Eickenberg & Oyallon, "Decoupled Greedy Learning of CNNs", ICML 2020 (``aux=dgl``).
Wang, Ni, Song, Yang & Huang, "Revisiting Locally Supervised Learning: an Alternative to End-to-end
Training", ICLR 2021 (InfoPro, ``aux=infopro``).
Ma et al., "Scaling Supervised Local Learning with Augmented Auxiliary Networks", ICLR 2024
(AugLocal, ``aux=auglocal``).
Su, Cai, Zhu, He, Xu, Guan & Si, "Momentum Auxiliary Network for Supervised Local Learning",
ECCV 2024, arXiv 2407.05623 (MAN, ``aux=man``).

The circuit's blocks are cut into K contiguous modules F_1 … F_K (``modules``; default one module
per block, the circuit's head being the last). With h_0 = x and sg(·) the stop-gradient:

    h_k = F_k(sg(h_{k−1}))
    L_k = CE(A_k(h_k), y)                                   aux=dgl,      k < K
    L_k = CE(A_k(h_k), y) + λ·mean((D_k(h_k) − x)²)         aux=infopro,  k < K
    L_k = CE(A_k(G_k(h_k)), y)                              aux=auglocal, k < K
    L_k = CE(A_k(y_k), y) + λ·mean((D_k(y_k) − x)²),        aux=man,      k < K
          y_k = EMA_k(h_k) + LB_k(h_k)
    L_K = CE(h_K, y)                                        the circuit's head, no auxiliary net

A_k is the auxiliary classifier of module k: on a feature map, average pooling to
``aux_pool``×``aux_pool``, flatten, then dense layers ``aux_hidden`` (ReLU) and a linear map to the
C classes; on a vector, the dense layers alone. D_k is InfoPro's decoder: a linear map back to the
flattened input for a vector; for a feature map, a 3×3 convolution to the input's channels and
bilinear upsampling to its height and width (convolving first keeps the decoder's own activations
small). (F_k, A_k, D_k) get the gradient of L_k only.

AugLocal's G_k is a chain of fresh copies (new weights, same kind and width) of d_k blocks picked
uniformly from the hidden blocks after module k, ending with the last hidden block; its depth
falls linearly with the module's position, d_k = round(d·(1 − τ·(k−1)/(K−2))) for the K−1 hidden
modules, at least 1 and at most the blocks left (``aux_depth`` d, ``depth_decay`` τ = 0.5); the
last hidden module has no block after it and its G is empty. A copy's input width follows the
block before it in G_k (a copy of a sparse g2g block is a dense block of the same width).

MAN's EMA_k and LB_k are copies of N_{k+1}, the first block of module k+1, both made at
construction. EMA_k receives no gradient; after every optimizer step (each step updates module k
and N_{k+1} together) it moves toward N_{k+1}'s current parameters,
θ_EMA ← m·θ_EMA + (1 − m)·θ_{N_{k+1}} (m = ``ema_momentum``, 0.995 as in the authors' runs; their
model default is 0.999). LB_k (the "learnable bias") is trained by module k's local loss only, so it
departs from N_{k+1}. The gradient of L_k reaches h_k through both copies; h_k is still detached
before module k+1, and N_{k+1} itself gets only module k+1's gradient. The heads A_k, D_k act on
y_k (the width of N_{k+1}'s output). The last hidden module's N_{k+1} is the circuit's head when
the last module is the head alone.

Memory. `train_step` runs module after module and calls backward on L_k before module k+1 runs
forward, so autograd holds the activations of one module (with its auxiliary net) at a time,
where backprop holds every block's until its single backward. `saved_activation_peak` in
``bioplaus.functional`` measures the difference; ``benchmarks/local_aux_memory.py`` reports it.

Options (``learner.*`` keys): ``aux`` dgl | infopro | auglocal | man; ``aux_depth``, ``depth_decay``
(auglocal); ``ema_momentum`` m (man); ``modules`` K (null: one per block);
``aux_hidden`` widths of the auxiliary classifier's hidden layers; ``aux_pool``; ``recon_weight``
λ of InfoPro's reconstruction term; ``optimizer``, ``lr``, ``weight_decay``, ``momentum``: one
optimizer over every module and auxiliary net (each parameter still gets only its own module's
gradient).

Choices of ours where the papers' networks do not carry over to these circuits: the auxiliary
classifier's shape above (a linear map after the pooling by default; ``aux_hidden`` adds dense
layers); one weight λ of InfoPro's reconstruction term for every module; InfoPro's decoder
reconstructs the normalised input itself, and its second (mutual information with the label)
term is the auxiliary classifier's cross-entropy; AugLocal picks "uniformly" as evenly spaced
blocks ending with the last hidden one. MAN uses InfoPro's heads and its one λ for every module:
InfoPro's λ interpolation across modules (from the module index in InfoPro/AugLocal, from the next
layer's stage index over K − 2 in MAN's published code) is not reproduced, so neither index is
used; MAN's copies of a sparse g2g block are copies with its mask (the same block object copied).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor, nn

from bioplaus.core import Circuit, Learner, Task
from bioplaus.errors import UsageError
from bioplaus.functional import accuracy
from bioplaus.optim import make_optimizer
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner


def split_into_modules(num_blocks: int, modules: int | None) -> list[range]:
    """Contiguous block ranges of K modules, as even as can be, earlier modules the larger."""
    count = num_blocks if modules is None else modules
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= num_blocks:
        raise UsageError(f"learner.modules must be an integer in 1..{num_blocks} (the circuit's blocks) "
                         f"or null; got {modules!r}.")
    size, extra = divmod(num_blocks, count)
    ranges, start = [], 0
    for k in range(count):
        stop = start + size + (1 if k < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


class AuxClassifier(nn.Module):
    """A_k: (pool a feature map to pool×pool), flatten, dense ReLU layers ``hidden``, linear to C."""

    def __init__(self, feature_shape: Sequence[int], num_classes: int, hidden: Sequence[int], pool: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool) if len(feature_shape) == 3 else nn.Identity()
        width = feature_shape[0] * pool * pool if len(feature_shape) == 3 else math.prod(feature_shape)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.mlp(self.pool(h).flatten(1))


class InputDecoder(nn.Module):
    """D_k: back to the input's shape — linear for a vector, 3×3 conv + upsample for a feature map."""

    def __init__(self, feature_shape: Sequence[int], input_shape: Sequence[int]):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.image = len(feature_shape) == 3 and len(input_shape) == 3
        if self.image:
            self.conv = nn.Conv2d(feature_shape[0], input_shape[0], 3, padding=1)
        else:
            self.linear = nn.Linear(math.prod(feature_shape), math.prod(input_shape))

    def forward(self, h: Tensor) -> Tensor:
        if self.image:  # convolve at the feature map's size, then upsample (cheap in memory)
            return F.interpolate(self.conv(h), size=self.input_shape[1:], mode="bilinear",
                                 align_corners=False)
        return self.linear(h.flatten(1)).view(h.shape[0], *self.input_shape)


def infopro_loss(logits: Tensor, y: Tensor, reconstruction: Tensor, x: Tensor, weight: float) -> Tensor:
    """CE(logits, y) + λ·mean((x̂ − x)²)."""
    return F.cross_entropy(logits, y) + weight * F.mse_loss(reconstruction, x)


def auglocal_depths(blocks_after: Sequence[int], depth: int, decay: float) -> list[int]:
    """d_k of each hidden module k = 1..K−1: round(depth·(1 − decay·(k−1)/(K−2))), at least 1 and
    at most ``blocks_after[k−1]`` (the hidden blocks after module k; 0 gives 0)."""
    count = len(blocks_after)
    depths = []
    for k, available in enumerate(blocks_after):
        planned = depth * (1.0 - decay * k / max(1, count - 1))
        depths.append(min(available, max(1, round(planned))) if available else 0)
    return depths


def pick_uniformly(candidates: Sequence[int], d: int) -> list[int]:
    """``d`` evenly spaced entries of ``candidates``, the last one included."""
    n = len(candidates)
    return [candidates[round((i + 1) * n / d) - 1] for i in range(d)]


def fresh_copy(block: nn.Module, in_shape: Sequence[int]) -> nn.Module:
    """A new block of ``block``'s kind and width, newly initialised, taking inputs of ``in_shape``
    (the block's own ``fresh``: every block of the circuits local_aux trains has one)."""
    return block.fresh(tuple(in_shape))


@register_learner
class LocalAux(Learner):
    """Gradient-isolated modules, each trained by its own auxiliary classifier (and decoder)."""

    name = "local_aux"
    circuits = ("mlp", "cnn", "g2g")

    class Options(LearnerOptions):
        aux: Literal["dgl", "infopro", "auglocal", "man"] = option(
            "dgl", "auxiliary net: classifier (dgl) | classifier + input decoder (infopro) | "
                   "fresh copies of later blocks, then the classifier (auglocal) | infopro's heads on "
                   "EMA + learnable copies of the next module's first layer (man)")
        modules: int | None = option(
            None, "K gradient-isolated modules of contiguous blocks; null: one per block", ge=1)
        aux_hidden: list[PositiveInt] = option(
            [], "hidden widths of each auxiliary classifier (after pooling a feature map)")
        aux_pool: int = option(2, "feature maps are average-pooled to aux_pool × aux_pool", ge=1)
        recon_weight: float = option(1.0, "λ of infopro's reconstruction term", ge=0)
        aux_depth: int = option(2, "auglocal: blocks copied into the first module's auxiliary net", ge=1)
        depth_decay: float = option(
            0.5, "auglocal: τ, the depth falls linearly to (1 − τ)·aux_depth at the last hidden module",
            ge=0, le=1)
        optimizer: Literal["adam", "adamw", "sgd"] = option(
            "adam", "one optimizer; each module still gets only its own gradient")
        lr: float = option(1e-3, "learning rate", gt=0)
        weight_decay: float = option(0.0, "L2 (adam, sgd) or decoupled (adamw) weight decay", ge=0)
        momentum: float = option(0.9, "SGD momentum (sgd only)", ge=0)
        ema_momentum: float = option(
            0.995, "man: m of the EMA copy, θ_EMA ← m θ_EMA + (1 − m) θ_next after each update", ge=0, lt=1)

    def __init__(self, circuit: Circuit, task: Task, **options: Any):
        super().__init__(circuit, task, **options)
        o = self.options
        aux, modules, aux_hidden, aux_pool = o.aux, o.modules, o.aux_hidden, o.aux_pool
        recon_weight, aux_depth, depth_decay = o.recon_weight, o.aux_depth, o.depth_decay
        ema_momentum = o.ema_momentum
        task.require_classification("local_aux")
        self.aux = aux
        self.ema_momentum = float(ema_momentum)
        self.recon_weight = float(recon_weight)
        self.module_blocks = split_into_modules(len(circuit.blocks), modules)

        device = next(circuit.parameters()).device
        shapes = self._module_output_shapes(device)
        self.ema_copies, self.lb_copies = nn.ModuleList(), nn.ModuleList()
        if aux == "man":
            self.ema_copies, self.lb_copies, shapes = man_copies(circuit, self.module_blocks, shapes, device)
        if aux == "auglocal":
            self.aux_blocks = self._auglocal_block_choice(aux_depth, depth_decay)
            self.classifiers = nn.ModuleList(
                self._auglocal_net(chosen, shape, aux_hidden, aux_pool)
                for chosen, shape in zip(self.aux_blocks, shapes[:-1], strict=True)
            ).to(device)
        else:
            self.classifiers = nn.ModuleList(
                AuxClassifier(shape, task.num_classes, aux_hidden, aux_pool) for shape in shapes[:-1]
            ).to(device)
        self.decoders = nn.ModuleList(
            InputDecoder(shape, task.input_shape) for shape in shapes[:-1]
        ).to(device) if aux in ("infopro", "man") else nn.ModuleList()
        trainable = [p for p in self.parameters() if p.requires_grad]  # not MAN's EMA copies
        self.optimizer = self.add_optimizer(
            "local", make_optimizer(trainable, o.optimizer, o.lr, o.weight_decay, o.momentum, device=device)
        )

    def _auglocal_block_choice(self, depth: int, decay: float) -> list[list[int]]:
        """The hidden blocks each hidden module's G_k copies (indices into circuit.blocks)."""
        last_hidden = self.module_blocks[-1].start  # blocks from here on are the head's module
        after = [list(range(blocks.stop, last_hidden)) for blocks in self.module_blocks[:-1]]
        depths = auglocal_depths([len(a) for a in after], depth, decay)
        return [pick_uniformly(a, d) if d else [] for a, d in zip(after, depths, strict=True)]

    def _auglocal_net(self, chosen: list[int], shape: tuple[int, ...], hidden: Sequence[int],
                      pool: int) -> nn.Sequential:
        """G_k (fresh copies of the chosen blocks, chained from ``shape``) and its classifier A_k."""
        layers: list[nn.Module] = []
        h = torch.zeros(1, *shape)
        for i in chosen:
            layers.append(fresh_copy(self.circuit.blocks[i], h.shape[1:]))
            with torch.no_grad():
                h = layers[-1](h)
        layers.append(AuxClassifier(tuple(h.shape[1:]), self.task.num_classes, hidden, pool))
        return nn.Sequential(*layers)

    def _module_output_shapes(self, device: torch.device) -> list[tuple[int, ...]]:
        h = torch.zeros(1, *self.task.input_shape, device=device)
        shapes = []
        with torch.no_grad():
            for blocks in self.module_blocks:
                for i in blocks:
                    h = self.circuit.blocks[i](h)
                shapes.append(tuple(h.shape[1:]))
        return shapes

    # -- training -------------------------------------------------------------------------------
    def run_module(self, k: int, h: Tensor) -> Tensor:
        """F_k(h): module k's blocks in order."""
        for i in self.module_blocks[k]:
            h = self.circuit.blocks[i](h)
        return h

    def module_loss(self, k: int, h_k: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """L_k of module k's output: the auxiliary loss, or CE of the head for the last module."""
        if k == len(self.module_blocks) - 1:
            return F.cross_entropy(h_k, y)
        if self.aux == "man":
            h_k = self.ema_copies[k](h_k) + self.lb_copies[k](h_k)  # y_k
        logits = self.classifiers[k](h_k)
        if self.aux in ("dgl", "auglocal"):
            return F.cross_entropy(logits, y)
        return infopro_loss(logits, y, self.decoders[k](h_k), x, self.recon_weight)

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, Tensor] = {}
        losses = []
        h = x
        for k in range(len(self.module_blocks)):
            h = self.run_module(k, h.detach())
            loss = self.module_loss(k, h, x, y)
            loss.backward()  # frees module k's graph before module k+1 runs
            losses.append(loss.detach())
            metrics[f"loss_m{k + 1}"] = losses[-1]
        self.optimizer.step()
        if self.aux == "man":
            self.update_ema()
        metrics["loss"] = torch.stack(losses).sum()
        metrics["accuracy"] = accuracy(h.detach(), y)
        return metrics

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.circuit(x)

    def rule_metrics(self) -> dict[str, object]:
        metrics: dict[str, object] = {"modules": len(self.module_blocks), "aux": self.aux}
        if self.aux == "auglocal":
            metrics["aux_depths"] = [len(chosen) for chosen in self.aux_blocks]
        if self.aux == "man":
            metrics["ema_momentum"] = self.ema_momentum
        return metrics

    @torch.no_grad()
    def update_ema(self) -> None:
        """θ_EMA_k ← m·θ_EMA_k + (1 − m)·θ_{N_{k+1}} for every hidden module k (MAN), in place."""
        for k, ema in enumerate(self.ema_copies):
            target = self.circuit.blocks[self.module_blocks[k + 1].start]
            ema_state, now = list(ema.parameters()), list(target.parameters())
            torch._foreach_lerp_(ema_state, now, 1.0 - self.ema_momentum)
            for b_ema, b_now in zip(ema.buffers(), target.buffers(), strict=True):
                b_ema.copy_(b_now)  # structural buffers (e.g. a sparse block's mask) follow exactly


def man_copies(circuit: Circuit, module_blocks: list[range], shapes: list[tuple[int, ...]],
               device: torch.device) -> tuple[nn.ModuleList, nn.ModuleList, list[tuple[int, ...]]]:
    """MAN's EMA_k (no gradient) and LB_k (trainable) — two copies of N_{k+1}, the first block of
    module k+1, for every hidden module k — and the shapes of y_k (the copies' outputs), followed by
    the last module's output shape."""
    emas, lbs, out_shapes = nn.ModuleList(), nn.ModuleList(), []
    for k in range(len(module_blocks) - 1):
        block = circuit.blocks[module_blocks[k + 1].start]
        ema, lb = copy.deepcopy(block), copy.deepcopy(block)
        for p in ema.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            out_shapes.append(tuple(ema(torch.zeros(1, *shapes[k], device=device)).shape[1:]))
        emas.append(ema)
        lbs.append(lb)
    return emas.to(device), lbs.to(device), [*out_shapes, shapes[-1]]
