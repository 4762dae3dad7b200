"""Where the time of a G2G training step under backprop goes, beside the dense MLP's step.

Builds the presets ``fmnist_bp_mlp`` (dense 784-1000-1000), ``fmnist_g2g_bp`` (G2G, same widths,
74.4 % sparse) and ``fmnist_g2g_bp_dst`` (the same with dynamic sparse training) on Fashion-MNIST
through the library, and times in ONE process, on one CPU thread, in rounds that alternate the
variants (so a change of machine load falls on every variant alike):

* ``train_step`` of each preset — what the engine's ``train s`` sums — on the same batches;
* the masked weight W ⊙ M of every sparse layer (the only extra work of the G2G forward pass;
  the backward pass multiplies the weight gradient by M once more);
* the DST correlation statistics a training step of ``fmnist_g2g_bp_dst`` updates (``track``);
* one DST rewiring round (``structural_step``: score, prune, regrow) with the engine's zeroing of
  the masked optimizer state, and its cost per step at the preset's ``dst.every``;
* ``evaluate`` on the validation split (not part of ``train s``; part of a run's wall-clock).

Median over rounds of the mean time per call. Writes ``benchmarks/results/g2g_profile.json`` and
``.md`` with the machine, commit, command and load:

    python benchmarks/g2g_profile.py                 # a few minutes on one idle CPU thread
    python benchmarks/g2g_profile.py --rounds 5 --steps 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import bioplaus
from bioplaus.bench import code_version, markdown_header, save_results
from bioplaus.optim import mask_optimizer_state
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
PRESETS = {"dense": "fmnist_bp_mlp", "g2g": "fmnist_g2g_bp", "g2g_dst": "fmnist_g2g_bp_dst"}


def build(preset: str, data: Any = None) -> tuple[Any, Any, Any]:
    cfg = bioplaus.compose([f"experiment={preset}", "threads=1", "device=cpu"])
    return (*bioplaus.build(cfg, data), cfg)


def timed(fn: Callable[[], Any], calls: int) -> float:
    """Mean seconds per call of ``fn`` over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def step_fn(learner: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], Any]:
    cursor = iter(range(10**9))

    def step() -> Any:
        x, y = batches[next(cursor) % len(batches)]
        return learner.train_step(x, y)
    return step


def rewire_fn(circuit: Any, learner: Any) -> Callable[[], Any]:
    """One DST round as the engine runs it: rewire, then zero the optimizer state where masked."""
    def rewire() -> None:
        if circuit.rewire():
            params = dict(circuit.named_parameters())
            masks = {params[n]: m for n, m in circuit.parameter_masks().items()}
            mask_optimizer_state(learner.optimizers.values(), masks)
    return rewire


def variants(batch_size: int) -> tuple[dict[str, tuple[Callable[[], Any], int]], dict[str, Any]]:
    """name -> (function, calls per round); and facts about the nets."""
    data, _, dense_l, _ = build(PRESETS["dense"])
    _, g2g_c, g2g_l, _ = build(PRESETS["g2g"], data)
    _, dst_c, dst_l, dst_cfg = build(PRESETS["g2g_dst"], data)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(data.train_x.shape[0], generator=gen)[: 32 * batch_size]
    batches = [(data.train_x[i], data.train_y[i]) for i in order.view(32, batch_size)]
    layers = list(g2g_c.sparse_blocks)
    x0 = batches[0][0].flatten(1)

    def mask_multiply() -> None:
        for block in layers:
            block.linear.weight * block.linear.mask

    inputs, pre_acts = [x0], []
    with torch.no_grad():  # each sparse layer's input and pre-activation, to replay `track` on
        for block in dst_c.sparse_blocks:
            pre_acts.append(block.linear(inputs[-1]))
            inputs.append(block.act(pre_acts[-1]))

    def track() -> None:
        for block, h, z in zip(dst_c.sparse_blocks, inputs, pre_acts, strict=False):
            block.track(h, z)

    val_x, val_y = data.val_x, data.val_y
    runs = {
        "train_step dense": (step_fn(dense_l, batches), 1),
        "train_step g2g": (step_fn(g2g_l, batches), 1),
        "train_step g2g+dst": (step_fn(dst_l, batches), 1),
        "W ⊙ M of every sparse layer (forward)": (mask_multiply, 1),
        "DST statistics (track) of every sparse layer": (track, 1),
        "DST rewiring round (every dst.every steps)": (rewire_fn(dst_c, dst_l), 0),
        "evaluate val dense": (lambda: dense_l.evaluate(val_x, val_y, 1000), 0),
        "evaluate val g2g": (lambda: g2g_l.evaluate(val_x, val_y, 1000), 0),
    }
    facts = {"dst_every": int(dst_cfg.circuit.dst.every), "val_examples": int(val_x.shape[0]),
             "train_examples": int(data.train_x.shape[0]), "batch_size": batch_size,
             "sparse_layers": [list(b.linear.weight.shape) for b in layers],
             "sparsity": round(1 - sum(float(b.linear.mask.sum()) for b in layers)
                               / sum(b.linear.mask.numel() for b in layers), 4)}
    return runs, facts


def measure(rounds: int, steps: int, batch_size: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    runs, facts = variants(batch_size)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for fn, calls in runs.values():  # warm-up
        timed(fn, max(1, min(calls * steps, 3)))
    for _ in range(rounds):
        for name, (fn, calls) in runs.items():
            samples[name].append(timed(fn, calls * steps or 1))
    ms = {name: 1000 * statistics.median(values) for name, values in samples.items()}
    return {"ms": ms, "ms_all": {k: [round(1000 * v, 3) for v in vals] for k, vals in samples.items()},
            **facts}


def render(path: Path, payload: dict[str, Any]) -> None:
    ms, dense = payload["ms"], payload["ms"]["train_step dense"]
    every, steps_per_epoch = payload["dst_every"], payload["train_examples"] // payload["batch_size"]
    lines = markdown_header(
        "G2G under backprop: where the training step's time goes", payload,
        f"Command: `{payload['command']}` (commit {payload['commit']}); one process, one CPU thread, "
        f"the variants alternated in each of {payload['rounds']} rounds of {payload['steps']} steps "
        f"(median of the rounds' mean per call); 1-minute load average {payload['load_before']} before, "
        f"{payload['load_after']} after (other jobs shared the 2 cores: the ratios, measured side by "
        f"side, hold; the absolute times are slower than an idle machine's). Batch "
        f"{payload['batch_size']}, sparse layers {payload['sparse_layers']} "
        f"({100 * payload['sparsity']:.1f} % of their entries masked).")
    lines += ["| what | ms per call | per training step (ms) | ÷ dense train_step | same, round by round: "
              "median (min–max) |", "|---|---|---|---|---|"]
    dense_rounds = payload["ms_all"]["train_step dense"]
    for name, value in ms.items():
        scale = every if name.startswith("DST rewiring") else (
            steps_per_epoch if name.startswith("evaluate") else 1)  # evaluation: once per epoch
        paired = [v / scale / d for v, d in zip(payload["ms_all"][name], dense_rounds, strict=True)]
        lines.append(f"| {name} | {value:.2f} | {value / scale:.3f} | {value / scale / dense:.3f} "
                     f"| {statistics.median(paired):.3f} ({min(paired):.3f}–{max(paired):.3f}) |")
    lines += ["", f"Per training step: rewiring every {every} steps, evaluation of "
              f"{payload['val_examples']} validation examples once per epoch of {steps_per_epoch} steps "
              "(evaluation is not in a run's `train s`)."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="training steps per variant and round")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "g2g_profile.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    result = measure(args.rounds, args.steps, args.batch_size)
    payload = {
        **result, "rounds": args.rounds, "steps": args.steps,
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "machine": machine_description(torch.device("cpu")), "torch": torch.__version__,
        "commit": code_version(), "command": shlex.join(["python", "benchmarks/g2g_profile.py",
                                                         *sys.argv[1:]]),
        "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    print(save_results(args.out, payload, render))


if __name__ == "__main__":
    main()
