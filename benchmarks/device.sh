#!/usr/bin/env bash
# The accelerator check in one command, on one GPU or TPU host (issue 23; <= 8 minutes, one H200 in mind):
#
#   bash benchmarks/device.sh [OUTDIR]          # default $OUT, else /tmp/gpt_ads_device
#
# benchmarks/throughput.py on JAX's default backend: for the small, large, xl and xxl presets (xxl = the study's
# 201M class), batch 256 x 64 events, bf16, MFU against the chip's published dense bf16 peak, tokens/s per chip,
# and the allocator's measured peak memory against the `gpt-ads-train --dry_run` plan of the same config; on GPUs
# once with XLA's attention and once with cuDNN's (config.model.attention=cudnn). Writes
# OUTDIR/throughput_<platform>.json and .log. Needs python3 with jax for the device, flax, optax, orbax-checkpoint,
# ml-collections, absl-py, grain, array-record and this package importable (PYTHONPATH=.); XLA_FLAGS from the caller pass through
# (BUILD_NOTES "Accelerators" lists the GPU flags worth trying).
set -euo pipefail
ROOT=$(dirname "$(dirname "$(realpath "$0")")")
OUT=$(realpath -m "${1:-${OUT:-/tmp/gpt_ads_device}}")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # so the allocator's peak is the program's, not a preallocated pool
PLATFORM=$(python3 -c 'import jax; print(jax.default_backend())')
ATTENTION=xla
[ "$PLATFORM" = gpu ] && ATTENTION=xla,cudnn
timeout 470 python3 "$ROOT/benchmarks/throughput.py" --platform="$PLATFORM" --presets=small,large,xl,xxl \
  --batch_size=256 --steps=10 --attention="$ATTENTION" --parts=presets --out="$OUT/throughput_$PLATFORM.json" \
  2>&1 | tee "$OUT/throughput_$PLATFORM.log"
