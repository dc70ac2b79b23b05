"""OpenOccupancy ground truth: loading checks, densification vote and the augmentation transform
(pcdet/datasets/nuscenes/occupancy.py), each against a plain-loop reference."""
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from pcdet.config import ConfigError
from pcdet.datasets.dataset import lidar_aug_matrix
from pcdet.datasets.nuscenes.occupancy import (
    OccupancyError,
    densify,
    load_occupancy,
    load_occupancy_rows,
    occupancy_grid,
    transform_occupancy,
)

DEFAULT_GRID = occupancy_grid([512, 512, 40], [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
SMALL_GRID = occupancy_grid([40, 32, 10], [-8.0, -6.4, -2.0, 8.0, 6.4, 3.0])  # 0.4 x 0.4 x 0.5 m voxels


def reference_densify(rows, shape):
    """Loop reference of the vote: most frequent label, ties -> smallest label, noise (0 -> 255) loses ties."""
    votes = defaultdict(Counter)
    for z, y, x, label in rows.tolist():
        votes[(x, y, z)][label] += 1
    volume = np.zeros(shape, dtype=np.uint8)
    for voxel, counts in votes.items():
        best = max(counts.values())
        winners = [label for label, count in counts.items() if count == best]
        real = [label for label in winners if label != 0]
        volume[voxel] = min(real) if real else 255
    return volume


def reference_value(volume, matrix, grid, target):
    """Label at target voxel `target` (x, y, z): its centre through M^-1, the source voxel containing that point."""
    low = np.array(grid.point_cloud_range[:3])
    voxel = (np.array(grid.point_cloud_range[3:]) - low) / np.array(grid.grid_size)
    centre = (np.array(target) + 0.5) * voxel + low
    source = np.linalg.inv(np.asarray(matrix, dtype=np.float64)) @ np.append(centre, 1.0)
    index = np.floor((source[:3] - low) / voxel).astype(int)
    if (index < 0).any() or (index >= np.array(volume.shape)).any():
        return 0
    return volume[tuple(index)]


def test_densify_vote_matches_loop_reference():
    rng = np.random.default_rng(0)
    shape = (6, 5, 4)
    rows = np.stack([rng.integers(0, 4, 600), rng.integers(0, 5, 600), rng.integers(0, 6, 600),
                     rng.choice([0, 0, 1, 2, 5, 16], 600)], axis=1)
    np.testing.assert_array_equal(densify(rows, shape), reference_densify(rows, shape))
    unique = rows[np.unique(rows[:, :3], axis=0, return_index=True)[1]]  # no duplicates: the direct path
    np.testing.assert_array_equal(densify(unique, shape), reference_densify(unique, shape))
    assert not densify(rows[:0], shape).any()
    # the rules spelled out: [z, y, x, label] rows of voxel (x=1, y=2, z=3) and others
    cases = {(0, 0, 0): ([0, 0, 4], 255), (1, 0, 0): ([0, 4], 4), (2, 0, 0): ([5, 3], 3), (3, 0, 0): ([5, 5, 3], 5),
             (4, 0, 0): ([0], 255), (5, 0, 0): ([16], 16), (0, 1, 0): ([7, 0, 7, 0], 7)}
    rows = np.array([[z, y, x, label] for (x, y, z), (labels, _) in cases.items() for label in labels])
    volume = densify(rows[rng.permutation(len(rows))], shape)
    for voxel, (_, expected) in cases.items():
        assert volume[voxel] == expected, voxel
    assert volume.dtype == np.uint8 and (volume != 0).sum() == len(cases)


def test_load_accepts_integer_dtypes_and_zyx_order(tmp_path):
    rows = np.array([[39, 0, 511, 3], [0, 511, 0, 0], [5, 6, 7, 16]])
    for dtype in (np.int16, np.int32, np.int64, np.uint16):
        path = tmp_path / f'ok_{np.dtype(dtype).name}.npy'
        np.save(path, rows.astype(dtype))
        volume = load_occupancy(path, DEFAULT_GRID)
        assert volume.shape == (512, 512, 40) and volume.dtype == np.uint8
        assert volume[511, 0, 39] == 3 and volume[0, 511, 0] == 255 and volume[7, 6, 5] == 16
        assert np.count_nonzero(volume) == 3


@pytest.mark.parametrize('array, message', [
    (np.zeros((3, 4), dtype=np.float32), 'dtype float32'),
    (np.zeros((3, 7), dtype=np.int64), r'shape \(3, 7\)'),
    (np.zeros(12, dtype=np.int64), r'shape \(12,\)'),
    (np.array([[40, 0, 0, 1]]), r'outside the 512x512x40 grid.*\[40, 0, 0\].*0 <= z < 40'),
    (np.array([[0, 0, 512, 1]]), r'outside.*\[0, 0, 512\].*0 <= x < 512'),
    (np.array([[0, -1, 0, 1]]), r'outside'),
    (np.array([[0, 0, 0, 17]]), r'labels \[17\] outside 0\.\.16'),
])
def test_bad_occupancy_files_name_the_file(tmp_path, array, message):
    path = tmp_path / 'bad.npy'
    np.save(path, array)
    with pytest.raises(OccupancyError, match=re.escape(str(path)) + '.*' + message):
        load_occupancy_rows(path, DEFAULT_GRID)


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / 'junk.npy'
    junk.write_bytes(b'not an npy')
    with pytest.raises(OccupancyError, match=re.escape(str(junk))):
        load_occupancy_rows(junk, DEFAULT_GRID)
    with pytest.raises(FileNotFoundError, match='absent.npy'):
        load_occupancy_rows(tmp_path / 'absent.npy', DEFAULT_GRID)


def test_grid_config_errors():
    with pytest.raises(ConfigError, match='OCC_GRID_SIZE'):
        occupancy_grid([512, 512], [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
    with pytest.raises(ConfigError, match='OCC_POINT_CLOUD_RANGE'):
        occupancy_grid([512, 512, 40], [0, 0, 0, -1, 1, 1])
    np.testing.assert_allclose(DEFAULT_GRID.voxel_size, [0.2, 0.2, 0.2])


def augmentation_matrices():
    """Matrices the augmentor produces (lidar_aug_matrix of recorded parameters) and one with x/z coupling."""
    yield 'flip_x', lidar_aug_matrix({'flip_x': True})
    yield 'flip_y', lidar_aug_matrix({'flip_y': True})
    yield 'rotation', lidar_aug_matrix({'noise_rot': 0.3})
    yield 'scaling', lidar_aug_matrix({'noise_scale': 1.04})
    yield 'translation', lidar_aug_matrix({'noise_translate': np.array([0.33, -0.71, 0.17])})
    yield 'all', lidar_aug_matrix({'flip_x': True, 'flip_y': True, 'noise_rot': -0.37, 'noise_scale': 0.96,
                                   'noise_translate': np.array([-0.4, 0.25, -0.1])})
    tilt = np.eye(4)
    tilt[:3, :3] = [[np.cos(0.2), 0, np.sin(0.2)], [0, 1, 0], [-np.sin(0.2), 0, np.cos(0.2)]]
    yield 'tilt (general path)', tilt


@pytest.mark.parametrize('name, matrix', list(augmentation_matrices()))
def test_transform_matches_brute_force(name, matrix):
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 18, size=SMALL_GRID.grid_size).astype(np.uint8)
    volume[volume == 17] = 255
    out = transform_occupancy(volume, matrix, SMALL_GRID)
    assert out.shape == volume.shape and out.dtype == np.uint8
    expected = np.zeros_like(volume)
    for index in np.ndindex(volume.shape):  # every voxel of the small grid
        expected[index] = reference_value(volume, matrix, SMALL_GRID, index)
    np.testing.assert_array_equal(out, expected, err_msg=name)
    assert (out == 0).any() or name.startswith('flip')  # something moved out of the grid (free)


def test_transform_on_the_default_grid_and_identity():
    rng = np.random.default_rng(2)
    volume = np.zeros(DEFAULT_GRID.grid_size, dtype=np.uint8)
    volume[rng.integers(0, 512, 20000), rng.integers(0, 512, 20000), rng.integers(0, 40, 20000)] = \
        rng.integers(1, 17, 20000)
    assert transform_occupancy(volume, np.eye(4, dtype=np.float32), DEFAULT_GRID) is volume
    matrix = lidar_aug_matrix({'flip_y': True, 'noise_rot': 0.21, 'noise_scale': 1.03,
                               'noise_translate': np.array([0.3, 0.1, -0.2])})
    out = transform_occupancy(volume, matrix, DEFAULT_GRID)
    targets = np.concatenate([rng.integers(0, [512, 512, 40], size=(3000, 3)),
                              np.array([[0, 0, 0], [511, 511, 39], [0, 511, 20], [256, 256, 0]])])
    for target in targets:
        assert out[tuple(target)] == reference_value(volume, matrix, DEFAULT_GRID, target), target
    occupied_targets = np.argwhere(out != 0)[:2000]  # the occupied voxels did move (not only free space checked)
    assert len(occupied_targets) > 1000
    for target in occupied_targets[::10]:
        assert out[tuple(target)] == reference_value(volume, matrix, DEFAULT_GRID, target)
