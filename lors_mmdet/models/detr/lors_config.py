"""The ``lors`` key of a LORS DETR decoder config: parsing and validation.

A decoder config gains one key::

    decoder=dict(
        num_layers=6, layer_cfg=..., post_norm_cfg=None,
        lors=dict(
            rank=16,        # every projection: int, 'full', or one entry per layer
            num_terms=1,    # K terms of rank r (== one pair of rank K * r)
            ranks=dict(     # optional overrides, per group or per projection
                cross_attn=dict(attention_weights=8),
                ffn=[8, 8, 16, 16, 32, 32]),
            adaptive=dict(  # optional query-adaptive branch, default off
                projections=['ffn.fc1'], core_size=8, num_terms=1)))

Projections of a decoder layer, by group:

- ``self_attn``: ``query_proj``, ``key_proj``, ``value_proj``, ``out_proj``
- ``cross_attn``: ``sampling_offsets``, ``attention_weights``, ``value_proj``,
  ``output_proj``
- ``ffn``: ``fc1`` ... ``fcN`` (``N`` = the FFN's ``num_fcs``, 2 in mmdet)

``'full'`` means ``min(in_features, out_features)`` (exact conversion of a
dense model, see :mod:`.convert`).
"""
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Union

DEFAULT_RANK = 16
GROUPS = ('self_attn', 'cross_attn', 'ffn')
SELF_ATTN_PROJECTIONS = ('query_proj', 'key_proj', 'value_proj', 'out_proj')
CROSS_ATTN_PROJECTIONS = ('sampling_offsets', 'attention_weights',
                          'value_proj', 'output_proj')
LORS_KEYS = ('rank', 'num_terms', 'ranks', 'adaptive')
ADAPTIVE_KEYS = ('projections', 'core_size', 'num_terms')
# The adaptive core is generated from the projection's own input token; the
# cross-attention value projection reads encoder memory, not queries.
NOT_ADAPTIVE = ('cross_attn.value_proj', )

RankValue = Union[int, str, Sequence[Union[int, str]]]


def ffn_projection_names(num_fcs: int) -> List[str]:
    """``['fc1', ..., 'fcN']`` for an FFN of ``num_fcs`` linear layers."""
    return [f'fc{j + 1}' for j in range(num_fcs)]


@dataclass(frozen=True)
class ProjectionShape:
    """Shape of one linear projection of a decoder layer."""
    in_features: int
    out_features: int
    bias: bool = True

    @property
    def max_rank(self) -> int:
        return min(self.in_features, self.out_features)


@dataclass(frozen=True)
class AdaptivePlan:
    """The adaptive branch of one projection: a ``core_size`` core per term."""
    core_size: int
    num_terms: int


@dataclass(frozen=True)
class ProjectionPlan:
    """What the LORS decoder builds for one projection kind.

    Args:
        shape: the projection's shape.
        ranks: rank per layer.
        num_terms: number of low-rank terms per layer.
        adaptive: the adaptive branch, or None.
    """
    shape: ProjectionShape
    ranks: List[int]
    num_terms: List[int]
    adaptive: Optional[AdaptivePlan] = None


Shapes = Mapping[str, Mapping[str, ProjectionShape]]
Plan = Dict[str, Dict[str, ProjectionPlan]]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _per_layer(value: object, num_layers: int, key: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ValueError(
                f'{key} must have one entry per decoder layer '
                f'(num_layers={num_layers}), got {len(value)}: {list(value)}')
        return list(value)
    return [value] * num_layers


def _resolve_ranks(value: RankValue, terms: List[int], shape: ProjectionShape,
                   key: str) -> List[int]:
    ranks = []
    for layer, (rank, num_terms) in enumerate(
            zip(_per_layer(value, len(terms), key), terms)):
        if rank == 'full':
            if num_terms != 1:
                raise ValueError(
                    f"{key}='full' needs num_terms=1, got num_terms="
                    f'{num_terms} for layer {layer}')
            rank = shape.max_rank
        if not _is_int(rank) or rank <= 0:
            raise ValueError(f"{key} must be a positive int or 'full' "
                             f'(per layer: a list of them), got {rank!r} '
                             f'for layer {layer}')
        if rank * num_terms > shape.max_rank:
            raise ValueError(
                f'{key}: rank {rank} x num_terms {num_terms} of layer {layer} '
                f'exceeds min(in_features, out_features) = {shape.max_rank} '
                f'of this projection ({shape.in_features} -> '
                f'{shape.out_features})')
        ranks.append(rank)
    return ranks


def _resolve_terms(value: object, num_layers: int, key: str) -> List[int]:
    terms = _per_layer(value, num_layers, key)
    for layer, num_terms in enumerate(terms):
        if not _is_int(num_terms) or num_terms <= 0:
            raise ValueError(f'{key} must be a positive int (per layer: a '
                             f'list of them), got {num_terms!r} for layer '
                             f'{layer}')
    return terms


def _check_keys(cfg: Mapping, allowed: Sequence[str], key: str) -> None:
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(f'unknown key(s) {unknown} in {key}; allowed: '
                         f'{list(allowed)}')


def _rank_overrides(ranks: Optional[Mapping], shapes: Shapes,
                    key: str) -> Dict[str, Dict[str, tuple]]:
    """Flatten ``ranks=dict(group=value | dict(name=value))``.

    Returns ``{group: {name: (value, config key of the value)}}``.
    """
    if ranks is None:
        return {}
    if not isinstance(ranks, Mapping):
        raise TypeError(f'{key} must be a dict, got {type(ranks).__name__}')
    _check_keys(ranks, list(shapes), key)
    overrides: Dict[str, Dict[str, tuple]] = {}
    for group, value in ranks.items():
        if isinstance(value, Mapping):
            _check_keys(value, list(shapes[group]), f'{key}.{group}')
            overrides[group] = {name: (rank, f'{key}.{group}.{name}')
                                for name, rank in value.items()}
        else:
            overrides[group] = {name: (value, f'{key}.{group}')
                                for name in shapes[group]}
    return overrides


def _adaptive_plan(adaptive: Optional[Mapping], shapes: Shapes,
                   key: str) -> Dict[str, AdaptivePlan]:
    """``{'group.name': AdaptivePlan}`` of the projections with the branch."""
    if adaptive is None:
        return {}
    if not isinstance(adaptive, Mapping):
        raise TypeError(f'{key} must be a dict or None, got '
                        f'{type(adaptive).__name__}')
    _check_keys(adaptive, ADAPTIVE_KEYS, key)
    projections = adaptive.get('projections')
    if (not isinstance(projections, (list, tuple)) or not projections
            or not all(isinstance(p, str) for p in projections)):
        raise ValueError(f"{key}.projections must be a non-empty list of "
                         f"'group.name' strings, got {projections!r}")
    core_size = adaptive.get('core_size', 8)
    num_terms = adaptive.get('num_terms', 1)
    for name, value in (('core_size', core_size), ('num_terms', num_terms)):
        if not _is_int(value) or value <= 0:
            raise ValueError(f'{key}.{name} must be a positive int, got '
                             f'{value!r}')
    plans = {}
    known = [f'{g}.{n}' for g in shapes for n in shapes[g]]
    for projection in projections:
        if projection not in known:
            raise ValueError(f'{key}.projections: unknown projection '
                             f'{projection!r}; known: {known}')
        if projection in NOT_ADAPTIVE:
            raise ValueError(
                f'{key}.projections: {projection!r} reads the encoder memory, '
                'not the queries; the adaptive branch is per query')
        group, name = projection.split('.')
        shape = shapes[group][name]
        if core_size * num_terms > shape.max_rank:
            raise ValueError(
                f'{key}: core_size {core_size} x num_terms {num_terms} '
                f'exceeds min(in_features, out_features) = {shape.max_rank} '
                f'of {projection}')
        plans[projection] = AdaptivePlan(core_size, num_terms)
    return plans


def build_lors_plan(lors: Optional[Mapping], shapes: Shapes, num_layers: int,
                    key: str = 'decoder.lors') -> Plan:
    """Validate a ``lors`` config against the decoder's projections.

    Args:
        lors: the ``lors`` dict of the decoder config (None: all defaults).
        shapes: ``{group: {name: ProjectionShape}}`` of the decoder layers.
        num_layers: number of decoder layers.
        key: the config path used in error messages.

    Returns:
        ``{group: {name: ProjectionPlan}}``.

    Raises:
        ValueError / TypeError naming the offending key and value.
    """
    lors = {} if lors is None else lors
    if not isinstance(lors, Mapping):
        raise TypeError(f'{key} must be a dict, got {type(lors).__name__}')
    _check_keys(lors, LORS_KEYS, key)
    terms = _resolve_terms(lors.get('num_terms', 1), num_layers,
                           f'{key}.num_terms')
    default_rank = lors.get('rank', DEFAULT_RANK)
    overrides = _rank_overrides(lors.get('ranks'), shapes, f'{key}.ranks')
    adaptive = _adaptive_plan(lors.get('adaptive'), shapes,
                              f'{key}.adaptive')
    plan: Plan = {}
    for group, projections in shapes.items():
        plan[group] = {}
        for name, shape in projections.items():
            if name in overrides.get(group, {}):
                value, rank_key = overrides[group][name]
            else:
                value, rank_key = default_rank, f'{key}.rank'
            ranks = _resolve_ranks(value, terms, shape, rank_key)
            plan[group][name] = ProjectionPlan(
                shape, ranks, list(terms), adaptive.get(f'{group}.{name}'))
    return plan
