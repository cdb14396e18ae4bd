"""LORS-AdaMixer (AdaMixer's decoder + the stack surgery's adaptive and static
targets): sharing, equivalence with AdaMixer, parameter ownership, the
published init and bad input."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from lors_mmdet.lors import (LorsGeneratedLinear, apply_lors, count_parameters,
                             init_as_stock)
from lors_mmdet.models.adamixer import (AdaMixerDecoder, AdaptiveMixing,
                                        init_published_lors_mixing)

register_all_modules(init_default_scope=True)

D, C, G, P_IN, P_OUT, NUM_CLASSES = 32, 32, 2, 8, 12, 5
STAGE = dict(
    num_classes=NUM_CLASSES,
    num_heads=4,
    feedforward_channels=48,
    loss_cls=dict(
        type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
        loss_weight=2.0),
    loss_bbox=dict(type='L1Loss', loss_weight=5.0),
    loss_iou=dict(type='GIoULoss', loss_weight=2.0))
GENERATOR = 'adaptive_mixing.parameter_generator'
OUT_PROJ = 'adaptive_mixing.out_proj'


def decoder_cfg(**overrides) -> ConfigDict:
    cfg = dict(
        type='AdaMixerDecoder',
        num_stages=3,
        stage_loss_weights=[1, 1, 1],
        content_dim=D,
        feat_channels=C,
        n_groups=G,
        in_points=P_IN,
        out_points=P_OUT,
        bbox_head=dict(type='AdaMixerDecoderStage', **STAGE),
        test_cfg=dict(max_per_img=10))
    cfg.update(overrides)
    return ConfigDict(cfg)


def lors_cfg(**adaptive) -> dict:
    """model.lors.decoder of LORS-AdaMixer at the test's sizes; ``rank`` and
    ``factor_init`` set both the static and the adaptive ones."""
    rank = adaptive.pop('rank', [2, 3, 4])
    factor_init = adaptive.get('factor_init', 'kaiming')
    return dict(include=[OUT_PROJ], rank=rank, factor_init=factor_init,
                adaptive=dict(dict(core_size=4, adaptive_terms=[1, 2, 3],
                                   per_group_factors=True,
                                   factor_init='kaiming'), **adaptive))


def build_lors_decoder(decoder=None, **adaptive) -> AdaMixerDecoder:
    """A LORS-AdaMixer decoder as the AdaMixer detector makes and
    initialises it: stock decoder, surgery, stock init on the stock modules,
    the published init of the mixing."""
    torch.manual_seed(0)
    decoder = MODELS.build(decoder_cfg(**(decoder or {})))
    apply_lors(decoder, 'bbox_head', lors_cfg(**adaptive),
               key='model.lors.decoder')
    with init_as_stock(decoder):
        decoder.init_weights()
    init_published_lors_mixing(decoder.lors_bbox_head)
    return decoder


def shared_generator(decoder):
    return decoder.lors_bbox_head.shared_generator(0, GENERATOR)


def shared_out_proj(decoder):
    return decoder.lors_bbox_head.shared_linear(0, OUT_PROJ)


def randomise_(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.2)


def zero_private_residuals_(decoder) -> None:
    with torch.no_grad():
        for stage in decoder.bbox_head:
            mixing = stage.adaptive_mixing
            mixing.parameter_generator.lors_core_generator.weight.zero_()
            mixing.parameter_generator.lors_core_generator.bias.zero_()
            mixing.out_proj.lors_B.zero_()


def pyramid(batch: int = 2):
    torch.manual_seed(1)
    return [torch.randn(batch, C, 64 // s, 96 // s) for s in (4, 8, 16, 32)]


def queries(batch: int = 2, num: int = 7):
    torch.manual_seed(2)
    xy = torch.rand(batch, num, 2) * torch.tensor([96.0, 64.0])
    zr = torch.rand(batch, num, 2) * torch.tensor([2.0, 1.0]) + torch.tensor(
        [3.0, -0.5])
    return torch.cat([xy, zr], -1), torch.randn(batch, num, D)


def test_shared_mixing_is_registered_once():
    decoder = build_lors_decoder()
    shared_gen = shared_generator(decoder)
    shared_proj = shared_out_proj(decoder)
    for stage in decoder.bbox_head:
        assert isinstance(stage.adaptive_mixing, AdaptiveMixing)
        assert stage.adaptive_mixing.parameter_generator.shared is shared_gen
        assert stage.adaptive_mixing.out_proj.shared is shared_proj
    state = decoder.state_dict()
    shared_keys = [key for key in state if 'shared' in key]
    assert sorted(shared_keys) == sorted([
        f'lors_bbox_head.shared.0.{GENERATOR}.generator.bias',
        f'lors_bbox_head.shared.0.{GENERATOR}.generator.weight',
        f'lors_bbox_head.shared.0.{OUT_PROJ}.weight'
    ])
    # no tensor stored twice under another name
    pointers = [tensor.data_ptr() for tensor in state.values()]
    assert len(pointers) == len(set(pointers))
    names = [name for name, _ in decoder.named_parameters()]
    assert len(names) == len(list(decoder.parameters()))
    # the stages hold only their private tensors
    for stage in decoder.bbox_head:
        assert not any('shared' in key for key in stage.state_dict())
    counts = count_parameters(decoder)
    assert counts.shared == sum(
        p.numel() for p in (shared_gen.parameters())) + \
        shared_proj.weight.numel()
    assert counts.total == sum(p.numel() for p in decoder.parameters())


def test_state_dict_round_trip_and_deepcopy_keep_sharing():
    decoder = build_lors_decoder()
    randomise_(decoder)
    fresh = build_lors_decoder()
    fresh.load_state_dict(decoder.state_dict(), strict=True)
    xyzr, content = queries()
    feats = pyramid()
    for stage in range(3):
        out = decoder._stage_forward(stage, feats, xyzr, content)
        again = fresh._stage_forward(stage, feats, xyzr, content)
        for key in out:
            torch.testing.assert_close(out[key], again[key])
    clone = copy.deepcopy(decoder)
    for stage in clone.bbox_head:
        assert stage.adaptive_mixing.parameter_generator.shared is \
            shared_generator(clone)
        assert stage.adaptive_mixing.out_proj.shared is \
            shared_out_proj(clone)


def test_zero_private_parts_use_exactly_the_shared_weights():
    decoder = build_lors_decoder()
    randomise_(decoder)
    zero_private_residuals_(decoder)
    xyzr, content = queries()
    shared = shared_generator(decoder)(content)
    for stage in decoder.bbox_head:
        mats = stage.adaptive_mixing.parameter_generator.matrices(content)
        for j in range(2):
            torch.testing.assert_close(mats.materialise(j), shared[j])
        torch.testing.assert_close(stage.adaptive_mixing.out_proj.weight,
                                   shared_out_proj(decoder).weight)


def copy_lors_stage_into_adamixer_stage(lors_stage, shared_gen, shared_proj):
    """An AdaMixer stage with the LORS stage's private weights and the
    shared mixing weights."""
    stage = MODELS.build(
        dict(
            type='AdaMixerDecoderStage',
            content_dim=D,
            feat_channels=C,
            n_groups=G,
            in_points=P_IN,
            out_points=P_OUT,
            **STAGE))
    state = {}
    for key, value in lors_stage.state_dict().items():
        if not key.startswith('adaptive_mixing.'):
            state[key] = value
    state['adaptive_mixing.parameter_generator.weight'] = \
        shared_gen.generator.weight
    state['adaptive_mixing.parameter_generator.bias'] = \
        shared_gen.generator.bias
    state['adaptive_mixing.out_proj.weight'] = shared_proj.weight
    state['adaptive_mixing.out_proj.bias'] = \
        lors_stage.adaptive_mixing.out_proj.bias
    stage.load_state_dict(state, strict=True)
    return stage


def test_lors_stage_with_zero_residuals_equals_an_adamixer_stage():
    decoder = build_lors_decoder()
    randomise_(decoder)
    zero_private_residuals_(decoder)
    xyzr, content = queries()
    feats = pyramid()
    for lors_stage in decoder.bbox_head:
        plain = copy_lors_stage_into_adamixer_stage(
            lors_stage, shared_generator(decoder), shared_out_proj(decoder))
        expected = plain(feats, xyzr, content, decoder.featmap_strides)
        got = lors_stage(feats, xyzr, content, decoder.featmap_strides)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # and with residuals the stages differ from the shared model
    randomise_(decoder)
    plain = copy_lors_stage_into_adamixer_stage(
        decoder.bbox_head[0], shared_generator(decoder),
        shared_out_proj(decoder))
    got = decoder.bbox_head[0](feats, xyzr, content, decoder.featmap_strides)
    expected = plain(feats, xyzr, content, decoder.featmap_strides)
    assert not torch.allclose(got[2], expected[2], atol=1e-3)


def reference_mixing(x, query, channel, spatial, weight, bias):
    """AdaMixer's mixing written out with full matrices."""
    out = torch.einsum('bngpc,bngcd->bngpd', x, channel)
    out = F.relu(F.layer_norm(out, out.shape[-2:]))
    out = torch.einsum('bngop,bngpc->bngoc', spatial, out)
    out = F.relu(F.layer_norm(out, out.shape[-2:]))
    return query + F.linear(out.flatten(2), weight, bias)


def test_mixing_modules_match_the_written_out_mixing():
    torch.manual_seed(3)
    x = torch.randn(2, 5, G, P_IN, C // G)
    query = torch.randn(2, 5, D)
    plain = AdaptiveMixing(D, C, P_IN, P_OUT, G)
    randomise_(plain)
    channel, spatial = plain.generate(query)
    torch.testing.assert_close(
        plain(x, query),
        reference_mixing(x, query, channel, spatial, plain.out_proj.weight,
                         plain.out_proj.bias))

    decoder = build_lors_decoder()
    randomise_(decoder)  # non-zero private residuals
    mixing = decoder.bbox_head[2].adaptive_mixing
    assert isinstance(mixing.parameter_generator, LorsGeneratedLinear)
    mats = mixing.parameter_generator.matrices(query)
    torch.testing.assert_close(
        mixing(x, query),
        reference_mixing(x, query, mats.materialise(0), mats.materialise(1),
                         mixing.out_proj.weight, mixing.out_proj.bias),
        atol=1e-4,
        rtol=1e-4)


@pytest.mark.parametrize('per_group_factors', [True, False])
def test_per_stage_private_sizes(per_group_factors):
    decoder = build_lors_decoder(
        core_size=[2, 3, 4], adaptive_terms=[3, 1, 2], rank=[1, 5, 2],
        per_group_factors=per_group_factors)
    rows = G if per_group_factors else 1
    for stage, k, terms, rank in zip(decoder.bbox_head, [2, 3, 4], [3, 1, 2],
                                     [1, 5, 2]):
        generator = stage.adaptive_mixing.parameter_generator
        assert generator.core_size == k and generator.adaptive_terms == terms
        assert generator.per_group_factors == per_group_factors
        assert generator.lors_L[0].shape == (rows * terms, C // G, k)
        assert generator.lors_R[0].shape == (rows * terms, k, C // G)
        assert generator.lors_L[1].shape == (rows * terms, P_OUT, k)
        assert generator.lors_R[1].shape == (rows * terms, k, P_IN)
        assert stage.adaptive_mixing.out_proj.lors_A.shape[0] == rank


def test_published_init_bounds_at_released_sizes():
    """Each LORS tensor of the R-50 LORS-AdaMixer config after
    init_weights, against the published init (spec): kaiming_uniform_ with
    default arguments, U(+-sqrt(6 / fan_in)), fan_in = d1 * d2 of a 3-D and
    in_features of a 2-D tensor; B, private bias, core generator zero; shared
    generator weight zero, its bias and the shared projection nn.Linear's
    U(+-1 / sqrt(in))."""
    from mmengine.config import Config
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(root, 'configs/lors_adamixer/'
                                   'lors-adamixer_r50_8xb2-1x-100q_coco.py'))
    cfg.model.backbone.init_cfg = None  # no torchvision download
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)  # the AdaMixer detector + model.lors
    model.init_weights()
    decoder = model.roi_head
    c, k, p_out, p_in, r, d = 128, 16, 128, 64, 8, 256

    def check_uniform(tensor, bound, name):
        assert tensor.abs().max() <= bound, name
        # a uniform draw of this many values reaches close to the bound
        assert tensor.abs().max() > 0.99 * bound, name

    bound_2048, bound_1024 = (6 / (c * k))**0.5, (6 / (k * p_in))**0.5
    bound_a = (6 / (c * p_out * 2))**0.5
    # the bounds printed in docs/adamixer.md
    assert (round(bound_2048, 4), round(bound_1024, 4),
            round(bound_a, 4)) == (0.0541, 0.0765, 0.0135)
    for s, (stage, terms) in enumerate(
            zip(decoder.bbox_head, [1, 1, 2, 2, 3, 3])):
        generator = stage.adaptive_mixing.parameter_generator
        out_proj = stage.adaptive_mixing.out_proj
        assert generator.lors_L[0].shape == (2 * terms, c, k)
        check_uniform(generator.lors_L[0], bound_2048, f'L^M {s}')
        check_uniform(generator.lors_R[0], bound_2048, f'R^M {s}')
        check_uniform(generator.lors_L[1], bound_2048, f'L^S {s}')
        check_uniform(generator.lors_R[1], bound_1024, f'R^S {s}')
        assert out_proj.lors_A.shape == (r, c * p_out * 2)
        check_uniform(out_proj.lors_A, bound_a, f'A {s}')
        for zero in (out_proj.lors_B, out_proj.bias,
                     generator.lors_core_generator.weight,
                     generator.lors_core_generator.bias):
            assert torch.count_nonzero(zero) == 0
    shared = shared_generator(decoder).generator
    assert torch.count_nonzero(shared.weight) == 0
    check_uniform(shared.bias, 1 / d**0.5, 'shared generator bias')
    check_uniform(shared_out_proj(decoder).weight,
                  1 / (c * p_out * 2)**0.5, 'shared out-projection')


def test_linear_factor_init_is_the_library_default():
    """factor_init='linear' (the ablation of the published init) gives
    the nn.Linear bounds: 1/sqrt(k) for L (per term), 1/sqrt(in) for A."""
    decoder = build_lors_decoder(factor_init='linear', core_size=4)
    generator = decoder.bbox_head[2].adaptive_mixing.parameter_generator
    assert generator.factor_init == 'linear'
    assert generator.lors_L[0].abs().max() <= 1 / 4**0.5
    assert generator.lors_L[0].abs().max() > (6 / (C // G * 4))**0.5
    a = decoder.bbox_head[2].adaptive_mixing.out_proj.lors_A
    assert a.abs().max() <= 1 / a.shape[1]**0.5


@pytest.mark.parametrize(
    'adaptive, match',
    [
        (dict(adaptive_terms=[1, 2]), r'adaptive_terms must have one entry '
         r'per layer \(num_layers=3\), got 2'),
        (dict(core_size=[4, 4, 4, 4]), 'core_size must have one entry per'),
        (dict(rank=[2, 2]), 'rank must have one entry per layer'),
        (dict(core_size=9), 'core_size=9 exceeds min'),
        (dict(core_size=[4, 0, 4]), r'core_size\[1\] must be a positive int'),
        (dict(adaptive_terms=[1, 0, 1]),
         r'adaptive_terms\[1\] must be a positive int'),
        (dict(rank=[2, 2, 0]), r'rank\[2\] must be a positive int'),
        (dict(rank=D + 1), 'rank 33 x num_terms 1 of layer 0 exceeds'),
        (dict(adaptive_terms='2'), 'adaptive_terms must be a positive int'),
        (dict(factor_init='xavier'), 'factor_init must be one of'),
        (dict(per_group_factors='yes'), 'per_group_factors must be a bool'),
    ])
def test_bad_lors_config_names_the_key(adaptive, match):
    decoder = MODELS.build(decoder_cfg())
    with pytest.raises((ValueError, TypeError),
                       match='model.lors.decoder.*' + match):
        apply_lors(decoder, 'bbox_head', lors_cfg(**adaptive),
                   key='model.lors.decoder')


def test_stages_of_other_mixing_sizes_cannot_share_the_generator():
    stages = [dict(type='AdaMixerDecoderStage', **STAGE)] * 2 + [
        dict(type='AdaMixerDecoderStage', in_points=16, **STAGE)]
    decoder = MODELS.build(decoder_cfg(bbox_head=stages))
    with pytest.raises(ValueError, match='model.lors.decoder.adaptive: layer '
                       '2 declares the generators'):
        apply_lors(decoder, 'bbox_head', lors_cfg(), key='model.lors.decoder')


@pytest.mark.parametrize('name', ['LorsAdaMixerDecoder',
                                  'LorsAdaMixerDecoderStage'])
def test_former_lors_types_name_the_new_config(name):
    with pytest.raises(ValueError, match=f"'{name}' was removed: LORS-AdaMixer "
                       'is the stock AdaMixer .* plus model.lors.decoder'):
        MODELS.build(dict(type=name, core_sizes=4))


@pytest.mark.parametrize(
    'overrides, match',
    [
        (dict(n_groups=5), 'n_groups=5 must divide feat_channels=32'),
        (dict(bbox_head=[dict(type='AdaMixerDecoderStage', **STAGE)] * 2),
         'bbox_head has 2 entries'),
        (dict(stage_loss_weights=[1]), 'stage_loss_weights has 1'),
        (dict(train_cfg=[dict(assigner=dict(type='HungarianAssigner',
                                             match_costs=[]))]),
         r'train_cfg \(rcnn\) has 1 entries'),
        (dict(bbox_head=dict(type='AdaMixerDecoderStage', n_groups=3,
                             **STAGE)), 'n_groups=3 must divide'),
    ])
def test_bad_adamixer_config_names_the_key(overrides, match):
    cfg = dict(
        type='AdaMixerDecoder',
        num_stages=3,
        stage_loss_weights=[1, 1, 1],
        content_dim=D,
        feat_channels=C,
        n_groups=G,
        in_points=P_IN,
        out_points=P_OUT,
        bbox_head=dict(type='AdaMixerDecoderStage', **STAGE))
    cfg.update(overrides)
    with pytest.raises(ValueError, match=match):
        MODELS.build(ConfigDict(cfg))
