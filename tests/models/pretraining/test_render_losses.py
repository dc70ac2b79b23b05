"""Losses of the Gaussian rendering pretext (pcdet/models/pretraining/render_losses.py) against independent numpy
references: SSIM written as explicit window sums over a zero-padded image (3DGS constants), the 3DGS RGB loss, the
alpha-normalised expected depth, the SiLog formula (Eigen et al.) and its scale invariance, the LiDAR-masked depth
loss, and the per-pixel cosine feature loss (value and a finite gradient at a zero prediction)."""
import math

import numpy as np
import pytest
import torch

from pcdet.models.pretraining import render_losses as L


def reference_window(size=11, sigma=1.5):
    profile = np.array([math.exp(-((k - (size - 1) / 2) ** 2) / (2 * sigma ** 2)) for k in range(size)])
    profile /= profile.sum()
    return np.outer(profile, profile)


def reference_ssim(x, y, size=11, sigma=1.5):
    """Mean SSIM of (N, C, H, W) float64 arrays: the window slides over the zero-padded images."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    window = reference_window(size, sigma)
    half = size // 2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    pad = ((0, 0), (0, 0), (half, half), (half, half))
    px, py = np.pad(x, pad), np.pad(y, pad)
    n, c, h, w = x.shape
    values = np.empty((n, c, h, w))
    for i in range(h):
        for j in range(w):
            wx, wy = px[:, :, i:i + size, j:j + size], py[:, :, i:i + size, j:j + size]
            mu_x = (window * wx).sum(axis=(2, 3))
            mu_y = (window * wy).sum(axis=(2, 3))
            var_x = (window * wx * wx).sum(axis=(2, 3)) - mu_x ** 2
            var_y = (window * wy * wy).sum(axis=(2, 3)) - mu_y ** 2
            cov = (window * wx * wy).sum(axis=(2, 3)) - mu_x * mu_y
            values[:, :, i, j] = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / \
                ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return values.mean()


def random_images(seed, shape=(2, 3, 13, 17)):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    y = np.clip(x + 0.2 * rng.standard_normal(shape), 0.0, 1.0)  # correlated: SSIM well inside (0, 1)
    return x, y


def test_gaussian_window_matches_reference():
    window = L.gaussian_window(11, 1.5, dtype=torch.float64)
    np.testing.assert_allclose(window.numpy(), reference_window(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize('seed', [0, 1])
def test_ssim_matches_reference(seed):
    x, y = random_images(seed)
    expected = reference_ssim(x, y)
    assert 0.05 < expected < 0.95
    got64 = L.ssim(torch.from_numpy(x), torch.from_numpy(y))
    assert got64.dim() == 0
    assert float(got64) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    got32 = L.ssim(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert float(got32) == pytest.approx(expected, abs=2e-5)


def test_ssim_of_uniform_images_sees_the_zero_padding():
    """Constant images: the zero padding lowers the border means, so SSIM of two different constants depends on it."""
    x, y = np.full((1, 1, 9, 12), 0.8), np.full((1, 1, 9, 12), 0.3)
    expected = reference_ssim(x, y)
    assert float(L.ssim(torch.from_numpy(x), torch.from_numpy(y))) == pytest.approx(expected, rel=1e-10)


def test_ssim_identical_is_one_and_shifted_negative_is_below_one():
    x, _ = random_images(2)
    tx = torch.from_numpy(x)
    assert float(L.ssim(tx, tx)) == pytest.approx(1.0, abs=1e-12)
    negative = 1.0 - x
    value = float(L.ssim(tx, torch.from_numpy(negative)))
    assert value == pytest.approx(reference_ssim(x, negative), rel=1e-9, abs=1e-12)
    assert value < 0.5


@pytest.mark.parametrize('weight', [0.2, 0.7])
def test_rgb_loss_matches_reference(weight):
    x, y = random_images(3)
    expected = (1 - weight) * np.abs(x - y).mean() + weight * (1 - reference_ssim(x, y))
    got = L.rgb_loss(torch.from_numpy(x), torch.from_numpy(y), weight)
    assert got.dim() == 0
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_rgb_loss_default_weight_is_3dgs_and_zero_weight_is_pure_l1():
    x, y = random_images(4)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    assert float(L.rgb_loss(tx, ty)) == pytest.approx(0.8 * np.abs(x - y).mean() + 0.2 * (1 - reference_ssim(x, y)),
                                                      rel=1e-10)
    assert float(L.rgb_loss(tx, ty, 0.0)) == pytest.approx(np.abs(x - y).mean(), rel=1e-12)


def test_expected_depth_divides_by_floored_alpha():
    rng = np.random.default_rng(5)
    depth_sum = rng.random((2, 4, 5)) * 30
    alpha = rng.random((2, 4, 5))
    alpha[0, 0, :] = [0.0, 1e-4, 0.009, 0.0101, 0.5]
    expected = np.empty_like(depth_sum)
    for index in np.ndindex(depth_sum.shape):
        expected[index] = depth_sum[index] / max(alpha[index], 1e-2)
    got = L.expected_depth(torch.from_numpy(depth_sum), torch.from_numpy(alpha))
    assert got.shape == depth_sum.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-14)


def reference_silog(pred, target, valid, lam):
    d = np.log(pred[valid]) - np.log(target[valid])
    return math.sqrt(np.mean(d ** 2) - lam * np.mean(d) ** 2)


def depth_pair(seed, shape=(2, 6, 7)):
    rng = np.random.default_rng(seed)
    target = rng.uniform(2.0, 40.0, shape)
    target[rng.random(shape) < 0.4] = 0.0  # pixels without LiDAR depth
    pred = target * np.exp(0.3 * rng.standard_normal(shape)) + rng.uniform(0.5, 3.0, shape)
    return pred, target


@pytest.mark.parametrize('lam', [0.85, 0.5, 0.0])
def test_silog_matches_formula(lam):
    pred, target = depth_pair(6)
    valid = target > 0
    got = L.silog_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(valid), lam)
    assert got.dim() == 0
    assert float(got) == pytest.approx(reference_silog(pred, target, valid, lam), rel=1e-10)


def test_silog_default_lambda_is_085():
    pred, target = depth_pair(7)
    valid = target > 0
    got = L.silog_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(valid))
    assert float(got) == pytest.approx(reference_silog(pred, target, valid, 0.85), rel=1e-10)


def test_silog_is_scale_invariant_only_with_lambda_one():
    _, target = depth_pair(8)
    valid = target > 0
    pred = 2.7 * target  # d = log 2.7 at every valid pixel
    args = torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(valid)
    # lam = 1: mean d^2 - (mean d)^2 = 0; the implementation floors the variance at 1e-6 (value 1e-3)
    assert float(L.silog_loss(*args, lam=1.0)) < 2e-3
    assert float(L.silog_loss(*args, lam=0.85)) == pytest.approx(math.sqrt(0.15) * math.log(2.7), rel=1e-9)
    assert float(L.silog_loss(*args, lam=0.85)) > 0.1


def test_silog_without_valid_pixel_is_zero_on_the_graph():
    pred = torch.rand(2, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.zeros(2, 3, 4, dtype=torch.float64)
    value = L.silog_loss(pred, target, target > 0)
    assert value.dim() == 0 and float(value.detach()) == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def everywhere(target):
    return torch.ones(target.shape, dtype=torch.bool)


def test_depth_loss_matches_reference():
    pred, target = depth_pair(9)
    covered = np.random.default_rng(90).random(target.shape) < 0.8
    valid = (target > 0) & covered
    assert 0 < valid.sum() < (target > 0).sum()
    for weight in (1.0, 0.3, 0.0):
        expected = np.abs(pred[valid] - target[valid]).mean() + weight * reference_silog(pred, target, valid, 0.85)
        got = L.depth_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(covered), weight)
        assert got.dim() == 0
        assert float(got) == pytest.approx(expected, rel=1e-10)
    expected = np.abs(pred[valid] - target[valid]).mean() + 0.5 * reference_silog(pred, target, valid, 0.6)
    assert float(L.depth_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(covered), 0.5,
                              lam=0.6)) == pytest.approx(expected, rel=1e-10)


def test_uncovered_pixels_do_not_pull_the_covered_depths():
    # two pixels rendered at their LiDAR depth, two that no Gaussian reaches (rendered depth 0): counted, the
    # uncovered pair would enter SiLog's mean log error and give the exact pixels a gradient towards 0
    target = torch.tensor([10.0, 20.0, 10.0, 20.0], dtype=torch.float64)
    pred = torch.tensor([10.0, 20.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    covered = torch.tensor([True, True, False, False])
    L.depth_loss(pred, target, covered).backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_depth_loss_ignores_pixels_without_lidar_depth():
    pred, target = depth_pair(10)
    changed = pred.copy()
    changed[target == 0] = np.random.default_rng(11).uniform(0.01, 500.0, int((target == 0).sum()))
    a = L.depth_loss(torch.from_numpy(pred), torch.from_numpy(target), everywhere(target))
    b = L.depth_loss(torch.from_numpy(changed), torch.from_numpy(target), everywhere(target))
    assert float(a) == float(b)
    tensor = torch.from_numpy(pred).requires_grad_()
    L.depth_loss(tensor, torch.from_numpy(target), everywhere(target)).backward()
    assert torch.all(tensor.grad[torch.from_numpy(target == 0)] == 0)
    assert torch.all(tensor.grad[torch.from_numpy(target > 0)] != 0)


def test_depth_loss_without_lidar_depth_is_zero_on_the_graph():
    pred = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    value = L.depth_loss(pred, torch.zeros(3, 5, dtype=torch.float64), torch.ones(3, 5, dtype=torch.bool))
    assert value.dim() == 0 and float(value.detach()) == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_feature_cosine_loss_matches_per_pixel_reference():
    rng = np.random.default_rng(12)
    pred, target = rng.standard_normal((2, 5, 3, 4)), rng.standard_normal((2, 5, 3, 4))
    terms = []
    for n in range(2):
        for i in range(3):
            for j in range(4):
                a, b = pred[n, :, i, j], target[n, :, i, j]
                terms.append(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    got = L.feature_cosine_loss(torch.from_numpy(pred), torch.from_numpy(target))
    assert got.dim() == 0
    assert float(got) == pytest.approx(np.mean(terms), rel=1e-10)
    # scale of either side does not matter; the same direction gives 0, the opposite 2
    assert float(L.feature_cosine_loss(torch.from_numpy(3 * pred), torch.from_numpy(0.5 * pred))) == \
        pytest.approx(0.0, abs=1e-12)
    assert float(L.feature_cosine_loss(torch.from_numpy(pred), torch.from_numpy(-pred))) == pytest.approx(2.0)


def test_feature_cosine_loss_zero_prediction_has_finite_gradient():
    rng = np.random.default_rng(13)
    pred = rng.standard_normal((1, 4, 2, 3))
    pred[0, :, 1, 2] = 0.0
    target = rng.standard_normal((1, 4, 2, 3))
    tensor = torch.from_numpy(pred).requires_grad_()
    value = L.feature_cosine_loss(tensor, torch.from_numpy(target))
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(tensor.grad).all()
