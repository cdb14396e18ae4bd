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
from mmengine.config import Config, ConfigDict

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from lors_mmdet.compat import safe_load_checkpoint
from lors_mmdet.models.adamixer.checkpoint_converter import (
    convert_adamixer_checkpoint, convert_adamixer_state_dict, detect_release,
    settings_mismatches)

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
                   adaptive_terms=None, core_size=None, rank=None):
    roi_head = dict(
        type='AdaMixerDecoder',
        num_stages=STAGES,
        stage_loss_weights=[1] * STAGES,
        content_dim=D,
        feat_channels=FEAT,
        n_groups=groups,
        in_points=p_in,
        out_points=p_out,
        bbox_head=dict(type='AdaMixerDecoderStage', **STAGE))
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
    if lors:
        cfg['lors'] = dict(decoder=lors_decoder(adaptive_terms, core_size,
                                                rank))
    return MODELS.build(ConfigDict(cfg))


def lors_decoder(adaptive_terms, core_size, rank) -> dict:
    """``model.lors.decoder`` of LORS-AdaMixer (as
    configs/_base_/models/lors-adamixer_decoder.py)."""
    return dict(include=['adaptive_mixing.out_proj'], rank=rank,
                factor_init='kaiming',
                adaptive=dict(core_size=core_size,
                              adaptive_terms=adaptive_terms,
                              per_group_factors=True, factor_init='kaiming'))


def official_common(backbone_state: dict, gen: torch.Generator, d=D,
                    ffn=FFN, heads=HEADS, classes=NUM_CLASSES,
                    num_query=NUM_QUERY, feat=FEAT, stages=STAGES,
                    in_channels=(8, 16, 32, 64)) -> dict:
    """Backbone, neck, query generator and the non-mixing stage tensors."""

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.1

    state = {f'backbone.{k}': v.clone() for k, v in backbone_state.items()}
    for level, channels in enumerate(in_channels):
        state[f'neck.lateral_convs.{level}.conv.weight'] = rand(
            feat, channels, 1, 1)
        state[f'neck.lateral_convs.{level}.conv.bias'] = rand(feat)
    state['neck.gn_out.weight'] = rand(feat) + 1
    state['neck.gn_out.bias'] = rand(feat)
    state['rpn_head.init_proposal_bboxes.weight'] = torch.tensor(
        [[0.5, 0.5, 1.0, 1.0]]).repeat(num_query, 1)
    state['rpn_head.init_content_features.weight'] = rand(num_query, d)
    for s in range(stages):
        p = f'roi_head.bbox_head.{s}.'
        shapes = {
            'fc_cls.weight': (classes, d), 'fc_cls.bias': (classes, ),
            'fc_reg.weight': (4, d), 'fc_reg.bias': (4, ),
            'attention.attn.in_proj_weight': (3 * d, d),
            'attention.attn.in_proj_bias': (3 * d, ),
            'attention.attn.out_proj.weight': (d, d),
            'attention.attn.out_proj.bias': (d, ),
            'attention_norm.weight': (d, ), 'attention_norm.bias': (d, ),
            'ffn.layers.0.0.weight': (ffn, d), 'ffn.layers.0.0.bias': (ffn, ),
            'ffn.layers.1.weight': (d, ffn), 'ffn.layers.1.bias': (d, ),
            'ffn_norm.weight': (d, ), 'ffn_norm.bias': (d, ),
            'cls_fcs.0.weight': (d, d), 'cls_fcs.0.bias': (d, ),
            'cls_fcs.1.weight': (d, ), 'cls_fcs.1.bias': (d, ),
            'reg_fcs.0.weight': (d, d), 'reg_fcs.0.bias': (d, ),
            'reg_fcs.1.weight': (d, ), 'reg_fcs.1.bias': (d, ),
            'iof_tau': (heads, ),
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
                  terms=(1, 2), rank=2, seed=0, common=None):
    """The authors' LORS-AdaMixer keys and shapes; ``common`` overrides the
    sizes of :func:`official_common` (keys d, ffn, heads, classes, ...)."""
    gen = torch.Generator().manual_seed(seed)
    common = dict(common or {})
    common.setdefault('stages', len(terms))
    state = official_common(backbone_state, gen, **common)
    d, feat = common.get('d', D), common.get('feat', FEAT)
    c = feat // groups
    m = 'roi_head.adaptive_mixing.'
    state[m + 'common_parameter_generator.weight'] = torch.randn(
        groups * (c * c + p_in * p_out), d, generator=gen) * 0.1
    state[m + 'common_parameter_generator.bias'] = torch.randn(
        groups * (c * c + p_in * p_out), generator=gen)
    state[m + 'base_out_proj.weight'] = torch.randn(
        d, c * p_out * groups, generator=gen) * 0.1
    for s, num in enumerate(terms):
        p = f'roi_head.bbox_head.{s}.sampling.sampling_offset_generator.0.'
        state[p + 'weight'] = torch.randn(groups * p_in * 3, d, generator=gen)
        state[p + 'bias'] = torch.randn(groups * p_in * 3, generator=gen)
        gk = groups * num
        state[f'{m}ml_parameters.{s}'] = torch.randn(gk, c, k, generator=gen)
        state[f'{m}mr_parameters.{s}'] = torch.randn(gk, k, c, generator=gen)
        state[f'{m}sl_parameters.{s}'] = torch.randn(gk, p_out, k,
                                                     generator=gen)
        state[f'{m}sr_parameters.{s}'] = torch.randn(gk, k, p_in,
                                                     generator=gen)
        state[f'{m}private_parameter_generator.{s}.weight'] = torch.randn(
            2 * gk * k * k, d, generator=gen) * 0.1
        state[f'{m}private_parameter_generator.{s}.bias'] = torch.randn(
            2 * gk * k * k, generator=gen) * 0.1
        state[f'{m}out_weight_add_A.{s}'] = torch.randn(
            rank, c * p_out * groups, generator=gen) * 0.1
        state[f'{m}out_weight_add_B.{s}'] = torch.randn(d, rank,
                                                        generator=gen) * 0.1
        state[f'{m}out_weight_bias.{s}'] = torch.randn(d, generator=gen)
        state[f'{m}out_norm.{s}.weight'] = torch.randn(d, generator=gen)
        state[f'{m}out_norm.{s}.bias'] = torch.randn(d, generator=gen)
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
    assert report['decoder'] == dict(
        n_groups=groups, in_points=p_in, out_points=p_out, feat_channels=FEAT,
        num_stages=STAGES)
    assert report['lors'] is None
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
    assert report['decoder'] == dict(
        n_groups=groups, in_points=p_in, out_points=p_out, feat_channels=FEAT,
        num_stages=len(terms))
    assert report['lors'] == dict(
        include=['adaptive_mixing.out_proj'], rank=[rank] * len(terms),
        adaptive=dict(core_size=[k] * len(terms), adaptive_terms=list(terms),
                      per_group_factors=True))
    model = build_detector(
        True, groups, p_in, p_out, adaptive_terms=list(terms), core_size=k,
        rank=rank)
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
    # the shared tensors landed once, on the decoder's LORS stack
    torch.testing.assert_close(
        model.roi_head.lors_bbox_head.shared_linear(
            0, 'adaptive_mixing.out_proj').weight,
        official[m + 'base_out_proj.weight'])


def published_mixing_float64(official, s, x, query, groups, terms, k):
    """Stage ``s`` of the published LORS-AdaMixer mixing, written from the
    paper's equations with the authors' tensors, in float64, group by group
    and term by term:
    M_g(q) = M_shared,g(q) + sum_t L^M_gt Z^M_gt(q) R^M_gt (likewise S);
    out = ReLU(LN(x M)); out = ReLU(LN(S out)); LN_s(q + (W + B A) out + b).
    """
    m = 'roi_head.adaptive_mixing.'

    def t(key):
        return official[m + key].double()

    c, p_in = x.shape[-1], x.shape[-2]
    p_out = official[f'{m}sl_parameters.{s}'].shape[1]
    common = F.linear(query, t('common_parameter_generator.weight'),
                      t('common_parameter_generator.bias'))
    common = common.unflatten(-1, (groups, -1))
    cores = F.linear(query, t(f'private_parameter_generator.{s}.weight'),
                     t(f'private_parameter_generator.{s}.bias'))
    # [M, S][group][term][k][k]
    cores = cores.unflatten(-1, (2, groups, terms, k, k))
    outs = []
    for g in range(groups):
        channel = common[..., g, :c * c].unflatten(-1, (c, c))
        spatial = common[..., g, c * c:].unflatten(-1, (p_out, p_in))
        for term in range(terms):
            row = g * terms + term
            channel = channel + t(f'ml_parameters.{s}')[row] @ \
                cores[..., 0, g, term, :, :] @ t(f'mr_parameters.{s}')[row]
            spatial = spatial + t(f'sl_parameters.{s}')[row] @ \
                cores[..., 1, g, term, :, :] @ t(f'sr_parameters.{s}')[row]
        out = x[..., g, :, :] @ channel
        out = F.relu(F.layer_norm(out, out.shape[-2:]))
        out = spatial @ out
        outs.append(F.relu(F.layer_norm(out, out.shape[-2:])))
    out = torch.stack(outs, dim=-3).flatten(-3)
    weight = t('base_out_proj.weight') + \
        t(f'out_weight_add_B.{s}') @ t(f'out_weight_add_A.{s}')
    out = F.linear(out, weight, t(f'out_weight_bias.{s}'))
    return F.layer_norm(query + out, query.shape[-1:],
                        t(f'out_norm.{s}.weight'), t(f'out_norm.{s}.bias'))


PUBLISHED_R50 = 'configs/lors_adamixer/lors-adamixer_r50_8xb2-1x-100q_coco.py'


def published_official_lors(backbone_state):
    """A synthetic authors' checkpoint of the published R-50 LORS-AdaMixer
    (released sizes: G=2, P_in=64, P_out=128, k=16, K=[1,1,2,2,3,3], r=8)."""
    return official_lors(
        backbone_state, groups=2, p_in=64, p_out=128, k=16,
        terms=(1, 1, 2, 2, 3, 3), rank=8, seed=3,
        common=dict(d=256, ffn=2048, heads=8, classes=80, num_query=100,
                    feat=256, in_channels=(256, 512, 1024, 2048)))


def test_authors_lors_checkpoint_loads_into_the_published_config(tmp_path):
    """1:1: the converted checkpoint loads strictly into the published config
    (no widened adaptive_terms) and every stage's mixing equals the published
    formula in float64."""
    cfg = Config.fromfile(osp.join(ROOT, PUBLISHED_R50))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    official = published_official_lors(model.backbone.state_dict())
    converted, report = convert_adamixer_checkpoint(
        dict(state_dict=official, meta=dict(epoch=12)))
    path = tmp_path / 'converted.pth'
    torch.save(converted, path)
    loaded = safe_load_checkpoint(str(path), map_location='cpu')
    settings = loaded['meta']['adamixer_conversion']
    assert settings['lors']['adaptive']['adaptive_terms'] == [1, 1, 2, 2, 3, 3]
    assert settings_mismatches(settings, cfg.model) == []
    model.load_state_dict(loaded['state_dict'], strict=True)

    decoder = model.roi_head.double()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 5, 2, 64, 128, generator=gen, dtype=torch.float64)
    query = torch.randn(1, 5, 256, generator=gen, dtype=torch.float64)
    worst = 0.0
    with torch.no_grad():
        for s, terms in enumerate([1, 1, 2, 2, 3, 3]):
            stage = decoder.bbox_head[s]
            got = stage.mixing_norm(stage.adaptive_mixing(x, query))
            expected = published_mixing_float64(official, s, x, query, 2,
                                                terms, 16)
            assert expected.abs().max() > 0.5
            worst = max(worst, (got - expected).abs().max().item())
    print(f'max abs diff over the 6 stages (float64): {worst:.3e}')
    assert worst <= 1e-10


def test_settings_mismatches_name_the_key():
    """Each differing setting named by its config key, per stage expanded."""
    settings = dict(
        decoder=dict(n_groups=2, in_points=64, out_points=128, num_stages=6),
        lors=dict(include=['adaptive_mixing.out_proj'], rank=[8] * 6,
                  adaptive=dict(core_size=[16] * 6,
                                adaptive_terms=[1, 1, 2, 2, 3, 3],
                                per_group_factors=True)))
    model = dict(roi_head=dict(num_stages=6, n_groups=4, in_points=64),
                 lors=dict(decoder=lors_decoder([2, 2, 4, 4, 6, 6], 16, 8)))
    assert settings_mismatches(settings, model) == [
        'model.roi_head.n_groups: checkpoint 2, config 4',
        'model.lors.decoder.adaptive.adaptive_terms: checkpoint '
        '[1, 1, 2, 2, 3, 3], config [2, 2, 4, 4, 6, 6]'
    ]
    model['lors'] = None
    assert settings_mismatches(settings, model) == [
        'model.roi_head.n_groups: checkpoint 2, config 4',
        'model.lors.decoder: checkpoint a LORS-AdaMixer, config without it'
    ]


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
    out = capsys.readouterr().out
    assert 'adamixer checkpoint, 2 stages' in out
    assert 'n_groups=2, in_points=8, out_points=6' in out
    converted = torch.load(dst, weights_only=True)
    assert set(converted) == {'state_dict', 'meta'}
    assert converted['meta']['epoch'] == 12
    assert converted['meta']['adamixer_conversion']['decoder']['n_groups'] \
        == 2
    model.load_state_dict(converted['state_dict'], strict=True)
    # a config of other sizes is refused, naming the settings
    monkeypatch.setattr(sys, 'argv', [
        'convert_adamixer_checkpoint.py', str(src),
        str(tmp_path / 'other.pth'), '--config',
        osp.join(ROOT, 'configs/adamixer/'
                 'adamixer_r18-tiny_1xb16-toy_synthetic.py')])
    with pytest.raises(SystemExit, match='n_groups: checkpoint 2, config 4'):
        runpy.run_path(
            osp.join(ROOT, 'tools/convert_adamixer_checkpoint.py'),
            run_name='__main__')
    assert not (tmp_path / 'other.pth').exists()


def test_release_import_refuses_a_file_of_another_model_and_writes_nothing(tmp_path):
    from lors_mmdet.apis import import_adamixer_release
    src, dst = tmp_path / 'other.pth', tmp_path / 'out.pth'
    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(1)}), src)
    with pytest.raises(ValueError, match='not an AdaMixer'):
        import_adamixer_release(str(src), str(dst))
    assert not dst.exists()
