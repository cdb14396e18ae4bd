"""The demo's picture of detections (tools/demo.sh -> tools/test.py --show-dir): drawn
large enough to read, with labels that do not cover each other."""
import glob
import itertools
import json
import os
import os.path as osp
import subprocess
import sys
from typing import List, Optional, Sequence

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from mmdet.registry import VISUALIZERS
from mmdet.structures import DetDataSample
from lors_mmdet.engine import ReadableDetVisualizer, place_labels

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'lors_adamixer',
                       'lors-adamixer_r18-tiny_1xb16-demo_synthetic.py')
IMG_SIZE = 128


def assert_apart(rects: Sequence[Optional[tuple]], width: int, height: int) -> None:
    """Every rectangle lies inside the image and no two of them overlap."""
    rects = [rect for rect in rects if rect is not None]
    for x0, y0, x1, y1 in rects:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    for a, b in itertools.combinations(rects, 2):
        assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_place_labels_keeps_crowded_labels_apart():
    # 12 boxes on one corner, and one at the image's edge: the first choices collide
    boxes = np.array([[10 + i, 12 + i, 60 + i, 70 + i] for i in range(12)]
                     + [[480, 0, 512, 20]], dtype=float)
    sizes = [(70, 18)] * len(boxes)
    rects = place_labels(boxes, sizes, 512, 512, taken=[(0, 0, 90, 18)])
    assert None not in rects
    assert_apart([(0, 0, 90, 18)] + rects, 512, 512)
    # above the first box and inside its top-left corner is the title: below the box
    assert rects[0] == (10, 70, 80, 88)
    assert place_labels(boxes[:1], [(600, 10)], 512, 512) == [None]  # wider than the image


def demo_visualizer() -> ReadableDetVisualizer:
    cfg = Config.fromfile(DEMO_CONFIG)
    visualizer = VISUALIZERS.build(dict(cfg.visualizer, name='demo_picture_test'))
    metainfo = cfg.test_dataloader.dataset.metainfo
    visualizer.dataset_meta = dict(classes=metainfo['classes'], palette=metainfo['palette'])
    return visualizer


def crowded_sample(data_root: str) -> tuple:
    """The val image with most objects, its ground truth, and three overlapping
    detections per object (the worst case for labels)."""
    with open(osp.join(data_root, 'annotations', 'instances_val.json')) as f:
        coco = json.load(f)
    per_image = {image['id']: [] for image in coco['images']}
    for ann in coco['annotations']:
        per_image[ann['image_id']].append(ann)
    image_id = max(per_image, key=lambda i: len(per_image[i]))
    image_info = next(image for image in coco['images'] if image['id'] == image_id)
    anns = per_image[image_id]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)],
                         dtype=torch.float32)
    labels = torch.tensor([a['category_id'] - 1 for a in anns])
    sample = DetDataSample()
    sample.gt_instances = InstanceData(bboxes=boxes, labels=labels)
    shifts = torch.tensor([[0, 0, 0, 0], [2, 1, 2, 1], [-1, 2, -1, 2]], dtype=torch.float32)
    sample.pred_instances = InstanceData(
        bboxes=(boxes[None] + shifts[:, None]).reshape(-1, 4),
        labels=labels.repeat(3),
        scores=torch.linspace(0.95, 0.4, 3 * len(anns)))
    image = mmcv.imread(osp.join(data_root, 'val', image_info['file_name']),
                        channel_order='rgb')
    return image, sample


def test_demo_picture_is_large_with_separate_labels(synthetic_coco_factory, tmp_path):
    data_root = synthetic_coco_factory(num_train=4, num_val=8, img_size=IMG_SIZE)
    image, sample = crowded_sample(data_root)
    assert len(sample.gt_instances) >= 4
    visualizer = demo_visualizer()
    out_file = str(tmp_path / 'detections.png')
    visualizer.add_datasample('demo', image, sample, out_file=out_file, pred_score_thr=0.3)
    picture = mmcv.imread(out_file)
    assert picture.shape[:2] == (4 * IMG_SIZE, 2 * 4 * IMG_SIZE)  # ground truth | detections
    gt_rects, pred_rects = visualizer.label_rects
    assert len(gt_rects) == 1 + len(sample.gt_instances)  # a title and one label per box
    assert len(pred_rects) == 1 + len(sample.pred_instances)
    for rects in (gt_rects, pred_rects):
        assert None not in rects  # every label found a place
        assert_apart(rects, 4 * IMG_SIZE, 4 * IMG_SIZE)


def test_scale_must_be_a_positive_int():
    with pytest.raises(ValueError, match='scale must be an int >= 1, got 2.5'):
        ReadableDetVisualizer(name='bad_scale_test', scale=2.5)


def test_test_tool_draws_the_demo_picture_large(synthetic_coco_factory, tmp_path):
    """tools/test.py --show-dir with the demo's config, as tools/demo.sh runs it (on
    an untrained model: the picture's size is what is checked)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    data_root = synthetic_coco_factory(num_train=4, num_val=2, img_size=IMG_SIZE)
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.model.backbone.init_cfg = None
    checkpoint = str(tmp_path / 'untrained.pth')
    torch.save(dict(state_dict=MODELS.build(cfg.model).state_dict()), checkpoint)
    ann = data_root + 'annotations/instances_val.json'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, 'tools/test.py', DEMO_CONFIG, checkpoint, '--work-dir',
         str(tmp_path / 'test'), '--show-dir', 'vis', '--cfg-options',
         f'test_dataloader.dataset.data_root={data_root}', f'test_evaluator.ann_file={ann}',
         'test_dataloader.num_workers=0'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    drawn: List[str] = sorted(glob.glob(str(tmp_path / 'test' / '*' / 'vis' / '*.png')))
    assert len(drawn) == 2
    assert mmcv.imread(drawn[0]).shape[:2] == (4 * IMG_SIZE, 2 * 4 * IMG_SIZE)
