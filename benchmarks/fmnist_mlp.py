"""Fashion-MNIST comparisons: backprop beside the local rules on the same data and budget.

`bioplaus bench` with this repository's results folder (``benchmarks/results/``) and its default
rows; see ``bioplaus/bench.py`` for what is measured. ``--override key=value`` is accepted as well
as a plain ``key=value``:

    python benchmarks/fmnist_mlp.py fmnist_bp_mlp fmnist_mf_mlp threads=1
    python benchmarks/fmnist_mlp.py fmnist_ff_mlp --seeds 0 1 2
    python benchmarks/fmnist_mlp.py fmnist_noprop_dt fmnist_bp_cnn --name fmnist_local device=cuda

Needs the Fashion-MNIST IDX files (``apt-get install dataset-fashion-mnist`` on Debian, or
``data.root=DIR``, or ``data.download=true`` where there is internet).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bioplaus.bench import main
from bioplaus.errors import UsageError

HERE = Path(__file__).resolve().parent
DEFAULT_EXPERIMENTS = ["fmnist_bp_mlp", "fmnist_mf_mlp", "fmnist_ff_mlp"]

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--override"]
    try:
        print(main(args, DEFAULT_EXPERIMENTS, out=HERE / "results", name="fmnist_mlp",
                   prog="python benchmarks/fmnist_mlp.py"))
    except UsageError as e:
        print(f"fmnist_mlp.py: error: {e}", file=sys.stderr)
        sys.exit(2)
