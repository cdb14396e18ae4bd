"""Generated parts of the docs: tables written between ``<!-- name:start -->``
and ``<!-- name:end -->`` markers, and the DETR-family parameter table of
docs/detr.md (its configs are paths in this repository)."""
import os.path as osp
from typing import Any, Dict

import torch.nn as nn


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
