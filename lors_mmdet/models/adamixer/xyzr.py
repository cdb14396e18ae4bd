"""The (x, y, z, r) box parameterisation of AdaMixer.

A query box is stored as its centre ``(x, y)`` in pixels, its scale
``z = log2(sqrt(w * h))`` and its aspect ratio ``r = log2(h / w)``. Working in
log space makes scale refinement additive and ties ``z`` directly to the
feature pyramid level (``log2`` of a stride), which the 3D sampling uses.
"""
from typing import Sequence, Tuple

import torch
from torch import Tensor


def xyzr_to_wh(xyzr: Tensor) -> Tensor:
    """Width and height of (x, y, z, r) boxes.

    Args:
        xyzr (Tensor): Boxes of shape (..., 4).

    Returns:
        Tensor: (..., 2) with ``w = 2**(z - r/2)`` and ``h = 2**(z + r/2)``.
    """
    z = xyzr[..., 2:3]
    half_r = xyzr[..., 3:4] * 0.5
    return torch.cat([2.0**(z - half_r), 2.0**(z + half_r)], dim=-1)


def xyzr_to_xyxy(xyzr: Tensor) -> Tensor:
    """Decode (x, y, z, r) boxes to corner boxes (x1, y1, x2, y2)."""
    half_wh = xyzr_to_wh(xyzr) * 0.5
    xy = xyzr[..., 0:2]
    return torch.cat([xy - half_wh, xy + half_wh], dim=-1)


def whole_image_xyzr(img_shapes: Sequence[Tuple[int, int]], num_queries: int,
                     device: torch.device) -> Tensor:
    """Initial query boxes: every query covers its whole (unpadded) image.

    Args:
        img_shapes (Sequence[tuple[int, int]]): ``(h, w)`` of each image.
        num_queries (int): Number of queries per image.
        device (torch.device): Device of the result.

    Returns:
        Tensor: (num_images, num_queries, 4) in (x, y, z, r).
    """
    hw = torch.tensor([[float(h), float(w)] for h, w in img_shapes],
                      device=device)
    h, w = hw[:, 0:1], hw[:, 1:2]
    xyzr = torch.cat([w * 0.5, h * 0.5, (w * h).sqrt().log2(), (h / w).log2()],
                     dim=-1)
    return xyzr[:, None, :].expand(-1, num_queries, -1).contiguous()


def refine_xyzr(xyzr: Tensor, delta: Tensor) -> Tensor:
    """Apply a predicted update: the centre moves in units of the box scale,
    scale and ratio move additively in log space.

    Args:
        xyzr (Tensor): Current boxes (..., 4).
        delta (Tensor): Predicted (dx, dy, dz, dr), same shape.

    Returns:
        Tensor: Refined boxes (..., 4).
    """
    scale = 2.0**xyzr[..., 2:3]
    xy = xyzr[..., 0:2] + delta[..., 0:2] * scale
    zr = xyzr[..., 2:4] + delta[..., 2:4]
    return torch.cat([xy, zr], dim=-1)


def xyzr_position_encoding(xyzr: Tensor,
                           num_feats: int,
                           temperature: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of the four box parameters, concatenated.

    ``x`` and ``y`` are divided by 1000 first (pixel coordinates), ``z`` and
    ``r`` are used as they are. Each parameter gets ``num_feats`` channels,
    alternating sine (even channels) and cosine (odd channels) with DETR's
    frequency schedule.

    Args:
        xyzr (Tensor): Boxes (..., 4).
        num_feats (int): Channels per parameter (even); the embedding has
            ``4 * num_feats`` channels.
        temperature (float): Frequency base. Defaults to 10000.

    Returns:
        Tensor: (..., 4 * num_feats).
    """
    if num_feats % 2 != 0:
        raise ValueError(f'num_feats must be even, got {num_feats}')
    xyzr = xyzr / xyzr.new_tensor([1000.0, 1000.0, 1.0, 1.0])
    exponent = 2 * torch.div(
        torch.arange(num_feats, device=xyzr.device),
        2,
        rounding_mode='floor').float() / num_feats
    freqs = temperature**exponent
    angles = xyzr[..., None] / freqs  # (..., 4, num_feats)
    # interleave: channel 2i <- sin(angle 2i), channel 2i+1 <- cos(angle 2i+1)
    embed = torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()],
                        dim=-1)
    return embed.flatten(-3)
