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
