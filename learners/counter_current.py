"""`counter_current` — counter-current learning: a forward net and a mirrored feedback net that
runs on the class labels teach each other layer by layer.

Kao & Hariharan, "Counter-Current Learning: A Biologically Plausible Dual Network Approach for
Deep Learning", NeurIPS 2024, arXiv 2409.19841.

Forward net F = the circuit, blocks F_1..F_L (F_L the head to the C classes); a_0 = x and

    a_l = f(F_l sg(a_{l−1}))          (f = ELU; the learner config builds the circuit bias-free)

Feedback net B, owned by this learner, of mirrored shapes: B_l maps level l back to level l−1
(B_L, the mirror of the head, maps the C classes to level L−1). It runs on the C one-hot class
vectors I_C, never on the data:

    c_{L−1} = ELU(B_L I_C),    c_{l−1} = ELU(B_l sg(c_l)),    c_0 = B_1 sg(c_1)  (input space, linear)

so c_l ∈ R^{C×d_l} holds one prototype per class at every level. At each level l = 0..L−1 (level 0
pairs the input x with c_0) with A_l = flatten(a_l) (batch×d_l), P_l = flatten(c_l) (C×d_l) and
Y the one-hot labels (batch×C):

    S_l = A_l P_lᵀ                                         (batch×C similarities)
    L_l = (256·λ/d_l) · mean((S_l − Y)²),   λ = 0.5        (``loss=prototype``, the default)
    L   = Σ_{l=0}^{L−1} L_l + w_ce · CE(softmax(a_L), y)          (w_ce = ``ce_weight``, 1)

L_l reaches F_l through A_l and B_{l+1} through P_l and nothing else (both inputs are detached);
level 0 trains only B_1; the head F_L learns from the cross-entropy alone. One backward of L gives
every layer of both nets exactly the gradient of its own level. Each net's gradient is then
clipped to global norm ``clip`` (1.0) — with tensor ops only, no host sync — and both nets take an
SGD step (lr 1.0).

Row normalisation and self-similarity (the CNN version; ``normalize=auto`` turns it on for `cnn`
and for ``loss=pairwise``, off for `mlp` under the default loss): Â = rows of A_l scaled to unit
L2 norm, P̂ likewise, S_l = Â P̂ᵀ, and

    L_l += λ_ssl · (mean((Â Âᵀ − I_batch)²) + mean((P̂ P̂ᵀ − I_C)²))

(the Â term is left out at level 0, where A_0 = x has no parameters).

Losses. The prototype-similarity loss above is the one of the authors' reference code, and
that is the default. ``loss=pairwise`` is the paper's description (Fig. 1b: the loss is "the
difference of activations from corresponding layer pairs"): the feedback net runs on each
example's own target y*_i — which, the feedback being row-wise, is exactly the prototype row
c_l[y_i] — and

    L_l = (256·λ/d_l) · mean_i ‖Â_{l,i} − P̂_{l,y_i}‖²

with the same weight as the default so that λ means the same. Its exact normalisation in the paper
is not verified here. Without row normalisation both nets can meet at a constant (every prototype
equal, every activity equal) and the pair collapses to chance accuracy. So ``normalize=auto``
turns normalisation on for ``pairwise`` too (it then learns, below ``prototype``), whereas the
prototype loss needs none: its
off-target entries (S − Y = S for the wrong classes) already push the classes apart.

Inference: the forward net's logits (one pass), the headline readout ``logits``. `predictions`
also reports ``prototype``: argmax_c of S_{L−1}, the similarity of the last hidden level to the
class prototypes.

CNN mirror: the feedback of a conv block a = maxpool(f(conv(h))) is nearest-neighbour unpooling
to the convolution's output size followed by a transposed convolution with the same kernel and
padding (ConvTranspose2d, stride 1), which lands exactly on the block's input shape; a dense block
in a `cnn` is mirrored by a linear map reshaped to the level below.

Options (declared in the class's `Options`; each a ``learner.*`` config key):
    loss          prototype | pairwise
    lam           λ of the level losses (0.5)
    normalize     auto | on | off — L2 rows and the self-similarity term (auto: on for cnn
                  and for loss=pairwise)
    ssl_weight    λ_ssl of the self-similarity term (only with normalisation)
    ce_weight     weight of the head's cross-entropy (1.0)
    optimizer     sgd | adam | adamw — one per net
    lr            learning rate of both nets (1.0)
    momentum, weight_decay
    clip          max global gradient norm of each net (1.0); 0 turns clipping off

Deviations / choices not fixed by the paper: λ_ssl = 0.1 is our default (the reference value is
not verified here); feedback weights start with PyTorch's default init and carry no biases
whatever the circuit's ``bias``; the forward net keeps whatever activation and biases the circuit
was built with (the learner config sets ``circuit.activation=elu``, ``circuit.bias=false``, the
paper's setting); the prototype readout is ours; on `digits` the learner config trains
64-256×3-10 with batch 64 for 30 epochs (at the paper's batch 256 the 1293 training images give
only 5 steps per epoch). Metrics: ``loss`` (L), ``ce``, ``level_loss`` (Σ_l L_l), ``accuracy``
(logits, training batch).

Measured accuracies and timings are in ``benchmarks/results/``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import clip_grad_norm_

from bioplaus.circuits.cnn import ConvBlock
from bioplaus.core import Circuit, Learner, Task
from bioplaus.functional import accuracy, one_hot
from bioplaus.optim import make_optimizer
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner


def level_loss(activity: Tensor, prototypes: Tensor, y_onehot: Tensor, lam: float = 0.5,
               normalize: bool = False, ssl_weight: float = 0.0, kind: str = "prototype",
               activity_ssl: bool = True) -> Tensor:
    """L_l of one level: (256·λ/d)·mean((A Pᵀ − Y)²) (``prototype``) or (256·λ/d)·mean_i ‖A_i − P_{y_i}‖²
    (``pairwise``); with ``normalize``, rows L2-normalised and λ_ssl·(mean((AAᵀ−I)²) + mean((PPᵀ−I)²)).

    ``activity`` (batch, …) and ``prototypes`` (C, …) are flattened to (batch, d) and (C, d).
    """
    a = activity.flatten(1).float()
    p = prototypes.flatten(1).float()
    d = a.shape[1]
    if normalize:
        a = F.normalize(a, dim=1)
        p = F.normalize(p, dim=1)
    weight = 256.0 * lam / d
    if kind == "prototype":
        loss = weight * ((a @ p.t() - y_onehot) ** 2).mean()
    else:
        loss = weight * ((a - y_onehot @ p) ** 2).sum(1).mean()
    if normalize and ssl_weight:
        eye_c = torch.eye(p.shape[0], device=p.device, dtype=p.dtype)
        ssl = ((p @ p.t() - eye_c) ** 2).mean()
        if activity_ssl:
            eye_b = torch.eye(a.shape[0], device=a.device, dtype=a.dtype)
            ssl = ssl + ((a @ a.t() - eye_b) ** 2).mean()
        loss = loss + ssl_weight * ssl
    return loss


class FeedbackDense(nn.Module):
    """Mirror of a dense block: (batch, d_l) -> (batch, *shape of level l−1), no bias."""

    def __init__(self, out_features: int, in_shape: tuple[int, ...]):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.linear = nn.Linear(out_features, math.prod(in_shape), bias=False)

    def forward(self, c: Tensor) -> Tensor:
        return self.linear(c.flatten(1)).view(-1, *self.in_shape)


class FeedbackConv(nn.Module):
    """Mirror of a conv block: nearest unpooling to the conv's output size, then a transposed conv."""

    def __init__(self, conv: nn.Conv2d, conv_size: tuple[int, int], unpool: bool):
        super().__init__()
        self.conv_size = tuple(conv_size)
        self.unpool = unpool
        self.deconv = nn.ConvTranspose2d(conv.out_channels, conv.in_channels, conv.kernel_size,
                                         padding=conv.padding, bias=False)

    def forward(self, c: Tensor) -> Tensor:
        if self.unpool:
            c = F.interpolate(c, size=self.conv_size, mode="nearest")
        return self.deconv(c)


@register_learner
class CounterCurrent(Learner):
    """Forward net (the circuit) and a mirrored feedback net on the class codes, aligned per level."""

    name = "counter_current"
    circuits = ("mlp", "cnn", "g2g")
    circuit_head = True

    class Options(LearnerOptions):
        loss: Literal["prototype", "pairwise"] = option(
            "prototype", "prototype: S = A Pᵀ vs Y | pairwise (the paper's Fig. 1b): ‖a − c_y‖²")
        lam: float = option(0.5, "λ: level loss (256·λ/d)·mean((S − Y)²)", ge=0)
        normalize: Literal["auto", "on", "off"] = option(
            "auto", "L2 rows + self-similarity term; auto: on for conv blocks and loss=pairwise")
        ssl_weight: float = option(0.1, "λ_ssl of mean((AAᵀ−I)²) + mean((PPᵀ−I)²) (with normalisation only)",
                                   ge=0)
        ce_weight: float = option(1.0, "weight of the cross-entropy on the forward net's logits", ge=0)
        optimizer: Literal["adam", "adamw", "sgd"] = option("sgd", "optimizer of each net (one per net)")
        lr: float = option(1.0, "learning rate", gt=0)
        momentum: float = option(0.0, "SGD momentum (sgd only)", ge=0)
        weight_decay: float = option(0.0, "L2 (adam, sgd) or decoupled (adamw) weight decay", ge=0)
        clip: float = option(1.0, "max gradient norm of each net (0: off)", ge=0)

    def __init__(self, circuit: Circuit, task: Task, **options: Any):
        super().__init__(circuit, task, **options)
        o = self.options
        loss, lam, normalize, ssl_weight, ce_weight, clip = (
            o.loss, o.lam, o.normalize, o.ssl_weight, o.ce_weight, o.clip)
        task.require_classification("counter_current")
        blocks = list(circuit.blocks)
        self.loss_kind = loss
        self.lam = lam
        self.normalize = (normalize == "on") or (normalize == "auto" and (
            loss == "pairwise" or any(isinstance(b, ConvBlock) for b in blocks)))
        self.ssl_weight = ssl_weight
        self.ce_weight = ce_weight
        self.clip = clip

        device = next(circuit.parameters()).device
        self.feedback = nn.ModuleList(self._mirror(blocks, task)).to(device)
        self.register_buffer("class_codes", torch.eye(task.num_classes, device=device))
        self.forward_params = [p for p in circuit.parameters() if p.requires_grad]
        self.feedback_params = [p for p in self.feedback.parameters() if p.requires_grad]
        self.forward_optimizer = self.add_optimizer("forward", make_optimizer(
            self.forward_params, o.optimizer, o.lr, o.weight_decay, o.momentum, device=device))
        self.feedback_optimizer = self.add_optimizer("feedback", make_optimizer(
            self.feedback_params, o.optimizer, o.lr, o.weight_decay, o.momentum, device=device))

    @staticmethod
    def _mirror(blocks: list[nn.Module], task: Task) -> list[nn.Module]:
        """Feedback layers B_1..B_L: B_l maps the output shape of block l to its input shape."""
        mirrors: list[nn.Module] = []
        h = torch.zeros(1, *task.input_shape)
        with torch.no_grad():
            for block in blocks:
                x = h.to(next(block.parameters()).device)
                out = block(x)
                if isinstance(block, ConvBlock):
                    conv_size = tuple(block.pre(x).shape[-2:])
                    mirrors.append(FeedbackConv(block.conv, conv_size,
                                                unpool=not isinstance(block.pool, nn.Identity)))
                else:
                    mirrors.append(FeedbackDense(out[0].numel(), tuple(h.shape[1:])))
                h = out.cpu()
        return mirrors

    # -- the two nets ---------------------------------------------------------------------------
    def prototypes(self) -> list[Tensor]:
        """c_0 .. c_{L−1}: the feedback net's class prototypes at every level, (C, *level shape)."""
        L = len(self.feedback)
        out: list[Tensor] = [self.class_codes] * L
        c = self.class_codes
        for l in range(L - 1, -1, -1):
            z = self.feedback[l](c.detach())
            c = z if l == 0 else F.elu(z)
            out[l] = c
        return out

    def forward_activities(self, x: Tensor) -> list[Tensor]:
        """a_0 = x, a_1 .. a_L with every block on its detached input."""
        acts = [x]
        for block in self.circuit.blocks:
            acts.append(block(acts[-1].detach()))
        return acts

    def losses(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor, list[Tensor], list[Tensor]]:
        """(L_0 .. L_{L−1}, CE of the head, forward activities, prototypes)."""
        y_onehot = one_hot(y, self.task.num_classes)
        acts = self.forward_activities(x)
        protos = self.prototypes()
        levels = [
            level_loss(acts[l], protos[l], y_onehot, self.lam, self.normalize, self.ssl_weight,
                       self.loss_kind, activity_ssl=l > 0)
            for l in range(len(protos))
        ]
        ce = F.cross_entropy(acts[-1].float(), y)
        return levels, ce, acts, protos

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        levels, ce, acts, _ = self.losses(x, y)
        level_total = torch.stack(levels).sum()
        total = level_total + self.ce_weight * ce
        self.forward_optimizer.zero_grad(set_to_none=True)
        self.feedback_optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.clip > 0:
            # torch's clip: g ← g · min(1, clip / (‖g‖ + 1e-6)), tensor ops only (no host sync)
            clip_grad_norm_(self.forward_params, self.clip, foreach=True)
            clip_grad_norm_(self.feedback_params, self.clip, foreach=True)
        self.forward_optimizer.step()
        self.feedback_optimizer.step()
        return {"loss": total.detach(), "ce": ce.detach(), "level_loss": level_total.detach(),
                "accuracy": accuracy(acts[-1].detach(), y)}

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.circuit(x)

    @torch.no_grad()
    def predictions(self, x: Tensor) -> dict[str, Tensor]:
        acts = [x]
        for block in self.circuit.blocks:
            acts.append(block(acts[-1]))
        top = len(self.feedback) - 1
        a = acts[top].flatten(1)
        p = self.prototypes()[top].flatten(1)
        if self.normalize:
            a, p = F.normalize(a, dim=1), F.normalize(p, dim=1)
        return {"logits": acts[-1], "prototype": a @ p.t()}

    def rule_metrics(self) -> dict[str, Any]:
        return {"loss": self.loss_kind, "normalize": self.normalize}
