"""pcdet.inference.Predictor: build without a dataset, strict checkpoint loading, input layout checks, the dataset's
test-mode preprocessing, deterministic output and the output schema. A tiny DSVT-Pillar + multi-head CenterHead
config (nuScenes point layout) and its checkpoints are created in the tests."""
import logging

import numpy as np
import pytest
import torch
import yaml
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.dataset import DatasetTemplate
from pcdet.inference import (
    PointLayoutError,
    Predictor,
    adapt_point_layout,
    apply_dataset_load_transforms,
    check_point_layout,
    expected_feature_names,
)
from pcdet.models.build import build_network_from_cfg
from pcdet.utils.checkpoint import CheckpointMismatchError

FEATURES = ['x', 'y', 'z', 'intensity', 'timestamp']

TINY_CFG = """
CLASS_NAMES: ['car', 'pedestrian']

DATA_CONFIG:
    DATASET: NuScenesDataset
    POINT_CLOUD_RANGE: [-9.6, -9.6, -3.0, 9.6, 9.6, 3.0]
    POINT_FEATURE_ENCODING: {
        encoding_type: absolute_coordinates_encoding,
        used_feature_list: ['x', 'y', 'z', 'intensity', 'timestamp'],
        src_feature_list: ['x', 'y', 'z', 'intensity', 'timestamp'],
    }
    DATA_PROCESSOR:
        - NAME: mask_points_and_boxes_outside_range
          REMOVE_OUTSIDE_BOXES: True
        - NAME: shuffle_points
          SHUFFLE_ENABLED: {'train': True, 'test': True}
        - NAME: transform_points_to_voxels_placeholder
          VOXEL_SIZE: [0.4, 0.4, 6.0]

MODEL:
    NAME: CenterPoint
    VFE: {NAME: DynPillarVFE, WITH_DISTANCE: False, USE_ABSLOTE_XYZ: True, USE_NORM: True, NUM_FILTERS: [16, 16]}
    BACKBONE_3D:
        NAME: DSVT
        INPUT_LAYER: {downsample_stride: [], window_shape: [[8, 8, 1]], hybrid_factor: [2, 2, 1],
                      shifts_list: [[[0, 0, 0], [4, 4, 0]]], normalize_pos: False}
        block_name: ['DSVTBlock']
        set_info: [[12, 2]]
        d_model: [16]
        nhead: [2]
        dim_feedforward: [32]
        dropout: 0.0
        activation: gelu
    MAP_TO_BEV: {NAME: PointPillarScatter3d, NUM_BEV_FEATURES: 16}
    BACKBONE_2D: {NAME: BaseBEVResBackbone, LAYER_NUMS: [1, 1], LAYER_STRIDES: [1, 2], NUM_FILTERS: [16, 16],
                  UPSAMPLE_STRIDES: [1, 2], NUM_UPSAMPLE_FILTERS: [16, 16]}
    DENSE_HEAD:
        NAME: CenterHead
        CLASS_AGNOSTIC: False
        CLASS_NAMES_EACH_HEAD: [['car'], ['pedestrian']]
        SHARED_CONV_CHANNEL: 16
        USE_BIAS_BEFORE_NORM: True
        NUM_HM_CONV: 2
        SEPARATE_HEAD_CFG:
            HEAD_ORDER: ['center', 'center_z', 'dim', 'rot', 'vel']
            HEAD_DICT: {
                'center': {'out_channels': 2, 'num_conv': 2},
                'center_z': {'out_channels': 1, 'num_conv': 2},
                'dim': {'out_channels': 3, 'num_conv': 2},
                'rot': {'out_channels': 2, 'num_conv': 2},
                'vel': {'out_channels': 2, 'num_conv': 2},
            }
        TARGET_ASSIGNER_CONFIG: {FEATURE_MAP_STRIDE: 1, NUM_MAX_OBJS: 100, GAUSSIAN_OVERLAP: 0.1, MIN_RADIUS: 2}
        LOSS_CONFIG:
            LOSS_WEIGHTS: {'cls_weight': 1.0, 'loc_weight': 0.25,
                           'code_weights': [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2]}
        POST_PROCESSING:
            SCORE_THRESH: 0.05
            POST_CENTER_LIMIT_RANGE: [-12.0, -12.0, -10.0, 12.0, 12.0, 10.0]
            MAX_OBJ_PER_SAMPLE: 50
            NMS_CONFIG: {NMS_TYPE: nms_gpu, NMS_THRESH: 0.2, NMS_PRE_MAXSIZE: 100, NMS_POST_MAXSIZE: 30}
    POST_PROCESSING:
        RECALL_THRESH_LIST: [0.3, 0.5, 0.7]
        EVAL_METRIC: kitti
"""


def tiny_cfg(**model_edits):
    cfg = EasyDict(yaml.safe_load(TINY_CFG))
    for dotted, value in model_edits.items():
        node = cfg
        *parents, last = dotted.split('.')
        for part in parents:
            node = node[part]
        node[last] = value
    return cfg


def save_openpcdet_checkpoint(model, path, epoch=3):
    """The OpenPCDet layout: model_state, optimizer_state, epoch, it."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.save({'model_state': model.state_dict(), 'optimizer_state': optimizer.state_dict(), 'epoch': epoch,
                'it': epoch * 10}, path)
    return path


def randomise_batch_norm(model, seed):
    """Non-trivial running statistics, so a checkpoint differs from a fresh model in every buffer too."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope='module')
def cfg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('predictor') / 'tiny_dsvt.yaml'
    path.write_text(TINY_CFG)
    return path


@pytest.fixture(scope='module')
def checkpoint(cfg_file):
    torch.manual_seed(1)
    model = build_network_from_cfg(cfg_from_yaml_file(cfg_file))
    randomise_batch_norm(model, seed=1)
    return save_openpcdet_checkpoint(model, cfg_file.parent / 'checkpoint_epoch_3.pth')


@pytest.fixture(scope='module')
def predictor(cfg_file, checkpoint):
    torch.manual_seed(123)  # a different initialisation than the checkpoint's: loading must replace all of it
    return Predictor.from_files(cfg_file, checkpoint)


def random_frame(num_points=3000, seed=0, extent=9.0):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-extent, -extent, -2.0], [extent, extent, 1.0], (num_points, 3))
    # a few dense clusters so the BEV map is not uniform noise
    centres = rng.uniform(-7, 7, (6, 3)) * [1, 1, 0]
    blobs = (centres[:, None] + rng.normal(0, [0.8, 0.5, 0.4], (6, 200, 3))).reshape(-1, 3)
    xyz = np.concatenate([xyz, blobs])
    intensity = rng.uniform(0, 255, (len(xyz), 1))
    time_lag = rng.integers(0, 10, (len(xyz), 1)) * 0.05
    return np.concatenate([xyz, intensity, time_lag], axis=1).astype(np.float32)


# ---- construction and checkpoints ----------------------------------------------------------------------------------

def test_checkpoint_is_loaded_strictly_and_model_is_in_eval_mode(predictor, checkpoint):
    saved = torch.load(checkpoint, weights_only=True)['model_state']
    state = predictor.model.state_dict()
    assert list(state) == list(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert predictor.load_report.is_exact and predictor.load_report.epoch == 3
    assert not predictor.model.training and all(not m.training for m in predictor.model.modules())
    assert predictor.feature_names == FEATURES and predictor.class_names == ['car', 'pedestrian']
    assert predictor.box_dim == 9


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, cfg_file):
    torch.manual_seed(0)
    other = build_network_from_cfg(tiny_cfg(**{'MODEL.VFE.NUM_FILTERS': [32, 32], 'MODEL.BACKBONE_3D.d_model': [32],
                                               'MODEL.BACKBONE_3D.nhead': [4]}))
    ckpt = save_openpcdet_checkpoint(other, tmp_path / 'other.pth')
    with pytest.raises(CheckpointMismatchError) as info:
        Predictor(tiny_cfg(), ckpt)
    message = str(info.value)
    assert 'does not fit the model' in message and 'shape mismatches' in message
    assert 'vfe.pfn_layers.0.linear.weight checkpoint (16, 11) vs model (8, 11)' in message
    assert 'another architecture' in message
    with pytest.raises(CheckpointMismatchError, match=f'does not fit the model built from {cfg_file}'):
        Predictor.from_files(cfg_file, ckpt)


def test_checkpoint_of_a_different_head_layout_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    one_head = tiny_cfg(**{'MODEL.DENSE_HEAD.CLASS_NAMES_EACH_HEAD': [['car', 'pedestrian']]})
    ckpt = save_openpcdet_checkpoint(build_network_from_cfg(one_head), tmp_path / 'one_head.pth')
    with pytest.raises(CheckpointMismatchError, match=r'missing in checkpoint .*dense_head\.heads_list\.1\.'):
        Predictor(tiny_cfg(), ckpt)


def test_no_checkpoint_means_random_weights_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger='pcdet.inference'):
        predictor = Predictor(tiny_cfg())
    assert 'random weights' in caplog.text and predictor.load_report is None


def test_a_dataset_config_is_not_an_experiment_config():
    with pytest.raises(KeyError, match='needs MODEL'):
        Predictor(EasyDict(yaml.safe_load(TINY_CFG))['DATA_CONFIG'])


# ---- input layout ------------------------------------------------------------------------------------------------

def test_wrong_column_count_names_the_expected_columns(predictor):
    with pytest.raises(PointLayoutError, match=r'expected 5 columns \[x, y, z, intensity, timestamp\], got 4'):
        predictor.predict(random_frame()[:, :4])
    with pytest.raises(PointLayoutError, match=r'expected 5 columns \[x, y, z, intensity, timestamp\], got 6'):
        predictor.predict(np.zeros((10, 6), dtype=np.float32))


def test_non_2d_non_numeric_and_non_finite_inputs_are_rejected(predictor):
    frame = random_frame()
    with pytest.raises(PointLayoutError, match=r'2-D array \(N, 5\).*got shape \(\d+,\).*reshape\(-1, 5\)'):
        predictor.predict(frame.reshape(-1))
    with pytest.raises(PointLayoutError, match=r'got shape \(2, \d+, 5\)'):
        predictor.predict(np.stack([frame, frame]))
    with pytest.raises(PointLayoutError, match='must be numeric'):
        predictor.predict(np.array([['a'] * 5]))
    bad = frame.copy()
    bad[[3, 7], 1] = np.nan
    bad[11, 4] = np.inf
    with pytest.raises(PointLayoutError,
                       match=r'non-finite values \(NaN / inf\) in 3 of \d+ rows \(first: \[3, 7, 11\]\)'):
        predictor.predict(bad)


def test_check_point_layout_casts_to_float32():
    points = check_point_layout(np.ones((4, 5), dtype=np.float64), FEATURES)
    assert points.dtype == np.float32 and points.shape == (4, 5)
    assert check_point_layout(torch.ones(2, 5), FEATURES).dtype == np.float32
    assert expected_feature_names(tiny_cfg().DATA_CONFIG) == FEATURES


def test_adapt_point_layout_by_position_and_by_name():
    four = np.arange(12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(PointLayoutError, match=r"expected 5 columns .*got 4; pass pad_missing.*\['timestamp'\]"):
        adapt_point_layout(four, FEATURES)
    padded, notes = adapt_point_layout(four, FEATURES, pad_missing=True)
    assert padded.shape == (3, 5) and (padded[:, 4] == 0).all() and (padded[:, :4] == four).all()
    assert notes == ["zero-filled missing columns ['timestamp']"]
    # nuScenes raw sample files: [x, y, z, intensity, ring_index] -> ring dropped, timestamp zero-filled
    raw = np.arange(15, dtype=np.float32).reshape(3, 5)
    names = ['x', 'y', 'z', 'intensity', 'ring_index']
    with pytest.raises(PointLayoutError, match=r"missing \['timestamp'\]"):
        adapt_point_layout(raw, FEATURES, file_names=names)
    out, notes = adapt_point_layout(raw, FEATURES, file_names=names, pad_missing=True)
    assert (out[:, :4] == raw[:, :4]).all() and (out[:, 4] == 0).all()
    assert notes == ["zero-filled missing columns ['timestamp']", "dropped file columns ['ring_index']"]
    shuffled, notes = adapt_point_layout(raw[:, [0, 1, 2, 4, 3]], FEATURES,
                                         file_names=['x', 'y', 'z', 'timestamp', 'intensity'])
    assert (shuffled == raw).all() and notes[0].startswith('reordered')
    with pytest.raises(PointLayoutError, match='must include x, y, z'):
        adapt_point_layout(raw, FEATURES, file_names=['u', 'v', 'w', 'intensity', 'timestamp'], pad_missing=True)


def test_waymo_load_transforms_follow_the_dataset_reader():
    points = np.array([[1.0, 2.0, 3.0, 250.0, 0.5]], dtype=np.float32)
    waymo = EasyDict(DATASET='WaymoDataset')
    assert np.allclose(apply_dataset_load_transforms(points, waymo), [[1, 2, 3, np.tanh(250.0), 0.5]])
    waymo.POINTS_TANH_DIM = [3, 4]
    assert np.allclose(apply_dataset_load_transforms(points, waymo), [[1, 2, 3, np.tanh(250.0), np.tanh(0.5)]])
    assert np.array_equal(apply_dataset_load_transforms(points, EasyDict(DATASET='NuScenesDataset')), points)
    assert points[0, 3] == 250.0  # input untouched


# ---- preprocessing and inference ---------------------------------------------------------------------------------

def test_preprocessing_is_the_datasets_test_mode_pipeline(predictor):
    """Same arrays as DatasetTemplate.prepare_data in test mode (with the dataset's shuffle switched off)."""
    data_cfg = tiny_cfg().DATA_CONFIG
    data_cfg.DATA_PROCESSOR[1].SHUFFLE_ENABLED.test = False
    dataset = DatasetTemplate(data_cfg, ['car', 'pedestrian'], training=False)
    frame = random_frame(extent=12.0)  # some points outside the range
    expected = dataset.prepare_data({'points': frame.copy(), 'frame_id': 'f'})
    got = predictor.preprocess(frame)
    assert np.array_equal(got['points'], expected['points'])
    assert len(got['points']) < len(frame)  # the range mask ran
    assert got['use_lead_xyz'] is True


def test_output_schema(predictor):
    result = predictor.predict(random_frame())
    assert set(result) == {'boxes', 'scores', 'labels', 'names'}
    k = len(result['scores'])
    assert k > 0
    assert result['boxes'].shape == (k, 9) and result['boxes'].dtype == np.float32
    assert result['scores'].shape == (k,) and result['scores'].dtype == np.float32
    assert result['labels'].shape == (k,) and result['labels'].dtype == np.int64
    assert set(result['labels'].tolist()) <= {1, 2}
    assert result['names'].tolist() == [['car', 'pedestrian'][label - 1] for label in result['labels']]
    assert (np.diff(result['scores']) <= 0).all()  # sorted by decreasing score
    assert (result['scores'] > 0.05).all() and (result['scores'] <= 1).all()
    assert np.isfinite(result['boxes']).all() and (result['boxes'][:, 3:6] > 0).all()


def test_predictions_are_deterministic(predictor, cfg_file, checkpoint):
    frame = random_frame(seed=5)
    first, second = predictor.predict(frame), predictor.predict(frame.copy())
    again = Predictor.from_files(cfg_file, checkpoint).predict(frame)
    for other in (second, again):
        assert set(other) == set(first)
        for key in first:
            assert np.array_equal(first[key], other[key]), key


def test_predict_batch_matches_single_frames(predictor):
    frames = [random_frame(seed=1), random_frame(seed=2, num_points=1500)]
    batched = predictor.predict_batch(frames)
    for frame, result in zip(frames, batched):
        single = predictor.predict(frame)
        assert np.array_equal(single['labels'], result['labels'])
        assert np.allclose(single['boxes'], result['boxes'], atol=1e-4)
        assert np.allclose(single['scores'], result['scores'], atol=1e-5)


def test_a_frame_without_points_in_range_gives_no_detections(predictor):
    far = random_frame()
    far[:, 0] += 100.0
    results = predictor.predict_batch([far, random_frame()])
    assert results[0]['boxes'].shape == (0, 9) and results[0]['labels'].dtype == np.int64
    assert results[0]['names'].shape == (0,)
    assert len(results[1]['scores']) > 0


def test_from_files_applies_set_overrides(cfg_file, checkpoint):
    predictor = Predictor.from_files(cfg_file, checkpoint,
                                     set_cfgs=['MODEL.DENSE_HEAD.POST_PROCESSING.SCORE_THRESH', '0.99'])
    assert predictor.predict(random_frame())['scores'].shape == (0,)
