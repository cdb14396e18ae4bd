"""Ranks of a from-dense LORS stack, chosen by the energy they keep.

From-dense initialisation (:func:`~lors_mmdet.lors.lors_from_dense`) keeps,
for layer ``i``, the truncated SVD of its residual ``R_i = W_i - mean``. At
rank ``r`` the part of the residual it keeps is

    kept_i(r) = sum_{k < r} s_ik^2 / sum_k s_ik^2 = 1 - |R_i - R_i(r)|_F^2 / |R_i|_F^2

(``s_ik`` the singular values of ``R_i``): the *residual energy* kept. One
rank serves a projection kind (path) across the layers of a stack; the rule
here is the **largest** of the per-layer minimal ranks, so that every layer
keeps at least the target. A residual of zero energy (identical layers)
needs rank 0; the surgery's smallest rank, 1, is used and keeps it all.

Pure PyTorch: the weights are plain tensors (see :func:`stack_weights` for
the modules of a stack).
"""
import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .attention import PROJECTIONS
from .merge import _check_dense
from .stack_config import LorsStackConfig, matches
from .surgery import _check_layers
from .targets import linear_spec, linear_weight


@dataclass(frozen=True)
class RankChoice:
    """The rank of one projection kind and the residual energy it keeps.

    Attributes:
        rank: the rank used for every layer.
        max_rank: ``min(out_features, in_features)`` (exact at this rank).
        layer_ranks: the smallest rank that reaches the target, per layer
            (``rank`` itself everywhere for a fixed-rank report).
        kept_energy: per layer, the fraction of ``|W_i - mean|_F^2`` kept at
            ``rank`` (1.0 for a residual of zero energy).
        target: the energy target (or parameter budget), or None for a fixed
            rank.
        per_layer: each layer is built at its own ``layer_ranks`` entry (a
            budget's choice) instead of ``rank``.
    """
    rank: int
    max_rank: int
    layer_ranks: Tuple[int, ...]
    kept_energy: Tuple[float, ...]
    target: Optional[float] = None
    per_layer: bool = False

    @property
    def min_kept_energy(self) -> float:
        return min(self.kept_energy)


def _group_means(stacked: Tensor,
                 groups: Optional[Sequence[Sequence[int]]]) -> Tensor:
    """The mean weight that each layer's residual is taken against."""
    if groups is None:
        return stacked.mean(0, keepdim=True).expand_as(stacked)
    covered = sorted(i for group in groups for i in group)
    if covered != list(range(len(stacked))):
        raise ValueError(f'groups must cover the layers 0..{len(stacked) - 1}'
                         f' once each, got {[list(g) for g in groups]}')
    means = torch.empty_like(stacked)
    for group in groups:
        means[list(group)] = stacked[list(group)].mean(0)
    return means


@torch.no_grad()
def residual_energy_curves(
        weights: Sequence[Tensor],
        groups: Optional[Sequence[Sequence[int]]] = None) -> List[Tensor]:
    """Per layer, the cumulative squared singular values of its residual.

    Args:
        weights: N tensors (out_features, in_features) of the same shape.
        groups: layer indices sharing one mean (default: all layers), as
            :meth:`LorsStackConfig.group_layers` returns them.

    Returns:
        N float64 tensors ``c`` of length ``min(out, in)``: ``c[r - 1]`` is
        the residual energy a rank-``r`` truncation keeps (``c[-1]`` the
        total).
    """
    _check_dense(weights, None)
    stacked = torch.stack([w.detach().double() for w in weights])
    residuals = stacked - _group_means(stacked, groups)
    singular = torch.linalg.svdvals(residuals)
    return list((singular**2).cumsum(-1))


def _kept(curve: Tensor, rank: int) -> float:
    total = float(curve[-1])
    return 1.0 if total == 0 else float(curve[rank - 1]) / total


def rank_for_energy(weights: Sequence[Tensor],
                    target: float,
                    groups: Optional[Sequence[Sequence[int]]] = None
                    ) -> RankChoice:
    """The smallest rank with which every layer keeps ``target`` of its
    residual energy.

    Args:
        weights: N dense weights of one projection kind.
        target: fraction in (0, 1] of each ``|W_i - mean|_F^2`` to keep.
        groups: see :func:`residual_energy_curves`.
    """
    if not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f'the energy target must be in (0, 1], got '
                         f'{target!r}')
    curves = residual_energy_curves(weights, groups)
    layer_ranks = []
    for curve in curves:
        # smallest r with curve[r - 1] >= target * total; the last entry is
        # the total itself, so a rank always exists
        needed = int(torch.searchsorted(curve, target * curve[-1])) + 1
        layer_ranks.append(1 if float(curve[-1]) == 0 else needed)
    rank = max(layer_ranks)
    return RankChoice(rank, len(curves[0]), tuple(layer_ranks),
                      tuple(_kept(c, rank) for c in curves), float(target))


def rank_report(weights: Sequence[Tensor],
                rank: Union[int, Sequence[int]],
                groups: Optional[Sequence[Sequence[int]]] = None
                ) -> RankChoice:
    """The residual energy each layer keeps at a fixed rank.

    Args:
        weights: N dense weights of one projection kind.
        rank: a positive int (at most ``min(out, in)``), or one per layer
            (then :attr:`RankChoice.rank` is the largest).
        groups: see :func:`residual_energy_curves`.
    """
    curves = residual_energy_curves(weights, groups)
    max_rank = len(curves[0])
    ranks = [rank] * len(curves) if not isinstance(rank, Sequence) \
        else list(rank)
    if len(ranks) != len(curves):
        raise ValueError(f'rank must be an int or one int per layer '
                         f'({len(curves)}), got {rank!r}')
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int) \
                or not 0 < r <= max_rank:
            raise ValueError(f'rank must be an int in [1, {max_rank}] '
                             f'(min(out_features, in_features)), got {r!r}')
    return RankChoice(max(ranks), max_rank, tuple(ranks),
                      tuple(_kept(c, r) for c, r in zip(curves, ranks)))


def dense_weight(layer: nn.Module, path: str) -> Tensor:
    """The weight of projection ``path`` of a stock layer, (out, in): an
    ``nn.Linear``'s weight, a transposed linear's (``Conv1D``) transposed,
    or for ``<attention>.q_proj`` ... of an ``nn.MultiheadAttention`` its
    slice of the packed input projection (the paths
    :func:`~lors_mmdet.lors.apply_lors` uses).

    Raises:
        ValueError: ``path`` names neither.
    """
    parent, _, name = path.rpartition('.')
    owner = layer.get_submodule(parent) if parent else layer
    if isinstance(owner, nn.MultiheadAttention) and name in PROJECTIONS:
        if name == 'out_proj':
            return owner.out_proj.weight
        index = PROJECTIONS.index(name)
        if owner._qkv_same_embed_dim:
            return owner.in_proj_weight.chunk(3)[index]
        return getattr(owner, f'{name[0]}_proj_weight')
    module = layer.get_submodule(path)
    if linear_spec(module) is None:
        raise ValueError(f'{path!r} is a {type(module).__name__}, not an '
                         'nn.Linear, a transposed linear (Conv1D) or a map '
                         'of an nn.MultiheadAttention')
    return linear_weight(module)


def stack_weights(layers: Sequence[nn.Module],
                  paths: Sequence[str]) -> Dict[str, List[Tensor]]:
    """``{path: [weight of layer 0, ..., layer N-1]}`` of a stock stack."""
    return {path: [dense_weight(layer, path) for layer in layers]
            for path in paths}


def choose_stack_ranks(owner: nn.Module,
                       layers: str,
                       config: Union[None, Mapping, LorsStackConfig] = None,
                       energy: Optional[float] = None,
                       key: str = 'lors') -> Dict[str, RankChoice]:
    """The rank of each projection of a stock stack that
    :func:`~lors_mmdet.lors.apply_lors` with ``config`` would share.

    Args:
        owner: the module holding the stack (e.g. an encoder).
        layers: owner-relative path of the ``ModuleList`` of the layers.
        config: the stack's :class:`LorsStackConfig` (or dict): which
            projections (``include`` / ``exclude``), ``layer_groups``, and the
            ranks of a fixed-rank report.
        energy: an energy target in (0, 1]: the projections that no
            ``config.ranks`` pattern names get :func:`rank_for_energy`'s
            rank; the others keep their configured rank (reported).
        key: where ``config`` sits in the user's config (error messages).

    Returns:
        ``{path: RankChoice}`` in layer order. Ranks count ``rank x
        num_terms`` (the rank of each layer's whole residual).
    """
    config = LorsStackConfig.from_dict(config, key)
    stack = list(owner.get_submodule(layers))
    shapes = {path: spec[:2] for path, spec in _check_layers(
        owner, stack, 'lors_' + layers.replace('.', '_'), config)[0].items()}
    # energy: config.rank is not used; rank 1 only lets plan() validate
    plans = (dataclasses.replace(config, rank=1) if energy is not None
             else config).plan(shapes, len(stack))
    groups = config.group_layers(len(stack))
    choices = {}
    for path, plan in plans.items():
        weights = [dense_weight(layer, path) for layer in stack]
        named = any(matches(path, pattern) for pattern, _ in config.ranks)
        if energy is not None and not named:
            choices[path] = rank_for_energy(weights, energy, groups)
        else:
            choices[path] = rank_report(
                weights, [r * k for r, k in zip(plan.ranks, plan.num_terms)],
                groups)
    return choices
