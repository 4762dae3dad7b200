"""The associative-memory experiments, run as presets and gathered into one table.

* ``hopfield_capacity`` at N = 1000 and N = 2000: α_c (largest load with mean overlap ≥ 0.9);
* ``multitask_hierarchy`` (K = 3, N = 10 000), several seeds: the mean sorted |m_k| at each d
  beside (1 − d) d^{k−1};
* ``hebbian_fmnist`` and ``hebbian_fmnist_unsupervised``: the attractor classification and
  overlap beside the nearest-class-mean classifier on the same binarised images.

Writes ``benchmarks/results/memory_experiments.json`` and ``.md`` (machine, commit, command, load
average) and copies each run's figure next to them:

    python benchmarks/memory_experiments.py [--seeds 0 1 2] [--only capacity hierarchy fmnist]
                                            [--neurons 1000 2000]

Each part merges its rows into the results file as it ends, so parts can run side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

import bioplaus
from bioplaus.bench import code_version, markdown_header, save_results
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = Path("runs") / "memory_experiments"
FIGURES = RESULTS / "memory"


def _commit() -> str:
    return code_version(HERE)


def _run(experiment: str, seed: int, *overrides: str) -> dict[str, Any]:
    cfg = bioplaus.compose([f"experiment={experiment}", f"seed={seed}", f"paths.runs={RUNS}",
                            "trainer.progress=none", *overrides])
    load = os.getloadavg()[0]
    summary = bioplaus.train(cfg, quiet=True)
    summary["load_average"] = round(max(load, os.getloadavg()[0]), 2)
    return summary


def _keep_figure(summary: dict[str, Any], name: str) -> str:
    FIGURES.mkdir(parents=True, exist_ok=True)
    target = FIGURES / name
    shutil.copyfile(Path(summary["run_dir"]) / summary["figure"], target)
    return str(target.relative_to(RESULTS))


def capacity(seeds: list[int], neurons: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in neurons:
        step = n // 100                                   # load steps of 0.01
        for seed in seeds[:1]:
            s = _run("hopfield_capacity", seed, f"data.neurons={n}", f"data.patterns={n // 4}",
                     f"learner.patterns_per_epoch={step}", f"trainer.batch_size={step}")
            rows.append({"experiment": "hopfield_capacity", "neurons": n, "seed": seed,
                         "alpha_c": s["alpha_c"], "seconds": s["train_seconds"],
                         "load_average": s["load_average"],
                         "figure": _keep_figure(s, f"capacity_N{n}.png"), "run_dir": s["run_dir"]})
    return rows


def hierarchy(seeds: list[int], neurons: list[int]) -> list[dict[str, Any]]:
    summaries = [_run("multitask_hierarchy", seed) for seed in seeds]
    nets = sorted({int(k.split("_")[1][3:]) for k in summaries[0] if k.startswith("test_net")
                   and k.endswith("_dilution")})
    rows = []
    for j in nets:
        d = sum(s[f"test_net{j}_dilution"] for s in summaries) / len(summaries)
        measured = [sum(s[f"test_net{j}_overlap_{k}"] for s in summaries) / len(summaries)
                    for k in (1, 2, 3)]
        theory = [(1 - d) * d ** (k - 1) for k in (1, 2, 3)]
        error = max(abs(a - b) for a, b in zip(measured, theory, strict=True))
        rows.append({"experiment": "multitask_hierarchy", "d": round(d, 4), "seeds": seeds,
                     "measured": [round(m, 4) for m in measured], "theory": [round(t, 4) for t in theory],
                     "max_abs_error": round(error, 4),
                     "spread": round(measured[0] - measured[2], 4),
                     "theory_spread": round(theory[0] - theory[2], 4)})
    rows[0]["figure"] = _keep_figure(summaries[0], "hierarchy.png")
    rows[0]["load_average"] = max(s["load_average"] for s in summaries)
    return rows


def fmnist(seeds: list[int], neurons: list[int]) -> list[dict[str, Any]]:
    rows = []
    for experiment in ("hebbian_fmnist", "hebbian_fmnist_unsupervised"):
        for seed in seeds[:1]:
            s = _run(experiment, seed)
            rows.append({"experiment": experiment, "seed": seed, "protocol": s["protocol"],
                         "test_overlap": s["test_overlap"],
                         "test_archetype_accuracy": s["test_archetype_accuracy"],
                         "test_ncm_accuracy": s["test_ncm_accuracy"],
                         "test_retrieved_fraction": s["test_retrieved_fraction"],
                         "load_average": s["load_average"],
                         "figure": _keep_figure(s, f"{experiment}.png"), "run_dir": s["run_dir"]})
    return rows


def render(path: Path, payload: dict[str, Any]) -> None:
    lines = markdown_header(
        "Associative memory experiments", payload,
        f"Commit {payload['commit']}; commands {payload['command']}. The machine is shared with "
        "other work: `load` is its 1-minute load average around each run. Figures in "
        "`memory/`.")
    cap = [r for r in payload["rows"] if r["experiment"] == "hopfield_capacity"]
    if cap:
        lines += ["## Hopfield capacity (T = 0, stored patterns started from themselves)", "",
                  "| N | seed | α_c (largest load with mean overlap ≥ 0.9) | theory | load | figure |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['neurons']} | {r['seed']} | {r['alpha_c']:.2f} | 0.138 (N → ∞) "
                  f"| {r['load_average']} | {r['figure']} |" for r in cap]
        lines.append("")
    hier = [r for r in payload["rows"] if r["experiment"] == "multitask_hierarchy"]
    if hier:
        lines += ["## Multitasking network, K = 3, N = 10 000 (mean over seeds "
                  f"{', '.join(map(str, hier[0]['seeds']))}; 8 replicas each)", "",
                  "| d (measured) | sorted \\|m_k\\| measured | (1 − d) d^{k−1} | max error "
                  "| m_1 − m_3 measured / predicted |", "|---|---|---|---|---|"]
        lines += [f"| {r['d']:.3f} | {', '.join(f'{m:.3f}' for m in r['measured'])} "
                  f"| {', '.join(f'{t:.3f}' for t in r['theory'])} | {r['max_abs_error']:.3f} "
                  f"| {r['spread']:.3f} / {r['theory_spread']:.3f} |" for r in hier]
        lines += ["", f"Figure: {hier[0]['figure']}.", ""]
    fm = [r for r in payload["rows"] if r["experiment"].startswith("hebbian_fmnist")]
    if fm:
        lines += ["## Binarised Fashion-MNIST, M = 100 examples per class stored, 1000 test cues", "",
                  "| protocol | attractor classification | nearest class mean (same images) "
                  "| mean overlap with own archetype | retrieved (m ≥ 0.95) | load | figure |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['protocol']} | {100 * r['test_archetype_accuracy']:.1f} % "
                  f"| {100 * r['test_ncm_accuracy']:.1f} % | {r['test_overlap']:.3f} "
                  f"| {100 * r['test_retrieved_fraction']:.1f} % | {r['load_average']} "
                  f"| {r['figure']} |" for r in fm]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=("capacity", "hierarchy", "fmnist"), nargs="+",
                        default=["capacity", "hierarchy", "fmnist"])
    parser.add_argument("--neurons", type=int, nargs="+", default=[1000, 2000],
                        help="capacity: network sizes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = {"capacity": capacity, "hierarchy": hierarchy, "fmnist": fmnist}
    for part in args.only:
        rows = parts[part](args.seeds, args.neurons)
        print(save(rows), flush=True)


def save(rows: list[dict[str, Any]]) -> Path:
    """Merge ``rows`` into the results file (read now: processes run side by side keep each
    other's rows) and rewrite its JSON and Markdown."""
    out = RESULTS / "memory_experiments.json"
    command = "OMP_NUM_THREADS=1 python " + " ".join(["benchmarks/memory_experiments.py", *sys.argv[1:]])
    for r in rows:
        r["command"], r["commit"] = command, _commit()
    payload: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"rows": []}
    keys = {(r["experiment"], r.get("neurons")) for r in rows}
    payload["rows"] = [r for r in payload["rows"] if (r["experiment"], r.get("neurons")) not in keys] + rows
    payload["rows"].sort(key=lambda r: (r["experiment"], r.get("neurons") or 0))
    payload.update(machine=machine_description(torch.device("cpu")), torch=torch.__version__,
                   updated=dt.date.today().isoformat(),
                   commit=", ".join(sorted({r["commit"] for r in payload["rows"]})),
                   command="; ".join(sorted({f"`{r['command']}`" for r in payload["rows"]})))
    return save_results(out, payload, render)


if __name__ == "__main__":
    main()
