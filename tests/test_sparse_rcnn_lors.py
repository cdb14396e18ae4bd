"""LORS Sparse R-CNN and QueryInst: mmdet's own detectors, their RoI-head stages
made LORS by the surgery (static targets and the DynamicConv generator as an
adaptive target); counts, exact merge back to mmdet's stock detector (float64),
exact conversion from stock weights at full rank."""
import copy

import pytest
import torch

import lors_mmdet  # noqa: F401  (registers the LORS classes, declares DynamicConv)
from lors_mmdet.apis import build_model, load_config
from lors_mmdet.lors import LorsGeneratedLinear, init_as_stock, merge_lors
from mmdet.structures import DetDataSample

SPARSE = 'mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py'
QUERYINST = 'mmdet::queryinst/queryinst_r50_fpn_1x_coco.py'
ADAPTIVE = dict(core_size=4, adaptive_terms=[1, 1, 2, 2, 3, 3])


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(config: str, lors=None):
    """mmdet's R-50 config made small: ResNet-18, 5 proposals, FFN 64, dynamic
    conv with 8 feature channels (everything else mmdet's)."""
    model = copy.deepcopy(load_config(config).model)
    model.backbone.update(depth=18, init_cfg=None)
    model.neck.in_channels = [64, 128, 256, 512]
    model.rpn_head.num_proposals = 5
    model.test_cfg.rcnn.max_per_img = 5
    for stage in model.roi_head.bbox_head:
        stage.feedforward_channels = 64
        stage.dynamic_conv_cfg.feat_channels = 8
    for stage in model.roi_head.get('mask_head') or []:
        stage.dynamic_conv_cfg.feat_channels = 8
    if lors is not None:
        model.type = 'Lors' + model.type
        model.lors = lors
    return model


def build(config: str, lors=None):
    """The tiny model, initialised as for training (the proposals' boxes too)."""
    torch.manual_seed(0)
    model = build_model(tiny(config, lors))
    model.init_weights()
    return model


def randomise_(model, seed: int = 1) -> None:
    """Every tensor of the RoI head different (stages, private parts), as after
    training; the box regression stays mild so that the boxes stay boxes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.roi_head.named_parameters():
            scale = 0.002 if '.fc_reg.' in name else 0.05
            param.add_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * scale)


def batch(model, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sizes = ((64, 96), (48, 64))
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
              for h, w in sizes]
    samples = [DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                           batch_input_shape=(64, 96),
                                           scale_factor=(1.0, 1.0)))
               for h, w in sizes]
    return model.data_preprocessor(dict(inputs=inputs, data_samples=samples), False)


def stage_outputs(model, data) -> list:
    """Every stage's class scores, boxes and object features (the refinement the
    stages compute) and, for QueryInst, its mask predictions, from the same
    proposals."""
    from mmdet.structures.bbox import bbox2roi
    outputs = []
    metas = [s.metainfo for s in data['data_samples']]
    with torch.no_grad():
        feats = model.extract_feat(data['inputs'])
        proposals = model.rpn_head.predict(feats, data['data_samples'])
        boxes = [p.bboxes for p in proposals]
        object_feats = torch.cat([p.features[None] for p in proposals])
        for stage in range(model.roi_head.num_stages):
            results = model.roi_head._bbox_forward(stage, feats, bbox2roi(boxes),
                                                   object_feats, metas)
            rois = bbox2roi(boxes)  # the boxes this stage refined
            object_feats = results['object_feats']
            boxes = results['detached_proposals']
            outputs.append((results['cls_score'], torch.cat(boxes), object_feats))
            if model.roi_head.with_mask:
                outputs.append((model.roi_head._mask_forward(
                    stage, feats, rois, results['attn_feats'])['mask_preds'], ))
    return outputs


def max_difference(a, b) -> float:
    """Largest difference of any output, relative to that output's largest value."""
    return max(((x - y).abs().max() / x.abs().max().clamp_min(1e-12)).item()
               for sa, sb in zip(a, b) for x, y in zip(sa, sb))


def test_counts_of_mmdets_r50_sparse_rcnn():
    """The stock counts (mmdet's config) and LORS at rank 16 with the adaptive
    generator (k=16, K=[1,1,2,2,3,3]): the RoI head at <= 35% of the stock one."""
    cfg = load_config(SPARSE).model
    stock = build_model(cfg)
    assert count(stock) == 106_290_888
    assert count(stock.roi_head) == 79_412_472
    assert count(stock.roi_head.bbox_head[0].instance_interactive_conv) == 11_634_048
    lors_cfg = copy.deepcopy(cfg)
    lors_cfg.type = 'LorsSparseRCNN'
    lors_cfg.lors = dict(decoder=dict(rank=16, adaptive=dict(
        core_size=16, adaptive_terms=[1, 1, 2, 2, 3, 3])))
    lors = build_model(lors_cfg)
    print(f'LORS Sparse R-CNN R-50: roi_head {count(lors.roi_head):,} '
          f'({count(lors.roi_head) / count(stock.roi_head):.1%} of stock), total '
          f'{count(lors):,}')
    assert count(lors.roi_head) <= 0.35 * count(stock.roi_head)
    (path, stack), = lors.lors_stacks()
    assert path == 'roi_head.lors_bbox_head'
    assert sorted(stack.plans) == sorted([
        'attention.attn.q_proj', 'attention.attn.k_proj', 'attention.attn.v_proj',
        'attention.attn.out_proj', 'instance_interactive_conv.fc_layer',
        'ffn.layers.0.0', 'ffn.layers.1'])
    assert list(stack.adaptive_plans) == ['instance_interactive_conv.dynamic_layer']
    for stage in lors.roi_head.bbox_head:
        assert isinstance(stage.instance_interactive_conv.dynamic_layer,
                          LorsGeneratedLinear)


@pytest.mark.parametrize('adaptive', [None, ADAPTIVE])
def test_merge_gives_mmdets_stock_sparse_rcnn_float64(adaptive):
    decoder = dict(rank=4, include=['*'])
    if adaptive:
        decoder['adaptive'] = adaptive
    model = build(SPARSE, dict(decoder=decoder))
    randomise_(model)
    model.double().eval()
    stock = build(SPARSE).double().eval()
    merged = copy.deepcopy(model)
    assert merge_lors(merged) == 1
    assert list(merged.state_dict()) == list(stock.state_dict())
    stock.load_state_dict(merged.state_dict(), strict=True)
    data = batch(model)
    worst = max_difference(stage_outputs(model, data), stage_outputs(stock, data))
    print(f'adaptive={bool(adaptive)}: merged vs LORS, max relative diff {worst:.2e}')
    assert worst < 1e-9
    # the private parts matter: without them the stages compute something else
    shared_only = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in shared_only.named_parameters():
            if 'lors_B' in name or 'lors_core_generator' in name:
                param.zero_()
    assert max_difference(stage_outputs(shared_only, data),
                          stage_outputs(model, data)) > 1e-3


def test_full_rank_from_stock_weights_gives_the_stock_predictions_float64():
    """init='dense' at rank 'full' from a stock model whose stages differ:
    shared = their mean, each private residual the exact rest (static targets)."""
    stock = build(SPARSE)
    randomise_(stock)
    stock.double().eval()
    model = build(SPARSE, dict(decoder=dict(rank='full', init='dense')))
    model.double().eval()
    with init_as_stock(model):
        model.load_state_dict(stock.state_dict(), strict=True)
    (_, stack), = model.lors_stacks()
    assert all(max(lors.lors_B.abs().max() for lors in stack.lors_linears(p)) > 0
               for p in stack.plans)
    data = batch(stock)
    worst = max_difference(stage_outputs(stock, data), stage_outputs(model, data))
    print(f'full rank from stock: max relative diff {worst:.2e}')
    assert worst < 1e-9


def test_queryinst_box_and_mask_stages_merge_into_mmdets_queryinst():
    lors = dict(decoder=dict(rank=4, adaptive=ADAPTIVE),
                mask_decoder=dict(adaptive=ADAPTIVE))
    model = build(QUERYINST, lors)
    paths = [path for path, _ in model.lors_stacks()]
    assert paths == ['roi_head.lors_bbox_head', 'roi_head.lors_mask_head']
    mask_stack = dict(model.lors_stacks())['roi_head.lors_mask_head']
    assert mask_stack.plans == {}
    assert list(mask_stack.adaptive_plans) == ['instance_interactive_conv.dynamic_layer']
    randomise_(model)
    stock = build(QUERYINST)
    merged = copy.deepcopy(model)
    assert merge_lors(merged) == 2
    assert list(merged.state_dict()) == list(stock.state_dict())
    stock.load_state_dict(merged.state_dict(), strict=True)
    assert count(model.roi_head) < count(stock.roi_head)


def test_errors_name_the_key():
    with pytest.raises(ValueError, match=r'lors\.encoder: Sparse R-CNN has no encoder'):
        build_model(tiny(SPARSE, dict(encoder=dict(rank=4))))
    with pytest.raises(ValueError, match=r'lors\.mask_decoder'):
        build_model(tiny(QUERYINST, dict(mask_decoder=dict(rank=4))))


# --------------------------------------------------------------------------
# Compression of trained Sparse R-CNN / QueryInst (tools/compress.py's model side)
# --------------------------------------------------------------------------
def test_compressing_sparse_rcnn_shares_every_projection_and_is_exact_at_full_rank():
    """The stages' projections, the dynamic convolutions' generators included, become
    shared + private residuals from the trained weights: exact at full rank; at an
    energy target LorsSparseRCNN built from the written lors dict loads the state
    strictly and computes what the compressed model computes."""
    from lors_mmdet.models.compression import (compress_model, parameter_counts,
                                              stacks_key)
    stock = build(SPARSE)
    randomise_(stock)
    stock.double().eval()
    assert stacks_key(stock) == 'roi_head'
    before = parameter_counts(stock)
    assert list(before) == ['roi_head', 'total']
    assert before['roi_head'] == count(stock.roi_head)
    data = batch(stock)
    expected = stage_outputs(stock, data)

    full = copy.deepcopy(stock)
    lors, choices, _ = compress_model(full, ['decoder'], 'full')
    assert lors['decoder']['include'] == ['*']
    assert {'instance_interactive_conv.dynamic_layer', 'instance_interactive_conv.fc_layer',
            'attention.attn.q_proj', 'ffn.layers.1', 'fc_cls'} <= set(choices['decoder'])
    worst = max_difference(expected, stage_outputs(full, data))
    print(f'compressed at full rank: max relative diff {worst:.2e}')
    assert worst < 1e-9

    small = copy.deepcopy(stock)
    lors, choices, _ = compress_model(small, ['decoder'], energy=0.7)
    assert min(c.min_kept_energy for c in choices['decoder'].values()) >= 0.7
    got = stage_outputs(small, data)
    assert max_difference(expected, got) > 1e-4  # truncated: not the stock model
    rebuilt = build(SPARSE, lors).double().eval()
    rebuilt.load_state_dict(small.state_dict())  # strict
    assert max_difference(got, stage_outputs(rebuilt, data)) == 0
    after = parameter_counts(rebuilt)
    assert after['roi_head'] < before['roi_head']
    assert after['total'] - after['roi_head'] == before['total'] - before['roi_head']


def test_compressing_queryinst_box_and_mask_stages_is_exact_at_full_rank():
    from lors_mmdet.models.compression import compress_model, stack_location
    stock = build(QUERYINST)
    randomise_(stock)
    stock.double().eval()
    data = batch(stock)

    expected = stage_outputs(stock, data)
    assert len(expected) == 12  # boxes and masks of 6 stages
    lors, choices, _ = compress_model(stock, ['decoder', 'mask_decoder'], 'full')
    assert list(choices['mask_decoder']) == ['instance_interactive_conv.dynamic_layer']
    assert lors['mask_decoder'].get('exclude') == []  # QueryInst's default excludes all
    worst = max_difference(expected, stage_outputs(stock, data))
    print(f'QueryInst compressed at full rank: max relative diff {worst:.2e}')
    assert worst < 1e-9
    rebuilt = build(QUERYINST, lors).double().eval()
    rebuilt.load_state_dict(stock.state_dict())  # strict
    with pytest.raises(ValueError, match='QueryInst has no encoder stack'):
        stack_location(stock, 'encoder')
    # in inference only the last mask stage runs: calibration says which saw nothing
    from lors_mmdet.models.compression import input_statistics
    raw = dict(inputs=[x for x in torch.randint(0, 256, (1, 3, 64, 96),
                                                dtype=torch.uint8)],
               data_samples=data['data_samples'][:1])
    fresh = build(QUERYINST).eval()
    with torch.no_grad():  # boxes stay the proposals (the whole image): valid masks
        for stage in fresh.roi_head.bbox_head:
            stage.fc_reg.weight.zero_()
            stage.fc_reg.bias.zero_()
    with pytest.raises(ValueError, match=r'mask_decoder instance_interactive_conv'
                       r'\.dynamic_layer layer 0, .*without --calibrate'):
        input_statistics(fresh, ['mask_decoder'], [raw], 1, progress=False)


def test_compress_command_on_the_toy_sparse_rcnn(synthetic_coco_factory, tmp_path):
    """compress() from a stock checkpoint of the toy Sparse R-CNN config, calibrated
    on its own train dataloader, under a budget of its RoI head: the written config
    builds LorsSparseRCNN, loads the written checkpoint strictly, and the report
    names the RoI head."""
    from lors_mmdet.apis import (compress, format_compression, read_checkpoint,
                                 save_checkpoint)
    root = synthetic_coco_factory(num_train=16, num_val=4, img_size=64)
    config = 'configs/sparse_rcnn/sparse-rcnn_r18-tiny_1xb8-toy_synthetic.py'
    torch.manual_seed(0)
    stock = build_model(load_config(config).model)
    stock.init_weights()  # mmdet's init (the proposals' boxes); stages differ
    checkpoint = str(tmp_path / 'stock.pth')
    save_checkpoint(stock.state_dict(), {}, checkpoint)
    result = compress(config, checkpoint, str(tmp_path / 'out'), parts=['decoder'],
                      calibrate=2, budget=0.5,
                      cfg_options={'train_dataloader.dataset.data_root': root,
                                   'train_dataloader.batch_size': 2})
    assert result.lors_type == 'LorsSparseRCNN' and result.stacks_key == 'roi_head'
    assert result.params_after['roi_head'] <= 0.5 * result.params_before['roi_head']
    errors = result.output_errors['decoder']['instance_interactive_conv.dynamic_layer']
    assert len(errors) == 6 and all(0 <= e < 1 for e in errors)
    report = format_compression(result)
    assert 'roi_head' in report and 'transformer' not in report
    cfg = load_config(result.config)
    assert cfg.model.type == 'LorsSparseRCNN'
    model = build_model(cfg.model)
    state, _ = read_checkpoint(result.checkpoint)
    model.load_state_dict(state)  # strict
    with pytest.raises(ValueError, match='distillation .* DETR family'):
        compress(config, checkpoint, str(tmp_path / 'kd'), rank=4,
                 distill=dict(weight=1.0))
    with pytest.raises(ValueError, match=r"--stacks\) of LorsSparseRCNN must be some "
                       r"of \['decoder'\]"):
        compress(config, checkpoint, str(tmp_path / 'enc'), parts=['encoder'], rank=4)
