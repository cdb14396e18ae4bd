#!/usr/bin/env bash
# The README's demo: synthetic data -> train a small LORS detector on CPU -> COCO mAP
# -> a picture of detections. `make demo` runs the install step first.
#   DEMO_CONFIG=<config> bash tools/demo.sh     (any toy config of configs/)
#   DEMO_OPTIONS="train_cfg.max_iters=100" ...   (--cfg-options for the training)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${DEMO_CONFIG:-configs/lors_adamixer/lors-adamixer_r18-tiny_1xb16-toy_synthetic.py}
WORK_DIR=${DEMO_WORK_DIR:-work_dirs/demo}
DATA=data/synthetic_coco

echo "== 1/4 synthetic COCO-format data set -> $DATA"
if "$PYTHON" tools/generate_synthetic_coco.py --out "$DATA" --check-only >/dev/null 2>&1; then
  echo "already there (delete $DATA to regenerate)"
else
  "$PYTHON" tools/generate_synthetic_coco.py --out "$DATA"
fi

echo "== 2/4 pretrained toy backbone (the toy DINO / Deformable-DETR start from it)"
BACKBONE=checkpoints/toy/resnet18-tiny_shapes.pth
if ! "$PYTHON" -c 'import sys; from mmengine.config import Config
sys.exit(sys.argv[2] not in Config.fromfile(sys.argv[1]).pretty_text)' "$CONFIG" "$BACKBONE"; then
  echo "not used by $CONFIG"
elif [ -f "$BACKBONE" ]; then
  echo "shipped with the repository: $BACKBONE (tools/pretrain_toy_backbone.py regenerates it)"
else
  "$PYTHON" tools/pretrain_toy_backbone.py --data-root "$DATA" --out "$BACKBONE"
fi

echo "== 3/4 training $CONFIG on CPU (progress: one log line every few iterations)"
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" ${DEMO_OPTIONS:+--cfg-options $DEMO_OPTIONS}

echo "== 4/4 COCO evaluation (pycocotools) of the last checkpoint, drawing detections"
CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")
"$PYTHON" tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR/test" --show-dir vis

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
