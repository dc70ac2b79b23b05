#!/usr/bin/env python
"""Gaussian splatting time and peak memory vs the number of Gaussians and pixels (`pcdet.ops.gaussian_splatting`).

A synthetic street-like scene (Gaussians spread over the camera frustum from 2 to 60 m, 5-40 cm scales,
8 feature channels) is rendered by the pure PyTorch path with 1k, 10k and 100k Gaussians at 200x112 and
400x225 (nuScenes 1600x900 downscaled by 8 and 4), forward only (`torch.no_grad`) and forward + backward
(autograd through all inputs, chunks checkpointed). With gsplat installed and a GPU, its `rasterization` runs
beside it on the same scenes. Every configuration runs in a fresh process so that its peak memory can be read:
the growth of ru_maxrss (CPU; torch's allocator is invisible to tracemalloc) or torch.cuda.max_memory_allocated
(GPU) from just before the scene is built. Times are the median of --repeats after one warm-up; ratios are
against the smallest configuration (1k Gaussians, 200x112, forward) measured in the same run.

    python bench/gaussian_splatting.py [--device cpu|cuda] [--repeats 3] [--threads 1] [--quick]
"""
import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pcdet.ops.gaussian_splatting import gsplat_available, render_gaussians  # noqa: E402

SIZES = ((200, 112), (400, 225))
COUNTS = (1_000, 10_000, 100_000)


def nuscenes_like_scene(num, width, height, seed=0, num_features=8, device='cpu'):
    """((means, quats, scales, opacities, colors, features), camera_from_world (4, 4), K (3, 3)), float32.

    The world frame is LiDAR-like (x forward, y left, z up) and the camera looks along +x from 1.5 m height with
    the nuScenes front-camera focal length scaled to the image width (1266 px at 1600 px).
    """
    g = torch.Generator().manual_seed(seed)
    focal = 1266.0 * width / 1600.0
    K = torch.tensor([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])
    camera_from_world = torch.tensor([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 1.5], [1.0, 0.0, 0.0, 0.0],
                                      [0.0, 0.0, 0.0, 1.0]])
    # Uniform in pixels (10% margin) and log-uniform in depth, then lifted back to the world frame.
    depth = torch.exp(math.log(2.0) + (math.log(60.0) - math.log(2.0)) * torch.rand(num, generator=g))
    u = (torch.rand(num, generator=g) * 1.2 - 0.1) * width
    v = (torch.rand(num, generator=g) * 1.2 - 0.1) * height
    cam = torch.stack([(u - K[0, 2]) / focal * depth, (v - K[1, 2]) / focal * depth, depth], dim=1)
    means = (cam - camera_from_world[:3, 3]) @ camera_from_world[:3, :3]
    tensors = (means, torch.randn(num, 4, generator=g), 0.05 + 0.35 * torch.rand(num, 3, generator=g),
               0.1 + 0.85 * torch.rand(num, generator=g), torch.rand(num, 3, generator=g),
               torch.randn(num, num_features, generator=g))
    return (tuple(t.to(device) for t in tensors), camera_from_world.to(device), K.to(device))


def run_one(num, width, height, mode, device, backend, repeats):
    """Time and peak memory of one configuration in this process; returns a dict."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tensors, pose, K = nuscenes_like_scene(num, width, height, device=device)
    backward = mode == 'fwd+bwd'
    leaves = [t.clone().requires_grad_(backward) for t in tensors]

    def step():
        with torch.set_grad_enabled(backward):
            out = render_gaussians(*leaves, pose, K, width, height, backend=backend)
            if backward:
                sum(v.sum() for v in out.values()).backward()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        return out

    out = step()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    if device.type == 'cuda':
        peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {'seconds': statistics.median(samples), 'peak_mb': peak_mb,
            'mean_alpha': out['alpha'].mean().item()}


def spawn(num, width, height, mode, args, backend):
    cmd = [sys.executable, __file__, '--one', str(num), str(width), str(height), mode, backend,
           '--device', args.device, '--repeats', str(args.repeats), '--threads', str(args.threads)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--quick', action='store_true', help='1k and 10k Gaussians only')
    parser.add_argument('--one', nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        num, width, height, mode, backend = args.one
        print(json.dumps(run_one(int(num), int(width), int(height), mode, args.device, backend, args.repeats)))
        return
    backends = ['torch'] + (['gsplat'] if args.device == 'cuda' and gsplat_available() else [])
    print(f'{args.device}, torch {torch.__version__}, threads={args.threads}, median of {args.repeats}; '
          f'backends: {", ".join(backends)}' + ('' if 'gsplat' in backends else ' (gsplat not available)'))
    reference = None
    counts = COUNTS[:2] if args.quick else COUNTS
    for mode in ('fwd', 'fwd+bwd'):
        for width, height in SIZES:
            for num in counts:
                for backend in backends:
                    r = spawn(num, width, height, mode, args, backend)
                    reference = reference or r['seconds']
                    print(f'  {backend:6s} {mode:7s} {width:3d}x{height:<3d} {num:>7,d} Gaussians: '
                          f'{r["seconds"] * 1e3:9.1f} ms  x{r["seconds"] / reference:7.1f}  '
                          f'peak +{r["peak_mb"]:7.1f} MB  mean alpha {r["mean_alpha"]:.2f}')


if __name__ == '__main__':
    main()
