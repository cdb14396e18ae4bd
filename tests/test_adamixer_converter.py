"""Converting the authors' AdaMixer / LORS-AdaMixer checkpoints.

The "official" state dicts below are built from the key names and shapes of
the public releases (MCG-NJU/AdaMixer and li-jl16/LORS, mmdet 2.12): per
stage ``sampling_n_mixing.{sampling_offset_generator.0, norm,
adaptive_mixing.parameter_generator.0, adaptive_mixing.out_proj}`` for
AdaMixer; a decoder-level ``adaptive_mixing`` (FactorizedAdaptiveMixing) with
``common_parameter_generator``, ``private_parameter_generator.{s}``,
``{ml,mr,sl,sr}_parameters.{s}`` of shape (G*K, ., .), ``base_out_proj``,
``out_weight_add_{A,B}.{s}``, ``out_weight_bias.{s}``, ``out_norm.{s}`` for
LORS-AdaMixer; ``neck.lateral_convs.{l}.conv`` + ``neck.gn_out`` and
``rpn_head.init_{proposal_bboxes,content_features}`` for both.
"""
import os.path as osp
import runpy
import sys

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from lors_mmdet.models.adamixer.checkpoint_converter import (
    convert_adamixer_checkpoint, convert_adamixer_state_dict, detect_release)

register_all_modules(init_default_scope=True)
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

D, FFN, HEADS, NUM_CLASSES, NUM_QUERY = 32, 48, 4, 5, 7
FEAT, STAGES = 32, 2
BACKBONE = dict(
    type='ResNet',
    depth=18,
    base_channels=8,
    num_stages=4,
    out_indices=(0, 1, 2, 3),
    norm_cfg=dict(type='BN'),
    norm_eval=False,
    init_cfg=None)
STAGE = dict(
    num_classes=NUM_CLASSES,
    num_heads=HEADS,
    feedforward_channels=FFN,
    loss_cls=dict(
        type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
        loss_weight=2.0),
    loss_bbox=dict(type='L1Loss', loss_weight=5.0),
    loss_iou=dict(type='GIoULoss', loss_weight=2.0))


def build_detector(lors: bool, groups: int, p_in: int, p_out: int,
                   num_terms=None, core_size=None, rank=None):
    roi_head = dict(
        type='LorsAdaMixerDecoder' if lors else 'AdaMixerDecoder',
        num_stages=STAGES,
        stage_loss_weights=[1] * STAGES,
        content_dim=D,
        feat_channels=FEAT,
        n_groups=groups,
        in_points=p_in,
        out_points=p_out,
        bbox_head=dict(
            type='LorsAdaMixerDecoderStage' if lors else
            'AdaMixerDecoderStage',
            **STAGE))
    if lors:
        roi_head.update(
            core_sizes=core_size, num_terms=num_terms, out_proj_ranks=rank)
    cfg = dict(
        type='AdaMixer',
        data_preprocessor=dict(type='DetDataPreprocessor'),
        backbone=BACKBONE,
        neck=dict(
            type='AdaMixerChannelMapping',
            in_channels=[8, 16, 32, 64],
            out_channels=FEAT,
            num_groups=8),
        rpn_head=dict(
            type='AdaMixerQueryGenerator', num_query=NUM_QUERY,
            content_dim=D),
        roi_head=roi_head,
        train_cfg=None,
        test_cfg=dict(rpn=None, rcnn=dict(max_per_img=NUM_QUERY)))
    return MODELS.build(ConfigDict(cfg))


def official_common(backbone_state: dict, gen: torch.Generator) -> dict:
    """Backbone, neck, query generator and the non-mixing stage tensors."""

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.1

    state = {f'backbone.{k}': v.clone() for k, v in backbone_state.items()}
    for level, channels in enumerate([8, 16, 32, 64]):
        state[f'neck.lateral_convs.{level}.conv.weight'] = rand(
            FEAT, channels, 1, 1)
        state[f'neck.lateral_convs.{level}.conv.bias'] = rand(FEAT)
    state['neck.gn_out.weight'] = rand(FEAT) + 1
    state['neck.gn_out.bias'] = rand(FEAT)
    state['rpn_head.init_proposal_bboxes.weight'] = torch.tensor(
        [[0.5, 0.5, 1.0, 1.0]]).repeat(NUM_QUERY, 1)
    state['rpn_head.init_content_features.weight'] = rand(NUM_QUERY, D)
    for s in range(STAGES):
        p = f'roi_head.bbox_head.{s}.'
        shapes = {
            'fc_cls.weight': (NUM_CLASSES, D), 'fc_cls.bias': (NUM_CLASSES, ),
            'fc_reg.weight': (4, D), 'fc_reg.bias': (4, ),
            'attention.attn.in_proj_weight': (3 * D, D),
            'attention.attn.in_proj_bias': (3 * D, ),
            'attention.attn.out_proj.weight': (D, D),
            'attention.attn.out_proj.bias': (D, ),
            'attention_norm.weight': (D, ), 'attention_norm.bias': (D, ),
            'ffn.layers.0.0.weight': (FFN, D), 'ffn.layers.0.0.bias': (FFN, ),
            'ffn.layers.1.weight': (D, FFN), 'ffn.layers.1.bias': (D, ),
            'ffn_norm.weight': (D, ), 'ffn_norm.bias': (D, ),
            'cls_fcs.0.weight': (D, D), 'cls_fcs.0.bias': (D, ),
            'cls_fcs.1.weight': (D, ), 'cls_fcs.1.bias': (D, ),
            'reg_fcs.0.weight': (D, D), 'reg_fcs.0.bias': (D, ),
            'reg_fcs.1.weight': (D, ), 'reg_fcs.1.bias': (D, ),
            'iof_tau': (HEADS, ),
        }
        for name, shape in shapes.items():
            state[p + name] = rand(*shape)
    return state


def official_adamixer(backbone_state, groups=2, p_in=8, p_out=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = official_common(backbone_state, gen)
    c = FEAT // groups
    for s in range(STAGES):
        p = f'roi_head.bbox_head.{s}.sampling_n_mixing.'
        state[p + 'sampling_offset_generator.0.weight'] = torch.randn(
            groups * p_in * 3, D, generator=gen)
        state[p + 'sampling_offset_generator.0.bias'] = torch.randn(
            groups * p_in * 3, generator=gen)
        state[p + 'norm.weight'] = torch.randn(D, generator=gen)
        state[p + 'norm.bias'] = torch.randn(D, generator=gen)
        total = groups * (c * c + p_in * p_out)
        state[p + 'adaptive_mixing.parameter_generator.0.weight'] = \
            torch.randn(total, D, generator=gen) * 0.1
        state[p + 'adaptive_mixing.parameter_generator.0.bias'] = \
            torch.randn(total, generator=gen)
        state[p + 'adaptive_mixing.out_proj.weight'] = torch.randn(
            D, c * p_out * groups, generator=gen) * 0.1
        state[p + 'adaptive_mixing.out_proj.bias'] = torch.randn(
            D, generator=gen)
    return state


def official_lors(backbone_state, groups=2, p_in=8, p_out=6, k=3,
                  terms=(1, 2), rank=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = official_common(backbone_state, gen)
    c = FEAT // groups
    m = 'roi_head.adaptive_mixing.'
    state[m + 'common_parameter_generator.weight'] = torch.randn(
        groups * (c * c + p_in * p_out), D, generator=gen) * 0.1
    state[m + 'common_parameter_generator.bias'] = torch.randn(
        groups * (c * c + p_in * p_out), generator=gen)
    state[m + 'base_out_proj.weight'] = torch.randn(
        D, c * p_out * groups, generator=gen) * 0.1
    for s, num in enumerate(terms):
        p = f'roi_head.bbox_head.{s}.sampling.sampling_offset_generator.0.'
        state[p + 'weight'] = torch.randn(groups * p_in * 3, D, generator=gen)
        state[p + 'bias'] = torch.randn(groups * p_in * 3, generator=gen)
        gk = groups * num
        state[f'{m}ml_parameters.{s}'] = torch.randn(gk, c, k, generator=gen)
        state[f'{m}mr_parameters.{s}'] = torch.randn(gk, k, c, generator=gen)
        state[f'{m}sl_parameters.{s}'] = torch.randn(gk, p_out, k,
                                                     generator=gen)
        state[f'{m}sr_parameters.{s}'] = torch.randn(gk, k, p_in,
                                                     generator=gen)
        state[f'{m}private_parameter_generator.{s}.weight'] = torch.randn(
            2 * gk * k * k, D, generator=gen) * 0.1
        state[f'{m}private_parameter_generator.{s}.bias'] = torch.randn(
            2 * gk * k * k, generator=gen) * 0.1
        state[f'{m}out_weight_add_A.{s}'] = torch.randn(
            rank, c * p_out * groups, generator=gen) * 0.1
        state[f'{m}out_weight_add_B.{s}'] = torch.randn(D, rank,
                                                        generator=gen) * 0.1
        state[f'{m}out_weight_bias.{s}'] = torch.randn(D, generator=gen)
        state[f'{m}out_norm.{s}.weight'] = torch.randn(D, generator=gen)
        state[f'{m}out_norm.{s}.bias'] = torch.randn(D, generator=gen)
    return state


def written_out_mixing(x, query, channel, spatial, weight, bias):
    """AdaMixer's mixing with explicit per-query matrices."""
    out = torch.einsum('bngpc,bngcd->bngpd', x, channel)
    out = F.relu(F.layer_norm(out, out.shape[-2:]))
    out = torch.einsum('bngop,bngpc->bngoc', spatial, out)
    out = F.relu(F.layer_norm(out, out.shape[-2:]))
    return query + F.linear(out.flatten(2), weight, bias)


def mixing_inputs(groups, p_in, seed=5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, groups, p_in, FEAT // groups, generator=gen)
    query = torch.randn(2, 3, D, generator=gen)
    return x, query


def test_adamixer_checkpoint_converts_exactly():
    groups, p_in, p_out = 2, 8, 6
    model = build_detector(False, groups, p_in, p_out)
    official = official_adamixer(model.backbone.state_dict(), groups, p_in,
                                 p_out)
    converted, report = convert_adamixer_state_dict(official)
    assert report['release'] == 'adamixer'
    assert report['num_stages'] == STAGES
    assert report['dropped'] == ['rpn_head.init_proposal_bboxes.weight']
    model.load_state_dict(converted, strict=True)

    c = FEAT // groups
    x, query = mixing_inputs(groups, p_in)
    for s in range(STAGES):
        p = f'roi_head.bbox_head.{s}.sampling_n_mixing.adaptive_mixing.'
        params = F.linear(query, official[p + 'parameter_generator.0.weight'],
                          official[p + 'parameter_generator.0.bias'])
        params = params.view(2, 3, groups, -1)
        channel = params[..., :c * c].reshape(2, 3, groups, c, c)
        spatial = params[..., c * c:].reshape(2, 3, groups, p_out, p_in)
        expected = written_out_mixing(x, query, channel, spatial,
                                      official[p + 'out_proj.weight'],
                                      official[p + 'out_proj.bias'])
        got = model.roi_head.bbox_head[s].adaptive_mixing(x, query)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(
            model.roi_head.bbox_head[s].sampling_offset_generator.weight,
            official[f'roi_head.bbox_head.{s}.sampling_n_mixing.'
                     'sampling_offset_generator.0.weight'])
    # neck: 1x1 conv with bias, then the shared GroupNorm
    feats = [torch.randn(1, ch, 4, 4) for ch in (8, 16, 32, 64)]
    outs = model.neck(feats)
    for level, (feat, out) in enumerate(zip(feats, outs)):
        conv = F.conv2d(feat,
                        official[f'neck.lateral_convs.{level}.conv.weight'],
                        official[f'neck.lateral_convs.{level}.conv.bias'])
        expected = F.group_norm(conv, 8, official['neck.gn_out.weight'],
                                official['neck.gn_out.bias'])
        torch.testing.assert_close(out, expected)


def test_lors_adamixer_checkpoint_converts_exactly():
    groups, p_in, p_out, k, terms, rank = 2, 8, 6, 3, (1, 2), 2
    official = official_lors(
        build_detector(False, groups, p_in, p_out).backbone.state_dict(),
        groups, p_in, p_out, k, terms, rank)
    converted, report = convert_adamixer_state_dict(official)
    assert report['release'] == 'lors-adamixer'
    assert report['num_terms'] == [groups * t for t in terms]
    model = build_detector(
        True, groups, p_in, p_out, num_terms=report['num_terms'],
        core_size=k, rank=rank)
    model.load_state_dict(converted, strict=True)

    m = 'roi_head.adaptive_mixing.'
    c = FEAT // groups
    x, query = mixing_inputs(groups, p_in)
    common = F.linear(query, official[m + 'common_parameter_generator.weight'],
                      official[m + 'common_parameter_generator.bias'])
    common = common.view(2, 3, groups, -1)
    for s, num in enumerate(terms):
        # the authors' formula: per group g and term t,
        # M += ml[g K + t] @ Z_M(g, t) @ mr[g K + t] (likewise S)
        cores = F.linear(
            query, official[f'{m}private_parameter_generator.{s}.weight'],
            official[f'{m}private_parameter_generator.{s}.bias'])
        cores = cores.view(2, 3, 2, groups, num, k, k)
        ml = official[f'{m}ml_parameters.{s}'].view(groups, num, c, k)
        mr = official[f'{m}mr_parameters.{s}'].view(groups, num, k, c)
        sl = official[f'{m}sl_parameters.{s}'].view(groups, num, p_out, k)
        sr = official[f'{m}sr_parameters.{s}'].view(groups, num, k, p_in)
        channel = common[..., :c * c].reshape(2, 3, groups, c, c) + \
            torch.einsum('gtck,bngtkl,gtld->bngcd', ml, cores[:, :, 0], mr)
        spatial = common[..., c * c:].reshape(2, 3, groups, p_out, p_in) + \
            torch.einsum('gtok,bngtkl,gtlp->bngop', sl, cores[:, :, 1], sr)
        weight = official[m + 'base_out_proj.weight'] + \
            official[f'{m}out_weight_add_B.{s}'] @ \
            official[f'{m}out_weight_add_A.{s}']
        expected = written_out_mixing(x, query, channel, spatial, weight,
                                      official[f'{m}out_weight_bias.{s}'])
        stage = model.roi_head.bbox_head[s]
        torch.testing.assert_close(
            stage.adaptive_mixing(x, query), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(stage.mixing_norm.weight,
                                   official[f'{m}out_norm.{s}.weight'])
    # the shared tensors landed once, on the decoder
    torch.testing.assert_close(
        model.roi_head.shared_mixing_out_proj.weight,
        official[m + 'base_out_proj.weight'])


def test_rejects_other_checkpoints():
    with pytest.raises(ValueError, match='not an AdaMixer'):
        detect_release({'backbone.conv1.weight': torch.zeros(1)})
    model = build_detector(False, 2, 8, 6)
    official = official_lors(model.backbone.state_dict())
    del official['roi_head.adaptive_mixing.sr_parameters.1']
    with pytest.raises(KeyError, match='sr_parameters.1'):
        convert_adamixer_state_dict(official)
    with pytest.raises(ValueError, match='no state dict'):
        convert_adamixer_checkpoint({'state_dict': {'a': 1}})


def test_conversion_tool(tmp_path, monkeypatch, capsys):
    model = build_detector(False, 2, 8, 6)
    official = official_adamixer(model.backbone.state_dict())
    src = tmp_path / 'adamixer_official.pth'
    dst = tmp_path / 'adamixer_converted.pth'
    torch.save(
        dict(
            meta=dict(epoch=12, CLASSES=('a', 'b'), mmcv_version='1.3.3'),
            state_dict=official,
            optimizer=dict(state={}, param_groups=[])), src)
    monkeypatch.setattr(sys, 'argv', [
        'convert_adamixer_checkpoint.py', str(src), str(dst)])
    runpy.run_path(
        osp.join(ROOT, 'tools/convert_adamixer_checkpoint.py'),
        run_name='__main__')
    assert 'adamixer checkpoint, 2 stages' in capsys.readouterr().out
    converted = torch.load(dst, weights_only=True)
    assert set(converted) == {'state_dict', 'meta'}
    assert converted['meta']['epoch'] == 12
    model.load_state_dict(converted['state_dict'], strict=True)
