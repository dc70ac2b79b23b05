"""Merge a list of per-sample data_dicts into one batch dict (spec §1.3, `collate_batch`).

Rules by key (a key missing from the table is stacked with `np.stack`, so `frame_id` becomes a string array,
`metadata` an object array, `use_lead_xyz` a bool array):
    points (N_i, C), voxel_coords (V_i, 3), and other ragged per-row arrays registered with `prepend_batch_index`
        -> (sum N_i, 1 + C) with the sample index as column 0
    voxels (V_i, P, C), voxel_num_points (V_i,)          -> concatenated along axis 0
    gt_boxes (M_i, C), roi_boxes, roi_scores, roi_labels, gt_boxes2d, points_2d
        -> zero-padded to (B, max M_i, ...) (gt_boxes float32; padding rows are all zeros)
    images, depth_maps (H_i, W_i, ...)                   -> zero-padded to the largest H, W and stacked
    calib                                                -> kept as a list
    camera_imgs (torch tensors)                          -> torch.stack
    point_teacher_features (N_i, F), point_superpixel_ids, point_seg_labels, point_raw_index (N_i,)  (carried_columns)
                                                         -> (sum N_i, ...) concatenated in batch order, so row r
        stays aligned with row r of the collated `points`
    gt_occupancy (X, Y, Z) uint8                         -> np.stack: (B, X, Y, Z)
    camera_images, camera_intrinsics, camera_from_lidar, camera_depth (V, ...)  -> np.stack: (B, V, ...)
Adds `batch_size` (= B, times the number of views when samples carry lists of views). A failure raises TypeError
naming the key. `register_collate_rule(key, rule)` adds a rule for new per-sample keys.
"""
from collections import defaultdict

import numpy as np
import torch


def _flatten_views(values):
    """Double-flip style samples carry a list of views per key; flatten them into one list of arrays."""
    return [view for value in values for view in value] if isinstance(values[0], list) else values


def concatenate(values):
    return np.concatenate(_flatten_views(values), axis=0)


def prepend_batch_index(values):
    values = _flatten_views(values)
    return np.concatenate([np.pad(value, ((0, 0), (1, 0)), mode='constant', constant_values=index)
                           for index, value in enumerate(values)], axis=0)


def pad_to_max_rows(values, dtype=None):
    """(B, max_rows, *trailing) zero-padded; keeps the samples' dtype unless one is given."""
    max_rows = max(len(value) for value in values)
    trailing = next((value.shape[1:] for value in values if value.ndim > 1), ())
    batch = np.zeros((len(values), max_rows, *trailing), dtype=dtype or np.result_type(*values))
    for index, value in enumerate(values):
        batch[index, :len(value)] = value
    return batch


def pad_images(values):
    max_h = max(value.shape[0] for value in values)
    max_w = max(value.shape[1] for value in values)
    return np.stack([np.pad(value, [(0, max_h - value.shape[0]), (0, max_w - value.shape[1])]
                            + [(0, 0)] * (value.ndim - 2)) for value in values])


COLLATE_RULES = {
    'points': prepend_batch_index,
    'voxel_coords': prepend_batch_index,
    'voxels': concatenate,
    'voxel_num_points': concatenate,
    'gt_boxes': lambda values: pad_to_max_rows(values, np.float32),
    'roi_boxes': pad_to_max_rows,
    'roi_scores': pad_to_max_rows,
    'roi_labels': pad_to_max_rows,
    'gt_boxes2d': lambda values: pad_to_max_rows(values, np.float32),
    'points_2d': pad_to_max_rows,
    'images': pad_images,
    'depth_maps': pad_images,
    'calib': list,
    'camera_imgs': torch.stack,
    # carried per-point columns: rows follow the rows of `points`, which are concatenated in batch order
    'point_teacher_features': concatenate,
    'point_superpixel_ids': concatenate,
    'point_seg_labels': concatenate,
    'point_raw_index': concatenate,
    'gt_occupancy': lambda values: np.stack(values, axis=0),
    **{key: (lambda values: np.stack(values, axis=0))
       for key in ('camera_images', 'camera_intrinsics', 'camera_from_lidar', 'camera_depth')},
}


def register_collate_rule(key, rule):
    """`rule(list_of_per_sample_values) -> batched value` for `key`."""
    COLLATE_RULES[key] = rule


def collate_batch(batch_list, _unused=False):
    grouped = defaultdict(list)
    for sample in batch_list:
        for key, value in sample.items():
            grouped[key].append(value)
    batch = {}
    for key, values in grouped.items():
        if len(values) != len(batch_list):
            raise TypeError(f'collate_batch: key {key!r} is present in only {len(values)} of {len(batch_list)} '
                            'samples')
        try:
            batch[key] = COLLATE_RULES.get(key, lambda vals: np.stack(vals, axis=0))(values)
        except Exception as err:
            shapes = [getattr(value, 'shape', type(value).__name__) for value in values]
            raise TypeError(f'collate_batch failed on key {key!r} (per-sample shapes/types: {shapes}): {err}') from err
    views = len(grouped['voxels'][0]) if grouped.get('voxels') and isinstance(grouped['voxels'][0], list) else 1
    batch['batch_size'] = len(batch_list) * views
    return batch
