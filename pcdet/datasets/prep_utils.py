"""Dataset-preparation helpers shared by the nuScenes and Waymo packages (info files, GT databases, paths).

    resolve_data_path(data_path) -> Path         DATA_PATH of a config: absolute, or relative to the repo root / CWD /
                                                 tools/ (OpenPCDet's `../data/<ds>` from tools/)
    resolve_cfg_file(path) -> Path               a CLI `--cfg_file`, also when run from outside the repo root
    InfoSchemaError                              an info file that does not follow its dataset's schema
    validate_info_list(infos, path, problem_of, regenerate_hint)
    load_pickle(path, what, create_hint)         FileNotFoundError / InfoSchemaError naming the file
    find_missing_files(paths) -> [path]          the paths that do not exist (one os.stat each, tqdm bar when many)
    check_files_exist(paths, info_source, what)  MissingDataFilesError naming the info file, the count, the first few
    first_box_index(points, boxes, device)       (P,) index of the first 7-dof box containing each point, -1 if none
    GrowingNpy                                   float32 (rows, C) `.npy` written incrementally (memory-mappable)
    GTDatabaseWriter                             atomic build of a GT database (object folder + global .npy + pkl)

GT database crash safety (`GTDatabaseWriter`): object `.bin` files and the global `.npy` rows go to a hidden
temporary folder next to the final one (`.<folder>.tmp-<pid>-<rand>`); `commit(db_infos)` finalises the `.npy`
header, removes the old pkl, moves the `.npy` and the folder onto their final names, `os.sync()`s (the object
files are not fsynced one by one) and writes the pkl LAST (atomically). The pkl therefore marks a complete database:
an exception or Ctrl-C before `commit` leaves the previous complete database (or nothing) and deletes the temporary
folder; a hard kill leaves at most a hidden `.<folder>.tmp-*` folder, removed by the next build.
"""
import contextlib
import os
import pickle
import shutil
import struct
import uuid
from pathlib import Path

import numpy as np

from ..utils.file_utils import atomic_pickle_dump

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---- paths ---------------------------------------------------------------------------------------------------------

def resolve_data_path(data_path):
    """DATA_PATH of a config as a Path: absolute as is; relative against the repo root, then the CWD, then tools/
    (OpenPCDet's `../data/<dataset>`); the first that exists wins, else the repo-root candidate."""
    data_path = Path(data_path)
    if data_path.is_absolute():
        return data_path
    candidates = [REPO_ROOT / data_path, Path.cwd() / data_path, REPO_ROOT / 'tools' / data_path]
    return next((c.resolve() for c in candidates if c.exists()), candidates[0])


def resolve_cfg_file(cfg_file):
    """A CLI `--cfg_file`: as given if it exists, else relative to the repo root (running from elsewhere)."""
    cfg_file = Path(cfg_file)
    if not cfg_file.is_file() and not cfg_file.is_absolute() and (REPO_ROOT / cfg_file).is_file():
        return REPO_ROOT / cfg_file
    return cfg_file


# ---- info files ----------------------------------------------------------------------------------------------------

class InfoSchemaError(ValueError):
    """An info file does not follow its dataset's info schema; the message names the file and the problem."""


def validate_info_list(infos, info_path, problem_of, regenerate_hint):
    """Raise InfoSchemaError naming `info_path` unless `infos` is a list whose entries all pass `problem_of`
    (a function info -> description of the problem or None)."""
    if not isinstance(infos, list):
        raise InfoSchemaError(f'{info_path} holds a {type(infos).__name__}, expected a list of info dicts; '
                              f'{regenerate_hint}')
    for index, info in enumerate(infos):
        problem = problem_of(info)
        if problem is not None:
            raise InfoSchemaError(f'{info_path}: info {index}: {problem}; the file is outdated or not a pcdet '
                                  f'info file: {regenerate_hint}')


def load_pickle(path, what='info file', create_hint=''):
    """Unpickle `path`; a missing file raises FileNotFoundError and an unreadable one InfoSchemaError, both naming
    the file (and `create_hint`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} {path} not found' + (f'; create it with: {create_hint}' if create_hint
                                                               else ''))
    try:
        with open(path, 'rb') as handle:
            return pickle.load(handle)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, IndexError) as err:
        raise InfoSchemaError(f'{what} {path} cannot be unpickled ({type(err).__name__}: {err}): the file is '
                              f'truncated or not a pickle' + (f'; recreate it with: {create_hint}' if create_hint
                                                              else '')) from err


class MissingDataFilesError(FileNotFoundError):
    """Files referenced by an info file do not exist; the message names the info file, the count and examples."""


PROGRESS_BAR_MIN_FILES = 10_000  # below this the existence check takes well under a second: no bar
NUM_MISSING_SHOWN = 5


def find_missing_files(paths, desc='checking files'):
    """The entries of `paths` (in order, duplicates once) that do not exist, with one `os.stat` per distinct path
    (a tqdm bar when there are more than PROGRESS_BAR_MIN_FILES)."""
    unique = list(dict.fromkeys(str(path) for path in paths))
    if len(unique) > PROGRESS_BAR_MIN_FILES:
        from tqdm import tqdm
        unique = tqdm(unique, desc=desc, unit='file', dynamic_ncols=True)
    missing = []
    for path in unique:
        try:
            os.stat(path)
        except FileNotFoundError:
            missing.append(path)
    return missing


def check_files_exist(paths, info_source, what='files', hint=''):
    """Raise MissingDataFilesError unless every path exists, naming `info_source` (the info file(s) referencing
    them), how many of how many distinct paths are missing and the first NUM_MISSING_SHOWN. Checked when a dataset
    is built, so a missing file cannot surface epochs later when a random draw first reads it."""
    paths = list(paths)
    missing = find_missing_files(paths, desc=f'checking {what} of {info_source}')
    if missing:
        total = len(set(str(path) for path in paths))
        raise MissingDataFilesError(
            f'{info_source}: {len(missing)} of {total} {what} referenced there do not exist, e.g. '
            f'{missing[:NUM_MISSING_SHOWN]}' + (f'; {hint}' if hint else ''))


# ---- points in boxes -----------------------------------------------------------------------------------------------

def first_box_index(points, boxes, device=None):
    """(P,) int64 index of the first box (7-dof, lowest index) containing each point, -1 for none.

    `points_in_boxes_gpu` semantics (1e-5 m margin); it runs on any device: `device` None picks CUDA when
    available, else the CPU (numba fast path)."""
    import torch

    from ..ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_gpu
    if len(boxes) == 0:
        return np.full(len(points), -1, dtype=np.int64)
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    points_t = torch.from_numpy(np.ascontiguousarray(points[:, :3], dtype=np.float32)).unsqueeze(0).to(device)
    boxes_t = torch.from_numpy(np.ascontiguousarray(np.asarray(boxes)[:, :7], dtype=np.float32)).unsqueeze(0)
    return points_in_boxes_gpu(points_t, boxes_t.to(device)).long().squeeze(0).cpu().numpy()


# ---- incrementally written .npy --------------------------------------------------------------------------------

NPY_HEADER_BYTES = 128  # magic + version + length + dict, padded; fits any (rows, columns) shape


def npy_header(shape, dtype=np.float32, total_bytes=NPY_HEADER_BYTES):
    """A `.npy` format-1.0 header of exactly `total_bytes` bytes (a multiple of 64, so data stay aligned)."""
    prefix = b'\x93NUMPY\x01\x00'
    text_bytes = total_bytes - len(prefix) - 2
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                                      tuple(int(n) for n in shape))
    if len(text) + 1 > text_bytes:
        raise ValueError(f'shape {shape} does not fit a {total_bytes}-byte .npy header')
    return prefix + struct.pack('<H', text_bytes) + (text.ljust(text_bytes - 1) + '\n').encode('latin1')


class GrowingNpy:
    """A C-order `(rows, num_columns)` `.npy` file grown by appending rows; nothing is kept in memory.

    A fixed-size header is written first and rewritten with the final row count by `close()`, so the file is a
    valid (memory-mappable) `.npy` only after `close()`; write it under a temporary name and rename it after.
    """

    def __init__(self, path, num_columns, dtype=np.float32):
        self.path = Path(path)
        self.num_columns = int(num_columns)
        self.dtype = np.dtype(dtype)
        self.num_rows = 0
        self._handle = open(self.path, 'wb')
        self._handle.write(npy_header((0, self.num_columns), self.dtype))

    def append(self, rows):
        """Append `rows` (n, num_columns); returns their `[start, end)` row range."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.num_columns:
            raise ValueError(f'{self.path}: rows must have shape (n, {self.num_columns}), got {rows.shape}')
        start = self.num_rows
        self._handle.write(rows.tobytes())
        self.num_rows += rows.shape[0]
        return [start, self.num_rows]

    def close(self, durable=True):
        """Write the final header and close (fsync first unless `durable=False`)."""
        if self._handle is None:
            return
        self._handle.seek(0)
        self._handle.write(npy_header((self.num_rows, self.num_columns), self.dtype))
        self._handle.flush()
        if durable:
            os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None

    def abort(self):
        if self._handle is not None:
            self._handle.close()
            self._handle = None


# ---- atomic GT database --------------------------------------------------------------------------------------------

def unique_sibling(path, tag):
    """`<parent>/.<name>.<tag>-<pid>-<random>` (a hidden, unused name next to `path`)."""
    path = Path(path)
    return path.parent / f'.{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}'


def remove_stale_temporaries(root_path, folder_name):
    """Delete leftovers (`.<folder>.tmp-*`, `.<folder>.old-*`) of interrupted runs."""
    for pattern in (f'.{folder_name}.tmp-*', f'.{folder_name}.old-*'):
        for stale in Path(root_path).glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def replace_folder(new_dir, final_dir):
    """Rename `new_dir` onto `final_dir`, replacing an existing folder."""
    old_dir = None
    if final_dir.exists():
        old_dir = unique_sibling(final_dir, 'old')
        final_dir.rename(old_dir)
    new_dir.rename(final_dir)
    if old_dir is not None:
        shutil.rmtree(old_dir, ignore_errors=True)


class GTDatabaseWriter:
    """Build `<root>/<folder_name>/*.bin`, `<root>/<npy_name>` and `<root>/<pkl_name>` atomically (module doc).

        with GTDatabaseWriter(root, folder, pkl, npy, num_point_features=5) as writer:
            path, offset = writer.add_object('obj.bin', points)   # points (n, C) float32, written immediately
            ...
            writer.commit(db_infos)                              # {class name: [db_info]} (+ optional metadata)

    `path` is relative to `root` (`<folder_name>/obj.bin`), `offset` the `[start, end)` rows in the global `.npy`.
    Leaving the block without `commit` (exception, Ctrl-C) removes everything written so far.
    """

    def __init__(self, root_path, folder_name, pkl_name, npy_name, num_point_features):
        self.root_path = Path(root_path)
        self.folder_name, self.pkl_name, self.npy_name = folder_name, pkl_name, npy_name
        self.num_point_features = int(num_point_features)
        self.tmp_dir = None
        self.global_data = None
        self.num_objects = 0

    @property
    def paths(self):
        """(object folder, pkl, npy) final paths."""
        return (self.root_path / self.folder_name, self.root_path / self.pkl_name, self.root_path / self.npy_name)

    def __enter__(self):
        self.root_path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.root_path, self.folder_name)
        self.tmp_dir = unique_sibling(self.root_path / self.folder_name, 'tmp')
        self.tmp_dir.mkdir()  # unlike mkdtemp, honours the umask (the folder is published as is)
        self.global_data = GrowingNpy(self.tmp_dir / '.global_data.npy', self.num_point_features)
        return self

    def add_object(self, file_name, points):
        """Write one object's points (n, num_point_features) to `<folder>/<file_name>` and the global `.npy`."""
        points = np.ascontiguousarray(points, dtype=np.float32)
        points.tofile(str(self.tmp_dir / file_name))
        offset = self.global_data.append(points)
        self.num_objects += 1
        return f'{self.folder_name}/{file_name}', offset

    @property
    def num_rows(self):
        return self.global_data.num_rows

    def commit(self, db_infos):
        """Publish the database: npy and folder onto their final names, then the pkl (the completion marker)."""
        folder, pkl, npy = self.paths
        self.global_data.close()
        pkl.unlink(missing_ok=True)  # no pkl while the folder / npy are being replaced
        os.replace(self.global_data.path, npy)
        replace_folder(self.tmp_dir, folder)
        self.tmp_dir = None
        os.sync()  # the object files were not fsynced one by one: flush them before the completion marker
        atomic_pickle_dump(db_infos, pkl)
        return pkl

    def __exit__(self, exc_type, exc, traceback):
        if self.global_data is not None:
            self.global_data.abort()
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        return False


@contextlib.contextmanager
def process_pool(num_processes, **pool_kwargs):
    """A multiprocessing pool (fork on POSIX, so children inherit loaded kernels) for `num_processes > 1`, else None
    (run in this process). Closed and joined when the block ends normally, terminated when it raises."""
    if num_processes <= 1:
        yield None
        return
    import multiprocessing
    pool = multiprocessing.get_context('fork' if os.name == 'posix' else 'spawn').Pool(num_processes, **pool_kwargs)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    pool.join()
