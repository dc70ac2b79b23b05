"""nuScenes infos + GT database on the synthetic dataset, checked against the devkit tables independently.

The reference geometry here is computed from the raw json records (sample_annotation, ego_pose, calibrated_sensor)
with pyquaternion, not through pcdet's info code.
"""
import pickle
from pathlib import Path

import numpy as np
import pytest
from pyquaternion import Quaternion

from pcdet.datasets.nuscenes import gt_database
from pcdet.datasets.nuscenes.nuscenes_dataset import main as nuscenes_cli
from pcdet.datasets.nuscenes.nuscenes_utils import DEFAULT_SPLITS, INFO_SCHEMA, build_sweeps, create_nuscenes_info

MAX_SWEEPS = 10
OUTPUT_PREFIXES = ('nuscenes_', 'gt_database', '.')


def link_dataroot(src_root, data_path, version):
    """A private dataroot `data_path/version` whose entries are symlinks to the shared synthetic dataset."""
    dataroot = Path(data_path) / version
    dataroot.mkdir(parents=True)
    for entry in Path(src_root).iterdir():
        if not entry.name.startswith(OUTPUT_PREFIXES):
            (dataroot / entry.name).symlink_to(entry.resolve())
    return dataroot


@pytest.fixture(scope='module')
def built(tmp_path_factory, synthetic_nuscenes_root, synthetic_nuscenes_version):
    """Infos + GT database created once through the CLI entry function; returns (dataroot, nusc, infos)."""
    from nuscenes.nuscenes import NuScenes
    data_path = tmp_path_factory.mktemp('nuscenes_infos')
    dataroot = link_dataroot(synthetic_nuscenes_root, data_path, synthetic_nuscenes_version)
    nuscenes_cli(['--func', 'create_nuscenes_infos', '--cfg_file', 'tools/cfgs/dataset_configs/nuscenes_dataset.yaml',
                  '--version', synthetic_nuscenes_version, '--data_path', str(data_path)])
    infos = {kind: pickle.loads((dataroot / f'nuscenes_infos_{MAX_SWEEPS}sweeps_{kind}.pkl').read_bytes())
             for kind in ('train', 'val')}
    nusc = NuScenes(version=synthetic_nuscenes_version, dataroot=str(dataroot), verbose=False)
    return dataroot, nusc, infos


def split_scene_tokens(nusc, version):
    from nuscenes.utils.splits import create_splits_scenes
    names = set(sum((create_splits_scenes()[split] for split in DEFAULT_SPLITS[version]), []))
    return {scene['token'] for scene in nusc.scene if scene['name'] in names}


def reference_lidar_box(nusc, ann, sd_rec):
    """[x, y, z, l, w, h, yaw, vx, vy] of a sample_annotation in the keyframe LiDAR frame, from the raw records."""
    pose, cs = nusc.get('ego_pose', sd_rec['ego_pose_token']), nusc.get('calibrated_sensor',
                                                                        sd_rec['calibrated_sensor_token'])
    q_pose, q_cs = Quaternion(pose['rotation']), Quaternion(cs['rotation'])
    to_lidar = q_cs.rotation_matrix.T @ q_pose.rotation_matrix.T
    center = q_cs.rotation_matrix.T @ (q_pose.rotation_matrix.T @ (np.array(ann['translation']) -
                                                                  pose['translation']) - cs['translation'])
    heading = to_lidar @ Quaternion(ann['rotation']).rotation_matrix @ np.array([1.0, 0.0, 0.0])
    velocity = to_lidar @ reference_global_velocity(nusc, ann)
    width, length, height = ann['size']
    return np.array([*center, length, width, height, np.arctan2(heading[1], heading[0]), *velocity[:2]])


def reference_global_velocity(nusc, ann, max_time_diff=1.5):
    """Centred (or one-sided) difference of the annotation's neighbours; NaN when unknown (devkit semantics)."""
    if not ann['prev'] and not ann['next']:
        return np.full(3, np.nan)
    first = nusc.get('sample_annotation', ann['prev']) if ann['prev'] else ann
    last = nusc.get('sample_annotation', ann['next']) if ann['next'] else ann
    time_of = lambda a: 1e-6 * nusc.get('sample', a['sample_token'])['timestamp']  # noqa: E731
    dt = time_of(last) - time_of(first)
    if dt > max_time_diff * (2 if ann['prev'] and ann['next'] else 1):
        return np.full(3, np.nan)
    return (np.array(last['translation']) - np.array(first['translation'])) / dt


def test_box_count_equals_devkit_annotations_after_filter(built, synthetic_nuscenes_version):
    _, nusc, infos = built
    scenes = split_scene_tokens(nusc, synthetic_nuscenes_version)
    samples = {s['token'] for s in nusc.sample if s['scene_token'] in scenes}
    expected = sum(1 for ann in nusc.sample_annotation
                   if ann['sample_token'] in samples and ann['num_lidar_pts'] + ann['num_radar_pts'] > 0)
    all_infos = infos['train'] + infos['val']
    assert expected > 0
    assert sum(len(info['gt_boxes']) for info in all_infos) == expected
    assert {info['token'] for info in all_infos} == samples and len(all_infos) == len(samples)
    assert all(info['info_schema'] == INFO_SCHEMA for info in all_infos)


def test_boxes_equal_devkit_boxes_in_lidar_frame(built):
    _, nusc, infos = built
    all_infos = infos['train'] + infos['val']
    for info in all_infos[::max(1, len(all_infos) // 12)]:
        sample = nusc.get('sample', info['token'])
        sd_rec = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
        assert info['lidar_path'] == sd_rec['filename'] and not Path(info['lidar_path']).is_absolute()
        assert info['gt_boxes'].shape == (len(info['gt_names']), 9)
        for box, token, name in zip(info['gt_boxes'], info['gt_boxes_token'], info['gt_names']):
            ann = nusc.get('sample_annotation', token)
            ref = reference_lidar_box(nusc, ann, sd_rec)
            np.testing.assert_allclose(box[:6], ref[:6], atol=1e-4)
            assert abs((box[6] - ref[6] + np.pi) % (2 * np.pi) - np.pi) < 1e-4
            np.testing.assert_allclose(box[7:], ref[7:], atol=1e-4, equal_nan=True)
            assert name in ('ignore', 'car', 'truck', 'construction_vehicle', 'bus', 'trailer', 'barrier',
                            'motorcycle', 'bicycle', 'pedestrian', 'traffic_cone')


def test_sweeps_follow_the_prev_chain(built):
    _, nusc, infos = built
    for info in infos['train'][::5] + infos['val'][::5]:
        sweeps = info['sweeps']
        assert len(sweeps) == MAX_SWEEPS - 1
        sd_rec = nusc.get('sample_data', nusc.get('sample', info['token'])['data']['LIDAR_TOP'])
        chain = []
        while sd_rec['prev'] and len(chain) < MAX_SWEEPS - 1:
            sd_rec = nusc.get('sample_data', sd_rec['prev'])
            chain.append(sd_rec['token'])
        if not chain:  # first frame of a scene: the keyframe itself, repeated
            assert sweeps[0]['transform_matrix'] is None and sweeps[0]['time_lag'] == 0
            chain = [sweeps[0]['sample_data_token']]
        chain += [chain[-1]] * (MAX_SWEEPS - 1 - len(chain))
        assert [s['sample_data_token'] for s in sweeps] == chain
        lags = [s['time_lag'] for s in sweeps]
        assert lags == sorted(lags) and lags[0] >= 0


def test_sweep_transform_maps_sweep_lidar_to_keyframe_lidar(built):
    _, nusc, infos = built
    info = next(i for i in infos['train'] if i['sweeps'][-1]['transform_matrix'] is not None)
    ref_sd = nusc.get('sample_data', nusc.get('sample', info['token'])['data']['LIDAR_TOP'])
    sweep = info['sweeps'][-1]
    sweep_sd = nusc.get('sample_data', sweep['sample_data_token'])
    point = np.array([3.0, -2.0, 1.0])

    def lidar_to_global(sd, p):
        cs, pose = nusc.get('calibrated_sensor', sd['calibrated_sensor_token']), nusc.get('ego_pose',
                                                                                         sd['ego_pose_token'])
        ego = Quaternion(cs['rotation']).rotate(p) + cs['translation']
        return Quaternion(pose['rotation']).rotate(ego) + pose['translation']
    expected_global = lidar_to_global(sweep_sd, point)
    in_ref = sweep['transform_matrix'] @ np.append(point, 1.0)
    np.testing.assert_allclose(lidar_to_global(ref_sd, in_ref[:3]), expected_global, atol=1e-6)
    assert abs(sweep['time_lag'] - 1e-6 * (ref_sd['timestamp'] - sweep_sd['timestamp'])) < 1e-6


def box_local_coordinates(points, box):
    """Points (P, 3) in the box frame (centre at origin, x along the heading)."""
    cos, sin = np.cos(box[6]), np.sin(box[6])
    shifted = points - box[:3]
    return np.stack([shifted[:, 0] * cos + shifted[:, 1] * sin, -shifted[:, 0] * sin + shifted[:, 1] * cos,
                     shifted[:, 2]], axis=1)


def test_gt_database_objects_lie_in_their_boxes(built):
    dataroot, _, infos = built
    db_infos = pickle.loads((dataroot / f'nuscenes_dbinfos_{MAX_SWEEPS}sweeps_withvelo.pkl').read_bytes())
    global_data = np.load(dataroot / f'nuscenes_dbinfos_{MAX_SWEEPS}sweeps_withvelo_global.npy', mmap_mode='r')
    flat = [db for entries in db_infos.values() for db in entries]
    assert len(flat) == sum(len(info['gt_boxes']) for info in infos['train'])
    assert sum(db['num_points_in_gt'] for db in flat) > 0 and global_data.shape[1] == 5
    for db in flat:
        points = np.fromfile(str(dataroot / db['path']), dtype=np.float32).reshape(-1, 5)
        assert points.shape[0] == db['num_points_in_gt']
        start, end = db['global_data_offset']
        np.testing.assert_array_equal(global_data[start:end], points)
        box = db['box3d_lidar']
        np.testing.assert_array_equal(box, infos['train'][db['image_idx']]['gt_boxes'][db['gt_idx']])
        local = box_local_coordinates(points[:, :3].astype(np.float64) + box[:3], box)
        assert np.all(np.abs(local) <= box[3:6] / 2 + 1e-3), db['path']
        assert db['path'].startswith(f'gt_database_{MAX_SWEEPS}sweeps_withvelo/')


def test_interrupted_gt_database_leaves_nothing_and_rerun_works(built, tmp_path, monkeypatch):
    dataroot, _, infos = built
    work_root, frames = link_dataroot(dataroot, tmp_path, 'v'), infos['train'][:6]
    calls = {'n': 0, 'error': RuntimeError}
    real_loader = gt_database.load_points_with_sweeps

    def failing_loader(*args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 3:
            raise calls['error']('simulated interruption')
        return real_loader(*args, **kwargs)
    monkeypatch.setattr(gt_database, 'load_points_with_sweeps', failing_loader)
    with pytest.raises(RuntimeError):
        gt_database.create_groundtruth_database(work_root, frames, MAX_SWEEPS)
    assert sorted(p.name for p in work_root.iterdir() if p.name.startswith(('gt_database', 'nuscenes_db', '.'))) \
        == []
    monkeypatch.setattr(gt_database, 'load_points_with_sweeps', real_loader)
    pkl = gt_database.create_groundtruth_database(work_root, frames, MAX_SWEEPS)
    rerun = pickle.loads(pkl.read_bytes())
    assert sum(len(v) for v in rerun.values()) == sum(len(info['gt_boxes']) for info in frames)
    assert not list(work_root.glob('.gt_database*'))
    calls.update(n=0, error=KeyboardInterrupt)  # an interrupted rerun keeps the complete database of the first
    monkeypatch.setattr(gt_database, 'load_points_with_sweeps', failing_loader)
    with pytest.raises(KeyboardInterrupt):
        gt_database.create_groundtruth_database(work_root, frames, MAX_SWEEPS)
    assert pickle.loads(pkl.read_bytes()).keys() == rerun.keys()
    first_object = next(iter(rerun.values()))[0]['path']
    assert (work_root / first_object).is_file()


def test_missing_dataroot_and_version_folder_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='pcdet.datasets.synthetic.nuscenes') as err:
        create_nuscenes_info('v1.0-mini', tmp_path / 'absent')
    assert str(tmp_path / 'absent') in str(err.value)
    (tmp_path / 'root').mkdir()
    with pytest.raises(FileNotFoundError, match='v1.0-mini') as err:
        create_nuscenes_info('v1.0-mini', tmp_path / 'root')
    assert str(tmp_path / 'root' / 'v1.0-mini') in str(err.value)


class TableStub:
    """The `get(table, token)` part of a NuScenes object over hand-written records."""

    def __init__(self, tables):
        self.tables = tables

    def get(self, table, token):
        return self.tables[table][token]


def test_short_sweep_chains_repeat_the_last_sweep():
    identity = {'translation': [0.0, 0.0, 0.0], 'rotation': [1.0, 0.0, 0.0, 0.0]}
    poses = {f'p{i}': {'translation': [float(i), 0.0, 0.0], 'rotation': [1.0, 0.0, 0.0, 0.0]} for i in range(3)}
    sample_data = {f'sd{i}': {'token': f'sd{i}', 'prev': f'sd{i - 1}' if i else '', 'timestamp': 50000 * i,
                              'filename': f'sweeps/{i}.bin', 'ego_pose_token': f'p{i}',
                              'calibrated_sensor_token': 'cs'} for i in range(3)}
    nusc = TableStub({'ego_pose': poses, 'calibrated_sensor': {'cs': identity}, 'sample_data': sample_data})
    first = build_sweeps(nusc, sample_data['sd0'], np.eye(4), np.eye(4), MAX_SWEEPS)
    assert len(first) == MAX_SWEEPS - 1
    assert all(s['sample_data_token'] == 'sd0' and s['transform_matrix'] is None and s['time_lag'] == 0
               for s in first)
    car_from_global = np.eye(4)
    car_from_global[0, 3] = -2.0
    third = build_sweeps(nusc, sample_data['sd2'], np.eye(4), car_from_global, MAX_SWEEPS)
    assert [s['sample_data_token'] for s in third] == ['sd1'] + ['sd0'] * (MAX_SWEEPS - 2)
    assert third[-1] is third[1] and third[0]['time_lag'] == pytest.approx(0.05)
    np.testing.assert_allclose(third[0]['transform_matrix'][:3, 3], [-1.0, 0.0, 0.0])
    np.testing.assert_allclose(third[1]['transform_matrix'][:3, 3], [-2.0, 0.0, 0.0])


def test_custom_splits_from_splits_json(built, tmp_path, synthetic_nuscenes_version):
    import json
    dataroot, nusc, infos = built
    dataroot_copy = link_dataroot(dataroot, tmp_path, synthetic_nuscenes_version)
    tables = dataroot_copy / synthetic_nuscenes_version
    tables.unlink()
    tables.mkdir()
    for table in (dataroot / synthetic_nuscenes_version).iterdir():
        (tables / table.name).symlink_to(table.resolve())
    names = sorted(scene['name'] for scene in nusc.scene)
    (tables / 'splits.json').unlink(missing_ok=True)  # a symlink into the shared fixture: never write through it
    (tables / 'splits.json').write_text(json.dumps({'my_train': names[:3], 'my_val': names[3:4]}))
    written = create_nuscenes_info(synthetic_nuscenes_version, dataroot_copy, max_sweeps=2,
                                   train_split='my_train', val_split='my_val')
    counts = {kind: len(pickle.loads(path.read_bytes())) for kind, path in written.items()}
    per_scene = len(nusc.sample) // len(nusc.scene)
    assert counts == {'train': 3 * per_scene, 'val': per_scene}
