"""Points-in-boxes on CPU: torch reference vs the numba fast path (`pcdet.ops.roiaware_pool3d`).

A synthetic LiDAR-like frame (default 300k points, dense near the sensor) and 50 random car-to-truck sized boxes
standing on the ground (each with a cluster of points on it, as annotated objects have) are run through
`points_in_boxes_gpu` (first containing box per point; what the nuScenes GT database calls, on CPU tensors when
there is no GPU) and `points_in_boxes_cpu` (the (N, P) 0/1 matrix). Both paths run on the same inputs in the same
process; the script checks they agree exactly and prints the median times and the reference / fast ratio.
The fast path's first call (numba compile or on-disk cache load) is reported separately, not in the medians.

    python bench/points_in_boxes.py [--points 300000] [--boxes 50] [--repeats 5]
"""
import argparse
import statistics
import time

import numpy as np
import torch

from pcdet.ops.roiaware_pool3d import roiaware_pool3d_utils as pib


def synthetic_frame(num_points, num_boxes, seed=0):
    """(points (P, 5) float32, boxes (N, 7) float32): half-normal range, 70% ground; 10% of the points on boxes."""
    rng = np.random.default_rng(seed)
    radius = np.clip(np.abs(rng.normal(0, 20, num_points)) + 1.0, 1.0, 72.0)
    angle = rng.uniform(-np.pi, np.pi, num_points)
    ground = rng.random(num_points) < 0.7
    z = np.where(ground, rng.normal(-1.8, 0.05, num_points), rng.uniform(-1.8, 2.0, num_points))
    points = np.column_stack([radius * np.cos(angle), radius * np.sin(angle), z, rng.uniform(0, 1, (num_points, 2))])
    box_radius = rng.uniform(3, 50, num_boxes)
    box_angle = rng.uniform(-np.pi, np.pi, num_boxes)
    sizes = rng.uniform([3.5, 1.6, 1.4], [12.0, 3.0, 3.8], (num_boxes, 3))
    boxes = np.column_stack([box_radius * np.cos(box_angle), box_radius * np.sin(box_angle),
                             -1.8 + sizes[:, 2] / 2, sizes, rng.uniform(-np.pi, np.pi, num_boxes)])
    on_boxes = rng.integers(0, num_boxes, num_points // 10)
    local = rng.uniform(-0.55, 0.55, (len(on_boxes), 3)) * sizes[on_boxes]
    cos, sin = np.cos(boxes[on_boxes, 6]), np.sin(boxes[on_boxes, 6])
    points[:len(on_boxes), 0] = boxes[on_boxes, 0] + local[:, 0] * cos - local[:, 1] * sin
    points[:len(on_boxes), 1] = boxes[on_boxes, 1] + local[:, 0] * sin + local[:, 1] * cos
    points[:len(on_boxes), 2] = boxes[on_boxes, 2] + local[:, 2]
    return points.astype(np.float32), boxes.astype(np.float32)


def time_it(fn, repeats):
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--points', type=int, default=300_000)
    parser.add_argument('--boxes', type=int, default=50)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    points_np, boxes_np = synthetic_frame(args.points, args.boxes)
    points, boxes = torch.from_numpy(points_np), torch.from_numpy(boxes_np)
    if pib._cpu_kernel_module() is None:
        raise SystemExit('numba is not installed: there is no CPU fast path to compare')
    print(f'{args.points} points, {args.boxes} boxes, CPU, torch {torch.__version__}, '
          f'threads={torch.get_num_threads()}, median of {args.repeats}')

    start = time.perf_counter()
    fast_first = pib.points_in_boxes_gpu(points[None], boxes[None])
    print(f'fast path first call (compile / cache load): {time.perf_counter() - start:.2f} s')
    reference_first = pib.points_in_boxes_gpu(points[None], boxes[None], reference=True)
    assert torch.equal(fast_first, reference_first), 'points_in_boxes_gpu: fast path != reference'
    fast_mask = pib.points_in_boxes_cpu(points, boxes)
    assert torch.equal(fast_mask, pib.points_in_boxes_cpu(points, boxes, reference=True)), \
        'points_in_boxes_cpu: fast path != reference'
    print(f'identical results; {(fast_first >= 0).sum().item()} points in boxes')

    ops = {
        'points_in_boxes_gpu (first box, GT database)': (
            lambda: pib.points_in_boxes_gpu(points[None], boxes[None], reference=True),
            lambda: pib.points_in_boxes_gpu(points[None], boxes[None])),
        'points_in_boxes_cpu ((N, P) int32 matrix)': (
            lambda: pib.points_in_boxes_cpu(points, boxes, reference=True),
            lambda: pib.points_in_boxes_cpu(points, boxes)),
    }
    for name, (reference_fn, fast_fn) in ops.items():
        reference = time_it(reference_fn, args.repeats)
        fast = time_it(fast_fn, args.repeats)
        print(f'  {name:46s} reference {reference * 1e3:8.1f} ms   fast {fast * 1e3:7.1f} ms   '
              f'x{reference / fast:6.1f}')


if __name__ == '__main__':
    main()
