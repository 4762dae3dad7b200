"""Fashion-MNIST: Hebbian feature learning (krotov, softhebb, oja) beside two baselines measured in
the same process — a linear classifier on the raw pixels and backprop on the same 784-2000-10 net.

Every row trains on the same split of the data, with pixels scaled to [0, 1]
(``data.normalize=unit``, as in the Krotov–Hopfield paper) except where its preset whitens them
(``data.normalize=zca``: the krotov preset, and the ``linear_zca`` row, the linear classifier on
those whitened pixels), one row after another in this process; the 1-minute load average is
recorded before and after each row (the machine may be shared: a load above the thread count slows
every row). Presets: ``fmnist_hebbian_krotov`` (2000 units, p = 3, k = 7, Δ = 0.4, the paper's
readout tanh(β S f), f = max(z, 0)^2, loss Σ|c − t|^6), ``fmnist_hebbian_softhebb``,
``fmnist_hebbian_oja``. Writes
``benchmarks/results/fmnist_hebbian.json`` and ``.md``:

    python benchmarks/fmnist_hebbian.py                      # every row, the presets' budgets
    python benchmarks/fmnist_hebbian.py --epochs 3 --rows linear krotov

Needs the Fashion-MNIST IDX files (``apt-get install dataset-fashion-mnist`` on Debian, or
``data.root=DIR``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from bioplaus.bench import markdown_header, save_results
from bioplaus.config import compose
from bioplaus.data import load
from bioplaus.engine import train
from bioplaus.errors import UsageError
from bioplaus.tracking import machine_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_hebbian import accuracy as frozen_accuracy

HERE = Path(__file__).resolve().parent
NET = ["circuit=mlp", "circuit.hidden=[2000]"]
PIXELS = ["data=fashion_mnist", "data.normalize=unit"]
ROWS: dict[str, list[str]] = {
    "linear": ["learner=backprop", *PIXELS, "circuit=mlp", "circuit.hidden=[]"],
    "linear_zca": ["learner=backprop", "data=fashion_mnist", "data.normalize=zca", "circuit=mlp",
                   "circuit.hidden=[]"],
    "backprop": ["learner=backprop", *PIXELS, *NET],
    "krotov": ["experiment=fmnist_hebbian_krotov"],
    "softhebb": ["experiment=fmnist_hebbian_softhebb"],
    "oja": ["experiment=fmnist_hebbian_oja"],
}
WHAT = {
    "linear": "linear classifier on raw pixels (784-10, softmax + CE, Adam)",
    "linear_zca": "the same linear classifier on the ZCA-whitened pixels krotov learns from",
    "backprop": "backprop on the same net 784-2000-10 (ReLU, Adam)",
    "krotov": "krotov 784-2000 (p = 3, k = 7, Δ = 0.4) on ZCA-whitened pixels, readout tanh(β S f), "
              "f = max(z,0)^2, loss Σ (c−t)^6",
    "softhebb": "softhebb 784-2000 (1/τ = 12, adaptive rate), linear readout",
    "oja": "oja subspace rule 784-2000, linear readout",
}

INPUTS = {"unit": "pixels in [0, 1]", "zca": "ZCA-whitened"}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_row(name: str, common: list[str], loaded: dict[str, Any], runs: Path, untrained: bool,
            seed: int) -> dict[str, Any]:
    cfg = compose([*ROWS[name], *common])
    key = OmegaConf.to_yaml(cfg.data)  # rows with the same data options share one loaded copy
    if key not in loaded:
        loaded[key] = load(cfg.data, seed=seed, device="cpu")
    data = loaded[key]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    summary = train(cfg, data=data, run_dir=runs / name, quiet=True, unique_run_dir=True)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    row = {
        "row": name, "what": WHAT[name], "learner": str(cfg.learner.name),
        "test_accuracy": summary["test_accuracy"], "epochs": int(cfg.trainer.epochs),
        "batch_size": int(cfg.trainer.batch_size), "train_seconds": summary["train_seconds"],
        "wall_seconds": round(wall, 1), "samples_per_second": summary["samples_per_second"],
        "load_before": round(load_before, 2), "load_after": round(load_after, 2),
        "run_dir": summary["run_dir"], "normalize": str(cfg.data.normalize),
        "train_images": int(data.train_x.shape[0]),
    }
    if cfg.learner.name == "hebbian":
        row["hebbian_epochs"] = int(cfg.learner.hebbian_epochs)
        if untrained:  # the same readout, config and seed, the plasticity rate held at 0
            row["untrained_test_accuracy"] = frozen_accuracy([*ROWS[name], *common], trained=False)[0]
    print(f"{name}: test accuracy {row['test_accuracy']:.4f} (untrained hidden "
          f"{row.get('untrained_test_accuracy', float('nan')):.4f}), {row['train_seconds']:.0f} s training, "
          f"load {load_before:.1f}→{load_after:.1f}", file=sys.stderr, flush=True)
    return row


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    rows = {r["row"]: r for r in payload["rows"]}
    lines = markdown_header(
        "Fashion-MNIST: Hebbian feature learning beside a raw-pixel linear classifier and backprop",
        payload,
        f"Commit {payload['commit']}. Command: `{payload['command']}`. The rows ran one after another "
        "in that process or in earlier calls with the same budget (a re-run row replaces its own), "
        "on the same "
        f"data (training images: {payload['train_images']} after the seeded validation split; the "
        "10 000 test images; pixels scaled to [0, 1], or ZCA-whitened with statistics of the training "
        "split where the row says so, column `inputs`); test accuracy of the last epoch. Each row "
        "trains for its own preset's epochs (column `epochs`, the plasticity epochs in brackets) "
        "unless `--epochs` sets one budget for all. "
        "`train s` is training time only; `load` is the 1-minute load average before → "
        "after the row (the machine has 2 cores and was shared: times at a load above 1 are slower "
        "than an idle machine's, ratios between rows are rougher still). `untrained hidden`: the same "
        "readout, config and seed with the plasticity rate held at 0 (the hidden weights keep their "
        "initial values), test accuracy after the last epoch — what the plasticity adds.")
    lines += ["| row | what | inputs | test acc. (%) | vs linear (points) | vs backprop (points) | untrained "
              "hidden (%) | epochs (plasticity) | batch | train s | samples/s | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    linear = rows.get("linear", {}).get("test_accuracy")
    backprop = rows.get("backprop", {}).get("test_accuracy")
    for r in payload["rows"]:
        acc = r["test_accuracy"]
        vs_lin = f"{100 * (acc - linear):+.2f}" if linear is not None else "—"
        vs_bp = f"{100 * (acc - backprop):+.2f}" if backprop is not None else "—"
        epochs = f"{r['epochs']} ({r['hebbian_epochs']})" if "hebbian_epochs" in r else str(r["epochs"])
        base = f"{100 * r['untrained_test_accuracy']:.2f}" if "untrained_test_accuracy" in r else "—"
        inputs = INPUTS.get(r.get("normalize", "unit"), r.get("normalize"))
        lines.append(f"| {r['row']} | {r['what']} | {inputs} | {100 * acc:.2f} | {vs_lin} | {vs_bp} | "
                     f"{base} | "
                     f"{epochs} | {r['batch_size']} | {r['train_seconds']:.0f} | "
                     f"{r['samples_per_second']:.0f} | "
                     f"{r['load_before']:.1f} → {r['load_after']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--epochs", type=int, default=None, help="trainer.epochs of every row")
    parser.add_argument("--hebbian-epochs", type=int, default=None,
                        help="learner.hebbian_epochs of the rules")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-subset", type=int, default=None,
                        help="train on the first N images of the training split (the test split stays whole)")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench" / "fmnist_hebbian")
    parser.add_argument("--no-untrained", dest="untrained", action="store_false",
                        help="skip the untrained-hidden run beside each Hebbian row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    common = [f"threads={args.threads}", f"seed={args.seed}", "trainer.progress=none",
              "trainer.checkpoint=false", "trainer.batch_size=100"]
    if args.epochs:
        common.append(f"trainer.epochs={args.epochs}")
    if args.train_subset:
        common.append(f"data.train_subset={args.train_subset}")
    if args.hebbian_epochs:
        common.append(f"learner.hebbian_epochs={args.hebbian_epochs}")
    hebbian_only = [o for o in common if o.startswith("learner.")]
    shared = [o for o in common if not o.startswith("learner.")]
    code = commit()  # the code the rows run (taken before they run: HEAD may move meanwhile)
    loaded: dict[str, Any] = {}
    rows = []
    for name in args.rows:
        extra = hebbian_only if name not in ("linear", "linear_zca", "backprop") else []
        rows.append(run_row(name, [*shared, *extra], loaded, args.runs, args.untrained, args.seed))
    out_json = HERE / "results" / "fmnist_hebbian.json"
    done = {r["row"] for r in rows}
    kept = []  # rows of an earlier call with the same command budget stay (re-run rows replace theirs)
    if out_json.exists():
        old = json.loads(out_json.read_text())
        if old.get("budget") == common:
            kept = [r for r in old["rows"] if r["row"] not in done]
    order = list(ROWS)
    rows = sorted(kept + rows, key=lambda r: order.index(r["row"]))
    payload = {
        "title": "Fashion-MNIST: Hebbian rules beside linear and backprop", "rows": rows, "budget": common,
        "machine": machine_description(torch.device('cpu')),
        "torch": torch.__version__, "commit": code, "updated": dt.date.today().isoformat(),
        "command": " ".join(["python benchmarks/fmnist_hebbian.py", *argv]),
        "train_images": rows[0]["train_images"],
    }
    return save_results(out_json, payload, write_markdown)


if __name__ == "__main__":
    try:
        print(main(sys.argv[1:]))
    except UsageError as e:
        sys.exit(f"fmnist_hebbian.py: error: {e}")
