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
Crash safety: the object files (and the raw rows of the .npy) go to a hidden temporary folder next to the final
one, renamed onto the final name only when every frame is done. The pkl marks a complete database: it is removed
just before the npy/folder are replaced and written last (atomically). So an exception or Ctrl-C while frames are
processed leaves the previous complete database (or nothing) and deletes the temporary folder; a hard kill leaves
at most a hidden `.gt_database_*.tmp-*` folder, removed by the next run; a rerun just works.
"""
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from pcdet.utils.file_utils import atomic_pickle_dump, atomic_write

from .nuscenes_utils import load_points_with_sweeps

NUM_POINT_FEATURES = 5


def database_names(max_sweeps):
    """(object folder, dbinfos pkl, global npy) file names for `max_sweeps`."""
    stem = f'nuscenes_dbinfos_{max_sweeps}sweeps_withvelo'
    return f'gt_database_{max_sweeps}sweeps_withvelo', f'{stem}.pkl', f'{stem}_global.npy'


def first_box_index(points, boxes, device=None):
    """(P,) int64 index of the first box (7-dof) containing each point, -1 for none; CPU or GPU."""
    import torch
    from pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_gpu
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    points_t = torch.from_numpy(np.ascontiguousarray(points[:, :3], dtype=np.float32)).unsqueeze(0).to(device)
    boxes_t = torch.from_numpy(np.ascontiguousarray(boxes[:, :7], dtype=np.float32)).unsqueeze(0).to(device)
    return points_in_boxes_gpu(points_t, boxes_t).long().squeeze(0).cpu().numpy()


def remove_stale_temporaries(root_path, folder_name):
    """Delete leftovers (`.<folder>.tmp-*`, `.<folder>.old-*`) of interrupted runs."""
    for pattern in (f'.{folder_name}.tmp-*', f'.{folder_name}.old-*'):
        for stale in Path(root_path).glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def write_frame_objects(frame_idx, points, info, box_idxs, used_classes, out_dir, folder_name, raw_file, offset):
    """Write one frame's object files and raw global rows; returns (db_infos, new offset)."""
    db_infos = []
    for gt_idx, (name, box) in enumerate(zip(info['gt_names'], info['gt_boxes'])):
        if used_classes is not None and name not in used_classes:
            continue
        obj_points = points[box_idxs == gt_idx].astype(np.float32, copy=True)
        obj_points[:, :3] -= box[:3].astype(np.float32)
        file_name = f'{frame_idx}_{name}_{gt_idx}.bin'
        obj_points.tofile(str(out_dir / file_name))
        raw_file.write(obj_points.tobytes())
        num = obj_points.shape[0]
        db_infos.append({'name': str(name), 'path': f'{folder_name}/{file_name}', 'image_idx': frame_idx,
                         'gt_idx': gt_idx, 'box3d_lidar': np.asarray(box), 'num_points_in_gt': num,
                         'global_data_offset': [offset, offset + num]})
        offset += num
    return db_infos, offset


def collect_objects(root_path, infos, max_sweeps, used_classes, out_dir, folder_name, raw_file, device):
    """Loop over frames; returns ({name: [db_info]}, total rows written to `raw_file`)."""
    from tqdm import tqdm
    all_db_infos, offset = {}, 0
    for frame_idx, info in enumerate(tqdm(infos, desc='create_groundtruth_database', dynamic_ncols=True)):
        if len(info['gt_boxes']) == 0:
            continue
        points = load_points_with_sweeps(root_path, info, range(max_sweeps - 1))
        box_idxs = first_box_index(points, np.asarray(info['gt_boxes']), device)
        db_infos, offset = write_frame_objects(frame_idx, points, info, box_idxs, used_classes, out_dir,
                                               folder_name, raw_file, offset)
        for db_info in db_infos:
            all_db_infos.setdefault(db_info['name'], []).append(db_info)
    return all_db_infos, offset


def write_npy_from_raw(raw_path, num_rows, npy_path):
    """Atomically write a float32 (num_rows, NUM_POINT_FEATURES) .npy whose data are the bytes of `raw_path`."""
    header = {'descr': np.lib.format.dtype_to_descr(np.dtype(np.float32)), 'fortran_order': False,
              'shape': (num_rows, NUM_POINT_FEATURES)}
    with atomic_write(npy_path, 'wb') as out, open(raw_path, 'rb') as raw:
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(raw, out, 16 << 20)


def unique_sibling(path, tag):
    """`<parent>/.<name>.<tag>-<pid>-<random>` (a hidden, unused name next to `path`)."""
    return path.parent / f'.{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}'


def replace_folder(new_dir, final_dir):
    """Rename `new_dir` onto `final_dir`, replacing an existing folder."""
    old_dir = None
    if final_dir.exists():
        old_dir = unique_sibling(final_dir, 'old')
        final_dir.rename(old_dir)
    new_dir.rename(final_dir)
    if old_dir is not None:
        shutil.rmtree(old_dir, ignore_errors=True)


def create_groundtruth_database(root_path, infos, max_sweeps=10, used_classes=None, device=None, logger=None):
    """Build the GT database described in the module doc from `infos` (train infos); returns the pkl path."""
    logger = logger or logging.getLogger(__name__)
    root_path = Path(root_path)
    folder_name, pkl_name, npy_name = database_names(max_sweeps)
    remove_stale_temporaries(root_path, folder_name)
    tmp_dir = unique_sibling(root_path / folder_name, 'tmp')
    tmp_dir.mkdir()  # unlike mkdtemp, honours the umask (the folder is published as is)
    try:
        raw_path = tmp_dir / '.global_data.raw'
        with open(raw_path, 'wb') as raw_file:
            all_db_infos, num_rows = collect_objects(root_path, infos, max_sweeps, used_classes, tmp_dir,
                                                     folder_name, raw_file, device)
        (root_path / pkl_name).unlink(missing_ok=True)  # no pkl while the folder / npy are being replaced
        write_npy_from_raw(raw_path, num_rows, root_path / npy_name)
        raw_path.unlink()
        replace_folder(tmp_dir, root_path / folder_name)
        atomic_pickle_dump(all_db_infos, root_path / pkl_name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    for name, db_infos in sorted(all_db_infos.items()):
        logger.info(f'GT database {name}: {len(db_infos)} objects')
    logger.info(f'GT database -> {root_path / folder_name}, {root_path / pkl_name}, {root_path / npy_name}')
    return root_path / pkl_name
