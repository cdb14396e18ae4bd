"""Turn a stock DETR-family detector into LORS from its own weights.

The file workflow around it (read the checkpoint, build both models, load
strictly, save) is :mod:`lors_mmdet.apis.detr_conversion`.
"""
import copy
from typing import Any, Dict, Mapping

import torch
from torch import nn

from lors_mmdet.lors import apply_lors, merge_lors

LORS_KEY = 'model.lors'


@torch.no_grad()
def stock_to_lors(stock: nn.Module, parts: Mapping[str, Any]
                  ) -> Dict[str, float]:
    """Turn the stacks of a stock detector into LORS, from its weights.

    Args:
        stock: a stock DETR-family detector with trained weights, changed in
            place.
        parts: ``{part: LorsStackConfig dict}`` (``init`` is set to
            ``'dense'``).

    Returns:
        ``{part: largest relative reconstruction error of a weight}``.
    """
    dense = {k: v.clone() for k, v in stock.state_dict().items()}
    for part, config in parts.items():
        config = dict(config or {}, init='dense')
        apply_lors(getattr(stock, part), 'layers', config,
                   key=f'{LORS_KEY}.{part}')
    merged = copy.deepcopy(stock)
    merge_lors(merged)
    errors = {part: 0.0 for part in parts}
    for key, value in merged.state_dict().items():
        part = key.split('.')[0]
        if part in errors and value.dim() > 1:
            error = float((value - dense[key]).norm() /
                          dense[key].norm().clamp_min(1e-12))
            errors[part] = max(errors[part], error)
    return errors
