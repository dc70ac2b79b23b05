"""nuScenes info generation through nuscenes-devkit, class mapping and LiDAR point loading.

Info dict, one per keyframe (OpenPCDet schema, spec §2.1; frames: "LiDAR" = keyframe LIDAR_TOP sensor frame):
    lidar_path        str, LIDAR_TOP `.pcd.bin` relative to the dataroot (`DATA_PATH/VERSION`)
    token             sample token
    lidar_token       the key frame's LIDAR_TOP sample_data token (lidarseg / occupancy file names)
    scene_token       the sample's scene token (occupancy folder `scene_<scene_token>`)
    sweeps            list of exactly MAX_SWEEPS-1 dicts {lidar_path, sample_data_token, transform_matrix (4x4
                      sweep LiDAR -> keyframe LiDAR, None for the keyframe itself), global_from_car,
                      car_from_current, time_lag (s, keyframe time - sweep time)}; a short chain starts with the
                      keyframe itself (only when it has no predecessor) and then repeats the last entry
    ref_from_car      4x4 ego -> LiDAR at the keyframe;  car_from_global  4x4 global -> ego at the keyframe
    timestamp         keyframe time in seconds
    info_schema       INFO_SCHEMA (marker checked by loaders; absent in upstream OpenPCDet infos, which still load)
    cam_front_path, cam_intrinsic   only when the sample has a CAM_FRONT record
    cams              only with `with_cam` (upstream's --with_cam): {channel: cam dict} for the six cameras
                      (CAMERA_CHANNELS), each {data_path (relative to the dataroot), type (= channel),
                      sample_data_token, sensor2ego_translation (3,), sensor2ego_rotation [w, x, y, z],
                      ego2global_translation, ego2global_rotation (ego pose at the CAMERA timestamp), timestamp (us),
                      sensor2lidar_rotation (3, 3), sensor2lidar_translation (3,): p_lidar = R @ p_cam + T with
                      "lidar" the keyframe LIDAR_TOP frame at the LiDAR timestamp (camera -> ego at camera time ->
                      global -> ego at LiDAR time -> LiDAR, as upstream's obtain_sensor2top), camera_intrinsics
                      (3, 3), image_shape (height, width)}
  train/val only (annotations with num_lidar_pts + num_radar_pts == 0 are dropped):
    gt_boxes (N, 9) float64 [x, y, z, l, w, h, yaw, vx, vy] in LiDAR, z = box centre, yaw CCW from +x
    gt_boxes_velocity (N, 3) LiDAR-frame velocity (NaN when the devkit cannot estimate it)
    gt_names (N,) detection names or 'ignore';  gt_boxes_token (N,);  num_lidar_pts, num_radar_pts (N,) int
All geometry goes through the devkit (`get_boxes`, `box_velocity`, `Box.rotate/translate`, `transform_matrix`).

Point loading (`load_point_parts` and its wrappers; dataset, GT database and teacher features alike): rows with
NaN / inf are dropped with one warning per file, or raise, by `nonfinite` = DATA_CONFIG.NONFINITE_POINTS
(`point_io.finite_row_mask`); `read_lidar_file` alone returns every row of the file.
"""
import logging
from functools import reduce
from pathlib import Path

import numpy as np

from ...utils.point_io import NONFINITE_POINTS_DEFAULT, finite_row_mask
from ..prep_utils import REPO_ROOT, resolve_data_path  # noqa: F401  (shared with Waymo; re-exported)

INFO_SCHEMA = 'pcdet.nuscenes.det/1'
NUM_POINT_COLUMNS_ON_DISK = 5  # x, y, z, intensity, ring index (float32)
CLASS_NAMES = ['car', 'truck', 'construction_vehicle', 'bus', 'trailer',
               'barrier', 'motorcycle', 'bicycle', 'pedestrian', 'traffic_cone']
map_name_from_general_to_detection = {
    'human.pedestrian.adult': 'pedestrian', 'human.pedestrian.child': 'pedestrian',
    'human.pedestrian.wheelchair': 'ignore', 'human.pedestrian.stroller': 'ignore',
    'human.pedestrian.personal_mobility': 'ignore', 'human.pedestrian.police_officer': 'pedestrian',
    'human.pedestrian.construction_worker': 'pedestrian', 'animal': 'ignore',
    'vehicle.car': 'car', 'vehicle.motorcycle': 'motorcycle', 'vehicle.bicycle': 'bicycle',
    'vehicle.bus.bendy': 'bus', 'vehicle.bus.rigid': 'bus', 'vehicle.truck': 'truck',
    'vehicle.construction': 'construction_vehicle', 'vehicle.emergency.ambulance': 'ignore',
    'vehicle.emergency.police': 'ignore', 'vehicle.trailer': 'trailer', 'movable_object.barrier': 'barrier',
    'movable_object.trafficcone': 'traffic_cone', 'movable_object.pushable_pullable': 'ignore',
    'movable_object.debris': 'ignore', 'static_object.bicycle_rack': 'ignore',
}
DEFAULT_SPLITS = {'v1.0-trainval': ('train', 'val'), 'v1.0-mini': ('mini_train', 'mini_val'),
                  'v1.0-test': ('test', None)}
CAMERA_CHANNELS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT')
CAM_INFO_SHAPES = {'sensor2lidar_rotation': (3, 3), 'sensor2lidar_translation': (3,), 'camera_intrinsics': (3, 3),
                   'image_shape': (2,)}
CAM_INFO_KEYS = ('data_path', 'type', 'sample_data_token', 'sensor2ego_translation', 'sensor2ego_rotation',
                 'ego2global_translation', 'ego2global_rotation', 'timestamp') + tuple(CAM_INFO_SHAPES)
SYNTHETIC_HINT = ('run `python -m pcdet.datasets.synthetic.nuscenes --root <DATA_PATH>/v1.0-mini --version v1.0-mini '
                  '--num_scenes 10` to create a synthetic one')


def detection_name(category_name):
    """General nuScenes category -> one of CLASS_NAMES or 'ignore' (unknown categories are ignored too)."""
    return map_name_from_general_to_detection.get(category_name, 'ignore')


def check_dataroot(dataroot, version):
    """Raise FileNotFoundError unless `dataroot` holds the devkit tables `<dataroot>/<version>/*.json`."""
    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        raise FileNotFoundError(
            f'nuScenes dataroot {dataroot} does not exist; expected DATA_PATH/VERSION holding samples/, sweeps/ and '
            f'{version}/ (the devkit json tables). Download nuScenes there or {SYNTHETIC_HINT}.')
    if not (dataroot / version).is_dir():
        raise FileNotFoundError(
            f'nuScenes version folder {dataroot / version} does not exist; expected the devkit json tables of '
            f'{version} there (next to samples/ and sweeps/). Check --version / VERSION or {SYNTHETIC_HINT}.')


def load_nusc(dataroot, version, verbose=True):
    """`nuscenes.NuScenes` on a checked dataroot."""
    from nuscenes.nuscenes import NuScenes
    check_dataroot(dataroot, version)
    return NuScenes(version=version, dataroot=str(dataroot), verbose=verbose)


def scene_names_of_split(nusc, split_name):
    """Scene names of a predefined devkit split or of a custom one from `<dataroot>/<version>/splits.json`."""
    from nuscenes.utils.splits import get_scenes_of_split
    return list(get_scenes_of_split(split_name, nusc))


def get_available_scenes(nusc, logger=None):
    """Scenes whose first LIDAR_TOP file exists on disk (others are skipped with a warning)."""
    logger = logger or logging.getLogger(__name__)
    available = []
    for scene in nusc.scene:
        first_sample = nusc.get('sample', scene['first_sample_token'])
        if Path(nusc.get_sample_data_path(first_sample['data']['LIDAR_TOP'])).exists():
            available.append(scene)
        else:
            logger.warning(f'skipping scene {scene["name"]}: its LiDAR files are missing')
    return available


def pose_matrix(record, inverse):
    """4x4 of a calibrated_sensor / ego_pose record (`inverse=True`: the opposite direction)."""
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion
    return transform_matrix(record['translation'], Quaternion(record['rotation']), inverse=inverse)


def build_sweeps(nusc, ref_sd_rec, ref_from_car, car_from_global, max_sweeps):
    """Walk `prev` from the keyframe sample_data; returns exactly `max_sweeps - 1` sweep dicts (see module doc)."""
    ref_time = 1e-6 * ref_sd_rec['timestamp']
    sweeps, curr_sd_rec = [], ref_sd_rec
    while len(sweeps) < max_sweeps - 1:
        if curr_sd_rec['prev'] == '':
            if sweeps:
                sweeps.append(sweeps[-1])
                continue
            sweeps.append({
                'lidar_path': ref_sd_rec['filename'], 'sample_data_token': ref_sd_rec['token'],
                'transform_matrix': None, 'time_lag': 0.0,
                'global_from_car': pose_matrix(nusc.get('ego_pose', ref_sd_rec['ego_pose_token']), inverse=False),
                'car_from_current': pose_matrix(
                    nusc.get('calibrated_sensor', ref_sd_rec['calibrated_sensor_token']), inverse=False),
            })
            continue
        curr_sd_rec = nusc.get('sample_data', curr_sd_rec['prev'])
        global_from_car = pose_matrix(nusc.get('ego_pose', curr_sd_rec['ego_pose_token']), inverse=False)
        car_from_current = pose_matrix(nusc.get('calibrated_sensor', curr_sd_rec['calibrated_sensor_token']),
                                       inverse=False)
        sweeps.append({
            'lidar_path': curr_sd_rec['filename'], 'sample_data_token': curr_sd_rec['token'],
            'transform_matrix': reduce(np.dot, [ref_from_car, car_from_global, global_from_car, car_from_current]),
            'global_from_car': global_from_car, 'car_from_current': car_from_current,
            'time_lag': ref_time - 1e-6 * curr_sd_rec['timestamp'],
        })
    return sweeps


def boxes_in_lidar_frame(nusc, sample, ref_sd_rec):
    """Devkit boxes of the keyframe (order of `sample['anns']`) moved global -> ego -> LiDAR, velocity included."""
    from pyquaternion import Quaternion
    pose_rec = nusc.get('ego_pose', ref_sd_rec['ego_pose_token'])
    cs_rec = nusc.get('calibrated_sensor', ref_sd_rec['calibrated_sensor_token'])
    boxes = nusc.get_boxes(ref_sd_rec['token'])
    for box in boxes:
        box.velocity = nusc.box_velocity(box.token)
        box.translate(-np.array(pose_rec['translation']))
        box.rotate(Quaternion(pose_rec['rotation']).inverse)
        box.translate(-np.array(cs_rec['translation']))
        box.rotate(Quaternion(cs_rec['rotation']).inverse)
    return boxes


def gt_fields(nusc, sample, ref_sd_rec):
    """The gt_* / num_*_pts info entries of one keyframe (annotations without any LiDAR/radar point dropped)."""
    from nuscenes.eval.common.utils import quaternion_yaw
    boxes = boxes_in_lidar_frame(nusc, sample, ref_sd_rec)
    annotations = [nusc.get('sample_annotation', token) for token in sample['anns']]
    num_lidar_pts = np.array([ann['num_lidar_pts'] for ann in annotations], dtype=np.int64)
    num_radar_pts = np.array([ann['num_radar_pts'] for ann in annotations], dtype=np.int64)
    keep = (num_lidar_pts + num_radar_pts) > 0
    locs = np.array([b.center for b in boxes], dtype=np.float64).reshape(-1, 3)
    dims = np.array([b.wlh for b in boxes], dtype=np.float64).reshape(-1, 3)[:, [1, 0, 2]]  # wlh -> lwh
    velocity = np.array([b.velocity for b in boxes], dtype=np.float64).reshape(-1, 3)
    yaws = np.array([quaternion_yaw(b.orientation) for b in boxes], dtype=np.float64).reshape(-1, 1)
    gt_boxes = np.concatenate([locs, dims, yaws, velocity[:, :2]], axis=1)
    return {
        'gt_boxes': gt_boxes[keep], 'gt_boxes_velocity': velocity[keep],
        'gt_names': np.array([detection_name(b.name) for b in boxes], dtype='<U32').reshape(-1)[keep],
        'gt_boxes_token': np.array([b.token for b in boxes], dtype='<U64').reshape(-1)[keep],
        'num_lidar_pts': num_lidar_pts[keep], 'num_radar_pts': num_radar_pts[keep],
    }


def camera_info(nusc, cam_token, lidar_from_global):
    """The `cams[channel]` dict of one camera sample_data (module doc); `lidar_from_global` (4, 4) is keyframe
    LiDAR <- ego (LiDAR time) <- global."""
    sd_rec = nusc.get('sample_data', cam_token)
    cs_rec = nusc.get('calibrated_sensor', sd_rec['calibrated_sensor_token'])
    pose_rec = nusc.get('ego_pose', sd_rec['ego_pose_token'])
    # through the global frame with the camera's own ego pose: the ego moves between the two timestamps
    lidar_from_camera = reduce(np.dot, [lidar_from_global, pose_matrix(pose_rec, inverse=False),
                                        pose_matrix(cs_rec, inverse=False)])
    return {
        'data_path': sd_rec['filename'], 'type': sd_rec['channel'], 'sample_data_token': sd_rec['token'],
        'sensor2ego_translation': cs_rec['translation'], 'sensor2ego_rotation': cs_rec['rotation'],
        'ego2global_translation': pose_rec['translation'], 'ego2global_rotation': pose_rec['rotation'],
        'timestamp': sd_rec['timestamp'], 'sensor2lidar_rotation': lidar_from_camera[:3, :3],
        'sensor2lidar_translation': lidar_from_camera[:3, 3], 'camera_intrinsics': np.array(cs_rec['camera_intrinsic']),
        'image_shape': (sd_rec['height'], sd_rec['width']),
    }


def camera_infos(nusc, sample, lidar_from_global):
    """{channel: camera_info} of the six cameras of a keyframe; ValueError naming the sample and the dataroot when
    one is missing."""
    missing = [channel for channel in CAMERA_CHANNELS if channel not in sample['data']]
    if missing:
        raise ValueError(f'--with_cam: sample {sample["token"]} of {nusc.dataroot}/{nusc.version} has no {missing} '
                         f'sample_data; create infos without --with_cam or a dataset with cameras (synthetic: '
                         f'--with_cameras)')
    return {channel: camera_info(nusc, sample['data'][channel], lidar_from_global) for channel in CAMERA_CHANNELS}


def cams_problem(info):
    """What is wrong with `info['cams']` (absent is fine), or None."""
    cams = info.get('cams')
    if cams is None:
        return None
    if not isinstance(cams, dict):
        return f'frame {info.get("token")}: cams is a {type(cams).__name__}, not a dict'
    for channel, cam in cams.items():
        missing = [key for key in CAM_INFO_KEYS if key not in cam]
        if missing:
            return f'frame {info.get("token")}: cams[{channel!r}] is missing keys {missing}'
        for key, shape in CAM_INFO_SHAPES.items():
            if np.shape(cam[key]) != shape:
                return (f'frame {info.get("token")}: cams[{channel!r}][{key!r}] has shape {np.shape(cam[key])}, '
                        f'not {shape}')
    return None


def build_info(nusc, sample, max_sweeps, with_gt, with_cam=False):
    """One info dict for a keyframe sample (schema in the module doc)."""
    ref_sd_rec = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
    ref_from_car = pose_matrix(nusc.get('calibrated_sensor', ref_sd_rec['calibrated_sensor_token']), inverse=True)
    car_from_global = pose_matrix(nusc.get('ego_pose', ref_sd_rec['ego_pose_token']), inverse=True)
    info = {
        'lidar_path': ref_sd_rec['filename'], 'token': sample['token'],
        'lidar_token': ref_sd_rec['token'], 'scene_token': sample['scene_token'],
        'sweeps': build_sweeps(nusc, ref_sd_rec, ref_from_car, car_from_global, max_sweeps),
        'ref_from_car': ref_from_car, 'car_from_global': car_from_global,
        'timestamp': 1e-6 * ref_sd_rec['timestamp'], 'info_schema': INFO_SCHEMA,
    }
    if 'CAM_FRONT' in sample['data']:
        cam_sd_rec = nusc.get('sample_data', sample['data']['CAM_FRONT'])
        info['cam_front_path'] = cam_sd_rec['filename']
        info['cam_intrinsic'] = np.array(
            nusc.get('calibrated_sensor', cam_sd_rec['calibrated_sensor_token'])['camera_intrinsic'])
    if with_cam:
        info['cams'] = camera_infos(nusc, sample, ref_from_car @ car_from_global)
    if with_gt:
        info.update(gt_fields(nusc, sample, ref_sd_rec))
    return info


def fill_infos(nusc, scene_tokens_by_split, max_sweeps, with_gt=True, with_cam=False):
    """Iterate `nusc.sample` once; returns {split_name: [info, ...]} in sample-table order."""
    from tqdm import tqdm
    split_of_scene = {token: split for split, tokens in scene_tokens_by_split.items() for token in tokens}
    infos = {split: [] for split in scene_tokens_by_split}
    for sample in tqdm(nusc.sample, desc='create_nuscenes_infos', dynamic_ncols=True):
        split = split_of_scene.get(sample['scene_token'])
        if split is not None:
            infos[split].append(build_info(nusc, sample, max_sweeps, with_gt, with_cam))
    return infos


def info_file_name(max_sweeps, split_kind):
    """`nuscenes_infos_{max_sweeps}sweeps_{train|val|test}.pkl`."""
    return f'nuscenes_infos_{max_sweeps}sweeps_{split_kind}.pkl'


def create_nuscenes_info(version, dataroot, save_path=None, max_sweeps=10, train_split=None, val_split=None,
                         logger=None, with_cam=False):
    """Write `nuscenes_infos_{S}sweeps_{train,val}.pkl` (or `_test.pkl`) atomically into `save_path` (default:
    `dataroot`). Split names default to DEFAULT_SPLITS[version]; any other name is read from the devkit's custom
    `<dataroot>/<version>/splits.json` ({"name": [scene names]}). `with_cam` adds `cams` (module doc).
    Returns {split_kind: info file path}."""
    from pcdet.utils.file_utils import atomic_pickle_dump
    logger = logger or logging.getLogger(__name__)
    default_train, default_val = DEFAULT_SPLITS.get(version, (None, None))
    train_split, val_split = train_split or default_train, val_split or default_val
    if train_split is None:
        raise ValueError(f'unknown nuScenes version {version!r}: pass the split names explicitly '
                         f'(known versions: {sorted(DEFAULT_SPLITS)})')
    nusc = load_nusc(dataroot, version)
    is_test = version.endswith('test')
    split_kinds = {'test': train_split} if is_test else {'train': train_split, 'val': val_split}
    available = {scene['name']: scene['token'] for scene in get_available_scenes(nusc, logger)}
    scene_tokens = {}
    for kind, split_name in split_kinds.items():
        names = scene_names_of_split(nusc, split_name)
        scene_tokens[kind] = {available[name] for name in names if name in available}
        logger.info(f'{kind} split {split_name!r}: {len(scene_tokens[kind])} of {len(names)} scenes available')
    infos = fill_infos(nusc, scene_tokens, max_sweeps, with_gt=not is_test, with_cam=with_cam)
    save_path = Path(save_path or dataroot)
    written = {}
    for kind, kind_infos in infos.items():
        written[kind] = save_path / info_file_name(max_sweeps, kind)
        atomic_pickle_dump(kind_infos, written[kind])
        logger.info(f'{kind}: {len(kind_infos)} keyframes -> {written[kind]}')
    return written


def read_lidar_file(path):
    """float32 (N, 5) of a `.pcd.bin` (x, y, z, intensity, ring); errors name the file and its size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'LiDAR file {path} does not exist (paths in the infos are relative to the dataset '
                                f'root DATA_PATH/VERSION)')
    size = path.stat().st_size
    row_bytes = 4 * NUM_POINT_COLUMNS_ON_DISK
    if size % row_bytes != 0:
        raise ValueError(f'LiDAR file {path} has {size} bytes, not a multiple of {row_bytes} (float32 x, y, z, '
                         f'intensity, ring): the file is truncated or not a nuScenes .pcd.bin')
    return np.fromfile(str(path), dtype=np.float32).reshape(-1, NUM_POINT_COLUMNS_ON_DISK)


def ego_points_mask(points, ego_radius=1.0):
    """(N,) bool, True for the ego vehicle's own returns: |x| < ego_radius and |y| < ego_radius (sensor frame)."""
    return (np.abs(points[:, 0]) < ego_radius) & (np.abs(points[:, 1]) < ego_radius)


def load_sweep_points(root_path, sweep, ego_radius=1.0, return_raw_rows=False, nonfinite=NONFINITE_POINTS_DEFAULT):
    """(M, 5) float32 x, y, z, intensity, time_lag of one sweep in the keyframe LiDAR frame; points with
    |x| < ego_radius and |y| < ego_radius (the ego vehicle, in the sweep's own frame) and non-finite rows
    (`nonfinite` policy, module doc) are removed first. `return_raw_rows=True` also returns the (M,) int64 row
    index of every kept point in the `.pcd.bin` file (to pick per-point labels of the same points)."""
    path = Path(root_path) / sweep['lidar_path']
    points = read_lidar_file(path)[:, :4]  # the ring column is not used: its values do not matter
    raw_rows = np.flatnonzero(finite_row_mask(points, path, nonfinite) & ~ego_points_mask(points, ego_radius))
    points = points[raw_rows]
    if sweep['transform_matrix'] is not None:
        transform = np.asarray(sweep['transform_matrix'], dtype=np.float64)
        points[:, :3] = points[:, :3].astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]
    times = np.full((points.shape[0], 1), sweep['time_lag'], dtype=np.float32)
    points = np.concatenate([points, times], axis=1)
    return (points, raw_rows) if return_raw_rows else points


def load_key_frame_points(root_path, info, return_raw_rows=False, nonfinite=NONFINITE_POINTS_DEFAULT):
    """(N, 5) float32 x, y, z, intensity, time_lag = 0 of the key frame file (all finite rows, in file order;
    non-finite ones per the `nonfinite` policy, module doc); `return_raw_rows=True` also returns their (N,) int64
    rows in the file."""
    path = Path(root_path) / info['lidar_path']
    key_points = read_lidar_file(path)[:, :4]  # the ring column is not used: its values do not matter
    raw_rows = np.flatnonzero(finite_row_mask(key_points, path, nonfinite))
    if len(raw_rows) < len(key_points):
        key_points = key_points[raw_rows]
    points = np.concatenate([key_points, np.zeros((key_points.shape[0], 1), dtype=np.float32)], axis=1)
    return (points, raw_rows) if return_raw_rows else points


def load_point_parts(root_path, info, sweep_indices, return_raw_rows=False, nonfinite=NONFINITE_POINTS_DEFAULT):
    """The ONE loader of a key frame with sweeps, as a list of parts (each (N_i, 5) float32 x, y, z, intensity,
    time_lag in the keyframe LiDAR frame): part 0 = the key frame (all finite rows, file order), then part 1 + j =
    `info['sweeps'][sweep_indices[j]]` without its ego points (`load_sweep_points`). Non-finite rows follow the
    `nonfinite` policy ('warn': dropped with one warning per file, 'error': raise).

    Both the dataset (`load_points_with_sweeps`) and the offline teacher-feature tool (teachers/prepare.py) go
    through here, so a part's rows are the same points in the same order in both (per-point teacher features are
    stored per part and re-joined to these rows). `return_raw_rows=True` returns `(parts, raw_rows)` where
    `raw_rows[i]` (N_i,) int64 are the rows of part i in its `.pcd.bin` file."""
    key_points, key_rows = load_key_frame_points(root_path, info, return_raw_rows=True, nonfinite=nonfinite)
    parts, raw_rows = [key_points], [key_rows]
    for k in sweep_indices:
        points, rows = load_sweep_points(root_path, info['sweeps'][k], return_raw_rows=True, nonfinite=nonfinite)
        parts.append(points)
        raw_rows.append(rows)
    return (parts, raw_rows) if return_raw_rows else parts


def load_points_with_sweeps(root_path, info, sweep_indices, nonfinite=NONFINITE_POINTS_DEFAULT):
    """(N, 5) float32 x, y, z, intensity, time_lag: keyframe (time 0) then `info['sweeps'][k]` for k in order
    (the concatenation of `load_point_parts`)."""
    parts = load_point_parts(root_path, info, sweep_indices, nonfinite=nonfinite)
    return np.concatenate(parts, axis=0).astype(np.float32, copy=False)
