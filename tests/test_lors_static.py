"""Static LORS branch: init, gradients, both cost paths, dtype, copies."""
import copy
import io
import pickle

import pytest
import torch
from torch import nn

from lors_mmdet.lors import (LorsLinear, LorsLinearStack, SharedLinear,
                             build_lors_linears)


def randomise_private(layer: LorsLinear) -> None:
    """Give B and the bias non-zero values (at init both are zero)."""
    with torch.no_grad():
        layer.lors_B.normal_()
        if layer.bias is not None:
            layer.bias.normal_()


class Block(nn.Module):
    """A stand-in for a decoder layer: a private LORS map and a private norm."""

    def __init__(self, proj: LorsLinear) -> None:
        super().__init__()
        self.proj = proj
        self.norm = nn.LayerNorm(proj.out_features)

    def forward(self, x):
        return self.norm(self.proj(x))


class Host(nn.Module):
    """Owns the shared weight once; each block holds only its private part."""

    def __init__(self) -> None:
        super().__init__()
        self.shared, layers = build_lors_linears(8, 8, 3, rank=[1, 2, 3],
                                                 num_terms=[2, 1, 1])
        self.blocks = nn.ModuleList(Block(layer) for layer in layers)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_init_every_layer_equals_shared():
    stack = LorsLinearStack(12, 7, 4, rank=[1, 2, 3, 2], num_terms=[1, 1, 2, 3])
    x = torch.randn(5, 12)
    expected = x @ stack.shared.weight.T
    for layer in stack:
        assert torch.equal(layer.weight, stack.shared.weight)
        assert torch.allclose(layer(x), expected, atol=1e-6)
        assert layer.lors_A.shape == (layer.rank * layer.num_terms, 12)
        assert layer.lors_A.abs().sum() > 0


def test_gradients_reach_shared_and_every_factor():
    stack = LorsLinearStack(6, 5, 3, rank=2)
    x = torch.randn(4, 6)
    sum(layer(x).square().sum() for layer in stack).backward()
    assert stack.shared.weight.grad.abs().sum() > 0
    for layer in stack:
        # B is zero, so A receives no gradient yet; B and the bias do.
        assert layer.lors_B.grad.abs().sum() > 0
        assert layer.bias.grad.abs().sum() > 0
        assert torch.count_nonzero(layer.lors_A.grad) == 0
    torch.optim.SGD(stack.parameters(), lr=0.1).step()
    stack.zero_grad()
    sum(layer(x).square().sum() for layer in stack).backward()
    for layer in stack:
        assert layer.lors_A.grad.abs().sum() > 0


@pytest.mark.parametrize('rows', [1, 3, 64])
def test_dense_and_low_rank_paths_agree(rows):
    layer = LorsLinearStack(16, 9, 2, rank=3, num_terms=2)[1]
    randomise_private(layer)
    x = torch.randn(2, rows, 16)
    dense = layer(x, path='dense')
    low_rank = layer(x, path='low_rank')
    reference = x @ (layer.shared.weight + layer.lors_B @ layer.lors_A).T
    reference = reference + layer.bias
    assert torch.allclose(dense, reference, atol=1e-5)
    assert torch.allclose(low_rank, reference, atol=1e-5)
    assert torch.allclose(layer(x), reference, atol=1e-5)
    # Gradients agree too.
    grads = []
    for path in ('dense', 'low_rank'):
        layer.zero_grad()
        layer(x, path=path).square().sum().backward()
        grads.append([p.grad.clone() for p in (layer.lors_A, layer.lors_B)])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_auto_path_follows_cost():
    layer = LorsLinearStack(64, 64, 1, rank=4)[0]
    # Dense is cheaper once rows * (in + out) > in * out, i.e. rows > 32.
    assert not layer.prefers_dense(torch.randn(32, 64))
    assert layer.prefers_dense(torch.randn(33, 64))
    assert layer.prefers_dense(torch.randn(2, 100, 64))
    with pytest.raises(ValueError, match="path.*'fast'"):
        layer(torch.randn(2, 64), path='fast')


def test_autocast_bfloat16_both_paths():
    torch.manual_seed(0)
    layer = LorsLinearStack(32, 24, 1, rank=4)[0]
    randomise_private(layer)
    x = torch.randn(10, 32)
    reference = layer(x, path='dense')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        dense = layer(x, path='dense')
        low_rank = layer(x, path='low_rank')
    assert dense.dtype == low_rank.dtype == torch.bfloat16
    scale = reference.abs().max()
    # bf16 keeps 8 significant bits: allow a few ulps of the output scale.
    assert (dense.float() - reference).abs().max() < 0.05 * scale
    assert (low_rank.float() - reference).abs().max() < 0.05 * scale
    assert (dense.float() - low_rank.float()).abs().max() < 0.05 * scale


def test_to_linear_matches_layer():
    layer = LorsLinearStack(8, 5, 2, rank=2)[0]
    randomise_private(layer)
    linear = layer.to_linear()
    assert type(linear) is nn.Linear
    x = torch.randn(3, 8)
    assert torch.allclose(linear(x), layer(x), atol=1e-6)
    assert not linear.weight.requires_grad or linear.weight.grad_fn is None


def test_layers_register_only_private_tensors():
    host = Host()
    keys = list(host.state_dict())
    assert keys.count('shared.weight') == 1
    assert not any(k.startswith('blocks') and k.endswith('shared.weight')
                   for k in keys)
    assert set(host.blocks[0].proj.state_dict()) == {'lors_A', 'lors_B',
                                                      'bias'}
    assert host.blocks[0].proj.shared is host.shared
    shared_ids = {id(host.shared.weight)}
    private = [p for b in host.blocks for p in b.parameters()]
    assert not shared_ids & {id(p) for p in private}


def test_host_dtype_conversion_moves_shared_in_place():
    host = Host()
    for block in host.blocks:
        randomise_private(block.proj)
    x = torch.randn(4, 8)
    expected = host(x).double()
    host.to(torch.float64)
    assert host.shared.weight.dtype == torch.float64
    for block in host.blocks:
        assert block.proj.shared is host.shared
        assert block.proj.weight.dtype == torch.float64
    assert torch.allclose(host(x.double()), expected, atol=1e-5)


def test_deepcopy_and_pickle_keep_layers_on_the_copys_shared():
    host = Host()
    for block in host.blocks:
        randomise_private(block.proj)
    x = torch.randn(4, 8)
    expected = host(x)

    buffer = io.BytesIO()
    torch.save(host, buffer)
    buffer.seek(0)
    unpickled = torch.load(buffer, weights_only=False)  # our own object
    for clone in (copy.deepcopy(host), pickle.loads(pickle.dumps(host)),
                  unpickled):
        assert clone.shared is not host.shared
        for block in clone.blocks:
            assert block.proj.shared is clone.shared
        assert torch.allclose(clone(x), expected, atol=1e-6)
        # Training the copy's shared weight changes the copy only.
        with torch.no_grad():
            clone.shared.weight.add_(torch.randn_like(clone.shared.weight))
        assert not torch.allclose(clone(x), expected, atol=1e-3)
    assert torch.allclose(host(x), expected)


def test_load_state_dict_round_trip():
    source, target = Host(), Host()
    for block in source.blocks:
        randomise_private(block.proj)
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 8)
    assert torch.allclose(target(x), source(x))


@pytest.mark.parametrize('kwargs, pattern', [
    (dict(rank=0), r'rank must be > 0, got 0'),
    (dict(rank=-2), r'rank must be > 0, got -2'),
    (dict(rank=7), r'rank \* num_terms .* = 6, got rank=7'),
    (dict(rank=3, num_terms=3), r'got rank=3, num_terms=3'),
    (dict(rank=[1, 2]), r'rank must have one entry per layer '
                        r'\(num_layers=3\), got 2 entries: \[1, 2\]'),
    (dict(rank=2, num_terms=[1, 1, 1, 1]), r'num_terms must have one entry '
                                           r'per layer.*got 4 entries'),
    (dict(rank=[1, 0, 1]), r'rank\[1\] must be > 0, got 0'),
    (dict(rank=1, num_layers=0), r'num_layers must be > 0, got 0'),
])
def test_validation_errors_name_argument_and_value(kwargs, pattern):
    args = dict(in_features=6, out_features=10, num_layers=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        build_lors_linears(**args)
    with pytest.raises(ValueError, match=pattern):
        LorsLinearStack(**args)


def test_type_errors():
    with pytest.raises(TypeError, match=r'rank must be an int, got 1.5'):
        build_lors_linears(4, 4, 2, rank=1.5)
    with pytest.raises(TypeError, match='shared must be a SharedLinear'):
        LorsLinear(nn.Linear(4, 4), rank=1)


def test_shared_linear_default_init_like_nn_linear():
    torch.manual_seed(3)
    shared = SharedLinear(20, 30, 2)
    torch.manual_seed(3)
    linear = nn.Linear(20, 30, bias=False)
    assert torch.equal(shared.weight, linear.weight)


def test_factor_init_of_a():
    """'linear' (default): nn.Linear's / LoRA's bound 1/sqrt(in);
    'kaiming': kaiming_uniform_'s default bound sqrt(6/in). B stays zero."""
    shared = SharedLinear(512, 16, num_layers=2)
    torch.manual_seed(0)
    for factor_init, bound in (('linear', 512**-0.5),
                               ('kaiming', (6 / 512)**0.5)):
        layer = LorsLinear(shared, rank=8, factor_init=factor_init)
        assert layer.lors_A.abs().max() <= bound
        assert layer.lors_A.abs().max() > 0.9 * bound
        assert torch.count_nonzero(layer.lors_B) == 0
    assert LorsLinear(shared, rank=8).factor_init == 'linear'
    with pytest.raises(ValueError, match='factor_init must be one of'):
        LorsLinear(shared, rank=8, factor_init='xavier')
