"""`noprop` — every block learns alone to denoise a noisy label embedding; no gradient crosses blocks.

Li, Teh & Pascanu, "NoProp: Training Neural Networks without Back-propagation or
Forward-propagation", arXiv 2503.24322 (2025).

Labels are embedded as u_y, the row y of a class-embedding matrix U ∈ R^{C×d} (``embedding``:
``onehot`` U = I, d = C; ``learned`` U trained with everything else, d = ``embedding_dim`` or C;
``prototype`` u_c = an image of class c, d = the input size). A block predicts the clean embedding
from the image x and a noisy embedding z as a class mixture::

    û(z, x) = Σ_c softmax(logits(x, z))_c u_c            (logits: the block's C outputs)

NoProp-DT (``variant=dt``, default). T blocks (the circuit's ``blocks``, default 10). The fixed
variational posterior is a variance-preserving process that runs from z_T (nearly clean) down to
z_0 (pure noise)::

    q(z_t | y) = N(√ᾱ_t u_y, (1 − ᾱ_t) I),   SNR(t) = ᾱ_t / (1 − ᾱ_t),   α_{t−1} = ᾱ_{t−1} / ᾱ_t

with the cosine schedule (Nichol & Dhariwal 2021, offset s = ``cosine_offset`` = 0.008) laid on a
grid of T + 1 points so that z_T keeps a finite SNR and z_0 carries no label at all::

    ᾱ_t = f(τ_t) / f(0),   f(τ) = cos²(π/2 · (τ + s)/(1 + s)),   τ_t = (T + 1 − t)/(T + 1)

(ᾱ_0 = 0 up to rounding, ᾱ_T = f(1/(T+1))/f(0) < 1). Block t (1..T) sees z_{t−1} ~ q(z_{t−1}|y)
and minimises its own term of the paper's objective::

    L_t = (T/2) η (SNR(t) − SNR(t−1)) ‖û_t(z_{t−1}, x) − u_y‖²  +  CE  +  KL       (η = ``eta``)
    CE  = −log p̂(y | z_T),  z_T ~ q(z_T|y),  p̂(y|z) = softmax(W_out z + b_out)   (output classifier)
    KL  = KL(q(z_0|y) ‖ N(0, I)) = ½ (ᾱ_0 ‖u_y‖² − d ᾱ_0 − d log(1 − ᾱ_0))

Every block trains on every batch: the step minimises Σ_t L_t (one backward; the blocks' graphs are
disjoint, so block t's parameters receive exactly ∇L_t and nothing from any other block), i.e.
the paper's loss L = CE + KL + (T/2) η E_t[(SNR(t) − SNR(t−1)) ‖û_t − u_y‖²] with the expectation
over t summed exactly (×T). W_out, b_out and a learned U are shared and get every term.
Inference (one pass through the blocks, stochastic)::

    z_0 ~ N(0, I);   z_t = a_t û_t(z_{t−1}, x) + b_t z_{t−1} + √c_t ε,  ε ~ N(0, I),  t = 1..T
    a_t = √ᾱ_t (1 − α_{t−1}) / (1 − ᾱ_{t−1})
    b_t = √α_{t−1} (1 − ᾱ_t) / (1 − ᾱ_{t−1})
    c_t = (1 − ᾱ_t)(1 − α_{t−1}) / (1 − ᾱ_{t−1})                (the posterior q(z_t | z_{t−1}, y))

then classify z_T with p̂(y|z_T).

NoProp-CT (``variant=ct``). Continuous t ∈ [0, 1], one shared block with a time input and a
learnable schedule: log-SNR λ(t) = λ_0 + (λ_1 − λ_0)·(g(t) − g(0))/(g(1) − g(0)) with g a monotone
net (a positive slope plus positive-weighted sigmoids, as in Kingma et al. 2021's variational
diffusion models), λ_0 and λ_1 − λ_0 > 0 learned (initially ``logsnr_min``, ``logsnr_max``);
ᾱ(t) = sigmoid(λ(t)), SNR(t) = e^{λ(t)}, SNR′(t) = e^{λ(t)} λ′(t). Per example t ~ U[0, 1]::

    L = (η/2) SNR′(t) ‖û(z_t, x, t) − u_y‖² + CE(p̂(y | z_1)) + KL(q(z_0|y) ‖ N(0, I)),
    z_t ~ q(z_t|y) = N(√ᾱ(t) u_y, (1 − ᾱ(t)) I)

(the T → ∞ limit of the DT loss). Inference integrates the probability-flow ODE of the process with
the block's prediction in place of u_y, by Euler over ``ode_steps`` steps from z_0 ~ N(0, I)::

    dz/dt = ½ λ′(t) (√ᾱ(t) û(z, x, t) − ᾱ(t) z)

NoProp-FM (``variant=fm``). Flow matching: z_t = t u_y + (1 − t) z_0, z_0 ~ N(0, I), t ~ U[0, 1];
the shared block's outputs are the velocity v̂(z_t, x, t) ∈ R^d (the circuit's ``outputs`` must be
d)::

    L = ‖v̂(z_t, x, t) − (u_y − z_0)‖² + CE(p̂(y | z̃_1)),   z̃_1 = z_t + (1 − t) v̂(z_t, x, t)

Inference: Euler over ``ode_steps`` steps of dz/dt = v̂(z, x, t) from z_0 ~ N(0, I); classify z_1.

Readouts (`predictions`): ``classifier`` p̂(y | z_final) (headline) and ``nearest``, the class whose
embedding is nearest to z_final. Both are stochastic (z_0 is drawn).

Circuit layout: the `noprop_blocks` circuit builds T independent blocks for ``circuit.variant=dt``
and one shared time-conditioned block for ``ct``/``fm``; configs/learner/noprop.yaml sets
``circuit.variant`` from ``learner.variant``. A circuit whose layout does not fit the variant, or
whose label input (``circuit.label_features``) or output width does not fit the embedding, is a
`UsageError` that names the option to set.

Options (declared in `NoProp.Options`; each a config key): variant (dt|ct|fm), embedding
(onehot|learned|prototype), embedding_dim (learned only; null = C), eta, optimizer (adam|adamw|sgd;
one optimizer over every parameter — each block still gets only its own gradient), lr, weight_decay,
momentum (sgd), ode_steps (ct, fm), cosine_offset (dt), logsnr_min / logsnr_max (ct: initial λ(0),
λ(1)).

Metrics of `train_step`: loss (the paper's L on the batch: CE + KL + mean_t of the DT block terms;
the CT/FM loss above), denoise (the denoising / flow term), ce, kl (dt, ct), accuracy (dt: block 1,
whose input z_0 carries no label, i.e. a real classification of x; ct: the block's argmax at the
sampled t; fm: p̂(y | z̃_1)), and loss_b1 … loss_bT (dt: each block's weighted term).

Defaults (configs/learner/noprop.yaml): the paper's AdamW lr 1e-3, wd 1e-3, batch 128; digits,
60 epochs. Measured accuracies and timings are in ``benchmarks/results/``.

Deviations from the paper and choices it leaves open:

* The cosine schedule's placement on the T + 1 latents (above) is ours; the paper names the cosine
  schedule without the grid. It makes ᾱ_0 = 0, so the DT KL term is 0 and b_1 = 0.
* Scheduling: every block trains on every batch, from one summed objective. Each block's objective
  is the paper's L_t; the order in which the paper's training algorithm visits blocks and batches
  is not reproduced (and was not checked against it).
* ``prototype``: u_c is the mean of the class-c images of the first training batch that holds
  class c (then fixed), not one chosen training image; ``learned`` starts from I (d = C) or
  orthonormal rows.
* The output classifier starts at zero weights (uniform prediction). With PyTorch's default init
  its random weights outweigh what AdamW at lr 1e-3 adds in the first few hundred steps, and its
  readout stayed near chance while the nearest-embedding readout was already well above it; from
  zero it tracks the nearest-embedding readout from the first epoch.
* CT: the monotone schedule net's form (slope + 8 sigmoids) and its initial range λ ∈ [−4, 4] are
  ours; the ODE above is solved with plain Euler.
* FM: the CE term on z̃_1 trains the classifier always; its gradient reaches the block and U only
  for ``embedding=learned`` (as we read the paper, it adds the term for learned embeddings,
  against their collapse);
  for fixed embeddings z̃_1 is detached. FM has no KL term (z_0 is exactly N(0, I)).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor, nn

from bioplaus.core import Circuit, Learner, Task
from bioplaus.distributed import global_sum
from bioplaus.errors import UsageError
from bioplaus.functional import accuracy
from bioplaus.optim import make_optimizer
from bioplaus.options import LearnerOptions, option
from bioplaus.registry import register_learner

# -- functional math ------------------------------------------------------------------------------


def cosine_alpha_bar(blocks: int, offset: float = 0.008) -> Tensor:
    """ᾱ_t for t = 0..T (float64): the cosine schedule on the grid τ_t = (T + 1 − t)/(T + 1)."""

    def f(tau: float) -> float:
        return math.cos((tau + offset) / (1.0 + offset) * math.pi / 2) ** 2

    values = [min(max(f((blocks + 1 - t) / (blocks + 1)) / f(0.0), 0.0), 1.0) for t in range(blocks + 1)]
    return torch.tensor(values, dtype=torch.float64)


def snr(alpha_bar: Tensor) -> Tensor:
    """SNR = ᾱ / (1 − ᾱ)."""
    return alpha_bar / (1.0 - alpha_bar)


def snr_weights(alpha_bar: Tensor, eta: float) -> Tensor:
    """(T/2)·η·(SNR(t) − SNR(t−1)) for t = 1..T, from ᾱ_0..ᾱ_T."""
    blocks = alpha_bar.shape[0] - 1
    s = snr(alpha_bar)
    return 0.5 * blocks * eta * (s[1:] - s[:-1])


def posterior_coefficients(alpha_bar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(a_t, b_t, c_t), t = 1..T, of q(z_t | z_{t−1}, y) = N(a_t u_y + b_t z_{t−1}, c_t I)."""
    now, before = alpha_bar[1:], alpha_bar[:-1]
    alpha_prev = before / now  # α_{t−1}
    a = now.sqrt() * (1.0 - alpha_prev) / (1.0 - before)
    b = alpha_prev.sqrt() * (1.0 - now) / (1.0 - before)
    c = (1.0 - now) * (1.0 - alpha_prev) / (1.0 - before)
    return a, b, c


def kl_to_standard_normal(u: Tensor, alpha_bar0: Tensor | float,
                          log_one_minus: Tensor | None = None) -> Tensor:
    """KL(N(√ᾱ_0 u, (1 − ᾱ_0) I) ‖ N(0, I)) per row of ``u``: ½(ᾱ_0‖u‖² − d ᾱ_0 − d log(1 − ᾱ_0)).

    ``log_one_minus`` may give log(1 − ᾱ_0) computed stably (e.g. logsigmoid(−λ_0))."""
    d = u.shape[1]
    alpha_bar0 = torch.as_tensor(alpha_bar0, dtype=u.dtype, device=u.device)
    if log_one_minus is None:
        log_one_minus = torch.log1p(-alpha_bar0)
    return 0.5 * (alpha_bar0 * u.pow(2).sum(1) - d * alpha_bar0 - d * log_one_minus)


def class_mixture(logits: Tensor, embeddings: Tensor) -> Tensor:
    """û = Σ_c softmax(logits)_c u_c, shape (B, d)."""
    return torch.softmax(logits.float(), dim=1) @ embeddings


def squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    """‖prediction − target‖² per row."""
    return (prediction - target).pow(2).sum(1)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class LearnedSchedule(nn.Module):
    """Monotone learnable log-SNR λ(t) on [0, 1] with its derivative λ′(t) (NoProp-CT).

    λ(t) = λ_0 + Δ·(g(t) − g(0))/(g(1) − g(0)),  Δ = softplus(ρ) > 0,
    g(t) = softplus(w)·t + Σ_k softplus(v_k)·sigmoid(softplus(r_k)·(t − m_k)).
    """

    def __init__(self, logsnr_min: float = -4.0, logsnr_max: float = 4.0, units: int = 8):
        super().__init__()
        self.start = nn.Parameter(torch.tensor(float(logsnr_min)))
        self.span = nn.Parameter(torch.tensor(_inverse_softplus(logsnr_max - logsnr_min)))
        self.slope = nn.Parameter(torch.tensor(_inverse_softplus(1.0)))
        self.amplitude = nn.Parameter(torch.full((units,), -4.0))  # softplus(−4) ≈ 0.018: ~linear
        self.rate = nn.Parameter(torch.full((units,), _inverse_softplus(8.0)))
        self.centre = nn.Parameter(torch.linspace(0.0, 1.0, units))
        self.register_buffer("ends", torch.tensor([0.0, 1.0]), persistent=False)

    def _g(self, t: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.sigmoid(F.softplus(self.rate) * (t.unsqueeze(-1) - self.centre))
        amp = F.softplus(self.amplitude)
        g = F.softplus(self.slope) * t + (amp * s).sum(-1)
        dg = F.softplus(self.slope) + (amp * F.softplus(self.rate) * s * (1 - s)).sum(-1)
        return g, dg

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(λ(t), λ′(t)) for times ``t`` of any shape."""
        ends, _ = self._g(self.ends.to(t.dtype))
        g, dg = self._g(t)
        scale = F.softplus(self.span) / (ends[1] - ends[0])
        return self.start + scale * (g - ends[0]), scale * dg


# -- the learner -----------------------------------------------------------------------------------


@register_learner
class NoProp(Learner):
    """Each block denoises a noisy label embedding on its own loss (DT, CT or flow matching)."""

    name = "noprop"
    circuits = ("noprop_blocks",)
    circuit_head = True

    class Options(LearnerOptions):
        variant: Literal["dt", "ct", "fm"] = option(
            "dt", "dt (T blocks, cosine schedule) | ct (continuous time, learned schedule) | "
                  "fm (flow matching)")
        embedding: Literal["onehot", "learned", "prototype"] = option(
            "onehot", "label embedding: one-hot, learned, or the class-mean image (prototype)")
        embedding_dim: int | None = option(None, "width of a learned embedding (learned only); null: C", ge=1)
        eta: float = option(0.1, "η of the denoising terms", gt=0)
        optimizer: Literal["adam", "adamw", "sgd"] = option(
            "adamw", "one optimizer; every block still gets only its own gradient")
        lr: float = option(1e-3, "learning rate", gt=0)
        weight_decay: float = option(1e-3, "L2 (adam, sgd) or decoupled (adamw) weight decay", ge=0)
        momentum: float = option(0.9, "SGD momentum (sgd only)", ge=0)
        ode_steps: int = option(10, "Euler steps of the ct / fm inference ODE", ge=1)
        cosine_offset: float = option(0.008, "s of the dt cosine schedule", gt=0)
        logsnr_min: float = option(-4.0, "ct: initial log-SNR at t = 0 (learned)")
        logsnr_max: float = option(4.0, "ct: initial log-SNR at t = 1 (learned)")

        @model_validator(mode="after")
        def _ordered_logsnr(self) -> NoProp.Options:
            if not self.logsnr_min < self.logsnr_max:
                raise ValueError(f"learner.logsnr_min must be below learner.logsnr_max; got "
                                 f"{self.logsnr_min} and {self.logsnr_max}.")
            return self

    def __init__(self, circuit: Circuit, task: Task, **options: Any):
        super().__init__(circuit, task, **options)
        o = self.options
        self.variant = o.variant
        self.embedding = o.embedding
        task.require_classification("noprop")
        classes = task.num_classes
        embedding_dim = o.embedding_dim
        if self.embedding == "onehot":
            dim = classes
        elif self.embedding == "learned":
            dim = embedding_dim or classes
        else:
            dim = task.input_size
        if embedding_dim is not None and embedding_dim != dim:
            raise UsageError(f"learner.embedding_dim applies to embedding=learned only (embedding="
                             f"{self.embedding} has {dim} dimensions); set it to null.")
        self._check_circuit(circuit, dim)
        self.dim = dim
        self.eta = o.eta
        self.ode_steps = o.ode_steps
        device = next(circuit.parameters()).device

        if self.embedding == "learned":
            weight = torch.empty(classes, dim, device=device)
            if dim == classes:
                nn.init.eye_(weight)
            else:
                nn.init.orthogonal_(weight)
            self.embeddings = nn.Parameter(weight)
        else:
            fixed = torch.eye(classes, device=device) if self.embedding == "onehot" else torch.zeros(
                classes, dim, device=device)
            self.register_buffer("embeddings", fixed)
        if self.embedding == "prototype":
            self.register_buffer("prototype_ready", torch.zeros(classes, dtype=torch.bool, device=device))
        self.classifier = nn.Linear(dim, classes).to(device)
        nn.init.zeros_(self.classifier.weight)  # a softmax regression: start at the uniform prediction
        nn.init.zeros_(self.classifier.bias)

        if self.variant == "dt":
            self.blocks_count = len(circuit.blocks)
            alpha_bar = cosine_alpha_bar(self.blocks_count, o.cosine_offset)
            a, b, c = posterior_coefficients(alpha_bar)
            for name, value in (("alpha_bar", alpha_bar), ("block_weights", snr_weights(alpha_bar, o.eta)),
                                ("coef_a", a), ("coef_b", b), ("coef_c", c)):
                self.register_buffer(name, value.float().to(device))
        else:
            self.blocks_count = 1
        if self.variant == "ct":
            self.schedule = LearnedSchedule(o.logsnr_min, o.logsnr_max).to(device)
        self.optimizer = self.add_optimizer(
            "noprop", make_optimizer([p for p in self.parameters() if p.requires_grad], o.optimizer, o.lr,
                                     o.weight_decay, o.momentum, device=device))

    def _check_circuit(self, circuit: Circuit, dim: int) -> None:
        """Refuse a `noprop_blocks` circuit whose layout, label input or output width does not fit
        this variant and embedding, naming every circuit option to set."""
        layout = circuit.variant
        outputs = dim if self.variant == "fm" else self.task.num_classes
        problems = []
        if layout != self.variant:
            need = "T independent blocks" if self.variant == "dt" else "one shared time-conditioned block"
            problems.append(f"learner.variant={self.variant} needs {need}, but the circuit was built for "
                            f"variant {layout}: set circuit.variant={self.variant} (the noprop learner "
                            f"config sets it from learner.variant).")
        if circuit.label_features != dim:
            problems.append(f"learner.embedding={self.embedding} embeds labels in {dim} dimensions but the "
                            f"circuit's label branch takes {circuit.label_features}: set "
                            f"circuit.label_features={dim}.")
        if circuit.outputs != outputs:
            what = "the velocity (the embedding width)" if self.variant == "fm" else "the C class logits"
            problems.append(f"learner.variant={self.variant} reads {what} from the blocks' {outputs} "
                            f"outputs, but the circuit has {circuit.outputs}: set circuit.outputs="
                            f"{outputs if self.variant == 'fm' else 'null'}.")
        if problems:
            raise UsageError(" ".join(problems))

    # -- embeddings -----------------------------------------------------------------------------
    @torch.no_grad()
    def _update_prototypes(self, x: Tensor, y: Tensor) -> None:
        """Fill the prototype of every class seen for the first time with its mean image in the batch."""
        classes = torch.arange(self.task.num_classes, device=y.device)
        hits = (y.unsqueeze(1) == classes).to(x.dtype)
        counts = global_sum(hits.sum(0))  # over the global batch of a torchrun job
        means = global_sum(hits.t() @ x.flatten(1)) / counts.clamp_min(1.0).unsqueeze(1)
        fill = (~self.prototype_ready) & (counts > 0)
        means = means.to(self.embeddings.dtype)
        self.embeddings.copy_(torch.where(fill.unsqueeze(1), means, self.embeddings))
        self.prototype_ready.logical_or_(counts > 0)

    # -- losses ---------------------------------------------------------------------------------
    def dt_losses(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """Per-block weighted denoising terms, CE on z_T ~ q(z_T|y), KL of z_0 (NoProp-DT)."""
        U = self.embeddings
        u = U[y]
        keep = self.alpha_bar.sqrt()
        noise = (1.0 - self.alpha_bar).sqrt()
        block_terms, first_logits = [], None
        for t in range(1, self.blocks_count + 1):
            z = keep[t - 1] * u + noise[t - 1] * torch.randn_like(u)
            logits = self.circuit(x, z, block=t - 1)
            if t == 1:
                first_logits = logits
            block_terms.append(self.block_weights[t - 1] * squared_error(class_mixture(logits, U), u).mean())
        z_last = keep[-1] * u + noise[-1] * torch.randn_like(u)
        ce = F.cross_entropy(self.classifier(z_last).float(), y)
        kl = kl_to_standard_normal(u, self.alpha_bar[0]).mean()
        return {"blocks": block_terms, "ce": ce, "kl": kl, "scores": first_logits}

    def ct_losses(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """(η/2)·SNR′(t)‖û − u_y‖² at t ~ U[0, 1], CE on z_1 ~ q(z_1|y), KL of z_0 (NoProp-CT)."""
        U = self.embeddings
        u = U[y]
        t = torch.rand(u.shape[0], device=u.device, dtype=u.dtype)
        lam, dlam = self.schedule(t)
        keep = torch.sigmoid(lam).sqrt().unsqueeze(1)
        noise = torch.sigmoid(-lam).sqrt().unsqueeze(1)
        z = keep * u + noise * torch.randn_like(u)
        logits = self.circuit(x, z, t)
        snr_rate = torch.exp(lam) * dlam
        denoise = (0.5 * self.eta * snr_rate * squared_error(class_mixture(logits, U), u)).mean()
        ends, _ = self.schedule(self.schedule.ends.to(u.dtype))
        z_last = torch.sigmoid(ends[1]).sqrt() * u + torch.sigmoid(-ends[1]).sqrt() * torch.randn_like(u)
        ce = F.cross_entropy(self.classifier(z_last).float(), y)
        kl = kl_to_standard_normal(u, torch.sigmoid(ends[0]), F.logsigmoid(-ends[0])).mean()
        return {"denoise": denoise, "ce": ce, "kl": kl, "scores": logits}

    def fm_losses(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """‖v̂ − (u_y − z_0)‖² on z_t = t u_y + (1 − t) z_0, CE on z̃_1 = z_t + (1 − t) v̂ (NoProp-FM)."""
        u = self.embeddings[y]
        t = torch.rand(u.shape[0], 1, device=u.device, dtype=u.dtype)
        z0 = torch.randn_like(u)
        zt = t * u + (1.0 - t) * z0
        velocity = self.circuit(x, zt, t.squeeze(1)).float()
        denoise = squared_error(velocity, u - z0).mean()
        if self.embedding != "learned":
            velocity = velocity.detach()
        scores = self.classifier(zt + (1.0 - t) * velocity).float()
        return {"denoise": denoise, "ce": F.cross_entropy(scores, y), "scores": scores}

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.embedding == "prototype":  # a config constant, not a tensor value
            self._update_prototypes(x, y)
        metrics: dict[str, Tensor] = {}
        if self.variant == "dt":
            out = self.dt_losses(x, y)
            blocks = torch.stack(out["blocks"])
            objective = blocks.sum() + self.blocks_count * (out["ce"] + out["kl"])
            loss = out["ce"] + out["kl"] + blocks.mean()
            metrics["denoise"] = blocks.mean().detach()
            for t, term in enumerate(out["blocks"], start=1):
                metrics[f"loss_b{t}"] = term.detach()
        else:
            out = self.ct_losses(x, y) if self.variant == "ct" else self.fm_losses(x, y)
            loss = out["denoise"] + out["ce"] + out.get("kl", 0.0)
            objective = loss
            metrics["denoise"] = out["denoise"].detach()
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        metrics.update({"loss": loss.detach(), "ce": out["ce"].detach(),
                        "accuracy": accuracy(out["scores"].detach(), y)})
        if "kl" in out:
            metrics["kl"] = out["kl"].detach()
        return metrics

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, x: Tensor) -> Tensor:
        """z_final: the DT chain z_0 → z_T, or the Euler-integrated ODE z_0 → z_1 (ct, fm)."""
        U = self.embeddings
        z = torch.randn(x.shape[0], self.dim, device=x.device, dtype=U.dtype)
        if self.variant == "dt":
            for t in range(self.blocks_count):
                mixture = class_mixture(self.circuit(x, z, block=t), U)
                noise = self.coef_c[t].sqrt() * torch.randn_like(z)
                z = self.coef_a[t] * mixture + self.coef_b[t] * z + noise
            return z
        h = 1.0 / self.ode_steps
        for k in range(self.ode_steps):
            t = torch.full((x.shape[0],), k * h, device=x.device, dtype=z.dtype)
            if self.variant == "ct":
                lam, dlam = self.schedule(t)
                alpha_bar = torch.sigmoid(lam).unsqueeze(1)
                mixture = class_mixture(self.circuit(x, z, t), U)
                z = z + h * 0.5 * dlam.unsqueeze(1) * (alpha_bar.sqrt() * mixture - alpha_bar * z)
            else:
                z = z + h * self.circuit(x, z, t).float()
        return z

    @torch.no_grad()
    def predictions(self, x: Tensor) -> dict[str, Tensor]:
        z = self.infer(x)
        nearest = -torch.cdist(z, self.embeddings).pow(2)
        return {"classifier": self.classifier(z), "nearest": nearest}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.classifier(self.infer(x))

    def rule_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant, "embedding": self.embedding,
                               "embedding_dim": self.dim}
        if self.variant == "dt":
            out["blocks"] = self.blocks_count
        else:
            out["ode_steps"] = self.ode_steps
        if self.variant == "ct":
            with torch.no_grad():
                ends, _ = self.schedule(self.schedule.ends)
            out["logsnr_start"], out["logsnr_end"] = float(ends[0]), float(ends[1])
        return out
