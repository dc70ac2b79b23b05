"""nuScenes-lidarseg labels for `DATA_CONFIG.TASK: segmentation` (spec seg_occ_transfusion.md §A.1-A.2).

Files (devkit format): `<dataroot>/<version>/category.json` records carry `index` (the uint8 value in the label
files), `<dataroot>/<version>/lidarseg.json` records `{token, sample_data_token, filename}` (filename relative to
the dataroot, normally `lidarseg/<version>/<sample_data_token>_lidarseg.bin`), one uint8 label per point of the
LIDAR_TOP `.pcd.bin`, same order and count. Sweeps are not labelled by nuScenes-lidarseg; with
`SEG_LABEL_SWEEPS: True` a sweep's labels are read from its lidarseg.json record when it has one (the previous key
frame is one of the sweeps), else from the synthetic extension `lidarseg_sweeps/<version>/<token>_lidarseg.bin`
(pcdet/datasets/synthetic/nuscenes_lidarseg.py).

Class map: the 32 general (fine) classes map to the 16 challenge classes by NAME through `FINE_TO_COARSE`, the
official table of nuscenes-devkit's `LidarsegClassMapper.get_fine2coarse` (lidarseg README), and the coarse names to
official ids by `CHALLENGE_CLASSES` (id = position + 1; 0 = ignore). The raw index -> name table comes from
category.json's `index` field, as the devkit builds it; no raw index is hard-coded.

Per-point columns written for the dataset (carried_columns.py):
    point_seg_labels (N,) int64  challenge id 0..16 (0 = ignore; every sweep point unless SEG_LABEL_SWEEPS)
    point_raw_index  (N,) int64  row of the point in the key-frame `.pcd.bin`; -1 for sweep points
"""
import json
from pathlib import Path

import numpy as np

from ..prep_utils import check_files_exist
from ..synthetic.nuscenes_lidarseg import SWEEP_LABEL_DIR

IGNORE_NAME = 'ignore'
# official challenge classes, id = position + 1 (LidarsegClassMapper.get_coarse2idx)
CHALLENGE_CLASSES = ('barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian',
                     'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain',
                     'manmade', 'vegetation')
COARSE_TO_ID = {IGNORE_NAME: 0, **{name: index + 1 for index, name in enumerate(CHALLENGE_CLASSES)}}
# official 32 -> 16 table (LidarsegClassMapper.get_fine2coarse)
FINE_TO_COARSE = {
    'noise': IGNORE_NAME, 'animal': IGNORE_NAME,
    'human.pedestrian.adult': 'pedestrian', 'human.pedestrian.child': 'pedestrian',
    'human.pedestrian.construction_worker': 'pedestrian', 'human.pedestrian.personal_mobility': IGNORE_NAME,
    'human.pedestrian.police_officer': 'pedestrian', 'human.pedestrian.stroller': IGNORE_NAME,
    'human.pedestrian.wheelchair': IGNORE_NAME,
    'movable_object.barrier': 'barrier', 'movable_object.debris': IGNORE_NAME,
    'movable_object.pushable_pullable': IGNORE_NAME, 'movable_object.trafficcone': 'traffic_cone',
    'static_object.bicycle_rack': IGNORE_NAME,
    'vehicle.bicycle': 'bicycle', 'vehicle.bus.bendy': 'bus', 'vehicle.bus.rigid': 'bus', 'vehicle.car': 'car',
    'vehicle.construction': 'construction_vehicle', 'vehicle.emergency.ambulance': IGNORE_NAME,
    'vehicle.emergency.police': IGNORE_NAME, 'vehicle.motorcycle': 'motorcycle', 'vehicle.trailer': 'trailer',
    'vehicle.truck': 'truck',
    'flat.driveable_surface': 'driveable_surface', 'flat.other': 'other_flat', 'flat.sidewalk': 'sidewalk',
    'flat.terrain': 'terrain', 'static.manmade': 'manmade', 'static.other': IGNORE_NAME,
    'static.vegetation': 'vegetation', 'vehicle.ego': IGNORE_NAME,
}
NUM_RAW_INDICES = 32  # lidarseg indices 0..31
UNDEFINED = -1


class LidarsegError(ValueError):
    """A lidarseg table or label file does not follow the format; the message names the file."""


def read_json(path, what):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} {path} does not exist (TASK: segmentation needs the nuScenes-lidarseg '
                                f'tables in DATA_PATH/VERSION/<version>/ and the label files under lidarseg/)')
    with open(path) as handle:
        return json.load(handle)


def raw_index_to_name(category_json):
    """{lidarseg index: general class name} from category.json's `index` field (LidarsegError naming the file)."""
    table = {}
    for record in read_json(category_json, 'lidarseg category table'):
        if 'index' not in record:
            raise LidarsegError(f'{category_json}: category {record.get("name")!r} has no "index" field; use the '
                                'category.json that comes with nuScenes-lidarseg (it replaces the detection one)')
        index = int(record['index'])
        if not 0 <= index < NUM_RAW_INDICES or index in table:
            raise LidarsegError(f'{category_json}: index {index} of {record["name"]!r} is outside 0..31 or given twice')
        table[index] = record['name']
    return table


def raw_to_challenge_map(index_to_name, source='category.json'):
    """(32,) int64 lookup raw lidarseg index -> challenge id 0..16 (UNDEFINED for indices category.json lacks)."""
    lut = np.full(NUM_RAW_INDICES, UNDEFINED, dtype=np.int64)
    for index, name in index_to_name.items():
        if name not in FINE_TO_COARSE:
            raise LidarsegError(f'{source}: category {name!r} (index {index}) is not one of the 32 nuScenes-lidarseg '
                                f'classes {sorted(FINE_TO_COARSE)}')
        lut[index] = COARSE_TO_ID[FINE_TO_COARSE[name]]
    return lut


def read_point_labels(label_path, num_points, lut, lidar_path=''):
    """(num_points,) int64 challenge ids of one label file: uint8 raw indices mapped with `lut`. LidarsegError
    naming the file when the count differs from the point count of `lidar_path` or a value is not a defined
    lidarseg index (0..31 of category.json)."""
    label_path = Path(label_path)
    if not label_path.is_file():
        raise FileNotFoundError(f'lidarseg label file {label_path} does not exist (labels of {lidar_path})')
    raw = np.fromfile(label_path, dtype=np.uint8)
    if len(raw) != num_points:
        raise LidarsegError(f'lidarseg label file {label_path} has {len(raw)} labels but {lidar_path} has '
                            f'{num_points} points; expected one uint8 label per point')
    bad = raw >= len(lut)
    if not bad.any():
        bad = lut[raw] == UNDEFINED
    if bad.any():
        values = sorted(set(raw[bad].tolist()))[:10]
        raise LidarsegError(f'lidarseg label file {label_path}: values {values} are not lidarseg indices 0..31 '
                            'defined in category.json')
    return lut[raw]


def num_points_in_file(lidar_path, num_columns=5):
    """Row count of a float32 `.pcd.bin` from its size (the reader checks the size is a whole number of rows)."""
    return Path(lidar_path).stat().st_size // (4 * num_columns)


class LidarsegLabels:
    """Label lookup of one dataset: reads the tables once, checks at build time that every key frame (and with
    `label_sweeps` every sweep that may be drawn) has its label file, and builds the carried columns per sample."""

    def __init__(self, root_path, version, infos, info_source, label_sweeps=False, with_sweeps=False):
        self.root_path = Path(root_path)
        self.version = version
        self.label_sweeps = bool(label_sweeps)
        tables = self.root_path / version
        self.lut = raw_to_challenge_map(raw_index_to_name(tables / 'category.json'), tables / 'category.json')
        records = read_json(tables / 'lidarseg.json', 'lidarseg table')
        self.files = {record['sample_data_token']: record['filename'] for record in records}
        missing = [info['lidar_token'] for info in infos if info['lidar_token'] not in self.files]
        if missing:
            raise LidarsegError(f'{tables / "lidarseg.json"} has no record for {len(missing)} key frames of '
                                f'{info_source}, e.g. LIDAR_TOP sample_data {missing[:5]}: the infos and the '
                                'lidarseg tables are from different datasets or versions')
        paths = [self.label_path(info['lidar_token']) for info in infos]
        if self.label_sweeps and with_sweeps:
            paths += [self.label_path(sweep['sample_data_token']) for info in infos for sweep in info['sweeps']]
        check_files_exist(paths, info_source, 'lidarseg label files',
                          f'labels are read from lidarseg.json records (key frames) and {SWEEP_LABEL_DIR}/{version}/ '
                          '(sweeps, SEG_LABEL_SWEEPS: True)')

    def label_path(self, sample_data_token):
        relpath = self.files.get(sample_data_token) or \
            f'{SWEEP_LABEL_DIR}/{self.version}/{sample_data_token}_lidarseg.bin'
        return self.root_path / relpath

    def columns(self, info, sweep_indices, raw_rows):
        """{point_seg_labels, point_raw_index} (N,) int64 for the parts of `load_point_parts(info, sweep_indices,
        return_raw_rows=True)` (part 0 = key frame, then the drawn sweeps), `raw_rows` its per-part file rows."""
        tokens = [info['lidar_token']] + [info['sweeps'][k]['sample_data_token'] for k in sweep_indices]
        lidar_paths = [info['lidar_path']] + [info['sweeps'][k]['lidar_path'] for k in sweep_indices]
        labels = []
        for part, (token, lidar_path, rows) in enumerate(zip(tokens, lidar_paths, raw_rows)):
            if part == 0 or self.label_sweeps:
                lidar_file = self.root_path / lidar_path
                part_labels = read_point_labels(self.label_path(token), num_points_in_file(lidar_file), self.lut,
                                                lidar_file)
                labels.append(part_labels[rows])
            else:
                labels.append(np.zeros(len(rows), dtype=np.int64))
        return {'point_seg_labels': np.concatenate(labels), 'point_raw_index': raw_index_column(raw_rows)}


def raw_index_column(raw_rows):
    """(N,) int64 `point_raw_index`: the key frame's file rows (part 0), -1 for every sweep point."""
    return np.concatenate([np.asarray(rows, dtype=np.int64) if part == 0 else np.full(len(rows), -1, np.int64)
                           for part, rows in enumerate(raw_rows)])


class UnlabelledLidarseg:
    """The carried columns of a split without public labels (v1.0-test): every point's label is 0 (ignore), the raw
    index as usual, so the evaluator can write the submission folder."""

    def columns(self, info, sweep_indices, raw_rows):
        raw_index = raw_index_column(raw_rows)
        return {'point_seg_labels': np.zeros(len(raw_index), dtype=np.int64), 'point_raw_index': raw_index}
