"""Launch-time adjustments and checks shared by tools/train.py and tools/test.py."""
import os.path as osp
from typing import Iterator, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log

from .config_files import load_config

DATA_HINTS = {
    'synthetic': 'generate it with: python tools/generate_synthetic_coco.py',
    'pretrained': "the toy configs' backbone is made by: python tools/pretrain_toy_backbone.py",
    'coco': 'download COCO 2017 into data/coco (annotations/, train2017/, val2017/)',
}


def load_tool_config(config: str, launcher: str, work_dir: Optional[str],
                     cfg_options: Optional[dict]) -> Config:
    """Load a config the way tools/train.py and tools/test.py share.

    Args:
        config: Config file path or ``<package>::<path>``.
        launcher: Job launcher, stored as ``cfg.launcher``.
        work_dir: ``--work-dir``; otherwise the config's, or ``work_dirs/<config name>``.
        cfg_options: ``--cfg-options`` overrides.
    """
    cfg = load_config(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def adapt_cfg_to_machine(cfg: Config, launcher: str) -> None:
    """Make a GPU-cluster config run on this machine, in place.

    Without CUDA, a ``nccl`` backend becomes ``gloo``. Distributed runs use
    :class:`DeviceAwareDistributedDataParallel` unless the config names a wrapper.

    Args:
        cfg: The full config.
        launcher: ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
    """
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if not torch.cuda.is_available() and dist_cfg.get('backend', 'nccl') == 'nccl':
        print_log('CUDA is not available: env_cfg.dist_cfg.backend nccl -> gloo',
                  logger='current')
        dist_cfg['backend'] = 'gloo'
    if launcher != 'none' and cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='DeviceAwareDistributedDataParallel')


def enable_amp(cfg: Config) -> None:
    """Switch the config to mixed-precision training (``--amp``), in place.

    mmengine 0.10's ``AmpOptimWrapper`` (a ``torch.cuda.amp`` GradScaler around
    autocast) asserts a CUDA, NPU, MLU or MUSA device, and only once the runner has
    built the model and the data; on a machine without one refuse here instead.

    Args:
        cfg: The full config; its ``optim_wrapper`` becomes an ``AmpOptimWrapper``
            with dynamic loss scaling.
    """
    if not (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available()):
        raise RuntimeError(
            '--amp needs a CUDA, NPU, MLU or MUSA device (mmengine\'s AmpOptimWrapper '
            'runs on nothing else) and this machine has none: train without --amp '
            '(float32) here, or with --amp on a GPU machine')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def use_atomic_checkpoints(cfg: Config) -> None:
    """Save checkpoints with :class:`AtomicCheckpointHook`, in place.

    A ``default_hooks.checkpoint`` of mmengine's stock ``CheckpointHook`` (as in
    mmdet's own configs) becomes ``AtomicCheckpointHook`` with the same arguments;
    any other checkpoint hook is left as it is.

    Args:
        cfg: The full config.
    """
    checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint')
    if checkpoint is not None and checkpoint.get('type') in ('CheckpointHook',
                                                             'mmengine.CheckpointHook',
                                                             CheckpointHook):
        print_log('default_hooks.checkpoint: CheckpointHook -> AtomicCheckpointHook '
                  '(atomic saves; outdated checkpoints deleted after the new one is saved)',
                  logger='current')
        checkpoint['type'] = 'AtomicCheckpointHook'


def _datasets(key: str, dataset: dict) -> Iterator[Tuple[str, dict]]:
    """Yield (config key, dataset cfg) through mmengine's dataset wrappers."""
    if 'dataset' in dataset:
        yield from _datasets(f'{key}.dataset', dataset['dataset'])
    elif 'datasets' in dataset:
        for i, inner in enumerate(dataset['datasets']):
            yield from _datasets(f'{key}.datasets[{i}]', inner)
    else:
        yield key, dataset


def _require(path: str, key: str, what: str, hint: Optional[str] = None) -> None:
    if osp.exists(path):
        return
    hint = hint or DATA_HINTS['synthetic' if 'synthetic' in path else 'coco']
    raise FileNotFoundError(f'{key}: {what} "{path}" does not exist; {hint}')


def check_data_paths(cfg: Config, splits: Tuple[str, ...] = ('train', 'val', 'test')) -> None:
    """Fail early, naming the config key, when a data set's files are missing.

    Args:
        cfg: The full config.
        splits: Which of ``{split}_dataloader`` / ``{split}_evaluator`` to check.
    """
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader:
            continue
        for key, dataset in _datasets(f'{split}_dataloader.dataset', loader['dataset']):
            root = dataset.get('data_root') or ''
            if root:
                _require(root, f'{key}.data_root', 'data root')
            if dataset.get('ann_file'):
                _require(osp.join(root, dataset['ann_file']), f'{key}.ann_file',
                         'annotation file')
            for name, prefix in (dataset.get('data_prefix') or {}).items():
                if prefix:
                    _require(osp.join(root, prefix), f'{key}.data_prefix.{name}',
                             'image folder')
        evaluators = cfg.get(f'{split}_evaluator') or []
        for i, evaluator in enumerate(
                evaluators if isinstance(evaluators, list) else [evaluators]):
            if evaluator.get('ann_file'):
                _require(evaluator['ann_file'], f'{split}_evaluator[{i}].ann_file'
                         if isinstance(evaluators, list) else f'{split}_evaluator.ann_file',
                         'annotation file')


def _pretrained_inits(key: str, node) -> Iterator[Tuple[str, str]]:
    """Yield (config key, checkpoint) of every ``Pretrained`` init_cfg below ``node``."""
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and node.get('checkpoint'):
            yield f'{key}.checkpoint', node['checkpoint']
        for name, value in node.items():
            yield from _pretrained_inits(f'{key}.{name}', value)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _pretrained_inits(f'{key}[{i}]', value)


def check_pretrained_paths(cfg: Config) -> None:
    """Fail early, naming the config key, when a local pretrained checkpoint is missing.

    Checkpoints with a scheme (``torchvision://``, ``https://``...) are left to mmengine.

    Args:
        cfg: The full config.
    """
    for key, checkpoint in _pretrained_inits('model', cfg.get('model')):
        if '://' not in checkpoint:
            _require(checkpoint, key, 'pretrained checkpoint', DATA_HINTS['pretrained'])
