"""nuScenes-Occupancy (OpenOccupancy) ground truth of the synthetic nuScenes writer: files, geometry against
brute-force references and the LiDAR scans, the occ infos, determinism and the rerun policy.

References are independent of the writer: frames come from the devkit's tables (pyquaternion), boxes from
`nusc.get_sample_data`, the general -> challenge class map from the devkit's `LidarsegClassMapper`.
"""
import pickle
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion

from pcdet.datasets.synthetic.nuscenes import parse_args
from pcdet.datasets.synthetic.nuscenes_writer import SyntheticNuScenesConfig, generate_nuscenes

GRID_MIN = np.array([-51.2, -51.2, -5.0])
VOXEL = 0.2
SHAPE_ZYX = (40, 512, 512)
DRIVEABLE, CAR = 11, 4
SMALL = dict(version='v1.0-mini', num_scenes=2, samples_per_scene=2, sweeps_before_first=1, azimuth_steps=256,
             num_objects=16, seed=1, with_occupancy=True)
INFO_FIELDS = ('lidar_path', 'token', 'sweeps', 'cams', 'lidar2ego_translation', 'lidar2ego_rotation',
               'ego2global_translation', 'ego2global_rotation', 'prev', 'next', 'scene_token', 'can_bus', 'timestamp',
               'lidar_token', 'lidarseg', 'frame_idx')
SWEEP_FIELDS = ('data_path', 'type', 'sample_data_token', 'sensor2ego_translation', 'sensor2ego_rotation',
                'ego2global_translation', 'ego2global_rotation', 'timestamp', 'sensor2lidar_rotation',
                'sensor2lidar_translation')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('occ') / 'v1.0-mini'
    generate_nuscenes(SyntheticNuScenesConfig(root=str(root), **SMALL), progress=False)
    return root, NuScenes(version='v1.0-mini', dataroot=str(root), verbose=False)


def pose(record):
    matrix = np.eye(4)
    matrix[:3, :3] = Quaternion(record['rotation']).rotation_matrix
    matrix[:3, 3] = record['translation']
    return matrix


def global_from_lidar(nusc, sd_token):
    sd = nusc.get('sample_data', sd_token)
    return pose(nusc.get('ego_pose', sd['ego_pose_token'])) @ pose(nusc.get('calibrated_sensor',
                                                                             sd['calibrated_sensor_token']))


def key_frames(nusc):
    for sample in nusc.sample:
        sd_token = sample['data']['LIDAR_TOP']
        yield sample['scene_token'], sd_token


def load_rows(root, scene_token, sd_token):
    return np.load(Path(root) / 'nuScenes-Occupancy' / f'scene_{scene_token}' / 'occupancy' / f'{sd_token}.npy')


def dense(rows):
    volume = np.full(SHAPE_ZYX, -1, dtype=np.int64)  # -1 = free
    volume[rows[:, 0], rows[:, 1], rows[:, 2]] = rows[:, 3]
    return volume


def test_one_file_per_key_frame_with_the_official_layout(dataset):
    root, nusc = dataset
    files = sorted((root / 'nuScenes-Occupancy').rglob('*'))
    expected = {root / 'nuScenes-Occupancy' / f'scene_{scene}' / 'occupancy' / f'{sd}.npy'
                for scene, sd in key_frames(nusc)}
    assert {f for f in files if f.is_file()} == expected and len(expected) == len(nusc.sample)
    labels = set()
    for scene_token, sd_token in key_frames(nusc):
        rows = load_rows(root, scene_token, sd_token)
        assert rows.dtype == np.int16 and rows.ndim == 2 and rows.shape[1] == 4 and len(rows) > 100_000
        assert (rows[:, :3] >= 0).all() and (rows[:, :3] < SHAPE_ZYX).all()
        assert ((rows[:, 3] >= 0) & (rows[:, 3] <= 16)).all()
        linear = np.ravel_multi_index(tuple(rows[:, :3].T.astype(np.int64)), SHAPE_ZYX)
        assert (np.diff(linear) > 0).all()  # one row per voxel, sorted by (z, y, x)
        labels |= set(np.unique(rows[:, 3]).tolist())
    assert labels >= set(range(1, 17))  # every challenge class occurs


def test_box_object_voxels_equal_a_brute_force_reference(dataset):
    """Occupied <=> the voxel cube and the box are not separated along the 3 grid axes or the 3 box axes: every
    voxel of a window around the box, its 8 corners and the box's 8 corners projected on each axis."""
    root, nusc = dataset
    offsets = np.array([[dx, dy, dz] for dx in (-.5, .5) for dy in (-.5, .5) for dz in (-.5, .5)]) * VOXEL
    checked = 0
    for scene_token, sd_token in key_frames(nusc):
        _, boxes, _ = nusc.get_sample_data(sd_token)  # annotation boxes in the LIDAR_TOP frame
        volume = dense(load_rows(root, scene_token, sd_token))
        for box in [b for b in boxes if b.name == 'vehicle.car' and np.hypot(*b.center[:2]) < 30]:
            corners = box.corners().T  # (8, 3)
            low, high = corners.min(0) - 0.5, corners.max(0) + 0.5
            if any((b.corners().T.min(0) < high).all() and (b.corners().T.max(0) > low).all()
                   for b in boxes if b is not box):
                continue  # another object inside the window
            lo = np.maximum(np.floor((low - GRID_MIN) / VOXEL).astype(int), 0)
            hi = np.minimum(np.ceil((high - GRID_MIN) / VOXEL).astype(int), SHAPE_ZYX[::-1])
            ijk = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing='ij'), -1).reshape(-1, 3)
            cubes = GRID_MIN + (ijk[:, None, :] + 0.5) * VOXEL + offsets  # (V, 8, 3)
            separated = np.zeros(len(ijk), dtype=bool)
            for axis in list(np.eye(3)) + list(box.rotation_matrix.T):
                cube_side, box_side = cubes @ axis, corners @ axis
                separated |= (cube_side.max(1) < box_side.min()) | (cube_side.min(1) > box_side.max())
            written = volume[ijk[:, 2], ijk[:, 1], ijk[:, 0]] == CAR
            assert (~separated).sum() > 500 and np.array_equal(written, ~separated)
            checked += 1
    assert checked >= 2


def test_ground_under_the_ego_is_driveable_surface_and_the_ego_is_not_occupied(dataset):
    root, nusc = dataset
    for scene_token, sd_token in key_frames(nusc):
        lidar = global_from_lidar(nusc, sd_token)
        ego = pose(nusc.get('ego_pose', nusc.get('sample_data', sd_token)['ego_pose_token']))
        ego_origin = np.linalg.solve(lidar, ego @ [0.0, 0.0, 0.0, 1.0])[:3]  # rear axle on the ground
        i, j = ((ego_origin[:2] - GRID_MIN[:2]) // VOXEL).astype(int)
        column = dense(load_rows(root, scene_token, sd_token))[:, j, i]
        occupied = np.nonzero(column >= 0)[0]
        assert len(occupied) in (1, 2) and (column[occupied] == DRIVEABLE).all()
        centre_z = [(lidar @ [*(GRID_MIN + (np.array([i, j, k]) + 0.5) * VOXEL), 1.0])[2] for k in occupied]
        assert all(abs(z) <= 0.11 for z in centre_z)  # the voxels the ground plane crosses; nothing above


def test_lidar_points_lie_in_occupied_voxels_with_their_label(dataset):
    """Required: >= 99.5 % of key-frame points inside the grid fall in an occupied voxel and >= 97 % in a voxel
    whose label is the point's challenge label. Not 100 %: a point on the ground or on a clutter surface can sit,
    with its +-3 cm range noise, in a neighbouring voxel the surface does not reach; and a voxel on a border (ground
    kinds meeting, ground next to an object's or a wall's base) holds one label but points of both sides."""
    root, nusc = dataset
    mapper = LidarsegClassMapper(nusc)
    to_challenge = mapper.get_fine_idx_2_coarse_idx()
    occupied = agree = total = 0
    for scene_token, sd_token in key_frames(nusc):
        points = np.fromfile(nusc.get_sample_data_path(sd_token), dtype=np.float32).reshape(-1, 5)[:, :3]
        labels = np.fromfile(root / nusc.get('lidarseg', sd_token)['filename'], dtype=np.uint8)
        challenge = np.array([to_challenge[int(v)] for v in labels])
        index = np.floor((points - GRID_MIN) / VOXEL).astype(int)
        inside = ((index >= 0) & (index < SHAPE_ZYX[::-1])).all(axis=1) & (challenge > 0)
        found = dense(load_rows(root, scene_token, sd_token))[index[inside, 2], index[inside, 1], index[inside, 0]]
        occupied += (found >= 0).sum()
        agree += (found == challenge[inside]).sum()
        total += inside.sum()
    assert total > 10_000
    assert occupied / total >= 0.995, occupied / total
    assert agree / total >= 0.97, agree / total


def test_occ_infos_fields_and_tokens(dataset):
    root, nusc = dataset
    official = create_splits_scenes()
    lidarseg_tokens = {record['token'] for record in nusc.lidarseg}
    seen = 0
    for split, eval_split in (('train', 'mini_train'), ('val', 'mini_val')):
        with open(root / f'nuscenes_occ_infos_{split}.pkl', 'rb') as handle:
            data = pickle.load(handle)
        assert data['metadata'] == {'version': 'v1.0-mini'}
        for info in data['infos']:
            assert set(INFO_FIELDS) <= set(info)
            sample = nusc.get('sample', info['token'])
            assert nusc.get('scene', sample['scene_token'])['name'] in official[eval_split]
            assert info['lidar_token'] == sample['data']['LIDAR_TOP'] and info['lidar_token'] in lidarseg_tokens
            assert info['scene_token'] == sample['scene_token'] and info['timestamp'] == sample['timestamp']
            assert (info['prev'], info['next']) == (sample['prev'], sample['next']) and info['cams'] == {}
            assert info['lidar_path'].replace('./data/nuscenes/', str(root) + '/') == \
                nusc.get_sample_data_path(info['lidar_token'])
            assert (root / info['lidarseg'].replace('./data/nuscenes/', '')).is_file()
            assert load_rows(root, info['scene_token'], info['lidar_token']).shape[1] == 4
            sd = nusc.get('sample_data', info['lidar_token'])
            cs, ego = nusc.get('calibrated_sensor', sd['calibrated_sensor_token']), nusc.get('ego_pose', sd['token'])
            assert np.allclose(info['lidar2ego_rotation'], cs['rotation'])
            assert np.allclose(info['ego2global_translation'], ego['translation'])
            key_inverse = np.linalg.inv(global_from_lidar(nusc, info['lidar_token']))
            assert 1 <= len(info['sweeps']) <= 10
            previous = sd
            for sweep in info['sweeps']:  # newest first, following the prev chain
                assert set(SWEEP_FIELDS) <= set(sweep) and sweep['sample_data_token'] == previous['prev']
                previous = nusc.get('sample_data', sweep['sample_data_token'])
                expected = key_inverse @ global_from_lidar(nusc, previous['token'])
                assert np.allclose(sweep['sensor2lidar_rotation'], expected[:3, :3], atol=1e-9)
                assert np.allclose(sweep['sensor2lidar_translation'], expected[:3, 3], atol=1e-6)
                assert sweep['timestamp'] == previous['timestamp']
            seen += 1
    assert seen == len(nusc.sample)


def test_reruns_are_identical_and_the_manifest_covers_occupancy(tmp_path):
    def tree(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob('*')) if p.is_file()}
    tiny = {**SMALL, 'azimuth_steps': 64, 'samples_per_scene': 2, 'sweeps_before_first': 0}
    first = SyntheticNuScenesConfig(root=str(tmp_path / 'a'), **tiny)
    generate_nuscenes(first, progress=False)
    generate_nuscenes(SyntheticNuScenesConfig(**{**first.__dict__, 'root': str(tmp_path / 'b')}), progress=False,
                      workers=2)
    reference = tree(tmp_path / 'a')
    assert reference == tree(tmp_path / 'b')
    assert sum(name.endswith('.npy') for name in reference) == 4
    assert {'nuscenes_occ_infos_train.pkl', 'nuscenes_occ_infos_val.pkl'} <= set(reference)
    assert generate_nuscenes(first, progress=False)['skipped']
    generate_nuscenes(SyntheticNuScenesConfig(**{**first.__dict__, 'with_occupancy': False}), progress=False)
    after = tree(tmp_path / 'a')
    assert not any(name.endswith('.npy') or 'occ_infos' in name for name in after)
    assert not (tmp_path / 'a' / 'nuScenes-Occupancy').exists()  # emptied folders are removed too
    assert parse_args(['--root', 'x']).with_occupancy is True
    assert parse_args(['--root', 'x', '--no_occupancy']).with_occupancy is False
