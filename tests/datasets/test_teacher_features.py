"""Teacher features carried through the real dataset pipeline stay aligned with their points (spec §1.4 D-SEAL-2).

A `RawRowTeacher` stores, for every raw point, its row index within its part (split into two float16-exact columns
< 2048), so every output point can be traced back to the raw point it came from. The features are produced by the real
prepare path on the session's synthetic nuScenes data, then read by the real NuScenesDataset (training: flip,
rotation, scaling, translation, range mask with z, shuffle; testing) and WaymoDataset (NLZ filter, tanh). For every
output point the test looks the raw point up in independently loaded raw parts and checks that `lidar_aug_matrix`
maps its xyz onto the output xyz, and that the output holds exactly the raw points inside the range (brute force).
"""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import ConfigError
from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset
from pcdet.datasets.nuscenes.nuscenes_utils import CLASS_NAMES, load_point_parts
from pcdet.datasets.processor import PointFeatureEncoder
from pcdet.datasets.teachers import feature_store
from pcdet.datasets.teachers.base import Teacher
from pcdet.datasets.teachers.prepare import prepare_teacher_features

from teacher_test_configs import augmented_nuscenes_cfg

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_STORED_SWEEPS = 9
ROW_SPLIT = 2048  # float16 represents every integer < 2048 exactly
BOUNDARY_TOLERANCE = 1e-3


class RawRowTeacher(Teacher):
    """feature = [row // 2048, row % 2048, x, y, z, intensity, time_lag or elongation, 1]: the raw row is
    recoverable exactly from float16 storage; the other columns are coarse sanity copies."""

    name = 'raw_row_id'
    num_features = 8
    needs_point_labels = False

    def __call__(self, points, point_labels=None):
        rows = np.arange(len(points))
        assert rows.max(initial=0) < ROW_SPLIT ** 2
        return np.concatenate([(rows // ROW_SPLIT)[:, None], (rows % ROW_SPLIT)[:, None], points[:, 0:5],
                               np.ones((len(points), 1))], axis=1).astype(np.float32)


TEACHER_CFG = {'NAME': 'raw_row_id', 'NUM_FEATURES': 8}


def raw_rows_of(features):
    return features[:, 0].astype(np.int64) * ROW_SPLIT + features[:, 1].astype(np.int64)


def nuscenes_cfg(data_path, version, max_sweeps=10, **teacher_overrides):
    return augmented_nuscenes_cfg(data_path, version, max_sweeps, dict(TEACHER_CFG, **teacher_overrides))


@pytest.fixture(scope='module')
def data_path(synthetic_nuscenes_data_path, synthetic_nuscenes_version, tmp_path_factory):
    """A private DATA_PATH (symlinks to the session dataset + its 10-sweep infos) with raw-row features of the first
    3 train and 2 val frames, made by the real prepare path."""
    data_path = tmp_path_factory.mktemp('teacher_data_path')
    dataroot = data_path / synthetic_nuscenes_version
    dataroot.mkdir()
    for entry in (synthetic_nuscenes_data_path / synthetic_nuscenes_version).iterdir():
        (dataroot / entry.name).symlink_to(entry.resolve())
    cfg = nuscenes_cfg(data_path, synthetic_nuscenes_version)
    for split, limit in (('train', 3), ('val', 2)):
        report = prepare_teacher_features(cfg, split, limit=limit, teacher=RawRowTeacher(), progress=False)
        assert len(report['written']) == limit
    return data_path


def raw_parts(dataset, index, num_sweeps=NUM_STORED_SWEEPS):
    """Raw parts (key frame + sweeps in info order) of a frame and {time_lag: part index} (unique in this data)."""
    parts = load_point_parts(dataset.root_path, dataset.infos[index], range(num_sweeps))
    lags = [float(part[0, 4]) for part in parts]
    assert len(set(lags)) == len(lags), 'the fixture data must have one time lag per part'
    return parts, {lag: i for i, lag in enumerate(lags)}


def in_range(coords, lower, upper, margin=0.0):
    """(N,) bool: lower + margin <= coords <= upper - margin on every column (a negative margin widens)."""
    return np.all((coords >= np.asarray(lower) + margin) & (coords <= np.asarray(upper) - margin), axis=1)


def check_nuscenes_alignment(dataset, index, sample, expect_parts=None):
    """Every output point is its raw point moved by lidar_aug_matrix; the output holds exactly the in-range raw
    points of the parts it draws from. Returns the set of parts present."""
    parts, part_of_lag = raw_parts(dataset, index)
    offsets = np.concatenate(([0], np.cumsum([len(p) for p in parts])))
    points, features = sample['points'], sample['point_teacher_features']
    assert points.shape[1] == 5 and features.shape == (len(points), 8) and features.dtype == np.float32
    part = np.array([part_of_lag[float(lag)] for lag in points[:, 4]])
    row = raw_rows_of(features)
    raw = np.concatenate(parts)[offsets[part] + row]
    matrix = sample['lidar_aug_matrix'].astype(np.float64)
    expected_xyz = raw[:, :3].astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(points[:, :3], expected_xyz, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(points[:, 3:5], raw[:, 3:5])
    np.testing.assert_allclose(features[:, 2:7], raw[:, 0:5].astype(np.float16), rtol=0, atol=0)
    # coverage: exactly the raw points of the drawn parts that land inside the range (boundary points excluded)
    drawn = np.unique(part)
    if expect_parts is not None:
        assert len(drawn) == expect_parts
    all_raw = np.concatenate([parts[p] for p in drawn])
    global_ids = np.concatenate([offsets[p] + np.arange(len(parts[p])) for p in drawn])
    moved = all_raw[:, :3].astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    lower, upper = dataset.point_cloud_range[:3].astype(np.float64), dataset.point_cloud_range[3:].astype(np.float64)
    inside = in_range(moved, lower, upper, BOUNDARY_TOLERANCE)  # MASK_Z: True
    near_boundary = in_range(moved, lower, upper, -BOUNDARY_TOLERANCE)
    output_ids = offsets[part] + row
    assert len(np.unique(output_ids)) == len(output_ids)  # no point twice
    assert set(global_ids[inside]) <= set(output_ids) <= set(global_ids[near_boundary])
    return drawn, output_ids


@pytest.fixture(scope='module')
def train_set(data_path, synthetic_nuscenes_version):
    return NuScenesDataset(nuscenes_cfg(data_path, synthetic_nuscenes_version), [], training=True)


def test_training_samples_stay_aligned(train_set):
    flips, rotations = set(), []
    for seed in (0, 1, 2):
        for index in (0, 1, 2):
            np.random.seed(seed)
            sample = train_set[index]
            assert sample['frame_id'] == Path(train_set.infos[index]['lidar_path']).stem
            _, output_ids = check_nuscenes_alignment(train_set, index, sample, expect_parts=1 + NUM_STORED_SWEEPS)
            assert (np.diff(output_ids) < 0).any()  # shuffled
            flips.add((bool(sample.get('flip_x')), bool(sample.get('flip_y'))))
            rotations.append(sample['noise_rot'])
    assert len(flips) > 1 and np.ptp(rotations) > 0.05  # the augmentations really varied


def test_random_subset_of_stored_sweeps(data_path, synthetic_nuscenes_version):
    dataset = NuScenesDataset(nuscenes_cfg(data_path, synthetic_nuscenes_version, max_sweeps=4), [], training=True)
    drawn_sets = set()
    for seed in (0, 1, 2, 3):
        np.random.seed(seed)
        drawn, _ = check_nuscenes_alignment(dataset, 1, dataset[1], expect_parts=4)
        drawn_sets.add(tuple(drawn))
    assert len(drawn_sets) > 1  # sweeps are drawn at random from the stored ones


def test_supervised_training_and_test_mode(data_path, synthetic_nuscenes_version):
    cfg = nuscenes_cfg(data_path, synthetic_nuscenes_version)
    cfg.BALANCED_RESAMPLING = False  # CBGS would reorder the frames (only the first 3 have features)
    supervised = NuScenesDataset(cfg, CLASS_NAMES, training=True)
    np.random.seed(4)
    sample = supervised[0]
    assert len(sample['gt_boxes']) > 0 and sample['frame_id'] == Path(supervised.infos[0]['lidar_path']).stem
    check_nuscenes_alignment(supervised, 0, sample)
    test_set = NuScenesDataset(nuscenes_cfg(data_path, synthetic_nuscenes_version, max_sweeps=3), CLASS_NAMES,
                               training=False)
    for index in (0, 1):
        sample = test_set[index]
        np.testing.assert_array_equal(sample['lidar_aug_matrix'], np.eye(4))
        drawn, _ = check_nuscenes_alignment(test_set, index, sample)
        assert list(drawn) == [0, 1, 2]  # testing: the first MAX_SWEEPS - 1 sweeps


def test_collate_keeps_alignment(train_set):
    np.random.seed(0)
    samples = [train_set[0], train_set[2]]
    batch = train_set.collate_batch(samples)
    assert batch['points'].shape[0] == batch['point_teacher_features'].shape[0]
    for index, sample in enumerate(samples):
        rows = batch['points'][:, 0] == index
        np.testing.assert_array_equal(batch['points'][rows, 1:], sample['points'])
        np.testing.assert_array_equal(batch['point_teacher_features'][rows], sample['point_teacher_features'])


def test_disabled_features_and_cbgs_without_classes(data_path, synthetic_nuscenes_version):
    cfg = nuscenes_cfg(data_path, synthetic_nuscenes_version, ENABLED=False)
    cfg.BALANCED_RESAMPLING = True
    plain = NuScenesDataset(cfg, [], training=True)
    np.random.seed(0)
    sample = plain[0]
    assert 'point_teacher_features' not in sample and sample['points'].shape[1] == 5
    cbgs = NuScenesDataset(nuscenes_cfg(data_path, synthetic_nuscenes_version), [], training=True)
    assert cbgs.dataset_cfg.BALANCED_RESAMPLING is True
    assert [i['token'] for i in cbgs.infos] == [i['token'] for i in plain.infos]  # CBGS with no classes: unchanged


def copy_feature_dir(data_path, version, name):
    source = data_path / version / 'teacher_features' / 'raw_row_id'
    target = data_path / version / 'teacher_features' / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy(source / 'manifest.json', target / 'manifest.json')
    return source, target


def test_stale_missing_and_short_files_name_the_file(data_path, synthetic_nuscenes_version):
    source, target = copy_feature_dir(data_path, synthetic_nuscenes_version, 'broken')
    cfg = nuscenes_cfg(data_path, synthetic_nuscenes_version, FEATURE_DIR='teacher_features/broken')
    dataset = NuScenesDataset(cfg, [], training=True)
    frame_ids = [Path(info['lidar_path']).stem for info in dataset.infos[:3]]
    features, part_sizes = feature_store.load_frame_features(source / f'{frame_ids[0]}.npz')
    offsets = feature_store.part_offsets(part_sizes)
    parts = [features[offsets[i]:offsets[i + 1]] for i in range(len(part_sizes))]
    feature_store.save_frame_features(target / f'{frame_ids[0]}.npz', [parts[0][:-1]] + parts[1:])  # one row lost
    error = feature_store.FeatureStoreError
    with pytest.raises(error, match=re.escape(f'{target / frame_ids[0]}.npz is stale: part 0')):
        dataset[0]
    with pytest.raises(FileNotFoundError, match=re.escape(f'{target / frame_ids[1]}.npz')):
        dataset[1]
    feature_store.save_frame_features(target / f'{frame_ids[2]}.npz', parts[:3])  # only 2 sweeps stored
    with pytest.raises(error, match=re.escape(f'{target / frame_ids[2]}.npz stores 2 sweeps')):
        dataset[2]
    feature_store.save_frame_features(target / f'{frame_ids[2]}.npz', [p[:, :4] for p in parts])
    with pytest.raises(error, match=re.escape(f'{target / frame_ids[2]}.npz has 4 features')):
        dataset[2]


def test_manifest_mismatch_and_config_errors(data_path, synthetic_nuscenes_version):
    manifest = data_path / synthetic_nuscenes_version / 'teacher_features/raw_row_id/manifest.json'
    error = feature_store.FeatureStoreError
    with pytest.raises(error, match=re.escape(str(manifest)) + '.*another teacher config.*SEED'):
        NuScenesDataset(nuscenes_cfg(data_path, synthetic_nuscenes_version, SEED=1), [], training=True)
    wrong_name = nuscenes_cfg(data_path, synthetic_nuscenes_version, FEATURE_DIR='teacher_features/raw_row_id',
                              NAME='synthetic_semantic')
    with pytest.raises(feature_store.FeatureStoreError, match=re.escape(str(manifest))):
        NuScenesDataset(wrong_name, [], training=False)
    missing = data_path / synthetic_nuscenes_version / 'teacher_features/synthetic_semantic/manifest.json'
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        NuScenesDataset(nuscenes_cfg(data_path, synthetic_nuscenes_version, NAME='synthetic_semantic'), [],
                        training=True)
    with_gt_sampling = nuscenes_cfg(data_path, synthetic_nuscenes_version)
    with_gt_sampling.DATA_AUGMENTOR.DISABLE_AUG_LIST = []
    with pytest.raises(ConfigError, match='gt_sampling'):
        NuScenesDataset(with_gt_sampling, CLASS_NAMES, training=True)
    NuScenesDataset(with_gt_sampling, [], training=True)  # self-supervised: gt_sampling is skipped anyway
    hard_voxels = nuscenes_cfg(data_path, synthetic_nuscenes_version)
    hard_voxels.DATA_PROCESSOR[2] = EasyDict({'NAME': 'transform_points_to_voxels', 'VOXEL_SIZE': [0.2, 0.2, 0.2],
                                              'MAX_POINTS_PER_VOXEL': 5,
                                              'MAX_NUMBER_OF_VOXELS': {'train': 10, 'test': 10}})
    with pytest.raises(ConfigError, match='transform_points_to_voxels'):
        NuScenesDataset(hard_voxels, [], training=True)


def test_too_few_stored_sweeps_for_max_sweeps(data_path, synthetic_nuscenes_version):
    cfg = nuscenes_cfg(data_path, synthetic_nuscenes_version, FEATURE_DIR='teacher_features/two_sweeps')
    prepare_teacher_features(cfg, 'train', num_sweeps=2, limit=1, teacher=RawRowTeacher(), progress=False)
    manifest = data_path / synthetic_nuscenes_version / 'teacher_features/two_sweeps/manifest.json'
    error = feature_store.FeatureStoreError
    with pytest.raises(error, match=re.escape(f'{manifest}: only 2 sweeps') + '.*--num_sweeps 9'):
        NuScenesDataset(cfg, [], training=True)
    cfg.MAX_SWEEPS = 3
    dataset = NuScenesDataset(cfg, [], training=True)
    np.random.seed(0)
    drawn, _ = check_nuscenes_alignment(dataset, 0, dataset[0], expect_parts=3)
    assert list(drawn) == [0, 1, 2]


def test_point_feature_encoder_carries_columns():
    config = EasyDict({'encoding_type': 'absolute_coordinates_encoding', 'src_feature_list': ['x', 'y', 'z', 'i', 't'],
                       'used_feature_list': ['x', 'y', 'z', 't']})
    encoder = PointFeatureEncoder(config, num_carried_columns=3)
    points = np.arange(24, dtype=np.float32).reshape(3, 8)
    encoded = encoder.forward({'points': points})['points']
    assert encoder.num_point_features == 4
    np.testing.assert_array_equal(encoded, points[:, [0, 1, 2, 4, 5, 6, 7]])
    with pytest.raises(ValueError, match='3 carried'):
        encoder.forward({'points': points[:, :5]})


# ---- Waymo -----------------------------------------------------------------------------------------------------------

WAYMO_CFG_FILE = REPO_ROOT / 'tools/cfgs/dataset_configs/waymo_dataset.yaml'
WAYMO_SMALL = dict(num_sequences=2, frames_per_sequence=2, top_columns=256, top_pose_sectors=2, side_beams=16,
                   side_columns=64, num_objects=8, seed=3, val_fraction=0.5)


def waymo_cfg(data_path, **teacher_overrides):
    from pcdet.datasets.waymo import waymo_dataset
    cfg = waymo_dataset.load_dataset_cfg(WAYMO_CFG_FILE)
    cfg.DATA_PATH = str(data_path)
    cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ['gt_sampling']
    cfg.SAMPLED_INTERVAL = {'train': 1, 'test': 1}
    cfg.DISABLE_NLZ_FLAG_ON_POINTS = False  # drop NLZ points: the mask must reach the features
    cfg.POINTS_TANH_DIM = [3, 4]
    cfg.DATA_PROCESSOR[2] = EasyDict({'NAME': 'transform_points_to_voxels_placeholder',
                                      'VOXEL_SIZE': [0.32, 0.32, 0.1875]})
    cfg.TEACHER_FEATURES = EasyDict(dict(TEACHER_CFG, **teacher_overrides))
    return cfg


@pytest.fixture(scope='module')
def waymo_data_path(tmp_path_factory):
    from pcdet.datasets.synthetic.waymo_writer import SyntheticWaymoConfig, generate_waymo
    from pcdet.datasets.waymo import waymo_dataset
    root = tmp_path_factory.mktemp('waymo_teacher')
    generate_waymo(SyntheticWaymoConfig(root=str(root), **WAYMO_SMALL), progress=False)
    waymo_dataset.create_waymo_infos(waymo_dataset.load_dataset_cfg(WAYMO_CFG_FILE), root, workers=1, progress=False,
                                     with_gt_database=False)
    report = prepare_teacher_features(waymo_cfg(root), 'train', teacher=RawRowTeacher(), progress=False)
    assert report['manifest']['num_sweeps'] == 0 and len(report['written']) == 2
    return root


def test_waymo_nlz_filtered_samples_stay_aligned(waymo_data_path):
    from pcdet.datasets.waymo.waymo_dataset import WaymoDataset
    dataset = WaymoDataset(waymo_cfg(waymo_data_path), [], training=True)
    saw_nlz = False
    for seed, index in ((0, 0), (1, 1), (2, 0)):
        info = dataset.infos[index]['point_cloud']
        raw = np.load(dataset.data_path / info['lidar_sequence'] / ('%04d.npy' % info['sample_idx']))
        saw_nlz |= bool((raw[:, 5] != -1).any())
        np.random.seed(seed)
        sample = dataset[index]
        points, features = sample['points'], sample['point_teacher_features']
        rows = raw_rows_of(features)
        matrix = sample['lidar_aug_matrix'].astype(np.float64)
        np.testing.assert_allclose(points[:, :3], raw[rows, :3].astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3],
                                   atol=1e-4, rtol=0)
        np.testing.assert_allclose(points[:, 3:5], np.tanh(raw[rows, 3:5]), rtol=0, atol=1e-6)
        assert (raw[rows, 5] == -1).all()  # no NLZ point, and the features followed the NLZ mask
        moved = raw[:, :3].astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
        lower, upper = dataset.point_cloud_range[0:2], dataset.point_cloud_range[3:5]  # MASK_Z: False
        expected = (raw[:, 5] == -1) & in_range(moved[:, :2], lower, upper, BOUNDARY_TOLERANCE)
        loose = (raw[:, 5] == -1) & in_range(moved[:, :2], lower, upper, -BOUNDARY_TOLERANCE)
        assert len(np.unique(rows)) == len(rows)
        assert set(np.flatnonzero(expected)) <= set(rows) <= set(np.flatnonzero(loose))
    assert saw_nlz


def test_waymo_refuses_label_teachers(waymo_data_path):
    cfg = waymo_cfg(waymo_data_path, NAME='synthetic_semantic', NUM_FEATURES=64,
                    FEATURE_DIR='teacher_features/synthetic')
    with pytest.raises(ConfigError, match='Waymo has no per-point semantic labels'):
        prepare_teacher_features(cfg, 'train', progress=False)
    assert not (waymo_data_path / 'teacher_features/synthetic').exists()  # refused before writing anything


def test_waymo_refuses_camera_teachers(waymo_data_path):
    cfg = waymo_cfg(waymo_data_path, NAME='image_projection', NUM_FEATURES=8, FEATURE_DIR='teacher_features/image')
    with pytest.raises(ConfigError, match='no camera images'):
        prepare_teacher_features(cfg, 'train', progress=False)
    assert not (waymo_data_path / 'teacher_features/image').exists()  # refused before writing anything
