"""The upper bound of the adaptive terms K_i: derived, enforced by the
LORS-AdaMixer surgery, and what param_report prints past the break-even."""
import json
import math
import os.path as osp
import runpy
import sys

import pytest
import torch
from mmengine.config import Config, ConfigDict

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from lors_mmdet.lors import apply_lors
from lors_mmdet.lors._validate import check_adaptive_terms, max_useful_terms

register_all_modules(init_default_scope=True)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_LORS = osp.join(
    ROOT, 'configs/lors_adamixer/lors-adamixer_r18-tiny_1xb16-toy_synthetic.py')


def residual_map_rank(left: torch.Tensor, right: torch.Tensor) -> int:
    """Rank of the linear map cores Z -> sum_t L_t Z_t R_t (the private
    residual of one group), from left (K, m, k) and right (K, k, n)."""
    m, n = left.shape[1], right.shape[2]
    jacobian = torch.einsum('tma,tbn->mntab', left, right)
    return int(torch.linalg.matrix_rank(jacobian.reshape(m * n, -1)))


def tile_selectors(size: int, k: int) -> list:
    """k-wide 0/1 selectors whose ranges cover 0..size-1 (the last one is
    shifted back to fit, so it may overlap its neighbour)."""
    starts = [min(i * k, size - k) for i in range(math.ceil(size / k))]
    return [torch.eye(size, dtype=torch.float64)[:, s:s + k] for s in starts]


@pytest.mark.parametrize('m, n, k', [(8, 8, 4), (12, 8, 4), (7, 5, 3),
                                     (16, 16, 5), (6, 6, 6)])
def test_max_useful_terms_already_cover_the_matrix(m, n, k):
    """With max_useful_terms terms the private residual can be ANY m x n
    matrix (one k x k tile per term), so no further term can add to it."""
    terms = max_useful_terms((m, n), k)
    rows, cols = tile_selectors(m, k), tile_selectors(n, k)
    assert terms == len(rows) * len(cols)
    left = torch.stack([r for r in rows for _ in cols])
    right = torch.stack([c.T for _ in rows for c in cols])
    assert residual_map_rank(left, right) == m * n


@pytest.mark.parametrize('m, n, k', [(8, 8, 4), (12, 8, 4), (16, 32, 8)])
def test_max_useful_terms_is_tight_when_k_divides(m, n, k):
    """One term fewer cannot cover the matrix whatever its factors (only
    (K - 1) * k * k core entries for m * n matrix entries)."""
    terms = max_useful_terms((m, n), k)
    assert (terms - 1) * k * k < m * n
    torch.manual_seed(0)
    left = torch.randn(terms - 1, m, k, dtype=torch.float64)
    right = torch.randn(terms - 1, k, n, dtype=torch.float64)
    assert residual_map_rank(left, right) < m * n


def test_check_adaptive_terms_takes_the_largest_matrix():
    shapes = {'M': (16, 16), 'S': (12, 8)}  # k=4: 16 and 6 terms
    assert check_adaptive_terms(16, 4, shapes, 'adaptive_terms[2]') == 16
    with pytest.raises(ValueError,
                       match=r'adaptive_terms\[2\] = 17 is out of range '
                       r'\[1, 16\]:'
                       r'.*M 16x16 takes 16, S 12x8 takes 6'):
        check_adaptive_terms(17, 4, shapes, 'adaptive_terms[2]')
    with pytest.raises(ValueError, match=r'adaptive_terms\[0\] must be > 0'):
        check_adaptive_terms(0, 4, shapes, 'adaptive_terms[0]')
    with pytest.raises(TypeError, match=r'adaptive_terms\[0\] must be an int'):
        check_adaptive_terms(2.0, 4, shapes, 'adaptive_terms[0]')


def lors_decoder(adaptive_terms):
    """A small AdaMixer decoder made LORS-AdaMixer by the surgery (the
    detector's route, without the rest of the detector)."""
    # c = 32 / 2 = 16, S = 12 x 8, k = 4: M takes 16 terms, S 6
    decoder = MODELS.build(ConfigDict(
        type='AdaMixerDecoder', num_stages=3, stage_loss_weights=[1, 1, 1],
        content_dim=32, feat_channels=32, n_groups=2, in_points=8,
        out_points=12,
        bbox_head=dict(type='AdaMixerDecoderStage', num_classes=3,
                       num_heads=4, feedforward_channels=16)))
    return apply_lors(decoder, 'bbox_head', dict(
        include=['adaptive_mixing.out_proj'], rank=2,
        adaptive=dict(core_size=4, adaptive_terms=adaptive_terms)),
        key='lors.decoder')


def test_lors_adamixer_refuses_terms_beyond_the_bound():
    stack = lors_decoder([16, 1, 6])
    plan = stack.adaptive_plans['adaptive_mixing.parameter_generator']
    assert list(plan.adaptive_terms) == [16, 1, 6]
    with pytest.raises(ValueError, match=r'adaptive_terms\[1\] = 17 is out of '
                       r'range \[1, 16\]: 16 terms of 4x4 cores'):
        lors_decoder([1, 17, 1])


def test_published_sizes_bound():
    """At the paper's sizes (c = 128, P_out = 128, P_in = 64, k = 16) the
    bound is 64 terms, well above K_i <= 3 (6 for a converted checkpoint)."""
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/_base_/models/lors-adamixer_decoder.py'))
    sizes, adaptive = (cfg.lors_adamixer_roi_head,
                       cfg.lors_adamixer_decoder.adaptive)
    c = 256 // sizes.n_groups
    k = adaptive.core_size
    bound = max(max_useful_terms((c, c), k),
                max_useful_terms((sizes.out_points, sizes.in_points), k))
    assert (k, bound) == (16, 64)
    assert max(adaptive.adaptive_terms) * sizes.n_groups <= bound


def run_report(argv, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, 'argv', ['param_report.py', *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(osp.join(ROOT, 'tools/analysis/param_report.py'),
                       run_name='__main__')
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize('terms', [3, 8])
def test_param_report_prints_an_increase_as_such(terms, monkeypatch, capsys):
    """Toy LORS-AdaMixer (c = 16, S = 32 x 16, k = 8: bound 8 terms): the
    defaults save parameters, 8 terms in every stage cost more than dense."""
    options = ['--cfg-options', f'model.lors.decoder.adaptive.adaptive_terms={terms}']
    report = json.loads(run_report([TOY_LORS, '--json', *options],
                                   monkeypatch, capsys))
    text = run_report([TOY_LORS, *options], monkeypatch, capsys)
    for counts in (report['decoder'], report['total']):
        change = 100 * (counts['total'] / counts['stock_equivalent'] - 1)
        expected = (f'LORS adds {change:.1f}%' if change > 0 else
                    f'LORS saves {-change:.1f}%')
        assert expected in text
    assert ('LORS adds' in text) == (terms == 8)
    assert 'saves -' not in text
