"""Waymo GT database for GT sampling ("copy-paste"), OpenPCDet's `WaymoDataset.create_groundtruth_database`.

Frames: every `sampled_interval`-th info of the split, k = the info's index in the split's info list (ImageSets
order, as in `<tag>_infos_<split>.pkl`). As upstream, **Vehicles are kept only from frames with k % 4 == 0 and
Pedestrians only from frames with k % 2 == 0** (Cyclists, and Signs if used, from every frame); the other boxes
of a frame are dropped before the points are assigned, `gt_idx` indexes the remaining boxes. Each point goes to
the first remaining box containing it (`points_in_boxes_gpu`, any device, numba CPU path).

Points come from `load_points_fn(info)`, i.e. `WaymoDataset.get_lidar` with the dataset config in force (NLZ
handling, POINTS_TANH_DIM): the database inherits that transform, so it is recorded (see below) and
`WaymoDataset` refuses, at construction, a database whose transform differs from its own config.

Writes into `root_path` (= DATA_PATH), for TAG = PROCESSED_DATA_TAG, S = split, I = sampled_interval:
    TAG_gt_database_S_sampled_I/<sequence>_<sample_idx:04d>_<name>_<gt_idx>.bin
        float32 (num_points_in_gt, 5): x, y, z minus the box centre, intensity, elongation (after the transform)
    TAG_gt_database_S_sampled_I_global.npy
        float32 (sum of num_points_in_gt, 5): every object in db_info order, appended frame by frame to one growing
        file (never accumulated in memory) and finalised with its .npy header: memory-mappable (DB_DATA_PATH)
    TAG_waymo_dbinfos_S_sampled_I.pkl
        {name: [db_info]} for `used_classes`; db_info = {name, path (relative to root_path), sequence_name,
        sample_idx, gt_idx, box3d_lidar (9,), num_points_in_gt, difficulty, global_data_offset [start, end)}
        plus the entry DB_METADATA_KEY ('__metadata__', not a class) = {'schema', 'num_point_features',
        'point_features', 'points_tanh_dim', 'nlz_points_kept', 'processed_data_tag', 'split',
        'sampled_interval', 'frame_stride', 'used_classes'}.
Atomic (`prep_utils.GTDatabaseWriter`): everything is written under temporary names and renamed on completion;
the pkl is written last. Memory: one frame's points plus the db_info list.
"""
import logging
from pathlib import Path

import numpy as np

from ..augmentor.database_sampler import DB_METADATA_KEY
from ..prep_utils import GTDatabaseWriter, first_box_index
from .waymo_utils import NUM_POINT_FEATURES, POINT_FEATURES

DB_SCHEMA = 'pcdet.waymo.gt_database/1'
FRAME_STRIDE = {'Vehicle': 4, 'Pedestrian': 2}  # class -> keep it only from frames with k % stride == 0
DEFAULT_USED_CLASSES = ('Vehicle', 'Pedestrian', 'Cyclist')


def database_names(processed_data_tag, split='train', sampled_interval=1):
    """(object folder, dbinfos pkl, global npy) file names, as upstream."""
    stem = f'{processed_data_tag}_gt_database_{split}_sampled_{sampled_interval}'
    return stem, f'{processed_data_tag}_waymo_dbinfos_{split}_sampled_{sampled_interval}.pkl', f'{stem}_global.npy'


def frame_objects(annos, frame_index):
    """(names, difficulty, boxes (M, 9)) of a frame after the per-class frame strides (module doc)."""
    names = np.asarray(annos['name']).astype(str)
    keep = np.ones(len(names), dtype=bool)
    for name, stride in FRAME_STRIDE.items():
        if frame_index % stride != 0:
            keep &= names != name
    boxes = np.asarray(annos['gt_boxes_lidar'], dtype=np.float64)
    if len(names) == 0:  # upstream infos store empty annos as shape (0,)
        return names, np.asarray(annos['difficulty'])[keep], np.zeros((0, 9))
    return names[keep], np.asarray(annos['difficulty'])[keep], boxes[keep]


def database_metadata(point_transform, processed_data_tag, split, sampled_interval, used_classes):
    return {'schema': DB_SCHEMA, 'num_point_features': NUM_POINT_FEATURES, 'point_features': list(POINT_FEATURES),
            'points_tanh_dim': list(point_transform['points_tanh_dim']),
            'nlz_points_kept': bool(point_transform['nlz_points_kept']),
            'processed_data_tag': processed_data_tag, 'split': split, 'sampled_interval': int(sampled_interval),
            'frame_stride': dict(FRAME_STRIDE), 'used_classes': None if used_classes is None else list(used_classes)}


def create_groundtruth_database(root_path, infos, load_points_fn, processed_data_tag, point_transform, split='train',
                                sampled_interval=1, used_classes=DEFAULT_USED_CLASSES, device=None, logger=None,
                                num_infos=None, progress=True):
    """Build the database described in the module doc; returns the dbinfos pkl path.

    Args:
        root_path: DATA_PATH (outputs go there; db_info paths are relative to it).
        infos: iterable of the split's infos in order (a list, or a generator streaming per-sequence pkls).
        load_points_fn: info -> (N, 5) float32 points (the dataset's `get_lidar`).
        point_transform: {'points_tanh_dim': [...], 'nlz_points_kept': bool} of `load_points_fn` (recorded).
        used_classes: classes written (None: all); the others still take part in the point assignment, as upstream.
        num_infos: length of `infos` when it is a generator (progress bar / ETA).
    """
    from tqdm import tqdm
    logger = logger or logging.getLogger(__name__)
    root_path = Path(root_path)
    folder_name, pkl_name, npy_name = database_names(processed_data_tag, split, sampled_interval)
    all_db_infos = {} if used_classes is None else {name: [] for name in used_classes}
    num_frames = 0
    with GTDatabaseWriter(root_path, folder_name, pkl_name, npy_name, NUM_POINT_FEATURES) as writer:
        total = num_infos if num_infos is not None else (len(infos) if hasattr(infos, '__len__') else None)
        for k, info in enumerate(tqdm(infos, total=total, desc='create_waymo_gt_database', unit='frame',
                                      dynamic_ncols=True, disable=not progress)):
            if k % sampled_interval != 0:
                continue
            names, difficulty, boxes = frame_objects(info['annos'], k)
            if len(names) == 0:
                continue
            num_frames += 1
            points = load_points_fn(info)
            box_idxs = first_box_index(points, boxes, device)
            sequence_name = info['point_cloud']['lidar_sequence']
            sample_idx = int(info['point_cloud']['sample_idx'])
            for i, name in enumerate(names):
                if used_classes is not None and name not in used_classes:
                    continue
                gt_points = points[box_idxs == i]
                gt_points[:, :3] -= boxes[i, :3].astype(np.float32)
                path, offset = writer.add_object(f'{sequence_name}_{sample_idx:04d}_{name}_{i}.bin', gt_points)
                all_db_infos.setdefault(name, []).append({
                    'name': name, 'path': path, 'sequence_name': sequence_name, 'sample_idx': sample_idx,
                    'gt_idx': i, 'box3d_lidar': boxes[i], 'num_points_in_gt': gt_points.shape[0],
                    'difficulty': difficulty[i], 'global_data_offset': offset})
            del points
        all_db_infos[DB_METADATA_KEY] = database_metadata(point_transform, processed_data_tag, split, sampled_interval,
                                                          used_classes)
        pkl_path = writer.commit(all_db_infos)
        num_rows = writer.num_rows
    for name, db_infos in all_db_infos.items():
        if name != DB_METADATA_KEY:
            logger.info(f'Database {name}: {len(db_infos)}')
    logger.info(f'GT database ({num_frames} frames with objects, {num_rows} object points) -> '
                f'{root_path / folder_name}, {pkl_path}, {root_path / npy_name}')
    return pkl_path


def check_database_transform(db_metadata, point_transform, rebuild_hint='', logger=None):
    """Compare the metadata of the sampler's database files (`DataBaseSampler.db_metadata`) with the dataset's
    point transform. A mismatch raises ValueError naming the file; a database without metadata (built by OpenPCDet
    or an older pcdet) can only be warned about."""
    logger = logger or logging.getLogger(__name__)
    expected = sorted(point_transform['points_tanh_dim'])
    for path, metadata in db_metadata.items():
        if metadata is None or 'points_tanh_dim' not in metadata:
            logger.warning(f'GT database {path} records no point-feature transform (built by OpenPCDet or an older '
                           f'pcdet): cannot check that its objects had tanh applied to the same columns as the '
                           f'scene points (POINTS_TANH_DIM {expected}); rebuild it to be sure. {rebuild_hint}')
            continue
        if sorted(metadata['points_tanh_dim']) != expected:
            raise ValueError(
                f'GT database {path} was built with tanh on point columns {metadata["points_tanh_dim"]} '
                f'({[POINT_FEATURES[d] for d in metadata["points_tanh_dim"]]}), but this config applies it to '
                f'{expected} ({[POINT_FEATURES[d] for d in expected]}) (DATA_CONFIG.POINTS_TANH_DIM): pasted objects '
                f'would carry differently scaled features than the scene. Rebuild the database with the same '
                f'POINTS_TANH_DIM, or set POINTS_TANH_DIM to {metadata["points_tanh_dim"]}. {rebuild_hint}')
