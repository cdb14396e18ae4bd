"""Conversions between a static LORS stack and N dense weights.

- :func:`merge_linears`: LORS -> dense, for deployment (a merged model runs
  as a stock stack, at its speed).
- :func:`lors_from_dense`: dense -> LORS, e.g. from a trained stock decoder:
  shared = mean of the weights, private = truncated SVD of each residual.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._validate import per_layer
from .static import LorsLinear, SharedLinear


@torch.no_grad()
def merge_linears(shared: SharedLinear,
                  layers: Sequence[LorsLinear]) -> List[Tensor]:
    """The dense weight ``W_shared + B_i A_i`` of every layer.

    Args:
        shared: the stack's shared weight.
        layers: the stack's layers; each must use ``shared``.

    Returns:
        One (out_features, in_features) tensor per layer, detached.
    """
    for i, layer in enumerate(layers):
        if not isinstance(layer, LorsLinear):
            raise TypeError(f'layers[{i}] must be a LorsLinear, got '
                            f'{type(layer).__name__}')
        if layer.shared is not shared:
            raise ValueError(f'layers[{i}] uses another shared weight than '
                             f'the given shared')
    return [layer.weight.detach().clone() for layer in layers]


def _check_dense(weights: Sequence[Tensor],
                 biases: Optional[Sequence[Tensor]]) -> None:
    if isinstance(weights, Tensor) or len(weights) == 0:
        raise ValueError('weights must be a non-empty sequence of 2-D '
                         f'tensors, got {type(weights).__name__} of '
                         f'length {len(weights)}')
    shape = weights[0].shape
    for i, weight in enumerate(weights):
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise ValueError(f'weights[{i}] must be a 2-D tensor, got '
                             f'{getattr(weight, "shape", weight)}')
        if weight.shape != shape:
            raise ValueError(f'weights[{i}] has shape {tuple(weight.shape)}, '
                             f'expected {tuple(shape)} (that of weights[0])')
    if biases is None:
        return
    if len(biases) != len(weights):
        raise ValueError(f'biases must have one entry per weight '
                         f'({len(weights)}), got {len(biases)}')
    for i, bias in enumerate(biases):
        if not isinstance(bias, Tensor) or bias.shape != (shape[0], ):
            raise ValueError(f'biases[{i}] must have shape ({shape[0]},), '
                             f'got {getattr(bias, "shape", bias)}')


@torch.no_grad()
def lors_from_dense(
    weights: Sequence[Tensor],
    rank: Union[int, Sequence[int]],
    num_terms: Union[int, Sequence[int]] = 1,
    biases: Optional[Sequence[Tensor]] = None,
) -> Tuple[SharedLinear, List[LorsLinear], List[float]]:
    """Build a static LORS stack approximating N dense weights.

    The shared weight is the mean of the weights; layer ``i`` keeps the
    truncated SVD of its residual ``W_i - mean`` at rank ``rank_i *
    num_terms_i``, split evenly between the factors (``B = U sqrt(S)``,
    ``A = sqrt(S) V^T``). At rank ``min(out, in)`` the stack is exact.

    Args:
        weights: N tensors (out_features, in_features) of the same shape.
        rank: rank per term, an int or a list of N ints.
        num_terms: number of terms, an int or a list of N ints.
        biases: N tensors (out_features,), or None for layers without bias.

    Returns:
        The shared weight, the N layers (on the weights' device and dtype) and
        the per-layer relative Frobenius error ``|W_i - W'_i| / |W_i|``.
    """
    _check_dense(weights, biases)
    num_layers = len(weights)
    ranks = per_layer(rank, num_layers, 'rank')
    terms = per_layer(num_terms, num_layers, 'num_terms')
    out_features, in_features = weights[0].shape
    factory = dict(device=weights[0].device, dtype=weights[0].dtype)

    shared = SharedLinear(in_features, out_features, num_layers).to(**factory)
    stacked = torch.stack([w.to(**factory) for w in weights])
    mean = stacked.mean(0)
    shared.weight.copy_(mean)
    layers, errors = [], []
    for i, (weight, r, k) in enumerate(zip(stacked, ranks, terms)):
        layer = LorsLinear(shared, r, k, bias=biases is not None)
        total = r * k
        # SVD in float64: the reconstruction at full rank is then exact to
        # the precision of the weights' dtype.
        u, s, vh = torch.linalg.svd((weight - mean).double(),
                                    full_matrices=False)
        root = s[:total].sqrt()
        layer.lors_B.copy_(u[:, :total] * root)
        layer.lors_A.copy_(root[:, None] * vh[:total])
        if biases is not None:
            layer.bias.copy_(biases[i])
        residual = torch.linalg.norm(weight.double() - layer.weight.double())
        norm = torch.linalg.norm(weight.double())
        errors.append(float(residual / norm) if norm > 0 else float(residual))
        layers.append(layer)
    return shared, layers, errors
