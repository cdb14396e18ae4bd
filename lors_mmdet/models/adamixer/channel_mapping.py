"""AdaMixer's neck: no FPN, only a channel mapping of each backbone level."""
from typing import List, Sequence, Tuple

import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor

from mmdet.registry import MODELS
from mmdet.utils import OptMultiConfig


@MODELS.register_module()
class AdaMixerChannelMapping(BaseModule):
    """A 1x1 convolution (with bias) per level to ``out_channels``, then ONE
    GroupNorm shared by all levels (as in the reference model). No top-down
    path, no extra levels.

    Args:
        in_channels (Sequence[int]): Channels of each backbone level.
        out_channels (int): Output channels of every level.
        num_groups (int): Groups of the GroupNorm. Defaults to 32.
        init_cfg (dict): Defaults to Xavier-uniform convolutions.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_groups: int = 32,
        init_cfg: OptMultiConfig = dict(
            type='Xavier', layer='Conv2d', distribution='uniform')
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if out_channels % num_groups != 0:
            raise ValueError(f'num_groups={num_groups} must divide '
                             f'out_channels={out_channels}')
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(
            nn.Conv2d(channels, out_channels, 1) for channels in in_channels)
        # not named "*norm*": Swin configs exempt such names from weight decay,
        # which the reference model did not do for this layer
        self.gn_out = nn.GroupNorm(num_groups, out_channels)

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor]:
        """Map each level; returns a tuple of (B, out_channels, H_l, W_l)."""
        if len(inputs) != len(self.lateral_convs):
            raise ValueError(f'expected {len(self.lateral_convs)} feature '
                             f'levels, got {len(inputs)}')
        outs: List[Tensor] = [
            self.gn_out(conv(feat))
            for conv, feat in zip(self.lateral_convs, inputs)
        ]
        return tuple(outs)
