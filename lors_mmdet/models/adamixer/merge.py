"""LORS-AdaMixer -> plain AdaMixer of the same geometry, exactly (deployment).

Each stage's mixing is ``shared generator + private adaptive residual`` and
``W_shared + B_i A_i``. The private residual's cores are affine in the query,
so the sum folds into one generator per stage
(:meth:`~lors_mmdet.lors.LorsAdaptive.to_linear`), and the output projection
into one Linear (:meth:`~lors_mmdet.lors.LorsLinear.to_linear`). The result
is an :class:`AdaMixerDecoder` with the LORS model's ``n_groups``,
``in_points`` and ``out_points`` (G=2, P_in=64 for the published model) that
runs at plain AdaMixer's cost with any AdaMixer tool, mmdet's ``test.py``
included. Static stacks of ``model.lors`` (the stages' attention / FFN...)
are merged too (:func:`~lors_mmdet.lors.merge_lors`). The config and
checkpoint files: :mod:`lors_mmdet.apis.adamixer_deployment`.
"""
import copy
import inspect
from collections import OrderedDict
from typing import Dict

import torch
from mmengine.config import Config
from torch import Tensor, nn

from lors_mmdet.lors import find_lors_stacks, merge_lors
from .decoder import LorsAdaMixerDecoder

# Keys of LorsAdaMixerDecoder that AdaMixerDecoder does not take.
_LORS_DECODER_KEYS = ('core_sizes', 'adaptive_terms', 'out_proj_ranks',
                      'per_group_factors', 'factor_init')
_STAGE_TYPES = {'LorsAdaMixerDecoderStage': 'AdaMixerDecoderStage'}


def _lors_decoder(model: nn.Module) -> LorsAdaMixerDecoder:
    decoder = getattr(model, 'roi_head', None)
    if not isinstance(decoder, LorsAdaMixerDecoder):
        raise TypeError('expected an AdaMixer detector whose roi_head is a '
                        'LorsAdaMixerDecoder, got roi_head of type '
                        f'{type(decoder).__name__}')
    return decoder


@torch.no_grad()
def merge_lors_adamixer_state_dict(model: nn.Module) -> 'OrderedDict[str, Tensor]':
    """The state dict of the plain AdaMixer equal to a LORS-AdaMixer.

    The folding runs in float64 and the merged tensors are cast back to the
    model's dtype, so the merged model differs from the LORS one by the
    rounding of its own dtype only.

    Args:
        model: an AdaMixer detector with a :class:`LorsAdaMixerDecoder`.

    Returns:
        Every tensor of ``model`` outside the LORS mixing unchanged, and per
        stage ``adaptive_mixing.parameter_generator.{weight,bias}`` and
        ``adaptive_mixing.out_proj.{weight,bias}`` (the keys of
        :class:`~lors_mmdet.models.adamixer.AdaptiveMixing`); the layers of
        ``model.lors`` stacks with their stock keys and merged weights.
    """
    _lors_decoder(model)
    if find_lors_stacks(model):
        model = copy.deepcopy(model)
        merge_lors(model)
    decoder = _lors_decoder(model)
    merged: Dict[str, Tensor] = OrderedDict()
    lors_prefixes = ('roi_head.shared_mixing_generator.',
                     'roi_head.shared_mixing_out_proj.') + tuple(
                         f'roi_head.bbox_head.{s}.adaptive_mixing.'
                         for s in range(decoder.num_stages))
    for key, value in model.state_dict().items():
        if not key.startswith(lors_prefixes):
            merged[key] = value.detach().clone()
    for s, stage in enumerate(decoder.bbox_head):
        mixing = copy.deepcopy(stage.adaptive_mixing)  # keeps its shared refs
        dtype = mixing.out_proj.lors_A.dtype
        mixing.generator.shared.double()
        mixing.out_proj.shared.double()
        mixing.double()
        prefix = f'roi_head.bbox_head.{s}.adaptive_mixing.'
        for name, linear in (('parameter_generator',
                              mixing.generator.to_linear()),
                             ('out_proj', mixing.out_proj.to_linear())):
            merged[f'{prefix}{name}.weight'] = linear.weight.to(dtype)
            merged[f'{prefix}{name}.bias'] = linear.bias.to(dtype)
    return merged


def plain_adamixer_config(cfg: Config) -> Config:
    """The config of the plain AdaMixer a LORS-AdaMixer config merges into.

    ``model.roi_head`` becomes an ``AdaMixerDecoder`` with the LORS
    decoder's mixing sizes written out (its defaults differ from the LORS
    decoder's) and ``AdaMixerDecoderStage`` stages; the LORS-only keys are
    removed, ``model.lors`` too (its stacks are merged by
    :func:`merge_lors_adamixer_state_dict`). Everything else (backbone,
    data, schedule, hooks) is kept.

    Args:
        cfg: a config whose ``model.roi_head`` is a ``LorsAdaMixerDecoder``.
    """
    cfg = copy.deepcopy(cfg)
    roi_head = cfg.model.roi_head
    if roi_head.get('type') != 'LorsAdaMixerDecoder':
        raise ValueError('model.roi_head.type must be "LorsAdaMixerDecoder", '
                         f'got {roi_head.get("type")!r}')
    # write out the LORS decoder's sizes, defaults included
    signature = inspect.signature(LorsAdaMixerDecoder.__init__).parameters
    for key in ('n_groups', 'in_points', 'out_points', 'feat_channels',
                'content_dim'):
        roi_head.setdefault(key, signature[key].default)
    for key in _LORS_DECODER_KEYS:
        roi_head.pop(key, None)
    cfg.model.pop('lors', None)
    roi_head.type = 'AdaMixerDecoder'
    heads = roi_head.bbox_head
    for head in (heads if isinstance(heads, (list, tuple)) else [heads]):
        head.type = _STAGE_TYPES.get(head.get('type'), head.get('type'))
        for key in ('per_group_factors', 'factor_init'):
            head.pop(key, None)
    return cfg
