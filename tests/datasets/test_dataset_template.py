"""DatasetTemplate.prepare_data, self-supervised mode, resampling, registry, dataloader, sampler and hook."""
import copy
import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from easydict import EasyDict

import pcdet.datasets as datasets
from pcdet.config import ConfigError
from pcdet.datasets import (
    DatasetTemplate,
    DistributedEvalSampler,
    apply_disable_augmentation_hook,
    build_dataloader,
    get_dataset_class,
    register_dataset,
)

CLASSES = ['car', 'pedestrian']


def dataset_config(augmentations=('flip', 'rotation', 'scaling', 'translation'), processors=('mask', 'shuffle')):
    aug_configs = {
        'gt_sampling': {'NAME': 'gt_sampling', 'DB_INFO_PATH': ['missing_dbinfos.pkl'], 'SAMPLE_GROUPS': ['car:2'],
                        'NUM_POINT_FEATURES': 4},
        'flip': {'NAME': 'random_world_flip', 'ALONG_AXIS_LIST': ['x', 'y']},
        'rotation': {'NAME': 'random_world_rotation', 'WORLD_ROT_ANGLE': [-0.78, 0.78]},
        'scaling': {'NAME': 'random_world_scaling', 'WORLD_SCALE_RANGE': [0.95, 1.05]},
        'translation': {'NAME': 'random_world_translation', 'NOISE_TRANSLATE_STD': [0.5, 0.5, 0.2]},
    }
    processor_configs = {
        'mask': {'NAME': 'mask_points_and_boxes_outside_range', 'REMOVE_OUTSIDE_BOXES': True},
        'shuffle': {'NAME': 'shuffle_points', 'SHUFFLE_ENABLED': {'train': True, 'test': False}},
    }
    return EasyDict({
        'DATASET': 'ToyDataset', 'DATA_PATH': '/nonexistent', 'POINT_CLOUD_RANGE': [-50, -50, -5, 50, 50, 3],
        'POINT_FEATURE_ENCODING': {'encoding_type': 'absolute_coordinates_encoding',
                                   'used_feature_list': ['x', 'y', 'z', 'intensity'],
                                   'src_feature_list': ['x', 'y', 'z', 'intensity', 'timestamp']},
        'DATA_AUGMENTOR': {'DISABLE_AUG_LIST': [], 'AUG_CONFIG_LIST': [aug_configs[a] for a in augmentations]},
        'DATA_PROCESSOR': [processor_configs[p] for p in processors]
                          + [{'NAME': 'transform_points_to_voxels_placeholder', 'VOXEL_SIZE': [0.4, 0.4, 8]}],
    })


def make_scene(index, names):
    rng = np.random.default_rng(index)
    boxes = np.concatenate([rng.uniform(-30, 30, (len(names), 2)), np.zeros((len(names), 1)),
                            np.tile([4.0, 2.0, 1.5], (len(names), 1)), rng.uniform(-3, 3, (len(names), 1)),
                            rng.normal(size=(len(names), 2))], axis=1)
    points = rng.uniform(-40, 40, (200, 5)).astype(np.float32)
    return {'points': points, 'gt_boxes': boxes, 'gt_names': np.array(names, dtype=str), 'frame_id': f'f{index}',
            'metadata': {'token': f't{index}'}}


class ToyDataset(DatasetTemplate):
    """In-memory dataset; counts __getitem__ calls and refuses to loop forever."""
    CALL_LIMIT = 500

    def __init__(self, dataset_cfg=None, class_names=None, training=True, root_path=None, logger=None,
                 scene_names=(('car', 'pedestrian'), ('ignore',), ('car', 'car', 'ignore'), ('pedestrian',))):
        super().__init__(dataset_cfg, class_names, training, root_path, logger)
        self.scenes = [make_scene(i, names) for i, names in enumerate(scene_names)]
        self.getitem_calls = 0

    def __len__(self):
        return len(self.scenes) * (self.total_epochs if self._merge_all_iters_to_one_epoch else 1)

    def __getitem__(self, index):
        self.getitem_calls += 1
        if self.getitem_calls > self.CALL_LIMIT:
            raise AssertionError('infinite loop guard: __getitem__ called too often')
        return self.prepare_data(copy.deepcopy(self.scenes[index % len(self.scenes)]))


register_dataset('ToyDataset', ToyDataset)


def test_prepare_data_training_outputs():
    dataset = ToyDataset(dataset_config(), CLASSES)
    np.random.seed(0)
    out = dataset[2]
    assert out['gt_boxes'].dtype == np.float32 and out['gt_boxes'].shape == (2, 10)
    assert out['gt_boxes'][:, -1].tolist() == [1.0, 1.0]  # 1-based index of 'car'
    assert 'gt_names' not in out and out['use_lead_xyz'] is True
    assert out['points'].shape[1] == 4 and np.all(np.abs(out['points'][:, :2]) <= 50)
    assert out['lidar_aug_matrix'].shape == (4, 4) and out['lidar_aug_matrix'].dtype == np.float32
    assert np.all(out['gt_boxes'][:, 6] >= -np.pi) and np.all(out['gt_boxes'][:, 6] < np.pi)
    assert dataset.grid_size.tolist() == [250, 250, 1] and dataset.voxel_size == [0.4, 0.4, 8.0]
    assert dataset.mode == 'train' and dataset.point_cloud_range.dtype == np.float32


def test_lidar_aug_matrix_maps_raw_points_to_augmented_points():
    dataset = ToyDataset(dataset_config(processors=()), CLASSES)
    for seed in range(4):
        np.random.seed(seed)
        out = dataset[0]
        raw = dataset.scenes[0]['points'][:, :3]
        mapped = (out['lidar_aug_matrix'][:3, :3] @ raw.T).T + out['lidar_aug_matrix'][:3, 3]
        np.testing.assert_allclose(mapped, out['points'][:, :3], atol=1e-4)


def test_test_mode_is_identity_and_never_resamples():
    dataset = ToyDataset(dataset_config(), CLASSES, training=False)
    out = dataset[1]  # only an 'ignore' box: zero boxes left, kept as is at test time
    assert dataset.data_augmentor is None and dataset.mode == 'test'
    np.testing.assert_array_equal(out['lidar_aug_matrix'], np.eye(4))
    assert out['gt_boxes'].shape == (0, 10) and dataset.getitem_calls == 1
    np.testing.assert_array_equal(out['points'], dataset.scenes[1]['points'][:, :4])


def test_resampling_uses_numpy_global_rng():
    dataset = ToyDataset(dataset_config(), CLASSES)
    frames = []
    for _ in range(2):
        np.random.seed(123)
        frames.append(dataset[1]['frame_id'])
    assert frames[0] == frames[1] != 'f1'


def test_resampling_is_bounded_with_a_clear_error():
    dataset = ToyDataset(dataset_config(), CLASSES, scene_names=[('ignore',), ('truck',)])
    dataset.MAX_RESAMPLE_ATTEMPTS = 7
    with pytest.raises(RuntimeError, match=r"No sample with boxes of \['car', 'pedestrian'\].*7 random draws"):
        dataset[0]
    assert dataset.getitem_calls == 1 + 7
    assert not dataset._resampling


@pytest.mark.parametrize('training', [True, False])
def test_self_supervised_mode_never_resamples_or_samples_gt(training):
    config = dataset_config(augmentations=('gt_sampling', 'flip', 'rotation'))  # DB files do not exist
    dataset = ToyDataset(config, [], training=training, scene_names=[('ignore',), ()])
    for index in (0, 1, 0, 1):
        out = dataset[index]
        assert 'gt_boxes' not in out and 'gt_names' not in out and out['points'].shape[1] == 4
    assert dataset.getitem_calls == 4
    assert dataset.self_supervised
    no_boxes = {'points': make_scene(0, [])['points'], 'frame_id': 'x'}
    assert 'gt_boxes' not in dataset.prepare_data(no_boxes)


def test_supervised_training_requires_boxes():
    dataset = ToyDataset(dataset_config(), CLASSES)
    with pytest.raises(KeyError, match='gt_boxes must be provided'):
        dataset.prepare_data({'points': make_scene(0, [])['points']})


def test_config_errors_and_early_return():
    config = dataset_config()
    del config['POINT_CLOUD_RANGE']
    with pytest.raises(ConfigError, match='DATA_CONFIG.*POINT_CLOUD_RANGE'):
        ToyDataset(config, CLASSES)
    info_only = ToyDataset(dataset_config(), None)
    assert not hasattr(info_only, 'data_processor') and str(info_only.root_path) == '/nonexistent'
    assert ToyDataset(None, None, root_path='/data').root_path.name == 'data'


def test_pickling_drops_logger():
    dataset = ToyDataset(dataset_config(), CLASSES, logger=logging.getLogger('toy'))
    restored = pickle.loads(pickle.dumps(dataset))
    assert restored.logger is None and len(restored) == len(dataset)


def test_generate_prediction_dicts():
    dataset = ToyDataset(dataset_config(), CLASSES, training=False)
    preds = [{'pred_boxes': torch.ones(2, 7), 'pred_scores': torch.tensor([0.9, 0.3]),
              'pred_labels': torch.tensor([2, 1])},
             {'pred_boxes': torch.zeros(0, 7), 'pred_scores': torch.zeros(0), 'pred_labels': torch.zeros(0).long()}]
    batch = {'frame_id': np.array(['a', 'b']), 'metadata': np.array([{'token': 'ta'}, {'token': 'tb'}])}
    annos = dataset.generate_prediction_dicts(batch, preds, CLASSES)
    assert annos[0]['name'].tolist() == ['pedestrian', 'car'] and annos[0]['boxes_lidar'].shape == (2, 7)
    assert annos[0]['frame_id'] == 'a' and annos[1]['metadata'] == {'token': 'tb'}
    assert len(annos[1]['name']) == 0 and annos[1]['boxes_lidar'].shape == (0, 7)
    dataset.dataset_cfg.PRED_VELOCITY = True
    assert dataset.generate_prediction_dicts(batch, preds, CLASSES)[1]['boxes_lidar'].shape == (0, 9)


def test_disable_augmentation_hook():
    config = dataset_config()
    frozen = copy.deepcopy(config)
    dataset = ToyDataset(config, CLASSES)
    hook = EasyDict({'DisableAugmentationHook': {'DISABLE_AUG_LIST': ['random_world_flip', 'random_world_rotation'],
                                                 'NUM_LAST_EPOCHS': 2}})
    assert not apply_disable_augmentation_hook(dataset, hook, cur_epoch=7, total_epochs=10)
    assert 'random_world_flip' in dataset.data_augmentor.active_augmentations
    assert apply_disable_augmentation_hook(dataset, hook, cur_epoch=8, total_epochs=10)
    assert dataset.data_augmentor.active_augmentations == ['random_world_scaling', 'random_world_translation']
    out = dataset[0]
    assert 'flip_x' not in out and 'noise_rot' not in out and 'noise_scale' in out
    assert config == frozen
    assert not apply_disable_augmentation_hook(dataset, None, 9, 10)
    assert not apply_disable_augmentation_hook(dataset, EasyDict({'OtherHook': {}}), 9, 10)
    assert apply_disable_augmentation_hook(dataset, hook.DisableAugmentationHook, 9, 10)


# ---- registry, dataloader, samplers ------------------------------------------------------------------------------

def test_registry_is_lazy_and_errors_list_known_names():
    code = ('import sys, pcdet.datasets\n'
            'print([m for m in sys.modules if m.startswith(("nuscenes", "pcdet.datasets.nuscenes", '
            '"pcdet.datasets.waymo", "tensorflow"))])')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
    with pytest.raises(ConfigError, match=r"unknown dataset 'KittiDataset'.*NuScenesDataset.*ToyDataset"):
        get_dataset_class('KittiDataset')
    register_dataset('LazyTemplate', 'pcdet.datasets.dataset:DatasetTemplate')
    try:
        assert get_dataset_class('LazyTemplate') is DatasetTemplate
    finally:
        datasets.DATASET_REGISTRY.pop('LazyTemplate')
    register_dataset('BrokenToy', 'pcdet.datasets.not_a_module:Nothing')
    try:
        with pytest.raises(ImportError, match="Dataset 'BrokenToy': importing pcdet.datasets.not_a_module"):
            get_dataset_class('BrokenToy')
    finally:
        datasets.DATASET_REGISTRY.pop('BrokenToy')


def test_build_dataloader_without_workers_and_merged_epochs():
    dataset, loader, sampler = build_dataloader(dataset_config(), CLASSES, batch_size=2, dist=False, workers=0,
                                                merge_all_iters_to_one_epoch=True, total_epochs=3)
    assert sampler is None and len(dataset) == 12 and not loader.pin_memory
    batch = next(iter(loader))
    assert batch['batch_size'] == 2 and batch['points'][:, 0].max() == 1 and batch['gt_boxes'].shape[0] == 2


@pytest.mark.parametrize('start_method', ['fork', 'spawn'])
def test_hook_reaches_persistent_workers(start_method):
    dataset, loader, _ = build_dataloader(dataset_config(augmentations=('flip',), processors=()), CLASSES,
                                          batch_size=2, dist=False, workers=2, seed=1)
    assert loader.persistent_workers
    loader.multiprocessing_context = start_method  # spawn also checks that the whole pipeline pickles
    first_epoch = list(loader)
    assert all('flip_x' in batch for batch in first_epoch)
    apply_disable_augmentation_hook(dataset, {'DISABLE_AUG_LIST': ['random_world_flip'], 'NUM_LAST_EPOCHS': 1}, 4, 5)
    second_epoch = list(loader)  # same (persistent) worker processes
    assert all('flip_x' not in batch for batch in second_epoch)
    del loader


def test_eval_sampler_pads_and_strides():
    dataset = list(range(10))
    shards = [list(DistributedEvalSampler(dataset, num_replicas=4, rank=r)) for r in range(4)]
    assert shards == [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]
    assert all(len(DistributedEvalSampler(dataset, 4, r)) == 3 for r in range(4))
    tiny = [list(DistributedEvalSampler([0, 1], num_replicas=5, rank=r)) for r in range(5)]
    assert tiny == [[0], [1], [0], [1], [0]]


def test_distributed_samplers(tmp_path):
    torch.distributed.init_process_group('gloo', init_method=f'file://{tmp_path}/rendezvous', rank=0, world_size=1)
    try:
        _, _, train_sampler = build_dataloader(dataset_config(), CLASSES, 2, dist=True, workers=0)
        _, _, test_sampler = build_dataloader(dataset_config(), CLASSES, 2, dist=True, workers=0, training=False)
    finally:
        torch.distributed.destroy_process_group()
    assert type(train_sampler) is torch.utils.data.distributed.DistributedSampler and train_sampler.shuffle
    assert isinstance(test_sampler, DistributedEvalSampler) and list(test_sampler) == [0, 1, 2, 3]
