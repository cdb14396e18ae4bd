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
import os
from typing import Optional, Tuple

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


# ==========================================================================
# PyTorch fallback for mmcv built with CPU ops only (GPU machines where the
# CUDA build of mmcv is not possible, see tools/upkeep/gpu_kit.py).
# Kept apart from the fixes above: it changes nothing unless switched on.
# ==========================================================================

PYTORCH_OPS_ENV = 'LORS_MMDET_PYTORCH_OPS'  # '1': on, '0': off, unset/'auto': auto


def mmcv_has_cuda_kernels() -> bool:
    """Whether the installed ``mmcv._ext`` was compiled with CUDA kernels."""
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version() != 'not available'


def pytorch_ops_wanted(setting: Optional[str], cuda_available: bool,
                       mmcv_cuda: bool) -> bool:
    """Decide the fallback from ``$LORS_MMDET_PYTORCH_OPS`` and the machine.

    Args:
        setting: The variable's value (None when unset).
        cuda_available: ``torch.cuda.is_available()``.
        mmcv_cuda: :func:`mmcv_has_cuda_kernels`.
    """
    if setting in (None, '', 'auto'):
        return cuda_available and not mmcv_cuda
    if setting in ('0', '1'):
        return setting == '1'
    raise ValueError(f'{PYTORCH_OPS_ENV}={setting!r}: expected 1 (route mmcv\'s CUDA '
                     'ops to PyTorch), 0 (never) or auto (when mmcv lacks CUDA kernels)')


def _pytorch_sigmoid_focal_loss(pred: torch.Tensor, target: torch.Tensor,
                                gamma: float = 2.0, alpha: float = 0.25,
                                weight: Optional[torch.Tensor] = None,
                                reduction: str = 'mean') -> torch.Tensor:
    """mmcv's compiled ``sigmoid_focal_loss`` (class-index targets, index
    ``num_classes`` = background) through mmdet's PyTorch focal loss."""
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
    if weight is not None:
        raise NotImplementedError('the PyTorch route of sigmoid_focal_loss takes no '
                                  'per-class weight (mmdet never passes one)')
    num_classes = pred.size(1)
    one_hot = torch.nn.functional.one_hot(target, num_classes + 1)[:, :num_classes]
    loss = py_sigmoid_focal_loss(pred, one_hot.type_as(pred), None, gamma=gamma,
                                 alpha=alpha, reduction='none')
    if reduction == 'mean':  # mmcv's 'mean' divides by the number of samples
        return loss.sum() / pred.size(0)
    return loss.sum() if reduction == 'sum' else loss


class _PytorchMultiScaleDeformableAttnFunction:
    """Stands in for mmcv's compiled ``MultiScaleDeformableAttnFunction``."""

    @staticmethod
    def apply(value: torch.Tensor, spatial_shapes: torch.Tensor,
              level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
              attention_weights: torch.Tensor, im2col_step: int) -> torch.Tensor:
        from mmcv.ops.multi_scale_deform_attn import \
            multi_scale_deformable_attn_pytorch
        return multi_scale_deformable_attn_pytorch(value, spatial_shapes,
                                                   sampling_locations, attention_weights)


_COMPILED_OPS: dict = {}  # the originals, while the fallback is on


def use_pytorch_ops(enabled: bool) -> None:
    """Route mmcv's multi-scale deformable attention and mmdet's sigmoid focal loss
    to their PyTorch implementations (``enabled``), or back to the compiled ops."""
    if not enabled and not _COMPILED_OPS:
        return
    import mmcv.ops.multi_scale_deform_attn as msda
    import mmdet.models.losses.focal_loss as focal_loss
    targets = {(msda, 'MultiScaleDeformableAttnFunction'):
               _PytorchMultiScaleDeformableAttnFunction,
               (focal_loss, '_sigmoid_focal_loss'): _pytorch_sigmoid_focal_loss}
    for (module, name), replacement in targets.items():
        if enabled and (module, name) not in _COMPILED_OPS:
            _COMPILED_OPS[(module, name)] = getattr(module, name)
            setattr(module, name, replacement)
        elif not enabled and (module, name) in _COMPILED_OPS:
            setattr(module, name, _COMPILED_OPS.pop((module, name)))


def pytorch_ops_active() -> bool:
    """Whether :func:`use_pytorch_ops` currently routes to PyTorch."""
    return bool(_COMPILED_OPS)


def _use_pytorch_ops_as_configured() -> None:
    cuda_available = torch.cuda.is_available()
    mmcv_cuda = cuda_available and mmcv_has_cuda_kernels()
    if pytorch_ops_wanted(os.environ.get(PYTORCH_OPS_ENV), cuda_available, mmcv_cuda):
        use_pytorch_ops(True)


_use_pytorch_ops_as_configured()
