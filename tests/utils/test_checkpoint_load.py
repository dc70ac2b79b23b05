"""pcdet.utils.checkpoint: OpenPCDet-layout round trip, load report, clear errors for foreign checkpoints."""
import logging

import pytest
import torch
import torch.nn as nn
from easydict import EasyDict

from pcdet.models.detectors import ModelGeometry
from pcdet.models.detectors.detector3d_template import Detector3DTemplate
from pcdet.training.checkpointing import checkpoint_state, save_checkpoint  # the save side (another module)
from pcdet.utils.checkpoint import CheckpointMismatchError, load_params_from_file, load_params_with_optimizer

CLASS_NAMES = ['Vehicle', 'Pedestrian', 'Cyclist']


def head_config(channels=16, with_iou=True):
    branches = {'center': 2, 'center_z': 1, 'dim': 3, 'rot': 2}
    if with_iou:
        branches['iou'] = 1
    return EasyDict({
        'NAME': 'CenterHead', 'CLASS_AGNOSTIC': False, 'CLASS_NAMES_EACH_HEAD': [CLASS_NAMES],
        'SHARED_CONV_CHANNEL': channels, 'USE_BIAS_BEFORE_NORM': False, 'NUM_HM_CONV': 2,
        'SEPARATE_HEAD_CFG': {'HEAD_ORDER': ['center', 'center_z', 'dim', 'rot'],
                              'HEAD_DICT': {k: {'out_channels': v, 'num_conv': 2} for k, v in branches.items()}},
        'TARGET_ASSIGNER_CONFIG': {'FEATURE_MAP_STRIDE': 1, 'NUM_MAX_OBJS': 20, 'GAUSSIAN_OVERLAP': 0.1,
                                   'MIN_RADIUS': 2},
        'LOSS_CONFIG': {'LOSS_WEIGHTS': {'cls_weight': 1.0, 'loc_weight': 2.0, 'code_weights': [1.0] * 8}},
        'POST_PROCESSING': {
            'SCORE_THRESH': 0.1, 'POST_CENTER_LIMIT_RANGE': [-80, -80, -10, 80, 80, 10], 'MAX_OBJ_PER_SAMPLE': 50,
            'NMS_CONFIG': {'NMS_TYPE': 'nms_gpu', 'NMS_THRESH': 0.7, 'NMS_PRE_MAXSIZE': 100,
                           'NMS_POST_MAXSIZE': 50}},
    })


class TinyDetector(Detector3DTemplate):
    """A detector with just a dense head (reads `spatial_features_2d` directly)."""

    def __init__(self, model_cfg, num_class, dataset):
        super().__init__(model_cfg, num_class, dataset)
        self.module_list = self.build_networks()

    def forward(self, batch_dict):
        for module in self.module_list:
            batch_dict = module(batch_dict)
        return batch_dict['final_box_dicts']


def build_model(seed, channels=16, with_iou=True):
    torch.manual_seed(seed)
    model_cfg = EasyDict({'DENSE_HEAD': head_config(channels, with_iou),
                          'POST_PROCESSING': {'RECALL_THRESH_LIST': [0.5]}})
    model_cfg.DENSE_HEAD.INPUT_FEATURES = 8
    geometry = ModelGeometry(CLASS_NAMES, [24, 24, 1], [-6, -6, -2, 6, 6, 4], [0.5, 0.5, 6], 4)
    return TinyDetector(model_cfg, 3, geometry)


class OtherArchitecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer('global_step', torch.zeros(1, dtype=torch.long))
        self.backbone_2d = nn.Sequential(nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16))
        self.dense_head = nn.Module()
        self.dense_head.conv_cls = nn.Conv2d(16, 18, 1)
        self.dense_head.conv_box = nn.Conv2d(16, 42, 1)


def _predict(model, features):
    model.eval()
    with torch.no_grad():
        return model({'spatial_features_2d': features.clone(), 'batch_size': 1})


@pytest.fixture
def trained_checkpoint(tmp_path):
    model = build_model(seed=0)
    # move BN statistics and weights away from their initial values so a failed load would show
    model.train()
    with torch.no_grad():
        model.dense_head.shared_conv(torch.randn(2, 8, 24, 24))
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.global_step.fill_(7)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    path = save_checkpoint(checkpoint_state(model, optimizer, epoch=3, it=120), tmp_path / 'checkpoint_epoch_3')
    return model, path


def test_save_then_strict_load_gives_identical_outputs(trained_checkpoint, caplog):
    model, path = trained_checkpoint
    assert path.name == 'checkpoint_epoch_3.pth'
    raw = torch.load(path, weights_only=True)
    assert {'epoch', 'it', 'model_state', 'optimizer_state', 'version'} <= set(raw)
    assert raw['version'].startswith('pcdet+') and raw['epoch'] == 3 and raw['it'] == 120

    fresh = build_model(seed=1)
    features = torch.randn(1, 8, 24, 24, generator=torch.Generator().manual_seed(5))
    with caplog.at_level(logging.INFO, logger='test_ckpt'):
        report = load_params_from_file(fresh, path, logging.getLogger('test_ckpt'), to_cpu=True, strict=True)
    assert report.is_exact and report.num_loaded == report.num_model_keys == len(model.state_dict())
    assert report.epoch == 3 and fresh.global_step.item() == 7
    assert f'==> Done (loaded {report.num_loaded}/{report.num_model_keys})' in caplog.text
    expected, got = _predict(model, features), _predict(fresh, features)
    for a, b in zip(expected, got):
        for key in ('pred_boxes', 'pred_scores', 'pred_labels'):
            assert torch.equal(a[key], b[key])


def test_legacy_serialization_and_bare_state_dict(tmp_path):
    model = build_model(seed=0)
    legacy = tmp_path / 'legacy.pth'
    torch.save({'model_state': model.state_dict(), 'epoch': 1, 'it': 2, 'optimizer_state': None,
                'version': 'pcdet+0.6.0+8cacccec'}, legacy, _use_new_zipfile_serialization=False)
    report = build_model(seed=1).load_params_from_file(filename=legacy, logger=None, to_cpu=True)
    assert report.is_exact and report.version == 'pcdet+0.6.0+8cacccec'
    bare = tmp_path / 'bare.pth'
    torch.save(model.state_dict(), bare)
    assert load_params_from_file(build_model(seed=2), bare, strict=True).is_exact


def test_partial_load_reports_missing_unexpected_and_shape_mismatch(trained_checkpoint, caplog):
    _, path = trained_checkpoint
    other = build_model(seed=3, with_iou=False)        # no iou branch -> unexpected keys in the checkpoint
    with caplog.at_level(logging.INFO, logger='pcdet'):
        report = load_params_from_file(other, path, logger=None)
    assert report.unexpected and all('.iou.' in k for k in report.unexpected)
    assert not report.missing and not report.shape_mismatch
    assert 'Unexpected keys in checkpoint' in caplog.text

    wider = build_model(seed=4, channels=32)           # every conv/BN shape differs, but names match
    with pytest.raises(CheckpointMismatchError) as err:
        load_params_from_file(wider, path, strict=False)
    message = str(err.value)
    assert 'shape mismatches' in message
    assert 'dense_head.shared_conv.0.weight checkpoint (16, 8, 3, 3) vs model (32, 8, 3, 3)' in message
    report = load_params_from_file(wider, path, strict=False, min_matched_fraction=0.0)
    assert report.shape_mismatch and report.num_loaded < report.num_model_keys
    assert 'global_step' in report.loaded and wider.global_step.item() == 7


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    foreign = tmp_path / 'pointpillar.pth'
    save_checkpoint(checkpoint_state(OtherArchitecture(), None, 80, 1000), foreign)
    model = build_model(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(CheckpointMismatchError) as err:
            load_params_from_file(model, foreign, strict=strict)
        message = str(err.value)
        assert 'does not match the model' in message
        assert "checkpoint top-level modules: ['backbone_2d', 'dense_head', 'global_step']" in message
        assert "model top-level modules: ['dense_head', 'global_step']" in message
        assert 'dense_head.conv_cls.weight' in message            # unexpected keys are named
        assert 'dense_head.heads_list.0.hm.1.bias' in message or 'missing in checkpoint' in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was half-loaded


def test_not_a_checkpoint_and_missing_file(tmp_path):
    junk = tmp_path / 'junk.pth'
    torch.save({'epoch': 1, 'weights': [1, 2]}, junk)
    with pytest.raises(CheckpointMismatchError, match='no "model_state" entry'):
        load_params_from_file(build_model(0), junk)
    with pytest.raises(FileNotFoundError, match='Checkpoint not found'):
        load_params_from_file(build_model(0), tmp_path / 'nope.pth')


def test_load_params_with_optimizer_resumes(trained_checkpoint):
    model, path = trained_checkpoint
    fresh = build_model(seed=1)
    optimizer = torch.optim.Adam(fresh.parameters(), lr=0.5)
    it, epoch = load_params_with_optimizer(fresh, path, to_cpu=True, optimizer=optimizer, logger=None)
    assert (it, epoch) == (120, 3)
    assert optimizer.param_groups[0]['lr'] == 1e-3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    narrower = build_model(seed=2, with_iou=False)
    assert narrower.load_params_with_optimizer(path, to_cpu=True)  # extra checkpoint keys are fine
    with pytest.raises(CheckpointMismatchError, match='missing or shape-mismatched'):
        load_params_with_optimizer(build_model(seed=2, channels=32), path, to_cpu=True)
