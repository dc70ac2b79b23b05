"""NuScenesDataset with DATA_CONFIG.TASK segmentation / occupancy on a small hand-made dataroot.

Every LiDAR file stores its row index as the intensity, and the label files hold a known function of that row, so
after the real pipeline (flip, rotation, scaling, translation, range mask with z, shuffle) every output row can be
traced to its raw point: its label must equal the function of its carried raw row, its xyz the raw xyz moved by
`lidar_aug_matrix`. The occupancy test puts points at the centres of labelled 3x3x3 voxel blocks and checks that
each augmented point's voxel in gt_occupancy carries its block's label. Bad inputs must raise errors naming the file.
"""
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import ConfigError
from pcdet.datasets.carried_columns import SEG_COLUMNS, append_columns
from pcdet.datasets.collate import collate_batch
from pcdet.datasets.dataset import TASKS, DatasetTemplate
from pcdet.datasets.nuscenes.lidarseg import LidarsegError
from pcdet.datasets.nuscenes.nuscenes_dataset import InfoSchemaError, NuScenesDataset
from pcdet.datasets.nuscenes.nuscenes_utils import INFO_SCHEMA
from pcdet.datasets.prep_utils import MissingDataFilesError

pytestmark = pytest.mark.filterwarnings('ignore:.*NaN / inf:RuntimeWarning')

VERSION = 'v1.0-mini'
SEG_CLASSES = ['barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian',
               'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain',
               'manmade', 'vegetation']
# spec §A.2 (raw index in the official order -> official id), written out independently of the code under test
OFFICIAL = {'noise': 0, 'animal': 0, 'human.pedestrian.adult': 7, 'human.pedestrian.child': 7,
            'human.pedestrian.construction_worker': 7, 'human.pedestrian.personal_mobility': 0,
            'human.pedestrian.police_officer': 7, 'human.pedestrian.stroller': 0, 'human.pedestrian.wheelchair': 0,
            'movable_object.barrier': 1, 'movable_object.debris': 0, 'movable_object.pushable_pullable': 0,
            'movable_object.trafficcone': 8, 'static_object.bicycle_rack': 0, 'vehicle.bicycle': 2,
            'vehicle.bus.bendy': 3, 'vehicle.bus.rigid': 3, 'vehicle.car': 4, 'vehicle.construction': 5,
            'vehicle.emergency.ambulance': 0, 'vehicle.emergency.police': 0, 'vehicle.motorcycle': 6,
            'vehicle.trailer': 9, 'vehicle.truck': 10, 'flat.driveable_surface': 11, 'flat.other': 12,
            'flat.sidewalk': 13, 'flat.terrain': 14, 'static.manmade': 15, 'static.other': 0,
            'static.vegetation': 16, 'vehicle.ego': 0}
INDEX_OF_NAME = {name: int(i) for name, i in zip(OFFICIAL, np.random.default_rng(5).permutation(32))}
OFFICIAL_OF_RAW = np.array([OFFICIAL[name] for name in sorted(OFFICIAL, key=INDEX_OF_NAME.get)])
NUM_FRAMES, NUM_SWEEPS, KEY_POINTS, SWEEP_POINTS = 2, 2, 800, 300
NAN_ROWS = (10, 11)


def key_raw_label(rows):
    return (rows * 7 + 3) % 32


def sweep_raw_label(rows, sweep):
    return (rows * 5 + sweep + 1) % 32


def scan(rng, num, ego_rows=0):
    """(num, 5) float32 [x, y, z, row, 0]; some points outside the range, `ego_rows` on the ego vehicle."""
    points = np.zeros((num, 5), dtype=np.float32)
    points[:, 0:2] = rng.uniform(-60, 60, (num, 2))
    points[:, 2] = rng.uniform(-6, 4, num)
    points[:ego_rows, 0:2] = rng.uniform(-0.9, 0.9, (ego_rows, 2))
    points[:, 3] = np.arange(num)
    return points


def build_dataroot(base):
    """DATA_PATH with VERSION/ holding tables, scans, lidarseg + lidarseg_sweeps labels and infos.pkl."""
    rng = np.random.default_rng(0)
    root = base / VERSION
    for folder in (VERSION, 'samples/LIDAR_TOP', 'sweeps/LIDAR_TOP', f'lidarseg/{VERSION}',
                   f'lidarseg_sweeps/{VERSION}'):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / VERSION / 'category.json').write_text(json.dumps(
        [{'token': f'c{i}', 'name': name, 'description': '', 'index': i} for name, i in INDEX_OF_NAME.items()]))
    infos, records = [], []
    for frame in range(NUM_FRAMES):
        key = scan(rng, KEY_POINTS)
        key[list(NAN_ROWS), 0] = np.nan
        lidar_token = f'keysd{frame}'
        key.tofile(root / f'samples/LIDAR_TOP/key{frame}.pcd.bin')
        key_raw_label(np.arange(KEY_POINTS)).astype(np.uint8).tofile(
            root / f'lidarseg/{VERSION}/{lidar_token}_lidarseg.bin')
        records.append({'token': lidar_token, 'sample_data_token': lidar_token,
                        'filename': f'lidarseg/{VERSION}/{lidar_token}_lidarseg.bin'})
        sweeps = []
        for k in range(NUM_SWEEPS):
            token = f'sweepsd{frame}_{k}'
            scan(rng, SWEEP_POINTS, ego_rows=15).tofile(root / f'sweeps/LIDAR_TOP/{token}.pcd.bin')
            sweep_raw_label(np.arange(SWEEP_POINTS), k).astype(np.uint8).tofile(
                root / f'lidarseg_sweeps/{VERSION}/{token}_lidarseg.bin')
            transform = np.eye(4)
            transform[:3, 3] = [0.5 * (k + 1), -0.2, 0.0]
            sweeps.append({'lidar_path': f'sweeps/LIDAR_TOP/{token}.pcd.bin', 'sample_data_token': token,
                           'transform_matrix': transform, 'time_lag': 0.05 * (k + 1),
                           'global_from_car': np.eye(4), 'car_from_current': np.eye(4)})
        infos.append({'lidar_path': f'samples/LIDAR_TOP/key{frame}.pcd.bin', 'token': f'sample{frame}',
                      'lidar_token': lidar_token, 'scene_token': f'scene{frame}', 'sweeps': sweeps,
                      'ref_from_car': np.eye(4), 'car_from_global': np.eye(4), 'timestamp': float(frame),
                      'info_schema': INFO_SCHEMA})
    (root / VERSION / 'lidarseg.json').write_text(json.dumps(records))
    with open(root / 'infos.pkl', 'wb') as handle:
        pickle.dump(infos, handle)
    return base


def make_cfg(data_path, task='segmentation', **overrides):
    cfg = EasyDict({
        'DATASET': 'NuScenesDataset', 'DATA_PATH': str(data_path), 'VERSION': VERSION, 'MAX_SWEEPS': 1 + NUM_SWEEPS,
        'TASK': task, 'INFO_PATH': {'train': ['infos.pkl'], 'test': ['infos.pkl']},
        'POINT_CLOUD_RANGE': [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0],
        'DATA_AUGMENTOR': {'DISABLE_AUG_LIST': [], 'AUG_CONFIG_LIST': [
            {'NAME': 'random_world_flip', 'ALONG_AXIS_LIST': ['x', 'y']},
            {'NAME': 'random_world_rotation', 'WORLD_ROT_ANGLE': [-0.4, 0.4]},
            {'NAME': 'random_world_scaling', 'WORLD_SCALE_RANGE': [0.95, 1.05]},
            {'NAME': 'random_world_translation', 'NOISE_TRANSLATE_STD': [0.3, 0.3, 0.1]}]},
        'POINT_FEATURE_ENCODING': {'encoding_type': 'absolute_coordinates_encoding',
                                   'src_feature_list': ['x', 'y', 'z', 'intensity', 'timestamp'],
                                   'used_feature_list': ['x', 'y', 'z', 'intensity', 'timestamp']},
        'DATA_PROCESSOR': [
            {'NAME': 'mask_points_and_boxes_outside_range', 'REMOVE_OUTSIDE_BOXES': True, 'MASK_Z': True},
            {'NAME': 'shuffle_points', 'SHUFFLE_ENABLED': {'train': True, 'test': True}},
            {'NAME': 'transform_points_to_voxels_placeholder', 'VOXEL_SIZE': [0.1, 0.1, 0.2]}],
    })
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope='module')
def data_path(tmp_path_factory):
    return build_dataroot(tmp_path_factory.mktemp('segocc'))


def raw_scan(data_path, relpath):
    return np.fromfile(data_path / VERSION / relpath, dtype=np.float32).reshape(-1, 5)


def check_seg_sample(dataset, index, sample, label_sweeps):
    """Every row traced back through its intensity (= raw row) and time lag (= part): xyz, label, raw index."""
    info = dataset.infos[index]
    points, labels, raw_index = sample['points'], sample['point_seg_labels'], sample['point_raw_index']
    assert labels.dtype == raw_index.dtype == np.int64
    assert labels.shape == raw_index.shape == (len(points),)
    part = np.rint(points[:, 4] / 0.05).astype(int)  # 0 = key frame, k + 1 = sweep k
    row = points[:, 3].astype(np.int64)
    scans = [raw_scan(dataset.root_path.parent, info['lidar_path'])] + \
        [raw_scan(dataset.root_path.parent, sweep['lidar_path']) for sweep in info['sweeps']]
    matrix = sample['lidar_aug_matrix'].astype(np.float64)
    for p in np.unique(part):
        mine = part == p
        raw = scans[p][row[mine]]
        xyz = raw[:, :3].astype(np.float64)
        if p > 0:
            xyz = xyz + info['sweeps'][p - 1]['transform_matrix'][:3, 3]
        np.testing.assert_allclose(points[mine, :3], xyz @ matrix[:3, :3].T + matrix[:3, 3], atol=1e-4)
        if p == 0:
            np.testing.assert_array_equal(raw_index[mine], row[mine])
            np.testing.assert_array_equal(labels[mine], OFFICIAL_OF_RAW[key_raw_label(row[mine])])
        else:
            assert (raw_index[mine] == -1).all()
            expected = OFFICIAL_OF_RAW[sweep_raw_label(row[mine], p - 1)] if label_sweeps else 0
            np.testing.assert_array_equal(labels[mine], expected)
    # coverage: exactly the finite key-frame points inside the range (away from the border), none twice
    key_rows = row[part == 0]
    assert len(np.unique(key_rows)) == len(key_rows) and not set(NAN_ROWS) & set(key_rows.tolist())
    moved = scans[0][:, :3].astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    low, high = dataset.point_cloud_range[:3], dataset.point_cloud_range[3:]
    inside = np.all((moved > low + 1e-3) & (moved < high - 1e-3), axis=1)
    assert set(np.flatnonzero(inside)) <= set(key_rows.tolist())
    return part, row


@pytest.mark.parametrize('label_sweeps', [False, True])
def test_labels_stay_aligned_through_augmentation(data_path, label_sweeps):
    dataset = NuScenesDataset(make_cfg(data_path, SEG_LABEL_SWEEPS=label_sweeps), SEG_CLASSES, training=True)
    flips, rotations = set(), []
    for seed in range(3):
        for index in range(NUM_FRAMES):
            np.random.seed(seed)
            sample = dataset[index]
            part, row = check_seg_sample(dataset, index, sample, label_sweeps)
            assert set(part.tolist()) == {0, 1, 2} and (np.diff(row[part == 0]) < 0).any()  # sweeps, shuffled
            assert 'gt_boxes' not in sample and sample['points'].shape[1] == 5
            flips.add((sample['flip_x'], sample['flip_y']))
            rotations.append(sample['noise_rot'])
    assert len(flips) > 1 and np.ptp(rotations) > 0.05
    meta = sample['metadata']
    assert meta['lidar_token'] == dataset.infos[index]['lidar_token'] and meta['num_raw_points'] == KEY_POINTS
    assert Path(meta['lidar_path']).is_absolute() and Path(meta['lidar_path']).samefile(
        data_path / VERSION / dataset.infos[index]['lidar_path'])


def test_test_mode_and_collate(data_path):
    dataset = NuScenesDataset(make_cfg(data_path), SEG_CLASSES, training=False)
    samples = [dataset[0], dataset[1]]
    for index, sample in enumerate(samples):
        check_seg_sample(dataset, index, sample, label_sweeps=False)
        np.testing.assert_array_equal(sample['lidar_aug_matrix'], np.eye(4))
    batch = collate_batch(samples)
    assert batch['point_seg_labels'].shape == batch['point_raw_index'].shape == (len(batch['points']),)
    for b, sample in enumerate(samples):
        rows = batch['points'][:, 0] == b
        np.testing.assert_array_equal(batch['points'][rows, 1:], sample['points'])
        np.testing.assert_array_equal(batch['point_seg_labels'][rows], sample['point_seg_labels'])
        np.testing.assert_array_equal(batch['point_raw_index'][rows], sample['point_raw_index'])


# ---- occupancy ----------------------------------------------------------------------------------------------------

OCC_RANGE = np.array([-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
OCC_VOXEL = 0.2


def write_occupancy_frame(occ_root, info, rng):
    """Labelled 3x3x3 blocks around centre voxels (some blocks noise, some left free) and, as the key frame, one
    point per block at its centre voxel's centre with the expected label as intensity (0 free, 255 noise)."""
    centres = np.stack(np.meshgrid(np.arange(20, 500, 24), np.arange(20, 500, 24), np.arange(4, 37, 8),
                                   indexing='ij'), axis=-1).reshape(-1, 3)  # (x, y, z), blocks far apart
    labels = rng.integers(-1, 17, len(centres))  # -1: free block (no rows)
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing='ij'), axis=-1).reshape(-1, 3)
    voxels = (centres[:, None, :] + offsets[None]).reshape(-1, 3)
    block_labels = np.repeat(labels, len(offsets))
    keep = block_labels >= 0
    rows = np.concatenate([voxels[keep][:, ::-1], block_labels[keep, None]], axis=1).astype(np.int32)
    path = occ_root / f'scene_{info["scene_token"]}' / 'occupancy' / f'{info["lidar_token"]}.npy'
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, rows[rng.permutation(len(rows))])
    points = np.zeros((len(centres), 5), dtype=np.float32)
    points[:, :3] = (centres + 0.5) * OCC_VOXEL + OCC_RANGE[:3]
    points[:, 3] = np.where(labels < 0, 0, np.where(labels == 0, 255, labels))
    return points


@pytest.fixture(scope='module')
def occ_data_path(tmp_path_factory):
    base = build_dataroot(tmp_path_factory.mktemp('occ'))
    root = base / VERSION
    infos = pickle.loads((root / 'infos.pkl').read_bytes())
    rng = np.random.default_rng(3)
    for info in infos:
        write_occupancy_frame(root / 'nuScenes-Occupancy', info, rng).tofile(root / info['lidar_path'])
    return base


def test_occupancy_follows_the_point_augmentation(occ_data_path):
    cfg = make_cfg(occ_data_path, 'occupancy', MAX_SWEEPS=1)
    cfg.DATA_PROCESSOR = [{'NAME': 'shuffle_points', 'SHUFFLE_ENABLED': {'train': True, 'test': False}}]
    dataset = NuScenesDataset(cfg, SEG_CLASSES, training=True)
    moved = 0
    for seed in range(4):
        np.random.seed(seed)
        sample = dataset[seed % NUM_FRAMES]
        occ = sample['gt_occupancy']
        assert occ.shape == (512, 512, 40) and occ.dtype == np.uint8 and 'gt_boxes' not in sample
        assert set(np.unique(occ).tolist()) <= set(range(17)) | {255}
        voxel = np.floor((sample['points'][:, :3] - OCC_RANGE[:3]) / OCC_VOXEL).astype(int)
        inside = np.all((voxel >= 0) & (voxel < [512, 512, 40]), axis=1)
        assert inside.mean() > 0.7
        np.testing.assert_array_equal(occ[tuple(voxel[inside].T)], sample['points'][inside, 3])
        moved += not np.allclose(sample['lidar_aug_matrix'], np.eye(4))
        assert sample['metadata']['scene_token'] == dataset.infos[seed % NUM_FRAMES]['scene_token']
    assert moved == 4
    test_set = NuScenesDataset(cfg, SEG_CLASSES, training=False)
    batch = collate_batch([test_set[0], test_set[1]])
    assert batch['gt_occupancy'].shape == (2, 512, 512, 40)
    rows = test_set.infos[0]
    expected = np.load(occ_data_path / VERSION / 'nuScenes-Occupancy' / f'scene_{rows["scene_token"]}' /
                       'occupancy' / f'{rows["lidar_token"]}.npy')
    z, y, x, label = expected.T
    np.testing.assert_array_equal(batch['gt_occupancy'][0][x, y, z], np.where(label == 0, 255, label))
    assert np.count_nonzero(batch['gt_occupancy'][0]) == len(expected)


def test_occupancy_files_checked_at_build(occ_data_path, tmp_path):
    cfg = make_cfg(occ_data_path, 'occupancy', MAX_SWEEPS=1, OCC_PATH=str(tmp_path / 'elsewhere'))
    with pytest.raises(MissingDataFilesError, match=r'2 of 2 occupancy files.*elsewhere/scene_scene0/occupancy/'
                                                    r'keysd0\.npy.*OCC_PATH'):
        NuScenesDataset(cfg, SEG_CLASSES, training=False)


# ---- bad input and config errors ----------------------------------------------------------------------------------

def copy_dataroot(data_path, tmp_path):
    import shutil
    shutil.copytree(data_path, tmp_path / 'copy', symlinks=True)
    return tmp_path / 'copy'


def test_bad_label_files_name_the_file(data_path, tmp_path):
    base = copy_dataroot(data_path, tmp_path)
    label = base / VERSION / f'lidarseg/{VERSION}/keysd0_lidarseg.bin'
    np.zeros(KEY_POINTS - 1, dtype=np.uint8).tofile(label)
    dataset = NuScenesDataset(make_cfg(base), SEG_CLASSES, training=False)
    with pytest.raises(LidarsegError, match=re.escape(str(label)) + f'.*{KEY_POINTS - 1} labels.*key0.pcd.bin has '
                                            f'{KEY_POINTS} points'):
        dataset[0]
    np.full(KEY_POINTS, 32, dtype=np.uint8).tofile(label)
    with pytest.raises(LidarsegError, match=re.escape(str(label)) + r'.*\[32\].*0\.\.31'):
        dataset[0]
    label.unlink()
    with pytest.raises(MissingDataFilesError, match=r'infos\.pkl.*1 of 2 lidarseg label files.*keysd0_lidarseg'):
        NuScenesDataset(make_cfg(base), SEG_CLASSES, training=False)


def test_sweep_labels_checked_when_requested(data_path, tmp_path):
    base = copy_dataroot(data_path, tmp_path)
    (base / VERSION / f'lidarseg_sweeps/{VERSION}/sweepsd1_0_lidarseg.bin').unlink()
    NuScenesDataset(make_cfg(base), SEG_CLASSES, training=True)  # sweep labels not read: fine
    with pytest.raises(MissingDataFilesError, match=r'lidarseg_sweeps/v1\.0-mini/sweepsd1_0_lidarseg\.bin'):
        NuScenesDataset(make_cfg(base, SEG_LABEL_SWEEPS=True), SEG_CLASSES, training=True)


def test_infos_without_tokens_ask_to_regenerate(data_path, tmp_path):
    base = copy_dataroot(data_path, tmp_path)
    infos = pickle.loads((base / VERSION / 'infos.pkl').read_bytes())
    for info in infos:
        del info['lidar_token'], info['scene_token']
    (base / VERSION / 'old.pkl').write_bytes(pickle.dumps(infos))
    for task in ('segmentation', 'occupancy'):
        cfg = make_cfg(base, task, INFO_PATH={'train': ['old.pkl'], 'test': ['old.pkl']})
        with pytest.raises(InfoSchemaError, match=r"old\.pkl.*\['lidar_token', 'scene_token'\].*regenerate"):
            NuScenesDataset(cfg, SEG_CLASSES, training=False)
    cfg = make_cfg(base, 'detection', INFO_PATH={'train': ['old.pkl'], 'test': ['old.pkl']})
    assert len(NuScenesDataset(cfg, [], training=False)) == NUM_FRAMES  # detection does not need them


@pytest.mark.parametrize('task', ['segmentation', 'occupancy'])
def test_config_errors(data_path, task):
    gt_sampling = make_cfg(data_path, task)
    gt_sampling.DATA_AUGMENTOR.AUG_CONFIG_LIST.insert(0, EasyDict({'NAME': 'gt_sampling', 'DB_INFO_PATH': ['x.pkl']}))
    with pytest.raises(ConfigError, match=f'AUG_CONFIG_LIST gt_sampling with DATA_CONFIG.TASK: {task}'):
        NuScenesDataset(gt_sampling, SEG_CLASSES, training=True)
    with pytest.raises(ConfigError, match='BALANCED_RESAMPLING'):
        NuScenesDataset(make_cfg(data_path, task, BALANCED_RESAMPLING=True), SEG_CLASSES, training=True)
    with pytest.raises(ConfigError, match=f'CLASS_NAMES with DATA_CONFIG.TASK: {task}.*16 lidarseg'):
        NuScenesDataset(make_cfg(data_path, task), SEG_CLASSES[::-1], training=False)
    with pytest.raises(ConfigError, match="TASK: 'panoptic'.*'detection', 'segmentation', 'occupancy'"):
        NuScenesDataset(make_cfg(data_path, 'panoptic'), SEG_CLASSES, training=False)
    if task == 'segmentation':
        hard = make_cfg(data_path, task)
        hard.DATA_PROCESSOR[2] = EasyDict({'NAME': 'transform_points_to_voxels', 'VOXEL_SIZE': [0.1, 0.1, 0.2],
                                           'MAX_POINTS_PER_VOXEL': 10, 'MAX_NUMBER_OF_VOXELS': {'test': 10}})
        with pytest.raises(ConfigError, match=r"transform_points_to_voxels.*\['point_seg_labels', 'point_raw_index'\]"):
            NuScenesDataset(hard, SEG_CLASSES, training=False)


# ---- on the synthetic nuScenes dataset, against the devkit ---------------------------------------------------------

def test_synthetic_dataset_labels_match_the_devkit(synthetic_nuscenes_data_path, synthetic_nuscenes_version):
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    from nuscenes.nuscenes import NuScenes
    root = synthetic_nuscenes_data_path / synthetic_nuscenes_version
    nusc = NuScenes(version=synthetic_nuscenes_version, dataroot=str(root), verbose=False)
    mapper = LidarsegClassMapper(nusc)
    cfg = make_cfg(synthetic_nuscenes_data_path, VERSION=synthetic_nuscenes_version, MAX_SWEEPS=3,
                   INFO_PATH={'train': ['nuscenes_infos_10sweeps_train.pkl'],
                              'test': ['nuscenes_infos_10sweeps_val.pkl']})
    dataset = NuScenesDataset(cfg, SEG_CLASSES, training=False)
    for index in (0, len(dataset.infos) - 1):
        info = dataset.infos[index]
        sample = nusc.get('sample', info['token'])
        assert info['lidar_token'] == sample['data']['LIDAR_TOP'] and info['scene_token'] == sample['scene_token']
        out = dataset[index]
        raw = np.fromfile(root / nusc.get('lidarseg', info['lidar_token'])['filename'], dtype=np.uint8)
        expected = mapper.convert_label(raw)
        key = out['point_raw_index'] >= 0
        assert key.sum() > 1000 and (~key).sum() > 1000 and (out['point_seg_labels'][~key] == 0).all()
        np.testing.assert_array_equal(out['point_seg_labels'][key], expected[out['point_raw_index'][key]])
        assert len(np.unique(out['point_seg_labels'][key])) > 3
        assert out['metadata']['num_raw_points'] == len(raw)


# ---- teacher features and segmentation columns together (the generic mechanism) -----------------------------------

class ToySegDataset(DatasetTemplate):
    """Template-level: teacher features (F = 3) and the two segmentation columns behind x, y, z, intensity (= row)."""
    SUPPORTED_TASKS = TASKS

    def __len__(self):
        return 1

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        rows = np.arange(500)
        points = np.concatenate([rng.uniform(-60, 60, (500, 3)), rows[:, None]], axis=1)
        values = {'point_teacher_features': np.stack([rows, 2 * rows, -rows], axis=1) + 0.25,
                  'point_seg_labels': rows % 17, 'point_raw_index': np.where(rows % 3 == 0, -1, rows)}
        assert [c.key for c in self.carried_columns] == list(values)
        return self.prepare_data({'points': append_columns(points, self.carried_columns, values, 'toy'),
                                  'frame_id': 'toy'})


def test_teacher_features_and_segmentation_columns_together():
    cfg = make_cfg('/nonexistent', TEACHER_FEATURES={'NAME': 'toy_teacher', 'NUM_FEATURES': 3})
    cfg.POINT_FEATURE_ENCODING = {'encoding_type': 'absolute_coordinates_encoding',
                                  'src_feature_list': ['x', 'y', 'z', 'intensity'],
                                  'used_feature_list': ['x', 'y', 'z', 'intensity']}
    dataset = ToySegDataset(cfg, SEG_CLASSES, training=True)
    np.random.seed(0)
    sample = dataset[0]
    row = sample['points'][:, 3].astype(np.int64)
    assert 0 < len(row) < 500 and (np.diff(row) < 0).any()  # range-masked and shuffled
    np.testing.assert_array_equal(sample['point_teacher_features'],
                                  np.stack([row, 2 * row, -row], axis=1).astype(np.float32) + 0.25)
    assert sample['point_teacher_features'].dtype == np.float32 and sample['point_seg_labels'].dtype == np.int64
    np.testing.assert_array_equal(sample['point_seg_labels'], row % 17)
    np.testing.assert_array_equal(sample['point_raw_index'], np.where(row % 3 == 0, -1, row))
    with pytest.raises(ValueError, match=r'toy: carried column point_seg_labels has shape \(3, 1\)'):
        append_columns(np.zeros((2, 4)), SEG_COLUMNS, {'point_seg_labels': np.zeros(3), 'point_raw_index': [1, 2]},
                       'toy')
    with pytest.raises(ValueError, match='2\\*\\*24'):
        append_columns(np.zeros((1, 4)), SEG_COLUMNS, {'point_seg_labels': [0], 'point_raw_index': [2 ** 24]}, 'x')


def test_occupancy_refuses_augmentation_orders_its_matrix_cannot_follow(occ_data_path):
    def with_order(*names, flip_axes=('x', 'y')):
        cfg = make_cfg(occ_data_path, 'occupancy', MAX_SWEEPS=1)
        entries = {entry.NAME: entry for entry in cfg.DATA_AUGMENTOR.AUG_CONFIG_LIST}
        entries['random_world_flip'].ALONG_AXIS_LIST = list(flip_axes)
        cfg.DATA_AUGMENTOR.AUG_CONFIG_LIST = [entries[name] for name in names]
        return cfg
    # the matrix composes flip -> rotation -> scaling -> translation; a subset in that order is fine
    NuScenesDataset(with_order('random_world_flip', 'random_world_scaling'), SEG_CLASSES, training=True)
    for names in (('random_world_rotation', 'random_world_flip'),
                  ('random_world_translation', 'random_world_scaling'),
                  ('random_world_scaling', 'random_world_scaling')):
        with pytest.raises(ConfigError, match='may appear once and in that order'):
            NuScenesDataset(with_order(*names), SEG_CLASSES, training=True)
    with pytest.raises(ConfigError, match=r"ALONG_AXIS_LIST \['x', 'x'\]"):
        NuScenesDataset(with_order('random_world_flip', flip_axes=('x', 'x')), SEG_CLASSES, training=True)
    # evaluation does not augment: any order builds
    NuScenesDataset(with_order('random_world_rotation', 'random_world_flip'), SEG_CLASSES, training=False)


def test_occupancy_grid_extent_must_be_the_point_cloud_range(occ_data_path):
    cfg = make_cfg(occ_data_path, 'occupancy', MAX_SWEEPS=1, OCC_POINT_CLOUD_RANGE=[-40, -40, -1, 40, 40, 5.4])
    with pytest.raises(ConfigError, match='OCC_POINT_CLOUD_RANGE .* must equal DATA_CONFIG.POINT_CLOUD_RANGE'):
        NuScenesDataset(cfg, SEG_CLASSES, training=False)


def test_the_unlabelled_test_version_gives_ignore_labels_and_raw_indices(data_path, tmp_path):
    (tmp_path / 'v1.0-test').symlink_to(data_path / VERSION, target_is_directory=True)
    cfg = make_cfg(tmp_path, 'segmentation', VERSION='v1.0-test', MAX_SWEEPS=1)
    (data_path / VERSION / VERSION / 'lidarseg.json').rename(tmp_path / 'lidarseg.json')  # as in the test release
    try:
        sample = NuScenesDataset(cfg, SEG_CLASSES, training=False)[0]
    finally:
        (tmp_path / 'lidarseg.json').rename(data_path / VERSION / VERSION / 'lidarseg.json')
    assert (sample['point_seg_labels'] == 0).all()
    raw = sample['point_raw_index']
    assert raw.min() >= 0 and len(np.unique(raw)) == len(raw)
