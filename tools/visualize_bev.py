"""Write BEV pictures (points + GT boxes, optionally predictions) of dataset frames.

    python tools/visualize_bev.py --cfg_file tools/cfgs/dataset_configs/nuscenes_synthetic.yaml \
        --split test --indices 0 5 10 --out_dir output/bev
    python tools/visualize_bev.py --cfg_file <model cfg> --split test --num_frames 3 --pred_file result.pkl

The frame goes through the dataset exactly as a model sees it in test mode (sweeps merged, range mask applied,
no augmentation), so the picture shows what the model is trained and evaluated on.
"""
import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from pcdet.config import cfg_from_list, cfg_from_yaml_file, log_config_to_file, save_config_to_file  # noqa: E402
from pcdet.config_registry import validate_config  # noqa: E402
from pcdet.datasets import build_dataset  # noqa: E402
from pcdet.utils.common_utils import create_logger  # noqa: E402
from pcdet.utils.visualization import save_bev_png  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg_file', required=True, help='a dataset config or a model config (uses DATA_CONFIG)')
    parser.add_argument('--split', choices=['train', 'test'], default='test', help='which DATA_SPLIT to draw from')
    parser.add_argument('--indices', type=int, nargs='*', default=None, help='frame indices in the split')
    parser.add_argument('--num_frames', type=int, default=3, help='evenly spaced frames when --indices is not given')
    parser.add_argument('--out_dir', default='output/bev', help='folder for the PNG files')
    parser.add_argument('--pred_file', default=None, help='result.pkl from test.py: draw its predictions too')
    parser.add_argument('--score_thresh', type=float, default=0.3, help='hide predictions below this score')
    parser.add_argument('--set', dest='set_cfgs', default=None, nargs=argparse.REMAINDER,
                        help='config overrides KEY VALUE ... (must be last)')
    return parser.parse_args(argv)


def load_dataset_config(cfg_file, set_cfgs=None):
    """Return `(dataset_cfg, class_names)` from a model config (DATA_CONFIG + CLASS_NAMES) or a dataset config."""
    config = cfg_from_yaml_file(cfg_file)
    if set_cfgs:
        cfg_from_list(set_cfgs, config)
    validate_config(config, source=str(cfg_file))
    if 'DATA_CONFIG' in config:
        return config.DATA_CONFIG, list(config.get('CLASS_NAMES', []))
    class_names = list(config.get('CLASS_NAMES', [])) or ['car', 'truck', 'construction_vehicle', 'bus', 'trailer',
                                                           'barrier', 'motorcycle', 'bicycle', 'pedestrian',
                                                           'traffic_cone']
    return config, class_names


def predictions_by_frame(pred_file):
    if pred_file is None:
        return {}
    with open(pred_file, 'rb') as handle:
        det_annos = pickle.load(handle)
    return {str(anno['frame_id']): anno for anno in det_annos}


def draw_frames(dataset, class_names, indices, out_dir, predictions=None, score_thresh=0.3):
    """Write one PNG per index; returns the written paths."""
    out_dir = Path(out_dir)
    predictions = predictions or {}
    written = []
    for index in indices:
        data_dict = dataset[index]
        gt_boxes = data_dict.get('gt_boxes', np.zeros((0, 8), dtype=np.float32))
        gt_names = [class_names[int(label) - 1] for label in gt_boxes[:, -1]] if len(gt_boxes) else []
        frame_id = str(data_dict.get('frame_id', index))
        prediction = predictions.get(frame_id)
        path = out_dir / f'bev_{index:05d}_{Path(frame_id).name}.png'
        save_bev_png(
            path, data_dict['points'], gt_boxes=gt_boxes[:, :-1], gt_names=gt_names,
            pred_boxes=None if prediction is None else prediction['boxes_lidar'],
            pred_scores=None if prediction is None else prediction['score'],
            pred_names=None if prediction is None else prediction['name'],
            point_cloud_range=dataset.point_cloud_range, score_threshold=score_thresh,
            title=f'{frame_id}: {len(gt_boxes)} GT boxes' + (
                '' if prediction is None else f', {int((prediction["score"] >= score_thresh).sum())} predictions'))
        written.append(path)
    return written


def main(argv=None):
    args = parse_args(argv)
    logger = create_logger()
    dataset_cfg, class_names = load_dataset_config(args.cfg_file, args.set_cfgs)
    log_config_to_file(dataset_cfg, pre='DATA_CONFIG', logger=logger)
    save_config_to_file(dataset_cfg, Path(args.out_dir) / 'config.yaml')  # what the pictures were made with
    augmentor_cfg = dataset_cfg.get('DATA_AUGMENTOR')
    if args.split == 'train' and augmentor_cfg:  # a picture shows the data, not one random augmentation of it
        augmentor_cfg.DISABLE_AUG_LIST = [aug.NAME for aug in augmentor_cfg.get('AUG_CONFIG_LIST', [])]
    dataset = build_dataset(dataset_cfg, class_names, training=args.split == 'train', logger=logger)
    if len(dataset) == 0:
        raise SystemExit(f'The {args.split} split of {args.cfg_file} has no frames')
    indices = args.indices if args.indices else \
        sorted(set(np.linspace(0, len(dataset) - 1, num=min(args.num_frames, len(dataset))).astype(int).tolist()))
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if bad:
        raise SystemExit(f'Frame indices {bad} are outside the {args.split} split (0..{len(dataset) - 1})')
    for path in draw_frames(dataset, class_names, indices, args.out_dir, predictions_by_frame(args.pred_file),
                            args.score_thresh):
        logger.info(f'wrote {path}')


if __name__ == '__main__':
    main()
