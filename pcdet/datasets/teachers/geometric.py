"""`geometric`: a label-free teacher usable on any dataset: per-point descriptors of local geometry, projected to
NUM_FEATURES by a fixed seeded random matrix. Pure numpy, deterministic, no network, no checkpoint, no labels.

Descriptor of a point (all components mapped to about [-1, 1]):
    per scale r in RADII (metres), over the points sharing the point's cubic cell of edge r (`floor(xyz / r)`):
        linearity (l1 - l2) / l1, planarity (l2 - l3) / l1, scattering l3 / l1 (l1 >= l2 >= l3 the eigenvalues
        of the cell's covariance; all 0 for a cell with a single point or no spread), verticality |n_z| of the
        normal (eigenvector of l3), density log(1 + n) / log(1 + 64)
    height above the local ground: z - min z of the points in its GROUND_CELL x GROUND_CELL m column, tanh(h / 2)
    range sqrt(x^2 + y^2): tanh(range / RANGE_SCALE)
    intensity (column INTENSITY_COLUMN): log(1 + max(i, 0)) / log(256), at most 2
feature = normalize(descriptor @ W), W (D, NUM_FEATURES) standard normal / sqrt(D) from SEED (numpy default_rng).

Cells rather than radius balls keep it O(N log N) (one sort per scale): about 0.1 s for 40k points. Neighbourhoods
are cell-aligned, so two close points on either side of a cell face can differ; several scales soften that.
A point's feature depends only on the points of the same file, not on their order (up to float64 summation order).

Config (`DATA_CONFIG.TEACHER_FEATURES`): NAME geometric, NUM_FEATURES (64), SEED (0), RADII ([0.5, 1.0, 2.0]),
GROUND_CELL (4.0), RANGE_SCALE (50.0), INTENSITY_COLUMN (3).
"""
import numpy as np

from ...config import ConfigError
from .base import Teacher

SECTION = 'DATA_CONFIG.TEACHER_FEATURES'
DENSITY_REF = 64.0
NORMALIZE_EPS = 1e-12


def cell_index(coords, size):
    """(N,) int64 index of each point's cell `floor(coords / size)` among the occupied cells (coords (N, d))."""
    cells = np.floor(coords / size).astype(np.int64)
    cells -= cells.min(axis=0)
    key = np.zeros(len(cells), dtype=np.int64)
    for axis in range(cells.shape[1]):
        key = key * (int(cells[:, axis].max()) + 1) + cells[:, axis]
    return np.unique(key, return_inverse=True)[1].reshape(-1)


def cell_shape_features(xyz, size):
    """(N, 5) [linearity, planarity, scattering, verticality, density] of each point's cell of edge `size`."""
    inverse = cell_index(xyz, size)
    num_cells = int(inverse.max()) + 1
    count = np.bincount(inverse, minlength=num_cells).astype(np.float64)
    mean = np.stack([np.bincount(inverse, xyz[:, a], num_cells) for a in range(3)], axis=1) / count[:, None]
    centred = xyz - mean[inverse]
    cov = np.empty((num_cells, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            cov[:, a, b] = cov[:, b, a] = np.bincount(inverse, centred[:, a] * centred[:, b], num_cells) / count
    eigenvalues, eigenvectors = np.linalg.eigh(cov)               # ascending: l3, l2, l1
    l3, l2, l1 = np.clip(eigenvalues, 0.0, None).T
    spread = l1 > 1e-12
    safe = np.where(spread, l1, 1.0)
    shape = np.stack([(l1 - l2) / safe, (l2 - l3) / safe, l3 / safe], axis=1) * spread[:, None]
    verticality = np.abs(eigenvectors[:, 2, 0]) * spread             # z component of the l3 eigenvector
    density = np.log1p(count) / np.log1p(DENSITY_REF)
    per_cell = np.concatenate([shape, verticality[:, None], density[:, None]], axis=1)
    return per_cell[inverse]


def height_above_ground(xyz, ground_cell):
    """(N,) z minus the lowest z of the points in the same ground_cell x ground_cell column."""
    inverse = cell_index(xyz[:, 0:2], ground_cell)
    ground = np.full(int(inverse.max()) + 1, np.inf)
    np.minimum.at(ground, inverse, xyz[:, 2])
    return xyz[:, 2] - ground[inverse]


def geometric_descriptor(points, radii, ground_cell, range_scale, intensity_column):
    """(N, 5 len(radii) + 3) float64 descriptor (module doc), components in about [-1, 1]."""
    xyz = np.asarray(points[:, 0:3], dtype=np.float64)
    columns = [2.0 * cell_shape_features(xyz, radius) - 1.0 for radius in radii]
    height = np.tanh(height_above_ground(xyz, ground_cell) / 2.0)
    distance = np.tanh(np.hypot(xyz[:, 0], xyz[:, 1]) / range_scale)
    intensity = np.minimum(np.log1p(np.maximum(points[:, intensity_column].astype(np.float64), 0.0)) / np.log(256.0),
                           2.0)
    columns.append(np.stack([2.0 * height - 1.0, 2.0 * distance - 1.0, intensity - 1.0], axis=1))
    return np.concatenate(columns, axis=1)


def projection_matrix(num_inputs, num_features, seed):
    """(num_inputs, num_features) fixed random projection: standard normals / sqrt(num_inputs) from `seed`."""
    return np.random.default_rng(seed).standard_normal((num_inputs, num_features)) / np.sqrt(num_inputs)


class GeometricTeacher(Teacher):
    """Label-free geometric teacher (module doc). `__call__(points (N, >= 4), point_labels ignored)` ->
    (N, NUM_FEATURES) float32 unit rows."""

    name = 'geometric'
    needs_point_labels = False
    CONFIG_SCHEMA = Teacher.CONFIG_SCHEMA.extend('DATA_CONFIG.TEACHER_FEATURES (geometric)', {
        'SEED': 0, 'RADII': [0.5, 1.0, 2.0], 'GROUND_CELL': 4.0, 'RANGE_SCALE': 50.0, 'INTENSITY_COLUMN': 3})

    def __init__(self, teacher_cfg):
        get = lambda key: self.CONFIG_SCHEMA.get(teacher_cfg or {}, key)  # noqa: E731
        self.num_features = int(get('NUM_FEATURES'))
        self.seed = int(get('SEED'))
        self.radii = [float(r) for r in get('RADII')]
        self.ground_cell = float(get('GROUND_CELL'))
        self.range_scale = float(get('RANGE_SCALE'))
        self.intensity_column = int(get('INTENSITY_COLUMN'))
        if self.num_features < 1 or self.seed < 0:
            raise ConfigError(f'{SECTION}: NUM_FEATURES ({self.num_features}) must be >= 1 and SEED ({self.seed}) '
                              '>= 0')
        if not self.radii or min(self.radii) <= 0 or self.ground_cell <= 0 or self.range_scale <= 0:
            raise ConfigError(f'{SECTION}: RADII {self.radii} (a non-empty list), GROUND_CELL ({self.ground_cell}) '
                              f'and RANGE_SCALE ({self.range_scale}) must be > 0 (metres)')
        self.projection = projection_matrix(5 * len(self.radii) + 3, self.num_features, self.seed)

    def __call__(self, points, point_labels=None):
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] <= self.intensity_column:
            raise ValueError(f'geometric teacher: points must be (N, > {self.intensity_column}) with the intensity '
                             f'in column {SECTION}.INTENSITY_COLUMN = {self.intensity_column}, got {points.shape}')
        if len(points) == 0:
            return np.zeros((0, self.num_features), dtype=np.float32)
        descriptor = geometric_descriptor(points, self.radii, self.ground_cell, self.range_scale,
                                          self.intensity_column)
        features = descriptor @ self.projection
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), NORMALIZE_EPS)
        return features.astype(np.float32)
