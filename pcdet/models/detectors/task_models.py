"""Dense-prediction models on a DSVT encoder: `Segmentor3D` (nuScenes-lidarseg, D5) and `OccupancyNet`
(OpenOccupancy, D6).

Both run `vfe` (dynamic VFE) -> `backbone_3d` (DSVT) -> `dense_head` (`SegHead` / `OccHead`), with OpenPCDet's
state-dict prefixes `vfe.`, `backbone_3d.`, `dense_head.`, so a GPICTURE-pretrained encoder loads with
`PRETRAINED_ENCODER: {PREFIXES: ['vfe.', 'backbone_3d.'], MIN_COVERAGE: 1.0}`. The head owns its targets, loss and
predictions; there is no box post-processing. The head is built with the encoder's per-stage channels and grid
shapes (`encoder_stages`: list of {channels, shape [nx, ny, nz], stride [sx, sy, sz] (input voxels per stage voxel)}
from the DSVT) and the raw point feature count.

`forward(batch_dict)`:
    training -> `({'loss': 0-d tensor}, tb_dict (the head's terms), {})`
    eval     -> `(pred_dicts, {})`: Segmentor3D `[{'point_seg_preds': (N_b,) int64}]`, OccupancyNet
                `[{'occ_pred': (512, 512, 40) uint8}]` (the head's `get_predictions`, see its docstring).
batch_dict keys: those of the VFE, DSVT and the head (`point_seg_labels` / `gt_occupancy` in training).
"""
from ...config_schema import Select
from .detector3d_template import Detector3DTemplate, lookup_module, slot_schema

_REQUIRED_SLOTS = (('vfe', 'VFE'), ('backbone_3d', 'BACKBONE_3D'), ('dense_head', 'DENSE_HEAD'))


class DenseTaskModel(Detector3DTemplate):
    """Shared body of the segmentation / occupancy models; subclasses name the head classes they take in
    `HEAD_NAMES`."""

    HEAD_NAMES = ()
    CONFIG_SCHEMA = Detector3DTemplate.CONFIG_SCHEMA.extend('MODEL (dense task model)', {
        key: Select(slot_schema(slot), required=True) for slot, key in _REQUIRED_SLOTS})

    def __init__(self, model_cfg, num_class, dataset):
        super().__init__(model_cfg=model_cfg, num_class=num_class, dataset=dataset)
        for _, key in _REQUIRED_SLOTS:
            if self.CONFIG_SCHEMA.get(model_cfg, key) is None:
                raise KeyError(f'MODEL.{key} is required for {type(self).__name__}')
        head_name = self.CONFIG_SCHEMA.get(model_cfg, 'DENSE_HEAD').NAME
        if head_name not in self.HEAD_NAMES:
            raise ValueError(f'MODEL.DENSE_HEAD.NAME {head_name!r}: {type(self).__name__} takes '
                             f'{" or ".join(self.HEAD_NAMES)}')
        self.module_list = self.build_networks()

    def build_dense_head(self, model_info_dict):
        backbone = self.backbone_3d
        if not hasattr(backbone, 'sparse_shape_list') or not hasattr(backbone, 'd_model'):
            raise ValueError(f'{type(self).__name__}: MODEL.BACKBONE_3D must be a DSVT (per-stage grids and widths '
                             f'are needed by the head), got {type(backbone).__name__}')
        stages = [{'channels': int(c), 'shape': [int(v) for v in shape], 'stride': [int(v) for v in stride]}
                  for c, shape, stride in zip(backbone.d_model, backbone.sparse_shape_list, backbone.stage_strides)]
        head_cfg = self.CONFIG_SCHEMA.get(self.model_cfg, 'DENSE_HEAD')
        head = lookup_module('dense_head', head_cfg.NAME)(
            model_cfg=head_cfg, input_channels=model_info_dict['num_point_features'], num_class=self.num_class,
            class_names=self.class_names, grid_size=model_info_dict['grid_size'],
            point_cloud_range=model_info_dict['point_cloud_range'], voxel_size=model_info_dict['voxel_size'],
            encoder_stages=stages, num_raw_point_features=model_info_dict['num_rawpoint_features'])
        model_info_dict['module_list'].append(head)
        return head, model_info_dict

    def forward(self, batch_dict):
        for cur_module in self.module_list:
            batch_dict = cur_module(batch_dict)
        if self.training:
            loss, tb_dict = self.dense_head.get_loss()
            return {'loss': loss}, tb_dict, {}
        return self.dense_head.get_predictions(batch_dict), {}


class Segmentor3D(DenseTaskModel):
    """Per-point semantic segmentation (`SegHead`)."""

    HEAD_NAMES = ('SegHead',)
    CONFIG_SCHEMA = DenseTaskModel.CONFIG_SCHEMA.extend('MODEL (Segmentor3D)', {})


class OccupancyNet(DenseTaskModel):
    """Semantic occupancy on a coarse 3-D grid, evaluated at the GT resolution (`OccHead` or `GaussianOccHead`)."""

    HEAD_NAMES = ('OccHead', 'GaussianOccHead')  # dense or Gaussian read-out, same loss and predictions
    CONFIG_SCHEMA = DenseTaskModel.CONFIG_SCHEMA.extend('MODEL (OccupancyNet)', {})
