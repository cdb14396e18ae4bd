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
                          -> roi_head.lors_bbox_head.shared.0.adaptive_mixing.
                             parameter_generator.generator.*
    roi_head.adaptive_mixing.base_out_proj.weight
                          -> roi_head.lors_bbox_head.shared.0.adaptive_mixing.
                             out_proj.weight
    roi_head.adaptive_mixing.out_weight_add_A.{s}
                          -> roi_head.bbox_head.{s}.adaptive_mixing.out_proj.lors_A
    roi_head.adaptive_mixing.out_weight_add_B.{s}  -> ... out_proj.lors_B
    roi_head.adaptive_mixing.out_weight_bias.{s}   -> ... out_proj.bias
    roi_head.adaptive_mixing.out_norm.{s}.*
                          -> roi_head.bbox_head.{s}.mixing_norm.*
    roi_head.adaptive_mixing.private_parameter_generator.{s}.*,
    roi_head.adaptive_mixing.{ml,mr,sl,sr}_parameters.{s}
                          -> roi_head.bbox_head.{s}.adaptive_mixing.
                             parameter_generator.{lors_core_generator.*,
                             lors_L.{0,1}, lors_R.{0,1}}

The published LORS-AdaMixer gives every mixing group its own static
adaptive factors (``ml`` is ``(G * K, c, k)``, row ``g * K + t`` = term
``t`` of group ``g``) and orders the private generator's outputs
[M, S][group][term][k][k]; the LORS stack of ``model.lors.decoder`` with
``adaptive.per_group_factors=True`` (the published configs) stores both the
same way, so every tensor is copied unchanged and the checkpoint loads into
the published config itself.

The converted checkpoint's ``meta['adamixer_conversion']`` records the
settings read from the tensors' shapes (plain ints / lists / bools): the
decoder's mixing sizes (``model.roi_head``) and, for LORS-AdaMixer, the
stack's (``model.lors.decoder``); compare them with a config by
:func:`settings_mismatches`.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor

from .detector import MIXING_GENERATOR, MIXING_OUT_PROJ

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
_SHARED = 'roi_head.lors_bbox_head.shared.0.'


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
                         out: Dict[str, Tensor]) -> dict:
    """Move the authors' FactorizedAdaptiveMixing tensors one to one; return
    the decoder settings their shapes imply."""
    prefix = _LORS_PREFIX
    common_w = _require(state, prefix + 'common_parameter_generator.weight')
    out[f'{_SHARED}{MIXING_GENERATOR}.generator.weight'] = common_w
    out[f'{_SHARED}{MIXING_GENERATOR}.generator.bias'] = _require(
        state, prefix + 'common_parameter_generator.bias')
    out[f'{_SHARED}{MIXING_OUT_PROJ}.weight'] = _require(
        state, prefix + 'base_out_proj.weight')

    stages = sorted({
        int(m.group(1))
        for m in (re.match(re.escape(prefix) + r'ml_parameters\.(\d+)$', key)
                  for key in state) if m
    })
    if stages != list(range(len(stages))) or not stages:
        raise KeyError(f'expected {prefix}ml_parameters.0 .. N-1, found '
                       f'stages {stages}')
    core_sizes, adaptive_terms, ranks = [], [], []
    for s in stages:
        ml = _require(state, f'{prefix}ml_parameters.{s}')  # (G*K, c, k)
        mr = _require(state, f'{prefix}mr_parameters.{s}')  # (G*K, k, c)
        sl = _require(state, f'{prefix}sl_parameters.{s}')  # (G*K, Pout, k)
        sr = _require(state, f'{prefix}sr_parameters.{s}')  # (G*K, k, Pin)
        core_w = _require(state,
                          f'{prefix}private_parameter_generator.{s}.weight')
        out_a = _require(state, f'{prefix}out_weight_add_A.{s}')
        group_terms, c, k = ml.shape
        p_out, p_in = sl.shape[1], sr.shape[2]
        groups, rest = divmod(common_w.shape[0], c * c + p_in * p_out)
        if rest or groups == 0 or group_terms % groups or \
                mr.shape != (group_terms, k, c) or \
                sl.shape != (group_terms, p_out, k) or \
                sr.shape != (group_terms, k, p_in):
            raise ValueError(
                f'stage {s}: inconsistent shapes: common generator '
                f'{tuple(common_w.shape)}, ml {tuple(ml.shape)}, mr '
                f'{tuple(mr.shape)}, sl {tuple(sl.shape)}, sr '
                f'{tuple(sr.shape)}')
        if core_w.shape[0] != 2 * group_terms * k * k:
            raise ValueError(
                f'stage {s}: private generator has {core_w.shape[0]} outputs, '
                f'expected 2 * G * K * k * k = {2 * group_terms * k * k}')
        stage = f'roi_head.bbox_head.{s}.adaptive_mixing.'
        out[stage + 'generator.lors_core_generator.weight'] = core_w
        out[stage + 'generator.lors_core_generator.bias'] = _require(
            state, f'{prefix}private_parameter_generator.{s}.bias')
        out[stage + 'generator.lors_L.0'] = ml
        out[stage + 'generator.lors_R.0'] = mr
        out[stage + 'generator.lors_L.1'] = sl
        out[stage + 'generator.lors_R.1'] = sr
        out[stage + 'out_proj.lors_A'] = out_a
        out[stage + 'out_proj.lors_B'] = _require(
            state, f'{prefix}out_weight_add_B.{s}')
        out[stage + 'out_proj.bias'] = _require(
            state, f'{prefix}out_weight_bias.{s}')
        for name in ('weight', 'bias'):
            out[f'roi_head.bbox_head.{s}.mixing_norm.{name}'] = _require(
                state, f'{prefix}out_norm.{s}.{name}')
        core_sizes.append(int(k))
        adaptive_terms.append(int(group_terms // groups))
        ranks.append(int(out_a.shape[0]))
    decoder = dict(
        n_groups=int(groups),
        in_points=int(p_in),
        out_points=int(p_out),
        feat_channels=int(c * groups))
    lors = dict(
        include=[MIXING_OUT_PROJ],
        rank=ranks,
        adaptive=dict(core_size=core_sizes, adaptive_terms=adaptive_terms,
                      per_group_factors=True))
    return decoder, lors


def _plain_mixing_settings(state: Mapping[str, Tensor]) -> dict:
    """Decoder settings implied by the shapes of an AdaMixer checkpoint."""
    offsets = _require(
        state, 'roi_head.bbox_head.0.sampling_n_mixing.'
        'sampling_offset_generator.0.weight')
    generator = _require(
        state, 'roi_head.bbox_head.0.sampling_n_mixing.adaptive_mixing.'
        'parameter_generator.0.weight')
    out_proj = _require(
        state,
        'roi_head.bbox_head.0.sampling_n_mixing.adaptive_mixing.out_proj.weight')
    feat_channels = _require(state, 'neck.gn_out.weight').shape[0]
    # offsets: G * P_in * 3 rows; generator: G * (c^2 + P_out * P_in) rows;
    # out_proj: c * P_out * G columns; c * G = feat_channels
    rows = offsets.shape[0] // 3
    for groups in range(1, feat_channels + 1):
        c = feat_channels // groups
        if feat_channels % groups or rows % groups or \
                out_proj.shape[1] % feat_channels:
            continue
        p_in, p_out = rows // groups, out_proj.shape[1] // feat_channels
        if generator.shape[0] == groups * (c * c + p_out * p_in):
            return dict(n_groups=groups, in_points=p_in, out_points=p_out,
                        feat_channels=feat_channels)
    raise ValueError('cannot read the mixing sizes from the shapes of '
                     f'{tuple(offsets.shape)}, {tuple(generator.shape)}, '
                     f'{tuple(out_proj.shape)}')


def _per_layer(value, num_stages: int):
    """A setting as a list per stage (an int for all stages expanded)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * num_stages if isinstance(value, int) and \
        not isinstance(value, bool) else value


def settings_mismatches(settings: Mapping, model_cfg: Mapping) -> List[str]:
    """Where a config's model differs from a converted checkpoint.

    Args:
        settings: ``meta['adamixer_conversion']`` of a converted checkpoint
            (or the report): ``decoder`` (mixing sizes) and ``lors`` (the
            LORS-AdaMixer stack; None for AdaMixer).
        model_cfg: the ``model`` dict of a config.

    Returns:
        One ``"key: checkpoint X, config Y"`` line per differing setting
        (a per-stage int is expanded to all stages); empty when they agree.
        Mixing sizes the config leaves out are not compared.
    """
    lines = []
    roi_head = model_cfg.get('roi_head', {})
    num_stages = roi_head.get('num_stages', 6)
    for key, value in settings['decoder'].items():
        if key in roi_head and _per_layer(roi_head[key], num_stages) != \
                _per_layer(value, num_stages):
            lines.append(f'model.roi_head.{key}: checkpoint {value!r}, config '
                         f'{roi_head[key]!r}')
    lors = (model_cfg.get('lors') or {}).get('decoder')
    expected = settings.get('lors')
    if (lors is None) != (expected is None):
        lines.append('model.lors.decoder: checkpoint '
                     f'{"a LORS-AdaMixer" if expected else "a stock AdaMixer"}'
                     f', config {"with" if lors else "without"} it')
        return lines
    for key, value in (expected or {}).items():
        got = lors.get(key)
        pairs = ([(f'{key}.{k}', v, (got or {}).get(k))
                  for k, v in value.items()] if isinstance(value, Mapping)
                 else [(key, value, got)])
        for name, want, have in pairs:
            if _per_layer(want, num_stages) != _per_layer(have, num_stages):
                lines.append(f'model.lors.decoder.{name}: checkpoint '
                             f'{want!r}, config {have!r}')
    return lines


def convert_adamixer_state_dict(
        state_dict: Mapping[str, Tensor]) -> Tuple[OrderedDict, dict]:
    """Convert an authors' AdaMixer / LORS-AdaMixer state dict.

    Args:
        state_dict: The ``state_dict`` of an mmdet 2.12 checkpoint of either
            release.

    Returns:
        tuple: the converted state dict (this plugin's key names and
        layouts) and a report dict: ``release``, ``num_stages``,
        ``dropped`` (keys with no counterpart), ``decoder``: the mixing
        sizes the shapes imply (``n_groups``, ``in_points``, ``out_points``,
        ``feat_channels``) and ``lors``: for LORS-AdaMixer the
        ``model.lors.decoder`` settings they imply (``include``, ``rank``,
        ``adaptive``), else None.

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
    if release == LORS_ADAMIXER:
        decoder, lors = _convert_lors_mixing(state_dict, out)
    else:
        decoder, lors = _plain_mixing_settings(state_dict), None
    decoder['num_stages'] = len(stages)
    report = dict(release=release, num_stages=len(stages), dropped=dropped,
                  decoder=decoder, lors=lors)
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
    # plain types only: loads with weights_only=True, readable anywhere
    meta['adamixer_conversion'] = dict(
        release=report['release'],
        dropped=list(report['dropped']),
        decoder=dict(report['decoder']),
        lors=report['lors'])
    return dict(state_dict=converted, meta=meta), report
