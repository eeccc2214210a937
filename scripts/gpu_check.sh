#!/usr/bin/env bash
# The project's GPU checks in ONE command of under 6 minutes (a CUDA box with torch, numpy, opencv,
# safetensors, msgpack; run from the repository root):
#   1. the CUDA engine test (bf16 masked batched step)                       timeout  45 s
#   2. a short CUDA training smoke of the tiny student (not the shipped run)  timeout  40 s
#   3. python -m tools.bench.gpu: paper-config engine bench, 1/2/4/8-session throughput at tiny and
#      at the paper shape with 10 blocks, bf16 vs fp32 drift over 200 frames, torch.compile of
#      the per-chunk step (eager vs inductor vs inductor + CUDA graphs)       timeout 215 s
#   4. the summary: OUT_DIR/summary.json, also printed as the LAST line      timeout  15 s
# Timeouts add up to 325 s, 350 s with each part's 5 s to die after its TERM (nvidia-smi included). Each part is time-boxed and a failure does not
# stop the others; the bench rewrites OUT_DIR/bench_gpu.json after every section, so a timeout keeps
# what it measured. The shipped checkpoint's full training (about 6 minutes by itself) is no longer
# part of this check: run the command in docs/training.md on its own.
# Usage: scripts/gpu_check.sh OUT_DIR. Env: TRAIN_MINUTES (0.1 per phase), BENCH_BUDGET_S (170).
set -u
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$out/train"
export PYTHONUNBUFFERED=1
started=$SECONDS

timeout -k 5 10 nvidia-smi -L >"$out/nvidia_smi.log" 2>&1
smi_rc=$?

timeout -k 5 45 python3 -m pytest -q --noconftest -p no:cacheprovider tests/unit/engine/test_engine_gpu.py \
    >"$out/gpu_test.log" 2>&1
test_rc=$?

minutes=${TRAIN_MINUTES:-0.1}
timeout -k 5 40 python3 -m tools.training.train --config tiny --device cuda --clips 64 --workers 14 \
    --threads 4 --seed 0 --ae-steps 1000000 --ae-minutes "$minutes" --ae-batch 16 \
    --steps 1000000 --student-minutes "$minutes" --batch 64 --out "$out/train" >"$out/train.log" 2>&1
train_rc=$?

timeout -k 5 215 python3 -m tools.bench.gpu --device cuda --json --budget-s "${BENCH_BUDGET_S:-170}" \
    --out "$out/bench_gpu.json" >"$out/bench.log" 2>&1
bench_rc=$?

timeout -k 5 15 python3 -m tools.bench.gpu --summarize "$out" --seconds $((SECONDS - started)) \
    --rc nvidia_smi=$smi_rc --rc gpu_test=$test_rc --rc train=$train_rc --rc bench=$bench_rc
