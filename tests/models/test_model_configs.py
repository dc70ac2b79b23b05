"""Shipped model configs: every `tools/cfgs/*_models/*.yaml` loads and builds without a dataset; the DSVT Waymo
(pillar, voxel) and nuScenes configs run an eval forward on a full-size synthetic frame; wrong shapes are rejected.

The frames are synthetic but sized like the real ones (spec §3.10 / bench/dsvt.py): Waymo ~170k points over
+-75 m (ground rings thinning with range, walls, vehicle / pedestrian / cyclist surfaces) giving ~26k pillars at
0.32 m; nuScenes 10 sweeps ~265k points over +-54 m giving ~22k pillars at 0.3 m. Weights are random (seeded), so
only shapes, value ranges and the output contract are checked. With one torch thread (as tools/scripts/run_tests.sh
runs) on a shared 2-core machine the forwards take about 20 s (Waymo pillar), 26 s (Waymo voxel) and 10 s
(nuScenes), the whole file about 60 s; the dense 468 x 468 BEV backbone + head is most of the Waymo time.
"""
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdet.config import cfg_from_list, cfg_from_yaml_file
from pcdet.datasets.processor import DataProcessor, PointFeatureEncoder
from pcdet.models.backbones_3d.dsvt import ShapeConfigError
from pcdet.models.build import build_network_from_cfg, load_data_to_device, model_geometry_from_data_config

ROOT = Path(__file__).resolve().parents[2]
CFG_ROOT = ROOT / 'tools' / 'cfgs'
MODEL_CONFIGS = sorted(CFG_ROOT.glob('*_models/*.yaml'))
WAYMO_PILLAR = CFG_ROOT / 'waymo_models' / 'dsvt_pillar.yaml'
WAYMO_VOXEL = CFG_ROOT / 'waymo_models' / 'dsvt_voxel.yaml'
NUSCENES_PILLAR = CFG_ROOT / 'nuscenes_models' / 'dsvt_pillar_centerpoint.yaml'
NUSCENES_CLASSES = ['car', 'truck', 'construction_vehicle', 'bus', 'trailer', 'barrier', 'motorcycle', 'bicycle',
                    'pedestrian', 'traffic_cone']

_MODELS = {}


def load_cfg(path):
    return cfg_from_yaml_file(path)


def built_model(path):
    """One seeded model per config for the whole module (building is cheap, but the forwards reuse it)."""
    if path not in _MODELS:
        torch.manual_seed(0)
        _MODELS[path] = build_network_from_cfg(load_cfg(path))
    return _MODELS[path]


def synthetic_lidar_frame(seed=0, max_range=75.0, num_rings=40, points_per_ring=3200, num_walls=30,
                          wall_points=15000, num_objects=60, ground_z=0.0, num_features=5):
    """(N, num_features) float32 [x, y, z, f3, f4, ...]: a spinning-LiDAR-like frame.

    Ground rings at geometrically spaced radii 3 m .. max_range (dense near the sensor, one ring of cells far
    away), vertical wall segments beyond 20 m, and box surfaces of vehicles / pedestrians / cyclists with point
    counts falling with range. Extra feature columns are uniform in [0, 1).
    """
    rng = np.random.default_rng(seed)
    radii = 3.0 * (max_range / 3.0) ** (np.arange(num_rings) / (num_rings - 1))
    phi = rng.uniform(-np.pi, np.pi, (num_rings, points_per_ring))
    r = radii[:, None] + rng.normal(0, 0.05, phi.shape)
    parts = [np.stack([r * np.cos(phi), r * np.sin(phi), ground_z + rng.normal(0, 0.03, phi.shape)], -1).reshape(-1, 3)]

    start_r, start_a = rng.uniform(20, max_range - 5, num_walls), rng.uniform(-np.pi, np.pi, num_walls)
    starts = np.stack([start_r * np.cos(start_a), start_r * np.sin(start_a)], 1)
    dirs = rng.normal(size=(num_walls, 2))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    t = rng.uniform(0, 15, (num_walls, wall_points // num_walls))
    wall_xy = (starts[:, None] + t[..., None] * dirs[:, None]).reshape(-1, 2)
    parts.append(np.concatenate([wall_xy, ground_z + rng.uniform(0, 3.8, (len(wall_xy), 1))], 1))

    sizes = np.array([[4.5, 2.0, 1.6], [0.8, 0.8, 1.8], [1.8, 0.8, 1.7]])
    classes = rng.choice(3, num_objects, p=[0.6, 0.25, 0.15])
    centre_r, centre_a = rng.uniform(5, max_range * 0.8, num_objects), rng.uniform(-np.pi, np.pi, num_objects)
    for cls, cr, ca, heading in zip(classes, centre_r, centre_a, rng.uniform(-np.pi, np.pi, num_objects)):
        size = sizes[cls]
        n = int(np.clip(4000.0 / cr * size[0], 30, 800))
        local = rng.uniform(-0.5, 0.5, (n, 3)) * size
        on_x_face = rng.integers(0, 2, n).astype(bool)
        local[on_x_face, 0] = np.sign(local[on_x_face, 0]) * size[0] / 2
        local[~on_x_face, 1] = np.sign(local[~on_x_face, 1]) * size[1] / 2
        c, s = np.cos(heading), np.sin(heading)
        parts.append(np.stack([c * local[:, 0] - s * local[:, 1] + cr * np.cos(ca),
                               s * local[:, 0] + c * local[:, 1] + cr * np.sin(ca),
                               local[:, 2] + ground_z + size[2] / 2], 1))
    xyz = np.concatenate(parts).astype(np.float32)
    features = rng.uniform(0, 1, (len(xyz), num_features - 3)).astype(np.float32)
    return np.concatenate([xyz, features], 1)


def waymo_frame():
    """~170k points, [x, y, z, intensity, elongation] (tanh-range values), vehicle frame (ground at z = 0)."""
    return synthetic_lidar_frame(seed=0)


def nuscenes_frame():
    """~265k points of 10 merged sweeps, [x, y, z, intensity, timestamp], LiDAR frame (ground at z = -1.8)."""
    points = synthetic_lidar_frame(seed=1, max_range=54.0, num_rings=32, points_per_ring=7000, ground_z=-1.8)
    points[:, 3] *= 255.0
    points[:, 4] = np.random.default_rng(1).integers(0, 10, len(points)) * 0.05  # sweep time lags
    return points


def test_the_configs_are_shipped():
    names = {p.relative_to(CFG_ROOT).as_posix() for p in MODEL_CONFIGS}
    assert {'waymo_models/dsvt_pillar.yaml', 'waymo_models/dsvt_voxel.yaml',
            'nuscenes_models/dsvt_pillar_centerpoint.yaml'} <= names


@pytest.mark.parametrize('cfg_file', MODEL_CONFIGS, ids=lambda p: p.relative_to(CFG_ROOT).as_posix())
def test_model_config_loads_and_builds_without_a_dataset(cfg_file):
    cfg = load_cfg(cfg_file)
    assert {'CLASS_NAMES', 'DATA_CONFIG', 'MODEL'} <= set(cfg), f'{cfg_file} is not an experiment config'
    model = built_model(cfg_file)
    assert model.class_names == list(cfg.CLASS_NAMES)
    assert model.dense_head is not None and 'dense_head' in {key.split('.')[0] for key in model.state_dict()}
    assert 'OPTIMIZATION' in cfg, 'shipped model configs carry their training schedule'
    # The dataset-side preprocessing builds from the same DATA_CONFIG (train and test mode) and agrees with the
    # model geometry.
    data_cfg = cfg.DATA_CONFIG
    geometry = model_geometry_from_data_config(data_cfg)
    encoder = PointFeatureEncoder(data_cfg.POINT_FEATURE_ENCODING, geometry['point_cloud_range'])
    for training in (False, True):
        processor = DataProcessor(data_cfg.DATA_PROCESSOR, geometry['point_cloud_range'], training=training,
                                  num_point_features=encoder.num_point_features)
        assert processor.grid_size.tolist() == geometry['grid_size'].tolist() == model.dataset.grid_size.tolist()
    assert encoder.num_point_features == model.dataset.point_feature_encoder.num_point_features


def test_waymo_dataset_config_has_the_spec_values():
    cfg = load_cfg(CFG_ROOT / 'dataset_configs' / 'waymo_dataset.yaml')
    assert cfg.DATASET == 'WaymoDataset' and cfg.PROCESSED_DATA_TAG == 'waymo_processed_data_v0_5_0'
    assert cfg.POINT_CLOUD_RANGE == [-75.2, -75.2, -2, 75.2, 75.2, 4]
    assert cfg.SAMPLED_INTERVAL == {'train': 5, 'test': 1} and cfg.DISABLE_NLZ_FLAG_ON_POINTS is True
    assert cfg.FILTER_EMPTY_BOXES_FOR_TRAIN is True
    assert [aug.NAME for aug in cfg.DATA_AUGMENTOR.AUG_CONFIG_LIST] == \
        ['gt_sampling', 'random_world_flip', 'random_world_rotation', 'random_world_scaling']
    sampler = cfg.DATA_AUGMENTOR.AUG_CONFIG_LIST[0]
    assert sampler.SAMPLE_GROUPS == ['Vehicle:15', 'Pedestrian:10', 'Cyclist:10'] and sampler.NUM_POINT_FEATURES == 5
    assert sampler.BACKUP_DB_INFO.NUM_POINT_FEATURES == 6
    geometry = model_geometry_from_data_config(cfg)
    assert geometry['grid_size'].tolist() == [1504, 1504, 40] and geometry['num_point_features'] == 5
    assert list(cfg.POINT_FEATURE_ENCODING.src_feature_list) == ['x', 'y', 'z', 'intensity', 'elongation']


def test_waymo_configs_have_the_spec_hyper_parameters():
    pillar, voxel = load_cfg(WAYMO_PILLAR), load_cfg(WAYMO_VOXEL)
    for cfg in (pillar, voxel):
        assert cfg.DATA_CONFIG.DATASET == 'WaymoDataset'
        assert cfg.DATA_CONFIG.POINT_CLOUD_RANGE == [-74.88, -74.88, -2, 74.88, 74.88, 4.0]
        assert list(cfg.DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list) == \
            ['x', 'y', 'z', 'intensity', 'elongation']
        assert cfg.CLASS_NAMES == ['Vehicle', 'Pedestrian', 'Cyclist']
        assert cfg.MODEL.DENSE_HEAD.POST_PROCESSING.NMS_CONFIG.NMS_THRESH == [0.75, 0.6, 0.55]
        assert cfg.OPTIMIZATION.LR == 0.003 and cfg.OPTIMIZATION.NUM_EPOCHS == 24
    backbone = built_model(WAYMO_PILLAR).backbone_3d
    assert backbone.sparse_shape_list == [[468, 468, 1]] and backbone.set_info == [[36, 4]]
    assert backbone.shapes.window_shapes == [[(12, 12, 1), (24, 24, 1)]]
    backbone = built_model(WAYMO_VOXEL).backbone_3d
    assert backbone.sparse_shape_list == [[468, 468, 32], [468, 468, 8], [468, 468, 2], [468, 468, 1]]
    assert backbone.set_info == [[48, 1]] * 4 and backbone.reduction_type == 'attention'
    assert built_model(WAYMO_VOXEL).backbone_2d.num_bev_features == 384


def test_nuscenes_config_has_the_dsvt_nuscenes_backbone_and_a_centerpoint_head():
    cfg = load_cfg(NUSCENES_PILLAR)
    assert cfg.CLASS_NAMES == NUSCENES_CLASSES
    assert cfg.DATA_CONFIG.DATASET == 'NuScenesDataset' and cfg.DATA_CONFIG.MAX_SWEEPS == 10
    assert cfg.DATA_CONFIG.POINT_CLOUD_RANGE == [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]
    model = built_model(NUSCENES_PILLAR)
    backbone = model.backbone_3d
    assert backbone.sparse_shape_list == [[360, 360, 1]] and backbone.d_model == [128]
    assert backbone.set_info == [[90, 4]] and backbone.shapes.window_shapes == [[(30, 30, 1), (30, 30, 1)]]
    assert backbone.shapes.shifts == [[(0, 0, 0), (15, 15, 0)]]
    head = model.dense_head
    assert head.class_names_each_head == [['car'], ['truck', 'construction_vehicle'], ['bus', 'trailer'],
                                          ['barrier'], ['motorcycle', 'bicycle'], ['pedestrian', 'traffic_cone']]
    assert head.code_size == 10 and head.feature_map_stride == 2


def test_compat_switches_default_off_and_can_be_set_from_the_command_line():
    assert built_model(WAYMO_VOXEL).backbone_3d.compat == {'POS_EMBED_SHIFT_BUG': False,
                                                           'POOL_UNMASKED_EMPTY_SLOTS': False}
    cfg = load_cfg(WAYMO_VOXEL)
    cfg_from_list(['MODEL.BACKBONE_3D.COMPAT.POS_EMBED_SHIFT_BUG', 'True',
                   'MODEL.BACKBONE_3D.COMPAT.POOL_UNMASKED_EMPTY_SLOTS', 'True'], cfg)
    assert build_network_from_cfg(cfg).backbone_3d.compat == {'POS_EMBED_SHIFT_BUG': True,
                                                              'POOL_UNMASKED_EMPTY_SLOTS': True}
    for path in (WAYMO_PILLAR, NUSCENES_PILLAR):
        cfg = load_cfg(path)
        cfg_from_list(['MODEL.BACKBONE_3D.COMPAT.POS_EMBED_SHIFT_BUG', 'True'], cfg)
        assert build_network_from_cfg(cfg).backbone_3d.compat['POS_EMBED_SHIFT_BUG'] is True


def test_derived_shapes_may_be_left_out():
    """sparse_shape / output_shape / INPUT_SHAPE are derived: a config without them builds the same model."""
    cfg = load_cfg(NUSCENES_PILLAR)
    del cfg.MODEL.BACKBONE_3D.INPUT_LAYER['sparse_shape'], cfg.MODEL.BACKBONE_3D['output_shape']
    del cfg.MODEL.MAP_TO_BEV['INPUT_SHAPE']
    model = build_network_from_cfg(cfg)
    reference = built_model(NUSCENES_PILLAR)
    assert model.backbone_3d.sparse_shape_list == reference.backbone_3d.sparse_shape_list
    assert (model.map_to_bev_module.nx, model.map_to_bev_module.ny, model.map_to_bev_module.nz) == (360, 360, 1)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize('edit, expected', [
    (lambda cfg: cfg.MODEL.MAP_TO_BEV.__setitem__('INPUT_SHAPE', [468, 468, 1]),
     r'MAP_TO_BEV\.INPUT_SHAPE \[468, 468, 1\] disagrees with grid_size \(360, 360, 1\)'),
    (lambda cfg: cfg.MODEL.BACKBONE_3D.INPUT_LAYER.__setitem__('sparse_shape', [468, 468, 1]),
     r'sparse_shape \[468, 468, 1\] disagrees with grid_size \(360, 360, 1\).*should be \[360, 360, 1\]'),
    (lambda cfg: cfg.MODEL.BACKBONE_3D.__setitem__('output_shape', [468, 468]),
     r'output_shape \[468, 468\] disagrees with the last DSVT stage grid \(360, 360, 1\)'),
    (lambda cfg: cfg.DATA_CONFIG.DATA_PROCESSOR[-1].__setitem__('VOXEL_SIZE', [0.4, 0.4, 8.0]),
     r'sparse_shape \[360, 360, 1\] disagrees with grid_size \(270, 270, 1\)'),
    (lambda cfg: cfg.MODEL.BACKBONE_3D.INPUT_LAYER.__setitem__('shifts_list', [[[0, 0, 0], [45, 45, 0]]]),
     r'shifts_list\[0\]\[1\] \[45, 45, 0\] exceeds its window \[30, 30, 1\]'),
], ids=['scatter_INPUT_SHAPE', 'sparse_shape', 'output_shape', 'voxel_size_vs_sparse_shape', 'shift_exceeds_window'])
def test_inconsistent_grid_and_window_shapes_fail_naming_the_values(edit, expected):
    cfg = load_cfg(NUSCENES_PILLAR)
    edit(cfg)
    with pytest.raises(ShapeConfigError, match=expected):
        build_network_from_cfg(cfg)


# ---- full-size forward passes -------------------------------------------------------------------------------------

def run_eval_forward(cfg_file, points):
    """Range mask as the dataset does (x, y), one-sample batch, eval forward without grad; returns
    (batch_dict after the forward, seconds)."""
    cfg = load_cfg(cfg_file)
    model = built_model(cfg_file).eval()
    pc_range = np.asarray(cfg.DATA_CONFIG.POINT_CLOUD_RANGE, dtype=np.float32)
    inside = np.all((points[:, :2] >= pc_range[:2]) & (points[:, :2] <= pc_range[3:5]), axis=1)
    points = points[inside]
    batch = {'points': np.concatenate([np.zeros((len(points), 1), np.float32), points], axis=1), 'batch_size': 1}
    batch = load_data_to_device(batch, 'cpu')
    start = time.perf_counter()
    with torch.no_grad():
        pred_dicts, recall_dict = model(batch)
    seconds = time.perf_counter() - start
    assert pred_dicts is batch['final_box_dicts'] and recall_dict == {}
    print(f'\n{cfg_file.relative_to(CFG_ROOT)}: {len(points)} points, {len(batch["voxel_coords"])} pillars after '
          f'DSVT, eval forward {seconds:.1f} s on {torch.get_num_threads()} thread(s)')
    return batch, seconds


def check_predictions(batch, cfg_file, box_dim, num_classes):
    cfg = load_cfg(cfg_file)
    post = cfg.MODEL.DENSE_HEAD.POST_PROCESSING
    (pred,) = batch['final_box_dicts']
    boxes, scores, labels = pred['pred_boxes'], pred['pred_scores'], pred['pred_labels']
    assert boxes.dim() == 2 and boxes.shape[1] == box_dim and len(boxes) == len(scores) == len(labels)
    assert len(boxes) > 0, 'random weights still give candidates above SCORE_THRESH'
    assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
    assert labels.dtype == torch.long and labels.min() >= 1 and labels.max() <= num_classes
    assert (scores > 0).all() and (scores <= 1).all()
    limit = torch.tensor(post.POST_CENTER_LIMIT_RANGE)
    assert ((boxes[:, :3] >= limit[:3]) & (boxes[:, :3] <= limit[3:])).all()
    assert (boxes[:, 3:6] > 0).all()


def test_waymo_dsvt_pillar_forward_on_a_waymo_sized_frame():
    points = waymo_frame()
    assert 150_000 <= len(points) <= 180_000
    batch, _ = run_eval_forward(WAYMO_PILLAR, points)
    assert 20_000 <= len(batch['voxel_coords']) <= 30_000      # ~25k pillars, as a real Waymo frame
    assert batch['spatial_features'].shape == (1, 192, 468, 468)
    assert batch['spatial_features_2d'].shape == (1, 384, 468, 468)
    check_predictions(batch, WAYMO_PILLAR, box_dim=7, num_classes=3)


def test_waymo_dsvt_voxel_forward_on_a_waymo_sized_frame():
    """Same frame through the 4-stage voxel variant (z 32 -> 8 -> 2 -> 1); the slowest forward of this file."""
    batch, _ = run_eval_forward(WAYMO_VOXEL, waymo_frame())
    assert 20_000 <= len(batch['voxel_coords']) <= 30_000      # last stage: one voxel per occupied pillar
    assert (batch['voxel_coords'][:, 1] == 0).all()
    assert batch['spatial_features_2d'].shape == (1, 384, 468, 468)
    check_predictions(batch, WAYMO_VOXEL, box_dim=7, num_classes=3)


def test_nuscenes_dsvt_pillar_centerpoint_forward_on_a_nuscenes_sized_frame():
    points = nuscenes_frame()
    assert 240_000 <= len(points) <= 300_000
    batch, _ = run_eval_forward(NUSCENES_PILLAR, points)
    assert 15_000 <= len(batch['voxel_coords']) <= 30_000
    assert batch['spatial_features_2d'].shape == (1, 384, 180, 180)
    check_predictions(batch, NUSCENES_PILLAR, box_dim=9, num_classes=10)
