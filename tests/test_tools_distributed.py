"""tools/dist_train.sh and tools/dist_test.sh on CPU: torchrun, 2 processes, gloo."""
import os
import os.path as osp
import signal
import socket
import subprocess
import time
import uuid
from typing import List, Optional

import pytest

from test_tools_e2e import CONFIG, ROOT, coco_metrics, data_options, run_tool

pytestmark = pytest.mark.skipif(
    not hasattr(os, 'fork'), reason='torchrun needs a POSIX machine')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def dist_env(tag: Optional[str] = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT=str(free_port()))
    if tag:
        env['LORS_TEST_TAG'] = tag
    return env


@pytest.fixture(scope='module')
def data_root(synthetic_coco_factory) -> str:
    return synthetic_coco_factory(num_train=16, num_val=8, img_size=64, seed=0)


@pytest.fixture(scope='module')
def dist_trained(tmp_path_factory, data_root) -> str:
    work_dir = str(tmp_path_factory.mktemp('dist_train'))
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', work_dir,
         '--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
         *data_options(data_root)],
        cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert 'backend nccl -> gloo' in log
    assert 'coco/bbox_mAP' in log  # evaluated at the end of the epoch
    return work_dir


def test_dist_train_two_processes_on_cpu(dist_trained):
    # 16 images, 2 processes x batch 4: 2 iterations per epoch.
    assert osp.exists(osp.join(dist_trained, 'epoch_1.pth'))


def test_dist_test_two_processes_on_cpu(dist_trained, data_root, tmp_path):
    result = subprocess.run(
        ['bash', 'tools/dist_test.sh', CONFIG, osp.join(dist_trained, 'epoch_1.pth'), '2',
         '--work-dir', str(tmp_path), '--cfg-options', *data_options(data_root)],
        cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    metrics = coco_metrics(str(tmp_path))
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0


LORS_CONFIG = osp.join(ROOT, 'tests', 'configs',
                       'tiny_lors_deformable_detr_synthetic.py')


def test_dist_train_lors_stacks_without_find_unused_parameters(data_root,
                                                               tmp_path):
    """A LorsStacksMixin detector (Deformable-DETR, encoder and decoder
    stacks) trains in 2 gloo processes under plain DDP: every shared tensor
    is registered once and used in every step. DDP without
    find_unused_parameters fails in the second iteration if a parameter got
    no gradient in the first."""
    from mmengine.config import Config
    cfg = Config.fromfile(LORS_CONFIG)
    assert 'find_unused_parameters' not in cfg.get('model_wrapper_cfg', {})
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', LORS_CONFIG, '2', '--work-dir',
         str(tmp_path), '--cfg-options', 'train_cfg.max_epochs=1',
         'model.encoder.num_layers=2', 'model.lors.encoder.rank=4',
         'val_dataloader=None', 'val_evaluator=None', 'val_cfg=None',
         *data_options(data_root)[:1]],
        cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert 'backend nccl -> gloo' in log
    assert 'find_unused_parameters' not in log
    # 16 images, 2 processes x batch 4: 2 iterations, both logged as done.
    assert osp.exists(osp.join(str(tmp_path), 'epoch_1.pth'))
    from mmengine.runner import CheckpointLoader
    state = CheckpointLoader.load_checkpoint(
        osp.join(str(tmp_path), 'epoch_1.pth'), map_location='cpu')
    keys = state['state_dict']
    assert any(k.startswith('encoder.lors_layers.shared.') for k in keys)
    assert any(k.startswith('decoder.lors_layers.shared.') for k in keys)


def worker_pids(tag: str, local_rank: int) -> List[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/environ', 'rb') as f:
                environ = f.read().split(b'\0')
        except OSError:
            continue
        if (f'LORS_TEST_TAG={tag}'.encode() in environ
                and f'LOCAL_RANK={local_rank}'.encode() in environ):
            pids.append(int(pid))
    return pids


def test_dead_worker_ends_the_launch_and_keeps_the_checkpoint(data_root, tmp_path):
    from mmengine.runner import CheckpointLoader
    tag = uuid.uuid4().hex
    work_dir = str(tmp_path)
    launch = subprocess.Popen(
        ['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', work_dir,
         '--cfg-options', 'train_cfg.max_epochs=100', 'train_cfg.val_interval=100',
         *data_options(data_root)],
        cwd=ROOT, env=dist_env(tag), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not osp.exists(osp.join(work_dir, 'last_checkpoint')):
            assert launch.poll() is None, 'the launch ended before its first checkpoint'
            assert time.time() < deadline, 'no checkpoint within 300 s'
            time.sleep(0.5)
        victims = worker_pids(tag, local_rank=1)
        assert victims, 'rank 1 worker not found'
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        returncode = launch.wait(timeout=120)  # no hang: torchrun tears the job down
        assert returncode != 0
        assert time.time() - killed_at < 120
    finally:
        if launch.poll() is None:
            launch.kill()
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        last = f.read().strip()
    checkpoint = CheckpointLoader.load_checkpoint(last, map_location='cpu')
    assert checkpoint['meta']['epoch'] >= 1
    assert any(key.startswith('backbone.') for key in checkpoint['state_dict'])
