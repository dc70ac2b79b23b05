"""Small, dependency-free helpers shared by every stage: angle wrapping, z-rotation, seeding, logging.

Every function here takes numpy arrays or torch tensors and returns the same kind it was given, on the same
device.
"""
import logging
import os
import random

import numpy as np
import torch


def check_numpy_to_torch(x):
    """Return `(tensor, was_numpy)`; numpy input becomes a float tensor sharing no state with the caller."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x).float(), True
    return x, False


def limit_period(val, offset=0.5, period=np.pi):
    """Wrap `val` into `[-offset * period, (1 - offset) * period)`: `val - floor(val / period + offset) * period`."""
    val, is_numpy = check_numpy_to_torch(val)
    ans = val - torch.floor(val / period + offset) * period
    return ans.numpy() if is_numpy else ans


def rotate_points_along_z(points, angle):
    """Rotate points counter-clockwise about +z.

    Args:
        points: (B, N, 3 + C) array or tensor.
        angle: (B,) angles in radians, CCW from +x towards +y.
    Returns:
        (B, N, 3 + C) of the same kind; extra columns are passed through.
    """
    points, is_numpy = check_numpy_to_torch(points)
    angle, _ = check_numpy_to_torch(angle)
    angle = angle.to(points)
    cosa, sina = torch.cos(angle), torch.sin(angle)
    zeros, ones = angle.new_zeros(points.shape[0]), angle.new_ones(points.shape[0])
    # Row-vector convention: p' = p @ R with R = [[c, s, 0], [-s, c, 0], [0, 0, 1]].
    rot_matrix = torch.stack((cosa, sina, zeros, -sina, cosa, zeros, zeros, zeros, ones), dim=1).view(-1, 3, 3)
    points_rot = torch.matmul(points[:, :, 0:3], rot_matrix)
    points_rot = torch.cat((points_rot, points[:, :, 3:]), dim=-1)
    return points_rot.numpy() if is_numpy else points_rot


def set_random_seed(seed, deterministic=False):
    """Seed python, numpy and torch; `deterministic=True` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def worker_init_fn(worker_id, seed=None):
    """DataLoader worker seeding: `seed + worker_id` for python/numpy/torch when a seed is given."""
    if seed is not None:
        random.seed(seed + worker_id)
        np.random.seed(seed + worker_id)
        torch.manual_seed(seed + worker_id)


def create_logger(log_file=None, rank=0, log_level=logging.INFO, name='pcdet'):
    """Console (+ optional file) logger; INFO on rank 0, ERROR elsewhere. Safe to call twice (no duplicate handlers)."""
    logger = logging.getLogger(name)
    logger.setLevel(log_level if rank == 0 else logging.ERROR)
    logger.propagate = False
    formatter = logging.Formatter('%(asctime)s  %(levelname)5s  %(message)s')
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in logger.handlers):
        console = logging.StreamHandler()
        console.setFormatter(formatter)
        logger.addHandler(console)
    if log_file is not None:
        log_file = os.path.abspath(str(log_file))
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == log_file for h in logger.handlers):
            file_handler = logging.FileHandler(log_file)
            file_handler.setFormatter(formatter)
            logger.addHandler(file_handler)
    return logger


def get_dist_info():
    """Return `(rank, world_size)`; `(0, 1)` when torch.distributed is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def keep_arrays_by_name(gt_names, used_classes):
    """Indices of `gt_names` that appear in `used_classes` (int64 array)."""
    return np.array([i for i, name in enumerate(gt_names) if name in used_classes], dtype=np.int64)
