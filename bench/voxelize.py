"""Voxelization throughput: hashed 1-D-key grouping (pcdet) vs a naive `torch.unique(dim=0)` voxelizer.

A synthetic 180k-point LiDAR-like frame (5 features, nuScenes range, dense ground near the sensor) is voxelized
with the DSVT nuScenes voxel grid (0.1 x 0.1 x 0.2 m) and a pillar grid (0.3 x 0.3 x 8 m). All methods run on the
same points in the same process; the script prints points/s and the ratio to the naive reference, and checks that
the hashed and naive voxelizers find the same voxels.

    python bench/voxelize.py [--repeats 5] [--device cpu|cuda] [--points 180000]
"""
import argparse
import statistics
import time

import numpy as np
import torch

from pcdet.datasets.processor.voxelization import compute_grid_size, dynamic_voxelize, hard_voxelize

PC_RANGE = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
GRIDS = {'voxel 0.1x0.1x0.2': [0.1, 0.1, 0.2], 'pillar 0.3x0.3x8': [0.3, 0.3, 8.0]}


def synthetic_frame(num_points, seed=0):
    """Range ~ half-normal (dense near the sensor), 70% ground at z ~ -1.8 m, 30% objects/walls up to 2 m."""
    rng = np.random.default_rng(seed)
    radius = np.clip(np.abs(rng.normal(0, 20, num_points)) + 1.0, 1.0, 72.0)
    angle = rng.uniform(-np.pi, np.pi, num_points)
    ground = rng.random(num_points) < 0.7
    z = np.where(ground, rng.normal(-1.8, 0.05, num_points), rng.uniform(-1.8, 2.0, num_points))
    features = rng.uniform(0, 1, (num_points, 2))
    points = np.column_stack([radius * np.cos(angle), radius * np.sin(angle), z, features])
    return points.astype(np.float32)


def naive_voxelize(points, pc_range, voxel_size, grid_size):
    """Reference: integer rows grouped with `torch.unique(dim=0)` (what many re-implementations do)."""
    pc_min = points.new_tensor(pc_range[0:3])
    cells = torch.floor((points[:, 0:3] - pc_min) / points.new_tensor(voxel_size)).long()
    in_range = ((cells >= 0) & (cells < torch.as_tensor(grid_size, device=points.device))).all(dim=1)
    coords = torch.cat([torch.zeros_like(cells[:, :1]), cells.flip(1)], dim=1)[in_range]  # [b, z, y, x]
    unique_coords, inverse, counts = torch.unique(coords, dim=0, return_inverse=True, return_counts=True)
    return unique_coords, inverse, counts


def time_it(fn, repeats, device):
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--points', type=int, default=180_000)
    args = parser.parse_args()
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda requested but torch.cuda.is_available() is False')
    device = torch.device(args.device)
    points = torch.from_numpy(synthetic_frame(args.points)).to(device)
    print(f'{args.points} points, device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}, '
          f'median of {args.repeats}')
    for grid_name, voxel_size in GRIDS.items():
        grid_size = compute_grid_size(PC_RANGE, voxel_size)
        hashed = dynamic_voxelize(points, PC_RANGE, voxel_size, grid_size)
        naive_coords, _, naive_counts = naive_voxelize(points, PC_RANGE, voxel_size, grid_size)
        assert torch.equal(hashed.coords, naive_coords) and torch.equal(hashed.num_points, naive_counts)
        methods = {
            'naive torch.unique(dim=0)': lambda: naive_voxelize(points, PC_RANGE, voxel_size, grid_size),
            'hashed dynamic_voxelize': lambda: dynamic_voxelize(points, PC_RANGE, voxel_size, grid_size),
            'hashed hard_voxelize (10 pts, 60k voxels)':
                lambda: hard_voxelize(points, PC_RANGE, voxel_size, grid_size, 10, 60_000),
        }
        seconds = {name: time_it(fn, args.repeats, device) for name, fn in methods.items()}
        reference = seconds['naive torch.unique(dim=0)']
        print(f'\n{grid_name}: grid {grid_size.tolist()}, {len(hashed.coords)} non-empty voxels')
        for name, sec in seconds.items():
            print(f'  {name:44s} {sec * 1e3:8.2f} ms  {args.points / sec / 1e6:8.2f} M points/s  '
                  f'x{reference / sec:5.2f} vs naive')


if __name__ == '__main__':
    main()
