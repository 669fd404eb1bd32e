#!/usr/bin/env bash
# One run on a lent GPU machine (the `device` tool; H100/H200, 16 cores, torch + CUDA + Triton, no
# network), in under 8 minutes: install the project, run the GPU tests, write an 8-layer synthetic
# DeepSeek-V2-Lite (real widths and quant mix), and measure CPU-only against hybrid on that host.
#
# Prepare here once (the wheels the device image lacks travel in .whl, ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl gguf orjson llguidance
# Then: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Results come back under $OUT; commit them to bench/results/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/gpu-check.log"; }
export PYTHONUNBUFFERED=1

log "host"
{ nvidia-smi; lscpu; python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } \
  >"$OUT/host.txt" 2>&1

log "install"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >>"$OUT/gpu-check.log" 2>&1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation . >>"$OUT/gpu-check.log" 2>&1 || { log "install failed"; exit 1; }
cd /tmp  # import the installed package, not the checkout (its kernels library lives in site-packages)
ROOT=$OLDPWD

log "pytest -m gpu"
python3 -m pytest -q -p no:cacheprovider -m gpu -s "$ROOT/tests/hybrid" 2>&1 | tee "$OUT/pytest-gpu.txt" | tail -5

log "synthetic V2-Lite, 8 layers"
python3 "$ROOT/bench/synth_gguf.py" v2-lite /tmp/v2lite-8l.gguf --layers 8 >>"$OUT/gpu-check.log" 2>&1

log "CPU-only vs hybrid, pp512 and tg128"
python3 "$ROOT/bench/hybrid_speed.py" /tmp/v2lite-8l.gguf --accelerator cuda --pp 512 --tg 128 \
  --json "$OUT/hybrid-v2lite-8l.json" 2>&1 | tee -a "$OUT/gpu-check.log" | tail -30

log "kernel sweep"
timeout 120 python3 "$ROOT/bench/gpu_weights_sweep.py" >"$OUT/gpu-weights-sweep.txt" 2>&1
log "done"
