"""Every learning test's floor next to what a rule whose hidden layers learn nothing scores.

Runs the learning tests (those using the ``untrained`` fixture, marked ``floors``) with
``BIOPLAUS_FLOORS_LOG`` set. Each such test trains its learner, measures the
same learner, circuit, data and readout with the circuit's hidden blocks restored to their initial
values after every step (the frozen-hidden-layer mutation of ``tests/floors.py``; heads,
projections, feedback and auxiliary nets still train), and asserts trained > frozen + margin; the
log holds the three figures. Written to ``benchmarks/results/floors.json`` and ``floors.md``.

    python benchmarks/floors.py            # the default suite's learning tests
    python benchmarks/floors.py --slow     # the slow ones too
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def run_tests(slow: bool, log: Path) -> int:
    env = {**os.environ, "BIOPLAUS_FLOORS_LOG": str(log), "OMP_NUM_THREADS": "1"}
    # the tests using the `untrained` fixture are marked `floors` (tests/conftest.py); gpu tests skip
    # themselves without CUDA
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", "-m",
            "floors" if slow else "floors and not slow"]
    return subprocess.run(args, cwd=REPO, env=env).returncode


def write(rows: list[dict], command: str, seconds: float, load: tuple[float, ...]) -> None:
    sys.path.insert(0, str(REPO))
    from bioplaus.bench import code_version

    commit = code_version()
    machine = f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    for row in rows:
        row.update(commit=commit, command=command)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "floors.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Learning-test floors against frozen hidden layers",
        "",
        f"Commit `{commit}`; command `{command}`; machine {machine}; {seconds:.0f} s; load average "
        f"{load[0]:.1f} at the start (accuracies are deterministic, timings not recorded).",
        "",
        "`frozen` is the test accuracy of the same learner, circuit, data and readout with the "
        "circuit's hidden blocks restored to their initial values after every step (heads, "
        "projections, feedback and auxiliary nets still train); each test asserts "
        "`trained > frozen + margin`.",
        "",
        "| test | frozen | margin | floor | trained | passes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['test']} | {r['untrained']:.4f} | {r['margin']} | {r['floor']:.4f} | "
                     f"{r['trained']:.4f} | {'yes' if r['passed'] else 'NO'} |")
    (RESULTS / "floors.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", action="store_true", help="include the tests marked slow")
    args = parser.parse_args()
    command = "python benchmarks/floors.py" + (" --slow" if args.slow else "")
    load = os.getloadavg()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "floors.jsonl"
        code = run_tests(args.slow, log)
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    write(rows, command, time.time() - start, load)
    width = max((len(r["test"]) for r in rows), default=4)
    print(f"{'test':{width}}  frozen  floor   trained")
    for r in rows:
        print(f"{r['test']:{width}}  {r['untrained']:.4f}  {r['floor']:.4f}  {r['trained']:.4f}"
              + ("" if r["passed"] else "  FAILS"))
    print(f"written: {RESULTS / 'floors.json'}, {RESULTS / 'floors.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
