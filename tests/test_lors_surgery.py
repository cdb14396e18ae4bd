"""Stack surgery (lors_mmdet.lors.surgery) on torch's TransformerEncoder and
a small ViT-style block list: exactness, merge, ownership, counts, config.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lors_mmdet.lors import (LorsAttention, LorsLinear, LorsStack,
                             LorsStackConfig, SharedLinear, apply_lors,
                             count_parameters, find_lors_stacks, init_as_stock,
                             merge_lors)

DIM, HEADS, FF, NUM_LAYERS = 16, 4, 24, 6


def encoder(batch_first: bool = False) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(DIM, HEADS, FF, dropout=0.,
                                       batch_first=batch_first)
    model = nn.TransformerEncoder(layer, NUM_LAYERS,
                                  enable_nested_tensor=False)
    return randomised(model)


class Attention(nn.Module):
    """timm-style attention: one packed qkv Linear and an output proj."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        q, k, v = (t.unflatten(-1, (HEADS, -1)).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, -1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(-2))


class Block(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, FF), nn.GELU(),
                                 nn.Linear(FF, DIM))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(NUM_LAYERS))
        self.head = nn.Linear(DIM, 3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def vit() -> ViT:
    return randomised(ViT())


def randomised(model: nn.Module) -> nn.Module:
    """float64, eval, every parameter different (also across layers)."""
    model = model.double().eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 1 / math.sqrt(param.shape[-1]))
    return model


MODELS = {'encoder': encoder, 'vit': vit}


def inputs(kind: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    shape = (5, 2, DIM) if kind == 'encoder' else (2, 5, DIM)
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def layers_of(model: nn.Module):
    return model.layers if isinstance(model, nn.TransformerEncoder) \
        else model.blocks


def layers_path(kind: str) -> str:
    return 'layers' if kind == 'encoder' else 'blocks'


def projection_weights(layer: nn.Module):
    """The matrices LORS shares (not norms, not biases)."""
    return {
        name: param
        for name, param in layer.named_parameters()
        if name.endswith('in_proj_weight') or (
            name.endswith('weight') and 'norm' not in name)
    }


def structure(model: nn.Module):
    return [(n, type(m)) for n, m in model.named_modules()]


@pytest.mark.parametrize('kind', MODELS)
def test_fresh_init_equals_layers_with_the_copied_weights(kind):
    model = MODELS[kind]()
    reference = copy.deepcopy(model)
    with torch.no_grad():  # what fresh init shares: layer 0's matrices
        first = projection_weights(layers_of(reference)[0])
        for layer in layers_of(reference)[1:]:
            for name, param in projection_weights(layer).items():
                param.copy_(first[name])
    stack = apply_lors(model, layers_path(kind), dict(rank=2))
    for path in stack.plans:
        assert all(torch.equal(lors.lors_B, torch.zeros_like(lors.lors_B))
                   for lors in stack.lors_linears(path))
    x = inputs(kind)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize('groups', [None, 3, [2, 4]])
@pytest.mark.parametrize('kind', MODELS)
def test_full_rank_from_dense_reproduces_the_dense_model(kind, groups):
    model = MODELS[kind]()
    x = inputs(kind)
    expected = model(x)
    apply_lors(model, layers_path(kind),
               dict(rank='full', init='dense', layer_groups=groups))
    assert isinstance(layers_of(model)[0].get_submodule(
        'self_attn.q_proj' if kind == 'encoder' else 'mlp.0'), LorsLinear)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize('kind', MODELS)
def test_merge_round_trip_gives_stock_modules_keys_and_outputs(kind):
    model = MODELS[kind]()
    stock_structure = structure(model)
    stock_keys = list(model.state_dict())
    apply_lors(model, layers_path(kind),
               dict(rank=[1, 2, 3, 1, 2, 3], init='dense'))
    x = inputs(kind)
    lors_out = model(x)
    assert find_lors_stacks(model)
    assert merge_lors(model) == 1
    assert find_lors_stacks(model) == []
    assert structure(model) == stock_structure
    assert list(model.state_dict()) == stock_keys
    torch.testing.assert_close(model(x), lors_out, rtol=0, atol=1e-12)
    fresh = MODELS[kind]()
    fresh.load_state_dict(model.state_dict())  # strict: stock keys
    torch.testing.assert_close(fresh(x), lors_out, rtol=0, atol=1e-12)


@pytest.mark.parametrize('kind', MODELS)
def test_each_shared_tensor_once_in_state_dict_and_parameters(kind):
    model = MODELS[kind]()
    stack = apply_lors(model, layers_path(kind), dict(rank=2, layer_groups=2))
    state = model.state_dict()
    pointers = [t.untyped_storage().data_ptr() for t in state.values()]
    assert len(pointers) == len(set(pointers))
    ids = [id(p) for _, p in model.named_parameters(remove_duplicate=False)]
    assert len(ids) == len(set(ids))
    shared_keys = [k for k in state if '.shared.' in k]
    # one weight per group (3 groups of 2) and per projection
    assert len(shared_keys) == 3 * len(stack.plans)
    assert all(k.startswith(f'lors_{layers_path(kind)}.shared.')
               for k in shared_keys)
    for layer in layers_of(model):
        assert not any('shared' in k for k in layer.state_dict())
    # each layer uses its group's shared weight, registered on the owner
    for index, layer in enumerate(layers_of(model)):
        for path in stack.plans:
            assert layer.get_submodule(path).shared is stack.shared_linear(
                index // 2, path)


def test_per_layer_ranks_and_groups_give_the_formula_counts():
    model = encoder()
    stock = sum(p.numel() for p in model.parameters())
    ranks = [1, 2, 3, 4, 5, 6]
    terms = [1, 1, 2, 2, 1, 1]
    stack = apply_lors(
        model, 'layers',
        dict(rank=ranks, num_terms=terms, ranks={'linear*': 2},
             layer_groups=[2, 4]))
    shapes = {  # (in, out) of each projection
        'self_attn.q_proj': (DIM, DIM), 'self_attn.k_proj': (DIM, DIM),
        'self_attn.v_proj': (DIM, DIM), 'self_attn.out_proj': (DIM, DIM),
        'linear1': (DIM, FF), 'linear2': (FF, DIM)}
    assert sorted(stack.plans) == sorted(shapes)
    shared_per_group = sum(i * o for i, o in shapes.values())
    biases = sum(o for _, o in shapes.values())
    norms = 2 * 2 * DIM
    private = 0
    for rank, num_terms in zip(ranks, terms):
        for path, (i, o) in shapes.items():
            r = 2 if path.startswith('linear') else rank
            private += r * num_terms * (i + o)
        private += biases + norms
    total = 2 * shared_per_group + private
    assert sum(p.numel() for p in model.parameters()) == total
    count = count_parameters(model)
    assert count.shared == 2 * shared_per_group
    assert count.total == total
    assert count.stock_equivalent == stock


@pytest.mark.parametrize('kind', MODELS)
def test_gradients_reach_shared_and_private_parts(kind):
    model = MODELS[kind]().train()
    stack = apply_lors(model, layers_path(kind),
                       dict(rank=2, init='dense', layer_groups=3))
    model(inputs(kind)).square().sum().backward()
    for group in range(len(stack.layer_groups)):
        for path in stack.plans:
            grad = stack.shared_linear(group, path).weight.grad
            assert grad is not None and grad.abs().sum() > 0, (group, path)
    for path in stack.plans:
        for lors in stack.lors_linears(path):
            for param in (lors.lors_A, lors.lors_B, lors.bias):
                assert param.grad is not None and param.grad.abs().sum() > 0


def test_include_exclude_and_partial_attention():
    model = encoder()
    x = inputs('encoder')
    expected = model(x)
    stack = apply_lors(
        model, 'layers',
        dict(rank='full', init='dense', include=['self_attn', 'linear1'],
             exclude=['*.k_proj']))
    assert sorted(stack.plans) == ['linear1', 'self_attn.out_proj',
                                   'self_attn.q_proj', 'self_attn.v_proj']
    layer = model.layers[3]
    assert isinstance(layer.self_attn, LorsAttention)
    assert type(layer.self_attn.k_proj) is nn.Linear  # private, dense
    assert type(layer.linear2) is nn.Linear
    assert isinstance(layer.linear1, LorsLinear)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-10)
    merge_lors(model)
    assert type(model.layers[3].self_attn) is nn.MultiheadAttention
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-10)


def test_vit_head_and_packed_qkv_stay_out_when_excluded():
    model = vit()
    stack = apply_lors(model, 'blocks', dict(rank=4, exclude='attn.qkv'))
    assert sorted(stack.plans) == ['attn.proj', 'mlp.0', 'mlp.2']
    assert type(model.head) is nn.Linear
    assert type(model.blocks[0].attn.qkv) is nn.Linear


def test_reset_private_parameters_after_a_framework_init():
    model = encoder()
    stack = apply_lors(model, 'layers', dict(rank=2))
    for param in model.parameters():  # like mmdet's DETR init_weights
        if param.dim() > 1:
            nn.init.xavier_uniform_(param)
    stack.reset_private_parameters()
    for path in stack.plans:
        for lors in stack.lors_linears(path):
            assert not lors.lors_B.any()
            assert lors.lors_A.any()


def test_deepcopy_keeps_the_layers_on_the_copied_shared_weights():
    model = vit()
    apply_lors(model, 'blocks', dict(rank=2))
    clone = copy.deepcopy(model)
    (_, stack), = find_lors_stacks(clone)
    assert stack.layers[0] is clone.blocks[0]
    assert clone.blocks[1].mlp[0].shared is stack.shared_linear(0, 'mlp.0')
    assert stack.shared_linear(0, 'mlp.0') is not \
        model.lors_blocks.shared_linear(0, 'mlp.0')


def test_layers_given_as_modules_and_a_name():
    model = vit()
    stack = apply_lors(model, list(model.blocks)[:3], dict(rank=2),
                       name='lors_first')
    assert model.lors_first is stack and stack.layers_path is None
    assert isinstance(model.blocks[2].mlp[0], LorsLinear)
    assert type(model.blocks[3].mlp[0]) is nn.Linear


@pytest.mark.parametrize('cfg, message', [
    (dict(rnak=4), r"unknown key\(s\) \['rnak'\] in lors"),
    (dict(rank=0), r"lors.rank must be a positive int or 'full'"),
    (dict(rank=[2, 2]), r'lors.rank must have one entry per layer'),
    (dict(rank=17), r"lors.rank: rank 17 .* exceeds .* = 16"),
    (dict(num_terms=0), r'lors.num_terms must be a positive int'),
    (dict(num_terms=2, rank='full'), r"lors.rank='full' needs num_terms=1"),
    (dict(include='nope*'), r"lors.include: pattern 'nope\*' matches no"),
    (dict(exclude=['*']), r'leave no projection'),
    (dict(ranks={'zzz': 2}), r"lors.ranks: pattern 'zzz' matches no"),
    (dict(ranks={'linear1': 'half'}), r"lors.ranks\['linear1'\] must be"),
    (dict(layer_groups=4),
     r'lors.layer_groups=4 must divide the number of layers'),
    (dict(layer_groups=[2, 2]), r'lors.layer_groups=\[2, 2\] must sum to'),
    (dict(groups=2), r"lors.groups was renamed lors.layer_groups \(adjacent "
     r"layers that share one weight; 'groups' alone means the matrix groups"),
    (dict(init='svd'), r"lors.init must be one of \('fresh', 'dense'\)"),
    ('rank=4', r'lors must be a dict'),
])
def test_bad_config_names_the_key_and_leaves_the_model(cfg, message):
    model = encoder()
    keys = list(model.state_dict())
    with pytest.raises((ValueError, TypeError), match=message):
        apply_lors(model, 'layers', cfg)
    assert list(model.state_dict()) == keys
    assert structure(model) == structure(encoder())


def test_config_key_prefix_and_typed_config():
    with pytest.raises(ValueError, match=r'model.lors.decoder.rank'):
        LorsStackConfig.from_dict(dict(rank=-1), key='model.lors.decoder')
    config = LorsStackConfig.from_dict(dict(rank=[1, 2], include='ffn'))
    assert config.rank == (1, 2) and config.include == ('ffn', )
    assert LorsStackConfig.from_dict(config) is config


def test_stack_errors():
    model = encoder()
    with pytest.raises(TypeError, match='not a ModuleList'):
        apply_lors(model.layers, list(model.layers), name='x')
    with pytest.raises(ValueError, match='not a submodule of the owner'):
        apply_lors(model, list(encoder().layers), name='x')
    with pytest.raises(ValueError,
                       match="layer 1 differs from layer 0 at 'linear1'"):
        model.layers[1].linear1 = nn.Linear(DIM, FF + 1).double()
        apply_lors(model, 'layers')
    with pytest.raises(ValueError, match="'lors_layers'"):
        model = encoder()
        model.lors_layers = nn.Identity()
        apply_lors(model, 'layers')


@pytest.mark.parametrize('batch_first', [False, True])
@pytest.mark.parametrize('kdim', [None, 6])
def test_lors_attention_has_the_call_contract_of_nn_mha(batch_first, kdim):
    torch.manual_seed(0)
    stock = nn.MultiheadAttention(DIM, HEADS, kdim=kdim, vdim=kdim,
                                  batch_first=batch_first).double().eval()
    ours = LorsAttention.from_multihead_attention(stock)
    q = torch.randn(2, 5, DIM, dtype=torch.float64)
    kv = torch.randn(2, 7, kdim or DIM, dtype=torch.float64)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[0, -2:] = True
    cases = [
        dict(),
        dict(key_padding_mask=padding),
        dict(attn_mask=torch.randn(5, 7, dtype=torch.float64),
             key_padding_mask=padding.double() * -1e4),
        dict(attn_mask=torch.randn(2 * HEADS, 5, 7, dtype=torch.float64),
             need_weights=False),
        dict(attn_mask=torch.rand(2 * HEADS, 5, 7) > 0.7,
             average_attn_weights=False),
    ]
    for kwargs in cases:
        out, weights = ours(q, kv, kv, **kwargs)
        stock_out, stock_weights = stock(q, kv, kv, **kwargs)
        torch.testing.assert_close(out, stock_out, rtol=0, atol=1e-12)
        if stock_weights is None:
            assert weights is None
        else:
            torch.testing.assert_close(weights, stock_weights, rtol=0,
                                       atol=1e-12)
    one = (slice(None), 0) if not batch_first else (0, )
    mask = torch.randn(HEADS, 5, 7, dtype=torch.float64)
    out, weights = ours(q[one], kv[one], kv[one], attn_mask=mask)
    stock_out, stock_weights = stock(q[one], kv[one], kv[one], attn_mask=mask)
    torch.testing.assert_close(out, stock_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(weights, stock_weights, rtol=0, atol=1e-12)
    back = ours.to_multihead_attention()
    assert list(back.state_dict()) == list(stock.state_dict())
    for name, tensor in stock.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_lors_attention_refuses_extra_bias_kv():
    stock = nn.MultiheadAttention(DIM, HEADS, add_bias_kv=True)
    with pytest.raises(ValueError, match='add_bias_kv'):
        LorsAttention.from_multihead_attention(stock)
    with pytest.raises(RuntimeError, match='is_causal'):
        LorsAttention(DIM, HEADS)(*(torch.randn(3, 1, DIM), ) * 3,
                                  is_causal=True)


def test_batch_first_encoder_with_padding_in_its_fast_path_conditions():
    """torch's batch_first encoder with a padding mask, in eval/no-grad (the
    conditions of its nested-tensor fast path, turned off by the surgery and
    back on by merging)."""
    layer = nn.TransformerEncoderLayer(DIM, HEADS, FF, dropout=0.,
                                       batch_first=True)
    model = randomised(nn.TransformerEncoder(layer, NUM_LAYERS))
    assert model.use_nested_tensor
    x = inputs('vit')
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, -2:] = True
    with torch.no_grad():
        expected = model(x, src_key_padding_mask=padding)
        apply_lors(model, 'layers', dict(rank='full', init='dense'))
        got = model(x, src_key_padding_mask=padding)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(got[1, :3], expected[1, :3], rtol=0,
                               atol=1e-10)
    assert not model.use_nested_tensor
    merge_lors(model)
    assert model.use_nested_tensor
    with torch.no_grad():
        merged = model(x, src_key_padding_mask=padding)
    torch.testing.assert_close(merged[0], expected[0], rtol=0, atol=1e-10)


def test_shared_linear_module_types():
    model = vit()
    stack = apply_lors(model, 'blocks', dict(rank=2))
    assert isinstance(stack, LorsStack)
    assert all(isinstance(stack.shared_linear(0, p), SharedLinear)
               for p in stack.plans)
    assert stack.shared_linear(0, 'mlp.0').num_layers == NUM_LAYERS
    assert stack.group_of(5) == 0


def test_projection_missing_in_some_layers_stays_private():
    """Like Conditional-DETR's qpos_proj, kept by the first layer only."""
    model = vit()
    for block in model.blocks[1:]:
        block.attn.proj = nn.Identity()
    x = inputs('vit')
    expected = model(x)
    stack = apply_lors(model, 'blocks', dict(rank='full', init='dense'))
    assert sorted(stack.plans) == ['attn.qkv', 'mlp.0', 'mlp.2']
    assert type(model.blocks[0].attn.proj) is nn.Linear
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="pattern 'attn.proj' matches no"):
        apply_lors(vit_with_first_proj_only(), 'blocks',
                   dict(include='attn.proj'))


def vit_with_first_proj_only() -> ViT:
    model = vit()
    for block in model.blocks[1:]:
        block.attn.proj = nn.Identity()
    return model


def stock_init(model: nn.Module) -> None:
    """An init that only knows stock modules: each Linear / MHA of layer i
    gets weights i + 1 and biases -i; raises on anything LORS."""
    for module in model.modules():
        assert not isinstance(module, (LorsLinear, LorsAttention, LorsStack))
    with torch.no_grad():
        for index, layer in enumerate(model.layers):
            for name, param in layer.named_parameters():
                if 'norm' not in name:
                    param.fill_(index + 1 if param.dim() > 1 else -index)


@pytest.mark.parametrize('init', ['fresh', 'dense'])
def test_init_as_stock_keeps_parameter_objects(init):
    model = encoder()
    stack = apply_lors(model, 'layers',
                       dict(rank='full', init=init, layer_groups=[2, 4],
                            exclude='*.k_proj'))
    before = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    with init_as_stock(model):
        stock_init(model)
    assert [id(p) for p in model.parameters()] == before
    assert list(model.state_dict()) == keys
    assert find_lors_stacks(model) == [('lors_layers', stack)]
    for group, first in ((0, 0), (1, 2)):
        shared = stack.shared_linear(group, 'linear1').weight
        expected = first + 1 if init == 'fresh' else (2 * first + 3) / 2 \
            if group == 0 else 4.5
        assert torch.all(shared == expected)
    for index, layer in enumerate(model.layers):
        assert torch.all(layer.self_attn.k_proj.weight == index + 1)
        assert torch.all(layer.linear2.bias == -index)
        effective = layer.linear1.weight
        if init == 'fresh':
            assert not layer.linear1.lors_B.any()
            assert torch.all(effective == (1 if index < 2 else 3))
        else:  # full rank: every layer has its own init back
            torch.testing.assert_close(effective,
                                       torch.full_like(effective, index + 1))


# --------------------------------------------------------------------------
# odd stacks: ties, hooks, dtypes, stack size, transposed linears
# --------------------------------------------------------------------------
def tie_across_layers(model):
    model.blocks[1].mlp[0] = model.blocks[0].mlp[0]


def tie_within_a_layer(model):
    for block in model.blocks:
        block.alias = block.mlp[0]


def tie_parameters_across_layers(model):
    model.blocks[2].attn.proj.weight = model.blocks[0].attn.proj.weight


def tie_a_parameter_outside_the_stack(model):
    model.extra = nn.Linear(DIM, DIM).double()
    model.extra.weight = model.blocks[3].attn.proj.weight


@pytest.mark.parametrize('tie, match', [
    (tie_across_layers,
     r"layer 0's 'mlp.0' is also 'blocks.1.mlp.0' of ViT \(the same Linear"),
    (tie_within_a_layer,
     r"layer 0's 'mlp.0' is also 'blocks.0.alias' of ViT \(the same Linear"),
    (tie_parameters_across_layers,
     r"layer 0's attn.proj.weight is also 'blocks.2.attn.proj.weight' of "
     r'ViT \(tied parameters\)'),
    (tie_a_parameter_outside_the_stack,
     r"layer 3's attn.proj.weight is also 'extra.weight' of ViT"),
])
def test_ties_are_refused_before_anything_changes_and_kept_when_excluded(
        tie, match):
    model = vit()
    tie(model)
    before = structure(model)
    excluded = 'mlp.0' if 'mlp.0' in match else 'attn.proj'
    with pytest.raises(ValueError, match=match + r'.*untie it first, or '
                       f"leave '{excluded}' out with lors.exclude"):
        apply_lors(model, 'blocks', dict(rank=2))
    assert structure(model) == before
    x = inputs('vit')
    expected = model(x)
    stack = apply_lors(model, 'blocks',
                       dict(rank='full', init='dense', exclude=excluded))
    assert excluded not in stack.plans
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-10)
    if tie is tie_across_layers:
        assert model.blocks[1].mlp[0] is model.blocks[0].mlp[0]
    elif tie is tie_within_a_layer:
        assert all(b.alias is b.mlp[0] for b in model.blocks)
    elif tie is tie_parameters_across_layers:
        assert model.blocks[2].attn.proj.weight is \
            model.blocks[0].attn.proj.weight
    else:
        assert model.extra.weight is model.blocks[3].attn.proj.weight


def test_a_tied_attention_is_refused():
    model = encoder()
    model.layers[4].self_attn = model.layers[1].self_attn
    with pytest.raises(ValueError, match=r"layer 1's 'self_attn' is also "
                       r"'layers.4.self_attn' of TransformerEncoder \(the "
                       r'same MultiheadAttention object\)'):
        apply_lors(model, 'layers', dict(rank=2))
    assert type(model.layers[1].self_attn) is nn.MultiheadAttention


def test_call_hooks_move_with_the_replaced_modules_and_back():
    """Forward, forward-pre (with kwargs) and full backward hooks on a Linear
    and an nn.MultiheadAttention fire after the surgery and after merging,
    with the values of the stock model; the user's handles still remove
    them."""
    model = encoder().train()
    layer = model.layers[2]
    seen = {'linear1': [], 'self_attn': [], 'pre': [], 'grad': []}
    handles = [
        layer.linear1.register_forward_hook(
            lambda m, args, out: seen['linear1'].append(out.detach())),
        layer.self_attn.register_forward_hook(
            lambda m, args, out: seen['self_attn'].append(out[0].detach())),
        layer.linear2.register_forward_pre_hook(
            lambda m, args, kwargs: seen['pre'].append(args[0].detach()),
            with_kwargs=True),
        layer.linear2.register_full_backward_hook(
            lambda m, grad_in, grad_out: seen['grad'].append(
                grad_out[0].detach())),
    ]
    x = inputs('encoder')

    def run():
        for values in seen.values():
            values.clear()
        model.zero_grad()
        model(x).sum().backward()
        assert all(len(values) == 1 for values in seen.values()), seen
        return {name: values[0] for name, values in seen.items()}

    expected = run()
    apply_lors(model, 'layers', dict(rank='full', init='dense'))
    assert isinstance(model.layers[2].linear1, LorsLinear)
    assert isinstance(model.layers[2].self_attn, LorsAttention)
    for name, value in run().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-10)
    merge_lors(model)
    assert type(model.layers[2].linear1) is nn.Linear
    for name, value in run().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-10)
    apply_lors(model, 'layers', dict(rank=2))
    for handle in handles:
        handle.remove()
    for values in seen.values():
        values.clear()
    model(x).sum().backward()
    assert not any(seen.values())


@pytest.mark.parametrize('where, match', [
    ('state_dict', r"layer 3's 'linear1' has state_dict_hooks; they would see LORS "
                   r"parameters instead of Linear's"),
    ('out_proj', r"layer 3's self_attn.out_proj has hooks, and the surgery "
                 r"replaces 'self_attn' as a whole"),
])
def test_hooks_the_surgery_cannot_keep_are_refused(where, match):
    model = encoder()
    if where == 'state_dict':
        model.layers[3].linear1._register_state_dict_hook(
            lambda *args: None)
    else:
        model.layers[3].self_attn.out_proj.register_forward_hook(
            lambda *args: None)
    with pytest.raises(ValueError, match=match):
        apply_lors(model, 'layers', dict(rank=2))
    assert structure(model) == structure(encoder())


def test_mixed_dtypes_are_refused_at_apply_not_at_forward():
    model = encoder()
    model.layers[2].float()
    with pytest.raises(ValueError, match=r"layer 2 differs from layer 0 at "
                       r"'self_attn.q_proj': \(in, out, bias, type, dtype, "
                       r'device\) = \(16, 16, True, MultiheadAttention, '
                       r'torch.float32, cpu\), layer 0 has .*torch.float64'):
        apply_lors(model, 'layers', dict(rank=2))
    assert structure(model) == structure(encoder())


@pytest.mark.parametrize('num_layers, match', [
    (0, r'lors: the stack has no layers'),
    (1, r'lors: the stack has 1 layer; LORS shares weights across layers, '
        r'so one layer has nothing to share .*leave it stock'),
])
def test_stacks_with_nothing_to_share_are_refused(num_layers, match):
    model = ViT()
    model.blocks = nn.ModuleList(Block() for _ in range(num_layers))
    before = structure(model)
    with pytest.raises(ValueError, match=match):
        apply_lors(model, 'blocks', dict(rank=2))
    assert structure(model) == before


class Conv1D(nn.Module):
    """Like transformers.pytorch_utils.Conv1D (GPT-2): a linear map whose
    weight is stored transposed, (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) / math.sqrt(nx))
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, self.nx),
                           self.weight).reshape(*x.shape[:-1], self.nf)


class ConvMLP(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.c_fc = Conv1D(FF, DIM)
        self.c_proj = Conv1D(DIM, FF)

    def forward(self, x):
        return x + self.c_proj(F.gelu(self.c_fc(x)))


@pytest.mark.parametrize('init', ['dense', 'fresh'])
def test_transposed_linears_are_static_targets(init):
    model = randomised(nn.Sequential(*(ConvMLP() for _ in range(4))))
    owner = nn.Module()
    owner.blocks = model
    stock_keys = list(owner.state_dict())
    x = inputs('vit')
    expected = model(x)
    first = model[0].c_proj.weight.detach().clone()
    stack = apply_lors(owner, 'blocks', dict(rank='full', init=init))
    assert sorted(stack.plans) == ['c_fc', 'c_proj']
    assert isinstance(model[1].c_fc, LorsLinear)
    assert stack.shared_linear(0, 'c_fc').weight.shape == (FF, DIM)
    if init == 'dense':
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-10)
    else:  # shared = layer 0's map, in nn.Linear's layout
        assert torch.equal(stack.shared_linear(0, 'c_proj').weight, first.t())
    lors_out = model(x)
    merge_lors(owner)
    assert type(model[2].c_proj) is Conv1D
    assert model[2].c_proj.weight.shape == (FF, DIM)
    assert list(owner.state_dict()) == stock_keys
    torch.testing.assert_close(model(x), lors_out, rtol=0, atol=1e-12)
