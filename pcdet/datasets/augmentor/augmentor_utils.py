"""Global (whole-scene) transforms as small pure functions: each takes the transform parameter explicitly and returns
NEW arrays (inputs are never modified, so cached infos cannot be corrupted).

Arguments
    points: (N, 3 + C) array; only x, y, z (columns 0:3) change, extra columns are carried through untouched.
    boxes:  (M, 7 + K) `[x, y, z, dx, dy, dz, heading, (vx, vy), ...]` or None (self-supervised samples carry no
            boxes); columns beyond the velocity are carried through untouched.
Returns `(points, boxes)`.

Velocity rule: a box's velocity is transformed by the linear part of the transform applied to its centre, so that
`centre + velocity * dt` stays consistent (flip and rotation: as upstream; scaling multiplies velocities by the scale
factor as both OpenPCDet and DSVT do; translation leaves velocities unchanged).
"""
import numpy as np

FLIP_AXES = ('x', 'y')


def _has_velocity(boxes):
    return boxes is not None and boxes.shape[1] >= 9


def _copy(points, boxes):
    return points.copy(), None if boxes is None else boxes.copy()


def flip_points_and_boxes(points, boxes, axis):
    """Mirror the scene. `axis='x'`: across the x axis (y -> -y, heading -> -heading, vy -> -vy).
    `axis='y'`: across the y axis (x -> -x, heading -> -(heading + pi), vx -> -vx)."""
    if axis not in FLIP_AXES:
        raise ValueError(f'flip axis must be one of {FLIP_AXES}, got {axis!r}')
    points, boxes = _copy(points, boxes)
    mirrored = 1 if axis == 'x' else 0
    points[:, mirrored] = -points[:, mirrored]
    if boxes is not None:
        boxes[:, mirrored] = -boxes[:, mirrored]
        boxes[:, 6] = -boxes[:, 6] if axis == 'x' else -(boxes[:, 6] + np.pi)
        if _has_velocity(boxes):
            boxes[:, 7 + mirrored] = -boxes[:, 7 + mirrored]
    return points, boxes


def _rotate_xy(xy, angle):
    """CCW rotation of (K, 2) vectors: x' = x c - y s, y' = x s + y c (computed in float64, dtype kept)."""
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    return np.stack((x * cos_a - y * sin_a, x * sin_a + y * cos_a), axis=1).astype(xy.dtype)


def rotate_points_and_boxes(points, boxes, angle):
    """Rotate the scene CCW about +z by `angle` (radians): points, box centres, headings (+angle), velocities."""
    points, boxes = _copy(points, boxes)
    points[:, 0:2] = _rotate_xy(points[:, 0:2], angle)
    if boxes is not None:
        boxes[:, 0:2] = _rotate_xy(boxes[:, 0:2], angle)
        boxes[:, 6] += angle
        if _has_velocity(boxes):
            boxes[:, 7:9] = _rotate_xy(boxes[:, 7:9], angle)
    return points, boxes


def scale_points_and_boxes(points, boxes, scale):
    """Scale the scene about the origin: point xyz, box centres and sizes, and velocities (upstream rule)."""
    points, boxes = _copy(points, boxes)
    points[:, 0:3] *= scale
    if boxes is not None:
        boxes[:, 0:6] *= scale
        if _has_velocity(boxes):
            boxes[:, 7:9] *= scale
    return points, boxes


def translate_points_and_boxes(points, boxes, offset):
    """Shift point xyz and box centres by `offset` (3,); sizes, headings and velocities are unchanged."""
    points, boxes = _copy(points, boxes)
    offset = np.asarray(offset).reshape(3)
    points[:, 0:3] += offset.astype(points.dtype)
    if boxes is not None:
        boxes[:, 0:3] += offset.astype(boxes.dtype)
    return points, boxes
