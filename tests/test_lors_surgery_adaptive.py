"""The surgery's adaptive target kind: modules that generate matrices from the
query (AdaMixer's mixing, Sparse R-CNN's DynamicConv) declare them, and
apply_lors / merge_lors turn their generators into a shared generator plus
private adaptive residuals and back. Toy stacks in float64, then the real
modules (this project's AdaptiveMixing, mmdet's DynamicConv).
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lors_mmdet.lors import (LorsGeneratedLinear, LorsLinear, LorsStack,
                             SharedGenerator, apply_lors, count_parameters,
                             declare_generated, find_lors_stacks,
                             generated_weights, init_as_stock, merge_lors)
from lors_mmdet.lors import generated as generated_module

QUERY, GROUPS, C, P_IN, P_OUT, FEAT = 24, 2, 8, 6, 10, 8
NUM_LAYERS, POINTS, CORE = 4, 9, 4


class Mixing(nn.Module):
    """AdaMixer's adaptive mixing at toy size: one Linear generates, per group,
    a channel matrix M (c x c) and a spatial matrix S (P_out x P_in)."""

    def __init__(self) -> None:
        super().__init__()
        self.parameter_generator = nn.Linear(
            QUERY, GROUPS * (C * C + P_OUT * P_IN))
        self.out_proj = nn.Linear(GROUPS * P_OUT * C, QUERY)

    def lors_generated(self) -> dict:
        return dict(generator='parameter_generator', groups=GROUPS,
                    shapes=[(C, C), (P_OUT, P_IN)])

    def forward(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        params = self.parameter_generator(query).unflatten(-1, (GROUPS, -1))
        channel, spatial = params.split([C * C, P_OUT * P_IN], -1)
        out = x @ channel.unflatten(-1, (C, C))
        out = F.relu(F.layer_norm(out, out.shape[-2:]))
        out = spatial.unflatten(-1, (P_OUT, P_IN)) @ out
        out = F.relu(F.layer_norm(out, out.shape[-2:]))
        return query + self.out_proj(out.flatten(-3))


class MixingStage(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.mixing = Mixing()
        self.norm = nn.LayerNorm(QUERY)
        self.ffn = nn.Sequential(nn.Linear(QUERY, 32), nn.ReLU(),
                                 nn.Linear(32, QUERY))

    def forward(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        query = self.norm(self.mixing(x, query))
        return query + self.ffn(query)


class DynamicConv(nn.Module):
    """Sparse R-CNN's dynamic convolution at toy size (mmdet's layout): one
    Linear generates param_in (in x feat) and param_out (feat x out); it
    declares nothing itself (see the ``declared`` fixture)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels, self.feat_channels = QUERY, FEAT
        self.out_channels = QUERY
        self.dynamic_layer = nn.Linear(QUERY, 2 * QUERY * FEAT)
        self.norm_in = nn.LayerNorm(FEAT)
        self.norm_out = nn.LayerNorm(QUERY)
        self.fc_layer = nn.Linear(QUERY * POINTS, QUERY)
        self.fc_norm = nn.LayerNorm(QUERY)

    def forward(self, param_feature: torch.Tensor,
                input_feature: torch.Tensor) -> torch.Tensor:
        parameters = self.dynamic_layer(param_feature)
        param_in = parameters[:, :QUERY * FEAT].view(-1, QUERY, FEAT)
        param_out = parameters[:, -QUERY * FEAT:].view(-1, FEAT, QUERY)
        out = F.relu(self.norm_in(torch.bmm(input_feature, param_in)))
        out = F.relu(self.norm_out(torch.bmm(out, param_out)))
        return F.relu(self.fc_norm(self.fc_layer(out.flatten(1))))


class ConvStage(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.conv = DynamicConv()
        self.norm = nn.LayerNorm(QUERY)

    def forward(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self.norm(query + self.conv(query, x))


class Decoder(nn.Module):
    """N stages, each with its own sampled features."""

    def __init__(self, stage: type) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stage() for _ in range(NUM_LAYERS))

    def forward(self, feats, query: torch.Tensor) -> torch.Tensor:
        for stage, x in zip(self.stages, feats):
            query = stage(x, query)
        return query


def declare_dynamic_conv(module: DynamicConv) -> dict:
    return dict(generator='dynamic_layer',
                shapes=[(module.in_channels, module.feat_channels),
                        (module.feat_channels, module.out_channels)])


@pytest.fixture
def declared(monkeypatch):
    """A registry of its own for each test, with the DynamicConv entry."""
    monkeypatch.setattr(generated_module, 'DECLARED_GENERATORS', {})
    declare_generated(DynamicConv, declare_dynamic_conv)


KINDS = {
    'mixing': (MixingStage, 'mixing.parameter_generator',
               [(C, C), (P_OUT, P_IN)], GROUPS),
    'dynamic_conv': (ConvStage, 'conv.dynamic_layer',
                     [(QUERY, FEAT), (FEAT, QUERY)], 1),
}


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """float64, every parameter different (also across layers), non-zero."""
    module.double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator,
                                    dtype=param.dtype)
                        / math.sqrt(param.shape[-1]))
    return module


def decoder(kind: str) -> Decoder:
    return randomised_eval(Decoder(KINDS[kind][0]))


def randomised_eval(model: nn.Module) -> nn.Module:
    return randomise(model).eval()


def inputs(kind: str):
    generator = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    if kind == 'mixing':
        return [randn(2, 5, GROUPS, P_IN, C) for _ in range(NUM_LAYERS)], \
            randn(2, 5, QUERY)
    return [randn(7, POINTS, QUERY) for _ in range(NUM_LAYERS)], \
        randn(7, QUERY)


def adaptive(**kwargs) -> dict:
    return dict(core_size=CORE, **kwargs)


def randomise_private(stack: LorsStack, seed: int = 2) -> None:
    """Non-zero private parts everywhere (at init core generators and B are
    zero, which would hide a wrong merge)."""
    for path in stack.adaptive_plans:
        for layer in stack.lors_generators(path):
            randomise(layer, seed)
            seed += 1
    for path in stack.plans:
        for layer in stack.lors_linears(path):
            randomise(layer, seed)
            seed += 1


def structure(model: nn.Module):
    return [(n, type(m)) for n, m in model.named_modules()]


@pytest.mark.parametrize('kind', KINDS)
def test_declarations_of_both_generator_kinds(kind, declared):
    stage, path, shapes, groups = KINDS[kind]
    module = stage().get_submodule(path.rpartition('.')[0])
    found = generated_weights(module)
    assert (found.generator, found.shapes, found.groups) == (
        path.rpartition('.')[2], tuple(shapes), groups)
    assert generated_weights(nn.Linear(2, 3)) is None


@pytest.mark.parametrize('kind', KINDS)
def test_fresh_init_is_the_stock_stack_with_the_first_generator(
        kind, declared):
    model = decoder(kind)
    path = KINDS[kind][1]
    reference = copy.deepcopy(model)
    first = reference.stages[0].get_submodule(path)
    for stage in reference.stages:
        stage.get_submodule(path).load_state_dict(first.state_dict())
    stack = apply_lors(model, 'stages', dict(exclude='*',
                                             adaptive=adaptive()))
    assert list(stack.adaptive_plans) == [path] and stack.plans == {}
    for layer in stack.lors_generators(path):
        assert isinstance(layer, LorsGeneratedLinear)
        assert not layer.lors_core_generator.weight.any()
        assert not layer.lors_core_generator.bias.any()
    torch.testing.assert_close(model(*inputs(kind)),
                               reference(*inputs(kind)), rtol=0, atol=1e-12)


@pytest.mark.parametrize('kind', KINDS)
def test_dense_init_with_equal_generators_is_the_stock_stack(kind, declared):
    """init='dense': shared = mean generator, private residual zero; exact
    when the layers' generators are equal (and, here, the static targets at
    full rank)."""
    model = decoder(kind)
    path = KINDS[kind][1]
    first = model.stages[0].get_submodule(path)
    for stage in model.stages:
        stage.get_submodule(path).load_state_dict(first.state_dict())
    expected = model(*inputs(kind))
    stack = apply_lors(model, 'stages', dict(init='dense', rank='full',
                                             adaptive=adaptive()))
    assert stack.plans and stack.adaptive_plans
    torch.testing.assert_close(model(*inputs(kind)), expected, rtol=0,
                               atol=1e-12)


def test_dense_init_shares_the_mean_generator(declared):
    model = decoder('mixing')
    path = KINDS['mixing'][1]
    denses = [stage.get_submodule(path) for stage in model.stages]
    mean_w = torch.stack([d.weight for d in denses]).mean(0)
    mean_b = torch.stack([d.bias for d in denses]).mean(0)
    stack = apply_lors(model, 'stages', dict(init='dense', exclude='*',
                                             adaptive=adaptive()))
    shared = stack.shared_generator(0, path)
    torch.testing.assert_close(shared.generator.weight, mean_w)
    torch.testing.assert_close(shared.generator.bias, mean_b)


@pytest.mark.parametrize('per_group_factors', [False, True])
def test_generated_parameters_follow_the_lors_formula(per_group_factors,
                                                      declared):
    """A layer's output, written out term by term: per group g and matrix j,
    M_shared,g(q) + sum_t L_gt Z_gt(q) R_gt, flattened in the stock layout."""
    model = decoder('mixing')
    path = KINDS['mixing'][1]
    terms = [1, 2, 2, 3]
    stack = apply_lors(model, 'stages', dict(
        exclude='*', adaptive=adaptive(adaptive_terms=terms,
                                       per_group_factors=per_group_factors)))
    randomise_private(stack)
    query = inputs('mixing')[1]
    shared = stack.shared_generator(0, path).generator(query).unflatten(
        -1, (GROUPS, -1))
    for layer, num_terms in zip(stack.lors_generators(path), terms):
        cores = layer.lors_core_generator(query).unflatten(
            -1, (2, GROUPS, num_terms, CORE, CORE))
        expected, start = [], 0
        for g in range(GROUPS):
            start = 0
            for j, (m, n) in enumerate([(C, C), (P_OUT, P_IN)]):
                matrix = shared[..., g, start:start + m * n].unflatten(
                    -1, (m, n))
                for t in range(num_terms):
                    row = g * num_terms + t if per_group_factors else t
                    matrix = matrix + (layer.lors_L[j][row]
                                       @ cores[..., j, g, t, :, :]
                                       @ layer.lors_R[j][row])
                expected.append(matrix.flatten(-2))
                start += m * n
        torch.testing.assert_close(layer(query),
                                   torch.cat(expected, -1), rtol=0,
                                   atol=1e-12)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('per_group_factors', [False, True])
def test_merge_is_exact_with_random_private_parts(kind, per_group_factors,
                                                  declared):
    model = decoder(kind)
    stock = copy.deepcopy(model)
    path = KINDS[kind][1]
    stack = apply_lors(model, 'stages', dict(
        rank=2, layer_groups=[1, 3],
        adaptive=adaptive(adaptive_terms=[1, 2, 1, 3],
                          per_group_factors=per_group_factors,
                          factor_init='kaiming')))
    randomise_private(stack)
    expected = model(*inputs(kind))
    assert not torch.allclose(expected, stock(*inputs(kind)))
    assert merge_lors(model) == 1
    assert structure(model) == structure(stock)
    assert list(model.state_dict()) == list(stock.state_dict())
    assert type(model.stages[0].get_submodule(path)) is nn.Linear
    torch.testing.assert_close(model(*inputs(kind)), expected, rtol=0,
                               atol=1e-10)


@pytest.mark.parametrize('kind', KINDS)
def test_each_shared_tensor_once_and_honest_counts(kind, declared):
    model = decoder(kind)
    stock_total = sum(p.numel() for p in model.parameters())
    _, path, shapes, groups = KINDS[kind]
    terms = [1, 2, 2, 3]
    per_group = kind == 'mixing'
    stack = apply_lors(model, 'stages', dict(
        exclude='*', adaptive=adaptive(adaptive_terms=terms,
                                       per_group_factors=per_group)))
    state = model.state_dict()
    shared = stack.shared_generator(0, path)
    assert isinstance(shared, SharedGenerator) and shared.num_layers == 4
    shared_keys = [k for k, v in state.items()
                   if v.data_ptr() == shared.generator.weight.data_ptr()]
    assert shared_keys == [f'lors_stages.shared.0.{path}.generator.weight']
    assert len({v.data_ptr() for v in state.values()}) == len(state)
    assert not any(k.startswith(f'stages.0.{path}.generator') for k in state)
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert len(names) == len(set(names)) == len(list(model.parameters()))

    generator_size = (QUERY + 1) * groups * sum(m * n for m, n in shapes)
    rows = [groups * k if per_group else k for k in terms]
    private = sum(
        (QUERY + 1) * len(shapes) * groups * k * CORE * CORE
        + sum(r * (m * CORE + CORE * n) for m, n in shapes)
        for k, r in zip(terms, rows))
    count = count_parameters(model)
    assert count.shared == generator_size
    assert count.stock_equivalent == stock_total
    assert count.total == stock_total - 3 * generator_size + private


def test_a_saved_lors_stack_loads_strictly_into_a_new_one(tmp_path,
                                                         declared):
    config = dict(rank=2, adaptive=adaptive(adaptive_terms=[1, 2, 1, 2]))
    model = decoder('mixing')
    randomise_private(apply_lors(model, 'stages', config))
    torch.save(model.state_dict(), tmp_path / 'lors.pth')
    other = Decoder(MixingStage).double().eval()
    apply_lors(other, 'stages', config)
    other.load_state_dict(
        torch.load(tmp_path / 'lors.pth', weights_only=True), strict=True)
    torch.testing.assert_close(other(*inputs('mixing')),
                               model(*inputs('mixing')), rtol=0, atol=0)


def test_groups_of_layers_share_one_generator_each(declared):
    model = decoder('mixing')
    path = KINDS['mixing'][1]
    stack = apply_lors(model, 'stages', dict(layer_groups=2, exclude='*',
                                             adaptive=adaptive()))
    shared = [stack.shared_generator(g, path) for g in range(2)]
    assert [s.num_layers for s in shared] == [2, 2]
    layers = stack.lors_generators(path)
    assert [layer.shared for layer in layers] == [shared[0], shared[0],
                                                  shared[1], shared[1]]
    torch.testing.assert_close(
        shared[1].generator.weight,
        decoder('mixing').stages[2].get_submodule(path).weight)


def test_gradients_reach_shared_and_private_parts(declared):
    model = decoder('mixing')
    path = KINDS['mixing'][1]
    stack = apply_lors(model, 'stages', dict(rank=2, adaptive=adaptive()))
    randomise_private(stack)
    model(*inputs('mixing')).sum().backward()
    shared = stack.shared_generator(0, path)
    assert shared.generator.weight.grad.abs().sum() > 0
    for layer in stack.lors_generators(path):
        for param in layer.parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0


def test_static_and_adaptive_targets_in_one_stack(declared):
    model = decoder('mixing')
    stack = apply_lors(model, 'stages', dict(rank=2, adaptive=adaptive()))
    assert sorted(stack.plans) == ['ffn.0', 'ffn.2', 'mixing.out_proj']
    assert isinstance(model.stages[1].mixing.out_proj, LorsLinear)
    assert find_lors_stacks(model) == [('lors_stages', stack)]
    assert 'generators=' in repr(stack)


def test_without_adaptive_the_generator_stays_a_static_projection(declared):
    model = decoder('mixing')
    stack = apply_lors(model, 'stages', dict(rank=2))
    assert 'mixing.parameter_generator' in stack.plans
    assert stack.adaptive_plans == {}


def test_reset_private_parameters_zeroes_the_cores(declared):
    model = decoder('mixing')
    path = KINDS['mixing'][1]
    stack = apply_lors(model, 'stages', dict(exclude='*',
                                             adaptive=adaptive()))
    randomise_private(stack)
    stack.reset_private_parameters()
    for layer in stack.lors_generators(path):
        assert not layer.lors_core_generator.weight.any()
        assert layer.lors_L[0].any()


def test_init_as_stock_keeps_the_generators_parameter_objects(declared):
    model = decoder('mixing')
    path = KINDS['mixing'][1]
    stack = apply_lors(model, 'stages', dict(exclude='*',
                                             adaptive=adaptive()))
    randomise_private(stack)
    before = {name: id(p) for name, p in model.named_parameters()}
    with init_as_stock(model):
        for stage in model.stages:
            assert type(stage.get_submodule(path)) is nn.Linear
            nn.init.zeros_(stage.get_submodule(path).weight)
    assert {name: id(p) for name, p in model.named_parameters()} == before
    assert not stack.shared_generator(0, path).generator.weight.any()
    for layer in stack.lors_generators(path):
        assert layer.shared is stack.shared_generator(0, path)
        assert not layer.lors_core_generator.weight.any()


@pytest.mark.parametrize('cfg, message', [
    ('k=4', r'lors.adaptive must be a dict'),
    (dict(), r'lors.adaptive.core_size is required'),
    (dict(core_size=0), r'lors.adaptive.core_size must be a positive int, got 0'),
    (dict(core_size=7), r'lors.adaptive.core_size=7 exceeds min\(m, n\) of '
     r'the 10x6 matrices generated by .mixing.parameter_generator.'),
    (adaptive(adaptive_terms=[1, 2]),
     r'lors.adaptive.adaptive_terms must have one entry per layer'),
    (adaptive(adaptive_terms=0), r'lors.adaptive.adaptive_terms must be a '
     r'positive int'),
    (adaptive(adaptive_terms=[1, 1, 7, 1]),
     r'lors.adaptive.adaptive_terms\[2\] = 7 is out of range \[1, 6\]'),
    (adaptive(per_group_factors='yes'),
     r'lors.adaptive.per_group_factors must be a bool'),
    (adaptive(factor_init='xavier'), r'lors.adaptive.factor_init must be '
     r"one of \('linear', 'kaiming'\)"),
    (adaptive(rank=2), r"unknown key\(s\) \['rank'\] in lors.adaptive"),
])
def test_bad_adaptive_settings_name_the_key_and_leave_the_model(
        cfg, message, declared):
    model = decoder('mixing')
    state = copy.deepcopy(model.state_dict())
    with pytest.raises((TypeError, ValueError), match=message):
        apply_lors(model, 'stages', dict(adaptive=cfg))
    assert structure(model) == structure(decoder('mixing'))
    assert list(model.state_dict()) == list(state)


def test_adaptive_without_a_declaration_is_refused(monkeypatch):
    monkeypatch.setattr(generated_module, 'DECLARED_GENERATORS', {})
    model = decoder('dynamic_conv')
    with pytest.raises(ValueError, match=r'lors.adaptive is set, but no '
                       r'module of the layers declares'):
        apply_lors(model, 'stages', dict(adaptive=adaptive()))


def test_layers_declaring_different_generators_are_refused(declared):
    model = decoder('mixing')
    model.stages[3].mixing.lors_generated = lambda: dict(
        generator='parameter_generator', groups=1,
        shapes=[(2 * C, 2 * C), (P_OUT, P_IN)])
    with pytest.raises(ValueError, match=r'Mixing.lors_generated: generator '
                       r"'parameter_generator' has 248 outputs"):
        apply_lors(model, 'stages', dict(adaptive=adaptive()))
    model = decoder('mixing')
    model.stages[3].mixing.lors_generated = lambda: dict(
        generator='parameter_generator', groups=GROUPS * 2,
        shapes=[(C, C // 2), (P_OUT // 2, P_IN)])
    with pytest.raises(ValueError, match=r'lors.adaptive: layer 3 declares '
                       r'the generators .*, layer 0 .*identical in every'):
        apply_lors(model, 'stages', dict(adaptive=adaptive()))


@pytest.mark.parametrize('declaration, message', [
    ('parameter_generator', r'Mixing.lors_generated must be a dict'),
    (dict(generator='parameter_generator'),
     r"Mixing.lors_generated: .*missing key\(s\) \['shapes'\]"),
    (dict(generator='parameter_generator', shapes=[(C, C)], size=3),
     r"Mixing.lors_generated: unknown key\(s\) \['size'\]"),
    (dict(generator='gen', shapes=[(C, C)]),
     r"Mixing.lors_generated: generator 'gen' is not a submodule"),
    (dict(generator='out_proj', shapes=[(C, C)], groups=0),
     r'Mixing.lors_generated: groups must be > 0'),
    (dict(generator='parameter_generator', shapes=[(C, C)], groups=GROUPS),
     r"Mixing.lors_generated: generator 'parameter_generator' has 248 "
     r'outputs, .* needs 128'),
    (dict(generator='parameter_generator', shapes=[(C, 0)]),
     r'Mixing.lors_generated: shapes\[0\]\[1\] must be > 0'),
])
def test_bad_declarations_name_the_declaration(declaration, message):
    mixing = Mixing()
    mixing.lors_generated = declaration
    with pytest.raises((TypeError, ValueError), match=message):
        generated_weights(mixing)


def test_a_generator_without_bias_or_not_linear_is_refused(declared):
    conv = DynamicConv()
    conv.dynamic_layer = nn.Linear(QUERY, 2 * QUERY * FEAT, bias=False)
    with pytest.raises(ValueError, match=r'registered for DynamicConv: '
                       r"generator 'dynamic_layer' has no bias"):
        generated_weights(conv)
    conv.dynamic_layer = nn.Identity()
    with pytest.raises(TypeError, match=r'must be an nn.Linear or a '
                       r'transposed linear, got Identity'):
        generated_weights(conv)
    with pytest.raises(TypeError, match='must be an nn.Module class'):
        declare_generated(object, declare_dynamic_conv)


# The real modules: this project's AdaMixer mixing and mmdet's DynamicConv,
# each declared by registration here (the models do not declare themselves
# yet).


def real_stack(stage: nn.Module) -> nn.Module:
    owner = nn.Module()
    owner.stages = nn.ModuleList(copy.deepcopy(stage)
                                 for _ in range(NUM_LAYERS))
    return randomise(owner)


def test_real_adamixer_mixing_converts_and_merges_exactly(monkeypatch):
    from lors_mmdet.models.adamixer.mixing import AdaptiveMixing
    monkeypatch.setattr(generated_module, 'DECLARED_GENERATORS', {})
    declare_generated(AdaptiveMixing, lambda m: dict(
        generator='parameter_generator', groups=m.n_groups,
        shapes=[(m.group_channels, m.group_channels),
                (m.out_points, m.in_points)]))
    owner = real_stack(AdaptiveMixing(QUERY, GROUPS * C, P_IN, P_OUT,
                                      GROUPS))
    feats, query = inputs('mixing')

    def run():
        return torch.stack([mixing(x, query)
                            for mixing, x in zip(owner.stages, feats)])

    # fresh init: every stage computes with stage 0's generator and out_proj
    for mixing in owner.stages:
        mixing.load_state_dict(owner.stages[0].state_dict())
    stock = run()
    stack = apply_lors(owner, 'stages', dict(
        include='out_proj', rank=2,
        adaptive=adaptive(adaptive_terms=[1, 1, 2, 2],
                          per_group_factors=True, factor_init='kaiming')))
    torch.testing.assert_close(run(), stock, rtol=0, atol=1e-12)
    randomise_private(stack)
    expected = run()
    merge_lors(owner)
    assert type(owner.stages[2].parameter_generator) is nn.Linear
    torch.testing.assert_close(run(), expected, rtol=0, atol=1e-10)


def test_real_mmdet_dynamic_conv_converts_and_merges_exactly(monkeypatch):
    from mmdet.models.layers.transformer.utils import \
        DynamicConv as MmdetDynamicConv
    monkeypatch.setattr(generated_module, 'DECLARED_GENERATORS', {})
    declare_generated(MmdetDynamicConv, declare_dynamic_conv)
    owner = real_stack(MmdetDynamicConv(QUERY, FEAT, input_feat_shape=3))
    owner.eval()
    feats, query = inputs('dynamic_conv')
    # mmdet's DynamicConv takes the RoI features as (N, C, H, W)
    feats = [x.transpose(1, 2).unflatten(-1, (3, 3)) for x in feats]

    def run():
        return torch.stack([conv(query, x)
                            for conv, x in zip(owner.stages, feats)])

    stack = apply_lors(owner, 'stages', dict(
        rank=2, adaptive=adaptive(adaptive_terms=2)))
    assert sorted(stack.plans) == ['fc_layer']
    assert list(stack.adaptive_plans) == ['dynamic_layer']
    randomise_private(stack)
    expected = run()
    merge_lors(owner)
    assert type(owner.stages[0].dynamic_layer) is nn.Linear
    torch.testing.assert_close(run(), expected, rtol=0, atol=1e-10)
