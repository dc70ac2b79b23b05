"""Training-time augmentation queue built from `DATA_CONFIG.DATA_AUGMENTOR` (spec §1.4).

`AUG_CONFIG_LIST` entries `{NAME: ..., <params>}` run in list order, minus the names in `DISABLE_AUG_LIST`:
    gt_sampling               see database_sampler.py (skipped in self-supervised mode, i.e. no class names)
    random_world_flip         ALONG_AXIS_LIST ['x', 'y']: each axis independently with p = 0.5; records flip_x, flip_y
    random_world_rotation     WORLD_ROT_ANGLE a or [lo, hi]: theta ~ U; records noise_rot
    random_world_scaling      WORLD_SCALE_RANGE [lo, hi]: s ~ U (skipped, s = 1, if hi - lo < 1e-3); records noise_scale
    random_world_translation  NOISE_TRANSLATE_STD [sx, sy, sz] (or one value): t ~ N(0, s) per axis;
                              records noise_translate (3,)

data_dict keys
    reads:  points (N, 3 + C), gt_boxes (M, 7|9) or absent (self-supervised), gt_names (M,), gt_boxes_mask (M,)
    writes: points (N', 3 + C) (extra columns untouched), gt_boxes (M', 7|9) with heading wrapped into [-pi, pi) and
            gt_boxes_mask applied (also to gt_names, gt_boxes2d), flip_x/flip_y (bool), noise_rot, noise_scale
            (float), noise_translate (3,) float32; removes gt_boxes_mask and road_plane.

Input arrays are never modified in place. `disable_augmentation(names)` switches queue entries off (or back on)
through a flag tensor in shared memory, so the change also reaches DataLoader workers that were already started
(persistent workers), and the config is never mutated.
"""
from functools import partial

import numpy as np
import torch

from ...config import ConfigError
from ...config_schema import REQUIRED, Schema, SelectList, check_block, pick
from ...utils.common_utils import limit_period
from . import augmentor_utils
from .database_sampler import DataBaseSampler

SECTION = 'DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST'

# The keys of each AUG_CONFIG_LIST entry, by NAME (gt_sampling: DataBaseSampler's); the builders below read them
# through these schemas and the config validator (DATA_AUGMENTOR_SCHEMA) checks entries against the same objects.
ENTRY_SCHEMA = Schema('DATA_AUGMENTOR entry', {'NAME': REQUIRED})
AUGMENTOR_SCHEMAS = {
    'gt_sampling': DataBaseSampler.CONFIG_SCHEMA,
    'random_world_flip': Schema('DATA_AUGMENTOR random_world_flip', {'NAME': REQUIRED, 'ALONG_AXIS_LIST': REQUIRED}),
    'random_world_rotation': Schema('DATA_AUGMENTOR random_world_rotation', {
        'NAME': REQUIRED, 'WORLD_ROT_ANGLE': REQUIRED}),
    'random_world_scaling': Schema('DATA_AUGMENTOR random_world_scaling', {
        'NAME': REQUIRED, 'WORLD_SCALE_RANGE': REQUIRED}),
    'random_world_translation': Schema('DATA_AUGMENTOR random_world_translation', {
        'NAME': REQUIRED, 'NOISE_TRANSLATE_STD': REQUIRED}),
}
DATA_AUGMENTOR_SCHEMA = Schema('DATA_CONFIG.DATA_AUGMENTOR', {
    'DISABLE_AUG_LIST': [],
    'AUG_CONFIG_LIST': SelectList(lambda name: pick(AUGMENTOR_SCHEMAS, name, 'augmentor', 'NAME')),
})


def augmentor_entries(augmentor_configs):
    """(AUG_CONFIG_LIST, DISABLE_AUG_LIST) of a DATA_AUGMENTOR block (None: empty; a bare list is the old-style
    AUG_CONFIG_LIST)."""
    if isinstance(augmentor_configs, (list, tuple)):
        return list(augmentor_configs), []
    return (DATA_AUGMENTOR_SCHEMA.get(augmentor_configs, 'AUG_CONFIG_LIST') or [],
            list(DATA_AUGMENTOR_SCHEMA.get(augmentor_configs, 'DISABLE_AUG_LIST') or []))


class DataAugmentor:
    AUGMENTATIONS = tuple(AUGMENTOR_SCHEMAS)

    def __init__(self, root_path, augmentor_configs, class_names, logger=None):
        self.root_path = root_path
        self.class_names = list(class_names)
        self.logger = logger
        aug_config_list, disabled = augmentor_entries(augmentor_configs)
        for name in disabled:
            self._check_known(name, 'DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST')
        self.data_augmentor_queue = []  # [(name, step)]
        for index, config in enumerate(aug_config_list):
            name = ENTRY_SCHEMA.get(config, 'NAME')
            self._check_known(name, f'{SECTION}[{index}].NAME')
            check_block(config, AUGMENTOR_SCHEMAS[name], f'{SECTION}[{name}]')  # entries named as in the builders
            if name in disabled:
                continue
            if name == 'gt_sampling' and not self.class_names:
                self._log('self-supervised mode (no CLASS_NAMES): gt_sampling skipped')
                continue
            self.data_augmentor_queue.append((name, getattr(self, name)(config)))
        # One flag per queue entry, in shared memory so already-forked workers see changes.
        self._enabled = torch.ones(len(self.data_augmentor_queue), dtype=torch.bool).share_memory_()

    # OpenPCDet configs write DISABLE_AUG_LIST: ['placeholder'] to mean "disable nothing"; any other unknown
    # name is still rejected, so a typo cannot silently leave an augmentation on.
    NO_OP_NAMES = ('placeholder',)

    def _check_known(self, name, where):
        if name not in self.AUGMENTATIONS and name not in self.NO_OP_NAMES:
            raise ConfigError(f'{where}: unknown augmentation {name!r}; known: {list(self.AUGMENTATIONS)}')

    def _log(self, message):
        if self.logger is not None:
            self.logger.info(message)

    @property
    def active_augmentations(self):
        return [name for (name, _), on in zip(self.data_augmentor_queue, self._enabled.tolist()) if on]

    def disable_augmentation(self, disable_aug_list):
        """Switch off the queue entries named in `disable_aug_list` (None: all of them) and on all others; returns the
        names still active."""
        if disable_aug_list is None:
            disable_aug_list = [name for name, _ in self.data_augmentor_queue]
        for name in disable_aug_list:
            self._check_known(name, 'DISABLE_AUG_LIST')
        for index, (name, _) in enumerate(self.data_augmentor_queue):
            self._enabled[index] = name not in disable_aug_list
        return self.active_augmentations

    def forward(self, data_dict):
        for (_, step), on in zip(self.data_augmentor_queue, self._enabled.tolist()):
            if on:
                data_dict = step(data_dict)
        if data_dict.get('gt_boxes') is not None:
            boxes = data_dict['gt_boxes'].copy()
            boxes[:, 6] = limit_period(boxes[:, 6], offset=0.5, period=2 * np.pi)
            data_dict['gt_boxes'] = boxes
        data_dict.pop('road_plane', None)
        mask = data_dict.pop('gt_boxes_mask', None)
        if mask is not None:
            for key in ('gt_boxes', 'gt_names', 'gt_boxes2d'):
                if data_dict.get(key) is not None:
                    data_dict[key] = data_dict[key][mask]
        return data_dict

    __call__ = forward

    # ---- builders: validate the config once and bind it to a module-level step (picklable for spawned workers) --

    def gt_sampling(self, config):
        return DataBaseSampler(self.root_path, config, self.class_names, self.logger)

    def random_world_flip(self, config):
        section = f'{SECTION}[random_world_flip]'
        axes = list(AUGMENTOR_SCHEMAS['random_world_flip'].get(config, 'ALONG_AXIS_LIST'))
        if any(axis not in augmentor_utils.FLIP_AXES for axis in axes):
            raise ConfigError(f'{section}.ALONG_AXIS_LIST: {axes}, allowed: {list(augmentor_utils.FLIP_AXES)}')
        return partial(random_world_flip_step, axes=axes)

    def random_world_rotation(self, config):
        angle = AUGMENTOR_SCHEMAS['random_world_rotation'].get(config, 'WORLD_ROT_ANGLE')
        low, high = (-angle, angle) if np.isscalar(angle) else angle
        return partial(random_world_rotation_step, low=float(low), high=float(high))

    def random_world_scaling(self, config):
        low, high = AUGMENTOR_SCHEMAS['random_world_scaling'].get(config, 'WORLD_SCALE_RANGE')
        return partial(random_world_scaling_step, low=float(low), high=float(high))

    def random_world_translation(self, config):
        section = f'{SECTION}[random_world_translation]'
        given = AUGMENTOR_SCHEMAS['random_world_translation'].get(config, 'NOISE_TRANSLATE_STD')
        std = np.asarray(given, dtype=np.float64).reshape(-1)
        if std.size not in (1, 3):
            raise ConfigError(f'{section}.NOISE_TRANSLATE_STD needs 1 or 3 values, got {given}')
        return partial(random_world_translation_step, std=np.broadcast_to(std, (3,)).copy())


# ---- per-sample steps: draw the random parameter, apply the pure transform, record the parameter -----------------

def _apply_transform(data_dict, transform, parameter):
    points, boxes = transform(data_dict['points'], data_dict.get('gt_boxes'), parameter)
    data_dict['points'] = points
    if boxes is not None:
        data_dict['gt_boxes'] = boxes
    return data_dict


def random_world_flip_step(data_dict, axes):
    for axis in axes:
        enable = bool(np.random.random() < 0.5)
        if enable:
            data_dict = _apply_transform(data_dict, augmentor_utils.flip_points_and_boxes, axis)
        data_dict[f'flip_{axis}'] = enable
    return data_dict


def random_world_rotation_step(data_dict, low, high):
    noise_rot = float(np.random.uniform(low, high))
    data_dict = _apply_transform(data_dict, augmentor_utils.rotate_points_and_boxes, noise_rot)
    data_dict['noise_rot'] = noise_rot
    return data_dict


def random_world_scaling_step(data_dict, low, high):
    if high - low < 1e-3:
        data_dict['noise_scale'] = 1.0
        return data_dict
    noise_scale = float(np.random.uniform(low, high))
    data_dict = _apply_transform(data_dict, augmentor_utils.scale_points_and_boxes, noise_scale)
    data_dict['noise_scale'] = noise_scale
    return data_dict


def random_world_translation_step(data_dict, std):
    noise_translate = np.random.normal(0.0, std).astype(np.float32)
    data_dict = _apply_transform(data_dict, augmentor_utils.translate_points_and_boxes, noise_translate)
    data_dict['noise_translate'] = noise_translate
    return data_dict
