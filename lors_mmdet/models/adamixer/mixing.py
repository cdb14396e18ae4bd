"""AdaMixer's adaptive channel + spatial mixing, plain and LORS.

For each query q and mixing group g the sampled features x (P_in points by c
channels) are mixed twice with matrices generated from q:

1. channel mixing  ``x @ M(q)``  (c x c), LayerNorm over (P, c), ReLU
2. spatial mixing  ``S(q) @ x``  (P_out x P_in), LayerNorm over (P, c), ReLU

then flattened over (G, P_out, c) and projected back to the query dim; the
result is added to the query (the stage applies a LayerNorm after).

:class:`AdaptiveMixing` generates M and S with one Linear per stage (AdaMixer).
:class:`LorsAdaptiveMixing` is one stage of LORS-AdaMixer: M and S are the
output of a generator shared by all stages plus a private low-rank adaptive
residual, and the output projection is a shared matrix plus a private
low-rank static residual. It holds only the private parts; the shared ones
are registered once on the decoder (see ``LorsAdaMixerDecoder``).
"""
from typing import Callable

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lors_mmdet.lors import LorsAdaptive, LorsLinear


def _mix(x: Tensor, channel_mix: Callable[[Tensor], Tensor],
         spatial_mix: Callable[[Tensor], Tensor]) -> Tensor:
    """Channel mixing, spatial mixing, flatten: (B, N, G, P_in, c) ->
    (B, N, G * P_out * c)."""
    out = channel_mix(x)
    out = F.relu(F.layer_norm(out, out.shape[-2:]))
    out = spatial_mix(out)
    out = F.relu(F.layer_norm(out, out.shape[-2:]))
    return out.flatten(2)


def check_mixing_dims(feat_channels: int, n_groups: int, in_points: int,
                      out_points: int) -> int:
    """Validate the mixing sizes; return the channels per group."""
    for name, value in (('feat_channels', feat_channels),
                        ('n_groups', n_groups), ('in_points', in_points),
                        ('out_points', out_points)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    if feat_channels % n_groups != 0:
        raise ValueError(f'n_groups={n_groups} must divide '
                         f'feat_channels={feat_channels}')
    return feat_channels // n_groups


class AdaptiveMixing(nn.Module):
    """Adaptive mixing of one AdaMixer stage (all weights private).

    Args:
        query_dim (int): Query (content) dimension.
        feat_channels (int): Channels of the sampled features (all groups).
        in_points (int): Sampled points per group, P_in.
        out_points (int): Mixed points per group, P_out.
        n_groups (int): Mixing groups, G.
    """

    def __init__(self, query_dim: int, feat_channels: int, in_points: int,
                 out_points: int, n_groups: int) -> None:
        super().__init__()
        self.group_channels = check_mixing_dims(feat_channels, n_groups,
                                                in_points, out_points)
        self.in_points = in_points
        self.out_points = out_points
        self.n_groups = n_groups
        c = self.group_channels
        self.parameter_generator = nn.Linear(
            query_dim, n_groups * (c * c + out_points * in_points))
        self.out_proj = nn.Linear(c * out_points * n_groups, query_dim)

    def init_weights(self) -> None:
        """Zero generator weight: at step 0 the mixing matrices are the
        (query-independent) generator bias."""
        nn.init.zeros_(self.parameter_generator.weight)

    def generate(self, query: Tensor) -> tuple:
        """Mixing matrices ``M`` (..., G, c, c) and ``S`` (..., G, P_out,
        P_in) for queries (..., query_dim)."""
        c = self.group_channels
        params = self.parameter_generator(query)
        params = params.view(*query.shape[:-1], self.n_groups, -1)
        channel, spatial = params.split(
            [c * c, self.out_points * self.in_points], dim=-1)
        channel = channel.unflatten(-1, (c, c))
        spatial = spatial.unflatten(-1, (self.out_points, self.in_points))
        return channel, spatial

    def forward(self, x: Tensor, query: Tensor) -> Tensor:
        """
        Args:
            x (Tensor): Sampled features (B, N, G, P_in, c).
            query (Tensor): Queries (B, N, query_dim).

        Returns:
            Tensor: ``query + out_proj(mixed)``, (B, N, query_dim).
        """
        channel, spatial = self.generate(query)
        mixed = _mix(x, lambda t: t @ channel, lambda t: spatial @ t)
        return query + self.out_proj(mixed)


class LorsAdaptiveMixing(nn.Module):
    """Private part of one LORS-AdaMixer stage's adaptive mixing.

    ``M_i(q) = M_shared(q) + sum_k L Z_k(q) R`` and likewise for ``S``
    (:class:`~lors_mmdet.lors.LorsAdaptive`); the output projection is
    ``W_shared + B_i A_i`` with a private bias
    (:class:`~lors_mmdet.lors.LorsLinear`). The shared generator and shared
    projection are held, not registered.

    Args:
        shared_generator (SharedGenerator): Stack-wide generator of
            ``[M, S]`` with shapes ``[(c, c), (P_out, P_in)]``.
        shared_out_proj (SharedLinear): Stack-wide output projection
            (``c * P_out * G -> query_dim``, no bias).
        core_size (int): Size k of the private adaptive cores.
        adaptive_terms (int): Number K_i of adaptive low-rank terms.
        out_proj_rank (int): Rank r of the private residual of the output
            projection.
        per_group_factors (bool): One pair of static factors ``L``, ``R``
            per mixing group (the published model) instead of one pair
            shared by the groups. Defaults to True.
        factor_init (str): Init of ``L``, ``R`` and the projection's ``A``:
            ``'kaiming'`` (default, the published model's
            ``kaiming_uniform_`` with default arguments) or ``'linear'``
            (nn.Linear's bound, the LoRA convention).
    """

    def __init__(self,
                 shared_generator: nn.Module,
                 shared_out_proj: nn.Module,
                 core_size: int,
                 adaptive_terms: int,
                 out_proj_rank: int,
                 per_group_factors: bool = True,
                 factor_init: str = 'kaiming') -> None:
        super().__init__()
        self.generator = LorsAdaptive(
            shared_generator,
            core_size=core_size,
            adaptive_terms=adaptive_terms,
            per_group_factors=per_group_factors,
            factor_init=factor_init)
        self.out_proj = LorsLinear(
            shared_out_proj,
            rank=out_proj_rank,
            num_terms=1,
            bias=True,
            factor_init=factor_init)

    def reset_parameters(self) -> None:
        """LORS init of the private parts (zero residuals at step 0)."""
        self.generator.reset_parameters()
        self.out_proj.reset_parameters()

    def forward(self, x: Tensor, query: Tensor) -> Tensor:
        """Same contract as :meth:`AdaptiveMixing.forward`."""
        mats = self.generator(query)
        mixed = _mix(x, lambda t: mats.apply_right(t, 0),
                     lambda t: mats.apply_left(1, t))
        return query + self.out_proj(mixed)
