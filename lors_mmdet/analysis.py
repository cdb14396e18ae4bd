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


def merged_for_deployment(model: nn.Module,
                          config: Union[None, str, Config] = None) -> nn.Module:
    """The plain model a LORS model equals, for deployment and benchmarks.

    LORS-AdaMixer becomes the plain AdaMixer of its geometry (exact merge,
    needs ``config``); every other model is copied and its LORS stacks
    (:func:`~lors_mmdet.lors.find_lors_stacks`) merged back into stock modules
    (:func:`~lors_mmdet.lors.merge_lors`); a LORS map outside a stack (a
    :class:`~lors_mmdet.lors.LorsLinearStack`) becomes the ``nn.Linear`` it
    equals. The input model is left unchanged.

    Args:
        model: the LORS (or plain) model.
        config: the model's config (LORS-AdaMixer only).
    """
    from lors_mmdet.lors import LorsLinear, merge_lors
    from lors_mmdet.models.adamixer import LorsAdaMixerDecoder
    if isinstance(getattr(model, 'roi_head', None), LorsAdaMixerDecoder):
        from lors_mmdet.models.adamixer.merge import (
            merge_lors_adamixer_state_dict, plain_adamixer_config)
        if config is None:
            raise ValueError('merging a LORS-AdaMixer needs its config')
        device = next(model.parameters()).device
        merged = build_detector(plain_adamixer_config(load_config(config)),
                                device, init_weights=False)
        merged.load_state_dict(merge_lors_adamixer_state_dict(model))
        return merged
    merged = copy.deepcopy(model)
    merge_lors(merged)
    for name, module in list(merged.named_modules()):
        if type(module) is LorsLinear:  # a subclass may add per-query terms
            parent_name, _, child = name.rpartition('.')
            setattr(merged.get_submodule(parent_name), child,
                    module.to_linear())
    return merged


# The DETR-family parameter table of docs/detr.md: (family, mmdet's config,
# its LORS configs: decoder only, encoder + decoder).
DETR_FAMILY_CONFIGS = [
    ('DETR', 'mmdet::detr/detr_r50_8xb2-150e_coco.py',
     'configs/lors_detr/lors-detr_r50_8xb2-150e_coco.py',
     'configs/lors_detr/lors-encdec-detr_r50_8xb2-150e_coco.py'),
    ('Conditional-DETR',
     'mmdet::conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
     'configs/lors_conditional_detr/lors-conditional-detr_r50_8xb2-50e_coco.py',
     'configs/lors_conditional_detr/'
     'lors-encdec-conditional-detr_r50_8xb2-50e_coco.py'),
    ('DAB-DETR', 'mmdet::dab_detr/dab-detr_r50_8xb2-50e_coco.py',
     'configs/lors_dab_detr/lors-dab-detr_r50_8xb2-50e_coco.py',
     'configs/lors_dab_detr/lors-encdec-dab-detr_r50_8xb2-50e_coco.py'),
    ('Deformable-DETR',
     'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
     'configs/lors_deformable_detr/lors-deformable-detr_r50_16xb2-50e_coco.py',
     'configs/lors_deformable_detr/'
     'lors-encdec-deformable-detr_r50_16xb2-50e_coco.py'),
    ('Deformable-DETR refine',
     'mmdet::deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py',
     'configs/lors_deformable_detr/'
     'lors-deformable-detr-refine_r50_16xb2-50e_coco.py',
     'configs/lors_deformable_detr/'
     'lors-encdec-deformable-detr-refine_r50_16xb2-50e_coco.py'),
    ('Deformable-DETR refine two-stage',
     'mmdet::deformable_detr/'
     'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
     'configs/lors_deformable_detr/'
     'lors-deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
     'configs/lors_deformable_detr/'
     'lors-encdec-deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'),
    ('DINO-4scale', 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
     'configs/lors_dino/lors-dino-4scale_r50_8xb2-12e_coco.py',
     'configs/lors_dino/lors-encdec-dino-4scale_r50_8xb2-12e_coco.py'),
    ('DDQ-DETR-4scale', 'mmdet::ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py',
     'configs/lors_ddq_detr/lors-ddq-detr-4scale_r50_8xb2-12e_coco.py',
     'configs/lors_ddq_detr/lors-encdec-ddq-detr-4scale_r50_8xb2-12e_coco.py'),
]


def transformer_parameters(model: nn.Module) -> Dict[str, int]:
    """Parameters of a DETR-family model (each tensor once): ``encoder``,
    ``decoder``, ``transformer`` (both) and ``total`` (whole model)."""

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    encoder, decoder = count(model.encoder), count(model.decoder)
    return dict(encoder=encoder, decoder=decoder,
                transformer=encoder + decoder, total=count(model))


def detr_parameter_table(build: Any,
                         families=DETR_FAMILY_CONFIGS) -> str:
    """A markdown table of :func:`transformer_parameters`, stock vs LORS.

    Args:
        build: ``build(config) -> model`` (e.g. on the meta device).
        families: ``(family, stock config, LORS decoder config, LORS encoder
            + decoder config)`` rows.
    """
    lines = [
        '| model | config | encoder | decoder | transformer (% of stock) '
        '| whole model |', '|---|---|---:|---:|---:|---:|'
    ]

    def millions(value: int) -> str:
        return f'{value / 1e6:.3f}M'

    for family, stock_config, *lors_configs in families:
        stock = transformer_parameters(build(stock_config))
        for label, config, counts in [
                (f'{family}', stock_config, stock),
                *((f'LORS-{family} {what}', config,
                   transformer_parameters(build(config)))
                  for what, config in zip(('decoder', 'encoder + decoder'),
                                          lors_configs))]:
            share = 100 * counts['transformer'] / stock['transformer']
            lines.append(
                f'| {label} | `{osp.basename(config)}` | '
                f'{millions(counts["encoder"])} | '
                f'{millions(counts["decoder"])} | '
                f'{millions(counts["transformer"])} ({share:.1f}%) | '
                f'{millions(counts["total"])} |')
    return '\n'.join(lines)


def replace_generated(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``<!-- name:start -->`` and
    ``<!-- name:end -->`` replaced by ``body``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start, end = f'<!-- {name}:start -->', f'<!-- {name}:end -->'
    first, last = text.find(start), text.find(end)
    if first < 0 or last < first:
        raise ValueError(f'the text has no {start} ... {end} markers (in '
                         'this order)')
    return text[:first + len(start)] + '\n' + body + '\n' + text[last:]


def check_generated_markers(path: str, name: str) -> None:
    """Raise ``ValueError`` naming ``path`` unless the file holds
    ``<!-- name:start -->`` followed by ``<!-- name:end -->``."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    try:
        replace_generated(text, name, '')
    except ValueError as error:
        raise ValueError(f'{path}: {error}') from None


def write_generated(path: str, name: str, body: str) -> None:
    """Replace the part of file ``path`` between ``<!-- name:start -->`` and
    ``<!-- name:end -->`` by ``body`` (see :func:`replace_generated`).

    Raises:
        ValueError: naming ``path``, when the markers are missing or out of
            order; the file is then left as it was.
    """
    check_generated_markers(path, name)
    with open(path, encoding='utf-8') as f:
        text = replace_generated(f.read(), name, body)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)
