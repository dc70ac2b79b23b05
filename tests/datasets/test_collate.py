"""collate_batch: batch-index columns, padding, concatenation, stacking, errors."""
import numpy as np
import pytest
import torch

from pcdet.datasets.collate import collate_batch, register_collate_rule


def sample(num_points, num_boxes, num_voxels, frame_id):
    return {
        'points': np.full((num_points, 4), num_points, dtype=np.float32),
        'gt_boxes': np.ones((num_boxes, 8), dtype=np.float64),
        'voxels': np.ones((num_voxels, 5, 4), dtype=np.float32),
        'voxel_coords': np.full((num_voxels, 3), 7, dtype=np.int32),
        'voxel_num_points': np.ones(num_voxels, dtype=np.int32),
        'frame_id': frame_id, 'metadata': {'token': frame_id}, 'use_lead_xyz': True,
        'lidar_aug_matrix': np.eye(4, dtype=np.float32), 'calib': object(),
    }


def test_collate_rules():
    batch = collate_batch([sample(3, 2, 4, 'a'), sample(5, 0, 2, 'b'), sample(1, 3, 1, 'c')])
    assert batch['batch_size'] == 3
    assert batch['points'].shape == (9, 5)
    assert batch['points'][:, 0].tolist() == [0] * 3 + [1] * 5 + [2]
    assert batch['points'][:, 1].tolist() == [3] * 3 + [5] * 5 + [1]
    assert batch['voxel_coords'].shape == (7, 4) and batch['voxel_coords'][:, 0].tolist() == [0] * 4 + [1] * 2 + [2]
    assert batch['voxels'].shape == (7, 5, 4) and batch['voxel_num_points'].shape == (7,)
    gt = batch['gt_boxes']
    assert gt.shape == (3, 3, 8) and gt.dtype == np.float32
    assert gt[0, :2].all() and not gt[0, 2].any() and not gt[1].any() and gt[2].all()
    assert batch['frame_id'].tolist() == ['a', 'b', 'c']
    assert batch['metadata'][1] == {'token': 'b'} and batch['use_lead_xyz'].dtype == bool
    assert batch['lidar_aug_matrix'].shape == (3, 4, 4)
    assert isinstance(batch['calib'], list) and len(batch['calib']) == 3


def test_all_empty_boxes_give_zero_width_padding():
    batch = collate_batch([sample(2, 0, 1, 'a'), sample(2, 0, 1, 'b')])
    assert batch['gt_boxes'].shape == (2, 0, 8)


def test_images_are_padded_and_camera_tensors_stacked():
    images = [np.ones((4, 6, 3)), np.ones((5, 3, 3))]
    batch = collate_batch([{'images': img, 'camera_imgs': torch.zeros(2, 3)} for img in images])
    assert batch['images'].shape == (2, 5, 6, 3) and batch['images'][1, :, 3:].sum() == 0
    assert batch['camera_imgs'].shape == (2, 2, 3)


def test_error_names_the_failing_key():
    with pytest.raises(TypeError, match="key 'lidar_aug_matrix'"):
        collate_batch([{'lidar_aug_matrix': np.eye(4)}, {'lidar_aug_matrix': np.eye(3)}])
    with pytest.raises(TypeError, match="key 'gt_boxes' is present in only 1 of 2"):
        collate_batch([{'gt_boxes': np.zeros((1, 8))}, {'points': np.zeros((1, 4))}])


def test_registered_rule_for_new_per_point_key():
    from pcdet.datasets.collate import COLLATE_RULES, prepend_batch_index
    register_collate_rule('my_point_attribute', prepend_batch_index)
    try:
        samples = [{'my_point_attribute': np.zeros((2, 3))}, {'my_point_attribute': np.ones((1, 3))}]
        batch = collate_batch(samples)
        assert batch['my_point_attribute'].shape == (3, 4)
    finally:
        COLLATE_RULES.pop('my_point_attribute')
