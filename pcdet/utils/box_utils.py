"""Box geometry helpers with OpenPCDet's names (`pcdet.utils.box_utils`).

Boxes are `[x, y, z, dx, dy, dz, heading, ...]`: (x, y, z) the geometric centre, heading CCW from +x (spec §0).
Functions that took numpy upstream accept numpy arrays or torch tensors and return the kind they were given.
"""
import numpy as np
import torch

from ..ops.roiaware_pool3d import roiaware_pool3d_utils
from . import common_utils

# Corner template in half extents: bottom face then top face, each starting at front-left (+x, +y) and going
# clockwise seen from above (spec §0).
CORNER_TEMPLATE = (
    (1, 1, -1), (1, -1, -1), (-1, -1, -1), (-1, 1, -1),
    (1, 1, 1), (1, -1, 1), (-1, -1, 1), (-1, 1, 1),
)


def _check_boxes(boxes3d, name='boxes3d', min_columns=7):
    if boxes3d.ndim != 2 or boxes3d.shape[1] < min_columns:
        raise ValueError(f'{name} must have shape (N, {min_columns}+) [x, y, z, dx, dy, dz, heading, ...], '
                         f'got {tuple(boxes3d.shape)}')


def boxes_to_corners_3d(boxes3d):
    """Eight corners of each box.

    Args:
        boxes3d: (N, 7+) numpy array or tensor.
    Returns:
        (N, 8, 3) corners of the same kind, in the order of `CORNER_TEMPLATE`.
    """
    _check_boxes(boxes3d)
    boxes3d, is_numpy = common_utils.check_numpy_to_torch(boxes3d)
    template = boxes3d.new_tensor(CORNER_TEMPLATE) / 2
    corners = boxes3d[:, None, 3:6] * template[None, :, :]
    corners = common_utils.rotate_points_along_z(corners, boxes3d[:, 6]) + boxes3d[:, None, 0:3]
    return corners.numpy() if is_numpy else corners


def boxes_bev_corners(boxes):
    """BEV footprint corners (N, 7+) -> (N, 4, 2), same kind; equal to `boxes_to_corners_3d(boxes)[:, 0:4, 0:2]`
    (front-left, front-right, rear-right, rear-left: clockwise seen from above)."""
    _check_boxes(boxes, 'boxes')
    boxes, is_numpy = common_utils.check_numpy_to_torch(boxes)
    half = boxes[:, None, 3:5] * boxes.new_tensor(CORNER_TEMPLATE[0:4])[None, :, 0:2] / 2
    cos, sin = torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7])
    x = half[..., 0] * cos - half[..., 1] * sin + boxes[:, 0:1]
    y = half[..., 0] * sin + half[..., 1] * cos + boxes[:, 1:2]
    corners = torch.stack((x, y), dim=-1)
    return corners.numpy() if is_numpy else corners


def mask_boxes_outside_range_numpy(boxes, limit_range, min_num_corners=1, use_center_to_filter=True):
    """Boolean (N,) mask of boxes to keep.

    Args:
        boxes: (N, 7+) numpy array. limit_range: [x_min, y_min, z_min, x_max, y_max, z_max].
        min_num_corners: with `use_center_to_filter=False`, keep a box when at least this many of its 8 corners
            lie inside the xy range (z is not checked, as upstream).
        use_center_to_filter: keep a box when its centre lies inside the 3D range (bounds inclusive).
    """
    _check_boxes(boxes, 'boxes')
    limit_range = np.asarray(limit_range)
    boxes = boxes[:, 0:7]
    if use_center_to_filter:
        centres = boxes[:, 0:3]
        return ((centres >= limit_range[0:3]) & (centres <= limit_range[3:6])).all(axis=-1)
    corners = boxes_to_corners_3d(boxes)[:, :, 0:2]
    inside = ((corners >= limit_range[0:2]) & (corners <= limit_range[3:5])).all(axis=2)
    return inside.sum(axis=1) >= min_num_corners


def remove_points_in_boxes3d(points, boxes3d):
    """Drop points inside any box (1 cm xy margin of `points_in_boxes_cpu`).

    Args:
        points: (P, 3+) numpy array or tensor. boxes3d: (N, 7+) numpy array or tensor.
    Returns:
        (P', 3+) remaining points, same kind as `points`.
    """
    inside = roiaware_pool3d_utils.points_in_boxes_cpu(points[:, 0:3], boxes3d)  # (N, P), same kind as points
    # Index the original array so callers keep their dtype (e.g. float64 numpy points stay float64).
    return points[inside.sum(axis=0) == 0]


def enlarge_box3d(boxes3d, extra_width=(0, 0, 0)):
    """Boxes with `extra_width` (3,) added to (dx, dy, dz); same kind and dtype as the input.

    Upstream converted numpy input to a tensor and returned the tensor; here numpy stays numpy.
    """
    _check_boxes(boxes3d)
    if isinstance(boxes3d, np.ndarray):
        large = boxes3d.copy()
        large[:, 3:6] += np.asarray(extra_width, dtype=boxes3d.dtype)[None, :]
        return large
    large = boxes3d.clone()
    large[:, 3:6] += boxes3d.new_tensor(extra_width)[None, :]
    return large


def boxes3d_lidar_to_aligned_bev_boxes(boxes3d):
    """Nearest axis-aligned BEV rectangle `[x1, y1, x2, y2]` (N, 4): headings within 45 deg of the y axis swap dx/dy.

    Args:
        boxes3d: (N, 7+) tensor.
    """
    rot_angle = common_utils.limit_period(boxes3d[:, 6], offset=0.5, period=np.pi).abs()
    choose_dims = torch.where(rot_angle[:, None] < np.pi / 4, boxes3d[:, [3, 4]], boxes3d[:, [4, 3]])
    return torch.cat((boxes3d[:, 0:2] - choose_dims / 2, boxes3d[:, 0:2] + choose_dims / 2), dim=1)


def boxes_iou_normal(boxes_a, boxes_b):
    """IoU of axis-aligned rectangles `[x1, y1, x2, y2]`: (N, 4), (M, 4) -> (N, M), union clamped at 1e-6."""
    if boxes_a.shape[-1] != 4 or boxes_b.shape[-1] != 4:
        raise ValueError(f'boxes_a and boxes_b must have shape (N, 4) [x1, y1, x2, y2], '
                         f'got {tuple(boxes_a.shape)} and {tuple(boxes_b.shape)}')
    low = torch.max(boxes_a[:, None, 0:2], boxes_b[None, :, 0:2])
    high = torch.min(boxes_a[:, None, 2:4], boxes_b[None, :, 2:4])
    intersection = (high - low).clamp(min=0).prod(dim=-1)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    return intersection / (area_a[:, None] + area_b[None, :] - intersection).clamp(min=1e-6)


def boxes3d_nearest_bev_iou(boxes_a, boxes_b):
    """Cheap IoU proxy for target assignment: IoU of the nearest axis-aligned BEV rectangles,
    (N, 7+), (M, 7+) -> (N, M)."""
    return boxes_iou_normal(boxes3d_lidar_to_aligned_bev_boxes(boxes_a), boxes3d_lidar_to_aligned_bev_boxes(boxes_b))
