"""Checks tools/train.py makes before building the runner: --amp needs an
accelerator; the COCO annotation files hold something to train on."""
import json
import logging
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
from typing import Callable, List

import pytest
from mmengine.config import Config
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.logging import MMLogger

from mmdet.datasets import CocoDataset
from lors_mmdet.engine import audit_coco_file, check_coco_annotations, enable_amp
from lors_mmdet.engine.data_checks import (MALFORMED, NO_AREA, NO_SIZE, NOT_FINITE, OUTSIDE_IMAGE,
                                           UNDER_ONE_PIXEL, UNKNOWN_CATEGORY,
                                           UNKNOWN_IMAGE)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'tests', 'configs', 'tiny_deformable_detr_synthetic.py')
HAS_ACCELERATOR = (is_cuda_available() or is_npu_available() or is_mlu_available()
                   or is_musa_available())


def data_options(data_root: str) -> List[str]:
    ann = data_root + 'annotations/instances_val.json'
    return [f'{split}_dataloader.dataset.data_root={data_root}'
            for split in ('train', 'val', 'test')] + [
                f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']


def train_tool(work_dir: str, data_root: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, 'tools/train.py', CONFIG, '--work-dir', work_dir, *extra,
         '--cfg-options', *data_options(data_root)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def config_for(data_root: str) -> Config:
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(dict(option.split('=', 1) for option in data_options(data_root)))
    return cfg


@pytest.fixture
def data_copy(synthetic_coco_factory, tmp_path) -> str:
    """A private, modifiable copy of a small synthetic set (8 train, 4 val images)."""
    root = tmp_path / 'data'
    shutil.copytree(synthetic_coco_factory(num_train=8, num_val=4, img_size=64), root)
    return str(root) + '/'


def edit_annotations(data_root: str, split: str, edit: Callable[[dict], None]) -> str:
    path = osp.join(data_root, 'annotations', f'instances_{split}.json')
    with open(path) as f:
        coco = json.load(f)
    edit(coco)
    with open(path, 'w') as f:
        json.dump(coco, f)
    return path


class LogRecords(logging.Handler):
    """Collects what mmengine's current logger emits."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# --amp ---------------------------------------------------------------------

def test_enable_amp_follows_the_machine():
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD'))))
    if HAS_ACCELERATOR:
        enable_amp(cfg)
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
        assert cfg.optim_wrapper.loss_scale == 'dynamic'
    else:
        with pytest.raises(RuntimeError, match='--amp needs a CUDA, NPU, MLU or MUSA '
                           'device.*train without --amp'):
            enable_amp(cfg)
        assert cfg.optim_wrapper.type == 'OptimWrapper'


@pytest.mark.skipif(HAS_ACCELERATOR, reason='refusal of --amp without an accelerator')
def test_train_amp_refused_before_the_runner(synthetic_coco_factory, tmp_path):
    work_dir = str(tmp_path / 'work')
    result = train_tool(work_dir, synthetic_coco_factory(num_train=8, num_val=4,
                                                         img_size=64), '--amp')
    assert result.returncode != 0
    assert '--amp needs a CUDA, NPU, MLU or MUSA device' in result.stderr
    assert 'AmpOptimizerWrapper' not in result.stderr  # mmengine's own assertion
    assert not osp.exists(work_dir)  # the runner (which makes it) was never built


# annotations ---------------------------------------------------------------

def corrupt(coco: dict) -> dict:
    """Break one annotation per reason; return {ann id: expected reason}."""
    anns = coco['annotations']
    image = {img['id']: img for img in coco['images']}[anns[5]['image_id']]
    expected = {}
    for ann, reason, change in [
            (anns[0], NO_SIZE, dict(bbox=[3, 3, 0, 5])),
            (anns[1], NO_SIZE, dict(bbox=[3, 3, 5, -2])),
            (anns[2], UNDER_ONE_PIXEL, dict(bbox=[3, 3, 0.5, 5])),
            (anns[3], UNKNOWN_CATEGORY, dict(category_id=99)),
            (anns[4], NO_AREA, dict(area=0)),
            (anns[5], OUTSIDE_IMAGE, dict(bbox=[image['width'] + 2, 1, 4, 4])),
            (anns[6], UNKNOWN_IMAGE, dict(image_id=99999))]:
        ann.update(change)
        expected[ann['id']] = reason
    anns[7]['iscrowd'] = 1  # kept by mmdet, but not a training target
    return expected


def mmdet_training_targets(data_root: str, split: str, classes=None) -> int:
    """Instances that mmdet's own CocoDataset parses as training targets."""
    metainfo = dict(classes=classes) if classes else config_for(data_root)[
        f'{split}_dataloader'].dataset.metainfo
    dataset = CocoDataset(data_root=data_root,
                          ann_file=f'annotations/instances_{split}.json',
                          data_prefix=dict(img=f'{split}/'), metainfo=metainfo,
                          test_mode=True, pipeline=[], serialize_data=False)
    return sum(instance['ignore_flag'] == 0 for info in dataset.data_list
               for instance in info['instances'])


def test_audit_agrees_with_mmdet_coco_dataset(data_copy):
    expected = {}
    ann_file = edit_annotations(data_copy, 'train', lambda coco: expected.update(corrupt(coco)))
    classes = config_for(data_copy).train_dataloader.dataset.metainfo['classes']
    audit = audit_coco_file(ann_file, osp.join(data_copy, 'train'), classes)
    found = {ann: reason for reason, offenders in audit.offenders.items()
             for _, ann in offenders}
    assert found == expected
    assert audit.trainable == mmdet_training_targets(data_copy, 'train')
    assert audit.trainable == audit.annotations - len(expected) - 1  # - the crowd one
    # restricting the classes: annotations of the others are left out, not offenders
    fewer = classes[:4]
    restricted = audit_coco_file(ann_file, None, fewer + ('hexagon', ))
    assert restricted.trainable == mmdet_training_targets(data_copy, 'train', fewer)
    assert restricted.outside_classes > 0 and restricted.offenders == audit.offenders
    assert restricted.classes_not_in_file == ['hexagon']


def test_check_warns_with_counts_and_ids(data_copy):
    expected = {}
    edit_annotations(data_copy, 'train', lambda coco: expected.update(corrupt(coco)))
    handler = LogRecords()
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        audits = check_coco_annotations(config_for(data_copy), max_listed=5)
    finally:
        logger.removeHandler(handler)
    assert len(audits) == 2  # train and val
    warning, = handler.messages
    assert warning.startswith('train_dataloader.dataset: ' + data_copy +
                              'annotations/instances_train.json: mmdet\'s CocoDataset '
                              f'will skip {len(expected)} of ')
    for ann, reason in expected.items():
        assert f'ann_id={ann}' in warning
    assert f'2 {NO_SIZE} (' in warning


def test_non_finite_box_refused(data_copy):
    def infinite(coco):
        coco['annotations'][2]['bbox'][2] = float('inf')  # mmdet would keep this box
    ann_file = edit_annotations(data_copy, 'val', infinite)
    with open(ann_file) as f:
        assert mmdet_training_targets(data_copy, 'val') == len(json.load(f)['annotations'])
    with pytest.raises(ValueError, match=r'val_dataloader.dataset: .*instances_val.json: '
                       f'annotations that mmdet cannot use: 1 {NOT_FINITE}'):
        check_coco_annotations(config_for(data_copy))


def test_missing_image_refused_naming_the_file(data_copy):
    with open(osp.join(data_copy, 'annotations', 'instances_val.json')) as f:
        image = json.load(f)['images'][1]
    path = osp.join(data_copy, 'val', image['file_name'])
    os.remove(path)
    with pytest.raises(FileNotFoundError,
                       match=f'1 of 4 image files do not exist: {path} '
                       rf'\(image_id={image["id"]}\)'):
        check_coco_annotations(config_for(data_copy))


def test_train_refuses_data_with_only_bad_boxes(data_copy, tmp_path):
    def degenerate(coco):
        for ann in coco['annotations']:
            ann['bbox'][2] = 0
    ann_file = edit_annotations(data_copy, 'train', degenerate)
    work_dir = str(tmp_path / 'work')
    result = train_tool(work_dir, data_copy)
    assert result.returncode != 0
    assert f'{ann_file}: no annotation left to train on' in result.stderr
    assert 'mmdet skips ' in result.stderr and f'{NO_SIZE} (image_id=' in result.stderr
    assert not osp.exists(work_dir)


# the structure of the file and of its images ----------------------------------

def duplicate_image_id(coco: dict) -> str:
    coco['images'][1]['id'] = coco['images'][0]['id']
    return f"image id {coco['images'][0]['id']} is used by 2 images " \
        f"\\({coco['images'][0]['file_name']}, {coco['images'][1]['file_name']}\\)"


def image_without_width(coco: dict) -> str:
    del coco['images'][2]['width']
    return f"image id {coco['images'][2]['id']} \\({coco['images'][2]['file_name']}\\): " \
        'no "width"; expected a positive number'


def duplicate_annotation_id(coco: dict) -> str:
    coco['annotations'][3]['id'] = coco['annotations'][1]['id']
    return f"annotation id used more than once \\(image_id={coco['annotations'][3]['image_id']} " \
        f"ann_id={coco['annotations'][1]['id']}\\)"


def annotation_without_id(coco: dict) -> str:
    del coco['annotations'][2]['id']
    return re.escape(f"annotations that mmdet cannot use: 1 {MALFORMED} "
                     f"(image_id={coco['annotations'][2]['image_id']} ann_id=None)")


def top_level_list(coco: dict) -> str:
    # the test writes a list in place of the file's object
    return 'expected a JSON object with "images", "annotations" and "categories" at ' \
        'the top, got a list'


def no_images(coco: dict) -> str:
    coco['images'], coco['annotations'] = [], []
    return 'lists no images; expected at least one image to evaluate on'


@pytest.mark.parametrize('edit', [duplicate_image_id, image_without_width,
                                  duplicate_annotation_id, annotation_without_id,
                                  top_level_list, no_images])
def test_malformed_val_file_refused_naming_file_and_id(data_copy, edit):
    messages = []
    ann_file = edit_annotations(data_copy, 'val', lambda coco: messages.append(edit(coco)))
    if edit is top_level_list:
        with open(ann_file, 'w') as f:
            json.dump([{'id': 1}], f)
    with pytest.raises(ValueError, match=re.escape(ann_file) + '.*' + messages[0]):
        check_coco_annotations(config_for(data_copy))


def test_truncated_png_refused_naming_file_and_id(data_copy):
    with open(osp.join(data_copy, 'annotations', 'instances_train.json')) as f:
        image = json.load(f)['images'][3]
    path = osp.join(data_copy, 'train', image['file_name'])
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(
            f'1 of 8 image files are broken: {path} (image_id={image["id"]}): '
            'a truncated PNG (no IEND chunk at its end)')):
        check_coco_annotations(config_for(data_copy))


def test_train_refuses_duplicate_image_ids_before_the_runner(data_copy, tmp_path):
    messages = []
    ann_file = edit_annotations(data_copy, 'train',
                                lambda coco: messages.append(duplicate_image_id(coco)))
    work_dir = str(tmp_path / 'work')
    result = train_tool(work_dir, data_copy)
    assert result.returncode != 0
    assert re.search(re.escape(ann_file) + '.*' + messages[0], result.stderr)
    assert not osp.exists(work_dir)
