"""Building detectors from configs for reports and benchmarks (no downloads).

The steps it builds on (:func:`~lors_mmdet.apis.load_config`,
:func:`~lors_mmdet.apis.build_model`) live in :mod:`lors_mmdet.apis.steps`.
"""
import copy
from typing import Any, Dict, Union

import torch
import torch.nn as nn
from mmengine.config import Config

from lors_mmdet.apis.steps import build_model, load_config


def build_detector(config: Union[str, Config], device: str = 'cpu',
                   init_weights: bool = True) -> nn.Module:
    """Build the model of a config through mmdet's registry, without pretrained weights.

    Args:
        config: Config file path or a loaded config.
        device: Where the model goes.
        init_weights: Run the model's ``init_weights`` (as training would).
    """
    return build_model(load_config(config).model, init_weights=init_weights,
                       device=device)


def parameter_report(model: nn.Module) -> dict:
    """Parameter counts of a stock or LORS detector, each tensor once
    (``tools/analysis/param_report.py`` prints them).

    Returns:
        ``model`` (type), ``lors`` (has shared weights), ``total``
        (:func:`~lors_mmdet.lors.count_parameters` as a dict), ``parts``
        (per top-level child) and ``decoder``: the counts of the module
        owning the decoder stack (``name``, ``type``, ``total``, ``shared``,
        ``private``, ...), ``private_outside_stages`` (its private tensors
        outside the layers: query embeddings, heads) and ``stages`` (each
        layer's ``private``).
    """
    from lors_mmdet.lors import count_parameters
    from lors_mmdet.models.lors_stacks import (lors_stack_paths_of,
                                               stack_owner_and_layers)
    total = count_parameters(model)._asdict()
    parts = {
        name: count_parameters(child).total
        for name, child in model.named_children()
        if any(True for _ in child.parameters())
    }
    path = lors_stack_paths_of(model)['decoder']
    decoder, layers = stack_owner_and_layers(model, path)
    decoder_counts = count_parameters(decoder)._asdict()
    # a layer's own tensors; the shared ones it uses are the stack's
    stages = [dict(private=count_parameters(layer).private)
              for layer in decoder.get_submodule(layers)]
    return dict(
        model=type(model).__name__,
        lors=total['shared'] > 0,
        total=total,
        parts=parts,
        decoder=dict(
            name=path.rpartition('.')[0],
            type=type(decoder).__name__,
            **decoder_counts,
            private_outside_stages=decoder_counts['private'] - sum(
                stage['private'] for stage in stages),
            stages=stages))


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


def merged_for_deployment(model: nn.Module) -> nn.Module:
    """The stock model a LORS model equals, for deployment and benchmarks.

    The model is copied and its LORS stacks
    (:func:`~lors_mmdet.lors.find_lors_stacks`) merged back into stock modules
    (:func:`~lors_mmdet.lors.merge_lors`; LORS-AdaMixer becomes the stock
    AdaMixer of its geometry, exactly); a LORS map outside a stack (a
    :class:`~lors_mmdet.lors.LorsLinearStack`) becomes the ``nn.Linear`` it
    equals. The input model is left unchanged.

    Args:
        model: the LORS (or stock) model.
    """
    from lors_mmdet.lors import LorsLinear, merge_lors
    merged = copy.deepcopy(model)
    merge_lors(merged)
    for name, module in list(merged.named_modules()):
        if type(module) is LorsLinear:  # a subclass may add per-query terms
            parent_name, _, child = name.rpartition('.')
            setattr(merged.get_submodule(parent_name), child,
                    module.to_linear())
    return merged
