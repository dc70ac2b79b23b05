"""Voxelization functions vs a brute-force python-dict reference."""
import numpy as np
import pytest
import torch

from pcdet.datasets.processor.voxelization import (
    compute_grid_size,
    decode_voxel_keys,
    dynamic_voxelize,
    hard_voxelize,
    points_to_voxel_coords,
    voxel_keys,
)

# Binary-exact grid: boundaries and cell edges are representable, so "on the boundary" is unambiguous.
EXACT_RANGE = np.array([0.0, -4.0, -2.0, 8.0, 4.0, 2.0], dtype=np.float32)
EXACT_VOXEL = [0.5, 0.5, 0.25]
NUSC_RANGE = np.array([-51.2, -51.2, -5.0, 51.2, 51.2, 3.0], dtype=np.float32)
NUSC_VOXEL = [0.1, 0.1, 0.2]


def reference_cell(point, pc_range, voxel_size, grid_size):
    """(z, y, x) or None, in float32 arithmetic like the implementation."""
    cell = np.floor((point[:3] - pc_range[:3].astype(np.float32)) / np.asarray(voxel_size, dtype=np.float32))
    cell = cell.astype(np.int64)
    if np.any(cell < 0) or np.any(cell >= grid_size):
        return None
    return tuple(int(c) for c in cell[::-1])


def reference_hard(points, pc_range, voxel_size, grid_size, max_points, max_voxels):
    voxels = {}  # insertion order = first occurrence
    for point in points:
        cell = reference_cell(point, pc_range, voxel_size, grid_size)
        if cell is None:
            continue
        if cell not in voxels:
            if len(voxels) >= max_voxels:
                continue
            voxels[cell] = []
        if len(voxels[cell]) < max_points:
            voxels[cell].append(point)
    return voxels


def make_points(num, pc_range, seed, extra_columns=2):
    rng = np.random.default_rng(seed)
    low, high = pc_range[:3], pc_range[3:]
    span = high - low
    xyz = rng.uniform(low - 0.1 * span, high + 0.1 * span, size=(num, 3))  # ~27% out of range
    # Clustered points so that caps on points per voxel are hit.
    xyz[: num // 4] = low + 0.3 * span + rng.normal(scale=0.05, size=(num // 4, 3))
    # Points exactly on the min and max boundaries of each axis.
    for axis in range(3):
        xyz[num // 4 + axis, axis] = low[axis]
        xyz[num // 4 + 3 + axis, axis] = high[axis]
    feats = rng.uniform(size=(num, extra_columns))
    return np.concatenate([xyz, feats], axis=1).astype(np.float32)


def test_grid_size_examples():
    assert compute_grid_size(NUSC_RANGE, NUSC_VOXEL).tolist() == [1024, 1024, 40]
    assert compute_grid_size([-54, -54, -5, 54, 54, 3], [0.3, 0.3, 8]).tolist() == [360, 360, 1]
    assert compute_grid_size(EXACT_RANGE, EXACT_VOXEL).dtype == np.int64


def test_boundaries_min_inclusive_max_exclusive():
    grid = compute_grid_size(EXACT_RANGE, EXACT_VOXEL)
    points = np.array([[0.0, -4.0, -2.0], [8.0, 0.0, 0.0], [1.0, 4.0, 0.0], [1.0, 0.0, 2.0],
                       [7.999, 3.999, 1.999], [-1e-4, 0.0, 0.0]], dtype=np.float32)
    coords, in_range = points_to_voxel_coords(points, EXACT_RANGE, EXACT_VOXEL, grid)
    assert in_range.tolist() == [True, False, False, False, True, False]
    assert coords[0].tolist() == [0, 0, 0]
    assert coords[4].tolist() == [15, 15, 15]  # (z, y, x) of the last cell


@pytest.mark.parametrize('pc_range, voxel_size', [(EXACT_RANGE, EXACT_VOXEL), (NUSC_RANGE, NUSC_VOXEL)])
def test_points_to_voxel_coords_matches_reference(pc_range, voxel_size):
    grid = compute_grid_size(pc_range, voxel_size)
    points = make_points(3000, pc_range, seed=1)
    coords, in_range = points_to_voxel_coords(points[:, :3], pc_range, voxel_size, grid)
    for point, coord, valid in zip(points, coords, in_range):
        expected = reference_cell(point, pc_range, voxel_size, grid)
        assert valid == (expected is not None)
        if valid:
            assert tuple(coord) == expected


@pytest.mark.parametrize('max_points, max_voxels', [(5, 10_000), (1, 10_000), (3, 40)])
def test_hard_voxelize_matches_reference(max_points, max_voxels):
    grid = compute_grid_size(EXACT_RANGE, EXACT_VOXEL)
    points = make_points(4000, EXACT_RANGE, seed=2)
    voxels, coords, num_points = hard_voxelize(points, EXACT_RANGE, EXACT_VOXEL, grid, max_points, max_voxels)
    expected = reference_hard(points, EXACT_RANGE, EXACT_VOXEL, grid, max_points, max_voxels)
    assert voxels.shape == (len(expected), max_points, points.shape[1])
    assert coords.dtype == np.int32 and num_points.dtype == np.int32
    assert [tuple(c) for c in coords.tolist()] == list(expected)  # first-occurrence order
    for voxel, count, expected_points in zip(voxels, num_points, expected.values()):
        assert count == len(expected_points)
        np.testing.assert_array_equal(voxel[:count], np.stack(expected_points))
        assert not voxel[count:].any()  # zero padding


def test_hard_voxelize_caps_are_hit():
    grid = compute_grid_size(EXACT_RANGE, EXACT_VOXEL)
    points = make_points(4000, EXACT_RANGE, seed=2)
    _, coords, num_points = hard_voxelize(points, EXACT_RANGE, EXACT_VOXEL, grid, 3, 40)
    assert len(coords) == 40 and num_points.max() == 3


def test_hard_voxelize_torch_in_torch_out_and_empty():
    grid = compute_grid_size(NUSC_RANGE, NUSC_VOXEL)
    points = make_points(500, NUSC_RANGE, seed=3)
    out_np = hard_voxelize(points, NUSC_RANGE, NUSC_VOXEL, grid, 10, 1000)
    out_torch = hard_voxelize(torch.from_numpy(points), NUSC_RANGE, NUSC_VOXEL, grid, 10, 1000)
    assert all(isinstance(t, torch.Tensor) for t in out_torch)
    for a, b in zip(out_np, out_torch):
        np.testing.assert_array_equal(a, b.numpy())
    voxels, coords, num_points = hard_voxelize(np.zeros((0, 5), np.float32), NUSC_RANGE, NUSC_VOXEL, grid, 10, 100)
    assert voxels.shape == (0, 10, 5) and coords.shape == (0, 3) and num_points.shape == (0,)


def test_voxel_keys_roundtrip_and_order():
    grid = np.array([7, 5, 3])
    rng = np.random.default_rng(0)
    coords = np.stack([rng.integers(0, 3, 200), rng.integers(0, 5, 200), rng.integers(0, 7, 200)], axis=1)
    batch = rng.integers(0, 4, 200)
    keys = voxel_keys(coords, grid, batch)
    assert keys.dtype == np.int64
    np.testing.assert_array_equal(decode_voxel_keys(keys, grid), np.concatenate([batch[:, None], coords], axis=1))
    # Sorting keys sorts (b, z, y, x) lexicographically.
    decoded = decode_voxel_keys(np.unique(keys), grid).tolist()
    assert decoded == sorted(decoded)


def test_dynamic_voxelize_matches_reference_with_batches():
    grid = compute_grid_size(EXACT_RANGE, EXACT_VOXEL)
    points = make_points(3000, EXACT_RANGE, seed=4)
    batch = np.repeat(np.arange(3), 1000)
    result = dynamic_voxelize(points, EXACT_RANGE, EXACT_VOXEL, grid, batch_idx=batch)
    groups = {}
    for index, (point, b) in enumerate(zip(points, batch)):
        cell = reference_cell(point, EXACT_RANGE, EXACT_VOXEL, grid)
        if cell is not None:
            groups.setdefault((int(b),) + cell, []).append(index)
    expected_keys = sorted(groups)
    assert [tuple(c) for c in result.coords.tolist()] == expected_keys
    assert result.num_points.tolist() == [len(groups[k]) for k in expected_keys]
    expected_idx = np.full(len(points), -1)
    for voxel_index, key in enumerate(expected_keys):
        expected_idx[groups[key]] = voxel_index
    np.testing.assert_array_equal(result.point_to_voxel, expected_idx)


def test_dynamic_voxelize_torch_matches_numpy():
    grid = compute_grid_size(NUSC_RANGE, NUSC_VOXEL)
    points = make_points(2000, NUSC_RANGE, seed=5)
    batch = np.repeat(np.arange(2), 1000)
    out_np = dynamic_voxelize(points, NUSC_RANGE, NUSC_VOXEL, grid, batch_idx=batch)
    out_torch = dynamic_voxelize(torch.from_numpy(points), NUSC_RANGE, NUSC_VOXEL, grid,
                                 batch_idx=torch.from_numpy(batch))
    for a, b in zip(out_np, out_torch):
        np.testing.assert_array_equal(a, b.numpy())
