#!/usr/bin/env bash
# The project's GPU checks in one run (a CUDA box with torch, numpy, opencv, safetensors, msgpack):
# the CUDA engine test, a GPU training run of the tiny student, and the paper-config engine bench.
# Usage: scripts/gpu_check.sh OUT_DIR. Each part is time-boxed; a failure does not stop the others.
set -u
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$out/train"
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, numpy, cv2; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cv2', cv2.__version__)"
timeout 90 python3 -m pytest -q --noconftest -p no:cacheprovider tests/unit/engine/test_engine_gpu.py \
    >"$out/gpu_test.log" 2>&1
echo "gpu test rc=$?"; tail -3 "$out/gpu_test.log"
timeout "${TRAIN_TIMEOUT:-450}" python3 -m tools.training.train --config tiny --device cuda \
    --clips "${CLIPS:-1024}" --workers 14 --threads 4 --seed 0 \
    --ae-steps 1000000 --ae-minutes "${AE_MINUTES:-2.2}" --ae-batch 16 \
    --steps 1000000 --student-minutes "${STUDENT_MINUTES:-3.3}" --batch 64 --out "$out/train" 2>&1 | tail -n 25
echo "train rc=${PIPESTATUS[0]}"
timeout "${BENCH_TIMEOUT:-100}" python3 -m tools.bench.engine --config paper --device cuda \
    --dtype bfloat16 --json --iters 4 --warmup 1 --swap-repeats 1 --history-frames 10 200 --batch-sessions 2 \
    >"$out/bench_paper.log" 2>&1
echo "bench rc=$?"; tail -c 3000 "$out/bench_paper.log"
