"""Atomic file writing: every writer in pcdet goes through these so a crash never leaves half a file."""
import contextlib
import os
import pickle
import tempfile
from pathlib import Path


def _default_file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Open a temporary sibling of `path` for writing; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=str(path.parent))
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _default_file_mode())  # mkstemp creates 0600; shared data folders need the umask's mode
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_pickle_dump(obj, path):
    """Pickle `obj` to `path` atomically."""
    with atomic_write(path, 'wb') as handle:
        pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)


def atomic_save_bytes(data, path):
    with atomic_write(path, 'wb') as handle:
        handle.write(data)


def atomic_save_text(text, path):
    with atomic_write(path, 'w') as handle:
        handle.write(text)
