"""TransFusion box coder and dense Gaussian heatmap targets (spec seg_occ_transfusion.md §C.5-§C.6).

Box code (order = HEAD_ORDER `center, height, dim, rot[, vel]`, 8 or 10 values):
`[(x - x_min) / (s v_x), (y - y_min) / (s v_y), h, log dx, log dy, log dz, sin t, cos t, (vx, vy)]` with
`h = z` (OpenPCDet) or `h = z + dz / 2` (DSVT repo, `height_is_top=True`); decoding inverts it
(`t = atan2(sin, cos)`, DSVT `z = h - dz / 2`).

Heatmap (per GT box with dx, dy > 0): `r = max(min_radius, int(gaussian_radius(dy/(v_y s), dx/(v_x s), overlap)))`,
centre `((x - x_min)/(v_x s), (y - y_min)/(v_y s))` truncated to int (no clamping, unlike CenterHead), a Gaussian
`exp(-(dx^2 + dy^2) / (2 sigma^2))`, sigma = (2r + 1) / 6, max-merged into the GT class channel. The map is
`(K, Y, X)`; the DSVT layout is its transpose `(K, X, Y)`. Drawn for all objects at once
(`centernet_utils.draw_gaussians_to_heatmap`, equal to upstream's per-object loop).
"""
import torch

from ...model_utils import centernet_utils


class TransFusionBoxCoder:
    """Encode GT boxes to TransFusion regression targets and decode predictions back to boxes."""

    def __init__(self, point_cloud_range, voxel_size, feature_map_stride, code_size=10, height_is_top=False):
        if code_size not in (8, 10):
            raise ValueError(f'TransFusion box code has 8 (no velocity) or 10 values, got {code_size}')
        self.pc_min = [float(point_cloud_range[0]), float(point_cloud_range[1])]
        self.cell = [float(feature_map_stride) * float(voxel_size[0]), float(feature_map_stride) * float(voxel_size[1])]
        self.code_size = code_size
        self.height_is_top = bool(height_is_top)

    def encode(self, boxes):
        """boxes (M, 7|9) `[x, y, z, dx, dy, dz, t, (vx, vy)]` -> (M, code_size)."""
        targets = boxes.new_zeros((boxes.shape[0], self.code_size))
        targets[:, 0] = (boxes[:, 0] - self.pc_min[0]) / self.cell[0]
        targets[:, 1] = (boxes[:, 1] - self.pc_min[1]) / self.cell[1]
        targets[:, 2] = boxes[:, 2] + 0.5 * boxes[:, 5] if self.height_is_top else boxes[:, 2]
        targets[:, 3:6] = boxes[:, 3:6].log()
        targets[:, 6] = torch.sin(boxes[:, 6])
        targets[:, 7] = torch.cos(boxes[:, 6])
        if self.code_size == 10:
            if boxes.shape[1] < 9:
                raise ValueError('a velocity head needs gt_boxes with velocity (B, M, 10 = 9 box values + label)')
            targets[:, 8:10] = boxes[:, 7:9]
        return targets

    def decode(self, center, height, dim, rot, vel=None):
        """Prediction tensors (B, c, P) (center in feature-map pixels, dim log sizes, rot (sin, cos)) ->
        boxes (B, P, 7|9)."""
        x = center[:, 0:1] * self.cell[0] + self.pc_min[0]
        y = center[:, 1:2] * self.cell[1] + self.pc_min[1]
        dims = dim.exp()
        z = height - 0.5 * dims[:, 2:3] if self.height_is_top else height
        heading = torch.atan2(rot[:, 0:1], rot[:, 1:2])
        parts = [x, y, z, dims, heading] + ([vel] if vel is not None else [])
        return torch.cat(parts, dim=1).permute(0, 2, 1)

    def decode_codes(self, codes):
        """Encoded codes (M, code_size) -> boxes (M, 7|9) (inverse of `encode`)."""
        t = codes.t()[None]
        vel = t[:, 8:10] if self.code_size == 10 else None
        return self.decode(t[:, 0:2], t[:, 2:3], t[:, 3:6], t[:, 6:8], vel)[0]


def heatmap_targets(gt_boxes, gt_labels, num_classes, feature_map_size, feature_map_stride, point_cloud_range,
                    voxel_size, gaussian_overlap=0.1, min_radius=2, transpose=False):
    """Dense Gaussian heatmap of one sample.

    Args:
        gt_boxes: (M, 7+) boxes (padding rows removed). gt_labels: (M,) long 0-based classes.
        feature_map_size: (X, Y) cells. transpose: return the DSVT layout (K, X, Y).
    Returns:
        (K, Y, X) float heatmap on `gt_boxes.device` ((K, X, Y) with `transpose`).
    """
    size_x, size_y = int(feature_map_size[0]), int(feature_map_size[1])
    heatmap = gt_boxes.new_zeros((num_classes, size_y, size_x))
    if gt_boxes.shape[0] > 0:
        width = gt_boxes[:, 3] / voxel_size[0] / feature_map_stride
        length = gt_boxes[:, 4] / voxel_size[1] / feature_map_stride
        valid = (width > 0) & (length > 0)
        labels = gt_labels.long()
        if labels[valid].numel() and (labels[valid].min() < 0 or labels[valid].max() >= num_classes):
            raise ValueError(f'gt labels must be in 1..{num_classes}, got {sorted(set((labels + 1).tolist()))}')
        radius = centernet_utils.gaussian_radius(length.clamp(min=0), width.clamp(min=0), min_overlap=gaussian_overlap)
        radius = torch.clamp_min(torch.nan_to_num(radius, nan=0.0).int(), min=min_radius)
        coor_x = (gt_boxes[:, 0] - point_cloud_range[0]) / voxel_size[0] / feature_map_stride
        coor_y = (gt_boxes[:, 1] - point_cloud_range[1]) / voxel_size[1] / feature_map_stride
        center_int = torch.stack((coor_x, coor_y), dim=-1).to(torch.int32)  # truncation toward zero, as upstream
        centernet_utils.draw_gaussians_to_heatmap(heatmap, labels[valid], center_int[valid], radius[valid])
    return heatmap.transpose(1, 2).contiguous() if transpose else heatmap
