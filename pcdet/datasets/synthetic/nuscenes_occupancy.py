"""nuScenes-Occupancy (OpenOccupancy) ground truth and info files for the synthetic nuScenes writer.

Files, under the nuScenes dataroot:
    nuScenes-Occupancy/scene_<scene_token>/occupancy/<lidar_token>.npy   one per key frame
    nuscenes_occ_infos_train.pkl, nuscenes_occ_infos_val.pkl            {'infos': [...], 'metadata': {'version'}}
An occupancy file is an int16 (N, 4) array of rows [z, y, x, label], one per occupied voxel of the 512 x 512 x 40
grid (0.2 m, range [-51.2, -51.2, -5, 51.2, 51.2, 3] m) in the key frame's LIDAR_TOP sensor frame, sorted by
(z, y, x); label 0 = noise (objects outside the 16 classes), 1..16 = the lidarseg challenge classes; voxels not
listed are free. What counts as occupied: `occupancy.py`. `<lidar_token>` is the key frame's LIDAR_TOP
sample_data token. Info fields follow OpenOccupancy's `NuscOCCDataset.get_data_info` (mmdet3d v0.17 /
BEVFormer-style nuScenes infos); docs/SYNTHETIC_DATA.md lists them.
"""
import io

import numpy as np

from ...utils.file_utils import atomic_pickle_dump, atomic_save_bytes
from . import nuscenes_schema as schema
from .nuscenes_records import ego_from_sensor
from .occupancy import FREE, VoxelGrid, semantic_occupancy

OCC_ROOT = 'nuScenes-Occupancy'
OCC_GRID = VoxelGrid(pc_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), voxel_size=0.2)
OCC_INFO_FILES = {'train': 'nuscenes_occ_infos_train.pkl', 'val': 'nuscenes_occ_infos_val.pkl'}
INFO_PATH_PREFIX = './data/nuscenes/'  # released infos carry it; OpenOccupancy replaces it with its data_root
MAX_SWEEPS = 10


def occupancy_relpath(scene_token, lidar_token):
    """Dataroot-relative path of the occupancy file of one key frame."""
    return f'{OCC_ROOT}/scene_{scene_token}/occupancy/{lidar_token}.npy'


def object_challenge_ids(scene):
    """(M,) challenge id (0 = noise) of every scene object, through its general nuScenes category."""
    return np.array([schema.challenge_id(schema.category_name(kind, subtype))
                     for kind, subtype in zip(scene.objects.kinds, scene.objects.subtypes)], dtype=np.uint8)


def occupancy_rows(scene, t, global_from_sensor, object_labels=None):
    """(N, 4) int16 rows [z, y, x, label] of the occupied voxels of `OCC_GRID` in the sensor frame at time `t`."""
    labels = object_challenge_ids(scene) if object_labels is None else object_labels
    volume = semantic_occupancy(scene, t, global_from_sensor, OCC_GRID, schema.surface_challenge_lut(), labels)
    flat = volume.reshape(-1)
    occupied = np.flatnonzero(flat != FREE)  # C order of (z, y, x): rows come out sorted by (z, y, x)
    nz, ny, nx = volume.shape
    z, rest = np.divmod(occupied, ny * nx)
    y, x = np.divmod(rest, nx)
    rows = np.empty((len(occupied), 4), dtype=np.int16)
    rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = z, y, x, flat[occupied]
    return rows


def write_occupancy(path, rows):
    """Save rows as a .npy file atomically (not fsynced, like the scans: regenerable)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(rows), allow_pickle=False)
    atomic_save_bytes(buffer.getvalue(), path, durable=False)


def _rotation(record):
    return ego_from_sensor({'rotation': record['rotation'], 'translation': [0.0, 0.0, 0.0]})[:3, :3]


def _prefixed(relative_path):
    return INFO_PATH_PREFIX + relative_path


def build_occ_infos(tables, plans):
    """OpenOccupancy info dicts per split, from the generated tables.

    Args:
        tables: {table name: records} as written (sample, sample_data, ego_pose, calibrated_sensor, lidarseg, ...).
        plans: the writer's ScenePlans (scene order, split, tokens).
    Returns:
        {'train': [info, ...], 'val': [...]}: key frames in scene then time order.
    """
    sample_data = {record['token']: record for record in tables['sample_data']}
    ego_pose = {record['token']: record for record in tables['ego_pose']}
    calibration = {record['token']: record for record in tables['calibrated_sensor']}
    lidarseg = {record['sample_data_token']: record for record in tables['lidarseg']}
    samples_of_scene = {}
    for sample in tables['sample']:  # each scene's samples are in time order
        samples_of_scene.setdefault(sample['scene_token'], []).append(sample)
    # LIDAR_TOP key frames only: with cameras a sample also has six camera key frames
    key_frame_of_sample = {record['sample_token']: record for record in tables['sample_data']
                           if record['is_key_frame'] and record['fileformat'] == 'pcd'}
    infos = {'train': [], 'val': []}
    for plan in plans:
        scene_token = plan.token('scene')
        for frame_idx, sample in enumerate(samples_of_scene[scene_token]):
            lidar = key_frame_of_sample[sample['token']]
            cs, pose = calibration[lidar['calibrated_sensor_token']], ego_pose[lidar['ego_pose_token']]
            info = {
                'lidar_path': _prefixed(lidar['filename']), 'token': sample['token'],
                'prev': sample['prev'], 'next': sample['next'], 'can_bus': np.zeros(18), 'frame_idx': frame_idx,
                'sweeps': _sweeps(lidar, sample_data, ego_pose, calibration), 'cams': {},
                'scene_token': scene_token, 'lidar2ego_translation': list(cs['translation']),
                'lidar2ego_rotation': list(cs['rotation']), 'ego2global_translation': list(pose['translation']),
                'ego2global_rotation': list(pose['rotation']), 'timestamp': sample['timestamp'],
                'lidar_token': lidar['token'], 'lidarseg': _prefixed(lidarseg[lidar['token']]['filename']),
            }
            infos[plan.split].append(info)
    return infos


def _sweeps(key_frame, sample_data, ego_pose, calibration):
    """Up to MAX_SWEEPS previous LIDAR_TOP frames (sweeps, then earlier key frames), newest first, each with the
    transform to the key frame's sensor frame (mmdet3d `obtain_sensor2top`: p_key = R p_sweep + T with
    `sensor2lidar_rotation` = R, `sensor2lidar_translation` = T)."""
    key_global = _global_from_sensor(key_frame, ego_pose, calibration)
    key_from_global = np.linalg.inv(key_global)
    sweeps, record = [], key_frame
    while len(sweeps) < MAX_SWEEPS and record['prev']:
        record = sample_data[record['prev']]
        cs, pose = calibration[record['calibrated_sensor_token']], ego_pose[record['ego_pose_token']]
        key_from_sweep = key_from_global @ _global_from_sensor(record, ego_pose, calibration)
        sweeps.append({
            'data_path': _prefixed(record['filename']), 'type': 'lidar', 'sample_data_token': record['token'],
            'sensor2ego_translation': list(cs['translation']), 'sensor2ego_rotation': list(cs['rotation']),
            'ego2global_translation': list(pose['translation']), 'ego2global_rotation': list(pose['rotation']),
            'timestamp': record['timestamp'], 'sensor2lidar_rotation': key_from_sweep[:3, :3].copy(),
            'sensor2lidar_translation': key_from_sweep[:3, 3].copy()})
    return sweeps


def _global_from_sensor(record, ego_pose, calibration):
    pose = ego_pose[record['ego_pose_token']]
    global_from_ego = np.eye(4)
    global_from_ego[:3, :3], global_from_ego[:3, 3] = _rotation(pose), pose['translation']
    return global_from_ego @ ego_from_sensor(calibration[record['calibrated_sensor_token']])


def write_occ_infos(root, infos, version):
    """Write `nuscenes_occ_infos_{train,val}.pkl` under the dataroot `root`."""
    for split, filename in OCC_INFO_FILES.items():
        atomic_pickle_dump({'infos': infos[split], 'metadata': {'version': version}}, root / filename)
