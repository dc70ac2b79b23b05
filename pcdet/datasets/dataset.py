"""DatasetTemplate: the single funnel from a loaded sample to a model-ready sample (spec §1.3).

Subclasses implement `__len__`, `__getitem__` (load the raw sample, then `return self.prepare_data(input_dict)`)
and `evaluation(det_annos, class_names, **kwargs)`.

`prepare_data(data_dict)`:
    reads:  points (N, len(src_feature_list) + K carried columns), gt_boxes (M, 7|9) + gt_names (M,) (required in
            supervised detection training), optional gt_boxes2d, calib, road_plane, frame_id, metadata
    writes: points (N', num_point_features), gt_boxes (M', 7|9 + 1) float32 with the 1-based class index as the last
            column, use_lead_xyz, lidar_aug_matrix (4, 4) float32, flip_x/flip_y/noise_* (training), the processor
            outputs (voxels, voxel_coords, voxel_num_points for hard-voxel configs), the carried columns' keys (see
            below); removes gt_names.
    1. training: augment (gt_boxes_mask = names in class_names);   2. lidar_aug_matrix;
    3. keep boxes of class_names, append the class index;            4. point feature encoding;
    5. data processor;   6. training with zero boxes left: draw another index with numpy's global RNG and retry
       (a bounded loop, `MAX_RESAMPLE_ATTEMPTS`, then RuntimeError);   7. drop gt_names.

Self-supervised mode (`CLASS_NAMES: []`): boxes are dropped before augmentation, gt_sampling is skipped and a
sample is never resampled.

Tasks (`DATA_CONFIG.TASK`, a subclass lists what it supports in `SUPPORTED_TASKS`): `detection` (default, as above),
`segmentation` and `occupancy`. In the last two boxes are neither required nor kept (dropped like in self-supervised
mode), a sample is never resampled and gt_sampling is refused (ConfigError: pasted points have no labels / are not
in the occupancy ground truth). Segmentation adds the carried columns point_seg_labels + point_raw_index; occupancy
samples carry `gt_occupancy`, which `transform_with_augmentation` (a subclass hook called right after step 2) moves
with `lidar_aug_matrix`.

Carried columns (carried_columns.py): named per-point columns (teacher features F cols, `point_seg_labels`,
`point_raw_index`) that the subclass appends as trailing columns of `points` (N, C_src + K) before `prepare_data`,
in the order of `self.carried_columns`. Augmentation (columns 0:3 only), the point feature encoder
(`num_carried_columns=K`, passed through), range masking and shuffling (row indexing) keep them row-aligned by
construction. After the data processor they are split off: `points` (N', num_point_features) as usual plus one key
per column, row-aligned (collated by concatenation in batch order, like the rows of `points`). Teacher features
(`DATA_CONFIG.TEACHER_FEATURES`, present and `ENABLED` not False; spec §1.4 D-SEAL-2) come out as
`point_teacher_features` (N', F) float32, and `point_superpixel_ids` (N',) int64 when the teacher stores superpixel
ids (image_projection with SUPERPIXELS.ENABLED). Not combinable with carried columns (ConfigError at build time): active
gt_sampling (pasted object points have no features / labels) and hard voxelization `transform_points_to_voxels`
(only the placeholder / dynamic-voxelization path keeps per-point rows).
"""
from pathlib import Path

import numpy as np
import torch.utils.data as torch_data

from ..config import ConfigError
from ..config_schema import REQUIRED, Schema, SelectList, pick
from ..utils.point_io import NONFINITE_POINTS_SCHEMA
from .augmentor import DataAugmentor
from .augmentor.data_augmentor import DATA_AUGMENTOR_SCHEMA, augmentor_entries
from .augmentor.data_augmentor import ENTRY_SCHEMA as AUGMENTOR_ENTRY_SCHEMA
from .carried_columns import SEG_COLUMNS, TEACHER_FEATURES_KEY, split_columns, teacher_columns, total_columns  # noqa: F401
from .collate import collate_batch
from .processor import DataProcessor, PointFeatureEncoder
from .processor.data_processor import ENTRY_SCHEMA as PROCESSOR_ENTRY_SCHEMA
from .processor.data_processor import PROCESSOR_SCHEMAS
from .sample_rng import load_samples
from .teachers import extra_arrays_of
from .teachers.feature_store import TEACHER_FEATURES_ENTRY, teacher_features_cfg

SECTION = 'DATA_CONFIG'
BOX_KEYS = ('gt_boxes', 'gt_names', 'gt_boxes2d')
TASKS = ('detection', 'segmentation', 'occupancy')


class _NoBoxesLeft(Exception):
    """Raised inside a resampling attempt whose sample lost all its boxes."""


class EmptyDatasetError(ValueError):
    """A split has no sample at all; the message names the info file(s) and the split."""


def check_has_samples(infos, info_source, split, hint=''):
    """Raise EmptyDatasetError naming `info_source` (e.g. DATA_CONFIG.INFO_PATH's files) and `split` when `infos` is
    empty: a DataLoader would otherwise fail later with torch's bare 'num_samples=0'."""
    if len(infos) == 0:
        raise EmptyDatasetError(f'no samples for split {split!r} in {info_source}: the info list is empty'
                                + (f'; {hint}' if hint else ''))


def check_box_label_lengths(data_dict):
    """ValueError naming the frame and both lengths unless `gt_names` has one entry per row of `gt_boxes`."""
    boxes, names = data_dict.get('gt_boxes'), data_dict.get('gt_names')
    if boxes is None or names is None or len(boxes) == len(names):
        return
    raise ValueError(f'frame {data_dict.get("frame_id", "<no frame_id>")}: gt_names has {len(names)} entries but '
                     f'gt_boxes has {len(boxes)} rows; they must be the same length (one name per box): check the '
                     f'info / label file of this frame')


MATRIX_ORDER = ('random_world_flip', 'random_world_rotation', 'random_world_scaling', 'random_world_translation')


def check_matrix_order(augmentor_cfg, what):
    """ConfigError unless the augmentations `lidar_aug_matrix` composes run at most once each and in its order
    (flip -> rotation -> scaling -> translation, each flip axis once): the matrix is rebuilt from their records, so
    another order would move `what` differently from the points."""
    configs, disabled = augmentor_entries(augmentor_cfg)
    names = [AUGMENTOR_ENTRY_SCHEMA.get(c, 'NAME') for c in configs]
    names = [name for name in names if name in MATRIX_ORDER and name not in disabled]
    if len(set(names)) != len(names) or names != sorted(names, key=MATRIX_ORDER.index):
        raise ConfigError(f'{SECTION}.DATA_AUGMENTOR.AUG_CONFIG_LIST runs {names}: with {what}, each of '
                          f'{list(MATRIX_ORDER)} may appear once and in that order (the augmentation matrix that '
                          f'moves {what} is composed in that order)')
    for config in configs:
        if AUGMENTOR_ENTRY_SCHEMA.get(config, 'NAME') == 'random_world_flip':
            axes = list(config['ALONG_AXIS_LIST'])
            if len(set(axes)) != len(axes):
                raise ConfigError(f'{SECTION}.DATA_AUGMENTOR random_world_flip ALONG_AXIS_LIST {axes}: each axis at '
                                  f'most once with {what} (only the last flip of an axis is recorded)')


def lidar_aug_matrix(data_dict):
    """4x4 float32 matrix M with `[p_aug, 1] = M @ [p, 1]` for flip_x -> flip_y -> rotation -> scaling -> translation
    (the order of every shipped config); identity at test time."""
    matrix = np.eye(4)
    if data_dict.get('flip_x', False):
        matrix[:3, :3] = np.diag([1.0, -1.0, 1.0]) @ matrix[:3, :3]
    if data_dict.get('flip_y', False):
        matrix[:3, :3] = np.diag([-1.0, 1.0, 1.0]) @ matrix[:3, :3]
    if 'noise_rot' in data_dict:
        cos_a, sin_a = np.cos(data_dict['noise_rot']), np.sin(data_dict['noise_rot'])
        matrix[:3, :3] = np.array([[cos_a, -sin_a, 0.0], [sin_a, cos_a, 0.0], [0.0, 0.0, 1.0]]) @ matrix[:3, :3]
    if 'noise_scale' in data_dict:
        matrix[:3, :3] *= data_dict['noise_scale']
    if 'noise_translate' in data_dict:
        matrix[:3, 3] = np.asarray(data_dict['noise_translate']).reshape(3)
    return matrix.astype(np.float32)


class DatasetTemplate(torch_data.Dataset):
    MAX_RESAMPLE_ATTEMPTS = 100
    SUPPORTED_TASKS = ('detection',)  # DATA_CONFIG.TASK values this dataset implements
    # The DATA_CONFIG keys of every dataset, with their defaults; a subclass extends it with its own keys. Code reads
    # them through `self.CONFIG_SCHEMA` (the subclass's: a per-dataset default such as nuScenes' PRED_VELOCITY
    # applies to the template's reads too) and the config validator picks it by DATASET.
    CONFIG_SCHEMA = Schema('DATA_CONFIG', {
        'DATASET': REQUIRED,
        'TASK': 'detection',                # detection | segmentation | occupancy (pcdet/evaluation)
        'DATA_PATH': None,                  # needed to build the dataset (not for inference from files)
        'POINT_CLOUD_RANGE': REQUIRED,
        'DATA_SPLIT': None,                 # {train: <split>, test: <split>}; needed by some datasets
        'INFO_PATH': {},                    # {train: [info files], test: [...]}
        'POINT_FEATURE_ENCODING': PointFeatureEncoder.CONFIG_SCHEMA,
        'DATA_AUGMENTOR': DATA_AUGMENTOR_SCHEMA,
        'DATA_PROCESSOR': SelectList(lambda name: pick(PROCESSOR_SCHEMAS, name, 'processor', 'NAME')),
        'TEACHER_FEATURES': TEACHER_FEATURES_ENTRY,     # by NAME; None when absent
        'PRED_VELOCITY': False,
        'TRAIN_WITH_SPEED': False,
        'PROCESSED_DATA_TAG': None,
        'SAMPLED_INTERVAL': None,           # {train: k, test: k}; None: every frame
        'VERSION': None,
        'MAX_SWEEPS': 1,
        **NONFINITE_POINTS_SCHEMA.keys,     # read by pcdet.utils.point_io
    })

    def __init__(self, dataset_cfg=None, class_names=None, training=True, root_path=None, logger=None):
        super().__init__()
        self.dataset_cfg = dataset_cfg
        self.training = training
        self.class_names = None if class_names is None else list(class_names)
        self.logger = logger
        if root_path is not None:
            self.root_path = Path(root_path)
        else:
            data_path = self.CONFIG_SCHEMA.get(dataset_cfg, 'DATA_PATH')
            self.root_path = Path(data_path) if data_path is not None else None
        self.total_epochs = 0
        self._merge_all_iters_to_one_epoch = False
        self._resampling = False
        self.teacher_cfg = teacher_features_cfg(dataset_cfg)  # None unless TEACHER_FEATURES is present and enabled
        self.num_teacher_features = int(self.teacher_cfg['NUM_FEATURES']) if self.teacher_cfg else 0
        self.task = self.CONFIG_SCHEMA.get(dataset_cfg, 'TASK')
        if self.task not in TASKS or self.task not in self.SUPPORTED_TASKS:
            raise ConfigError(f'{SECTION}.TASK: {self.task!r} is not supported by {type(self).__name__}; supported: '
                              f'{list(self.SUPPORTED_TASKS)}')
        self.teacher_extra_arrays = extra_arrays_of(self.teacher_cfg) if self.teacher_cfg else ()
        self.carried_columns = (teacher_columns(self.num_teacher_features, self.teacher_extra_arrays)
                                if self.teacher_cfg else []) + \
            (list(SEG_COLUMNS) if self.task == 'segmentation' else [])
        self.num_carried_columns = total_columns(self.carried_columns)
        if dataset_cfg is None or class_names is None:
            return

        schema = self.CONFIG_SCHEMA
        point_cloud_range = schema.get(dataset_cfg, 'POINT_CLOUD_RANGE')
        self.point_cloud_range = np.array(point_cloud_range, dtype=np.float32)
        if self.point_cloud_range.shape != (6,):
            raise ConfigError(f'{SECTION}.POINT_CLOUD_RANGE needs 6 values, got {point_cloud_range}')
        self._check_carried_pipeline(dataset_cfg)
        self.point_feature_encoder = PointFeatureEncoder(schema.get(dataset_cfg, 'POINT_FEATURE_ENCODING'),
                                                         self.point_cloud_range,
                                                         num_carried_columns=self.num_carried_columns)
        self.data_augmentor = DataAugmentor(self.root_path, schema.get(dataset_cfg, 'DATA_AUGMENTOR'),
                                            self.class_names, logger=logger) if training else None
        self.data_processor = DataProcessor(schema.get(dataset_cfg, 'DATA_PROCESSOR'), self.point_cloud_range,
                                            training, self.point_feature_encoder.num_point_features)
        self.grid_size = self.data_processor.grid_size
        self.voxel_size = self.data_processor.voxel_size
        self.depth_downsample_factor = getattr(self.data_processor, 'depth_downsample_factor', None)

    def _check_carried_pipeline(self, dataset_cfg):
        """ConfigError for steps that would break the row alignment of carried columns or the labels of a
        segmentation / occupancy sample (checked on the config before the augmentor opens any GT database)."""
        gt_sampling = self.training and _gt_sampling_configured(self.CONFIG_SCHEMA.get(dataset_cfg, 'DATA_AUGMENTOR'))
        if gt_sampling and self.task != 'detection':
            raise ConfigError(f'{SECTION}.DATA_AUGMENTOR.AUG_CONFIG_LIST gt_sampling with {SECTION}.TASK: {self.task}: '
                              'pasted object points have no per-point labels and are not in the occupancy ground '
                              'truth. Remove gt_sampling or add it to DATA_AUGMENTOR.DISABLE_AUG_LIST')
        if self.teacher_cfg and gt_sampling and self.class_names:
            raise ConfigError(f'{SECTION}.TEACHER_FEATURES with an active gt_sampling: pasted object points have no '
                              'teacher features. Add gt_sampling to DATA_AUGMENTOR.DISABLE_AUG_LIST (self-supervised '
                              'mode, CLASS_NAMES: [], skips it anyway) or set TEACHER_FEATURES.ENABLED: False')
        names = [PROCESSOR_ENTRY_SCHEMA.get(step, 'NAME')
                 for step in self.CONFIG_SCHEMA.get(dataset_cfg, 'DATA_PROCESSOR') or []]
        if self.carried_columns and 'transform_points_to_voxels' in names:
            keys = [column.key for column in self.carried_columns]
            raise ConfigError(f'{SECTION}.DATA_PROCESSOR transform_points_to_voxels (hard voxels) with per-point '
                              f'columns {keys} ({SECTION}.TEACHER_FEATURES / TASK: segmentation): they need '
                              'per-point rows; use transform_points_to_voxels_placeholder (dynamic voxelization in '
                              'the model)')

    @property
    def mode(self):
        return 'train' if self.training else 'test'

    @property
    def self_supervised(self):
        """True when CLASS_NAMES is empty: samples carry no boxes and are never resampled."""
        return self.class_names is not None and len(self.class_names) == 0

    @property
    def uses_boxes(self):
        """True for supervised detection: samples keep their boxes (required in training, which resamples a frame
        left without boxes); False in self-supervised mode and for TASK segmentation / occupancy."""
        return getattr(self, 'task', 'detection') == 'detection' and not self.self_supervised

    def transform_with_augmentation(self, data_dict):
        """Hook for dense targets that must follow the sample's augmentation: called with `lidar_aug_matrix` (4, 4)
        set, before point encoding (e.g. NuScenesDataset moves `gt_occupancy`). Default: no-op."""
        return data_dict

    def __getstate__(self):
        state = dict(self.__dict__)
        state['logger'] = None
        return state

    def __len__(self):
        raise NotImplementedError

    def __getitem__(self, index):
        raise NotImplementedError

    def __getitems__(self, keys):
        """DataLoader batch fetch: each `SampleKey` of the training loader's SeededBatchSampler is loaded under RNGs
        seeded from its (data seed, epoch, position, index) so resumes are exact (sample_rng.py); plain indices as
        `self[index]`."""
        return load_samples(self, keys)

    def evaluation(self, det_annos, class_names, **kwargs):
        raise NotImplementedError

    def merge_all_iters_to_one_epoch(self, merge=True, epochs=None):
        """Subclasses then report `len(infos) * total_epochs` from `__len__` and take indices modulo len(infos)."""
        self._merge_all_iters_to_one_epoch = merge
        self.total_epochs = epochs if merge else 0

    def disable_augmentation(self, disable_aug_list):
        """Switch off the named augmentations (None: all) and on all others, in this process and in running workers;
        returns the names still active."""
        if self.data_augmentor is None:
            return []
        before = self.data_augmentor.active_augmentations
        active = self.data_augmentor.disable_augmentation(disable_aug_list)
        if self.logger is not None and active != before:
            self.logger.info(f'Augmentations now active: {active} (disabled: {disable_aug_list})')
        return active

    # ---- prepare_data --------------------------------------------------------------------------------------------

    def prepare_data(self, data_dict):
        """See the module docstring. Subclass post-processing after `prepare_data` must be idempotent (a resampled
        sample comes back through the subclass's `__getitem__`, as upstream)."""
        if self._resampling:  # we are inside the retry loop below: report failure instead of recursing
            return self._prepare_single(data_dict)
        try:
            return self._prepare_single(data_dict)
        except _NoBoxesLeft:
            pass
        self._resampling = True
        try:
            for _ in range(self.MAX_RESAMPLE_ATTEMPTS):
                try:
                    return self.__getitem__(np.random.randint(len(self)))
                except _NoBoxesLeft:
                    continue
        finally:
            self._resampling = False
        raise RuntimeError(f'No sample with boxes of {self.class_names} left after augmentation and range filtering '
                           f'in {self.MAX_RESAMPLE_ATTEMPTS} random draws: check CLASS_NAMES against the dataset '
                           'labels, POINT_CLOUD_RANGE, and the box filters.')

    def _prepare_single(self, data_dict):
        data_dict = dict(data_dict)
        if not self.uses_boxes:
            for key in BOX_KEYS:
                data_dict.pop(key, None)
        check_box_label_lengths(data_dict)  # else a bare numpy IndexError from the class filter below
        if self.training:
            if self.uses_boxes and 'gt_boxes' not in data_dict:
                raise KeyError('gt_boxes must be provided for supervised training (or set CLASS_NAMES: [] for '
                               'self-supervised training)')
            if 'gt_boxes' in data_dict:
                data_dict['gt_boxes_mask'] = np.array([n in self.class_names for n in data_dict['gt_names']],
                                                      dtype=bool)
            data_dict = self.data_augmentor.forward(data_dict)
        data_dict['lidar_aug_matrix'] = lidar_aug_matrix(data_dict)
        data_dict = self.transform_with_augmentation(data_dict)

        if data_dict.get('gt_boxes') is not None:
            keep = np.array([name in self.class_names for name in data_dict['gt_names']], dtype=bool)
            for key in BOX_KEYS:
                if data_dict.get(key) is not None:
                    data_dict[key] = data_dict[key][keep]
            class_index = np.array([self.class_names.index(n) + 1 for n in data_dict['gt_names']], dtype=np.float32)
            data_dict['gt_boxes'] = np.concatenate(
                (data_dict['gt_boxes'].astype(np.float32), class_index.reshape(-1, 1)), axis=1)
        if data_dict.get('points') is not None:
            data_dict = self.point_feature_encoder.forward(data_dict)
        data_dict = self.data_processor.forward(data_dict)
        if self.carried_columns and data_dict.get('points') is not None:
            data_dict['points'], carried = split_columns(data_dict['points'], self.carried_columns)
            data_dict.update(carried)

        if self.training and self.uses_boxes and len(data_dict['gt_boxes']) == 0:
            raise _NoBoxesLeft()
        data_dict.pop('gt_names', None)
        return data_dict

    # ---- batching and predictions ----------------------------------------------------------------------------------

    collate_batch = staticmethod(collate_batch)

    def generate_prediction_dicts(self, batch_dict, pred_dicts, class_names, output_path=None):
        """Per frame `{name, score, boxes_lidar (K, 7|9), pred_labels (1-based), frame_id[, metadata]}` (§1.13)."""
        with_speed = self.CONFIG_SCHEMA.get(self.dataset_cfg, 'TRAIN_WITH_SPEED') or \
            self.CONFIG_SCHEMA.get(self.dataset_cfg, 'PRED_VELOCITY')
        annos = []
        for index, box_dict in enumerate(pred_dicts):
            scores, boxes, labels = (_to_numpy(box_dict[k]) for k in ('pred_scores', 'pred_boxes', 'pred_labels'))
            if len(scores) == 0:
                boxes = np.zeros((0, 9 if with_speed else 7), dtype=np.float32)
            anno = {'name': np.array(class_names)[labels.astype(np.int64) - 1] if len(scores) else np.array([]),
                    'score': scores, 'boxes_lidar': boxes, 'pred_labels': labels,
                    'frame_id': batch_dict['frame_id'][index]}
            if 'metadata' in batch_dict:
                anno['metadata'] = batch_dict['metadata'][index]
            annos.append(anno)
        return annos


def _gt_sampling_configured(augmentor_cfg):
    """True when DATA_AUGMENTOR lists gt_sampling and DISABLE_AUG_LIST does not switch it off (DataAugmentor's rules;
    a bare list is the old-style AUG_CONFIG_LIST)."""
    configs, disabled = augmentor_entries(augmentor_cfg)
    return any(AUGMENTOR_ENTRY_SCHEMA.get(config, 'NAME') == 'gt_sampling' for config in configs) \
        and 'gt_sampling' not in disabled


def _to_numpy(value):
    return value.detach().cpu().numpy() if hasattr(value, 'detach') else np.asarray(value)
