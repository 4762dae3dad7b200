"""`forward_forward` — the Forward-Forward algorithm: every layer learns to tell positive from negative
data by its own goodness, with no backward pass between layers.

Hinton, "The Forward-Forward Algorithm: Some Preliminary Investigations", arXiv:2212.13345 (2022).
SymBa loss: Lee & Song, "SymBa: A Symmetric Binary Cross-Entropy Loss for Forward-Forward", 2023.

The rule, for dense layers l = 1..L with a_0 the input::

    x⁺ = overlay(x, onehot(y))            true label written over the first C inputs (flattened)
    x⁻ = overlay(x, onehot(ỹ)),  ỹ ~ U({0..C−1} \\ {y})     (negatives="random")
         ỹ = argmax_{c≠y} S_c(x)                              (negatives="hard", S = goodness scores)
    ĥ_{l−1} = norm(sg(a_{l−1}))      rms: h / (sqrt(mean_j h_j²) + ε)   (Σ_j ĥ_j² ≈ dim h)
                                     l2:  h / (‖h‖₂ + ε)                  (‖ĥ‖ ≈ 1)
    a_l = f(W_l ĥ_{l−1} + b_l)
    G_l = Σ_j a_{l,j}²  (goodness="sum")   or   (1/d_l) Σ_j a_{l,j}²  (goodness="mean")
    standard: L_l = softplus(θ_l − G_l(x⁺)) + softplus(G_l(x⁻) − θ_l)
    symba:    L_l = softplus(−α (G_l(x⁺) − G_l(x⁻)))
    L = Σ_l mean_batch(L_l) + λ Σ_l P_l                         (W_l, b_l ← opt(∇ L))

sg(·) is stop-gradient: each layer sees a detached, normalised copy of the layer below, so the
summed loss gives every layer exactly the gradient of its own L_l and no gradient crosses layers.
One optimizer over all layers is therefore the same as one optimizer per layer (every optimizer
here is per-parameter). Positive and negative passes run as one batch of 2B rows.

Threshold θ_l (``threshold: null``): under RMS, d_l (the layer's width, Hinton's choice) for
``goodness="sum"`` and 1 for ``goodness="mean"``, i.e. a mean squared activity of 1. Under
``norm="l2"`` the layer's input is √d_{l−1} times smaller, so the default is scaled by the input's
mean square 1/d_{l−1} (θ_l = d_l/d_{l−1}, resp. 1/d_{l−1}; d_0 = input size): with θ = d_l the
target is out of reach of the input-driven activity at init, the biases alone carry G up to θ and
training goes wrong. A number overrides θ for every layer.

Peer normalisation (``peer_norm`` = λ > 0, paper value 0.03): a running mean m_{l,j} of each unit's
activity over the positive and negative batch, momentum 0.9, kept in a buffer;
m ← 0.9·sg(m) + 0.1·mean_batch(a_l) (gradient through the current batch's term),
P_l = mean_j (m_{l,j} − mean_k m_{l,k})², pushing all units towards the same average activity.
Deviation: the penalty averages over units rather than summing, so that λ = 0.03 means the same
for a 100- and a 2000-unit layer.

Readouts (``readout`` picks the one `predict` returns; a step trains only what it needs):

* goodness: overlay every label c, S_c(x) = Σ_{l∈R} G_l(overlay(x, onehot(c))), argmax_c. The C
  labelled copies of a batch run as one pass of C·batch rows. R = layers 2..L (layer 1 when the
  net has a single layer). With ``readout=goodness`` nothing else is trained or reported.
* softmax: one pass with the neutral label (all C entries 1/C); a linear classifier (owned by this
  learner, its own optimizer and ``readout_lr``) on the concatenated sg(norm(a_l)), l ∈ R. It is
  trained inside `train_step` with cross-entropy on an extra no-grad *neutral* pass of the batch,
  so it is trained on exactly the input distribution it sees at test time (the FF layers never
  receive its gradient). Its training accuracy is the step's ``accuracy`` metric. With
  ``readout=softmax`` the goodness readout is reported too (`predictions`; its C passes cost
  nothing in training); per-epoch validation computes only the monitored one.

The goodness readout can be below chance for the first epochs of a simultaneous run while layer
1's own goodness is already well above chance. This is a property of the
rule, not a sign error: the readout layers see sg(norm(a_{l−1})), and once layer 1 codes the
label match, a negative's normalised layer-1 vector lies closer to the mean positive direction
than a positive's (the match adds activity off that direction). While G_l < θ_l the standard
loss pushes G up along the mean positive input, which favours negatives, so layer 2 starts by
separating the wrong way (training separation below 0.5) and recovers later
(tests/learners/test_forward_forward.py shows both).

Schedules (``schedule``): ``simultaneous`` (every layer on every batch) or ``greedy`` (layer by
layer, as mono_forward's option of that name): layer l (0-based) alone trains during epochs
[l·E, (l+1)·E), E = ``greedy_epochs``; earlier layers are frozen (run without a graph), later ones
are not computed; the last layer trains on until the trainer stops. The stage counts the calls of
`on_epoch_end` (checkpointed), and is `capture_key`: a captured step graph is re-captured when it
changes.

Cost: a layer's Σ_j a_j² is computed once and serves both its goodness and the next layer's
normalisation; for float32 relu blocks the activation, the sum of squares and their backward are
one autograd node (`ReluSquares`).

Options (declared in `ForwardForward.Options`; each a config key): optimizer (adam|adamw|sgd), lr,
weight_decay, momentum, norm (rms|l2), goodness (sum|mean), threshold (null|number), loss
(standard|symba), symba_alpha, negatives (random|hard), peer_norm (λ, 0 = off), peer_momentum,
readout (goodness|softmax), readout_lr, label_scale (value written for the true label in the
overlay; 1 = the paper's one-hot), eps, schedule (simultaneous|greedy), greedy_epochs.

Metrics of `train_step` (0-d tensors, no host sync): loss (FF + λ·peer, + readout CE with the
softmax readout; the one the engine watches for divergence), ff_loss, peer_loss, separation
(fraction of the batch with G_l(x⁺) > G_l(x⁻) in the last trained layer l); with readout=softmax
also readout_loss and accuracy (softmax readout on the batch).

Defaults (configs/learner/forward_forward.yaml): MLP 64-256-256 on digits, Adam lr 3e-3, batch 64,
60 epochs. Measured accuracies and timings are in ``benchmarks/results/``.

Other deviations: the first layer's input (image + overlay) is normalised like every other layer's
input; ``negatives="hard"`` takes the single most-confusable wrong label (argmax), where Hinton
samples wrong labels in proportion to their predicted probabilities.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.core import Circuit, Learner, Task
from bioplaus.distributed import batch_mean
from bioplaus.errors import UsageError
from bioplaus.functional import accuracy
from bioplaus.greedy import GreedyStages
from bioplaus.optim import make_optimizer
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner

NORMS = ("rms", "l2")
GOODNESS = ("sum", "mean")
LOSSES = ("standard", "symba")
NEGATIVES = ("random", "hard")
READOUTS = ("goodness", "softmax")


# -- functional math ------------------------------------------------------------------------------


def normalise(h: Tensor, norm: str = "rms", eps: float = 1e-8) -> Tensor:
    """Length-normalise each row of ``h`` (flattened): RMS (Σĥ² ≈ dim) or L2 (‖ĥ‖ ≈ 1)."""
    h = h.flatten(1)
    if norm == "rms":
        return h / (h.pow(2).mean(dim=1, keepdim=True).sqrt() + eps)
    if norm == "l2":
        return h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    raise ValueError(f"unknown forward_forward norm '{norm}'. Valid norms: {', '.join(NORMS)}.")


def goodness(a: Tensor, kind: str = "sum") -> Tensor:
    """Goodness of each row: Σ_j a_j² (``sum``) or its mean over units (``mean``); shape (batch,)."""
    a = a.flatten(1)
    if a.dtype in (torch.float16, torch.bfloat16):  # sums of ~d squares need float32 resolution
        a = a.float()
    squares = a.pow(2)
    if kind == "sum":
        return squares.sum(dim=1)
    if kind == "mean":
        return squares.mean(dim=1)
    raise ValueError(f"unknown forward_forward goodness '{kind}'. Valid: {', '.join(GOODNESS)}.")


def standard_loss(g_pos: Tensor, g_neg: Tensor, threshold: float | Tensor) -> Tensor:
    """mean[softplus(θ − G⁺) + softplus(G⁻ − θ)] — Hinton's per-layer logistic loss."""
    return (F.softplus(threshold - g_pos) + F.softplus(g_neg - threshold)).mean()


def symba_loss(g_pos: Tensor, g_neg: Tensor, alpha: float | Tensor = 4.0) -> Tensor:
    """mean[softplus(−α (G⁺ − G⁻))] — the SymBa loss on paired positive/negative goodness."""
    return F.softplus(-alpha * (g_pos - g_neg)).mean()


def ff_loss(g_pos: Tensor, g_neg: Tensor, threshold: float | Tensor, kind: str = "standard",
            alpha: float | Tensor = 4.0) -> Tensor:
    """The per-layer forward-forward loss named ``kind``."""
    if kind == "standard":
        return standard_loss(g_pos, g_neg, threshold)
    if kind == "symba":
        return symba_loss(g_pos, g_neg, alpha)
    raise ValueError(f"unknown forward_forward loss '{kind}'. Valid losses: {', '.join(LOSSES)}.")


def overlay(x: Tensor, label_vector: Tensor) -> Tensor:
    """Flattened copy of ``x`` with its first C inputs replaced by ``label_vector`` (batch, C)."""
    flat = x.flatten(1)
    c = label_vector.shape[1]
    return torch.cat([label_vector.to(flat.dtype), flat[:, c:]], dim=1)


def overlay_label(x: Tensor, y: Tensor, num_classes: int, scale: float = 1.0) -> Tensor:
    """``x`` with the one-hot of label ``y`` (times ``scale``) written over its first C inputs."""
    # a comparison, not F.one_hot: no range check, so no host sync on any device
    classes = torch.arange(num_classes, device=y.device)
    return overlay(x, (y.unsqueeze(1) == classes).to(x.dtype) * scale)


def overlay_neutral(x: Tensor, num_classes: int, scale: float = 1.0) -> Tensor:
    """``x`` with the neutral label (every one of the C entries ``scale``/C) over its first C inputs."""
    neutral = torch.full((x.shape[0], num_classes), scale / num_classes, dtype=x.dtype, device=x.device)
    return overlay(x, neutral)


def random_wrong_labels(y: Tensor, num_classes: int) -> Tensor:
    """A label drawn uniformly from the C−1 labels other than ``y``, per row, on y's device."""
    shift = torch.randint(1, num_classes, y.shape, device=y.device, dtype=y.dtype)
    return (y + shift) % num_classes


def hardest_wrong_labels(scores: Tensor, y: Tensor) -> Tensor:
    """The wrong label with the highest score per row (the true label masked out)."""
    masked = scores.scatter(1, y.unsqueeze(1), float("-inf"))
    return masked.argmax(dim=1)


def default_threshold(width: int, fan_in: int, norm: str = "rms", kind: str = "sum") -> float:
    """θ for a layer of ``width`` units fed ``fan_in`` normalised inputs: width · mean(ĥ²) (``sum``),
    mean(ĥ²) (``mean``), where mean(ĥ²) is 1 under RMS and 1/fan_in under L2 normalisation.

    Under RMS with sum goodness this is Hinton's θ = number of units. Scaling θ with the input's
    mean square keeps it as reachable from the default init under L2 as under RMS (θ = width under
    L2 is out of reach of the input-driven part of the activity at first, and training goes wrong).
    """
    mean_square = 1.0 if norm == "rms" else 1.0 / fan_in
    return float(width) * mean_square if kind == "sum" else mean_square


def peer_penalty(running_mean: Tensor) -> Tensor:
    """mean_j (m_j − mean_k m_k)²: how unequal the units' average activities are."""
    return (running_mean - running_mean.mean()).pow(2).mean()


def normalise_given(h: Tensor, squares: Tensor, norm: str = "rms", eps: float = 1e-8) -> Tensor:
    """`normalise` of ``h`` given its rows' Σ_j h_j² (``squares``, shape (batch,)), so that the sum a
    layer's goodness already computed is not computed again."""
    h = h.flatten(1)
    if norm == "rms":
        scale = (squares / h.shape[1]).sqrt() + eps
    elif norm == "l2":
        scale = squares.sqrt() + eps
    else:
        raise ValueError(f"unknown forward_forward norm '{norm}'. Valid norms: {', '.join(NORMS)}.")
    return h / scale.unsqueeze(1).to(h.dtype)


class ReluSquares(torch.autograd.Function):
    """a = relu(z) and s = Σ_j a_j² per row in one node: forward one activation and one reduction,
    backward ∂/∂z = (∂L/∂a + 2 a ∂L/∂s)·[a > 0] in one pass over (batch, width) — autograd's chain of
    pow, sum and relu nodes takes several. Float32 inputs of shape (batch, width)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        a = torch.relu(z)
        s = torch.linalg.vecdot(a, a, dim=1)
        ctx.save_for_backward(a)
        return a, s

    @staticmethod
    def backward(ctx: Any, grad_a: Tensor | None, grad_s: Tensor | None) -> Tensor | None:
        (a,) = ctx.saved_tensors
        if grad_s is None:
            return None if grad_a is None else grad_a * (a > 0)
        grad = a * (2.0 * grad_s).unsqueeze(1)  # zero where a = 0: the relu mask comes free
        if grad_a is not None:
            grad = grad + grad_a * (a > 0)
        return grad


def squares_of(block: nn.Module, h: Tensor) -> tuple[Tensor, Tensor]:
    """(a, Σ_j a_j² per row) of one block on its (normalised) input ``h``: fused (`ReluSquares`) for
    float32 relu blocks with a ``pre`` (z without the activation), the block and a sum otherwise; the
    sum in float32 for half inputs."""
    relu = getattr(block, "activation_name", None) == "relu" and hasattr(block, "pre")
    if relu and h.dtype == torch.float32:
        z = block.pre(h)
        if z.dim() == 2 and z.dtype == torch.float32:
            return ReluSquares.apply(z)
        a = torch.relu(z)
    else:
        a = block(h)
    flat = a.flatten(1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return a, flat.pow(2).sum(dim=1)


# -- the learner ----------------------------------------------------------------------------------


#: most rows one batched goodness readout pass holds (labels are split into groups beyond it)
READOUT_ROWS = 65536


@register_learner
class ForwardForward(GreedyStages, Learner):
    """Forward-Forward on the dense blocks of an MLP: per-layer goodness, no cross-layer gradient."""

    name = "forward_forward"
    circuits = ("mlp", "g2g")
    circuit_head = False

    class Options(LearnerOptions):
        optimizer: Literal["adam", "adamw", "sgd"] = option(
            "adam", "one optimizer over all layers (their losses are detached)")
        lr: float = option(3e-3, "learning rate of the layers", gt=0)
        weight_decay: float = option(0.0, "L2 (adam, sgd) or decoupled (adamw) weight decay", ge=0)
        momentum: float = option(0.9, "SGD momentum (sgd only)", ge=0)
        norm: Literal["rms", "l2"] = option(
            "rms", "normalisation of each layer's input: Σĥ² = dim, or unit length")
        goodness: Literal["sum", "mean"] = option("sum", "goodness: sum or mean of squared activities")
        threshold: float | None = option(
            None, "θ of every layer; null: width (sum) / 1 (mean) under rms, scaled by 1/fan_in under l2",
            gt=0)
        loss: Literal["standard", "symba"] = option(
            "standard", "softplus(θ−G⁺)+softplus(G⁻−θ), or SymBa softplus(−α(G⁺−G⁻))")
        symba_alpha: float = option(4.0, "α of the SymBa loss", gt=0)
        negatives: Literal["random", "hard"] = option(
            "random", "uniform wrong label, or the most-confusable wrong label (C extra passes)")
        peer_norm: float = option(0.0, "λ of peer normalisation (paper: 0.03); 0 = off", ge=0)
        peer_momentum: float = option(0.9, "momentum of the running mean activity of peer normalisation",
                                      ge=0, lt=1)
        readout: Literal["goodness", "softmax"] = option(
            "goodness", "goodness (C passes, nothing else trained) or softmax (neutral label, linear "
            "classifier trained on a neutral pass; goodness reported at test too)")
        readout_lr: float = option(1e-2, "Adam lr of the softmax readout's linear classifier", gt=0)
        label_scale: float = option(1.0, "value of the true label's entry in the overlay", gt=0)
        eps: float = option(1e-8, "ε of the normalisation", gt=0)
        schedule: Literal["simultaneous", "greedy"] = option(
            "simultaneous", "every layer on every batch, or layer by layer (greedy_epochs each)")
        greedy_epochs: int = option(10, "epochs per layer under schedule=greedy", ge=1)

    def __init__(self, circuit: Circuit, task: Task, **options: Any):
        super().__init__(circuit, task, **options)
        o = self.options
        self.norm = o.norm
        self.goodness_kind = o.goodness
        self.loss_kind = o.loss
        self.negatives = o.negatives
        self.readout = o.readout
        self.schedule = o.schedule
        self.greedy_epochs = o.greedy_epochs
        self.epochs_seen = 0  # calls of on_epoch_end (host side, checkpointed as extra state)
        task.require_classification("forward_forward")
        self.num_classes = int(task.num_classes)
        if task.input_size <= self.num_classes:
            raise UsageError(
                f"forward_forward writes the label over the first C={self.num_classes} inputs, but an "
                f"example has only {task.input_size} inputs."
            )
        blocks = list(circuit.blocks)
        self.symba_alpha = o.symba_alpha
        self.peer_norm = o.peer_norm
        self.peer_momentum = o.peer_momentum
        self.label_scale = o.label_scale
        self.eps = o.eps
        threshold = o.threshold
        widths = [b.out_features for b in blocks]
        self.widths = widths
        if threshold is None:
            fan_ins = [task.input_size, *widths[:-1]]
            thresholds = [
                default_threshold(w, f, self.norm, self.goodness_kind)
                for w, f in zip(widths, fan_ins, strict=True)
            ]
        else:
            thresholds = [float(threshold)] * len(widths)
        self.register_buffer("thresholds", torch.tensor(thresholds))
        for i, w in enumerate(widths):
            self.register_buffer(f"peer_mean_{i}", torch.zeros(w))
        # layers whose goodness / activities the readouts use: 2..L, or 1 alone
        self.readout_layers = list(range(1, len(blocks))) if len(blocks) > 1 else [0]
        self.optimizer = self.add_optimizer(
            "circuit", make_optimizer(circuit.parameters(), o.optimizer, o.lr, o.weight_decay, o.momentum)
        )
        # the softmax readout exists only where it is used: no classifier, no neutral pass otherwise
        self.classifier: nn.Linear | None = None
        if self.readout == "softmax":
            feature_size = sum(widths[i] for i in self.readout_layers)
            device = next(circuit.parameters()).device
            self.classifier = nn.Linear(feature_size, self.num_classes).to(device)
            self.readout_optimizer = self.add_optimizer(
                "readout", make_optimizer(self.classifier.parameters(), "adam", o.readout_lr)
            )

    # -- passes -----------------------------------------------------------------------------------
    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.circuit.blocks)

    def layer_passes(self, x_in: Tensor, last: int | None = None,
                     first_trained: int = 0) -> tuple[list[Tensor], list[Tensor]]:
        """Activities a_l and their Σ_j a_{l,j}² for layers 0..``last`` (0-based; default all) of an
        overlaid input; each layer sees sg(norm(a_{l−1})), normalised with the sum already taken for
        its goodness. Layers before ``first_trained`` run without a graph (frozen)."""
        blocks = list(self.circuit.blocks)
        last = len(blocks) - 1 if last is None else last
        h = normalise(x_in.detach(), self.norm, self.eps)
        acts, squares = [], []
        grad = torch.is_grad_enabled()
        for i, block in enumerate(blocks[: last + 1]):
            with torch.set_grad_enabled(grad and i >= first_trained):
                a, s = squares_of(block, h)
            acts.append(a)
            squares.append(s)
            h = normalise_given(a.detach(), s.detach(), self.norm, self.eps)
        return acts, squares

    def layer_activities(self, x_in: Tensor) -> list[Tensor]:
        """Activities a_l of every layer for an overlaid input; each layer sees sg(norm(a_{l−1}))."""
        return self.layer_passes(x_in)[0]

    def layer_goodness(self, squares: Tensor, layer: int) -> Tensor:
        """G_l from Σ_j a_j²: the sum itself (``sum``) or divided by the layer's width (``mean``)."""
        return squares if self.goodness_kind == "sum" else squares / self.widths[layer]

    def readout_features(self, activities: list[Tensor], squares: list[Tensor] | None = None) -> Tensor:
        """Concatenated sg(norm(a_l)) of the readout layers — the softmax classifier's input."""
        return torch.cat([
            normalise(activities[i].detach(), self.norm, self.eps) if squares is None
            else normalise_given(activities[i].detach(), squares[i].detach(), self.norm, self.eps)
            for i in self.readout_layers], dim=1)

    def goodness_scores(self, x: Tensor) -> Tensor:
        """S_c(x) = Σ_{l∈R} G_l(overlay(x, c)) for every label c, shape (batch, C): the C labelled
        copies of the batch go through the net as one batch of C·batch rows (labels in groups when
        that exceeds `READOUT_ROWS`)."""
        batch, c = x.shape[0], self.num_classes
        flat = x.flatten(1)
        per_pass = max(1, min(c, READOUT_ROWS // max(1, batch)))
        columns = []
        for first in range(0, c, per_pass):
            labels = torch.arange(first, min(c, first + per_pass), device=x.device)
            rows = overlay_label(flat.repeat(labels.shape[0], 1), labels.repeat_interleave(batch), c,
                                 self.label_scale)
            _, squares = self.layer_passes(rows)
            score = sum(self.layer_goodness(squares[i], i) for i in self.readout_layers)
            columns.append(score.view(labels.shape[0], batch))
        return torch.cat(columns).t()

    def softmax_scores(self, x: Tensor) -> Tensor:
        """Logits of the linear readout on one neutral-label pass, shape (batch, C)."""
        if self.classifier is None:
            raise RuntimeError("forward_forward has a softmax readout only with readout=softmax")
        acts, squares = self.layer_passes(overlay_neutral(x, self.num_classes, self.label_scale))
        return self.classifier(self.readout_features(acts, squares))

    # -- the contract -----------------------------------------------------------------------------
    def trained_layers(self) -> tuple[int, int]:
        """(first, last) layer (0-based) that a step trains: all, or the greedy stage's alone."""
        if self.schedule == "greedy":
            stage = self.stage_after(self.epochs_seen)
            return stage, stage
        return 0, len(self.circuit.blocks) - 1

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        c = self.num_classes
        if self.negatives == "hard":
            with torch.no_grad():
                y_neg = hardest_wrong_labels(self.goodness_scores(x), y)
        else:
            y_neg = random_wrong_labels(y, c)
        batch = x.shape[0]
        flat = x.flatten(1)
        x_both = overlay_label(flat.repeat(2, 1), torch.cat([y, y_neg]), c, self.label_scale)
        first, last = self.trained_layers()
        acts, squares = self.layer_passes(x_both, last=last, first_trained=first)
        ff_total = x.new_zeros(())
        peer_total = x.new_zeros(())
        separation = x.new_zeros(())
        for i in range(first, last + 1):
            g = self.layer_goodness(squares[i], i)
            g_pos, g_neg = g[:batch], g[batch:]
            ff_total = ff_total + ff_loss(g_pos, g_neg, self.thresholds[i], self.loss_kind,
                                          self.symba_alpha)
            if i == last:
                separation = (g_pos > g_neg).float().mean()
            if self.peer_norm > 0:
                buf = getattr(self, f"peer_mean_{i}")
                running = self.peer_momentum * buf + (1.0 - self.peer_momentum) * batch_mean(acts[i])
                peer_total = peer_total + peer_penalty(running)
                buf.copy_(running.detach())
        loss = ff_total + self.peer_norm * peer_total
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()  # frozen and waiting layers have no gradient: the optimizer skips them
        metrics = {"loss": loss.detach(), "ff_loss": ff_total.detach(), "peer_loss": peer_total.detach(),
                   "separation": separation}
        if self.classifier is not None:
            metrics.update(self.train_softmax_readout(x, y))
            metrics["loss"] = metrics["loss"] + metrics["readout_loss"]
        return metrics

    def train_softmax_readout(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """One no-grad neutral pass; cross-entropy trains only the linear classifier."""
        assert self.classifier is not None
        with torch.no_grad():
            acts, squares = self.layer_passes(overlay_neutral(x, self.num_classes, self.label_scale))
            features = self.readout_features(acts, squares)
        logits = self.classifier(features)
        readout_loss = F.cross_entropy(logits, y)
        self.readout_optimizer.zero_grad(set_to_none=True)
        readout_loss.backward()
        self.readout_optimizer.step()
        return {"readout_loss": readout_loss.detach(), "accuracy": accuracy(logits.detach(), y)}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        if self.readout == "softmax":
            return self.softmax_scores(x)
        return self.goodness_scores(x)

    @torch.no_grad()
    def predictions(self, x: Tensor, readouts: Collection[str] | None = None) -> dict[str, Tensor]:
        """The configured readout first; with readout=softmax the goodness readout too. ``readouts``
        (names, ``""`` for the configured one) limits the work to those asked for."""
        names = ["softmax", "goodness"] if self.readout == "softmax" else ["goodness"]
        if readouts is not None:
            names = [n for n in names if n in readouts or ("" in readouts and n == self.readout)]
        score = {"goodness": self.goodness_scores, "softmax": self.softmax_scores}
        return {name: score[name](x) for name in names}

    # -- schedule ---------------------------------------------------------------------------------
    def on_epoch_end(self, epoch: int) -> None:
        self.epochs_seen += 1

    def capture_key(self) -> Any:
        return self.stage_after(self.epochs_seen) if self.schedule == "greedy" else None

