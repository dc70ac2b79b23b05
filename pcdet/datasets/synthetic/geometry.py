"""Small rigid-body and bird's-eye-view (BEV) helpers used by the scene simulator and the dataset writers.

Conventions: right-handed frames, metres, radians; yaw is counter-clockwise about +z from +x.
Poses are 4x4 homogeneous matrices `target_from_source` (column vectors: `p_target = T @ p_source`).
Quaternions are `[w, x, y, z]` (the nuScenes / pyquaternion order). Pure numpy, no state.
"""
import numpy as np


def rotation_matrix_from_rpy(roll, pitch, yaw):
    """3x3 rotation `Rz(yaw) @ Ry(pitch) @ Rx(roll)` (intrinsic z-y'-x'')."""
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    rot_y = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rot_z = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    return rot_z @ rot_y @ rot_x


def quaternion_from_rpy(roll, pitch, yaw):
    """Unit quaternion `[w, x, y, z]` of `rotation_matrix_from_rpy(roll, pitch, yaw)`."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return np.array([
        cy * cp * cr + sy * sp * sr,
        cy * cp * sr - sy * sp * cr,
        cy * sp * cr + sy * cp * sr,
        sy * cp * cr - cy * sp * sr,
    ])


def quaternion_from_matrix(rotation):
    """Unit quaternion `[w, x, y, z]` (w >= 0) of a 3x3 rotation matrix (Shepperd's method: divides by the
    largest of the four candidate components, so it is accurate for every rotation)."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(r)
    candidates = [trace, r[0, 0], r[1, 1], r[2, 2]]
    k = int(np.argmax(candidates))
    if k == 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i, j, m = k - 1, k % 3, (k + 1) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[m, m])
        q = np.zeros(4)
        q[0] = (r[m, j] - r[j, m]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + m] = (r[m, i] + r[i, m]) / s
    q = np.asarray(q, dtype=np.float64)
    return q if q[0] >= 0 else -q


def yaw_quaternion(yaw):
    """Quaternion `[w, x, y, z]` of a pure rotation by `yaw` about +z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def pose_matrix(rotation, translation):
    """4x4 pose from a 3x3 rotation and a 3-vector translation."""
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = translation
    return pose


def invert_pose(pose):
    """Inverse of a rigid 4x4 pose (uses R^T instead of a general inverse)."""
    inverse = np.eye(4)
    inverse[:3, :3] = pose[:3, :3].T
    inverse[:3, 3] = -pose[:3, :3].T @ pose[:3, 3]
    return inverse


def transform_points(pose, points):
    """Apply a 4x4 pose to (N, 3) points -> (N, 3)."""
    return points @ pose[:3, :3].T + pose[:3, 3]


def bev_corners(rects):
    """Corners of BEV rectangles.

    Args:
        rects: (..., 5) `[x, y, dx, dy, yaw]`: centre, full extent along / across the heading, heading.
    Returns:
        (..., 4, 2) corners, counter-clockwise starting at front-left.
    """
    half = np.stack([rects[..., 2] / 2, rects[..., 3] / 2], axis=-1)[..., None, :]
    signs = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    local = half * signs
    cos, sin = np.cos(rects[..., 4])[..., None], np.sin(rects[..., 4])[..., None]
    x = local[..., 0] * cos - local[..., 1] * sin + rects[..., 0:1]
    y = local[..., 0] * sin + local[..., 1] * cos + rects[..., 1:2]
    return np.stack([x, y], axis=-1)


def bev_rectangles_overlap(rects_a, rects_b):
    """Pairwise overlap test of oriented rectangles by the separating axis theorem.

    Args:
        rects_a, rects_b: (K, 5) `[x, y, dx, dy, yaw]`, compared row by row.
    Returns:
        (K,) bool, True where the two rectangles intersect (touching counts as overlap).
    """
    corners_a, corners_b = bev_corners(rects_a), bev_corners(rects_b)
    axes = np.concatenate([_rectangle_axes(rects_a[:, 4]), _rectangle_axes(rects_b[:, 4])], axis=1)  # (K, 4, 2)
    proj_a = np.einsum('kad,kcd->kac', axes, corners_a)  # (K, 4 axes, 4 corners)
    proj_b = np.einsum('kad,kcd->kac', axes, corners_b)
    separated = (proj_a.max(-1) < proj_b.min(-1)) | (proj_b.max(-1) < proj_a.min(-1))
    return ~separated.any(axis=1)


def _rectangle_axes(yaw):
    """(K,) yaw -> (K, 2, 2) the two unit edge normals of each rectangle."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    return np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], axis=1)


def min_distance_points_to_rectangles(points, rects):
    """Smallest distance from any of `points` to each rectangle (0 when a point is inside).

    Args:
        points: (P, 2) BEV points. rects: (T, 5) `[x, y, dx, dy, yaw]`.
    Returns:
        (T,) distances in metres.
    """
    offset = points[None, :, :] - rects[:, None, 0:2]  # (T, P, 2)
    cos, sin = np.cos(rects[:, 4])[:, None], np.sin(rects[:, 4])[:, None]
    along = np.abs(offset[..., 0] * cos + offset[..., 1] * sin) - rects[:, None, 2] / 2
    across = np.abs(-offset[..., 0] * sin + offset[..., 1] * cos) - rects[:, None, 3] / 2
    return np.hypot(np.maximum(along, 0.0), np.maximum(across, 0.0)).min(axis=1)
