"""Convert the authors' checkpoints (mmdet 2.12) to this plugin's layout.

Two releases use the same detector skeleton (``QueryBased`` = Sparse R-CNN
with ``ChannelMapping`` neck, ``InitialQueryGenerator`` and
``AdaMixerDecoder``):

- AdaMixer, MCG-NJU/AdaMixer: every stage owns its mixing
  (``sampling_n_mixing.adaptive_mixing.*``);
- LORS-AdaMixer, li-jl16/LORS: the decoder owns one
  ``adaptive_mixing`` (FactorizedAdaptiveMixing) holding the shared and the
  per-stage mixing tensors in per-stage lists.

Key mapping (``s`` = stage index; everything not listed is copied unchanged:
backbone, ``rpn_head.init_content_features``, and per stage ``attention``,
``attention_norm``, ``ffn``, ``ffn_norm``, ``cls_fcs``, ``reg_fcs``,
``fc_cls``, ``fc_reg``, ``iof_tau``)::

    neck.lateral_convs.{l}.conv.{weight,bias}  -> neck.lateral_convs.{l}.*
    neck.gn_out.*                              -> neck.gn_out.*
    rpn_head.init_proposal_bboxes.weight       -> dropped (whole-image boxes
                                                  are computed, not stored)
  AdaMixer, under roi_head.bbox_head.{s}.:
    sampling_n_mixing.sampling_offset_generator.0.* -> sampling_offset_generator.*
    sampling_n_mixing.norm.*                       -> mixing_norm.*
    sampling_n_mixing.adaptive_mixing.parameter_generator.0.*
                                       -> adaptive_mixing.parameter_generator.*
    sampling_n_mixing.adaptive_mixing.out_proj.*   -> adaptive_mixing.out_proj.*
  LORS-AdaMixer:
    roi_head.bbox_head.{s}.sampling.sampling_offset_generator.0.*
                          -> roi_head.bbox_head.{s}.sampling_offset_generator.*
    roi_head.adaptive_mixing.common_parameter_generator.*
                          -> roi_head.shared_mixing_generator.generator.*
    roi_head.adaptive_mixing.base_out_proj.weight
                          -> roi_head.shared_mixing_out_proj.weight
    roi_head.adaptive_mixing.out_weight_add_A.{s}
                          -> roi_head.bbox_head.{s}.adaptive_mixing.out_proj.lors_A
    roi_head.adaptive_mixing.out_weight_add_B.{s}  -> ... out_proj.lors_B
    roi_head.adaptive_mixing.out_weight_bias.{s}   -> ... out_proj.bias
    roi_head.adaptive_mixing.out_norm.{s}.*
                          -> roi_head.bbox_head.{s}.mixing_norm.*
    roi_head.adaptive_mixing.private_parameter_generator.{s}.*,
    roi_head.adaptive_mixing.{ml,mr,sl,sr}_parameters.{s}
                          -> roi_head.bbox_head.{s}.adaptive_mixing.generator.
                             {core_generator.*, lors_L.{0,1}, lors_R.{0,1}}

The adaptive factors need a reshaping. The authors give every *group* its own
left / right factors (``ml`` is ``(G * K, c, k)``), while
:class:`~lors_mmdet.lors.LorsAdaptive` shares them across groups
(``lors_L[0]`` is ``(K, c, k)``). The conversion is exact all the same: the
authors' ``K`` terms of group ``g`` become terms ``g * K .. g * K + K - 1``
of a layer with ``G * K`` terms, whose core generator rows for the terms of
the other groups are zero (so those terms vanish). Evaluate a converted
LORS-AdaMixer checkpoint with ``num_terms`` multiplied by ``G``
(:func:`convert_adamixer_state_dict` reports the values, e.g.
``[2, 2, 4, 4, 6, 6]`` for the published models).
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor

ADAMIXER = 'adamixer'
LORS_ADAMIXER = 'lors-adamixer'

_STAGE_RENAMES = (
    ('sampling_n_mixing.sampling_offset_generator.0.',
     'sampling_offset_generator.'),
    ('sampling_n_mixing.norm.', 'mixing_norm.'),
    ('sampling_n_mixing.adaptive_mixing.parameter_generator.0.',
     'adaptive_mixing.parameter_generator.'),
    ('sampling_n_mixing.adaptive_mixing.out_proj.', 'adaptive_mixing.out_proj.'),
    ('sampling.sampling_offset_generator.0.', 'sampling_offset_generator.'),
)
_LORS_PREFIX = 'roi_head.adaptive_mixing.'
_STAGE_KEY = re.compile(r'^roi_head\.bbox_head\.(\d+)\.(.*)$')


def detect_release(state_dict: Mapping[str, Tensor]) -> str:
    """``'lors-adamixer'`` or ``'adamixer'`` from the key names.

    Raises:
        ValueError: if the state dict is from neither release.
    """
    if any(key.startswith(_LORS_PREFIX + 'common_parameter_generator.')
           for key in state_dict):
        return LORS_ADAMIXER
    if any('sampling_n_mixing.adaptive_mixing.parameter_generator' in key
           for key in state_dict):
        return ADAMIXER
    raise ValueError('not an AdaMixer / LORS-AdaMixer checkpoint of the '
                     'authors\' releases: found neither '
                     '"...sampling_n_mixing.adaptive_mixing..." nor '
                     f'"{_LORS_PREFIX}common_parameter_generator" keys')


def _require(state: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise KeyError(f'the checkpoint lacks "{key}"')
    return state[key]


def _convert_lors_mixing(state: Mapping[str, Tensor],
                         out: Dict[str, Tensor]) -> List[int]:
    """Move the authors' FactorizedAdaptiveMixing tensors; return the
    ``num_terms`` per stage of the converted layout."""
    prefix = _LORS_PREFIX
    common_w = _require(state, prefix + 'common_parameter_generator.weight')
    out['roi_head.shared_mixing_generator.generator.weight'] = common_w
    out['roi_head.shared_mixing_generator.generator.bias'] = _require(
        state, prefix + 'common_parameter_generator.bias')
    out['roi_head.shared_mixing_out_proj.weight'] = _require(
        state, prefix + 'base_out_proj.weight')

    stages = sorted({
        int(m.group(1))
        for m in (re.match(re.escape(prefix) + r'ml_parameters\.(\d+)$', key)
                  for key in state) if m
    })
    if stages != list(range(len(stages))) or not stages:
        raise KeyError(f'expected {prefix}ml_parameters.0 .. N-1, found '
                       f'stages {stages}')
    num_terms = []
    for s in stages:
        ml = _require(state, f'{prefix}ml_parameters.{s}')  # (G*K, c, k)
        mr = _require(state, f'{prefix}mr_parameters.{s}')  # (G*K, k, c)
        sl = _require(state, f'{prefix}sl_parameters.{s}')  # (G*K, Pout, k)
        sr = _require(state, f'{prefix}sr_parameters.{s}')  # (G*K, k, Pin)
        core_w = _require(state,
                          f'{prefix}private_parameter_generator.{s}.weight')
        core_b = _require(state,
                          f'{prefix}private_parameter_generator.{s}.bias')
        group_terms, c, k = ml.shape
        p_out, p_in = sl.shape[1], sr.shape[2]
        groups, rest = divmod(common_w.shape[0], c * c + p_in * p_out)
        if rest or groups == 0 or group_terms % groups:
            raise ValueError(
                f'stage {s}: inconsistent shapes: common generator '
                f'{tuple(common_w.shape)}, ml {tuple(ml.shape)}, '
                f'sl {tuple(sl.shape)}, sr {tuple(sr.shape)}')
        terms = group_terms // groups
        if core_w.shape[0] != 2 * group_terms * k * k:
            raise ValueError(
                f'stage {s}: private generator has {core_w.shape[0]} outputs, '
                f'expected 2 * G * K * k * k = {2 * group_terms * k * k}')
        # Authors: cores (2 [M, S], G, K, k, k); ours with K' = G * K terms:
        # (2, G, K', k, k), term g' * K + t of group g is the authors' term t
        # of group g when g' == g, else zero.
        wide = groups * terms
        src_w = core_w.view(2, groups, terms, k * k, -1)
        src_b = core_b.view(2, groups, terms, k * k)
        new_w = core_w.new_zeros(2, groups, wide, k * k, core_w.shape[1])
        new_b = core_b.new_zeros(2, groups, wide, k * k)
        for g in range(groups):
            new_w[:, g, g * terms:(g + 1) * terms] = src_w[:, g]
            new_b[:, g, g * terms:(g + 1) * terms] = src_b[:, g]
        stage = f'roi_head.bbox_head.{s}.adaptive_mixing.'
        out[stage + 'generator.core_generator.weight'] = new_w.view(
            -1, core_w.shape[1])
        out[stage + 'generator.core_generator.bias'] = new_b.view(-1)
        # the factors keep the (g, t) order: index g * K + t
        out[stage + 'generator.lors_L.0'] = ml.clone()
        out[stage + 'generator.lors_R.0'] = mr.clone()
        out[stage + 'generator.lors_L.1'] = sl.clone()
        out[stage + 'generator.lors_R.1'] = sr.clone()
        out[stage + 'out_proj.lors_A'] = _require(
            state, f'{prefix}out_weight_add_A.{s}')
        out[stage + 'out_proj.lors_B'] = _require(
            state, f'{prefix}out_weight_add_B.{s}')
        out[stage + 'out_proj.bias'] = _require(
            state, f'{prefix}out_weight_bias.{s}')
        for name in ('weight', 'bias'):
            out[f'roi_head.bbox_head.{s}.mixing_norm.{name}'] = _require(
                state, f'{prefix}out_norm.{s}.{name}')
        num_terms.append(wide)
    return num_terms


def convert_adamixer_state_dict(
        state_dict: Mapping[str, Tensor]) -> Tuple[OrderedDict, dict]:
    """Convert an authors' AdaMixer / LORS-AdaMixer state dict.

    Args:
        state_dict: The ``state_dict`` of an mmdet 2.12 checkpoint of either
            release.

    Returns:
        tuple: the converted state dict (this plugin's key names and
        layouts) and a report dict: ``release``, ``num_stages``,
        ``dropped`` (keys with no counterpart) and, for LORS-AdaMixer,
        ``num_terms`` (the per-stage ``num_terms`` to evaluate it with).

    Raises:
        ValueError / KeyError: for a state dict of another model or with
            missing / inconsistent tensors.
    """
    release = detect_release(state_dict)
    out: Dict[str, Tensor] = OrderedDict()
    dropped = []
    stages = set()
    for key, value in state_dict.items():
        if key.startswith(_LORS_PREFIX):
            continue  # handled as a whole below
        if key == 'rpn_head.init_proposal_bboxes.weight':
            dropped.append(key)
            continue
        if key.startswith('roi_head.bbox_roi_extractor.'):
            dropped.append(key)  # a placeholder of the reference code
            continue
        new_key = key
        lateral = re.match(r'^neck\.lateral_convs\.(\d+)\.conv\.(.*)$', key)
        if lateral:
            new_key = f'neck.lateral_convs.{lateral.group(1)}.' \
                      f'{lateral.group(2)}'
        stage = _STAGE_KEY.match(key)
        if stage:
            stages.add(int(stage.group(1)))
            rest = stage.group(2)
            for old, new in _STAGE_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            new_key = f'roi_head.bbox_head.{stage.group(1)}.{rest}'
        out[new_key] = value
    report = dict(release=release, num_stages=len(stages), dropped=dropped)
    if release == LORS_ADAMIXER:
        report['num_terms'] = _convert_lors_mixing(state_dict, out)
    return out, report


def convert_adamixer_checkpoint(checkpoint: Mapping) -> Tuple[dict, dict]:
    """Convert a whole checkpoint (``{'state_dict': ..., 'meta': ...}`` or a
    bare state dict); optimizer state is dropped.

    Returns:
        tuple: the new checkpoint ``{'state_dict', 'meta'}`` and the report
        of :func:`convert_adamixer_state_dict`.
    """
    state_dict = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError('the checkpoint holds no state dict of tensors')
    converted, report = convert_adamixer_state_dict(state_dict)
    meta = dict(checkpoint.get('meta', {}) or {}) \
        if 'state_dict' in checkpoint else {}
    meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float))}
    meta['converted_from'] = report['release'] + ' (mmdet 2.12 release)'
    return dict(state_dict=converted, meta=meta), report
