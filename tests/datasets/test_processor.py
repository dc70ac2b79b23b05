"""DataProcessor steps and PointFeatureEncoder."""
import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import ConfigError
from pcdet.datasets.processor import DataProcessor, PointFeatureEncoder

PC_RANGE = np.array([-10, -10, -2, 10, 10, 2], dtype=np.float32)


def processor(steps, training=True):
    return DataProcessor([EasyDict(step) for step in steps], PC_RANGE, training, num_point_features=4)


def test_mask_points_is_inclusive_and_ignores_z_by_default():
    points = np.array([[-10, 0, 0, 1], [10, 10, 0, 2], [10.01, 0, 0, 3], [0, 0, 5, 4]], dtype=np.float32)
    out = processor([{'NAME': 'mask_points_and_boxes_outside_range'}]).forward({'points': points})
    assert out['points'][:, 3].tolist() == [1, 2, 4]
    out = processor([{'NAME': 'mask_points_and_boxes_outside_range', 'MASK_Z': True}]).forward({'points': points})
    assert out['points'][:, 3].tolist() == [1, 2]


@pytest.mark.parametrize('training, expected', [(True, ['car', 'bus']), (False, ['car', 'bus', 'truck'])])
def test_mask_boxes_only_in_training_and_keeps_names_aligned(training, expected):
    boxes = np.array([[0, 0, 0, 2, 2, 2, 0, 1], [9, 9, 1, 4, 4, 2, 0, 2], [11, 0, 0, 4, 4, 2, 0, 3]], np.float32)
    step = {'NAME': 'mask_points_and_boxes_outside_range', 'REMOVE_OUTSIDE_BOXES': True}
    out = processor([step], training).forward({'gt_boxes': boxes, 'gt_names': np.array(['car', 'bus', 'truck'])})
    assert out['gt_names'].tolist() == expected and len(out['gt_boxes']) == len(expected)
    corners = dict(step, USE_CENTER_TO_FILTER=False)
    out = processor([corners], training).forward({'gt_boxes': boxes, 'gt_names': np.array(['car', 'bus', 'truck'])})
    assert out['gt_names'].tolist() == ['car', 'bus', 'truck']  # box 3 has corners inside the range


@pytest.mark.parametrize('training', [True, False])
def test_shuffle_follows_mode_switch(training):
    points = np.arange(400, dtype=np.float32).reshape(100, 4)
    step = {'NAME': 'shuffle_points', 'SHUFFLE_ENABLED': {'train': True, 'test': False}}
    np.random.seed(0)
    out = processor([step], training).forward({'points': points.copy()})['points']
    assert sorted(out[:, 0].tolist()) == points[:, 0].tolist()
    assert (not np.array_equal(out, points)) == training


def voxel_step(**overrides):
    step = {'NAME': 'transform_points_to_voxels', 'VOXEL_SIZE': [0.5, 0.5, 0.5], 'MAX_POINTS_PER_VOXEL': 4,
            'MAX_NUMBER_OF_VOXELS': {'train': 50, 'test': 80}}
    step.update(overrides)
    return step


@pytest.mark.parametrize('training, max_voxels', [(True, 50), (False, 80)])
def test_transform_points_to_voxels(training, max_voxels):
    proc = processor([voxel_step()], training)
    assert proc.grid_size.tolist() == [40, 40, 8] and proc.grid_size.dtype == np.int64
    assert proc.voxel_size == [0.5, 0.5, 0.5]
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-10, 10, (1000, 2)), rng.uniform(-2, 2, (1000, 1)),
                             rng.uniform(size=(1000, 1))], axis=1).astype(np.float32)
    out = proc.forward({'points': points, 'use_lead_xyz': True})
    assert out['voxels'].shape == (max_voxels, 4, 4) and out['voxels'].dtype == np.float32
    assert out['voxel_coords'].shape == (max_voxels, 3) and out['voxel_num_points'].shape == (max_voxels,)
    assert np.all(out['voxel_coords'] < proc.grid_size[::-1])
    no_xyz = proc.forward({'points': points, 'use_lead_xyz': False})
    assert no_xyz['voxels'].shape == (max_voxels, 4, 1)


@pytest.mark.parametrize('name', ['transform_points_to_voxels_placeholder', 'calculate_grid_size'])
def test_placeholder_only_sets_grid(name):
    proc = processor([{'NAME': name, 'VOXEL_SIZE': [0.4, 0.4, 4.0]}])
    assert proc.grid_size.tolist() == [50, 50, 1] and proc.voxel_size == [0.4, 0.4, 4.0]
    points = np.ones((5, 4), np.float32)
    out = proc.forward({'points': points})
    assert out.keys() == {'points'} and out['points'] is points


def test_processor_config_errors():
    with pytest.raises(ConfigError, match=r"DATA_PROCESSOR\[0\].*'voxelize'.*transform_points_to_voxels"):
        processor([{'NAME': 'voxelize'}])
    with pytest.raises(ConfigError, match=r'transform_points_to_voxels.*VOXEL_SIZE'):
        processor([{'NAME': 'transform_points_to_voxels', 'MAX_POINTS_PER_VOXEL': 5}])
    with pytest.raises(ConfigError, match='MAX_NUMBER_OF_VOXELS'):
        processor([{'NAME': 'transform_points_to_voxels', 'VOXEL_SIZE': [1, 1, 1], 'MAX_POINTS_PER_VOXEL': 5}])
    with pytest.raises(ConfigError, match='DOUBLE_FLIP'):
        processor([voxel_step(DOUBLE_FLIP=True)])
    assert processor([]).grid_size is None


# ---- PointFeatureEncoder -----------------------------------------------------------------------------------------

def encoding(used, src=('x', 'y', 'z', 'intensity', 'timestamp'), **extra):
    return EasyDict({'encoding_type': 'absolute_coordinates_encoding', 'used_feature_list': list(used),
                     'src_feature_list': list(src), **extra})


def test_encoder_selects_features_in_used_order():
    encoder = PointFeatureEncoder(encoding(['x', 'y', 'z', 'timestamp', 'intensity']))
    points = np.arange(10, dtype=np.float32).reshape(2, 5)
    out = encoder.forward({'points': points})
    np.testing.assert_array_equal(out['points'], points[:, [0, 1, 2, 4, 3]])
    assert out['use_lead_xyz'] is True and encoder.num_point_features == 5
    assert PointFeatureEncoder(encoding(['x', 'y', 'z'])).num_point_features == 3
    assert encoder.absolute_coordinates_encoding() == 5


def test_encoder_column_count_error_names_expected_columns():
    encoder = PointFeatureEncoder(encoding(['x', 'y', 'z', 'intensity']))
    with pytest.raises(ValueError, match=r"points have 4 columns.*expects 5.*'intensity', 'timestamp'"):
        encoder.forward({'points': np.zeros((3, 4), np.float32)})


def test_encoder_config_errors():
    with pytest.raises(ConfigError, match='must start with x, y, z'):
        PointFeatureEncoder(encoding(['x'], src=('intensity', 'x', 'y', 'z')))
    with pytest.raises(ConfigError, match='elongation'):
        PointFeatureEncoder(encoding(['x', 'y', 'z', 'elongation']))
    with pytest.raises(ConfigError, match=r'POINT_FEATURE_ENCODING.*used_feature_list'):
        PointFeatureEncoder(EasyDict({'encoding_type': 'absolute_coordinates_encoding', 'src_feature_list': []}))
    with pytest.raises(ConfigError, match='relative_coordinates'):
        PointFeatureEncoder(encoding(['x', 'y', 'z'], encoding_type='relative_coordinates'))


def test_encoder_filter_sweeps_keeps_first_sweeps():
    encoder = PointFeatureEncoder(encoding(['x', 'y', 'z', 'timestamp'], filter_sweeps=True, max_sweeps=2))
    points = np.zeros((6, 5), np.float32)
    points[:, 4] = [0.0, 0.0, 0.05, 0.05, 0.1, 0.15]
    out = encoder.forward({'points': points})
    assert out['points'][:, 3].tolist() == pytest.approx([0.0, 0.0, 0.05, 0.05])
