"""The teacher protocol: a per-point feature extractor run offline, once per raw LiDAR file (spec §1.4, D-SEAL-2, D2).

A teacher maps the points of ONE raw LiDAR file, exactly as the dataset loads them (no augmentation, file order), to
one feature row per point. `teachers/prepare.py` runs it per part (key frame, each sweep) and stores the rows with
`feature_store`; the dataset appends them to `points` as trailing columns, so augmentation, range filtering and
shuffling (which index rows and only move columns 0:3) keep them aligned by construction.

Attributes every teacher has (the `seal_minkunet` teacher implements the same ones):
    name                str, the registry name (`TEACHER_FEATURES.NAME`); recorded in the feature store manifest
    num_features        int F, the width of every returned feature row
    needs_point_labels  bool, True when `__call__` needs the per-point semantic labels of the file (synthetic teachers)
    needs_cameras       bool (default False), True when `__call__` needs the key frame's camera images (image teachers)
    extra_point_arrays  tuple of names (default ()) of extra per-point integer arrays the teacher returns beside the
                        features (e.g. 'superpixel_ids'); the feature store keeps them next to the features

Call:
    teacher(points, point_labels) -> (N, F) float32
        points        (N, >= 4) float32 [x, y, z, intensity, ...] of one LiDAR file as loaded (nuScenes: key frame or
                      one sweep in the key-frame LiDAR frame, ego points of sweeps removed, 5th column time_lag;
                      Waymo: the processed frame before the NLZ filter and tanh)
        point_labels  (N,) integer labels of the same rows, or None when `needs_point_labels` is False
    The result must not depend on the row order beyond following it (row i of the output belongs to point i).

Camera teachers (`needs_cameras`): `teacher.encode_cameras(views)` runs once per key frame on its
[nuscenes.cameras.CameraView] (the 2-D work), then every part of the frame (key frame and sweeps, all in the
key-frame LiDAR frame) is `teacher(points, point_labels, cameras=<that result>)`.
Teachers with `extra_point_arrays` return `(features, {name: (N,) integer array})` instead of the bare features.
"""
import numpy as np

from ...config_schema import REQUIRED, Schema

# The keys of `DATA_CONFIG.TEACHER_FEATURES` every teacher has: the dataset and the feature store read these (through
# this schema), each teacher class extends it with its own keys (its CONFIG_SCHEMA, picked by NAME when validating).
TEACHER_FEATURES_SCHEMA = Schema('DATA_CONFIG.TEACHER_FEATURES', {
    'NAME': REQUIRED,                   # a name of KNOWN_TEACHERS (teachers/__init__.py)
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
    needs_cameras = False
    extra_point_arrays = ()

    def __call__(self, points, point_labels=None):
        """(N, >= 4) float32 points of one file [+ (N,) labels] -> (N, num_features) float32 features."""
        raise NotImplementedError


def split_teacher_output(teacher, output, num_points, source):
    """(features (N, F) float32, {name: (N,) int32}) of one teacher call: the bare features, or the pair returned by
    teachers with `extra_point_arrays` (every declared array present, one integer per point; errors name `source`)."""
    names = tuple(getattr(teacher, 'extra_point_arrays', ()))
    if not names:
        return check_teacher_output(teacher, output, num_points, source), {}
    features, extras = output
    arrays = {}
    for name in names:
        value = np.asarray(extras.get(name) if isinstance(extras, dict) else None)
        if value.shape != (num_points,) or value.dtype.kind not in 'iu':
            raise ValueError(f'teacher {teacher.name!r} returned {name} of shape {value.shape} ({value.dtype}) for '
                             f'{source}; expected ({num_points},) integers')
        arrays[name] = value.astype(np.int32)
    return check_teacher_output(teacher, features, num_points, source), arrays


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
