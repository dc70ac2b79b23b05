"""Voxelization as pure functions, shared by the data pipeline (numpy in, numpy out) and by models (torch in, torch
out, on the input's device).

Grid convention (spec §0): `grid_size = round((pc_range[3:6] - pc_range[0:3]) / voxel_size)` as int64 `(nx, ny, nz)`;
a point's integer cell is `floor((xyz - pc_range[0:3]) / voxel_size)`, computed in the points' dtype (float32 for
the pipeline, as spconv and OpenPCDet's dynamic VFEs do), and it is *in range* when `0 <= cell < grid_size` on all
three axes. Integer voxel coordinates are always returned in **(z, y, x)** order (with a leading batch column where
there is one), as everywhere in pcdet.

Hashing: `(b, z, y, x)` is linearised into ONE int64 key `((b * nz + z) * ny + y) * nx + x`, so grouping points
into voxels is a 1-D `torch.unique` (a sort of int64 values) instead of the much slower `torch.unique(dim=0)` on
rows. Sorting keys sorts voxels by (batch, z, y, x).

Functions:
    compute_grid_size(pc_range, voxel_size) -> (3,) int64; fractional_grid_size -> (3,) float64 before rounding;
        grid_size_is_integer -> (3,) bool (does VOXEL_SIZE divide the range? DataProcessor warns when not)
    points_to_voxel_coords(points_xyz (N, 3), ...) -> coords_zyx (N, 3) int64, in_range (N,) bool
    voxel_keys(coords_zyx (V, 3), grid_size, batch_idx (V,) | None) -> (V,) int64
    decode_voxel_keys(keys (V,), grid_size) -> (V, 4) int64 [b, z, y, x]
    dynamic_voxelize(points (N, 3 + C), ..., batch_idx=None) -> DynamicVoxels(coords (V, 4), point_to_voxel (N,),
        num_points (V,)); voxels sorted by key; point_to_voxel is -1 for out-of-range points.
    hard_voxelize(points (N, C), ..., max_points_per_voxel, max_voxels) -> voxels (V, P, C), coords (V, 3) [z, y, x],
        num_points (V,); voxel order = order of first point occurrence (spconv's generator), later points/voxels
        beyond the caps are dropped.
"""
from typing import NamedTuple

import numpy as np
import torch


class DynamicVoxels(NamedTuple):
    coords: object          # (V, 4) int64 [b, z, y, x], sorted by key
    point_to_voxel: object  # (N,) int64 index into coords, -1 for points outside the grid
    num_points: object      # (V,) int64 points per voxel


class HardVoxels(NamedTuple):
    voxels: object          # (V, P, C) float, zero padded
    coords: object          # (V, 3) int32 [z, y, x]
    num_points: object      # (V,) int32, <= P


def _as_tensor(array):
    """Return `(tensor, was_numpy)` without copying numpy data."""
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array)), True
    return array, False


def _grid_tensors(pc_range, voxel_size, grid_size, like):
    pc_min = torch.as_tensor(np.asarray(pc_range, dtype=np.float64)[0:3], dtype=like.dtype, device=like.device)
    voxel = torch.as_tensor(np.asarray(voxel_size, dtype=np.float64), dtype=like.dtype, device=like.device)
    grid = torch.as_tensor(np.asarray(grid_size, dtype=np.int64), device=like.device)
    return pc_min, voxel, grid


def fractional_grid_size(pc_range, voxel_size):
    """(3,) float64 `(pc_range[3:6] - pc_range[0:3]) / voxel_size`: the grid before `compute_grid_size` rounds it."""
    pc_range = np.asarray(pc_range, dtype=np.float64)
    return (pc_range[3:6] - pc_range[0:3]) / np.asarray(voxel_size, dtype=np.float64)


def grid_size_is_integer(pc_range, voxel_size):
    """(3,) bool per axis: does VOXEL_SIZE divide the POINT_CLOUD_RANGE extent? The tolerance absorbs float32
    storage of the range (-51.2 as float32 is off by ~1e-6 m), not real remainders."""
    cells = fractional_grid_size(pc_range, voxel_size)
    return np.isclose(cells, np.round(cells), rtol=1e-6, atol=1e-4)


def compute_grid_size(pc_range, voxel_size):
    """`round((pc_range[3:6] - pc_range[0:3]) / voxel_size)` as int64 `(nx, ny, nz)`."""
    pc_range = np.asarray(pc_range, dtype=np.float32)
    return np.round((pc_range[3:6] - pc_range[0:3]) / np.asarray(voxel_size, dtype=np.float32)).astype(np.int64)


def points_to_voxel_coords(points_xyz, pc_range, voxel_size, grid_size):
    """Integer cells `(N, 3)` int64 in (z, y, x) order and the in-range mask `(N,)`; numpy in -> numpy out."""
    xyz, was_numpy = _as_tensor(points_xyz)
    pc_min, voxel, grid = _grid_tensors(pc_range, voxel_size, grid_size, xyz)
    cells_xyz = torch.floor((xyz[:, 0:3] - pc_min) / voxel).long()
    in_range = ((cells_xyz >= 0) & (cells_xyz < grid)).all(dim=1)
    coords_zyx = cells_xyz.flip(1)
    return (coords_zyx.numpy(), in_range.numpy()) if was_numpy else (coords_zyx, in_range)


def voxel_keys(coords_zyx, grid_size, batch_idx=None):
    """Linearise `(b, z, y, x)` into one int64 key; `batch_idx=None` means batch 0. Coords must be in range."""
    coords, was_numpy = _as_tensor(coords_zyx)
    coords = coords.long()
    nx, ny, nz = (int(n) for n in grid_size)
    keys = (coords[:, 0] * ny + coords[:, 1]) * nx + coords[:, 2]
    if batch_idx is not None:
        batch, _ = _as_tensor(batch_idx)
        keys = keys + batch.to(coords.device).long() * (nz * ny * nx)
    return keys.numpy() if was_numpy else keys


def decode_voxel_keys(keys, grid_size):
    """Inverse of `voxel_keys`: `(V, 4)` int64 `[b, z, y, x]`."""
    keys, was_numpy = _as_tensor(keys)
    nx, ny, nz = (int(n) for n in grid_size)
    x = keys % nx
    y = (keys // nx) % ny
    z = (keys // (nx * ny)) % nz
    b = keys // (nx * ny * nz)
    coords = torch.stack((b, z, y, x), dim=1)
    return coords.numpy() if was_numpy else coords


def dynamic_voxelize(points, pc_range, voxel_size, grid_size, batch_idx=None):
    """Group points into voxels without caps (DSVT's dynamic VFE input); see module docstring for shapes."""
    pts, was_numpy = _as_tensor(points)
    batch, _ = _as_tensor(batch_idx) if batch_idx is not None else (None, False)
    coords_zyx, in_range = points_to_voxel_coords(pts[:, 0:3], pc_range, voxel_size, grid_size)
    valid = torch.nonzero(in_range).squeeze(1)
    keys = voxel_keys(coords_zyx[valid], grid_size, None if batch is None else batch[valid])
    unique_keys, inverse, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    point_to_voxel = torch.full((pts.shape[0],), -1, dtype=torch.long, device=pts.device)
    point_to_voxel[valid] = inverse
    result = DynamicVoxels(decode_voxel_keys(unique_keys, grid_size), point_to_voxel, counts)
    return DynamicVoxels(*(t.cpu().numpy() for t in result)) if was_numpy else result


def _rank_within_group(group_ids, num_groups):
    """For each element, how many elements of the same group precede it (stable, in input order)."""
    order = torch.argsort(group_ids, stable=True)
    counts = torch.bincount(group_ids, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(group_ids)
    rank[order] = torch.arange(group_ids.numel(), device=group_ids.device) - starts[group_ids[order]]
    return rank, counts


def hard_voxelize(points, pc_range, voxel_size, grid_size, max_points_per_voxel, max_voxels):
    """Hard (capped, zero-padded) voxels in first-occurrence order, as spconv's point-to-voxel generator."""
    pts, was_numpy = _as_tensor(points)
    coords_zyx, in_range = points_to_voxel_coords(pts[:, 0:3], pc_range, voxel_size, grid_size)
    valid = torch.nonzero(in_range).squeeze(1)
    keys = voxel_keys(coords_zyx[valid], grid_size)
    unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    num_unique = unique_keys.numel()
    point_rank = torch.arange(valid.numel(), device=pts.device)
    first_point = torch.full((num_unique,), valid.numel(), dtype=torch.long, device=pts.device)
    first_point.scatter_reduce_(0, inverse, point_rank, reduce='amin')
    voxels_by_first_point = torch.argsort(first_point)
    voxel_id_of_unique = torch.empty_like(voxels_by_first_point)
    voxel_id_of_unique[voxels_by_first_point] = torch.arange(num_unique, device=pts.device)
    voxel_id = voxel_id_of_unique[inverse]
    slot, counts = _rank_within_group(voxel_id, num_unique)

    num_voxels = min(num_unique, int(max_voxels))
    keep = (voxel_id < num_voxels) & (slot < max_points_per_voxel)
    voxels = pts.new_zeros((num_voxels, int(max_points_per_voxel), pts.shape[1]))
    voxels[voxel_id[keep], slot[keep]] = pts[valid[keep]]
    coords = coords_zyx[valid[first_point[voxels_by_first_point[:num_voxels]]]].int()
    num_points = counts[:num_voxels].clamp(max=int(max_points_per_voxel)).int()
    result = HardVoxels(voxels, coords, num_points)
    return HardVoxels(*(t.cpu().numpy() for t in result)) if was_numpy else result
