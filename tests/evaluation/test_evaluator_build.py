"""Evaluator choice by DATA_CONFIG.TASK, the generic eval loop with the segmentation / occupancy evaluators, the
cross-rank merge (padding duplicates dropped) and the config-read scan of the package."""
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict
from torch.utils.data import DataLoader, Dataset

from pcdet.config import ConfigError
from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset
from pcdet.evaluation import build_evaluator
from pcdet.evaluation import evaluator as evaluator_module
from pcdet.evaluation.detection import DetectionEvaluator
from pcdet.evaluation.lidarseg import LidarSegEvaluator
from pcdet.evaluation.occupancy import OccupancyEvaluator
from pcdet.training import eval_one_epoch

ROOT = Path(__file__).resolve().parents[2]
NAMES = ['barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian', 'traffic_cone',
         'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain', 'manmade', 'vegetation']


class VolumeDataset(Dataset):
    """Occupancy stand-in: GT volumes; the model below predicts `pred_of(gt)`."""

    CONFIG_SCHEMA = NuScenesDataset.CONFIG_SCHEMA

    def __init__(self, volumes, task='occupancy'):
        self.volumes, self.class_names = volumes, list(NAMES)
        self.dataset_cfg = EasyDict(TASK=task)

    def __len__(self):
        return len(self.volumes)

    def __getitem__(self, index):
        return {'gt_occupancy': self.volumes[index], 'frame_id': str(index)}

    @staticmethod
    def collate_batch(samples):
        return {'gt_occupancy': np.stack([s['gt_occupancy'] for s in samples]),
                'frame_id': np.array([s['frame_id'] for s in samples]), 'batch_size': len(samples)}


class OccModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch_dict):
        gt = batch_dict['gt_occupancy']  # float32 after load_data_to_device
        pred = torch.where(gt == 255, torch.zeros_like(gt), gt).to(torch.uint8)
        pred[:, 0, 0, 0] = 5  # one voxel wrong per frame
        return [{'occ_pred': p} for p in pred], {}


def test_the_task_picks_the_evaluator(tmp_path, synthetic_nuscenes_root):
    data = VolumeDataset([])
    assert isinstance(build_evaluator(data, EasyDict(DATA_CONFIG=EasyDict(TASK='occupancy')), tmp_path),
                      OccupancyEvaluator)
    data.root_path = synthetic_nuscenes_root
    seg = build_evaluator(data, EasyDict(DATA_CONFIG=EasyDict(TASK='segmentation', VERSION='v1.0-mini')), tmp_path)
    assert isinstance(seg, LidarSegEvaluator) and (seg.version, seg.eval_set) == ('v1.0-mini', 'mini_val')
    seg = build_evaluator(data, EasyDict(DATA_CONFIG=EasyDict(TASK='segmentation', VERSION='v1.0-trainval',
                                                              EVAL_SET='mini_train')), tmp_path)
    assert seg.eval_set == 'mini_train'
    data.dataset_cfg = EasyDict()
    for cfg in (None, EasyDict(), EasyDict(DATA_CONFIG=EasyDict())):  # the declared default: detection
        assert isinstance(build_evaluator(data, cfg, tmp_path), DetectionEvaluator)
    with pytest.raises(ConfigError, match="DATA_CONFIG.TASK: unknown task 'segmentaton'"):
        build_evaluator(data, EasyDict(DATA_CONFIG=EasyDict(TASK='segmentaton')), tmp_path)
    with pytest.raises(ConfigError, match='VERSION is needed'):
        build_evaluator(data, EasyDict(DATA_CONFIG=EasyDict(TASK='segmentation')), tmp_path)


def test_generic_eval_loop_runs_the_occupancy_evaluator(tmp_path, caplog):
    rng = np.random.default_rng(0)
    volumes = [np.where(rng.random((8, 8, 4)) < 0.5, rng.integers(1, 17, (8, 8, 4)), 0).astype(np.uint8)
               for _ in range(5)]
    for v in volumes:
        v[0, 0, 0], v[1, 1, 1] = 3, 255
    data = VolumeDataset(volumes)
    loader = DataLoader(data, batch_size=2, collate_fn=data.collate_batch)
    cfg = EasyDict(DATA_CONFIG=data.dataset_cfg)
    with caplog.at_level(logging.INFO, logger='occ'):
        metrics = eval_one_epoch(cfg, None, OccModel(), loader, '1', logging.getLogger('occ'), result_dir=tmp_path,
                                 show_progress=False)
    gt = np.stack(volumes).reshape(-1)
    # one voxel per frame: GT 3 predicted 5 -> class 3 loses 5 TP (and gains 5 FN), class 5 gains 5 FP
    n3, n5 = int((gt == 3).sum()), int((gt == 5).sum())
    assert metrics['occupancy/IoU_bus'] == pytest.approx((n3 - 5) / n3)
    assert metrics['occupancy/IoU_construction_vehicle'] == pytest.approx(n5 / (n5 + 5))
    assert metrics['occupancy/SC_IoU'] == 1.0 and metrics['occupancy/num_frames'] == 5
    assert 'SSC mIoU (official' in caplog.text and (tmp_path / 'result.pkl').is_file()


def test_generic_eval_loop_runs_the_lidarseg_evaluator(tmp_path, synthetic_nuscenes_root):
    """A stand-in dataset that serves the mini_val key frames as the segmentation dataset would (points, raw row
    index, metadata), a model that predicts the GT: mIoU 1 through build_evaluator + eval_one_epoch."""
    import os

    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper, get_samples_in_eval_set
    from nuscenes.nuscenes import NuScenes
    nusc = NuScenes('v1.0-mini', str(synthetic_nuscenes_root), verbose=False)
    mapper = LidarsegClassMapper(nusc)
    samples = []
    for sample_token in get_samples_in_eval_set(nusc, 'mini_val'):
        token = nusc.get('sample', sample_token)['data']['LIDAR_TOP']
        path = nusc.get_sample_data_path(token)
        raw = np.fromfile(path, np.float32).reshape(-1, 5)
        gt = mapper.convert_label(np.fromfile(os.path.join(nusc.dataroot, nusc.get('lidarseg', token)['filename']),
                                              np.uint8))
        order = np.random.default_rng(len(samples)).permutation(len(raw))  # shuffled rows, as the dataset does
        samples.append({'points': raw[order], 'point_raw_index': order, 'gt': gt[order].astype(np.int64),
                        'metadata': {'lidar_token': token, 'lidar_path': path, 'num_raw_points': len(raw)}})

    class SegDataset(Dataset):
        CONFIG_SCHEMA = NuScenesDataset.CONFIG_SCHEMA
        class_names = NAMES
        root_path = synthetic_nuscenes_root
        dataset_cfg = EasyDict(TASK='segmentation', VERSION='v1.0-mini')

        def __len__(self):
            return len(samples)

        def __getitem__(self, index):
            return samples[index]

        @staticmethod
        def collate_batch(batch):
            return {'points': np.concatenate([np.pad(s['points'], ((0, 0), (1, 0)), constant_values=b)
                                              for b, s in enumerate(batch)]),
                    'point_raw_index': np.concatenate([s['point_raw_index'] for s in batch]),
                    'gt': np.concatenate([s['gt'] for s in batch]),
                    'metadata': [s['metadata'] for s in batch], 'batch_size': len(batch)}

    class SegModel(OccModel):
        def forward(self, batch_dict):
            batch_index = batch_dict['points'][:, 0]
            return [{'point_seg_preds': batch_dict['gt'][batch_index == b].long()}
                    for b in range(batch_dict['batch_size'])], {}

    data = SegDataset()
    loader = DataLoader(data, batch_size=2, collate_fn=data.collate_batch)
    metrics = eval_one_epoch(EasyDict(DATA_CONFIG=data.dataset_cfg), None, SegModel(), loader, '1', None,
                             result_dir=tmp_path, show_progress=False)
    assert metrics['lidarseg/mIoU'] == pytest.approx(1.0)
    assert len(list((tmp_path / 'lidarseg' / 'mini_val').glob('*_lidarseg.bin'))) == len(samples)


def test_the_cross_rank_merge_drops_padding_duplicates(tmp_path, monkeypatch):
    """Two ranks with a strided padded sampler over 3 frames: rank 0 sees [0, 2], rank 1 [1, 0 (padding)]."""
    volumes = [np.full((2, 2, 2), c, np.uint8) for c in (1, 2, 3)]

    class Sampler:
        num_replicas = 2

        def __init__(self, indices):
            self.indices = indices

        def __iter__(self):
            return iter(self.indices)

    ranks = {}
    for rank, indices in ((0, [0, 2]), (1, [1, 0])):
        evaluator = OccupancyEvaluator(VolumeDataset(volumes), tmp_path, NAMES,
                                       dataloader=type('Loader', (), {'sampler': Sampler(indices)})())
        for index in indices:
            evaluator.process({'gt_occupancy': volumes[index][None]}, [{'occ_pred': torch.from_numpy(volumes[0])}])
        ranks[rank] = evaluator
    calls = iter([[[0, 2], [1, 0]], [ranks[0].frame_cms, ranks[1].frame_cms]])
    monkeypatch.setattr(evaluator_module, 'all_gather_object', lambda obj: next(calls))
    ranks[0].dist_test = True
    _, metrics = ranks[0].evaluate()
    # frames 0, 1, 2 once each (8 voxels each): class 1 predicted everywhere -> IoU_barrier = 8 / 24
    assert metrics['occupancy/num_frames'] == 3
    assert metrics['occupancy/IoU_barrier'] == pytest.approx(8 / 24)


RAW_READ = re.compile(r"\b\w*(cfg|config)\w*\.get\(\s*'[A-Za-z_]+'")


def test_the_package_reads_config_keys_only_through_schemas():
    files = sorted((ROOT / 'pcdet' / 'evaluation').glob('*.py')) + [ROOT / 'pcdet' / 'training' / 'eval_loop.py']
    raw = [f'{path.name}: {line.strip()}' for path in files for line in path.read_text().splitlines()
           if RAW_READ.search(line)]
    assert raw == []
    assert RAW_READ.search("task = cfg.get('TASK', 'detection')")  # the scan bites
