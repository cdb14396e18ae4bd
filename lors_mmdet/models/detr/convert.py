"""Convert DINO / Deformable-DETR checkpoints between mmdet's stock decoder and
the LORS decoder, on state dicts (no model needed).

- :func:`stock_to_lors`: every projection kind of the N decoder layers becomes
  one shared weight (the mean) plus per-layer truncated-SVD residuals at the
  ranks of a ``lors`` config (:func:`lors_mmdet.lors.lors_from_dense`); exact at
  ``rank='full'``. A starting point for LORS fine-tuning of a trained model.
- :func:`lors_to_stock`: merges ``W_shared + B_i A_i`` back into mmdet's stock
  layout (packed ``in_proj_weight`` of the self-attention...), loadable by the
  stock mmdet config, for deployment.

Key layout, relative to ``decoder.`` (layer ``i``):

- stock self-attention: ``layers.i.self_attn.attn.in_proj_{weight,bias}``
  (query, key, value rows ``[0:E], [E:2E], [2E:3E]``) and
  ``layers.i.self_attn.attn.out_proj.*``; LORS:
  ``layers.i.self_attn.{query,key,value,out}_proj.{lors_A,lors_B,bias}``.
- cross-attention ``layers.i.cross_attn.<name>.*`` and FFN
  ``layers.i.ffn.layers.{0.0,1}.*`` keep their paths; ``weight`` becomes
  ``lors_A``, ``lors_B`` (``bias`` stays).
- shared weights: ``shared.<group>.<name>.weight`` (``ffn``: ``fc1``, ``fc2``).
"""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from lors_mmdet.engine.lors_settings import META_KEY as LORS_SETTINGS_META
from lors_mmdet.engine.lors_settings import plain
from lors_mmdet.lors import (LorsLinear, SharedLinear, lors_from_dense,
                             merge_linears)
from .ffn import ffn_linear_paths
from .lors_config import (CROSS_ATTN_PROJECTIONS, SELF_ATTN_PROJECTIONS,
                          ProjectionShape, build_lors_plan,
                          ffn_projection_names)

DECODER = 'decoder.'
FAMILIES = ('DINO', 'DeformableDETR')
_STOCK_PROBE = 'layers.0.self_attn.attn.in_proj_weight'
_LORS_PROBE = 'shared.self_attn.query_proj.weight'
_ADAPTIVE_SUFFIXES = ('adaptive_R', 'adaptive_L', 'core_generator.weight',
                      'core_generator.bias')

StateDict = Dict[str, Tensor]


def detect_detr_family(state_dict: Mapping[str, Tensor]) -> str:
    """``'DINO'`` or ``'DeformableDETR'`` (stock or LORS state dict).

    Raises:
        ValueError: the state dict is of another model.
    """
    probe = DECODER + 'layers.0.cross_attn.sampling_offsets.'
    if not any(key.startswith(probe) for key in state_dict):
        raise ValueError(
            'not a DINO / Deformable-DETR checkpoint: it has no deformable '
            f'cross-attention in its decoder (no key starting with '
            f'{probe!r})')
    if any(key.startswith(('dn_query_generator.', DECODER + 'ref_point_head.'))
           for key in state_dict):
        return 'DINO'
    return 'DeformableDETR'


def is_lors_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the decoder of this DETR state dict is a LORS decoder."""
    return DECODER + _LORS_PROBE in state_dict


def _num_layers(state_dict: Mapping[str, Tensor]) -> int:
    pattern = re.compile(re.escape(DECODER) + r'layers\.(\d+)\.norms\.0\.')
    indices = {int(m.group(1)) for m in map(pattern.match, state_dict) if m}
    if not indices or indices != set(range(max(indices) + 1)):
        raise ValueError('cannot find the decoder layers '
                         f'({DECODER}layers.<i>.norms.0.*) in the checkpoint')
    return max(indices) + 1


def _num_fcs(state_dict: Mapping[str, Tensor]) -> int:
    pattern = re.compile(
        re.escape(DECODER) + r'layers\.0\.ffn\.layers\.(\d+)\.0\.')
    hidden = {int(m.group(1)) for m in map(pattern.match, state_dict) if m}
    return len(hidden) + 1


def _map_prefix(group: str, name: str, layer: int, num_fcs: int) -> str:
    """Module path (under ``decoder.``) of a LORS map of layer ``layer``;
    also the stock path for cross-attention and FFN maps."""
    if group == 'ffn':
        path = ffn_linear_paths(num_fcs)[ffn_projection_names(num_fcs).index(
            name)]
        return f'layers.{layer}.ffn.layers.{path}'
    return f'layers.{layer}.{group}.{name}'


def _pop_stock(state_dict: StateDict, group: str, name: str, layer: int,
               num_fcs: int) -> Tuple[Tensor, Optional[Tensor]]:
    """Remove and return (weight, bias) of a stock projection."""
    if group == 'self_attn':
        attn = f'{DECODER}layers.{layer}.self_attn.attn.'
        if name == 'out_proj':
            return (state_dict.pop(attn + 'out_proj.weight'),
                    state_dict.pop(attn + 'out_proj.bias', None))
        index = SELF_ATTN_PROJECTIONS.index(name)
        weight = state_dict[attn + 'in_proj_weight'].chunk(3)[index]
        bias = state_dict.get(attn + 'in_proj_bias')
        bias = None if bias is None else bias.chunk(3)[index]
        if name == 'value_proj':  # the last of the three packed maps
            state_dict.pop(attn + 'in_proj_weight')
            state_dict.pop(attn + 'in_proj_bias', None)
        return weight.clone(), None if bias is None else bias.clone()
    prefix = DECODER + _map_prefix(group, name, layer, num_fcs)
    return (state_dict.pop(prefix + '.weight'),
            state_dict.pop(prefix + '.bias', None))


def _stock_shapes(state_dict: Mapping[str, Tensor],
                  num_fcs: int) -> Dict[str, Dict[str, ProjectionShape]]:
    layer0 = DECODER + 'layers.0.'
    packed = state_dict[layer0 + 'self_attn.attn.in_proj_weight']
    embed_dims = packed.shape[1]
    has_bias = layer0 + 'self_attn.attn.in_proj_bias' in state_dict
    shapes = {'self_attn': {
        name: ProjectionShape(embed_dims, embed_dims, has_bias)
        for name in SELF_ATTN_PROJECTIONS
    }}
    for group, names in (('cross_attn', CROSS_ATTN_PROJECTIONS),
                         ('ffn', ffn_projection_names(num_fcs))):
        shapes[group] = {}
        for name in names:
            prefix = DECODER + _map_prefix(group, name, 0, num_fcs)
            out_features, in_features = state_dict[prefix + '.weight'].shape
            shapes[group][name] = ProjectionShape(
                in_features, out_features, prefix + '.bias' in state_dict)
    return shapes


def decoder_num_parameters(state_dict: Mapping[str, Tensor]) -> int:
    """Number of decoder parameters in a state dict (each tensor once)."""
    return sum(t.numel() for key, t in state_dict.items()
               if key.startswith(DECODER))


@dataclass
class Conversion:
    """Result of a conversion.

    Args:
        state_dict: the converted state dict.
        family: ``'DINO'`` or ``'DeformableDETR'``.
        errors: per projection (``'group.name'``), the relative Frobenius
            reconstruction error of every layer (stock -> LORS only).
        decoder_params_before: decoder parameters of the input.
        decoder_params_after: decoder parameters of the output.
        notes: what the conversion dropped or assumed.
        lors_settings: the LORS settings recorded in the output checkpoint's
            meta (``{config key: value}``; to-lors only).
    """
    state_dict: StateDict
    family: str
    errors: Dict[str, List[float]] = field(default_factory=dict)
    decoder_params_before: int = 0
    decoder_params_after: int = 0
    notes: List[str] = field(default_factory=list)
    lors_settings: Dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def stock_to_lors(state_dict: Mapping[str, Tensor],
                  lors: Optional[Mapping] = None) -> Conversion:
    """Convert a stock mmdet DINO / Deformable-DETR state dict to LORS.

    Args:
        state_dict: the stock model's state dict.
        lors: the ``lors`` config of the target decoder (ranks, num_terms; see
            :mod:`.lors_config`). Its ``adaptive`` part is not produced here:
            the adaptive branch starts at zero, so a LORS model built with it
            keeps its own initial adaptive parameters (load with
            ``strict=False``; :func:`load_converted` does it).

    Raises:
        ValueError: not a DINO / Deformable-DETR checkpoint, already LORS, or
            ranks invalid for this checkpoint.
    """
    family = detect_detr_family(state_dict)
    if is_lors_state_dict(state_dict):
        raise ValueError(f'this {family} checkpoint already has a LORS decoder '
                         f'({DECODER + _LORS_PROBE} present)')
    if DECODER + _STOCK_PROBE not in state_dict:
        raise ValueError(f'not a stock mmdet {family} checkpoint: missing '
                         f'{DECODER + _STOCK_PROBE}')
    num_layers, num_fcs = _num_layers(state_dict), _num_fcs(state_dict)
    plan = build_lors_plan(lors, _stock_shapes(state_dict, num_fcs),
                           num_layers)
    converted = dict(state_dict)
    result = Conversion(converted, family,
                        decoder_params_before=decoder_num_parameters(
                            state_dict))
    for group, group_plan in plan.items():
        for name, projection in group_plan.items():
            weights, biases = zip(*(_pop_stock(converted, group, name, i,
                                               num_fcs)
                                    for i in range(num_layers)))
            has_bias = biases[0] is not None
            shared, layers, errors = lors_from_dense(
                list(weights), projection.ranks, projection.num_terms,
                list(biases) if has_bias else None)
            converted[f'{DECODER}shared.{group}.{name}.weight'] = \
                shared.weight.detach().clone()
            for i, layer in enumerate(layers):
                prefix = DECODER + _map_prefix(group, name, i, num_fcs)
                converted[prefix + '.lors_A'] = layer.lors_A.detach().clone()
                converted[prefix + '.lors_B'] = layer.lors_B.detach().clone()
                if has_bias:
                    converted[prefix + '.bias'] = layer.bias.detach().clone()
            result.errors[f'{group}.{name}'] = [float(e) for e in errors]
            if projection.adaptive is not None:
                result.notes.append(
                    f'{group}.{name}: adaptive branch left to the model init '
                    '(zero cores: no change of function)')
    result.decoder_params_after = decoder_num_parameters(converted)
    return result


@torch.no_grad()
def lors_to_stock(state_dict: Mapping[str, Tensor]) -> Conversion:
    """Merge a LORS DINO / Deformable-DETR state dict into mmdet's stock layout.

    Raises:
        ValueError: not a DINO / Deformable-DETR checkpoint, not LORS, or an
            adaptive branch that is active (its cores depend on the input and
            have no stock equivalent).
    """
    family = detect_detr_family(state_dict)
    if not is_lors_state_dict(state_dict):
        raise ValueError(f'this {family} checkpoint has no LORS decoder '
                         f'({DECODER + _LORS_PROBE} missing): nothing to merge')
    converted = dict(state_dict)
    result = Conversion(converted, family,
                        decoder_params_before=decoder_num_parameters(
                            state_dict))
    num_layers, num_fcs = _num_layers(state_dict), _num_fcs(state_dict)
    _drop_adaptive(converted, result)
    packed: Dict[int, Dict[str, Tuple[Tensor, Optional[Tensor]]]] = {
        i: {} for i in range(num_layers)
    }
    groups = (('self_attn', SELF_ATTN_PROJECTIONS),
              ('cross_attn', CROSS_ATTN_PROJECTIONS),
              ('ffn', ffn_projection_names(num_fcs)))
    for group, names in groups:
        for name in names:
            weight = converted.pop(f'{DECODER}shared.{group}.{name}.weight')
            shared = SharedLinear(weight.shape[1], weight.shape[0],
                                  num_layers)
            shared.weight.copy_(weight)
            layers, biases = [], []
            for i in range(num_layers):
                prefix = DECODER + _map_prefix(group, name, i, num_fcs)
                lors_a = converted.pop(prefix + '.lors_A')
                layer = LorsLinear(shared, lors_a.shape[0], bias=False)
                layer.lors_A.copy_(lors_a)
                layer.lors_B.copy_(converted.pop(prefix + '.lors_B'))
                layers.append(layer)
                biases.append(converted.pop(prefix + '.bias', None))
            for i, dense in enumerate(merge_linears(shared, layers)):
                if group == 'self_attn' and name != 'out_proj':
                    packed[i][name] = (dense, biases[i])
                    continue
                if group == 'self_attn':
                    prefix = f'{DECODER}layers.{i}.self_attn.attn.out_proj'
                else:
                    prefix = DECODER + _map_prefix(group, name, i, num_fcs)
                converted[prefix + '.weight'] = dense.detach().clone()
                if biases[i] is not None:
                    converted[prefix + '.bias'] = biases[i]
    for i, maps in packed.items():
        attn = f'{DECODER}layers.{i}.self_attn.attn.'
        names = ('query_proj', 'key_proj', 'value_proj')
        converted[attn + 'in_proj_weight'] = torch.cat(
            [maps[n][0] for n in names]).detach().clone()
        if maps['query_proj'][1] is not None:
            converted[attn + 'in_proj_bias'] = torch.cat(
                [maps[n][1] for n in names])
    leftover = sorted(k for k in converted
                      if re.search(r'\.(lors_A|lors_B)$', k)
                      or k.startswith(DECODER + 'shared.'))
    if leftover:
        raise ValueError(f'unexpected LORS tensors left after merging: '
                         f'{leftover[:5]}')
    result.decoder_params_after = decoder_num_parameters(converted)
    return result


def _drop_adaptive(state_dict: StateDict, result: Conversion) -> None:
    """Remove an inactive adaptive branch; refuse an active one."""
    generators = [k for k in state_dict if k.endswith('core_generator.weight')]
    for key in generators:
        prefix = key[:-len('core_generator.weight')]
        core = [state_dict[prefix + 'core_generator.weight'],
                state_dict[prefix + 'core_generator.bias']]
        if any(bool(t.any()) for t in core):
            raise ValueError(
                f'{prefix[:-1]} has an active adaptive branch (non-zero core '
                'generator): its per-query residual has no equivalent in the '
                'stock mmdet decoder, so the model cannot be merged')
        for suffix in _ADAPTIVE_SUFFIXES:
            state_dict.pop(prefix + suffix)
    if generators:
        result.notes.append(
            f'dropped {len(generators)} inactive adaptive branches (zero core '
            'generators: they added nothing)')


# --------------------------------------------------------------------------
# Whole checkpoints against a config (what tools/convert_detr_checkpoint.py
# runs)
# --------------------------------------------------------------------------
LORS_TYPES = {'LorsDINO': 'DINO', 'LorsDeformableDETR': 'DeformableDETR'}
LORS_KEY = 'model.decoder.lors'


def load_converted(model: torch.nn.Module, state_dict: Mapping[str,
                                                                Tensor]) -> None:
    """Load a converted state dict; only adaptive-branch tensors may be missing.

    Raises:
        ValueError: the state dict does not fit the model (other family,
            other box refinement / two-stage setting, other ranks...).
    """
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:
        raise ValueError(f'the checkpoint does not fit the model built from '
                         f'the config: {error}') from error
    missing = [k for k in missing if not k.endswith(_ADAPTIVE_SUFFIXES)]
    if missing or unexpected:
        raise ValueError(
            'the checkpoint does not fit the model built from the config: '
            f'missing keys {missing[:8]}{"..." if len(missing) > 8 else ""}, '
            f'unexpected keys {unexpected[:8]}'
            f'{"..." if len(unexpected) > 8 else ""}')


def _lors_config(config, rank=None):
    from mmengine.config import Config
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    model_type = cfg.model.get('type')
    if model_type not in LORS_TYPES:
        raise ValueError(
            f'the config must be a LORS DINO / Deformable-DETR config '
            f'(model.type in {sorted(LORS_TYPES)}), got model.type='
            f'{model_type!r}')
    if rank is not None:
        lors = dict(cfg.model.decoder.get('lors') or {})
        lors['rank'] = rank
        cfg.model.decoder.lors = lors
    return cfg


def _check_family(family: str, cfg, checkpoint: str) -> None:
    expected = LORS_TYPES[cfg.model.type]
    if family != expected:
        raise ValueError(f'{checkpoint} is a {family} checkpoint, but the '
                         f'config builds {cfg.model.type} (a {expected})')


def _read_state_dict(checkpoint: str) -> Tuple[StateDict, dict]:
    from mmengine.runner import CheckpointLoader
    loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    state_dict = loaded.get('state_dict', loaded)
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return dict(state_dict), dict(loaded.get('meta', {}))


def _build(model_cfg) -> torch.nn.Module:
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    return MODELS.build(model_cfg)


def convert_checkpoint(direction: str, config, checkpoint: str, out: str,
                       rank=None) -> Conversion:
    """Convert ``checkpoint`` and save it to ``out``.

    Args:
        direction: ``'to-lors'`` (stock mmdet checkpoint -> LORS at the ranks
            of ``config``) or ``'to-stock'`` (LORS checkpoint -> mmdet's stock
            layout, loadable by ``config`` without LORS, i.e. mmdet's config).
        config: path (or Config) of the LORS config.
        checkpoint: input checkpoint path.
        out: output checkpoint path.
        rank: overrides ``decoder.lors.rank`` (int or ``'full'``), to-lors.

    Returns:
        The :class:`Conversion` (errors, parameter counts, notes).
    """
    import copy
    if direction not in ('to-lors', 'to-stock'):
        raise ValueError(f"direction must be 'to-lors' or 'to-stock', got "
                         f'{direction!r}')
    if direction == 'to-stock' and rank is not None:
        raise ValueError('rank applies to to-lors only')
    cfg = _lors_config(config, rank)
    state_dict, meta = _read_state_dict(checkpoint)
    family = detect_detr_family(state_dict)
    _check_family(family, cfg, checkpoint)
    if direction == 'to-lors':
        result = stock_to_lors(state_dict, cfg.model.decoder.get('lors'))
        model_cfg = cfg.model
    else:
        result = lors_to_stock(state_dict)
        model_cfg = copy.deepcopy(cfg.model)
        model_cfg.type = LORS_TYPES[cfg.model.type]
        model_cfg.decoder.pop('lors', None)
    model = _build(model_cfg)
    load_converted(model, result.state_dict)
    meta['lors_conversion'] = dict(
        direction=direction, source=checkpoint, model_type=model_cfg.type)
    # What shapes the LORS decoder, by config key (plain types: the file
    # loads with weights_only); a stock checkpoint has none.
    meta.pop(LORS_SETTINGS_META, None)
    if direction == 'to-lors':
        result.lors_settings = {LORS_KEY: plain(cfg.model.decoder.get('lors'),
                                                LORS_KEY)}
        meta[LORS_SETTINGS_META] = result.lors_settings
    torch.save(dict(meta=meta, state_dict=model.state_dict()), out)
    return result


def format_conversion(result: Conversion) -> str:
    """A printable report: per-layer reconstruction errors, parameter saving."""
    lines = []
    if result.errors:
        num_layers = len(next(iter(result.errors.values())))
        width = max(len(k) for k in result.errors) + 2
        lines.append('relative reconstruction error ||W_i - (W_s + B_i A_i)||'
                     ' / ||W_i|| per decoder layer:')
        lines.append(' ' * width +
                     ''.join(f'{f"L{i}":>9}' for i in range(num_layers)))
        for name, errors in result.errors.items():
            lines.append(f'{name:<{width}}' +
                         ''.join(f'{e:9.4f}' for e in errors))
    before, after = result.decoder_params_before, result.decoder_params_after
    change = 100.0 * (after - before) / max(before, 1)
    lines.append(f'{result.family} decoder parameters: {before:,} -> '
                 f'{after:,} ({change:+.1f}%)')
    lines.extend(result.notes)
    return '\n'.join(lines)
