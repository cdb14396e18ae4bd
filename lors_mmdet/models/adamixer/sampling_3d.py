"""AdaMixer's adaptive 3D feature sampling, in pure PyTorch.

The feature pyramid is treated as one 3D space: (x, y) in pixels and a scale
axis z = log2(stride). A query generates sampling points around its box, each
with its own z; a point reads every pyramid level bilinearly
(``F.grid_sample``) and mixes the levels with Gaussian weights centred on its z
(a softmax over ``-(z - log2(stride))**2 / tau``). The same code runs on CPU
and GPU.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .xyzr import xyzr_to_wh


def make_sample_points(offsets: Tensor, xyzr: Tensor, num_groups: int,
                       num_points: int) -> Tensor:
    """Turn generated offsets into absolute 3D sampling points.

    Args:
        offsets (Tensor): (B, N, num_groups * num_points * 3), laid out group
            by group, point by point, (dx, dy, dz) last. ``dx, dy`` are in
            units of the box width / height, ``dz`` in log2 units.
        xyzr (Tensor): Query boxes (B, N, 4).
        num_groups (int): Sampling groups (one per mixing group).
        num_points (int): Points per group.

    Returns:
        Tensor: (B, N, num_groups, num_points, 3): x, y in pixels and z.
    """
    batch_size, num_queries = xyzr.shape[:2]
    offsets = offsets.view(batch_size, num_queries, num_groups, num_points, 3)
    box_wh = xyzr_to_wh(xyzr)[:, :, None, None, :]
    xy = xyzr[:, :, None, None, 0:2] + offsets[..., 0:2] * box_wh
    z = xyzr[:, :, None, None, 2:3] + offsets[..., 2:3]
    return torch.cat([xy, z], dim=-1)


def level_weights(z: Tensor, featmap_strides: Sequence[int],
                  tau: float = 2.0) -> Tensor:
    """Gaussian weights of each pyramid level for points at scale ``z``.

    Args:
        z (Tensor): Point scales (...,) in log2 pixels.
        featmap_strides (Sequence[int]): Stride of each level.
        tau (float): Width of the Gaussian. Defaults to 2.

    Returns:
        Tensor: (..., num_levels), summing to 1 over the last dim.
    """
    level_z = torch.log2(
        torch.as_tensor(featmap_strides, dtype=z.dtype, device=z.device))
    logits = -(z[..., None] - level_z).pow(2) / tau
    return logits.softmax(dim=-1)


def sampling_3d(points: Tensor,
                feats: Sequence[Tensor],
                featmap_strides: Sequence[int],
                tau: float = 2.0) -> Tensor:
    """Sample a feature pyramid at 3D points.

    Channel group ``g`` of the features is read by the points of group ``g``.

    Args:
        points (Tensor): (B, N, G, P, 3) from :func:`make_sample_points`.
        feats (Sequence[Tensor]): Pyramid levels, each (B, C, H_l, W_l),
            C divisible by G. Level l covers ``W_l * stride_l`` by
            ``H_l * stride_l`` pixels (the padded batch size).
        featmap_strides (Sequence[int]): Stride of each level.
        tau (float): Width of the level Gaussian. Defaults to 2.

    Returns:
        Tensor: (B, N, G, P, C // G), zero where a point falls outside.
    """
    if len(feats) != len(featmap_strides):
        raise ValueError(f'got {len(feats)} feature levels but '
                         f'{len(featmap_strides)} featmap_strides')
    batch_size, num_queries, num_groups, num_points, _ = points.shape
    channels = feats[0].size(1)
    if channels % num_groups != 0:
        raise ValueError(f'feature channels ({channels}) must be divisible '
                         f'by the number of sampling groups ({num_groups})')
    group_channels = channels // num_groups

    weights = level_weights(points[..., 2], featmap_strides, tau)
    # grid_sample wants one "image" per (batch, group): (B*G, N, P, ...)
    weights = weights.permute(0, 2, 1, 3, 4).flatten(0, 1)
    xy = points[..., 0:2].permute(0, 2, 1, 3, 4).flatten(0, 1)

    out = None
    for level, (feat, stride) in enumerate(zip(feats, featmap_strides)):
        height, width = feat.shape[-2:]
        extent = xy.new_tensor([width * stride, height * stride])
        grid = xy / extent * 2.0 - 1.0
        value = feat.reshape(batch_size * num_groups, group_channels, height,
                             width)
        sampled = F.grid_sample(
            value,
            grid,
            mode='bilinear',
            padding_mode='zeros',
            align_corners=False)  # (B*G, c, N, P)
        sampled = sampled * weights[..., level].unsqueeze(1)
        out = sampled if out is None else out + sampled
    out = out.view(batch_size, num_groups, group_channels, num_queries,
                   num_points)
    return out.permute(0, 3, 1, 4, 2)
