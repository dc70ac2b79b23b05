"""Dataset registry, dataset/dataloader builders and the last-epochs augmentation hook (spec §1.3, §1.10).

Importing this package is cheap: dataset classes are registered by *import path* and imported on first use, so
nuscenes-devkit / TensorFlow are only loaded when their dataset is actually built.

    get_dataset_class(name) -> class           register_dataset(name, cls_or_'module:Attr')
    build_dataset(dataset_cfg, class_names, root_path=None, training=True, logger=None) -> dataset
    build_dataloader(dataset_cfg, class_names, batch_size, dist, root_path=None, workers=4, seed=None, logger=None,
                     training=True, merge_all_iters_to_one_epoch=False, total_epochs=0)
        -> (dataset, dataloader, sampler)   training: batches come from a SeededBatchSampler (sample_rng.py)
    apply_disable_augmentation_hook(dataset, hook_cfg, cur_epoch, total_epochs) -> bool
"""
import importlib
import math
from functools import partial

import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from ..config import ConfigError
from ..config_schema import REQUIRED, Schema, check_block
from ..utils import common_utils
from .dataset import DatasetTemplate
from .sample_rng import SeededBatchSampler

DATASET_REGISTRY = {
    'NuScenesDataset': 'pcdet.datasets.nuscenes.nuscenes_dataset:NuScenesDataset',
    'WaymoDataset': 'pcdet.datasets.waymo.waymo_dataset:WaymoDataset',
}


def register_dataset(name, cls_or_path):
    """Register a dataset class, or a lazy `'package.module:ClassName'` path, under `name` (DATA_CONFIG.DATASET)."""
    DATASET_REGISTRY[name] = cls_or_path
    return cls_or_path


def get_dataset_class(name):
    if name not in DATASET_REGISTRY:
        raise ConfigError(f'DATA_CONFIG.DATASET: unknown dataset {name!r}; known: {sorted(DATASET_REGISTRY)} '
                          '(add your own with pcdet.datasets.register_dataset)')
    entry = DATASET_REGISTRY[name]
    if isinstance(entry, str):
        module_name, _, attr = entry.partition(':')
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ImportError(f'Dataset {name!r}: importing {module_name} failed: {err}') from err
        entry = getattr(module, attr)
        DATASET_REGISTRY[name] = entry
    return entry


def build_dataset(dataset_cfg, class_names, root_path=None, training=True, logger=None):
    dataset_class = get_dataset_class(DatasetTemplate.CONFIG_SCHEMA.get(dataset_cfg, 'DATASET'))
    return dataset_class(dataset_cfg=dataset_cfg, class_names=class_names, root_path=root_path, training=training,
                         logger=logger)


class DistributedEvalSampler(DistributedSampler):
    """Evaluation sharding: no shuffle, indices padded to a multiple of the world size by repeating from the
    start, then strided `indices[rank::world_size]` (so merged results interleave back into dataset order)."""

    def __init__(self, dataset, num_replicas=None, rank=None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = math.ceil(len(self.dataset) / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self):
        indices = list(range(len(self.dataset)))
        if indices:
            indices = (indices * math.ceil(self.total_size / len(indices)))[:self.total_size]
        return iter(indices[self.rank:self.total_size:self.num_replicas])


def build_dataloader(dataset_cfg, class_names, batch_size, dist, root_path=None, workers=4, seed=None, logger=None,
                     training=True, merge_all_iters_to_one_epoch=False, total_epochs=0):
    dataset = build_dataset(dataset_cfg, class_names, root_path=root_path, training=training, logger=logger)
    if merge_all_iters_to_one_epoch:
        dataset.merge_all_iters_to_one_epoch(merge=True, epochs=total_epochs)
    if not dist:
        sampler = None
    elif training:
        sampler = DistributedSampler(dataset)
    else:
        rank, world_size = common_utils.get_dist_info()
        sampler = DistributedEvalSampler(dataset, num_replicas=world_size, rank=rank)
    loader_kwargs = dict(pin_memory=torch.cuda.is_available(), num_workers=workers, collate_fn=dataset.collate_batch,
                         timeout=0, worker_init_fn=partial(common_utils.worker_init_fn, seed=seed),
                         persistent_workers=workers > 0)
    if training:
        # samples are loaded under RNGs seeded per (data seed, epoch, position, index) once the training loop calls
        # set_epoch_seed: exact resumes with any number of (persistent) workers, see sample_rng.py
        batch_sampler = SeededBatchSampler(sampler if sampler is not None else RandomSampler(dataset), batch_size)
        dataloader = DataLoader(dataset, batch_sampler=batch_sampler, **loader_kwargs)
    else:
        dataloader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, sampler=sampler,
                                **loader_kwargs)
    return dataset, dataloader, sampler


DISABLE_AUGMENTATION_HOOK_SCHEMA = Schema('HOOK.DisableAugmentationHook', {
    'DISABLE_AUG_LIST': REQUIRED, 'NUM_LAST_EPOCHS': REQUIRED}, absent='none')
# The top-level HOOK block (read by apply_disable_augmentation_hook below; pcdet.config_registry validates with it).
HOOK_SCHEMA = Schema('HOOK', {'DisableAugmentationHook': DISABLE_AUGMENTATION_HOOK_SCHEMA})


def apply_disable_augmentation_hook(dataset, hook_cfg, cur_epoch, total_epochs):
    """`HOOK.DisableAugmentationHook {DISABLE_AUG_LIST, NUM_LAST_EPOCHS}`: from epoch `total_epochs -
    NUM_LAST_EPOCHS` on (0-based `cur_epoch`), switch the listed augmentations off. Accepts `cfg.HOOK` or the
    inner dict; returns True when augmentation is disabled for `cur_epoch`. Safe to call every epoch."""
    if not hook_cfg:
        return False
    if 'DisableAugmentationHook' in hook_cfg:
        hook = HOOK_SCHEMA.get(hook_cfg, 'DisableAugmentationHook')
        if hook is None:  # `DisableAugmentationHook:` left empty: no hook (the schema reads it as a switch)
            return False
    elif 'DISABLE_AUG_LIST' in hook_cfg:
        hook = hook_cfg
    else:
        return False
    schema = DISABLE_AUGMENTATION_HOOK_SCHEMA
    check_block(hook, schema, 'HOOK.DisableAugmentationHook')
    if cur_epoch < total_epochs - schema.get(hook, 'NUM_LAST_EPOCHS'):
        return False
    dataset.disable_augmentation(schema.get(hook, 'DISABLE_AUG_LIST'))
    return True


__all__ = ['DATASET_REGISTRY', 'HOOK_SCHEMA', 'DatasetTemplate', 'DistributedEvalSampler',
           'apply_disable_augmentation_hook', 'build_dataloader', 'build_dataset', 'get_dataset_class',
           'register_dataset']
