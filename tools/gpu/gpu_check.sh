#!/usr/bin/env bash
# Every GPU measurement in one call (<= 5 minutes on one H100/H200):
#   1. install (CUDA torch kept; mmcv built with CUDA ops if missing - slow the first time:
#      use a machine image with it or PIP_FIND_LINKS to a matching wheel),
#   2. the tests that exercise CUDA paths (mmcv's compiled deformable attention, ...),
#   3. the plain-vs-LORS benchmark of the R-50 COCO configs of all families at 800x1333,
#      batch 2: training-step time (-> images/s), peak memory, inference latency.
# Output goes to ${OUT:-work_dirs/gpu_check}/ (benchmark_cuda.md, tests.log).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-work_dirs/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
bash tools/install.sh
python -m pytest tests -q -k "cuda or CUDA" 2>&1 | tee "$OUT/tests.log" | tail -5
python tools/analysis/benchmark.py --device cuda --repeats 10 --warmup 3 \
  | tee "$OUT/benchmark_cuda.md"
