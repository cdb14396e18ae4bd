"""No checkpoint runs code when loaded: by URL, from torch.hub's cache, by any scheme.

Checkpoints are served by a real HTTP server on 127.0.0.1 that the tests start and
stop. A "malicious" checkpoint carries a pickle whose loading would run a shell
command creating a marker file: every entry point must refuse it with
UnsafeCheckpointError, and the marker must never appear. Legitimate mmengine
checkpoints (with HistoryBuffer in their message hub) keep loading by URL.
"""
import functools
import http.server
import io
import os
import os.path as osp
import subprocess
import sys
import threading
import zipfile
from typing import Iterator, List, Tuple

import numpy as np
import pytest
import torch

import lors_mmdet  # noqa: F401  (installs the safe loaders)
from lors_mmdet.checkpoint_loading import (SAFE_LOADERS, CorruptCheckpointError,
                                           UnsafeCheckpointError, hub_cache_path,
                                           safe_load_checkpoint, torchvision_model_urls)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'tests', 'configs', 'tiny_deformable_detr_synthetic.py')
LORS_CONFIG = osp.join(ROOT, 'configs', 'lors_deformable_detr',
                       'lors-deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py')


class RunsShellOnLoad:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def mmengine_checkpoint(state_dict: dict) -> dict:
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('test_checkpoint_urls')
    for value in (3.0, 2.0):
        hub.update_scalar('train/loss', value)
    return dict(meta=dict(epoch=1, iter=2, seed=np.int64(0)), state_dict=state_dict,
                message_hub=hub.state_dict())


class Server:
    """A static file server on 127.0.0.1, serving ``folder``."""

    def __init__(self, folder: str) -> None:
        handler = functools.partial(_QuietHandler, directory=folder)
        self.folder = folder
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f'http://127.0.0.1:{self.httpd.server_address[1]}/{name}'

    def publish(self, name: str, checkpoint) -> str:
        torch.save(checkpoint, osp.join(self.folder, name))
        return self.url(name)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope='module')
def server(tmp_path_factory) -> Iterator[Server]:
    served = Server(str(tmp_path_factory.mktemp('served')))
    yield served
    served.stop()


@pytest.fixture
def marker(tmp_path) -> str:
    return str(tmp_path / 'code_ran')


@pytest.fixture
def evil_url(server, marker, request) -> str:
    return server.publish(f'evil_{request.node.name}.pth'.replace('[', '_').replace(']', ''),
                          dict(state_dict={}, meta={}, payload=RunsShellOnLoad(marker)))


@pytest.fixture
def hub_dir(tmp_path) -> Iterator[str]:
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    yield torch.hub.get_dir()
    torch.hub.set_dir(previous)


# ---------------------------------------------------------------- in process
def test_legitimate_mmengine_checkpoint_loads_by_url(server, hub_dir):
    from mmengine.runner import CheckpointLoader
    url = server.publish('good.pth', mmengine_checkpoint({'w': torch.arange(6.)}))
    loaded = CheckpointLoader.load_checkpoint(url, map_location='cpu')
    assert torch.equal(loaded['state_dict']['w'], torch.arange(6.))
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == 2.5
    # Downloaded once into the hub cache, from where the next load reads it.
    assert osp.isfile(hub_cache_path(url))
    os.remove(osp.join(server.folder, 'good.pth'))
    again = CheckpointLoader.load_checkpoint(url, map_location='cpu')
    assert torch.equal(again['state_dict']['w'], torch.arange(6.))


def test_code_running_checkpoint_by_url_is_refused(evil_url, marker, hub_dir):
    from mmengine.runner import CheckpointLoader, load_checkpoint
    with pytest.raises(UnsafeCheckpointError, match='refusing to load'):
        CheckpointLoader.load_checkpoint(evil_url, map_location='cpu')
    # From the hub cache too, at every later load.
    assert osp.isfile(hub_cache_path(evil_url))
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(torch.nn.Linear(2, 2), evil_url)
    assert not osp.exists(marker)


def _scheme_urls() -> List[Tuple[str, str]]:
    """(checkpoint name with a scheme, the URL mmengine resolves it to)."""
    from mmengine.runner.checkpoint import get_external_models, get_mmcls_models
    torchvision = torchvision_model_urls()
    external, mmcls = get_external_models(), get_mmcls_models()
    return [('torchvision://resnet50', torchvision['resnet50']),
            ('modelzoo://resnet50', torchvision['resnet50']),
            ('open-mmlab://detectron2/resnet50_caffe', external['detectron2/resnet50_caffe']),
            ('openmmlab://detectron2/resnet50_caffe', external['detectron2/resnet50_caffe']),
            ('mmcls://resnet50', mmcls['resnet50'])]


@pytest.mark.parametrize('name,url', _scheme_urls())
def test_every_downloading_scheme_loads_its_hub_cache_safely(name, url, hub_dir, marker):
    """No network here: the file each scheme resolves to is put in the hub cache."""
    from mmengine.runner import CheckpointLoader
    cached = hub_cache_path(url)
    os.makedirs(osp.dirname(cached), exist_ok=True)
    weights = {'backbone.conv1.weight': torch.ones(2, 3)} if name.startswith('mmcls') \
        else {'conv1.weight': torch.ones(2, 3)}
    # Old torchvision weights use torch's legacy (pre-zip) format.
    torch.save(weights, cached, _use_new_zipfile_serialization=False)
    loaded = CheckpointLoader.load_checkpoint(name, map_location='cpu')
    loaded = loaded.get('state_dict', loaded)
    assert torch.equal(next(iter(loaded.values())), torch.ones(2, 3))

    torch.save({'payload': RunsShellOnLoad(marker)}, cached)
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint(name, map_location='cpu')
    assert not osp.exists(marker)


def test_pretrained_init_cfg_by_url(server, evil_url, marker, hub_dir):
    from mmengine.model import BaseModule

    class Net(BaseModule):
        def __init__(self, checkpoint: str) -> None:
            super().__init__(init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
            self.fc = torch.nn.Linear(2, 3)

    url = server.publish('fc.pth', {'fc.weight': torch.full((3, 2), 7.), 'fc.bias': torch.ones(3)})
    net = Net(url)
    net.init_weights()
    assert torch.equal(net.fc.weight, torch.full((3, 2), 7.))
    with pytest.raises(UnsafeCheckpointError):
        Net(evil_url).init_weights()
    assert not osp.exists(marker)


@pytest.fixture(scope='module')
def detector_url(server) -> str:
    """A legitimate checkpoint of the tiny test detector, served by URL."""
    from mmdet.apis import init_detector
    model = init_detector(CONFIG, None, device='cpu')
    model.init_weights()  # defined values everywhere (an uninitialised tensor may hold NaN)
    return server.publish('detector.pth', dict(meta=dict(dataset_meta=model.dataset_meta),
                                               state_dict=model.state_dict()))


def test_det_inferencer_and_init_detector_by_url(detector_url, evil_url, marker, hub_dir):
    from mmdet.apis import DetInferencer, init_detector
    model = init_detector(CONFIG, detector_url, device='cpu')
    expected = torch.load(hub_cache_path(detector_url), weights_only=True)['state_dict']
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, equal_nan=True,
                                   msg=key)
    inferencer = DetInferencer(model=CONFIG, weights=detector_url, device='cpu', show_progress=False)
    result = inferencer(np.zeros((64, 64, 3), np.uint8), return_datasamples=True)
    assert len(result['predictions']) == 1
    with pytest.raises(UnsafeCheckpointError):
        init_detector(CONFIG, evil_url, device='cpu')
    with pytest.raises(UnsafeCheckpointError):
        DetInferencer(model=CONFIG, weights=evil_url, device='cpu', show_progress=False)
    assert not osp.exists(marker)


def test_every_registered_scheme_is_safe():
    from mmengine.runner.checkpoint import CheckpointLoader
    ours = {function for function in SAFE_LOADERS.values()}
    for prefix, loader in CheckpointLoader._schemes.items():
        assert loader in ours, f'{prefix} -> {loader}'


def _load_unsafely(filename: str, map_location=None):
    """What a careless package registers: torch.load with weights_only=False."""
    return torch.load(filename.split('://', 1)[1], map_location=map_location,
                      weights_only=False)


@pytest.mark.parametrize('prefix', ['late-test://', r'http://127\.0\.0\.1'],
                         ids=['new', 'shadowing_http'])
def test_scheme_registered_after_import_is_refused(prefix, evil_url, server, marker, hub_dir):
    """Checked when loading: a scheme registered later (even one shadowing http://) is
    refused, though nothing reinstalls the safe loaders."""
    from mmengine.runner import CheckpointLoader
    from mmengine.runner.checkpoint import _load_checkpoint
    path = osp.join(server.folder, evil_url.rsplit('/', 1)[1])
    name = f'late-test://{path}' if prefix == 'late-test://' else evil_url
    CheckpointLoader.register_scheme(prefix, loader=_load_unsafely)
    try:
        for load in (CheckpointLoader.load_checkpoint, _load_checkpoint):
            with pytest.raises(UnsafeCheckpointError, match='registered'):
                load(name, map_location='cpu')
    finally:
        CheckpointLoader._schemes.pop(prefix)
    assert not osp.exists(marker)


def test_mmengine_load_url_is_safe(server, evil_url, marker, hub_dir):
    """mmengine's load_url (torch.hub's, weights_only=False) under every name it has."""
    import mmengine.runner.checkpoint
    import mmengine.utils.dl_utils
    import mmengine.utils.dl_utils.hub
    url = server.publish('by_load_url.pth', mmengine_checkpoint({'w': torch.arange(4.)}))
    for module in (mmengine.utils.dl_utils, mmengine.utils.dl_utils.hub,
                   mmengine.runner.checkpoint):
        loaded = module.load_url(url, map_location='cpu')
        assert torch.equal(loaded['state_dict']['w'], torch.arange(4.))
        with pytest.raises(UnsafeCheckpointError):
            module.load_url(evil_url, map_location='cpu')
    # torch.hub's keyword arguments keep their meaning.
    folder = osp.join(hub_dir, 'elsewhere')
    loaded = mmengine.utils.dl_utils.load_url(url, model_dir=folder, file_name='renamed.pth',
                                              progress=False)
    assert torch.equal(loaded['state_dict']['w'], torch.arange(4.))
    assert osp.isfile(osp.join(folder, 'renamed.pth'))
    assert not osp.exists(marker)


BOUND_BEFORE_IMPORT = """
import sys
from mmengine.runner.checkpoint import (CheckpointLoader, load_from_http,
                                        load_from_openmmlab)
from mmengine.utils.dl_utils import load_url
url, name = sys.argv[1], sys.argv[2]
found = CheckpointLoader._get_checkpoint_loader(url)
import lors_mmdet  # noqa: E402
from lors_mmdet.checkpoint_loading import UnsafeCheckpointError  # noqa: E402
for load, source in ((load_from_http, url), (found, url), (load_from_openmmlab, name)):
    try:
        load(source, map_location='cpu')
    except UnsafeCheckpointError:
        print('refused', load.__name__)
"""


def test_mmengine_loaders_bound_before_import_are_safe(server, marker, tmp_path):
    """mmengine's loader functions, taken before `import lors_mmdet`, load through
    the safe loader: they find mmengine's load_url and each other at call time."""
    evil = server.publish('evil_bound.pth', {'payload': RunsShellOnLoad(marker)})
    torch_home = str(tmp_path / 'torch')
    from mmengine.runner.checkpoint import get_external_models
    name = 'open-mmlab://detectron2/resnet50_caffe'
    cached = osp.join(torch_home, 'hub', 'checkpoints',
                      osp.basename(get_external_models()['detectron2/resnet50_caffe']))
    os.makedirs(osp.dirname(cached))
    torch.save({'payload': RunsShellOnLoad(marker)}, cached)
    result = run(['-c', BOUND_BEFORE_IMPORT, evil, name], torch_home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for line in result.stdout.split('\n') if line.startswith('refused')] == [
        'refused load_from_http', 'refused load_from_http', 'refused load_from_openmmlab']
    assert not osp.exists(marker)


# ----------------------------------------------------------- damaged files
def test_empty_checkpoint_names_the_file(tmp_path):
    path = tmp_path / 'iter_40.pth'
    path.write_bytes(b'')
    with pytest.raises(CorruptCheckpointError, match=r'iter_40\.pth is empty'):
        safe_load_checkpoint(str(path))


@pytest.mark.parametrize('zip_format', [True, False])
def test_truncated_checkpoint_names_the_file(tmp_path, zip_format):
    path = tmp_path / 'epoch_3.pth'
    torch.save({'state_dict': {'w': torch.arange(1000.)}}, path,
               _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match=r'epoch_3\.pth'):
        safe_load_checkpoint(str(path))


def test_flipped_byte_is_caught_by_the_crc(tmp_path):
    """torch.load itself would return the damaged tensor without a word."""
    path = tmp_path / 'flipped.pth'
    torch.save({'w': torch.ones(1000)}, path)
    data = bytearray(path.read_bytes())
    data[data.find(b'\x00\x00\x80?') + 1] ^= 0xff  # inside the first 1.0f
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)['w'][0] != 1.0
    with pytest.raises(CorruptCheckpointError, match='CRC-32'):
        safe_load_checkpoint(str(path))


def test_buffer_sources_are_checked_too():
    buffer = io.BytesIO()
    torch.save({'w': torch.ones(3)}, buffer)
    buffer.seek(0)
    assert torch.equal(safe_load_checkpoint(buffer, name='s3://b/k.pth')['w'], torch.ones(3))
    with pytest.raises(CorruptCheckpointError, match='s3://b/k.pth'):
        safe_load_checkpoint(io.BytesIO(buffer.getvalue()[:200]), name='s3://b/k.pth')
    assert zipfile.is_zipfile(io.BytesIO(buffer.getvalue()))


def _rewrite_zip(path, edit=lambda name, data: data, compression=zipfile.ZIP_STORED) -> None:
    """Rewrite the torch zip archive ``path`` record by record (CRCs stay right)."""
    with zipfile.ZipFile(path) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, 'w', compression) as archive:
        for name, data in records:
            archive.writestr(name, edit(name, data))


def test_compressed_records_are_refused(tmp_path):
    """torch.save never compresses; a deflated record unpacks to far more than the file."""
    from lors_mmdet.engine import checkpoint_problem
    path = tmp_path / 'iter_8.pth'
    torch.save({'w': torch.zeros(2 ** 22)}, path)  # 16 MiB of zeros
    _rewrite_zip(path, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2 ** 16
    with pytest.raises(CorruptCheckpointError, match=r'iter_8\.pth .*compressed'):
        safe_load_checkpoint(str(path))
    assert 'compressed' in checkpoint_problem(str(path))


class _Reduces:
    """Pickles as ``function(*args)`` (with ``state`` for BUILD, if given)."""

    def __init__(self, *reduced) -> None:
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def _numpy_bombs() -> dict:
    core = np._core if hasattr(np, '_core') else np.core
    return {'reconstruct': (core.multiarray._reconstruct, (np.ndarray, (2 ** 22, ), 'O')),
            'ndarray': (np.ndarray, ((2 ** 22, ), np.dtype('O')))}


@pytest.mark.parametrize('bomb', sorted(_numpy_bombs()))
def test_numpy_allocation_is_bounded_by_the_file_size(bomb, tmp_path):
    """Allow-listed numpy calls that would allocate more than the file holds."""
    path = tmp_path / 'epoch_2.pth'
    torch.save({'meta': {'x': _Reduces(*_numpy_bombs()[bomb])}}, path)
    with pytest.raises(UnsafeCheckpointError, match=r'epoch_2\.pth'):
        safe_load_checkpoint(str(path))


CRASHING_ARRAY = """
import sys
import lors_mmdet
from lors_mmdet.checkpoint_loading import UnsafeCheckpointError, safe_load_checkpoint
try:
    safe_load_checkpoint(sys.argv[1])
except UnsafeCheckpointError as error:
    print('refused:', error)
"""


def test_numpy_object_array_state_cannot_crash_the_loader(tmp_path):
    """numpy's own __setstate__ reads past a too-short list of objects (a segfault)."""
    core = np._core if hasattr(np, '_core') else np.core
    path = tmp_path / 'crash.pth'
    torch.save({'a': _Reduces(core.multiarray._reconstruct, (np.ndarray, (0, ), b'b'),
                              (1, (10 ** 8, ), np.dtype('O'), False, [None]))}, path)
    result = run(['-c', CRASHING_ARRAY, str(path)], str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'refused:' in result.stdout and 'crash.pth' in result.stdout


def test_loaded_numpy_arrays_are_plain_arrays(tmp_path):
    path = tmp_path / 'arrays.pth'
    arrays = {'f': np.arange(5.), 'i': np.arange(6, dtype=np.int32).reshape(2, 3)}
    shared = np.ones(3)
    torch.save(dict(meta=dict(arrays=arrays, pair=(shared, shared), seed=np.int64(3)),
                    message_hub=mmengine_checkpoint({})['message_hub']), path)
    loaded = safe_load_checkpoint(str(path))
    for key, value in arrays.items():
        assert type(loaded['meta']['arrays'][key]) is np.ndarray
        np.testing.assert_array_equal(loaded['meta']['arrays'][key], value)
    first, second = loaded['meta']['pair']
    assert type(first) is np.ndarray and first is second
    history = loaded['message_hub']['log_scalars']['train/loss']
    assert type(history._log_history) is np.ndarray and history.mean() == 2.5


def _edit_pickle(old: bytes, new: bytes):
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith('data.pkl'):
            assert old in data
            return data.replace(old, new)
        return data
    return edit


@pytest.mark.parametrize('old,new', [
    (b'K\nt', b'J\x00\x00\x00\x10t'),  # the storage's element count: 2**28, not 10
    (b'ctorch\nFloatStorage\n', b'K\x05'),  # the storage's type: an int
], ids=['record_size', 'storage_type'])
def test_every_read_error_names_the_file(old, new, tmp_path):
    path = tmp_path / 'epoch_5.pth'
    torch.save({'w': torch.arange(10.)}, path)
    _rewrite_zip(path, _edit_pickle(old, new))
    with pytest.raises(CorruptCheckpointError, match=r'epoch_5\.pth'):
        safe_load_checkpoint(str(path))


# ------------------------------------------------------ the tools, for real
def run(args: List[str], torch_home: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT, TORCH_HOME=torch_home)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def assert_refused(result: subprocess.CompletedProcess, marker: str) -> None:
    assert result.returncode != 0, result.stdout[-2000:]
    assert 'UnsafeCheckpointError' in result.stderr, result.stderr[-3000:]
    assert not osp.exists(marker)


@pytest.fixture(scope='module')
def data_options(synthetic_coco_factory) -> List[str]:
    root = synthetic_coco_factory(num_train=16, num_val=8, img_size=64, seed=0)
    ann = root + 'annotations/instances_val.json'
    return [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')
            ] + [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']


MMDET_TEST = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim', 'tools', 'test.py')


@pytest.mark.parametrize('tool', ['ours', 'mmdet'])
def test_test_tools_load_by_url_and_refuse_code(tool, detector_url, evil_url, marker,
                                                data_options, tmp_path):
    script = 'tools/test.py' if tool == 'ours' else MMDET_TEST
    good = run([script, CONFIG, detector_url, '--work-dir', str(tmp_path / 'good'),
                '--cfg-options', *data_options], str(tmp_path / 'torch'))
    assert good.returncode == 0, good.stderr[-3000:]
    assert 'bbox_mAP_copypaste' in good.stdout + good.stderr
    bad = run([script, CONFIG, evil_url, '--work-dir', str(tmp_path / 'bad'),
               '--cfg-options', *data_options], str(tmp_path / 'torch'))
    assert_refused(bad, marker)


@pytest.mark.parametrize('how', ['load_from', 'resume'])
def test_train_tool_refuses_code_by_url(how, evil_url, marker, data_options, tmp_path):
    resume = ['--resume', evil_url] if how == 'resume' else []
    load_from = [f'load_from={evil_url}'] if how == 'load_from' else []
    result = run(['tools/train.py', CONFIG, '--work-dir', str(tmp_path / 'w'), *resume,
                  '--cfg-options', *data_options, *load_from], str(tmp_path / 'torch'))
    assert_refused(result, marker)


def test_convert_tool_refuses_code_by_url(evil_url, marker, tmp_path):
    result = run(['tools/convert_checkpoint.py', 'to-lors', LORS_CONFIG, evil_url,
                  str(tmp_path / 'out.pth')], str(tmp_path / 'torch'))
    assert_refused(result, marker)
    assert not (tmp_path / 'out.pth').exists()
