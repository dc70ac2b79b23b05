"""Waymo per-sequence conversion without TensorFlow (OpenPCDet's `waymo_utils`), sequence-name resolution and the
point loading shared by `WaymoDataset` and the GT database.

`process_single_sequence(sequence_file, save_path, ...)` streams one segment (`frame_reader`, one frame in memory at
a time) and writes, under `save_path/<sequence_name>/` (`sequence_name` = the tfrecord file name without
`.tfrecord`, as upstream):
    <sample_idx:04d>.npy   float32 (N, 6) x, y, z, intensity, elongation, NLZ_flag (vehicle frame; both returns of
                           all five LiDARs, OpenPCDet's `save_lidar_points` layout), each written atomically
    <sequence_name>.pkl    list of per-frame infos, written atomically LAST: it marks a complete sequence (a rerun
                           skips it) and nothing else does (a sequence without it is converted again from scratch)

Info dict per frame (OpenPCDet schema, spec §2.2, plus `info_schema`):
    point_cloud               {'num_features': 5, 'lidar_sequence': sequence_name, 'sample_idx': frame index}
    frame_id                  sequence_name + '_%03d' % sample_idx
    metadata                  {'context_name', 'timestamp_micros'}
    image                     {'image_shape_<j>': (height, width)} per camera calibration, in file order
    pose                      (4, 4) float32 vehicle -> global
    annos                     (has_label) 'unknown' labels dropped; name (N,) str, difficulty (N,) int (0 unset, 1, 2),
                              dimensions (N, 3) [length, width, height], location (N, 3) box centre, heading_angles
                              (N,), obj_ids (N,) str, tracking_difficulty (N,), num_points_in_gt (N,)
                              (= num_lidar_points_in_box), speed_global (N, 2), accel_global (N, 2) (metadata x / y),
                              gt_boxes_lidar (N, 9) [location, dimensions, heading, vx, vy] with (vx, vy) the global
                              speed rotated into the vehicle frame (`[sx, sy, 0] @ inv(R_pose^T)`)
    num_points_of_each_lidar  [TOP, FRONT, SIDE_LEFT, SIDE_RIGHT, REAR] point counts (both returns)
    info_schema               INFO_SCHEMA; loaders check it (absent in upstream OpenPCDet infos, which still load)
Arrays keep their shapes when empty ((0, 3), (0, 9), ...), unlike upstream's `np.array([])`.

Loading (`load_points`): the first 5 columns; points with NLZ_flag != -1 dropped unless `keep_nlz`
(`DISABLE_NLZ_FLAG_ON_POINTS`); with a `nonfinite` policy (DATA_CONFIG.NONFINITE_POINTS; the dataset and the GT
database pass it) rows with NaN / inf in those 5 columns are dropped with one warning per file ('warn') or raise
('error'), see `point_io.finite_row_mask`; without one (None, the teacher-feature tool, which stores one feature row
per stored point) every row is kept. `kept_rows` is that row selection, so per-row data of the stored file can be
filtered alike. Then `tanh` on the columns of `points_tanh_dims(cfg)` (`POINTS_TANH_DIM`, default [3] = intensity
only, as upstream). A file that is not a float (N, 6) array raises ValueError naming it.
"""
import logging
import os
import re
import time
import traceback
from pathlib import Path

import numpy as np

from ...config import ConfigError
from ...config_schema import Schema
from ...utils.file_utils import atomic_pickle_dump, atomic_write
from ...utils.point_io import finite_row_mask
from ..prep_utils import InfoSchemaError, load_pickle, validate_info_list

INFO_SCHEMA = 'pcdet.waymo.det/1'
WAYMO_CLASSES = ['unknown', 'Vehicle', 'Pedestrian', 'Sign', 'Cyclist']
POINT_COLUMNS_ON_DISK = ('x', 'y', 'z', 'intensity', 'elongation', 'NLZ_flag')
POINT_FEATURES = POINT_COLUMNS_ON_DISK[:5]
NUM_POINT_FEATURES = len(POINT_FEATURES)
# The DATA_CONFIG key read here; WaymoDataset.CONFIG_SCHEMA includes it (one declaration of its default).
POINTS_TANH_SCHEMA = Schema('DATA_CONFIG (WaymoDataset)', {
    'POINTS_TANH_DIM': None,            # columns passed through tanh at load time; None: [3] (intensity, upstream)
})
TFRECORD_SUFFIX = '.tfrecord'
SPLIT_PREFIXES = ('training', 'validation', 'testing')
CAMERA_LABELS_SUFFIX = '_with_camera_labels'
SEGMENT_ID = re.compile(r'\d{5,}_\d+_\d+_\d+_\d+')  # WOD context name, e.g. 10017090168044687777_6380_000_6400_000
CREATE_INFOS_COMMAND = ('python -m pcdet.datasets.waymo.waymo_dataset --func create_waymo_infos '
                        '--cfg_file tools/cfgs/dataset_configs/waymo_dataset.yaml --data_path {data_path}')
ANNO_KEYS = ('name', 'difficulty', 'dimensions', 'location', 'heading_angles', 'obj_ids', 'tracking_difficulty',
             'num_points_in_gt', 'speed_global', 'accel_global', 'gt_boxes_lidar')


class MissingSequenceError(FileNotFoundError):
    """Sequences listed in ImageSets/<split>.txt without a tfrecord under raw_data/ (message lists them)."""


class WaymoPointFileError(ValueError):
    """A processed `<sequence>/<idx>.npy` that is not float (N, 6); the message names the file."""


# ---- sequence names ------------------------------------------------------------------------------------------------

def sequence_stem(name):
    """'segment-x_with_camera_labels.tfrecord' -> 'segment-x_with_camera_labels' (file name, extension dropped)."""
    name = Path(str(name).strip()).name
    return name[:-len(TFRECORD_SUFFIX)] if name.endswith(TFRECORD_SUFFIX) else name


def candidate_sequence_names(listed_name):
    """Sequence names tried for an ImageSets entry, in OpenPCDet's order: as listed, with a `training_` /
    `validation_` / `testing_` prefix, without `_with_camera_labels`."""
    stem = sequence_stem(listed_name)
    names = [stem]
    if stem.startswith('segment'):
        names += [f'{prefix}_{stem}' for prefix in SPLIT_PREFIXES]
    names.append(stem.replace(CAMERA_LABELS_SUFFIX, ''))
    return list(dict.fromkeys(names))


def segment_core(name):
    """The segment id of a file / sequence name (`<digits>_<start>_<ms>_<end>_<ms>` when present, else the name
    without split prefix, `segment-`, `_with_camera_labels` and extensions): recognises misnamed files."""
    match = SEGMENT_ID.search(Path(str(name).strip()).name)
    if match:
        return match.group(0)
    stem = Path(str(name).strip()).name.split(TFRECORD_SUFFIX)[0]
    for prefix in SPLIT_PREFIXES:
        if stem.startswith(prefix + '_'):
            stem = stem[len(prefix) + 1:]
    if stem.startswith('segment-'):
        stem = stem[len('segment-'):]
    return stem.replace(CAMERA_LABELS_SUFFIX, '')


def read_image_set(root_path, split):
    """Entries of `root_path/ImageSets/<split>.txt` (tfrecord file names, one per line; blank lines ignored)."""
    path = Path(root_path) / 'ImageSets' / f'{split}.txt'
    if not path.is_file():
        raise FileNotFoundError(f'Waymo split file {path} not found: ImageSets/{split}.txt must list the tfrecord file '
                                f'names of the split, one per line (OpenPCDet ships data/waymo/ImageSets/'
                                f'{{train,val}}.txt); check DATA_PATH / --data_path and DATA_SPLIT')
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f'Waymo split file {path} is empty: it must list the tfrecord file names of the split')
    return names


def find_sequence_file(raw_data_path, listed_name):
    """The tfrecord of an ImageSets entry under `raw_data_path` (name fallbacks as upstream), or None."""
    for name in candidate_sequence_names(listed_name):
        path = Path(raw_data_path) / (name + TFRECORD_SUFFIX)
        if path.is_file():
            return path
    return None


def resolve_sequence_files(raw_data_path, listed_names, image_set_path, skip_missing=False, logger=None):
    """`[(listed name, tfrecord path)]` for the entries of a split; entries without a tfrecord raise
    MissingSequenceError listing them all (with similarly named files found in raw_data/), or with `skip_missing`
    are left out with a warning."""
    logger = logger or logging.getLogger(__name__)
    raw_data_path = Path(raw_data_path)
    if not raw_data_path.is_dir():
        raise FileNotFoundError(f'Waymo raw data folder {raw_data_path} not found: it must hold the segment-*.tfrecord '
                                f'files listed in {image_set_path} (check DATA_PATH / --data_path)')
    found, missing = [], []
    for name in listed_names:
        path = find_sequence_file(raw_data_path, name)
        if path is None:
            missing.append(name)
        else:
            found.append((name, path))
    if not missing:
        return found
    by_core = {}
    for entry in raw_data_path.iterdir():
        by_core.setdefault(segment_core(entry.name), []).append(entry.name)
    lines = []
    for name in missing:
        similar = sorted(by_core.get(segment_core(name), []))
        lines.append(f'  {name}' + (f'   <- misnamed? found {", ".join(similar)}' if similar else ''))
    shown = lines[:50] + ([f'  ... and {len(lines) - 50} more'] if len(lines) > 50 else [])
    message = (f'{len(missing)} of {len(listed_names)} tfrecords listed in {image_set_path} are missing from '
               f'{raw_data_path} (tried each name as listed, with a training_/validation_/testing_ prefix and '
               f'without {CAMERA_LABELS_SUFFIX}, all ending in {TFRECORD_SUFFIX}):\n' + '\n'.join(shown))
    if not skip_missing:
        raise MissingSequenceError(message + '\nDownload / rename them (they must be uncompressed .tfrecord '
                                             'files), fix the list, or pass --skip_missing to convert the others.')
    logger.warning(message + '\n--skip_missing: converting the others')
    return found


# ---- labels and infos ----------------------------------------------------------------------------------------------

def generate_labels(labels, pose):
    """`annos` of one frame from `frame_reader` labels and the (4, 4) vehicle -> global pose (module doc)."""
    keep = np.asarray(labels['name']) != 'unknown'
    count = int(keep.sum())
    box = np.asarray(labels['box'], dtype=np.float64).reshape(-1, 7)[keep]
    speed = np.asarray(labels['speed'], dtype=np.float64).reshape(-1, 3)[keep, 0:2]
    accel = np.asarray(labels['accel'], dtype=np.float64).reshape(-1, 3)[keep, 0:2]
    rotation = np.asarray(pose, dtype=np.float64)[:3, :3]
    speed_vehicle = (np.pad(speed, ((0, 0), (0, 1))) @ np.linalg.inv(rotation.T))[:, 0:2]
    return {
        'name': np.asarray(labels['name'])[keep].astype(str),
        'difficulty': np.asarray(labels['difficulty'], dtype=np.int64)[keep],
        'dimensions': box[:, 3:6].copy(),
        'location': box[:, 0:3].copy(),
        'heading_angles': box[:, 6].copy(),
        'obj_ids': np.asarray(labels['id'])[keep].astype(str) if count else np.zeros(0, dtype='<U1'),
        'tracking_difficulty': np.asarray(labels['tracking_difficulty'], dtype=np.int64)[keep],
        'num_points_in_gt': np.asarray(labels['num_lidar_points_in_box'], dtype=np.int64)[keep],
        'speed_global': speed,
        'accel_global': accel,
        'gt_boxes_lidar': np.concatenate([box[:, 0:3], box[:, 3:6], box[:, 6:7], speed_vehicle], axis=1),
    }


def frame_info(frame, sequence_name, has_label=True):
    """Info dict of one `frame_reader` frame, without `num_points_of_each_lidar` (module doc)."""
    sample_idx = int(frame['frame_index'])
    info = {
        'point_cloud': {'num_features': NUM_POINT_FEATURES, 'lidar_sequence': sequence_name, 'sample_idx': sample_idx},
        'frame_id': f'{sequence_name}_{sample_idx:03d}',
        'metadata': {'context_name': frame['context_name'], 'timestamp_micros': frame['timestamp_micros']},
        'image': {f'image_shape_{j}': tuple(int(v) for v in shape)
                  for j, shape in enumerate(frame['image_shapes'].values())},
        'pose': np.asarray(frame['pose'], dtype=np.float32),
        'info_schema': INFO_SCHEMA,
    }
    if has_label:
        info['annos'] = generate_labels(frame['labels'], frame['pose'])
    return info


def info_problem(info, require_gt=False):
    """Description of what is wrong with one Waymo info dict, or None."""
    if not isinstance(info, dict):
        return f'an entry is a {type(info).__name__}, not a dict'
    if info.get('info_schema', INFO_SCHEMA) != INFO_SCHEMA:
        return f'info_schema is {info["info_schema"]!r}, this pcdet reads {INFO_SCHEMA!r}'
    point_cloud = info.get('point_cloud')
    if not isinstance(point_cloud, dict) or not {'lidar_sequence', 'sample_idx'} <= set(point_cloud):
        return "missing point_cloud {'lidar_sequence', 'sample_idx'}"
    if 'frame_id' not in info:
        return 'missing frame_id'
    if 'annos' not in info:
        return 'missing annos (labels)' if require_gt else None
    annos = info['annos']
    missing = [key for key in ('name', 'gt_boxes_lidar', 'difficulty', 'num_points_in_gt') if key not in annos]
    if missing:
        return f'annos lacks {missing}'
    count = len(annos['name'])
    shape = np.shape(annos['gt_boxes_lidar'])
    if count and (len(shape) != 2 or shape[0] != count or shape[1] not in (7, 9)):
        return f'annos.gt_boxes_lidar has shape {shape}, expected ({count}, 9) for {count} names'
    if len(annos['num_points_in_gt']) != count or len(annos['difficulty']) != count:
        return 'annos.num_points_in_gt / difficulty do not match the number of names'
    return None


def validate_infos(infos, info_path, require_gt=False):
    """Raise InfoSchemaError naming `info_path` unless it is a list of valid Waymo infos."""
    validate_info_list(infos, info_path, lambda info: info_problem(info, require_gt),
                       'delete it and rerun create_waymo_infos (only missing sequences are converted again)')


def load_sequence_infos(pkl_path, require_gt=False):
    """Load and validate one `<sequence>.pkl` (or a global `<tag>_infos_<split>.pkl`)."""
    infos = load_pickle(pkl_path, 'Waymo info file')
    validate_infos(infos, pkl_path, require_gt)
    return infos


# ---- point files ---------------------------------------------------------------------------------------------------

def lidar_file(data_path, sequence_name, sample_idx):
    """`<PROCESSED_DATA_TAG folder>/<sequence>/<sample_idx:04d>.npy`."""
    return Path(data_path) / sequence_name / ('%04d.npy' % sample_idx)


def points_tanh_dims(dataset_cfg):
    """Point columns passed through tanh at load time: `POINTS_TANH_DIM`, default [3] (intensity, as upstream)."""
    dims = POINTS_TANH_SCHEMA.get(dataset_cfg, 'POINTS_TANH_DIM')
    if dims is None:
        return [3]
    dims = [dims] if isinstance(dims, int) else list(dims)
    bad = [d for d in dims if not isinstance(d, int) or not 0 <= d < NUM_POINT_FEATURES]
    if bad:
        raise ConfigError(f'DATA_CONFIG.POINTS_TANH_DIM: {dims} has invalid column(s) {bad}; the Waymo point '
                          f'columns are {list(enumerate(POINT_FEATURES))}')
    return sorted(set(dims))


def kept_rows(stored_points, path, keep_nlz=True, nonfinite=None):
    """(N,) bool over the rows of a stored (N, 6) frame: the rows `load_points` returns (module doc)."""
    keep = np.ones(len(stored_points), dtype=bool)
    if not keep_nlz:
        keep &= np.asarray(stored_points[:, POINT_COLUMNS_ON_DISK.index('NLZ_flag')]) == -1
    if nonfinite is not None:
        keep &= finite_row_mask(np.asarray(stored_points[:, 0:NUM_POINT_FEATURES]), path, nonfinite)
    return keep


def load_points(path, tanh_dims=(3,), keep_nlz=True, nonfinite=None):
    """(N', 5) float32 x, y, z, intensity, elongation of a processed frame (module doc; `nonfinite`: None keeps
    every row, 'warn' / 'error' is the DATA_CONFIG.NONFINITE_POINTS policy)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Waymo point file {path} not found; rerun create_waymo_infos (a sequence whose '
                                f'point files are incomplete is converted again after deleting its .pkl)')
    try:
        points = np.load(path)
    except (ValueError, OSError, EOFError) as err:
        raise WaymoPointFileError(f'{path} is not a readable .npy ({err}); delete the sequence folder (or its .pkl) '
                                  f'and rerun create_waymo_infos') from err
    if points.ndim != 2 or points.shape[1] != len(POINT_COLUMNS_ON_DISK) or points.dtype.kind != 'f':
        raise WaymoPointFileError(
            f'{path} holds a {points.dtype} array of shape {points.shape}; expected float32 (N, '
            f'{len(POINT_COLUMNS_ON_DISK)}) {list(POINT_COLUMNS_ON_DISK)} as written by create_waymo_infos (spec '
            f'§2.2). Was it written by another tool or with other columns? Delete the sequence folder and rerun '
            f'create_waymo_infos')
    points_all = points[:, 0:NUM_POINT_FEATURES].astype(np.float32)
    keep = kept_rows(points, path, keep_nlz, nonfinite)
    if not keep.all():
        points_all = points_all[keep]
    for dim in tanh_dims:
        points_all[:, dim] = np.tanh(points_all[:, dim])
    return points_all


def save_lidar_points(points, path):
    """Write (N, 6) points as float32 `.npy` atomically."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != len(POINT_COLUMNS_ON_DISK):
        raise ValueError(f'{path}: expected (N, 6) points, got {points.shape}')
    with atomic_write(path, 'wb') as handle:
        np.save(handle, points)


# ---- one sequence --------------------------------------------------------------------------------------------------

def sequence_pkl_path(save_path, sequence_name):
    return Path(save_path) / sequence_name / f'{sequence_name}.pkl'


def sequence_status(save_path, sequence_name):
    """('complete' | 'missing' | 'corrupt' | 'outdated' | 'incomplete', reason): whether a converted sequence can
    be kept. 'complete' needs a readable pkl of valid infos (an upstream pkl without `info_schema` is accepted)
    and every frame's point file."""
    pkl_path = sequence_pkl_path(save_path, sequence_name)
    if not pkl_path.is_file():
        return 'missing', 'not converted yet'
    try:
        infos = load_pickle(pkl_path, 'Waymo info file')
    except InfoSchemaError as err:
        return 'corrupt', str(err)
    schemas = {info.get('info_schema', INFO_SCHEMA) for info in infos if isinstance(info, dict)} \
        if isinstance(infos, list) else set()
    if schemas - {INFO_SCHEMA}:
        return 'outdated', f'info_schema {sorted(schemas - {INFO_SCHEMA})}, this pcdet writes {INFO_SCHEMA!r}'
    try:
        validate_infos(infos, pkl_path)
    except InfoSchemaError as err:
        return 'corrupt', str(err)
    if not infos:
        return 'outdated', f'{pkl_path} holds no frame'
    lacking = [info['point_cloud']['sample_idx'] for info in infos
               if not lidar_file(save_path, sequence_name, info['point_cloud']['sample_idx']).is_file()]
    if lacking:
        return 'incomplete', f'{len(lacking)} point file(s) missing (e.g. sample {lacking[0]})'
    return 'complete', ''


def _remove_stale_temporaries(folder):
    for stale in folder.glob('.*.tmp'):
        stale.unlink(missing_ok=True)


def _iter_frames(sequence_file, returns, with_points, sampled_interval, verify_crc):
    """Frames of a segment (every `sampled_interval`-th; others are not decoded), errors naming file and frame."""
    from .frame_reader import WaymoFrameError, parse_frame
    from .tfrecord import iter_records
    for index, record in enumerate(iter_records(sequence_file, verify=verify_crc)):
        if index % sampled_interval:
            continue
        try:
            yield parse_frame(record, returns=returns, with_points=with_points, frame_index=index)
        except (ValueError, KeyError) as err:
            raise WaymoFrameError(f'{sequence_file}: frame {index}: {err}') from err


def process_single_sequence(sequence_file, save_path, sampled_interval=1, has_label=True, use_two_returns=True,
                            update_info_only=False, verify_crc=True, force=False):
    """Convert one segment (module doc); skip it when its pkl marks it complete (unless `force`).

    `update_info_only`: rebuild the pkl of a complete sequence from the labels only (range images are not decoded,
    point files and `num_points_of_each_lidar` are kept). Returns a summary dict: sequence_name, status
    ('skipped', 'converted', 'updated'), num_frames, num_points, seconds. Unlike upstream (which returns the
    infos), nothing large comes back, so a process pool moves no infos around.
    """
    start = time.time()
    sequence_file = Path(sequence_file)
    sequence_name = sequence_stem(sequence_file.name)
    if not sequence_file.is_file():
        raise FileNotFoundError(f'Waymo tfrecord {sequence_file} not found')
    save_dir = Path(save_path) / sequence_name
    pkl_path = sequence_pkl_path(save_path, sequence_name)
    old_infos = None
    status = 'missing' if force else sequence_status(save_path, sequence_name)[0]
    if status == 'complete':
        if not update_info_only:
            return {'sequence_name': sequence_name, 'status': 'skipped', 'num_frames': None, 'num_points': None,
                    'seconds': time.time() - start}
        old_infos = {info['point_cloud']['sample_idx']: info for info in load_sequence_infos(pkl_path)}
    save_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(save_dir)
    with_points = old_infos is None
    infos, written, num_points = [], set(), 0
    returns = (0, 1) if use_two_returns else (0,)
    for frame in _iter_frames(sequence_file, returns, with_points, sampled_interval, verify_crc):
        info = frame_info(frame, sequence_name, has_label)
        sample_idx = info['point_cloud']['sample_idx']
        if with_points:
            path = lidar_file(save_path, sequence_name, sample_idx)
            save_lidar_points(frame['points'], path)
            written.add(path.name)
            counts = [int(n) for n in frame['num_points_of_each_lidar']]
        else:
            old = old_infos.get(sample_idx)
            if old is None or old['frame_id'] != info['frame_id']:
                raise ValueError(f'{sequence_file}: frame {sample_idx} is not in the existing {pkl_path}; '
                                 f'--update_info_only needs the same frames: delete the pkl to convert again')
            counts = list(old['num_points_of_each_lidar'])
        info['num_points_of_each_lidar'] = counts
        num_points += sum(counts)
        infos.append(info)
        del frame  # one frame's points in memory at a time
    if with_points:  # point files of an earlier, different conversion of this sequence
        for stale in save_dir.glob('*.npy'):
            if stale.name not in written:
                stale.unlink()
    atomic_pickle_dump(infos, pkl_path)  # last: the completion marker
    return {'sequence_name': sequence_name, 'status': 'converted' if with_points else 'updated',
            'num_frames': len(infos), 'num_points': num_points, 'seconds': time.time() - start}


def convert_sequence_task(sequence_file, save_path, has_label=True, use_two_returns=True, update_info_only=False,
                          force=False):
    """Pool task: `process_single_sequence`, with exceptions returned as a 'failed' summary (so one bad segment
    does not stop the others)."""
    try:
        return process_single_sequence(sequence_file, save_path, sampled_interval=1, has_label=has_label,
                                       use_two_returns=use_two_returns, update_info_only=update_info_only,
                                       force=force)
    except Exception as err:  # noqa: BLE001 - reported by the parent, which raises at the end
        return {'sequence_name': sequence_stem(Path(sequence_file).name), 'status': 'failed',
                'error': f'{type(err).__name__}: {err}', 'traceback': traceback.format_exc(),
                'pid': os.getpid()}
