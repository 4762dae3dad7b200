"""Digits with the default configs: `hebbian` (krotov, softhebb, oja, and krotov with the paper's
readout) and `local_aux aux=man`, each beside the same readout on the same net whose hidden
weights stay untrained (the plasticity rate held at 0; for MAN the hidden blocks frozen at their
initialisation, only the head trained).

Both variants of a row are built from the same composed config and seed (so the same initial
weights and batch order) and trained for the config's epochs with `Learner.train_step` and
`on_epoch_end`, as `bioplaus run` does; the test accuracy of the last epoch is reported. Writes
``benchmarks/results/digits_hebbian.json`` and ``.md``:

    python benchmarks/digits_hebbian.py
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bioplaus.bench import markdown_header, save_results
from bioplaus.config import compose
from bioplaus.data import train_batches
from bioplaus.engine import build
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
ROWS = {
    "hebbian krotov": ["learner=hebbian"],
    "hebbian softhebb": ["learner=hebbian", "learner.rule=softhebb"],
    "hebbian oja": ["learner=hebbian", "learner.rule=oja"],
    "hebbian krotov, paper readout": ["learner=hebbian", "learner.readout=krotov", "learner.power=4.5",
                                      "learner.lr=0.01"],
    "local_aux man": ["learner=local_aux", "learner.aux=man"],
}


def freeze_hidden(learner: Any) -> None:
    """Keep the hidden weights at their initialisation."""
    if learner.name == "hebbian":
        count = len(learner.circuit.blocks)
        learner.rates = lambda epochs_done: [0.0] * count
        learner.hebb_lr.zero_()
    else:  # local_aux: no gradient step for the hidden blocks (the head is the last block)
        for block in list(learner.circuit.blocks)[:-1]:
            block.requires_grad_(False)


def accuracy(overrides: list[str], trained: bool) -> tuple[float, float]:
    cfg = compose([*overrides, "threads=1"])
    data, _, learner = build(cfg)
    if not trained:
        freeze_hidden(learner)
    start = time.perf_counter()
    for epoch in range(1, int(cfg.trainer.epochs) + 1):
        gen = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + epoch)
        for x, y in train_batches(data.train_x, data.train_y, int(cfg.trainer.batch_size), gen):
            learner.train_step(x, y)
        learner.on_epoch_end(epoch)
    seconds = time.perf_counter() - start
    return learner.evaluate(data.test_x, data.test_y, 1000)["accuracy"], seconds


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    lines = markdown_header(
        "Digits: what the local rules add over untrained hidden weights", payload,
        f"Commit {payload['commit']}. Command: `{payload['command']}`. scikit-learn's 8×8 digits, "
        "the default configs (`bioplaus run learner=…`, seed 0), test accuracy after the last "
        "epoch; `untrained hidden`: the same readout trained the same way on the same net whose "
        "hidden weights keep their initial values.")
    lines += ["| config | overrides | test acc. | untrained hidden | gain (points) | train s |",
              "|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['row']} | `{' '.join(r['overrides'])}` | {r['test_accuracy']:.4f} | "
                     f"{r['untrained_test_accuracy']:.4f} | "
                     f"{100 * (r['test_accuracy'] - r['untrained_test_accuracy']):+.2f} | "
                     f"{r['train_seconds']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> Path:
    torch.set_num_threads(1)
    rows = []
    for name, overrides in ROWS.items():
        acc, seconds = accuracy(overrides, trained=True)
        base, _ = accuracy(overrides, trained=False)
        rows.append({"row": name, "overrides": overrides, "test_accuracy": acc,
                     "untrained_test_accuracy": base, "train_seconds": round(seconds, 2)})
        print(f"{name}: {acc:.4f} (untrained hidden {base:.4f})", file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    payload = {"rows": rows, "machine": machine_description(torch.device('cpu')),
               "torch": torch.__version__, "commit": commit, "updated": dt.date.today().isoformat(),
               "command": "python benchmarks/digits_hebbian.py"}
    return save_results(HERE / "results" / "digits_hebbian.json", payload, write_markdown)


if __name__ == "__main__":
    print(main())
