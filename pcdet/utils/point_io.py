"""Read and write point-cloud files with an explicit number of feature columns.

A point file is `(N, C)` with `x, y, z` first and C - 3 more feature columns whose meaning the caller states (a
model config names them in `DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list`). Nothing here guesses C: a raw
`.bin` has no shape, and reading a 5-column nuScenes file as 4 columns (the classic `reshape(-1, 4)` of demo
scripts, OpenPCDet #852 / #1341, VoxelNeXt #15) silently produces garbage points.

    load_points(path, num_features)        -> (N, C) float32 for .bin / .npy / .pcd
    load_points_with_names(path, num_features) -> (points, column names or None); .pcd files name their columns
    save_points(path, points, names=None)  -> writes .bin (float32) / .npy / .pcd (binary)
    list_point_files(path, ext=None)       -> [path] for a file, the sorted files with that extension in a folder
    read_pcd_header(path)                  -> PcdHeader
    nonfinite_points_policy(dataset_cfg)   -> 'warn' | 'error' (DATA_CONFIG.NONFINITE_POINTS, default 'warn')
    finite_row_mask(points, path, policy)  -> (N,) bool; rows with NaN / inf are reported (see below)
    drop_nonfinite_rows(points, path, policy) -> points without those rows

Non-finite rows (NaN / inf in any column) would otherwise vanish without a word in the range masks and the
points-in-boxes tests. Dataset loaders therefore count them per file: `'warn'` drops them and warns ONCE per file
(logger WARNING on `pcdet.utils.point_io` + `warnings.warn`, both naming the file and the count; the set of files
already reported lives in the process, so each DataLoader worker reports a file at most once); `'error'` raises
NonFinitePointsError naming the file and the count.

Formats:
* `.bin`: raw little-endian float32 values, point-major (KITTI / nuScenes / OpenPCDet GT database). The file size
  must be a multiple of `4 * num_features` bytes, otherwise `PointFileError` names the file, its size and the
  feature counts that would fit.
* `.npy`: a 2-D numeric array `(N, C)` (C must equal `num_features` when given); a 1-D array is reshaped to
  `(-1, num_features)` only when its length is a multiple.
* `.pcd` (PCL): `DATA ascii`, `binary` and `binary_compressed` (LZF), fields of any `TYPE`/`SIZE`, `COUNT > 1`
  (expanded to several columns named `<field>_<i>`); PCL's `_` padding fields are dropped. The remaining columns
  must number `num_features` when given.
"""
import io
import logging
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import ConfigError
from ..config_schema import Schema
from .file_utils import atomic_save_bytes

SUPPORTED_EXTENSIONS = ('.bin', '.npy', '.pcd')
NONFINITE_POINTS_KEY = 'NONFINITE_POINTS'      # DATA_CONFIG key: what to do with NaN / inf point rows
NONFINITE_POINTS_DEFAULT = 'warn'              # drop them, one warning per file
NONFINITE_POINTS_POLICIES = ('warn', 'error')
# The DATA_CONFIG key this module reads; every dataset's CONFIG_SCHEMA includes these keys (dataset.py), so the
# default is declared here only.
NONFINITE_POINTS_SCHEMA = Schema('DATA_CONFIG', {NONFINITE_POINTS_KEY: NONFINITE_POINTS_DEFAULT})

_log = logging.getLogger(__name__)
_files_warned_nonfinite = set()  # per process: each file's non-finite rows are reported once


class PointFileError(ValueError):
    """A point file cannot be read with the requested layout; the message names the file."""


class NonFinitePointsError(PointFileError):
    """A point file has rows with NaN / inf values and NONFINITE_POINTS is 'error'; the message names the file."""


# ---------------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------------

def load_points(path, num_features=None, dtype=np.float32):
    """Read a `.bin` / `.npy` / `.pcd` point file as `(N, num_features)` float32.

    Args:
        path: the file.
        num_features: number of columns per point. Required for `.bin`; for `.npy` / `.pcd` (which know their
            shape) it is checked when given.
        dtype: value type of a `.bin` file (float32 for every common dataset).
    Raises:
        PointFileError naming the file when the layout does not fit.
    """
    return load_points_with_names(path, num_features, dtype=dtype)[0]


def load_points_with_names(path, num_features=None, dtype=np.float32):
    """As `load_points`, plus the column names when the file has them (`.pcd` fields), else None."""
    path = Path(path)
    if not path.is_file():
        raise PointFileError(f'Point file not found: {path}')
    if num_features is not None:
        num_features = _check_num_features(num_features, path)
    ext = path.suffix.lower()
    if ext == '.bin':
        return _load_bin(path, num_features, dtype), None
    if ext == '.npy':
        return _load_npy(path, num_features), None
    if ext == '.pcd':
        return _load_pcd(path, num_features)
    raise PointFileError(f'{path}: unsupported point file extension {path.suffix!r}; '
                         f'supported: {list(SUPPORTED_EXTENSIONS)}')


def save_points(path, points, names=None):
    """Write `(N, C)` points as `.bin` (float32), `.npy` (float32) or `.pcd` (binary, float32 fields `names`,
    default x, y, z, f3, f4, ...). Written atomically (temporary file + rename). Returns `path`."""
    path = Path(path)
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f'points must be (N, C >= 3), got shape {points.shape}')
    ext = path.suffix.lower()
    if ext == '.bin':
        payload = np.ascontiguousarray(points, dtype='<f4').tobytes()
    elif ext == '.npy':
        buffer = io.BytesIO()
        np.save(buffer, points)
        payload = buffer.getvalue()
    elif ext == '.pcd':
        payload = _pcd_bytes(points, names)
    else:
        raise PointFileError(f'{path}: unsupported point file extension {path.suffix!r}; '
                             f'supported: {list(SUPPORTED_EXTENSIONS)}')
    atomic_save_bytes(payload, path)
    return path


def list_point_files(path, ext=None):
    """`[path]` for a file; for a folder, its files with extension `ext` (default: the first of .bin/.npy/.pcd that
    has files), sorted by name. Raises PointFileError when nothing matches."""
    path = Path(path)
    if path.is_file():
        if ext is not None and path.suffix.lower() != _normalise_ext(ext):
            raise PointFileError(f'{path} does not have the requested extension {ext!r}')
        return [path]
    if not path.is_dir():
        raise PointFileError(f'Point file or folder not found: {path}')
    extensions = [_normalise_ext(ext)] if ext is not None else list(SUPPORTED_EXTENSIONS)
    for extension in extensions:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == extension)
        if files:
            return files
    raise PointFileError(f'No {" / ".join(extensions)} files in {path}')


# ---------------------------------------------------------------------------------------------------------------
# non-finite rows
# ---------------------------------------------------------------------------------------------------------------

def nonfinite_points_policy(dataset_cfg):
    """`DATA_CONFIG.NONFINITE_POINTS` of a dataset config (None: the default 'warn'); ConfigError for other values."""
    policy = NONFINITE_POINTS_SCHEMA.get(dataset_cfg, NONFINITE_POINTS_KEY)
    return check_nonfinite_policy(policy, f'DATA_CONFIG.{NONFINITE_POINTS_KEY}')


def check_nonfinite_policy(policy, name='nonfinite'):
    """`policy` if it is one of NONFINITE_POINTS_POLICIES, else ConfigError naming `name`."""
    if policy not in NONFINITE_POINTS_POLICIES:
        raise ConfigError(f'{name} must be one of {list(NONFINITE_POINTS_POLICIES)} (what to do with point rows '
                          f'holding NaN / inf), got {policy!r}')
    return policy


def finite_row_mask(points, path, policy=NONFINITE_POINTS_DEFAULT):
    """(N,) bool, True for the rows of `points` (N, C) whose values are all finite.

    When some are not: `policy='error'` raises NonFinitePointsError; `'warn'` reports the file once per process
    (logger WARNING + `warnings.warn`) and returns the mask (the caller drops those rows). `path` only names the
    file in the messages."""
    check_nonfinite_policy(policy)
    mask = np.isfinite(points).all(axis=1)
    num_bad = int(mask.size - np.count_nonzero(mask))
    if num_bad == 0:
        return mask
    message = (f'{path}: {num_bad} of {mask.size} point rows hold NaN / inf values')
    if policy == 'error':
        raise NonFinitePointsError(f'{message}; fix or regenerate the file, or set DATA_CONFIG.'
                                   f'{NONFINITE_POINTS_KEY}: warn to drop such rows with a warning')
    key = str(path)
    if key not in _files_warned_nonfinite:
        _files_warned_nonfinite.add(key)
        message += (f'; they are dropped (reported once per file; DATA_CONFIG.{NONFINITE_POINTS_KEY}: error makes '
                    f'this an error)')
        _log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return mask


def drop_nonfinite_rows(points, path, policy=NONFINITE_POINTS_DEFAULT):
    """`points` without its non-finite rows (`finite_row_mask`); the same array when all rows are finite."""
    mask = finite_row_mask(points, path, policy)
    return points if mask.all() else points[mask]


# ---------------------------------------------------------------------------------------------------------------
# .bin / .npy
# ---------------------------------------------------------------------------------------------------------------

def _normalise_ext(ext):
    ext = ext.lower()
    ext = ext if ext.startswith('.') else '.' + ext
    if ext not in SUPPORTED_EXTENSIONS:
        raise PointFileError(f'unsupported extension {ext!r}; supported: {list(SUPPORTED_EXTENSIONS)}')
    return ext


def _check_num_features(num_features, path):
    if isinstance(num_features, bool) or int(num_features) != num_features or int(num_features) < 3:
        raise PointFileError(f'{path}: num_features must be an integer >= 3 (x, y, z first), got {num_features!r}')
    return int(num_features)


def _fitting_counts(num_values):
    return [c for c in range(3, 11) if num_values % c == 0]


def _load_bin(path, num_features, dtype):
    itemsize = np.dtype(dtype).itemsize
    if num_features is None:
        raise PointFileError(f'{path}: a .bin file has no shape; pass the number of float values per point '
                             f'(e.g. KITTI 4 [x, y, z, intensity], nuScenes 5 [x, y, z, intensity, ring/time])')
    size = os.path.getsize(path)
    if size % itemsize:
        raise PointFileError(f'{path}: {size} bytes is not a whole number of {np.dtype(dtype).name} values '
                             f'({itemsize} bytes each); is it a point file?')
    num_values = size // itemsize
    if num_values % num_features:
        fits = _fitting_counts(num_values)
        raise PointFileError(f'{path}: {num_values} {np.dtype(dtype).name} values ({size} bytes) are not a multiple '
                             f'of num_features={num_features}; feature counts that would fit: {fits or "none"}')
    return np.fromfile(path, dtype=dtype).reshape(-1, num_features).astype(np.float32, copy=False)


def _load_npy(path, num_features):
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise PointFileError(f'{path}: not a plain numeric .npy array ({err})') from err
    if array.dtype.names is not None or array.dtype.kind not in 'biuf':
        raise PointFileError(f'{path}: expected a numeric (N, C) array, got dtype {array.dtype}')
    if array.ndim == 1 and num_features is not None:
        if array.size % num_features:
            raise PointFileError(f'{path}: a 1-D array of {array.size} values is not a multiple of '
                                 f'num_features={num_features}; feature counts that would fit: '
                                 f'{_fitting_counts(array.size) or "none"}')
        array = array.reshape(-1, num_features)
    if array.ndim != 2:
        raise PointFileError(f'{path}: expected a 2-D (N, C) array, got shape {array.shape}')
    if num_features is not None and array.shape[1] != num_features:
        raise PointFileError(f'{path}: the array has {array.shape[1]} columns (shape {array.shape}) but '
                             f'num_features={num_features}')
    return array.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# .pcd
# ---------------------------------------------------------------------------------------------------------------

class PcdHeader(NamedTuple):
    fields: list
    sizes: list
    types: list
    counts: list
    width: int
    height: int
    points: int
    data: str                 # ascii | binary | binary_compressed
    data_offset: int          # byte offset of the payload
    column_names: list   # one per output column (COUNT expanded, '_' padding dropped)


_PCD_TYPES = {('F', 4): np.float32, ('F', 8): np.float64, ('I', 1): np.int8, ('I', 2): np.int16,
              ('I', 4): np.int32, ('I', 8): np.int64, ('U', 1): np.uint8, ('U', 2): np.uint16,
              ('U', 4): np.uint32, ('U', 8): np.uint64}


def read_pcd_header(path):
    """Parse a PCD header (up to and including the DATA line)."""
    path = Path(path)
    values, offset = {}, 0
    with open(path, 'rb') as handle:
        while True:
            line = handle.readline()
            if not line:
                raise PointFileError(f'{path}: PCD header has no DATA line')
            offset += len(line)
            text = line.decode('ascii', errors='replace').strip()
            if not text or text.startswith('#'):
                continue
            key, _, rest = text.partition(' ')
            values[key.upper()] = rest.split()
            if key.upper() == 'DATA':
                break
    try:
        fields = values['FIELDS']
        sizes = [int(v) for v in values['SIZE']]
        types = [v.upper() for v in values['TYPE']]
        counts = [int(v) for v in values.get('COUNT', ['1'] * len(fields))]
        width, height = int(values['WIDTH'][0]), int(values.get('HEIGHT', ['1'])[0])
        points = int(values.get('POINTS', [width * height])[0])
        data = values['DATA'][0].lower()
    except (KeyError, IndexError, ValueError) as err:
        raise PointFileError(f'{path}: malformed PCD header ({err!r}); found keys {sorted(values)}') from err
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise PointFileError(f'{path}: PCD header FIELDS/SIZE/TYPE/COUNT lengths differ: {len(fields)}, '
                             f'{len(sizes)}, {len(types)}, {len(counts)}')
    for name, typ, size in zip(fields, types, sizes):
        if (typ, size) not in _PCD_TYPES:
            raise PointFileError(f'{path}: PCD field {name!r} has unsupported TYPE {typ} SIZE {size}')
    if data not in ('ascii', 'binary', 'binary_compressed'):
        raise PointFileError(f'{path}: unsupported PCD DATA {data!r} (ascii, binary, binary_compressed)')
    column_names = []
    for name, count in zip(fields, counts):
        if name == '_':
            continue
        column_names += [name] if count == 1 else [f'{name}_{i}' for i in range(count)]
    return PcdHeader(fields, sizes, types, counts, width, height, points, data, offset, column_names)


def _load_pcd(path, num_features):
    header = read_pcd_header(path)
    keep = [name != '_' for name in header.fields]
    if header.data == 'ascii':
        columns = _pcd_ascii(path, header)
    else:
        with open(path, 'rb') as handle:
            handle.seek(header.data_offset)
            payload = handle.read()
        if header.data == 'binary':
            columns = _pcd_binary(path, header, payload)
        else:
            columns = _pcd_binary_compressed(path, header, payload)
    kept = [col for col, k in zip(columns, keep) if k]
    points = np.concatenate([c.reshape(header.points, -1) for c in kept], axis=1).astype(np.float32) if kept \
        else np.zeros((header.points, 0), dtype=np.float32)
    if points.shape[1] < 3 or header.column_names[:3] != ['x', 'y', 'z']:
        raise PointFileError(f'{path}: PCD columns {header.column_names} do not start with x, y, z')
    if num_features is not None and points.shape[1] != num_features:
        raise PointFileError(f'{path}: the PCD has {points.shape[1]} columns {header.column_names} but '
                             f'num_features={num_features}')
    return points, list(header.column_names)


def _pcd_ascii(path, header):
    widths = header.counts
    with open(path, 'rb') as handle:
        handle.seek(header.data_offset)
        text = handle.read().decode('ascii', errors='replace')
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if len(rows) != header.points:
        raise PointFileError(f'{path}: PCD header says {header.points} points but the ascii data has {len(rows)} rows')
    total = sum(widths)
    if rows and any(len(row) != total for row in rows):
        raise PointFileError(f'{path}: PCD ascii rows must have {total} values (COUNT total)')
    values = np.array(rows, dtype=np.float64).reshape(header.points, total)
    columns, start = [], 0
    for width in widths:
        columns.append(values[:, start:start + width])
        start += width
    return columns


def _pcd_binary(path, header, payload):
    dtype = np.dtype([(f'f{i}', _PCD_TYPES[(t, s)], (c,)) for i, (t, s, c) in
                      enumerate(zip(header.types, header.sizes, header.counts))])
    needed = dtype.itemsize * header.points
    if len(payload) < needed:
        raise PointFileError(f'{path}: PCD binary data has {len(payload)} bytes, {needed} needed for '
                             f'{header.points} points of {dtype.itemsize} bytes')
    records = np.frombuffer(payload[:needed], dtype=dtype)
    return [records[f'f{i}'].astype(np.float64) for i in range(len(header.fields))]


def _pcd_binary_compressed(path, header, payload):
    if len(payload) < 8:
        raise PointFileError(f'{path}: PCD binary_compressed data is truncated')
    compressed_size, uncompressed_size = np.frombuffer(payload[:8], dtype='<u4')
    raw = lzf_decompress(payload[8:8 + int(compressed_size)], int(uncompressed_size))
    columns, offset = [], 0
    for typ, size, count in zip(header.types, header.sizes, header.counts):
        nbytes = size * count * header.points
        if offset + nbytes > len(raw):
            raise PointFileError(f'{path}: PCD binary_compressed data is shorter than the header says')
        column = np.frombuffer(raw[offset:offset + nbytes], dtype=_PCD_TYPES[(typ, size)])
        columns.append(column.reshape(header.points, count).astype(np.float64))
        offset += nbytes
    return columns


def lzf_decompress(data, expected_size):
    """Decompress an LZF block (liblzf format, used by PCL's binary_compressed); pure Python."""
    data = bytes(data)
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:                      # literal run of ctrl + 1 bytes
            length = ctrl + 1
            if i + length > n:
                raise PointFileError('corrupt LZF data (literal run past the end)')
            out += data[i:i + length]
            i += length
        else:                              # back reference
            length = ctrl >> 5
            if length == 7:
                length += data[i]
                i += 1
            ref = len(out) - ((ctrl & 0x1f) << 8) - data[i] - 1
            i += 1
            if ref < 0:
                raise PointFileError('corrupt LZF data (back reference before the start)')
            for _ in range(length + 2):   # may overlap its own output: copy byte by byte
                out.append(out[ref])
                ref += 1
    if len(out) != expected_size:
        raise PointFileError(f'corrupt LZF data: {len(out)} bytes decompressed, {expected_size} expected')
    return bytes(out)


def _pcd_bytes(points, names=None):
    num_columns = points.shape[1]
    names = list(names) if names is not None else ['x', 'y', 'z'] + [f'f{i}' for i in range(3, num_columns)]
    if len(names) != num_columns:
        raise ValueError(f'{len(names)} names for {num_columns} columns')
    header = '\n'.join([
        '# .PCD v0.7 - Point Cloud Data file format',
        'VERSION 0.7',
        'FIELDS ' + ' '.join(names),
        'SIZE ' + ' '.join(['4'] * num_columns),
        'TYPE ' + ' '.join(['F'] * num_columns),
        'COUNT ' + ' '.join(['1'] * num_columns),
        f'WIDTH {len(points)}',
        'HEIGHT 1',
        'VIEWPOINT 0 0 0 1 0 0 0',
        f'POINTS {len(points)}',
        'DATA binary',
    ]) + '\n'
    return header.encode('ascii') + np.ascontiguousarray(points, dtype='<f4').tobytes()
