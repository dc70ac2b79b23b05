"""The teacher protocol: a per-point feature extractor run offline, once per raw LiDAR file (spec §1.4, D-SEAL-2, D2).

A teacher maps the points of ONE raw LiDAR file, exactly as the dataset loads them (no augmentation, file order), to
one feature row per point. `teachers/prepare.py` runs it per part (key frame, each sweep) and stores the rows with
`feature_store`; the dataset appends them to `points` as trailing columns, so augmentation, range filtering and
shuffling (which index rows and only move columns 0:3) keep them aligned by construction.

Attributes every teacher has (the `seal_minkunet` teacher implements the same ones):
    name                str, the registry name (`TEACHER_FEATURES.NAME`); recorded in the feature store manifest
    num_features        int F, the width of every returned feature row
    needs_point_labels  bool, True when `__call__` needs the per-point semantic labels of the file (synthetic teachers)

Call:
    teacher(points, point_labels) -> (N, F) float32
        points        (N, >= 4) float32 [x, y, z, intensity, ...] of one LiDAR file as loaded (nuScenes: key frame or
                      one sweep in the key-frame LiDAR frame, ego points of sweeps removed, 5th column time_lag;
                      Waymo: the processed frame before the NLZ filter and tanh)
        point_labels  (N,) integer labels of the same rows, or None when `needs_point_labels` is False
    The result must not depend on the row order beyond following it (row i of the output belongs to point i).
"""
import numpy as np

from ...config_schema import REQUIRED, Schema

# The keys of `DATA_CONFIG.TEACHER_FEATURES` every teacher has: the dataset and the feature store read these (through
# this schema), each teacher class extends it with its own keys (its CONFIG_SCHEMA, picked by NAME when validating).
TEACHER_FEATURES_SCHEMA = Schema('DATA_CONFIG.TEACHER_FEATURES', {
    'NAME': REQUIRED,                   # synthetic_semantic | seal_minkunet
    'NUM_FEATURES': REQUIRED,           # the dataset needs the width before any file is read
    'ENABLED': True,
    'FEATURE_DIR': None,                # relative to the dataset root; None: teacher_features/<NAME>
})


class Teacher:
    """Documented base class of the protocol above; subclasses set the three attributes and implement `__call__`."""

    CONFIG_SCHEMA = TEACHER_FEATURES_SCHEMA
    name = 'teacher'
    num_features = 0
    needs_point_labels = False

    def __call__(self, points, point_labels=None):
        """(N, >= 4) float32 points of one file [+ (N,) labels] -> (N, num_features) float32 features."""
        raise NotImplementedError


def check_teacher_output(teacher, features, num_points, source):
    """Validate one teacher result: (num_points, teacher.num_features), finite; returns it as float32.
    `source` (e.g. the LiDAR file) is named in the error."""
    features = np.asarray(features)
    expected = (num_points, int(teacher.num_features))
    if features.shape != expected:
        raise ValueError(f'teacher {teacher.name!r} returned features of shape {features.shape} for {source}; '
                         f'expected {expected} (one row of NUM_FEATURES per input point)')
    features = features.astype(np.float32, copy=False)
    if not np.isfinite(features).all():
        raise ValueError(f'teacher {teacher.name!r} returned non-finite features for {source}')
    return features
