"""Bird's-eye-view pictures of a frame: points coloured by height, GT boxes and predictions with headings.

Inputs follow the unified LiDAR convention (x forward, y left, boxes `[x, y, z, dx, dy, dz, heading, ...]`).
The picture is drawn with x to the right and y up, so what is to the vehicle's left appears above it.
Files are written atomically (temp name + rename).
"""
import io

import numpy as np

from . import box_utils
from .file_utils import atomic_save_bytes

GT_COLOR = '#1a9850'
PRED_COLOR = '#d73027'


def _draw_boxes(axis, boxes, color, labels=None, linestyle='-'):
    """Draw (N, 7+) boxes as closed footprints with a line from the centre to the front edge (heading)."""
    if boxes is None or len(boxes) == 0:
        return
    boxes = np.asarray(boxes, dtype=np.float32)
    corners = box_utils.boxes_bev_corners(boxes[:, :7])  # (N, 4, 2)
    for index, footprint in enumerate(np.asarray(corners)):
        closed = np.vstack([footprint, footprint[:1]])
        # Boxes go under the points: LiDAR hits lie on the visible faces, i.e. on the BEV outline itself.
        axis.plot(closed[:, 0], closed[:, 1], color=color, linewidth=0.8, linestyle=linestyle, zorder=1)
        center = boxes[index, :2]
        front = center + 0.5 * boxes[index, 3] * np.array([np.cos(boxes[index, 6]), np.sin(boxes[index, 6])])
        axis.plot([center[0], front[0]], [center[1], front[1]], color=color, linewidth=0.8, zorder=1)
        if labels is not None:
            axis.text(footprint[:, 0].max(), footprint[:, 1].max(), labels[index], color=color, fontsize=5,
                      clip_on=True)


def _box_labels(names=None, scores=None, count=0):
    if names is None and scores is None:
        return None
    labels = []
    for index in range(count):
        text = str(names[index]) if names is not None else ''
        if scores is not None:
            text = f'{text} {float(scores[index]):.2f}'.strip()
        labels.append(text)
    return labels


def render_bev(points, gt_boxes=None, gt_names=None, pred_boxes=None, pred_scores=None, pred_names=None,
               point_cloud_range=None, title=None, score_threshold=0.0, max_points=200000, dpi=150):
    """Render a BEV picture and return it as PNG bytes.

    Args:
        points: (N, 3+) points in the LiDAR frame.
        gt_boxes: (M, 7+) ground-truth boxes (green, solid) and optional `gt_names` (M,).
        pred_boxes: (K, 7+) predictions (red, dashed) with optional `pred_scores` (K,) and `pred_names` (K,);
            predictions scoring below `score_threshold` are not drawn.
        point_cloud_range: [x_min, y_min, z_min, x_max, y_max, z_max] for the axes and the colour scale;
            defaults to the extent of the points.
    """
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f'points must be (N, 3+) in the LiDAR frame, got shape {points.shape}')
    if len(points) > max_points:  # keep the picture light; a fixed stride keeps it deterministic
        points = points[:: int(np.ceil(len(points) / max_points))]
    if point_cloud_range is None:
        low = points[:, :3].min(axis=0) if len(points) else np.zeros(3)
        high = points[:, :3].max(axis=0) if len(points) else np.ones(3)
        point_cloud_range = np.concatenate([low, high])
    x_min, y_min, z_min, x_max, y_max, z_max = [float(v) for v in point_cloud_range]

    figure, axis = plt.subplots(figsize=(8, 8 * (y_max - y_min) / max(x_max - x_min, 1e-6)))
    axis.scatter(points[:, 0], points[:, 1], c=np.clip(points[:, 2], z_min, z_max), cmap='viridis',
                 vmin=z_min, vmax=z_max, s=0.3, linewidths=0, rasterized=True, zorder=2)
    gt_count = 0 if gt_boxes is None else len(gt_boxes)
    _draw_boxes(axis, gt_boxes, GT_COLOR, _box_labels(gt_names, None, gt_count))
    if pred_boxes is not None and len(pred_boxes) > 0:
        keep = np.ones(len(pred_boxes), dtype=bool)
        if pred_scores is not None:
            keep = np.asarray(pred_scores) >= score_threshold
        kept_names = None if pred_names is None else np.asarray(pred_names)[keep]
        kept_scores = None if pred_scores is None else np.asarray(pred_scores)[keep]
        _draw_boxes(axis, np.asarray(pred_boxes)[keep], PRED_COLOR,
                    _box_labels(kept_names, kept_scores, int(keep.sum())), linestyle='--')
    axis.plot([0], [0], marker='^', color='black', markersize=4)  # the sensor
    axis.set_xlim(x_min, x_max)
    axis.set_ylim(y_min, y_max)
    axis.set_aspect('equal')
    axis.set_xlabel('x (m, forward)')
    axis.set_ylabel('y (m, left)')
    legend = [f'GT ({gt_count})']
    if pred_boxes is not None:
        legend.append(f'pred ({len(pred_boxes)})')
    axis.set_title(title or ', '.join(legend), fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=dpi, bbox_inches='tight')
    plt.close(figure)
    return buffer.getvalue()


def save_bev_png(path, points, **kwargs):
    """Render with `render_bev(points, **kwargs)` and write the PNG to `path` atomically; returns `path`."""
    atomic_save_bytes(render_bev(points, **kwargs), path)
    return path
