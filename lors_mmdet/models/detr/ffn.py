"""LORS version of mmcv's FFN."""
import math
from typing import Sequence

import torch
from mmcv.cnn.bricks.transformer import FFN
from torch import nn

from lors_mmdet.lors import LorsLinear


def ffn_linear_paths(num_fcs: int) -> list:
    """Paths of the linear maps inside mmcv's ``FFN.layers``, in order.

    mmcv builds ``layers = [Sequential(fc, act, drop)] * (num_fcs - 1) +
    [fc, drop]``.
    """
    return [f'{j}.0' for j in range(num_fcs - 1)] + [str(num_fcs - 1)]


class LorsFFN(FFN):
    """mmcv's ``FFN`` whose linear layers are LORS maps.

    mmcv's forward, activation, dropouts, layer scale and identity are kept;
    the ``nn.Linear`` modules inside ``layers`` are replaced in place, so the
    private parameters keep mmcv's names (``layers.0.0.lors_A``...).

    Args:
        projections: one :class:`LorsLinear` per linear layer (``fc1`` ...
            ``fcN``), in order.
        **kwargs: the arguments of mmcv's ``FFN``.
    """

    def __init__(self, projections: Sequence[LorsLinear], **kwargs) -> None:
        super().__init__(**kwargs)
        paths = ffn_linear_paths(self.num_fcs)
        if len(projections) != len(paths):
            raise ValueError(f'LorsFFN with num_fcs={self.num_fcs} needs '
                             f'{len(paths)} projections, got '
                             f'{len(projections)}')
        for j, (path, projection) in enumerate(zip(paths, projections)):
            stock = self.layers.get_submodule(path)
            if not isinstance(projection, LorsLinear) or (
                    projection.in_features, projection.out_features) != (
                        stock.in_features, stock.out_features):
                raise ValueError(
                    f'projection fc{j + 1} must be a LorsLinear mapping '
                    f'{stock.in_features} -> {stock.out_features}, got '
                    f'{projection!r}')
            parent, _, name = path.rpartition('.')
            container = self.layers.get_submodule(parent) if parent \
                else self.layers
            setattr(container, name, projection)

    @property
    def projections(self) -> list:
        """The LORS maps ``fc1`` ... ``fcN``."""
        return [self.layers.get_submodule(p)
                for p in ffn_linear_paths(self.num_fcs)]

    def init_weights(self) -> None:
        super().init_weights()
        self.reset_private_parameters()

    @torch.no_grad()
    def reset_private_parameters(self) -> None:
        """A kaiming, B zero; biases as ``nn.Linear`` initialises them.

        mmdet's DETR init only xavier-initialises matrices, so a stock FFN
        keeps ``nn.Linear``'s default bias, U(-1/sqrt(in), 1/sqrt(in)).
        """
        for projection in self.projections:
            projection.reset_parameters()
            if projection.bias is not None:
                bound = 1 / math.sqrt(projection.in_features)
                nn.init.uniform_(projection.bias, -bound, bound)
