"""Exact merge of LORS-AdaMixer into a plain AdaMixer of the same geometry
(the surgery's merge_lors; the adaptive generators fold in float64):
identical detections in float64, the plain config, and the tool
(tools/convert_checkpoint.py to-stock --out-config) followed by mmdet's own
tools/test.py."""
import copy
import os
import os.path as osp
import subprocess
import sys

import mmdet
import pytest
import torch
from mmengine.config import Config

from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from lors_mmdet.apis.conversion import lors_and_stock_model_cfgs
from lors_mmdet.lors import merge_lors

register_all_modules(init_default_scope=True)
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = osp.join(ROOT, 'configs/lors_adamixer/'
               'lors-adamixer_r18-tiny_1xb16-toy_synthetic.py')
PUBLISHED = osp.join(ROOT, 'configs/lors_adamixer/'
                     'lors-adamixer_r50_8xb2-1x-100q_coco.py')
GENERATOR = 'adaptive_mixing.parameter_generator'


def plain_adamixer_config(cfg: Config) -> Config:
    """The stock config of a LORS config (what to-stock --out-config writes)."""
    plain = copy.deepcopy(cfg)
    plain.model = lors_and_stock_model_cfgs(cfg)[1]
    return plain


def trained_like_lors_toy() -> tuple:
    """The toy LORS-AdaMixer with every LORS tensor non-zero (as after
    training: at init the private residuals are zero and would merge
    trivially)."""
    cfg = Config.fromfile(TOY)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        decoder = model.roi_head
        shared = decoder.lors_bbox_head.shared_generator(0, GENERATOR)
        for param in shared.parameters():
            param.normal_(std=0.05)
        for stage in decoder.bbox_head:
            mixing = stage.adaptive_mixing
            core_generator = mixing.parameter_generator.lors_core_generator
            for param in (core_generator.weight, core_generator.bias,
                          mixing.out_proj.lors_B, mixing.out_proj.bias):
                param.normal_(std=0.1)
    return cfg, model


def batch(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8,
                            generator=gen) for h, w in ((96, 128), (64, 80))]
    samples = [DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                           scale_factor=(1.0, 1.0)))
               for h, w in ((96, 128), (64, 80))]
    return model.data_preprocessor(dict(inputs=inputs, data_samples=samples),
                                   False)


def test_merged_plain_adamixer_gives_identical_detections_float64():
    cfg, lors = trained_like_lors_toy()
    lors.double().eval()
    merged_model = copy.deepcopy(lors)
    assert merge_lors(merged_model) == 1
    merged = merged_model.state_dict()
    plain_cfg = plain_adamixer_config(cfg)
    plain = MODELS.build(plain_cfg.model).double().eval()
    assert type(plain.roi_head).__name__ == 'AdaMixerDecoder'
    assert all(type(stage).__name__ == 'AdaMixerDecoderStage'
               for stage in plain.roi_head.bbox_head)
    plain.load_state_dict(merged, strict=True)
    # a plain model: no LORS module, no shared tensor left
    assert not any('lors' in key or 'shared' in key for key in merged)

    data = batch(lors)
    with torch.no_grad():
        feats = lors.extract_feat(data['inputs'])
        queries = lors.rpn_head.predict(feats, data['data_samples'])
        stages_lors = lors.roi_head.forward(feats, queries,
                                            data['data_samples'])
        stages_plain = plain.roi_head.forward(
            plain.extract_feat(data['inputs']), queries, data['data_samples'])
        dets_lors = lors.predict(data['inputs'], data['data_samples'])
        dets_plain = plain.predict(data['inputs'], data['data_samples'])
    worst = 0.0
    for a, b in zip(stages_lors, stages_plain):
        for key in ('cls_score', 'bboxes', 'content'):
            worst = max(worst, (a[key] - b[key]).abs().max().item())
    # the private residuals matter: the shared parts alone differ clearly
    assert (stages_lors[-1]['content'] -
            stages_lors[-1]['content'].mean()).abs().max() > 0.1
    print(f'merged vs LORS, max abs diff of every stage output: {worst:.2e}')
    assert worst < 1e-10
    for a, b in zip(dets_lors, dets_plain):
        a, b = a.pred_instances, b.pred_instances
        order_a, order_b = a.scores.argsort(), b.scores.argsort()
        assert torch.equal(a.labels[order_a], b.labels[order_b])
        torch.testing.assert_close(a.scores[order_a], b.scores[order_b],
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(a.bboxes[order_a], b.bboxes[order_b],
                                   rtol=0, atol=1e-9)


def test_published_config_merges_into_adamixer_of_the_same_geometry():
    plain = plain_adamixer_config(Config.fromfile(PUBLISHED))
    roi_head = plain.model.roi_head
    assert roi_head.type == 'AdaMixerDecoder'
    assert (roi_head.n_groups, roi_head.in_points, roi_head.out_points) == \
        (2, 64, 128)
    assert roi_head.bbox_head.type == 'AdaMixerDecoderStage'
    assert plain.model.type == 'AdaMixer' and 'lors' not in plain.model
    with pytest.raises(ValueError, match='the config has no model.lors'):
        plain_adamixer_config(plain)


def data_options(data_root: str) -> list:
    ann = data_root + 'annotations/instances_val.json'
    return [f'{split}_dataloader.dataset.data_root={data_root}'
            for split in ('train', 'val', 'test')] + [
                f'val_evaluator.ann_file={ann}',
                f'test_evaluator.ann_file={ann}']


def test_merge_tool_output_runs_with_mmdets_own_test_script(
        tmp_path, synthetic_coco_factory):
    data_root = synthetic_coco_factory(num_train=16, num_val=8, img_size=64,
                                       seed=0)
    _, lors = trained_like_lors_toy()
    checkpoint = tmp_path / 'lors.pth'
    torch.save(dict(state_dict=lors.state_dict(), meta=dict(epoch=3)),
               checkpoint)
    out_config, out_checkpoint = tmp_path / 'plain.py', tmp_path / 'plain.pth'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)

    def run(args):
        result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + \
            result.stderr[-3000:]
        return result.stdout + result.stderr

    out = run(['tools/convert_checkpoint.py', 'to-stock', TOY,
               str(checkpoint), str(out_checkpoint), '--out-config',
               str(out_config)])
    assert 'AdaMixer decoder parameters:' in out
    merged = torch.load(out_checkpoint, weights_only=True)
    assert merged['meta']['lors_conversion']['direction'] == 'to-stock'
    assert merged['meta']['lors_conversion']['model_type'] == 'AdaMixer'
    assert merged['meta']['epoch'] == 3
    assert {key.split('.')[2] for key in merged['state_dict']
            if key.startswith('roi_head.bbox_head.')} == {'0', '1', '2'}
    plain_cfg = Config.fromfile(str(out_config))
    assert plain_cfg.model.type == 'AdaMixer' and 'lors' not in plain_cfg.model
    roi_head = plain_cfg.model.roi_head
    assert (roi_head.n_groups, roi_head.in_points, roi_head.out_points,
            roi_head.num_stages) == (4, 16, 32, 3)
    mmdet_test = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools',
                          'test.py')
    out = run([mmdet_test, str(out_config), str(out_checkpoint),
               '--work-dir', str(tmp_path / 'work'), '--cfg-options',
               *data_options(data_root)])
    assert 'coco/bbox_mAP' in out
