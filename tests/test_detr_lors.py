"""LORS-DINO and LORS-Deformable-DETR (stack surgery, ``lors=dict(encoder=...,
decoder=...)``): training, optimizer, configs, mmcv's deformable attention.

The equivalence tests against mmdet's stock models (zero private parts,
full-rank from dense, merge round trip, init) are in test_detr_stacks.py,
for every DETR family. Models here are tiny (embed_dims 256 is fixed by DINO's
position encodings, everything else is small) and run in seconds on CPU.
"""
import copy
import glob
import os.path as osp
from typing import Optional

import pytest
import torch
from mmengine.config import Config, ConfigDict

import lors_mmdet  # noqa: F401  (registers the models)
from lors_mmdet.lors import LorsLinear, find_lors_stacks

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
EMBED_DIMS = 256
NUM_CLASSES = 3
# a LORS stack needs at least 2 layers
ENCODER_LAYERS = 2
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
    """A tiny DINO / Deformable-DETR; LORS when ``lors`` is given
    (``dict(encoder=..., decoder=...)``)."""
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
        encoder=dict(num_layers=ENCODER_LAYERS, layer_cfg=dict(
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
        cfg['lors'] = lors
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


def randomize_(module: torch.nn.Module, scale: float = 0.05,
               seed: int = 0) -> None:
    """Every parameter of ``module`` random (layers differ)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)


# --------------------------------------------------------------------------
# ownership, initialisation, training
# --------------------------------------------------------------------------
LORS = dict(encoder=dict(rank=4), decoder=dict(rank=4))
ATTENTION = ('attn.q_proj', 'attn.k_proj', 'attn.v_proj', 'attn.out_proj')
DEFORMABLE = ('sampling_offsets', 'attention_weights', 'value_proj',
              'output_proj')
FFN = ('ffn.layers.0.0', 'ffn.layers.1')
PROJECTIONS = {
    'encoder': [f'self_attn.{n}' for n in DEFORMABLE] + list(FFN),
    'decoder': ([f'self_attn.{n}' for n in ATTENTION] +
                [f'cross_attn.{n}' for n in DEFORMABLE] + list(FFN)),
}


def stacks_of(model):
    return {path.split('.')[0]: stack
            for path, stack in find_lors_stacks(model)}


@pytest.mark.parametrize('family', ['DINO', 'DeformableDETR'])
def test_shared_weights_registered_once_and_used_by_every_layer(family):
    model = build_model(tiny_model_cfg(family, lors=LORS))
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names))
    assert len({id(p) for p in model.parameters()}) == len(names)
    stacks = stacks_of(model)
    assert sorted(stacks) == ['decoder', 'encoder']
    for part, stack in stacks.items():
        assert sorted(stack.plans) == sorted(PROJECTIONS[part])
        shared = [n for n in model.state_dict()
                  if n.startswith(f'{part}.lors_layers.shared.')]
        assert sorted(shared) == sorted(
            f'{part}.lors_layers.shared.0.{path}.weight'
            for path in PROJECTIONS[part])
        shared_ids = {id(p) for p in stack.parameters()}
        for layer in stack.layers:
            assert shared_ids.isdisjoint(id(p) for p in layer.parameters())
        for path in stack.plans:
            assert all(lors.shared is stack.shared_linear(0, path)
                       for lors in stack.lors_linears(path))


@pytest.mark.parametrize('family', ['DINO', 'DeformableDETR'])
def test_lors_init_is_reestablished_after_mmdet_init_weights(family):
    from mmcv.ops import MultiScaleDeformableAttention
    model = build_model(tiny_model_cfg(family, lors=LORS))
    stacks = stacks_of(model)
    for stack in stacks.values():
        for path in stack.plans:
            for lors in stack.lors_linears(path):
                assert torch.count_nonzero(lors.lors_B) == 0
                bound = 1 / lors.in_features**0.5  # kaiming-uniform(a=sqrt 5)
                assert lors.lors_A.abs().max() <= bound
    decoder = stacks['decoder']
    for part, attn in (('encoder', 'self_attn'), ('decoder', 'cross_attn')):
        for name in ('sampling_offsets', 'attention_weights'):
            weight = stacks[part].shared_linear(0, f'{attn}.{name}').weight
            assert torch.count_nonzero(weight) == 0  # mmcv's init
    # q/k/v: xavier over the packed (3E, E) in_proj_weight, as in mmdet.
    packed_bound = (6 / (4 * EMBED_DIMS))**0.5
    qkv = torch.cat([decoder.shared_linear(0, f'self_attn.attn.{n}').weight
                     for n in ('q_proj', 'k_proj', 'v_proj')])
    assert packed_bound * 0.9 < qkv.abs().max() <= packed_bound
    # The private biases get the stock init: mmcv's sampling grid...
    stock_attn = MultiScaleDeformableAttention(
        **tiny_layer_cfg()['cross_attn_cfg'])
    for layer in model.decoder.layers:
        assert isinstance(layer.cross_attn, MultiScaleDeformableAttention)
        assert isinstance(layer.cross_attn.sampling_offsets, LorsLinear)
        torch.testing.assert_close(layer.cross_attn.sampling_offsets.bias,
                                   stock_attn.sampling_offsets.bias)
        assert torch.count_nonzero(layer.cross_attn.attention_weights.bias) == 0
        assert torch.count_nonzero(layer.self_attn.attn.q_proj.bias) == 0
    # ... and nn.Linear's default FFN bias, one draw per layer.
    fc1 = decoder.lors_linears('ffn.layers.0.0')
    for lors in fc1:
        assert 0 < lors.bias.abs().max() <= 1 / lors.in_features**0.5
    assert not torch.equal(fc1[0].bias, fc1[1].bias)


@pytest.mark.parametrize('family,refine,two_stage', [
    ('DINO', True, True),
    ('DeformableDETR', False, False),
    ('DeformableDETR', True, False),
    ('DeformableDETR', True, True),
])
def test_train_step_reaches_shared_and_private_parts(family, refine,
                                                     two_stage):
    model = build_model(
        tiny_model_cfg(family, lors=LORS, with_box_refine=refine,
                       as_two_stage=two_stage))
    model.train()
    losses = model.loss(*tiny_batch(model, training=True))
    if family == 'DINO':
        assert 'dn_loss_cls' in losses  # denoising queries went through
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    loss.backward()
    for part, stack in stacks_of(model).items():
        for path in stack.plans:
            grad = stack.shared_linear(0, path).weight.grad
            assert grad is not None and grad.abs().sum() > 0, (part, path)
        # At init B = 0, so gradients reach B (not yet A) in every layer.
        for lors in stack.lors_linears('ffn.layers.1'):
            assert lors.lors_B.grad.abs().sum() > 0, part
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
        model = build_model(tiny_model_cfg(family, lors=LORS))
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        groups = wrapper.optimizer.param_groups
        ids = [id(p) for g in groups for p in g['params']]
        assert len(ids) == len(set(ids)) == len(list(model.parameters()))
        lr = cfg.optim_wrapper.optimizer.lr
        lr_of = {id(p): g['lr'] for g in groups for p in g['params']}
        decoder = stacks_of(model)['decoder']
        shared_offsets = decoder.shared_linear(0,
                                               'cross_attn.sampling_offsets')
        private_offsets = model.decoder.layers[2].cross_attn.sampling_offsets
        expected = 0.1 * lr if family == 'DeformableDETR' else lr
        assert lr_of[id(shared_offsets.weight)] == pytest.approx(expected)
        assert lr_of[id(private_offsets.lors_A)] == pytest.approx(expected)
        fc1 = decoder.shared_linear(0, 'ffn.layers.0.0')
        assert lr_of[id(fc1.weight)] == pytest.approx(lr)


# --------------------------------------------------------------------------
# configs and parameter reduction
# --------------------------------------------------------------------------
COCO_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs/lors_*/*_coco.py')))
COCO_CONFIGS = [c for c in COCO_CONFIGS if 'adamixer' not in c]
DECODER = dict(decoder=dict(rank=16, num_terms=1))
ENCODER_DECODER = dict(encoder=dict(rank=16, num_terms=1),
                       decoder=dict(rank=16, num_terms=1))
# Sparse R-CNN / QueryInst (configs/_base_/models/lors-sparse-rcnn_stages.py)
DYNAMIC_STAGES_ADAPTIVE = dict(core_size=16, adaptive_terms=[1, 1, 2, 2, 3, 3])
SPARSE_RCNN = dict(decoder=dict(
    include=['attention', 'instance_interactive_conv.fc_layer', 'ffn'],
    rank=16, adaptive=DYNAMIC_STAGES_ADAPTIVE))
QUERYINST = dict(SPARSE_RCNN, mask_decoder=dict(
    exclude=['*'], adaptive=DYNAMIC_STAGES_ADAPTIVE))
# variables of the shared _base_ file, not settings of the model
BASE_VARIABLES = ('lors_sparse_rcnn_stages', 'lors_queryinst_mask_stages')
# LORS config -> (mmdet's config it inherits, lors=)
MMDET_BASES = {
    'lors-dino-4scale_r50_8xb2-12e_coco.py':
    ('dino/dino-4scale_r50_8xb2-12e_coco.py', DECODER),
    'lors-dino-4scale_r50_8xb2-24e_coco.py':
    ('dino/dino-4scale_r50_8xb2-24e_coco.py', DECODER),
    'lors-dino-4scale_r50_8xb2-36e_coco.py':
    ('dino/dino-4scale_r50_8xb2-36e_coco.py', DECODER),
    'lors-encdec-dino-4scale_r50_8xb2-12e_coco.py':
    ('dino/dino-4scale_r50_8xb2-12e_coco.py', ENCODER_DECODER),
    'lors-deformable-detr_r50_16xb2-50e_coco.py':
    ('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', DECODER),
    'lors-deformable-detr-refine_r50_16xb2-50e_coco.py':
    ('deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py', DECODER),
    'lors-deformable-detr-refine-twostage_r50_16xb2-50e_coco.py':
    ('deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
     DECODER),
    'lors-encdec-deformable-detr_r50_16xb2-50e_coco.py':
    ('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
     ENCODER_DECODER),
    'lors-encdec-deformable-detr-refine_r50_16xb2-50e_coco.py':
    ('deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py',
     ENCODER_DECODER),
    'lors-encdec-deformable-detr-refine-twostage_r50_16xb2-50e_coco.py':
    ('deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
     ENCODER_DECODER),
    'lors-detr_r50_8xb2-150e_coco.py':
    ('detr/detr_r50_8xb2-150e_coco.py', DECODER),
    'lors-encdec-detr_r50_8xb2-150e_coco.py':
    ('detr/detr_r50_8xb2-150e_coco.py', ENCODER_DECODER),
    'lors-conditional-detr_r50_8xb2-50e_coco.py':
    ('conditional_detr/conditional-detr_r50_8xb2-50e_coco.py', DECODER),
    'lors-encdec-conditional-detr_r50_8xb2-50e_coco.py':
    ('conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
     ENCODER_DECODER),
    'lors-dab-detr_r50_8xb2-50e_coco.py':
    ('dab_detr/dab-detr_r50_8xb2-50e_coco.py', DECODER),
    'lors-encdec-dab-detr_r50_8xb2-50e_coco.py':
    ('dab_detr/dab-detr_r50_8xb2-50e_coco.py', ENCODER_DECODER),
    'lors-ddq-detr-4scale_r50_8xb2-12e_coco.py':
    ('ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py', DECODER),
    'lors-encdec-ddq-detr-4scale_r50_8xb2-12e_coco.py':
    ('ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py', ENCODER_DECODER),
    'lors-sparse-rcnn_r50_fpn_1x_coco.py':
    ('sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py', SPARSE_RCNN),
    'lors-sparse-rcnn_r50_fpn_300-proposals_crop-ms-480-800-3x_coco.py':
    ('sparse_rcnn/'
     'sparse-rcnn_r50_fpn_300-proposals_crop-ms-480-800-3x_coco.py',
     SPARSE_RCNN),
    'lors-queryinst_r50_fpn_1x_coco.py':
    ('queryinst/queryinst_r50_fpn_1x_coco.py', QUERYINST),
    'lors-queryinst_r50_fpn_300-proposals_crop-ms-480-800-3x_coco.py':
    ('queryinst/queryinst_r50_fpn_300-proposals_crop-ms-480-800-3x_coco.py',
     QUERYINST),
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
    base, expected_lors = MMDET_BASES[osp.basename(config)]
    cfg = Config.fromfile(config)
    stock = Config.fromfile(
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', base))
    lors_dict = without_scope(cfg.to_dict())
    lors_dict.pop('custom_imports')
    for name in BASE_VARIABLES:
        lors_dict.pop(name, None)
    model = lors_dict['model']
    assert model.pop('type') == 'Lors' + stock.model.type
    assert model.pop('lors') == expected_lors
    model['type'] = stock.model.type
    # our runtime hooks (atomic checkpoints, exact resumption: test_configs_runtime.py)
    checkpoint = lors_dict['default_hooks']['checkpoint']
    assert checkpoint.pop('type') == 'AtomicCheckpointHook'
    checkpoint['type'] = stock.default_hooks.checkpoint.type
    assert lors_dict.pop('custom_hooks') == [dict(type='RNGStateHook')]
    assert lors_dict == stock.to_dict()  # nothing else changed
    if 'dino' in config or 'deformable' in config:  # the others: 'config' in
        cfg.model.backbone.init_cfg = None          # test_detr_stacks.py
        built = build_model(cfg.model)
        assert type(built).__name__ == cfg.model.type


@pytest.mark.parametrize('family,config', [
    ('DINO', 'configs/lors_dino/lors-encdec-dino-4scale_r50_8xb2-12e_coco.py'),
    ('DeformableDETR', 'configs/lors_deformable_detr/'
     'lors-encdec-deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'),
])
def test_transformer_parameters_at_most_35_percent_of_stock(family, config):
    """The project's goal (at most 35% of stock), counted from the built
    models, and the counts of the accounting (shared + private) equal a count by formula."""
    from mmdet.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, config))
    cfg.model.backbone.init_cfg = None
    stock_cfg = copy.deepcopy(cfg.model)
    stock_cfg.type = STOCK_TYPES[family]
    stock_cfg.pop('lors')
    stock = MODELS.build(stock_cfg)
    lors = build_model(cfg.model)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    for part in ('encoder', 'decoder'):
        stack = stacks_of(lors)[part]
        stock_layers = getattr(stock, part).layers
        saved = 0
        for path in stack.plans:
            lors_linear = stack.lors_linears(path)[0]
            n_in, n_out = lors_linear.in_features, lors_linear.out_features
            layers = len(stack.layers)
            # N dense matrices -> one shared + N rank-16 pairs
            saved += (layers - 1) * n_in * n_out - layers * 16 * (n_in + n_out)
        assert count(getattr(stock, part)) - count(getattr(lors, part)) \
            == saved, part
        assert len(stock_layers) == 6
    transformer = count(lors.encoder) + count(lors.decoder)
    stock_transformer = count(stock.encoder) + count(stock.decoder)
    assert transformer <= 0.35 * stock_transformer


@pytest.mark.parametrize('stock_config,lors_config', [
    ('configs/dino/dino-4scale_r18-tiny_1xb8-toy_synthetic.py',
     'configs/lors_dino/lors-dino-4scale_r18-tiny_1xb8-toy_synthetic.py'),
    ('configs/dino/dino-4scale_r18-tiny_1xb8-toy_synthetic.py',
     'configs/lors_dino/lors-encdec-dino-4scale_r18-tiny_1xb8-toy_synthetic.py'),
    ('configs/deformable_detr/'
     'deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py',
     'configs/lors_deformable_detr/'
     'lors-deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py'),
])
def test_toy_configs_differ_only_by_lors(stock_config, lors_config):
    stock_cfg = Config.fromfile(osp.join(ROOT, stock_config))
    lors_cfg = Config.fromfile(osp.join(ROOT, lors_config))
    lors_dict = lors_cfg.to_dict()
    lors_dict['model']['type'] = lors_dict['model']['type'][len('Lors'):]
    parts = lors_dict['model'].pop('lors')
    assert lors_dict == stock_cfg.to_dict()
    for cfg in (stock_cfg, lors_cfg):  # the pretrained toy backbone is not needed here
        cfg.model.backbone.init_cfg = None
    stock = build_model(stock_cfg.model)
    lors = build_model(lors_cfg.model)
    layers = tuple(f'{part}.layers.' for part in parts)
    shared = tuple(f'{part}.lors_layers.' for part in parts)
    stock_params = {n: p.shape for n, p in stock.named_parameters()
                    if not n.startswith(layers)}
    lors_params = {n: p.shape for n, p in lors.named_parameters()
                   if not n.startswith(layers + shared)}
    assert stock_params == lors_params


# --------------------------------------------------------------------------
# bad input, per-layer settings
# --------------------------------------------------------------------------
@pytest.mark.parametrize('lors,error,match', [
    (dict(decoder=dict(rank=0)), ValueError, r'lors\.decoder\.rank must be'),
    (dict(decoder=dict(rank=300)), ValueError,
     r'lors\.decoder\.rank: rank 300 x num_terms 1 of layer 0 exceeds'),
    (dict(decoder=dict(rank=4, ranks={'cross_attn.attention_weights': 129})),
     ValueError, r"ranks\['cross_attn.attention_weights'\]: rank 129"),
    (dict(decoder=dict(rank=[4, 4])), ValueError,
     r'lors\.decoder\.rank must have one entry per layer'),
    (dict(encoder=dict(num_terms=[1, 2, 3])), ValueError,
     r'lors\.encoder\.num_terms must have one entry per layer \(num_layers=2'),
    (dict(decoder=dict(rank='full', num_terms=2)), ValueError,
     r"'full' needs num_terms"),
    (dict(decoder=dict(rank=4, ranks={'cross_attn.sampling_offset': 4})),
     ValueError, r"pattern 'cross_attn.sampling_offset' matches no"),
    (dict(decoder=dict(rank=4, rnak=4)), ValueError, r"unknown key.*rnak"),
    (dict(decoder=dict(layer_groups=2)), ValueError,
     r'lors\.decoder\.layer_groups=2 must divide the number of layers \(3\)'),
    (dict(decoder=dict(rank=2.5)), ValueError, r'positive int.*2\.5'),
    (dict(decoder=dict(adaptive=dict(projections=['ffn.fc1']))), ValueError,
     r"unknown key\(s\) \['projections'\] in lors\.decoder\.adaptive"),
    ('rank16', TypeError, r'lors must be a dict'),
])
def test_bad_lors_config_raises_clear_error(lors, error, match):
    with pytest.raises(error, match=match):
        build_model(tiny_model_cfg('DeformableDETR', lors=lors))


def test_per_layer_ranks_and_terms_reach_the_layers():
    model = build_model(tiny_model_cfg('DINO', lors=dict(decoder=dict(
        rank=[2, 4, 8], num_terms=[1, 1, 2],
        ranks={'cross_attn.attention_weights': [8, 'full', 2],
               'ffn.*': [1, 2, 3]}))))
    stack = stacks_of(model)['decoder']
    ranks = {path: [(m.rank, m.num_terms) for m in stack.lors_linears(path)]
             for path in stack.plans}
    assert ranks['self_attn.attn.q_proj'] == [(2, 1), (4, 1), (8, 2)]
    assert ranks['ffn.layers.1'] == [(1, 1), (2, 1), (3, 2)]
    # 'full' = min(in, out) = 8 heads x 2 levels x 2 points
    assert ranks['cross_attn.attention_weights'] == [(8, 1), (32, 1), (2, 2)]


# --------------------------------------------------------------------------
# deformable attention op: mmcv's choice of implementation
# --------------------------------------------------------------------------
def test_cpu_uses_mmcv_pytorch_deformable_attention(monkeypatch):
    import mmcv.ops.multi_scale_deform_attn as msda
    calls = []
    original = msda.multi_scale_deformable_attn_pytorch

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(msda, 'multi_scale_deformable_attn_pytorch', spy)
    model = build_model(tiny_model_cfg('DeformableDETR', lors=LORS)).eval()
    with torch.no_grad():
        model.predict(*tiny_batch(model, training=False))
    assert len(calls) == ENCODER_LAYERS + 3  # encoder, decoder layers


@pytest.mark.cuda
def test_cuda_uses_compiled_op_and_matches_cpu(monkeypatch):
    import mmcv.ops.multi_scale_deform_attn as msda
    from lors_mmdet import compat
    if compat.pytorch_ops_active():
        pytest.skip('mmcv has no CUDA kernels here: compat routes to PyTorch')
    model = build_model(tiny_model_cfg('DeformableDETR', lors=LORS,
                                       with_box_refine=True)).eval()
    randomize_(model.decoder, scale=0.02)
    inputs, samples = tiny_batch(model, training=False)
    with torch.no_grad():
        expected = model(inputs, samples, mode='tensor')
    calls = []
    original = msda.MultiScaleDeformableAttnFunction.apply

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(msda.MultiScaleDeformableAttnFunction, 'apply', spy)
    model.cuda()  # the shared weights live on the encoder / decoder
    actual = model(inputs.cuda(), samples, mode='tensor')
    assert calls
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.cpu(), e, atol=1e-4, rtol=1e-4)
    sum(a.sum() for a in actual).backward()  # the compiled backward runs too
    stack = stacks_of(model)['decoder']
    assert stack.shared_linear(0, 'cross_attn.sampling_offsets').weight.grad \
        is not None


def test_merged_for_deployment_is_the_stock_model_with_the_same_outputs():
    """The benchmark's merge (in the package): a copy with stock modules and
    the LORS model's function; the LORS model is left as it is."""
    from lors_mmdet.analysis import merged_for_deployment
    model = build_model(tiny_model_cfg('DINO', lors=LORS)).eval()
    randomize_(model.encoder, scale=0.02, seed=1)
    randomize_(model.decoder, scale=0.02, seed=2)
    merged = merged_for_deployment(model)
    assert find_lors_stacks(merged) == []
    assert not any(isinstance(m, LorsLinear) for m in merged.modules())
    assert len(find_lors_stacks(model)) == 2
    stock = build_model(tiny_model_cfg('DINO'))
    stock.load_state_dict(merged.state_dict())  # strict: stock keys
    inputs, samples = tiny_batch(model, training=False)
    with torch.no_grad():
        expected = model(inputs, samples, mode='tensor')
        actual = merged(inputs, samples, mode='tensor')
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
