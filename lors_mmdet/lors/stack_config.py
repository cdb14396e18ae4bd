"""The settings of one LORS stack: a typed config and its validation.

As a dict (e.g. an mmdet config ``lors=dict(decoder=dict(...))``)::

    dict(
        rank=16,            # rank of every private residual: int, 'full'
                            # (min(in, out): exact) or one entry per layer
        num_terms=1,        # K terms of rank r per layer (a pair of rank K*r)
        ranks={'ffn.*': 32, '*.out_proj': [4, 4, 8, 8, 16, 16]},
                            # per-projection overrides, first match wins
        include=['*'],      # projections to share (glob on the path inside
        exclude=[],         #   a layer; a pattern also selects the subtree
                            #   it names: 'self_attn' = 'self_attn.*')
        layer_groups=None,  # None: all layers share; 3: layers 0-2, 3-5...;
                            #   [2, 4]: layers 0-1 and 2-5 share
        init='fresh',       # 'fresh': shared = the first layer's weights of
                            #   each group, residuals zero; 'dense': shared =
                            #   mean, residual = truncated SVD of each layer
        factor_init='linear',  # init of each residual's A: nn.Linear's
                            #   bound ('linear') or kaiming_uniform_ with
                            #   default arguments ('kaiming')
        adaptive=None)      # None: generators are plain linear maps; a dict
                            #   turns every generator a layer declares
                            #   (lors_mmdet.lors.generated) into a shared
                            #   generator + private adaptive residual:
        # adaptive=dict(core_size=16,             # k, or one per layer
        #               adaptive_terms=[1, 2, 3], # K, or one per layer
        #               per_group_factors=False,  # L, R per group
        #               factor_init='linear')     # or 'kaiming'

Projections are the ``nn.Linear`` modules of a layer, by path (``ffn.0``,
``linear1``), and the four maps of each ``nn.MultiheadAttention``
(``self_attn.q_proj``, ``.k_proj``, ``.v_proj``, ``.out_proj``). With
``adaptive`` set, the declared generators are adaptive targets, not
projections: ``include`` / ``exclude`` / ``ranks`` do not see them.

Errors name the key (``lors.decoder.rank``...) and what was expected.
"""
import fnmatch
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._validate import check_adaptive_terms
from .static import FACTOR_INITS

RankSpec = Union[int, str, Tuple[Union[int, str], ...]]
INITS = ('fresh', 'dense')
KEYS = ('rank', 'num_terms', 'ranks', 'include', 'exclude', 'layer_groups',
        'init', 'factor_init', 'adaptive')
# former key -> (its name now, what it means)
RENAMED_KEYS = {'groups': ('layer_groups', 'adjacent layers that share one '
                           "weight; 'groups' alone means the matrix groups G of "
                           'a generator')}
ADAPTIVE_KEYS = ('core_size', 'adaptive_terms', 'per_group_factors',
                 'factor_init')
DEFAULT_RANK = 16


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_rank_spec(value: object, key: str) -> RankSpec:

    def one(v: object, where: str) -> Union[int, str]:
        if v == 'full' or (_is_int(v) and v > 0):
            return v
        raise ValueError(f"{where} must be a positive int or 'full', got "
                         f'{v!r}')

    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f'{key} must not be an empty list')
        return tuple(one(v, f'{key}[{i}]') for i, v in enumerate(value))
    return one(value, key)


def _check_terms(value: object, key: str) -> Union[int, Tuple[int, ...]]:
    values = value if isinstance(value, (list, tuple)) else [value]
    for i, v in enumerate(values):
        if not _is_int(v) or v <= 0:
            where = f'{key}[{i}]' if isinstance(value, (list, tuple)) else key
            raise ValueError(f'{where} must be a positive int, got {v!r}')
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _check_choice(value: object, choices: Sequence[str], key: str) -> str:
    if value not in choices:
        raise ValueError(f'{key} must be one of {tuple(choices)}, got '
                         f'{value!r}')
    return value


def _check_patterns(value: object, key: str) -> Tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, (list, tuple))
            or not all(isinstance(v, str) and v for v in values)):
        raise TypeError(f'{key} must be a glob pattern or a list of them '
                        f'(non-empty strings), got {value!r}')
    return tuple(values)


def _check_layer_groups(value: object, key: str):
    if value is None:
        return None
    if _is_int(value) and value > 0:
        return value
    if (isinstance(value, (list, tuple)) and value
            and all(_is_int(v) and v > 0 for v in value)):
        return tuple(value)
    raise ValueError(f'{key} must be None, a positive int (group size) or a '
                     f'list of positive ints (sizes of adjacent groups), got '
                     f'{value!r}')


def matches(path: str, pattern: str) -> bool:
    """Whether ``pattern`` selects ``path``: a glob match of the path or of
    one of its parent modules (``'self_attn'`` selects ``self_attn.q_proj``).
    """
    return (fnmatch.fnmatchcase(path, pattern)
            or fnmatch.fnmatchcase(path, pattern + '.*'))


@dataclass(frozen=True)
class ProjectionPlan:
    """What the surgery builds for one projection of the stack.

    Attributes:
        ranks: rank per term, one per layer.
        num_terms: number of terms, one per layer.
    """
    ranks: Tuple[int, ...]
    num_terms: Tuple[int, ...]


@dataclass(frozen=True)
class AdaptiveConfig:
    """Validated ``adaptive`` settings of a stack (the private adaptive
    residuals of its declared generators; see
    :class:`~lors_mmdet.lors.LorsAdaptive` for their meaning)."""
    core_size: int
    adaptive_terms: Union[int, Tuple[int, ...]] = 1
    per_group_factors: bool = False
    factor_init: str = 'linear'

    @classmethod
    def from_dict(cls, cfg: object, key: str) -> Optional['AdaptiveConfig']:
        """Validate the ``adaptive`` dict (None: no adaptive targets).

        Args:
            cfg: the dict, None, or a config (returned as is).
            key: where it sits in the user's config (``lors.adaptive``).
        """
        if cfg is None or isinstance(cfg, AdaptiveConfig):
            return cfg
        if not isinstance(cfg, Mapping):
            raise TypeError(f'{key} must be a dict with keys '
                            f'{list(ADAPTIVE_KEYS)} or None, got '
                            f'{type(cfg).__name__}')
        unknown = sorted(set(cfg) - set(ADAPTIVE_KEYS))
        if unknown:
            raise ValueError(f'unknown key(s) {unknown} in {key}; allowed: '
                             f'{list(ADAPTIVE_KEYS)}')
        if 'core_size' not in cfg:
            raise ValueError(f'{key}.core_size is required: the size k of '
                             f'the k x k adaptive cores, e.g. 16')
        per_group = cfg.get('per_group_factors', False)
        if not isinstance(per_group, bool):
            raise TypeError(f'{key}.per_group_factors must be a bool, got '
                            f'{per_group!r}')
        factor_init = _check_choice(cfg.get('factor_init', 'linear'),
                                    FACTOR_INITS, f'{key}.factor_init')
        return cls(
            core_size=_check_terms(cfg['core_size'], f'{key}.core_size'),
            adaptive_terms=_check_terms(cfg.get('adaptive_terms', 1),
                                        f'{key}.adaptive_terms'),
            per_group_factors=per_group,
            factor_init=factor_init)


@dataclass(frozen=True)
class AdaptivePlan:
    """What the surgery builds for one declared generator of the stack.

    Attributes:
        groups: the matrix groups ``G`` of the declaration.
        shapes: the ``(m, n)`` of each generated matrix.
        adaptive_terms: ``K`` per layer.
        core_sizes: ``k`` per layer.
    """
    groups: int
    shapes: Tuple[Tuple[int, int], ...]
    adaptive_terms: Tuple[int, ...]
    core_sizes: Tuple[int, ...]


@dataclass(frozen=True)
class LorsStackConfig:
    """Validated settings of one LORS stack (see the module docstring).

    Build it with :meth:`from_dict`; :meth:`plan` resolves it against the
    projections of a concrete stack.
    """
    rank: RankSpec = DEFAULT_RANK
    num_terms: Union[int, Tuple[int, ...]] = 1
    ranks: Tuple[Tuple[str, RankSpec], ...] = ()
    include: Tuple[str, ...] = ('*', )
    exclude: Tuple[str, ...] = ()
    layer_groups: Union[None, int, Tuple[int, ...]] = None
    init: str = 'fresh'
    factor_init: str = 'linear'
    adaptive: Optional[AdaptiveConfig] = None
    key: str = field(default='lors', compare=False)

    @classmethod
    def from_dict(cls, cfg: Union[None, Mapping, 'LorsStackConfig'],
                  key: str = 'lors') -> 'LorsStackConfig':
        """Validate a config dict.

        Args:
            cfg: the dict (None: all defaults), or a config (returned as is).
            key: where the dict sits in the user's config, for error
                messages (e.g. ``'model.lors.decoder'``).

        Raises:
            TypeError / ValueError naming the key and what was expected.
        """
        if isinstance(cfg, LorsStackConfig):
            return cfg
        cfg = {} if cfg is None else cfg
        if not isinstance(cfg, Mapping):
            raise TypeError(f'{key} must be a dict, got {type(cfg).__name__}')
        for old, (new, meaning) in RENAMED_KEYS.items():
            if old in cfg:
                raise ValueError(f'{key}.{old} was renamed {key}.{new} '
                                 f'({meaning})')
        unknown = sorted(set(cfg) - set(KEYS))
        if unknown:
            raise ValueError(f'unknown key(s) {unknown} in {key}; allowed: '
                             f'{list(KEYS)}')
        ranks = cfg.get('ranks') or {}
        if not isinstance(ranks, Mapping):
            raise TypeError(f'{key}.ranks must be a dict of glob pattern -> '
                            f'rank, got {type(ranks).__name__}')
        init = cfg.get('init', 'fresh')
        if init not in INITS:
            raise ValueError(f'{key}.init must be one of {INITS}, got '
                             f'{init!r}')
        factor_init = _check_choice(cfg.get('factor_init', 'linear'),
                                    FACTOR_INITS, f'{key}.factor_init')
        return cls(
            rank=_check_rank_spec(cfg.get('rank', DEFAULT_RANK),
                                  f'{key}.rank'),
            num_terms=_check_terms(cfg.get('num_terms', 1),
                                   f'{key}.num_terms'),
            ranks=tuple(
                (_check_patterns(p, f'{key}.ranks')[0],
                 _check_rank_spec(v, f'{key}.ranks[{p!r}]'))
                for p, v in ranks.items()),
            include=_check_patterns(cfg.get('include', ('*', )),
                                    f'{key}.include'),
            exclude=_check_patterns(cfg.get('exclude', ()), f'{key}.exclude'),
            layer_groups=_check_layer_groups(cfg.get('layer_groups'),
                                             f'{key}.layer_groups'),
            init=init,
            factor_init=factor_init,
            adaptive=AdaptiveConfig.from_dict(cfg.get('adaptive'),
                                              f'{key}.adaptive'),
            key=key)

    def group_layers(self, num_layers: int) -> List[List[int]]:
        """The layer indices of each group of adjacent layers."""
        key = f'{self.key}.layer_groups'
        if self.layer_groups is None:
            return [list(range(num_layers))]
        if _is_int(self.layer_groups):
            if num_layers % self.layer_groups:
                raise ValueError(f'{key}={self.layer_groups} must divide the '
                                 f'number of layers ({num_layers})')
            sizes = [self.layer_groups] * (num_layers // self.layer_groups)
        else:
            sizes = list(self.layer_groups)
            if sum(sizes) != num_layers:
                raise ValueError(f'{key}={list(sizes)} must sum to the number '
                                 f'of layers ({num_layers}), got {sum(sizes)}')
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [list(range(s, s + n)) for s, n in zip(starts, sizes)]

    def select(self, paths: Sequence[str], check: bool = True) -> List[str]:
        """The projections of ``paths`` picked by ``include`` / ``exclude``.

        Args:
            paths: projection paths inside a layer.
            check: raise when a pattern selects none of ``paths``.

        Raises:
            ValueError: a pattern selects nothing (a typo would otherwise
                silently share something else or nothing).
        """
        for name in ('include', 'exclude') if check else ():
            for pattern in getattr(self, name):
                if not any(matches(p, pattern) for p in paths):
                    raise ValueError(
                        f'{self.key}.{name}: pattern {pattern!r} matches no '
                        f'projection; projections: {list(paths)}')
        return [
            p for p in paths
            if any(matches(p, pattern) for pattern in self.include)
            and not any(matches(p, pattern) for pattern in self.exclude)
        ]

    def plan(self, shapes: Mapping[str, Tuple[int, int]],
             num_layers: int,
             allow_empty: bool = False) -> Dict[str, ProjectionPlan]:
        """Ranks and terms per layer of each selected projection.

        Args:
            shapes: ``{path: (in_features, out_features)}`` of the projections
                of one layer, in layer order.
            num_layers: number of layers of the stack.
            allow_empty: selecting no projection is fine (the stack has
                adaptive targets).

        Returns:
            ``{path: ProjectionPlan}`` of the selected projections.
        """
        selected = self.select(list(shapes))
        if not selected and not allow_empty:
            raise ValueError(f'{self.key}: include={list(self.include)} / '
                             f'exclude={list(self.exclude)} leave no '
                             f'projection; projections: {list(shapes)}')
        for pattern, _ in self.ranks:
            if not any(matches(p, pattern) for p in selected):
                raise ValueError(f'{self.key}.ranks: pattern {pattern!r} '
                                 f'matches no selected projection; selected: '
                                 f'{selected}')
        terms = self._per_layer(self.num_terms, num_layers,
                                f'{self.key}.num_terms')
        plans = {}
        for path in selected:
            spec, key = self.rank, f'{self.key}.rank'
            for pattern, value in self.ranks:
                if matches(path, pattern):
                    spec, key = value, f'{self.key}.ranks[{pattern!r}]'
                    break
            plans[path] = ProjectionPlan(
                self._resolve_ranks(spec, terms, shapes[path], key, path),
                tuple(terms))
        return plans

    def plan_adaptive(
            self, generated: Mapping[str, Tuple[int, Sequence[Tuple[int,
                                                                   int]]]],
            num_layers: int) -> Dict[str, AdaptivePlan]:
        """Adaptive terms per layer of each declared generator.

        Args:
            generated: ``{generator path: (groups, shapes)}`` of one layer.
            num_layers: number of layers of the stack.

        Returns:
            ``{path: AdaptivePlan}``; empty without ``adaptive`` settings.
        """
        if self.adaptive is None:
            return {}
        key = f'{self.key}.adaptive'
        if not generated:
            raise ValueError(
                f'{key} is set, but no module of the layers declares the '
                f'matrices it generates (a lors_generated attribute or '
                f'lors_mmdet.lors.declare_generated)')
        terms = self._per_layer(self.adaptive.adaptive_terms, num_layers,
                                f'{key}.adaptive_terms')
        core_sizes = self._per_layer(self.adaptive.core_size, num_layers,
                                     f'{key}.core_size')
        plans = {}
        for path, (groups, shapes) in generated.items():
            labels = {f'{path} {m}x{n}': (m, n) for m, n in shapes}
            for layer, (k, size) in enumerate(zip(terms, core_sizes)):
                size_key = self._layer_key(self.adaptive.core_size,
                                           f'{key}.core_size', layer)
                for m, n in shapes:
                    if size > min(m, n):
                        raise ValueError(
                            f'{size_key}={size} exceeds min(m, n) of the '
                            f'{m}x{n} matrices generated by {path!r}')
                check_adaptive_terms(
                    k, size, labels,
                    self._layer_key(self.adaptive.adaptive_terms,
                                    f'{key}.adaptive_terms', layer))
            plans[path] = AdaptivePlan(groups, tuple(shapes), tuple(terms),
                                       tuple(core_sizes))
        return plans

    @staticmethod
    def _layer_key(value, key: str, layer: int) -> str:
        """``key`` of a setting, indexed by layer when it is per layer."""
        return f'{key}[{layer}]' if isinstance(value, tuple) else key

    @staticmethod
    def _per_layer(value, num_layers: int, key: str) -> list:
        """The one expander of a setting given as one value for all layers
        or a tuple with one per layer."""
        if isinstance(value, tuple):
            if len(value) != num_layers:
                raise ValueError(f'{key} must have one entry per layer '
                                 f'(num_layers={num_layers}), got '
                                 f'{len(value)}: {list(value)}')
            return list(value)
        return [value] * num_layers

    def _resolve_ranks(self, spec: RankSpec, terms: List[int],
                       shape: Tuple[int, int], key: str,
                       path: str) -> Tuple[int, ...]:
        max_rank = min(shape)
        ranks = []
        for layer, (rank, num_terms) in enumerate(
                zip(self._per_layer(spec, len(terms), key), terms)):
            if rank == 'full':
                if num_terms != 1:
                    raise ValueError(f"{key}='full' needs num_terms=1, got "
                                     f'{num_terms} for layer {layer}')
                rank = max_rank
            if rank * num_terms > max_rank:
                raise ValueError(
                    f'{key}: rank {rank} x num_terms {num_terms} of layer '
                    f'{layer} exceeds min(in_features, out_features) = '
                    f'{max_rank} of {path!r} ({shape[0]} -> {shape[1]})')
            ranks.append(rank)
        return tuple(ranks)
