"""`voxelize_gaussians` against a brute-force float64 reference (its own rotation, covariance inverse and a loop
over every voxel and Gaussian, cutoff included), gradients (gradcheck), an analytic isotropic case and chunking."""
import itertools
import math

import numpy as np
import pytest
import torch

from pcdet.ops.gaussian_voxelize import voxelize_gaussians


def rotation(q):
    """R from (w, x, y, z) via R = (w^2 - |u|^2) I + 2 u u^T + 2 w [u]_x (not the project's formula)."""
    q = np.asarray(q, dtype=np.float64)
    w, u = q[0] / np.linalg.norm(q), q[1:] / np.linalg.norm(q)
    cross = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return (w * w - u @ u) * np.eye(3) + 2 * np.outer(u, u) + 2 * w * cross


def brute_force(means, quats, scales, opacities, values, batch_index, batch_size, grid_shape, grid_min, voxel_size,
                cutoff, eps=1e-6):
    means, scales, opacities, values = (np.asarray(t, dtype=np.float64) for t in (means, scales, opacities, values))
    nx, ny, nz = grid_shape
    density = np.zeros((batch_size, nx, ny, nz))
    weighted = np.zeros((batch_size, values.shape[1], nx, ny, nz))
    inverses = []
    for q, s in zip(quats, scales):
        r = rotation(q)
        inverses.append(np.linalg.inv(r @ np.diag(s ** 2) @ r.T))
    for b, x, y, z in itertools.product(range(batch_size), range(nx), range(ny), range(nz)):
        centre = np.asarray(grid_min, dtype=np.float64) + (np.array([x, y, z]) + 0.5) * np.asarray(voxel_size)
        for i in range(means.shape[0]):
            if int(batch_index[i]) != b:
                continue
            d = centre - means[i]
            m2 = d @ inverses[i] @ d
            if math.sqrt(m2) > cutoff:
                continue
            w = opacities[i] * math.exp(-0.5 * m2)
            density[b, x, y, z] += w
            weighted[b, :, x, y, z] += w * values[i]
    return density, weighted / (density[:, None] + eps)


def random_gaussians(seed, num, num_values=3, batch_size=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    grid_min = torch.tensor([-1.0, 0.5, -0.3], dtype=dtype)
    extent = torch.tensor([5 * 0.5, 4 * 0.7, 3 * 0.9], dtype=dtype)
    means = grid_min - 0.4 + torch.rand(num, 3, generator=g, dtype=dtype) * (extent + 0.8)   # some just outside
    quats = torch.randn(num, 4, generator=g, dtype=dtype)
    scales = 0.15 + 0.6 * torch.rand(num, 3, generator=g, dtype=dtype)                        # anisotropic
    opacities = 0.1 + 0.9 * torch.rand(num, generator=g, dtype=dtype)
    values = torch.randn(num, num_values, generator=g, dtype=dtype)
    batch_index = torch.randint(0, batch_size, (num,), generator=g)
    return means, quats, scales, opacities, values, batch_index, grid_min


GRID, VOXEL = (5, 4, 3), (0.5, 0.7, 0.9)


@pytest.mark.parametrize('seed, cutoff', [(0, 3.0), (1, 2.0), (2, 1.5), (3, 3.0)])
def test_matches_the_brute_force_reference(seed, cutoff):
    means, quats, scales, opacities, values, batch_index, grid_min = random_gaussians(seed, num=9)
    density, mean_values = voxelize_gaussians(means, quats, scales, opacities, values, batch_index, 2, GRID,
                                              grid_min, torch.tensor(VOXEL, dtype=torch.float64), cutoff)
    ref_density, ref_values = brute_force(means.numpy(), quats.numpy(), scales.numpy(), opacities.numpy(),
                                          values.numpy(), batch_index.numpy(), 2, GRID, grid_min.numpy(), VOXEL,
                                          cutoff)
    assert density.shape == (2, *GRID) and mean_values.shape == (2, 3, *GRID)
    assert (ref_density > 0).sum() > 10 and (ref_density[0] > 0).any() and (ref_density[1] > 0).any()
    np.testing.assert_allclose(density.numpy(), ref_density, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mean_values.numpy(), ref_values, rtol=1e-9, atol=1e-10)


def test_float32_matches_float64():
    means, quats, scales, opacities, values, batch_index, grid_min = random_gaussians(4, num=12)
    args = (batch_index, 2, GRID)
    d64, v64 = voxelize_gaussians(means, quats, scales, opacities, values, *args, grid_min, VOXEL, 4.0)
    d32, v32 = voxelize_gaussians(means.float(), quats.float(), scales.float(), opacities.float(), values.float(),
                                  *args, grid_min.float(), VOXEL, 4.0)
    assert d32.dtype == torch.float32
    assert torch.allclose(d32.double(), d64, atol=1e-5) and torch.allclose(v32.double(), v64, atol=1e-4)


def test_isotropic_gaussian_at_a_voxel_centre_is_analytic():
    """sigma = one voxel (0.4 m cubes), centred on voxel (3, 2, 4), opacity 0.7, cutoff 2.5: density at integer
    offset n is 0.7 exp(-|n|^2 / 2) for |n| <= 2.5 (e.g. (2, 1, 0)) and 0 beyond (e.g. (2, 2, 0), |n| = 2.83)."""
    grid_min, v = torch.tensor([-1.0, -2.0, 0.0], dtype=torch.float64), 0.4
    centre = grid_min + (torch.tensor([3.0, 2.0, 4.0], dtype=torch.float64) + 0.5) * v
    value = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    density, mean_values = voxelize_gaussians(
        centre[None], torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=torch.float64),      # any rotation (isotropic)
        torch.full((1, 3), v, dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64), value,
        torch.tensor([1]), 2, (7, 6, 8), grid_min, (v, v, v), cutoff_sigmas=2.5, eps=0.0)
    expected = torch.zeros(7, 6, 8, dtype=torch.float64)
    for n in itertools.product(range(-3, 4), repeat=3):
        r2 = sum(k * k for k in n)
        x, y, z = 3 + n[0], 2 + n[1], 4 + n[2]
        if r2 <= 6.25 and 0 <= x < 7 and 0 <= y < 6 and 0 <= z < 8:
            expected[x, y, z] = 0.7 * math.exp(-0.5 * r2)
    assert torch.allclose(density[1], expected, rtol=1e-12, atol=0)
    assert float(density[1, 3, 2, 4]) == pytest.approx(0.7) and float(density[1, 5, 3, 4]) == pytest.approx(
        0.7 * math.exp(-2.5))
    assert float(density[1, 5, 4, 4]) == 0.0 and float(density[0].abs().sum()) == 0.0
    occupied = density[1] > 0
    assert torch.allclose(mean_values[1][:, occupied], value.t().expand(2, int(occupied.sum())))
    assert float(mean_values[1][:, ~occupied].abs().sum()) == 0.0 and float(mean_values[0].abs().sum()) == 0.0


def test_gradcheck():
    means, quats, scales, opacities, values, batch_index, grid_min = random_gaussians(5, num=3, num_values=2,
                                                                                       batch_size=1)
    inputs = tuple(t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, values))

    def fn(m, q, s, o, v):
        return voxelize_gaussians(m, q, s, o, v, batch_index, 1, (4, 3, 3), grid_min, (0.6, 0.8, 0.9), 2.5,
                                  chunk=7)

    density, _ = fn(*inputs)
    assert int((density > 0).sum()) > 8
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('chunk', [1, 5, 37, 10 ** 7])
def test_chunking_gives_identical_results(chunk):
    means, quats, scales, opacities, values, batch_index, grid_min = random_gaussians(6, num=20)
    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, values)]
    results = []
    for c in (10 ** 8, chunk):
        density, mean_values = voxelize_gaussians(*inputs[:5], batch_index, 2, GRID, grid_min, VOXEL, 3.0, chunk=c)
        grads = torch.autograd.grad((density * 1.3).sum() + (mean_values * torch.arange(3.0).view(1, 3, 1, 1, 1)
                                                             .double()).sum(), inputs)
        results.append((density, mean_values, grads))
    (d0, v0, g0), (d1, v1, g1) = results
    assert torch.allclose(d0, d1, rtol=1e-13, atol=1e-14) and torch.allclose(v0, v1, rtol=1e-12, atol=1e-13)
    assert all(torch.allclose(a, b, rtol=1e-11, atol=1e-12) for a, b in zip(g0, g1))


def test_no_gaussians_gives_zero_grids():
    empty = torch.zeros(0, 3)
    density, mean_values = voxelize_gaussians(empty, torch.zeros(0, 4), empty, torch.zeros(0), torch.zeros(0, 5),
                                              torch.zeros(0, dtype=torch.long), 2, (3, 2, 4), [0, 0, 0], [1, 1, 1])
    assert density.shape == (2, 3, 2, 4) and mean_values.shape == (2, 5, 3, 2, 4)
    assert float(density.abs().sum()) == 0 and float(mean_values.abs().sum()) == 0
