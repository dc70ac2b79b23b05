"""Per-frame storage of offline per-point teacher features (spec §1.4 D-SEAL-2, D-HEAD-4).

Layout: `<root>/<FEATURE_DIR>/<frame_id>.npz` per key frame (`root` = the dataset root, nuScenes DATA_PATH/VERSION,
Waymo DATA_PATH; an absolute FEATURE_DIR is used as is), holding
    features    (N_total, F) float16: the rows of part 0, then part 1, ... concatenated
    part_sizes  (1 + S,) int64: rows per part. nuScenes: part 0 = the key frame as loaded, part 1 + k = sweep k of
                `info['sweeps']` as loaded (ego points removed), S stored sweeps; Waymo: one part (S = 0).
    <name>      (N_total,) int32 per extra point array of the teacher (`extra_point_arrays`, e.g. superpixel_ids of
                the image_projection teacher), rows as the features; absent for teachers without any
and `<root>/<FEATURE_DIR>/manifest.json` = {format, teacher, teacher_config, num_features, num_sweeps, dataset
[, extra_arrays: [names]]}: what produced the files. Loading with another teacher config is an error naming the
manifest.

`frame_id` is what the dataset already uses (nuScenes: `Path(info['lidar_path']).stem`; Waymo: `info['frame_id']`).
Files are written atomically without fsync (`atomic_write(durable=False)`): a crash leaves the old file or none, and a
power loss can at worst leave an unreadable file, which `feature_file_problem` detects and `prepare` rewrites.

API
    teacher_features_cfg(dataset_cfg) -> cfg | None       the TEACHER_FEATURES block if present and ENABLED
    feature_root(root_path, teacher_cfg) -> Path           root / FEATURE_DIR (default teacher_features/<NAME>)
    feature_path(root, feature_dir, frame_id) -> Path
    save_frame_features(path, parts, extras=None)          parts: list of (N_i, F) arrays; extras {name: [(N_i,)]}
    load_frame_features(path, num_features=None) -> (features float16 (N, F), part_sizes int64 (1 + S,))
    load_frame_features(path, num_features, extra_arrays=names) -> (features, part_sizes, {name: (N,) int32})
        a file with a NaN / inf row is an error naming it (save_frame_features refuses to write one)
    select_parts(features, part_sizes, part_indices) -> rows of the chosen parts, in the given order
    join_part_features(path, features, part_sizes, part_indices, part_rows, part_names) -> (sum rows, F) float32
        select_parts + a stale-file check of every part's row count against the points just loaded
    feature_file_problem(path, extra_arrays=()) -> str | None   cheap readability check (headers only)
    build_manifest / write_manifest / read_manifest / check_manifest
"""
import json
import zipfile
from pathlib import Path

import numpy as np

from ...config import ConfigError
from ...config_schema import Schema, Select
from ...utils.file_utils import atomic_save_text, atomic_write
from . import extra_arrays_of, teacher_schema
from .base import TEACHER_FEATURES_SCHEMA

FORMAT = 'pcdet.teacher_features/1'
MANIFEST_NAME = 'manifest.json'
SECTION = 'DATA_CONFIG.TEACHER_FEATURES'
# DATA_CONFIG.TEACHER_FEATURES: a block picked by NAME (the teacher's schema), None when absent. Declared here, where it
# is read; DatasetTemplate.CONFIG_SCHEMA uses this entry.
TEACHER_FEATURES_ENTRY = Select(teacher_schema)
_DATASET_KEYS = Schema('DATA_CONFIG', {'TEACHER_FEATURES': TEACHER_FEATURES_ENTRY})
# Keys of the TEACHER_FEATURES block that say where/whether features are used, not how they were computed.
NON_TEACHER_KEYS = ('ENABLED', 'FEATURE_DIR')
PREPARE_COMMAND = 'python tools/prepare_seal_features.py --cfg_file <your config> [--split train|val|both]'


class FeatureStoreError(ValueError):
    """A teacher feature file or manifest is unreadable, stale or made by another teacher; the message names it."""


# ---- config ----------------------------------------------------------------------------------------------------------

def teacher_features_cfg(dataset_cfg):
    """`dataset_cfg.TEACHER_FEATURES` when present and `ENABLED` is not False, else None. Checks NAME and
    NUM_FEATURES (the dataset needs the width before any file is read)."""
    teacher_cfg = _DATASET_KEYS.get(dataset_cfg, 'TEACHER_FEATURES')
    if not teacher_cfg or TEACHER_FEATURES_SCHEMA.get(teacher_cfg, 'ENABLED') is False:
        return None
    # Only the keys every teacher has: the dataset reads stored features, whichever teacher made them (tests inject
    # teachers that are not registered); the config validator checks the teacher's own keys by NAME.
    TEACHER_FEATURES_SCHEMA.get(teacher_cfg, 'NAME')
    num_features = TEACHER_FEATURES_SCHEMA.get(teacher_cfg, 'NUM_FEATURES')
    if int(num_features) < 1:
        raise ConfigError(f'{SECTION}.NUM_FEATURES must be >= 1, got {num_features}')
    return teacher_cfg


def feature_dir_of(teacher_cfg):
    """FEATURE_DIR of the block (default `teacher_features/<NAME>`), relative to the dataset root."""
    return str(TEACHER_FEATURES_SCHEMA.get(teacher_cfg, 'FEATURE_DIR')
               or f'teacher_features/{TEACHER_FEATURES_SCHEMA.get(teacher_cfg, "NAME")}')


def feature_root(root_path, teacher_cfg):
    """Folder holding the frame files and the manifest."""
    return Path(root_path) / feature_dir_of(teacher_cfg)


def teacher_signature(teacher_cfg):
    """The block as a plain JSON-compatible dict without ENABLED / FEATURE_DIR: what defines the features."""
    plain = json.loads(json.dumps({str(k): v for k, v in dict(teacher_cfg).items()}, default=_json_default))
    return {key: value for key, value in plain.items() if key not in NON_TEACHER_KEYS}


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    return str(value)


# ---- frame files -----------------------------------------------------------------------------------------------------

def nonfinite_rows(features):
    """(K,) int64 indices of the rows of a (N, F) array holding a NaN or inf."""
    return np.flatnonzero(~np.isfinite(features).all(axis=1))


def feature_path(root, feature_dir, frame_id):
    """`<root>/<feature_dir>/<frame_id>.npz`."""
    return Path(root) / feature_dir / f'{frame_id}.npz'


def save_frame_features(path, parts, extras=None):
    """Write one frame: `parts` = list of (N_i, F) arrays (part order = module doc) -> features float16 + part_sizes;
    `extras` {name: list of (N_i,) integer arrays, one per part} -> one int32 member per name. Atomic (no fsync,
    module doc). Returns the file size in bytes."""
    if not parts:
        raise ValueError(f'{path}: no parts to save')
    widths = {np.shape(part)[1] if np.ndim(part) == 2 else None for part in parts}
    if len(widths) != 1 or None in widths:
        raise ValueError(f'{path}: parts must be 2-D with one common width, got shapes '
                         f'{[np.shape(p) for p in parts]}')
    with np.errstate(over='ignore'):  # an overflow to inf is reported below, naming the rows
        features = np.concatenate([np.asarray(part, dtype=np.float16) for part in parts], axis=0)
    bad_rows = nonfinite_rows(features)
    if bad_rows.size:
        raise ValueError(f'{path}: {bad_rows.size} feature rows are NaN / inf in float16 (rows '
                         f'{bad_rows[:10].tolist()}; float16 holds |x| <= 65504); nothing written')
    part_sizes = np.array([len(part) for part in parts], dtype=np.int64)
    arrays = {}
    for name, chunks in (extras or {}).items():
        if name in ('features', 'part_sizes') or [np.shape(chunk) for chunk in chunks] != [(n,) for n in part_sizes]:
            raise ValueError(f'{path}: extra array {name!r} must be a name other than features / part_sizes with one '
                             f'(N_i,) array per part {part_sizes.tolist()}, got {[np.shape(c) for c in chunks]}')
        arrays[name] = np.concatenate([np.asarray(chunk, dtype=np.int32) for chunk in chunks])
    with atomic_write(path, 'wb', durable=False) as handle:
        np.savez(handle, features=features, part_sizes=part_sizes, **arrays)
    return Path(path).stat().st_size


def load_frame_features(path, num_features=None, extra_arrays=()):
    """(features (N, F) float16, part_sizes (1 + S,) int64) of one frame file, plus {name: (N,) int32} of the
    requested `extra_arrays` when any are named; a missing, unreadable or inconsistent file (or F != `num_features`
    when given, or a requested extra array missing / of another length) raises (FileNotFoundError /
    FeatureStoreError) naming it and the command that regenerates it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'teacher feature file {path} not found; create the features with: {PREPARE_COMMAND}')
    try:
        with np.load(path) as data:
            features, part_sizes = data['features'], data['part_sizes']
            extras = {name: data[name] for name in extra_arrays if name in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise FeatureStoreError(f'teacher feature file {path} is not readable ({err}); delete it and rerun: '
                                f'{PREPARE_COMMAND}') from err
    if features.ndim != 2 or features.dtype != np.float16 or part_sizes.ndim != 1 or len(part_sizes) < 1 \
            or part_sizes.dtype.kind != 'i' or (part_sizes < 0).any() or part_sizes.sum() != len(features):
        raise FeatureStoreError(f'teacher feature file {path}: features {features.dtype} {features.shape} do not match '
                                f'part_sizes {part_sizes.tolist()} (expected float16 (sum(part_sizes), F)); delete it '
                                f'and rerun: {PREPARE_COMMAND}')
    bad_rows = nonfinite_rows(features)
    if bad_rows.size:
        raise FeatureStoreError(f'teacher feature file {path} has {bad_rows.size} rows with NaN / inf values (rows '
                                f'{bad_rows[:10].tolist()}); expected finite features for every point: delete it '
                                f'and rerun: {PREPARE_COMMAND}')
    if num_features is not None and features.shape[1] != num_features:
        raise FeatureStoreError(f'teacher feature file {path} has {features.shape[1]} features per point, '
                                f'{SECTION}.NUM_FEATURES is {num_features}: the file is stale, regenerate it '
                                f'({PREPARE_COMMAND})')
    if not extra_arrays:
        return features, part_sizes.astype(np.int64)
    for name in extra_arrays:
        value = extras.get(name)
        if value is None or value.shape != (len(features),) or value.dtype.kind != 'i':
            raise FeatureStoreError(f'teacher feature file {path}: extra array {name!r} is '
                                    f'{"missing" if value is None else f"{value.dtype} {value.shape}"}, expected '
                                    f'({len(features)},) integers; delete it and rerun: {PREPARE_COMMAND}')
    return features, part_sizes.astype(np.int64), {name: extras[name].astype(np.int32) for name in extra_arrays}


def feature_file_problem(path, extra_arrays=()):
    """None if `path` is a complete frame file, else a description. Reads only the headers (cheap on resume): both
    arrays (and the `extra_arrays` members) present, part_sizes sums to the rows of features, the features member has
    exactly the bytes its header announces (a truncated zip fails to open at all)."""
    path = Path(path)
    if not path.is_file():
        return 'missing'
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            expected = {'features.npy', 'part_sizes.npy'} | {f'{name}.npy' for name in extra_arrays}
            if not expected <= names:
                return f'members {sorted(names)}, expected {sorted(expected)}'
            with archive.open('part_sizes.npy') as handle:
                part_sizes = np.lib.format.read_array(handle)
            with archive.open('features.npy') as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(handle)
                header_bytes = handle.tell()
            stored_bytes = archive.getinfo('features.npy').file_size
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        return f'unreadable ({err})'
    if len(shape) != 2 or dtype != np.float16 or int(np.sum(part_sizes)) != shape[0]:
        return f'features {dtype} {shape} vs part_sizes {np.asarray(part_sizes).tolist()}'
    if stored_bytes != header_bytes + int(np.prod(shape)) * dtype.itemsize:
        return f'features member has {stored_bytes} bytes, its header announces {shape} {dtype}'
    return None


def part_offsets(part_sizes):
    """(1 + S + 1,) int64 start row of every part, then the total."""
    return np.concatenate(([0], np.cumsum(part_sizes))).astype(np.int64)


def select_parts(features, part_sizes, part_indices):
    """Rows of the parts `part_indices` (indices into part_sizes), concatenated in the given order -> (M, F)."""
    offsets = part_offsets(part_sizes)
    chunks = [features[offsets[i]:offsets[i + 1]] for i in part_indices]
    return np.concatenate(chunks, axis=0) if chunks else features[:0]


def join_part_features(path, features, part_sizes, part_indices, part_rows, part_names):
    """(sum(part_rows), F) float32 features of the parts `part_indices` in order, after checking that part
    `part_indices[j]` holds exactly `part_rows[j]` rows (the points just loaded for it, named `part_names[j]`);
    a mismatch means the file was made from other LiDAR files / another loader: FeatureStoreError naming `path`."""
    for index, rows, name in zip(part_indices, part_rows, part_names):
        if index >= len(part_sizes) or part_sizes[index] != rows:
            stored = part_sizes[index] if index < len(part_sizes) else 'no'
            raise FeatureStoreError(
                f'teacher feature file {path} is stale: part {index} ({name}) has {stored} stored rows but {rows} '
                f'points were loaded; regenerate it (delete it, then rerun: {PREPARE_COMMAND})')
    return select_parts(features, part_sizes, part_indices).astype(np.float32)


# ---- manifest --------------------------------------------------------------------------------------------------------

def build_manifest(teacher_cfg, num_sweeps, dataset):
    """The manifest dict of a feature folder (module doc); `extra_arrays` only for teachers that store any (the
    teacher_config that decides them is compared already)."""
    manifest = {'format': FORMAT, 'teacher': str(teacher_cfg['NAME']),
                'teacher_config': teacher_signature(teacher_cfg), 'num_features': int(teacher_cfg['NUM_FEATURES']),
                'num_sweeps': int(num_sweeps), 'dataset': str(dataset)}
    extra_arrays = extra_arrays_of(teacher_cfg)
    if extra_arrays:
        manifest['extra_arrays'] = list(extra_arrays)
    return manifest


def manifest_path(folder):
    return Path(folder) / MANIFEST_NAME


def write_manifest(folder, manifest):
    """Write `manifest.json` atomically (durable: it describes every frame file)."""
    atomic_save_text(json.dumps(manifest, indent=2, sort_keys=True) + '\n', manifest_path(folder))


def read_manifest(folder):
    """The manifest dict of `folder`; missing or unreadable -> FileNotFoundError / FeatureStoreError naming it."""
    path = manifest_path(folder)
    if not path.is_file():
        raise FileNotFoundError(f'teacher feature manifest {path} not found: the features of this config were not '
                                f'prepared (or FEATURE_DIR points elsewhere); create them with: {PREPARE_COMMAND}')
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FeatureStoreError(f'teacher feature manifest {path} is not readable JSON ({err})') from err
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise FeatureStoreError(f'teacher feature manifest {path}: format '
                                f'{manifest.get("format") if isinstance(manifest, dict) else manifest!r}, expected '
                                f'{FORMAT!r}; regenerate the folder with: {PREPARE_COMMAND}')
    return manifest


def manifest_mismatch(manifest, expected):
    """Description of how `manifest` differs from `expected` in what defines the features, or None."""
    keys = ('teacher', 'num_features', 'teacher_config', 'dataset')
    problems = [f'{key}: stored {manifest.get(key)!r}, config {expected[key]!r}'
                for key in keys if manifest.get(key) != expected[key]]
    return '; '.join(problems) or None


def check_manifest(folder, teacher_cfg, dataset, min_sweeps=0):
    """Read the manifest of `folder` and check it was made by `teacher_cfg` for `dataset` with >= `min_sweeps`
    stored sweeps; returns it. Any difference raises FeatureStoreError naming the manifest and the fix."""
    manifest = read_manifest(folder)
    mismatch = manifest_mismatch(manifest, build_manifest(teacher_cfg, 0, dataset))
    if mismatch:
        raise FeatureStoreError(
            f'teacher feature manifest {manifest_path(folder)} was made by another teacher config ({mismatch}). '
            f'Point {SECTION}.FEATURE_DIR at features of this teacher, or prepare them into a new FEATURE_DIR with: '
            f'{PREPARE_COMMAND}')
    if manifest.get('num_sweeps', 0) < min_sweeps:
        raise FeatureStoreError(
            f'teacher feature manifest {manifest_path(folder)}: only {manifest.get("num_sweeps")} sweeps per frame are '
            f'stored but MAX_SWEEPS - 1 = {min_sweeps} are drawn; lower MAX_SWEEPS or regenerate into a new '
            f'FEATURE_DIR with --num_sweeps {min_sweeps}: {PREPARE_COMMAND}')
    return manifest
