"""Gaussian splatting against a per-pixel brute-force reference, analytic footprints and gradient checks."""
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdet.ops import gaussian_splatting as gs
from pcdet.ops.gaussian_projection import project_gaussians
from pcdet.ops.gaussian_splatting import render_gaussians

ROOT = Path(__file__).resolve().parents[2]
KEYS = ('rgb', 'features', 'depth', 'alpha')


def camera(width, height, focal=20.0, yaw=0.1):
    """(camera_from_world (4, 4), K (3, 3)) float64: a slightly rotated camera 1 m behind the origin."""
    c, s = math.cos(yaw), math.sin(yaw)
    pose = torch.tensor([[c, 0.0, s, 0.2], [0.0, 1.0, 0.0, -0.1], [-s, 0.0, c, 1.0], [0, 0, 0, 1]],
                        dtype=torch.float64)
    K = torch.tensor([[focal, 0.0, (width - 1) / 2 + 0.3], [0.0, focal * 1.1, (height - 1) / 2 - 0.2],
                      [0.0, 0.0, 1.0]], dtype=torch.float64)
    return pose, K


def random_scene(seed, n, spread=1.2, depth=(3.0, 8.0), scale=(0.15, 0.6), opacity=(0.3, 0.9), num_features=2):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=g, dtype=torch.float64)
    means = torch.stack([(u[:, 0] - 0.5) * 2 * spread, (u[:, 1] - 0.5) * 2 * spread * 0.7,
                         depth[0] + (depth[1] - depth[0]) * u[:, 2]], dim=1)
    return {
        'means': means,
        'quats': torch.randn(n, 4, generator=g, dtype=torch.float64),
        'scales': scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=g, dtype=torch.float64),
        'opacities': opacity[0] + (opacity[1] - opacity[0]) * torch.rand(n, generator=g, dtype=torch.float64),
        'colors': torch.rand(n, 3, generator=g, dtype=torch.float64),
        'features': torch.randn(n, num_features, generator=g, dtype=torch.float64),
    }


def render(scene, pose, K, width, height, **kwargs):
    return render_gaussians(scene['means'], scene['quats'], scene['scales'], scene['opacities'], scene['colors'],
                            scene['features'], pose, K, width, height, backend='torch', **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Brute-force reference: its own rotation (quaternion sandwich product), covariance (sum of rank-1 terms),
# projection Jacobian (autograd of the world -> pixel map) and a per-pixel loop in the 3DGS order of tests.

def hamilton(p, q):
    w1, x1, y1, z1 = p
    w2, x2, y2, z2 = q
    return (w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2)


def reference_screen_gaussian(mean, quat, scale, pose, K, dilation):
    """(uv (2,), inverse 2-D covariance (2, 2), camera z) of one Gaussian, as numpy float64."""
    q = quat / np.linalg.norm(quat)
    conj = (q[0], -q[1], -q[2], -q[3])
    cov = np.zeros((3, 3))
    for axis, s in zip(np.eye(3), scale):
        r = np.array(hamilton(hamilton(q, (0.0, *axis)), conj)[1:])
        cov += s * s * np.outer(r, r)

    def to_pixel(point):
        cam = pose[:3, :3] @ point + pose[:3, 3]
        hom = K @ cam
        return hom[:2] / hom[2]

    mean_t = torch.as_tensor(mean)
    jac = torch.autograd.functional.jacobian(to_pixel, mean_t).numpy()  # d pixel / d world point (2, 3)
    cov2d = jac @ cov @ jac.T + dilation * np.eye(2)
    z = (pose[:3, :3] @ mean_t + pose[:3, 3])[2].item()
    return to_pixel(mean_t).numpy(), np.linalg.inv(cov2d), z


def brute_force(scene, pose, K, width, height, near=0.01, dilation=0.3, alpha_max=0.99, min_transmittance=1e-4):
    """Per-pixel loops over Gaussians sorted by camera depth; returns numpy maps keyed as render_gaussians."""
    n = scene['means'].shape[0]
    screen = [reference_screen_gaussian(scene['means'][i].numpy(), scene['quats'][i].numpy(),
                                        scene['scales'][i].numpy(), pose, K, dilation) for i in range(n)]
    order = sorted((i for i in range(n) if screen[i][2] > near), key=lambda i: screen[i][2])
    values = [np.concatenate([scene['colors'][i].numpy(), scene['features'][i].numpy(), [screen[i][2]]])
              for i in range(n)]
    out = np.zeros((height, width, len(values[0]) + 1))
    for row in range(height):
        for col in range(width):
            transmittance, acc = 1.0, np.zeros(len(values[0]))
            for i in order:
                uv, inv_cov, _ = screen[i]
                d = np.array([col, row], dtype=np.float64) - uv
                alpha = min(alpha_max, scene['opacities'][i].item() * math.exp(-0.5 * d @ inv_cov @ d))
                if alpha < 1.0 / 255.0:
                    continue
                if transmittance * (1.0 - alpha) < min_transmittance:
                    break
                acc += transmittance * alpha * values[i]
                transmittance *= 1.0 - alpha
            out[row, col, :-1] = acc
            out[row, col, -1] = 1.0 - transmittance
    f = scene['features'].shape[1]
    return {'rgb': out[..., :3], 'features': out[..., 3:3 + f], 'depth': out[..., -2], 'alpha': out[..., -1]}


def stacked_scene(pose):
    """Nearly opaque Gaussians stacked near the optical axis (early termination, the 0.99 clamp), plus culled ones."""
    scene = random_scene(5, 8, spread=0.3, scale=(1.0, 2.0), opacity=(0.95, 1.0))
    scene['opacities'][scene['means'][:, 2].argmin()] = 1.0  # the nearest one reaches the 0.99 clamp
    scene['means'][-1, 2] = -4.0  # behind the camera
    scene['means'][-2, 0] = 40.0  # far right of the image
    cam = torch.cat([scene['means'], torch.ones(8, 1, dtype=torch.float64)], dim=1)
    scene['means'] = torch.linalg.solve(pose, cam.T).T[:, :3]  # the points above were drawn in the camera frame
    return scene


@pytest.mark.parametrize('name', ['random', 'stacked', 'no_termination'])
def test_matches_brute_force(name):
    width, height = 12, 9
    pose, K = camera(width, height)
    scene = stacked_scene(pose) if name == 'stacked' else random_scene(1, 6)
    if name == 'random':
        scene['means'][0, 0] = -2.6  # centre left of the image, footprint inside it
    rules = {'min_transmittance': 0.0} if name == 'no_termination' else {}
    expected = brute_force(scene, pose, K, width, height, **rules)
    got = render(scene, pose, K, width, height, tile=4, chunk=2, **rules)
    if name == 'stacked':
        untruncated = brute_force(scene, pose, K, width, height, min_transmittance=0.0)
        assert np.abs(untruncated['depth'] - expected['depth']).max() > 1e-3, 'no pixel reaches early termination'
    for key in KEYS:
        np.testing.assert_allclose(got[key].numpy(), expected[key], atol=1e-5, rtol=0, err_msg=key)


def test_gradcheck_tiny():
    width, height = 6, 5
    pose, K = camera(width, height)
    scene = random_scene(3, 3, spread=0.5, depth=(3.0, 5.0), scale=(0.6, 1.0), opacity=(0.4, 0.8))
    # Every (pixel, Gaussian) alpha must stay clear of 1/255 and of the 0.99 clamp (non-differentiable points).
    maps = brute_force(scene, pose, K, width, height)
    assert maps['alpha'].max() < 0.99
    proj = project_gaussians(scene['means'], scene['quats'], scene['scales'], scene['opacities'], pose, K,
                             width, height)
    pix = torch.stack(torch.meshgrid(torch.arange(float(width)), torch.arange(float(height)),
                                     indexing='xy'), -1).reshape(-1, 2).double()
    d = pix[:, None] - proj['uv'][None]
    a, b, c = proj['conic'].unbind(-1)
    raw = scene['opacities'] * torch.exp(-0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) - b * d[..., 0] * d[..., 1])
    assert raw.min() > 2.0 / 255.0 and raw.max() < 0.98
    names = ('means', 'quats', 'scales', 'opacities', 'colors', 'features')
    inputs = tuple(scene[k].clone().requires_grad_(True) for k in names)

    def fn(*args):
        out = render_gaussians(*args, pose, K, width, height, tile=4, chunk=2, backend='torch')
        return tuple(out[k] for k in KEYS)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_isotropic_footprint():
    width, height, focal, sigma, z, opacity = 41, 31, 50.0, 0.2, 4.0, 0.8
    K = torch.tensor([[focal, 0, 20.0], [0, focal, 15.0], [0, 0, 1]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    scene = {'means': torch.tensor([[0.0, 0.0, z]], dtype=torch.float64),
             'quats': torch.tensor([[0.3, -0.5, 0.1, 0.7]], dtype=torch.float64),  # irrelevant for a sphere
             'scales': torch.full((1, 3), sigma, dtype=torch.float64),
             'opacities': torch.tensor([opacity], dtype=torch.float64),
             'colors': torch.ones(1, 3, dtype=torch.float64), 'features': torch.ones(1, 1, dtype=torch.float64)}
    out = render(scene, pose, K, width, height, tile=8)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing='ij')
    r2 = (u - 20.0) ** 2 + (v - 15.0) ** 2
    sigma_px_sq = (focal * sigma / z) ** 2 + 0.3
    analytic = opacity * torch.exp(-r2 / (2 * sigma_px_sq))
    analytic = torch.where(analytic >= 1 / 255, analytic, torch.zeros_like(analytic))
    torch.testing.assert_close(out['alpha'], analytic, atol=1e-4, rtol=0)
    torch.testing.assert_close(out['depth'], z * analytic, atol=1e-4, rtol=0)
    # Without dilation the footprint is narrower by exactly the 0.3 px^2 term.
    narrow = render(scene, pose, K, width, height, dilation=0.0)
    torch.testing.assert_close(narrow['alpha'][15, 23], opacity * torch.exp(torch.tensor(-9.0 / (2 * sigma_px_sq - 0.6),
                                                                                         dtype=torch.float64)))


def weighted_sum(out, weights):
    return sum((out[k] * weights[k]).sum() for k in KEYS)


def test_tiles_and_chunks_do_not_change_results():
    width, height = 23, 17
    pose, K = camera(width, height, focal=12.0)
    scene = random_scene(7, 40, spread=1.5, scale=(0.3, 1.5), opacity=(0.2, 0.99))
    g = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(v.shape, generator=g, dtype=torch.float64)
               for k, v in render(scene, pose, K, width, height).items()}
    results = []
    for tile, chunk, ckpt in [(64, 1000, False), (5, 3, True), (4, 1, False), (7, 16, True)]:
        leaves = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
        out = render(leaves, pose, K, width, height, tile=tile, chunk=chunk, checkpoint=ckpt)
        weighted_sum(out, weights).backward()
        results.append(({k: v.detach() for k, v in out.items()}, {k: v.grad for k, v in leaves.items()}))
    base_out, base_grad = results[0]
    assert (base_out['alpha'] > 0.5).float().mean() > 0.3  # a dense enough image for the check to mean something
    for out, grad in results[1:]:
        for key in KEYS:
            torch.testing.assert_close(out[key], base_out[key], atol=1e-12, rtol=1e-10)
        for key in grad:
            torch.testing.assert_close(grad[key], base_grad[key], atol=1e-10, rtol=1e-8)


def test_culled_gaussians_do_not_contribute():
    width, height = 16, 12
    pose, K = camera(width, height, focal=15.0)
    scene = random_scene(11, 10)
    extra = random_scene(12, 4)
    extra['means'][0, 2] = -3.0  # behind the camera
    # camera z = 0.005, inside the near plane (0.01)
    extra['means'][1] = torch.linalg.solve(pose, torch.tensor([0.1, 0.0, 0.005, 1.0], dtype=torch.float64))[:3]
    extra['means'][2, 0] = 30.0  # far right of the image
    extra['means'][3, 1] = -25.0  # far above the image
    merged = {k: torch.cat([scene[k], extra[k]]) for k in scene}
    proj = project_gaussians(merged['means'], merged['quats'], merged['scales'], merged['opacities'], pose, K,
                             width, height)
    assert proj['visible'][:10].all() and not proj['visible'][10:].any()
    for key, value in render(merged, pose, K, width, height).items():
        torch.testing.assert_close(value, render(scene, pose, K, width, height)[key], atol=0, rtol=0)


def test_background_and_float32():
    width, height = 10, 8
    pose, K = camera(width, height)
    scene = random_scene(2, 5)
    background = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    plain = render(scene, pose, K, width, height)
    with_bg = render(scene, pose, K, width, height, background=background)
    torch.testing.assert_close(with_bg['rgb'], plain['rgb'] + (1 - plain['alpha'])[..., None] * background)
    single = render({k: v.float() for k, v in scene.items()}, pose.float(), K.float(), width, height)
    assert single['rgb'].dtype == torch.float32
    torch.testing.assert_close(single['rgb'].double(), plain['rgb'], atol=1e-5, rtol=0)


def test_backend_selection(monkeypatch):
    assert gs._select_backend('auto', torch.device('cpu')) == 'torch'
    with pytest.raises(ValueError, match='backend must be one of'):
        gs._select_backend('cuda', torch.device('cpu'))
    monkeypatch.setattr(gs, 'gsplat_available', lambda: False)
    with pytest.raises(ImportError, match='optional gsplat package'):
        gs._select_backend('gsplat', torch.device('cpu'))


def test_gsplat_matches_torch():
    pytest.importorskip('gsplat')
    if not torch.cuda.is_available():
        pytest.skip('gsplat runs on CUDA only')
    width, height = 64, 48
    pose, K = camera(width, height, focal=50.0)
    # Opacities below 0.99 so that no alpha reaches either clamp (gsplat clamps at 0.999, 3DGS at 0.99).
    scene = {k: v.float().cuda() for k, v in random_scene(4, 200, spread=2.0, opacity=(0.1, 0.95)).items()}
    pose, K = pose.float().cuda(), K.float().cuda()
    fast = render_gaussians(*[scene[k] for k in ('means', 'quats', 'scales', 'opacities', 'colors', 'features')],
                            pose, K, width, height, backend='gsplat')
    ref = render(scene, pose, K, width, height)
    for key in KEYS:
        torch.testing.assert_close(fast[key], ref[key], atol=2e-3, rtol=0, msg=key)


MEMORY_SCRIPT = textwrap.dedent('''
    import resource, sys, time
    import torch
    sys.path.insert(0, sys.argv[1])
    from bench.gaussian_splatting import nuscenes_like_scene
    from pcdet.ops.gaussian_splatting import render_gaussians
    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scene, pose, K = nuscenes_like_scene(100_000, 400, 225)
    start = time.perf_counter()
    with torch.no_grad():
        out = render_gaussians(*scene, pose, K, 400, 225, backend='torch')
    seconds = time.perf_counter() - start
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(peak_mb, seconds, out['alpha'].mean().item())
''')


def test_memory_bounded_100k_gaussians():
    # ru_maxrss (KiB on Linux) of a fresh process, after minus before building the scene and rendering: torch's
    # CPU allocations are invisible to tracemalloc. A dense (pixels x Gaussians) float32 buffer would be 36 GB.
    result = subprocess.run([sys.executable, '-c', MEMORY_SCRIPT, str(ROOT)], capture_output=True, text=True,
                            timeout=300, check=True)
    peak_mb, seconds, mean_alpha = map(float, result.stdout.split())
    print(f'100k Gaussians, 400x225, CPU: peak RSS growth {peak_mb:.0f} MB, {seconds:.1f} s')
    assert mean_alpha > 0.5
    assert peak_mb < 400
