"""A checkpoint never silently mismatches a LORS model.

The converter records the LORS settings it used and, when they are not the
config's, writes a matching config and prints the --cfg-options; tools/train.py
and tools/test.py refuse a checkpoint whose LORS tensors do not fit the model,
while a classification head with another number of classes still only warns.
The tools run for real, in subprocesses, on the tiny Deformable-DETR of the
end-to-end tests. The LORS detectors check every state dict loaded into them
themselves, so mmdet's own tools and APIs (``.mim/tools/test.py``,
``init_detector``) refuse the same checkpoints.
"""
import os
import os.path as osp
import subprocess
import sys

import mmdet
import pytest
import torch
from mmengine.config import Config, DictAction

from lors_mmdet.engine import (CheckpointMismatchError, LorsCheckpointCheckHook,
                               add_lors_checkpoint_check, cfg_options,
                               check_lors_checkpoint, fit_config,
                               matching_config_path)
from lors_mmdet.engine.load_checks import lors_module_names
from lors_mmdet.engine.lors_settings import (differences, plain,
                                             write_matching_config)
from test_tools_e2e import ROOT, data_options

TINY = osp.join(ROOT, 'tests', 'configs', 'tiny_deformable_detr_synthetic.py')
TINY_LORS = osp.join(ROOT, 'tests', 'configs',
                     'tiny_lors_deformable_detr_synthetic.py')
MMDET_TEST = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py')
EMBED_DIMS = 32  # of the tiny config: the 'full' rank of its square maps
CONFIG_RANK = 4  # lors.decoder.rank of TINY_LORS


def build(config, **cfg_options_):
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options_)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def run(args, expect_ok=True):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    if expect_ok:
        assert result.returncode == 0, \
            result.stdout[-3000:] + result.stderr[-3000:]
    return result


# --------------------------------------------------------------------------
# The converter and the tools, end to end
# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def data_root(synthetic_coco_factory):
    return synthetic_coco_factory(num_train=4, num_val=4, img_size=64)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """A stock tiny checkpoint converted at rank 'full' for TINY_LORS (rank 4):
    ``(folder, checkpoint, stdout of the converter)``."""
    folder = tmp_path_factory.mktemp('converted')
    stock = build(TINY)
    stock.init_weights()
    torch.save(dict(meta=dict(), state_dict=stock.state_dict()),
               str(folder / 'stock.pth'))
    out = str(folder / 'lors_full.pth')
    result = run(['tools/convert_checkpoint.py', 'to-lors', TINY_LORS,
                  str(folder / 'stock.pth'), out, '--rank', 'full'])
    return folder, out, result.stdout


def test_converter_prints_the_fix_and_writes_a_matching_config(converted):
    folder, out, stdout = converted
    saved = torch.load(out, weights_only=True)
    assert saved['meta']['lors_settings'] == {
        'model.lors': {'decoder': {'rank': 'full'}}}
    config = str(folder / 'lors_full.py')
    assert f'python tools/test.py {config} {out}' in stdout
    assert (f'python tools/test.py {TINY_LORS} {out} '
            '--cfg-options model.lors.decoder.rank=full') in stdout
    assert "model.lors: config {'decoder': {'rank': 4}}, checkpoint " \
           "{'decoder': {'rank': 'full'}}" in stdout
    written = Config.fromfile(config)
    assert written.model.lors.decoder.rank == 'full'
    assert written.model.type == 'LorsDeformableDETR'  # the rest inherited


def test_unchanged_config_is_an_error_naming_key_and_shapes(
        converted, data_root, tmp_path):
    _, out, _ = converted
    result = run(['tools/test.py', TINY_LORS, out, '--work-dir',
                  str(tmp_path), '--cfg-options', *data_options(data_root)],
                 expect_ok=False)
    assert result.returncode != 0
    assert 'CheckpointMismatchError' in result.stderr
    # lors_A and lors_B of the 10 maps of both decoder layers differ; the
    # first ten are named, with shapes derived from the config:
    assert '40 tensor(s) differ in shape' in result.stderr
    assert (f'decoder.layers.0.self_attn.attn.q_proj.lors_A: checkpoint '
            f'({EMBED_DIMS}, {EMBED_DIMS}), model ({CONFIG_RANK}, '
            f'{EMBED_DIMS})') in result.stderr
    assert (f'decoder.layers.0.self_attn.attn.q_proj.lors_B: checkpoint '
            f'({EMBED_DIMS}, {EMBED_DIMS}), model ({EMBED_DIMS}, '
            f'{CONFIG_RANK})') in result.stderr
    assert "model.lors = {'decoder': {'rank': 'full'}}" in result.stderr
    assert '--cfg-options model.lors.decoder.rank=full' in result.stderr
    assert 'bbox_mAP' not in result.stdout  # nothing was evaluated


def test_matching_config_loads_cleanly(converted, data_root, tmp_path):
    folder, out, _ = converted
    result = run(['tools/test.py', str(folder / 'lors_full.py'), out,
                  '--work-dir', str(tmp_path), '--cfg-options',
                  *data_options(data_root)])
    log = result.stdout + result.stderr
    assert 'bbox_mAP_copypaste' in log
    assert 'size mismatch' not in log
    assert 'missing keys' not in log and 'unexpected key' not in log


def test_printed_cfg_options_fine_tune_with_other_classes(
        converted, data_root, tmp_path):
    """tools/train.py load_from with the printed --cfg-options and another
    number of classes (8 instead of 6): only the classification heads
    mismatch, and mmengine warns."""
    _, out, _ = converted
    # No validation: the synthetic set's evaluator knows 6 classes only.
    result = run(['tools/train.py', TINY_LORS, '--work-dir', str(tmp_path),
                  '--cfg-options',
                  f'train_dataloader.dataset.data_root={data_root}',
                  'val_dataloader=None', 'val_evaluator=None', 'val_cfg=None',
                  'model.lors.decoder.rank=full', 'model.bbox_head.num_classes=8',
                  f'load_from={out}', 'train_cfg.max_epochs=1'])
    log = result.stdout + result.stderr
    mismatched = {line.split()[3].rstrip(':') for line in log.splitlines()
                  if line.startswith('size mismatch for ')}
    assert mismatched == {f'bbox_head.cls_branches.{i}.{p}'
                          for i in range(2) for p in ('weight', 'bias')}
    assert osp.exists(osp.join(str(tmp_path), 'epoch_1.pth'))


def test_train_load_from_unchanged_config_is_an_error(converted, data_root,
                                                      tmp_path):
    _, out, _ = converted
    result = run(['tools/train.py', TINY_LORS, '--work-dir', str(tmp_path),
                  '--cfg-options', *data_options(data_root),
                  f'load_from={out}'], expect_ok=False)
    assert result.returncode != 0
    assert 'decoder.layers.0.self_attn.attn.q_proj.lors_A: checkpoint' \
        in result.stderr
    assert not osp.exists(osp.join(str(tmp_path), 'epoch_1.pth'))


# --------------------------------------------------------------------------
# The model's own state-dict loading: mmdet's tools and APIs
# --------------------------------------------------------------------------
Q_PROJ_A = 'decoder.layers.0.self_attn.attn.q_proj.lors_A'


def test_mmdet_test_script_refuses_another_rank(converted, data_root,
                                                tmp_path):
    """mmdet's own tools/test.py (no hook of ours in its config): the
    detector's state-dict loading raises before anything is evaluated."""
    _, out, _ = converted
    result = run([MMDET_TEST, TINY_LORS, out, '--work-dir', str(tmp_path),
                  '--cfg-options', *data_options(data_root)],
                 expect_ok=False)
    assert result.returncode != 0
    assert 'CheckpointMismatchError' in result.stderr
    assert (f'{Q_PROJ_A}: checkpoint ({EMBED_DIMS}, {EMBED_DIMS}), model '
            f'({CONFIG_RANK}, {EMBED_DIMS})') in result.stderr
    assert 'convert_checkpoint.py to-lors' in result.stderr
    assert '--rank' in result.stderr
    assert 'bbox_mAP' not in result.stdout


def test_init_detector_refuses_another_rank(converted):
    from mmdet.apis import init_detector
    _, out, _ = converted
    with pytest.raises(CheckpointMismatchError) as error:
        init_detector(TINY_LORS, out, device='cpu')
    message = str(error.value)
    assert (f'{Q_PROJ_A}: checkpoint ({EMBED_DIMS}, {EMBED_DIMS}), model '
            f'({CONFIG_RANK}, {EMBED_DIMS})') in message
    assert '40 tensor(s) differ in shape' in message
    assert 'model.lors.<part>.rank' in message


def test_det_inferencer_refuses_another_rank(converted):
    from mmdet.apis import DetInferencer
    _, out, _ = converted
    with pytest.raises(CheckpointMismatchError,
                       match=rf'{Q_PROJ_A}: checkpoint \({EMBED_DIMS}, '
                       rf'{EMBED_DIMS}\), model \({CONFIG_RANK}, '
                       rf'{EMBED_DIMS}\)'):
        DetInferencer(model=TINY_LORS, weights=out, device='cpu',
                      show_progress=False)


def test_init_detector_refuses_a_lors_checkpoint_for_a_stock_model(
        converted):
    """The LORS class without ``model.lors`` builds the stock model: the
    checkpoint's LORS tensors would be dropped and its layers left random."""
    from mmdet.apis import init_detector
    _, out, _ = converted
    with pytest.raises(CheckpointMismatchError,
                       match=r'(?s)belong to LORS stacks the model does not '
                       r'have.*self_attn\.attn\.q_proj\.lors_A.*'
                       r'convert_checkpoint\.py to-stock'):
        init_detector(TINY_LORS, out, device='cpu',
                      cfg_options={'model.lors': None})


def test_tools_test_refuses_a_lors_checkpoint_for_a_stock_config(
        converted, data_root, tmp_path):
    _, out, _ = converted
    result = run(['tools/test.py', TINY, out, '--work-dir', str(tmp_path),
                  '--cfg-options', *data_options(data_root)],
                 expect_ok=False)
    assert result.returncode != 0
    assert 'CheckpointMismatchError' in result.stderr
    assert f'  {Q_PROJ_A}\n' in result.stderr
    assert 'convert_checkpoint.py to-stock' in result.stderr
    assert '--out-config STOCK_CONFIG.py' in result.stderr
    assert 'bbox_mAP' not in result.stdout


def test_partial_loads_still_only_warn(converted, tmp_path):
    """mmengine's non-strict loading stays as it was for what is not a LORS
    tensor: another number of classes, a backbone taken from a LORS
    checkpoint by ``init_cfg``, the same model's checkpoint."""
    from mmengine.runner import load_checkpoint
    _, out, _ = converted
    model = build(TINY_LORS)
    other = build(TINY_LORS, **{'model.bbox_head.num_classes': 3})
    torch.save(dict(state_dict=other.state_dict()), str(tmp_path / 'o.pth'))
    load_checkpoint(model, str(tmp_path / 'o.pth'), logger='silent')
    assert torch.equal(model.decoder.layers[1].ffn.layers[1].lors_A,
                       other.decoder.layers[1].ffn.layers[1].lors_A)
    from mmdet.registry import MODELS
    cfg = Config.fromfile(TINY_LORS)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=out,
                                       prefix='backbone.')
    backbone = MODELS.build(cfg.model)
    backbone.init_weights()
    saved = torch.load(out, weights_only=True)['state_dict']
    assert torch.equal(backbone.backbone.conv1.weight,
                       saved['backbone.conv1.weight'])


# --------------------------------------------------------------------------
# The check, in process
# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def lors_model():
    return build(TINY_LORS)


def test_lors_tensors_are_found_from_module_types(lors_model):
    from lors_mmdet.engine.load_checks import lors_owner
    modules = lors_module_names(lors_model)
    owned = {key for key in lors_model.state_dict()
             if lors_owner(key, modules) is not None}
    # Independently: the LORS factors, the shared weights and the private
    # biases of the LORS maps (the attention maps' and FFN's biases).
    factors = {k for k in owned if k.endswith(('.lors_A', '.lors_B'))}
    shared = {k for k in lors_model.state_dict()
              if k.startswith('decoder.lors_layers.shared.')}
    assert len(factors) == 2 * 10 * 2  # A and B, 10 maps, 2 layers
    assert shared and shared <= owned and factors <= owned
    assert {k[:-len('.bias')] for k in owned if k.endswith('.bias')} == \
        {k[:-len('.lors_A')] for k in factors}
    assert not any(k.startswith(('backbone.', 'neck.', 'encoder.',
                                 'bbox_head.', 'query_embedding'))
                   for k in owned)
    assert not any('.norms.' in k for k in owned)


def test_lors_keys_are_those_no_stock_model_has(lors_model):
    from lors_mmdet.lors import is_lors_key
    lors_keys = {k for k in lors_model.state_dict() if is_lors_key(k)}
    assert {k for k in lors_model.state_dict()
            if k.endswith(('.lors_A', '.lors_B'))
            or k.startswith('decoder.lors_layers.')} == lors_keys
    assert not any(is_lors_key(k) for k in build(TINY).state_dict())


def test_other_class_count_is_left_to_mmengine(lors_model):
    other = build(TINY_LORS, **{'model.bbox_head.num_classes': 3})
    check_lors_checkpoint(lors_model, dict(state_dict=other.state_dict()))


def test_mismatch_with_ddp_prefix_and_without_recorded_settings(lors_model):
    full = build(TINY_LORS, **{'model.lors.decoder.rank': 'full'})
    checkpoint = dict(state_dict={f'module.{k}': v
                                  for k, v in full.state_dict().items()})
    with pytest.raises(CheckpointMismatchError) as error:
        check_lors_checkpoint(lors_model, checkpoint, source='x.pth')
    message = str(error.value)
    assert message.startswith('checkpoint x.pth does not fit')
    assert 'decoder.lors_layers' not in message  # shared: same shapes
    assert 'records no LORS settings' in message
    assert '... and 30 more' in message  # 40 listed as 10 + the count


def test_checkpoint_with_tensors_the_lors_model_lacks(lors_model):
    """Other groups of layers (a second shared weight per projection) and a
    dense (stock) checkpoint: tensors inside LORS modules that have no place
    there."""
    grouped = build(TINY_LORS, **{'model.lors.decoder.layer_groups': 1})
    with pytest.raises(CheckpointMismatchError,
                       match=r'decoder\.lors_layers\.shared\.1\.ffn\.'
                       r'layers\.1\.weight'):
        check_lors_checkpoint(lors_model,
                              dict(state_dict=grouped.state_dict()))
    stock = build(TINY)
    with pytest.raises(CheckpointMismatchError,
                       match=r'decoder\.layers\.0\.self_attn\.attn\.'
                       r'in_proj_weight(.|\n)*'
                       r'decoder\.layers\.0\.ffn\.layers\.0\.0\.weight'
                       r'(.|\n)*convert_checkpoint'):
        check_lors_checkpoint(lors_model, dict(state_dict=stock.state_dict()))


def test_hook_is_added_once():
    cfg = Config(dict(custom_hooks=[dict(type='RNGStateHook')]))
    add_lors_checkpoint_check(cfg)
    add_lors_checkpoint_check(cfg)
    assert [h['type'] for h in cfg.custom_hooks] == [
        'RNGStateHook', 'LorsCheckpointCheckHook']
    assert LorsCheckpointCheckHook.priority == 'LOWEST'


# --------------------------------------------------------------------------
# Settings -> --cfg-options and matching configs
# --------------------------------------------------------------------------
BASE_LORS = dict(rank=8, num_terms=1, ranks=dict(ffn=4), adaptive=None)
SETTINGS_CASES = {
    'rank': dict(rank='full', num_terms=1, ranks=dict(ffn=4), adaptive=None),
    'per-layer list': dict(rank=[8, 'full'], num_terms=1, ranks=dict(ffn=4),
                           adaptive=None),
    'nested override': dict(rank=8, num_terms=1,
                            ranks=dict(ffn=4, cross_attn=dict(
                                attention_weights=2)), adaptive=None),
    'dict replaces int': dict(rank=8, num_terms=1,
                              ranks=dict(ffn=dict(fc1=2, fc2=4)),
                              adaptive=None),
    'None becomes dict': dict(rank=8, num_terms=1, ranks=dict(ffn=4),
                              adaptive=dict(projections=['ffn.fc1'],
                                            core_size=4)),
    'key removed': dict(rank=8, num_terms=1),
}


def write_base(tmp_path):
    path = tmp_path / 'base.py'
    path.write_text(f'model = dict(type="X", decoder=dict(num_layers=2), '
                    f'lors=dict(decoder={BASE_LORS!r}))\n')
    return str(path)


@pytest.mark.parametrize('case', list(SETTINGS_CASES))
def test_printed_cfg_options_and_matching_config_reproduce_settings(
        case, tmp_path):
    base = write_base(tmp_path)
    settings = {'model.lors': dict(decoder=SETTINGS_CASES[case])}
    cfg = Config.fromfile(base)
    assert differences(cfg, settings)
    options = cfg_options(cfg, settings)
    # As a user passes them: through argparse and mmengine's DictAction.
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parsed = parser.parse_args(['--cfg-options', *options]).cfg_options
    applied = Config.fromfile(base)
    applied.merge_from_dict(parsed)
    assert plain(applied.model.lors.decoder) == SETTINGS_CASES[case]
    assert applied.model.decoder.num_layers == 2
    matching = str(tmp_path / 'sub' / 'ckpt.py')
    os.makedirs(osp.dirname(matching))
    write_matching_config(base, settings, matching, 'ckpt.pth')
    loaded = Config.fromfile(matching)
    assert plain(loaded.model.lors.decoder) == SETTINGS_CASES[case]
    assert loaded.model.type == 'X'


def test_settings_that_match_need_nothing(tmp_path):
    base = write_base(tmp_path)
    fit = fit_config(base, str(tmp_path / 'c.pth'),
                     {'model.lors': dict(decoder=dict(BASE_LORS))})
    assert fit.cfg_options == [] and fit.matching_config is None
    assert not (tmp_path / 'c.py').exists()


def test_not_expressible_on_a_command_line_still_gets_a_config(tmp_path):
    base = write_base(tmp_path)
    settings = {'model.lors': dict(decoder=dict(BASE_LORS, rank=[dict(a=1)]))}
    fit = fit_config(base, str(tmp_path / 'c.pth'), settings)
    assert fit.cfg_options is None
    assert Config.fromfile(fit.matching_config).model.lors.decoder.rank == [
        dict(a=1)]


def test_matching_config_never_replaces_a_users_file(tmp_path):
    base = write_base(tmp_path)
    mine = tmp_path / 'ckpt.py'
    mine.write_text('# my own config\n')
    with pytest.raises(FileExistsError, match='was not written by lors_mmdet'):
        matching_config_path(str(tmp_path / 'ckpt.pth'))
    assert mine.read_text() == '# my own config\n'
    mine.unlink()
    settings = {'model.lors': dict(decoder=dict(BASE_LORS, rank=2))}
    first = fit_config(base, str(tmp_path / 'ckpt.pth'), settings)
    again = fit_config(base, str(tmp_path / 'ckpt.pth'),
                       {'model.lors': dict(decoder=dict(BASE_LORS, rank=3))})
    assert first.matching_config == again.matching_config == str(mine)
    assert Config.fromfile(str(mine)).model.lors.decoder.rank == 3
