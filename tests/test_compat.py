"""lors_mmdet.compat: safe checkpoint loading and clear errors for a broken stack."""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import lors_mmdet  # noqa: F401  (applies compat)
from lors_mmdet.compat import UnsafeCheckpointError, safe_load_checkpoint


class _RunsShellOnLoad:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


class _GetattrOnLoad:
    def __reduce__(self):
        return (getattr, (np.ndarray, 'tofile'))


def _mmengine_like_checkpoint() -> dict:
    from mmengine.logging import HistoryBuffer, MessageHub
    hub = MessageHub.get_instance('test_compat')
    for value in (3.0, 2.0, 1.5):
        hub.update_scalar('train/loss', value)
    hub.update_info('iter', 7)
    return dict(meta=dict(epoch=1, iter=7, seed=np.int64(5),
                          dataset_meta=dict(classes=('a', 'b'))),
                state_dict={'w': torch.ones(2, 3)},
                message_hub=hub.state_dict(),
                buffer=HistoryBuffer([1.0, 2.0], [1, 1]))


def test_mmengine_checkpoint_roundtrip_with_weights_only(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    torch.save(_mmengine_like_checkpoint(), path)
    # The fixed HistoryBuffer no longer pickles getattr calls.
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    assert 'builtins.getattr' not in unsafe
    loaded = safe_load_checkpoint(str(path))
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2, 3))
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert buffer.mean() == pytest.approx(6.5 / 3)
    assert buffer.statistics('min') == 1.5
    assert loaded['meta']['seed'] == 5


def test_legacy_history_buffer_checkpoint_loads_without_getattr(tmp_path, monkeypatch):
    """Checkpoints written by stock mmengine pickle `getattr(HistoryBuffer, 'min')`."""
    from mmengine.logging import HistoryBuffer

    def stock_getstate(self):  # mmengine 0.10.7's own HistoryBuffer.__getstate__
        self.__dict__.update(statistics_methods=self._statistics_methods)
        return self.__dict__

    path = tmp_path / 'legacy.pth'
    with monkeypatch.context() as patch:
        patch.setattr(HistoryBuffer, '__getstate__', stock_getstate)
        torch.save({'buffer': HistoryBuffer([4.0, 2.0], [1, 1])}, path)
    assert 'builtins.getattr' in torch.serialization.get_unsafe_globals_in_checkpoint(
        str(path))
    loaded = safe_load_checkpoint(str(path))['buffer']
    assert isinstance(loaded, HistoryBuffer)
    assert loaded.min() == 2.0 and loaded.mean() == 3.0
    # The class-level statistics methods are still the real ones.
    assert HistoryBuffer._statistics_methods['min'] is HistoryBuffer.min


def test_code_running_checkpoint_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': _RunsShellOnLoad(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match='refusing to load'):
        safe_load_checkpoint(str(path))
    assert not marker.exists()


def test_getattr_on_other_objects_is_refused(tmp_path):
    path = tmp_path / 'evil_getattr.pth'
    torch.save({'payload': _GetattrOnLoad()}, path)
    with pytest.raises(UnsafeCheckpointError):
        safe_load_checkpoint(str(path))


def test_mmengine_runner_uses_the_safe_loader(tmp_path):
    from mmengine.runner import load_checkpoint
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': _RunsShellOnLoad(str(marker))}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(torch.nn.Linear(2, 2), str(path))
    assert not marker.exists()
    good = tmp_path / 'good.pth'
    model = torch.nn.Linear(2, 2)
    torch.save({'state_dict': model.state_dict()}, good)
    load_checkpoint(torch.nn.Linear(2, 2), str(good))


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        safe_load_checkpoint(str(tmp_path / 'nope.pth'))


@pytest.mark.parametrize('blocked, expected', [
    ('mmcv._ext', 'mmcv._ext'),
])
def test_missing_mmcv_ops_gives_install_instructions(blocked, expected):
    """Simulate an mmcv without compiled ops: importing the plugin says how to fix it."""
    script = textwrap.dedent(f'''
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == {blocked!r}:
                    raise ModuleNotFoundError("No module named " + name)
        sys.meta_path.insert(0, Block())
        import lors_mmdet
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode != 0
    assert expected in result.stderr
    assert 'MMCV_WITH_OPS=1 pip install --no-build-isolation mmcv==2.1.0' in result.stderr


def test_incompatible_mmcv_version_is_named():
    script = textwrap.dedent('''
        import mmcv
        mmcv.__version__ = '2.2.0'
        import lors_mmdet
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode != 0
    assert 'mmcv 2.2.0 is installed' in result.stderr


STOPPED_PEER = textwrap.dedent("""
    import os, signal, sys, time
    import torch
    import lors_mmdet  # noqa: F401  (the CPU launcher)
    from mmengine.dist import init_dist
    init_dist('pytorch', backend='gloo', timeout=int(sys.argv[1]))
    if int(os.environ['RANK']) == 1:
        os.kill(os.getpid(), signal.SIGSTOP)  # stopped, not dead: its sockets stay open
    start = time.time()
    try:
        torch.distributed.all_reduce(torch.ones(1))
    except RuntimeError:
        print(f'timed out after {time.time() - start:.0f} s', flush=True)
    # Leave without tearing the process group down: gloo's destructor, with a peer that
    # is stopped mid-collective, may abort the process after the timeout has done its job.
    os._exit(0)
""")


def test_dist_cfg_timeout_ends_the_wait_for_a_stopped_rank(tmp_path):
    """env_cfg.dist_cfg.timeout (seconds) reaches the CPU process group: a rank that
    waits for a stopped one fails after it, not after the default 30 minutes."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(port), WORLD_SIZE='2')
    ranks = [subprocess.Popen([sys.executable, '-c', STOPPED_PEER, '5'],
                              env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    try:
        out, err = ranks[0].communicate(timeout=120)
        assert ranks[0].returncode == 0, err[-3000:]
        assert 'timed out after' in out, (out, err[-3000:])
        assert int(out.split('after ')[1].split(' s')[0]) < 60
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.wait()
