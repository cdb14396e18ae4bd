"""Adaptive LORS branch: init, factored == materialised, gradients, dtype."""
import copy

import pytest
import torch
from torch import nn

from lors_mmdet.lors import GeneratedMatrices, LorsAdaptive, SharedGenerator

# AdaMixer's layout at toy size: channel matrix (c, c), spatial (P_out, P_in).
C, P_IN, P_OUT, GROUPS, QUERY_DIM = 16, 8, 12, 2, 24
SHAPES = [(C, C), (P_OUT, P_IN)]


def build(core_size=4, adaptive_terms=2, seed=0, recompute=True,
          per_group_factors=False, factor_init='linear'):
    torch.manual_seed(seed)
    shared = SharedGenerator(QUERY_DIM, GROUPS, SHAPES, num_layers=3)
    return shared, LorsAdaptive(shared, core_size, adaptive_terms, recompute,
                                per_group_factors, factor_init)


def randomise(shared, layer, scale=0.3):
    """Non-zero generator weights and cores (at init they are zero)."""
    with torch.no_grad():
        shared.generator.weight.normal_(std=scale / QUERY_DIM**0.5)
        layer.lors_core_generator.weight.normal_(std=scale / QUERY_DIM**0.5)
        layer.lors_core_generator.bias.normal_(std=scale)


def mix(matrices: GeneratedMatrices, x, fast: bool):
    """AdaMixer-style use: channel mixing x @ M, then spatial S @ x."""
    if fast:
        x = matrices.apply_right(x, 0)
        return matrices.apply_left(1, x)
    return matrices.materialise(1) @ (x @ matrices.materialise(0))


def reference_matrix(shared, layer, query, j):
    """M_shared(q) + sum_t L_t Z_t(q) R_t, written out term by term."""
    m, n = SHAPES[j]
    k, adaptive_terms = layer.core_size, layer.adaptive_terms
    # Per group, the generator's output lists the matrices one after another.
    start = sum(a * b for a, b in SHAPES[:j])
    params = shared.generator(query).reshape(*query.shape[:-1], GROUPS, -1)
    matrix = params[..., start:start + m * n].reshape(*query.shape[:-1],
                                                      GROUPS, m, n)
    cores = layer.lors_core_generator(query).reshape(*query.shape[:-1], len(SHAPES),
                                                GROUPS, adaptive_terms, k, k)
    terms = []
    for g in range(GROUPS):
        group_matrix = matrix[..., g, :, :]
        for t in range(adaptive_terms):
            # per-group factors: row g * K + t; shared: row t for every g
            row = g * adaptive_terms + t if layer.per_group_factors else t
            group_matrix = group_matrix + (
                layer.lors_L[j][row] @ cores[..., j, g, t, :, :]
                @ layer.lors_R[j][row])
        terms.append(group_matrix)
    return torch.stack(terms, dim=-3)


def test_shapes_and_registration():
    shared, layer = build(core_size=4, adaptive_terms=3)
    assert shared.generator.out_features == GROUPS * (C * C + P_OUT * P_IN)
    assert layer.lors_core_generator.out_features == 2 * GROUPS * 3 * 4 * 4
    assert [tuple(p.shape) for p in layer.lors_L] == [(3, C, 4), (3, P_OUT, 4)]
    assert [tuple(p.shape) for p in layer.lors_R] == [(3, 4, C), (3, 4, P_IN)]
    assert layer.shared is shared
    assert not any(k.startswith('shared') or 'generator.weight' == k
                   for k in layer.state_dict())
    query = torch.randn(2, 5, QUERY_DIM)
    mats = shared(query)
    assert [tuple(m.shape) for m in mats] == [(2, 5, GROUPS, C, C),
                                               (2, 5, GROUPS, P_OUT, P_IN)]
    generated = layer(query)
    assert len(generated) == 2
    assert generated.materialise(1).shape == (2, 5, GROUPS, P_OUT, P_IN)


def test_per_group_factors_have_one_row_per_group_and_term():
    shared, layer = build(core_size=4, adaptive_terms=3,
                          per_group_factors=True)
    assert [tuple(p.shape) for p in layer.lors_L] == [
        (GROUPS * 3, C, 4), (GROUPS * 3, P_OUT, 4)]
    assert [tuple(p.shape) for p in layer.lors_R] == [
        (GROUPS * 3, 4, C), (GROUPS * 3, 4, P_IN)]
    assert layer.lors_core_generator.out_features == 2 * GROUPS * 3 * 4 * 4
    # changing group 1's factors changes group 1's matrices only
    randomise(shared, layer)
    query = torch.randn(2, QUERY_DIM)
    before = layer(query).materialise(0)
    with torch.no_grad():
        layer.lors_L[0][3:].mul_(2)
    after = layer(query).materialise(0)
    assert torch.equal(before[:, 0], after[:, 0])
    assert not torch.allclose(before[:, 1], after[:, 1])


@pytest.mark.parametrize('per_group_factors', [False, True])
def test_factor_init_bounds(per_group_factors):
    """'linear': U(+-1/sqrt(cols)) per term; 'kaiming': kaiming_uniform_'s
    default U(+-sqrt(6 / (rows * cols))) of the stored 3-D tensor."""
    for factor_init in ('linear', 'kaiming'):
        _, layer = build(core_size=4, adaptive_terms=3, seed=1,
                         per_group_factors=per_group_factors,
                         factor_init=factor_init)
        for factor in (*layer.lors_L, *layer.lors_R):
            _, rows, cols = factor.shape
            bound = (6 / (rows * cols))**0.5 if factor_init == 'kaiming' \
                else 1 / cols**0.5
            assert factor.abs().max() <= bound
            assert factor.abs().max() > 0.8 * bound  # uses the whole range
    with pytest.raises(ValueError, match='factor_init must be one of'):
        build(factor_init='lora')
    with pytest.raises(TypeError, match='per_group_factors must be a bool'):
        build(per_group_factors=1)


def test_init_equals_shared_and_shared_is_query_independent():
    shared, layer = build()
    assert torch.count_nonzero(shared.generator.weight) == 0
    assert torch.count_nonzero(shared.generator.bias) > 0
    for name in ('weight', 'bias'):
        assert torch.count_nonzero(getattr(layer.lors_core_generator, name)) == 0
    assert all(p.abs().sum() > 0 for p in (*layer.lors_L, *layer.lors_R))
    query = torch.randn(3, 4, QUERY_DIM)
    generated = layer(query)
    for j in range(2):
        assert torch.equal(generated.materialise(j), generated.shared[j])
        # Zero generator weight: every query gets the bias' matrices.
        assert torch.equal(generated.shared[j][0, 0], generated.shared[j][2, 3])
    x = torch.randn(3, 4, GROUPS, P_IN, C)
    assert torch.allclose(generated.apply_right(x, 0),
                          x @ generated.shared[0], atol=1e-6)


@pytest.mark.parametrize('per_group_factors', [False, True])
def test_materialise_matches_term_by_term_reference(per_group_factors):
    shared, layer = build(adaptive_terms=3,
                          per_group_factors=per_group_factors)
    randomise(shared, layer)
    query = torch.randn(2, 3, QUERY_DIM)
    generated = layer(query)
    for j in range(2):
        expected = reference_matrix(shared, layer, query, j)
        assert torch.allclose(generated.materialise(j), expected, atol=1e-5)


@pytest.mark.parametrize('per_group_factors', [False, True])
@pytest.mark.parametrize('recompute', [True, False])
@pytest.mark.parametrize('adaptive_terms', [1, 3])
def test_fast_equals_materialised_values_and_gradients(adaptive_terms,
                                                       recompute,
                                                       per_group_factors):
    shared, layer = build(adaptive_terms=adaptive_terms, recompute=recompute,
                          per_group_factors=per_group_factors)
    randomise(shared, layer)
    query = torch.randn(2, 5, QUERY_DIM)
    x = torch.randn(2, 5, GROUPS, P_IN, C)
    results = []
    for fast in (True, False):
        shared.zero_grad()
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        out = mix(layer(query), xg, fast)
        out.square().mean().backward()
        grads = [xg.grad] + [p.grad.clone() for p in (*shared.parameters(),
                                                      *layer.parameters())]
        results.append((out.detach(), grads))
    (fast_out, fast_grads), (mat_out, mat_grads) = results
    assert fast_out.shape == (2, 5, GROUPS, P_OUT, C)
    assert fast_out.abs().max() > 0.1  # meaningful scale for atol
    assert torch.allclose(fast_out, mat_out, atol=1e-5)
    for a, b in zip(fast_grads, mat_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def saved_storage_bytes(layer, query, x):
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.nbytes
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = mix(layer(query), x, fast=True)
    out.sum().backward()
    return sum(storages.values())


def test_recompute_stores_less_and_gives_the_same_gradients():
    query = torch.randn(2, 5, QUERY_DIM)
    x = torch.randn(2, 5, GROUPS, P_IN, C, requires_grad=True)
    saved, grads = [], []
    for recompute in (False, True):
        shared, layer = build(adaptive_terms=3, recompute=recompute)
        randomise(shared, layer)
        saved.append(saved_storage_bytes(layer, query, x))
        grads.append([p.grad for p in layer.parameters()])
    # Stored without recompute: x @ L, its product with the cores (each
    # P_IN x K*k per query and group), R @ x and Z R x (K*k x C each).
    intermediates = 2 * 5 * GROUPS * 3 * 4 * (2 * P_IN + 2 * C) * 4
    assert saved[0] - saved[1] >= intermediates
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_apply_broadcasts_query_dims():
    shared, layer = build()
    randomise(shared, layer)
    generated = layer(torch.randn(4, QUERY_DIM))  # one query batch dim
    x = torch.randn(4, GROUPS, 7, C)
    assert torch.allclose(generated.apply_right(x, 0),
                          x @ generated.materialise(0), atol=1e-5)
    y = torch.randn(4, GROUPS, P_IN, 5)
    assert torch.allclose(generated.apply_left(1, y),
                          generated.materialise(1) @ y, atol=1e-5)


def test_gradients_reach_shared_and_every_private_factor():
    shared, layer = build()
    query = torch.randn(2, 3, QUERY_DIM)
    x = torch.randn(2, 3, GROUPS, P_IN, C)

    def step():
        shared.zero_grad()
        layer.zero_grad()
        mix(layer(query), x, fast=True).square().mean().backward()

    step()
    assert shared.generator.weight.grad.abs().sum() > 0
    assert shared.generator.bias.grad.abs().sum() > 0
    assert layer.lors_core_generator.weight.grad.abs().sum() > 0
    assert layer.lors_core_generator.bias.grad.abs().sum() > 0
    # The cores are zero, so L and R receive no gradient yet.
    for factor in (*layer.lors_L, *layer.lors_R):
        assert torch.count_nonzero(factor.grad) == 0
    torch.optim.SGD([*shared.parameters(), *layer.parameters()], lr=1.0).step()
    step()
    for factor in (*layer.lors_L, *layer.lors_R):
        assert factor.grad.abs().sum() > 0


def test_autocast_bfloat16_both_paths():
    shared, layer = build()
    randomise(shared, layer)
    query = torch.randn(2, 3, QUERY_DIM)
    x = torch.randn(2, 3, GROUPS, P_IN, C)
    reference = mix(layer(query), x, fast=False).detach()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        fast = mix(layer(query), x, fast=True)
        materialised = mix(layer(query), x, fast=False)
        (fast.float().sum() + materialised.float().sum()).backward()
    assert fast.dtype == materialised.dtype == torch.bfloat16
    scale = reference.abs().max()
    for out in (fast, materialised):
        assert (out.float() - reference).abs().max() < 0.05 * scale
    assert layer.lors_L[0].grad is not None


def test_deepcopy_keeps_layer_on_the_copys_generator():
    shared, layer = build()
    owner = nn.ModuleDict(dict(shared=shared, layer=layer))
    clone = copy.deepcopy(owner)
    assert clone['layer'].shared is clone['shared']
    assert clone['shared'] is not shared


@pytest.mark.parametrize('kwargs, error, pattern', [
    (dict(shapes=[]), ValueError, r'shapes .* got \[\]'),
    (dict(shapes=[(4, 4, 4)]), ValueError, r'shapes\[0\] must be an \(m, n\)'),
    (dict(shapes=[(4, 0)]), ValueError, r'shapes\[0\]\[1\] must be > 0, got 0'),
    (dict(groups=0), ValueError, r'groups must be > 0, got 0'),
    (dict(query_dim=2.0), TypeError, r'query_dim must be an int, got 2.0'),
])
def test_shared_generator_validation(kwargs, error, pattern):
    args = dict(query_dim=8, groups=2, shapes=[(4, 4)], num_layers=2)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        SharedGenerator(**args)


def test_lors_adaptive_validation():
    shared = SharedGenerator(8, 2, [(6, 6), (5, 3)], 2)
    with pytest.raises(ValueError, match=r'core_size must be > 0, got 0'):
        LorsAdaptive(shared, 0, 1)
    with pytest.raises(ValueError,
                       match=r'adaptive_terms must be > 0, got -1'):
        LorsAdaptive(shared, 2, -1)
    with pytest.raises(ValueError,
                       match=r'core_size=4 for shape \(5, 3\)'):
        LorsAdaptive(shared, 4, 1)
    with pytest.raises(TypeError, match='shared must be a SharedGenerator'):
        LorsAdaptive(nn.Linear(8, 8), 2, 1)


@pytest.mark.parametrize('per_group_factors', [False, True])
def test_to_linear_generates_the_same_matrices(per_group_factors):
    """The merged generator (shared + folded private residual) gives the
    layer's full matrices for every query, in float64 to rounding."""
    shared, layer = build(adaptive_terms=3,
                          per_group_factors=per_group_factors)
    shared.double()
    layer.double()
    randomise(shared, layer)
    query = torch.randn(4, 3, QUERY_DIM, dtype=torch.float64)
    merged = layer.to_linear()
    assert isinstance(merged, nn.Linear)
    assert merged.weight.shape == shared.generator.weight.shape
    params = merged(query).unflatten(-1, (GROUPS, -1))
    generated = layer(query)
    start = 0
    for j, (m, n) in enumerate(SHAPES):
        got = params[..., start:start + m * n].unflatten(-1, (m, n))
        start += m * n
        expected = reference_matrix(shared, layer, query, j)
        assert (got - expected).abs().max() < 1e-12
        assert (got - generated.materialise(j)).abs().max() < 1e-12
    # the layer's parameters are left alone
    assert not merged.weight.data_ptr() == shared.generator.weight.data_ptr()
