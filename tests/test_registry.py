"""`import lors_mmdet` registers the plugin; configs reach it through custom_imports."""
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

import lors_mmdet
from lors_mmdet.engine import DeviceAwareDistributedDataParallel, RNGStateHook

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_runtime_modules_are_registered():
    from mmengine.registry import HOOKS, MODEL_WRAPPERS
    assert HOOKS.get('RNGStateHook') is RNGStateHook
    assert MODEL_WRAPPERS.get('DeviceAwareDistributedDataParallel') is \
        DeviceAwareDistributedDataParallel


def test_config_custom_imports_registers_the_plugin_in_a_fresh_process():
    config = osp.join(ROOT, 'tests', 'configs', 'tiny_deformable_detr_synthetic.py')
    script = textwrap.dedent(f'''
        import sys
        from mmengine.config import Config
        from mmengine.registry import HOOKS
        assert 'lors_mmdet' not in sys.modules
        cfg = Config.fromfile({config!r})
        assert 'lors_mmdet' in sys.modules
        assert HOOKS.get('RNGStateHook') is not None
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        model = MODELS.build(cfg.model)
        print(type(model).__name__)
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith('DeformableDETR')


def test_unknown_key_of_a_plugin_module_is_named():
    from mmengine.registry import HOOKS
    with pytest.raises(TypeError, match='no_such_key'):
        HOOKS.build(dict(type='RNGStateHook', no_such_key=1))


@pytest.mark.parametrize('name', [
    'AdaMixer', 'AdaMixerDecoder', 'AdaMixerDecoderStage', 'AdaMixerQueryGenerator',
    'AdaMixerChannelMapping', 'LorsAdaMixerDecoder', 'LorsAdaMixerDecoderStage',
    'LorsDINO', 'LorsDeformableDETR', 'LorsDETR', 'LorsConditionalDETR',
    'LorsDABDETR', 'LorsDDQDETR', 'SwinTransformerBranchDropPath'
])
def test_plugin_models_are_in_mmdet_models(name):
    from mmdet.registry import MODELS
    registered = MODELS.get(name)
    assert registered is not None and registered.__module__.startswith('lors_mmdet')
