"""A kit of packages that travels to a GPU machine without network.

The project's occasional GPU machine (one H200; Python 3.12, torch 2.11 + CUDA 13.0
preinstalled, no mmengine / mmcv / mmdet, no network) gets what it lacks as files:
the wheels of the pure-Python and binary dependencies, and mmcv 2.1.0 as its source
distribution (mmcv publishes no wheel for that torch), built there.

- :func:`fetch_kit` runs on a machine with network (``pip download``) and checks the
  files against the committed manifest (``tools/gpu/kit_manifest.json``).
- :func:`install_kit` runs on the GPU machine: checks the files, installs the wheels
  with ``pip install --no-index``, builds mmcv with CUDA ops within a time limit and,
  if that fails or runs out of time, with CPU ops only (then
  :mod:`lors_mmdet.compat` routes mmcv's deformable attention and mmdet's focal loss
  to their PyTorch implementations on CUDA tensors).

Standard library only: the installer runs before mmcv / mmdet exist (importing the
``lors_mmdet`` package would check for mmcv), and nothing in ``tools.upkeep`` is
imported along with this module.
"""
import hashlib
import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

# What the GPU machine lacks, pinned to the versions the CPU machines test with.
# (name, version, distribution kind, module to import, why it is needed)
KIT_PACKAGES = (
    ('mmengine', '0.10.7', 'wheel', 'mmengine', 'the training framework'),
    ('mmdet', '3.3.0', 'wheel', 'mmdet', 'the detectors'),
    ('mmcv', '2.1.0', 'sdist', 'mmcv', 'ops for mmdet; no wheel for torch 2.11: built there'),
    ('pycocotools', '2.0.11', 'wheel', 'pycocotools', 'mmdet, COCO evaluation'),
    ('addict', '2.4.0', 'wheel', 'addict', 'mmengine, mmcv'),
    ('termcolor', '3.3.0', 'wheel', 'termcolor', 'mmengine'),
    ('yapf', '0.43.0', 'wheel', 'yapf', 'mmengine, mmcv'),
    ('platformdirs', '4.14.8', 'wheel', 'platformdirs', 'yapf'),
    ('terminaltables', '3.1.10', 'wheel', 'terminaltables', 'mmdet'),
    ('shapely', '2.2.0', 'wheel', 'shapely', 'mmdet'),
    ('setuptools', '80.10.2', 'wheel', 'pkg_resources',
     "mmcv's setup.py and mmengine import pkg_resources (gone in setuptools 81); "
     "installed only where the machine's setuptools is >= 81"),
)
# Installed on the GPU machine (the device tool's KINDS.md, image 'cuda', read 2026-11-17).
GPU_MACHINE_PACKAGES = frozenset((
    'absl-py', 'accelerate', 'aiofiles', 'aiohappyeyeballs', 'aiohttp', 'aiosignal',
    'annotated-doc', 'anyio', 'attrs', 'botorch', 'build', 'certifi',
    'charset-normalizer', 'chex', 'click', 'cloudpickle', 'cmake', 'colorama',
    'contourpy', 'coverage', 'cuda-bindings', 'cuda-core', 'cuda-pathfinder',
    'cuda-toolkit', 'cupy-cuda13x', 'cycler', 'cython', 'diffrax', 'e3nn', 'einops',
    'equinox', 'etils', 'execnet', 'filelock', 'flatbuffers', 'flax', 'fonttools',
    'formulaic', 'frozenlist', 'fsspec', 'gpytorch', 'grpcio', 'h11', 'h5py', 'hf-xet',
    'httpcore', 'httpx', 'huggingface-hub', 'humanize', 'hypothesis', 'idna',
    'imageio', 'iniconfig', 'interface-meta', 'jax', 'jax-cuda13-pjrt',
    'jax-cuda13-plugin', 'jaxlib', 'jaxtyping', 'jinja2', 'joblib', 'kiwisolver',
    'lazy-loader', 'lightning', 'lightning-utilities', 'linear-operator', 'lineax',
    'llvmlite', 'lxml', 'markdown', 'markdown-it-py', 'markupsafe', 'matplotlib',
    'mdurl', 'meson', 'ml-dtypes', 'mpi4py', 'mpmath', 'msgpack', 'multidict',
    'multipledispatch', 'mypy-extensions', 'nanobind', 'narwhals', 'networkx', 'ninja',
    'numba', 'numba-cuda', 'numpy', 'numpyro', 'nvidia-cublas', 'nvidia-cuda-cupti',
    'nvidia-cuda-nvrtc', 'nvidia-cuda-runtime', 'nvidia-cudnn-cu13', 'nvidia-cufft',
    'nvidia-cufile', 'nvidia-curand', 'nvidia-cusolver', 'nvidia-cusparse',
    'nvidia-cusparselt-cu13', 'nvidia-ml-py', 'nvidia-nccl-cu13', 'nvidia-nvjitlink',
    'nvidia-nvshmem-cu13', 'nvidia-nvtx', 'onnx', 'onnx-ir', 'onnxruntime',
    'onnxscript', 'opencv-python-headless', 'optax', 'opt-einsum', 'opt-einsum-fx',
    'optimistix', 'orbax-checkpoint', 'packaging', 'pandas', 'pathspec', 'patsy',
    'peft', 'pillow', 'pip', 'pluggy', 'portalocker', 'prometheus-client', 'propcache',
    'protobuf', 'psutil', 'pyarrow', 'pybind11', 'py-cpuinfo', 'pygments', 'pyparsing',
    'pyproject-hooks', 'pyre-extensions', 'pytest', 'pytest-benchmark', 'pytest-cov',
    'pytest-mock', 'pytest-timeout', 'pytest-xdist', 'python-dateutil',
    'pytorch-lightning', 'pyyaml', 'regex', 'requests', 'rich', 'sacrebleu',
    'safetensors', 'scikit-build-core', 'scikit-image', 'scikit-learn', 'scipy',
    'seaborn', 'sentencepiece', 'sentence-transformers', 'setuptools', 'shellingham',
    'simplejson', 'six', 'sortedcontainers', 'statsmodels', 'sympy', 'tabulate',
    'tensorboard', 'tensorboard-data-server', 'tensorstore', 'threadpoolctl',
    'tifffile', 'tiktoken', 'timm', 'tokenizers', 'toolz', 'torch', 'torchaudio',
    'torchdiffeq', 'torch-geometric', 'torchmetrics', 'torchvision', 'tqdm',
    'transformers', 'treescope', 'triton', 'typer', 'typing-extensions',
    'typing-inspect', 'urllib3', 'uvloop', 'wadler-lindig', 'werkzeug', 'wheel',
    'wrapt', 'xarray', 'xxhash', 'yarl', 'zipp',
))
# Requirements the GPU machine meets with another distribution of the same module.
SUBSTITUTES = {'opencv-python': 'opencv-python-headless'}  # cv2
# Python 3.12 on x86_64 Linux; the GPU machine's glibc is recent (Ubuntu 24.04 Python).
PYTHON_VERSION = '3.12'
PLATFORMS = ['manylinux2014_x86_64', 'manylinux1_x86_64'] + [
    f'manylinux_2_{minor}_x86_64' for minor in range(5, 40)]
MMCV_SDIST = 'mmcv'
SETUPTOOLS_WITHOUT_PKG_RESOURCES = (81, 0)
PYTORCH_OPS_NOTE = ('mmcv with CPU ops only: lors_mmdet.compat routes multi-scale '
                    'deformable attention and sigmoid focal loss to PyTorch on CUDA')


@dataclass
class KitFile:
    """One file of the kit, as recorded in the manifest."""
    name: str
    version: str
    kind: str  # 'wheel' or 'sdist'
    module: str  # what to import to check it
    file: str
    sha256: str
    bytes: int
    requires: List[str]  # its requirements (Requires-Dist / requires.txt), no extras
    why: str = ''


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: str) -> List[KitFile]:
    """The kit's files as recorded by :func:`fetch_kit`.

    Raises:
        FileNotFoundError: No manifest at ``path``.
        ValueError: The manifest is not a ``{"files": [...]}`` of kit file entries.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path}: no kit manifest (tools/gpu/fetch_kit.py writes it)')
    with open(path) as f:
        entries = json.load(f).get('files')
    if not isinstance(entries, list):
        raise ValueError(f'{path}: expected {{"files": [...]}}')
    fields = set(KitFile.__dataclass_fields__)
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {f for f in fields if f != 'why'} <= set(entry):
            raise ValueError(f'{path}: files[{index}] must have the keys {sorted(fields)}, '
                             f'got {entry!r}')
    return [KitFile(**{key: entry[key] for key in fields if key in entry})
            for entry in entries]


def write_manifest(path: str, files: Sequence[KitFile]) -> None:
    with open(path, 'w') as f:
        json.dump(dict(python=PYTHON_VERSION, files=[asdict(kf) for kf in files]), f,
                  indent=1)
        f.write('\n')


# --------------------------------------------------------------------------
# On the machine with network
# --------------------------------------------------------------------------
def download_command(name: str, version: str, kind: str, dest: str,
                     python: str = sys.executable) -> List[str]:
    """``pip download`` of exactly one distribution, without its dependencies."""
    command = [python, '-m', 'pip', 'download', '--no-deps', '--dest', dest,
               f'{name}=={version}']
    if kind == 'sdist':
        # pip reads the sdist's metadata by running its setup.py; mmcv's imports
        # torch, so use the installed one instead of an isolated build env.
        return command + ['--no-binary', ':all:', '--no-build-isolation']
    command += ['--only-binary', ':all:', '--python-version', PYTHON_VERSION,
                '--implementation', 'cp', '--abi', 'cp312', '--abi', 'abi3',
                '--abi', 'none']
    for platform in PLATFORMS:
        command += ['--platform', platform]
    return command


def normalise(name: str) -> str:
    """A distribution name as pip compares it (PEP 503)."""
    return re.sub(r'[-_.]+', '-', name).lower()


def find_downloaded(dest: str, name: str, version: str, kind: str) -> str:
    """The file ``pip download`` saved for ``name==version`` in ``dest``."""
    suffix = '.whl' if kind == 'wheel' else '.tar.gz'
    found = []
    for file in os.listdir(dest):
        parts = file[:-len(suffix)].split('-') if file.endswith(suffix) else []
        # {distribution}-{version}[-tags].whl / .tar.gz; names compare normalised
        if len(parts) >= 2 and normalise(parts[0]) == normalise(name) and \
                parts[1] == version:
            found.append(file)
    if len(found) != 1:
        raise FileNotFoundError(f'{dest}: expected one {suffix} of {name}=={version}, '
                                f'found {found}')
    return found[0]


def _without_extras(requirements: List[str]) -> List[str]:
    return [r for r in requirements if not re.search(r'\bextra\s*==', r)]


def wheel_requires(path: str) -> List[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA, extras left out."""
    import zipfile
    with zipfile.ZipFile(path) as wheel:
        metadata = next(n for n in wheel.namelist()
                        if n.endswith('.dist-info/METADATA'))
        text = wheel.read(metadata).decode()
    return _without_extras([line.split(':', 1)[1].strip() for line in text.splitlines()
                            if line.startswith('Requires-Dist:')])


def sdist_requires(path: str) -> List[str]:
    """An sdist's requirements from its ``*.egg-info/requires.txt``, extras left out
    (sections ``[:MARKER]`` become ``; MARKER``)."""
    import tarfile
    with tarfile.open(path) as sdist:
        member = next((m for m in sdist.getmembers()
                       if m.name.count('/') == 2 and
                       m.name.endswith('.egg-info/requires.txt')), None)
        if member is None:
            return []
        text = sdist.extractfile(member).read().decode()
    requirements, marker = [], ''
    for line in (line.strip() for line in text.splitlines()):
        if line.startswith('['):
            section = line[1:-1]
            marker = section[1:] if section.startswith(':') else None  # None: an extra
        elif line and marker is not None:
            requirements.append(f'{line}; {marker}' if marker else line)
    return requirements


def fetch_kit(dest: str, manifest_path: str, update: bool = False,
              python: str = sys.executable) -> List[KitFile]:
    """Download the kit into ``dest`` and check it against the manifest.

    Args:
        dest: Folder for the files (created; files already there are reused by pip).
        manifest_path: The committed manifest; a copy is also written into ``dest``.
        update: Rewrite the manifest from what was downloaded instead of checking.
        python: The interpreter whose pip downloads.

    Raises:
        RuntimeError: A download failed, or a file differs from the manifest.
    """
    os.makedirs(dest, exist_ok=True)
    expected = {kf.file: kf for kf in read_manifest(manifest_path)} if (
        osp.isfile(manifest_path) and not update) else None
    files = []
    for name, version, kind, module, why in KIT_PACKAGES:
        start = time.perf_counter()
        result = subprocess.run(download_command(name, version, kind, dest, python),
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f'pip download {name}=={version} failed:\n'
                               f'{result.stdout}{result.stderr}')
        file = find_downloaded(dest, name, version, kind)
        path = osp.join(dest, file)
        kit_file = KitFile(name=name, version=version, kind=kind, module=module,
                           file=file, sha256=sha256_of(path),
                           bytes=osp.getsize(path),
                           requires=(wheel_requires(path) if kind == 'wheel'
                                     else sdist_requires(path)),
                           why=why)
        print(f'{file:60s} {kit_file.bytes / 2**20:7.2f} MiB  '
              f'({time.perf_counter() - start:.1f} s)', flush=True)
        if expected is not None:
            recorded = expected.get(file)
            if recorded is None or recorded.sha256 != kit_file.sha256:
                raise RuntimeError(
                    f'{path}: not the file the manifest {manifest_path} records '
                    f'({recorded.sha256 if recorded else "no such file"}); '
                    'rerun with --update only if the new file is wanted')
        files.append(kit_file)
    if update or expected is None:
        write_manifest(manifest_path, files)
    write_manifest(osp.join(dest, 'manifest.json'), files)
    return files


# --------------------------------------------------------------------------
# On the GPU machine
# --------------------------------------------------------------------------
class KitError(RuntimeError):
    """The kit or the target environment is not what the installer needs."""


def verify_kit(kit_dir: str, files: Sequence[KitFile]) -> None:
    """Every file of the manifest is in ``kit_dir`` with its recorded hash."""
    for kf in files:
        path = osp.join(kit_dir, kf.file)
        if not osp.isfile(path):
            raise KitError(f'{path}: missing from the kit (manifest entry {kf.name}=='
                           f'{kf.version}); run tools/gpu/fetch_kit.py and carry the '
                           'folder')
        if sha256_of(path) != kf.sha256:
            raise KitError(f'{path}: sha256 differs from the manifest; fetch it again')


def run_python(python: str, code: str, env: Optional[Dict[str, str]] = None
               ) -> subprocess.CompletedProcess:
    return subprocess.run([python, '-c', code], capture_output=True, text=True,
                          env=env, cwd='/')  # not the repo: it must not shadow installs


def setuptools_version(python: str) -> Optional[str]:
    result = run_python(python, 'import setuptools; print(setuptools.__version__)')
    return result.stdout.strip() if result.returncode == 0 else None


def needs_setuptools(installed: Optional[str]) -> bool:
    """True if ``installed`` (a version string or None) lacks ``pkg_resources``."""
    if installed is None:
        return True
    major_minor = tuple(int(part) for part in installed.split('.')[:2] if part.isdigit())
    return major_minor >= SETUPTOOLS_WITHOUT_PKG_RESOURCES


MMCV_STATE_CODE = '''
import json
state = dict(version=None, ext=False, cuda='not available')
try:
    import mmcv
    state['version'] = mmcv.__version__
    import mmcv._ext
    state['ext'] = True
    from mmcv.ops import get_compiling_cuda_version
    state['cuda'] = get_compiling_cuda_version()
except Exception as error:
    state['error'] = repr(error)
print(json.dumps(state))
'''


def mmcv_state(python: str) -> Dict:
    """``version``, ``ext`` (compiled ops load) and ``cuda`` (CUDA version the ops
    were compiled with, or 'not available') of the target's mmcv."""
    result = run_python(python, MMCV_STATE_CODE)
    if result.returncode != 0:
        raise KitError(f'{python}: could not inspect mmcv:\n{result.stderr}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def build_prerequisites(python: str) -> List[str]:
    """What a source build of mmcv needs and the target lacks (empty: all there)."""
    code = ('import os, sysconfig, sys; inc = sysconfig.get_paths()["include"]; '
            'print(os.path.join(inc, "Python.h"))')
    header = run_python(python, code).stdout.strip()
    missing = []
    if not header or not osp.isfile(header):
        missing.append(f'Python.h ({header or "?"}): the Python development headers')
    return missing


def run_with_limit(command: Sequence[str], env: Dict[str, str], seconds: float,
                   log_path: str, title: str) -> str:
    """Run ``command`` with its output appended to ``log_path``; kill its whole
    process group after ``seconds``. Returns 'ok', 'failed' or 'timeout'."""
    with open(log_path, 'a') as log:
        log.write(f'\n===== {title}: {" ".join(command)}\n')
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, cwd='/', start_new_session=True)
        try:
            code = process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the build's compilers too
            process.wait()
            log.write(f'\n===== {title}: stopped after {seconds:.0f} s\n')
            return 'timeout'
        log.write(f'\n===== {title}: exit code {code}\n')
    return 'ok' if code == 0 else 'failed'


def mmcv_build_env(flavour: str, jobs: int, cuda_arch: str) -> Dict[str, str]:
    """Environment of the mmcv source build: 'cuda' (CUDA and CPU ops) or 'cpu'."""
    env = dict(os.environ, MMCV_WITH_OPS='1', MAX_JOBS=str(jobs))
    if flavour == 'cuda':
        env.update(FORCE_CUDA='1', TORCH_CUDA_ARCH_LIST=cuda_arch)
    elif flavour == 'cpu':
        # mmcv's setup.py builds CUDA ops whenever torch sees a GPU: hide it.
        env.update(FORCE_CUDA='0', CUDA_VISIBLE_DEVICES='')
    else:
        raise ValueError(f'mmcv build flavour must be "cuda" or "cpu", got {flavour!r}')
    return env


class StepTimer:
    """Prints and records the elapsed time of each step."""

    def __init__(self) -> None:
        self.steps: List[Dict] = []

    def run(self, name: str, function, *args, **kwargs):
        print(f'-- {name} ...', flush=True)
        start = time.perf_counter()
        result = function(*args, **kwargs)
        seconds = time.perf_counter() - start
        self.steps.append(dict(step=name, seconds=round(seconds, 1),
                               result=result if isinstance(result, str) else None))
        print(f'-- {name}: {result if isinstance(result, str) else "done"} '
              f'({seconds:.1f} s)', flush=True)
        return result


def install_kit(kit_dir: str, python: str, mmcv_mode: str = 'auto',
                cuda_build_seconds: float = 300, cpu_build_seconds: float = 300,
                jobs: int = 16, cuda_arch: str = '9.0',
                build_log: str = 'mmcv_build.log',
                manifest_path: Optional[str] = None) -> Dict:
    """Install the kit into ``python``'s environment, without network.

    Args:
        kit_dir: The folder :func:`fetch_kit` filled (with its manifest.json).
        python: The target interpreter (its ``-m pip`` installs).
        mmcv_mode: 'auto' (CUDA build, CPU-ops build if that fails or runs out of
            time), 'cuda' or 'cpu' (that build only).
        cuda_build_seconds: Time limit of the CUDA build of mmcv.
        cpu_build_seconds: Time limit of the CPU-ops build of mmcv.
        jobs: Parallel compile jobs (MAX_JOBS).
        cuda_arch: TORCH_CUDA_ARCH_LIST of the CUDA build ('9.0': Hopper).
        build_log: File that receives pip's output of the mmcv builds.
        manifest_path: The manifest to check the files against (default: the
            kit's own ``manifest.json``; the tool passes the committed one).

    Returns:
        A report: ``steps`` (name, seconds, result), ``mmcv`` (the final state),
        ``path`` ('cuda' or 'cpu-ops + pytorch fallback') and ``versions``.

    Raises:
        KitError: The kit is incomplete, pip failed, or no mmcv build succeeded.
    """
    if mmcv_mode not in ('auto', 'cuda', 'cpu'):
        raise ValueError(f'mmcv_mode must be auto, cuda or cpu, got {mmcv_mode!r}')
    timer = StepTimer()
    files = read_manifest(manifest_path or osp.join(kit_dir, 'manifest.json'))
    timer.run('verify kit files', verify_kit, kit_dir, files)
    pip = [python, '-m', 'pip', 'install', '--no-index', '--find-links', kit_dir,
           '--no-deps', '--disable-pip-version-check', '-q']

    def pip_install(requirements: List[str]) -> str:
        result = subprocess.run(pip + requirements, capture_output=True, text=True,
                                cwd='/')
        if result.returncode != 0:
            raise KitError(f'pip install {" ".join(requirements)} failed:\n'
                           f'{result.stdout}{result.stderr}')
        return 'ok'

    by_name = {kf.name: kf for kf in files}
    if 'setuptools' in by_name:
        present = setuptools_version(python)
        if needs_setuptools(present):
            timer.run(f'setuptools {present} -> {by_name["setuptools"].version}',
                      pip_install, [f'setuptools=={by_name["setuptools"].version}'])
        else:
            print(f'-- setuptools {present} has pkg_resources: kept', flush=True)
    wheels = [f'{kf.name}=={kf.version}' for kf in files
              if kf.kind == 'wheel' and kf.name != 'setuptools']
    timer.run('install wheels', pip_install, wheels)

    state = mmcv_state(python)
    sdist = [kf for kf in files if kf.kind == 'sdist' and kf.name == MMCV_SDIST]
    if state['ext'] and state['version'] == (sdist[0].version if sdist else None):
        print(f'-- mmcv {state["version"]} with compiled ops present: kept', flush=True)
    elif sdist:
        missing = build_prerequisites(python)
        if missing:
            raise KitError(f'{python} cannot build mmcv: missing {"; ".join(missing)}')
        sdist_path = osp.join(kit_dir, sdist[0].file)
        build = [python, '-m', 'pip', 'install', '-v', '--no-index', '--no-deps',
                 '--no-build-isolation', '--disable-pip-version-check', '--find-links',
                 kit_dir, sdist_path]
        flavours = {'auto': ['cuda', 'cpu'], 'cuda': ['cuda'], 'cpu': ['cpu']}[mmcv_mode]
        limits = dict(cuda=cuda_build_seconds, cpu=cpu_build_seconds)
        for flavour in flavours:
            env = mmcv_build_env(flavour, jobs, cuda_arch)
            # the venv's tools (ninja: parallel compiles) even when it is not activated
            env['PATH'] = os.pathsep.join([osp.dirname(python), env.get('PATH', '')])
            outcome = timer.run(
                f'build mmcv {sdist[0].version} ({flavour} ops, limit '
                f'{limits[flavour]:.0f} s, log {build_log})', run_with_limit, build, env,
                limits[flavour], build_log, f'mmcv {flavour} build')
            if outcome == 'ok':
                break
        state = mmcv_state(python)
        if not state['ext']:
            raise KitError(f'no mmcv build succeeded (see {build_log}): {state}')
    versions = timer.run('check imports', check_imports, python, files)
    path = 'cuda' if state['cuda'] != 'not available' else 'cpu-ops + pytorch fallback'
    print(f'-- mmcv path: {path}' + ('' if path == 'cuda' else f' ({PYTORCH_OPS_NOTE})'),
          flush=True)
    return dict(steps=timer.steps, mmcv=state, path=path, versions=versions)


def check_imports(python: str, files: Sequence[KitFile]) -> Dict[str, str]:
    """Import every module of the kit in ``python``; their versions by name."""
    modules = [kf.module for kf in files]
    code = ('import importlib, importlib.metadata as m, json, sys\n'
            f'names = {[kf.name for kf in files]!r}\n'
            f'for module in {modules!r}: importlib.import_module(module)\n'
            'print(json.dumps({n: m.version(n) for n in names}))')
    result = run_python(python, code)
    if result.returncode != 0:
        raise KitError(f'{python}: importing the kit failed:\n{result.stderr}')
    return json.loads(result.stdout.strip().splitlines()[-1])
