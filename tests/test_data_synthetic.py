"""The embedded synthetic COCO data set and its dataset configs."""
import copy
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest

from lors_mmdet.datasets.synthetic import (CLASSES, annotation_path,
                                           generate_synthetic_coco,
                                           render_image, tight_box,
                                           validate_coco_annotations,
                                           validate_synthetic_coco)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SYNTHETIC_CONFIG = osp.join(
    REPO, 'configs/_base_/datasets/'
    'synthetic_coco_detection.py')
COCO_CONFIG = osp.join(REPO, 'configs/_base_/datasets/coco_detection.py')
TINY = dict(num_train=6, num_val=3, img_size=64)


def read_tree(root: str) -> dict:
    """Relative path -> bytes of every file under ``root``."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = osp.join(folder, name)
            with open(path, 'rb') as f:
                files[osp.relpath(path, root)] = f.read()
    return files


def load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    generate_synthetic_coco(str(tmp_path / 'a'), seed=3, **TINY)
    generate_synthetic_coco(str(tmp_path / 'b'), seed=3, **TINY)
    generate_synthetic_coco(str(tmp_path / 'c'), seed=4, **TINY)
    a, b, c = (read_tree(str(tmp_path / name)) for name in 'abc')
    assert len(a) == TINY['num_train'] + TINY['num_val'] + 2
    assert a == b
    assert sorted(a) == sorted(c)
    assert a['annotations/instances_train.json'] != \
        c['annotations/instances_train.json']
    changed = [p for p in a if p.endswith('.png') and a[p] != c[p]]
    assert len(changed) == TINY['num_train'] + TINY['num_val']


def test_val_split_does_not_depend_on_train_size(tmp_path):
    generate_synthetic_coco(str(tmp_path / 'a'), **dict(TINY, num_train=2))
    generate_synthetic_coco(str(tmp_path / 'b'), **dict(TINY, num_train=5))
    a, b = read_tree(str(tmp_path / 'a')), read_tree(str(tmp_path / 'b'))
    val = [path for path in a if path.startswith('val')]
    assert val and all(a[path] == b[path] for path in val)
    assert a['annotations/instances_val.json'] == \
        b['annotations/instances_val.json']


# ----------------------------------------------------------------------------
# COCO validity and annotation quality
# ----------------------------------------------------------------------------


def test_annotations_are_valid_coco(synthetic_coco):
    from pycocotools.coco import COCO

    counts = validate_synthetic_coco(synthetic_coco)
    assert counts['train']['images'] == 64 and counts['val']['images'] == 16
    for split in ('train', 'val'):
        ann_file = annotation_path(synthetic_coco, split)
        coco = COCO(ann_file)
        assert sorted(coco.getCatIds()) == list(range(1, len(CLASSES) + 1))
        assert [coco.cats[i]['name'] for i in sorted(coco.cats)] == \
            list(CLASSES)
        ann_ids = coco.getAnnIds()
        assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) >= 1
        assert min(coco.getImgIds()) >= 1
        # Every image file is there, and nothing else.
        files = sorted(os.listdir(osp.join(synthetic_coco, split)))
        assert files == sorted(img['file_name'] for img in coco.imgs.values())
        for ann in coco.anns.values():
            img = coco.imgs[ann['image_id']]
            x, y, w, h = ann['bbox']
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= img['width'] and y + h <= img['height']
            assert 0 < ann['area'] <= w * h and ann['iscrowd'] == 0
        per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
        assert min(per_image) >= 1 and max(per_image) <= 6
    assert all(counts['train'][name] > 0 for name in CLASSES)


def test_data_set_is_not_trivial(synthetic_coco):
    """Several objects per image, overlaps, and a wide range of sizes."""
    coco = load_json(annotation_path(synthetic_coco, 'train'))
    boxes = {}
    for ann in coco['annotations']:
        boxes.setdefault(ann['image_id'], []).append(ann['bbox'])
    assert np.mean([len(b) for b in boxes.values()]) > 2

    def intersects(p, q):
        return (min(p[0] + p[2], q[0] + q[2]) > max(p[0], q[0])
                and min(p[1] + p[3], q[1] + q[3]) > max(p[1], q[1]))

    overlapping = sum(
        any(intersects(p, q) for i, p in enumerate(b) for q in b[i + 1:])
        for b in boxes.values())
    assert overlapping >= 5
    sides = [np.sqrt(a['bbox'][2] * a['bbox'][3]) for a in coco['annotations']]
    assert max(sides) / min(sides) > 3


@pytest.mark.parametrize('seed', range(6))
def test_boxes_are_tight_boxes_of_the_drawn_pixels(seed):
    """With flat colours every pixel can be attributed: the returned visible
    masks must be exactly the pixels painted in each object's colour, and the
    boxes and areas must be their tight boxes and pixel counts."""
    rng = np.random.default_rng(seed)
    image, objects = render_image(rng, img_size=96, texture=False)
    assert objects
    claimed = np.zeros(image.shape[:2], dtype=bool)
    for obj in objects:
        mask = obj['mask']
        assert not (claimed & mask).any(), 'visible masks overlap'
        claimed |= mask
        colour = np.clip(np.rint(obj['colour']), 0, 255).astype(np.uint8)
        assert (image[mask] == colour).all()
        assert obj['bbox'] == tight_box(mask)
        assert obj['area'] == int(mask.sum())
        x, y, w, h = obj['bbox']
        assert mask[y:y + h, x:x + w].sum() == mask.sum()  # box holds all
        # Tight: each box edge touches the object's pixels.
        assert mask[y, x:x + w].any() and mask[y + h - 1, x:x + w].any()
        assert mask[y:y + h, x].any() and mask[y:y + h, x + w - 1].any()
        assert x >= 1 and y >= 1 and x + w <= 95 and y + h <= 95
    background = image[~claimed]
    assert (background == background[0]).all()


def test_tight_box_convention():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert tight_box(mask) == [3, 2, 6, 3]
    with pytest.raises(ValueError, match='empty'):
        tight_box(np.zeros((4, 4), dtype=bool))


def test_validate_reports_broken_annotations(tmp_path):
    generate_synthetic_coco(str(tmp_path / 'set'), **TINY)
    ann_file = annotation_path(str(tmp_path / 'set'), 'val')
    coco = load_json(ann_file)
    coco['annotations'][0]['bbox'] = [60, 10, 10, 5]  # leaves a 64 px image
    coco['annotations'][1]['id'] = coco['annotations'][2]['id']
    coco['annotations'][2]['category_id'] = 99
    broken = str(tmp_path / 'broken.json')
    with open(broken, 'w') as f:
        json.dump(coco, f)
    with pytest.raises(ValueError) as error:
        validate_coco_annotations(broken)
    message = str(error.value)
    assert 'leaves its image' in message
    assert 'duplicate annotations id' in message
    assert 'unknown category_id 99' in message
    with pytest.raises(ValueError, match='expected'):
        validate_coco_annotations(ann_file, expected_classes=CLASSES[::-1])
    with pytest.raises(ValueError, match='image file missing'):
        validate_coco_annotations(ann_file, img_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match='not found'):
        validate_coco_annotations(str(tmp_path / 'missing.json'))


def test_validate_refuses_malformed_files_naming_file_and_id(tmp_path):
    """The structure checks are the launch-time audit's own (one reader)."""
    root = str(tmp_path / 'set')
    generate_synthetic_coco(root, **TINY)
    ann_file = annotation_path(root, 'val')
    broken = str(tmp_path / 'broken.json')

    def write(content) -> None:
        with open(broken, 'w') as f:
            json.dump(content, f)

    write([load_json(ann_file)])
    with pytest.raises(ValueError, match=f'{broken}: expected a JSON object .* got a list'):
        validate_coco_annotations(broken)
    coco = load_json(ann_file)
    del coco['images'][1]['height']
    write(coco)
    with pytest.raises(ValueError, match=f'{broken}: image id 2 \\(000002.png\\): '
                       'no "height"; expected a positive number'):
        validate_coco_annotations(broken)
    coco = load_json(ann_file)
    coco['images'][2]['id'] = 1
    write(coco)
    with pytest.raises(ValueError, match=f'{broken}: image id 1 is used by 2 images '
                       '\\(000001.png, 000003.png\\)'):
        validate_coco_annotations(broken)
    with open(broken, 'w') as f:
        f.write('{"images": [')
    with pytest.raises(ValueError, match=f'{broken}: not valid JSON'):
        validate_coco_annotations(broken)
    png = osp.join(root, 'val', '000002.png')
    with open(png, 'rb') as f:
        data = f.read()
    with open(png, 'wb') as f:
        f.write(data[:-20])
    with pytest.raises(ValueError, match=f'{png}: a truncated PNG'):
        validate_coco_annotations(ann_file, img_dir=osp.join(root, 'val'))


# ----------------------------------------------------------------------------
# Generator interface
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(num_train=0), ValueError, 'num_train'),
    (dict(num_val=-1), ValueError, 'num_val'),
    (dict(img_size=16), ValueError, 'img_size'),
    (dict(img_size=64.0), TypeError, 'img_size'),
    (dict(seed=True), TypeError, 'seed'),
    (dict(min_objects=3, max_objects=2), ValueError, 'max_objects'),
    (dict(size_range=(0.5, 0.2)), ValueError, 'size_range'),
    (dict(min_visible_fraction=0.0), ValueError, 'min_visible_fraction'),
])
def test_generator_rejects_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        generate_synthetic_coco(str(tmp_path / 'set'), **kwargs)


def test_regenerating_replaces_only_its_own_output(tmp_path):
    root = str(tmp_path / 'set')
    generate_synthetic_coco(root, **TINY)
    generate_synthetic_coco(root, **dict(TINY, num_train=2))
    assert len(os.listdir(osp.join(root, 'train'))) == 2
    validate_synthetic_coco(root)
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'notes.txt').write_text('keep me')
    with pytest.raises(ValueError, match='refusing to overwrite'):
        generate_synthetic_coco(str(foreign), **TINY)
    assert (foreign / 'notes.txt').read_text() == 'keep me'


def test_cli_generates_and_checks(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        'generate_synthetic_coco_cli',
        osp.join(REPO, 'tools/generate_synthetic_coco.py'))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = str(tmp_path / 'set')
    assert cli.main([
        '--out', out, '--num-train', '3', '--num-val', '2', '--img-size', '64',
        '--seed', '5', '--check', '--no-progress'
    ]) == 0
    assert 'Annotations are valid' in capsys.readouterr().out
    assert validate_synthetic_coco(out)['train']['images'] == 3
    assert cli.main(['--out', out, '--num-train', '0']) == 2
    assert 'num_train' in capsys.readouterr().err
    assert cli.main(['--out', str(tmp_path / 'none'), '--check-only']) == 2
    assert 'not found' in capsys.readouterr().err


def test_generator_needs_no_openmmlab_or_torch(tmp_path):
    """The generator module runs with mmdet, mmengine, mmcv and torch
    unimportable (loaded by file path, bypassing the package __init__)."""
    code = f"""
import importlib.util, sys
for name in ('mmdet', 'mmengine', 'mmcv', 'torch'):
    sys.modules[name] = None  # any import of these now fails
spec = importlib.util.spec_from_file_location(
    'synthetic', {osp.join(REPO, 'lors_mmdet/datasets/synthetic.py')!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.generate_synthetic_coco({str(tmp_path / 'set')!r}, num_train=2,
                               num_val=1, img_size=48)
print(module.validate_synthetic_coco({str(tmp_path / 'set')!r}))
"""
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True,
                            text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------
# Dataset configs with mmdet
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def mmdet_registry():
    from mmdet.utils import register_all_modules
    register_all_modules()
    from mmdet.registry import DATASETS, METRICS
    return DATASETS, METRICS


def synthetic_cfg():
    from mmengine.config import Config
    return Config.fromfile(SYNTHETIC_CONFIG)


def test_config_classes_match_the_generator():
    cfg = synthetic_cfg()
    assert tuple(cfg.metainfo['classes']) == CLASSES
    assert len(cfg.metainfo['palette']) == len(CLASSES)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        assert tuple(loader.dataset.metainfo['classes']) == CLASSES


def test_config_builds_mmdet_coco_dataset(synthetic_coco, mmdet_registry):
    datasets, _ = mmdet_registry
    cfg = synthetic_cfg()
    train_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    train_cfg.data_root = synthetic_coco
    train = datasets.build(train_cfg)
    assert type(train).__name__ == 'CocoDataset'
    assert len(train) == 64
    assert tuple(train.metainfo['classes']) == CLASSES
    sample = train[0]
    assert tuple(sample['inputs'].shape) == (3, 128, 128)
    boxes = sample['data_samples'].gt_instances.bboxes.tensor
    labels = sample['data_samples'].gt_instances.labels
    assert len(boxes) == len(labels) > 0
    assert (boxes >= 0).all() and (boxes <= 128).all()
    assert set(labels.tolist()) <= set(range(len(CLASSES)))

    val_cfg = copy.deepcopy(cfg.val_dataloader.dataset)
    val_cfg.data_root = synthetic_coco
    val = datasets.build(val_cfg)
    assert len(val) == 16
    meta = val[0]['data_samples'].metainfo
    assert meta['scale_factor'] == (1.0, 1.0)
    assert meta['ori_shape'] == meta['img_shape'] == (128, 128)


def test_coco_metric_scores_ground_truth_as_perfect(synthetic_coco,
                                                    mmdet_registry):
    """The annotations, the dataset config and mmdet's CocoMetric agree: the
    ground truth, fed back as predictions, gets bbox mAP 1.0."""
    import torch
    datasets, metrics = mmdet_registry
    cfg = synthetic_cfg()
    val_cfg = copy.deepcopy(cfg.val_dataloader.dataset)
    val_cfg.data_root = synthetic_coco
    val = datasets.build(val_cfg)
    metric_cfg = copy.deepcopy(cfg.val_evaluator)
    metric_cfg.ann_file = annotation_path(synthetic_coco, 'val')
    metric = metrics.build(metric_cfg)
    metric.dataset_meta = val.metainfo
    predictions = []
    for index in range(len(val)):
        info = val.get_data_info(index)
        boxes = torch.tensor([inst['bbox'] for inst in info['instances']],
                             dtype=torch.float32)
        labels = torch.tensor(
            [inst['bbox_label'] for inst in info['instances']])
        predictions.append(
            dict(img_id=info['img_id'],
                 ori_shape=(info['height'], info['width']),
                 pred_instances=dict(bboxes=boxes,
                                     scores=torch.ones(len(boxes)),
                                     labels=labels)))
    metric.process({}, predictions)
    results = metric.evaluate(len(predictions))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)


@pytest.mark.parametrize('broken', ['data_root', 'ann_file'])
def test_missing_data_gives_error_naming_the_path(synthetic_coco, tmp_path,
                                                  mmdet_registry, broken):
    datasets, metrics = mmdet_registry
    dataset_cfg = copy.deepcopy(synthetic_cfg().train_dataloader.dataset)
    dataset_cfg.data_root = synthetic_coco
    if broken == 'data_root':
        dataset_cfg.data_root = str(tmp_path / 'no_such_root') + '/'
        expected = osp.join(dataset_cfg.data_root, dataset_cfg.ann_file)
    else:
        dataset_cfg.ann_file = 'annotations/instances_nowhere.json'
        expected = osp.join(synthetic_coco, dataset_cfg.ann_file)
    with pytest.raises(FileNotFoundError) as error:
        datasets.build(dataset_cfg)
    assert osp.normpath(expected) in osp.normpath(str(error.value))
    missing_ann = str(tmp_path / 'instances_val.json')
    with pytest.raises(FileNotFoundError, match='instances_val.json'):
        metrics.build(dict(type='CocoMetric', ann_file=missing_ann))


def test_real_coco_config_loads():
    from mmengine.config import Config
    cfg = Config.fromfile(COCO_CONFIG)
    assert cfg.dataset_type == 'CocoDataset'
    assert cfg.data_root == 'data/coco/'
    assert cfg.train_dataloader.dataset.ann_file == \
        'annotations/instances_train2017.json'
    assert cfg.val_dataloader.dataset.data_prefix.img == 'val2017/'
    assert cfg.val_evaluator.type == 'CocoMetric'
    assert cfg.val_evaluator.ann_file == \
        'data/coco/annotations/instances_val2017.json'
    assert cfg.val_evaluator.metric == 'bbox'
    assert [t['type'] for t in cfg.train_pipeline] == [
        'LoadImageFromFile', 'LoadAnnotations', 'Resize', 'RandomFlip',
        'PackDetInputs'
    ]
