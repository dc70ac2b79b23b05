"""GT sampling ("copy-paste" augmentation, spec §1.4): paste objects from a ground-truth database into the scene.

Config (`AUG_CONFIG_LIST` entry `NAME: gt_sampling`): `DB_INFO_PATH` (list of pickles relative to the dataset root,
each `dict[class_name] -> list[db_info]`, a db_info having `name, path, box3d_lidar (7|9), num_points_in_gt` and,
with DB_DATA_PATH, `global_data_offset [start, end)`), `PREPARE {filter_by_min_points: ['Cls:N'],
filter_by_difficulty: [d]}`, `SAMPLE_GROUPS ['Cls:N']`, `NUM_POINT_FEATURES`, `REMOVE_EXTRA_WIDTH [dx, dy, dz]`,
`LIMIT_WHOLE_SCENE`, optional `DB_DATA_PATH` (one .npy of all object points, memory-mapped read-only instead of
OpenPCDet's /dev/shm copy; `USE_SHARED_MEMORY` is accepted and ignored), `FILTER_OBJ_POINTS_BY_TIMESTAMP` +
`TIME_RANGE`, `BACKUP_DB_INFO {DB_INFO_PATH, DB_DATA_PATH, NUM_POINT_FEATURES}`.

Sampling is stateless: each scene draws its objects without replacement from numpy's global RNG, which the training
loader seeds per sample (datasets/sample_rng.py), so resumes and any worker layout paste the same objects. A
DB_INFO_PATH pickle that is not `dict[class name] -> list of dicts` raises a TypeError naming the file.

data_dict keys
    reads:  points (N, C), gt_boxes (M, 7|9), gt_names (M,), gt_boxes_mask (M,) bool
    writes: points (K + N', C) object points prepended, scene points inside the (enlarged) sampled boxes removed;
            gt_boxes (M + S, 7|9), gt_names (M + S,), gt_boxes_mask (M + S,) (True for the S sampled objects).
"""
import pickle
from pathlib import Path

import numpy as np

from ...config import ConfigError
from ...config_schema import REQUIRED, Ignored, Schema, check_block
from ...ops.iou3d_nms.iou3d_nms_utils import boxes_bev_iou_cpu
from ...utils import box_utils

SECTION = 'DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST[gt_sampling]'
# Optional entry of a DB_INFO_PATH pickle that is not a class: how the database was built (e.g. the point-feature
# transform, see datasets/waymo/gt_database.py). Kept in `db_metadata` for the dataset to check; never sampled.
DB_METADATA_KEY = '__metadata__'


def parse_class_counts(entries, section):
    """['Car:5', 'Pedestrian:10'] -> {'Car': 5, 'Pedestrian': 10}."""
    counts = {}
    for entry in entries:
        name, sep, count = str(entry).partition(':')
        if not sep or not count.strip().lstrip('-').isdigit():
            raise ConfigError(f'{section}: expected "ClassName:N", got {entry!r}')
        counts[name.strip()] = int(count)
    return counts


def check_db_infos(infos, info_path):
    """`infos` if it is a GT-database info pickle's content, `dict[class name] -> list of record dicts`; else a
    TypeError naming `info_path` and the expected type (instead of e.g. `'list' object has no attribute 'get'`)."""
    expected = ('expected a dict of class name -> list of object records (dicts with name, path, box3d_lidar, '
                'num_points_in_gt); regenerate it with the dataset\'s create_*_infos command')
    if not isinstance(infos, dict):
        raise TypeError(f'{SECTION}.DB_INFO_PATH: {info_path} holds a {type(infos).__name__}, {expected}')
    for name, records in infos.items():
        if name == DB_METADATA_KEY:
            continue
        if not isinstance(records, (list, tuple)) or any(not isinstance(r, dict) for r in records[:1]):
            raise TypeError(f'{SECTION}.DB_INFO_PATH: {info_path}[{name!r}] is a {type(records).__name__}'
                            + (f' of {type(records[0]).__name__}' if isinstance(records, (list, tuple)) else '')
                            + f', {expected}')
    return infos


def draw_distinct(num_items, num_draws):
    """`min(num_draws, num_items)` distinct ints of `[0, num_items)` in random order, drawn from numpy's global RNG
    (one draw seeds a Generator whose `choice` costs O(num_draws), not O(num_items) like a full permutation)."""
    count = min(max(int(num_draws), 0), int(num_items))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    generator = np.random.default_rng(np.random.randint(0, 2 ** 63 - 1, dtype=np.int64))
    return generator.choice(int(num_items), size=count, replace=False)


BACKUP_DB_INFO_SCHEMA = Schema('gt_sampling.BACKUP_DB_INFO', {
    'DB_INFO_PATH': REQUIRED, 'DB_DATA_PATH': None, 'NUM_POINT_FEATURES': REQUIRED}, absent='none')


class DataBaseSampler:
    PREPARE_FILTERS = ('filter_by_min_points', 'filter_by_difficulty')
    CONFIG_SCHEMA = Schema('DATA_AUGMENTOR gt_sampling', {
        'NAME': REQUIRED,
        'DB_INFO_PATH': REQUIRED,
        'SAMPLE_GROUPS': REQUIRED,
        'NUM_POINT_FEATURES': REQUIRED,
        'DB_DATA_PATH': None,
        'PREPARE': None,                            # {filter_by_min_points: [...], filter_by_difficulty: [...]}
        'REMOVE_EXTRA_WIDTH': [0, 0, 0],
        'LIMIT_WHOLE_SCENE': False,
        'DATABASE_WITH_FAKELIDAR': False,
        'FILTER_OBJ_POINTS_BY_TIMESTAMP': False,
        'TIME_RANGE': None,                         # [min, max] time lag, needed with FILTER_OBJ_POINTS_BY_TIMESTAMP
        'BACKUP_DB_INFO': BACKUP_DB_INFO_SCHEMA,
        'USE_ROAD_PLANE': Ignored('KITTI road planes are not supported'),
        'USE_SHARED_MEMORY': Ignored('OpenPCDet shared-memory loading; DB_DATA_PATH is memory-mapped instead'),
    })

    def __init__(self, root_path, sampler_cfg, class_names, logger=None):
        self.root_path = Path(root_path)
        self.sampler_cfg = sampler_cfg
        self.class_names = list(class_names)
        self.logger = logger
        schema = self.CONFIG_SCHEMA
        check_block(sampler_cfg, schema, SECTION)
        if schema.get(sampler_cfg, 'FILTER_OBJ_POINTS_BY_TIMESTAMP') and schema.get(sampler_cfg, 'TIME_RANGE') is None:
            raise ConfigError(f'{SECTION}.FILTER_OBJ_POINTS_BY_TIMESTAMP needs TIME_RANGE [min, max]')
        if schema.get(sampler_cfg, 'DATABASE_WITH_FAKELIDAR'):
            raise ConfigError(f'{SECTION}.DATABASE_WITH_FAKELIDAR is not supported (regenerate the database)')
        db_info_paths, db_data_path, self.num_point_features = self._database_files(sampler_cfg)
        self.db_infos = {name: [] for name in self.class_names}
        self.db_metadata = {}  # {info file: its DB_METADATA_KEY entry, None for databases without one}
        for info_path in db_info_paths:
            with open(info_path, 'rb') as handle:
                infos = check_db_infos(pickle.load(handle), info_path)
            self.db_metadata[str(info_path)] = infos.get(DB_METADATA_KEY)
            for name in self.class_names:
                self.db_infos[name].extend(infos.get(name, []))
        for filter_name, value in (schema.get(sampler_cfg, 'PREPARE') or {}).items():
            if filter_name not in self.PREPARE_FILTERS:
                raise ConfigError(f'{SECTION}.PREPARE: unknown filter {filter_name!r}; '
                                  f'known: {list(self.PREPARE_FILTERS)}')
            self.db_infos = getattr(self, filter_name)(self.db_infos, value)
        self.db_data_path = db_data_path
        self._db_data = None  # opened lazily per process (a memmap must not be pickled into workers)
        self.limit_whole_scene = schema.get(sampler_cfg, 'LIMIT_WHOLE_SCENE')
        sample_groups = schema.get(sampler_cfg, 'SAMPLE_GROUPS')
        self.sample_class_num = {name: num for name, num in
                                 parse_class_counts(sample_groups, f'{SECTION}.SAMPLE_GROUPS').items()
                                 if name in self.class_names}
        if logger is not None:
            for name, infos in self.db_infos.items():
                logger.info(f'Database {name}: {len(infos)} objects after PREPARE')

    def _database_files(self, cfg):
        """Resolve DB_INFO_PATH / DB_DATA_PATH against the root, falling back to BACKUP_DB_INFO if configured."""
        def resolve(paths):
            paths = [paths] if isinstance(paths, str) else list(paths)
            return [self.root_path / p for p in paths]

        schema = self.CONFIG_SCHEMA
        info_paths = resolve(schema.get(cfg, 'DB_INFO_PATH'))
        db_data_path = schema.get(cfg, 'DB_DATA_PATH')
        data_path = resolve(db_data_path)[0] if db_data_path else None
        num_features = int(schema.get(cfg, 'NUM_POINT_FEATURES'))
        missing = [str(p) for p in info_paths if not p.is_file()]
        backup = schema.get(cfg, 'BACKUP_DB_INFO')  # None when absent (a switch); checked with the entry
        if missing and backup and len(info_paths) == 1:
            info_paths = resolve(BACKUP_DB_INFO_SCHEMA.get(backup, 'DB_INFO_PATH'))
            db_data_path = BACKUP_DB_INFO_SCHEMA.get(backup, 'DB_DATA_PATH')
            data_path = resolve(db_data_path)[0] if db_data_path else None
            num_features = int(BACKUP_DB_INFO_SCHEMA.get(backup, 'NUM_POINT_FEATURES'))
            missing = [str(p) for p in info_paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f'{SECTION}.DB_INFO_PATH: database info file(s) not found: {missing} '
                                    f'(relative to the dataset root {self.root_path})')
        if data_path is not None and not data_path.is_file():
            raise FileNotFoundError(f'{SECTION}.DB_DATA_PATH: {data_path} not found')
        return info_paths, data_path, num_features

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_db_data'] = None
        state['logger'] = None
        return state

    # ---- PREPARE filters ---------------------------------------------------------------------------------------

    def filter_by_min_points(self, db_infos, min_points_entries):
        for name, min_points in parse_class_counts(min_points_entries, f'{SECTION}.PREPARE').items():
            if name in db_infos:
                db_infos[name] = [info for info in db_infos[name] if info['num_points_in_gt'] >= min_points]
        return db_infos

    def filter_by_difficulty(self, db_infos, removed_difficulty):
        return {name: [info for info in infos if info.get('difficulty') not in removed_difficulty]
                for name, infos in db_infos.items()}

    # ---- sampling ----------------------------------------------------------------------------------------------

    def sample_with_fixed_number(self, class_name, sample_num):
        """`min(sample_num, len(database))` distinct infos of `class_name`, uniformly at random, in random order.

        Drawn from numpy's global RNG only, with no state kept between calls: the training loader seeds that RNG per
        sample (sample_rng.py), so what a scene receives does not depend on which worker loads it or what was
        loaded before, and a resumed run pastes the same objects as an uninterrupted one. (Upstream walked a
        per-class shuffled list with a pointer; those pointers lived in each DataLoader worker and could not be
        checkpointed. Every object is still equally likely; repeats across scenes are independent.)"""
        infos = self.db_infos[class_name]
        return [infos[i] for i in draw_distinct(len(infos), sample_num)]

    def _select_non_colliding(self, sampled_boxes, existing_boxes):
        """Indices of sampled boxes that overlap (BEV) neither an existing box nor another sampled box."""
        overlap_existing = (boxes_bev_iou_cpu(sampled_boxes[:, 0:7], existing_boxes[:, 0:7]).max(axis=1)
                            if len(existing_boxes) else np.zeros(len(sampled_boxes)))
        iou_samples = boxes_bev_iou_cpu(sampled_boxes[:, 0:7], sampled_boxes[:, 0:7])
        np.fill_diagonal(iou_samples, 0)
        return np.nonzero((overlap_existing + iou_samples.max(axis=1)) == 0)[0]

    def __call__(self, data_dict):
        gt_boxes, gt_names = data_dict['gt_boxes'], np.asarray(data_dict['gt_names']).astype(str)
        box_dim = gt_boxes.shape[1]
        existing_boxes = gt_boxes
        accepted_infos, accepted_boxes = [], []
        for class_name, target_num in self.sample_class_num.items():
            sample_num = target_num - int(np.sum(gt_names == class_name)) if self.limit_whole_scene else target_num
            if sample_num <= 0:
                continue
            sampled = self.sample_with_fixed_number(class_name, sample_num)
            if not sampled:
                continue
            sampled_boxes = np.stack([info['box3d_lidar'] for info in sampled]).astype(np.float32)
            if sampled_boxes.shape[1] < box_dim:
                raise ValueError(f'{SECTION}: database boxes have {sampled_boxes.shape[1]} values but the scene '
                                 f'boxes have {box_dim} (a database without velocities for a velocity config?)')
            valid = self._select_non_colliding(sampled_boxes, existing_boxes)
            valid_boxes = sampled_boxes[valid, :box_dim]
            existing_boxes = np.concatenate((existing_boxes, valid_boxes), axis=0)
            accepted_infos.extend(sampled[i] for i in valid)
            accepted_boxes.append(valid_boxes)
        if accepted_infos:
            data_dict = self.add_sampled_boxes_to_scene(data_dict, np.concatenate(accepted_boxes), accepted_infos)
        return data_dict

    # ---- pasting -----------------------------------------------------------------------------------------------

    @property
    def db_data(self):
        if self._db_data is None and self.db_data_path is not None:
            self._db_data = np.load(self.db_data_path, mmap_mode='r')
        return self._db_data

    def load_object_points(self, info):
        """Object points `(num_points_in_gt, NUM_POINT_FEATURES)` with xyz relative to the box centre."""
        expected = int(info['num_points_in_gt'])
        if self.db_data_path is not None:
            start, end = info['global_data_offset']
            points = np.array(self.db_data[start:end], dtype=np.float32)
            if points.shape != (expected, self.num_point_features):
                raise ValueError(f'{SECTION}: {self.db_data_path}[{start}:{end}] has shape {points.shape}, '
                                 f'expected ({expected}, {self.num_point_features}) for object {info.get("path")}')
            return points
        file_path = self.root_path / info['path']
        num_bytes = file_path.stat().st_size
        for dtype in (np.float32, np.float64):  # upstream falls back to float64 databases
            if num_bytes == expected * self.num_point_features * np.dtype(dtype).itemsize:
                points = np.fromfile(file_path, dtype=dtype).reshape(-1, self.num_point_features)
                return points.astype(np.float32, copy=False)
        raise ValueError(f'{SECTION}: {file_path} has {num_bytes} bytes, expected num_points_in_gt={expected} x '
                         f'NUM_POINT_FEATURES={self.num_point_features} float32 values '
                         f'({expected * self.num_point_features * 4} bytes)')

    def _filter_by_time(self, obj_points, num_scene_features):
        if self.CONFIG_SCHEMA.get(self.sampler_cfg, 'FILTER_OBJ_POINTS_BY_TIMESTAMP'):
            min_time, max_time = sorted(self.CONFIG_SCHEMA.get(self.sampler_cfg, 'TIME_RANGE'))
        elif obj_points.shape[1] == num_scene_features + 1:  # multi-frame database used for single frames
            min_time = max_time = 0.0
        else:
            return obj_points
        time = obj_points[:, -1]
        return obj_points[(time > min_time - 1e-6) & (time < max_time + 1e-6)]

    def add_sampled_boxes_to_scene(self, data_dict, sampled_boxes, sampled_infos):
        points = data_dict['points']
        obj_points = []
        for info, box in zip(sampled_infos, sampled_boxes):
            obj = self.load_object_points(info)
            obj[:, 0:3] += box[0:3]
            obj_points.append(obj)
        obj_points = self._filter_by_time(np.concatenate(obj_points, axis=0), points.shape[1])
        if obj_points.shape[1] < points.shape[1]:
            raise ValueError(f'{SECTION}: database points have {obj_points.shape[1]} columns, the scene has '
                             f'{points.shape[1]} (NUM_POINT_FEATURES={self.num_point_features})')
        enlarged = box_utils.enlarge_box3d(sampled_boxes[:, 0:7],
                                           extra_width=self.CONFIG_SCHEMA.get(self.sampler_cfg, 'REMOVE_EXTRA_WIDTH'))
        points = box_utils.remove_points_in_boxes3d(points, enlarged)
        data_dict['points'] = np.concatenate([obj_points[:, :points.shape[1]].astype(points.dtype), points])
        sampled_names = np.array([info['name'] for info in sampled_infos])
        scene_mask = data_dict.get('gt_boxes_mask', np.ones(len(data_dict['gt_boxes']), dtype=bool))
        gt_boxes = data_dict['gt_boxes']
        data_dict['gt_boxes'] = np.concatenate([gt_boxes, sampled_boxes.astype(gt_boxes.dtype)])
        data_dict['gt_names'] = np.concatenate([np.asarray(data_dict['gt_names']), sampled_names])
        data_dict['gt_boxes_mask'] = np.concatenate([scene_mask, np.ones(len(sampled_infos), dtype=bool)])
        return data_dict
