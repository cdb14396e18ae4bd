"""Data-aware from-dense LORS (lors_mmdet/lors/calibrated.py) against direct solutions
of the least-squares problems it claims to solve (float64, small random problems)."""
import pytest
import torch

from lors_mmdet.lors import lors_from_dense
from lors_mmdet.lors.calibrated import (InputSecondMoment, calibrated_factors,
                                        lors_from_dense_calibrated, output_error,
                                        refit_shared)

OUT, IN, N = 6, 8, 3


def _problem(seed: int = 0, samples: int = 200, deficient: bool = False):
    """N related weights and, per layer, input samples with a layer-specific,
    strongly non-isotropic distribution (and their second moments)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(OUT, IN, generator=g, dtype=torch.float64)
    weights = [base + 0.5 * torch.randn(OUT, IN, generator=g, dtype=torch.float64)
               for _ in range(N)]
    inputs = []
    for _ in range(N):
        mix = torch.randn(IN, IN, generator=g, dtype=torch.float64)
        mix = mix * torch.logspace(0, -2, IN, dtype=torch.float64)  # anisotropic
        if deficient:
            mix[:, IN // 2:] = 0  # inputs live in a subspace: C is singular
        x = torch.randn(samples, IN, generator=g, dtype=torch.float64) @ mix.T + 0.3
        inputs.append(x)
    covs = [x.T @ x / len(x) for x in inputs]
    return weights, inputs, covs


def test_identity_statistics_give_the_weight_space_init():
    weights, _, _ = _problem()
    eye = [torch.eye(IN, dtype=torch.float64)] * N
    shared, layers, _ = lors_from_dense_calibrated(weights, eye, rank=2)
    ref_shared, ref_layers, _ = lors_from_dense(weights, rank=2)
    torch.testing.assert_close(shared.weight, ref_shared.weight)
    for ours, ref in zip(layers, ref_layers):
        torch.testing.assert_close(ours.weight, ref.weight)


@pytest.mark.parametrize('iterations', [0, 3])
@pytest.mark.parametrize('deficient', [False, True])
def test_full_rank_is_exact(iterations, deficient):
    """Also when the inputs span only part of the space (fewer samples than
    features, as a few calibration batches may give)."""
    weights, _, covs = _problem(deficient=deficient)
    biases = [torch.randn(OUT, dtype=torch.float64) for _ in range(N)]
    shared, layers, errors = lors_from_dense_calibrated(
        weights, covs, rank=min(OUT, IN), biases=biases, iterations=iterations)
    for w, b, layer in zip(weights, biases, layers):
        torch.testing.assert_close(layer.weight, w)
        torch.testing.assert_close(layer.bias, b)
    assert max(errors) < 1e-10


def test_residual_step_is_the_best_rank_r_fit_on_the_inputs():
    """For the mean as the shared weight, the private residual reaches the smallest
    mean squared output error any rank-r matrix reaches on the samples: no rank-r
    (B, A) found by gradient descent on the samples themselves does better, and the
    weight-space SVD does clearly worse."""
    weights, inputs, covs = _problem()
    rank = 2
    shared, factors, _ = calibrated_factors(weights, covs, rank)
    mean = torch.stack(weights).mean(0)
    torch.testing.assert_close(shared, mean)
    _, ref_layers, _ = lors_from_dense(weights, rank=rank)
    for w, x, cov, (b, a), ref in zip(weights, inputs, covs, factors, ref_layers):
        target = (x @ (w - mean).T)
        ours = float(((x @ (b @ a).T - target)**2).sum(1).mean())
        assert ours == pytest.approx(output_error(w, mean + b @ a, cov), rel=1e-9)
        weight_space = float(((x @ (ref.weight.detach() - mean).T - target)**2).sum(1).mean())
        assert ours < 0.9 * weight_space
        # direct minimisation over rank-r factors, from the weight-space start
        gb = ref.lors_B.detach().clone().requires_grad_(True)
        ga = ref.lors_A.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([gb, ga], max_iter=500, tolerance_grad=1e-12,
                                tolerance_change=1e-14, line_search_fn='strong_wolfe')

        def closure():
            opt.zero_grad()
            loss = ((x @ (gb @ ga).T - target)**2).sum(1).mean()
            loss.backward()
            return loss
        for _ in range(5):
            opt.step(closure)
        assert float(closure()) >= ours * (1 - 1e-6)


def test_shared_step_is_the_least_squares_solution_on_the_samples():
    """``refit_shared`` equals torch.linalg.lstsq on the stacked samples of all layers
    (equal sample counts: each layer's mean squared error weighs the same)."""
    weights, inputs, covs = _problem()
    g = torch.Generator().manual_seed(1)
    residuals = [torch.randn(OUT, IN, generator=g, dtype=torch.float64) * 0.1
                 for _ in range(N)]
    ours = refit_shared(weights, residuals, covs)
    design = torch.cat(inputs)
    targets = torch.cat([x @ (w - d).T for x, w, d in zip(inputs, weights, residuals)])
    direct = torch.linalg.lstsq(design, targets).solution.T
    torch.testing.assert_close(ours, direct)


@pytest.mark.parametrize('deficient', [False, True])
def test_alternating_never_raises_the_error_and_beats_the_weight_space_init(deficient):
    weights, _, covs = _problem(seed=3, deficient=deficient)

    def total(iterations):
        shared, factors, _ = calibrated_factors(weights, covs, 1, iterations)
        return sum(output_error(w, shared + b @ a, c)
                   for w, (b, a), c in zip(weights, factors, covs))
    curve = [total(k) for k in range(5)]
    assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(curve, curve[1:]))
    assert curve[-1] < curve[0]
    _, ref_layers, _ = lors_from_dense(weights, rank=1)
    weight_space = sum(output_error(w, ref.weight, c)
                       for w, ref, c in zip(weights, ref_layers, covs))
    assert curve[0] < weight_space
    assert all(torch.isfinite(torch.tensor(curve)))


def test_second_moment_streams_in_float64():
    stats = InputSecondMoment(IN)
    layer = torch.nn.Linear(IN, OUT)
    handle = layer.register_forward_pre_hook(stats.hook)
    x = torch.randn(2, 5, IN)
    layer(x[0])
    layer(x[1])
    handle.remove()
    flat = x.reshape(-1, IN).double()
    torch.testing.assert_close(stats.value, flat.T @ flat / 10)
    assert stats.value.dtype == torch.float64
    with pytest.raises(ValueError, match='no inputs'):
        InputSecondMoment(3).value


def test_bad_input_is_named():
    weights, _, covs = _problem()
    with pytest.raises(ValueError, match=r'covariances\[1\] must have shape \(8, 8\)'):
        calibrated_factors(weights, [covs[0], covs[1][:2], covs[2]], 1)
    with pytest.raises(ValueError, match='one entry per weight'):
        calibrated_factors(weights, covs[:2], 1)
    with pytest.raises(ValueError, match='iterations'):
        calibrated_factors(weights, covs, 1, iterations=-1)
    bad = covs[0].clone()
    bad[0, 0] = float('nan')
    with pytest.raises(ValueError, match=r'covariances\[0\] holds non-finite'):
        calibrated_factors(weights, [bad, *covs[1:]], 1)
