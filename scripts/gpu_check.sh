#!/usr/bin/env bash
# GPU checks: one prepared script for a lent CUDA machine. Prints one summary table; exits non-zero on any failure.
#
#   kernel     the DnA kernel on every SDPA backend (flash, efficient, cuDNN, math), bf16/fp16, N = 197/577/729/4096,
#              none/bool/float masks and varlen, forward + backward, against an fp64 reference
#              (scripts/gpu_check_kernel.py), and the CUDA cases of tests/test_kernel.py
#   families   every family's preserve-init equivalence in bf16 under sdpa (and flash_attention_2 where
#              flash_attn is installed), tuned bf16-vs-fp32, generate (scripts/gpu_check_families.py)
#   train-bf16 a 50-step tiny-model train, fp32 weights + bf16 mixed precision; then with the model in bf16
#              (DnA's own parameters must still move: lambda leaves 0.5)
#   train-4bit the same with the LLM in 4-bit (bitsandbytes)
#   bench      `dna-vlm bench` in bf16 (ratios against stock attention, same run)
#   fsdp       DDP vs FSDP2 tiny-model trainings on all visible GPUs (NPROC to override): steps/s, peak memory
#              per process, losses must agree (scripts/gpu_check_fsdp.py)
#
# Usage: bash scripts/gpu_check.sh [stage ...]   (default: all). Outputs go to $OUT (or ./gpu_check_out).
# If dna-vlm is not installed (a bare GPU machine), it is staged from this checkout into a temp dir; wheels in
# .whl/ (decord, bitsandbytes, ...) are installed first when present; .gpu_data/{data,tiny} (from
# `dna-vlm synth-data` and `dna-vlm tiny-model` on any machine) are used instead of building them here.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
STAGES=${*:-"kernel families train-bf16 train-4bit bench fsdp"}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
WORK=$(mktemp -d)
if ! (cd "$WORK" && $PY -c "import dna_vlm.adapters, dna_vlm.eval" 2>/dev/null); then
  # stage the package as it installs (adapters/ and eval/ live under dna_vlm), run from outside the checkout
  mkdir -p "$WORK/stage" && cp -r "$ROOT/dna_vlm" "$WORK/stage/dna_vlm"
  cp -r "$ROOT/adapters" "$WORK/stage/dna_vlm/adapters" && cp -r "$ROOT/eval" "$WORK/stage/dna_vlm/eval"
  export PYTHONPATH=$WORK/stage${PYTHONPATH:+:$PYTHONPATH}
fi
cd "$WORK" || exit 1
DNA="$PY -m dna_vlm"
$PY - <<'PY'
import torch, transformers
print("card:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA",
      "| torch", torch.__version__, "| cuda", torch.version.cuda, "| transformers", transformers.__version__)
PY

declare -a SUMMARY
rc=0
stage() {  # stage NAME CMD...: run, time, record
  local name=$1; shift
  local t0=$SECONDS
  echo; echo "=== $name: $*"
  if "$@" 2>&1 | tee "$OUT/$name.log"; then st=ok; else st=FAIL; rc=1; fi
  SUMMARY+=("$(printf '%-12s %6ss  %s' "$name" $((SECONDS - t0)) "$st")")
}

lambda_moved() {  # every lambda of the run's DnA weights left its 0.5 start
  $PY - "$1" <<'PY'
import sys
from safetensors.torch import load_file
t = load_file(f"{sys.argv[1]}/dna/dna_weights.safetensors")
lam = [v.float() for k, v in t.items() if k.endswith("neg_scale")]
dev = max(float((v - 0.5).abs().max()) for v in lam)
print(f"lambda: {len(lam)} tensors, dtype {t[next(k for k in t if k.endswith('neg_scale'))].dtype}, max |lambda - 0.5| = {dev:.2e}")
sys.exit(0 if dev > 1e-4 else 1)
PY
}

tiny_setup() {  # a prepared copy in .gpu_data/ (made on a CPU machine: no PyAV needed here) or build one
  [ -d "$ROOT/.gpu_data/data" ] && [ ! -e "$WORK/data" ] && cp -r "$ROOT/.gpu_data/data" "$WORK/data"
  [ -d "$ROOT/.gpu_data/tiny" ] && [ ! -e "$WORK/tiny" ] && cp -r "$ROOT/.gpu_data/tiny" "$WORK/tiny"
  [ -f "$WORK/data/meta.json" ] || $DNA synth-data "$WORK/data" --n-train 64 --n-val 16 --n-test 16 >/dev/null
  [ -d "$WORK/tiny" ] || $DNA tiny-model "$WORK/tiny" >/dev/null
}

train() {  # train NAME extra-args...
  local name=$1; shift
  tiny_setup && $DNA train --model "$WORK/tiny" --data "$WORK/data/train.jsonl" --output "$WORK/runs/$name" \
    --attention dna --max-steps 50 --batch-size 4 --lr 1e-3 --device "${DEVICE:-cuda}" --no-progress "$@" \
    && lambda_moved "$WORK/runs/$name"
}

for s in $STAGES; do
  case $s in
    kernel)
      stage kernel $PY "$ROOT/scripts/gpu_check_kernel.py"
      stage kernel-tests $PY -m pytest -q -p no:cacheprovider "$ROOT/tests/test_kernel.py" -k cuda ;;
    families) stage families $PY "$ROOT/scripts/gpu_check_families.py" ;;
    train-bf16)
      stage train-mp-bf16 train mp --mixed-precision bf16
      stage train-bf16 train bf16 --dtype bfloat16 ;;
    train-4bit) stage train-4bit train q4 --load-in-4bit --mixed-precision bf16 ;;
    bench) stage bench $DNA bench --device cuda --dtype bfloat16 --compare-forms --reps 20 --json "$OUT/bench_cuda.json" ;;
    fsdp)
      NPROC=${NPROC:-$($PY -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
      tiny_setup && stage fsdp $PY "$ROOT/scripts/gpu_check_fsdp.py" --model "$WORK/tiny" \
        --data "$WORK/data/train.jsonl" --out "$OUT/fsdp" --processes "$NPROC" --device "${DEVICE:-cuda}" \
        --mixed-precision bf16 -- --num-frames 8 --batch-size 4 --lr 1e-3 ;;
    *) echo "unknown stage $s"; rc=2 ;;
  esac
done

echo; echo "=== summary ($(date -u +%FT%TZ))"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
exit $rc
