"""`geometric` teacher: eigen-features against a per-point loop over explicit cell members, height above the local
ground by hand, determinism, row-order independence, label independence (also through the prepare path, which must
not load labels for it), speed on a synthetic-sized frame, config keys declared and checked."""
import time

import numpy as np
import pytest

from pcdet.config import ConfigError, cfg_from_yaml_file
from pcdet.config_registry import validate_config
from pcdet.datasets.teachers import build_teacher
from pcdet.datasets.teachers.geometric import GeometricTeacher, cell_shape_features, height_above_ground
from pcdet.datasets.teachers.prepare import compute_frame_features


def scene(num_points=3000, seed=0):
    """Ground plane, a vertical wall, a pole and a scattered bush, with intensities: (N, 5) float32."""
    rng = np.random.default_rng(seed)
    n = num_points // 4
    ground = np.stack([rng.uniform(-20, -8, n), rng.uniform(-20, -8, n), rng.normal(-1.8, 0.01, n)], 1)
    wall = np.stack([np.full(n, 8.0) + rng.normal(0, 0.01, n), rng.uniform(-5, 5, n), rng.uniform(-1.8, 1.0, n)], 1)
    pole = np.stack([rng.normal(-4, 0.02, n), rng.normal(3, 0.02, n), rng.uniform(-1.8, 2.0, n)], 1)
    bush = rng.normal([2.0, -6.0, -1.0], 0.6, (n, 3))
    xyz = np.concatenate([ground, wall, pole, bush])
    return np.concatenate([xyz, rng.uniform(0, 255, (len(xyz), 1)), np.zeros((len(xyz), 1))], 1).astype(np.float32)


def reference_shape(xyz, size):
    """Per point, by brute force over the points in the same cell: [lin, plan, scat, vert, density]."""
    cells = np.floor(xyz / size)
    out = np.zeros((len(xyz), 5))
    for i in range(len(xyz)):
        members = xyz[(cells == cells[i]).all(axis=1)]
        cov = np.cov(members.T, bias=True) if len(members) > 1 else np.zeros((3, 3))
        values, vectors = np.linalg.eigh(cov)
        l3, l2, l1 = np.clip(values, 0, None)
        if l1 > 1e-12:
            out[i, :4] = [(l1 - l2) / l1, (l2 - l3) / l1, l3 / l1, abs(vectors[2, 0])]
        out[i, 4] = np.log(1 + len(members)) / np.log(65)
    return out


def test_cell_eigen_features_match_a_brute_force_loop():
    xyz = scene(800).astype(np.float64)[:, :3]
    np.testing.assert_allclose(cell_shape_features(xyz, 1.0), reference_shape(xyz, 1.0), atol=1e-6)


def test_shapes_are_recognised_and_height_is_above_the_local_ground():
    points = scene()
    xyz = points[:, :3].astype(np.float64)
    feats = cell_shape_features(xyz, 2.0)
    n = len(points) // 4
    ground, wall, pole, bush = feats[:n], feats[n:2 * n], feats[2 * n:3 * n], feats[3 * n:]
    # flat surfaces: no scattering (l3 ~ 0); the ground's normal is vertical, the wall's horizontal
    assert np.median(ground[:, 2]) < 0.01 and np.median(ground[:, 1]) > 0.4 and np.median(ground[:, 3]) > 0.95
    assert np.median(wall[:, 2]) < 0.01 and np.median(wall[:, 1]) > 0.4 and np.median(wall[:, 3]) < 0.1
    assert np.median(pole[:, 0]) > 0.9                                          # linear
    assert np.median(bush[:, 2]) > 0.2                                          # scattered
    toy = np.array([[0.5, 0.5, -2.0], [1.0, 1.0, 0.5], [5.0, 0.5, 1.0], [5.5, 1.5, 3.0]])
    np.testing.assert_allclose(height_above_ground(toy, 4.0), [0.0, 2.5, 0.0, 2.0])


def test_deterministic_row_order_free_and_label_independent():
    points = scene()
    teacher = build_teacher({'NAME': 'geometric', 'NUM_FEATURES': 64, 'SEED': 3})
    assert isinstance(teacher, GeometricTeacher) and teacher.needs_point_labels is False
    features = teacher(points)
    assert features.shape == (len(points), 64) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(features, build_teacher({'NAME': 'geometric', 'NUM_FEATURES': 64, 'SEED': 3})(points))
    order = np.random.default_rng(1).permutation(len(points))
    np.testing.assert_allclose(teacher(points[order]), features[order], atol=1e-5)
    labels_a = np.zeros(len(points), np.int64)
    labels_b = np.random.default_rng(2).integers(0, 32, len(points))
    np.testing.assert_array_equal(teacher(points, labels_a), features)
    np.testing.assert_array_equal(teacher(points, labels_b), features)
    other_seed = build_teacher({'NAME': 'geometric', 'NUM_FEATURES': 64, 'SEED': 4})(points)
    assert not np.allclose(other_seed, features)


class _Adapter:
    """A dataset adapter whose per-point labels change with every call; records whether labels were requested."""

    def __init__(self, parts):
        self.parts, self.requested, self.calls = parts, [], 0

    def load_parts(self, info, with_labels):
        self.requested.append(with_labels)
        self.calls += 1
        labels = [np.random.default_rng(self.calls).integers(0, 32, len(p)) for p in self.parts] if with_labels \
            else [None] * len(self.parts)
        return self.parts, labels, [f'part{i}' for i in range(len(self.parts))]


def test_prepare_path_never_loads_labels_and_features_do_not_change():
    parts = [scene(1200, seed=s) for s in range(3)]
    adapter = _Adapter(parts)
    teacher = build_teacher({'NAME': 'geometric', 'NUM_FEATURES': 16})
    first = compute_frame_features(adapter, teacher, info=None)
    second = compute_frame_features(adapter, teacher, info=None)
    assert adapter.requested == [False, False]
    for a, b, part in zip(first, second, parts):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, teacher(part))


def test_a_synthetic_sized_frame_takes_well_under_a_second():
    parts = [scene(14000, seed=s) for s in range(3)]   # key frame + 2 sweeps of the synthetic data
    teacher = build_teacher({'NAME': 'geometric', 'NUM_FEATURES': 64})
    start = time.perf_counter()
    for part in parts:
        teacher(part)
    assert time.perf_counter() - start < 1.0


def test_config_is_declared_and_checked():
    cfg = cfg_from_yaml_file('tools/cfgs/gpicture_models/gpicture_tiny_synthetic_pretrain.yaml')
    cfg.DATA_CONFIG.TEACHER_FEATURES = {'NAME': 'geometric', 'NUM_FEATURES': 64, 'SEED': 1, 'RADII': [0.4, 1.6],
                                        'GROUND_CELL': 3.0, 'RANGE_SCALE': 40.0, 'INTENSITY_COLUMN': 3}
    validate_config(cfg, source='test')
    assert build_teacher(cfg.DATA_CONFIG.TEACHER_FEATURES).radii == [0.4, 1.6]
    with pytest.raises(ConfigError, match=r'TEACHER_FEATURES: RADII \[0\.0\]'):
        GeometricTeacher({'NUM_FEATURES': 8, 'RADII': [0.0]})
    with pytest.raises(ValueError, match='INTENSITY_COLUMN = 3'):
        GeometricTeacher({'NUM_FEATURES': 8})(np.zeros((4, 3), np.float32))
