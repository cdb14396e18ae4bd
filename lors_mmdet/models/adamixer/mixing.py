"""AdaMixer's adaptive channel + spatial mixing, stock and LORS.

For each query q and mixing group g the sampled features x (P_in points by c
channels) are mixed twice with matrices generated from q:

1. channel mixing  ``x @ M(q)``  (c x c), LayerNorm over (P, c), ReLU
2. spatial mixing  ``S(q) @ x``  (P_out x P_in), LayerNorm over (P, c), ReLU

then flattened over (G, P_out, c) and projected back to the query dim; the
result is added to the query (the stage applies a LayerNorm after).

:class:`AdaptiveMixing` generates M and S with one Linear per stage
(AdaMixer). It declares them (:meth:`AdaptiveMixing.lors_generated`), so
``model.lors.decoder.adaptive`` makes LORS-AdaMixer of it by the stack
surgery: the generator becomes a generator shared by all stages plus a
private low-rank adaptive residual per stage, and ``out_proj`` (a static
target) a shared matrix plus a private low-rank residual
(:mod:`lors_mmdet.models.adamixer.detector`).
"""
from typing import Callable

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


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

    def lors_generated(self) -> dict:
        """What the generator makes per query, for the stack surgery: G
        groups of M (c x c) and S (P_out x P_in), in :meth:`generate`'s
        layout."""
        c = self.group_channels
        return dict(generator='parameter_generator', groups=self.n_groups,
                    shapes=[(c, c), (self.out_points, self.in_points)])

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
