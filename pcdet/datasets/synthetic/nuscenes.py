"""CLI: write a synthetic dataset in the official nuScenes format.

    python -m pcdet.datasets.synthetic.nuscenes --root data/synthetic_nuscenes/v1.0-mini --version v1.0-mini \
        --num_scenes 10 --seed 0

`--root` is the nuScenes dataroot (it will hold `<version>/`, `samples/`, `sweeps/`, ...). For OpenPCDet's layout
(`DATA_PATH/VERSION` is the dataroot) pass `--root <DATA_PATH>/<VERSION>`. See docs/SYNTHETIC_DATA.md.
"""
import argparse
import os
import sys

from .nuscenes_schema import select_scene_names
from .nuscenes_writer import SyntheticNuScenesConfig, generate_nuscenes


def parse_args(argv=None):
    defaults = SyntheticNuScenesConfig(root='')
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', required=True, help='nuScenes dataroot to write into')
    parser.add_argument('--version', default=defaults.version, help='v1.0-mini or v1.0-trainval')
    parser.add_argument('--num_scenes', type=int, default=defaults.num_scenes)
    parser.add_argument('--samples_per_scene', type=int, default=defaults.samples_per_scene,
                        help='key frames per scene (2 Hz)')
    parser.add_argument('--sweeps_before_first', type=int, default=defaults.sweeps_before_first,
                        help='sweeps written before the first key frame (9 gives every key frame a full 10-sweep '
                             'history)')
    parser.add_argument('--azimuth_steps', type=int, default=defaults.azimuth_steps,
                        help='rays per beam and revolution (32 beams)')
    parser.add_argument('--num_objects', type=int, default=defaults.num_objects,
                        help='objects of the 10 detection classes per scene (at least one of each class)')
    parser.add_argument('--seed', type=int, default=defaults.seed)
    parser.add_argument('--val_fraction', type=float, default=defaults.val_fraction)
    parser.add_argument('--no_lidar_tilt', action='store_true',
                        help='yaw-only LIDAR_TOP extrinsics (default: the real ~1.4 degree roll / pitch)')
    occupancy = parser.add_mutually_exclusive_group()
    occupancy.add_argument('--with_occupancy', dest='with_occupancy', action='store_true',
                           default=defaults.with_occupancy,
                           help='also write nuScenes-Occupancy (OpenOccupancy) ground truth and occ infos '
                                f'(default: {"on" if defaults.with_occupancy else "off"})')
    occupancy.add_argument('--no_occupancy', dest='with_occupancy', action='store_false',
                           help='do not write occupancy ground truth')
    parser.add_argument('--with_cameras', action='store_true',
                        help='also render the six nuScenes cameras at every key frame (JPEG, see docs)')
    parser.add_argument('--camera_width', type=int, default=defaults.camera_width,
                        help='camera image width in pixels (real nuScenes: 1600)')
    parser.add_argument('--camera_height', type=int, default=defaults.camera_height,
                        help='camera image height in pixels (real nuScenes: 900)')
    parser.add_argument('--no_camera_time_offsets', action='store_true',
                        help='fire every camera at the key-frame LiDAR timestamp (default: when the spinning '
                             'LiDAR passes the camera, 0-50 ms earlier, as on nuScenes)')
    parser.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1),
                        help='parallel processes (does not change the output)')
    parser.add_argument('--overwrite', action='store_true',
                        help='regenerate even if an identical complete dataset exists (default: skip it)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    config = SyntheticNuScenesConfig(
        root=args.root, version=args.version, num_scenes=args.num_scenes, samples_per_scene=args.samples_per_scene,
        sweeps_before_first=args.sweeps_before_first, azimuth_steps=args.azimuth_steps,
        num_objects=args.num_objects, seed=args.seed, val_fraction=args.val_fraction,
        lidar_tilt=not args.no_lidar_tilt, with_occupancy=args.with_occupancy, with_cameras=args.with_cameras,
        camera_width=args.camera_width, camera_height=args.camera_height,
        camera_time_offsets=not args.no_camera_time_offsets)
    try:  # bad arguments and a foreign dataset in --root are user errors: a message, no traceback
        config.validate()
        select_scene_names(config.version, config.num_scenes, config.val_fraction)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    try:
        summary = generate_nuscenes(config, overwrite=args.overwrite, workers=args.workers, progress=not args.quiet)
    except FileExistsError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    if summary['skipped']:
        print(f'{summary["dataroot"]}: an identical complete synthetic {config.version} dataset is already there; '
              f'skipped (use --overwrite to regenerate)')
    else:
        print(f'wrote {summary["num_scenes"]} scenes ({summary["num_key_frames"]} key frames, {summary["num_sweeps"]} '
              f'sweeps, {summary["mean_points_per_scan"]:.0f} points/scan) to {summary["dataroot"]} in '
              f'{summary["seconds"]:.1f} s; train: {summary["train_scenes"]}, val: {summary["val_scenes"]}')
        if summary['mean_occupied_voxels'] is not None:
            print(f'occupancy: {summary["mean_occupied_voxels"]:.0f} occupied voxels per key frame, '
                  f'{summary["occupancy_seconds_per_key_frame"]:.3f} s per key frame')
        if summary['camera_seconds_per_key_frame'] is not None:
            print(f'cameras: 6 x {config.camera_width}x{config.camera_height} images per key frame, '
                  f'{summary["camera_seconds_per_key_frame"]:.3f} s per key frame')
        for split, classes in summary['classes_without_points'].items():
            if classes:
                print(f'warning: no {split} annotation of {classes} has LiDAR points; try more scenes or objects '
                      f'(--num_scenes / --num_objects) or another --seed', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
