"""Waymo tfrecord -> points conversion throughput (pcdet's TensorFlow-free reader) on a synthetic segment.

Writes one synthetic segment (`pcdet.datasets.synthetic.waymo_writer`; by default with the real WOD range-image
sizes: TOP 64 x 2650, four short-range LiDARs 200 x 600, two returns) to a temporary folder, then times, in one
process and one thread:
  records   tfrecord framing + CRC32C of every record
  decode    + protobuf decoding of the Frame (labels, calibrations, compressed range images as bytes)
  points    + zlib + MatrixFloat decoding and the range-image -> vehicle-frame conversion of all 5 LiDARs x 2
            returns (`read_frames`, what a converter to OpenPCDet's .npy files does)
and prints frames/s, points/s and MB/s for each (best of `--repeats` passes over the file).

    python bench/waymo_convert.py [--frames 5] [--repeats 3] [--small]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pcdet.datasets.synthetic import waymo_writer
from pcdet.datasets.waymo import frame_proto, tfrecord
from pcdet.datasets.waymo.frame_reader import read_frames


def write_segment(folder, frames, small):
    sizes = dict(top_columns=512, side_beams=32, side_columns=128) if small else \
        dict(top_columns=2650, side_beams=200, side_columns=600)
    config = waymo_writer.SyntheticWaymoConfig(root=str(folder), num_sequences=2, frames_per_sequence=frames, **sizes)
    sim = waymo_writer.simulate_sequence(waymo_writer.plan_sequences(config)[0], config)
    path = Path(folder) / sim.plan.filename
    start = time.perf_counter()
    with tfrecord.TFRecordWriter(path) as writer:
        for index in range(frames):
            writer.write(frame_proto.encode_frame(waymo_writer.build_frame(sim, index).message))
    return path, time.perf_counter() - start, sizes


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--small', action='store_true', help='small range images (quick smoke run)')
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path, write_seconds, sizes = write_segment(folder, args.frames, args.small)
        size_mb = os.path.getsize(path) / 1e6
        print(f'segment: {args.frames} frames, {size_mb:.1f} MB ({size_mb / args.frames:.2f} MB/frame), range images '
              f'TOP 64x{sizes["top_columns"]}, others {sizes["side_beams"]}x{sizes["side_columns"]}; written in '
              f'{write_seconds:.1f} s')
        tfrecord.crc32c(b'\0' * 128)  # compile the numba CRC kernel outside the timings
        next(read_frames(path))        # warm caches

        stages = {
            'records': lambda: sum(1 for _ in tfrecord.iter_records(path)),
            'decode': lambda: sum(1 for record in tfrecord.iter_records(path)
                                  if frame_proto.decode_frame(record)),
            'points': lambda: sum(len(frame['points']) for frame in read_frames(path)),
        }
        for name, fn in stages.items():
            seconds, result = best_of(args.repeats, fn)
            line = f'{name:8s} {args.frames / seconds:8.1f} frames/s  {size_mb / seconds:8.1f} MB/s'
            if name == 'points':
                line += f'  {result / seconds / 1e6:6.2f} M points/s  ({result / args.frames:.0f} points/frame, ' \
                        f'{1e3 * seconds / args.frames:.0f} ms/frame)'
            print(line)
        frame = next(read_frames(path))
        print('points per lidar (both returns):', dict(zip(('TOP', 'FRONT', 'SIDE_LEFT', 'SIDE_RIGHT', 'REAR'),
                                                           frame['num_points_of_each_lidar'])))
        assert np.isfinite(frame['points']).all()


if __name__ == '__main__':
    main()
