"""Trivial baselines for segmentation and occupancy, scored by the same evaluators as the models.

A learning claim needs a floor measured the same way: these baselines see only the height of a point (segmentation)
or of a voxel layer (occupancy), and predict the majority class of that height in the training split.

    HeightMajoritySegmenter   per 0.25 m z bin (in the LiDAR frame) the most frequent labelled class (ignore 0 left
                              out) of the training points; every point gets its bin's class.
    HeightMajorityOccupancy   per z layer of the occupancy grid the most frequent occupied class (1..16) over the
                              training volumes; every voxel holding a point of the input scan (key frame + sweeps)
                              gets its layer's class, every other voxel is free. (The majority over all voxels is
                              free on every layer, and predicting nothing scores 0: the floor would say nothing.)

Both are `nn.Module`s that answer like the task models (`pred_dicts, {}` with `point_seg_preds` / `occ_pred`, see
pcdet/models/detectors/task_models.py), so `eval_one_epoch` and the task's evaluator score them unchanged.

    python -m pcdet.evaluation.baselines \
        --cfg_file tools/cfgs/gpicture_models/gpicture_tiny_synthetic_segmentation.yaml \
        --output_dir OUT [--set DATA_CONFIG.DATA_PATH DIR]

fits on the config's training split (every frame, no augmentation, key-frame points only for segmentation: the
labelled ones) and evaluates on its test split; the metrics go to `OUT/metrics.json` (eval_loop).

batch_dict keys read: points (ΣN, 1 + C) [b, x, y, z, ...], batch_size.
"""
import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

NUM_SEG_CLASSES = 16     # official lidarseg challenge ids 1..16 (0 = ignore)
NUM_OCC_CLASSES = 17     # 0 free, 1..16
OCC_NOISE = 255


class HeightMajoritySegmenter(nn.Module):
    """`point_seg_preds` = majority class of the point's z bin (bins of `bin_size` m starting at `z_min`; points
    outside take the nearest end bin)."""

    def __init__(self, bin_classes, z_min, bin_size):
        super().__init__()
        self.register_buffer('bin_classes', torch.as_tensor(bin_classes, dtype=torch.long))
        self.z_min, self.bin_size = float(z_min), float(bin_size)

    @classmethod
    def fit(cls, z, labels, z_range=(-5.0, 3.0), bin_size=0.25):
        """Majority labelled class per z bin; a bin without labelled points takes the overall majority class."""
        z, labels = np.asarray(z, dtype=np.float64), np.asarray(labels, dtype=np.int64)
        num_bins = int(round((z_range[1] - z_range[0]) / bin_size))
        bins = np.clip(np.floor((z - z_range[0]) / bin_size).astype(np.int64), 0, num_bins - 1)
        keep = labels > 0
        counts = np.bincount(bins[keep] * (NUM_SEG_CLASSES + 1) + labels[keep],
                             minlength=num_bins * (NUM_SEG_CLASSES + 1)).reshape(num_bins, NUM_SEG_CLASSES + 1)
        if counts.sum() == 0:
            raise ValueError('HeightMajoritySegmenter.fit: no labelled point (every label is 0 = ignore)')
        overall = int(np.argmax(counts.sum(axis=0)[1:]) + 1)
        bin_classes = np.where(counts.sum(axis=1) > 0, np.argmax(counts[:, 1:], axis=1) + 1, overall)
        return cls(bin_classes, z_range[0], bin_size)

    def forward(self, batch_dict):
        points = batch_dict['points']
        num_bins = self.bin_classes.numel()
        bins = torch.floor((points[:, 3] - self.z_min) / self.bin_size).long().clamp(0, num_bins - 1)
        preds = self.bin_classes[bins]
        batch_index = points[:, 0].long()
        return [{'point_seg_preds': preds[batch_index == b]} for b in range(int(batch_dict['batch_size']))], {}


class HeightMajorityOccupancy(nn.Module):
    """`occ_pred`: voxels holding a point of the sample get the majority occupied class of their z layer in the
    training volumes; all other voxels are free (0)."""

    def __init__(self, layer_classes, grid_size, point_cloud_range):
        super().__init__()
        self.register_buffer('layer_classes', torch.as_tensor(layer_classes, dtype=torch.uint8))
        self.grid_size = tuple(int(v) for v in grid_size)
        self.point_cloud_range = [float(v) for v in point_cloud_range]

    @staticmethod
    def layer_counts(volume):
        """(Z, 17) label counts per z layer of one (X, Y, Z) volume, noise left out."""
        volume = np.asarray(volume)
        num_layers = volume.shape[2]
        layer = np.broadcast_to(np.arange(num_layers, dtype=np.int64), volume.shape)
        keep = volume != OCC_NOISE
        return np.bincount(layer[keep] * NUM_OCC_CLASSES + volume[keep].astype(np.int64),
                           minlength=num_layers * NUM_OCC_CLASSES).reshape(num_layers, NUM_OCC_CLASSES)

    @classmethod
    def fit(cls, counts, grid_size, point_cloud_range):
        """Majority occupied class per layer; a layer without occupied voxels takes the overall majority class."""
        occupied = np.asarray(counts)[:, 1:]
        if occupied.sum() == 0:
            raise ValueError('HeightMajorityOccupancy.fit: no occupied voxel in the training volumes')
        overall = int(np.argmax(occupied.sum(axis=0)) + 1)
        layer_classes = np.where(occupied.sum(axis=1) > 0, np.argmax(occupied, axis=1) + 1, overall)
        return cls(layer_classes, grid_size, point_cloud_range)

    def forward(self, batch_dict):
        points = batch_dict['points']
        low = points.new_tensor(self.point_cloud_range[:3])
        size = points.new_tensor(self.grid_size)
        voxel_size = (points.new_tensor(self.point_cloud_range[3:]) - low) / size
        index = torch.floor((points[:, 1:4] - low) / voxel_size).long()
        inside = ((index >= 0) & (index < size.long())).all(dim=1)
        pred_dicts = []
        for b in range(int(batch_dict['batch_size'])):
            ix, iy, iz = index[inside & (points[:, 0].long() == b)].unbind(dim=1)
            volume = torch.zeros(self.grid_size, dtype=torch.uint8, device=points.device)
            volume[ix, iy, iz] = self.layer_classes[iz]
            pred_dicts.append({'occ_pred': volume})
        return pred_dicts, {}


def fit_baseline(cfg, logger):
    """The task's baseline fitted on every frame of the training split (test-mode loading: no augmentation)."""
    from ..datasets import build_dataset
    from ..datasets.dataset import DatasetTemplate
    task = DatasetTemplate.CONFIG_SCHEMA.get(cfg.DATA_CONFIG, 'TASK')
    data_cfg = _train_split_as_test(cfg.DATA_CONFIG)
    dataset = build_dataset(data_cfg, cfg.CLASS_NAMES, training=False, logger=logger)
    if task == 'segmentation':
        z, labels = [], []
        for index in range(len(dataset)):
            sample = dataset[index]
            key_frame = sample['point_raw_index'] >= 0
            z.append(sample['points'][key_frame, 2])
            labels.append(sample['point_seg_labels'][key_frame])
        return HeightMajoritySegmenter.fit(np.concatenate(z), np.concatenate(labels))
    if task == 'occupancy':
        counts = sum(HeightMajorityOccupancy.layer_counts(dataset[index]['gt_occupancy'])
                     for index in range(len(dataset)))
        return HeightMajorityOccupancy.fit(counts, dataset[0]['gt_occupancy'].shape,
                                           dataset.CONFIG_SCHEMA.get(cfg.DATA_CONFIG, 'OCC_POINT_CLOUD_RANGE'))
    raise ValueError(f'DATA_CONFIG.TASK {task!r}: baselines exist for segmentation and occupancy only')


def _train_split_as_test(data_cfg):
    """A copy of DATA_CONFIG whose test split is the training split, every frame."""
    from copy import deepcopy

    from easydict import EasyDict
    data_cfg = EasyDict(deepcopy(dict(data_cfg)))
    if 'INFO_PATH' in data_cfg and data_cfg.INFO_PATH:
        data_cfg.INFO_PATH['test'] = list(data_cfg.INFO_PATH['train'])
    if 'DATA_SPLIT' in data_cfg and data_cfg.DATA_SPLIT:
        data_cfg.DATA_SPLIT['test'] = data_cfg.DATA_SPLIT['train']
    data_cfg.SAMPLED_INTERVAL = {'train': 1, 'test': 1}
    return data_cfg


def main(argv=None):
    from ..config import cfg_from_list, cfg_from_yaml_file
    from ..config_registry import validate_config
    from ..datasets import build_dataloader
    from ..training.eval_loop import eval_one_epoch
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cfg_file', required=True)
    parser.add_argument('--output_dir', required=True)
    parser.add_argument('--batch_size', type=int, default=1)
    parser.add_argument('--set', dest='set_cfgs', nargs=argparse.REMAINDER, default=None)
    args = parser.parse_args(argv)
    cfg = cfg_from_yaml_file(args.cfg_file)
    if args.set_cfgs:
        cfg_from_list(args.set_cfgs, cfg)
    validate_config(cfg, source=args.cfg_file)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    logger = logging.getLogger('pcdet.baselines')
    model = fit_baseline(cfg, logger)
    _, loader, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size=args.batch_size, dist=False,
                                    workers=0, logger=logger, training=False)
    metrics = eval_one_epoch(cfg, argparse.Namespace(save_to_file=False, infer_time=False), model, loader,
                             'baseline', logger, result_dir=Path(args.output_dir), device='cpu')
    return metrics


if __name__ == '__main__':
    main()
