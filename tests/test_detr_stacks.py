"""LORS encoder and decoder stacks (stack surgery) for mmdet's DETR,
Conditional-DETR, DAB-DETR, Deformable-DETR (plain, refine, two-stage), DINO
and DDQ-DETR, against mmdet's stock models.

The models are mmdet's own COCO configs (``mmdet::``) shrunk to a toy size
(embed_dims 32 - 256 for Conditional-DETR -, 3 layers, ResNet-18 with 8
base channels): built by mmdet,
compared in float64.
"""
import copy

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.hub import get_config
from mmengine.registry import init_default_scope
from torch import nn

import lors_mmdet  # noqa: F401  (registers the models)
from lors_mmdet.lors import LorsLinear, apply_lors, merge_lors

EMBED_DIMS, FFN_DIMS, NUM_LAYERS = 32, 32, 3
MMDET_CONFIGS = {
    'DETR': 'mmdet::detr/detr_r50_8xb2-150e_coco.py',
    'ConditionalDETR':
    'mmdet::conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
    'DABDETR': 'mmdet::dab_detr/dab-detr_r50_8xb2-50e_coco.py',
    'DDQDETR': 'mmdet::ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py',
    'DeformableDETR':
    'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    'DeformableDETR-refine':
    'mmdet::deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py',
    'DeformableDETR-twostage': 'mmdet::deformable_detr/'
    'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
    'DINO': 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
}
SHRINK = dict(feedforward_channels=FFN_DIMS, num_layers=NUM_LAYERS,
              num_classes=3, num_dn_queries=6, max_per_img=10)
# Conditional-DETR's and DINO's decoders and the two-stage proposals encode
# coordinates with mmdet's default 128 features each: embed_dims 256 there.
WIDE = ('ConditionalDETR', 'DeformableDETR-twostage', 'DINO')
# Projections every layer has, as the surgery must find them.
EXPECTED = {
    'DETR': ('encoder', 'self_attn.attn.q_proj', 'decoder',
             'cross_attn.attn.out_proj'),
    'ConditionalDETR': ('encoder', 'ffn.layers.1', 'decoder',
                        'cross_attn.qpos_sine_proj'),
    'DABDETR': ('encoder', 'self_attn.attn.v_proj', 'decoder',
                'self_attn.kpos_proj'),
    'DDQDETR': ('encoder', 'self_attn.sampling_offsets', 'decoder',
                'self_attn.attn.k_proj'),
    'DeformableDETR': ('encoder', 'self_attn.value_proj', 'decoder',
                       'cross_attn.sampling_offsets'),
    'DeformableDETR-refine': ('encoder', 'ffn.layers.0.0', 'decoder',
                              'cross_attn.attention_weights'),
    'DeformableDETR-twostage': ('encoder', 'self_attn.output_proj', 'decoder',
                                'self_attn.attn.q_proj'),
    'DINO': ('encoder', 'self_attn.attention_weights', 'decoder',
             'cross_attn.output_proj'),
}
LORS = dict(encoder=dict(rank=2), decoder=dict(rank=3, layer_groups=[1, 2]))
# The stock models that run only in float32: mmdet's coordinate_to_encoding
# (Conditional / DAB decoders) makes float32 tensors whatever the input, and
# mmcv's nms (DDQ's distinct query selection) takes float32 only.
FLOAT32_ONLY = ('ConditionalDETR', 'DABDETR', 'DDQDETR')


def dtype_and_tolerance(family: str):
    if family in FLOAT32_ONLY:
        return torch.float32, dict(rtol=1e-4, atol=1e-5)
    return torch.float64, dict(rtol=0, atol=1e-10)


def _shrink(node, shrink: dict) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in shrink:
                node[key] = shrink[key]
            elif key == 'num_groups' and value == 32:  # GroupNorm
                node[key] = 4
            else:
                _shrink(value, shrink)
    elif isinstance(node, list):
        for value in node:
            _shrink(value, shrink)


def tiny_cfg(family: str, lors=None) -> ConfigDict:
    model = get_config(MMDET_CONFIGS[family]).model.to_dict()
    embed_dims = 256 if family in WIDE else EMBED_DIMS
    _shrink(model, dict(SHRINK, embed_dims=embed_dims,
                        num_feats=embed_dims // 2))
    out_indices = model['backbone'].get('out_indices', (3, ))
    model['backbone'] = dict(type='ResNet', depth=18, base_channels=8,
                             num_stages=4, out_indices=out_indices,
                             frozen_stages=-1, norm_cfg=dict(type='BN'),
                             norm_eval=False, init_cfg=None)
    model['neck'].update(in_channels=[8 * 2**i for i in out_indices],
                         out_channels=embed_dims)
    model['bbox_head']['embed_dims'] = embed_dims  # DDQ's config omits it
    model['num_queries'] = 10
    if lors is not None:
        model.update(type='Lors' + model['type'], lors=lors)
    return ConfigDict(model)


def build(cfg: ConfigDict, seed: int = 0) -> nn.Module:
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    torch.manual_seed(seed)
    model = MODELS.build(copy.deepcopy(cfg))
    model.init_weights()
    return model


def batch(model: nn.Module, dtype: torch.dtype = torch.float64):
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    packed = demo_mm_inputs(2, [[3, 64, 64], [3, 48, 64]], num_classes=3,
                            num_items=[3, 2])
    data = model.data_preprocessor(packed, False)
    data['inputs'] = data['inputs'].to(dtype)
    return data


def flat(outputs):
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for item in outputs for t in flat(item)]


def stock_projection(layer: nn.Module, path: str):
    """(weight, bias) of ``path`` in a stock layer, read independently of the
    surgery: an nn.MultiheadAttention map is its slice of in_proj_weight."""
    parent, _, name = path.rpartition('.')
    attention = layer.get_submodule(parent)
    if isinstance(attention, nn.MultiheadAttention):
        if name == 'out_proj':
            return attention.out_proj.weight, attention.out_proj.bias
        index = ('q_proj', 'k_proj', 'v_proj').index(name)
        return (attention.in_proj_weight.chunk(3)[index],
                attention.in_proj_bias.chunk(3)[index])
    linear = layer.get_submodule(path)
    return linear.weight, linear.bias


@torch.no_grad()
def randomise(model: nn.Module) -> None:
    """Every transformer parameter different (also across layers)."""
    generator = torch.Generator().manual_seed(3)
    for part in (model.encoder, model.decoder):
        for param in part.parameters():
            param.copy_(torch.randn(param.shape, generator=generator,
                                    dtype=param.dtype) * 0.2)


@pytest.mark.parametrize('family', list(MMDET_CONFIGS))
def test_zero_private_and_copied_shared_give_the_stock_outputs(family):
    """Shared = the first layer (of each group) of a stock model, private
    residuals zero, biases and everything else copied: the LORS model
    computes what mmdet's stock model computes once its layers use those
    matrices, encoder and decoder."""
    dtype, tolerance = dtype_and_tolerance(family)
    lors_model = build(tiny_cfg(family, LORS)).to(dtype).eval()
    stock = build(tiny_cfg(family)).to(dtype).eval()
    randomise(stock)
    stacks = dict(lors_model.lors_stacks())
    assert sorted(stacks) == ['decoder.lors_layers', 'encoder.lors_layers']
    part, path, part2, path2 = EXPECTED[family]
    assert path in stacks[f'{part}.lors_layers'].plans
    assert path2 in stacks[f'{part2}.lors_layers'].plans
    lors_state = lors_model.state_dict()
    stock_state = stock.state_dict()
    private = [k for k in lors_state if k not in stock_state]
    # LORS factors and shared weights, and the biases of the attention
    # maps (stock: packed in in_proj_bias), all set below
    assert all('.lors_' in k or k.endswith('_proj.bias')
               for k in private), private
    with torch.no_grad():
        for key, value in stock_state.items():
            if key in lors_state:
                lors_state[key].copy_(value)
        for name, stack in stacks.items():
            stock_layers = stock.get_submodule(name.rpartition('.')[0]).layers
            for path in stack.plans:
                for group_index, group in enumerate(stack.layer_groups):
                    first, _ = stock_projection(stock_layers[group[0]], path)
                    stack.shared_linear(group_index, path).weight.copy_(first)
                    for i in group:  # the stock layer uses the group's matrix
                        weight, bias = stock_projection(stock_layers[i], path)
                        weight.copy_(first)
                        lors = stack.layers[i].get_submodule(path)
                        assert isinstance(lors, LorsLinear)
                        lors.bias.copy_(bias)
                        lors.lors_B.zero_()
    data = batch(stock, dtype)
    expected = flat(stock(**data, mode='tensor'))
    got = flat(lors_model(**data, mode='tensor'))
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **tolerance)


DEFORMABLE = ('DDQDETR', 'DeformableDETR', 'DINO')


@pytest.mark.parametrize('family', ['DETR', *DEFORMABLE])
def test_init_weights_is_mmdets_init_with_zero_residuals(family):
    model = build(tiny_cfg(family, LORS))
    before = [id(p) for p in model.parameters()]
    model.init_weights()  # again: mmengine builds the optimizer before it
    assert [id(p) for p in model.parameters()] == before
    for _, stack in model.lors_stacks():
        for path in stack.plans:
            assert all(not lors.lors_B.any()
                       for lors in stack.lors_linears(path))
            for group in range(len(stack.layer_groups)):
                weight = stack.shared_linear(group, path).weight
                fan_out, fan_in = weight.shape
                if path.endswith(('sampling_offsets', 'attention_weights')):
                    assert not weight.any()  # mmcv's deformable attn init
                else:  # mmdet's xavier init of every matrix
                    bound = (6 / (fan_in + fan_out))**0.5
                    assert weight.any() and weight.abs().max() <= bound
    if family in DEFORMABLE:  # mmcv's grid init of the offsets' biases
        stock = build(tiny_cfg(family))
        for part in ('encoder', 'decoder'):
            torch.testing.assert_close(
                getattr(model, part).layers[1].get_submodule(
                    'self_attn.sampling_offsets' if part == 'encoder' else
                    'cross_attn.sampling_offsets').bias,
                getattr(stock, part).layers[1].get_submodule(
                    'self_attn.sampling_offsets' if part == 'encoder' else
                    'cross_attn.sampling_offsets').bias)


@pytest.mark.parametrize(
    'family', ['DABDETR', 'DDQDETR', 'DeformableDETR-twostage', 'DINO'])
def test_merge_round_trip_loads_into_the_stock_model(family):
    dtype, tolerance = dtype_and_tolerance(family)
    model = build(tiny_cfg(family, LORS)).to(dtype).eval()
    with torch.no_grad():
        for _, stack in model.lors_stacks():
            for path in stack.plans:
                for lors in stack.lors_linears(path):
                    lors.lors_B.normal_(0, 0.1)
    data = batch(model, dtype)
    lors_out = flat(model(**data, mode='tensor'))
    merge_lors(model)
    stock = build(tiny_cfg(family)).to(dtype).eval()
    stock.load_state_dict(model.state_dict())  # strict: stock keys
    for a, b in zip(flat(stock(**data, mode='tensor')), lors_out):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize('family', ['DETR', 'DeformableDETR', 'DINO'])
def test_each_shared_tensor_once_and_fewer_parameters(family):
    model = build(tiny_cfg(family, LORS))
    stock = build(tiny_cfg(family))
    # (plain Deformable-DETR's head shares its branches across layers: mmdet's
    # own sharing, outside the transformer)
    pointers = [t.untyped_storage().data_ptr()
                for k, t in model.state_dict().items()
                if k.startswith(('encoder.', 'decoder.'))]
    assert len(pointers) == len(set(pointers))
    ids = [id(p) for part in (model.encoder, model.decoder)
           for _, p in part.named_parameters(remove_duplicate=False)]
    assert len(ids) == len(set(ids))
    count = sum(p.numel() for p in model.parameters())
    assert count < sum(p.numel() for p in stock.parameters())


def test_training_step_reaches_shared_and_private_parts():
    model = build(tiny_cfg('DABDETR', LORS)).train()
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    packed = demo_mm_inputs(2, [[3, 64, 64], [3, 64, 64]], num_classes=3,
                            num_items=[3, 2])
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    # DAB's first decoder layer sees zero content queries (stock too): its
    # content projections get no weight gradient; the last group has layers
    # 1-2 (decoder) or all layers (encoder).
    for _, stack in model.lors_stacks():
        for path in stack.plans:
            for group in range(len(stack.layer_groups)):
                assert stack.shared_linear(group, path).weight.grad is not None
            shared = stack.shared_linear(len(stack.layer_groups) - 1, path).weight
            assert shared.grad.any(), path
            for lors in stack.lors_linears(path):
                assert lors.lors_B.grad is not None and lors.lors_A.grad \
                    is not None
            last = stack.layers[stack.layer_groups[-1][-1]].get_submodule(path)
            assert last.lors_B.grad.any() and last.bias.grad.any(), path


@pytest.mark.parametrize('lors, message', [
    (dict(decodr=dict(rank=2)), r"unknown key\(s\) \['decodr'\] in lors"),
    (dict(decoder=dict(rank=100)),
     r'lors.decoder.rank: rank 100 x num_terms 1 of layer 0 exceeds'),
    (dict(encoder=dict(include='nope')),
     r"lors.encoder.include: pattern 'nope' matches no projection"),
    ([2], r'lors must be a dict'),
])
def test_bad_lors_config_names_the_key(lors, message):
    with pytest.raises((TypeError, ValueError), match=message):
        build(tiny_cfg('DETR', lors))


@pytest.mark.parametrize('family, part, num_layers, message', [
    ('DETR', 'decoder', 0, r'lors.decoder is given but model.decoder.'
     r'num_layers = 0: the decoder has no layers to make a LORS stack of'),
    ('DINO', 'encoder', 0, r'lors.encoder is given but model.encoder.'
     r'num_layers = 0: the encoder has no layers'),
    ('DETR', 'encoder', 1, r'lors.encoder: the stack has 1 layer; LORS '
     r'shares weights across layers'),
])
def test_a_stack_of_fewer_than_two_layers_is_refused_by_name(
        family, part, num_layers, message):
    """Not mmdet's IndexError on an empty stack, nor a 'LORS' stack larger
    than the stock one."""
    cfg = tiny_cfg(family, {part: dict(rank=2)})
    cfg[part].num_layers = num_layers
    with pytest.raises(ValueError, match=message):
        build(cfg)


@pytest.mark.parametrize(
    'family', ['DETR', 'DeformableDETR-refine', 'DeformableDETR-twostage',
               'DINO'])
def test_stock_converted_at_full_rank_loads_into_the_lors_model(family):
    """Checkpoint conversion: a stock model's stacks turned into LORS from
    dense at full rank have the registered LORS model's keys and give the
    stock outputs (float64)."""
    stock = build(tiny_cfg(family)).double().eval()
    randomise(stock)
    data = batch(stock)
    expected = flat(stock(**data, mode='tensor'))
    full = dict(rank='full', init='dense')
    for part in ('encoder', 'decoder'):
        apply_lors(getattr(stock, part), 'layers', full)
    lors_model = build(tiny_cfg(family, dict(encoder=full,
                                             decoder=full))).double().eval()
    lors_model.load_state_dict(stock.state_dict())  # strict
    for model in (stock, lors_model):
        for a, b in zip(flat(model(**data, mode='tensor')), expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
