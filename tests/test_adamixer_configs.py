"""The COCO configs of AdaMixer and LORS-AdaMixer: they build, they carry the
authors' hyperparameters, and the built decoders have exactly the parameter
counts the architecture implies. Also the parameter report tool."""
import glob
import json
import os.path as osp
import re
import runpy
import sys
import time

import pytest
import torch
from mmengine.config import Config

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from lors_mmdet.lors import count_parameters

register_all_modules(init_default_scope=True)
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
COCO_CONFIGS = sorted(
    glob.glob(osp.join(ROOT, 'configs/adamixer/*_coco.py')) +
    glob.glob(osp.join(ROOT, 'configs/lors_adamixer/*_coco.py')))
NAMES = [osp.basename(path) for path in COCO_CONFIGS]


def build(cfg: Config):
    """Build without pretrained init; on the meta device (no memory) except
    Swin, which reads tensor values while it is built."""
    cfg.model.backbone.init_cfg = None
    if cfg.model.backbone.type.startswith('SwinTransformer'):
        return MODELS.build(cfg.model)
    with torch.device('meta'):
        return MODELS.build(cfg.model)


def test_the_expected_configs_exist():
    assert NAMES == sorted([
        'adamixer_r50_8xb2-1x-100q_coco.py',
        'adamixer_r50_8xb2-ms-480-800-3x-100q_coco.py',
        'adamixer_r50_8xb2-crop-ms-480-800-3x-300q_coco.py',
        'adamixer_r101_8xb2-ms-480-800-3x-100q_coco.py',
        'adamixer_r101_8xb2-crop-ms-480-800-3x-300q_coco.py',
        'adamixer_swin-s_8xb2-crop-ms-480-800-3x-300q_coco.py',
        'adamixer_x101-32x4d-dcn_8xb2-crop-ms-480-800-3x-300q_coco.py',
        'lors-adamixer_r50_8xb2-1x-100q_coco.py',
        'lors-adamixer_r50_8xb2-1x-300q_coco.py',
        'lors-adamixer_r50_8xb2-crop-ms-480-800-3x-100q_coco.py',
        'lors-adamixer_r50_8xb2-crop-ms-480-800-3x-300q_coco.py',
        'lors-adamixer_r101_8xb2-crop-ms-480-800-3x-300q_coco.py',
        'lors-adamixer_swin-s_8xb2-crop-ms-480-800-3x-300q_coco.py',
    ])


@pytest.mark.parametrize('path', COCO_CONFIGS, ids=NAMES)
def test_coco_config_builds_with_the_authors_settings(path):
    name = osp.basename(path)
    cfg = Config.fromfile(path)
    lors = name.startswith('lors-')
    queries = int(re.search(r'-(\d+)q_', name).group(1))
    start = time.perf_counter()
    model = build(cfg)
    print(f'{name}: built in {time.perf_counter() - start:.2f} s')

    # queries: really what the name says, for training and for testing
    assert model.rpn_head.num_query == queries
    assert cfg.model.test_cfg.rcnn.max_per_img == queries
    # backbone
    backbone = cfg.model.backbone
    if 'swin-s' in name:
        # mmdet's Swin, or our variant of it with the same DropPath on both
        # branches (tests/test_swin_drop_path.py)
        assert backbone.type == ('SwinTransformerBranchDropPath' if lors
                                 else 'SwinTransformer')
        assert backbone.get('attn_drop_path', True) is True
        assert backbone.drop_path_rate == 0.2
        assert backbone.depths == [2, 2, 18, 2]
        assert cfg.model.neck.in_channels == [96, 192, 384, 768]
    elif 'x101-32x4d-dcn' in name:
        backbone = Config.fromfile(path).model.backbone  # unchanged by build
        assert backbone.type == 'ResNeXt' and backbone.depth == 101
        assert (backbone.groups, backbone.base_width) == (32, 4)
        assert backbone.dcn == dict(type='DCN', deform_groups=1,
                                    fallback_on_stride=False)
        assert backbone.stage_with_dcn == (False, True, True, True)
        assert backbone.frozen_stages == 1 and backbone.norm_eval
        assert backbone.init_cfg.checkpoint == \
            'open-mmlab://resnext101_32x4d'
    else:
        depth = int(re.search(r'_r(\d+)_', name).group(1))
        assert backbone.type == 'ResNet' and backbone.depth == depth
        assert Config.fromfile(path).model.backbone.init_cfg.checkpoint \
            == f'torchvision://resnet{depth}'
    # decoder
    decoder = model.roi_head
    assert decoder.num_stages == 6 and len(decoder.bbox_head) == 6
    assert decoder.content_dim == 256 and decoder.feat_channels == 256
    assert decoder.out_points == 128
    stage = decoder.bbox_head[0]
    assert stage.ffn.layers[0][0].out_features == 2048
    assert stage.attention.attn.num_heads == 8
    assert type(decoder).__name__ == 'AdaMixerDecoder'
    if lors:
        # the plain AdaMixer decoder + model.lors.decoder by the surgery
        assert (decoder.n_groups, decoder.in_points) == (2, 64)
        (path, stack), = model.lors_stacks()
        assert path == 'roi_head.lors_bbox_head'
        assert list(stack.plans) == ['adaptive_mixing.out_proj']
        assert list(stack.plans['adaptive_mixing.out_proj'].ranks) == [8] * 6
        generated = stack.adaptive_plans['adaptive_mixing.parameter_generator']
        assert list(generated.core_sizes) == [16] * 6
        assert list(generated.adaptive_terms) == [1, 1, 2, 2, 3, 3]
    else:
        assert model.lors_stacks() == []
        assert (decoder.n_groups, decoder.in_points) == (4, 32)
    # losses and matching
    head_cfg = cfg.model.roi_head.bbox_head
    assert head_cfg.loss_cls.type == 'FocalLoss'
    assert (head_cfg.loss_cls.alpha, head_cfg.loss_cls.gamma,
            head_cfg.loss_cls.loss_weight) == (0.25, 2.0, 2.0)
    assert head_cfg.loss_bbox.loss_weight == 5.0
    assert head_cfg.loss_iou.type == 'GIoULoss'
    assert head_cfg.loss_iou.loss_weight == 2.0
    assert len(cfg.model.train_cfg.rcnn) == 6
    costs = {
        c.type: c.weight
        for c in cfg.model.train_cfg.rcnn[0].assigner.match_costs
    }
    assert costs == {'FocalLossCost': 2.0, 'BBoxL1Cost': 5.0, 'IoUCost': 2.0}
    # optimisation and schedule
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.optim_wrapper.optimizer.lr == 2.5e-5
    assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
    assert cfg.optim_wrapper.clip_grad.max_norm == 1.0
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.start_factor == 0.001
    assert warmup.end == (1000 if 'swin-s' in name else 500)
    if '-1x-' in name:
        assert cfg.train_cfg.max_epochs == 12
        assert steps.milestones == [8, 11]
        assert cfg.train_pipeline[2].type == 'Resize'
    elif '-ms-480-800-3x-' in name and 'crop' not in name:
        # the authors' mstrain 3x: multi-scale resize only, steps 27 and 33
        assert cfg.train_cfg.max_epochs == 36
        assert steps.milestones == [27, 33]
        pipeline = cfg.train_dataloader.dataset.pipeline
        assert [t.type for t in pipeline] == [
            'LoadImageFromFile', 'LoadAnnotations', 'RandomChoiceResize',
            'RandomFlip', 'PackDetInputs'
        ]
        assert sorted(min(scale) for scale in pipeline[2].scales) == list(
            range(480, 801, 32))
        assert {max(scale) for scale in pipeline[2].scales} == {1333}
        assert pipeline[2].keep_ratio and pipeline[3].prob == 0.5
    else:
        assert cfg.train_cfg.max_epochs == 36
        assert steps.milestones == [24, 33]
        pipeline_types = [t.type for t in cfg.train_dataloader.dataset.pipeline]
        assert 'RandomChoice' in pipeline_types
        choice = cfg.train_dataloader.dataset.pipeline[
            pipeline_types.index('RandomChoice')]
        crop_branch = choice.transforms[1]
        assert crop_branch[1].type == 'RandomCrop'
        assert crop_branch[1].crop_size == (384, 600)
        assert min(crop_branch[2].scales)[0] == 480
        assert max(crop_branch[2].scales)[0] == 800


def test_x101_dcn_builds_and_predicts_on_cpu():
    """mmcv's compiled deformable convolution runs on the CPU: the
    X-101-DCN AdaMixer predicts on one small image."""
    from mmdet.structures import DetDataSample
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/adamixer/'
        'adamixer_x101-32x4d-dcn_8xb2-crop-ms-480-800-3x-300q_coco.py'))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    dcn_stages = [
        any(type(m).__name__ == 'DeformConv2dPack' for m in layer.modules())
        for layer in (model.backbone.layer1, model.backbone.layer2,
                      model.backbone.layer3, model.backbone.layer4)
    ]
    assert dcn_stages == [False, True, True, True]
    # (the CPU op refuses maps smaller than its kernel: 96 x 128 is enough)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(
        img_shape=(96, 128), ori_shape=(96, 128), scale_factor=(1.0, 1.0)))
    data = model.data_preprocessor(
        dict(inputs=[image], data_samples=[sample]), False)
    with torch.no_grad():
        results = model.predict(data['inputs'], data['data_samples'])
    pred = results[0].pred_instances
    assert pred.bboxes.shape == (300, 4) and torch.isfinite(pred.bboxes).all()


def stage_count(D, H, F, C, G, c, p_in, p_out):
    """Parameters of one AdaMixer stage, from the architecture."""
    attention = 4 * D * D + 4 * D + 2 * D + H  # MHA, its LN, tau
    offsets = (D + 1) * G * p_in * 3
    generator = (D + 1) * G * (c * c + p_out * p_in)
    out_proj = c * p_out * G * D + D
    ffn = D * F + F + F * D + D + 2 * D
    branches = 2 * (D * D + D + 2 * D) + (D * C + C) + (4 * D + 4)
    return attention + offsets + generator + out_proj + 2 * D + ffn + \
        branches


def test_decoder_parameter_counts_match_the_architecture():
    D, H, F, C = 256, 8, 2048, 80
    plain = build(
        Config.fromfile(
            osp.join(ROOT, 'configs/adamixer/adamixer_r50_8xb2-1x-100q_coco.py')))
    per_stage = stage_count(D, H, F, C, G=4, c=64, p_in=32, p_out=128)
    assert count_parameters(plain.roi_head).total == 6 * per_stage

    lors = build(
        Config.fromfile(
            osp.join(ROOT, 'configs/lors_adamixer/'
                     'lors-adamixer_r50_8xb2-1x-100q_coco.py')))
    G, c, p_in, p_out, k, r = 2, 128, 64, 128, 16, 8
    generator = (D + 1) * G * (c * c + p_out * p_in)
    projection = c * p_out * G * D
    counts = count_parameters(lors.roi_head)
    assert counts.shared == generator + projection
    # per stage, the published private mixing tensors (spec): core generator
    # Linear(D -> 2 G K k k); L^M (G K, c, k), R^M (G K, k, c), L^S (G K,
    # P_out, k), R^S (G K, k, P_in); A (r, c P_out G), B (D, r), bias (D)
    private_mixing = 0
    private = 0
    for terms in [1, 1, 2, 2, 3, 3]:
        mixing = (D + 1) * 2 * G * terms * k * k \
            + G * terms * (c * k + k * c + p_out * k + k * p_in) \
            + r * c * p_out * G + D * r + D
        private_mixing += mixing
        private += stage_count(D, H, F, C, G, c, p_in, p_out) \
            - generator - projection - D + mixing
    assert counts.private == private
    assert counts.total == 35_348_264  # the published R-50 decoder
    # the published mixing module also holds the 6 output LayerNorms (our
    # stages' mixing_norm)
    assert generator + projection + private_mixing + 6 * 2 * D == 25_940_480
    assert count_parameters(lors.rpn_head).total == 100 * D == 25_600
    # the paper's headline: about 70% fewer decoder parameters than AdaMixer
    ratio = counts.total / (6 * per_stage)
    assert 0.25 < ratio < 0.35


def test_param_report_prints_the_published_count(monkeypatch, capsys):
    path = osp.join(ROOT, 'configs/lors_adamixer/'
                    'lors-adamixer_r50_8xb2-1x-100q_coco.py')
    text = run_report([path], monkeypatch, capsys)
    decoder_line = next(line for line in text.splitlines()
                        if line.startswith('roi_head'))
    assert decoder_line.split()[-1] == '35,348,264'
    query_line = next(line for line in text.splitlines()
                      if line.startswith('rpn_head'))
    assert query_line.split()[-1] == '25,600'


def run_report(argv, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, 'argv', ['param_report.py', *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(
            osp.join(ROOT, 'tools/analysis/param_report.py'),
            run_name='__main__')
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize('config', [
    'configs/adamixer/adamixer_r18-tiny_1xb16-toy_synthetic.py',
    'configs/lors_adamixer/lors-adamixer_r18-tiny_1xb16-toy_synthetic.py'
])
def test_param_report(config, monkeypatch, capsys):
    path = osp.join(ROOT, config)
    report = json.loads(run_report([path, '--json'], monkeypatch, capsys))
    model = build(Config.fromfile(path))
    total = sum(p.numel() for p in model.parameters())
    assert report['total']['total'] == total
    assert sum(report['parts'].values()) == total
    decoder = report['decoder']
    assert decoder['name'] == 'roi_head'
    assert decoder['total'] == sum(p.numel()
                                   for p in model.roi_head.parameters())
    assert len(decoder['stages']) == model.roi_head.num_stages
    assert decoder['shared'] + sum(
        s['private'] for s in decoder['stages']) + \
        decoder['private_outside_stages'] == decoder['total']
    if 'lors' in config:
        assert report['lors'] and decoder['shared'] > 0
        assert decoder['stock_equivalent'] > decoder['total']
        # stages with more adaptive terms own more
        privates = [s['private'] for s in decoder['stages']]
        assert privates == sorted(privates) and privates[0] < privates[-1]
    else:
        assert not report['lors'] and decoder['shared'] == 0
        assert decoder['stock_equivalent'] == decoder['total']
    text = run_report([path], monkeypatch, capsys)
    assert 'decoder (roi_head)' in text and 'stage 0 private' in text
    assert ('stock equivalent' in text) == ('lors' in config)


def test_param_report_cfg_options_change_the_model(monkeypatch, capsys):
    """--cfg-options reaches the counted model: 10 fewer queries own 10 fewer
    learned content vectors."""
    path = osp.join(ROOT,
                    'configs/adamixer/adamixer_r18-tiny_1xb16-toy_synthetic.py')
    cfg = Config.fromfile(path)
    num_query = cfg.model.rpn_head.num_query
    content_dim = cfg.model.rpn_head.content_dim
    default = json.loads(run_report([path, '--json'], monkeypatch, capsys))
    fewer = json.loads(run_report(
        [path, '--json', '--cfg-options',
         f'model.rpn_head.num_query={num_query - 10}'], monkeypatch, capsys))
    assert default['total']['total'] - fewer['total']['total'] == \
        10 * content_dim


def test_a_top_level_variable_in_a_child_config_does_not_reach_the_base_model(
        tmp_path):
    """Why the authors' "300-query" LORS configs build 100 queries
    (docs/adamixer.md): they only set ``num_query = 300`` on top of a base
    whose model dict used ``num_query`` when the base was read. Same pattern,
    same config semantics (a base file is evaluated on its own)."""
    (tmp_path / 'base_100q.py').write_text(
        'num_query = 100\n'
        'model = dict(rpn_head=dict(num_query=num_query),\n'
        '             test_cfg=dict(rcnn=dict(max_per_img=num_query)))\n')
    (tmp_path / 'child_300q.py').write_text(
        "_base_ = './base_100q.py'\nnum_query = 300\n")
    cfg = Config.fromfile(str(tmp_path / 'child_300q.py'))
    assert cfg.num_query == 300
    assert cfg.model.rpn_head.num_query == 100
    assert cfg.model.test_cfg.rcnn.max_per_img == 100
    # ours set the model keys themselves
    ours = Config.fromfile(osp.join(
        ROOT, 'configs/lors_adamixer/lors-adamixer_r50_8xb2-1x-300q_coco.py'))
    assert ours.model.rpn_head.num_query == 300
    assert ours.model.test_cfg.rcnn.max_per_img == 300


def test_toy_and_coco_adamixer_share_one_model_base():
    """The toy AdaMixer restates only sizes: every other model key (losses,
    matching, mixing layout, init-relevant settings) comes from the same
    base as the COCO config."""
    coco = Config.fromfile(
        osp.join(ROOT, 'configs/adamixer/adamixer_r50_8xb2-1x-100q_coco.py'))
    toy = Config.fromfile(osp.join(
        ROOT, 'configs/adamixer/adamixer_r18-tiny_1xb16-toy_synthetic.py'))
    sizes = {'depth', 'base_channels', 'frozen_stages', 'norm_eval',
             'init_cfg', 'in_channels', 'out_channels', 'num_groups',
             'num_query', 'content_dim', 'num_stages', 'stage_loss_weights',
             'feat_channels', 'in_points', 'out_points', 'num_classes',
             'num_heads', 'feedforward_channels', 'max_per_img', 'rcnn'}

    def differing(a, b, path=''):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in set(a) | set(b):
                yield from differing(a.get(key), b.get(key), f'{path}.{key}')
        elif a != b:
            yield path

    diffs = set(differing(coco.model.to_dict(), toy.model.to_dict()))
    assert diffs and {path.rsplit('.', 1)[-1] for path in diffs} <= sizes
    # the per-stage training targets are the base's, one per toy stage
    assert toy.model.train_cfg.rcnn == [coco.model.train_cfg.rcnn[0]] * 3
