"""Waymo Open Dataset support without TensorFlow.

Reading the official `.tfrecord` segments needs only numpy (and numba for fast CRCs):
    tfrecord        record framing + CRC32C (`iter_records`, `TFRecordWriter`)
    protobuf_wire   minimal protobuf wire-format codec driven by hand-written schemas
    frame_proto     the `Frame` / `Label` schema subset with the official field numbers
    range_image     range images -> vehicle-frame points (all five LiDARs, both returns, TOP pixel poses)
    frame_reader    `read_frames(path)` -> frame dicts (points, labels, pose, metadata)
Other modules of the package (e.g. `waymo_eval`) are imported explicitly. See docs/WAYMO.md.
Importing this package is cheap: submodules load on first attribute access, and TensorFlow / waymo-open-dataset
are never imported here.
"""
import importlib

_LAZY = {
    'read_frames': 'frame_reader', 'parse_frame': 'frame_reader', 'WaymoFrameError': 'frame_reader',
    'iter_records': 'tfrecord', 'iter_record_offsets': 'tfrecord', 'read_record_at': 'tfrecord',
    'write_records': 'tfrecord', 'TFRecordWriter': 'tfrecord', 'TFRecordError': 'tfrecord', 'crc32c': 'tfrecord',
    'range_image_to_points': 'range_image',
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
