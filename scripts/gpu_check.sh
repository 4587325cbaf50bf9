#!/usr/bin/env bash
# GPU checks, one prepared script for a lent CUDA machine: kernel tests on CUDA (bf16/fp16), the attention
# benchmark on flash-backed SDPA, and the per-family patch equivalence in bf16. Prints the card first.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY - <<'PY'
import torch
print("card:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA", "| torch", torch.__version__)
PY
rc=0
$PY -m pytest -q tests/test_kernel.py -k cuda || rc=1
$PY -m dna_vlm bench --device cuda --dtype bfloat16 --compare-forms --reps 20 --json "${OUT:-.}/bench_cuda.json" || rc=1
[ -f scripts/gpu_check_families.py ] && { $PY scripts/gpu_check_families.py || rc=1; }
exit $rc
