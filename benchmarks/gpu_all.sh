#!/usr/bin/env bash
# Re-measure every GPU figure of the benchmarks, with the provenance `bioplaus bench` records (commit,
# command, load before/after, per-run peak memory, whether each step ran as a CUDA graph, kept
# summary.json + metrics.jsonl under benchmarks/results/runs/). Run from the repository root on a
# machine with one CUDA device and the Fashion-MNIST IDX files:
#
#     FASHION_MNIST_DIR=/path/to/fashion bash benchmarks/gpu_all.sh            # all parts, ~25 min on an H100
#     FASHION_MNIST_DIR=/path/to/fashion bash benchmarks/gpu_all.sh mlp graphs # some parts
#
# Parts: mlp (the MLP presets, three seeds where the table had them), conv (NoProp-DT and the conv net
# beside it, 100 epochs), graphs (eager vs captured steps, benchmarks/cuda_graphs.py). Results:
# benchmarks/results/fmnist_gpu.{json,md} and cuda_graphs.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DATA=()
if [[ -n "${FASHION_MNIST_DIR:-}" ]]; then DATA=("data.root=$FASHION_MNIST_DIR"); fi
parts=("$@")
if [[ ${#parts[@]} -eq 0 ]]; then parts=(mlp conv graphs); fi
for part in "${parts[@]}"; do
  case "$part" in
    mlp)
      "$PY" benchmarks/fmnist_mlp.py fmnist_bp_mlp fmnist_mf_mlp fmnist_bp_ccl_mlp fmnist_ccl_mlp \
        fmnist_tpsgd_ce_mlp --seeds 0 1 2 --name fmnist_gpu --title "Fashion-MNIST on one GPU" \
        device=cuda "${DATA[@]}"
      "$PY" benchmarks/fmnist_mlp.py fmnist_ff_mlp fmnist_ff_mlp_paper fmnist_tpsgd_mlp fmnist_drtp_mlp \
        fmnist_bp_drtp_mlp --name fmnist_gpu device=cuda "${DATA[@]}" ;;
    conv)
      "$PY" benchmarks/fmnist_mlp.py fmnist_noprop_dt fmnist_bp_cnn --name fmnist_gpu device=cuda "${DATA[@]}" ;;
    graphs)
      overrides=()
      if [[ ${#DATA[@]} -gt 0 ]]; then overrides=(--override "${DATA[0]}"); fi
      "$PY" benchmarks/cuda_graphs.py --epochs 2 "${overrides[@]}" ;;
    *) echo "gpu_all.sh: unknown part '$part' (mlp, conv, graphs)" >&2; exit 2 ;;
  esac
done
