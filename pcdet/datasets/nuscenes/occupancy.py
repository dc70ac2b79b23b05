"""OpenOccupancy (nuScenes-Occupancy) ground truth for `DATA_CONFIG.TASK: occupancy` (spec seg_occ_transfusion.md
§B.1-B.3, errata 6).

File per key frame: `<OCC_PATH>/scene_<scene_token>/occupancy/<lidar_token>.npy` (OCC_PATH relative to the dataroot
DATA_PATH/VERSION, or absolute): an integer array (N, 4) (int16/int32/int64...), one row `[z, y, x, label]` per
occupied voxel of the OCC_GRID_SIZE grid (indices, not metres; default 512 x 512 x 40 voxels of 0.2 m over
OCC_POINT_CLOUD_RANGE [-51.2, -51.2, -5, 51.2, 51.2, 3]); label 0 = noise, 1..16 = the lidarseg challenge classes.
Voxels not listed are free: there is no unknown state.

Sample key written by the dataset (collated with np.stack -> (B, X, Y, Z)):
    gt_occupancy (X, Y, Z) uint8, axis order (x, y, z): 0 free, 1..16 classes, 255 noise (ignored)

`densify`: duplicate `[z, y, x]` rows are resolved by a vote, the most frequent label wins, ties go to the smallest
label, and noise (0 -> 255) loses every tie against a real class (OpenOccupancy's `nb_process_label` argmax over
counts with noise stored as 255).
`transform_occupancy`: the volume follows the sample's point augmentation `lidar_aug_matrix` M (flip / rotation /
scaling / translation): each target voxel centre c goes through M^-1 and takes the label of the source voxel that
contains M^-1 c (the nearest source voxel centre); a centre whose source lies outside the grid becomes free (0).
(OpenOccupancy instead clips source indices to the border; this pipeline does not pile scaled-out voxels up there.)
Fully vectorised: for the matrices the augmentor produces (rotation about z, no x/y <-> z coupling) the source
index splits into an (x, y) plane part and a z part, gathered in two passes; any other matrix is handled slice by
slice along z.
"""
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...config import ConfigError

FREE = 0
NOISE_IN_FILE = 0
NOISE = 255
NUM_CLASSES = 16
SECTION = 'DATA_CONFIG'


class OccupancyError(ValueError):
    """An occupancy file does not follow the format; the message names the file and what was expected."""


class OccupancyGrid(NamedTuple):
    grid_size: tuple          # (X, Y, Z) ints
    point_cloud_range: tuple  # (x_min, y_min, z_min, x_max, y_max, z_max) floats

    @property
    def voxel_size(self):
        rng = np.asarray(self.point_cloud_range, dtype=np.float64)
        return (rng[3:6] - rng[0:3]) / np.asarray(self.grid_size, dtype=np.float64)

    @property
    def shape_text(self):
        return 'x'.join(str(n) for n in self.grid_size)


def occupancy_grid(grid_size, point_cloud_range):
    """OccupancyGrid from the config values OCC_GRID_SIZE / OCC_POINT_CLOUD_RANGE (ConfigError naming the key)."""
    size = np.asarray(grid_size)
    if size.shape != (3,) or not all(float(n).is_integer() and n > 0 for n in size.tolist()):
        raise ConfigError(f'{SECTION}.OCC_GRID_SIZE must be 3 positive integers (X, Y, Z), got {grid_size}')
    rng = np.asarray(point_cloud_range, dtype=np.float64)
    if rng.shape != (6,) or not (rng[3:6] > rng[0:3]).all():
        raise ConfigError(f'{SECTION}.OCC_POINT_CLOUD_RANGE must be 6 values [x_min, y_min, z_min, x_max, y_max, '
                          f'z_max] with max > min, got {point_cloud_range}')
    return OccupancyGrid(tuple(int(n) for n in size.tolist()), tuple(float(v) for v in rng))


def occupancy_root(root_path, occ_path):
    """OCC_PATH as a Path: absolute as is, else relative to the dataroot `root_path` (DATA_PATH/VERSION)."""
    occ_path = Path(occ_path)
    return occ_path if occ_path.is_absolute() else Path(root_path) / occ_path


def occupancy_path(occ_root, info):
    return Path(occ_root) / f'scene_{info["scene_token"]}' / 'occupancy' / f'{info["lidar_token"]}.npy'


def load_occupancy_rows(path, grid):
    """(N, 4) int64 `[z, y, x, label]` rows of one file, validated (OccupancyError naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'occupancy file {path} does not exist (expected '
                                '<OCC_PATH>/scene_<scene_token>/occupancy/<lidar_token>.npy)')
    try:
        rows = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise OccupancyError(f'occupancy file {path} is not a readable .npy array ({err})') from err
    expected = f'an integer (N, 4) array of [z, y, x, label] rows of the {grid.shape_text} grid'
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise OccupancyError(f'occupancy file {path} holds an array of shape {rows.shape}; expected {expected}')
    if not np.issubdtype(rows.dtype, np.integer):
        raise OccupancyError(f'occupancy file {path} has dtype {rows.dtype}; expected {expected}')
    rows = rows.astype(np.int64, copy=False)
    size_zyx = np.asarray(grid.grid_size[::-1], dtype=np.int64)
    # per-column min / max (strided reductions over (N, 3) views cost ~20x more on 500k rows); the per-row test only
    # runs to name the offenders
    in_grid = len(rows) == 0 or all(0 <= rows[:, k].min() and rows[:, k].max() < size_zyx[k] for k in range(3))
    if not in_grid:
        outside = ((rows[:, :3] < 0) | (rows[:, :3] >= size_zyx)).any(axis=1)
        raise OccupancyError(f'occupancy file {path}: {int(outside.sum())} rows have voxel indices outside the '
                             f'{grid.shape_text} grid, e.g. [z, y, x] = {rows[outside][0, :3].tolist()}; expected '
                             f'0 <= z < {size_zyx[0]}, 0 <= y < {size_zyx[1]}, 0 <= x < {size_zyx[2]} '
                             '([z, y, x] order)')
    bad = (rows[:, 3] < 0) | (rows[:, 3] > NUM_CLASSES)
    if bad.any():
        raise OccupancyError(f'occupancy file {path}: labels {sorted(set(rows[bad, 3].tolist()))[:10]} outside '
                             f'0..{NUM_CLASSES} (0 = noise, 1..16 = lidarseg challenge classes)')
    return rows


def densify(rows, grid_size):
    """(X, Y, Z) uint8 volume from validated `[z, y, x, label]` rows: 0 free, 1..16, 255 noise (vote: module doc)."""
    nx, ny, nz = (int(n) for n in grid_size)
    keys = (rows[:, 2] * ny + rows[:, 1]) * nz + rows[:, 0]
    volume = np.zeros(nx * ny * nz, dtype=np.uint8)
    seen = np.zeros(nx * ny * nz, dtype=bool)
    seen[keys] = True
    if np.count_nonzero(seen) == len(keys):  # no duplicate voxel: nothing to vote on (a sort would cost ~15x)
        volume[keys] = np.where(rows[:, 3] == NOISE_IN_FILE, NOISE, rows[:, 3]).astype(np.uint8)
        return volume.reshape(nx, ny, nz)
    pairs, counts = np.unique(keys * (NUM_CLASSES + 1) + rows[:, 3], return_counts=True)
    pair_keys, pair_labels = pairs // (NUM_CLASSES + 1), pairs % (NUM_CLASSES + 1)
    tie_rank = np.where(pair_labels == NOISE_IN_FILE, NUM_CLASSES + 1, pair_labels)  # noise loses ties
    order = np.lexsort((tie_rank, -counts, pair_keys))
    pair_keys, pair_labels = pair_keys[order], pair_labels[order]
    winner = np.ones(len(pair_keys), dtype=bool)
    winner[1:] = pair_keys[1:] != pair_keys[:-1]
    won = pair_labels[winner]
    volume[pair_keys[winner]] = np.where(won == NOISE_IN_FILE, NOISE, won).astype(np.uint8)
    return volume.reshape(nx, ny, nz)


def load_occupancy(path, grid):
    """`densify(load_occupancy_rows(path, grid))`."""
    return densify(load_occupancy_rows(path, grid), grid.grid_size)


def source_index_map(aug_matrix, grid):
    """(A, b) with continuous source index `u = A @ (i + 0.5) + b` of target voxel i (float64): the target centre
    `c = (i + 0.5) * v + lo` mapped by M^-1, expressed in source voxel units."""
    inverse = np.linalg.inv(np.asarray(aug_matrix, dtype=np.float64))
    voxel = grid.voxel_size
    low = np.asarray(grid.point_cloud_range[:3], dtype=np.float64)
    rotation, shift = inverse[:3, :3], inverse[:3, 3]
    return rotation * voxel[None, :] / voxel[:, None], (rotation @ low + shift - low) / voxel


def transform_occupancy(volume, aug_matrix, grid):
    """The (X, Y, Z) volume moved by `lidar_aug_matrix` (module doc); the input is returned as is for M = I."""
    matrix = np.asarray(aug_matrix, dtype=np.float64)
    if np.array_equal(matrix, np.eye(4)):
        return volume
    nx, ny, nz = volume.shape
    A, b = source_index_map(matrix, grid)
    centres = [np.arange(n, dtype=np.float64) + 0.5 for n in (nx, ny, nz)]
    if A[0, 2] == 0 and A[1, 2] == 0 and A[2, 0] == 0 and A[2, 1] == 0:
        sx = np.floor(A[0, 0] * centres[0][:, None] + A[0, 1] * centres[1][None, :] + b[0]).astype(np.int64)
        sy = np.floor(A[1, 0] * centres[0][:, None] + A[1, 1] * centres[1][None, :] + b[1]).astype(np.int64)
        sz = np.floor(A[2, 2] * centres[2] + b[2]).astype(np.int64)
        inside_xy = ((sx >= 0) & (sx < nx) & (sy >= 0) & (sy < ny)).reshape(-1)
        inside_z = (sz >= 0) & (sz < nz)
        rows = np.where(inside_xy, (sx * ny + sy).reshape(-1), 0)
        out = np.take(volume.reshape(nx * ny, nz), rows, axis=0)  # whole z columns: (X*Y, Z)
        out = np.take(out, np.where(inside_z, sz, 0), axis=1)
        out[~inside_xy] = FREE
        out[:, ~inside_z] = FREE
        return out.reshape(nx, ny, nz)
    plane = A[:, :2] @ np.stack(np.meshgrid(centres[0], centres[1], indexing='ij')).reshape(2, -1)  # (3, X*Y)
    out = np.zeros_like(volume)
    for k in range(nz):  # one (x, y) slice at a time: memory stays at a few plane-sized arrays
        src = np.floor(plane + (A[:, 2] * centres[2][k] + b)[:, None]).astype(np.int64)
        inside = ((src >= 0) & (src < np.array([[nx], [ny], [nz]]))).all(axis=0)
        plane_out = np.zeros(nx * ny, dtype=volume.dtype)
        plane_out[inside] = volume[src[0, inside], src[1, inside], src[2, inside]]
        out[:, :, k] = plane_out.reshape(nx, ny)
    return out
