"""CenterHead targets (`assign_target_of_single_head` in OpenPCDet), vectorised over objects with tensor ops.

For one sample and one head, with the head's GT boxes `(N, 7|9 + 1)` (last column: 1-based class index *within
the head*), a BEV feature map of `(W, H)` cells and `stride`:

* continuous centre `c = ((x, y) - pc_min) / voxel / stride`, clamped to `[0, size - 0.5]`; `c_int = int(c)`;
* `radius = max(min_radius, int(gaussian_radius(dx / voxel_x / stride, dy / voxel_y / stride, overlap)))`;
* a Gaussian with `sigma = (2r + 1) / 6` drawn at `c_int` into channel `label - 1` (element-wise max);
* for object slot k (first `num_max_objs` boxes, input order): `ind = c_int_y * W + c_int_x`, `mask = 1`,
  `target = [c - c_int, z, log dx, log dy, log dz, cos h, sin h, (vx, vy)]`;
* boxes with `dx <= 0` or `dy <= 0` keep their slot with `mask = 0` and draw nothing; `target_boxes_src` holds
  the raw GT rows (for the IoU losses).

Identical to upstream's per-object loop (tests compare heatmaps with `draw_gaussian_to_heatmap`), but runs on
the boxes' device without a Python loop over objects.
"""
import torch

from ...model_utils import centernet_utils


def assign_target_of_single_head(num_classes, gt_boxes, feature_map_size, feature_map_stride, point_cloud_range,
                                 voxel_size, num_max_objs=500, gaussian_overlap=0.1, min_radius=2):
    """Targets of one sample for one head.

    Args:
        num_classes: channels of this head's heatmap.
        gt_boxes: (N, C + 1) tensor `[x, y, z, dx, dy, dz, h, (vx, vy), label]`, label 1-based within the head
            (padding rows must be removed by the caller).
        feature_map_size: (W, H) = (x cells, y cells).
        feature_map_stride: BEV cells per feature-map cell.
        point_cloud_range: sequence of 6 floats. voxel_size: sequence of >= 2 floats.
    Returns:
        heatmap (num_classes, H, W), ret_boxes (num_max_objs, C + 1) (8 or 10 codes), inds (num_max_objs,) long,
        mask (num_max_objs,) long, ret_boxes_src (num_max_objs, C + 1). All on `gt_boxes.device`.
    """
    width, height = int(feature_map_size[0]), int(feature_map_size[1])
    heatmap = gt_boxes.new_zeros(num_classes, height, width)
    ret_boxes = gt_boxes.new_zeros((num_max_objs, gt_boxes.shape[-1]))  # 7|9 box values + 1 (cos, sin)
    inds = gt_boxes.new_zeros(num_max_objs).long()
    mask = gt_boxes.new_zeros(num_max_objs).long()
    ret_boxes_src = gt_boxes.new_zeros(num_max_objs, gt_boxes.shape[-1])

    gt_boxes = gt_boxes[:num_max_objs]
    num_obj = gt_boxes.shape[0]
    if num_obj == 0:
        return heatmap, ret_boxes, inds, mask, ret_boxes_src
    ret_boxes_src[:num_obj] = gt_boxes

    coord_x = (gt_boxes[:, 0] - point_cloud_range[0]) / voxel_size[0] / feature_map_stride
    coord_y = (gt_boxes[:, 1] - point_cloud_range[1]) / voxel_size[1] / feature_map_stride
    coord_x = torch.clamp(coord_x, min=0, max=width - 0.5)
    coord_y = torch.clamp(coord_y, min=0, max=height - 0.5)
    center = torch.stack((coord_x, coord_y), dim=-1)
    center_int = center.int()

    dx = gt_boxes[:, 3] / voxel_size[0] / feature_map_stride
    dy = gt_boxes[:, 4] / voxel_size[1] / feature_map_stride
    valid = (dx > 0) & (dy > 0)
    radius = centernet_utils.gaussian_radius(dx.clamp(min=0), dy.clamp(min=0), min_overlap=gaussian_overlap)
    radius = torch.clamp_min(torch.nan_to_num(radius, nan=0.0).int(), min=min_radius)

    idx = valid.nonzero()[:, 0]
    channels = (gt_boxes[idx, -1] - 1).long()
    if channels.numel() and (channels.min() < 0 or channels.max() >= num_classes):
        raise ValueError(f'gt_boxes labels must be in 1..{num_classes} for this head, got '
                         f'{sorted(set((channels + 1).tolist()))}')
    centernet_utils.draw_gaussians_to_heatmap(heatmap, channels, center_int[idx], radius[idx])

    inds[idx] = (center_int[idx, 1] * width + center_int[idx, 0]).long()
    mask[idx] = 1
    boxes = gt_boxes[idx]
    ret_boxes[idx, 0:2] = center[idx] - center_int[idx].float()
    ret_boxes[idx, 2] = boxes[:, 2]
    ret_boxes[idx, 3:6] = boxes[:, 3:6].log()
    ret_boxes[idx, 6] = torch.cos(boxes[:, 6])
    ret_boxes[idx, 7] = torch.sin(boxes[:, 6])
    if gt_boxes.shape[1] > 8:
        ret_boxes[idx, 8:] = boxes[:, 7:-1]
    return heatmap, ret_boxes, inds, mask, ret_boxes_src


def head_label_lookup(class_names, head_class_names, device):
    """(len(class_names) + 1,) long tensor mapping a global 1-based label to its 1-based index in the head (0 = not
    in this head; index 0 is padding)."""
    lookup = torch.zeros(len(class_names) + 1, dtype=torch.long)
    for local_idx, name in enumerate(head_class_names):
        lookup[class_names.index(name) + 1] = local_idx + 1
    return lookup.to(device)


def assign_targets(gt_boxes, class_names, class_names_each_head, feature_map_size, feature_map_stride,
                   point_cloud_range, voxel_size, num_max_objs=500, gaussian_overlap=0.1, min_radius=2):
    """Targets of a batch for every head.

    Args:
        gt_boxes: (B, M, C + 1) with global 1-based labels in the last column (0 = padding row).
        class_names: all class names (label l is `class_names[l - 1]`). class_names_each_head: list of lists.
        feature_map_size: (W, H).
    Returns:
        dict of lists (one entry per head): `heatmaps (B, n_cls, H, W)`, `target_boxes (B, K, C + 1)`, `inds (B, K)`,
        `masks (B, K)`, `target_boxes_src (B, K, C + 1)` with labels remapped to the head (1-based), K = num_max_objs.
    """
    ret = {'heatmaps': [], 'target_boxes': [], 'inds': [], 'masks': [], 'target_boxes_src': []}
    labels = gt_boxes[..., -1].long()
    if labels.numel() and (labels.min() < 0 or labels.max() > len(class_names)):
        raise ValueError(f'gt_boxes labels (last column) must be in 0..{len(class_names)} (0 = padding) for '
                         f'CLASS_NAMES {class_names}, got range [{labels.min().item()}, {labels.max().item()}]')
    for head_class_names in class_names_each_head:
        lookup = head_label_lookup(class_names, head_class_names, gt_boxes.device)
        per_sample = []
        for bs_idx in range(gt_boxes.shape[0]):
            local = lookup[labels[bs_idx]]
            keep = local > 0
            boxes = gt_boxes[bs_idx][keep].clone()
            boxes[:, -1] = local[keep].to(boxes.dtype)
            per_sample.append(assign_target_of_single_head(
                num_classes=len(head_class_names), gt_boxes=boxes, feature_map_size=feature_map_size,
                feature_map_stride=feature_map_stride, point_cloud_range=point_cloud_range, voxel_size=voxel_size,
                num_max_objs=num_max_objs, gaussian_overlap=gaussian_overlap, min_radius=min_radius))
        for key, values in zip(('heatmaps', 'target_boxes', 'inds', 'masks', 'target_boxes_src'), zip(*per_sample)):
            ret[key].append(torch.stack(values, dim=0))
    return ret
