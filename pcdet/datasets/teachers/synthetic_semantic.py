"""`synthetic_semantic`: a test stand-in for a foundation model (Seal MinkUNet) whose per-point features carry
semantics. It needs per-point semantic labels (the synthetic nuScenes-lidarseg labels) and costs microseconds.

feature(point) = normalize(u[label] + sigma * g(point))
    u[label]   a fixed random unit vector per raw label, drawn from SEED: an orthonormal set (QR of a Gaussian
               matrix) when NUM_LABELS <= NUM_FEATURES, else independent random unit vectors
    g(point)   NUM_FEATURES standard normals from a counter-based generator (splitmix64 + Box-Muller) keyed by SEED
               and a stable hash of the point's float32 x, y, z bits: recomputing gives bit-identical features, and
               a point's feature does not depend on the other points or on the row order
    sigma      NOISE_STD / sqrt(NUM_FEATURES)

Deviation (documented decision): the per-component noise std is NOISE_STD / sqrt(NUM_FEATURES), i.e. NOISE_STD is
the expected LENGTH of the noise vector, not the per-component std. With a per-component 0.05 the 64-d noise would have
length 0.4 and two points of one label only ~0.86 cosine similarity; with this scaling the expected same-label cosine
is ~1 / (1 + NOISE_STD^2) (0.9975 at 0.05) whatever NUM_FEATURES is, and different labels are ~orthogonal.

Config (`DATA_CONFIG.TEACHER_FEATURES`, defaults in `SyntheticSemanticTeacher.CONFIG_SCHEMA`): NAME
synthetic_semantic, NUM_FEATURES (required), SEED (0), NOISE_STD (0.05), NUM_LABELS (32 = the raw nuScenes-lidarseg
label count; a label outside [0, NUM_LABELS) is an error naming it),
LABEL_NOISE (0.0): a noisy oracle, to measure how teacher quality matters: a point whose hashed uniform (keyed by
SEED and its coordinates, so deterministic per point and frame) is below LABEL_NOISE gets a wrong label, uniform
over the other NUM_LABELS - 1 (`noisy_labels`).
"""
import numpy as np

from ...config import ConfigError
from .base import Teacher

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_32 = float(2 ** 32)
_LABEL_NOISE_SALT = np.uint64(0xD1B54A32D192ED03)


def splitmix64(values):
    """splitmix64 finaliser of a uint64 array (wrapping arithmetic) -> uint64 array of the same shape."""
    with np.errstate(over='ignore'):
        z = values + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def point_hash(xyz, seed):
    """(N,) uint64 key of each point from `seed` and the float32 bit patterns of its x, y, z (row-order free)."""
    bits = np.ascontiguousarray(np.asarray(xyz, dtype=np.float32)[:, 0:3]).view(np.uint32).astype(np.uint64)
    key = splitmix64(np.full(bits.shape[0], seed, dtype=np.uint64))
    for axis in range(3):
        key = splitmix64(key ^ bits[:, axis])
    return key


def hashed_standard_normal(keys, num_values):
    """(N, num_values) float64 standard normals; row i is a fixed function of keys[i] (Box-Muller on splitmix64)."""
    num_pairs = (num_values + 1) // 2
    counters = np.arange(1, num_pairs + 1, dtype=np.uint64) * _MIX2
    random_bits = splitmix64(keys[:, None] ^ counters[None, :])  # (N, pairs) 64 random bits each
    uniform_1 = ((random_bits >> np.uint64(32)).astype(np.float64) + 0.5) / _TWO_POW_32  # in (0, 1)
    uniform_2 = ((random_bits & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) / _TWO_POW_32
    radius = np.sqrt(-2.0 * np.log(uniform_1))
    angle = 2.0 * np.pi * uniform_2
    normals = np.stack((radius * np.cos(angle), radius * np.sin(angle)), axis=2).reshape(keys.shape[0], -1)
    return normals[:, :num_values]


def label_unit_vectors(num_labels, num_features, seed):
    """(num_labels, num_features) float64 unit rows from `seed`: orthonormal when num_labels <= num_features."""
    rng = np.random.default_rng(seed)
    gaussian = rng.standard_normal((num_features, num_labels))
    if num_labels <= num_features:
        q, r = np.linalg.qr(gaussian)
        return (q * np.sign(np.diag(r))).T  # sign fix: a unique orthonormal set for this seed
    vectors = gaussian.T
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def noisy_labels(labels, keys, fraction, num_labels):
    """(N,) int64 labels where the points whose hashed uniform (from `keys`, point_hash) is below `fraction` get a
    wrong label, uniform over the other `num_labels - 1` (no change when num_labels is 1)."""
    labels = np.asarray(labels, dtype=np.int64)
    bits = splitmix64(keys ^ _LABEL_NOISE_SALT)
    flip = ((bits >> np.uint64(32)).astype(np.float64) + 0.5) / _TWO_POW_32 < fraction
    if num_labels < 2 or not flip.any():
        return labels
    shift = 1 + ((bits & np.uint64(0xFFFFFFFF)).astype(np.float64) / _TWO_POW_32 * (num_labels - 1)).astype(np.int64)
    return np.where(flip, (labels + shift) % num_labels, labels)


class SyntheticSemanticTeacher(Teacher):
    """Label-driven stand-in teacher (module doc). `__call__(points (N, >=3), point_labels (N,) int)` ->
    (N, NUM_FEATURES) float32 unit rows."""

    name = 'synthetic_semantic'
    needs_point_labels = True
    SECTION = 'DATA_CONFIG.TEACHER_FEATURES'
    CONFIG_SCHEMA = Teacher.CONFIG_SCHEMA.extend('DATA_CONFIG.TEACHER_FEATURES (synthetic_semantic)', {
        'SEED': 0, 'NOISE_STD': 0.05, 'NUM_LABELS': 32,
        'LABEL_NOISE': 0.0})  # fraction of points given a wrong label (noisy oracle)

    def __init__(self, teacher_cfg):
        schema = self.CONFIG_SCHEMA
        self.num_features = int(schema.get(teacher_cfg, 'NUM_FEATURES'))
        self.seed = int(schema.get(teacher_cfg, 'SEED'))
        self.noise_std = float(schema.get(teacher_cfg, 'NOISE_STD'))
        self.num_labels = int(schema.get(teacher_cfg, 'NUM_LABELS'))
        if self.num_features < 1 or self.num_labels < 1:
            raise ConfigError(f'{self.SECTION}: NUM_FEATURES ({self.num_features}) and NUM_LABELS '
                              f'({self.num_labels}) must be >= 1')
        if self.noise_std < 0 or self.seed < 0:
            raise ConfigError(f'{self.SECTION}: NOISE_STD ({self.noise_std}) and SEED ({self.seed}) must be >= 0')
        self.label_noise = float(schema.get(teacher_cfg, 'LABEL_NOISE'))
        if not 0.0 <= self.label_noise <= 1.0:
            raise ConfigError(f'{self.SECTION}.LABEL_NOISE ({self.label_noise}): expected a fraction of points in '
                              '[0, 1]')
        self.label_vectors = label_unit_vectors(self.num_labels, self.num_features, self.seed)

    def __call__(self, points, point_labels=None):
        points = np.asarray(points)
        if point_labels is None:
            raise ValueError('synthetic_semantic teacher needs per-point labels (needs_point_labels=True)')
        labels = np.asarray(point_labels)
        if labels.shape != (points.shape[0],):
            raise ValueError(f'synthetic_semantic teacher: {labels.shape} labels for {points.shape[0]} points')
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_labels):
            bad = labels[(labels < 0) | (labels >= self.num_labels)][0]
            raise ValueError(f'synthetic_semantic teacher: label value {int(bad)} is outside [0, {self.num_labels}) '
                             f'(TEACHER_FEATURES.NUM_LABELS = {self.num_labels})')
        keys = point_hash(points[:, 0:3], self.seed)
        labels = noisy_labels(labels, keys, self.label_noise, self.num_labels) if self.label_noise else labels
        noise = hashed_standard_normal(keys, self.num_features)
        features = self.label_vectors[labels.astype(np.int64)] + noise * (self.noise_std / np.sqrt(self.num_features))
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        return features.astype(np.float32)
