"""Forward-Forward's element-wise work: one layer's goodness, loss and next-layer normalisation,
forward and backward, three ways on the CPU.

    python benchmarks/ff_fusion.py [--repeats 20]

* ``unfused``: autograd's chain — relu, pow(2), sum for G, then the next layer's normalisation
  computing Σa² again (what forward_forward did before `ReluSquares`);
* ``fused``: `ReluSquares` (relu, Σa² and their backward as one node) and `normalise_given`
  (the sum reused), as forward_forward runs now;
* ``compiled``: ``torch.compile`` of the unfused function (inductor, default mode), its compile
  time reported apart.

The matrix product z = W ĥ is outside the timed region (it is the same for all three). Rows
(2·batch of positives and negatives) and width: 200 × 1000 (784-1000×3 at batch 100) and
20 000 × 500 (a tenth of the full-batch 784-500-500 case). Median ms over ``--repeats``; the JSON
rows carry the commit, command and load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bioplaus.bench import code_version
from bioplaus.learners.forward_forward import ReluSquares, normalise, normalise_given

HERE = Path(__file__).resolve().parent
SHAPES = [(200, 1000), (20_000, 500)]


def unfused(z: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.relu(z)
    g = a.pow(2).sum(dim=1)
    half = g.shape[0] // 2
    loss = (F.softplus(theta - g[:half]) + F.softplus(g[half:] - theta)).mean()
    return loss, normalise(a.detach())


def fused(z: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    a, g = ReluSquares.apply(z)
    half = g.shape[0] // 2
    loss = (F.softplus(theta - g[:half]) + F.softplus(g[half:] - theta)).mean()
    return loss, normalise_given(a.detach(), g.detach())


def time_it(fn, z0: torch.Tensor, theta: float, repeats: int) -> float:
    times = []
    for i in range(repeats + 2):
        z = z0.clone().requires_grad_(True)
        start = time.perf_counter()
        loss, _ = fn(z, theta)
        loss.backward()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    sys.path.insert(0, str(HERE))
    from ff_cost import machine  # the sibling script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = "python benchmarks/ff_fusion.py " + " ".join(sys.argv[1:])
    rows = []
    for n, d in SHAPES:
        torch.manual_seed(0)
        z0, theta = torch.randn(n, d), float(d)
        load = os.getloadavg()[0]
        compiled = torch.compile(unfused)
        start = time.perf_counter()
        time_it(compiled, z0, theta, 1)  # compiles (forward and backward)
        compile_s = time.perf_counter() - start
        ms = {name: [] for name in ("unfused", "fused", "compiled")}
        for _ in range(3):  # alternated
            for name, fn in (("unfused", unfused), ("fused", fused), ("compiled", compiled)):
                ms[name].append(time_it(fn, z0, theta, args.repeats))
        row = {"rows": n, "width": d, "ms": {k: round(statistics.median(v), 3) for k, v in ms.items()},
               "compile_s": round(compile_s, 1), "load_1min": round(load, 2), "commit": code_version(),
               "command": command}
        rows.append(row)
        print(json.dumps(row), flush=True)
    payload = {"benchmark": "ff_fusion", "machine": machine(), "threads": 1, "torch": torch.__version__,
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    out = HERE / "results" / "ff_fusion.json"
    out.write_text(json.dumps(payload, indent=1) + "\n")
    lines = ["# Forward-Forward goodness and normalisation: unfused, fused, torch.compile (CPU)", "",
             f"Machine: {machine()}, one torch thread, torch {torch.__version__}, {payload['date']}. "
             f"Command: `{command}`. "
             "Forward + backward of one layer's goodness, loss and next-layer normalisation (the matrix "
             "product excluded); median ms, the three alternated. No GPU on this machine: not measured "
             "there.", "",
             "| rows × width | unfused | fused | compiled | compile time (s) | load | commit |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rows']} × {r['width']} | {r['ms']['unfused']} | {r['ms']['fused']} | "
                     f"{r['ms']['compiled']} | {r['compile_s']} | {r['load_1min']} | {r['commit']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md"))


if __name__ == "__main__":
    main()
