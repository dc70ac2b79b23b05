"""TransFusion configs: the published DSVT-Pillar + TransFusion-L nuScenes model, GPICTURE's nuScenes detection
fine-tune (TransFusion as published, CenterHead kept as a named alternative) and the tiny synthetic twin.

Each validates (`validate_config`) and builds; the published head carries the DSVT repo's numbers (asserted from the
spec text, openpcdet_dsvt.md §3.7-§3.8 and gpicture.md §4.1, not from the config); data, encoder and schedule equal
the CenterHead twin's; the tiny model runs a training step and an evaluation on a small synthetic batch.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdet.config import ConfigError, cfg_from_yaml_file
from pcdet.config_registry import validate_config
from pcdet.models.build import build_network_from_cfg, load_data_to_device
from pcdet.models.dense_heads.center_head import CenterHead
from pcdet.models.dense_heads.transfusion_head import TransFusionHead

CFG_ROOT = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs'
PUBLISHED = CFG_ROOT / 'nuscenes_models' / 'dsvt_pillar_transfusion.yaml'
TINY = CFG_ROOT / 'nuscenes_models' / 'transfusion_tiny_synthetic.yaml'
GPICTURE = CFG_ROOT / 'gpicture_models' / 'gpicture_nuscenes_detection.yaml'
GPICTURE_CENTERHEAD = CFG_ROOT / 'gpicture_models' / 'gpicture_nuscenes_detection_centerhead.yaml'
# (TransFusion config, its CenterHead twin with the same data, encoder and schedule)
TWINS = [(PUBLISHED, CFG_ROOT / 'nuscenes_models' / 'dsvt_pillar_centerpoint.yaml'),
         (TINY, CFG_ROOT / 'nuscenes_models' / 'dsvt_tiny_synthetic.yaml'),
         (GPICTURE, GPICTURE_CENTERHEAD)]
ENCODER_KEYS = ('VFE', 'BACKBONE_3D', 'MAP_TO_BEV', 'BACKBONE_2D', 'PRETRAINED_ENCODER')


def load(path):
    return validate_config(cfg_from_yaml_file(path), source=str(path))


@pytest.mark.parametrize('path, detector, head_type', [
    (PUBLISHED, 'TransFusion', TransFusionHead), (TINY, 'TransFusion', TransFusionHead),
    (GPICTURE, 'TransFusion', TransFusionHead), (GPICTURE_CENTERHEAD, 'CenterPoint', CenterHead),
], ids=lambda v: v.name if isinstance(v, Path) else None)
def test_config_validates_and_builds(path, detector, head_type):
    cfg = load(path)
    model = build_network_from_cfg(cfg)
    assert type(model).__name__ == detector and type(model.dense_head) is head_type
    assert model.class_names == list(cfg.CLASS_NAMES) and len(cfg.CLASS_NAMES) == 10


def test_a_centerhead_key_left_in_a_transfusion_head_is_refused():
    cfg = cfg_from_yaml_file(PUBLISHED)
    cfg.MODEL.DENSE_HEAD.CLASS_NAMES_EACH_HEAD = [list(cfg.CLASS_NAMES)]
    with pytest.raises(ConfigError, match='CLASS_NAMES_EACH_HEAD'):
        validate_config(cfg)


def test_published_head_has_the_dsvt_repo_numbers():
    """DSVT repo `dsvt_plain_1f_onestage_nusences.yaml` head (spec §3.8 table, §3.7 inference bullet)."""
    cfg = load(PUBLISHED)
    head = cfg.MODEL.DENSE_HEAD
    assert cfg.MODEL.NAME == 'TransFusion' and head.NAME == 'TransFusionHead' and head.VARIANT == 'dsvt'
    assert (head.NUM_PROPOSALS, head.HIDDEN_CHANNEL, head.NUM_HEADS, head.FFN_CHANNEL) == (200, 128, 8, 256)
    assert (head.DROPOUT, head.BN_MOMENTUM, head.NMS_KERNEL_SIZE, head.NUM_HM_CONV) == (0, 0.1, 3, 2)
    assert head.SEPARATE_HEAD_CFG.HEAD_ORDER == ['center', 'height', 'dim', 'rot', 'vel']
    assert {k: (v['out_channels'], v['num_conv']) for k, v in head.SEPARATE_HEAD_CFG.HEAD_DICT.items()} == {
        'center': (2, 2), 'height': (1, 2), 'dim': (3, 2), 'rot': (2, 2), 'vel': (2, 2), 'iou': (1, 2)}
    ta = head.TARGET_ASSIGNER_CONFIG
    assert (ta.FEATURE_MAP_STRIDE, ta.DATASET, ta.GAUSSIAN_OVERLAP, ta.MIN_RADIUS) == (2, 'nuScenes', 0.1, 2)
    assert ta.HUNGARIAN_ASSIGNER == {'cls_cost': {'gamma': 2.0, 'alpha': 0.25, 'weight': 0.15},
                                     'reg_cost': {'weight': 0.25}, 'iou_cost': {'weight': 0.25}}
    weights = head.LOSS_CONFIG.LOSS_WEIGHTS
    assert (weights.cls_weight, weights.bbox_weight, weights.hm_weight, weights.loss_iou_rescore_weight) == \
        (1.0, 0.25, 1.0, 0.5)
    assert weights.code_weights == [1.0] * 8 + [0.2, 0.2]
    post = head.POST_PROCESSING
    assert post.SCORE_THRESH == 0.0 and post.POST_CENTER_RANGE == [-61.2, -61.2, -10, 61.2, 61.2, 10]
    assert post.USE_IOU_TO_RECTIFY_SCORE is True and post.IOU_RECTIFIER == [0.5]
    assert (post.NMS_CONFIG.NMS_TYPE, post.NMS_CONFIG.NMS_PRE_MAXSIZE, post.NMS_CONFIG.NMS_POST_MAXSIZE) == \
        ('nms_gpu', 1000, 100)

    model = build_network_from_cfg(cfg)
    built = model.dense_head
    assert built.dsvt and built.query_radius == 20 and built.num_proposals == 200
    assert built.shared_conv.weight.shape == (128, 384, 3, 3)        # 384 BEV channels -> hidden 128
    assert built._check_feature_map(180, 180) == (180, 180)          # 360 grid / stride 2
    assert built.decoder.multihead_attn.num_heads == 8
    assert (built.prediction_head.heatmap[-1].bias == -2.19).all()   # DSVT classifier bias init
    assert built.one_by_one_classes == (8, 9)                        # pedestrian, traffic_cone: 1 x 1 query NMS
    tasks = built._nms_tasks(built.cfg.POST_PROCESSING)
    assert sorted((t['CLASS_INDICES'], t['NMS_THRESH']) for t in tasks) == [([8], 0.175), ([9], 0.175)]
    assert [cfg.CLASS_NAMES[i] for i in (8, 9)] == ['pedestrian', 'traffic_cone']


def test_gpicture_detection_uses_transfusion_as_published():
    """gpicture.md §4.1: TransFusionHead, 200 proposals, hidden 256, 8 heads, FFN 256, 24 epochs."""
    cfg = load(GPICTURE)
    head = cfg.MODEL.DENSE_HEAD
    assert cfg.MODEL.NAME == 'TransFusion' and head.NAME == 'TransFusionHead'
    assert (head.NUM_PROPOSALS, head.HIDDEN_CHANNEL, head.NUM_HEADS, head.FFN_CHANNEL) == (200, 256, 8, 256)
    assert cfg.OPTIMIZATION.NUM_EPOCHS == 24
    model = build_network_from_cfg(cfg)
    assert model.dense_head._check_feature_map(256, 256) == (256, 256)   # 512 grid / stride 2
    alternative = load(GPICTURE_CENTERHEAD)
    assert alternative.MODEL.DENSE_HEAD.NAME == 'CenterHead' and alternative.MODEL.NAME == 'CenterPoint'


@pytest.mark.parametrize('transfusion, twin', TWINS, ids=lambda p: p.name)
def test_data_encoder_and_schedule_equal_the_centerhead_twin(transfusion, twin):
    a, b = load(transfusion), load(twin)
    assert a.CLASS_NAMES == b.CLASS_NAMES and a.DATA_CONFIG == b.DATA_CONFIG and a.HOOK == b.HOOK
    assert {k: a.MODEL.get(k) for k in ENCODER_KEYS} == {k: b.MODEL.get(k) for k in ENCODER_KEYS}
    opt_a, opt_b = dict(a.OPTIMIZATION), dict(b.OPTIMIZATION)
    if transfusion == GPICTURE:                        # GPICTURE trains 24 epochs; the CenterHead variant kept 20
        assert (opt_a.pop('NUM_EPOCHS'), opt_b.pop('NUM_EPOCHS')) == (24, 20)
    assert opt_a == opt_b
    assert a.MODEL.DENSE_HEAD.TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE == \
        b.MODEL.DENSE_HEAD.TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE


def tiny_batch(seed=0):
    """Two frames over the tiny config's +-51.2 m: sparse ground + points on a few box surfaces; frame 1 has no GT."""
    rng = np.random.default_rng(seed)
    boxes = np.array([[10.0, 5.0, -1.0, 4.5, 1.9, 1.6, 0.3, 2.0, 0.0, 1],       # car
                      [-20.0, -8.0, -1.2, 0.7, 0.7, 1.8, 0.0, 0.5, 0.5, 9],     # pedestrian
                      [3.0, -30.0, -0.8, 11.0, 2.9, 3.5, 1.2, 0.0, 0.0, 4]],    # bus
                     np.float32)
    frames = []
    for b in range(2):
        ground = np.concatenate([rng.uniform(-51, 51, (3000, 2)), rng.normal(-1.8, 0.05, (3000, 1))], 1)
        parts = [ground]
        if b == 0:
            for box in boxes:
                local = rng.uniform(-0.5, 0.5, (200, 3)) * box[3:6]
                c, s = np.cos(box[6]), np.sin(box[6])
                parts.append(np.stack([c * local[:, 0] - s * local[:, 1] + box[0],
                                       s * local[:, 0] + c * local[:, 1] + box[1], local[:, 2] + box[2]], 1))
        xyz = np.concatenate(parts)
        frames.append(np.concatenate([np.full((len(xyz), 1), b), xyz, rng.uniform(0, 1, (len(xyz), 1)),
                                      np.zeros((len(xyz), 1))], 1))
    gt = np.zeros((2, 3, 10), np.float32)
    gt[0] = boxes
    return load_data_to_device({'points': np.concatenate(frames).astype(np.float32), 'gt_boxes': gt,
                                'batch_size': 2}, 'cpu')


def test_tiny_transfusion_trains_a_step_and_evaluates():
    cfg = load(TINY)
    torch.manual_seed(0)
    model = build_network_from_cfg(cfg)
    batch = tiny_batch()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ret_dict, tb_dict, _ = model(dict(batch))
    loss = ret_dict['loss']
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {'loss_heatmap', 'loss_cls', 'loss_bbox', 'loss_iou', 'matched_ious', 'loss_trans'} <= set(tb_dict)
    assert tb_dict['loss_rpn'] == pytest.approx(tb_dict['loss_trans'])
    loss.backward()
    assert model.vfe.pfn_layers[0].linear.weight.grad.abs().sum() > 0     # gradients reach the first module
    assert model.dense_head.decoder.multihead_attn.in_proj_weight.grad.abs().sum() > 0
    optimizer.step()

    model.eval()
    with torch.no_grad():
        pred_dicts, recall = model(dict(batch))
    assert len(pred_dicts) == 2 and recall['gt'] == 3
    limit = torch.tensor(cfg.MODEL.DENSE_HEAD.POST_PROCESSING.POST_CENTER_RANGE)
    for pred in pred_dicts:
        boxes, scores, labels = pred['pred_boxes'], pred['pred_scores'], pred['pred_labels']
        assert boxes.shape[1] == 9 and len(boxes) == len(scores) == len(labels) <= 100
        assert len(boxes) > 0 and torch.isfinite(boxes).all() and (boxes[:, 3:6] > 0).all()
        assert labels.dtype == torch.long and labels.min() >= 1 and labels.max() <= 10
        assert (scores > 0).all() and (scores <= 1).all()
        assert ((boxes[:, :3] >= limit[:3]) & (boxes[:, :3] <= limit[3:])).all()
