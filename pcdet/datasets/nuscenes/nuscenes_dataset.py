"""`NuScenesDataset` (OpenPCDet-compatible) and the `create_nuscenes_infos` CLI.

Dataset cfg keys read: DATA_PATH, VERSION, MAX_SWEEPS, INFO_PATH {train, test}, optional SAMPLED_INTERVAL
{train, test}, PRED_VELOCITY, SET_NAN_VELOCITY_TO_ZEROS, FILTER_MIN_POINTS_IN_GT, BALANCED_RESAMPLING, optional
EVAL_SET, plus DatasetTemplate's.
`root_path` = DATA_PATH/VERSION (a relative DATA_PATH is resolved against the repo root, then the CWD, then tools/).

Sample (`__getitem__`, before `prepare_data`): points (N, 5) float32 x, y, z, intensity, time_lag in the keyframe
LiDAR frame; frame_id (lidar file stem); metadata {'token'}; gt_boxes (M, 9) / gt_names (M,) unless CLASS_NAMES is
empty (self-supervised mode: no boxes at all). Sweeps: training draws MAX_SWEEPS-1 of them with
`np.random.choice(..., replace=False)` as upstream; testing takes the first MAX_SWEEPS-1 in order (deterministic;
upstream draws randomly at test time too, which only changes the point order when all sweeps are used).

Teacher features (`TEACHER_FEATURES` block, see DatasetTemplate and teachers/feature_store.py): the folder's
manifest is checked at construction (same teacher config, >= MAX_SWEEPS - 1 stored sweeps); per sample the frame's
`<FEATURE_DIR>/<frame_id>.npz` is read, the sweeps are drawn from the S sweeps stored in it (training: random without
replacement, testing: the first ones), the key frame and those sweeps are loaded as parts with the same loader that
produced the file, every part's row count is checked against the file (stale file: error naming it), and the
features are appended as trailing columns: points (N, 5 + F) before prepare_data, split into points (N', 5) +
point_teacher_features (N', F) float32 after it (+ point_superpixel_ids (N',) int64 when the teacher stores them).

Tasks (`DATA_CONFIG.TASK`, see DatasetTemplate and docs/CONFIG.md). `segmentation` (lidarseg.py): point_seg_labels
and point_raw_index ride behind the points (and teacher features) as carried columns, points (N, 5 [+ F] + 2) ->
points (N', 5) + both (N',) int64; metadata adds lidar_token, lidar_path (absolute), num_raw_points. `occupancy`
(occupancy.py): gt_occupancy (X, Y, Z) uint8 from OCC_PATH, moved with lidar_aug_matrix; metadata adds lidar_token,
scene_token. Both: no boxes, no CBGS / gt_sampling (ConfigError), infos must carry lidar_token + scene_token
(else InfoSchemaError: regenerate), label / occupancy files checked to exist when the dataset is built.

Camera inputs (`CAMERA_INPUTS.ENABLED`, camera_inputs.py; infos made with --with_cam): camera_images (V, 3, h, w),
camera_intrinsics (V, 3, 3), camera_from_lidar (V, 4, 4), camera_depth (V, h, w) from the key-frame points (time_lag
0), all before augmentation (a model maps augmented points back with lidar_aug_matrix).

Info files are validated on load (list of dicts with the required keys, `info_schema` marker if present, one
gt_name per gt_box, enough sweeps for MAX_SWEEPS); a bad file raises InfoSchemaError naming it and saying to
regenerate it. When the dataset is built, every key-frame LiDAR file and (MAX_SWEEPS > 1) every sweep file an info
file references must exist (MissingDataFilesError naming the info file, the count and the first paths), and the
split must have samples (EmptyDatasetError naming INFO_PATH's files and the split). Point rows with NaN / inf
follow NONFINITE_POINTS (`warn`, the default: dropped, one warning per file and process; `error`: raise).

CLI:
    python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos \\
        --cfg_file tools/cfgs/dataset_configs/nuscenes_dataset.yaml --version v1.0-mini [--data_path DIR] \\
        [--train_split NAME --val_split NAME] [--with_cam]
writes into DATA_PATH/VERSION: nuscenes_infos_{S}sweeps_{train,val}.pkl (v1.0-test: _test.pkl; `--with_cam` adds
OpenPCDet's `cams` of the six cameras, nuscenes_utils module doc), then (train/val
versions) the GT database (gt_database.py). Splits: v1.0-trainval -> train/val, v1.0-mini -> mini_train/mini_val,
v1.0-test -> test; other names are custom splits from the devkit's `<dataroot>/<VERSION>/splits.json`
({"my_train": [scene names], ...}, as read by nuscenes-devkit 1.2.0); evaluate on one with EVAL_SET or eval_set=.
"""
import argparse
import copy
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ...config import ConfigError
from ...utils.point_io import nonfinite_points_policy
from ..carried_columns import SEG_COLUMNS, append_columns
from ..dataset import TASKS, DatasetTemplate, check_has_samples, check_matrix_order
from ..prep_utils import InfoSchemaError, check_files_exist, load_pickle, resolve_cfg_file, validate_info_list  # noqa: F401
from ..teachers import feature_store
from . import occupancy
from .camera_inputs import CAMERA_INPUTS_SCHEMA, camera_inputs, check_camera_inputs_cfg
from .lidarseg import CHALLENGE_CLASSES, LidarsegLabels, UnlabelledLidarseg, num_points_in_file
from .nuscenes_utils import INFO_SCHEMA, cams_problem, load_nusc, load_point_parts, resolve_data_path

REQUIRED_INFO_KEYS = ('lidar_path', 'token', 'sweeps', 'ref_from_car', 'car_from_global', 'timestamp')
TOKEN_INFO_KEYS = ('lidar_token', 'scene_token')  # needed by TASK segmentation / occupancy
GT_INFO_KEYS = ('gt_boxes', 'gt_names', 'gt_boxes_velocity', 'gt_boxes_token', 'num_lidar_pts', 'num_radar_pts')
UNLABELLED_VERSION = 'v1.0-test'  # no public lidarseg labels: segmentation predicts, the server scores
CREATE_INFOS_COMMAND = ('python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos '
                        '--cfg_file <dataset yaml> --version {version} --data_path {data_path}')


def info_problem(info, require_gt, min_sweeps):
    """Description of what is wrong with one info dict, or None."""
    if not isinstance(info, dict):
        return f'an entry is a {type(info).__name__}, not a dict'
    if info.get('info_schema', INFO_SCHEMA) != INFO_SCHEMA:
        return f'info_schema is {info["info_schema"]!r}, this pcdet reads {INFO_SCHEMA!r}'
    needs_gt = require_gt or any(key in info for key in GT_INFO_KEYS)
    missing = [key for key in REQUIRED_INFO_KEYS + (GT_INFO_KEYS if needs_gt else ()) if key not in info]
    if missing:
        return f'missing keys {missing}'
    gt_shape = np.shape(info['gt_boxes']) if needs_gt else (0, 9)
    if len(gt_shape) != 2 or gt_shape[1] != 9:
        return f'frame {info["token"]}: gt_boxes has shape {gt_shape}, not (N, 9) [x, y, z, l, w, h, yaw, vx, vy]'
    if needs_gt and gt_shape[0] != len(info['gt_names']):
        return (f'frame {info["token"]}: gt_names has {len(info["gt_names"])} entries but gt_boxes has '
                f'{gt_shape[0]} rows (one name per box)')
    if len(info['sweeps']) < min_sweeps:
        return f'only {len(info["sweeps"])} sweeps per frame, MAX_SWEEPS needs {min_sweeps}'
    return cams_problem(info)


def validate_infos(infos, info_path, require_gt=False, min_sweeps=0):
    """Raise InfoSchemaError naming `info_path` unless `infos` is a list of valid info dicts (module docs)."""
    validate_info_list(infos, info_path, lambda info: info_problem(info, require_gt, min_sweeps),
                       'regenerate with create_nuscenes_infos')


def referenced_lidar_paths(infos, root_path, with_sweeps=True):
    """Absolute paths of the key-frame LiDAR files of `infos` and (`with_sweeps`) of all their sweeps."""
    root_path = Path(root_path)
    for info in infos:
        yield root_path / info['lidar_path']
        if with_sweeps:
            for sweep in info['sweeps']:
                yield root_path / sweep['lidar_path']


def load_infos(info_path, require_gt=False, min_sweeps=0, create_hint=''):
    """Load and validate one info pickle; a missing file raises FileNotFoundError naming it and `create_hint`."""
    infos = load_pickle(info_path, 'nuScenes info file', create_hint)
    validate_infos(infos, info_path, require_gt, min_sweeps)
    return infos


def balanced_infos_resampling(infos, class_names, logger=None):
    """CBGS: per class, resample (with replacement, numpy global RNG) the frames containing it so that every class
    gets an equal share; classes with no frame are skipped. Empty `class_names` returns `infos` unchanged."""
    if not class_names:
        return infos
    frames_of_class = {name: [] for name in class_names}
    for index, info in enumerate(infos):
        for name in set(info['gt_names']):
            if name in frames_of_class:
                frames_of_class[name].append(index)
    total = sum(len(frames) for frames in frames_of_class.values())
    if total == 0:
        return infos
    sampled = []
    for frames in frames_of_class.values():
        if frames:
            ratio = (1.0 / len(class_names)) / (len(frames) / total)
            sampled += np.random.choice(frames, int(len(frames) * ratio)).tolist()
    if logger is not None:
        logger.info(f'CBGS: {len(infos)} frames -> {len(sampled)} after balanced resampling')
    return [infos[index] for index in sampled]


class NuScenesDataset(DatasetTemplate):
    """nuScenes LiDAR detection dataset on OpenPCDet infos (see module docs for the sample contract)."""

    CONFIG_SCHEMA = DatasetTemplate.CONFIG_SCHEMA.extend('DATA_CONFIG (NuScenesDataset)', {
        'VERSION': None,                    # needed to build the dataset
        # nuScenes boxes carry velocities: keep them (9-dim targets and predictions) unless switched off. This
        # default also serves DatasetTemplate.generate_prediction_dicts (whose generic default is False).
        'PRED_VELOCITY': True,
        'SET_NAN_VELOCITY_TO_ZEROS': False,
        'FILTER_MIN_POINTS_IN_GT': False,   # or N: keep boxes with >= N LiDAR points
        'BALANCED_RESAMPLING': False,
        'EVAL_SET': None,
        'SEG_LABEL_SWEEPS': False,          # segmentation: sweep labels from lidarseg_sweeps/ (else sweep points 0)
        'OCC_PATH': 'nuScenes-Occupancy',   # occupancy GT root, relative to DATA_PATH/VERSION or absolute
        'OCC_GRID_SIZE': [512, 512, 40],    # occupancy grid (X, Y, Z), OpenOccupancy
        'OCC_POINT_CLOUD_RANGE': [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0],
        'CAMERA_INPUTS': CAMERA_INPUTS_SCHEMA,
    })
    SUPPORTED_TASKS = TASKS

    def __init__(self, dataset_cfg, class_names, training=True, root_path=None, logger=None):
        schema = self.CONFIG_SCHEMA
        data_path = Path(root_path) if root_path is not None else \
            resolve_data_path(schema.need(dataset_cfg, 'DATA_PATH', 'to build the dataset'))
        super().__init__(dataset_cfg=dataset_cfg, class_names=class_names, training=training,
                         root_path=data_path / schema.need(dataset_cfg, 'VERSION', 'to build the dataset'),
                         logger=logger)
        self.nonfinite_points = nonfinite_points_policy(dataset_cfg)
        self.infos = self.include_nuscenes_data(self.mode)
        check_has_samples(self.infos, self._info_source(self.mode), self.mode,
                          f'check the info files or recreate them with: {self._create_hint()}')
        if self.training and schema.get(dataset_cfg, 'BALANCED_RESAMPLING'):
            if self.task != 'detection':
                raise ConfigError(f'DATA_CONFIG.BALANCED_RESAMPLING (CBGS, by box classes) with DATA_CONFIG.TASK: '
                                  f'{self.task}: set BALANCED_RESAMPLING: False')
            self.infos = balanced_infos_resampling(self.infos, self.class_names, self._log)
        if self.task != 'detection' and list(self.class_names) != list(CHALLENGE_CLASSES):
            raise ConfigError(f'CLASS_NAMES with DATA_CONFIG.TASK: {self.task} must be the 16 lidarseg challenge '
                              f'classes in official order (ids 1..16) {list(CHALLENGE_CLASSES)}, got '
                              f'{self.class_names}')
        self.seg_labels = self.occ_grid = self.occ_root = None
        if self.task == 'segmentation' and self._cfg('VERSION') == UNLABELLED_VERSION:
            self.seg_labels = UnlabelledLidarseg()
        elif self.task == 'segmentation':
            self.seg_labels = LidarsegLabels(self.root_path, self._cfg('VERSION'), self.infos,
                                             self._info_source(self.mode), self._cfg('SEG_LABEL_SWEEPS'),
                                             with_sweeps=self._cfg('MAX_SWEEPS') > 1)
        elif self.task == 'occupancy':
            occ_range = self._cfg('OCC_POINT_CLOUD_RANGE')
            if not np.allclose(np.asarray(occ_range, dtype=np.float32), self.point_cloud_range):
                # the volume is moved with the points' augmentation matrix about this grid's origin: another extent
                # than the points' would misplace it silently
                raise ConfigError(f'DATA_CONFIG.OCC_POINT_CLOUD_RANGE {list(occ_range)} must equal '
                                  f'DATA_CONFIG.POINT_CLOUD_RANGE {self.point_cloud_range.tolist()} with '
                                  'TASK: occupancy')
            if self.training:
                check_matrix_order(self._cfg('DATA_AUGMENTOR'), 'gt_occupancy')
            self.occ_grid = occupancy.occupancy_grid(self._cfg('OCC_GRID_SIZE'), occ_range)
            self.occ_root = occupancy.occupancy_root(self.root_path, self._cfg('OCC_PATH'))
            check_files_exist((occupancy.occupancy_path(self.occ_root, info) for info in self.infos),
                              self._info_source(self.mode), 'occupancy files',
                              f'expected <OCC_PATH>/scene_<scene_token>/occupancy/<lidar_token>.npy with OCC_PATH '
                              f'{self.occ_root} (DATA_CONFIG.OCC_PATH, relative to DATA_PATH/VERSION or absolute)')
        self.camera_inputs_cfg = CAMERA_INPUTS_SCHEMA.fill(schema.get(dataset_cfg, 'CAMERA_INPUTS'))
        check_camera_inputs_cfg(self.camera_inputs_cfg)
        if self.camera_inputs_cfg.ENABLED and self.training:
            # the cameras stay in the recorded frame; a model maps the points back with lidar_aug_matrix
            check_matrix_order(self._cfg('DATA_AUGMENTOR'), 'the camera inputs')
        self.teacher_feature_root = None
        if self.teacher_cfg:
            self.teacher_feature_root = feature_store.feature_root(self.root_path, self.teacher_cfg)
            feature_store.check_manifest(self.teacher_feature_root, self.teacher_cfg, 'NuScenesDataset',
                                         min_sweeps=schema.get(dataset_cfg, 'MAX_SWEEPS') - 1)

    @property
    def _log(self):
        return self.logger or logging.getLogger(__name__)

    def _cfg(self, key):
        """DATA_CONFIG[key], else its declared default (CONFIG_SCHEMA)."""
        return self.CONFIG_SCHEMA.get(self.dataset_cfg, key)

    def _create_hint(self):
        return CREATE_INFOS_COMMAND.format(version=self._cfg('VERSION'), data_path=self.root_path.parent)

    def _info_source(self, mode):
        return f'DATA_CONFIG.INFO_PATH.{mode} {[str(self.root_path / p) for p in self._cfg("INFO_PATH")[mode]]}'

    def load_split_infos(self, mode):
        """Concatenated, validated infos of INFO_PATH[mode] (paths relative to root_path)."""
        if not self.root_path.is_dir():
            raise FileNotFoundError(
                f'nuScenes dataset root {self.root_path} (DATA_PATH/VERSION) does not exist; expected samples/, '
                f'sweeps/, {self._cfg("VERSION")}/ and the info files there. Create the infos with: '
                f'{self._create_hint()}, or run python -m pcdet.datasets.synthetic.nuscenes --root {self.root_path} '
                f'--version {self._cfg("VERSION")} ... to create a synthetic dataset')
        require_gt = mode == 'train' and self.uses_boxes
        min_sweeps = self._cfg('MAX_SWEEPS') - 1
        infos = []
        for info_path in self._cfg('INFO_PATH')[mode]:
            file_infos = load_infos(self.root_path / info_path, require_gt, min_sweeps, self._create_hint())
            if self.task != 'detection':
                validate_info_list(file_infos, self.root_path / info_path,
                                   lambda info: None if all(key in info for key in TOKEN_INFO_KEYS) else
                                   f'no {list(TOKEN_INFO_KEYS)} (needed by DATA_CONFIG.TASK: {self.task})',
                                   f'regenerate the infos with: {self._create_hint()}')
            # sweeps are drawn at random per epoch: a missing one must fail now, not epochs later (MAX_SWEEPS 1
            # never reads a sweep)
            check_files_exist(referenced_lidar_paths(file_infos, self.root_path, min_sweeps > 0),
                              self.root_path / info_path, 'LiDAR files',
                              f'paths in the infos are relative to {self.root_path} (DATA_PATH/VERSION)')
            infos += file_infos
        return infos

    def include_nuscenes_data(self, mode):
        """Infos of the split, every SAMPLED_INTERVAL[mode]-th one (optional key, as for Waymo; e.g. 10 for a
        10%-of-the-labels fine-tune)."""
        infos = self.load_split_infos(mode)
        self._log.info(f'Total samples for NuScenes dataset ({mode}): {len(infos)}')
        interval = int((self._cfg('SAMPLED_INTERVAL') or {}).get(mode, 1))
        if interval < 1:
            raise ValueError(f'DATA_CONFIG.SAMPLED_INTERVAL.{mode} must be >= 1, got {interval}')
        if interval > 1:
            infos = infos[::interval]
            self._log.info(f'Total sampled samples for NuScenes dataset ({mode}): {len(infos)} '
                           f'(SAMPLED_INTERVAL {interval})')
        return infos

    def draw_sweep_indices(self, num_available, num_sweeps):
        """Indices of the sweeps to load among the first `num_available` (module docs)."""
        if self.training:
            return np.random.choice(num_available, num_sweeps, replace=False)
        return range(num_sweeps)

    def get_lidar_with_sweeps(self, index, max_sweeps=1):
        """(N, 5) float32 x, y, z, intensity, time_lag: keyframe + max_sweeps-1 sweeps (module docs); with teacher
        features (N, 5 + F): the frame's stored features appended as trailing columns."""
        info = self.infos[index]
        num_sweeps = max_sweeps - 1
        if num_sweeps > len(info['sweeps']):
            raise ValueError(f'frame {info["token"]} has {len(info["sweeps"])} sweeps, {num_sweeps} requested; '
                             f'regenerate the infos with MAX_SWEEPS >= {max_sweeps}')
        if self.teacher_cfg:
            points, sweep_indices, raw_rows = self.get_lidar_and_teacher_features(info, num_sweeps)
        else:
            sweep_indices = list(self.draw_sweep_indices(len(info['sweeps']), num_sweeps))
            parts, raw_rows = load_point_parts(self.root_path, info, sweep_indices, return_raw_rows=True,
                                               nonfinite=self.nonfinite_points)
            points = np.concatenate(parts, axis=0).astype(np.float32, copy=False)
        if self.seg_labels is not None:
            points = append_columns(points, SEG_COLUMNS, self.seg_labels.columns(info, sweep_indices, raw_rows),
                                    info['lidar_path'])
        return points

    def get_lidar_and_teacher_features(self, info, num_sweeps):
        """(N, 5 + F [+ 1]) float32: key frame + `num_sweeps` sweeps drawn from those stored in the frame's feature
        file, each part's stored features (and superpixel ids, when the teacher stores them) appended to its rows
        (row counts checked: a stale file raises naming it); also returns the drawn sweep indices and the parts' file
        rows."""
        path = feature_store.feature_path(self.teacher_feature_root, '', Path(info['lidar_path']).stem)
        features, part_sizes, *extras = feature_store.load_frame_features(path, self.num_teacher_features,
                                                                          self.teacher_extra_arrays)
        stored_sweeps = len(part_sizes) - 1
        if num_sweeps > stored_sweeps:
            raise feature_store.FeatureStoreError(
                f'teacher feature file {path} stores {stored_sweeps} sweeps but MAX_SWEEPS - 1 = {num_sweeps} are '
                f'drawn; lower MAX_SWEEPS or regenerate the features into a new FEATURE_DIR with --num_sweeps '
                f'{num_sweeps}: {feature_store.PREPARE_COMMAND}')
        sweep_indices = list(self.draw_sweep_indices(stored_sweeps, num_sweeps))
        parts, raw_rows = load_point_parts(self.root_path, info, sweep_indices, return_raw_rows=True,
                                           nonfinite=self.nonfinite_points)
        part_indices = [0] + [1 + k for k in sweep_indices]
        part_features = feature_store.join_part_features(
            path, features, part_sizes, part_indices, [len(part) for part in parts],
            [info['lidar_path']] + [info['sweeps'][k]['lidar_path'] for k in sweep_indices])
        # extra arrays (superpixel ids) have the features' rows: the same parts, checked by the join above
        columns = [feature_store.select_parts(extras[0][name], part_sizes, part_indices).astype(np.float32)[:, None]
                   for name in self.teacher_extra_arrays]
        points = np.concatenate([np.concatenate(parts, axis=0), part_features] + columns, axis=1)
        return points.astype(np.float32, copy=False), sweep_indices, raw_rows

    def __len__(self):
        if getattr(self, '_merge_all_iters_to_one_epoch', False):
            return len(self.infos) * self.total_epochs
        return len(self.infos)

    def __getitem__(self, index):
        if getattr(self, '_merge_all_iters_to_one_epoch', False):
            index = index % len(self.infos)
        info = copy.deepcopy(self.infos[index])
        input_dict = {
            'points': self.get_lidar_with_sweeps(index, max_sweeps=self._cfg('MAX_SWEEPS')),
            'frame_id': Path(info['lidar_path']).stem,
            'metadata': {'token': info['token']},
        }
        if self.camera_inputs_cfg.ENABLED:
            key_frame = input_dict['points'][input_dict['points'][:, 4] == 0, :3]  # time_lag 0
            input_dict.update(camera_inputs(self.root_path, info, self.camera_inputs_cfg, key_frame))
        if self.task == 'segmentation':
            lidar_file = self.root_path / info['lidar_path']
            input_dict['metadata'].update(lidar_token=info['lidar_token'], lidar_path=os.path.abspath(lidar_file),
                                          num_raw_points=int(num_points_in_file(lidar_file)))
        elif self.task == 'occupancy':
            input_dict['metadata'].update(lidar_token=info['lidar_token'], scene_token=info['scene_token'])
            input_dict['gt_occupancy'] = occupancy.load_occupancy(occupancy.occupancy_path(self.occ_root, info),
                                                                  self.occ_grid)
        if 'gt_boxes' in info and self.uses_boxes:
            mask = None
            if self._cfg('FILTER_MIN_POINTS_IN_GT'):
                mask = info['num_lidar_pts'] > self._cfg('FILTER_MIN_POINTS_IN_GT') - 1
            input_dict['gt_names'] = info['gt_names'] if mask is None else info['gt_names'][mask]
            input_dict['gt_boxes'] = info['gt_boxes'] if mask is None else info['gt_boxes'][mask]
        data_dict = self.prepare_data(data_dict=input_dict)
        if 'gt_boxes' in data_dict:
            if self._cfg('SET_NAN_VELOCITY_TO_ZEROS'):
                data_dict['gt_boxes'][np.isnan(data_dict['gt_boxes'])] = 0
            if not self._cfg('PRED_VELOCITY'):
                data_dict['gt_boxes'] = data_dict['gt_boxes'][:, [0, 1, 2, 3, 4, 5, 6, -1]]
        return data_dict

    def transform_with_augmentation(self, data_dict):
        """gt_occupancy follows the points: moved with lidar_aug_matrix (occupancy.transform_occupancy)."""
        if data_dict.get('gt_occupancy') is not None:
            data_dict['gt_occupancy'] = occupancy.transform_occupancy(data_dict['gt_occupancy'],
                                                                      data_dict['lidar_aug_matrix'], self.occ_grid)
        return data_dict

    def evaluation(self, det_annos, class_names, **kwargs):
        """Official nuScenes detection metrics (nuscenes_eval); kwargs: output_path, eval_set (default EVAL_SET or
        the version's val split), eval_metric (ignored). Returns (result_str, result_dict)."""
        from .nuscenes_eval import evaluate_nuscenes
        output_path = kwargs.get('output_path') or tempfile.mkdtemp(prefix='nuscenes_eval_')
        nusc = load_nusc(self.root_path, self._cfg('VERSION'), verbose=False)
        eval_set = kwargs.get('eval_set') or self._cfg('EVAL_SET')
        return evaluate_nuscenes(det_annos, class_names, nusc, output_path, eval_set=eval_set, logger=self._log)

    def create_groundtruth_database(self, used_classes=None, max_sweeps=10):
        """GT database from the train infos of INFO_PATH['train'] (see gt_database)."""
        from .gt_database import create_groundtruth_database
        infos = self.load_split_infos('train')
        return create_groundtruth_database(self.root_path, infos, max_sweeps, used_classes, logger=self._log,
                                           nonfinite=self.nonfinite_points)


def create_nuscenes_infos(dataset_cfg, version, data_path, train_split=None, val_split=None, logger=None,
                          with_cam=False):
    """Infos for the version's splits (`with_cam`: with `cams`), then (train/val versions) the GT database; all
    under DATA_PATH/VERSION."""
    from .gt_database import create_groundtruth_database
    from .nuscenes_utils import create_nuscenes_info
    dataroot = Path(data_path) / version
    max_sweeps = NuScenesDataset.CONFIG_SCHEMA.get(dataset_cfg, 'MAX_SWEEPS')
    nonfinite = nonfinite_points_policy(dataset_cfg)  # a bad value fails before the long info pass
    info_paths = create_nuscenes_info(version, dataroot, dataroot, max_sweeps, train_split, val_split, logger,
                                      with_cam=with_cam)
    if 'train' in info_paths:
        train_infos = load_infos(info_paths['train'], require_gt=True, min_sweeps=max_sweeps - 1)
        create_groundtruth_database(dataroot, train_infos, max_sweeps, logger=logger,
                                    nonfinite=nonfinite)
    return info_paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Create nuScenes infos + GT database (OpenPCDet format) through nuscenes-devkit.')
    parser.add_argument('--func', default='create_nuscenes_infos', choices=['create_nuscenes_infos'])
    parser.add_argument('--cfg_file', default='tools/cfgs/dataset_configs/nuscenes_dataset.yaml')
    parser.add_argument('--version', default=None,
                        help='v1.0-trainval | v1.0-mini | v1.0-test (default: VERSION of the cfg)')
    parser.add_argument('--data_path', default=None,
                        help='overrides DATA_PATH (default: DATA_PATH of the cfg, relative to the repo root); the '
                             'devkit dataroot is DATA_PATH/VERSION and all outputs go there')
    parser.add_argument('--train_split', default=None,
                        help='scene split for the train infos (default train / mini_train); a name that is not a '
                             'devkit split is read from <dataroot>/<version>/splits.json {"name": [scene names]}')
    parser.add_argument('--val_split', default=None, help='scene split for the val infos (default val / mini_val)')
    parser.add_argument('--with_cam', action='store_true',
                        help="also write the six cameras' infos (OpenPCDet's cams: paths, intrinsics, sensor2lidar)")
    return parser.parse_args(argv)


def main(argv=None):
    from pcdet.config import cfg_from_yaml_file
    from pcdet.config_registry import validate_config
    from pcdet.utils.common_utils import create_logger
    args = parse_args(argv)
    dataset_cfg = validate_config(cfg_from_yaml_file(resolve_cfg_file(args.cfg_file)), source=args.cfg_file)
    schema = NuScenesDataset.CONFIG_SCHEMA
    version = args.version or schema.need(dataset_cfg, 'VERSION', 'or --version to create the infos')
    data_path = Path(args.data_path) if args.data_path else \
        resolve_data_path(schema.need(dataset_cfg, 'DATA_PATH', 'or --data_path to create the infos'))
    dataset_cfg.VERSION = version
    create_nuscenes_infos(dataset_cfg, version, data_path, args.train_split, args.val_split, create_logger(),
                          with_cam=args.with_cam)


if __name__ == '__main__':
    main()
