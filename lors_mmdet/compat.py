"""Every workaround this plugin applies to the OpenMMLab stack on current PyTorch.

Nothing else in the package patches third-party code. Importing this module:

1. checks that mmcv is the full build with compiled ops and that the installed
   mmcv / mmdet / mmengine versions work together, raising an actionable
   ``ImportError`` otherwise;
2. routes every checkpoint mmengine loads - local files, URLs, torch.hub's cache,
   ``torchvision://``, ``open-mmlab://`` and the other schemes - through
   :func:`~lors_mmdet.checkpoint_loading.safe_load_checkpoint`
   (``torch.load(weights_only=True)`` with exactly the types mmengine writes; see
   :mod:`lors_mmdet.checkpoint_loading`). mmengine's ``HistoryBuffer`` pickles only
   its data from now on (it used to pickle its class-level statistics methods as
   ``getattr`` calls); older checkpoints still load;
3. lets mmengine's ``pytorch`` launcher initialise torch.distributed on
   machines without CUDA (gloo), so the multi-GPU code path runs on CPU too.
"""
import importlib
import importlib.util
from typing import Tuple

import torch

from .checkpoint_loading import (CorruptCheckpointError, UnsafeCheckpointError,  # noqa: F401
                                 checkpoint_safe_globals, install_safe_checkpoint_loaders,
                                 safe_load_checkpoint)

MMCV_RANGE = ('2.0.0rc4', '2.2.0')  # what mmdet 3.3.0 accepts: [min, max)
TESTED_VERSIONS = dict(torch='2.13.0', mmengine='0.10.7', mmcv='2.1.0', mmdet='3.3.0')

INSTALL_HINT = (
    'Install the full mmcv with compiled ops, built against your torch:\n'
    '  bash tools/install.sh            (does it for you), or by hand:\n'
    '  pip install "setuptools>=77,<81" && '
    'MMCV_WITH_OPS=1 pip install --no-build-isolation mmcv==2.1.0\n'
    '(add FORCE_CUDA=1 on a GPU machine; OpenMMLab\'s prebuilt wheels work too '
    'when they match your torch/CUDA: https://mmcv.readthedocs.io/en/latest/get_started/installation.html)')


def _version_tuple(version: str) -> Tuple:
    from packaging.version import parse
    return parse(version)


def check_openmmlab_stack() -> None:
    """Raise an actionable ``ImportError`` if mmcv / mmdet cannot work here."""
    if importlib.util.find_spec('mmcv') is None:
        raise ImportError('lors_mmdet needs mmcv, which is not installed.\n' + INSTALL_HINT)
    import mmcv
    low, high = MMCV_RANGE
    if not _version_tuple(low) <= _version_tuple(mmcv.__version__) < _version_tuple(high):
        raise ImportError(
            f'mmcv {mmcv.__version__} is installed, but mmdet 3.3.0 needs '
            f'mmcv>={low},<{high}.\n' + INSTALL_HINT)
    try:
        importlib.import_module('mmcv._ext')
    except ImportError as error:
        lite = importlib.util.find_spec('mmcv.ops') is None
        kind = 'mmcv-lite (no ops)' if lite else 'mmcv without compiled ops'
        raise ImportError(
            f'{kind} is installed: mmcv._ext (the compiled ops mmdet needs) '
            f'cannot be imported ({error}).\n' + INSTALL_HINT) from error
    import mmdet
    if _version_tuple(mmdet.__version__) < _version_tuple('3.0.0'):
        raise ImportError(f'lors_mmdet needs mmdet 3.x, found mmdet {mmdet.__version__}: '
                          'pip install mmdet==3.3.0')


# --------------------------------------------------------------------------
# torch.distributed on machines without CUDA
# --------------------------------------------------------------------------
def _install_cpu_distributed_init() -> None:
    """Let mmengine's ``pytorch`` launcher start on CPU-only machines.

    mmengine calls ``torch.cuda.set_device(LOCAL_RANK)`` unconditionally, which
    fails on a CPU build of torch. Without CUDA we initialise the process group
    (the backend comes from ``env_cfg.dist_cfg``; use gloo) and skip the device.
    """
    import mmengine.dist.utils as dist_utils
    init_with_cuda = dist_utils._init_dist_pytorch

    def init_dist_pytorch(backend: str, init_backend: str = 'torch', **kwargs) -> None:
        if torch.cuda.is_available():
            return init_with_cuda(backend, init_backend=init_backend, **kwargs)
        if backend == 'nccl':
            raise RuntimeError(
                'env_cfg.dist_cfg.backend is "nccl" but CUDA is not available; '
                'use backend="gloo" for distributed training on CPU '
                '(tools/train.py switches to it automatically).')
        torch.distributed.init_process_group(backend=backend, **kwargs)

    dist_utils._init_dist_pytorch = init_dist_pytorch


check_openmmlab_stack()
install_safe_checkpoint_loaders()
_install_cpu_distributed_init()
