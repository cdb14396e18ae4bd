"""Checkpoint saves that a crash cannot take away, and a resume that skips damaged files.

The crash tests kill real processes (SIGKILL) while they write a checkpoint:
tools/train.py on a tiny Deformable-DETR (tests/configs/tiny_iter_checkpoints*.py,
killed by tests/plugins/checkpoint_crash.py), and a toy mmengine runner in forked
processes. The rest are unit tests of the backend and of the checkpoint checks.
"""
import glob
import json
import logging
import multiprocessing
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import zipfile
from typing import Dict, List

import mmdet
import pytest
import torch
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.fileio import get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import DataLoader, Dataset

from lors_mmdet.compat import safe_load_checkpoint
from lors_mmdet.engine import (AtomicCheckpointHook, AtomicLocalBackend, checkpoint_problem,
                               find_resumable_checkpoint, select_resume_checkpoint)
from lors_mmdet.engine.atomic_checkpoint import TEMP_SUFFIX

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PLUGINS = osp.join(ROOT, 'tests', 'plugins')
CONFIG = osp.join(ROOT, 'tests', 'configs', 'tiny_iter_checkpoints.py')
CRASH_CONFIG = osp.join(ROOT, 'tests', 'configs', 'tiny_iter_checkpoints_crash.py')
MMDET_TRAIN = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
sys.path.insert(0, PLUGINS)
from checkpoint_crash import KillDuringCheckpointSaveHook  # noqa: E402


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def run_train(args: List[str], data_root: str, tool: str = 'tools/train.py'
              ) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=f'{ROOT}{os.pathsep}{PLUGINS}')
    return subprocess.run(
        [sys.executable, tool, *args, '--cfg-options',
         f'train_dataloader.dataset.data_root={data_root}'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def losses_by_run(work_dir: str) -> List[Dict[int, float]]:
    """{iteration: loss} of each run (timestamped folder) in work_dir, oldest first."""
    runs = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            records = [json.loads(line) for line in f]
        runs.append({r['iter']: r['loss'] for r in records if 'loss' in r})
    return runs


def read_last_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def save_tiny_checkpoint(path: str, value: float = 1.0) -> None:
    torch.save({'state_dict': {'w': torch.full((64, 64), value)}, 'meta': {'iter': 1}}, path)


def member_data_offset(path: str, member_suffix: str) -> int:
    """File offset of the first data byte of the zip member ending with member_suffix."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    with open(path, 'rb') as f:
        f.seek(info.header_offset)
        header = f.read(30)  # local file header; name and extra lengths at 26..30
    name_length = int.from_bytes(header[26:28], 'little')
    extra_length = int.from_bytes(header[28:30], 'little')
    return info.header_offset + 30 + name_length + extra_length


def flip_byte(path: str, offset: int) -> None:
    with open(path, 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
def log_records():
    """Messages that print_log(logger='current') emits during the test."""
    records: List[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = MMLogger.get_current_instance()
    handler = Collect(level=logging.DEBUG)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


# --------------------------------------------------------------------------
# tools/train.py killed while writing a checkpoint
# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def data_root(synthetic_coco_factory) -> str:
    return synthetic_coco_factory(num_train=16, num_val=8, img_size=64, seed=0)


@pytest.fixture(scope='module')
def crashed_run(tmp_path_factory, data_root) -> dict:
    """tools/train.py killed while writing iter_4.pth; a copy of its iter_2.pth."""
    work_dir = str(tmp_path_factory.mktemp('crashed'))
    result = run_train([CRASH_CONFIG, '--work-dir', work_dir], data_root)
    spare = str(tmp_path_factory.mktemp('spare') / 'iter_2.pth')
    if osp.exists(osp.join(work_dir, 'iter_2.pth')):
        shutil.copyfile(osp.join(work_dir, 'iter_2.pth'), spare)
    return dict(work_dir=work_dir, result=result, files=sorted(os.listdir(work_dir)),
                spare_iter_2=spare)


def test_kill_during_save_keeps_previous_checkpoint_and_resumes(crashed_run, data_root):
    work_dir, result = crashed_run['work_dir'], crashed_run['result']
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert 'Saving checkpoint at 4 iterations' in result.stdout + result.stderr
    # max_keep_ckpts=1, yet the previous checkpoint survives, intact and named
    checkpoints = [n for n in crashed_run['files'] if n.endswith('.pth')]
    assert checkpoints == ['iter_2.pth']
    assert read_last_checkpoint(work_dir) == osp.join(work_dir, 'iter_2.pth')
    assert checkpoint_problem(osp.join(work_dir, 'iter_2.pth')) is None
    assert find_resumable_checkpoint(work_dir) == osp.join(work_dir, 'iter_2.pth')

    # the same work dir, without the crash hook, runs to the end
    resumed = run_train([CONFIG, '--work-dir', work_dir, '--resume'], data_root)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 2' in resumed.stdout + resumed.stderr
    assert sorted(n for n in os.listdir(work_dir) if n.endswith('.pth')) == ['iter_6.pth']
    assert read_last_checkpoint(work_dir) == osp.join(work_dir, 'iter_6.pth')
    assert not [n for n in os.listdir(work_dir) if n.endswith(TEMP_SUFFIX)]
    crashed_losses, resumed_losses = losses_by_run(work_dir)
    assert sorted(crashed_losses) == [1, 2, 3, 4]
    assert sorted(resumed_losses) == [3, 4, 5, 6]
    for iteration in (3, 4):  # RNGStateHook: the resumed run repeats the lost iterations
        assert resumed_losses[iteration] == pytest.approx(crashed_losses[iteration],
                                                          rel=1e-6, abs=1e-6)


@pytest.mark.skipif(not osp.isfile(MMDET_TRAIN), reason="mmdet's tools/train.py not installed")
def test_stock_checkpoint_hook_loses_every_checkpoint(tmp_path, data_root):
    """The bug being fixed: mmdet's own train.py keeps the stock CheckpointHook."""
    work_dir = str(tmp_path)
    result = run_train([CRASH_CONFIG, '--work-dir', work_dir], data_root, tool=MMDET_TRAIN)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not glob.glob(osp.join(work_dir, '*.pth'))  # iter_2.pth deleted before the save
    assert read_last_checkpoint(work_dir) == osp.join(work_dir, 'iter_2.pth')
    assert find_resumable_checkpoint(work_dir) is None
    with pytest.raises(FileNotFoundError, match='no intact checkpoint'):
        select_resume_checkpoint(work_dir)


def test_resume_skips_truncated_last_checkpoint(crashed_run, data_root, tmp_path):
    work_dir = str(tmp_path)
    shutil.copyfile(crashed_run['spare_iter_2'], osp.join(work_dir, 'iter_2.pth'))
    with open(crashed_run['spare_iter_2'], 'rb') as f:
        data = f.read()
    truncated = osp.join(work_dir, 'iter_4.pth')
    with open(truncated, 'wb') as f:  # what a kill during a plain write leaves
        f.write(data[:len(data) // 2])
    with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
        f.write(truncated)

    resumed = run_train([CONFIG, '--work-dir', work_dir, '--resume'], data_root)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f'last_checkpoint names {truncated}, which cannot be resumed from' in log
    assert f'Resuming from {osp.join(work_dir, "iter_2.pth")} instead' in log
    assert 'resumed epoch: 0, iter: 2' in log
    (resumed_losses,) = losses_by_run(work_dir)
    assert sorted(resumed_losses) == [3, 4, 5, 6]
    assert sorted(n for n in os.listdir(work_dir) if n.endswith('.pth')) == ['iter_6.pth']


# --------------------------------------------------------------------------
# a toy mmengine runner: the hook against mmengine's own, best checkpoints
# --------------------------------------------------------------------------
class ToyData(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=torch.full((2, ), float(index)), data_samples=torch.tensor(float(index)))


class ToyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        outputs = self.linear(inputs).squeeze(1)
        if mode == 'loss':
            return dict(loss=((outputs - data_samples) ** 2).mean())
        return list(outputs)


class EvaluationCount(BaseMetric):
    """acc = how many evaluations ran: every validation makes a new best."""

    def __init__(self) -> None:
        super().__init__()
        self.evaluations = 0

    def process(self, data_batch, data_samples) -> None:
        self.results.append(0)

    def compute_metrics(self, results) -> dict:
        self.evaluations += 1
        return dict(acc=float(self.evaluations))


def toy_runner(work_dir: str, hook_type: type, name: str, custom_hooks=(),
               resume: bool = False) -> Runner:
    loader = dict(batch_size=2, collate_fn=torch.utils.data.default_collate)
    return Runner(
        model=ToyModel(),
        work_dir=work_dir,
        experiment_name=name,
        train_dataloader=DataLoader(ToyData(), shuffle=False, **loader),
        val_dataloader=DataLoader(ToyData(), **loader),
        val_evaluator=Evaluator([EvaluationCount()]),
        val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=6, val_interval=2),
        default_hooks=dict(checkpoint=hook_type(
            by_epoch=False, interval=2, max_keep_ckpts=2, save_best='acc', rule='greater')),
        custom_hooks=list(custom_hooks),
        default_scope='mmdet',  # the scope the other in-process tests expect
        resume=resume,
        randomness=dict(seed=0))


def bookkeeping(work_dir: str) -> dict:
    """Checkpoint file names, last_checkpoint and what each checkpoint's message hub
    says about checkpoints (paths made relative to work_dir)."""
    def relative(value):
        return osp.relpath(value, work_dir) if isinstance(value, str) else value

    names = sorted(n for n in os.listdir(work_dir) if n.endswith('.pth'))
    info = {}
    for name in names:
        runtime = safe_load_checkpoint(osp.join(work_dir, name))['message_hub']['runtime_info']
        info[name] = {key: relative(runtime.get(key)) for key in
                      ('keep_ckpt_ids', 'last_ckpt', 'best_ckpt', 'best_score')}
    return dict(files=names, last=relative(read_last_checkpoint(work_dir)), info=info)


def test_hook_keeps_mmengine_bookkeeping(tmp_path):
    """Same files and the same message-hub records as mmengine's CheckpointHook."""
    results = {}
    for hook_type in (CheckpointHook, AtomicCheckpointHook):
        work_dir = str(tmp_path / hook_type.__name__)
        runner = toy_runner(work_dir, hook_type, f'bookkeeping_{hook_type.__name__}')
        runner.train()
        if hook_type is AtomicCheckpointHook:
            hook = next(h for h in runner.hooks if isinstance(h, AtomicCheckpointHook))
            assert isinstance(hook.file_backend, AtomicLocalBackend)
        results[hook_type] = bookkeeping(work_dir)
    stock, atomic = results[CheckpointHook], results[AtomicCheckpointHook]
    assert stock['files'] == ['best_acc_iter_6.pth', 'iter_4.pth', 'iter_6.pth']
    assert stock['info']['iter_6.pth']['keep_ckpt_ids'] == [4, 6]
    assert atomic == stock


def _train_toy_until_killed(work_dir: str, hook_type: type, kill_hook) -> None:
    torch.set_num_threads(1)  # a forked child: no OpenMP thread pool of the parent
    toy_runner(work_dir, hook_type, f'killed_{hook_type.__name__}', [kill_hook]).train()


@pytest.mark.parametrize('hook_type', [CheckpointHook, AtomicCheckpointHook])
def test_kill_during_best_save(tmp_path, hook_type):
    """Killed while writing the new best checkpoint: mmengine has already deleted
    the previous best; AtomicCheckpointHook keeps it."""
    work_dir = str(tmp_path)
    child = multiprocessing.get_context('fork').Process(
        target=_train_toy_until_killed,
        args=(work_dir, hook_type, KillDuringCheckpointSaveHook(at_iter=4, best_only=True)))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    names = sorted(n for n in os.listdir(work_dir) if n.endswith('.pth'))
    if hook_type is CheckpointHook:
        assert names == ['iter_2.pth', 'iter_4.pth']  # no best checkpoint left
    else:
        assert names == ['best_acc_iter_2.pth', 'iter_2.pth', 'iter_4.pth']
        assert checkpoint_problem(osp.join(work_dir, 'best_acc_iter_2.pth')) is None
        assert read_last_checkpoint(work_dir) == osp.join(work_dir, 'iter_4.pth')


def test_kill_right_after_a_new_best_leaves_no_untracked_best(tmp_path):
    """Killed after the new best file is in place but before the regular checkpoint
    records it: the resumed run adopts that best (its file and its score) and deletes
    the outdated one, instead of leaving a best file nothing tracks."""
    work_dir = str(tmp_path)
    child = multiprocessing.get_context('fork').Process(
        target=_train_toy_until_killed,
        args=(work_dir, AtomicCheckpointHook, KillDuringCheckpointSaveHook(at_iter=4, nth=3)))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    assert sorted(n for n in os.listdir(work_dir) if n.endswith('.pth')) == [
        'best_acc_iter_2.pth', 'best_acc_iter_4.pth', 'iter_2.pth', 'iter_4.pth']
    runtime = safe_load_checkpoint(osp.join(work_dir, 'iter_4.pth'))['message_hub']['runtime_info']
    assert runtime['best_ckpt'] == osp.join(work_dir, 'best_acc_iter_2.pth')

    toy_runner(work_dir, AtomicCheckpointHook, 'resumed_after_best', resume=True).train()
    state = bookkeeping(work_dir)
    assert state['files'] == ['best_acc_iter_4.pth', 'iter_4.pth', 'iter_6.pth']
    assert state['info']['iter_6.pth']['best_ckpt'] == 'best_acc_iter_4.pth'
    assert state['info']['iter_6.pth']['best_score'] == 2.0  # the second evaluation's
    log = ''.join(open(path).read() for path in glob.glob(osp.join(work_dir, '*', '*.log')))
    assert 'best_acc_iter_4.pth was saved as the best checkpoint' in log
    assert 'we adopt it and delete ' + osp.join(work_dir, 'best_acc_iter_2.pth') in log


# --------------------------------------------------------------------------
# AtomicLocalBackend
# --------------------------------------------------------------------------
def test_backend_is_registered():
    backend = get_file_backend('/any/local/path', backend_args=dict(backend='atomic_local'))
    assert isinstance(backend, AtomicLocalBackend)


def test_put_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / 'sub' / 'iter_1.pth'
    backend = AtomicLocalBackend()
    backend.put(b'first', target)
    backend.put(b'second version', str(target))
    assert target.read_bytes() == b'second version'
    backend.put_text('iter_1.pth', tmp_path / 'last_checkpoint')
    assert (tmp_path / 'last_checkpoint').read_text() == 'iter_1.pth'
    assert sorted(os.listdir(tmp_path)) == ['last_checkpoint', 'sub']
    assert os.listdir(tmp_path / 'sub') == ['iter_1.pth']
    plain = tmp_path / 'plain'
    plain.write_bytes(b'')
    assert target.stat().st_mode == plain.stat().st_mode  # the umask's permissions


def test_failed_put_keeps_existing_file(tmp_path):
    target = tmp_path / 'iter_1.pth'
    target.write_bytes(b'good checkpoint')
    with pytest.raises(TypeError):
        AtomicLocalBackend().put(object(), target)  # not bytes: fails in the write
    assert target.read_bytes() == b'good checkpoint'
    assert os.listdir(tmp_path) == ['iter_1.pth']


def test_put_onto_a_folder_names_it_and_writes_nothing(tmp_path):
    (tmp_path / 'iter_6.pth').mkdir()
    with pytest.raises(IsADirectoryError, match=r'iter_6\.pth: a folder has that name'):
        AtomicLocalBackend().put(b'checkpoint', tmp_path / 'iter_6.pth')
    assert os.listdir(tmp_path) == ['iter_6.pth']


NO_ROOM = """
import os, resource, signal, sys
import torch
from lors_mmdet.engine import save_checkpoint_file
path = sys.argv[1]
save_checkpoint_file({'w': torch.ones(100)}, path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
try:
    save_checkpoint_file({'w': torch.ones(100000)}, path)
except OSError as error:
    print('error:', error)
"""


def test_no_room_for_the_new_checkpoint_names_the_file_and_the_way_out(tmp_path):
    """A real failed write: the file size limit (ulimit -f) fails it as a full disk would."""
    path = str(tmp_path / 'iter_2.pth')
    result = subprocess.run([sys.executable, '-c', NO_ROOM, path], cwd=ROOT, text=True,
                            capture_output=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'cannot save {path} (' in result.stdout, result.stdout
    assert 'max_keep_ckpts' in result.stdout and 'free space' in result.stdout
    assert torch.equal(safe_load_checkpoint(path)['w'], torch.ones(100))
    assert os.listdir(tmp_path) == ['iter_2.pth']


def test_legacy_format_checkpoint_is_diagnosed_as_such(tmp_path, log_records):
    work_dir = str(tmp_path)
    save_tiny_checkpoint(osp.join(work_dir, 'iter_2.pth'))
    legacy = osp.join(work_dir, 'iter_4.pth')
    torch.save({'state_dict': {'w': torch.ones(3)}}, legacy,
               _use_new_zipfile_serialization=False)
    with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
        f.write(legacy)
    assert find_resumable_checkpoint(work_dir) == osp.join(work_dir, 'iter_2.pth')
    (warning, ) = [r for r in log_records if legacy in r]
    assert 'legacy' in warning and 'truncated' not in warning, warning
    with open(legacy, 'w') as f:
        f.write('not a checkpoint')
    assert 'neither' in checkpoint_problem(legacy)


def _put_killed_before_rename(target: str) -> None:
    def kill(fd: int) -> None:  # the data is written; the process dies before the rename
        os.kill(os.getpid(), signal.SIGKILL)

    os.fsync = kill  # only in this forked child
    AtomicLocalBackend().put(b'new checkpoint' * 1000, target)


def test_kill_during_put_keeps_existing_file(tmp_path):
    target = tmp_path / 'iter_1.pth'
    target.write_bytes(b'good checkpoint')
    child = multiprocessing.get_context('fork').Process(target=_put_killed_before_rename,
                                                        args=(str(target), ))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    assert target.read_bytes() == b'good checkpoint'
    (leftover, ) = [n for n in os.listdir(tmp_path) if n != 'iter_1.pth']
    assert leftover.startswith('.iter_1.pth.') and leftover.endswith(TEMP_SUFFIX)
    assert (tmp_path / leftover).stat().st_size == len(b'new checkpoint' * 1000)
    assert find_resumable_checkpoint(str(tmp_path)) is None  # b'good checkpoint' is no zip


# --------------------------------------------------------------------------
# checkpoint_problem / find_resumable_checkpoint
# --------------------------------------------------------------------------
def test_checkpoint_problem_detects_damage(tmp_path):
    path = str(tmp_path / 'iter_1.pth')
    save_tiny_checkpoint(path)
    assert checkpoint_problem(path) is None
    data = open(path, 'rb').read()

    assert 'does not exist' in checkpoint_problem(str(tmp_path / 'nothing.pth'))
    open(path, 'wb').close()
    assert 'empty' in checkpoint_problem(path)
    for cut in (len(data) // 2, len(data) - 10):
        with open(path, 'wb') as f:
            f.write(data[:cut])
        assert 'not a complete torch zip archive' in checkpoint_problem(path)
    for member in ('/data/0', '/data.pkl'):  # a tensor's bytes, the pickle
        with open(path, 'wb') as f:
            f.write(data)
        flip_byte(path, member_data_offset(path, member) + 5)
        problem = checkpoint_problem(path)
        assert problem is not None and 'CRC-32' in problem and member in problem
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('archive/other.txt', 'x')
    assert 'without data.pkl' in checkpoint_problem(path)


def test_find_resumable_prefers_last_checkpoint(tmp_path, log_records):
    work_dir = str(tmp_path)
    for n in (2, 4, 6):
        save_tiny_checkpoint(osp.join(work_dir, f'iter_{n}.pth'), value=n)
    AtomicLocalBackend().put_text(osp.join(work_dir, 'iter_4.pth'),
                                  osp.join(work_dir, 'last_checkpoint'))
    assert find_resumable_checkpoint(work_dir) == osp.join(work_dir, 'iter_4.pth')
    os.remove(osp.join(work_dir, 'last_checkpoint'))
    assert find_resumable_checkpoint(work_dir) == osp.join(work_dir, 'iter_6.pth')
    assert log_records == []


def test_find_resumable_falls_back_to_newest_intact(tmp_path, log_records):
    work_dir = str(tmp_path)
    for n in (2, 10, 12):
        save_tiny_checkpoint(osp.join(work_dir, f'iter_{n}.pth'), value=n)
    named = osp.join(work_dir, 'iter_12.pth')
    with open(named, 'r+b') as f:
        f.truncate(100)
    flip_byte(osp.join(work_dir, 'iter_10.pth'),
              member_data_offset(osp.join(work_dir, 'iter_10.pth'), '/data/0'))
    # a temporary file of a killed save with a larger N is no candidate
    save_tiny_checkpoint(osp.join(work_dir, f'.iter_14.pth.0a1b2c3d{TEMP_SUFFIX}'))
    with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
        f.write(named)

    assert find_resumable_checkpoint(work_dir) == osp.join(work_dir, 'iter_2.pth')
    assert any(named in r and 'cannot be resumed from' in r and 'truncated' in r
               for r in log_records), log_records
    assert any('iter_10.pth' in r and 'CRC-32' in r for r in log_records), log_records
    assert select_resume_checkpoint(work_dir) == osp.join(work_dir, 'iter_2.pth')


def test_find_resumable_leaves_remote_checkpoints_to_mmengine(tmp_path):
    with open(tmp_path / 'last_checkpoint', 'w') as f:
        f.write('s3://bucket/run/iter_8.pth')
    assert find_resumable_checkpoint(str(tmp_path)) == 's3://bucket/run/iter_8.pth'


def test_find_resumable_none_intact(tmp_path):
    work_dir = str(tmp_path)
    assert find_resumable_checkpoint(work_dir) is None
    assert select_resume_checkpoint(work_dir) is None  # a fresh work dir: from the start
    open(osp.join(work_dir, 'epoch_3.pth'), 'wb').close()
    assert find_resumable_checkpoint(work_dir) is None
    with pytest.raises(FileNotFoundError, match='no intact checkpoint in'):
        select_resume_checkpoint(work_dir)


def test_hook_removes_temp_leftovers_at_next_save(tmp_path):
    work_dir = str(tmp_path)
    os.makedirs(work_dir, exist_ok=True)
    leftovers = [f'.iter_2.pth.deadbeef{TEMP_SUFFIX}', f'.last_checkpoint.0badf00d{TEMP_SUFFIX}']
    for name in leftovers:
        open(osp.join(work_dir, name), 'wb').close()
    keep = osp.join(work_dir, 'notes.partial.txt')
    open(keep, 'w').close()
    toy_runner(work_dir, AtomicCheckpointHook, 'leftovers').train()
    assert not any(osp.exists(osp.join(work_dir, name)) for name in leftovers)
    assert osp.exists(keep)
    assert find_resumable_checkpoint(work_dir) == osp.join(work_dir, 'iter_6.pth')


class _FailsToPickle:
    def __reduce__(self):
        raise RuntimeError('cannot pickle')


def test_save_checkpoint_file_keeps_the_old_file_when_saving_fails(tmp_path):
    from lors_mmdet.engine import save_checkpoint_file
    from lors_mmdet.checkpoint_loading import safe_load_checkpoint
    path = str(tmp_path / 'converted.pth')
    save_checkpoint_file({'w': torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match='cannot pickle'):
        save_checkpoint_file({'w': torch.zeros(3), 'bad': _FailsToPickle()}, path)
    assert torch.equal(safe_load_checkpoint(path)['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['converted.pth']
