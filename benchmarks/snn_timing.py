"""Time per epoch of `learner=dcls`: delay synapses against plain linear synapses, SLTT against
full BPTT, measured side by side in one process.

An epoch here is ``--steps`` training steps of batch ``--batch`` on SHD-shaped input (140
channels × T steps, 20 classes) through 2 × ``--width`` LIF neurons. The configurations run in
alternation, ``--rounds`` times, so that load from other processes spreads over all of them; each
row records the median, and the 1-minute load average when it ran (``os.getloadavg``). Writes
``benchmarks/results/snn_timing.json`` and ``.md``:

    python benchmarks/snn_timing.py            # a few minutes on CPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bioplaus.bench import markdown_header, save_results
from bioplaus.circuits.snn import SNN
from bioplaus.core import Task
from bioplaus.learners.dcls import Dcls
from bioplaus.tracking import machine_description

HERE = Path(__file__).resolve().parent
CONFIGS = (("linear", "full"), ("delay (DCLS)", "full"), ("linear", "sltt"), ("delay (DCLS)", "sltt"))


def make(synapses: str, bptt: str, args: argparse.Namespace, device: torch.device) -> tuple[Dcls, list]:
    torch.manual_seed(0)
    task = Task((args.steps_t, 140), 20)
    net = SNN(task, hidden=[args.width, args.width], delays=synapses != "linear", max_delay=25,
              dropout=0.4).to(device)
    learner = Dcls(net, task, bptt=bptt, epochs=10)
    batches = [((torch.rand(args.batch, args.steps_t, 140, device=device) < 0.05).float(),
                torch.randint(0, 20, (args.batch,), device=device)) for _ in range(args.steps)]
    learner.train_step(*batches[0])  # warm-up: optimizer state, lazy imports
    return learner, batches


def epoch_seconds(learner: Dcls, batches: list, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x, y in batches:
        learner.train_step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def write_markdown(path: Path, payload: dict) -> None:
    a = payload["args"]
    lines = [
        *markdown_header(
            "Time per epoch of dcls: delay vs linear synapses, SLTT vs BPTT", payload,
            f"Commit {payload['commit']}; command `{payload['command']}`. An epoch: {a['steps']} steps "
            f"of batch {a['batch']}, input 140 channels × T = {a['steps_t']}, net 2 × {a['width']} LIF → 20 "
            f"(T_d 25 with delays), {a['threads']} CPU thread(s). Configurations alternate, {a['rounds']} "
            "rounds; the median is shown with the 1-minute load average of the machine during its "
            "rounds (the machine was shared: ratios measured side by side are the robust figures)."),
        "| synapses | bptt | s / epoch (median) | vs linear, same bptt | vs full, same synapses | load avg |",
        "|---|---|---|---|---|---|",
    ]
    rows = {(r["synapses"], r["bptt"]): r for r in payload["rows"]}
    for (syn, bptt), r in rows.items():
        vs_linear = r["median_s"] / rows[("linear", bptt)]["median_s"]
        vs_full = r["median_s"] / rows[(syn, "full")]["median_s"]
        lines.append(f"| {syn} | {bptt} | {r['median_s']:.2f} | {vs_linear:.2f} | {vs_full:.2f} "
                     f"| {r['load_avg']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="training steps per epoch")
    parser.add_argument("--steps-t", type=int, default=100, help="time steps T of an example")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    built = {c: make(*c, args, device) for c in CONFIGS}
    times: dict[tuple[str, str], list[float]] = {c: [] for c in CONFIGS}
    loads: dict[tuple[str, str], list[float]] = {c: [] for c in CONFIGS}
    for _ in range(args.rounds):
        for c in CONFIGS:
            times[c].append(epoch_seconds(*built[c], device))
            loads[c].append(os.getloadavg()[0])
            print(c, round(times[c][-1], 3), loads[c][-1], flush=True)
    rows = [{"synapses": c[0], "bptt": c[1], "median_s": statistics.median(times[c]), "seconds": times[c],
             "load_avg": statistics.mean(loads[c]), "load_avgs": loads[c]} for c in CONFIGS]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    payload = {"machine": machine_description(device), "torch": torch.__version__, "commit": commit,
               "command": " ".join(["python", "benchmarks/snn_timing.py", *(argv if argv is not None
                                                                            else sys.argv[1:])]),
               "args": vars(args),
               "updated": dt.date.today().isoformat(), "rows": rows}
    print(save_results(HERE / "results" / "snn_timing.json", payload, write_markdown))


if __name__ == "__main__":
    main()
