"""Detector3DTemplate: builds the module topology from config names and holds shared post-processing.

Construction (OpenPCDet, spec §1.7): `build_networks()` walks `module_topology = [vfe, backbone_3d,
map_to_bev_module, pfe, backbone_2d, dense_head, point_head, roi_head]`, looks each present config key up in its
registry (`__all__` dict of the sub-package), threads a `model_info_dict` through the builders and
`add_module(name, module)` (None when absent), so state-dict prefixes are `vfe.`, `backbone_3d.`,
`map_to_bev_module.`, `backbone_2d.`, `dense_head.` (+ the `global_step` buffer) exactly as upstream.

Geometry comes from `dataset` as upstream (`point_feature_encoder.num_point_features`, `grid_size`,
`point_cloud_range`, `voxel_size`, `depth_downsample_factor`, `class_names`) -- or from a `ModelGeometry`, which
quacks like a dataset for this purpose, so a model can be built from a config without building a dataset
(see `pcdet.models.build.build_network`).

Registries are imported lazily, only for the slots a config uses: building a CenterPoint never imports a
registry it does not need, nor any optional extra. An unknown `NAME` raises a KeyError listing the known names.

batch_dict contract: `forward` (in subclasses) passes the batch_dict through `self.module_list` in order; each
module documents the keys it reads and writes (docs/MODELS.md has the table). `post_processing` here (anchor /
RoI style) reads `batch_size`, `batch_box_preds (B, N, 7+)` or `(ΣN, 7+)` with `batch_index`,
`batch_cls_preds`, `cls_preds_normalized`, optional `multihead_label_mapping`, `rois`, `has_class_labels`,
`roi_labels` / `batch_pred_labels`, `gt_boxes (B, M, 8|10)`.
"""
import importlib
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from ...config_schema import REQUIRED, Schema, Select, pick, schema_of
from ...utils.checkpoint import PRETRAINED_ENCODER_SCHEMA
from ..model_utils import model_nms_utils

# topology slot -> (config key, registry module (relative to pcdet.models))
REGISTRY_MODULES = {
    'vfe': ('VFE', 'backbones_3d.vfe'),
    'backbone_3d': ('BACKBONE_3D', 'backbones_3d'),
    'map_to_bev_module': ('MAP_TO_BEV', 'backbones_2d.map_to_bev'),
    'pfe': ('PFE', 'backbones_3d.pfe'),
    'backbone_2d': ('BACKBONE_2D', 'backbones_2d'),
    'dense_head': ('DENSE_HEAD', 'dense_heads'),
    'point_head': ('POINT_HEAD', 'dense_heads'),
    'roi_head': ('ROI_HEAD', 'roi_heads'),
}


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


POST_PROCESSING_SCHEMA = Schema('MODEL.POST_PROCESSING', {
    'RECALL_THRESH_LIST': [0.3, 0.5, 0.7],   # 3D IoU thresholds of the recall counters
    'EVAL_METRIC': None,                     # passed to dataset.evaluation(eval_metric=...) when it takes one
    'SCORE_THRESH': 0.1,                     # anchor / RoI post-processing only
    'OUTPUT_RAW_SCORE': False,
    'NMS_CONFIG': model_nms_utils.NMS_CONFIG_SCHEMA,
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
        self.module_topology = [
            'vfe', 'backbone_3d', 'map_to_bev_module', 'pfe',
            'backbone_2d', 'dense_head', 'point_head', 'roi_head',
        ]

    @property
    def mode(self):
        return 'TRAIN' if self.training else 'TEST'

    def update_global_step(self):
        self.global_step += 1

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

    def build_pfe(self, model_info_dict):
        if self.CONFIG_SCHEMA.get(self.model_cfg, 'PFE') is None:
            return None, model_info_dict
        pfe_module = lookup_module('pfe', self.model_cfg.PFE.NAME)(
            model_cfg=self.model_cfg.PFE,
            voxel_size=model_info_dict['voxel_size'],
            point_cloud_range=model_info_dict['point_cloud_range'],
            num_bev_features=model_info_dict['num_bev_features'],
            num_rawpoint_features=model_info_dict['num_rawpoint_features'],
        )
        model_info_dict['module_list'].append(pfe_module)
        model_info_dict['num_point_features'] = pfe_module.num_point_features
        model_info_dict['num_point_features_before_fusion'] = pfe_module.num_point_features_before_fusion
        return pfe_module, model_info_dict

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
            predict_boxes_when_training=bool(self.CONFIG_SCHEMA.get(self.model_cfg, 'ROI_HEAD')),
            voxel_size=model_info_dict.get('voxel_size', False),
        )
        model_info_dict['module_list'].append(dense_head_module)
        return dense_head_module, model_info_dict

    def build_point_head(self, model_info_dict):
        head_cfg = self.CONFIG_SCHEMA.get(self.model_cfg, 'POINT_HEAD')
        if head_cfg is None:
            return None, model_info_dict
        if head_cfg.get('USE_POINT_FEATURES_BEFORE_FUSION', False):
            num_point_features = model_info_dict['num_point_features_before_fusion']
        else:
            num_point_features = model_info_dict['num_point_features']
        point_head_module = lookup_module('point_head', head_cfg.NAME)(
            model_cfg=head_cfg,
            input_channels=num_point_features,
            num_class=self.num_class if not head_cfg.get('CLASS_AGNOSTIC', False) else 1,
            predict_boxes_when_training=bool(self.CONFIG_SCHEMA.get(self.model_cfg, 'ROI_HEAD')),
        )
        model_info_dict['module_list'].append(point_head_module)
        return point_head_module, model_info_dict

    def build_roi_head(self, model_info_dict):
        head_cfg = self.CONFIG_SCHEMA.get(self.model_cfg, 'ROI_HEAD')
        if head_cfg is None:
            return None, model_info_dict
        roi_head_module = lookup_module('roi_head', head_cfg.NAME)(
            model_cfg=head_cfg,
            input_channels=model_info_dict['num_point_features'],
            backbone_channels=model_info_dict.get('backbone_channels', None),
            point_cloud_range=model_info_dict['point_cloud_range'],
            voxel_size=model_info_dict['voxel_size'],
            num_class=self.num_class if not head_cfg.get('CLASS_AGNOSTIC', False) else 1,
        )
        model_info_dict['module_list'].append(roi_head_module)
        return roi_head_module, model_info_dict

    def forward(self, **kwargs):
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------------------
    # post-processing (anchor / RoI heads); CenterPoint overrides it
    # ----------------------------------------------------------------------------------------------------------
    def post_processing(self, batch_dict):
        """NMS on `batch_box_preds` / `batch_cls_preds` per sample (OpenPCDet semantics).

        Returns:
            pred_dicts: list (B) of `pred_boxes (K, 7+)`, `pred_scores (K,)`, `pred_labels (K,)` 1-based.
            recall_dict: see `generate_recall_record`.
        """
        post_process_cfg = self.CONFIG_SCHEMA.get(self.model_cfg, 'POST_PROCESSING')
        batch_size = batch_dict['batch_size']
        recall_dict = {}
        pred_dicts = []
        for index in range(batch_size):
            if batch_dict.get('batch_index', None) is not None:
                batch_mask = batch_dict['batch_index'] == index
            else:
                batch_mask = index
            box_preds = batch_dict['batch_box_preds'][batch_mask]
            src_box_preds = box_preds

            if not isinstance(batch_dict['batch_cls_preds'], list):
                cls_preds = batch_dict['batch_cls_preds'][batch_mask]
                src_cls_preds = cls_preds
                if cls_preds.shape[1] not in (1, self.num_class):
                    raise ValueError(f'batch_cls_preds has {cls_preds.shape[1]} columns, '
                                     f'expected 1 or {self.num_class}')
                if not batch_dict['cls_preds_normalized']:
                    cls_preds = torch.sigmoid(cls_preds)
            else:
                cls_preds = [x[batch_mask] for x in batch_dict['batch_cls_preds']]
                src_cls_preds = cls_preds
                if not batch_dict['cls_preds_normalized']:
                    cls_preds = [torch.sigmoid(x) for x in cls_preds]

            if model_nms_utils.NMS_CONFIG_SCHEMA.get(post_process_cfg.NMS_CONFIG, 'MULTI_CLASSES_NMS'):
                if not isinstance(cls_preds, list):
                    cls_preds = [cls_preds]
                    # upstream used arange(1, num_class), one label short; labels are 1-based.
                    multihead_label_mapping = [torch.arange(1, self.num_class + 1, device=cls_preds[0].device)]
                else:
                    multihead_label_mapping = batch_dict['multihead_label_mapping']
                cur_start_idx = 0
                pred_scores, pred_labels, pred_boxes = [], [], []
                for cur_cls_preds, cur_label_mapping in zip(cls_preds, multihead_label_mapping):
                    cur_box_preds = box_preds[cur_start_idx: cur_start_idx + cur_cls_preds.shape[0]]
                    cur_scores, cur_labels, cur_boxes = model_nms_utils.multi_classes_nms(
                        cls_scores=cur_cls_preds, box_preds=cur_box_preds,
                        nms_config=post_process_cfg.NMS_CONFIG, score_thresh=post_process_cfg.SCORE_THRESH)
                    pred_scores.append(cur_scores)
                    pred_labels.append(cur_label_mapping.to(cur_labels.device)[cur_labels])
                    pred_boxes.append(cur_boxes)
                    cur_start_idx += cur_cls_preds.shape[0]
                final_scores = torch.cat(pred_scores, dim=0)
                final_labels = torch.cat(pred_labels, dim=0)
                final_boxes = torch.cat(pred_boxes, dim=0)
            else:
                cls_preds, label_preds = torch.max(cls_preds, dim=-1)
                if batch_dict.get('has_class_labels', False):
                    label_key = 'roi_labels' if 'roi_labels' in batch_dict else 'batch_pred_labels'
                    label_preds = batch_dict[label_key][index]
                else:
                    label_preds = label_preds + 1
                selected, selected_scores = model_nms_utils.class_agnostic_nms(
                    box_scores=cls_preds, box_preds=box_preds, nms_config=post_process_cfg.NMS_CONFIG,
                    score_thresh=post_process_cfg.SCORE_THRESH)
                if POST_PROCESSING_SCHEMA.get(post_process_cfg, 'OUTPUT_RAW_SCORE'):
                    max_cls_preds, _ = torch.max(src_cls_preds, dim=-1)
                    selected_scores = max_cls_preds[selected]
                final_scores = selected_scores
                final_labels = label_preds[selected]
                final_boxes = box_preds[selected]

            recall_dict = self.generate_recall_record(
                box_preds=final_boxes if 'rois' not in batch_dict else src_box_preds,
                recall_dict=recall_dict, batch_index=index, data_dict=batch_dict,
                thresh_list=POST_PROCESSING_SCHEMA.get(post_process_cfg, 'RECALL_THRESH_LIST'))
            pred_dicts.append({'pred_boxes': final_boxes, 'pred_scores': final_scores, 'pred_labels': final_labels})
        return pred_dicts, recall_dict

    @staticmethod
    def generate_recall_record(box_preds, recall_dict, batch_index, data_dict=None, thresh_list=None):
        """Accumulate recall counters for one sample.

        Strips trailing all-zero GT rows, computes `boxes_iou3d_gpu(box_preds, gt)` and counts, per threshold t in
        `thresh_list`, the GT boxes whose best IoU is `> t`: `recall_dict {'gt', 'roi_<t>', 'rcnn_<t>'}` (ints).
        `roi_<t>` uses `data_dict['rois']` when present. No-op without `gt_boxes`.
        """
        if 'gt_boxes' not in data_dict:
            return recall_dict
        from ...ops.iou3d_nms import iou3d_nms_utils

        rois = data_dict['rois'][batch_index] if 'rois' in data_dict else None
        gt_boxes = data_dict['gt_boxes'][batch_index]
        if len(recall_dict) == 0:
            recall_dict = {'gt': 0}
            for cur_thresh in thresh_list:
                recall_dict['roi_%s' % str(cur_thresh)] = 0
                recall_dict['rcnn_%s' % str(cur_thresh)] = 0

        cur_gt = gt_boxes
        k = cur_gt.__len__() - 1
        while k >= 0 and cur_gt[k].sum() == 0:
            k -= 1
        cur_gt = cur_gt[:k + 1]

        if cur_gt.shape[0] > 0:
            if box_preds.shape[0] > 0:
                iou3d_rcnn = iou3d_nms_utils.boxes_iou3d_gpu(box_preds[:, 0:7], cur_gt[:, 0:7])
            else:
                iou3d_rcnn = torch.zeros((0, cur_gt.shape[0]))
            if rois is not None:
                iou3d_roi = iou3d_nms_utils.boxes_iou3d_gpu(rois[:, 0:7], cur_gt[:, 0:7])
            for cur_thresh in thresh_list:
                if iou3d_rcnn.shape[0] > 0:
                    recall_dict['rcnn_%s' % str(cur_thresh)] += (iou3d_rcnn.max(dim=0)[0] > cur_thresh).sum().item()
                if rois is not None:
                    recall_dict['roi_%s' % str(cur_thresh)] += (iou3d_roi.max(dim=0)[0] > cur_thresh).sum().item()
            recall_dict['gt'] += cur_gt.shape[0]
        return recall_dict

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
