"""Data-aware from-dense LORS: fit the stack to what the layers compute on real inputs.

:func:`~lors_mmdet.lors.lors_from_dense` fits weights in weight space: the shared
weight is the mean and each layer keeps the truncated SVD of ``W_i - mean``. What
matters, though, is the error on the inputs a layer actually receives. With ``C_i =
E[x x^T]`` the (uncentered) second moment of layer ``i``'s inputs, the expected
squared output error of an approximation ``W'_i`` is

    E |(W_i - W'_i) x|^2 = |(W_i - W'_i) C_i^{1/2}|_F^2.

The fit uses ``C_i`` plus a tiny ridge (:data:`DAMPING` x its mean eigenvalue), so
that directions no calibration input took keep a unique, exact solution.

For ``W'_i = W_s + D_i`` (shared weight plus a private residual of rank ``r_i``):

- given ``W_s``, the best ``D_i`` is ``[(W_i - W_s) C_i^{1/2}]_{r_i} C_i^{+1/2}``
  (truncated SVD of the *whitened* residual, as in ASVD / SVD-LLM; Eckart-Young in the
  whitened space);
- given the ``D_i``, the best ``W_s`` solves the normal equations
  ``W_s sum_i C_i = sum_i (W_i - D_i) C_i``.

:func:`calibrated_factors` starts from the plain mean and alternates the two exact
block minimisations ``iterations`` times (each step can only lower the summed error);
``iterations=0`` keeps the mean and whitens only the residuals. With every ``C_i``
the identity and ``iterations=0`` it is the weight-space init. At full rank (and
``C_i`` invertible) the stack is exact.

Pure PyTorch, for any stack of linear layers (a ViT, an LLM): the covariances are
plain ``(in, in)`` tensors, e.g. accumulated with :class:`InputSecondMoment`.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._validate import per_layer
from .merge import _check_dense
from .static import LorsLinear, SharedLinear


class InputSecondMoment:
    """Streaming ``E[x x^T]`` of a layer's inputs, in float64 (memory: one
    ``(in, in)`` matrix, never the activations).

    Args:
        features: size of an input vector.
    """

    def __init__(self, features: int) -> None:
        self.features = features
        self.sum: Optional[Tensor] = None  # on the inputs' device
        self.count = 0

    def update(self, x: Tensor) -> None:
        """Add a batch of inputs (..., features)."""
        if x.shape[-1] != self.features:
            raise ValueError(f'inputs of {x.shape[-1]} features, expected '
                             f'{self.features}')
        flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        product = flat.T @ flat
        self.sum = product if self.sum is None else self.sum + product
        self.count += flat.shape[0]

    def hook(self, module: nn.Module, args: tuple) -> None:
        """A forward pre-hook that records the module's first input."""
        self.update(args[0])

    @property
    def value(self) -> Tensor:
        if self.count == 0:
            raise ValueError('no inputs were recorded')
        return (self.sum / self.count).cpu()


def _check_covariances(covariances: Sequence[Tensor], num_layers: int,
                       in_features: int) -> None:
    if len(covariances) != num_layers:
        raise ValueError(f'covariances must have one entry per weight ({num_layers}), '
                         f'got {len(covariances)}')
    for i, cov in enumerate(covariances):
        if not isinstance(cov, Tensor) or cov.shape != (in_features, in_features):
            raise ValueError(f'covariances[{i}] must have shape ({in_features}, '
                             f'{in_features}), got {getattr(cov, "shape", cov)}')
        if not torch.isfinite(cov).all():
            raise ValueError(f'covariances[{i}] holds non-finite values')


DAMPING = 1e-8


def _damped(cov: Tensor) -> Tensor:
    """``C + DAMPING * (trace C / n) I`` in float64: directions the inputs never take
    still count a little, so the fit stays unique and exact at full rank."""
    cov = cov.double()
    cov = (cov + cov.T) / 2
    scale = float(cov.diagonal().mean().clamp_min(0))
    return cov + DAMPING * scale * torch.eye(len(cov), dtype=cov.dtype,
                                            device=cov.device)


def _roots(cov: Tensor) -> Tuple[Tensor, Tensor]:
    """Symmetric square root of a PSD matrix and the pseudo-inverse of that root
    (eigenvalues below a relative threshold count as zero)."""
    cov = (cov + cov.T) / 2
    values, vectors = torch.linalg.eigh(cov)
    keep = values > values.max().clamp_min(0) * 1e-12
    root = torch.where(keep, values.clamp_min(0).sqrt(), torch.zeros_like(values))
    inv_root = torch.where(keep, 1 / root.where(keep, torch.ones_like(root)),
                           torch.zeros_like(root))
    return (vectors * root) @ vectors.T, (vectors * inv_root) @ vectors.T


def output_error(weight: Tensor, approx: Tensor, cov: Tensor) -> float:
    """``|(W - W') C^{1/2}|_F^2 = trace((W - W') C (W - W')^T)``, the expected
    squared output error on inputs of second moment ``C``."""
    diff = (weight - approx).double()
    return float(torch.einsum('oi,ij,oj->', diff, cov.double(), diff))


def _whitened_residual(target: Tensor, rank: int, root: Tensor,
                       inv_root: Tensor) -> Tuple[Tensor, Tensor]:
    """(B, A) with B A = [target root]_rank inv_root, split evenly as in
    :func:`~lors_mmdet.lors.lors_from_dense`."""
    u, s, vh = torch.linalg.svd(target @ root, full_matrices=False)
    scale = s[:rank].sqrt()
    b, a = u[:, :rank] * scale, (scale[:, None] * vh[:rank]) @ inv_root
    if rank > len(s):  # more rank than the matrix has: the extra terms stay zero
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - len(s))], 1)
        a = torch.cat([a, a.new_zeros(rank - len(s), a.shape[1])], 0)
    return b, a


def whitened_residual_spectrum(weight: Tensor, shared: Tensor,
                               cov: Tensor) -> Tuple[Tensor, float]:
    """Squared singular values (descending) of the whitened residual
    ``(W - W_s) C^{1/2}`` and the output energy ``|W C^{1/2}|_F^2``: at rank ``r``
    the residual leaves the output error ``sum(values[r:])``."""
    cov = _damped(cov)
    root, _ = _roots(cov)
    values = torch.linalg.svdvals((weight.double() - shared.double()) @ root)**2
    return values, output_error(weight, torch.zeros_like(weight), cov)


def refit_shared(weights: Sequence[Tensor], residuals: Sequence[Tensor],
                 covariances: Sequence[Tensor]) -> Tensor:
    """The shared weight minimising ``sum_i |(W_s + D_i - W_i) C_i^{1/2}|_F^2`` for
    fixed residuals ``D_i``: ``W_s = [sum_i (W_i - D_i) C_i] (sum_i C_i)^+``."""
    total = sum(c.double() for c in covariances)
    rhs = sum((w.double() - d.double()) @ c.double()
              for w, d, c in zip(weights, residuals, covariances))
    return rhs @ torch.linalg.pinv(total, hermitian=True)


@torch.no_grad()
def calibrated_factors(weights: Sequence[Tensor], covariances: Sequence[Tensor],
                       ranks: Union[int, Sequence[int]], iterations: int = 0
                       ) -> Tuple[Tensor, List[Tuple[Tensor, Tensor]], List[float]]:
    """Shared weight and private factors fitted to the layers' inputs (float64).

    Args:
        weights: N tensors (out, in) of the same shape.
        covariances: N tensors (in, in), the second moment ``E[x x^T]`` of each
            layer's inputs.
        ranks: total rank of each layer's residual (an int or N ints); 0 keeps no
            residual.
        iterations: alternations of (refit the shared weight, refit the residuals)
            after the first fit from the plain mean.

    Returns:
        The shared weight, each layer's ``(B, A)`` (``B A`` its residual) and each
        layer's relative output error ``|(W_i - W'_i) C_i^{1/2}| / |W_i C_i^{1/2}|``.
    """
    _check_dense(weights, None)
    num_layers = len(weights)
    out_features, in_features = weights[0].shape
    _check_covariances(covariances, num_layers, in_features)
    ranks = [int(r) for r in (ranks if isinstance(ranks, (list, tuple))
                              else [ranks] * num_layers)]
    if len(ranks) != num_layers or any(r < 0 for r in ranks):
        raise ValueError(f'ranks must be a non-negative int or one per weight '
                         f'({num_layers}), got {ranks}')
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f'iterations must be a non-negative int, got {iterations!r}')
    dense = [w.double() for w in weights]
    covs = [_damped(c) for c in covariances]
    roots = [_roots(c) for c in covs]
    shared = torch.stack(dense).mean(0)
    factors: List[Tuple[Tensor, Tensor]] = []
    for step in range(iterations + 1):
        if step > 0:
            shared = refit_shared(dense, [b @ a for b, a in factors], covs)
        factors = [_whitened_residual(w - shared, r, *root)
                   for w, r, root in zip(dense, ranks, roots)]
    errors = []  # on the measured statistics, without the ridge
    for w, (b, a), c in zip(dense, factors, covariances):
        norm = output_error(w, torch.zeros_like(w), c)
        error = output_error(w, shared + b @ a, c)
        errors.append((error / norm)**0.5 if norm > 0 else error**0.5)
    return shared, factors, errors


@torch.no_grad()
def lors_from_dense_calibrated(
    weights: Sequence[Tensor],
    covariances: Sequence[Tensor],
    rank: Union[int, Sequence[int]],
    num_terms: Union[int, Sequence[int]] = 1,
    biases: Optional[Sequence[Tensor]] = None,
    iterations: int = 0,
) -> Tuple[SharedLinear, List[LorsLinear], List[float]]:
    """:func:`~lors_mmdet.lors.lors_from_dense` fitted on the layers' inputs: the
    same modules, with the factors of :func:`calibrated_factors`.

    Args:
        weights: N tensors (out_features, in_features) of the same shape.
        covariances: N tensors (in, in), ``E[x x^T]`` of each layer's inputs.
        rank: rank per term, an int or a list of N ints.
        num_terms: number of terms, an int or a list of N ints.
        biases: N tensors (out_features,), or None for layers without bias.
        iterations: see :func:`calibrated_factors`.

    Returns:
        The shared weight, the N layers (on the weights' device and dtype) and
        the per-layer relative output error.
    """
    _check_dense(weights, biases)
    num_layers = len(weights)
    ranks = per_layer(rank, num_layers, 'rank')
    terms = per_layer(num_terms, num_layers, 'num_terms')
    shared_weight, factors, errors = calibrated_factors(
        weights, covariances, [r * k for r, k in zip(ranks, terms)], iterations)
    out_features, in_features = weights[0].shape
    factory = dict(device=weights[0].device, dtype=weights[0].dtype)
    shared = SharedLinear(in_features, out_features, num_layers).to(**factory)
    shared.weight.copy_(shared_weight)
    layers = []
    for i, ((b, a), r, k) in enumerate(zip(factors, ranks, terms)):
        layer = LorsLinear(shared, r, k, bias=biases is not None)
        layer.lors_B.copy_(b)
        layer.lors_A.copy_(a)
        if biases is not None:
            layer.bias.copy_(biases[i])
        layers.append(layer)
    return shared, layers, errors
