#!/usr/bin/env python
"""Speed of the occupancy metric on one CPU core: `OccupancyEvaluator.process` on 512x512x40 volumes vs. a plain
numpy reference (`mask = gt != 255; np.bincount(17 * gt[mask] + pred[mask], minlength=289)`), measured in the same
run on the same frames.

    python bench/bench_occupancy_metric.py [--frames 20] [--repeats 3] [--layout blocky|random] [--gt_float]

Frames: GT with ~4% occupied voxels (classes 1..16) and 0.2% noise (255); the prediction agrees on most voxels.
`blocky` (default) draws labels on the 128x128x10 grid of OpenOccupancy's LiDAR baseline and upsamples them x4
(predictions are argmaxes of upsampled coarse logits, so they come in blocks), then perturbs 2% of the voxels;
`random` scatters every voxel independently (worst case for the run-skipping kernel). Both implementations must
give the same summed confusion matrix (checked). Prints frames/s of both and the ratio.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pcdet.evaluation.occupancy import OccupancyEvaluator  # noqa: E402
from pcdet.evaluation.occupancy_metric import occupancy_confusion  # noqa: E402

SHAPE = (512, 512, 40)
CLASS_NAMES = ['barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian',
               'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain',
               'manmade', 'vegetation']


def make_frame(rng, layout):
    if layout == 'blocky':
        coarse = np.zeros((128, 128, 10), np.uint8)
        occupied = rng.random(coarse.shape) < 0.04
        coarse[occupied] = rng.integers(1, 17, occupied.sum())
        pred = coarse.repeat(4, 0).repeat(4, 1).repeat(4, 2)
        gt = pred.copy()
        flip = rng.random(SHAPE) < 0.02
        gt[flip] = rng.integers(0, 17, flip.sum())
    else:
        gt = np.zeros(SHAPE, np.uint8)
        occupied = rng.random(SHAPE) < 0.04
        gt[occupied] = rng.integers(1, 17, occupied.sum())
        pred = gt.copy()
        flip = rng.random(SHAPE) < 0.05
        pred[flip] = rng.integers(0, 17, flip.sum())
    gt[rng.random(SHAPE) < 0.002] = 255
    return gt, torch.from_numpy(pred)


def reference_cm(gt, pred):
    mask = gt != 255
    return np.bincount(17 * gt[mask].astype(np.int64) + pred[mask], minlength=289).reshape(17, 17)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=20)
    parser.add_argument('--repeats', type=int, default=3, help='timed passes over the frames; the best is kept')
    parser.add_argument('--layout', choices=('blocky', 'random'), default='blocky')
    parser.add_argument('--gt_float', action='store_true',
                        help='hand the GT over as a float32 tensor, as load_data_to_device converts it')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    frames = [make_frame(rng, args.layout) for _ in range(args.frames)]
    batches = [({'gt_occupancy': torch.from_numpy(gt[None]).float() if args.gt_float else gt[None]},
                [{'occ_pred': pred}]) for gt, pred in frames]
    occupancy_confusion(*frames[0])  # compile the kernel (numba caches it on disk) before timing

    with tempfile.TemporaryDirectory() as tmp:
        evaluator = OccupancyEvaluator(None, tmp, CLASS_NAMES)
        best_eval = best_ref = float('inf')
        for _ in range(args.repeats):
            evaluator.reset()
            start = time.perf_counter()
            for batch_dict, pred_dicts in batches:
                evaluator.process(batch_dict, pred_dicts)
            best_eval = min(best_eval, time.perf_counter() - start)
            start = time.perf_counter()
            reference = sum(reference_cm(gt, pred.numpy()) for gt, pred in frames)
            best_ref = min(best_ref, time.perf_counter() - start)
        same = np.array_equal(np.sum(evaluator.frame_cms, axis=0), reference)
    fps_eval, fps_ref = args.frames / best_eval, args.frames / best_ref
    gt_type = 'float32 tensor' if args.gt_float else 'uint8 array'
    print(f'occupancy metric, {args.frames} frames of {SHAPE} ({args.layout}, GT as {gt_type}), torch threads 1, '
          f'best of {args.repeats}')
    print(f'  OccupancyEvaluator.process: {fps_eval:8.1f} frames/s ({1000 / fps_eval:6.1f} ms/frame)')
    print(f'  numpy bincount reference:   {fps_ref:8.1f} frames/s ({1000 / fps_ref:6.1f} ms/frame)')
    print(f'  ratio: {fps_eval / fps_ref:.2f}x   same confusion matrix: {same}')
    return 0 if same else 1


if __name__ == '__main__':
    sys.exit(main())
