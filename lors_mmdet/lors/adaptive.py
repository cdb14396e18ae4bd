"""Adaptive LORS: query-generated matrices, shared plus low-rank private.

For a query ``q`` and group ``g`` layer ``i`` uses, for every shape ``(m, n)``,

    M_i(q) = M_shared(q) + sum_{t=1..K_i} L_it @ Z_it(q) @ R_it

where ``M_shared`` comes from one generator shared by the whole stack, the
``k x k`` cores ``Z_it(q)`` from a small per-layer generator and ``L_it``
(``m x k``), ``R_it`` (``k x n``) are static per-layer factors. The private
part is applied to an input factor by factor, ``((x @ L) @ Z) @ R``, so the
per-query ``m x n`` private matrices are never built.
"""
import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._validate import check_positive_int, check_shapes
from .static import check_factor_init


class SharedGenerator(nn.Module):
    """The generator of the shared matrices, one for the whole stack.

    One ``nn.Linear(query_dim, groups * sum(m * n))`` (``generator``) whose
    weight is zero-initialised and whose bias keeps the default init, as in
    AdaMixer. Register it once, on the module that owns the stack.

    Args:
        query_dim: size of a query.
        groups: number of groups ``G`` (one set of matrices per group).
        shapes: the ``(m, n)`` shape of each generated matrix, e.g.
            ``[(c, c), (P_out, P_in)]`` for AdaMixer's channel and spatial
            mixing matrices.
        num_layers: number of layers sharing the generator (for accounting).
    """

    def __init__(self, query_dim: int, groups: int,
                 shapes: Sequence[Tuple[int, int]], num_layers: int) -> None:
        super().__init__()
        self.query_dim = check_positive_int(query_dim, 'query_dim')
        self.groups = check_positive_int(groups, 'groups')
        self.shapes = check_shapes(shapes)
        self.num_layers = check_positive_int(num_layers, 'num_layers')
        self.generator = nn.Linear(
            query_dim, groups * sum(m * n for m, n in self.shapes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero weight (all queries get the same matrices), default bias."""
        self.generator.reset_parameters()
        nn.init.zeros_(self.generator.weight)

    def forward(self, query: Tensor) -> List[Tensor]:
        """Generate the shared matrices.

        Args:
            query: (..., query_dim).

        Returns:
            One tensor (..., groups, m, n) per shape, views of one buffer.
        """
        params = self.generator(query).unflatten(-1, (self.groups, -1))
        chunks = params.split([m * n for m, n in self.shapes], dim=-1)
        return [chunk.unflatten(-1, shape)
                for chunk, shape in zip(chunks, self.shapes)]

    def extra_repr(self) -> str:
        return (f'query_dim={self.query_dim}, groups={self.groups}, '
                f'shapes={self.shapes}, num_layers={self.num_layers}')


def _block_diagonal(cores: Tensor) -> Tensor:
    """Cores (..., K, k, k) -> block-diagonal matrices (..., K*k, K*k).

    ``sum_t L_t Z_t R_t == L_cat @ blockdiag(Z_1..Z_K) @ R_cat``: with the
    cores on a block diagonal every step is one plain (batched) GEMM, with no
    reshuffling copies in between.
    """
    terms = cores.shape[-3]
    eye = torch.eye(terms, dtype=cores.dtype, device=cores.device)
    blocks = torch.einsum('...tij,ts->...tisj', cores, eye)
    return blocks.flatten(-4, -3).flatten(-2)


def _right_private(x: Tensor, left: Tensor, cores: Tensor,
                   right: Tensor) -> Tensor:
    """``((x @ L) @ Z) @ R``: x (..., P, m), left (m, K*k), cores
    (..., K, k, k), right (K*k, n)."""
    return torch.matmul(torch.matmul(x, left), _block_diagonal(cores)) @ right


def _left_private(x: Tensor, left: Tensor, cores: Tensor,
                  right: Tensor) -> Tensor:
    """``L @ (Z @ (R @ x))``: x (..., n, C), left (m, K*k), cores
    (..., K, k, k), right (K*k, n)."""
    # Computed as (x^T R^T Z^T L^T)^T: each product with a static factor is
    # then one GEMM over the whole batch (at the price of one copy of x^T);
    # broadcasting R over the batch instead was about 2x slower on CPU.
    xt = torch.matmul(x.mT, right.mT)
    xt = torch.matmul(xt, _block_diagonal(cores).mT)
    return torch.matmul(xt, left.mT).mT


class GeneratedMatrices:
    """The matrices of one layer for a batch of queries, kept in factored form.

    Not a module: produced by :meth:`LorsAdaptive.forward`, used within the
    same forward pass.

    Args:
        shared: per shape, the shared matrices (..., G, m, n).
        cores: per shape, the cores (..., G, K, k, k).
        lefts: per shape, the static left factors (F, K, m, k), ``F = G``
            with one factor per group, ``F = 1`` with factors shared by the
            groups.
        rights: per shape, the static right factors (F, K, k, n).
        recompute: recompute the low-rank intermediates in backward instead
            of storing them (activation checkpointing of the private term).
    """

    def __init__(self, shared: Sequence[Tensor], cores: Sequence[Tensor],
                 lefts: Sequence[Tensor], rights: Sequence[Tensor],
                 recompute: bool = True) -> None:
        self.recompute = recompute
        self.shared = list(shared)
        self.cores = list(cores)
        self.lefts = list(lefts)
        self.rights = list(rights)

    def __len__(self) -> int:
        return len(self.shared)

    def _factors(self, j: int) -> Tuple[Tensor, Tensor, Tensor]:
        """(L as (F,) m x K*k, cores, R as (F,) K*k x n) of shape ``j``;
        without the F dim when the groups share the factors (one GEMM over
        the whole batch), else with it (broadcast over the group dim)."""
        left, right = self.lefts[j], self.rights[j]
        num_factors, terms, m, k = left.shape
        left = left.transpose(1, 2).reshape(num_factors, m, terms * k)
        right = right.reshape(num_factors, terms * k, -1)
        if num_factors == 1:
            left, right = left[0], right[0]
        return left, self.cores[j], right

    def apply_right(self, x: Tensor, j: int) -> Tensor:
        """``x @ M_j(q)`` without building the private ``m x n`` matrices.

        Args:
            x: (..., G, P, m), leading dims those of the query (or
                broadcastable to them).
            j: index of the shape.

        Returns:
            (..., G, P, n).
        """
        private = self._run(_right_private, x, *self._factors(j))
        # In place: one full-size buffer less at the peak.
        return torch.matmul(x, self.shared[j]).add_(private)

    def apply_left(self, j: int, x: Tensor) -> Tensor:
        """``M_j(q) @ x`` without building the private ``m x n`` matrices.

        Args:
            j: index of the shape.
            x: (..., G, n, C), leading dims those of the query (or
                broadcastable to them).

        Returns:
            (..., G, m, C).
        """
        private = self._run(_left_private, x, *self._factors(j))
        return torch.matmul(self.shared[j], x).add_(private)

    def _run(self, private_product, *args) -> Tensor:
        if self.recompute and torch.is_grad_enabled():
            # Keep only the inputs for backward and recompute the small
            # intermediates there: the factored path then stores almost
            # nothing beyond what the shared matrices need anyway.
            return checkpoint(private_product, *args, use_reentrant=False,
                              preserve_rng_state=False)
        return private_product(*args)

    def materialise(self, j: int) -> Tensor:
        """The full matrices ``M_shared + sum_t L_t Z_t R_t`` (for checking).

        Returns:
            (..., G, m, n).
        """
        left, cores, right = self.lefts[j], self.cores[j], self.rights[j]
        groups = cores.shape[-4]
        num_factors, terms, m, k = left.shape
        left = left.expand(groups, terms, m, k)
        right = right.expand(groups, *right.shape[1:])
        # (G, K, m, k) x (..., G, K, k, k) -> (..., G, m, K*k), then one
        # product with R (G, K*k, n).
        lz = torch.einsum('gtmk,...gtkl->...gmtl', left, cores).flatten(-2)
        return self.shared[j] + torch.matmul(
            lz, right.reshape(groups, terms * k, -1))


def _uniform_like_linear_(factor: Tensor) -> None:
    """kaiming_uniform_(a=sqrt(5)) of each (rows x cols) term, as nn.Linear.

    For a 2-D ``rows x cols`` matrix that is U(-1/sqrt(cols), 1/sqrt(cols)).
    """
    bound = 1.0 / math.sqrt(factor.shape[-1])
    nn.init.uniform_(factor, -bound, bound)


def _init_factor_(factor: Tensor, factor_init: str) -> None:
    """Initialise a stored (terms, rows, cols) factor.

    ``'kaiming'`` is torch's ``kaiming_uniform_`` with default arguments on
    the whole 3-D tensor: its fan_in is ``rows * cols``, so the bound is
    ``sqrt(6 / (rows * cols))``.
    """
    if factor_init == 'kaiming':
        nn.init.kaiming_uniform_(factor)
    else:
        _uniform_like_linear_(factor)


class LorsAdaptive(nn.Module):
    """One layer's private part of an adaptive LORS stack.

    Registers a core generator ``nn.Linear(query_dim,
    len(shapes) * groups * K * k * k)`` (weight and bias zero: the layer starts
    as the shared generator; output order [shape][group][term][k][k]) and per
    shape ``j`` the factors ``lors_L[j]`` and ``lors_R[j]``: (K, m, k) and
    (K, k, n) when the groups share them, (G * K, m, k) and (G * K, k, n)
    with ``per_group_factors`` (row ``g * K + t`` = term ``t`` of group
    ``g``). The :class:`SharedGenerator` is referenced, not registered.

    Args:
        shared: the stack's shared generator.
        core_size: size ``k`` of each core.
        adaptive_terms: number ``K`` of adaptive low-rank terms per matrix
            (query-generated cores; not the ``num_terms`` of a static
            :class:`~lors_mmdet.lors.LorsLinear`).
        recompute: in the factored products, recompute the low-rank
            intermediates in backward rather than store them. Defaults to
            True (see ``docs/lors_library.md`` for the measured effect).
        per_group_factors: give every group its own ``L`` and ``R``
            (the published LORS-AdaMixer) instead of one pair shared by the
            groups. Defaults to False.
        factor_init: init of ``L`` and ``R``: ``'linear'`` (default, each
            term like an nn.Linear weight, bound ``1/sqrt(cols)``) or
            ``'kaiming'`` (``kaiming_uniform_`` with default arguments on
            each stored tensor, bound ``sqrt(6/(rows*cols))``, as published
            for LORS-AdaMixer).
    """

    def __init__(self, shared: SharedGenerator, core_size: int,
                 adaptive_terms: int, recompute: bool = True,
                 per_group_factors: bool = False,
                 factor_init: str = 'linear') -> None:
        super().__init__()
        if not isinstance(shared, SharedGenerator):
            raise TypeError(f'shared must be a SharedGenerator, got '
                            f'{type(shared).__name__}')
        check_positive_int(core_size, 'core_size')
        check_positive_int(adaptive_terms, 'adaptive_terms')
        for m, n in shared.shapes:
            if core_size > min(m, n):
                raise ValueError(
                    f'core_size must be <= min(m, n) of every shape, got '
                    f'core_size={core_size} for shape {(m, n)}')
        # In __dict__, not registered (see LorsLinear).
        object.__setattr__(self, '_shared', shared)
        self.core_size = core_size
        self.adaptive_terms = adaptive_terms
        self.recompute = recompute
        if not isinstance(per_group_factors, bool):
            raise TypeError(f'per_group_factors must be a bool, got '
                            f'{per_group_factors!r}')
        self.per_group_factors = per_group_factors
        self.factor_init = check_factor_init(factor_init)
        rows = (shared.groups * adaptive_terms if per_group_factors
                else adaptive_terms)
        weight = shared.generator.weight
        factory = dict(device=weight.device, dtype=weight.dtype)
        self.lors_core_generator = nn.Linear(
            shared.query_dim,
            len(shared.shapes) * shared.groups * adaptive_terms * core_size**2,
            **factory)
        self.lors_L = nn.ParameterList(
            nn.Parameter(torch.empty(rows, m, core_size, **factory))
            for m, _ in shared.shapes)
        self.lors_R = nn.ParameterList(
            nn.Parameter(torch.empty(rows, core_size, n, **factory))
            for _, n in shared.shapes)
        self.reset_parameters()

    @property
    def shared(self) -> SharedGenerator:
        """The stack's shared generator (not registered in this layer)."""
        return self._shared

    def reset_parameters(self) -> None:
        """Core generator zero, L and R as ``factor_init`` says."""
        nn.init.zeros_(self.lors_core_generator.weight)
        nn.init.zeros_(self.lors_core_generator.bias)
        for factor in (*self.lors_L, *self.lors_R):
            _init_factor_(factor, self.factor_init)

    def _factor_views(self, factors: nn.ParameterList) -> List[Tensor]:
        """The stored factors as (F, K, rows, cols) views, F = G or 1."""
        num_factors = self.shared.groups if self.per_group_factors else 1
        return [f.view(num_factors, self.adaptive_terms, *f.shape[1:])
                for f in factors]

    def forward(self, query: Tensor) -> GeneratedMatrices:
        """Generate this layer's matrices for ``query`` (..., query_dim)."""
        return self.matrices(query)

    def matrices(self, query: Tensor) -> GeneratedMatrices:
        """This layer's matrices for ``query`` (..., query_dim), factored."""
        shared = self.shared(query)
        k = self.core_size
        cores = self.lors_core_generator(query).unflatten(
            -1, (len(shared), self.shared.groups, self.adaptive_terms, k, k))
        return GeneratedMatrices(shared, cores.unbind(-5),
                                 self._factor_views(self.lors_L),
                                 self._factor_views(self.lors_R),
                                 self.recompute)

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """One plain generator of this layer's full matrices (deployment).

        The cores are an affine function of the query, so the private part
        ``sum_t L_t Z_t(q) R_t`` is affine in ``q`` too: element ``(a, b)``
        of group ``g`` of shape ``j`` has weight ``sum_{t,u,v} L[a, u]
        W_core[(j, g, t, u, v), :] R[v, b]`` (bias likewise). Added to the
        shared generator this gives an ``nn.Linear(query_dim,
        G * sum(m * n))`` with :class:`SharedGenerator`'s output layout,
        exactly equal to the layer up to rounding (merge in float64 for a
        float32 model to keep it below float32 rounding).
        """
        shared = self.shared
        groups, k = shared.groups, self.core_size
        generator = shared.generator
        query_dim = shared.query_dim
        cores_w = self.lors_core_generator.weight.view(
            len(shared.shapes), groups, self.adaptive_terms, k, k, query_dim)
        cores_b = self.lors_core_generator.bias.view(
            len(shared.shapes), groups, self.adaptive_terms, k, k)
        weight = generator.weight.view(groups, -1, query_dim).clone()
        bias = generator.bias.view(groups, -1).clone()
        lefts = self._factor_views(self.lors_L)
        rights = self._factor_views(self.lors_R)
        start = 0
        for j, (m, n) in enumerate(shared.shapes):
            left = lefts[j].expand(groups, *lefts[j].shape[1:])
            right = rights[j].expand(groups, *rights[j].shape[1:])
            # (G, K, m, k) (G, K, k, k, D) (G, K, k, n) -> (G, m, n, D)
            delta_w = torch.einsum('gtau,gtuvd,gtvb->gabd', left, cores_w[j],
                                   right)
            delta_b = torch.einsum('gtau,gtuv,gtvb->gab', left, cores_b[j],
                                   right)
            weight[:, start:start + m * n] += delta_w.reshape(
                groups, m * n, query_dim)
            bias[:, start:start + m * n] += delta_b.reshape(groups, m * n)
            start += m * n
        linear = nn.Linear(query_dim, generator.out_features,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight.view(-1, query_dim))
        linear.bias.copy_(bias.view(-1))
        return linear

    def extra_repr(self) -> str:
        return (f'core_size={self.core_size}, '
                f'adaptive_terms={self.adaptive_terms}, '
                f'recompute={self.recompute}, '
                f'per_group_factors={self.per_group_factors}, '
                f'factor_init={self.factor_init!r}')


class LorsGeneratedLinear(LorsAdaptive):
    """A :class:`LorsAdaptive` with the call contract of the generator it
    replaces, made by the stack surgery.

    Its call returns what the stock generator ``nn.Linear(query_dim,
    G * sum(m * n))`` returned: the flat parameters (..., G * sum(m * n)) in
    :class:`SharedGenerator`'s layout, here ``M_shared(q) + sum_t L_t Z_t(q)
    R_t`` for every matrix. The host module's own forward then runs
    unchanged; the price is that the private ``m x n`` matrices are built
    per query, where :meth:`GeneratedMatrices.apply_right` /
    :meth:`~GeneratedMatrices.apply_left` (a host written for LORS) never
    build them. The flat parameters are as large as the stock generator's
    output, so memory stays that of the stock model.

    Args: as :class:`LorsAdaptive` (``recompute`` has no effect here: no
        factored product is taken).
    """

    def forward(self, query: Tensor) -> Tensor:
        """The flat generated parameters for ``query`` (..., query_dim)."""
        matrices = self.matrices(query)
        flat = [matrices.materialise(j).flatten(-2)
                for j in range(len(matrices))]
        return torch.cat(flat, dim=-1).flatten(-2)
