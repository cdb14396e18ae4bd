"""``model.lors`` on AdaMixer and LORS-AdaMixer: the decoder stages' static
layers as a LORS stack (the DETR family's key, validator and surgery); on
LORS-AdaMixer the same stack also holds the adaptive mixing.

Exactness against the stock model in float64, ownership (each shared tensor
once), parameter counts from the formula, errors that name the key, the
merge back to stock keys."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from lors_mmdet.lors import (LorsLinear, LorsStack, init_as_stock,
                             merge_lors)
from lors_mmdet.apis.conversion import lors_and_stock_model_cfgs
from lors_mmdet.models.lors_stacks import LorsStacksMixin, parse_lors_cfg

register_all_modules(init_default_scope=True)
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = osp.join(ROOT, 'configs/adamixer/'
               'adamixer_r18-tiny_1xb16-toy_synthetic.py')
TOY_LORS = osp.join(ROOT, 'configs/lors_adamixer/'
                    'lors-adamixer_r18-tiny_1xb16-toy_synthetic.py')
CONFIGS = {'adamixer': TOY, 'lors-adamixer': TOY_LORS}
# the toy stages: 64-d queries, FFN 64 -> 256 -> 64, 4 heads, G=4, P_in=16
STAGES, DIM, FFN = 3, 64, 256
DEFAULT_PATHS = [
    'attention.attn.q_proj', 'attention.attn.k_proj', 'attention.attn.v_proj',
    'attention.attn.out_proj', 'sampling_offset_generator', 'ffn.layers.0.0',
    'ffn.layers.1'
]
# what LORS-AdaMixer's own model.lors.decoder makes LORS
MIXING_PATHS = ['adaptive_mixing.out_proj']
GENERATOR = 'adaptive_mixing.parameter_generator'


def model_cfg(name: str, lors=None):
    """The toy config; ``lors`` replaces AdaMixer's ``model.lors``, and on
    LORS-AdaMixer is added to its ``model.lors.decoder``: the static layers
    join the mixing's stack (``include`` is added to the mixing's, ``rank``
    is theirs, the mixing keeps its own)."""
    cfg = Config.fromfile(CONFIGS[name])
    cfg.model.backbone.init_cfg = None
    if lors is not None and name == 'lors-adamixer' and 'decoder' in lors:
        decoder = cfg.model.lors.decoder.to_dict()
        added = dict(lors['decoder'])
        include = list(added.pop(
            'include', ['attention', 'sampling_offset_generator', 'ffn']))
        if 'rank' in added:
            rank = added.pop('rank')
            decoder['ranks'] = {p: rank for p in include}
        decoder.update(added)
        decoder['include'] = decoder['include'] + include
        lors = dict(lors, decoder=decoder)
    if lors is not None:
        cfg.model.lors = lors
    return cfg


def build(name: str, lors=None, seed: int = 0, init: bool = True):
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg(name, lors).model)
    if init:
        model.init_weights()
    return model


def randomise_(model, seed: int = 1) -> None:
    """Different weights in every stage (as after training; at init the
    stages of a 'fresh' stack are copies of stage 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen,
                                   dtype=param.dtype) * 0.05)


def batch(model, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sizes = ((64, 96), (48, 64))
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8,
                            generator=gen) for h, w in sizes]
    samples = [DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                           scale_factor=(1.0, 1.0)))
               for h, w in sizes]
    return model.data_preprocessor(dict(inputs=inputs, data_samples=samples),
                                   False)


def stage_outputs(model, data) -> list:
    with torch.no_grad():
        feats = model.extract_feat(data['inputs'])
        queries = model.rpn_head.predict(feats, data['data_samples'])
        return model.roi_head.forward(feats, queries, data['data_samples'])


def max_difference(outputs_a, outputs_b) -> float:
    worst = 0.0
    for a, b in zip(outputs_a, outputs_b):
        for key in ('cls_score', 'bboxes', 'content'):
            worst = max(worst, (a[key] - b[key]).abs().max().item())
    return worst


def decoder_stack(model) -> LorsStack:
    stacks = model.lors_stacks()
    assert [path for path, _ in stacks] == ['roi_head.lors_bbox_head']
    return stacks[0][1]


@pytest.mark.parametrize('name', ['adamixer', 'lors-adamixer'])
def test_default_stack_is_the_stages_static_layers(name):
    model = build(name, lors=dict(decoder=dict(rank=4)))
    stack = decoder_stack(model)
    assert stack.layers_path == 'bbox_head'
    assert list(stack.layers) == list(model.roi_head.bbox_head)
    lors_adamixer = name == 'lors-adamixer'
    assert sorted(stack.plans) == sorted(DEFAULT_PATHS + (
        MIXING_PATHS if lors_adamixer else []))
    assert list(stack.adaptive_plans) == ([GENERATOR] if lors_adamixer else [])
    for stage in model.roi_head.bbox_head:
        for path in DEFAULT_PATHS:
            assert isinstance(stage.get_submodule(path), LorsLinear)
        # the mixing module stays AdaMixer's; only its generator and output
        # projection are LORS in LORS-AdaMixer
        assert type(stage.adaptive_mixing).__name__ == 'AdaptiveMixing'
        generator = type(stage.get_submodule(GENERATOR)).__name__
        assert generator == ('LorsGeneratedLinear' if lors_adamixer else
                             'Linear')
    # the same validator as the DETR family, with AdaMixer's defaults
    assert stack.config == parse_lors_cfg(
        model_cfg(name, dict(decoder=dict(rank=4, include=[
            'attention', 'sampling_offset_generator', 'ffn'
        ]))).model.lors, parts=('decoder', ))['decoder']
    assert isinstance(model, LorsStacksMixin)


def test_fresh_init_survives_init_weights():
    """init_weights runs AdaMixer's own init on stock stages, then each
    shared weight = stage 0's freshly initialised weight, B = 0, biases
    private; the parameter objects stay (an optimizer built before keeps
    them)."""
    stock = build('adamixer')
    torch.manual_seed(0)
    model = MODELS.build(model_cfg('adamixer', dict(decoder=dict(
        rank=4))).model)
    params_before = {id(p) for p in model.parameters()}
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(0.5)
    model.init_weights()
    assert {id(p) for p in model.parameters()} == params_before
    stack = decoder_stack(model)
    offsets = stack.shared_linear(0, 'sampling_offset_generator')
    assert torch.equal(offsets.weight, torch.zeros_like(offsets.weight))
    ffn = stack.shared_linear(0, 'ffn.layers.0.0').weight
    bound = (6 / (DIM + FFN))**0.5  # xavier_uniform of the stock stage
    assert 0.5 * bound < ffn.abs().max() <= bound
    for stage, stock_stage in zip(model.roi_head.bbox_head,
                                  stock.roi_head.bbox_head):
        for path in DEFAULT_PATHS:
            lors = stage.get_submodule(path)
            assert torch.equal(lors.lors_B, torch.zeros_like(lors.lors_B))
            assert lors.lors_A.abs().max() > 0
        # AdaMixer's sampling grid, private per stage
        torch.testing.assert_close(
            stage.sampling_offset_generator.bias,
            stock_stage.sampling_offset_generator.bias, rtol=0, atol=0)


@pytest.mark.parametrize('name, include', [
    ('adamixer', None),
    ('adamixer', ['*']),
])
def test_full_rank_dense_stack_gives_the_stock_predictions_float64(
        name, include):
    """init='dense' at rank 'full' from a stock model with random,
    different stages: shared = mean, private = exact SVD of the rest."""
    stock = build(name)
    randomise_(stock)
    decoder = dict(rank='full', init='dense')
    if include is not None:
        decoder['include'] = include
    model = build(name, lors=dict(decoder=decoder), seed=3, init=False)
    # float64 before the SVD: exact to float64 rounding
    stock.double().eval()
    model.double().eval()
    # the detector's own route from stock weights: merged inside, re-derived
    # by the config on exit
    with init_as_stock(model):
        model.load_state_dict(stock.state_dict(), strict=True)
    stack = decoder_stack(model)
    if include == ['*']:
        assert 'adaptive_mixing.parameter_generator' in stack.plans
        assert 'fc_cls' in stack.plans
    for path in stack.plans:
        residuals = [lors.lors_B.abs().max() for lors in
                     stack.lors_linears(path)]
        assert max(residuals) > 0  # the stages really differ
    data = batch(stock)
    worst = max_difference(stage_outputs(stock, data),
                           stage_outputs(model, data))
    print(f'{name} include={include}: max abs diff {worst:.2e}')
    assert worst < 1e-9
    dets_stock = stock.predict(data['inputs'], data['data_samples'])
    dets_lors = model.predict(data['inputs'], data['data_samples'])
    for a, b in zip(dets_stock, dets_lors):
        a, b = a.pred_instances, b.pred_instances
        order_a, order_b = a.scores.argsort(), b.scores.argsort()
        assert torch.equal(a.labels[order_a], b.labels[order_b])
        torch.testing.assert_close(a.scores[order_a], b.scores[order_b])
        torch.testing.assert_close(a.bboxes[order_a], b.bboxes[order_b])


@pytest.mark.parametrize('name', ['adamixer', 'lors-adamixer'])
def test_each_shared_tensor_is_registered_once(name):
    model = build(name, lors=dict(decoder=dict(rank=4)))
    state = model.state_dict(keep_vars=True)
    assert len({id(t) for t in state.values()}) == len(state)
    params = dict(model.named_parameters())
    assert len(params) == len(list(model.parameters()))
    assert sum(p.numel() for p in model.parameters()) == sum(
        t.numel() for k, t in state.items() if k in params)
    lors_adamixer = name == 'lors-adamixer'
    static = DEFAULT_PATHS + (MIXING_PATHS if lors_adamixer else [])
    shared_keys = sorted(k for k in state if k.startswith(
        'roi_head.lors_bbox_head.'))
    generator = [f'roi_head.lors_bbox_head.shared.0.{GENERATOR}.generator.'
                 f'{t}' for t in ('weight', 'bias')] if lors_adamixer else []
    assert shared_keys == sorted(
        [f'roi_head.lors_bbox_head.shared.0.{p}.weight' for p in static] +
        generator)
    for s in range(STAGES):
        for path in static:
            prefix = f'roi_head.bbox_head.{s}.{path}.'
            assert sorted(k[len(prefix):] for k in state
                          if k.startswith(prefix)) == [
                              'bias', 'lors_A', 'lors_B']
        if lors_adamixer:
            prefix = f'roi_head.bbox_head.{s}.{GENERATOR}.'
            assert sorted(k[len(prefix):] for k in state
                          if k.startswith(prefix)) == [
                              'lors_L.0', 'lors_L.1', 'lors_R.0', 'lors_R.1',
                              'lors_core_generator.bias',
                              'lors_core_generator.weight']
    for stage in model.roi_head.bbox_head:
        assert not any(k.startswith('lors_bbox_head') or '.shared.' in k
                       for k in stage.state_dict())


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', ['adamixer', 'lors-adamixer'])
@pytest.mark.parametrize('rank', [1, 8])
def test_parameter_count_of_a_shared_ffn_follows_the_formula(name, rank):
    """FFN only: its two matrices (64 x 256, 256 x 64) are stored once
    instead of once per stage, and each stage adds r * (in + out) per
    matrix; biases stay private."""
    stock = count(build(name, init=False))
    lors = count(build(name, lors=dict(decoder=dict(rank=rank,
                                                    include=['ffn'])),
                       init=False))
    matrices = [(DIM, FFN), (FFN, DIM)]  # (in, out)
    saved = sum((STAGES - 1) * i * o for i, o in matrices)
    added = sum(STAGES * rank * (i + o) for i, o in matrices)
    assert stock - lors == saved - added


def test_groups_share_within_each_group():
    model = build('adamixer', lors=dict(decoder=dict(rank=2, layer_groups=[1, 2])))
    stack = decoder_stack(model)
    assert stack.layer_groups == [[0], [1, 2]]
    assert len(stack.shared) == 2
    stages = model.roi_head.bbox_head
    assert stages[1].ffn.layers[1].shared is stages[2].ffn.layers[1].shared
    assert stages[0].ffn.layers[1].shared is not stages[1].ffn.layers[1].shared


def per_stage_ffn(widths):
    cfg = model_cfg('adamixer', dict(decoder=dict(rank=2)))
    head = cfg.model.roi_head.bbox_head
    cfg.model.roi_head.bbox_head = [dict(head, feedforward_channels=w)
                                    for w in widths]
    return cfg.model


@pytest.mark.parametrize('name, lors, error, match', [
    ('adamixer', dict(encoder=dict(rank=4)), ValueError,
     r'lors\.encoder: AdaMixer has no encoder .*use lors\.decoder'),
    ('lors-adamixer', dict(encoder=dict(rank=4)), ValueError,
     r'lors\.encoder: AdaMixer has no encoder'),
    ('adamixer', dict(decoder=dict(include=['ffn', 'no_such_layer'])),
     ValueError, r"lors\.decoder\.include: pattern 'no_such_layer' matches no "
     r'projection; projections: \[.*ffn\.layers\.0\.0'),
    ('adamixer', dict(decoder=dict(exclude=['ffn.layers.2'])), ValueError,
     r"lors\.decoder\.exclude: pattern 'ffn\.layers\.2' matches no "
     'projection'),
    # the generator is the adaptive target, never a static one
    ('lors-adamixer', dict(decoder=dict(exclude=[GENERATOR])), ValueError,
     r"lors\.decoder\.exclude: pattern 'adaptive_mixing\.parameter_generator'"
     r' matches no projection'),
    ('lors-adamixer', dict(decoder=dict(adaptive=dict(core_size=8,
                                                      adaptive_terms=[1, 2]))),
     ValueError, r'lors\.decoder\.adaptive\.adaptive_terms'),
    ('adamixer', dict(decoder=dict(num_terms=2, rank=40)), ValueError,
     r'lors\.decoder\.rank: rank 40 x num_terms 2 of layer 0 exceeds'),
    ('adamixer', dict(decoder=dict(adaptive_terms=2)), ValueError,
     r"unknown key\(s\) \['adaptive_terms'\] in lors\.decoder"),
    ('adamixer', dict(decoder=dict(layer_groups=2)), ValueError,
     r'lors\.decoder\.layer_groups=2 must divide the number of layers \(3\)'),
    ('adamixer', dict(decoder=[]), TypeError,
     r'lors\.decoder must be a dict'),
])
def test_errors_name_the_key(name, lors, error, match):
    with pytest.raises(error, match=match):
        MODELS.build(model_cfg(name, lors).model)


def test_a_stage_that_differs_cannot_be_shared():
    # the FFN differs between the stages: only the other layers can be shared
    with pytest.raises(ValueError,
                       match=r"lors\.decoder: layer 1 differs from layer 0 at "
                       r"'ffn\.layers\.0\.0'.*lors\.decoder\.include / "
                       r'lors\.decoder\.exclude select this one'):
        MODELS.build(per_stage_ffn([256, 128, 256]))
    cfg = per_stage_ffn([256, 128, 256])
    cfg.lors.decoder.exclude = ['ffn']
    stack = decoder_stack(MODELS.build(cfg))
    assert not any(path.startswith('ffn') for path in stack.plans)


@pytest.mark.parametrize('name', ['adamixer', 'lors-adamixer'])
def test_merge_gives_the_stock_keys_and_predictions(name):
    """Merged, AdaMixer and LORS-AdaMixer (its adaptive mixing folded too)
    both become the plain AdaMixer."""
    model = build(name, lors=dict(decoder=dict(
        rank=4, include=['*'], exclude=['adaptive_mixing.out_proj'])))
    randomise_(model)
    model.double().eval()
    stack = decoder_stack(model)
    assert 'fc_reg' in stack.plans and 'reg_fcs.0' in stack.plans
    stock = build('adamixer').double().eval()
    merged = copy.deepcopy(model)
    assert merge_lors(merged) == 1
    assert merged.lors_stacks() == []
    assert list(merged.state_dict()) == list(stock.state_dict())
    stock.load_state_dict(merged.state_dict(), strict=True)
    data = batch(model)
    worst = max_difference(stage_outputs(model, data),
                           stage_outputs(stock, data))
    print(f'{name}: merged vs LORS stack, max abs diff {worst:.2e}')
    assert worst < 1e-9


def test_lors_adamixer_with_static_stack_merges_into_plain_adamixer():
    """One merge folds the static layers and LORS-AdaMixer's adaptive
    mixing; the stock config derived from the LORS one builds the plain
    AdaMixer that loads the merged weights strictly."""
    lors = dict(decoder=dict(rank=4))
    cfg = model_cfg('lors-adamixer', lors)
    model = build('lors-adamixer', lors)
    randomise_(model)
    model.double().eval()
    _, plain_cfg, _ = lors_and_stock_model_cfgs(cfg)
    assert 'lors' not in plain_cfg
    plain = MODELS.build(plain_cfg).double().eval()
    assert plain.lors_stacks() == []
    merged = copy.deepcopy(model)
    merge_lors(merged)
    plain.load_state_dict(merged.state_dict(), strict=True)
    assert len(model.lors_stacks()) == 1  # the input model is left alone
    data = batch(model)
    worst = max_difference(stage_outputs(model, data),
                           stage_outputs(plain, data))
    assert worst < 1e-9
