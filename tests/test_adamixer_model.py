"""AdaMixer and LORS-AdaMixer detectors built from the toy configs: init,
loss, predict, padded batches, images without objects."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from lors_mmdet.models.adamixer import xyzr_to_xyxy

register_all_modules(init_default_scope=True)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_CONFIGS = {
    'adamixer': 'configs/adamixer/adamixer_r18-tiny_1xb16-toy_synthetic.py',
    'lors': 'configs/lors_adamixer/lors-adamixer_r18-tiny_1xb16-toy_synthetic.py',
}


def load_cfg(name: str) -> Config:
    return Config.fromfile(osp.join(ROOT, TOY_CONFIGS[name]))


def build_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS.build(load_cfg(name).model)
    model.init_weights()
    return model


@pytest.fixture(scope='module', params=sorted(TOY_CONFIGS))
def detector(request):
    return request.param, build_model(request.param)


def make_sample(h: int, w: int, num_gt: int, scale: float = 1.0,
                seed: int = 0) -> DetDataSample:
    gen = torch.Generator().manual_seed(seed)
    sample = DetDataSample(
        metainfo=dict(
            img_shape=(h, w),
            ori_shape=(round(h / scale), round(w / scale)),
            scale_factor=(scale, scale)))
    xy = torch.rand(num_gt, 2, generator=gen) * torch.tensor([w, h]) * 0.6
    wh = torch.rand(num_gt, 2, generator=gen) * torch.tensor([w, h]) * 0.3 + 4
    sample.gt_instances = InstanceData(
        bboxes=torch.cat([xy, xy + wh], -1),
        labels=torch.randint(0, 6, (num_gt, ), generator=gen))
    return sample


def make_batch(model, shapes_and_gts, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
        for h, w, _ in shapes_and_gts
    ]
    samples = [
        make_sample(h, w, n, seed=seed + i)
        for i, (h, w, n) in enumerate(shapes_and_gts)
    ]
    return model.data_preprocessor(
        dict(inputs=inputs, data_samples=samples), True)


def total_loss(losses: dict) -> torch.Tensor:
    return sum(value for key, value in losses.items() if 'loss' in key)


def test_init_follows_adamixer(detector):
    name, model = detector
    for stage in model.roi_head.bbox_head:
        assert stage.fc_reg.weight.abs().max() == 0
        assert stage.fc_reg.bias.abs().max() == 0
        assert stage.sampling_offset_generator.weight.abs().max() == 0
        bias = stage.sampling_offset_generator.bias.view(
            stage.n_groups, stage.in_points, 3)
        assert torch.all(bias[..., 2] == -1)
        assert bias[..., :2].abs().max() <= 0.5
        assert 0 <= stage.iof_tau.min() and stage.iof_tau.max() <= 4
        # focal-loss prior 0.01
        torch.testing.assert_close(stage.fc_cls.bias.sigmoid(),
                                   torch.full_like(stage.fc_cls.bias, 0.01))
        mixing = stage.adaptive_mixing
        if name == 'adamixer':
            assert mixing.parameter_generator.weight.abs().max() == 0
            assert mixing.parameter_generator.bias.abs().max() > 0
        else:
            core = mixing.parameter_generator.lors_core_generator
            assert core.weight.abs().max() == 0 and core.bias.abs().max() == 0
            assert mixing.out_proj.lors_B.abs().max() == 0
            assert mixing.out_proj.bias.abs().max() == 0
    if name == 'lors':
        stack = model.roi_head.lors_bbox_head
        shared = stack.shared_generator(
            0, 'adaptive_mixing.parameter_generator').generator
        assert shared.weight.abs().max() == 0 and shared.bias.abs().max() > 0


def test_initial_queries_cover_each_unpadded_image(detector):
    _, model = detector
    data = make_batch(model, [(96, 128, 2), (64, 80, 1)])
    feats = model.extract_feat(data['inputs'])
    queries = model.rpn_head.predict(feats, data['data_samples'])
    assert len(queries) == 2
    num_query = model.rpn_head.num_query
    for res, (h, w) in zip(queries, [(96, 128), (64, 80)]):
        assert res.xyzr.shape == (num_query, 4)
        torch.testing.assert_close(
            xyzr_to_xyxy(res.xyzr),
            torch.tensor([[0., 0., w, h]]).expand(num_query, 4),
            atol=1e-4,
            rtol=1e-5)
        torch.testing.assert_close(res.imgs_whwh[0],
                                   torch.tensor([w, h, w, h]).float())
    # learned contents, LayerNorm-ed
    torch.testing.assert_close(queries[0].features.mean(-1),
                               torch.zeros(num_query), atol=1e-5, rtol=0)


def test_loss_of_every_stage_on_a_padded_batch(detector):
    _, model = detector
    model.train()
    # different sizes (padded to 128 x 128) and an image without objects
    data = make_batch(model, [(96, 128, 3), (64, 80, 0), (128, 100, 1)])
    assert data['inputs'].shape[-2:] == (128, 128)
    losses = model.loss(data['inputs'], data['data_samples'])
    num_stages = model.roi_head.num_stages
    for stage in range(num_stages):
        for name in ('loss_cls', 'loss_bbox', 'loss_iou', 'pos_acc'):
            key = f's{stage}.{name}'
            assert key in losses, key
            assert torch.isfinite(losses[key]), key
        assert losses[f's{stage}.loss_bbox'] > 0
    assert len(losses) == 4 * num_stages
    model.zero_grad()
    total_loss(losses).backward()
    no_grad = [
        name for name, param in model.named_parameters()
        if param.requires_grad and param.grad is None
    ]
    assert no_grad == []
    for name, param in model.named_parameters():
        assert torch.isfinite(param.grad).all(), name


def test_loss_without_any_object_in_the_batch(detector):
    _, model = detector
    model.train()
    data = make_batch(model, [(64, 64, 0), (96, 64, 0)])
    losses = model.loss(data['inputs'], data['data_samples'])
    for stage in range(model.roi_head.num_stages):
        assert losses[f's{stage}.loss_bbox'] == 0
        assert losses[f's{stage}.loss_iou'] == 0
        # all queries are background: a finite, non-zero focal loss
        cls = losses[f's{stage}.loss_cls']
        assert torch.isfinite(cls) and 0 < cls < 10
    total_loss(losses).backward()


def test_stage_loss_weights_scale_and_skip_stages():
    cfg = load_cfg('adamixer')
    weights = [0, 2, 0.5]
    cfg.model.roi_head.stage_loss_weights = weights
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    reference = build_model('adamixer')
    data = make_batch(model, [(96, 128, 3)])
    with torch.no_grad():
        losses = model.loss(data['inputs'], data['data_samples'])
        ref = reference.loss(data['inputs'], data['data_samples'])
    for stage, weight in enumerate(weights):
        key = f's{stage}.loss_cls'
        if weight == 0:
            assert key not in losses
        else:
            torch.testing.assert_close(losses[key], ref[key] * weight)


def test_predict_and_rescale(detector):
    _, model = detector
    model.eval()
    data = make_batch(model, [(96, 128, 2), (64, 80, 1)])
    with torch.no_grad():
        results = model.predict(data['inputs'], data['data_samples'],
                                rescale=False)
    max_per_img = model.roi_head.test_cfg.max_per_img
    for result in results:
        pred = result.pred_instances
        assert pred.bboxes.shape == (max_per_img, 4)
        assert pred.scores.shape == pred.labels.shape == (max_per_img, )
        assert ((pred.scores >= 0) & (pred.scores <= 1)).all()
        assert ((pred.labels >= 0) & (pred.labels < 6)).all()
    # the same image at scale factor 2: boxes come back halved
    boxes = [result.pred_instances.bboxes.clone() for result in results]
    for sample in data['data_samples']:
        sample.set_metainfo(dict(scale_factor=(2.0, 2.0)))
    with torch.no_grad():
        rescaled = model.predict(data['inputs'], data['data_samples'],
                                 rescale=True)
    for small, big in zip(rescaled, boxes):
        torch.testing.assert_close(small.pred_instances.bboxes * 2, big)


def test_tensor_forward_returns_every_stage(detector):
    _, model = detector
    model.eval()
    data = make_batch(model, [(64, 96, 1)])
    with torch.no_grad():
        (outputs, ) = model(data['inputs'], data['data_samples'],
                            mode='tensor')
    assert len(outputs) == model.roi_head.num_stages
    num_query = model.rpn_head.num_query
    assert outputs[-1]['cls_score'].shape == (1, num_query, 6)
    assert outputs[-1]['bboxes'].shape == (1, num_query, 4)


def test_toy_config_on_synthetic_data(synthetic_coco):
    """One training step and one prediction on real pipeline output."""
    from mmengine.runner import Runner
    cfg = load_cfg('lors')
    loader_cfg = cfg.train_dataloader
    loader_cfg.dataset.data_root = synthetic_coco
    loader_cfg.batch_size = 2
    loader_cfg.num_workers = 0
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    model = build_model('lors')
    model.train()
    data = model.data_preprocessor(next(iter(loader)), True)
    losses = model.loss(data['inputs'], data['data_samples'])
    assert torch.isfinite(total_loss(losses))
    model.eval()
    with torch.no_grad():
        results = model.predict(data['inputs'], data['data_samples'])
    for result in results:
        h, w = result.ori_shape
        assert result.pred_instances.bboxes.shape[1] == 4
        assert w > 0 and h > 0
