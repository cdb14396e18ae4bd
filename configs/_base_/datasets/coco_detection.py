# Real COCO 2017 detection: mmdet's own base, unchanged (data/coco layout,
# mmdet's standard pipeline, CocoMetric on instances_val2017.json):
#   data/coco/annotations/instances_{train,val}2017.json
#   data/coco/{train,val}2017/*.jpg
# Kept as a one-line alias so that the plugin's configs name their data the
# same way for COCO and for the synthetic set (synthetic_coco_detection.py).
_base_ = 'mmdet::_base_/datasets/coco_detection.py'
