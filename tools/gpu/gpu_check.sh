#!/usr/bin/env bash
# Every GPU measurement in one command, for the project's offline GPU machine
# (one H200, 16 cores, Python 3.12 + torch 2.11/CUDA 13.0, no network): <= 8 minutes.
#
#   1. install the carried kit (tools/gpu/fetch_kit.py -> gpu_kit/) offline; mmcv 2.1.0 is
#      built with CUDA ops within MMCV_CUDA_BUILD_S, else with CPU ops only (then
#      lors_mmdet.compat routes deformable attention and focal loss to PyTorch on CUDA),
#   2. the CUDA tests (pytest -m cuda),
#   3. tools/analysis/benchmark.py --device cuda: stock vs LORS R-50 COCO configs of every
#      family at 800x1333, batch 2 (train step -> images/s, peak memory, inference latency
#      as trained and merged, ratios).
#
#   OUT=/some/folder bash tools/gpu/gpu_check.sh     (the device tool sets OUT)
#
# Files in $OUT: gpu_check.log (everything, with the time of each step), env.txt,
# install.json (steps, times, mmcv path), mmcv_build.log, tests.log, benchmark_cuda.md.
# Knobs: PYTHON, KIT, MANIFEST, MMCV_BUILD=auto|cuda|cpu, MMCV_CUDA_BUILD_S,
# MMCV_CPU_BUILD_S, REPEATS, WARMUP.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-work_dirs/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-/opt/torch/.venv/bin/python3}
[ -x "$PYTHON" ] || PYTHON=python3
KIT=${KIT:-gpu_kit}
MANIFEST=${MANIFEST:-tools/gpu/kit_manifest.json}
MMCV_BUILD=${MMCV_BUILD:-auto}
# A full CUDA build likely needs ~5 minutes: the default limit takes a quick result only.
MMCV_CUDA_BUILD_S=${MMCV_CUDA_BUILD_S:-150}
MMCV_CPU_BUILD_S=${MMCV_CPU_BUILD_S:-240}
REPEATS=${REPEATS:-5}
WARMUP=${WARMUP:-2}
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1

step_start=$SECONDS
step() { echo "== [$(date -u +%H:%M:%S)] $* (total ${SECONDS} s)"; step_start=$SECONDS; }
done_step() { echo "== $1: $2 in $((SECONDS - step_start)) s (total ${SECONDS} s)"; }

step "environment"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "cores: $(nproc)"
  "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "CUDA", torch.version.cuda,
      "available", torch.cuda.is_available())'
  nvcc --version | tail -2
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
done_step environment ok

step "install the kit (mmcv build: $MMCV_BUILD, CUDA limit ${MMCV_CUDA_BUILD_S} s, CPU-ops limit ${MMCV_CPU_BUILD_S} s)"
if ! "$PYTHON" tools/gpu/install_offline.py --kit "$KIT" --manifest "$MANIFEST" --python "$PYTHON" \
    --mmcv "$MMCV_BUILD" --cuda-build-seconds "$MMCV_CUDA_BUILD_S" \
    --cpu-build-seconds "$MMCV_CPU_BUILD_S" --jobs "$(nproc)" --cuda-arch 9.0 \
    --build-log "$OUT/mmcv_build.log" --report "$OUT/install.json"; then
  done_step install FAILED
  tail -40 "$OUT/mmcv_build.log" 2>/dev/null
  exit 1
fi
done_step install ok

export PYTHONPATH=$PWD
step "CUDA tests (pytest -m cuda)"
timeout 150 "$PYTHON" -m pytest tests -m cuda -q -p no:cacheprovider \
  --continue-on-collection-errors > "$OUT/tests.log" 2>&1
status=$?
tail -15 "$OUT/tests.log"
done_step tests "exit $status"

step "benchmark, stock vs LORS, R-50 COCO configs, 800x1333, batch 2"
timeout 300 "$PYTHON" tools/analysis/benchmark.py --device cuda --repeats "$REPEATS" \
  --warmup "$WARMUP" --out "$OUT/benchmark_cuda.md"
done_step benchmark "exit $?"
path_used=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["path"])' \
  "$OUT/install.json")
echo "mmcv path: $path_used"
