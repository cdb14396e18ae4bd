"""Every shipped config saves atomic checkpoints and resumes exactly, whichever
train.py runs it; tools/train.py upgrades a stock CheckpointHook."""
import glob
import os.path as osp

import mmdet
import pytest
from mmengine.config import Config
from mmengine.registry import HOOKS

import lors_mmdet  # noqa: F401  (registers the hooks)
from lors_mmdet.engine import AtomicCheckpointHook, RNGStateHook, use_atomic_checkpoints

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHIPPED = sorted(
    osp.relpath(path, ROOT)
    for path in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if f'{osp.sep}_base_{osp.sep}' not in path)
MMDET_CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')


def test_configs_found():
    assert len(SHIPPED) >= 20


@pytest.mark.parametrize('config', SHIPPED)
def test_shipped_config_has_atomic_checkpoints_and_rng_state(config):
    cfg = Config.fromfile(osp.join(ROOT, config))
    checkpoint = cfg.default_hooks.checkpoint
    assert checkpoint.type == 'AtomicCheckpointHook', config
    assert isinstance(HOOKS.build(checkpoint), AtomicCheckpointHook)
    custom = [hook['type'] for hook in cfg.get('custom_hooks', [])]
    assert custom.count('RNGStateHook') == 1, (config, custom)
    assert isinstance(HOOKS.build(dict(type='RNGStateHook')), RNGStateHook)


@pytest.mark.skipif(not osp.isdir(MMDET_CONFIGS), reason="mmdet's configs not installed")
def test_use_atomic_checkpoints_on_mmdet_config():
    cfg = Config.fromfile(osp.join(MMDET_CONFIGS, 'dino', 'dino-4scale_r50_8xb2-12e_coco.py'))
    assert cfg.default_hooks.checkpoint.type == 'CheckpointHook'
    expected = dict(cfg.default_hooks.checkpoint, type='AtomicCheckpointHook')
    use_atomic_checkpoints(cfg)
    assert cfg.default_hooks.checkpoint == expected  # arguments kept


def test_use_atomic_checkpoints_leaves_other_hooks():
    custom = Config(dict(default_hooks=dict(checkpoint=dict(type='MyCheckpointHook'))))
    use_atomic_checkpoints(custom)
    assert custom.default_hooks.checkpoint.type == 'MyCheckpointHook'
    for cfg in (Config(dict()), Config(dict(default_hooks=dict(checkpoint=None)))):
        use_atomic_checkpoints(cfg)  # nothing to change, no error
