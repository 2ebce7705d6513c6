#!/usr/bin/env bash
# The GPU checks of the scoring kernel, as one prepared run of at most BUDGET seconds (default 570, under the
# device's 10-minute command limit); BENCHMARKS.md ("GPU") says what each part prints and how to read it.
#
# On the LLaMA-7B / Amber shape (random weights, bf16), each part in its own process with its own time limit
# (never past the budget), one log per part under $OUT (default results/gpu-checks):
#   1. methods     score_throughput.py: HF generate (batch 32) against the kernel's greedy, extractable and NLL
#                  modes at the `auto` batch; agreement of the greedy tokens with generate's, with greedy + NLL's
#                  and with its own at half the batch (a rate, near-ties counted); a 256/512/1024 batch sweep
#   2. decode      decode_memory.py: growing vs static vs static-compiled KV cache at the `auto` batch (2048):
#                  seq/s, compile time, num_alloc_retries, peak reserved/allocated memory, agreement
#   3. expandable  the same for growing and static with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
#   4. flash-attn  growing and static under flash_attention_2, if flash-attn is installed
#
# Needs only torch + transformers + numpy (ray/polars are not imported). Real Amber rows are used when
# MEMSWEEP_SAMPLES names a file in the reference tool's cached format, else random tokens (throughput does not
# depend on the tokens). With this workplace's device tool, from the repo root:
#   mkdir -p results/gpu-samples && cp ../shared/amber-samples/train_355.jsonl results/gpu-samples/
#   device run: command "MEMSWEEP_SAMPLES=results/gpu-samples/train_355.jsonl bash benchmarks/gpu_checks.sh",
#               carry ["results/gpu-samples"], timeout_s 600    (results/ is git-ignored, hence the carry)
# PARTS=decode,expandable (names from the list above) reruns only those parts, e.g. after one ran out of time.
# On a CPU machine the same parts run small: ARCH=small DEVICE=cpu N=64 DECODE_N=64 SWEEP=32,64 bash benchmarks/gpu_checks.sh
set -uo pipefail
out=${OUT:-results/gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
budget=${BUDGET:-570}
parts=",${PARTS:-methods,decode,expandable,flash-attn},"
model=(--arch "${ARCH:-amber-7b}" --device "${DEVICE:-auto}" --samples "${MEMSWEEP_SAMPLES:-/nonexistent}")

part() {  # part NAME SECONDS COMMAND...: one part, limited to SECONDS and to what is left of the budget
    local name=$1 limit=$2
    shift 2
    [[ $parts == *",$name,"* ]] || return 0
    local left=$((budget - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 30)); then
        echo "=== $name: skipped, ${left}s of the ${budget}s budget left" | tee "$out/$name.log"
        return
    fi
    echo "=== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log" | grep -v -i "warn"
    echo "=== $name: exit ${PIPESTATUS[0]}, ${SECONDS}s of the ${budget}s budget used"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  "$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  "$python" -c "import flash_attn; print('flash-attn', flash_attn.__version__)" 2>/dev/null || echo "flash-attn: not installed"
} 2>&1 | tee "$out/env.txt"

part methods 170 "$python" benchmarks/score_throughput.py "${model[@]}" --n "${N:-1024}" --repeats 1 \
    --sweep "${SWEEP:-256,512,1024}"
part decode 260 "$python" benchmarks/decode_memory.py "${model[@]}" --n "${DECODE_N:-2048}" --repeats 2 \
    --decodes growing,static,static-compiled
part expandable 80 env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "$python" benchmarks/decode_memory.py \
    "${model[@]}" --n "${DECODE_N:-2048}" --repeats 2 --decodes growing,static
if [[ $parts != *",flash-attn,"* ]]; then
    :
elif "$python" -c "import flash_attn" 2>/dev/null; then
    part flash-attn 60 "$python" benchmarks/decode_memory.py "${model[@]}" --n 1024 --repeats 1 \
        --attn flash_attention_2 --decodes growing,static
else
    echo "=== flash-attn: not installed, flash_attention_2 not measured" | tee "$out/flash-attn.log"
fi
echo "=== done in ${SECONDS}s of ${budget}s; logs in $out"
