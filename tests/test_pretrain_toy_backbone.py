"""tools/pretrain_toy_backbone.py: windows around the shapes, a checkpoint the toy configs load."""
import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def tool():
    spec = importlib.util.spec_from_file_location(
        'pretrain_toy_backbone', osp.join(ROOT, 'tools', 'pretrain_toy_backbone.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_windows_are_centred_and_padded(tool):
    image = np.full((20, 30, 3), 5.0, dtype=np.float32)
    image[3, 27] = 9.0  # the box centre, near the top right corner
    rows = np.array([[0, 27, 3, 4]], dtype=np.float32)
    x, y = tool.cut_windows([image], rows, window=16, rng=np.random.default_rng(0),
                            jitter=0, flip=False)
    assert x.shape == (1, 3, 16, 16) and y.tolist() == [4]
    assert x[0, :, 8, 8].tolist() == [9.0] * 3
    # rows above the image and columns right of it are the mean colour (0)
    assert x[0, :, :5].abs().sum() == 0 and x[0, :, :, 11:].abs().sum() == 0
    assert (x[0, :, 5:, :11] > 0).all()


def test_missing_data_set_names_the_file(tool, tmp_path):
    with pytest.raises(FileNotFoundError, match='instances_train.json'):
        tool.load_split(str(tmp_path), 'train')


def test_checkpoint_loads_into_the_toy_configs_backbone(tool, synthetic_coco, tmp_path):
    from mmengine.config import Config

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    out = str(tmp_path / 'backbone.pth')
    tool.main(['--data-root', synthetic_coco, '--out', out, '--iters', '2',
               '--batch-size', '4', '--extra-images', '2'])
    saved = torch.load(out)['state_dict']
    cfg = Config.fromfile(
        osp.join(ROOT, 'configs/_base_/models/detr-4scale_r18-tiny_toy.py'))
    backbone_cfg = cfg.model.backbone
    backbone_cfg.init_cfg = dict(type='Pretrained', checkpoint=out)
    backbone = MODELS.build(backbone_cfg)
    assert set(backbone.state_dict()) == set(saved)
    backbone.init_weights()
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)


def test_extra_images_are_new_draws_of_the_data_sets_generator(tool,
                                                              synthetic_coco_factory):
    data_root = synthetic_coco_factory(num_train=8, num_val=4, img_size=96)
    split_images = [image for split in ('train', 'val')
                    for image in tool.load_split(data_root, split)[0]]
    images, rows = tool.render_extra_images(data_root, 5, first_index=8)
    assert len(images) == 5
    assert all(image.shape == (96, 96, 3) for image in images)  # the recorded img_size
    assert set(rows[:, 0].astype(int)) <= set(range(8, 13)) and len(rows) >= 5
    assert set(rows[:, 3].astype(int)) <= set(range(6))
    assert ((rows[:, 1:3] >= 0) & (rows[:, 1:3] <= 96)).all()
    # a stream of its own: none is an image of either split
    assert not any(np.array_equal(new, old) for new in images for old in split_images)


def test_extra_images_need_the_recorded_generator_settings(tool, tmp_path):
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'annotations' / 'instances_train.json').write_text(
        '{"images": [], "annotations": [], "categories": []}')
    with pytest.raises(ValueError, match=r'instances_train\.json.*info\.generator'):
        tool.render_extra_images(str(tmp_path), 2, first_index=0)


def test_bad_arguments_are_refused(tool):
    with pytest.raises(SystemExit):
        tool.parse_args(['--extra-images', '-1'])
    with pytest.raises(SystemExit):
        tool.parse_args(['--jitter', '40', '--window', '64'])
    with pytest.raises(SystemExit):
        tool.parse_args(['--iters', '0'])


def test_train_names_a_missing_pretrained_checkpoint(tmp_path):
    from mmengine.config import Config

    from lors_mmdet.engine import check_pretrained_paths
    missing = str(tmp_path / 'no_backbone.pth')
    cfg = Config(dict(model=dict(
        backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=missing)),
        neck=dict(init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')))))
    with pytest.raises(FileNotFoundError,
                       match=r'model\.backbone\.init_cfg\.checkpoint.*no_backbone\.pth'
                       r'.*pretrain_toy_backbone\.py'):
        check_pretrained_paths(cfg)
    cfg.model.backbone.init_cfg.checkpoint = __file__
    check_pretrained_paths(cfg)  # an existing file and a URL pass


def test_same_command_same_weights(tool, synthetic_coco, tmp_path):
    """Regenerating the backbone gives the same tensors (same data, same threads)."""
    saved = []
    for run in range(2):
        out = str(tmp_path / f'backbone{run}.pth')
        tool.main(['--data-root', synthetic_coco, '--out', out, '--iters', '3',
                   '--batch-size', '4', '--extra-images', '2', '--threads', '1'])
        saved.append(torch.load(out, weights_only=True))
    assert saved[0]['meta']['threads'] == 1
    for name, value in saved[0]['state_dict'].items():
        assert torch.equal(value, saved[1]['state_dict'][name]), name
    # ... and a different seed does not (so the comparison above can fail)
    out = str(tmp_path / 'other_seed.pth')
    tool.main(['--data-root', synthetic_coco, '--out', out, '--iters', '3', '--batch-size',
               '4', '--extra-images', '2', '--threads', '1', '--seed', '1'])
    other = torch.load(out, weights_only=True)['state_dict']
    assert not all(torch.equal(value, other[name])
                   for name, value in saved[0]['state_dict'].items())


def test_shipped_backbone_is_the_tools_default_output(tool):
    """The file the toy configs load is in the repository, written by the tool's defaults."""
    from mmengine.config import Config

    from lors_mmdet.checkpoint_loading import load_any_checkpoint
    cfg = Config.fromfile(
        osp.join(ROOT, 'configs/_base_/models/detr-4scale_r18-tiny_toy.py'))
    path = cfg.model.backbone.init_cfg.checkpoint
    assert path == tool.DEFAULT_OUT
    checkpoint = load_any_checkpoint(osp.join(ROOT, path))
    defaults = vars(tool.parse_args([]))
    meta = checkpoint['meta']
    for key in ('iters', 'seed', 'window', 'extra_images'):
        assert meta[key] == defaults[key], key
    assert meta['backbone'] == tool.toy_model_cfg()[0]
    assert meta['val_accuracy'] > 0.8  # it learned the shapes
