"""Checkpoint conversion stock mmdet DINO / Deformable-DETR <-> LORS.

Judged by predictions: a stock model converted at full rank predicts what the
stock model predicts, and a LORS model merged into mmdet's stock layout
predicts what the LORS model predicts.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from lors_mmdet.models.detr.convert import (convert_checkpoint,
                                            detect_detr_family,
                                            format_conversion, lors_to_stock,
                                            stock_to_lors)
from test_detr_lors import (ROOT, build_model, randomize_, tiny_batch,
                            tiny_model_cfg)

VARIANTS = [
    ('DINO', True, True),
    ('DeformableDETR', False, False),
    ('DeformableDETR', True, True),
]


def predictions(model, batch):
    model.eval()
    with torch.no_grad():
        return [r.pred_instances for r in model.predict(*batch)]


def assert_same_predictions(actual, expected):
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.labels, e.labels)
        torch.testing.assert_close(a.scores, e.scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.bboxes, e.bboxes, atol=1e-3, rtol=1e-5)


def trained_like(model):
    """Distinct layers, non-trivial biases, as in a trained model."""
    randomize_(model.decoder, scale=0.02, seed=1)
    return model


@pytest.mark.parametrize('family,refine,two_stage', VARIANTS)
def test_full_rank_conversion_predicts_like_the_stock_model(
        family, refine, two_stage):
    stock = trained_like(build_model(tiny_model_cfg(
        family, with_box_refine=refine, as_two_stage=two_stage)))
    result = stock_to_lors(stock.state_dict(), dict(rank='full'))
    assert result.family == family
    assert max(max(e) for e in result.errors.values()) < 1e-5
    lors = build_model(tiny_model_cfg(family, lors=dict(rank='full'),
                                      with_box_refine=refine,
                                      as_two_stage=two_stage), seed=1)
    lors.load_state_dict(result.state_dict, strict=True)
    batch = tiny_batch(stock, training=False)
    assert_same_predictions(predictions(lors, batch),
                            predictions(stock, batch))


@pytest.mark.parametrize('family,refine,two_stage', VARIANTS)
def test_merged_lors_model_predicts_like_the_lors_model(
        family, refine, two_stage):
    lors = build_model(tiny_model_cfg(family, lors=dict(rank=4),
                                      with_box_refine=refine,
                                      as_two_stage=two_stage))
    trained_like(lors)  # non-zero B: every layer differs from the shared one
    result = lors_to_stock(lors.state_dict())
    assert result.decoder_params_after > result.decoder_params_before
    stock = build_model(tiny_model_cfg(family, with_box_refine=refine,
                                       as_two_stage=two_stage), seed=1)
    stock.load_state_dict(result.state_dict, strict=True)
    batch = tiny_batch(stock, training=False)
    assert_same_predictions(predictions(stock, batch),
                            predictions(lors, batch))
    # ... and back again at full rank: the same model.
    back = stock_to_lors(result.state_dict, dict(rank='full'))
    relors = build_model(tiny_model_cfg(family, lors=dict(rank='full'),
                                        with_box_refine=refine,
                                        as_two_stage=two_stage), seed=2)
    relors.load_state_dict(back.state_dict, strict=True)
    assert_same_predictions(predictions(relors, batch),
                            predictions(lors, batch))


def test_low_rank_conversion_reports_errors_and_saving():
    stock = trained_like(build_model(tiny_model_cfg('DeformableDETR')))
    low = stock_to_lors(stock.state_dict(), dict(rank=2))
    high = stock_to_lors(stock.state_dict(), dict(rank=16))
    assert set(low.errors) == {
        'self_attn.query_proj', 'self_attn.key_proj', 'self_attn.value_proj',
        'self_attn.out_proj', 'cross_attn.sampling_offsets',
        'cross_attn.attention_weights', 'cross_attn.value_proj',
        'cross_attn.output_proj', 'ffn.fc1', 'ffn.fc2'
    }
    for name in low.errors:
        assert len(low.errors[name]) == 3
        assert all(0 < h < l < 1 for h, l in zip(high.errors[name],
                                                 low.errors[name]))
    assert low.decoder_params_after < high.decoder_params_after < \
        low.decoder_params_before
    report = format_conversion(low)
    assert 'ffn.fc1' in report and 'L2' in report
    assert f'{low.decoder_params_before:,}' in report


def test_conversion_errors_are_clear():
    dino = build_model(tiny_model_cfg('DINO')).state_dict()
    assert detect_detr_family(dino) == 'DINO'
    lors = build_model(tiny_model_cfg('DINO', lors=dict(rank=4))).state_dict()
    with pytest.raises(ValueError, match='already has a LORS decoder'):
        stock_to_lors(lors)
    with pytest.raises(ValueError, match='has no LORS decoder'):
        lors_to_stock(dino)
    not_detr = {'backbone.conv1.weight': torch.zeros(1),
                'roi_head.bbox_head.0.fc_cls.weight': torch.zeros(1)}
    with pytest.raises(ValueError, match='not a DINO / Deformable-DETR'):
        stock_to_lors(not_detr)
    with pytest.raises(ValueError, match='decoder.lors.rank: rank 300'):
        stock_to_lors(dino, dict(rank=300))
    with pytest.raises(ValueError, match=r'rank.*one entry per decoder layer'):
        stock_to_lors(dino, dict(rank=[4, 4]))


def test_active_adaptive_branch_refuses_to_merge():
    lors_cfg = dict(rank=4, adaptive=dict(projections=['ffn.fc1'],
                                          core_size=4))
    model = build_model(tiny_model_cfg('DeformableDETR', lors=lors_cfg))
    # Inactive (zero core generators, as initialised): dropped, exact.
    result = lors_to_stock(model.state_dict())
    assert any('inactive adaptive' in note for note in result.notes)
    with torch.no_grad():
        model.decoder.layers[1].ffn.projections[0].core_generator.bias.fill_(1)
    with pytest.raises(ValueError, match='active adaptive branch'):
        lors_to_stock(model.state_dict())


def write_config(path, family, lors):
    cfg = tiny_model_cfg(family, lors=lors)
    with open(path, 'w') as f:
        f.write("custom_imports = dict(imports=['lors_mmdet'], "
                'allow_failed_imports=False)\n')
        f.write(f'model = {cfg.to_dict()!r}\n')
    return str(path)


def test_convert_checkpoint_round_trip_and_wrong_family(tmp_path):
    stock = trained_like(build_model(tiny_model_cfg('DINO')))
    stock_ckpt = str(tmp_path / 'stock.pth')
    torch.save(dict(meta=dict(epoch=3), state_dict=stock.state_dict()),
               stock_ckpt)
    config = write_config(tmp_path / 'lors_dino.py', 'DINO', dict(rank=8))
    lors_ckpt = str(tmp_path / 'lors.pth')
    result = convert_checkpoint('to-lors', config, stock_ckpt, lors_ckpt,
                                rank='full')
    assert result.family == 'DINO'
    saved = torch.load(lors_ckpt, weights_only=True)
    assert saved['meta']['lors_settings'] == {
        'model.decoder.lors': {'rank': 'full'}}
    assert saved['meta']['epoch'] == 3
    back_ckpt = str(tmp_path / 'back.pth')
    convert_checkpoint('to-stock', config, lors_ckpt, back_ckpt)
    back_saved = torch.load(back_ckpt, weights_only=True)
    assert 'lors_settings' not in back_saved['meta']  # a stock checkpoint now
    back = back_saved['state_dict']
    for key, value in stock.state_dict().items():
        torch.testing.assert_close(back[key], value, atol=1e-5, rtol=1e-4)
    # A DINO checkpoint for a Deformable-DETR config, and a config that is
    # not a LORS one.
    ddetr_config = write_config(tmp_path / 'lors_ddetr.py', 'DeformableDETR',
                                dict(rank=8))
    with pytest.raises(ValueError, match='is a DINO checkpoint, but the '
                       'config builds LorsDeformableDETR'):
        convert_checkpoint('to-lors', ddetr_config, stock_ckpt,
                           str(tmp_path / 'x.pth'))
    stock_config = write_config(tmp_path / 'dino.py', 'DINO', None)
    with pytest.raises(ValueError, match="model.type='DINO'"):
        convert_checkpoint('to-lors', stock_config, stock_ckpt,
                           str(tmp_path / 'x.pth'))
    # A stock refine (one-stage) checkpoint for a refine-twostage config.
    one_stage = build_model(tiny_model_cfg('DeformableDETR',
                                           with_box_refine=True))
    one_stage_ckpt = str(tmp_path / 'one_stage.pth')
    torch.save(dict(state_dict=one_stage.state_dict()), one_stage_ckpt)
    two_stage_config = tmp_path / 'lors_two_stage.py'
    cfg = tiny_model_cfg('DeformableDETR', lors=dict(rank=8),
                         with_box_refine=True, as_two_stage=True)
    two_stage_config.write_text(
        "custom_imports = dict(imports=['lors_mmdet'])\n"
        f'model = {cfg.to_dict()!r}\n')
    with pytest.raises(ValueError, match='does not fit the model'):
        convert_checkpoint('to-lors', str(two_stage_config), one_stage_ckpt,
                           str(tmp_path / 'x.pth'))


def test_convert_tool_script(tmp_path):
    stock = trained_like(build_model(tiny_model_cfg('DeformableDETR')))
    stock_ckpt = str(tmp_path / 'stock.pth')
    torch.save(dict(state_dict=stock.state_dict()), stock_ckpt)
    config = write_config(tmp_path / 'lors.py', 'DeformableDETR',
                          dict(rank=8))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    out = str(tmp_path / 'lors_rank4.pth')
    result = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'convert_detr_checkpoint.py'),
         'to-lors', config, stock_ckpt, out, '--rank', '4'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'cross_attn.sampling_offsets' in result.stdout
    assert 'DeformableDETR decoder parameters:' in result.stdout
    state_dict = torch.load(out, weights_only=True)['state_dict']
    assert state_dict['decoder.layers.0.ffn.layers.1.lors_A'].shape[0] == 4
    bad = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'convert_detr_checkpoint.py'),
         'to-stock', config, stock_ckpt, str(tmp_path / 'x.pth')],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert 'has no LORS decoder' in bad.stderr
