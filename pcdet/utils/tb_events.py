"""Read scalar series back from TensorBoard event files (the tensorboardX writer's format) without TensorBoard.

Event files are TFRecord-framed `Event` protos: per record a uint64 length, a masked CRC32C of it, the payload and
its CRC. The CRCs are not verified here (the files are our own logs; a truncated last record, e.g. of a running
job, ends the read quietly).

    read_scalars(logdir) -> {tag: [(step, value), ...]} over every `events.out.tfevents.*` file below `logdir`,
    each series sorted by step.
"""
import struct
from pathlib import Path


def _records(data):
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from('<Q', data, offset)
        start, end = offset + 12, offset + 12 + length
        if end + 4 > len(data):
            return  # truncated last record (a writer still running)
        yield data[start:end]
        offset = end + 4


def read_scalars(logdir):
    """{tag: [(step, value)]} of every scalar summary in the event files under `logdir` (module docstring)."""
    from tensorboardX.proto import event_pb2
    files = sorted(Path(logdir).rglob('events.out.tfevents.*'))
    if not files:
        raise FileNotFoundError(f'no TensorBoard event files (events.out.tfevents.*) under {logdir}')
    series = {}
    for path in files:
        for payload in _records(path.read_bytes()):
            event = event_pb2.Event()
            event.ParseFromString(payload)
            for value in event.summary.value:
                if value.HasField('simple_value'):
                    series.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return {tag: sorted(points) for tag, points in series.items()}
