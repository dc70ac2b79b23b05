"""Detector builder: registries, module order, model_info threading, geometry without a dataset, CenterPoint I/O.

Tiny stand-in modules for the VFE / 3D backbone / scatter / BEV backbone are registered here only (monkeypatched
into the real registries, or into stand-in registry modules when a registry is not importable).
"""
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from easydict import EasyDict

from pcdet.config import ConfigError, cfg_from_yaml_file
from pcdet.models import build as model_build
from pcdet.models.build import (
    build_network,
    build_network_from_cfg,
    load_data_to_device,
    load_data_to_gpu,
    model_geometry_from_data_config,
)
from pcdet.models.detectors import CenterPoint, ModelGeometry, build_detector
from pcdet.models.detectors import __all__ as detector_registry
from pcdet.models.detectors.detector3d_template import REGISTRY_MODULES, get_registry

ROOT = Path(__file__).resolve().parents[2]
CLASS_NAMES = ['Vehicle', 'Pedestrian', 'Cyclist']
BUILD_LOG = []


class TinyVFE(nn.Module):
    """points (N, 1+C) -> pillar means of a linear embedding: voxel_features (V, F), voxel_coords (V, 4)."""

    def __init__(self, model_cfg, num_point_features, point_cloud_range, voxel_size, grid_size,
                 depth_downsample_factor):
        super().__init__()
        BUILD_LOG.append(('vfe', num_point_features, tuple(np.asarray(grid_size).tolist())))
        self.linear = nn.Linear(num_point_features, model_cfg.NUM_FILTERS)
        self.num_filters = model_cfg.NUM_FILTERS
        self.register_buffer('pc_min', torch.tensor(np.asarray(point_cloud_range[0:3], dtype=np.float32)),
                             persistent=False)
        self.register_buffer('voxel', torch.tensor(np.asarray(voxel_size, dtype=np.float32)), persistent=False)
        self.grid = [int(v) for v in grid_size]

    def get_output_feature_dim(self):
        return self.num_filters

    def forward(self, batch_dict):
        points = batch_dict['points']
        cells = torch.floor((points[:, 1:4] - self.pc_min) / self.voxel).long()
        inside = ((cells >= 0) & (cells < torch.tensor(self.grid))).all(1)
        points, cells = points[inside], cells[inside]
        key = (points[:, 0].long() * self.grid[1] + cells[:, 1]) * self.grid[0] + cells[:, 0]
        unique, inverse = torch.unique(key, return_inverse=True)
        feats = torch.relu(self.linear(points[:, 1:]))
        summed = torch.zeros(len(unique), feats.shape[1]).index_add_(0, inverse, feats)
        counts = torch.zeros(len(unique)).index_add_(0, inverse, torch.ones(len(inverse)))
        b = unique // (self.grid[0] * self.grid[1])
        rest = unique % (self.grid[0] * self.grid[1])
        batch_dict['voxel_features'] = summed / counts[:, None]
        batch_dict['voxel_coords'] = torch.stack((b, torch.zeros_like(b), rest // self.grid[0], rest % self.grid[0]), 1)
        return batch_dict


class TinyBackbone3D(nn.Module):
    def __init__(self, model_cfg, input_channels, grid_size, voxel_size, point_cloud_range):
        super().__init__()
        BUILD_LOG.append(('backbone_3d', input_channels))
        self.linear = nn.Linear(input_channels, model_cfg.D_MODEL)
        self.num_point_features = model_cfg.D_MODEL

    def forward(self, batch_dict):
        batch_dict['voxel_features'] = self.linear(batch_dict['voxel_features'])
        return batch_dict


class TinyScatter(nn.Module):
    def __init__(self, model_cfg, grid_size):
        super().__init__()
        BUILD_LOG.append(('map_to_bev', tuple(np.asarray(grid_size).tolist())))
        self.num_bev_features = model_cfg.NUM_BEV_FEATURES
        self.nx, self.ny = int(grid_size[0]), int(grid_size[1])

    def forward(self, batch_dict):
        feats, coords = batch_dict['voxel_features'], batch_dict['voxel_coords'].long()
        bev = feats.new_zeros(batch_dict['batch_size'], self.num_bev_features, self.ny, self.nx)
        bev[coords[:, 0], :, coords[:, 2], coords[:, 3]] = feats
        batch_dict['spatial_features'] = bev
        return batch_dict


class TinyBEV(nn.Module):
    def __init__(self, model_cfg, input_channels):
        super().__init__()
        BUILD_LOG.append(('backbone_2d', input_channels))
        self.conv = nn.Conv2d(input_channels, model_cfg.OUT_CHANNELS, 3, padding=1)
        self.num_bev_features = model_cfg.OUT_CHANNELS

    def forward(self, batch_dict):
        batch_dict['spatial_features_2d'] = torch.relu(self.conv(batch_dict['spatial_features']))
        return batch_dict


STAND_INS = {'vfe': ('TinyVFE', TinyVFE), 'backbone_3d': ('TinyBackbone3D', TinyBackbone3D),
             'map_to_bev_module': ('TinyScatter', TinyScatter), 'backbone_2d': ('TinyBEV', TinyBEV)}


@pytest.fixture
def stand_ins(monkeypatch):
    """Register the tiny modules under their slots (into stand-in registry modules if a registry is absent)."""
    for slot, (name, cls) in STAND_INS.items():
        try:
            registry = get_registry(slot)
        except (KeyError, ImportError):
            module_name = f'pcdet.models.{REGISTRY_MODULES[slot][1]}'
            fake = types.ModuleType(module_name)
            fake.__all__ = {}
            monkeypatch.setitem(sys.modules, module_name, fake)
            registry = fake.__all__
        monkeypatch.setitem(registry, name, cls)
    BUILD_LOG.clear()
    yield


def data_config():
    return EasyDict({
        'POINT_CLOUD_RANGE': [-6.0, -6.0, -2.0, 6.0, 6.0, 4.0],
        'POINT_FEATURE_ENCODING': {'encoding_type': 'absolute_coordinates_encoding',
                                   'used_feature_list': ['x', 'y', 'z', 'intensity'],
                                   'src_feature_list': ['x', 'y', 'z', 'intensity', 'timestamp']},
        'DATA_PROCESSOR': [{'NAME': 'mask_points_and_boxes_outside_range', 'REMOVE_OUTSIDE_BOXES': True},
                           {'NAME': 'transform_points_to_voxels_placeholder', 'VOXEL_SIZE': [0.5, 0.5, 6.0]}],
    })


def model_config(dense_head=True):
    cfg = {
        'NAME': 'CenterPoint',
        'VFE': {'NAME': 'TinyVFE', 'NUM_FILTERS': 12},
        'BACKBONE_3D': {'NAME': 'TinyBackbone3D', 'D_MODEL': 10},
        'MAP_TO_BEV': {'NAME': 'TinyScatter', 'NUM_BEV_FEATURES': 10},
        'BACKBONE_2D': {'NAME': 'TinyBEV', 'OUT_CHANNELS': 14},
        'POST_PROCESSING': {'RECALL_THRESH_LIST': [0.3, 0.5, 0.7], 'EVAL_METRIC': 'waymo'},
    }
    if dense_head:
        cfg['DENSE_HEAD'] = center_head_config()
    return EasyDict(cfg)


def center_head_config():
    branches = {'center': 2, 'center_z': 1, 'dim': 3, 'rot': 2, 'iou': 1}
    return {
        'NAME': 'CenterHead', 'CLASS_AGNOSTIC': False, 'CLASS_NAMES_EACH_HEAD': [CLASS_NAMES],
        'SHARED_CONV_CHANNEL': 16, 'USE_BIAS_BEFORE_NORM': False, 'NUM_HM_CONV': 2, 'BN_EPS': 1e-3, 'BN_MOM': 0.01,
        'SEPARATE_HEAD_CFG': {'HEAD_ORDER': ['center', 'center_z', 'dim', 'rot'],
                              'HEAD_DICT': {k: {'out_channels': v, 'num_conv': 2} for k, v in branches.items()}},
        'TARGET_ASSIGNER_CONFIG': {'FEATURE_MAP_STRIDE': 1, 'NUM_MAX_OBJS': 50, 'GAUSSIAN_OVERLAP': 0.1,
                                   'MIN_RADIUS': 2},
        'IOU_REG_LOSS': True,
        'LOSS_CONFIG': {'LOSS_WEIGHTS': {'cls_weight': 1.0, 'loc_weight': 2.0, 'code_weights': [1.0] * 8}},
        'POST_PROCESSING': {
            'SCORE_THRESH': 0.1, 'POST_CENTER_LIMIT_RANGE': [-80, -80, -10, 80, 80, 10], 'MAX_OBJ_PER_SAMPLE': 100,
            'USE_IOU_TO_RECTIFY_SCORE': True, 'IOU_RECTIFIER': [0.68, 0.71, 0.65],
            'NMS_CONFIG': {'NMS_TYPE': 'class_specific_nms', 'NMS_THRESH': [0.75, 0.6, 0.55],
                           'NMS_PRE_MAXSIZE': [4096] * 3, 'NMS_POST_MAXSIZE': [500] * 3}},
    }


def full_config():
    return EasyDict({'CLASS_NAMES': CLASS_NAMES, 'DATA_CONFIG': data_config(), 'MODEL': model_config()})


def make_batch(seed=0):
    g = np.random.default_rng(seed)
    points = []
    gt = np.zeros((2, 3, 8), dtype=np.float32)
    gt[0, :2] = [[2.3, -1.7, 0.2, 4.0, 1.8, 1.5, 0.5, 1], [-3.1, 2.4, 0.1, 0.8, 0.7, 1.7, -1.0, 2]]
    gt[1, :1] = [[0.6, 4.4, -0.3, 1.7, 0.6, 1.6, 2.9, 3]]
    for b in range(2):
        xyz = g.uniform([-6, -6, -2], [6, 6, 4], size=(300, 3))
        points.append(np.concatenate([np.full((300, 1), b), xyz, g.uniform(0, 1, (300, 1))], axis=1))
    return {'points': np.concatenate(points).astype(np.float32), 'gt_boxes': gt, 'batch_size': 2,
            'frame_id': np.array(['a', 'b']), 'metadata': np.array([{'token': 'a'}, {'token': 'b'}], dtype=object)}


def test_geometry_from_data_config():
    geometry = model_geometry_from_data_config(data_config())
    assert geometry['grid_size'].tolist() == [24, 24, 1] and geometry['grid_size'].dtype == np.int64
    assert geometry['point_cloud_range'].dtype == np.float32
    assert geometry['voxel_size'] == [0.5, 0.5, 6.0]
    assert geometry['num_point_features'] == 4
    assert geometry['depth_downsample_factor'] is None


def test_geometry_from_the_shipped_nuscenes_config():
    cfg = cfg_from_yaml_file(ROOT / 'tools/cfgs/dataset_configs/nuscenes_dataset.yaml')
    geometry = model_geometry_from_data_config(cfg)
    assert geometry['grid_size'].tolist() == [1024, 1024, 40]
    assert geometry['num_point_features'] == 5


def test_geometry_errors_name_the_missing_key():
    cfg = data_config()
    cfg.DATA_PROCESSOR = cfg.DATA_PROCESSOR[:1]
    with pytest.raises(KeyError, match='VOXEL_SIZE'):
        model_geometry_from_data_config(cfg)
    cfg = data_config()
    del cfg['POINT_CLOUD_RANGE']
    with pytest.raises(KeyError, match='POINT_CLOUD_RANGE'):
        model_geometry_from_data_config(cfg)


def test_build_without_dataset_order_names_and_state_dict_prefixes(stand_ins):
    model = build_network_from_cfg(full_config())
    assert isinstance(model, CenterPoint)
    assert [type(m).__name__ for m in model.module_list] == ['TinyVFE', 'TinyBackbone3D', 'TinyScatter', 'TinyBEV',
                                                             'CenterHead']
    assert model.vfe is model.module_list[0] and model.dense_head is model.module_list[4]
    assert not any(hasattr(model, slot) for slot in ('pfe', 'point_head', 'roi_head'))  # OpenPCDet-only slots
    prefixes = {key.split('.')[0] for key in model.state_dict()}
    assert prefixes == {'global_step', 'vfe', 'backbone_3d', 'backbone_2d', 'dense_head'}  # scatter has no params
    assert 'dense_head.heads_list.0.hm.1.bias' in model.state_dict()
    assert model.global_step.dtype == torch.int64 and model.global_step.tolist() == [0]
    model.update_global_step()
    assert model.global_step.tolist() == [1]
    # model_info_dict threading: each builder got the previous module's output size
    assert BUILD_LOG == [('vfe', 4, (24, 24, 1)), ('backbone_3d', 12), ('map_to_bev', (24, 24, 1)),
                         ('backbone_2d', 10)]
    assert model.dense_head.shared_conv[0].in_channels == 14
    assert model.class_names == CLASS_NAMES and model.mode == 'TRAIN'


def test_build_with_a_dataset_object_is_equivalent(stand_ins):
    geometry = model_geometry_from_data_config(data_config())
    dataset = types.SimpleNamespace(
        class_names=CLASS_NAMES, grid_size=geometry['grid_size'], point_cloud_range=geometry['point_cloud_range'],
        voxel_size=geometry['voxel_size'], depth_downsample_factor=None,
        point_feature_encoder=types.SimpleNamespace(num_point_features=4))
    torch.manual_seed(0)
    a = build_network(model_config(), num_class=3, dataset=dataset)
    assert a.dataset is dataset
    torch.manual_seed(0)
    b = build_network(model_config(), num_class=3, class_names=CLASS_NAMES, **geometry)
    assert isinstance(b.dataset, ModelGeometry)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    # class names default to the flattened CLASS_NAMES_EACH_HEAD
    c = build_network(model_config(), num_class=3, **geometry)
    assert c.class_names == CLASS_NAMES


def test_missing_geometry_is_explained(stand_ins):
    with pytest.raises(ValueError, match='grid_size'):
        build_network(model_config(), num_class=3, class_names=CLASS_NAMES, point_cloud_range=[0] * 6,
                      voxel_size=[1, 1, 1], num_point_features=4)
    with pytest.raises(ValueError, match='num_class=2'):
        build_network(model_config(), num_class=2, class_names=CLASS_NAMES,
                      **model_geometry_from_data_config(data_config()))


def test_unknown_names_list_the_known_ones(stand_ins):
    cfg = full_config()
    cfg.MODEL.VFE.NAME = 'NoSuchVFE'
    with pytest.raises(KeyError, match=r"unknown vfe 'NoSuchVFE'; known: .*TinyVFE"):
        build_network_from_cfg(cfg)
    cfg = full_config()
    cfg.MODEL.DENSE_HEAD.NAME = 'AnchorHeadSingle'
    with pytest.raises(KeyError, match=r"known: \['CenterHead'"):
        build_network_from_cfg(cfg)
    cfg = full_config()
    cfg.MODEL.NAME = 'PointPillar'
    with pytest.raises(KeyError, match=r"unknown detector 'PointPillar'; known: \['CenterPoint'"):
        build_network_from_cfg(cfg)
    for key, name in (('PFE', 'VoxelSetAbstraction'), ('POINT_HEAD', 'PointHeadSimple'), ('ROI_HEAD', 'PVRCNNHead')):
        cfg = full_config()
        cfg.MODEL[key] = {'NAME': name}
        with pytest.raises(ConfigError, match=rf'MODEL.{key}: .*not part of pcdet'):
            build_network_from_cfg(cfg)
    assert set(detector_registry) >= {'CenterPoint', 'Detector3DTemplate'}


def test_openpcdet_only_blocks_in_a_shipped_config():
    """Config validation refuses PFE / POINT_HEAD / ROI_HEAD with the same message as the constructor, and accepts
    (ignores) OpenPCDet's anchor-style MODEL.POST_PROCESSING keys."""
    from pcdet.config_registry import config_errors
    cfg = cfg_from_yaml_file(ROOT / 'tools/cfgs/nuscenes_models/dsvt_tiny_synthetic.yaml')
    assert config_errors(cfg) == []
    cfg.MODEL.POST_PROCESSING.update({'SCORE_THRESH': 0.1, 'OUTPUT_RAW_SCORE': False,
                                      'NMS_CONFIG': {'MULTI_CLASSES_NMS': False, 'NMS_TYPE': 'nms_gpu'}})
    assert config_errors(cfg) == []
    cfg.MODEL.ROI_HEAD = {'NAME': 'PVRCNNHead'}
    errors = config_errors(cfg)
    assert len(errors) == 1 and 'MODEL.ROI_HEAD' in errors[0] and 'not part of pcdet' in errors[0]


def test_training_forward_returns_loss_tb_disp(stand_ins):
    torch.manual_seed(0)
    model = build_network_from_cfg(full_config())
    model.train()
    batch = load_data_to_device(make_batch(), 'cpu')
    ret_dict, tb_dict, disp_dict = model(batch)
    assert set(ret_dict) == {'loss'} and ret_dict['loss'].dim() == 0
    assert tb_dict['loss_rpn'] == pytest.approx(ret_dict['loss'].item())
    assert {'hm_loss_head_0', 'loc_loss_head_0', 'rpn_loss'} <= set(tb_dict)
    assert disp_dict == {}
    ret_dict['loss'].backward()
    assert model.vfe.linear.weight.grad is not None  # gradients reach the first module


def test_eval_forward_returns_predictions_and_recall(stand_ins):
    torch.manual_seed(0)
    model = build_network_from_cfg(full_config())
    model.eval()
    with torch.no_grad():
        pred_dicts, recall_dict = model(load_data_to_device(make_batch(), 'cpu'))
    assert len(pred_dicts) == 2
    for d in pred_dicts:
        assert d['pred_boxes'].shape[1] == 7 and d['pred_labels'].dtype == torch.long
        assert len(d['pred_boxes']) == len(d['pred_scores']) == len(d['pred_labels'])
    assert set(recall_dict) == {'gt', 'roi_0.3', 'roi_0.5', 'roi_0.7', 'rcnn_0.3', 'rcnn_0.5', 'rcnn_0.7'}
    assert recall_dict['gt'] == 3


def test_generate_recall_record_counts_at_each_threshold():
    gt = torch.zeros(1, 4, 8)
    gt[0, 0] = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 1])
    gt[0, 1] = torch.tensor([10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 1])
    gt[0, 2] = torch.tensor([20.0, 5.0, 0.0, 1.0, 1.0, 1.0, 0.0, 2])
    preds = torch.stack([gt[0, 0, :7], gt[0, 1, :7] + torch.tensor([1.0, 0, 0, 0, 0, 0, 0])])  # IoU 1 and 0.6
    recall = CenterPoint.generate_recall_record(preds, {}, 0, {'gt_boxes': gt}, [0.3, 0.5, 0.7])
    assert recall == {'gt': 3, 'roi_0.3': 0, 'rcnn_0.3': 2, 'roi_0.5': 0, 'rcnn_0.5': 2, 'roi_0.7': 0, 'rcnn_0.7': 1}
    recall = CenterPoint.generate_recall_record(preds[:0], recall, 0, {'gt_boxes': gt}, [0.3, 0.5, 0.7])
    assert recall['gt'] == 6 and recall['rcnn_0.3'] == 2
    assert CenterPoint.generate_recall_record(preds, {}, 0, {}, [0.3]) == {}


def test_load_data_to_device():
    batch = make_batch()
    batch['voxel_coords'] = np.array([[0, 0, 1, 2]], dtype=np.int32)
    batch['image_shape'] = np.array([[10, 20]], dtype=np.int64)
    batch['already'] = torch.ones(2)
    out = load_data_to_gpu(batch, device='cpu')
    assert out is batch
    assert out['points'].dtype == torch.float32 and out['voxel_coords'].dtype == torch.float32
    assert out['image_shape'].dtype == torch.int32
    assert isinstance(out['frame_id'], np.ndarray) and isinstance(out['metadata'], np.ndarray)
    assert out['batch_size'] == 2 and torch.equal(out['already'], torch.ones(2))


def test_build_detector_direct_and_registry():
    assert build_detector is model_build.build_detector
    with pytest.raises(KeyError, match='Detector3DTemplate' + '|known'):
        build_detector(EasyDict(NAME='Detector3DTemplate'), 3, None)


def test_builder_imports_no_optional_extras():
    code = ('import sys\n'
            'import pcdet.models.build, pcdet.models.detectors, pcdet.models.dense_heads\n'
            'from pcdet.models.model_utils import model_nms_utils\n'
            'from pcdet.utils import checkpoint, loss_utils\n'
            "heavy = [m for m in ('spconv', 'cumm', 'torch_scatter', 'tensorflow', 'waymo_open_dataset', 'numba',\n"
            "                     'pcdet.models.backbones_3d', 'pcdet.models.backbones_2d') if m in sys.modules]\n"
            "print(','.join(heavy))\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '', f'imported eagerly: {result.stdout.strip()}'


def test_real_dsvt_pillar_centerpoint_builds_trains_and_evaluates(tmp_path):
    """Integration with the registered DSVT modules (a scaled-down DSVT-Pillar config, spec §3.8)."""
    import yaml

    from pcdet.training.checkpointing import checkpoint_state, save_checkpoint
    from pcdet.utils.checkpoint import load_params_from_file
    size = 48
    model_cfg = EasyDict(yaml.safe_load(f"""
        NAME: CenterPoint
        VFE: {{NAME: DynPillarVFE3D, WITH_DISTANCE: False, USE_ABSLOTE_XYZ: True, USE_NORM: True,
               NUM_FILTERS: [32, 32]}}
        BACKBONE_3D:
          NAME: DSVT
          INPUT_LAYER: {{sparse_shape: [{size}, {size}, 1], downsample_stride: [], d_model: [32],
                         set_info: [[36, 2]], window_shape: [[12, 12, 1]], hybrid_factor: [2, 2, 1],
                         shifts_list: [[[0, 0, 0], [6, 6, 0]]], normalize_pos: False}}
          block_name: [DSVTBlock]
          set_info: [[36, 2]]
          d_model: [32]
          nhead: [4]
          dim_feedforward: [64]
          dropout: 0.0
          activation: gelu
          output_shape: [{size}, {size}]
          conv_out_channel: 32
        MAP_TO_BEV: {{NAME: PointPillarScatter3d, INPUT_SHAPE: [{size}, {size}, 1], NUM_BEV_FEATURES: 32}}
        BACKBONE_2D: {{NAME: BaseBEVResBackbone, LAYER_NUMS: [1, 1], LAYER_STRIDES: [1, 2], NUM_FILTERS: [32, 32],
                       UPSAMPLE_STRIDES: [1, 2], NUM_UPSAMPLE_FILTERS: [32, 32]}}
        POST_PROCESSING: {{RECALL_THRESH_LIST: [0.3, 0.5, 0.7], EVAL_METRIC: waymo}}
    """))
    model_cfg.DENSE_HEAD = EasyDict(center_head_config())
    geometry = {'grid_size': [size, size, 1], 'point_cloud_range': [-7.68, -7.68, -2, 7.68, 7.68, 4],
                'voxel_size': [0.32, 0.32, 6], 'num_point_features': 5}
    torch.manual_seed(0)
    model = build_network(model_cfg, 3, class_names=CLASS_NAMES, **geometry)
    prefixes = {key.split('.')[0] for key in model.state_dict()}
    assert prefixes == {'global_step', 'vfe', 'backbone_3d', 'backbone_2d', 'dense_head'}

    g = np.random.default_rng(0)
    points = [np.concatenate([np.full((1500, 1), b), g.uniform([-7.6, -7.6, -2], [7.6, 7.6, 4], (1500, 3)),
                              g.uniform(0, 1, (1500, 2))], 1) for b in range(2)]
    gt = np.zeros((2, 2, 8), np.float32)
    gt[0, 0] = [2.3, -1.7, 0.2, 4, 1.8, 1.5, 0.5, 1]
    gt[1, 0] = [-3, 2, 0, 0.8, 0.7, 1.7, 0, 2]
    batch = load_data_to_device({'points': np.concatenate(points).astype(np.float32), 'gt_boxes': gt,
                                 'batch_size': 2}, 'cpu')
    model.train()
    ret_dict, tb_dict, _ = model(dict(batch))
    ret_dict['loss'].backward()
    assert np.isfinite(tb_dict['loss_rpn'])
    model.eval()
    with torch.no_grad():
        pred_dicts, recall_dict = model(dict(batch))
    assert len(pred_dicts) == 2 and recall_dict['gt'] == 2

    path = save_checkpoint(checkpoint_state(model, None, 1, 1), tmp_path / 'dsvt')
    torch.manual_seed(1)
    fresh = build_network(model_cfg, 3, class_names=CLASS_NAMES, **geometry)
    assert load_params_from_file(fresh, path, strict=True).is_exact
    fresh.eval()
    with torch.no_grad():
        again, _ = fresh(dict(batch))
    for a, b in zip(pred_dicts, again):
        assert torch.equal(a['pred_boxes'], b['pred_boxes']) and torch.equal(a['pred_scores'], b['pred_scores'])
