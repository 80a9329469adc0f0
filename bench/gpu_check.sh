#!/usr/bin/env bash
# Run both throughput benchmarks on a CUDA device (bf16 where the GPU supports it) and print the
# same result lines as on the CPU. Usage: bash bench/gpu_check.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-gpu/bin/python ]; then
  $PY -m venv .venv-gpu
  .venv-gpu/bin/pip install -q --upgrade pip
  .venv-gpu/bin/pip install -q torch   # the CUDA build from PyPI
  .venv-gpu/bin/pip install -q -e ".[dev]"
fi
.venv-gpu/bin/python - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
PYEOF
.venv-gpu/bin/python bench/mlm_throughput.py --batch_size 128 "$@" | grep -E "^(machine|hidden|speedup)"
if [ -f bench/mim_throughput.py ]; then
  .venv-gpu/bin/python bench/mim_throughput.py --cases 28px,224px "$@" | grep -E "^(machine|  [0-9]+px over|mae_speedup)"
fi
