"""End to end through the user-facing tools: train, test, resume, distributed.

Everything runs the real scripts (tools/train.py, tools/test.py, tools/dist_*.sh)
in subprocesses on a tiny stock Deformable-DETR and a small synthetic data set.
"""
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'tests', 'configs', 'tiny_deformable_detr_synthetic.py')


def data_options(data_root: str) -> List[str]:
    ann = data_root + 'annotations/instances_val.json'
    return [f'{split}_dataloader.dataset.data_root={data_root}'
            for split in ('train', 'val', 'test')] + [
                f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']


def run_tool(args: List[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train(work_dir: str, data_root: str, *extra: str,
          launcher: Optional[List[str]] = None) -> subprocess.CompletedProcess:
    command = launcher or [sys.executable, 'tools/train.py']
    return run_tool([*command, CONFIG, '--work-dir', work_dir, *extra,
                     '--cfg-options', *data_options(data_root)])


def train_losses(work_dir: str) -> Dict[int, float]:
    """{iteration: loss} from every scalars.json that mmengine wrote in work_dir."""
    losses = {}
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if 'loss' in record:
                    losses[record['iter']] = record['loss']
    return losses


def coco_metrics(work_dir: str) -> dict:
    """Metrics that tools/test.py saved as <work_dir>/<timestamp>/<timestamp>.json."""
    found = sorted(glob.glob(osp.join(work_dir, '*', '*.json')))
    assert found, f'no metrics json under {work_dir}'
    with open(found[-1]) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def data_root(synthetic_coco_factory) -> str:
    return synthetic_coco_factory(num_train=16, num_val=8, img_size=64, seed=0)


@pytest.fixture(scope='module')
def three_epoch_run(tmp_path_factory, data_root) -> str:
    work_dir = str(tmp_path_factory.mktemp('uninterrupted'))
    train(work_dir, data_root)
    return work_dir


def test_train_then_test_gives_coco_map(three_epoch_run, data_root, tmp_path):
    assert len(train_losses(three_epoch_run)) == 12  # 3 epochs x 4 iterations
    checkpoint = osp.join(three_epoch_run, 'epoch_3.pth')
    show_dir = 'vis'
    result = run_tool([sys.executable, 'tools/test.py', CONFIG, checkpoint,
                       '--work-dir', str(tmp_path), '--show-dir', show_dir,
                       '--out', str(tmp_path / 'preds.pkl'),
                       '--cfg-options', *data_options(data_root)])
    metrics = coco_metrics(str(tmp_path))
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'):
        assert 0.0 <= metrics[key] <= 1.0
    assert 'bbox_mAP_copypaste' in result.stdout + result.stderr  # pycocotools summary
    drawn = glob.glob(osp.join(str(tmp_path), '*', show_dir, '*.png'))
    assert len(drawn) == 8  # every val image, with its detections drawn
    assert (tmp_path / 'preds.pkl').stat().st_size > 0


def test_resume_continues_exactly(three_epoch_run, data_root, tmp_path):
    work_dir = str(tmp_path)
    train(work_dir, data_root, '--cfg-options', 'train_cfg.max_epochs=2')
    assert osp.exists(osp.join(work_dir, 'epoch_2.pth'))
    train(work_dir, data_root, '--resume')  # auto: latest checkpoint of work_dir
    expected = train_losses(three_epoch_run)
    resumed = train_losses(work_dir)
    assert sorted(resumed) == sorted(expected) == list(range(1, 13))
    for iteration in range(1, 13):
        assert resumed[iteration] == pytest.approx(expected[iteration], rel=1e-6, abs=1e-6), \
            f'iteration {iteration}: resumed {resumed[iteration]} vs {expected[iteration]}'


def test_missing_annotation_file_names_the_key(tmp_path, data_root):
    missing = str(tmp_path) + '/'
    result = subprocess.run(
        [sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(tmp_path / 'w'),
         '--cfg-options', *data_options(data_root),
         f'train_dataloader.dataset.data_root={missing}'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert 'train_dataloader.dataset.ann_file' in result.stderr
    assert 'instances_train.json' in result.stderr


def test_missing_data_root_names_the_key(tmp_path, data_root):
    result = subprocess.run(
        [sys.executable, 'tools/test.py', CONFIG, __file__, '--work-dir', str(tmp_path),
         '--cfg-options', *data_options(data_root),
         'test_dataloader.dataset.data_root=data/no_such_dir/'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert 'test_dataloader.dataset.data_root' in result.stderr
    assert 'no_such_dir' in result.stderr
