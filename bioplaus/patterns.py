"""Data for associative memory: patterns to store and cues to retrieve them from (data ``patterns``).

Generated on the device from the run's seed (``kind`` = rademacher | diluted | examples), or read
from images binarised to ±1 (``kind`` = digits | fashion_mnist).

    rademacher:  ξ^μ_i ∈ {−1, +1}, P(±1) = 1/2                          μ = 1…K, i = 1…N
    diluted:     ξ^μ_i ∈ {−1, 0, +1}, P(0) = d, P(±1) = (1 − d)/2
    examples:    η^{μ,a}_i = χ^{μ,a}_i ξ^μ_i, P(χ = +1) = (1 + r)/2      a = 1…M per archetype μ
                 (quality r = E[η ξ]; dataset entropy ρ = (1 − r²)/(M r²))
    images:      σ_i = +1 if pixel_i > θ · max pixel value else −1 (θ = ``threshold``, default ½,
                 i.e. 8/16 for digits and 127.5/255 for Fashion-MNIST); the archetype of class c is
                 the sign of the mean of every training image of class c (ties → +1)

Batch convention of a memory task (``Task.kind = "memory"``, ``Task.num_classes`` = K stored
patterns or archetypes, ``Task.input_shape = (N,)``):

* train split: ``x`` (P, N) — the vectors to store (patterns, or examples), ``y`` (P,) int64 —
  the index of each vector's pattern or archetype (class);
* val / test splits: ``x`` (B, N) — cues in {−1, +1}, ``y`` (B, N) float — the ±1 (or, diluted,
  {−1, 0, +1}) pattern each cue should retrieve. Evaluation needs nothing but (x, y).

Cues: each pattern (archetype) with a fraction ``cue_flip`` of its spins flipped, ``cues`` per
pattern; the blank entries of a diluted pattern are filled with fair coin flips first. With
``dilution_sweep`` (a list of d values), the data hold one independent network of K diluted
patterns per value (K · len(dilution_sweep) patterns in all, ``y`` indexes them in that order) and
the cues start from the first pattern of each network (``cue_from=first``) — the set-up of the
multitasking experiment. For images the cues are held-out images: validation cues from the
training images not stored, test cues from the test split.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from bioplaus.core import Task
from bioplaus.options import Options, option
from bioplaus.registry import register_dataset

__all__ = ["PatternOptions", "binarise", "cues_from", "diluted", "examples", "rademacher"]


class PatternOptions(Options):
    """Options of the ``patterns`` data set (config section ``data``)."""

    section = "data"

    kind: Literal["rademacher", "diluted", "examples", "digits", "fashion_mnist"] = option(
        "rademacher", "what to store: random ±1 patterns, diluted patterns, examples of archetypes, "
                      "or binarised images")
    neurons: int = option(200, "N, spins per pattern (generated kinds)", gt=0)
    patterns: int = option(10, "K, patterns or archetypes (generated kinds; images: 10 classes)", gt=0)
    dilution: float = option(0.5, "d = P(ξ_i = 0) of diluted patterns", ge=0, lt=1)
    dilution_sweep: list[float] = option([], "kind=diluted: one independent network of K patterns "
                                             "per value of d (empty: one network at `dilution`)")
    examples: int = option(20, "M, examples per archetype (kind=examples and images)", gt=0)
    quality: float = option(0.5, "r = E[η ξ], quality of the examples (kind=examples)", gt=0, le=1)
    cues: int = option(4, "cues per pattern (images: per class) in each of val and test", gt=0)
    cue_flip: float = option(0.1, "fraction of a pattern's spins flipped to make a cue", ge=0, le=1)
    cue_from: Literal["all", "first"] = option(
        "all", "cue every pattern, or only the first pattern of each network (multitasking)")
    threshold: float = option(0.5, "images: a pixel is +1 above threshold × the largest pixel value",
                              gt=0, lt=1)
    root: str | None = option(None, "images: folder of the Fashion-MNIST IDX files (null: search)")
    download: bool = option(False, "images: fetch Fashion-MNIST with torchvision if missing")


def parse(cfg: Mapping[str, Any]) -> PatternOptions:
    """The ``data`` section as `PatternOptions`; `UsageError` naming any bad key or value."""
    values = {k: v for k, v in dict(cfg).items() if k != "name"}
    return PatternOptions.parse("data 'patterns'", values)


# -- generators (pure functions of a device generator) --------------------------------------------


def rademacher(k: int, n: int, generator: torch.Generator) -> Tensor:
    """K patterns of N fair ±1 spins, shape (K, N), float32, on the generator's device."""
    bits = torch.randint(0, 2, (k, n), generator=generator, device=generator.device)
    return bits.float() * 2 - 1


def diluted(k: int, n: int, d: float, generator: torch.Generator) -> Tensor:
    """K diluted patterns (K, N) in {−1, 0, +1}: P(0) = d, P(+1) = P(−1) = (1 − d)/2."""
    signs = rademacher(k, n, generator)
    keep = torch.rand((k, n), generator=generator, device=generator.device) >= d
    return signs * keep


def examples(archetypes: Tensor, m: int, r: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """M noisy examples of each archetype: η^{μ,a} = χ^{μ,a} ξ^μ, P(χ = +1) = (1 + r)/2.

    Returns (examples (K·M, N), archetype index (K·M,) int64), archetype-major order.
    """
    k, n = archetypes.shape
    chi = torch.rand((k, m, n), generator=generator, device=generator.device) < (1 + r) / 2
    eta = archetypes[:, None, :] * (chi.float() * 2 - 1)
    labels = torch.arange(k, device=archetypes.device).repeat_interleave(m)
    return eta.reshape(k * m, n), labels


def fill_blanks(patterns: Tensor, generator: torch.Generator) -> Tensor:
    """Patterns with every 0 entry replaced by a fair ±1 coin flip."""
    coins = rademacher(patterns.shape[0], patterns.shape[1], generator)
    return torch.where(patterns == 0, coins, patterns)


def cues_from(patterns: Tensor, per_pattern: int, flip: float,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``per_pattern`` cues of each pattern: blanks filled at random, then a fraction ``flip`` of
    the N spins flipped (exactly round(flip · N), chosen uniformly per cue).

    Returns (cues (K·c, N) in {−1, +1}, targets (K·c, N) — the pattern each cue comes from).
    """
    n = patterns.shape[1]
    targets = patterns.repeat_interleave(per_pattern, dim=0)
    cues = fill_blanks(targets, generator)
    flips = round(flip * n)
    if flips:
        order = torch.rand(cues.shape, generator=generator, device=generator.device).argsort(dim=1)
        sign = torch.ones_like(cues)
        sign.scatter_(1, order[:, :flips], -1.0)
        cues = cues * sign
    return cues, targets


def binarise(images: Tensor, threshold: float, scale: float) -> Tensor:
    """Images (B, ...) -> (B, N) spins: +1 where pixel > threshold · scale, else −1."""
    flat = images.reshape(images.shape[0], -1).float()
    return torch.where(flat > threshold * scale, 1.0, -1.0)


def class_archetypes(spins: Tensor, labels: Tensor, classes: int) -> Tensor:
    """Sign of each class's mean binarised image (ties → +1), shape (classes, N)."""
    sums = torch.zeros(classes, spins.shape[1], device=spins.device).index_add_(0, labels, spins)
    return torch.where(sums >= 0, 1.0, -1.0)


# -- the data set ---------------------------------------------------------------------------------


def _images(opts: PatternOptions, seed: int, device: torch.device) -> tuple[Tensor, ...]:
    from bioplaus.data import load_digits, read_idx  # noqa: F401  (registry of image loaders)
    from bioplaus.registry import get_dataset

    root = Path(opts.root).expanduser() if opts.root else None
    raw = get_dataset(opts.kind)(root=root, download=opts.download)
    scale = 16.0 if opts.kind == "digits" else 255.0
    train = binarise(raw.train_x, opts.threshold, scale).to(device)
    test = binarise(raw.test_x, opts.threshold, scale).to(device)
    train_y, test_y = raw.train_y.to(device), raw.test_y.to(device)
    classes = raw.num_classes
    arche = class_archetypes(train, train_y, classes)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    stored, held = [], []
    for c in range(classes):
        idx = (train_y == c).nonzero().flatten().cpu()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        if idx.numel() < opts.examples + opts.cues:
            from bioplaus.errors import UsageError

            raise UsageError(f"data.examples={opts.examples} + data.cues={opts.cues} exceeds the "
                             f"{idx.numel()} training images of class {c} in {opts.kind}.")
        stored.append(idx[: opts.examples])
        held.append(idx[opts.examples: opts.examples + opts.cues])
    test_idx = []
    for c in range(classes):
        idx = (test_y == c).nonzero().flatten().cpu()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        test_idx.append(idx[: opts.cues])
    s, h, t = (torch.cat(v).to(device) for v in (stored, held, test_idx))
    return (train[s], train_y[s], train[h], arche[train_y[h]], test[t], arche[test_y[t]], classes)


def build_splits(cfg: Mapping[str, Any], *, seed: int, device: str | torch.device) -> Any:
    """`DataSplits` of a memory task for the ``data`` section ``cfg`` (see the module doc)."""
    from bioplaus.data import DataSplits

    opts = parse(cfg)
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) * 7919 + 17)
    if opts.kind in ("digits", "fashion_mnist"):
        train_x, train_y, val_x, val_y, test_x, test_y, k = _images(opts, seed, device)
        task = Task((train_x.shape[1],), k, "memory")
        return DataSplits(train_x, train_y, val_x, val_y, test_x, test_y, task, "patterns")
    n, k = opts.neurons, opts.patterns
    if opts.kind == "rademacher":
        stored = rademacher(k, n, gen)
        train_x, train_y = stored, torch.arange(k, device=device)
    elif opts.kind == "diluted":
        ds = list(opts.dilution_sweep) or [opts.dilution]
        stored = torch.cat([diluted(k, n, d, gen) for d in ds])
        train_x, train_y = stored, torch.arange(stored.shape[0], device=device)
    else:
        stored = rademacher(k, n, gen)
        train_x, train_y = examples(stored, opts.examples, opts.quality, gen)
    group = stored.shape[0] // (len(opts.dilution_sweep) or 1) if opts.kind == "diluted" else k
    sources = stored[::group] if opts.cue_from == "first" else stored
    val_x, val_y = cues_from(sources, opts.cues, opts.cue_flip, gen)
    test_x, test_y = cues_from(sources, opts.cues, opts.cue_flip, gen)
    task = Task((n,), stored.shape[0], "memory")
    return DataSplits(train_x.contiguous(), train_y, val_x, val_y, test_x, test_y, task, "patterns")


@register_dataset("patterns")
def load_patterns(root: Path | None = None, download: bool = False) -> Any:
    """Registry entry of ``patterns``: its splits come from `build_splits` (attached below), which
    `bioplaus.data.load` calls with the whole ``data`` section; called alone it is a usage error."""
    from bioplaus.errors import UsageError

    raise UsageError("data 'patterns' is built from its options (data.kind, data.neurons, ...); "
                     "load it with bioplaus.data.load or bioplaus.patterns.build_splits.")


def _check(cfg: Mapping[str, Any]) -> None:
    opts = parse(cfg)
    if opts.kind in ("digits", "fashion_mnist"):
        from bioplaus.registry import get_dataset

        loader = get_dataset(opts.kind)
        probe = getattr(loader, "locate", None)
        if probe is not None:
            probe(root=Path(opts.root).expanduser() if opts.root else None, download=opts.download)


load_patterns.build_splits = build_splits  # type: ignore[attr-defined]
load_patterns.check_config = _check  # type: ignore[attr-defined]
