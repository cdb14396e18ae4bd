"""Rank selection by residual energy, against an independent numpy SVD and
against what the surgery actually builds."""
import numpy as np
import pytest
import torch
from torch import nn

from lors_mmdet.lors import (apply_lors, choose_stack_ranks, dense_weight,
                             rank_for_energy, rank_report)


def stack(num_layers=4, out_features=12, in_features=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(out_features, in_features, generator=generator)
    # residuals of decaying spectra, different per layer
    return [base + torch.randn(out_features, 3, generator=generator)
            @ torch.randn(3, in_features, generator=generator) * (i + 1)
            + 0.05 * torch.randn(out_features, in_features,
                                 generator=generator)
            for i in range(num_layers)]


def numpy_kept(weights, rank):
    """Kept energy at ``rank``, re-derived with numpy: 1 - |R - R_r|^2/|R|^2
    of the truncated SVD reconstruction."""
    arrays = [w.double().numpy() for w in weights]
    mean = np.mean(arrays, axis=0)
    kept = []
    for a in arrays:
        residual = a - mean
        u, s, vh = np.linalg.svd(residual)
        truncated = (u[:, :rank] * s[:rank]) @ vh[:rank]
        kept.append(1 - np.linalg.norm(residual - truncated)**2 /
                    np.linalg.norm(residual)**2)
    return kept


@pytest.mark.parametrize('rank', [1, 3, 9])
def test_fixed_rank_report_matches_numpy(rank):
    weights = stack()
    report = rank_report(weights, rank)
    assert report.rank == rank and report.max_rank == 9
    np.testing.assert_allclose(report.kept_energy, numpy_kept(weights, rank),
                               rtol=0, atol=1e-10)
    if rank == 9:
        assert report.kept_energy == (1.0, ) * 4


@pytest.mark.parametrize('target', [0.5, 0.9, 0.99, 1.0])
def test_energy_target_is_the_smallest_rank_reaching_it(target):
    weights = stack()
    choice = rank_for_energy(weights, target)
    assert choice.rank == max(choice.layer_ranks)
    assert choice.target == target
    for layer, needed in enumerate(choice.layer_ranks):
        assert numpy_kept(weights, needed)[layer] >= target - 1e-12
        if needed > 1:  # one rank less misses the target
            assert numpy_kept(weights, needed - 1)[layer] < target
    assert choice.min_kept_energy >= target - 1e-12
    np.testing.assert_allclose(choice.kept_energy,
                               numpy_kept(weights, choice.rank), atol=1e-10)
    # the layers differ, so the chosen rank is not the same everywhere
    if target == 0.9:
        assert len(set(choice.layer_ranks)) > 1


def test_identical_layers_need_rank_one():
    weight = torch.randn(5, 4)
    choice = rank_for_energy([weight, weight.clone()], 0.9)
    assert choice.rank == 1 and choice.kept_energy == (1.0, 1.0)


def test_groups_take_residuals_against_their_own_mean():
    weights = stack(num_layers=4)
    groups = [[0, 1], [2, 3]]
    report = rank_report(weights, 2, groups)
    expected = numpy_kept(weights[:2], 2) + numpy_kept(weights[2:], 2)
    np.testing.assert_allclose(report.kept_energy, expected, atol=1e-10)
    with pytest.raises(ValueError, match='cover the layers'):
        rank_report(weights, 2, [[0, 1], [2]])


@pytest.mark.parametrize('bad, message', [
    (dict(target=0.0), r'energy target must be in \(0, 1\]'),
    (dict(target=1.5), r'energy target must be in \(0, 1\]'),
    (dict(rank=10), r'rank must be an int in \[1, 9\]'),
    (dict(rank=[1, 2]), r'one int per layer \(4\)'),
])
def test_bad_arguments_are_named(bad, message):
    weights = stack()
    with pytest.raises(ValueError, match=message):
        if 'target' in bad:
            rank_for_energy(weights, bad['target'])
        else:
            rank_report(weights, bad['rank'])


class Layer(nn.Module):

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 6)


class Encoder(nn.Module):

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(Layer() for _ in range(3))


def test_stack_choice_is_what_the_surgery_keeps():
    """The energy the report claims is the energy of the residual that
    apply_lors(init='dense') builds at the chosen ranks, projection by
    projection (the attention's packed maps included)."""
    torch.manual_seed(0)
    owner = Encoder().double()
    stock = [{p: dense_weight(layer, p).detach().clone()
              for p in ('attn.q_proj', 'attn.k_proj', 'attn.v_proj',
                        'attn.out_proj', 'fc')} for layer in owner.layers]
    choices = choose_stack_ranks(owner, 'layers', dict(ranks={'fc': 2}),
                                 energy=0.8)
    assert list(choices) == ['attn.q_proj', 'attn.k_proj', 'attn.v_proj',
                             'attn.out_proj', 'fc']
    assert choices['fc'].rank == 2 and choices['fc'].target is None
    assert all(c.target == 0.8 for p, c in choices.items() if p != 'fc')
    built = apply_lors(owner, 'layers', dict(
        init='dense', rank=1, ranks={p: c.rank for p, c in choices.items()}))
    for path, choice in choices.items():
        weights = [s[path] for s in stock]
        mean = torch.stack(weights).mean(0)
        for i, lors in enumerate(built.lors_linears(path)):
            residual = weights[i] - mean
            error = (weights[i] - lors.weight).norm()**2 / residual.norm()**2
            assert float(1 - error) == pytest.approx(choice.kept_energy[i],
                                                     abs=1e-9)
            assert choice.kept_energy[i] >= (choice.target or 0) - 1e-12
