#!/usr/bin/env bash
# The README's demo: synthetic data -> train a small LORS detector on CPU -> COCO mAP
# -> a picture of detections, with the time each step took. `make demo` runs the
# install step first.
#   DEMO_CONFIG=<config> bash tools/demo.sh     (any toy config of configs/)
#   DEMO_OPTIONS="train_cfg.max_iters=100" ...   (--cfg-options for the training)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${DEMO_CONFIG:-configs/lors_adamixer/lors-adamixer_r18-tiny_1xb16-demo_synthetic.py}
WORK_DIR=${DEMO_WORK_DIR:-work_dirs/demo}
DATA=data/synthetic_coco
DEMO_START=$SECONDS
STEP_START=$SECONDS
TIMINGS=()
step_done() {  # step_done NAME: print and remember the step's elapsed time
  local elapsed=$((SECONDS - STEP_START))
  TIMINGS+=("$(printf '%-24s %4d s' "$1" "$elapsed")")
  echo "-- $1: ${elapsed} s"
  STEP_START=$SECONDS
}

echo "== 1/4 synthetic COCO-format data set -> $DATA"
if "$PYTHON" tools/generate_synthetic_coco.py --out "$DATA" --check-only >/dev/null 2>&1; then
  echo "already there (delete $DATA to regenerate)"
else
  "$PYTHON" tools/generate_synthetic_coco.py --out "$DATA"
fi
step_done "data set"

echo "== 2/4 pretrained toy backbone"
BACKBONE=checkpoints/toy/resnet18-tiny_shapes.pth
if ! "$PYTHON" -c 'import sys; from lors_mmdet.apis import load_config
sys.exit(sys.argv[2] not in load_config(sys.argv[1]).pretty_text)' "$CONFIG" "$BACKBONE"; then
  echo "not used by $CONFIG"
elif [ -f "$BACKBONE" ]; then
  echo "shipped with the repository: $BACKBONE (tools/pretrain_toy_backbone.py regenerates it)"
else
  "$PYTHON" tools/pretrain_toy_backbone.py --data-root "$DATA" --out "$BACKBONE"
fi
step_done "backbone"

echo "== 3/4 training $CONFIG on CPU (one log line every few iterations)"
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" ${DEMO_OPTIONS:+--cfg-options $DEMO_OPTIONS}
step_done "training"

echo "== 4/4 COCO evaluation (pycocotools) of the last checkpoint, drawing detections"
CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")
"$PYTHON" tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR/test" --show-dir vis
step_done "evaluation"

"$PYTHON" - "$WORK_DIR" <<'PY'
import glob, json, os.path as osp, shutil, sys
work_dir = sys.argv[1]
metrics_file = sorted(glob.glob(osp.join(work_dir, 'test', '*', '*.json')))[-1]
metrics = json.load(open(metrics_file))
picture = sorted(glob.glob(osp.join(work_dir, 'test', '*', 'vis', '*.png')))[0]
shutil.copy(picture, osp.join(work_dir, 'detections.png'))
print('\n== demo result')
print(f"COCO bbox mAP (AP@[.5:.95]) on the synthetic val set: {metrics['coco/bbox_mAP']:.3f}"
      f"  (AP50 {metrics['coco/bbox_mAP_50']:.3f}, AP75 {metrics['coco/bbox_mAP_75']:.3f})")
print(f"detections drawn on a val image: {osp.join(work_dir, 'detections.png')}")
print(f"all val images: {osp.dirname(picture)}")
PY
echo "== elapsed time per step ($(nproc) CPU cores)"
printf '%s\n' "${TIMINGS[@]}"
printf '%-24s %4d s\n' "total" "$((SECONDS - DEMO_START))"
