"""Run a trained detector on point-cloud files and draw the detections in bird's-eye view.

    python tools/demo.py --cfg_file tools/cfgs/waymo_models/dsvt_pillar.yaml --ckpt dsvt_pillar.pth \
        --data_path frame.npy --num_features 5
    python tools/demo.py --cfg_file tools/cfgs/nuscenes_models/dsvt_pillar_centerpoint.yaml --ckpt ckpt.pth \
        --data_path samples/LIDAR_TOP/ --ext .bin --num_features 5 --file_features x y z intensity ring \
        --pad_missing_features --out_dir output/demo

Every file is read with an explicit feature count (`--num_features`, never a hard-coded reshape): a .bin whose size
is not a multiple of it is an error naming the file. The columns must then match the model's
`DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list` (printed at start and named in every error):
* same count: taken as they are;
* fewer columns: an error, unless `--pad_missing_features` zero-fills the missing trailing ones (a nuScenes key frame
  without sweeps has time lag 0);
* `--file_features NAME ...` (or the field names of a .pcd file) names the file's columns: they are matched to the
  model's by name, extra ones (e.g. nuScenes' ring index) are dropped, missing ones need `--pad_missing_features`.
`--dataset_transforms` applies the dataset reader's value transforms to raw files (Waymo: tanh on intensity /
elongation). For each file the detections above `--score_thresh` are printed, and `<out_dir>/<name>.png` (BEV
picture with predictions, plus ground truth from `--gt_file`) and `<out_dir>/<name>_pred.npz` (all detections:
boxes, scores, labels, names) are written.
"""
import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from pcdet.config import cfg_from_list, cfg_from_yaml_file  # noqa: E402
from pcdet.config_registry import validate_config  # noqa: E402
from pcdet.inference import (  # noqa: E402
    PointLayoutError,
    Predictor,
    adapt_point_layout,
    apply_dataset_load_transforms,
    format_layout,
)
from pcdet.utils.checkpoint import CheckpointMismatchError  # noqa: E402
from pcdet.utils.point_io import PointFileError, list_point_files, load_points_with_names  # noqa: E402
from pcdet.utils.visualization import save_bev_png  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg_file', required=True, help='experiment config (MODEL, CLASS_NAMES, DATA_CONFIG)')
    parser.add_argument('--ckpt', default=None, help='checkpoint (OpenPCDet layout), loaded strictly')
    parser.add_argument('--data_path', required=True, help='a point file, or a folder of them')
    parser.add_argument('--ext', default=None, choices=['.bin', '.npy', '.pcd'],
                        help='extension of the files to read from a folder (default: the first one present)')
    parser.add_argument('--num_features', type=int, required=True,
                        help='values per point in the files (e.g. KITTI 4, nuScenes / Waymo 5); checked for .npy/.pcd')
    parser.add_argument('--file_features', nargs='+', default=None, metavar='NAME',
                        help='names of the file columns (x y z first), to match them to the model columns by name')
    parser.add_argument('--pad_missing_features', action='store_true',
                        help='zero-fill model columns the file lacks (e.g. the nuScenes sweep timestamp)')
    parser.add_argument('--dataset_transforms', action='store_true',
                        help="apply the dataset reader's value transforms to raw files (Waymo: tanh on intensity)")
    parser.add_argument('--drop_nonfinite', action='store_true', help='drop points with NaN / inf values')
    parser.add_argument('--gt_file', default=None,
                        help='ground-truth boxes (M, 7+) .npy to draw: a file (single input) or a folder of '
                             '<name>.npy files')
    parser.add_argument('--out_dir', default='output/demo', help='folder for the pictures and predictions')
    parser.add_argument('--score_thresh', type=float, default=0.3, help='print / draw detections at or above this')
    parser.add_argument('--device', default='cpu', help="torch device ('cpu', 'cuda', ...)")
    parser.add_argument('--set', dest='set_cfgs', default=None, nargs=argparse.REMAINDER,
                        help='config overrides KEY VALUE ... (must be last)')
    return parser.parse_args(argv)


def load_frame(path, args, feature_names, data_cfg, logger):
    """Read one file and bring it into the model's column layout; returns float32 (N, C)."""
    points, names = load_points_with_names(path, args.num_features)
    if args.file_features is not None:
        if len(args.file_features) != points.shape[1]:
            raise PointLayoutError(f'{path}: --file_features names {len(args.file_features)} columns '
                                   f'{format_layout(args.file_features)} but the file has {points.shape[1]}')
        names = list(args.file_features)
    try:
        points, notes = adapt_point_layout(points, feature_names, file_names=names,
                                           pad_missing=args.pad_missing_features)
    except PointLayoutError as err:
        raise PointLayoutError(f'{path}: {err}') from None
    for note in notes:
        logger.info(f'{path.name}: {note}')
    if args.drop_nonfinite:
        finite = np.isfinite(points).all(axis=1)
        if not finite.all():
            logger.info(f'{path.name}: dropped {int((~finite).sum())} points with NaN / inf values')
            points = points[finite]
    if args.dataset_transforms:
        points = apply_dataset_load_transforms(points, data_cfg)
    return points


def gt_boxes_for(path, args, num_files):
    if args.gt_file is None:
        return None
    gt_path = Path(args.gt_file)
    if gt_path.is_dir():
        candidate = gt_path / f'{path.stem}.npy'
        return load_gt_boxes(candidate) if candidate.is_file() else None
    if num_files > 1:
        raise SystemExit(f'--gt_file {gt_path} is a single file but --data_path has {num_files} frames; pass a '
                         f'folder of <name>.npy files')
    return load_gt_boxes(gt_path)


def load_gt_boxes(path):
    boxes = np.load(path, allow_pickle=False)
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise SystemExit(f'{path}: ground-truth boxes must be (M, 7+) [x, y, z, dx, dy, dz, heading, ...], '
                         f'got shape {boxes.shape}')
    return boxes.astype(np.float32)


def format_detections(result, score_thresh):
    """Text table of the detections scoring >= score_thresh."""
    keep = result['scores'] >= score_thresh
    lines = [f'{int(keep.sum())} detections with score >= {score_thresh} (of {len(keep)})']
    if keep.any():
        lines.append(f'{"name":<20} {"score":>6} {"x":>8} {"y":>8} {"z":>7} {"dx":>6} {"dy":>6} {"dz":>6} '
                     f'{"heading":>8}')
    for box, score, name in zip(result['boxes'][keep], result['scores'][keep], result['names'][keep]):
        lines.append(f'{name:<20} {score:6.3f} {box[0]:8.2f} {box[1]:8.2f} {box[2]:7.2f} {box[3]:6.2f} '
                     f'{box[4]:6.2f} {box[5]:6.2f} {box[6]:8.3f}')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    logger = logging.getLogger('pcdet.demo')
    cfg = cfg_from_yaml_file(args.cfg_file)
    if args.set_cfgs:
        cfg_from_list(args.set_cfgs, cfg)
    validate_config(cfg, source=args.cfg_file)
    try:
        files = list_point_files(args.data_path, args.ext)
    except PointFileError as err:
        raise SystemExit(str(err)) from None
    try:
        predictor = Predictor(cfg, args.ckpt, device=args.device, logger=logging.getLogger('pcdet.inference'),
                              cfg_file=args.cfg_file)
    except (CheckpointMismatchError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None
    feature_names = predictor.feature_names
    logger.info(f'model input columns {format_layout(feature_names)}; {len(files)} file(s) from {args.data_path}')

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        try:
            points = load_frame(path, args, feature_names, cfg.DATA_CONFIG, logger)
            result = predictor.predict(points)
        except (PointFileError, PointLayoutError) as err:
            raise SystemExit(str(err)) from None
        print(f'== {path}\n{format_detections(result, args.score_thresh)}', flush=True)
        gt_boxes = gt_boxes_for(path, args, len(files))
        picture = out_dir / f'{path.stem}.png'
        save_bev_png(picture, points, gt_boxes=gt_boxes, pred_boxes=result['boxes'], pred_scores=result['scores'],
                     pred_names=result['names'], point_cloud_range=predictor.point_cloud_range,
                     score_threshold=args.score_thresh,
                     title=f'{path.name}: {int((result["scores"] >= args.score_thresh).sum())} detections'
                           + ('' if gt_boxes is None else f', {len(gt_boxes)} GT boxes'))
        np.savez(out_dir / f'{path.stem}_pred.npz', **result)
        logger.info(f'wrote {picture}')
        written.append(picture)
    return written


if __name__ == '__main__':
    main()
