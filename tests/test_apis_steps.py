"""The workflow steps of lors_mmdet.apis: one config loader, one build without
downloads, one safe checkpoint reader, one strict loader, one atomic save, on
real mmdet configs and real torch.save files."""
import os
import os.path as osp

import mmdet
import pytest
import torch
from mmengine.config import Config

import lors_mmdet  # noqa: F401
from lors_mmdet.apis import (build_model, load_config, load_strictly,
                             read_checkpoint, resolve_config_path,
                             save_checkpoint)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(ROOT, 'tests', 'configs', 'tiny_detr_synthetic.py')
DINO = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'


class _Payload:
    """Pickles into a call that touches ``path``: loading it must not run it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def test_mmdet_names_and_files_load_through_one_resolver(tmp_path):
    path = resolve_config_path(DINO)
    assert path == osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs',
                            'dino', 'dino-4scale_r50_8xb2-12e_coco.py')
    assert load_config(DINO).model.type == 'DINO'
    assert load_config(TINY).model.type == 'DETR'
    loaded = load_config(TINY)
    copied = load_config(loaded)
    copied.model.type = 'DINO'
    assert loaded.model.type == 'DETR'  # a Config is copied, not shared


@pytest.mark.parametrize('name, expected', [
    ('mmdet::dino/no-such-config.py', r'no such config in mmdet .*looked for '
     r'.*\.mim/configs/dino/no-such-config\.py'),
    ('notapackage_xyz::a/b.py', r"'notapackage_xyz' is no installed package"),
    ('missing/config.py', r'config file missing/config\.py does not exist'),
])
def test_a_missing_config_is_named(name, expected):
    with pytest.raises(FileNotFoundError, match=expected):
        load_config(name)


def test_build_model_removes_the_pretrained_download_and_keeps_the_config():
    cfg = load_config(DINO)
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'
    cfg.model.encoder.num_layers = cfg.model.decoder.num_layers = 1
    model = build_model(cfg.model, init_weights=True)  # no download: would fail here
    assert type(model).__name__ == 'DINO'
    assert 'Pretrained' not in str(model.backbone.init_cfg)
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'


@pytest.fixture(scope='module')
def tiny():
    return build_model(Config.fromfile(TINY).model)


def test_read_checkpoint_strips_the_wrapper_prefix_once(tiny, tmp_path):
    state = tiny.state_dict()
    wrapped = {f'module.{k}': v for k, v in state.items()}
    wrapped['module.module.extra'] = torch.zeros(1)  # a key of its own: kept
    torch.save(dict(state_dict=wrapped, meta=dict(epoch=3)), tmp_path / 'w.pth')
    read, meta = read_checkpoint(str(tmp_path / 'w.pth'))
    assert meta == dict(epoch=3)
    assert set(read) == set(state) | {'module.extra'}
    torch.save(state, tmp_path / 'bare.pth')
    read, meta = read_checkpoint(str(tmp_path / 'bare.pth'))
    assert set(read) == set(state) and meta == {}


def test_read_checkpoint_refuses_what_is_no_checkpoint_and_runs_nothing(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / 'list.pth')
    with pytest.raises(ValueError, match=r'list\.pth holds a list, not a '
                       'checkpoint dict'):
        read_checkpoint(str(tmp_path / 'list.pth'))
    marker = tmp_path / 'ran'
    torch.save(dict(state_dict={}, meta=dict(x=_Payload(str(marker)))),
               tmp_path / 'evil.pth')
    with pytest.raises(Exception, match='evil.pth'):
        read_checkpoint(str(tmp_path / 'evil.pth'))
    assert not marker.exists()


def test_load_strictly_names_missing_unexpected_and_reshaped_keys(tiny):
    state = dict(tiny.state_dict())
    key = 'bbox_head.fc_cls.weight'
    load_strictly(tiny, state, 'checkpoint ok.pth')
    removed = dict(state)
    del removed[key]
    removed['decoder.extra'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"checkpoint a\.pth does not fit the "
                       r"model built from the config: missing keys "
                       rf"\['{key}'\], unexpected keys \['decoder\.extra'\] "
                       r"\(1 / 1 in all; the model is a DETR\)"):
        load_strictly(tiny, removed, 'checkpoint a.pth')
    reshaped = dict(state, **{key: torch.zeros(1, 1)})
    with pytest.raises(ValueError, match=rf"(?s)checkpoint b\.pth does not fit the "
                       rf"model built from the config: .*{key}"):
        load_strictly(tiny, reshaped, 'checkpoint b.pth')


def test_save_checkpoint_keeps_the_last_good_file_when_a_save_fails(tiny, tmp_path):
    out = str(tmp_path / 'model.pth')
    save_checkpoint(tiny.state_dict(), dict(step=1), out)
    read, meta = read_checkpoint(out)
    assert meta == dict(step=1) and read.keys() == tiny.state_dict().keys()
    with pytest.raises(Exception):
        save_checkpoint(dict(bad=lambda: None), dict(step=2), out)  # unpicklable
    read, meta = read_checkpoint(out)
    assert meta == dict(step=1) and read.keys() == tiny.state_dict().keys()
    assert os.listdir(tmp_path) == ['model.pth']
