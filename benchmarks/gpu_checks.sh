#!/usr/bin/env bash
# The GPU checks of the scoring kernel, as one prepared run (about 8 minutes on one H100/H200).
#
# Measures on the LLaMA-7B / Amber shape (random weights, bf16): the reference method (HF generate,
# batch 32) against the kernel's greedy, extractable and NLL modes with the `auto` batch size; a
# greedy batch-size sweep (backs pick_batch_size); the static-cache + torch.compile decode path; and
# flash-attention 2 when flash-attn is installed. Per-sequence agreement with generate in bf16 is
# printed by each benchmark run. Writes one log per check under $OUT (default results/gpu-checks).
#
# Needs only torch + transformers + numpy (ray/polars are not imported). Real Amber rows are used
# when MEMSWEEP_SAMPLES names a file in the reference tool's cached format, else random tokens
# (throughput does not depend on the tokens). With this workplace's device tool, from the repo root:
#   mkdir -p .carry && cp ../shared/amber-samples/train_355.jsonl .carry/ && echo /.carry/ >> .git/info/exclude
#   device run: command "MEMSWEEP_SAMPLES=.carry/train_355.jsonl bash benchmarks/gpu_checks.sh",
#               carry [".carry"], timeout_s 590
set -uo pipefail
out=${OUT:-results/gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
samples=(--samples "${MEMSWEEP_SAMPLES:-/nonexistent}")
bench() {  # bench NAME SECONDS ARGS...: one benchmark run with its own time limit and log
    local name=$1 limit=$2
    shift 2
    echo "=== $name: score_throughput.py $*"
    timeout "$limit" "$python" benchmarks/score_throughput.py --arch amber-7b "${samples[@]}" "$@" 2>&1 \
        | grep -v -i "warn" | tee "$out/$name.txt"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$out/env.txt"

bench amber7b-sdpa 240 --n 1024 --repeats 1 --sweep 256,512,1024
bench amber7b-compile 180 --n 1024 --repeats 1 --compile
if "$python" -c "import flash_attn" 2>/dev/null; then
    bench amber7b-flash-attn 120 --n 1024 --repeats 1 --attn flash_attention_2
else
    echo "flash-attn is not installed: flash_attention_2 not measured" | tee "$out/amber7b-flash-attn.txt"
fi
