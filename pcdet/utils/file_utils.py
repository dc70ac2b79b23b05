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
def atomic_write(path, mode='wb', durable=True):
    """Open a temporary sibling of `path` for writing; rename it onto `path` only if the block succeeds.

    Args:
        path: final file name (parent folders are created).
        mode: `open` mode of the temporary file ('wb', 'w', ...).
        durable: fsync the data before the rename (default).
            Trade-off. In both modes the write is atomic against failures of *this process*: an exception, Ctrl-C
            or a kill (even SIGKILL) leaves `path` either as it was or complete, never partial (an exception
            removes the temporary; SIGKILL can leave a hidden `.<name>.*.tmp` sibling), and other processes only
            ever see a complete file. `durable=False` skips the fsync and so gives up safety against a power loss
            or kernel crash: the rename may reach the disk before the data, and afterwards `path` can exist with
            zero or missing bytes. That can also happen after a later durable write (e.g. a manifest saying
            'complete') has reached the disk, since fsyncing one file does not order the others' data. fsync costs a
            disk flush per file (25-33% of the synthetic generator's time for its thousands of point files), so
            use `durable=False` only for bulk files that are cheap to regenerate, and keep the default for
            anything that cannot be recreated (checkpoints, tables, manifests).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=str(path.parent))
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if durable:
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


def atomic_save_bytes(data, path, durable=True):
    """Write `data` (bytes) to `path` atomically; `durable` as in `atomic_write`."""
    with atomic_write(path, 'wb', durable=durable) as handle:
        handle.write(data)


def atomic_save_text(text, path):
    with atomic_write(path, 'w') as handle:
        handle.write(text)
