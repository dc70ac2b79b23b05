"""Detector3DTemplate: a model is an encoder plus a task head, built from config names.

Construction (OpenPCDet, spec §1.7): `build_networks()` walks `module_topology = [vfe, backbone_3d,
map_to_bev_module, backbone_2d, dense_head]` -- the encoder slots, then the task head --, looks each present config
key up in its registry (`__all__` dict of the sub-package), threads a `model_info_dict` through the builders and
`add_module(name, module)` (None when absent), so module names and state-dict prefixes are `vfe.`, `backbone_3d.`,
`map_to_bev_module.`, `backbone_2d.`, `dense_head.` (+ the `global_step` buffer) exactly as upstream. The head owns
its targets, loss and predictions; the detector subclass's `forward` runs the modules and returns the head's loss
(training) or predictions (eval).

OpenPCDet's two-stage / point-based slots (`PFE`, `POINT_HEAD`, `ROI_HEAD`) and its anchor/RoI `post_processing` are
not part of pcdet (no shipped config or module uses them): a config naming one of those slots is refused with a
ConfigError, by config validation and by the constructor. Box recall counters are CenterPoint's
(`centerpoint.generate_recall_record`).

Training hooks: `training_hooks()` returns the pcdet.training.hooks objects the trainer runs for this model (none
here; GPICTURE returns its DGPL gate).

Geometry comes from `dataset` as upstream (`point_feature_encoder.num_point_features`, `grid_size`,
`point_cloud_range`, `voxel_size`, `depth_downsample_factor`, `class_names`) -- or from a `ModelGeometry`, which
quacks like a dataset for this purpose, so a model can be built from a config without building a dataset
(see `pcdet.models.build.build_network`).

Registries are imported lazily, only for the slots a config uses: building a CenterPoint never imports a
registry it does not need, nor any optional extra. An unknown `NAME` raises a KeyError listing the known names.

batch_dict contract: `forward` (in subclasses) passes the batch_dict through `self.module_list` in order; each
module documents the keys it reads and writes (docs/MODELS.md has the table).
"""
import importlib
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from ...config import ConfigError
from ...config_schema import REQUIRED, Ignored, Schema, Select, pick, schema_of
from ...utils.checkpoint import PRETRAINED_ENCODER_SCHEMA

# topology slot -> (config key, registry module (relative to pcdet.models))
REGISTRY_MODULES = {
    'vfe': ('VFE', 'backbones_3d.vfe'),
    'backbone_3d': ('BACKBONE_3D', 'backbones_3d'),
    'map_to_bev_module': ('MAP_TO_BEV', 'backbones_2d.map_to_bev'),
    'backbone_2d': ('BACKBONE_2D', 'backbones_2d'),
    'dense_head': ('DENSE_HEAD', 'dense_heads'),
}
# OpenPCDet's slots that pcdet does not have: refused with this message (validation and construction).
UNSUPPORTED_SLOTS = ('PFE', 'POINT_HEAD', 'ROI_HEAD')


def unsupported_slot_message(cfg_key):
    return (f'MODEL.{cfg_key}: OpenPCDet\'s two-stage / point-based slots (PFE, POINT_HEAD, ROI_HEAD) and their '
            'anchor/RoI post-processing are not part of pcdet; a model here is an encoder (VFE, BACKBONE_3D, '
            'MAP_TO_BEV, BACKBONE_2D) plus a task head (DENSE_HEAD). Remove the block.')


def _refuse_slot(cfg_key):
    def resolve(name):
        raise ConfigError(unsupported_slot_message(cfg_key))
    return resolve


def get_registry(slot):
    """The `__all__` registry dict for a topology slot (`'vfe'`, `'backbone_3d'`, ...), imported on demand."""
    if slot not in REGISTRY_MODULES:
        raise KeyError(f'Unknown module slot {slot!r}; known: {list(REGISTRY_MODULES)}')
    cfg_key, module_name = REGISTRY_MODULES[slot]
    try:
        module = importlib.import_module(f'pcdet.models.{module_name}')
    except ModuleNotFoundError as err:
        parts = f'pcdet.models.{module_name}'.split('.')
        if err.name in {'.'.join(parts[:i]) for i in range(3, len(parts) + 1)}:
            raise KeyError(f'MODEL.{cfg_key}: pcdet has no {module_name} registry (module pcdet.models.{module_name} '
                           f'is not part of this package)') from err
        raise
    return module.__all__


def lookup_module(slot, name):
    """Class registered as `name` for `slot`; KeyError listing the known names otherwise."""
    registry = get_registry(slot)
    if name not in registry:
        cfg_key = REGISTRY_MODULES[slot][0]
        raise KeyError(f'MODEL.{cfg_key}.NAME: unknown {slot} {name!r}; known: {sorted(registry)}')
    return registry[name]


def slot_schema(slot):
    """Schema resolver for `MODEL.<slot key>`: the CONFIG_SCHEMA of the class its NAME picks (lazy import)."""
    def resolve(name):
        cfg_key = REGISTRY_MODULES[slot][0]
        return schema_of(pick(get_registry(slot), name, slot, f'MODEL.{cfg_key}.NAME'))
    return resolve


_ANCHOR_ONLY = Ignored('OpenPCDet anchor/RoI post-processing, not part of pcdet; CenterHead reads '
                       'DENSE_HEAD.POST_PROCESSING')
POST_PROCESSING_SCHEMA = Schema('MODEL.POST_PROCESSING', {
    'RECALL_THRESH_LIST': [0.3, 0.5, 0.7],   # 3D IoU thresholds of the recall counters
    'EVAL_METRIC': None,                     # passed to dataset.evaluation(eval_metric=...) when it takes one
    'SCORE_THRESH': _ANCHOR_ONLY,
    'OUTPUT_RAW_SCORE': _ANCHOR_ONLY,
    'NMS_CONFIG': _ANCHOR_ONLY,
})
# Keys of every DENSE_HEAD that the detector itself reads; each head's schema extends this one.
DENSE_HEAD_BASE_SCHEMA = Schema('MODEL.DENSE_HEAD', {
    'NAME': REQUIRED,
    'CLASS_AGNOSTIC': False,    # one class for the head (num_class = 1)
    'INPUT_FEATURES': None,     # input channels when the module before it does not set num_bev_features
})


class ModelGeometry:
    """What the model builder needs from a dataset, without a dataset (a duck-typed stand-in).

    Attributes mirror `DatasetTemplate`: `class_names`, `grid_size (3,) int64 (nx, ny, nz)`,
    `point_cloud_range (6,) float32`, `voxel_size (3,)`, `depth_downsample_factor`, and
    `point_feature_encoder.num_point_features`.
    """

    def __init__(self, class_names, grid_size, point_cloud_range, voxel_size, num_point_features,
                 depth_downsample_factor=None):
        self.class_names = list(class_names) if class_names is not None else None
        self.grid_size = np.asarray(grid_size, dtype=np.int64)
        self.point_cloud_range = np.asarray(point_cloud_range, dtype=np.float32)
        self.voxel_size = list(voxel_size) if voxel_size is not None else None
        self.depth_downsample_factor = depth_downsample_factor
        self.point_feature_encoder = SimpleNamespace(num_point_features=num_point_features)

    def __repr__(self):
        return (f'ModelGeometry(class_names={self.class_names}, grid_size={self.grid_size.tolist()}, '
                f'point_cloud_range={self.point_cloud_range.tolist()}, voxel_size={self.voxel_size}, '
                f'num_point_features={self.point_feature_encoder.num_point_features})')


class Detector3DTemplate(nn.Module):
    """Base class of the detectors. `dataset` may be a dataset or a `ModelGeometry`."""

    CONFIG_SCHEMA = Schema('MODEL', {
        'NAME': REQUIRED,
        **{cfg_key: Select(slot_schema(slot)) for slot, (cfg_key, _) in REGISTRY_MODULES.items()},
        **{cfg_key: Select(_refuse_slot(cfg_key)) for cfg_key in UNSUPPORTED_SLOTS},
        'POST_PROCESSING': POST_PROCESSING_SCHEMA,
        'PRETRAINED_ENCODER': PRETRAINED_ENCODER_SCHEMA,
    })

    def __init__(self, model_cfg, num_class, dataset):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_class = num_class
        self.dataset = dataset
        self.class_names = list(dataset.class_names) if getattr(dataset, 'class_names', None) is not None else None
        self.register_buffer('global_step', torch.LongTensor(1).zero_())
        for cfg_key in UNSUPPORTED_SLOTS:
            if model_cfg is not None and model_cfg.get(cfg_key) is not None:
                raise ConfigError(unsupported_slot_message(cfg_key))
        self.module_topology = ['vfe', 'backbone_3d', 'map_to_bev_module', 'backbone_2d', 'dense_head']

    @property
    def mode(self):
        return 'TRAIN' if self.training else 'TEST'

    def update_global_step(self):
        self.global_step += 1

    def training_hooks(self):
        """pcdet.training.hooks objects the trainer runs for this model (per-epoch logic); none by default."""
        return []

    # ----------------------------------------------------------------------------------------------------------
    # building
    # ----------------------------------------------------------------------------------------------------------
    def _initial_model_info(self):
        ds = self.dataset
        num_raw = ds.point_feature_encoder.num_point_features
        return {
            'module_list': [],
            'num_rawpoint_features': num_raw,
            'num_point_features': num_raw,
            'grid_size': ds.grid_size,
            'point_cloud_range': ds.point_cloud_range,
            'voxel_size': ds.voxel_size,
            'depth_downsample_factor': getattr(ds, 'depth_downsample_factor', None),
        }

    def build_networks(self):
        """Build every configured slot in topology order; returns `module_list` (the forward order)."""
        model_info_dict = self._initial_model_info()
        for module_name in self.module_topology:
            module, model_info_dict = getattr(self, 'build_%s' % module_name)(model_info_dict=model_info_dict)
            self.add_module(module_name, module)
        return model_info_dict['module_list']

    def build_vfe(self, model_info_dict):
        if self.CONFIG_SCHEMA.get(self.model_cfg, 'VFE') is None:
            return None, model_info_dict
        vfe_module = lookup_module('vfe', self.model_cfg.VFE.NAME)(
            model_cfg=self.model_cfg.VFE,
            num_point_features=model_info_dict['num_rawpoint_features'],
            point_cloud_range=model_info_dict['point_cloud_range'],
            voxel_size=model_info_dict['voxel_size'],
            grid_size=model_info_dict['grid_size'],
            depth_downsample_factor=model_info_dict['depth_downsample_factor'],
        )
        model_info_dict['num_point_features'] = vfe_module.get_output_feature_dim()
        model_info_dict['module_list'].append(vfe_module)
        return vfe_module, model_info_dict

    def build_backbone_3d(self, model_info_dict):
        if self.CONFIG_SCHEMA.get(self.model_cfg, 'BACKBONE_3D') is None:
            return None, model_info_dict
        backbone_3d_module = lookup_module('backbone_3d', self.model_cfg.BACKBONE_3D.NAME)(
            model_cfg=self.model_cfg.BACKBONE_3D,
            input_channels=model_info_dict['num_point_features'],
            grid_size=model_info_dict['grid_size'],
            voxel_size=model_info_dict['voxel_size'],
            point_cloud_range=model_info_dict['point_cloud_range'],
        )
        model_info_dict['module_list'].append(backbone_3d_module)
        model_info_dict['num_point_features'] = backbone_3d_module.num_point_features
        model_info_dict['backbone_channels'] = getattr(backbone_3d_module, 'backbone_channels', None)
        return backbone_3d_module, model_info_dict

    def build_map_to_bev_module(self, model_info_dict):
        if self.CONFIG_SCHEMA.get(self.model_cfg, 'MAP_TO_BEV') is None:
            return None, model_info_dict
        map_to_bev_module = lookup_module('map_to_bev_module', self.model_cfg.MAP_TO_BEV.NAME)(
            model_cfg=self.model_cfg.MAP_TO_BEV,
            grid_size=model_info_dict['grid_size'],
        )
        model_info_dict['module_list'].append(map_to_bev_module)
        model_info_dict['num_bev_features'] = map_to_bev_module.num_bev_features
        return map_to_bev_module, model_info_dict

    def build_backbone_2d(self, model_info_dict):
        if self.CONFIG_SCHEMA.get(self.model_cfg, 'BACKBONE_2D') is None:
            return None, model_info_dict
        backbone_2d_module = lookup_module('backbone_2d', self.model_cfg.BACKBONE_2D.NAME)(
            model_cfg=self.model_cfg.BACKBONE_2D,
            input_channels=model_info_dict.get('num_bev_features', None),
        )
        model_info_dict['module_list'].append(backbone_2d_module)
        model_info_dict['num_bev_features'] = backbone_2d_module.num_bev_features
        return backbone_2d_module, model_info_dict

    def build_dense_head(self, model_info_dict):
        head_cfg = self.CONFIG_SCHEMA.get(self.model_cfg, 'DENSE_HEAD')
        if head_cfg is None:
            return None, model_info_dict
        if 'num_bev_features' in model_info_dict:
            input_channels = model_info_dict['num_bev_features']
        elif DENSE_HEAD_BASE_SCHEMA.get(head_cfg, 'INPUT_FEATURES') is not None:
            input_channels = head_cfg.INPUT_FEATURES
        else:
            raise KeyError('MODEL.DENSE_HEAD: no BEV module sets num_bev_features; add MAP_TO_BEV / BACKBONE_2D or '
                           'DENSE_HEAD.INPUT_FEATURES')
        dense_head_module = lookup_module('dense_head', head_cfg.NAME)(
            model_cfg=head_cfg,
            input_channels=input_channels,
            num_class=self.num_class if not DENSE_HEAD_BASE_SCHEMA.get(head_cfg, 'CLASS_AGNOSTIC') else 1,
            class_names=self.class_names,
            grid_size=model_info_dict['grid_size'],
            point_cloud_range=model_info_dict['point_cloud_range'],
            predict_boxes_when_training=False,  # no second stage consumes training-time boxes
            voxel_size=model_info_dict.get('voxel_size', False),
        )
        model_info_dict['module_list'].append(dense_head_module)
        return dense_head_module, model_info_dict

    def forward(self, **kwargs):
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------------------
    # checkpoints (OpenPCDet method names; the work is done in pcdet.utils.checkpoint)
    # ----------------------------------------------------------------------------------------------------------
    def load_params_from_file(self, filename, logger, to_cpu=False, pre_trained_path=None, strict=False, **kwargs):
        """Load `checkpoint['model_state']` into this model; see `pcdet.utils.checkpoint.load_params_from_file`."""
        from ...utils.checkpoint import load_params_from_file
        return load_params_from_file(self, filename, logger, to_cpu=to_cpu, strict=strict,
                                     pre_trained_path=pre_trained_path, **kwargs)

    def load_params_with_optimizer(self, filename, to_cpu=False, optimizer=None, logger=None):
        """Resume: load weights and optimizer state; returns `(it, epoch)`."""
        from ...utils.checkpoint import load_params_with_optimizer
        return load_params_with_optimizer(self, filename, to_cpu=to_cpu, optimizer=optimizer, logger=logger)

    def _load_state_dict(self, model_state_disk, *, strict=True):
        """Load the entries of `model_state_disk` whose shapes match; returns `(state_dict, update_model_state)`."""
        from ...utils.checkpoint import filter_matching_state
        state_dict = self.state_dict()
        update_model_state, _ = filter_matching_state(state_dict, model_state_disk)
        if strict:
            self.load_state_dict(update_model_state)
        else:
            state_dict.update(update_model_state)
            self.load_state_dict(state_dict)
        return state_dict, update_model_state
