"""`WaymoDataset` (OpenPCDet-compatible) and the `create_waymo_infos` / `create_waymo_gt_database` CLI, without
TensorFlow (conversion: `waymo_utils`; GT database: `gt_database`; metrics: `waymo_eval`). See docs/WAYMO.md.

Dataset cfg keys read: DATA_PATH, PROCESSED_DATA_TAG, DATA_SPLIT {train, test}, SAMPLED_INTERVAL {train, test},
FILTER_EMPTY_BOXES_FOR_TRAIN, DISABLE_NLZ_FLAG_ON_POINTS, POINTS_TANH_DIM, TRAIN_WITH_SPEED, optional
STRICT_SEQUENCE_LIST (default False), plus DatasetTemplate's. USE_SHARED_MEMORY is accepted and ignored (the page
cache serves repeated reads); SEQUENCE_CONFIG.ENABLED (multi-frame) is not supported (error).

Infos: the per-sequence `<tag>/<sequence>/<sequence>.pkl` of the sequences listed in `ImageSets/<split>.txt` (name
fallbacks `training_`/`validation_`/`testing_` prefix, without `_with_camera_labels`), validated on load, then every
SAMPLED_INTERVAL[mode]-th frame of the concatenation. Sequences without a pkl are counted and logged (upstream
behaviour); with STRICT_SEQUENCE_LIST: True they raise; no frame at all always raises (OpenPCDet #942), and so
does a point file referenced by the loaded infos that does not exist (MissingDataFilesError naming the split's
ImageSets file, the count and the first paths; checked when the split is loaded). Point rows with NaN / inf follow
NONFINITE_POINTS (`warn`, the default: dropped, one warning per file and process; `error`: raise), in the dataset
and in the GT database.

Sample (`__getitem__`, before `prepare_data`): sample_idx, points (N, 5) float32 x, y, z, intensity, elongation
(NLZ / tanh per config), frame_id; with labels: gt_names, gt_boxes (M, 7), or (M, 9) with TRAIN_WITH_SPEED
(vx, vy in the vehicle frame), num_points_in_gt (popped after prepare_data); training with
FILTER_EMPTY_BOXES_FOR_TRAIN drops 0-point boxes. After prepare_data: metadata = info['metadata'].

Teacher features (`TEACHER_FEATURES` block, see DatasetTemplate and teachers/feature_store.py): one part per frame,
`<DATA_PATH>/<FEATURE_DIR>/<frame_id>.npz` computed from the processed .npy as stored (all rows, before the NLZ filter
and tanh); its row count is checked against the .npy (stale file: error naming it), the NLZ mask that drops points
is applied to the features too, and they are appended as trailing columns of `points` (N, 5 + F) before
prepare_data (split into points + point_teacher_features (N', F) after it). The manifest is checked at construction.

CLI:
    python -m pcdet.datasets.waymo.waymo_dataset --func create_waymo_infos \\
        --cfg_file tools/cfgs/dataset_configs/waymo_dataset.yaml [--data_path DIR] [--processed_data_tag TAG] \\
        [--workers N] [--update_info_only] [--skip_missing] [--device cpu|cuda]
    python -m pcdet.datasets.waymo.waymo_dataset --func create_waymo_gt_database --cfg_file ... (GT database only)
`--cfg_file` may also be a model config (its DATA_CONFIG is used, e.g. to build the GT database with the model's
POINTS_TANH_DIM). Outputs under DATA_PATH: <tag>/<sequence>/{<idx:04d>.npy, <sequence>.pkl}, <tag>_infos_<split>.pkl
for the train and test splits of DATA_SPLIT, then the GT database of the train split (gt_database.py).
"""
import argparse
import copy
import logging
import os
import time
from pathlib import Path

import numpy as np

from ...config import ConfigError
from ...config_schema import Ignored, Schema
from ...utils.file_utils import atomic_pickle_dump
from ...utils.point_io import nonfinite_points_policy
from ..dataset import DatasetTemplate, check_has_samples
from ..prep_utils import InfoSchemaError, check_files_exist, process_pool, resolve_cfg_file, resolve_data_path
from ..teachers import feature_store
from . import waymo_utils
from .waymo_utils import (  # noqa: F401 (re-exported)
    CREATE_INFOS_COMMAND,
    INFO_SCHEMA,
    POINTS_TANH_SCHEMA,
    MissingSequenceError,
    WaymoPointFileError,
    candidate_sequence_names,
    load_points,
    load_sequence_infos,
    points_tanh_dims,
    read_image_set,
)


def point_transform_of(dataset_cfg):
    """{'points_tanh_dim', 'nlz_points_kept'} of a dataset config (what `get_lidar` does to the stored points)."""
    return {'points_tanh_dim': points_tanh_dims(dataset_cfg),
            'nlz_points_kept': bool(WaymoDataset.CONFIG_SCHEMA.get(dataset_cfg, 'DISABLE_NLZ_FLAG_ON_POINTS'))}


def find_sequence_pkl(data_path, listed_name):
    """(sequence name, pkl path) of an ImageSets entry under the processed-data folder, or (None, None)."""
    for name in candidate_sequence_names(listed_name):
        path = Path(data_path) / name / f'{name}.pkl'
        if path.is_file():
            return name, path
    return None, None


def iter_split_infos(data_path, listed_names, require_gt=False):
    """Infos of the listed sequences that have a pkl, in list order, one sequence in memory at a time."""
    for listed in listed_names:
        _, pkl_path = find_sequence_pkl(data_path, listed)
        if pkl_path is not None:
            yield from load_sequence_infos(pkl_path, require_gt)


SEQUENCE_CONFIG_SCHEMA = Schema('DATA_CONFIG.SEQUENCE_CONFIG', {
    'ENABLED': False,                   # True (multi-frame) is refused
    'SAMPLE_OFFSET': Ignored('multi-frame Waymo is not supported'),
})


class WaymoDataset(DatasetTemplate):
    """Waymo Open Dataset LiDAR detection on OpenPCDet infos (see the module doc for the sample contract)."""

    CONFIG_SCHEMA = DatasetTemplate.CONFIG_SCHEMA.extend('DATA_CONFIG (WaymoDataset)', {
        'PROCESSED_DATA_TAG': None,         # needed to build the dataset
        'DISABLE_NLZ_FLAG_ON_POINTS': False,
        'FILTER_EMPTY_BOXES_FOR_TRAIN': False,
        'SEQUENCE_CONFIG': SEQUENCE_CONFIG_SCHEMA,
        'STRICT_SEQUENCE_LIST': False,
        **POINTS_TANH_SCHEMA.keys,          # read by waymo_utils.points_tanh_dims
        'USE_SHARED_MEMORY': False,         # read only to say that it is ignored
        'SHARED_MEMORY_FILE_LIMIT': Ignored('OpenPCDet shared-memory loading; pcdet reads points from disk'),
    })

    def __init__(self, dataset_cfg, class_names, training=True, root_path=None, logger=None):
        schema = self.CONFIG_SCHEMA
        root = Path(root_path) if root_path is not None else \
            resolve_data_path(schema.need(dataset_cfg, 'DATA_PATH', 'to build the dataset'))
        super().__init__(dataset_cfg=dataset_cfg, class_names=class_names, training=training, root_path=root,
                         logger=logger)
        if SEQUENCE_CONFIG_SCHEMA.get(schema.get(dataset_cfg, 'SEQUENCE_CONFIG'), 'ENABLED'):
            raise ConfigError('DATA_CONFIG.SEQUENCE_CONFIG.ENABLED: multi-frame Waymo (previous frames merged into '
                              'the sample) is not supported by pcdet yet; set it to False')
        self.data_path = self.root_path / schema.need(dataset_cfg, 'PROCESSED_DATA_TAG', 'to build the dataset')
        self.point_transform = point_transform_of(dataset_cfg)
        self.nonfinite_points = nonfinite_points_policy(dataset_cfg)
        if schema.get(dataset_cfg, 'USE_SHARED_MEMORY'):
            self._log.info('USE_SHARED_MEMORY is ignored: point files are read through the page cache')
        self.split = schema.need(dataset_cfg, 'DATA_SPLIT', 'to build the dataset')[self.mode]
        self.infos, self.seq_name_to_infos = [], {}
        self.include_waymo_data(self.mode)
        self._check_gt_database()
        self.teacher_feature_root = None
        if self.teacher_cfg:
            self.teacher_feature_root = feature_store.feature_root(self.root_path, self.teacher_cfg)
            feature_store.check_manifest(self.teacher_feature_root, self.teacher_cfg, 'WaymoDataset')

    @property
    def _log(self):
        return self.logger or logging.getLogger(__name__)

    def _create_hint(self):
        return CREATE_INFOS_COMMAND.format(data_path=self.root_path)

    def set_split(self, split):
        """Load another split's infos (upstream API); SAMPLED_INTERVAL of the current mode applies."""
        self.split = split
        self.include_waymo_data(self.mode)

    @property
    def sample_sequence_list(self):
        return read_image_set(self.root_path, self.split)

    def include_waymo_data(self, mode):
        """Load the split's per-sequence infos (module doc); sets `infos` and `seq_name_to_infos`."""
        listed = self.sample_sequence_list
        require_gt = self.training and bool(self.class_names)
        infos, seq_name_to_infos, missing = [], {}, []
        for name in listed:
            sequence_name, pkl_path = find_sequence_pkl(self.data_path, name)
            if pkl_path is None:
                missing.append(name)
                continue
            sequence_infos = load_sequence_infos(pkl_path, require_gt)
            infos.extend(sequence_infos)
            if sequence_infos:
                seq_name_to_infos[sequence_infos[0]['point_cloud']['lidar_sequence']] = sequence_infos
        image_set = self.root_path / 'ImageSets' / f'{self.split}.txt'
        if missing:
            message = (f'{len(missing)} of {len(listed)} sequences of {image_set} have no converted infos under '
                       f'{self.data_path} (e.g. {missing[:3]}); run: {self._create_hint()}')
            if self.CONFIG_SCHEMA.get(self.dataset_cfg, 'STRICT_SEQUENCE_LIST') or len(missing) == len(listed):
                raise FileNotFoundError(message + ('' if len(missing) < len(listed) else
                                                   ' (no sequence at all: check DATA_PATH and PROCESSED_DATA_TAG)'))
            self._log.warning(message + ' (skipped; STRICT_SEQUENCE_LIST: True makes this an error)')
        self._log.info(f'Total skipped sequences {len(missing)}; total samples for Waymo dataset ({self.split}): '
                       f'{len(infos)}')
        interval = int((self.CONFIG_SCHEMA.get(self.dataset_cfg, 'SAMPLED_INTERVAL') or {}).get(mode, 1))
        if interval > 1:
            infos = infos[::interval]
            self._log.info(f'Total sampled samples for Waymo dataset: {len(infos)} (SAMPLED_INTERVAL {interval})')
        source = f'{image_set} (sequence infos under {self.data_path})'
        check_has_samples(infos, source, self.split, f'reconvert the sequences: {self._create_hint()}')
        check_files_exist((self._lidar_file(info) for info in infos), source, 'point files',
                          f'delete the .pkl of the affected sequences and rerun: {self._create_hint()}')
        self.infos, self.seq_name_to_infos = infos, seq_name_to_infos
        return seq_name_to_infos

    def _check_gt_database(self):
        """The gt_sampling database must have been built with this config's point transform (gt_database doc)."""
        if getattr(self, 'data_augmentor', None) is None:
            return
        from .gt_database import check_database_transform
        for name, step in self.data_augmentor.data_augmentor_queue:
            if name == 'gt_sampling':
                check_database_transform(
                    step.db_metadata, self.point_transform, logger=self._log,
                    rebuild_hint=('Rebuild: python -m pcdet.datasets.waymo.waymo_dataset --func '
                                  'create_waymo_gt_database --cfg_file <this config>'))

    def _lidar_file(self, info):
        return waymo_utils.lidar_file(self.data_path, info['point_cloud']['lidar_sequence'],
                                      info['point_cloud']['sample_idx'])

    def get_lidar(self, sequence_name, sample_idx):
        """(N, 5) float32 x, y, z, intensity, elongation with the config's NLZ handling, NONFINITE_POINTS policy and
        tanh columns."""
        return load_points(waymo_utils.lidar_file(self.data_path, sequence_name, sample_idx),
                           self.point_transform['points_tanh_dim'], self.point_transform['nlz_points_kept'],
                           nonfinite=self.nonfinite_points)

    def get_teacher_features(self, sequence_name, sample_idx, frame_id):
        """(N', F) float32 stored teacher features of a frame, rows matching `get_lidar` (its NLZ and non-finite row
        selection, `waymo_utils.kept_rows`, applied)."""
        path = feature_store.feature_path(self.teacher_feature_root, '', frame_id)
        features, part_sizes = feature_store.load_frame_features(path, self.num_teacher_features)
        lidar_path = waymo_utils.lidar_file(self.data_path, sequence_name, sample_idx)
        stored_points = np.load(lidar_path, mmap_mode='r')  # rows + NLZ flags only; get_lidar validated the file
        features = feature_store.join_part_features(path, features, part_sizes, [0], [len(stored_points)],
                                                    [str(lidar_path)])
        keep = waymo_utils.kept_rows(stored_points, lidar_path, self.point_transform['nlz_points_kept'],
                                     self.nonfinite_points)  # load_points' row filter
        return features if keep.all() else features[keep]

    def __len__(self):
        if self._merge_all_iters_to_one_epoch:
            return len(self.infos) * self.total_epochs
        return len(self.infos)

    def __getitem__(self, index):
        if self._merge_all_iters_to_one_epoch:
            index = index % len(self.infos)
        info = copy.deepcopy(self.infos[index])
        pc_info = info['point_cloud']
        input_dict = {
            'sample_idx': pc_info['sample_idx'],
            'points': self.get_lidar(pc_info['lidar_sequence'], pc_info['sample_idx']),
            'frame_id': info['frame_id'],
        }
        if self.teacher_cfg:
            features = self.get_teacher_features(pc_info['lidar_sequence'], pc_info['sample_idx'], info['frame_id'])
            input_dict['points'] = np.concatenate([input_dict['points'], features], axis=1)
        if 'annos' in info and self.class_names is not None:
            annos = info['annos']
            known = np.asarray(annos['name']) != 'unknown'
            names = np.asarray(annos['name'])[known]
            gt_boxes = np.asarray(annos['gt_boxes_lidar'], dtype=np.float64)
            gt_boxes = (gt_boxes if len(known) else np.zeros((0, 9)))[known]  # upstream empty annos: shape (0,)
            num_points = np.asarray(annos['num_points_in_gt'])[known]
            if self.CONFIG_SCHEMA.get(self.dataset_cfg, 'TRAIN_WITH_SPEED'):
                if gt_boxes.shape[1] != 9:
                    raise ValueError(f'TRAIN_WITH_SPEED needs (N, 9) gt_boxes_lidar, frame {info["frame_id"]} has '
                                     f'{gt_boxes.shape}; regenerate the infos')
            else:
                gt_boxes = gt_boxes[:, 0:7]
            if self.training and self.CONFIG_SCHEMA.get(self.dataset_cfg, 'FILTER_EMPTY_BOXES_FOR_TRAIN'):
                mask = num_points > 0
                names, gt_boxes, num_points = names[mask], gt_boxes[mask], num_points[mask]
            input_dict.update({'gt_names': names, 'gt_boxes': gt_boxes, 'num_points_in_gt': num_points})
        data_dict = self.prepare_data(data_dict=input_dict)
        data_dict['metadata'] = info.get('metadata', info['frame_id'])
        data_dict.pop('num_points_in_gt', None)
        return data_dict

    def evaluation(self, det_annos, class_names, eval_metric='waymo', **kwargs):
        """Waymo AP/APH (LEVEL_1/2) of `det_annos` (aligned with `self.infos`) with pcdet's TensorFlow-free
        evaluator; returns `(result_str, result_dict)` as OpenPCDet. kwargs: `max_boxes_per_frame`, `device`,
        `distance_thresh` (waymo_eval); others (output_path) are ignored."""
        if not self.infos or 'annos' not in self.infos[0]:
            return 'No ground-truth boxes for evaluation', {}
        if eval_metric != 'waymo':
            raise NotImplementedError(f"eval_metric {eval_metric!r}: pcdet evaluates Waymo with 'waymo' (AP/APH); the "
                                      f"KITTI-style evaluation of OpenPCDet is not supported")
        from .waymo_eval import MAX_BOXES_PER_FRAME, result_str, waymo_detection_metrics
        gt_annos = [dict(info['annos'], frame_id=info['frame_id']) for info in self.infos]
        metrics = waymo_detection_metrics(
            det_annos, gt_annos, class_names, distance_thresh=kwargs.get('distance_thresh', 1000),
            max_boxes_per_frame=kwargs.get('max_boxes_per_frame', MAX_BOXES_PER_FRAME),
            device=kwargs.get('device', 'cpu'), logger=self._log)
        return result_str(metrics, class_names), metrics

    def create_groundtruth_database(self, info_path=None, save_path=None, used_classes=None, split='train',
                                    sampled_interval=1, processed_data_tag=None, device=None, progress=True):
        """GT database of a split with this dataset's point transform (`create_waymo_gt_database`)."""
        return create_waymo_gt_database(self.dataset_cfg, self.root_path, processed_data_tag, split, info_path,
                                        save_path, used_classes, sampled_interval, device, self._log, progress)


def create_waymo_gt_database(dataset_cfg, data_path, processed_data_tag=None, split=None, info_path=None,
                             save_path=None, used_classes=None, sampled_interval=1, device=None, logger=None,
                             progress=True, num_infos=None):
    """GT database (gt_database.py) of `split` (default DATA_SPLIT['train']) from `info_path` (a global info pkl,
    as upstream) or, by default, streamed from the split's per-sequence pkls (one sequence in memory at a time).
    Points are loaded as `WaymoDataset.get_lidar` does with `dataset_cfg` (NLZ handling, POINTS_TANH_DIM)."""
    from .gt_database import DEFAULT_USED_CLASSES, create_groundtruth_database
    data_path = Path(data_path)
    schema = WaymoDataset.CONFIG_SCHEMA
    processed_data_tag = processed_data_tag or schema.need(dataset_cfg, 'PROCESSED_DATA_TAG', 'for the database')
    split = split or schema.need(dataset_cfg, 'DATA_SPLIT', 'for the database')['train']
    processed_path = data_path / processed_data_tag
    transform = point_transform_of(dataset_cfg)
    nonfinite = nonfinite_points_policy(dataset_cfg)
    if info_path is not None:
        infos = load_sequence_infos(info_path, require_gt=True)
        num_infos = len(infos)
    else:
        listed = read_image_set(data_path, split)
        infos = iter_split_infos(processed_path, listed, require_gt=True)

    def load_fn(info):
        path = waymo_utils.lidar_file(processed_path, info['point_cloud']['lidar_sequence'],
                                      info['point_cloud']['sample_idx'])
        return load_points(path, transform['points_tanh_dim'], transform['nlz_points_kept'], nonfinite=nonfinite)

    return create_groundtruth_database(
        save_path or data_path, infos, load_fn, processed_data_tag, transform, split=split,
        sampled_interval=sampled_interval, used_classes=used_classes or DEFAULT_USED_CLASSES, device=device,
        logger=logger, num_infos=num_infos, progress=progress)


# ---- info creation -------------------------------------------------------------------------------------------------

def default_workers():
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


def convert_split(save_path, sequence_files, workers=1, update_info_only=False, has_label=True,
                  logger=None, progress=True, desc='create_waymo_infos'):
    """Convert the tfrecords `sequence_files` of one split into `save_path` (the PROCESSED_DATA_TAG folder), skipping
    complete sequences, with `workers` processes; returns
    {'converted': [...], 'updated': [...], 'skipped': [...], 'failed': [...]} (sequence names). Raises
    RuntimeError after the others are done if any sequence failed."""
    from functools import partial

    from tqdm import tqdm
    logger = logger or logging.getLogger(__name__)
    result = {'converted': [], 'updated': [], 'skipped': [], 'failed': []}
    pending = []
    for path in sequence_files:
        name = waymo_utils.sequence_stem(path.name)
        status, reason = waymo_utils.sequence_status(save_path, name)
        if status == 'complete' and not update_info_only:
            result['skipped'].append(name)
            continue
        if status not in ('complete', 'missing'):
            logger.warning(f'{name}: converting again ({status}: {reason})')
        pending.append(path)
    if result['skipped']:
        logger.info(f'{desc}: {len(result["skipped"])} sequence(s) already converted (their .pkl exists), skipped')
    if not pending:
        return result
    # status already checked here: the tasks skip the check, except for --update_info_only (reads the old pkl)
    task = partial(waymo_utils.convert_sequence_task, save_path=save_path, has_label=has_label,
                   update_info_only=update_info_only, force=not update_info_only)
    workers = max(1, min(int(workers), len(pending)))
    logger.info(f'{desc}: converting {len(pending)} sequence(s) with {workers} worker(s)')
    bar = tqdm(total=len(pending), desc=desc, unit='seq', dynamic_ncols=True, disable=not progress)
    frames = points = 0
    if workers > 1:
        from .tfrecord import crc32c
        crc32c(bytes(64))  # load the numba CRC kernel once here: forked children inherit it (~1 s each)
    try:
        # one sequence per child process: each task starts from a fresh, small address space
        with process_pool(workers, maxtasksperchild=1) as pool:
            summaries = map(task, pending) if pool is None else pool.imap_unordered(task, pending)
            for summary in summaries:
                if summary['status'] == 'failed':
                    logger.error(f'{summary["sequence_name"]}: {summary["error"]}\n{summary["traceback"]}')
                    result['failed'].append(summary['sequence_name'])
                else:
                    result[summary['status']].append(summary['sequence_name'])
                    frames += summary['num_frames'] or 0
                    points += summary['num_points'] or 0
                bar.set_postfix(frames=frames, failed=len(result['failed']))
                bar.update(1)
    finally:
        bar.close()
    logger.info(f'{desc}: {len(result["converted"])} converted, {len(result["updated"])} updated '
                f'({frames} frames, {points / max(frames, 1):.0f} points/frame), {len(result["failed"])} failed')
    if result['failed']:
        raise RuntimeError(f'{desc}: {len(result["failed"])} sequence(s) failed (see the log above): '
                           f'{result["failed"][:10]}; the others are complete and will be skipped by a rerun')
    return result


def create_waymo_infos(dataset_cfg, data_path, save_path=None, processed_data_tag=None, raw_data_tag='raw_data',
                       workers=None, update_info_only=False, skip_missing=False, with_gt_database=True,
                       device=None, logger=None, progress=True):
    """Convert the train and test splits of DATA_SPLIT, write `<tag>_infos_<split>.pkl`, then the GT database of the
    train split. Returns {'splits': {split: convert_split result}, 'info_paths': {...}, 'gt_database': pkl path}."""
    logger = logger or logging.getLogger(__name__)
    data_path = Path(data_path)
    save_path = Path(save_path) if save_path is not None else data_path
    schema = WaymoDataset.CONFIG_SCHEMA
    processed_data_tag = processed_data_tag or schema.need(dataset_cfg, 'PROCESSED_DATA_TAG', 'to create the infos')
    processed_path = save_path / processed_data_tag
    workers = default_workers() if workers is None else workers
    data_split = schema.need(dataset_cfg, 'DATA_SPLIT', 'to create the infos')
    splits = list(dict.fromkeys([data_split['train'], data_split['test']]))
    # Resolve every split's tfrecords first: missing / misnamed files are reported before hours of work.
    split_files = {}
    for split in splits:
        listed = read_image_set(data_path, split)
        found = waymo_utils.resolve_sequence_files(data_path / raw_data_tag, listed,
                                                   data_path / 'ImageSets' / f'{split}.txt', skip_missing, logger)
        split_files[split] = (listed, found)
    report = {'splits': {}, 'info_paths': {}, 'num_frames': {}, 'gt_database': None}
    for split in splits:
        listed, found = split_files[split]
        start = time.time()
        report['splits'][split] = convert_split(processed_path, [p for _, p in found], workers, update_info_only,
                                                logger=logger, progress=progress, desc=f'create_waymo_infos ({split})')
        # every listed sequence with a pkl, in list order: the same frames, in the same order, as WaymoDataset and
        # the GT database (whose per-class frame strides depend on the frame index)
        infos = list(iter_split_infos(processed_path, listed))
        info_path = save_path / f'{processed_data_tag}_infos_{split}.pkl'
        atomic_pickle_dump(infos, info_path)
        report['info_paths'][split], report['num_frames'][split] = info_path, len(infos)
        logger.info(f'{split}: {len(infos)} frames -> {info_path} '
                    f'({time.time() - start:.1f} s)')
        del infos
    if with_gt_database:
        report['gt_database'] = create_waymo_gt_database(
            dataset_cfg, save_path, processed_data_tag, device=device, logger=logger, progress=progress,
            num_infos=report['num_frames'].get(data_split['train']))
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert Waymo Open Dataset tfrecords into OpenPCDet infos + point files + GT database '
                    '(no TensorFlow).')
    parser.add_argument('--func', default='create_waymo_infos',
                        choices=['create_waymo_infos', 'create_waymo_gt_database'])
    parser.add_argument('--cfg_file', default='tools/cfgs/dataset_configs/waymo_dataset.yaml',
                        help='dataset config, or a model config (its DATA_CONFIG is used)')
    parser.add_argument('--data_path', default=None,
                        help='DATA_PATH override (holds raw_data/ and ImageSets/; outputs go there too)')
    parser.add_argument('--processed_data_tag', default=None, help='default: PROCESSED_DATA_TAG of the config')
    parser.add_argument('--workers', type=int, default=None,
                        help=f'conversion processes (default min(16, CPUs) = {default_workers()} here); each holds one '
                             f'frame at a time')
    parser.add_argument('--update_info_only', action='store_true',
                        help='rebuild the per-sequence infos from the labels, keeping the point files')
    parser.add_argument('--skip_missing', action='store_true',
                        help='convert the listed tfrecords that exist and warn about the others (default: error)')
    parser.add_argument('--device', default=None, help='points-in-boxes device for the GT database (default: auto)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    return parser.parse_args(argv)


def load_dataset_cfg(cfg_file):
    """A dataset config, or the DATA_CONFIG of a model config."""
    from ...config import cfg_from_yaml_file
    from ...config_registry import validate_config
    cfg = validate_config(cfg_from_yaml_file(resolve_cfg_file(cfg_file)), source=str(cfg_file))
    return cfg.DATA_CONFIG if 'DATA_CONFIG' in cfg else cfg


def main(argv=None):
    from ...utils.common_utils import create_logger
    args = parse_args(argv)
    logger = create_logger()
    dataset_cfg = load_dataset_cfg(args.cfg_file)
    schema = WaymoDataset.CONFIG_SCHEMA
    data_path = Path(args.data_path) if args.data_path else \
        resolve_data_path(schema.need(dataset_cfg, 'DATA_PATH', 'or --data_path'))
    tag = args.processed_data_tag or schema.need(dataset_cfg, 'PROCESSED_DATA_TAG', 'or --processed_data_tag')
    if args.func == 'create_waymo_infos':
        return create_waymo_infos(dataset_cfg, data_path, processed_data_tag=tag, workers=args.workers,
                                  update_info_only=args.update_info_only, skip_missing=args.skip_missing,
                                  device=args.device, logger=logger, progress=not args.quiet)
    return create_waymo_gt_database(dataset_cfg, data_path, tag, device=args.device, logger=logger,
                                    progress=not args.quiet)


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, InfoSchemaError, ConfigError, WaymoPointFileError, ValueError, RuntimeError) as err:
        raise SystemExit(f'error: {err}')
