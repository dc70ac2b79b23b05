"""Offline per-point teacher features for every frame of a split (spec §1.2-1.4; replaces the upstream stage B dump +
`prepare_seal_output.py`, which paired features with a differently augmented cloud, D-SEAL-2 / D-GEN-1).

    python -m pcdet.datasets.teachers.prepare --cfg_file <pretraining or dataset yaml> [--split train|val|both]
        [--num_sweeps N] [--workers W] [--limit K] [--quiet]
    (same as: python tools/prepare_seal_features.py ...)

Reads `DATA_CONFIG` of the yaml (or the yaml itself when it is a dataset config) and its `TEACHER_FEATURES` block
(NAME, FEATURE_DIR relative to the dataset root (default teacher_features/<NAME>), NUM_FEATURES, the teacher's own
keys). The dataset is chosen by `DATA_CONFIG.DATASET`:
    NuScenesDataset  infos of INFO_PATH['train'] (split train) / INFO_PATH['test'] (split val); per info the key frame
                     and the first `num_sweeps` sweeps of `info['sweeps']` (default MAX_SWEEPS - 1) as separate parts,
                     loaded by `nuscenes_utils.load_point_parts` (the dataset's own loader). Label-needing teachers
                     get the lidarseg labels of each file (key frame: lidarseg/<VERSION>/, sweeps:
                     lidarseg_sweeps/<VERSION>/ (synthetic data), the key frame's sample_data token from
                     <VERSION>/sample_data.json), filtered like the points (ego points of sweeps removed).
                     Camera teachers (`needs_cameras`) get the key frame's images (nuscenes/cameras.py; infos made
                     with --with_cam): `teacher.encode_cameras` runs once per frame, its result goes to every part.
    WaymoDataset     frames of DATA_SPLIT[train|test] with the dataset's SAMPLED_INTERVAL; one part per frame = the
                     processed .npy as stored (all points incl. NLZ, raw intensity / elongation, no tanh). Waymo has
                     no per-point labels and its processed files no images, so label-needing and camera teachers are
                     refused.
No augmentation anywhere: the teacher sees every raw point once, in file order.

Frames whose file exists and passes `feature_file_problem` are skipped, so an interrupted run is simply rerun. The
folder's manifest is written before the first frame; a rerun with another teacher config or --num_sweeps is an
error naming it (use a new FEATURE_DIR). Ends with the total size on disk and MB/frame.

`--workers W > 1` forks W processes; each builds its own teacher (never share a CUDA teacher across a fork: GPU
teachers should run with --workers 1).

Library entry point: `prepare_teacher_features(dataset_cfg, split, ...) -> report dict` (the CLI's `main` returns
it too); `teacher=` injects a teacher object instead of building TEACHER_FEATURES.NAME (tests).
"""
import argparse
import json
import logging
from pathlib import Path

import numpy as np

from ...config import ConfigError
from ..prep_utils import process_pool, resolve_cfg_file, resolve_data_path
from . import feature_store
from .base import split_teacher_output

SPLITS = ('train', 'val', 'both')
MODE_OF_SPLIT = {'train': 'train', 'val': 'test'}


# ---- dataset adapters: which frames, how to load their parts -------------------------------------------------------

class NuScenesFrames:
    """Frames and parts of a nuScenes dataset config (module doc). `frames(mode)` -> [(frame_id, info)];
    `load_parts(info, with_labels)` -> (parts [(N_i, 5) float32], labels [(N_i,) or None], part names);
    `load_cameras(info)` -> [CameraView] of the key frame."""

    dataset = 'NuScenesDataset'

    def __init__(self, dataset_cfg, num_sweeps=None):
        from ..nuscenes.nuscenes_dataset import NuScenesDataset
        self.dataset_cfg = dataset_cfg
        self.schema = schema = NuScenesDataset.CONFIG_SCHEMA  # the keys and defaults the dataset reads
        self.version = schema.need(dataset_cfg, 'VERSION', 'to find the nuScenes files')
        self.root = resolve_data_path(schema.need(dataset_cfg, 'DATA_PATH', 'to find the dataset')) / self.version
        self.num_sweeps = int(schema.get(dataset_cfg, 'MAX_SWEEPS')) - 1 if num_sweeps is None else int(num_sweeps)
        if self.num_sweeps < 0:
            raise ConfigError(f'--num_sweeps must be >= 0, got {self.num_sweeps}')
        self.key_frame_tokens = None

    def frames(self, mode):
        from ..nuscenes.nuscenes_dataset import CREATE_INFOS_COMMAND, load_infos
        hint = CREATE_INFOS_COMMAND.format(version=self.version, data_path=self.root.parent)
        infos = []
        for info_path in self.schema.get(self.dataset_cfg, 'INFO_PATH')[mode]:
            infos += load_infos(self.root / info_path, min_sweeps=self.num_sweeps, create_hint=hint)
        return [(Path(info['lidar_path']).stem, info) for info in infos]

    def prepare_labels(self):
        """Map key-frame LiDAR file -> sample_data token (labels are named by token), from the devkit table."""
        table = self.root / self.version / 'sample_data.json'
        if not table.is_file():
            raise FileNotFoundError(f'{table} not found: needed to find the lidarseg labels of the key frames')
        self.key_frame_tokens = {record['filename']: record['token'] for record in json.loads(table.read_text())
                                 if record.get('is_key_frame')}

    def label_file(self, token, lidar_path, is_key_frame):
        from ..synthetic.nuscenes_lidarseg import label_relpath
        candidates = [self.root / label_relpath(self.version, token, is_key_frame)]
        if not is_key_frame:  # a short sweep chain starts with the key frame itself, labelled under lidarseg/
            candidates.append(self.root / label_relpath(self.version, token, True))
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f'per-point label file {candidates[0]} of {lidar_path} not found (the teacher needs '
                                f'point labels); expected nuScenes-lidarseg labels there')

    def read_labels(self, token, lidar_path, is_key_frame, raw_rows):
        path = self.label_file(token, lidar_path, is_key_frame)
        labels = np.fromfile(path, dtype=np.uint8)
        num_raw = (self.root / lidar_path).stat().st_size // (4 * 5)
        if len(labels) != num_raw:
            raise ValueError(f'label file {path} has {len(labels)} labels but {lidar_path} has {num_raw} points')
        return labels[raw_rows]

    def check_cameras(self, frames):
        """KeyError naming the first info without camera entries (infos made without --with_cam), before any work."""
        from ..nuscenes.cameras import require_cams
        for _, info in frames:
            require_cams(info)

    def load_cameras(self, info):
        from ..nuscenes.cameras import load_camera_views
        return load_camera_views(self.root, info)

    def load_parts(self, info, with_labels):
        from ..nuscenes.nuscenes_utils import load_point_parts
        sweep_indices = range(self.num_sweeps)
        parts, raw_rows = load_point_parts(self.root, info, sweep_indices, return_raw_rows=True)
        sources = [info['lidar_path']] + [info['sweeps'][k]['lidar_path'] for k in sweep_indices]
        labels = [None] * len(parts)
        if with_labels:
            if info['lidar_path'] not in self.key_frame_tokens:
                raise KeyError(f'{info["lidar_path"]} is not a key frame in '
                               f'{self.root / self.version / "sample_data.json"}')
            tokens = [self.key_frame_tokens[info['lidar_path']]] + \
                [info['sweeps'][k]['sample_data_token'] for k in sweep_indices]
            labels = [self.read_labels(token, source, index == 0, rows)
                      for index, (token, source, rows) in enumerate(zip(tokens, sources, raw_rows))]
        return parts, labels, sources


class WaymoFrames:
    """Frames and the one part of a Waymo dataset config (module doc); same interface as NuScenesFrames."""

    dataset = 'WaymoDataset'

    def __init__(self, dataset_cfg, num_sweeps=None):
        if num_sweeps:
            raise ConfigError('--num_sweeps: Waymo frames have no sweeps (one part per frame)')
        from ..waymo.waymo_dataset import WaymoDataset
        self.dataset_cfg = dataset_cfg
        self.schema = schema = WaymoDataset.CONFIG_SCHEMA  # the keys and defaults the dataset reads
        self.root = resolve_data_path(schema.need(dataset_cfg, 'DATA_PATH', 'to find the dataset'))
        self.processed_path = self.root / schema.need(dataset_cfg, 'PROCESSED_DATA_TAG', 'to find the point files')
        self.num_sweeps = 0

    def frames(self, mode):
        from ..waymo.waymo_dataset import iter_split_infos
        from ..waymo.waymo_utils import read_image_set
        listed = read_image_set(self.root, self.schema.need(self.dataset_cfg, 'DATA_SPLIT', 'to list the frames')[mode])
        infos = list(iter_split_infos(self.processed_path, listed))
        interval = int((self.schema.get(self.dataset_cfg, 'SAMPLED_INTERVAL') or {}).get(mode, 1))
        return [(info['frame_id'], info) for info in infos[::max(interval, 1)]]

    def prepare_labels(self):
        raise ConfigError('Waymo has no per-point semantic labels: TEACHER_FEATURES.NAME must be a teacher with '
                          'needs_point_labels = False (e.g. seal_minkunet)')

    def check_cameras(self, frames):
        raise ConfigError('Waymo teacher features are computed from the processed point files, which hold no camera '
                          'images: TEACHER_FEATURES.NAME must be a teacher with needs_cameras = False (e.g. '
                          'geometric, seal_minkunet)')

    def load_parts(self, info, with_labels):
        from ..waymo import waymo_utils
        path = waymo_utils.lidar_file(self.processed_path, info['point_cloud']['lidar_sequence'],
                                      info['point_cloud']['sample_idx'])
        return [waymo_utils.load_points(path, tanh_dims=(), keep_nlz=True)], [None], [str(path)]


ADAPTERS = {'NuScenesDataset': NuScenesFrames, 'WaymoDataset': WaymoFrames}


def frame_adapter(dataset_cfg, num_sweeps=None):
    """The adapter of DATA_CONFIG.DATASET; unknown datasets raise ConfigError listing the supported ones."""
    from ..dataset import DatasetTemplate
    name = DatasetTemplate.CONFIG_SCHEMA.get(dataset_cfg, 'DATASET')
    if name not in ADAPTERS:
        raise ConfigError(f'DATA_CONFIG.DATASET {name!r}: teacher features can be prepared for {sorted(ADAPTERS)}')
    return ADAPTERS[name](dataset_cfg, num_sweeps)


# ---- one frame ---------------------------------------------------------------------------------------------------

def compute_frame_features(adapter, teacher, info):
    """List of (N_i, F) float32 teacher features, one per part of `info` (adapter's part order)."""
    return compute_frame_outputs(adapter, teacher, info)[0]


def compute_frame_outputs(adapter, teacher, info):
    """(list of (N_i, F) float32 teacher features, one per part of `info` (adapter's part order), {name: list of
    (N_i,) int32} of the teacher's extra point arrays). A camera teacher encodes the key frame's images once here."""
    parts, labels, sources = adapter.load_parts(info, teacher.needs_point_labels)
    camera_kwargs = {}
    if getattr(teacher, 'needs_cameras', False):
        camera_kwargs['cameras'] = teacher.encode_cameras(adapter.load_cameras(info))
    features, extras = [], {name: [] for name in getattr(teacher, 'extra_point_arrays', ())}
    for points, point_labels, source in zip(parts, labels, sources):
        part_features, part_extras = split_teacher_output(teacher, teacher(points, point_labels, **camera_kwargs),
                                                          len(points), source)
        features.append(part_features)
        for name, value in part_extras.items():
            extras[name].append(value)
    return features, extras


def prepare_frame(frame, adapter, teacher, folder):
    """Compute and save one frame; returns (frame_id, bytes written)."""
    frame_id, info = frame
    features, extras = compute_frame_outputs(adapter, teacher, info)
    return frame_id, feature_store.save_frame_features(feature_store.feature_path(folder, '', frame_id), features,
                                                       extras)


# Per-process state of a forked worker, set once by `_init_worker` (the Pool initializer) so a heavy teacher (a
# network + checkpoint) is built once per worker instead of once per frame, and the adapter is not pickled per task.
# Never set in the parent process.
_WORKER_STATE = {}


def _init_worker(teacher_source, adapter, folder):
    """Pool initializer: build this worker's teacher once and keep the adapter and output folder."""
    _WORKER_STATE.update(teacher=build_or_use_teacher(teacher_source), adapter=adapter, folder=folder)


def _worker_task(frame):
    """Pool task: `prepare_frame` with the worker's teacher and adapter."""
    return prepare_frame(frame, _WORKER_STATE['adapter'], _WORKER_STATE['teacher'], _WORKER_STATE['folder'])


def build_or_use_teacher(teacher_source):
    """A Teacher from a config block (`build_teacher`) or an already built teacher object."""
    from . import build_teacher
    return build_teacher(teacher_source) if isinstance(teacher_source, dict) else teacher_source  # EasyDict too


# ---- a split ---------------------------------------------------------------------------------------------------------

def select_frames(adapter, split, limit=None):
    """[(frame_id, info)] of `split` ('train', 'val', 'both'), first occurrence of every frame id, at most `limit`."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    modes = ['train', 'test'] if split == 'both' else [MODE_OF_SPLIT[split]]
    frames, seen = [], set()
    for mode in modes:
        for frame_id, info in adapter.frames(mode):
            if frame_id not in seen:
                seen.add(frame_id)
                frames.append((frame_id, info))
    return frames if limit is None else frames[:int(limit)]


def ensure_manifest(folder, teacher_cfg, adapter):
    """Write the folder's manifest, or check that an existing one was made by the same teacher config and sweep
    count (FeatureStoreError naming it otherwise)."""
    manifest = feature_store.build_manifest(teacher_cfg, adapter.num_sweeps, adapter.dataset)
    path = feature_store.manifest_path(folder)
    if path.is_file():
        stored = feature_store.read_manifest(folder)
        mismatch = feature_store.manifest_mismatch(stored, manifest)
        if mismatch or stored.get('num_sweeps') != manifest['num_sweeps']:
            raise feature_store.FeatureStoreError(
                f'{path} describes other features ({mismatch or ""}; num_sweeps: stored {stored.get("num_sweeps")}, '
                f'requested {manifest["num_sweeps"]}); choose a new TEACHER_FEATURES.FEATURE_DIR or delete the folder')
        return stored
    feature_store.write_manifest(folder, manifest)
    return manifest


def check_teacher_matches(teacher, teacher_cfg):
    """ConfigError unless an injected teacher has the NAME and NUM_FEATURES of the TEACHER_FEATURES block."""
    if teacher.name != teacher_cfg['NAME'] or int(teacher.num_features) != int(teacher_cfg['NUM_FEATURES']):
        raise ConfigError(f'teacher {teacher.name!r} with {teacher.num_features} features does not match '
                          f'DATA_CONFIG.TEACHER_FEATURES (NAME {teacher_cfg["NAME"]!r}, NUM_FEATURES '
                          f'{teacher_cfg["NUM_FEATURES"]})')


def prepare_teacher_features(dataset_cfg, split='train', num_sweeps=None, workers=1, limit=None, teacher=None,
                             logger=None, progress=True):
    """Compute and store the teacher features of every frame of `split` (module doc).

    Args:
        dataset_cfg: DATA_CONFIG with DATASET and a TEACHER_FEATURES block.
        split: 'train', 'val' or 'both'.  num_sweeps: nuScenes sweeps stored per frame (default MAX_SWEEPS - 1).
        workers: processes (forked; each builds its own teacher).  limit: only the first `limit` frames.
        teacher: a Teacher object to use instead of building TEACHER_FEATURES.NAME (must have the same name/width).
    Returns:
        {'feature_root': Path, 'frames': [frame ids], 'written': [...], 'skipped': [...], 'total_bytes': int (files of
         `frames` on disk), 'mb_per_frame': float, 'manifest': dict}
    """
    from tqdm import tqdm
    logger = logger or logging.getLogger(__name__)
    teacher_cfg = feature_store.teacher_features_cfg(dataset_cfg)
    if teacher_cfg is None:
        raise ConfigError('DATA_CONFIG.TEACHER_FEATURES is missing or ENABLED: False; nothing to prepare')
    adapter = frame_adapter(dataset_cfg, num_sweeps)
    if teacher is not None:
        check_teacher_matches(teacher, teacher_cfg)
    teacher_type = teacher if teacher is not None else _teacher_class(teacher_cfg)
    folder = feature_store.feature_root(adapter.root, teacher_cfg)
    frames = select_frames(adapter, split, limit)
    # before the manifest: a dataset without labels / images must not leave an empty feature folder behind
    if teacher_type.needs_point_labels:
        adapter.prepare_labels()
    if getattr(teacher_type, 'needs_cameras', False):
        adapter.check_cameras(frames)
    manifest = ensure_manifest(folder, teacher_cfg, adapter)
    extra_arrays = manifest.get('extra_arrays', ())
    pending = [frame for frame in frames if feature_store.feature_file_problem(
        feature_store.feature_path(folder, '', frame[0]), extra_arrays) is not None]
    logger.info(f'teacher features {teacher_cfg["NAME"]} -> {folder}: {len(frames)} frames of split {split}, '
                f'{len(frames) - len(pending)} already done, {len(pending)} to compute')
    written = []
    if pending:
        written = _run(pending, adapter, teacher, teacher_cfg, folder, workers,
                       tqdm(total=len(pending), desc='teacher features', unit='frame', dynamic_ncols=True,
                            disable=not progress))
    total_bytes = sum(feature_store.feature_path(folder, '', frame_id).stat().st_size for frame_id, _ in frames)
    mb_per_frame = total_bytes / 1e6 / max(len(frames), 1)
    logger.info(f'teacher features: {len(written)} written, {len(frames) - len(written)} skipped; '
                f'{total_bytes / 1e6:.1f} MB on disk for {len(frames)} frames ({mb_per_frame:.2f} MB/frame)')
    written_ids = set(written)
    return {'feature_root': folder, 'frames': [f for f, _ in frames], 'written': written,
            'skipped': [f for f, _ in frames if f not in written_ids], 'total_bytes': total_bytes,
            'mb_per_frame': mb_per_frame, 'manifest': manifest}


def _teacher_class(teacher_cfg):
    from . import teacher_class
    return teacher_class(teacher_cfg['NAME'])


def _run(pending, adapter, teacher, teacher_cfg, folder, workers, bar):
    """Compute `pending` frames in this process (workers <= 1) or in forked workers; returns written frame ids."""
    written = []
    source = teacher if teacher is not None else teacher_cfg
    num_processes = 1 if len(pending) == 1 else min(int(workers), len(pending))
    try:
        with process_pool(num_processes, initializer=_init_worker, initargs=(source, adapter, folder)) as pool:
            if pool is None:
                teacher = build_or_use_teacher(source)
                results = (prepare_frame(frame, adapter, teacher, folder) for frame in pending)
            else:
                results = pool.imap_unordered(_worker_task, pending)
            for frame_id, _ in results:
                written.append(frame_id)
                bar.update(1)
    finally:
        bar.close()
    return written


# ---- CLI -------------------------------------------------------------------------------------------------------------

def load_dataset_cfg(cfg_file, set_cfgs=None):
    """DATA_CONFIG of a model / pretraining yaml, or the yaml itself when it is a dataset config; `set_cfgs`
    (`KEY VALUE ...`, keys as in tools/train.py's --set, e.g. DATA_CONFIG.DATA_PATH) are applied first."""
    from ...config import cfg_from_list, cfg_from_yaml_file
    from ...config_registry import validate_config
    cfg = cfg_from_yaml_file(resolve_cfg_file(cfg_file))
    if set_cfgs:
        cfg_from_list(set_cfgs, cfg)
    validate_config(cfg, source=str(cfg_file))
    return cfg.DATA_CONFIG if 'DATA_CONFIG' in cfg else cfg


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Compute per-point teacher features (DATA_CONFIG.TEACHER_FEATURES) once per raw LiDAR file, '
                    'un-augmented, and store them as float16 per key frame (resumable).')
    parser.add_argument('--cfg_file', required=True, help='pretraining/model yaml (its DATA_CONFIG) or dataset yaml')
    parser.add_argument('--split', default='train', choices=SPLITS,
                        help="train: INFO_PATH['train'] / DATA_SPLIT['train']; val: the 'test' entries; both")
    parser.add_argument('--num_sweeps', type=int, default=None,
                        help='nuScenes sweeps stored per key frame (default MAX_SWEEPS - 1 of the config)')
    parser.add_argument('--workers', type=int, default=1, help='processes (use 1 for GPU teachers)')
    parser.add_argument('--limit', type=int, default=None, help='only the first K frames (quick runs, tests)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--set', dest='set_cfgs', nargs=argparse.REMAINDER, default=None,
                        help='config overrides KEY VALUE ... as in tools/train.py (e.g. DATA_CONFIG.DATA_PATH DIR)')
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry point; returns the report of `prepare_teacher_features`."""
    from ...utils.common_utils import create_logger
    args = parse_args(argv)
    dataset_cfg = load_dataset_cfg(args.cfg_file, args.set_cfgs)
    return prepare_teacher_features(dataset_cfg, args.split, args.num_sweeps, args.workers, args.limit,
                                    logger=create_logger(), progress=not args.quiet)


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, KeyError, ConfigError, feature_store.FeatureStoreError, ValueError) as err:
        raise SystemExit(f'error: {err}')
