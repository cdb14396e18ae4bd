"""The GPU kit (tools/upkeep/gpu_kit.py, tools/gpu/) and the PyTorch-ops switch of
lors_mmdet.compat, on CPU; the tests marked ``cuda`` run on a GPU machine only."""
import base64
import hashlib
import io
import json
import os
import os.path as osp
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest
import torch
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tools.upkeep import gpu_kit

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MANIFEST = osp.join(REPO, 'tools', 'gpu', 'kit_manifest.json')
# What pip's markers see on the GPU machine: CPython 3.12 on x86_64 Linux.
GPU_MARKER_ENV = dict(python_version='3.12', python_full_version='3.12.3',
                      implementation_name='cpython', platform_python_implementation='CPython',
                      sys_platform='linux', platform_system='Linux', os_name='posix',
                      platform_machine='x86_64', extra='')


@pytest.fixture(scope='module')
def manifest():
    return gpu_kit.read_manifest(MANIFEST)


# --------------------------------------------------------------------------
# The kit's file list
# --------------------------------------------------------------------------
def test_manifest_holds_one_file_per_pinned_package(manifest):
    assert [(kf.name, kf.version, kf.kind, kf.module) for kf in manifest] == \
        [package[:4] for package in gpu_kit.KIT_PACKAGES]
    assert len({kf.file for kf in manifest}) == len(manifest)
    sdists = [kf.file for kf in manifest if kf.kind == 'sdist']
    assert sdists == ['mmcv-2.1.0.tar.gz']
    total = sum(kf.bytes for kf in manifest)
    # The device tool carries at most 64 MiB with the repository: keep the kit small.
    assert 0 < total < 16 * 2**20, f'kit is {total / 2**20:.1f} MiB'


def test_manifest_wheels_install_on_cpython_312_x86_64_linux(manifest):
    platforms = gpu_kit.PLATFORMS
    supported = set(cpython_tags((3, 12), abis=['cp312', 'abi3', 'none'],
                                 platforms=platforms))
    supported |= set(compatible_tags((3, 12), 'cp312', platforms=platforms))
    for kf in manifest:
        if kf.kind != 'wheel':
            continue
        name, version, _, tags = parse_wheel_filename(kf.file)
        assert (name, str(version)) == (canonicalize_name(kf.name), kf.version)
        assert tags & supported, f'{kf.file} does not install on CPython 3.12 x86_64'


def _requirements_on_gpu_machine(kf):
    for line in kf.requires:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(GPU_MARKER_ENV):
            yield requirement


def test_kit_brings_exactly_what_the_gpu_machine_lacks(manifest):
    """Every requirement of every kit file is met on the GPU machine (installed
    there, or in the kit at a matching version), and the kit brings nothing the
    machine has, except setuptools (installed only where it lacks pkg_resources)."""
    in_kit = {canonicalize_name(kf.name): kf for kf in manifest}
    on_machine = {canonicalize_name(name) for name in gpu_kit.GPU_MACHINE_PACKAGES}
    substitutes = {canonicalize_name(k): canonicalize_name(v)
                   for k, v in gpu_kit.SUBSTITUTES.items()}
    needed_by = {}
    for kf in manifest:
        for requirement in _requirements_on_gpu_machine(kf):
            name = canonicalize_name(requirement.name)
            needed_by.setdefault(name, []).append(kf.name)
            if name in in_kit:
                assert requirement.specifier.contains(
                    Version(in_kit[name].version), prereleases=True), (kf.name, requirement)
            else:
                assert name in on_machine or substitutes.get(name) in on_machine, \
                    f'{kf.name} needs {requirement}, which neither the kit nor the ' \
                    'GPU machine has'
    assert set(in_kit) & on_machine == {'setuptools'}
    roots = {'mmengine', 'mmdet', 'mmcv', 'pycocotools', 'setuptools'}
    assert set(in_kit) - roots <= set(needed_by), 'the kit brings unneeded files'


def test_download_commands_ask_pip_for_cp312_linux_files_only():
    wheel = gpu_kit.download_command('shapely', '2.2.0', 'wheel', '/tmp/kit', 'python3')
    assert wheel[:4] == ['python3', '-m', 'pip', 'download']
    assert 'shapely==2.2.0' in wheel and '--no-deps' in wheel
    assert wheel[wheel.index('--only-binary') + 1] == ':all:'
    assert wheel[wheel.index('--python-version') + 1] == '3.12'
    assert 'manylinux2014_x86_64' in wheel and 'manylinux_2_28_x86_64' in wheel
    sdist = gpu_kit.download_command('mmcv', '2.1.0', 'sdist', '/tmp/kit', 'python3')
    assert sdist[sdist.index('--no-binary') + 1] == ':all:'
    assert '--platform' not in sdist


def test_find_downloaded_names_the_file_or_says_what_is_missing(tmp_path):
    for name in ('PyYAML-6.0.3-cp312-cp312-manylinux_2_17_x86_64.whl',
                 'mmcv-2.1.0.tar.gz', 'mmcv_lite-2.1.0-py3-none-any.whl'):
        (tmp_path / name).write_bytes(b'')
    assert gpu_kit.find_downloaded(str(tmp_path), 'pyyaml', '6.0.3', 'wheel') == \
        'PyYAML-6.0.3-cp312-cp312-manylinux_2_17_x86_64.whl'
    assert gpu_kit.find_downloaded(str(tmp_path), 'mmcv', '2.1.0', 'sdist') == \
        'mmcv-2.1.0.tar.gz'
    with pytest.raises(FileNotFoundError, match=r'mmcv==2\.1\.0'):
        gpu_kit.find_downloaded(str(tmp_path), 'mmcv', '2.1.0', 'wheel')


def test_read_manifest_names_the_file_and_the_bad_entry(tmp_path):
    with pytest.raises(FileNotFoundError, match='no-such.json: no kit manifest'):
        gpu_kit.read_manifest(str(tmp_path / 'no-such.json'))
    bad = tmp_path / 'manifest.json'
    bad.write_text(json.dumps(dict(files=[dict(name='mmdet', version='3.3.0')])))
    with pytest.raises(ValueError, match=r'manifest.json: files\[0\] must have the keys'):
        gpu_kit.read_manifest(str(bad))


def test_needs_setuptools_only_without_pkg_resources():
    assert gpu_kit.needs_setuptools(None)
    assert gpu_kit.needs_setuptools('81.0.0') and gpu_kit.needs_setuptools('82.1')
    assert not gpu_kit.needs_setuptools('80.10.2')
    assert not gpu_kit.needs_setuptools('65.5.0')


# --------------------------------------------------------------------------
# The offline install, against a local folder of tiny distributions
# --------------------------------------------------------------------------
def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=')
    return f'sha256={digest.decode()}'


def write_wheel(folder: str, name: str, version: str, files: dict) -> str:
    """A minimal pure-Python wheel with ``files`` ({path: text})."""
    dist_info = f'{name}-{version}.dist-info'
    contents = {path: text.encode() for path, text in files.items()}
    contents[f'{dist_info}/METADATA'] = (
        f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n').encode()
    contents[f'{dist_info}/WHEEL'] = (
        b'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
    record = ''.join(f'{path},{_record_hash(data)},{len(data)}\n'
                     for path, data in contents.items()) + f'{dist_info}/RECORD,,\n'
    contents[f'{dist_info}/RECORD'] = record.encode()
    filename = f'{name}-{version}-py3-none-any.whl'
    with zipfile.ZipFile(osp.join(folder, filename), 'w') as wheel:
        for path, data in contents.items():
            wheel.writestr(path, data)
    return filename


# An in-tree PEP 517 backend standing in for mmcv's setup.py: it records the build
# environment in the package, and fails or hangs the CUDA build when asked to.
FAKE_MMCV_BACKEND = '''
import base64, hashlib, json, os, time, zipfile

NAME, VERSION = 'mmcv', '2.1.0'
DIST_INFO = f'{NAME}-{VERSION}.dist-info'
METADATA = f'Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n'


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, DIST_INFO))
    with open(os.path.join(metadata_directory, DIST_INFO, 'METADATA'), 'w') as f:
        f.write(METADATA)
    return DIST_INFO


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    cuda = os.environ.get('FORCE_CUDA') == '1'
    if cuda and os.environ.get('FAKE_CUDA_BUILD') == 'fail':
        raise RuntimeError('nvcc: error (the fake CUDA build fails)')
    if cuda and os.environ.get('FAKE_CUDA_BUILD') == 'hang':
        time.sleep(600)
    keys = ('MMCV_WITH_OPS', 'FORCE_CUDA', 'MAX_JOBS', 'TORCH_CUDA_ARCH_LIST',
            'CUDA_VISIBLE_DEVICES', 'PATH')
    build_env = {key: os.environ.get(key) for key in keys}
    files = {
        'mmcv/__init__.py': f'__version__ = {VERSION!r}\\n',
        'mmcv/_ext.py': '',
        'mmcv/ops/__init__.py': (
            f'BUILD_ENV = {build_env!r}\\n'
            f'def get_compiling_cuda_version():\\n'
            f'    return {"13.0" if cuda else "not available"!r}\\n'),
        f'{DIST_INFO}/METADATA': METADATA,
        f'{DIST_INFO}/WHEEL': 'Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n',
    }
    record = ''
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())
        record += f'{path},sha256={digest.rstrip(b"=").decode()},{len(text.encode())}\\n'
    files[f'{DIST_INFO}/RECORD'] = record + f'{DIST_INFO}/RECORD,,\\n'
    filename = f'{NAME}-{VERSION}-py3-none-any.whl'
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), 'w') as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return filename
'''


def write_fake_mmcv_sdist(folder: str) -> str:
    files = {'pyproject.toml': textwrap.dedent('''\
                 [build-system]
                 requires = []
                 build-backend = "backend"
                 backend-path = ["."]
                 '''),
             'backend.py': FAKE_MMCV_BACKEND,
             'PKG-INFO': 'Metadata-Version: 2.1\nName: mmcv\nVersion: 2.1.0\n'}
    filename = 'mmcv-2.1.0.tar.gz'
    with tarfile.open(osp.join(folder, filename), 'w:gz') as sdist:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f'mmcv-2.1.0/{path}')
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return filename


@pytest.fixture(scope='module')
def fake_kit(tmp_path_factory):
    """A kit folder like fetch_kit's: two wheels, an 'mmcv' sdist, manifest.json."""
    folder = str(tmp_path_factory.mktemp('kit'))
    entries = [('kitdemo_a', '1.0', 'wheel',
                write_wheel(folder, 'kitdemo_a', '1.0', {'kitdemo_a/__init__.py': 'A = 1\n'})),
               ('kitdemo_b', '2.0', 'wheel',
                write_wheel(folder, 'kitdemo_b', '2.0', {'kitdemo_b/__init__.py': 'B = 2\n'})),
               ('mmcv', '2.1.0', 'sdist', write_fake_mmcv_sdist(folder))]
    files = [gpu_kit.KitFile(name=name, version=version, kind=kind, module=name,
                             file=file, sha256=gpu_kit.sha256_of(osp.join(folder, file)),
                             bytes=osp.getsize(osp.join(folder, file)), requires=[])
             for name, version, kind, file in entries]
    gpu_kit.write_manifest(osp.join(folder, 'manifest.json'), files)
    return folder


@pytest.fixture(scope='module')
def throwaway_python(tmp_path_factory):
    """A fresh venv (pip included), so the shared environment is never touched."""
    venv = tmp_path_factory.mktemp('venv')
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    return str(venv / 'bin' / 'python')


def _uninstall_mmcv(python):
    subprocess.run([python, '-m', 'pip', 'uninstall', '-y', '-q', 'mmcv'],
                   capture_output=True, cwd='/')


def _installed_build_env(python):
    result = subprocess.run([python, '-c', 'import mmcv.ops; print(repr(mmcv.ops.BUILD_ENV))'],
                            capture_output=True, text=True, check=True, cwd='/')
    return eval(result.stdout)  # a dict literal we wrote ourselves


@pytest.mark.parametrize('cuda_build, expected_path, cuda_outcome', [
    ('ok', 'cuda', 'ok'),
    ('fail', 'cpu-ops + pytorch fallback', 'failed'),
    ('hang', 'cpu-ops + pytorch fallback', 'timeout'),
])
def test_install_kit_builds_mmcv_with_cuda_else_cpu_ops(
        fake_kit, throwaway_python, tmp_path, monkeypatch, cuda_build, expected_path,
        cuda_outcome):
    _uninstall_mmcv(throwaway_python)
    monkeypatch.setenv('FAKE_CUDA_BUILD', cuda_build)
    log = str(tmp_path / 'build.log')
    report = gpu_kit.install_kit(fake_kit, throwaway_python, mmcv_mode='auto',
                                 cuda_build_seconds=4 if cuda_build == 'hang' else 120,
                                 cpu_build_seconds=120, jobs=3,
                                 cuda_arch='9.0', build_log=log)
    assert report['path'] == expected_path
    assert report['versions'] == dict(kitdemo_a='1.0', kitdemo_b='2.0', mmcv='2.1.0')
    builds = [step for step in report['steps'] if step['step'].startswith('build mmcv')]
    assert builds[0]['result'] == cuda_outcome and '(cuda ops' in builds[0]['step']
    if cuda_outcome == 'timeout':
        assert builds[0]['seconds'] < 30  # killed at its limit, compilers included
    build_env = _installed_build_env(throwaway_python)
    # the target's bin folder (its ninja) comes first, also without an activated venv
    assert build_env.pop('PATH').split(os.pathsep)[0] == osp.dirname(throwaway_python)
    if expected_path == 'cuda':
        assert len(builds) == 1
        assert build_env == dict(MMCV_WITH_OPS='1', FORCE_CUDA='1', MAX_JOBS='3',
                                 TORCH_CUDA_ARCH_LIST='9.0',
                                 CUDA_VISIBLE_DEVICES=os.environ.get('CUDA_VISIBLE_DEVICES'))
    else:
        assert [b['result'] for b in builds] == [cuda_outcome, 'ok']
        # mmcv's setup.py builds CUDA ops whenever torch sees a GPU: hidden here.
        assert build_env['FORCE_CUDA'] == '0' and build_env['CUDA_VISIBLE_DEVICES'] == ''
        assert build_env['MMCV_WITH_OPS'] == '1'
    with open(log) as f:
        assert '===== mmcv cuda build' in f.read()


def test_install_kit_keeps_a_built_mmcv_and_cpu_mode_skips_cuda(
        fake_kit, throwaway_python, tmp_path, monkeypatch):
    _uninstall_mmcv(throwaway_python)
    monkeypatch.setenv('FAKE_CUDA_BUILD', 'ok')
    log = str(tmp_path / 'build.log')
    first = gpu_kit.install_kit(fake_kit, throwaway_python, mmcv_mode='cpu',
                                cpu_build_seconds=120, build_log=log)
    assert first['path'] == 'cpu-ops + pytorch fallback'
    assert [s['step'].split(' (')[1] for s in first['steps']
            if s['step'].startswith('build mmcv')] == ['cpu ops, limit 120 s, log ' + log + ')']
    again = gpu_kit.install_kit(fake_kit, throwaway_python, mmcv_mode='auto',
                                build_log=log)
    assert not [s for s in again['steps'] if s['step'].startswith('build mmcv')]
    assert again['path'] == 'cpu-ops + pytorch fallback'


def test_install_kit_refuses_a_file_that_differs_from_the_manifest(
        fake_kit, throwaway_python, tmp_path):
    import shutil
    broken = str(tmp_path / 'kit')
    shutil.copytree(fake_kit, broken)
    with open(osp.join(broken, 'kitdemo_b-2.0-py3-none-any.whl'), 'ab') as f:
        f.write(b'tampered')
    with pytest.raises(gpu_kit.KitError, match='kitdemo_b-2.0-py3-none-any.whl: sha256'):
        gpu_kit.install_kit(broken, throwaway_python)
    shutil.copy(osp.join(fake_kit, 'kitdemo_b-2.0-py3-none-any.whl'), broken)
    os.remove(osp.join(broken, 'mmcv-2.1.0.tar.gz'))
    with pytest.raises(gpu_kit.KitError, match=r'mmcv-2.1.0.tar.gz: missing .*mmcv==2.1.0'):
        gpu_kit.install_kit(broken, throwaway_python)


def test_install_tool_runs_by_path_and_writes_its_report(fake_kit, throwaway_python,
                                                          tmp_path):
    """tools/gpu/install_offline.py works where lors_mmdet cannot be imported yet."""
    _uninstall_mmcv(throwaway_python)
    report = tmp_path / 'install.json'
    result = subprocess.run(
        [throwaway_python, osp.join(REPO, 'tools', 'gpu', 'install_offline.py'),
         '--kit', fake_kit, '--manifest', osp.join(fake_kit, 'manifest.json'),
         '--python', throwaway_python, '--mmcv', 'cpu',
         '--build-log', str(tmp_path / 'b.log'), '--report', str(report)],
        capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert '-- install wheels: ok (' in result.stdout
    assert '-- mmcv path: cpu-ops + pytorch fallback' in result.stdout
    assert json.loads(report.read_text())['path'] == 'cpu-ops + pytorch fallback'


def test_gpu_check_leaves_only_files_the_device_tool_returns(fake_kit, throwaway_python,
                                                            tmp_path):
    """The prepared GPU command, run here as far as a machine without CUDA allows:
    every step is logged with its time, and $OUT holds at most 8 plainly named files
    (the device tool returns no more)."""
    import re
    _uninstall_mmcv(throwaway_python)
    out = tmp_path / 'out'
    env = dict(os.environ, OUT=str(out), KIT=fake_kit, PYTHON=throwaway_python,
               MANIFEST=osp.join(fake_kit, 'manifest.json'),
               MMCV_BUILD='cpu', REPEATS='1', WARMUP='0')
    result = subprocess.run(['bash', osp.join(REPO, 'tools', 'gpu', 'gpu_check.sh')],
                            capture_output=True, text=True, env=env, timeout=300)
    log = (out / 'gpu_check.log').read_text()
    assert '== install: ok in' in log, result.stdout + result.stderr
    assert 'mmcv path: cpu-ops + pytorch fallback' in log
    assert re.search(r'== tests: exit \d+ in \d+ s', log)  # no pytest in the venv
    assert re.search(r'== benchmark: exit [1-9]\d* in \d+ s', log)  # no torch there
    files = sorted(path.name for path in out.rglob('*') if path.is_file())
    assert {'gpu_check.log', 'env.txt', 'install.json', 'mmcv_build.log',
            'tests.log'} <= set(files)
    assert len(files) <= 8 and all(re.fullmatch(r'[A-Za-z0-9._-]+', f) for f in files)


# --------------------------------------------------------------------------
# The compat switch: mmcv's CUDA ops routed to their PyTorch implementations
# --------------------------------------------------------------------------
@pytest.fixture
def pytorch_ops():
    from lors_mmdet import compat
    was_active = compat.pytorch_ops_active()
    compat.use_pytorch_ops(True)
    yield compat
    compat.use_pytorch_ops(was_active)


def test_pytorch_ops_setting():
    from lors_mmdet.compat import PYTORCH_OPS_ENV, pytorch_ops_wanted
    assert pytorch_ops_wanted(None, cuda_available=True, mmcv_cuda=False)
    assert not pytorch_ops_wanted('auto', cuda_available=True, mmcv_cuda=True)
    assert not pytorch_ops_wanted(None, cuda_available=False, mmcv_cuda=False)
    assert pytorch_ops_wanted('1', cuda_available=False, mmcv_cuda=True)
    assert not pytorch_ops_wanted('0', cuda_available=True, mmcv_cuda=False)
    with pytest.raises(ValueError, match=PYTORCH_OPS_ENV + "='yes'"):
        pytorch_ops_wanted('yes', cuda_available=True, mmcv_cuda=False)


def test_switch_restores_the_compiled_ops():
    import mmcv.ops.multi_scale_deform_attn as msda
    import mmdet.models.losses.focal_loss as focal_loss
    from lors_mmdet import compat
    assert not compat.pytorch_ops_active()  # CPU machine: auto leaves them alone
    compiled = (msda.MultiScaleDeformableAttnFunction, focal_loss._sigmoid_focal_loss)
    compat.use_pytorch_ops(True)
    compat.use_pytorch_ops(True)  # idempotent
    try:
        assert compat.pytorch_ops_active()
        assert msda.MultiScaleDeformableAttnFunction is not compiled[0]
    finally:
        compat.use_pytorch_ops(False)
    assert (msda.MultiScaleDeformableAttnFunction, focal_loss._sigmoid_focal_loss) == compiled


def _deformable_attention_case():
    from mmcv.ops import MultiScaleDeformableAttention
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=2,
                                         num_points=3, batch_first=True)
    attn.init_weights()
    shapes = torch.tensor([[6, 8], [3, 4]])
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    num_value = int((shapes[:, 0] * shapes[:, 1]).sum())
    inputs = dict(query=torch.randn(2, 5, 32), value=torch.randn(2, num_value, 32),
                  reference_points=torch.rand(2, 5, 2, 2), spatial_shapes=shapes,
                  level_start_index=starts)
    return attn, inputs


def test_switch_routes_deformable_attention_to_pytorch_with_the_same_numbers(
        pytorch_ops, monkeypatch):
    """The normal CPU forward calls multi_scale_deformable_attn_pytorch; the routed
    CUDA entry point gives the same output and gradients for the same arguments."""
    import mmcv.ops.multi_scale_deform_attn as msda
    attn, inputs = _deformable_attention_case()
    calls = []
    pytorch_function = msda.multi_scale_deformable_attn_pytorch

    def record(value, spatial_shapes, sampling_locations, attention_weights):
        calls.append((value, spatial_shapes, sampling_locations, attention_weights))
        return pytorch_function(value, spatial_shapes, sampling_locations,
                                attention_weights)

    monkeypatch.setattr(msda, 'multi_scale_deformable_attn_pytorch', record)
    attn(**inputs)  # the normal CPU path
    value, shapes, locations, weights = (t.detach().requires_grad_(t.is_floating_point())
                                         for t in calls[0])
    expected = pytorch_function(value, shapes, locations, weights)
    expected_grads = torch.autograd.grad(expected.square().sum(), (value, locations, weights))
    routed = msda.MultiScaleDeformableAttnFunction.apply(
        value, shapes, inputs['level_start_index'], locations, weights, 64)
    routed_grads = torch.autograd.grad(routed.square().sum(), (value, locations, weights))
    assert routed.shape == (2, 5, 32)
    torch.testing.assert_close(routed, expected, rtol=0, atol=0)
    for actual, wanted in zip(routed_grads, expected_grads):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=0)
    pytorch_ops.use_pytorch_ops(False)  # the compiled op has no CPU kernel
    with pytest.raises(RuntimeError, match='cpu'):
        msda.MultiScaleDeformableAttnFunction.apply(
            value, shapes, inputs['level_start_index'], locations, weights, 64)


@pytest.mark.parametrize('weighted, reduction, avg_factor', [
    (False, 'mean', None), (True, 'sum', None), (True, 'mean', 7.0), (False, 'none', None)])
def test_switch_routes_focal_loss_to_pytorch_with_the_same_numbers(
        pytorch_ops, weighted, reduction, avg_factor):
    """mmdet's CUDA focal-loss path (class-index targets, index C = background)
    through the switch equals FocalLoss's CPU path and the formula itself."""
    import mmdet.models.losses.focal_loss as focal_loss
    from mmdet.models.losses import FocalLoss
    torch.manual_seed(1)
    num_classes = 4
    logits = torch.randn(9, num_classes, requires_grad=True)
    labels = torch.tensor([0, 3, 4, 1, 4, 2, 2, 0, 4])  # 4: background
    weight = torch.rand(9) if weighted else None
    criterion = FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.25, reduction=reduction)
    expected = criterion(logits, labels, weight, avg_factor=avg_factor)  # CPU path
    routed = focal_loss.sigmoid_focal_loss(logits, labels, weight, gamma=2.0, alpha=0.25,
                                           reduction=reduction, avg_factor=avg_factor)
    torch.testing.assert_close(routed, expected)
    grad_expected, = torch.autograd.grad(expected.sum(), logits)
    grad_routed, = torch.autograd.grad(routed.sum(), logits)
    torch.testing.assert_close(grad_routed, grad_expected)
    # the formula: -alpha (1-p)^g log p on the target class, -(1-alpha) p^g log(1-p) elsewhere
    p = logits.detach().sigmoid()
    target = torch.zeros_like(p)
    target[labels < num_classes, labels[labels < num_classes]] = 1
    formula = -(target * 0.25 * (1 - p) ** 2 * p.log() +
                (1 - target) * 0.75 * p ** 2 * (1 - p).log())
    elementwise = focal_loss._sigmoid_focal_loss(logits.detach(), labels, 2.0, 0.25, None,
                                                 'none')
    torch.testing.assert_close(elementwise, formula)
    pytorch_ops.use_pytorch_ops(False)
    with pytest.raises(RuntimeError, match='cpu'):
        focal_loss.sigmoid_focal_loss(logits, labels)


def test_environment_variable_switches_the_route_at_import():
    code = ('import lors_mmdet, mmcv.ops.multi_scale_deform_attn as msda\n'
            'from lors_mmdet import compat\n'
            'print(compat.pytorch_ops_active(), msda.MultiScaleDeformableAttnFunction.__name__)')
    env = dict(os.environ, PYTHONPATH=REPO, LORS_MMDET_PYTORCH_OPS='1')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['True', '_PytorchMultiScaleDeformableAttnFunction']


# --------------------------------------------------------------------------
# On the GPU machine (pytest -m cuda)
# --------------------------------------------------------------------------
@pytest.mark.cuda
def test_cuda_deformable_attention_and_focal_loss_match_cpu():
    """Whichever path is installed (compiled kernels or the PyTorch route), CUDA
    gives the CPU numbers; with compiled kernels, the route agrees with them too."""
    from mmdet.models.losses import FocalLoss
    from lors_mmdet import compat
    attn, inputs = _deformable_attention_case()
    expected = attn(**inputs)
    attn.cuda()
    on_cuda = {key: value.cuda() for key, value in inputs.items()}
    torch.testing.assert_close(attn(**on_cuda).cpu(), expected, atol=1e-5, rtol=1e-4)
    logits, labels = torch.randn(50, 80), torch.randint(0, 81, (50,))
    criterion = FocalLoss(use_sigmoid=True)
    torch.testing.assert_close(criterion(logits.cuda(), labels.cuda()).cpu(),
                               criterion(logits, labels), atol=1e-5, rtol=1e-4)
    if compat.mmcv_has_cuda_kernels() and not compat.pytorch_ops_active():
        compiled = attn(**on_cuda)
        compat.use_pytorch_ops(True)
        try:
            torch.testing.assert_close(attn(**on_cuda), compiled, atol=1e-5, rtol=1e-4)
        finally:
            compat.use_pytorch_ops(False)


def test_benchmark_memory_counts_the_model_state_once():
    """benchmark.py's CUDA memory adds the model's own parameters, gradients and
    AdamW moments to the step's peak: 4 tensors of each parameter's size, plus
    AdamW's per-parameter step counter."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'benchmark', osp.join(REPO, 'tools', 'analysis', 'benchmark.py'))
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    model = torch.nn.Linear(10, 5)
    optimizer = torch.optim.AdamW(model.parameters())
    assert benchmark.state_bytes(model, optimizer) == 55 * 4  # no grads, no state yet
    model(torch.randn(3, 10)).sum().backward()
    optimizer.step()
    steps = sum(state['step'].numel() * state['step'].element_size()
                for state in optimizer.state.values())
    assert benchmark.state_bytes(model, optimizer) == 4 * 55 * 4 + steps
