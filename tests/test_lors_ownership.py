"""A model using shared LORS stacks: ownership, optimizer, accounting, reset.

The host below has AdaMixer's structure at toy size: the owner registers the
shared generator and the shared output projection once; every stage registers
only its private parts.
"""
import pytest
import torch
from mmengine.optim import DefaultOptimWrapperConstructor, build_optim_wrapper
from torch import nn

from lors_mmdet.lors import (LorsAdaptive, LorsLinear, SharedGenerator,
                             build_lors_linears, count_parameters,
                             reset_lors_parameters)

DIM, GROUPS, C, P_IN, P_OUT, K_CORE = 16, 2, 8, 4, 6, 2
TERMS = [1, 2, 3]


class Stage(nn.Module):

    def __init__(self, adaptive: LorsAdaptive, out_proj: LorsLinear) -> None:
        super().__init__()
        self.sampling_offsets = nn.Linear(DIM, GROUPS * P_IN * 3)
        self.adaptive = adaptive
        self.out_proj = out_proj
        self.norm = nn.LayerNorm(DIM)

    def forward(self, query, features):
        # Stands in for sampling: the features depend on the offsets.
        offsets = self.sampling_offsets(query).unflatten(-1, (GROUPS, P_IN, 3))
        features = features + offsets.mean(-1, keepdim=True)
        matrices = self.adaptive(query)
        x = matrices.apply_right(features, 0)
        x = matrices.apply_left(1, x)
        return self.norm(query + self.out_proj(x.flatten(-3)))


class Decoder(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        num_stages = len(TERMS)
        self.shared_generator = SharedGenerator(DIM, GROUPS,
                                                [(C, C), (P_OUT, P_IN)],
                                                num_stages)
        self.shared_out_proj, out_projs = build_lors_linears(
            GROUPS * P_OUT * C, DIM, num_stages, rank=2)
        self.stages = nn.ModuleList(
            Stage(LorsAdaptive(self.shared_generator, K_CORE, terms), proj)
            for terms, proj in zip(TERMS, out_projs))

    def forward(self, query, features):
        for stage in self.stages:
            query = stage(query, features)
        return query


def test_state_dict_has_each_tensor_once():
    model = Decoder()
    state = model.state_dict()
    storages = [t.untyped_storage().data_ptr() for t in state.values()]
    assert len(storages) == len(set(storages))
    assert sum(k.endswith('generator.weight') and 'core' not in k
               for k in state) == 1
    assert [k for k in state if 'shared' in k] == [
        'shared_generator.generator.weight', 'shared_generator.generator.bias',
        'shared_out_proj.weight'
    ]
    ids = [id(p) for _, p in model.named_parameters(remove_duplicate=False)]
    assert len(ids) == len(set(ids))


def optim_cfg():
    return dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4),
        clip_grad=dict(max_norm=1.0),
        paramwise_cfg=dict(custom_keys={
            'sampling_offsets': dict(lr_mult=0.1),
            'shared_generator': dict(lr_mult=0.5),
            'lors_': dict(decay_mult=0.0),
        }))


def test_mmengine_optimizer_accepts_the_model_and_trains_everything():
    torch.manual_seed(0)
    model = Decoder()
    wrapper = build_optim_wrapper(model, optim_cfg())
    groups = wrapper.optimizer.param_groups
    in_groups = [id(p) for g in groups for p in g['params']]
    assert sorted(in_groups) == sorted(id(p) for p in model.parameters())
    lr_of = {id(p): g['lr'] for g in groups for p in g['params']}
    assert lr_of[id(model.stages[0].sampling_offsets.weight)] == pytest.approx(1e-4)
    assert lr_of[id(model.shared_generator.generator.weight)] == pytest.approx(5e-4)
    assert lr_of[id(model.shared_out_proj.weight)] == pytest.approx(1e-3)

    query = torch.randn(2, 3, DIM)
    features = torch.randn(2, 3, GROUPS, P_IN, C)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):  # B, cores first; A, L, R once those are non-zero
        wrapper.update_params(model(query, features).square().mean())
    unchanged = [n for n, p in model.named_parameters()
                 if torch.equal(p, before[n])]
    assert not unchanged


def test_registering_shared_in_every_layer_is_what_breaks_the_optimizer():
    """Negative control: the same stack with the shared module registered in
    every layer (the naive way) is refused by the same constructor."""

    class NaiveStage(nn.Module):

        def __init__(self, shared, proj):
            super().__init__()
            self.shared = shared  # registered again: a duplicate
            self.proj = proj

    shared, projs = build_lors_linears(8, 8, 3, rank=1)
    naive = nn.ModuleList(NaiveStage(shared, p) for p in projs)
    constructor = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
        dict(custom_keys={'proj': dict(lr_mult=0.1)}))
    with pytest.raises(ValueError, match='more than one parameter group'):
        constructor(naive)


def test_count_parameters():
    model = Decoder()
    gen = model.shared_generator.generator
    shared = gen.weight.numel() + gen.bias.numel() + model.shared_out_proj.weight.numel()
    lors_only = sum(p.numel() for s in model.stages
                    for p in (*s.adaptive.parameters(), s.out_proj.lors_A,
                              s.out_proj.lors_B))
    plain_private = sum(p.numel() for s in model.stages
                        for p in (*s.sampling_offsets.parameters(),
                                  *s.norm.parameters(), s.out_proj.bias))
    count = count_parameters(model)
    assert count.shared == shared
    assert count.private == lors_only + plain_private
    assert count.total == sum(p.numel() for p in model.parameters())
    assert count.stock_equivalent == 3 * shared + plain_private
    assert 0 < count.saving < 1
    # A single stage counts the shared modules it uses, once each.
    stage = count_parameters(model.stages[2])
    assert stage.shared == shared
    assert stage.total == shared + sum(p.numel() for p in model.stages[2].parameters())


def test_reset_after_a_framework_init_restores_the_lors_init():
    model = Decoder()
    for p in model.parameters():  # what mmdet's DETR init_weights does
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    shared_before = model.shared_out_proj.weight.detach().clone()
    reset_lors_parameters(model)
    assert torch.equal(model.shared_out_proj.weight, shared_before)
    query = torch.randn(2, 3, DIM)
    for stage in model.stages:
        assert torch.equal(stage.out_proj.weight, model.shared_out_proj.weight)
        matrices = stage.adaptive(query)
        for j in range(2):
            assert torch.equal(matrices.materialise(j), matrices.shared[j])
