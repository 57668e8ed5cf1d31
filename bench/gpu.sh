#!/usr/bin/env bash
# GPU numbers for docs/scaling.md: a few LoRA steps of a llava-1.5-7b-shaped model (random weights, bf16,
# gradient checkpointing) and an embed pass at BiomedCLIP's width; tokens/s, images/s, peak memory.
# Without a CUDA device it measures nothing and changes nothing (`bash bench/gpu.sh --dry` checks the
# script at toy sizes on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--dry" ]]; then
  exec python bench/gpu.py --dry
fi
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "bench/gpu.sh: no CUDA device here; nothing measured, docs/scaling.md unchanged" >&2
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p bench/results
python bench/gpu.py --write docs/scaling.md --json bench/results/gpu.json "$@"
