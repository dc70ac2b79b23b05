"""Global transforms (pure functions) and the DataAugmentor queue."""
import copy

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import ConfigError
from pcdet.datasets.augmentor import DataAugmentor, augmentor_utils

TRANSFORMS = [
    ('flip_x', augmentor_utils.flip_points_and_boxes, 'x'),
    ('flip_y', augmentor_utils.flip_points_and_boxes, 'y'),
    ('rotate_small', augmentor_utils.rotate_points_and_boxes, 0.3),
    ('rotate_large', augmentor_utils.rotate_points_and_boxes, -2.5),
    ('scale', augmentor_utils.scale_points_and_boxes, 1.07),
    ('translate', augmentor_utils.translate_points_and_boxes, np.array([0.4, -0.3, 0.2])),
]


def points_in_boxes_reference(points, boxes):
    """(M, N) membership by transforming points into each box frame (independent of pcdet ops)."""
    local = points[None, :, 0:3] - boxes[:, None, 0:3]
    cos_h, sin_h = np.cos(-boxes[:, 6])[:, None], np.sin(-boxes[:, 6])[:, None]
    local_x = local[..., 0] * cos_h - local[..., 1] * sin_h
    local_y = local[..., 0] * sin_h + local[..., 1] * cos_h
    half = boxes[:, None, 3:6] / 2
    return (np.abs(local_x) < half[..., 0]) & (np.abs(local_y) < half[..., 1]) & (np.abs(local[..., 2]) < half[..., 2])


def make_scene(seed=0, num_boxes=6, extra_columns=2):
    rng = np.random.default_rng(seed)
    centres = rng.uniform([-30, -30, -1], [30, 30, 1], size=(num_boxes, 3))
    dims = rng.uniform([1.5, 0.8, 1.0], [5, 2.5, 2.5], size=(num_boxes, 3))
    boxes = np.concatenate([centres, dims, rng.uniform(-np.pi, np.pi, (num_boxes, 1)),
                            rng.normal(size=(num_boxes, 2))], axis=1)
    # Points well inside each box (0.8 of the half extent) plus background.
    local = rng.uniform(-0.4, 0.4, size=(num_boxes, 50, 3)) * dims[:, None, :]
    cos_h, sin_h = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    inside = np.stack([local[..., 0] * cos_h - local[..., 1] * sin_h,
                       local[..., 0] * sin_h + local[..., 1] * cos_h, local[..., 2]], axis=-1) + centres[:, None]
    background = rng.uniform([-50, -50, -3], [50, 50, 3], size=(400, 3))
    xyz = np.concatenate([inside.reshape(-1, 3), background])
    points = np.concatenate([xyz, rng.uniform(size=(len(xyz), extra_columns))], axis=1).astype(np.float32)
    return points, boxes


def apply_to_xyz(transform, param, xyz):
    """Transform bare positions with the same function (as points)."""
    out, _ = transform(xyz.astype(np.float64), None, param)
    return out


@pytest.mark.parametrize('name, transform, param', TRANSFORMS)
def test_points_in_boxes_membership_is_preserved(name, transform, param):
    points, boxes = make_scene()
    new_points, new_boxes = transform(points, boxes, param)
    np.testing.assert_array_equal(points_in_boxes_reference(points, boxes),
                                  points_in_boxes_reference(new_points, new_boxes))


@pytest.mark.parametrize('name, transform, param', TRANSFORMS)
def test_velocity_and_heading_follow_the_transform(name, transform, param):
    _, boxes = make_scene()
    centre = boxes[:, 0:3]
    velocity = np.concatenate([boxes[:, 7:9], np.zeros((len(boxes), 1))], axis=1)
    front = centre + np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), np.zeros(len(boxes))], 1) * boxes[:, 3:4] / 2
    _, new_boxes = transform(np.zeros((0, 3)), boxes, param)
    moved_centre, moved_future, moved_front = (apply_to_xyz(transform, param, p)
                                               for p in (centre, centre + velocity, front))
    np.testing.assert_allclose(new_boxes[:, 0:3], moved_centre, atol=1e-9)
    np.testing.assert_allclose(new_boxes[:, 7:9], (moved_future - moved_centre)[:, 0:2], atol=1e-9)
    expected_front = new_boxes[:, 0:2] + np.stack([np.cos(new_boxes[:, 6]), np.sin(new_boxes[:, 6])], 1) \
        * new_boxes[:, 3:4] / 2
    np.testing.assert_allclose(expected_front, moved_front[:, 0:2], atol=1e-9)


@pytest.mark.parametrize('name, transform, param', TRANSFORMS)
def test_transforms_are_pure_and_keep_extra_columns(name, transform, param):
    points, boxes = make_scene()
    points_before, boxes_before = points.copy(), boxes.copy()
    new_points, new_boxes = transform(points, boxes, param)
    np.testing.assert_array_equal(points, points_before)
    np.testing.assert_array_equal(boxes, boxes_before)
    np.testing.assert_array_equal(new_points[:, 3:], points[:, 3:])
    assert new_points.dtype == points.dtype
    new_points_only, no_boxes = transform(points, None, param)
    assert no_boxes is None
    np.testing.assert_array_equal(new_points_only, new_points)


@pytest.mark.parametrize('axis', ['x', 'y'])
def test_double_flip_is_identity(axis):
    points, boxes = make_scene()
    once = augmentor_utils.flip_points_and_boxes(points, boxes, axis)
    twice = augmentor_utils.flip_points_and_boxes(*once, axis)
    np.testing.assert_array_equal(twice[0], points)
    np.testing.assert_allclose(twice[1], boxes, atol=1e-12)


def test_flip_formulas_match_spec():
    boxes = np.array([[1.0, 2.0, 0.5, 4, 2, 1.5, 0.3, 1.5, -0.5]])
    _, flipped_x = augmentor_utils.flip_points_and_boxes(np.zeros((0, 3)), boxes, 'x')
    np.testing.assert_allclose(flipped_x, [[1.0, -2.0, 0.5, 4, 2, 1.5, -0.3, 1.5, 0.5]])
    _, flipped_y = augmentor_utils.flip_points_and_boxes(np.zeros((0, 3)), boxes, 'y')
    np.testing.assert_allclose(flipped_y, [[-1.0, 2.0, 0.5, 4, 2, 1.5, -(0.3 + np.pi), -1.5, -0.5]])


# ---- DataAugmentor -----------------------------------------------------------------------------------------------

def augmentor_config(disable=()):
    return EasyDict({'DISABLE_AUG_LIST': list(disable), 'AUG_CONFIG_LIST': [
        {'NAME': 'random_world_flip', 'ALONG_AXIS_LIST': ['x', 'y']},
        {'NAME': 'random_world_rotation', 'WORLD_ROT_ANGLE': [-0.785, 0.785]},
        {'NAME': 'random_world_scaling', 'WORLD_SCALE_RANGE': [0.95, 1.05]},
        {'NAME': 'random_world_translation', 'NOISE_TRANSLATE_STD': [0.5, 0.5, 0.2]},
    ]})


def sample(seed=0):
    points, boxes = make_scene(seed)
    names = np.array(['car', 'ignore', 'car', 'pedestrian', 'car', 'ignore'])
    return {'points': points, 'gt_boxes': boxes, 'gt_names': names, 'road_plane': np.zeros(4),
            'gt_boxes_mask': names != 'ignore', 'gt_boxes2d': np.arange(24, dtype=np.float32).reshape(6, 4)}


def test_forward_records_parameters_wraps_heading_and_applies_mask():
    augmentor = DataAugmentor('/nonexistent', augmentor_config(), ['car', 'pedestrian'])
    np.random.seed(0)
    data = sample()
    out = augmentor.forward(dict(data))
    for key in ('flip_x', 'flip_y', 'noise_rot', 'noise_scale', 'noise_translate'):
        assert key in out
    assert isinstance(out['flip_x'], bool) and out['noise_translate'].shape == (3,)
    assert 'road_plane' not in out and 'gt_boxes_mask' not in out
    assert out['gt_names'].tolist() == ['car', 'car', 'pedestrian', 'car']
    np.testing.assert_array_equal(out['gt_boxes2d'], data['gt_boxes2d'][data['gt_boxes_mask']])
    assert out['gt_boxes'].shape == (4, 9)
    assert np.all(out['gt_boxes'][:, 6] >= -np.pi) and np.all(out['gt_boxes'][:, 6] < np.pi)
    np.testing.assert_array_equal(out['points'][:, 3:], data['points'][:, 3:])
    # Membership survives the whole queue (boxes filtered by the mask on both sides).
    np.testing.assert_array_equal(points_in_boxes_reference(data['points'], data['gt_boxes'][data['gt_boxes_mask']]),
                                  points_in_boxes_reference(out['points'], out['gt_boxes']))
    np.testing.assert_array_equal(data['gt_boxes'], sample()['gt_boxes'])  # input untouched


def test_forward_is_reproducible_with_numpy_seed():
    augmentor = DataAugmentor('/nonexistent', augmentor_config(), ['car'])
    np.random.seed(5)
    first = augmentor.forward(sample())
    np.random.seed(5)
    second = augmentor.forward(sample())
    np.testing.assert_array_equal(first['points'], second['points'])
    assert first['noise_rot'] == second['noise_rot']


def test_points_only_samples_are_augmented():
    augmentor = DataAugmentor('/nonexistent', augmentor_config(), [])
    points, _ = make_scene()
    out = augmentor.forward({'points': points})
    assert 'gt_boxes' not in out and out['points'].shape == points.shape


def test_unknown_name_error_names_key_and_known_names():
    config = EasyDict({'AUG_CONFIG_LIST': [{'NAME': 'random_world_flop'}]})
    with pytest.raises(ConfigError, match=r"AUG_CONFIG_LIST\[0\]\.NAME.*random_world_flop.*random_world_flip"):
        DataAugmentor('/nonexistent', config, ['car'])


def test_missing_parameter_names_key_and_section():
    config = EasyDict({'AUG_CONFIG_LIST': [{'NAME': 'random_world_rotation'}]})
    with pytest.raises(ConfigError, match=r'random_world_rotation.*WORLD_ROT_ANGLE'):
        DataAugmentor('/nonexistent', config, ['car'])


def test_disable_list_and_runtime_disable_do_not_mutate_config():
    config = augmentor_config(disable=['random_world_rotation'])
    frozen = copy.deepcopy(config)
    augmentor = DataAugmentor('/nonexistent', config, ['car'])
    assert augmentor.active_augmentations == ['random_world_flip', 'random_world_scaling',
                                              'random_world_translation']
    assert augmentor.disable_augmentation(['random_world_flip']) == ['random_world_scaling',
                                                                     'random_world_translation']
    out = augmentor.forward(sample())
    assert 'flip_x' not in out and 'noise_rot' not in out and 'noise_scale' in out
    assert augmentor.disable_augmentation([]) == ['random_world_flip', 'random_world_scaling',
                                                  'random_world_translation']
    assert augmentor.disable_augmentation(None) == []
    np.testing.assert_array_equal(augmentor.forward(sample())['points'], sample()['points'])
    assert config == frozen
    with pytest.raises(ConfigError, match='gt_sampler'):
        augmentor.disable_augmentation(['gt_sampler'])


def test_degenerate_scale_range_is_skipped():
    config = EasyDict({'AUG_CONFIG_LIST': [{'NAME': 'random_world_scaling', 'WORLD_SCALE_RANGE': [1.0, 1.0]}]})
    data = sample()
    out = DataAugmentor('/nonexistent', config, ['car']).forward(dict(data))
    assert out['noise_scale'] == 1.0
    np.testing.assert_array_equal(out['points'], data['points'])


def test_openpcdet_placeholder_disables_nothing_but_typos_fail():
    from easydict import EasyDict

    from pcdet.config import ConfigError
    from pcdet.datasets.augmentor.data_augmentor import DataAugmentor
    aug_cfg = EasyDict(DISABLE_AUG_LIST=['placeholder'],
                       AUG_CONFIG_LIST=[EasyDict(NAME='random_world_flip', ALONG_AXIS_LIST=['x'])])
    assert DataAugmentor(None, aug_cfg, ['car']).active_augmentations == ['random_world_flip']
    aug_cfg.DISABLE_AUG_LIST = ['random_world_flp']
    with pytest.raises(ConfigError, match='random_world_flp'):
        DataAugmentor(None, aug_cfg, ['car'])
