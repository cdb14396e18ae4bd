"""The optional adaptive branch of a LORS DETR projection.

DETR decoder layers have no generated weights, so the adaptive branch is a
per-token low-rank residual on top of a static LORS map (spec "Beyond the
paper")::

    y = x W_i^T + bias_i + sum_t ((x R_it^T) Z_it(x)) L_it^T

``Z_it(x)`` is a ``k x k`` core generated from the token itself (for the
projections that allow the branch, the token is a query) by a per-layer
``nn.Linear`` whose weight and bias start at zero: at initialisation the branch
adds nothing. ``R`` (``K k x in``) and ``L`` (``out x K k``) are static
per-layer factors, kaiming-uniform. The ``out x in`` private matrix is never
built.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lors_mmdet.lors import LorsLinear, SharedLinear


class AdaptiveLorsLinear(LorsLinear):
    """A :class:`LorsLinear` plus a token-adaptive low-rank residual.

    Args:
        shared: the stack's shared weight.
        rank: rank of each static low-rank term.
        num_terms: number of static low-rank terms. Defaults to 1.
        bias: whether the layer has a private bias. Defaults to True.
        core_size: size ``k`` of each generated core. Defaults to 8.
        adaptive_terms: number ``K`` of adaptive terms. Defaults to 1.
    """

    def __init__(self, shared: SharedLinear, rank: int, num_terms: int = 1,
                 bias: bool = True, core_size: int = 8,
                 adaptive_terms: int = 1) -> None:
        super().__init__(shared, rank, num_terms, bias)
        total = core_size * adaptive_terms
        if total > min(self.in_features, self.out_features):
            raise ValueError(
                f'core_size * adaptive_terms must be <= min(in_features, '
                f'out_features) = {min(self.in_features, self.out_features)},'
                f' got core_size={core_size}, adaptive_terms={adaptive_terms}')
        self.core_size = core_size
        self.adaptive_terms = adaptive_terms
        factory = dict(device=shared.weight.device, dtype=shared.weight.dtype)
        self.adaptive_R = nn.Parameter(
            torch.empty(total, self.in_features, **factory))
        self.adaptive_L = nn.Parameter(
            torch.empty(self.out_features, total, **factory))
        self.core_generator = nn.Linear(
            self.in_features, adaptive_terms * core_size * core_size,
            **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Static part as :class:`LorsLinear`; factors kaiming, generator zero."""
        super().reset_parameters()
        if not hasattr(self, 'core_generator'):  # called by LorsLinear.__init__
            return
        nn.init.kaiming_uniform_(self.adaptive_R, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.adaptive_L, a=math.sqrt(5))
        nn.init.zeros_(self.core_generator.weight)
        nn.init.zeros_(self.core_generator.bias)

    def adaptive_residual(self, x: Tensor) -> Tensor:
        """``sum_t ((x R_t^T) Z_t(x)) L_t^T`` for ``x`` of shape (..., in)."""
        k, terms = self.core_size, self.adaptive_terms
        reduced = F.linear(x, self.adaptive_R).unflatten(-1, (terms, k))
        cores = self.core_generator(x).unflatten(-1, (terms, k, k))
        mixed = (reduced.unsqueeze(-2) @ cores).squeeze(-2)
        return F.linear(mixed.flatten(-2), self.adaptive_L)

    def forward(self, x: Tensor, path: str = 'auto') -> Tensor:
        return super().forward(x, path) + self.adaptive_residual(x)

    def to_linear(self) -> nn.Linear:
        raise TypeError('an AdaptiveLorsLinear depends on its input through '
                        'the generated cores and cannot be merged into a '
                        'static nn.Linear')

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, core_size={self.core_size}, '
                f'adaptive_terms={self.adaptive_terms}')
