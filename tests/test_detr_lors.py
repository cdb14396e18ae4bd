"""LORS decoders for DINO and Deformable-DETR against mmdet's own modules.

The strongest checks compare with mmdet / mmcv code: a LORS layer (or decoder)
whose private low-rank parts are zero and whose shared weights are copied from
a stock layer computes the stock function. Models are tiny (embed_dims 256 is
fixed by DINO's position encodings, everything else is small) and run in
seconds on CPU.
"""
import copy
import glob
import os.path as osp
from typing import Dict, Optional

import pytest
import torch
from mmengine.config import Config, ConfigDict

import lors_mmdet  # noqa: F401  (registers the models)
from lors_mmdet.lors import LorsLinear, count_parameters
from lors_mmdet.models.detr import (AdaptiveLorsLinear,
                                    LorsDeformableDetrTransformerDecoder,
                                    LorsDinoTransformerDecoder,
                                    LorsMultiScaleDeformableAttention,
                                    decoder_projection_shapes)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
EMBED_DIMS = 256
NUM_CLASSES = 3
STOCK_TYPES = {'DINO': 'DINO', 'DeformableDETR': 'DeformableDETR'}
LORS_TYPES = {'DINO': 'LorsDINO', 'DeformableDETR': 'LorsDeformableDETR'}


# --------------------------------------------------------------------------
# tiny models
# --------------------------------------------------------------------------
def tiny_layer_cfg(num_levels: int = 2, dropout: float = 0.0) -> dict:
    return dict(
        self_attn_cfg=dict(embed_dims=EMBED_DIMS, num_heads=8,
                           dropout=dropout),
        cross_attn_cfg=dict(embed_dims=EMBED_DIMS, num_levels=num_levels,
                            num_points=2, dropout=dropout),
        ffn_cfg=dict(embed_dims=EMBED_DIMS, feedforward_channels=64,
                     ffn_drop=dropout))


def tiny_model_cfg(family: str = 'DINO',
                   lors: Optional[dict] = None,
                   with_box_refine: bool = False,
                   as_two_stage: bool = False,
                   num_layers: int = 3) -> ConfigDict:
    """A tiny DINO / Deformable-DETR; LORS when ``lors`` is given."""
    if family == 'DINO':
        with_box_refine = as_two_stage = True
    cfg = dict(
        type=LORS_TYPES[family] if lors is not None else STOCK_TYPES[family],
        num_queries=10,
        num_feature_levels=2,
        with_box_refine=with_box_refine,
        as_two_stage=as_two_stage,
        data_preprocessor=dict(type='DetDataPreprocessor',
                               mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_size_divisor=1),
        backbone=dict(type='ResNet', depth=18, base_channels=8,
                      num_stages=4, out_indices=(2, 3), frozen_stages=-1,
                      norm_cfg=dict(type='BN'), norm_eval=False,
                      init_cfg=None),
        neck=dict(type='ChannelMapper', in_channels=[32, 64], kernel_size=1,
                  out_channels=EMBED_DIMS, act_cfg=None,
                  norm_cfg=dict(type='GN', num_groups=32), num_outs=2),
        encoder=dict(num_layers=1, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=EMBED_DIMS, num_levels=2,
                               num_points=2, dropout=0.0),
            ffn_cfg=dict(embed_dims=EMBED_DIMS, feedforward_channels=64,
                         ffn_drop=0.0))),
        decoder=dict(num_layers=num_layers, return_intermediate=True,
                     layer_cfg=tiny_layer_cfg(), post_norm_cfg=None),
        positional_encoding=dict(num_feats=EMBED_DIMS // 2, normalize=True,
                                 offset=-0.5),
        bbox_head=dict(
            type='DINOHead' if family == 'DINO' else 'DeformableDETRHead',
            num_classes=NUM_CLASSES, embed_dims=EMBED_DIMS,
            sync_cls_avg_factor=True,
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                          alpha=0.25, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=5.0),
            loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
        train_cfg=dict(assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
        test_cfg=dict(max_per_img=10))
    if family == 'DINO':
        cfg['dn_cfg'] = dict(label_noise_scale=0.5, box_noise_scale=1.0,
                             group_cfg=dict(dynamic=True, num_groups=None,
                                            num_dn_queries=6))
    if lors is not None:
        cfg['decoder']['lors'] = lors
    return ConfigDict(cfg)


def build_model(cfg: ConfigDict, seed: int = 0) -> torch.nn.Module:
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    torch.manual_seed(seed)
    model = MODELS.build(copy.deepcopy(cfg))
    model.init_weights()
    return model


def tiny_batch(model: torch.nn.Module, training: bool, seed: int = 0):
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(seed)
    packed = demo_mm_inputs(2, [[3, 64, 64], [3, 64, 64]],
                            num_classes=NUM_CLASSES, num_items=[3, 2])
    data = model.data_preprocessor(packed, training)
    return data['inputs'], data['data_samples']


def deformable_inputs(batch_size: int = 2, num_queries: int = 7,
                      ref_dims: int = 4, seed: int = 0) -> Dict:
    """Random inputs of a Deformable-DETR decoder layer (2 levels)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 5], [3, 3]])
    num_value = int(shapes.prod(1).sum())
    padding = torch.zeros(batch_size, num_value, dtype=torch.bool)
    padding[1, -4:] = True
    self_mask = torch.rand(num_queries, num_queries, generator=generator) > .7
    self_mask.fill_diagonal_(False)
    return dict(
        query=torch.randn(batch_size, num_queries, EMBED_DIMS,
                          generator=generator),
        query_pos=torch.randn(batch_size, num_queries, EMBED_DIMS,
                              generator=generator),
        value=torch.randn(batch_size, num_value, EMBED_DIMS,
                          generator=generator),
        key_padding_mask=padding,
        self_attn_mask=self_mask,
        spatial_shapes=shapes,
        level_start_index=torch.tensor([0, 30]),
        valid_ratios=torch.ones(batch_size, 2, 2),
        reference_points=torch.rand(batch_size, num_queries, 2, ref_dims,
                                    generator=generator))


def randomize_(module: torch.nn.Module, scale: float = 0.05,
               seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


@torch.no_grad()
def copy_stock_layer_(layer, stock_layer) -> None:
    """Shared weights and biases of ``layer`` := ``stock_layer``'s; private
    low-rank parts zero (only the shared weights of ``layer``'s decoder are
    written, so call it for the layer whose weights the shared ones take)."""
    attn = stock_layer.self_attn.attn
    for name, weight, bias in zip(
            ('query_proj', 'key_proj', 'value_proj'),
            attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)):
        getattr(layer.self_attn, name).shared.weight.copy_(weight)
        getattr(layer.self_attn, name).bias.copy_(bias)
    layer.self_attn.out_proj.shared.weight.copy_(attn.out_proj.weight)
    layer.self_attn.out_proj.bias.copy_(attn.out_proj.bias)
    for name in LorsMultiScaleDeformableAttention.PROJECTIONS:
        stock = getattr(stock_layer.cross_attn, name)
        getattr(layer.cross_attn, name).shared.weight.copy_(stock.weight)
        getattr(layer.cross_attn, name).bias.copy_(stock.bias)
    stock_fcs = [stock_layer.ffn.layers[0][0], stock_layer.ffn.layers[1]]
    for projection, stock in zip(layer.ffn.projections, stock_fcs):
        projection.shared.weight.copy_(stock.weight)
        projection.bias.copy_(stock.bias)
    layer.norms.load_state_dict(stock_layer.norms.state_dict())
    for module in layer.modules():
        if isinstance(module, LorsLinear):
            module.lors_A.normal_()  # any A: B = 0 makes the residual zero
            module.lors_B.zero_()


def lors_decoder(num_layers: int = 2, lors: Optional[dict] = None,
                 cls=LorsDeformableDetrTransformerDecoder):
    decoder = cls(num_layers=num_layers, layer_cfg=tiny_layer_cfg(),
                  post_norm_cfg=None, lors=lors or dict(rank=4))
    decoder.init_weights()
    return decoder


# --------------------------------------------------------------------------
# equivalence with mmdet / mmcv
# --------------------------------------------------------------------------
@pytest.mark.parametrize('ref_dims', [2, 4])
@pytest.mark.parametrize('training', [False, True])
def test_layer_equals_mmdet_layer_with_zero_private_parts(ref_dims, training):
    from mmdet.models.layers import DeformableDetrTransformerDecoderLayer
    torch.manual_seed(0)
    stock = DeformableDetrTransformerDecoderLayer(**tiny_layer_cfg())
    randomize_(stock)
    decoder = lors_decoder(num_layers=3)
    layer = decoder.layers[1]
    copy_stock_layer_(layer, stock)
    stock.train(training)
    layer.train(training)
    inputs = deformable_inputs(ref_dims=ref_dims)
    expected = stock(**inputs)
    actual = layer(**inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    # The LORS residual is really used: a non-zero B changes the output.
    with torch.no_grad():
        layer.cross_attn.value_proj.lors_B.normal_()
    assert not torch.allclose(layer(**inputs), expected, atol=1e-3)


@pytest.mark.parametrize('batch_first', [True, False])
def test_self_attention_equals_mmcv_with_masks(batch_first):
    from mmcv.cnn.bricks.transformer import MultiheadAttention
    torch.manual_seed(0)
    stock = MultiheadAttention(EMBED_DIMS, 8, dropout=0.1,
                               batch_first=batch_first)
    randomize_(stock)
    decoder = lors_decoder(num_layers=1)
    attn = decoder.layers[0].self_attn
    assert attn.attn_drop == 0.0  # from the config's dropout=0.0
    layer = decoder.layers[0]
    with torch.no_grad():
        for name, weight, bias in zip(
                ('query_proj', 'key_proj', 'value_proj'),
                stock.attn.in_proj_weight.chunk(3),
                stock.attn.in_proj_bias.chunk(3)):
            getattr(attn, name).shared.weight.copy_(weight)
            getattr(attn, name).bias.copy_(bias)
        attn.out_proj.shared.weight.copy_(stock.attn.out_proj.weight)
        attn.out_proj.bias.copy_(stock.attn.out_proj.bias)
        for module in layer.modules():
            if isinstance(module, LorsLinear):
                module.lors_B.zero_()
    attn.batch_first = batch_first
    stock.eval()
    attn.eval()
    q = torch.randn(2, 5, EMBED_DIMS)
    k = torch.randn(2, 6, EMBED_DIMS)
    q_pos, k_pos = torch.randn_like(q), torch.randn_like(k)
    bool_mask = torch.rand(5, 6) > 0.6
    bool_mask[:, 0] = False
    float_mask = torch.randn(2 * 8, 5, 6)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, -2:] = True
    if not batch_first:
        q, k, q_pos, k_pos = (t.transpose(0, 1) for t in (q, k, q_pos, k_pos))
    for kwargs in (dict(attn_mask=bool_mask),
                   dict(attn_mask=float_mask, key_padding_mask=padding),
                   dict(key_padding_mask=padding)):
        expected = stock(q, k, k, query_pos=q_pos, key_pos=k_pos, **kwargs)
        actual = attn(q, k, k, query_pos=q_pos, key_pos=k_pos, **kwargs)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_self_attention_dropout_convention_follows_mmcv():
    decoder = LorsDeformableDetrTransformerDecoder(
        num_layers=1, layer_cfg=tiny_layer_cfg(dropout=0.1),
        post_norm_cfg=None, lors=dict(rank=4))
    attn = decoder.layers[0].self_attn
    assert attn.attn_drop == 0.1
    assert attn.dropout_layer.p == 0.1
    assert decoder.layers[0].cross_attn.dropout.p == 0.1


@pytest.mark.parametrize('family', ['DINO', 'DeformableDETR'])
def test_decoder_equals_mmdet_decoder_with_zero_private_parts(family):
    """A stock decoder whose layers all equal one layer is what a LORS decoder
    computes with that layer as the shared weights and zero residuals: mmdet's
    decoder forward (refinement, DINO's ref_point_head, norm, dn mask)."""
    from mmdet.models.layers import (DeformableDetrTransformerDecoder,
                                     DinoTransformerDecoder)
    from torch import nn
    stock_cls, lors_cls = {
        'DINO': (DinoTransformerDecoder, LorsDinoTransformerDecoder),
        'DeformableDETR': (DeformableDetrTransformerDecoder,
                           LorsDeformableDetrTransformerDecoder)
    }[family]
    torch.manual_seed(0)
    stock = stock_cls(num_layers=3, layer_cfg=tiny_layer_cfg(),
                      post_norm_cfg=None)
    randomize_(stock)
    with torch.no_grad():
        for layer in stock.layers[1:]:
            layer.load_state_dict(stock.layers[0].state_dict())
    decoder = lors_decoder(num_layers=3, cls=lors_cls)
    for layer in decoder.layers:
        copy_stock_layer_(layer, stock.layers[0])
    if family == 'DINO':
        decoder.ref_point_head.load_state_dict(stock.ref_point_head.state_dict())
        decoder.norm.load_state_dict(stock.norm.state_dict())
    reg_branches = nn.ModuleList(nn.Linear(EMBED_DIMS, 4) for _ in range(3))
    inputs = deformable_inputs(num_queries=6, ref_dims=4)
    inputs['reference_points'] = inputs['reference_points'][:, :, 0]
    inputs['reg_branches'] = reg_branches
    if family == 'DINO':
        inputs.pop('query_pos')  # DINO derives it from the references
    stock.eval()
    decoder.eval()
    expected = stock(**inputs)
    actual = decoder(**inputs)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------
# ownership, initialisation, training
# --------------------------------------------------------------------------
@pytest.mark.parametrize('family', ['DINO', 'DeformableDETR'])
def test_shared_weights_registered_once_and_used_by_every_layer(family):
    model = build_model(tiny_model_cfg(family, lors=dict(rank=4)))
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names))
    assert len({id(p) for p in model.parameters()}) == len(names)
    shared = [n for n in model.state_dict() if n.startswith('decoder.shared.')]
    assert sorted(shared) == sorted(
        f'decoder.shared.{group}.{name}.weight'
        for group, names in (
            ('self_attn', ['query_proj', 'key_proj', 'value_proj',
                           'out_proj']),
            ('cross_attn', ['sampling_offsets', 'attention_weights',
                            'value_proj', 'output_proj']),
            ('ffn', ['fc1', 'fc2'])) for name in names)
    shared_ids = {id(p) for p in model.decoder.shared.parameters()}
    for layer in model.decoder.layers:
        assert shared_ids.isdisjoint(id(p) for p in layer.parameters())
    for group, name, shared_module, layers in model.decoder.lors_projections():
        assert all(layer.shared is shared_module for layer in layers)


@pytest.mark.parametrize('family', ['DINO', 'DeformableDETR'])
def test_lors_init_is_reestablished_after_mmdet_init_weights(family):
    from mmcv.ops import MultiScaleDeformableAttention
    model = build_model(tiny_model_cfg(family, lors=dict(rank=4)))
    decoder = model.decoder
    for _, _, shared, layers in decoder.lors_projections():
        for layer in layers:
            assert torch.count_nonzero(layer.lors_B) == 0
            bound = 1 / layer.in_features ** 0.5  # kaiming-uniform(a=sqrt 5)
            assert layer.lors_A.abs().max() <= bound
    shared = decoder.shared
    assert torch.count_nonzero(shared.cross_attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(shared.cross_attn.attention_weights.weight) == 0
    # q/k/v: xavier over the packed (3E, E) in_proj_weight, as in mmdet.
    packed_bound = (6 / (4 * EMBED_DIMS)) ** 0.5
    qkv = torch.cat([shared.self_attn[n].weight
                     for n in ('query_proj', 'key_proj', 'value_proj')])
    assert packed_bound * 0.9 < qkv.abs().max() <= packed_bound
    # The private biases get the stock init: mmcv's sampling grid...
    stock_attn = MultiScaleDeformableAttention(**tiny_layer_cfg()[
        'cross_attn_cfg'])
    for layer in decoder.layers:
        torch.testing.assert_close(layer.cross_attn.sampling_offsets.bias,
                                   stock_attn.sampling_offsets.bias)
        assert torch.count_nonzero(layer.cross_attn.attention_weights.bias) == 0
        assert torch.count_nonzero(layer.self_attn.query_proj.bias) == 0
        # ... and nn.Linear's default FFN bias, one draw per layer.
        fc1 = layer.ffn.projections[0]
        assert 0 < fc1.bias.abs().max() <= 1 / fc1.in_features ** 0.5
    assert not torch.equal(decoder.layers[0].ffn.projections[0].bias,
                           decoder.layers[1].ffn.projections[0].bias)


@pytest.mark.parametrize('family,refine,two_stage', [
    ('DINO', True, True),
    ('DeformableDETR', False, False),
    ('DeformableDETR', True, False),
    ('DeformableDETR', True, True),
])
def test_train_step_reaches_shared_and_private_parts(family, refine,
                                                     two_stage):
    model = build_model(
        tiny_model_cfg(family, lors=dict(rank=4), with_box_refine=refine,
                       as_two_stage=two_stage))
    model.train()
    losses = model.loss(*tiny_batch(model, training=True))
    if family == 'DINO':
        assert 'dn_loss_cls' in losses  # denoising queries went through
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    loss.backward()
    decoder = model.decoder
    for group, name, shared, layers in decoder.lors_projections():
        assert shared.weight.grad is not None, f'{group}.{name}'
        assert shared.weight.grad.abs().sum() > 0, f'{group}.{name}'
    # At init B = 0, so gradients reach B (not yet A) in every layer.
    for layer in decoder.layers:
        assert layer.ffn.projections[1].lors_B.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        results = model.predict(*tiny_batch(model, training=False))
    assert results[0].pred_instances.bboxes.shape == (10, 4)


def test_optimizer_builds_from_stock_paramwise_cfg_without_duplicates():
    from mmengine.optim import build_optim_wrapper
    for config, family in (
            ('configs/lors_deformable_detr/'
             'lors-deformable-detr_r50_16xb2-50e_coco.py', 'DeformableDETR'),
            ('configs/lors_dino/lors-dino-4scale_r50_8xb2-12e_coco.py',
             'DINO')):
        cfg = Config.fromfile(osp.join(ROOT, config))
        paramwise = cfg.optim_wrapper.get('paramwise_cfg', {})
        assert 'bypass_duplicate' not in paramwise
        model = build_model(tiny_model_cfg(family, lors=dict(rank=4)))
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        groups = wrapper.optimizer.param_groups
        ids = [id(p) for g in groups for p in g['params']]
        assert len(ids) == len(set(ids)) == len(list(model.parameters()))
        lr = cfg.optim_wrapper.optimizer.lr
        lr_of = {id(p): g['lr'] for g in groups for p in g['params']}
        shared_offsets = model.decoder.shared.cross_attn.sampling_offsets
        private_offsets = model.decoder.layers[2].cross_attn.sampling_offsets
        expected = 0.1 * lr if family == 'DeformableDETR' else lr
        assert lr_of[id(shared_offsets.weight)] == pytest.approx(expected)
        assert lr_of[id(private_offsets.lors_A)] == pytest.approx(expected)
        assert lr_of[id(model.decoder.shared.ffn.fc1.weight)] == \
            pytest.approx(lr)


# --------------------------------------------------------------------------
# configs and parameter reduction
# --------------------------------------------------------------------------
COCO_CONFIGS = sorted(
    glob.glob(osp.join(ROOT, 'configs/lors_dino/*_coco.py')) +
    glob.glob(osp.join(ROOT, 'configs/lors_deformable_detr/*_coco.py')))
MMDET_BASES = {
    'lors-dino-4scale_r50_8xb2-12e_coco.py':
    'dino/dino-4scale_r50_8xb2-12e_coco.py',
    'lors-dino-4scale_r50_8xb2-24e_coco.py':
    'dino/dino-4scale_r50_8xb2-24e_coco.py',
    'lors-dino-4scale_r50_8xb2-36e_coco.py':
    'dino/dino-4scale_r50_8xb2-36e_coco.py',
    'lors-deformable-detr_r50_16xb2-50e_coco.py':
    'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    'lors-deformable-detr-refine_r50_16xb2-50e_coco.py':
    'deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py',
    'lors-deformable-detr-refine-twostage_r50_16xb2-50e_coco.py':
    'deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
}


def without_scope(obj):
    """A config dict without the ``_scope_`` keys mmengine adds to the
    dicts inherited through ``mmdet::``."""
    if isinstance(obj, dict):
        return {k: without_scope(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(without_scope(v) for v in obj)
    return obj


def test_every_requested_coco_config_exists():
    assert sorted(osp.basename(p) for p in COCO_CONFIGS) == sorted(MMDET_BASES)


@pytest.mark.parametrize('config', COCO_CONFIGS, ids=osp.basename)
def test_coco_config_is_mmdets_plus_lors_and_builds(config):
    import mmdet
    cfg = Config.fromfile(config)
    stock = Config.fromfile(
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs',
                 MMDET_BASES[osp.basename(config)]))
    lors_dict = without_scope(cfg.to_dict())
    lors_dict.pop('custom_imports')
    model = lors_dict['model']
    assert model.pop('type') == 'Lors' + stock.model.type
    lors = model['decoder'].pop('lors')
    assert lors == dict(rank=16, num_terms=1)
    model['type'] = stock.model.type
    # our runtime hooks (atomic checkpoints, exact resumption: test_configs_runtime.py)
    checkpoint = lors_dict['default_hooks']['checkpoint']
    assert checkpoint.pop('type') == 'AtomicCheckpointHook'
    checkpoint['type'] = stock.default_hooks.checkpoint.type
    assert lors_dict.pop('custom_hooks') == [dict(type='RNGStateHook')]
    assert lors_dict == stock.to_dict()  # nothing else changed
    cfg.model.backbone.init_cfg = None
    built = build_model(cfg.model)
    assert type(built).__name__ == cfg.model.type


@pytest.mark.parametrize('family,config', [
    ('DINO', 'configs/lors_dino/lors-dino-4scale_r50_8xb2-12e_coco.py'),
    ('DeformableDETR', 'configs/lors_deformable_detr/'
     'lors-deformable-detr_r50_16xb2-50e_coco.py'),
])
def test_decoder_parameter_reduction_at_default_ranks(family, config):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, config))
    cfg.model.backbone.init_cfg = None
    stock_cfg = copy.deepcopy(cfg.model)
    stock_cfg.type = STOCK_TYPES[family]
    stock_cfg.decoder.pop('lors')
    lors = build_model(cfg.model).decoder
    count = count_parameters(lors)
    stock = MODELS.build(stock_cfg).decoder
    stock_total = sum(p.numel() for p in stock.parameters())
    # The accounting is honest: N plain layers are what mmdet's decoder holds.
    assert count.dense_equivalent == stock_total
    assert count.saving >= 0.60
    assert count.total <= 0.35 * stock_total  # issue 6's target


@pytest.mark.parametrize('stock_config,lors_config', [
    ('configs/dino/dino-4scale_r18-tiny_1xb8-toy_synthetic.py',
     'configs/lors_dino/lors-dino-4scale_r18-tiny_1xb8-toy_synthetic.py'),
    ('configs/deformable_detr/'
     'deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py',
     'configs/lors_deformable_detr/'
     'lors-deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py'),
])
def test_toy_configs_differ_only_by_the_decoder(stock_config, lors_config):
    stock_cfg = Config.fromfile(osp.join(ROOT, stock_config))
    lors_cfg = Config.fromfile(osp.join(ROOT, lors_config))
    lors_dict = lors_cfg.to_dict()
    lors_dict['model']['type'] = lors_dict['model']['type'][len('Lors'):]
    lors_dict['model']['decoder'].pop('lors')
    assert lors_dict == stock_cfg.to_dict()
    for cfg in (stock_cfg, lors_cfg):  # the pretrained toy backbone is not needed here
        cfg.model.backbone.init_cfg = None
    stock = build_model(stock_cfg.model)
    lors = build_model(lors_cfg.model)
    stock_params = {n: p.shape for n, p in stock.named_parameters()
                    if not n.startswith('decoder.layers.')}
    lors_params = {n: p.shape for n, p in lors.named_parameters()
                   if not n.startswith(('decoder.layers.', 'decoder.shared.'))}
    assert stock_params == lors_params


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------
@pytest.mark.parametrize('lors,error,match', [
    (dict(rank=0), ValueError, r'decoder\.lors\.rank.*0'),
    (dict(rank=300), ValueError, r'decoder\.lors\.rank: rank 300'),
    (dict(rank=4, ranks=dict(cross_attn=dict(attention_weights=129))),
     ValueError, r'ranks\.cross_attn\.attention_weights: rank 129'),
    (dict(rank=[4, 4]), ValueError, r'decoder\.lors\.rank.*one entry per'),
    (dict(rank=4, num_terms=[1, 2, 1, 1]), ValueError,
     r'num_terms.*one entry per decoder layer \(num_layers=3\)'),
    (dict(rank=4, ranks=dict(ffn=[4, 4])), ValueError,
     r'decoder\.lors\.ranks\.ffn.*one entry per'),
    (dict(rank='full', num_terms=2), ValueError, r"'full' needs num_terms"),
    (dict(rank=4, ranks=dict(cross_attn=dict(sampling_offset=4))),
     ValueError, r"unknown key.*sampling_offset"),
    (dict(rank=4, rnak=4), ValueError, r"unknown key.*rnak"),
    (dict(rank=4, ranks=dict(encoder=4)), ValueError, r"unknown key.*encoder"),
    (dict(rank=2.5), ValueError, r'positive int.*2\.5'),
    (dict(adaptive=dict(projections=['ffn.fc9'])), ValueError,
     r"unknown projection 'ffn\.fc9'"),
    (dict(adaptive=dict(projections=['cross_attn.value_proj'])), ValueError,
     r'encoder memory'),
    (dict(adaptive=dict(projections=['ffn.fc1'], core_size=0)), ValueError,
     r'core_size'),
    ('rank16', TypeError, r'decoder\.lors must be a dict'),
])
def test_bad_lors_config_raises_clear_error(lors, error, match):
    with pytest.raises(error, match=match):
        LorsDeformableDetrTransformerDecoder(
            num_layers=3, layer_cfg=tiny_layer_cfg(), post_norm_cfg=None,
            lors=lors)


def test_unsupported_layer_options_raise_clear_error():
    layer_cfg = tiny_layer_cfg()
    layer_cfg['self_attn_cfg']['add_bias_kv'] = True
    with pytest.raises(ValueError, match=r"options \['add_bias_kv'\]"):
        LorsDeformableDetrTransformerDecoder(
            num_layers=2, layer_cfg=layer_cfg, post_norm_cfg=None)
    with pytest.raises(ValueError, match='has no post norm'):
        LorsDeformableDetrTransformerDecoder(
            num_layers=2, layer_cfg=tiny_layer_cfg(),
            post_norm_cfg=dict(type='LN'))


def test_per_layer_ranks_and_terms_reach_the_layers():
    decoder = lors_decoder(
        num_layers=3,
        lors=dict(rank=[2, 4, 8], num_terms=[1, 1, 2],
                  ranks=dict(cross_attn=dict(attention_weights=[8, 'full', 2]),
                             ffn=[1, 2, 3])))
    ranks = {f'{g}.{n}': [(m.rank, m.num_terms) for m in layers]
             for g, n, _, layers in decoder.lors_projections()}
    assert ranks['self_attn.query_proj'] == [(2, 1), (4, 1), (8, 2)]
    assert ranks['ffn.fc2'] == [(1, 1), (2, 1), (3, 2)]
    # 'full' = min(in, out) = 8 heads x 2 levels x 2 points
    assert ranks['cross_attn.attention_weights'] == [(8, 1), (32, 1), (2, 2)]
    with pytest.raises(ValueError, match="'full' needs num_terms=1"):
        lors_decoder(num_layers=3, lors=dict(
            rank=4, num_terms=[1, 1, 2],
            ranks=dict(cross_attn=dict(attention_weights='full'))))
    full = lors_decoder(num_layers=3, lors=dict(
        rank=4, ranks=dict(cross_attn=dict(attention_weights='full'))))
    weights = full.layers[0].cross_attn.attention_weights
    assert weights.rank == min(weights.in_features, weights.out_features)


def test_projection_shapes_follow_mmcv_defaults():
    layer_cfg = tiny_layer_cfg()
    layer_cfg['cross_attn_cfg'].update(num_heads=4, num_points=3,
                                      value_proj_ratio=0.5)
    shapes = decoder_projection_shapes(layer_cfg)
    cross = shapes['cross_attn']
    assert (cross['sampling_offsets'].out_features ==
            4 * 2 * 3 * 2)
    assert cross['attention_weights'].out_features == 4 * 2 * 3
    assert cross['value_proj'].out_features == 128
    assert cross['output_proj'].in_features == 128
    assert list(shapes['ffn']) == ['fc1', 'fc2']


# --------------------------------------------------------------------------
# adaptive branch (optional, default off)
# --------------------------------------------------------------------------
def test_adaptive_branch_starts_as_static_and_learns():
    lors = dict(rank=4, adaptive=dict(
        projections=['self_attn.query_proj', 'cross_attn.sampling_offsets',
                     'ffn.fc1'], core_size=4, num_terms=2))
    model = build_model(tiny_model_cfg('DeformableDETR', lors=lors,
                                       with_box_refine=True))
    decoder = model.decoder
    adaptive = [m for m in decoder.modules()
                if isinstance(m, AdaptiveLorsLinear)]
    assert len(adaptive) == 3 * 3
    for module in adaptive:  # zero generator after mmdet's xavier init
        assert torch.count_nonzero(module.core_generator.weight) == 0
        assert torch.count_nonzero(module.core_generator.bias) == 0
        assert torch.count_nonzero(module.adaptive_L) > 0
    static = build_model(tiny_model_cfg('DeformableDETR', lors=dict(rank=4),
                                        with_box_refine=True))
    static.load_state_dict(model.state_dict(), strict=False)
    model.eval()
    static.eval()
    batch = tiny_batch(model, training=False)
    with torch.no_grad():
        expected = static.predict(*batch)[0].pred_instances
        actual = model.predict(*batch)[0].pred_instances
    torch.testing.assert_close(actual.scores, expected.scores)
    model.train()
    loss = sum(v for k, v in model.loss(*tiny_batch(model, True)).items()
               if 'loss' in k)
    loss.backward()
    fc1 = decoder.layers[0].ffn.projections[0]
    assert fc1.core_generator.weight.grad.abs().sum() > 0
    # a non-zero core changes the function
    x = torch.randn(3, EMBED_DIMS)
    before = fc1(x)
    with torch.no_grad():
        fc1.core_generator.bias.normal_()
    assert not torch.allclose(fc1(x), before)
    with pytest.raises(TypeError, match='cannot be merged'):
        fc1.to_linear()


# --------------------------------------------------------------------------
# deformable attention op: mmcv's choice of implementation
# --------------------------------------------------------------------------
def _lors_cross_attention():
    """(decoder, its layer's LorsMultiScaleDeformableAttention)."""
    decoder = lors_decoder(num_layers=1)
    randomize_(decoder)
    return decoder, decoder.layers[0].cross_attn


def test_cpu_uses_mmcv_pytorch_deformable_attention(monkeypatch):
    import mmcv.ops.multi_scale_deform_attn as msda
    calls = []
    original = msda.multi_scale_deformable_attn_pytorch

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(msda, 'multi_scale_deformable_attn_pytorch', spy)
    _, attn = _lors_cross_attention()
    assert isinstance(attn, LorsMultiScaleDeformableAttention)
    inputs = deformable_inputs()
    attn(inputs['query'], value=inputs['value'],
         query_pos=inputs['query_pos'],
         reference_points=inputs['reference_points'],
         spatial_shapes=inputs['spatial_shapes'],
         level_start_index=inputs['level_start_index'])
    assert calls == [1]


@pytest.mark.cuda
def test_cuda_uses_compiled_op_and_matches_cpu(monkeypatch):
    import mmcv.ops.multi_scale_deform_attn as msda
    from lors_mmdet import compat
    if compat.pytorch_ops_active():
        pytest.skip('mmcv has no CUDA kernels here: compat routes to PyTorch')
    decoder, attn = _lors_cross_attention()
    decoder.eval()
    inputs = deformable_inputs()
    kwargs = dict(reference_points=inputs['reference_points'],
                  spatial_shapes=inputs['spatial_shapes'],
                  level_start_index=inputs['level_start_index'])
    expected = attn(inputs['query'], value=inputs['value'],
                    query_pos=inputs['query_pos'], **kwargs)
    calls = []
    original = msda.MultiScaleDeformableAttnFunction.apply

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(msda.MultiScaleDeformableAttnFunction, 'apply', spy)
    decoder.cuda()  # the shared weights live on the decoder
    actual = attn(inputs['query'].cuda(), value=inputs['value'].cuda(),
                  query_pos=inputs['query_pos'].cuda(),
                  **{k: v.cuda() for k, v in kwargs.items()})
    assert calls == [1]
    torch.testing.assert_close(actual.cpu(), expected, atol=1e-4, rtol=1e-4)
    actual.sum().backward()  # the compiled backward runs too
    assert attn.sampling_offsets.shared.weight.grad is not None
