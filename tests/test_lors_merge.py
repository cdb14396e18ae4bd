"""Merge (LORS -> dense) and from-dense (dense -> LORS by truncated SVD)."""
import pytest
import torch
from torch import nn

from lors_mmdet.lors import LorsLinearStack, lors_from_dense, merge_linears

OUT, IN, N = 6, 9, 4


def dense_weights(seed=0):
    torch.manual_seed(seed)
    return [torch.randn(OUT, IN) for _ in range(N)]


def test_merge_gives_plain_layers_with_identical_outputs():
    stack = LorsLinearStack(IN, OUT, N, rank=[1, 2, 3, 2], num_terms=[2, 1, 1, 3])
    with torch.no_grad():
        for layer in stack:
            layer.lors_B.normal_()
            layer.bias.normal_()
    merged = merge_linears(stack.shared, stack.layers)
    x = torch.randn(5, IN)
    for weight, layer in zip(merged, stack):
        assert weight.shape == (OUT, IN) and not weight.requires_grad
        plain = nn.Linear(IN, OUT)
        plain.load_state_dict(dict(weight=weight, bias=layer.bias.detach()))
        assert torch.allclose(plain(x), layer(x), atol=1e-5)
        assert torch.allclose(layer.to_linear().weight, weight)


def test_merge_rejects_a_layer_of_another_stack():
    a, b = LorsLinearStack(IN, OUT, 2, rank=1), LorsLinearStack(IN, OUT, 2, rank=1)
    with pytest.raises(ValueError, match=r'layers\[1\] uses another shared'):
        merge_linears(a.shared, [a[0], b[1]])


def test_from_dense_full_rank_is_exact_and_merges_back():
    weights = dense_weights()
    biases = [torch.randn(OUT) for _ in range(N)]
    shared, layers, errors = lors_from_dense(weights, rank=min(OUT, IN),
                                             biases=biases)
    assert torch.allclose(shared.weight, torch.stack(weights).mean(0))
    assert shared.num_layers == N
    assert all(e < 1e-6 for e in errors), errors
    x = torch.randn(3, IN)
    for layer, weight, bias in zip(layers, weights, biases):
        assert layer.shared is shared
        assert torch.allclose(layer.weight, weight, atol=1e-5)
        assert torch.allclose(layer(x), x @ weight.T + bias, atol=1e-5)
    for merged, weight in zip(merge_linears(shared, layers), weights):
        assert torch.allclose(merged, weight, atol=1e-5)


def test_from_dense_terms_split_the_rank():
    weights = dense_weights(1)
    _, layers, errors = lors_from_dense(weights, rank=2, num_terms=3)
    _, _, errors_rank6 = lors_from_dense(weights, rank=6)
    assert all(layer.lors_A.shape == (6, IN) for layer in layers)
    assert errors == pytest.approx(errors_rank6, abs=1e-6)
    assert all(layer.bias is None for layer in layers)


def test_from_dense_error_decreases_with_rank():
    weights = dense_weights(2)
    per_rank = [lors_from_dense(weights, rank=r)[2]
                for r in range(1, min(OUT, IN) + 1)]
    for layer in range(N):
        curve = [errors[layer] for errors in per_rank]
        assert all(b < a for a, b in zip(curve, curve[1:])), curve
    # The reported error is the real one.
    shared, layers, errors = lors_from_dense(weights, rank=2)
    for layer, weight, error in zip(layers, weights, errors):
        real = torch.linalg.norm(layer.weight.detach() - weight)
        real = real / torch.linalg.norm(weight)
        assert float(real) == pytest.approx(error, rel=1e-4)
        assert error > 0.01


def test_from_dense_per_layer_ranks_and_dtype():
    weights = [w.double() for w in dense_weights(3)]
    shared, layers, errors = lors_from_dense(weights, rank=[1, 6, 2, 6])
    assert shared.weight.dtype == torch.float64
    assert [layer.rank for layer in layers] == [1, 6, 2, 6]
    assert errors[1] < 1e-12 and errors[3] < 1e-12
    assert errors[0] > errors[2] > 0.01


@pytest.mark.parametrize('kwargs, pattern', [
    (dict(weights=[torch.zeros(6, 9), torch.zeros(6, 8)]),
     r'weights\[1\] has shape \(6, 8\), expected \(6, 9\)'),
    (dict(weights=[torch.zeros(6, 9), torch.zeros(54)]),
     r'weights\[1\] must be a 2-D tensor'),
    (dict(weights=[]), r'weights must be a non-empty sequence'),
    (dict(rank=0), r'rank must be > 0, got 0'),
    (dict(rank=7), r'rank \* num_terms must be <= .* = 6, got rank=7'),
    (dict(rank=[1, 2]), r'rank must have one entry per layer \(num_layers=4\)'),
    (dict(biases=[torch.zeros(6)] * 3), r'biases must have one entry per '
                                        r'weight \(4\), got 3'),
    (dict(biases=[torch.zeros(9)] * 4), r'biases\[0\] must have shape \(6,\)'),
])
def test_from_dense_validation(kwargs, pattern):
    args = dict(weights=dense_weights(), rank=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        lors_from_dense(**args)
