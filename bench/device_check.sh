#!/usr/bin/env bash
# The prepared GPU check of issue 11 (item 6): bench_gpu.py and a short bench_fullsize.py on one GPU, within 10 minutes.
#
# Run from the repository root on a machine with one CUDA GPU. On this project's device machine only the repository
# travels (not ../shared) and nothing can be installed from a registry, so first, here:
#   mkdir -p .device/huginn-0125 && cp ../shared/huginn-0125/*.json .device/huginn-0125/
#   echo /.device/ >> .git/info/exclude
#   # optional, for int8/nf4: bitsandbytes is not in the device image; carry its wheel
#   pip download bitsandbytes==0.50.2 --no-deps --only-binary=:all: -d .device/wheels
# then: run(command="bash bench/device_check.sh", carry=[".device"], timeout_s=600). Results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/device-check}
OFFICIAL=${OFFICIAL:-.device/huginn-0125}
[ -f "$OFFICIAL/config.json" ] || OFFICIAL=../shared/huginn-0125
CKPT=${CKPT:-/tmp/fullsize-ckpt}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
started=$(date +%s)
if ls .device/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install --quiet --no-index --no-deps .device/wheels/*.whl || echo "bitsandbytes wheel did not install"
fi
{ nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
FORMATS=bf16
$PY -c "import bitsandbytes" 2>/dev/null && FORMATS=bf16,nf4,int8
echo "formats: $FORMATS" | tee -a "$OUT/machine.txt"

# 1. Decode speed against the bandwidth ceiling, random weights of the exact 3.5B shape (about 5 minutes): bf16
#    eager, then bf16 compiled (--compile's path: static KV cache, each recurrence one CUDA graph; the first run
#    compiles), side by side with the speedup and a line on what ran captured; then bf16 with the parallel sampler
#    (issue 20: its ratio to eager r=32 and its serial core passes per token); then the other formats as the budget
#    allows. perf_hints logs why inductor would skip CUDA graphs, if it does.
TORCH_LOGS=perf_hints timeout 300 $PY bench/bench_gpu.py --device cuda --shape huginn-0125 --formats "$FORMATS" \
  --budget 220 2>&1 | tee "$OUT/bench_gpu.txt"

# 2. The full-size rehearsal: build the 15.6 GB checkpoint, then load each format onto the GPU and answer at r=4.
#    run.py's time to listen is skipped: Gradio is not in the device image.
left=$(( 570 - ($(date +%s) - started) ))
echo "bench_fullsize: ${left} s left" | tee "$OUT/bench_fullsize.txt"
timeout "$left" $PY bench/bench_fullsize.py --dir "$CKPT" --official "$OFFICIAL" --device cuda --formats "$FORMATS" \
  --tokens 8 --no-listen --no-cached 2>&1 | tee -a "$OUT/bench_fullsize.txt"
echo "device_check done in $(( $(date +%s) - started )) s" | tee -a "$OUT/bench_fullsize.txt"
