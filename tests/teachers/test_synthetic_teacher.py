"""synthetic_semantic teacher: semantics (cosine similarities), determinism, row-order independence, an independent
pure-Python reference of the hashed noise, label validation, and the teacher registry."""
import math

import numpy as np
import pytest

from pcdet.config import ConfigError
from pcdet.datasets.teachers import KNOWN_TEACHERS, build_teacher
from pcdet.datasets.teachers.synthetic_semantic import SyntheticSemanticTeacher

MASK64 = (1 << 64) - 1


def splitmix64_reference(value):
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def reference_feature(point, label, teacher):
    """Feature of one point computed with Python ints / math, independently of the vectorised numpy code."""
    key = splitmix64_reference(teacher.seed)
    for coordinate in np.asarray(point[:3], dtype=np.float32):
        key = splitmix64_reference(key ^ int(coordinate.view(np.uint32)))
    normals = []
    for pair in range((teacher.num_features + 1) // 2):
        bits = splitmix64_reference(key ^ (((pair + 1) * 0x94D049BB133111EB) & MASK64))
        u1, u2 = ((bits >> 32) + 0.5) / 2 ** 32, ((bits & 0xFFFFFFFF) + 0.5) / 2 ** 32
        radius = math.sqrt(-2.0 * math.log(u1))
        normals += [radius * math.cos(2 * math.pi * u2), radius * math.sin(2 * math.pi * u2)]
    vector = teacher.label_vectors[label] + np.array(normals[:teacher.num_features]) * (
        teacher.noise_std / math.sqrt(teacher.num_features))
    return vector / np.linalg.norm(vector)


def random_points(num_points, seed=0):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.uniform(-50, 50, (num_points, 3)), rng.uniform(0, 255, (num_points, 1))], axis=1)
    return points.astype(np.float32), rng.integers(0, 32, num_points)


def test_same_label_similar_different_labels_dissimilar():
    teacher = SyntheticSemanticTeacher({'NUM_FEATURES': 64, 'SEED': 0, 'NOISE_STD': 0.05})
    points, labels = random_points(3000)
    features = teacher(points, labels)
    assert features.shape == (3000, 64) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    cosine = features @ features.T
    same = labels[:, None] == labels[None, :]
    assert cosine[same].min() > 0.9
    assert cosine[~same].max() < 0.5
    # label vectors: one unit vector per label, pairwise orthogonal (32 <= 64)
    np.testing.assert_allclose(teacher.label_vectors @ teacher.label_vectors.T, np.eye(32), atol=1e-12)


def test_matches_pure_python_reference():
    teacher = SyntheticSemanticTeacher({'NUM_FEATURES': 7, 'SEED': 3, 'NOISE_STD': 0.5, 'NUM_LABELS': 4})
    points, _ = random_points(5, seed=1)
    labels = np.array([0, 3, 1, 1, 2])
    features = teacher(points, labels)
    for row in range(5):
        np.testing.assert_allclose(features[row], reference_feature(points[row], labels[row], teacher), atol=1e-6)


def test_deterministic_and_row_order_independent():
    cfg = {'NUM_FEATURES': 64, 'SEED': 5, 'NOISE_STD': 0.2}
    points, labels = random_points(500, seed=2)
    first = SyntheticSemanticTeacher(cfg)(points, labels)
    np.testing.assert_array_equal(first, SyntheticSemanticTeacher(cfg)(points, labels))  # recomputation
    order = np.random.default_rng(0).permutation(500)
    np.testing.assert_array_equal(SyntheticSemanticTeacher(cfg)(points[order], labels[order]), first[order])
    # a point's feature does not depend on the other points of the call
    np.testing.assert_array_equal(SyntheticSemanticTeacher(cfg)(points[7:8], labels[7:8])[0], first[7])
    other_seed = SyntheticSemanticTeacher(dict(cfg, SEED=6))(points, labels)
    assert np.abs(other_seed - first).max() > 0.1


def test_noise_is_standard_normal():
    teacher = SyntheticSemanticTeacher({'NUM_FEATURES': 64, 'NOISE_STD': 0.05})
    points, _ = random_points(4000, seed=4)
    from pcdet.datasets.teachers.synthetic_semantic import hashed_standard_normal, point_hash
    normals = hashed_standard_normal(point_hash(points, teacher.seed), 64)
    assert abs(normals.mean()) < 0.01 and abs(normals.std() - 1.0) < 0.01
    assert abs(np.corrcoef(normals[:, 0], normals[:, 1])[0, 1]) < 0.05


def test_label_validation_names_the_value():
    teacher = SyntheticSemanticTeacher({'NUM_FEATURES': 64, 'NUM_LABELS': 32})  # NUM_FEATURES is required
    points, labels = random_points(10)
    labels[4] = 40
    with pytest.raises(ValueError, match='label value 40'):
        teacher(points, labels)
    with pytest.raises(ValueError, match='needs per-point labels'):
        teacher(points, None)
    with pytest.raises(ValueError, match='labels for 10 points'):
        teacher(points, labels[:5])


def test_registry():
    teacher = build_teacher({'NAME': 'synthetic_semantic', 'NUM_FEATURES': 16})
    assert isinstance(teacher, SyntheticSemanticTeacher)
    assert (teacher.name, teacher.num_features, teacher.needs_point_labels) == ('synthetic_semantic', 16, True)
    assert set(KNOWN_TEACHERS) == {'synthetic_semantic', 'seal_minkunet', 'geometric', 'image_projection'}
    with pytest.raises(ConfigError, match=r"unknown teacher 'dino'.*geometric.*seal_minkunet.*synthetic_semantic"):
        build_teacher({'NAME': 'dino'})
    with pytest.raises(ConfigError, match='NAME'):
        build_teacher({'NUM_FEATURES': 16})


@pytest.mark.parametrize('fraction', [0.0, 0.1, 0.3])
def test_label_noise_fraction_is_measured_on_a_frame(fraction):
    """LABEL_NOISE: the fraction of points whose feature belongs to another label than theirs, measured against the
    clean teacher (a wrong label's vector is orthogonal, cosine ~0; the right one ~1), is within 4 sigma of the
    binomial spread; deterministic and row-order independent."""
    points, labels = random_points(20000, seed=3)
    clean = SyntheticSemanticTeacher({'NUM_FEATURES': 64})(points, labels)
    teacher = SyntheticSemanticTeacher({'NUM_FEATURES': 64, 'LABEL_NOISE': fraction})
    noisy = teacher(points, labels)
    cosine = (clean.astype(np.float64) * noisy).sum(axis=1)
    assert np.all((cosine > 0.9) | (cosine < 0.4))
    measured = float(np.mean(cosine < 0.4))
    assert abs(measured - fraction) <= 4 * math.sqrt(max(fraction * (1 - fraction), 1e-12) / len(points))
    np.testing.assert_array_equal(noisy, teacher(points, labels))
    order = np.random.default_rng(0).permutation(len(points))
    np.testing.assert_array_equal(noisy[order], teacher(points[order], labels[order]))


def test_label_noise_outside_0_1_names_the_key():
    with pytest.raises(ConfigError, match=r'TEACHER_FEATURES\.LABEL_NOISE \(1\.5\): expected a fraction'):
        SyntheticSemanticTeacher({'NUM_FEATURES': 8, 'LABEL_NOISE': 1.5})
