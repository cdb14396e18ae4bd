"""Checkpoint conversion stock mmdet DINO / Deformable-DETR <-> LORS, by the
stack surgery (load the stock model, apply LORS from dense, save; merge back).

Judged by predictions: a stock model converted at full rank predicts what the
stock model predicts, and a LORS model merged into mmdet's stock model
predicts what the LORS model predicts.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from lors_mmdet.apis import convert_checkpoint, format_conversion
from lors_mmdet.models.lors_stacks import lors_stack_paths_of, stock_to_lors
from test_detr_lors import (ROOT, build_model, randomize_, tiny_batch,
                            tiny_model_cfg)

VARIANTS = [
    ('DINO', True, True),
    ('DeformableDETR', False, False),
    ('DeformableDETR', True, True),
]
BOTH = dict(encoder=dict(rank=4), decoder=dict(rank=4))


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
    randomize_(model.encoder, scale=0.02, seed=2)
    randomize_(model.decoder, scale=0.02, seed=1)
    return model


def write_config(path, cfg):
    with open(path, 'w') as f:
        f.write("custom_imports = dict(imports=['lors_mmdet'], "
                'allow_failed_imports=False)\n')
        f.write(f'model = {cfg.to_dict()!r}\n')
    return str(path)


def save(model, path, **meta):
    torch.save(dict(meta=meta, state_dict=model.state_dict()), str(path))
    return str(path)


@pytest.mark.parametrize('family,refine,two_stage', VARIANTS)
def test_full_rank_conversion_and_merge_predict_like_the_stock_model(
        family, refine, two_stage, tmp_path):
    kwargs = dict(with_box_refine=refine, as_two_stage=two_stage)
    stock = trained_like(build_model(tiny_model_cfg(family, **kwargs)))
    config = write_config(tmp_path / 'lors.py',
                          tiny_model_cfg(family, lors=BOTH, **kwargs))
    lors_ckpt = str(tmp_path / 'lors.pth')
    result = convert_checkpoint('to-lors', config,
                                save(stock, tmp_path / 'stock.pth', epoch=3),
                                lors_ckpt, rank='full')
    assert max(result.errors.values()) < 1e-5
    saved = torch.load(lors_ckpt, weights_only=True)
    assert saved['meta']['epoch'] == 3
    assert saved['meta']['lors_settings'] == {'model.lors': {
        'encoder': {'rank': 'full'}, 'decoder': {'rank': 'full'}}}
    lors = build_model(tiny_model_cfg(
        family, lors=dict(encoder=dict(rank='full'),
                          decoder=dict(rank='full')), **kwargs), seed=1)
    lors.load_state_dict(saved['state_dict'], strict=True)
    batch = tiny_batch(stock, training=False)
    assert_same_predictions(predictions(lors, batch),
                            predictions(stock, batch))
    # ... and back: the stock model's weights.
    back = str(tmp_path / 'back.pth')
    full_config = write_config(tmp_path / 'full.py', tiny_model_cfg(
        family, lors=dict(encoder=dict(rank='full'),
                          decoder=dict(rank='full')), **kwargs))
    convert_checkpoint('to-stock', full_config, lors_ckpt, back)
    back_saved = torch.load(back, weights_only=True)
    assert 'lors_settings' not in back_saved['meta']  # a stock checkpoint
    for key, value in stock.state_dict().items():
        torch.testing.assert_close(back_saved['state_dict'][key], value,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('family,refine,two_stage', VARIANTS[1:])
def test_merged_lors_model_predicts_like_the_lors_model(
        family, refine, two_stage, tmp_path):
    kwargs = dict(with_box_refine=refine, as_two_stage=two_stage)
    cfg = tiny_model_cfg(family, lors=BOTH, **kwargs)
    lors = trained_like(build_model(cfg))  # non-zero B: layers differ
    stock_ckpt = str(tmp_path / 'stock.pth')
    result = convert_checkpoint('to-stock', write_config(tmp_path / 'c.py',
                                                         cfg),
                                save(lors, tmp_path / 'lors.pth'), stock_ckpt)
    # (the tiny encoder has one layer: LORS saves nothing there)
    assert result.params_after['decoder'] > result.params_before['decoder']
    stock = build_model(tiny_model_cfg(family, **kwargs), seed=1)
    stock.load_state_dict(torch.load(stock_ckpt, weights_only=True)
                          ['state_dict'], strict=True)
    assert result.params_after == {
        part: sum(p.numel() for p in getattr(stock, part).parameters())
        for part in ('encoder', 'decoder')}
    batch = tiny_batch(stock, training=False)
    assert_same_predictions(predictions(stock, batch),
                            predictions(lors, batch))


def test_low_rank_conversion_reports_errors_and_saving():
    errors, counts = {}, {}
    for rank in (2, 16):
        stock = trained_like(build_model(tiny_model_cfg('DeformableDETR')))
        errors[rank] = stock_to_lors(stock, dict(decoder=dict(rank=rank)),
                                     lors_stack_paths_of(stock))
        counts[rank] = sum(p.numel() for p in stock.decoder.parameters())
    stock = build_model(tiny_model_cfg('DeformableDETR'))
    dense = sum(p.numel() for p in stock.decoder.parameters())
    assert list(errors[2]) == ['decoder']
    assert 0 < errors[16]['decoder'] < errors[2]['decoder'] < 1
    assert counts[2] < counts[16] < dense


def test_report_names_parts_and_counts(tmp_path):
    stock = trained_like(build_model(tiny_model_cfg('DINO')))
    config = write_config(tmp_path / 'lors.py',
                          tiny_model_cfg('DINO', lors=BOTH))
    result = convert_checkpoint('to-lors', config,
                                save(stock, tmp_path / 's.pth'),
                                str(tmp_path / 'l.pth'))
    report = format_conversion(result)
    for part in ('encoder', 'decoder'):
        before = sum(p.numel() for p in getattr(stock, part).parameters())
        assert f'LorsDINO {part} parameters: {before:,} ->' in report
        assert f'{part}: largest relative reconstruction error' in report


def test_conversion_errors_are_clear(tmp_path):
    dino = trained_like(build_model(tiny_model_cfg('DINO')))
    dino_ckpt = save(dino, tmp_path / 'dino.pth')
    ddetr_config = write_config(tmp_path / 'ddetr.py',
                                tiny_model_cfg('DeformableDETR', lors=BOTH))
    with pytest.raises(ValueError, match=r'dino\.pth \(read as a stock '
                       r'DeformableDETR checkpoint\) does not fit'):
        convert_checkpoint('to-lors', ddetr_config, dino_ckpt,
                           str(tmp_path / 'x.pth'))
    stock_config = write_config(tmp_path / 'dino.py', tiny_model_cfg('DINO'))
    with pytest.raises(ValueError, match="model.type='DINO'"):
        convert_checkpoint('to-lors', stock_config, dino_ckpt,
                           str(tmp_path / 'x.pth'))
    lors_config = write_config(tmp_path / 'lors.py',
                               tiny_model_cfg('DINO', lors=BOTH))
    with pytest.raises(ValueError, match=r'(?s)read as a LorsDINO checkpoint'
                       r'\) does not fit.*have no place in these LORS '
                       r'modules.*convert_checkpoint\.py to-lors'):
        convert_checkpoint('to-stock', lors_config, dino_ckpt,
                           str(tmp_path / 'x.pth'))
    with pytest.raises(ValueError, match=r'model\.lors\.encoder\.rank: rank '
                       r'300'):
        convert_checkpoint('to-lors', lors_config, dino_ckpt,
                           str(tmp_path / 'x.pth'), rank=300)
    assert not osp.exists(tmp_path / 'x.pth')


def test_convert_tool_script(tmp_path):
    stock = trained_like(build_model(tiny_model_cfg('DeformableDETR')))
    stock_ckpt = save(stock, tmp_path / 'stock.pth')
    config = write_config(tmp_path / 'lors.py', tiny_model_cfg(
        'DeformableDETR', lors=dict(decoder=dict(rank=8))))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    out = str(tmp_path / 'lors_rank4.pth')
    result = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'convert_checkpoint.py'),
         'to-lors', config, stock_ckpt, out, '--rank', '4'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'decoder: largest relative reconstruction error' in result.stdout
    assert 'LorsDeformableDETR decoder parameters:' in result.stdout
    state_dict = torch.load(out, weights_only=True)['state_dict']
    assert state_dict['decoder.layers.0.ffn.layers.1.lors_A'].shape[0] == 4
    bad = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'convert_checkpoint.py'),
         'to-stock', config, stock_ckpt, str(tmp_path / 'x.pth')],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert 'read as a LorsDeformableDETR checkpoint) does not fit' in \
        bad.stderr
