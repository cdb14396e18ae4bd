"""AdaMixer's box parameterisation and 3D sampling (pure PyTorch)."""
import math

import pytest
import torch
import torch.nn.functional as F

from lors_mmdet.models.adamixer import (level_weights, make_sample_points,
                                        refine_xyzr, sampling_3d,
                                        whole_image_xyzr,
                                        xyzr_position_encoding, xyzr_to_wh,
                                        xyzr_to_xyxy)


def test_whole_image_xyzr_decodes_to_the_image():
    xyzr = whole_image_xyzr([(60, 80), (100, 50)], num_queries=3,
                            device=torch.device('cpu'))
    assert xyzr.shape == (2, 3, 4)
    boxes = xyzr_to_xyxy(xyzr)
    torch.testing.assert_close(boxes[0], torch.tensor([[0., 0., 80., 60.]] * 3))
    torch.testing.assert_close(boxes[1], torch.tensor([[0., 0., 50., 100.]] * 3))
    # z is log2 of the geometric mean side, r log2 of h / w
    torch.testing.assert_close(xyzr[0, 0, 2], torch.tensor(math.log2(
        math.sqrt(60 * 80))))
    torch.testing.assert_close(xyzr[1, 0, 3], torch.tensor(1.0))


def test_refine_moves_centre_in_box_units_and_scale_in_log_space():
    xyzr = torch.tensor([[10.0, 20.0, 3.0, 0.0]])  # an 8 x 8 box
    delta = torch.tensor([[0.5, -0.25, 1.0, 2.0]])
    new = refine_xyzr(xyzr, delta)
    torch.testing.assert_close(new, torch.tensor([[14.0, 18.0, 4.0, 2.0]]))
    # scale 2**4 = 16, ratio 2**2 = 4: w = 16 / 2, h = 16 * 2
    torch.testing.assert_close(xyzr_to_wh(new), torch.tensor([[8.0, 32.0]]))


def test_position_encoding_layout():
    xyzr = torch.tensor([[[500.0, 250.0, 3.0, -1.0]]])
    num_feats = 8
    pos = xyzr_position_encoding(xyzr, num_feats)
    assert pos.shape == (1, 1, 4 * num_feats)
    scaled = [0.5, 0.25, 3.0, -1.0]
    for param, value in enumerate(scaled):
        for i in range(num_feats):
            freq = 10000**(2 * (i // 2) / num_feats)
            expected = math.sin(value / freq) if i % 2 == 0 \
                else math.cos(value / freq)
            assert pos[0, 0, param * num_feats + i].item() == pytest.approx(
                expected, abs=1e-6)
    with pytest.raises(ValueError, match='num_feats'):
        xyzr_position_encoding(xyzr, 7)


def test_make_sample_points():
    xyzr = torch.tensor([[[40.0, 30.0, 4.0, 0.0]]])  # 16 x 16 box
    offsets = torch.tensor([0.5, -0.5, -1.0, 0.0, 0.0, 0.0]).view(1, 1, 6)
    points = make_sample_points(offsets, xyzr, num_groups=2, num_points=1)
    assert points.shape == (1, 1, 2, 1, 3)
    torch.testing.assert_close(points[0, 0, 0, 0], torch.tensor([48., 22., 3.]))
    torch.testing.assert_close(points[0, 0, 1, 0], torch.tensor([40., 30., 4.]))


def test_level_weights_are_gaussian_over_log_strides():
    z = torch.tensor([3.0, 4.5])
    weights = level_weights(z, [4, 8, 16, 32], tau=2.0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert weights[0].argmax() == 1  # z = 3 -> stride 8
    logits = -(torch.tensor([2., 3., 4., 5.]) - 4.5)**2 / 2.0
    torch.testing.assert_close(weights[1], logits.softmax(-1))


def test_sampling_3d_reads_pixel_centres_of_the_right_level():
    torch.manual_seed(0)
    strides = [4, 8]
    feats = [torch.randn(2, 6, 8, 10), torch.randn(2, 6, 4, 5)]
    # points at centres of cells of level 1 (stride 8), z far on its side
    # with a tiny tau, so only level 1 counts
    rows = torch.tensor([0, 3, 1])
    cols = torch.tensor([4, 0, 2])
    xy = torch.stack([(cols + 0.5) * 8, (rows + 0.5) * 8], -1).float()
    points = torch.cat([xy, torch.full((3, 1), 3.0)], -1)
    points = points.view(1, 1, 1, 3, 3).expand(2, 1, 3, 3, 3)  # G = 3
    out = sampling_3d(points, feats, strides, tau=1e-3)
    assert out.shape == (2, 1, 3, 3, 2)
    for b in range(2):
        for g in range(3):
            expected = feats[1][b, 2 * g:2 * g + 2][:, rows, cols].T
            torch.testing.assert_close(out[b, 0, g], expected)


def test_sampling_3d_mixes_levels_and_zero_pads():
    torch.manual_seed(0)
    strides = [4, 8, 16, 32]
    feats = [torch.randn(1, 4, 64 // s, 96 // s) for s in strides]
    points = torch.rand(1, 5, 2, 3, 3) * torch.tensor([96.0, 64.0, 3.0]) + \
        torch.tensor([0.0, 0.0, 2.0])
    out = sampling_3d(points, feats, strides)
    # reference: every level by grid_sample, weighted by level_weights
    weights = level_weights(points[..., 2], strides)
    expected = 0
    for level, (feat, stride) in enumerate(zip(feats, strides)):
        h, w = feat.shape[-2:]
        for g in range(2):
            grid = points[0, :, g, :, :2] / torch.tensor([w * stride,
                                                          h * stride])
            sampled = F.grid_sample(
                feat[:, 2 * g:2 * g + 2], grid[None] * 2 - 1,
                align_corners=False)[0].permute(1, 2, 0)  # (5, 3, 2)
            if g == 0:
                level_out = torch.zeros(5, 2, 3, 2)
            level_out[:, g] = sampled
        expected = expected + level_out * weights[0, ..., level, None]
    torch.testing.assert_close(out[0], expected)
    # far outside the (padded) map: zeros
    outside = torch.tensor([-500.0, -500.0, 3.0]).view(1, 1, 1, 1, 3)
    assert sampling_3d(outside.expand(1, 1, 2, 1, 3), feats,
                       strides).abs().max() == 0


def test_sampling_3d_checks_inputs():
    feats = [torch.randn(1, 6, 4, 4)]
    points = torch.zeros(1, 1, 4, 1, 3)
    with pytest.raises(ValueError, match='divisible'):
        sampling_3d(points, feats, [4])
    with pytest.raises(ValueError, match='featmap_strides'):
        sampling_3d(points[:, :, :2], feats, [4, 8])
