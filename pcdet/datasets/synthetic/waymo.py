"""CLI: write a synthetic dataset in the official Waymo Open Dataset format (tfrecord segments of Frame protos).

    python -m pcdet.datasets.synthetic.waymo --root data/synthetic_waymo --num_sequences 4 \
        --frames_per_sequence 10 --seed 0

`--root` is OpenPCDet's Waymo `DATA_PATH`: it will hold `raw_data/segment-*_with_camera_labels.tfrecord` and
`ImageSets/{train,val}.txt`. No TensorFlow is needed to write or read them (`pcdet.datasets.waymo`).
See docs/WAYMO.md and the `waymo_writer` module docstring for what is simulated.
"""
import argparse
import sys

from .scene import VEHICLE_PROFILES
from .waymo_writer import CLASS_MIXES, SyntheticWaymoConfig, generate_waymo


def parse_args(argv=None):
    defaults = SyntheticWaymoConfig(root='')
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', required=True, help='folder to write into (OpenPCDet DATA_PATH)')
    parser.add_argument('--num_sequences', type=int, default=defaults.num_sequences, help='segments (>= 2)')
    parser.add_argument('--frames_per_sequence', type=int, default=defaults.frames_per_sequence,
                        help='frames per segment (10 Hz)')
    parser.add_argument('--seed', type=int, default=defaults.seed)
    parser.add_argument('--val_fraction', type=float, default=defaults.val_fraction)
    parser.add_argument('--top_columns', type=int, default=defaults.top_columns,
                        help='TOP range-image width (64 rows; real WOD: 2650)')
    parser.add_argument('--top_pose_sectors', type=int, default=defaults.top_pose_sectors,
                        help='rolling-shutter pose steps per TOP revolution')
    parser.add_argument('--side_beams', type=int, default=defaults.side_beams,
                        help='rows of the 4 short-range LiDARs (real WOD: 200)')
    parser.add_argument('--side_columns', type=int, default=defaults.side_columns,
                        help='columns of the 4 short-range LiDARs (real WOD: 600)')
    parser.add_argument('--num_objects', type=int, default=defaults.num_objects,
                        help='objects per segment (the simulator places at least one of each kind)')
    parser.add_argument('--class_mix', choices=sorted(CLASS_MIXES), default=defaults.class_mix,
                        help="object kind frequencies: 'wod' (Vehicles mostly cars, as in WOD) or 'nuscenes' "
                             "(the nuScenes-like mix of the nuScenes generator)")
    parser.add_argument('--vehicle_profile', choices=VEHICLE_PROFILES, default=defaults.vehicle_profile,
                        help="ray-cast shape of vehicles: 'stepped' (lowered front: heading observable) or 'box'")
    parser.add_argument('--overwrite', action='store_true',
                        help='regenerate even if an identical complete dataset exists (default: skip it)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    config = SyntheticWaymoConfig(
        root=args.root, num_sequences=args.num_sequences, frames_per_sequence=args.frames_per_sequence,
        seed=args.seed, val_fraction=args.val_fraction, top_columns=args.top_columns,
        top_pose_sectors=args.top_pose_sectors, side_beams=args.side_beams, side_columns=args.side_columns,
        num_objects=args.num_objects, class_mix=args.class_mix,
        vehicle_profile=args.vehicle_profile)
    try:
        config.validate()
        summary = generate_waymo(config, overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileExistsError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    if summary['skipped']:
        print(f'{summary["root"]}: an identical complete synthetic Waymo dataset is already there; skipped '
              f'(use --overwrite to regenerate)')
        return 0
    print(f'wrote {summary["num_sequences"]} segments ({summary["num_frames"]} frames, '
          f'{summary["mean_points_per_frame"]:.0f} points/frame) to {summary["root"]} in {summary["seconds"]:.1f} s; '
          f'train: {len(summary["train_sequences"])}, val: {len(summary["val_sequences"])}')
    for split, classes in summary['classes_without_points'].items():
        if classes:
            print(f'warning: no {split} label of {classes} has LiDAR points; try more segments or objects '
                  f'(--num_sequences / --num_objects) or another --seed', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
