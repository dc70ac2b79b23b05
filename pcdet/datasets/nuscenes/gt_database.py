"""nuScenes GT database for GT sampling ("copy-paste"), built from the train infos.

Reads (per train info): `lidar_path`, `sweeps` (first MAX_SWEEPS-1, in order, so the output is deterministic),
`gt_boxes (N, 9)`, `gt_names (N,)`.
Writes into `root_path` (= DATA_PATH/VERSION), for S = MAX_SWEEPS:
    gt_database_{S}sweeps_withvelo/<image_idx>_<name>_<gt_idx>.bin
        float32 (num_points_in_gt, 5): x, y, z minus the box centre, intensity, time_lag; the points whose FIRST
        containing box (`points_in_boxes_gpu` against `gt_boxes[:, :7]`) is this box
    nuscenes_dbinfos_{S}sweeps_withvelo_global.npy
        float32 (sum of num_points_in_gt, 5): every .bin concatenated in db_info order (memory-mappable; for the
        sampler's DB_DATA_PATH)
    nuscenes_dbinfos_{S}sweeps_withvelo.pkl
        {name: [db_info]} for every class incl. 'ignore'; db_info = {name, path (relative to root_path), image_idx
        (info index), gt_idx, box3d_lidar (9,), num_points_in_gt, global_data_offset [start, end) rows of the .npy}
Crash safety (`pcdet.datasets.prep_utils.GTDatabaseWriter`, shared with Waymo): the object files and the rows of
the .npy (appended as they are produced, never accumulated in memory) go to a hidden temporary folder next to the
final one, renamed onto the final name only when every frame is done. The pkl marks a complete database: it is
removed just before the npy/folder are replaced and written last (atomically). So an exception or Ctrl-C while
frames are processed leaves the previous complete database (or nothing) and deletes the temporary folder; a hard
kill leaves at most a hidden `.gt_database_*.tmp-*` folder, removed by the next run; a rerun just works.
"""
import logging
from pathlib import Path

import numpy as np

from ..prep_utils import GTDatabaseWriter, first_box_index
from .nuscenes_utils import load_points_with_sweeps

NUM_POINT_FEATURES = 5


def database_names(max_sweeps):
    """(object folder, dbinfos pkl, global npy) file names for `max_sweeps`."""
    stem = f'nuscenes_dbinfos_{max_sweeps}sweeps_withvelo'
    return f'gt_database_{max_sweeps}sweeps_withvelo', f'{stem}.pkl', f'{stem}_global.npy'


def write_frame_objects(frame_idx, points, info, box_idxs, used_classes, writer):
    """Write one frame's objects through `writer` (a GTDatabaseWriter); returns their db_infos."""
    db_infos = []
    for gt_idx, (name, box) in enumerate(zip(info['gt_names'], info['gt_boxes'])):
        if used_classes is not None and name not in used_classes:
            continue
        obj_points = points[box_idxs == gt_idx].astype(np.float32, copy=True)
        obj_points[:, :3] -= box[:3].astype(np.float32)
        path, offset = writer.add_object(f'{frame_idx}_{name}_{gt_idx}.bin', obj_points)
        db_infos.append({'name': str(name), 'path': path, 'image_idx': frame_idx, 'gt_idx': gt_idx,
                         'box3d_lidar': np.asarray(box), 'num_points_in_gt': obj_points.shape[0],
                         'global_data_offset': offset})
    return db_infos


def collect_objects(root_path, infos, max_sweeps, used_classes, writer, device, nonfinite='warn'):
    """Loop over frames; returns {name: [db_info]} (points written through `writer`; `nonfinite`: the
    DATA_CONFIG.NONFINITE_POINTS policy for NaN / inf point rows, see nuscenes_utils)."""
    from tqdm import tqdm
    all_db_infos = {}
    for frame_idx, info in enumerate(tqdm(infos, desc='create_groundtruth_database', dynamic_ncols=True)):
        if len(info['gt_boxes']) == 0:
            continue
        points = load_points_with_sweeps(root_path, info, range(max_sweeps - 1), nonfinite=nonfinite)
        box_idxs = first_box_index(points, np.asarray(info['gt_boxes']), device)
        for db_info in write_frame_objects(frame_idx, points, info, box_idxs, used_classes, writer):
            all_db_infos.setdefault(db_info['name'], []).append(db_info)
    return all_db_infos


def create_groundtruth_database(root_path, infos, max_sweeps=10, used_classes=None, device=None, logger=None,
                                nonfinite='warn'):
    """Build the GT database described in the module doc from `infos` (train infos); returns the pkl path."""
    logger = logger or logging.getLogger(__name__)
    root_path = Path(root_path)
    folder_name, pkl_name, npy_name = database_names(max_sweeps)
    with GTDatabaseWriter(root_path, folder_name, pkl_name, npy_name, NUM_POINT_FEATURES) as writer:
        all_db_infos = collect_objects(root_path, infos, max_sweeps, used_classes, writer, device, nonfinite)
        writer.commit(all_db_infos)
    for name, db_infos in sorted(all_db_infos.items()):
        logger.info(f'GT database {name}: {len(db_infos)} objects')
    logger.info(f'GT database -> {root_path / folder_name}, {root_path / pkl_name}, {root_path / npy_name}')
    return root_path / pkl_name
