"""Building detectors from configs for reports and benchmarks (no downloads)."""
import copy
import os.path as osp
from typing import Any, Dict, Union

import torch
import torch.nn as nn
from mmengine.config import Config


def resolve_config_path(config: str) -> str:
    """The file of ``config``; ``mmdet::<path>`` names one of mmdet's installed
    configs, as in a config's ``_base_``."""
    if not config.startswith('mmdet::'):
        return config
    import mmdet
    path = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs',
                    config[len('mmdet::'):])
    if not osp.isfile(path):
        raise FileNotFoundError(f'{config}: no such config in mmdet {mmdet.__version__} '
                                f'(looked for {path})')
    return path


def load_config(config: Union[str, Config]) -> Config:
    if isinstance(config, str):
        return Config.fromfile(resolve_config_path(config))
    return copy.deepcopy(config)


def strip_pretrained(cfg: Config) -> Config:
    """Remove pretrained-weight init (it would download) from the model config."""
    backbone = cfg.model.get('backbone')
    if backbone is not None:
        backbone.init_cfg = None
        if 'pretrained' in backbone:
            backbone.pretrained = None
    return cfg


def build_detector(config: Union[str, Config], device: str = 'cpu',
                   init_weights: bool = True) -> nn.Module:
    """Build the model of a config through mmdet's registry, without pretrained weights.

    Args:
        config: Config file path or a loaded config.
        device: Where the model goes.
        init_weights: Run the model's ``init_weights`` (as training would).
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = strip_pretrained(load_config(config))
    model = MODELS.build(cfg.model)
    if init_weights:
        model.init_weights()
    return model.to(device)


def decoder_of(model: nn.Module) -> nn.Module:
    """The stacked decoder of a query-based detector (where LORS applies)."""
    if hasattr(model, 'roi_head'):  # AdaMixer family: the cascade of stages
        return model.roi_head
    if hasattr(model, 'decoder'):  # DETR family
        return model.decoder
    raise TypeError(f'{type(model).__name__} has neither roi_head nor decoder')


def synthetic_batch(model: nn.Module, batch_size: int, height: int, width: int,
                    num_boxes: int = 5, num_classes: int = 80,
                    training: bool = True) -> Dict[str, Any]:
    """A preprocessed batch of random images and boxes, as the model's
    data_preprocessor would produce it from a data loader."""
    from mmdet.testing import demo_mm_inputs
    device = next(model.parameters()).device
    packed = demo_mm_inputs(batch_size=batch_size, image_shapes=[(3, height, width)] *
                            batch_size, num_items=[num_boxes] * batch_size,
                            num_classes=num_classes)
    packed['inputs'] = [image.to(device) for image in packed['inputs']]
    packed['data_samples'] = [sample.to(device) for sample in packed['data_samples']]
    with torch.no_grad():
        return model.data_preprocessor(packed, training)
