"""TFRecord files without TensorFlow: record framing, CRC32C, lazy reading and atomic writing.

A TFRecord file is a plain concatenation of records (no file header, no index):

    uint64  length              little-endian
    uint32  masked_crc32c(the 8 length bytes)
    byte    data[length]
    uint32  masked_crc32c(data)

`masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)` with `crc = crc32c(x)` (Castagnoli
polynomial 0x1EDC6F41, reflected 0x82F63B78, init and final xor 0xFFFFFFFF; `crc32c(b'123456789') == 0xE3069283`).
TensorFlow's reader checks both CRCs; so do we by default (`verify=False` skips the data CRC, which is the only
costly one). Any framing problem raises `TFRecordError` naming the file and the byte offset of the record.

CRC32C runs in a numba kernel (table-driven, slicing-by-8, compiled lazily with `cache=True`: ~1-2 GB/s), with
a pure-Python table loop as the fallback when numba is missing (~5 MB/s: correct but slow).

API:
    crc32c(data, crc=0) -> int                    masked_crc32c(data) -> int
    iter_records(source, verify=True) -> iterator of bytes    (source: path or binary file object; lazy)
    iter_record_offsets(source, verify=True) -> iterator of (offset, length)   (reads only the headers)
    read_record_at(path, offset, verify=True) -> bytes
    encode_record(data) -> bytes
    TFRecordWriter(path)                          context manager; the file appears atomically on success
    write_records(path, records) -> number of records written
"""
import contextlib
import functools
import os
import struct
from pathlib import Path

import numpy as np

from ...utils.file_utils import atomic_write

_CRC32C_POLY_REFLECTED = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct('<QI')
_FOOTER = struct.Struct('<I')


class TFRecordError(IOError):
    """A corrupt or truncated TFRecord file; `path` and `offset` (start of the bad record) are attributes."""

    def __init__(self, path, offset, message):
        super().__init__(f'{path}: record at byte offset {offset}: {message}')
        self.path = path
        self.offset = offset


@functools.lru_cache(maxsize=1)
def crc32c_tables():
    """(8, 256) uint32 slicing-by-8 tables; row 0 is the classic byte-at-a-time table."""
    tables = np.zeros((8, 256), dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32C_POLY_REFLECTED if crc & 1 else 0)
        tables[0, byte] = crc
    for k in range(1, 8):
        previous = tables[k - 1]
        tables[k] = (previous >> 8) ^ tables[0][previous & 0xFF]
    tables.setflags(write=False)
    return tables


def _crc32c_update_python(crc, data, tables):
    table = tables[0].tolist()
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def _crc32c_update_kernel(crc, data, tables):
    """Slicing-by-8 over a uint8 array (numba-compiled when available). `crc` is the non-inverted state."""
    n = data.shape[0]
    i = 0
    crc = np.uint32(crc)
    while i + 8 <= n:
        low = crc ^ (np.uint32(data[i]) | (np.uint32(data[i + 1]) << np.uint32(8))
                     | (np.uint32(data[i + 2]) << np.uint32(16)) | (np.uint32(data[i + 3]) << np.uint32(24)))
        crc = (tables[7, low & np.uint32(0xFF)] ^ tables[6, (low >> np.uint32(8)) & np.uint32(0xFF)]
               ^ tables[5, (low >> np.uint32(16)) & np.uint32(0xFF)] ^ tables[4, low >> np.uint32(24)]
               ^ tables[3, data[i + 4]] ^ tables[2, data[i + 5]] ^ tables[1, data[i + 6]] ^ tables[0, data[i + 7]])
        i += 8
    while i < n:
        crc = (crc >> np.uint32(8)) ^ tables[0, (crc ^ np.uint32(data[i])) & np.uint32(0xFF)]
        i += 1
    return crc


@functools.lru_cache(maxsize=1)
def _crc32c_backend():
    """('numba', kernel) or ('python', loop); numba is imported lazily so importing this module stays cheap."""
    if os.environ.get('PCDET_DISABLE_NUMBA_CRC') != '1':
        try:
            import numba
        except ImportError:
            pass
        else:
            return 'numba', numba.njit(cache=True, nogil=True)(_crc32c_update_kernel)
    return 'python', _crc32c_update_python


def crc32c(data, crc=0):
    """CRC32C (Castagnoli) of a bytes-like object; pass a previous result as `crc` to continue it."""
    state = (crc ^ 0xFFFFFFFF) & 0xFFFFFFFF
    view = memoryview(data).cast('B') if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    backend, update = _crc32c_backend()
    if backend == 'numba' and len(view) >= 64:
        state = int(update(np.uint32(state), np.frombuffer(view, dtype=np.uint8), crc32c_tables()))
    else:
        state = _crc32c_update_python(state, bytes(view), crc32c_tables())
    return state ^ 0xFFFFFFFF


def mask_crc(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked):
    rotated = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


def masked_crc32c(data):
    return mask_crc(crc32c(data))


def encode_record(data):
    """One framed record (header + data + footer) as bytes."""
    length = struct.pack('<Q', len(data))
    return length + struct.pack('<I', masked_crc32c(length)) + bytes(data) + struct.pack('<I', masked_crc32c(data))


@contextlib.contextmanager
def _open_source(source):
    """(binary handle, display name) for a path or an already open binary file object (not closed here)."""
    if hasattr(source, 'read'):
        yield source, getattr(source, 'name', '<file object>')
    else:
        with open(source, 'rb') as handle:
            yield handle, str(source)


def _read_header(handle, name, offset):
    """(data length) of the record starting at `offset`, or None at a clean end of file."""
    header = handle.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise TFRecordError(name, offset, f'truncated header ({len(header)} of {_HEADER.size} bytes; the file ends '
                                          f'at byte {offset + len(header)})')
    length, length_crc = _HEADER.unpack(header)
    if mask_crc(crc32c(header[:8])) != length_crc:
        raise TFRecordError(name, offset, f'length CRC mismatch (corrupt header; length field reads {length})')
    return length


def _start_offset(handle):
    """Absolute position of a seekable handle (so error offsets are file offsets), else 0."""
    try:
        return handle.tell()
    except (AttributeError, OSError):
        return 0


def iter_records(source, verify=True):
    """Yield each record's data (bytes) lazily, one read per record.

    Args:
        source: path or binary file object positioned at a record boundary.
        verify: check the data CRC of every record (the header CRC is always checked).
    Raises:
        TFRecordError naming the file and the record's byte offset on truncation or CRC mismatch.
    """
    with _open_source(source) as (handle, name):
        yield from _iter_records(handle, name, _start_offset(handle), verify)


def _iter_records(handle, name, offset, verify, max_records=None):
    count = 0
    while max_records is None or count < max_records:
        length = _read_header(handle, name, offset)
        if length is None:
            return
        body = handle.read(length + _FOOTER.size)
        if len(body) < length + _FOOTER.size:
            raise TFRecordError(name, offset, f'truncated record: header says {length} data bytes + 4 CRC bytes, '
                                              f'only {len(body)} bytes left in the file')
        data = body[:length]
        if verify:
            (data_crc,) = _FOOTER.unpack_from(body, length)
            if masked_crc32c(data) != data_crc:
                raise TFRecordError(name, offset, f'data CRC mismatch ({length} data bytes are corrupt)')
        yield data
        count += 1
        offset += _HEADER.size + length + _FOOTER.size


def iter_record_offsets(source, verify=True):
    """Yield `(offset, data_length)` of each record, reading only the 12-byte headers (seeks over the data).

    With `verify` the file size must fit the last record exactly (a truncated tail raises `TFRecordError`).
    Data CRCs are not checked here (`read_record_at` checks them).
    """
    with _open_source(source) as (handle, name):
        offset = _start_offset(handle)
        size = handle.seek(0, os.SEEK_END)
        handle.seek(offset)
        while True:
            length = _read_header(handle, name, offset)
            if length is None:
                return
            end = offset + _HEADER.size + length + _FOOTER.size
            if verify and end > size:
                raise TFRecordError(name, offset, f'truncated record: header says {length} data bytes + 4 CRC '
                                                  f'bytes, the file ends at byte {size}')
            yield offset, length
            handle.seek(end)
            offset = end


def read_record_at(path, offset, verify=True):
    """The data of the record starting at byte `offset` of `path` (see `iter_record_offsets`)."""
    with open(path, 'rb') as handle:
        handle.seek(offset)
        for data in _iter_records(handle, str(path), offset, verify, max_records=1):
            return data
    raise TFRecordError(str(path), offset, 'no record here (end of file)')


class TFRecordWriter:
    """Write records to `path` atomically: a temporary sibling is renamed onto `path` when the block exits
    without an exception (an interrupted write leaves no partial file).

        with TFRecordWriter(path) as writer:
            writer.write(serialized_frame)
    """

    def __init__(self, path):
        self.path = Path(path)
        self.num_records = 0
        self._context = None
        self._handle = None

    def __enter__(self):
        self._context = atomic_write(self.path, 'wb')
        self._handle = self._context.__enter__()
        return self

    def write(self, data):
        self._handle.write(encode_record(data))
        self.num_records += 1

    def __exit__(self, exc_type, exc, traceback):
        self._handle = None
        return self._context.__exit__(exc_type, exc, traceback)


def write_records(path, records):
    """Write an iterable of bytes as a TFRecord file (atomically); returns the number of records."""
    with TFRecordWriter(path) as writer:
        for data in records:
            writer.write(data)
    return writer.num_records
