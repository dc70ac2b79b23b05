"""CenterHead: targets, encode/decode round trip, losses, post-processing, parameter names, overfitting."""
import math

import pytest
import torch
from easydict import EasyDict

from pcdet.models.dense_heads import __all__ as dense_head_registry
from pcdet.models.dense_heads.center_head import CenterHead
from pcdet.models.model_utils import centernet_utils
from pcdet.ops.iou3d_nms import iou3d_nms_utils
from pcdet.utils import loss_utils

CLASS_NAMES = ['Vehicle', 'Pedestrian', 'Cyclist']
PC_RANGE = [-6.0, -6.0, -2.0, 6.0, 6.0, 4.0]
VOXEL = [0.5, 0.5, 6.0]
GRID = [24, 24, 1]


def head_cfg(heads=(('Vehicle', 'Pedestrian', 'Cyclist'),), iou=True, vel=False, channels=16, nms=None, **extra):
    head_dict = {'center': {'out_channels': 2, 'num_conv': 2}, 'center_z': {'out_channels': 1, 'num_conv': 2},
                 'dim': {'out_channels': 3, 'num_conv': 2}, 'rot': {'out_channels': 2, 'num_conv': 2}}
    order = ['center', 'center_z', 'dim', 'rot']
    code_weights = [1.0] * 8
    if vel:
        head_dict['vel'] = {'out_channels': 2, 'num_conv': 2}
        order.append('vel')
        code_weights += [0.2, 0.2]
    if iou:
        head_dict['iou'] = {'out_channels': 1, 'num_conv': 2}
    cfg = {
        'NAME': 'CenterHead', 'CLASS_AGNOSTIC': False, 'CLASS_NAMES_EACH_HEAD': [list(h) for h in heads],
        'SHARED_CONV_CHANNEL': channels, 'USE_BIAS_BEFORE_NORM': False, 'NUM_HM_CONV': 2, 'BN_EPS': 1e-3,
        'BN_MOM': 0.1,
        'SEPARATE_HEAD_CFG': {'HEAD_ORDER': order, 'HEAD_DICT': head_dict},
        'TARGET_ASSIGNER_CONFIG': {'FEATURE_MAP_STRIDE': 1, 'NUM_MAX_OBJS': 50, 'GAUSSIAN_OVERLAP': 0.1,
                                   'MIN_RADIUS': 2},
        'IOU_REG_LOSS': iou,
        'LOSS_CONFIG': {'LOSS_WEIGHTS': {'cls_weight': 1.0, 'loc_weight': 2.0, 'code_weights': code_weights}},
        'POST_PROCESSING': {
            'SCORE_THRESH': 0.1, 'POST_CENTER_LIMIT_RANGE': [-80, -80, -10, 80, 80, 10], 'MAX_OBJ_PER_SAMPLE': 100,
            'USE_IOU_TO_RECTIFY_SCORE': iou, 'IOU_RECTIFIER': [0.68, 0.71, 0.65],
            'NMS_CONFIG': nms or {'NMS_TYPE': 'class_specific_nms', 'NMS_THRESH': [0.75, 0.6, 0.55],
                                  'NMS_PRE_MAXSIZE': [4096] * 3, 'NMS_POST_MAXSIZE': [500] * 3},
        },
    }
    cfg.update(extra)
    return EasyDict(cfg)


def build_head(cfg=None, class_names=CLASS_NAMES, input_channels=8, seed=0):
    torch.manual_seed(seed)
    return CenterHead(cfg or head_cfg(), input_channels, len(class_names), class_names, GRID, PC_RANGE, VOXEL,
                      predict_boxes_when_training=False)


GT_BOXES = torch.tensor([
    [[2.3, -1.7, 0.2, 4.0, 1.8, 1.5, 0.5, 1],
     [-3.1, 2.4, 0.1, 0.8, 0.7, 1.7, -1.0, 2],
     [0.6, 4.4, -0.3, 1.7, 0.6, 1.6, 2.9, 3],
     [0, 0, 0, 0, 0, 0, 0, 0]],                 # padding row
    [[-4.2, -4.9, 0.0, 4.5, 2.0, 1.6, -2.5, 1],
     [5.9, 5.9, 0.5, 1.0, 1.0, 1.8, 0.0, 2],    # near the map corner: the Gaussian is clipped
     [0, 0, 0, 0, 0, 0, 0, 0],
     [0, 0, 0, 0, 0, 0, 0, 0]],
])


def test_registry_name():
    assert dense_head_registry['CenterHead'] is CenterHead
    assert set(dense_head_registry) == {'CenterHead', 'GPicturePretrainHead', 'SegHead', 'OccHead',
                                       'GaussianOccHead', 'TransFusionHead'}


def test_gaussian_radius_is_upstream_formula():
    h, w, o = torch.tensor([8.0, 3.0, 1.4]), torch.tensor([3.6, 3.0, 1.0]), 0.1
    r = centernet_utils.gaussian_radius(h, w, min_overlap=o)
    for i in range(3):
        hh, ww = float(h[i]), float(w[i])
        b1, c1 = hh + ww, ww * hh * (1 - o) / (1 + o)
        r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
        b2, c2 = 2 * (hh + ww), (1 - o) * ww * hh
        r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
        a3, b3, c3 = 4 * o, -2 * o * (hh + ww), (o - 1) * ww * hh
        r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
        assert float(r[i]) == pytest.approx(min(r1, r2, r3), rel=1e-6)
    assert torch.allclose(centernet_utils.gaussian_radius(w, h, o), r)  # symmetric


def test_vectorised_gaussians_equal_upstream_per_object_drawing():
    g = torch.Generator().manual_seed(0)
    n, C, H, W = 40, 3, 30, 37
    centers = torch.stack((torch.randint(0, W, (n,), generator=g), torch.randint(0, H, (n,), generator=g)), 1)
    radii = torch.randint(0, 9, (n,), generator=g)
    channels = torch.randint(0, C, (n,), generator=g)
    fast = centernet_utils.draw_gaussians_to_heatmap(torch.zeros(C, H, W), channels, centers, radii)
    ref = torch.zeros(C, H, W)
    for k in range(n):
        centernet_utils.draw_gaussian_to_heatmap(ref[channels[k]], centers[k].float(), int(radii[k]))
    assert torch.equal(fast, ref)


def test_target_heatmaps_peak_at_object_centres():
    head = build_head()
    targets = head.assign_targets(GT_BOXES, feature_map_size=(24, 24))
    heatmaps, masks, inds = targets['heatmaps'][0], targets['masks'][0], targets['inds'][0]
    assert heatmaps.shape == (2, 3, 24, 24)
    for b in range(2):
        real = GT_BOXES[b][GT_BOXES[b, :, -1] > 0]
        assert masks[b].tolist()[:len(real)] == [1] * len(real) and masks[b, len(real):].sum() == 0
        ones = (heatmaps[b] == 1).nonzero().tolist()
        expected = []
        for k, box in enumerate(real):
            cx = min(max((float(box[0]) - PC_RANGE[0]) / VOXEL[0], 0), 24 - 0.5)
            cy = min(max((float(box[1]) - PC_RANGE[1]) / VOXEL[1], 0), 24 - 0.5)
            cls = int(box[-1]) - 1
            expected.append([cls, int(cy), int(cx)])
            assert heatmaps[b, cls, int(cy), int(cx)] == 1.0
            assert inds[b, k] == int(cy) * 24 + int(cx)
            others = [c for c in range(3) if c != cls]
            assert (heatmaps[b, others, int(cy), int(cx)] < 1).all()
        assert sorted(ones) == sorted(expected)
    assert heatmaps.max() == 1 and heatmaps.min() == 0


def test_degenerate_boxes_keep_their_slot_without_target():
    gt = GT_BOXES[:1].clone()
    gt[0, 1, 3] = 0.0  # dx = 0
    head = build_head()
    targets = head.assign_targets(gt, feature_map_size=(24, 24))
    assert targets['masks'][0][0, :3].tolist() == [1, 0, 1]
    assert (targets['heatmaps'][0][0, 1] == 1).sum() == 0  # the pedestrian draws nothing
    assert torch.equal(targets['target_boxes_src'][0][0, :3], gt[0, :3])


def test_multi_head_class_mapping_and_gt_not_modified():
    cfg = head_cfg(heads=(('Vehicle',), ('Pedestrian', 'Cyclist')))
    head = build_head(cfg)
    gt = GT_BOXES.clone()
    targets = head.assign_targets(gt, feature_map_size=(24, 24))
    assert torch.equal(gt, GT_BOXES)
    assert targets['heatmaps'][0].shape == (2, 1, 24, 24) and targets['heatmaps'][1].shape == (2, 2, 24, 24)
    # sample 0: head 1 holds the pedestrian (label 1 within the head) then the cyclist (label 2)
    assert targets['target_boxes_src'][1][0, :2, -1].tolist() == [1.0, 2.0]
    assert targets['masks'][1][0].sum() == 2 and targets['masks'][0][0].sum() == 1
    cx, cy = int((0.6 + 6) / 0.5), int((4.4 + 6) / 0.5)
    assert targets['heatmaps'][1][0, 1, cy, cx] == 1.0
    assert head.class_id_mapping_each_head[1].tolist() == [1, 2]


def test_class_names_each_head_must_cover_the_classes():
    with pytest.raises(ValueError, match='exactly once'):
        build_head(head_cfg(heads=(('Vehicle', 'Pedestrian'),)))


def _dense_from_targets(targets, head_idx, H=24, W=24, channels=None):
    """Raw head outputs that hold the regression targets at the object cells (what a perfect head predicts)."""
    target_boxes = targets['target_boxes'][head_idx]
    inds, masks = targets['inds'][head_idx], targets['masks'][head_idx]
    B, K, code = target_boxes.shape
    dense = torch.zeros(B, code, H * W)
    dense[:, 3:6] = 0.0  # log(1) elsewhere
    for b in range(B):
        valid = masks[b].bool()
        dense[b][:, inds[b][valid]] = target_boxes[b][valid].T
    dense = dense.view(B, code, H, W)
    pred = {'center': dense[:, 0:2], 'center_z': dense[:, 2:3], 'dim': dense[:, 3:6], 'rot': dense[:, 6:8]}
    if code > 8:
        pred['vel'] = dense[:, 8:10]
    return pred


@pytest.mark.parametrize('with_vel', [False, True])
def test_regression_targets_decode_back_to_gt_exactly(with_vel):
    gt = GT_BOXES.clone()
    if with_vel:
        vel = torch.tensor([[[1.5, -0.5], [0.2, 0.1], [-3.0, 2.0], [0, 0]], [[0.0, 4.0], [-1.0, -1.0], [0, 0], [0, 0]]])
        gt = torch.cat((gt[..., :7], vel, gt[..., 7:]), dim=-1)
    head = build_head(head_cfg(vel=with_vel))
    targets = head.assign_targets(gt, feature_map_size=(24, 24))
    pred = _dense_from_targets(targets, 0)
    boxes = centernet_utils.decode_bbox_from_pred_dicts(pred, PC_RANGE, VOXEL, feature_map_stride=1)
    assert boxes.shape == (2, 24, 24, 9 if with_vel else 7)
    flat = boxes.view(2, 24 * 24, -1)
    for b in range(2):
        real = gt[b][gt[b, :, -1] > 0]
        decoded = flat[b, targets['inds'][0][b, :len(real)]]
        expected = real[:, :-1].clone()
        expected[:, 6] = torch.atan2(torch.sin(expected[:, 6]), torch.cos(expected[:, 6]))
        # the clamped corner box decodes to the clamped centre (max = size - 0.5 cells)
        expected[:, 0:2] = expected[:, 0:2].clamp(max=PC_RANGE[3] - 0.5 * VOXEL[0])
        torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=0)


def test_top_k_decoding_of_target_heatmap_recovers_gt():
    head = build_head(head_cfg(iou=False))
    targets = head.assign_targets(GT_BOXES, feature_map_size=(24, 24))
    pred = _dense_from_targets(targets, 0)
    dets = centernet_utils.decode_bbox_from_heatmap(
        targets['heatmaps'][0], rot_cos=pred['rot'][:, 0:1], rot_sin=pred['rot'][:, 1:2], center=pred['center'],
        center_z=pred['center_z'], dim=pred['dim'].exp(), point_cloud_range=PC_RANGE, voxel_size=VOXEL,
        feature_map_stride=1, K=100, score_thresh=0.999,
        post_center_limit_range=torch.tensor([-80., -80, -10, 80, 80, 10]))
    for b in range(2):
        real = GT_BOXES[b][GT_BOXES[b, :, -1] > 0]
        assert len(dets[b]['pred_boxes']) == len(real)
        order = torch.argsort(dets[b]['pred_boxes'][:, 0])
        real = real[torch.argsort(real[:, 0])]
        torch.testing.assert_close(dets[b]['pred_labels'][order].long() + 1, real[:, -1].long())
        expected = real[:, :7].clone()
        expected[:, 0:2] = expected[:, 0:2].clamp(max=PC_RANGE[3] - 0.5 * VOXEL[0])  # the clamped corner box
        expected[:, 6] = torch.atan2(torch.sin(expected[:, 6]), torch.cos(expected[:, 6]))
        torch.testing.assert_close(dets[b]['pred_boxes'][order], expected, atol=1e-5, rtol=0)
        assert (dets[b]['pred_scores'] == 1).all()


def test_state_dict_names_match_openpcdet():
    head = build_head(head_cfg(vel=True))
    keys = set(head.state_dict())
    for name in ('center', 'center_z', 'dim', 'rot', 'vel', 'iou', 'hm'):
        for suffix in ('0.0.weight', '0.1.weight', '0.1.bias', '0.1.running_mean', '0.1.running_var',
                       '0.1.num_batches_tracked', '1.weight', '1.bias'):
            assert f'heads_list.0.{name}.{suffix}' in keys
    assert {'shared_conv.0.weight', 'shared_conv.1.weight', 'shared_conv.1.bias'} <= keys
    assert 'shared_conv.0.bias' not in keys  # USE_BIAS_BEFORE_NORM False
    assert not any('class_id_mapping' in k or 'loss' in k for k in keys)
    assert torch.allclose(head.heads_list[0].hm[-1].bias, torch.full((3,), -2.19))
    assert torch.equal(head.heads_list[0].center[-1].bias, torch.zeros(2))


def test_get_loss_terms_repeatable_and_code_weights():
    head = build_head(head_cfg(vel=True))
    gt = torch.cat((GT_BOXES[..., :7], torch.ones(2, 4, 2), GT_BOXES[..., 7:]), dim=-1)
    head.train()
    head({'spatial_features_2d': torch.randn(2, 8, 24, 24, generator=torch.Generator().manual_seed(0)),
          'batch_size': 2, 'gt_boxes': gt})
    loss, tb = head.get_loss()
    loss2, tb2 = head.get_loss()
    assert loss.item() == loss2.item() and tb == tb2  # stored logits are not overwritten
    assert set(tb) == {'hm_loss_head_0', 'loc_loss_head_0', 'iou_loss_head_0', 'iou_reg_loss_head_0', 'rpn_loss'}
    assert tb['rpn_loss'] == pytest.approx(tb['hm_loss_head_0'] + tb['loc_loss_head_0'] + tb['iou_loss_head_0'] +
                                           tb['iou_reg_loss_head_0'], rel=1e-5)
    # loc loss = loc_weight * sum(code_weights * L1 per code)
    pred_dict = head.forward_ret_dict['pred_dicts'][0]
    t = head.forward_ret_dict['target_dicts']
    preds = torch.cat([pred_dict[n] for n in ('center', 'center_z', 'dim', 'rot', 'vel')], dim=1)
    per_code = loss_utils.RegLossCenterNet()(preds, t['masks'][0], t['inds'][0], t['target_boxes'][0])
    weights = torch.tensor([1.0] * 8 + [0.2, 0.2])
    assert tb['loc_loss_head_0'] == pytest.approx(2.0 * float((per_code * weights).sum().detach()), rel=1e-5)
    # heatmap loss = focal loss of clamped sigmoid
    hm = loss_utils.neg_loss_cornernet(pred_dict['hm'].sigmoid().clamp(1e-4, 1 - 1e-4), t['heatmaps'][0])
    assert tb['hm_loss_head_0'] == pytest.approx(hm.item(), rel=1e-5)
    loss.backward()
    assert head.heads_list[0].iou[-1].weight.grad.abs().sum() > 0


def test_no_objects_keeps_graph_connected():
    head = build_head()
    head.train()
    head({'spatial_features_2d': torch.randn(1, 8, 24, 24), 'batch_size': 1, 'gt_boxes': torch.zeros(1, 2, 8)})
    loss, tb = head.get_loss()
    loss.backward()
    assert math.isfinite(loss.item()) and tb['iou_reg_loss_head_0'] == 0


def test_feature_map_size_mismatch_is_explained():
    head = build_head()
    head.train()
    with pytest.raises(ValueError, match='FEATURE_MAP_STRIDE'):
        head({'spatial_features_2d': torch.randn(1, 8, 12, 12), 'batch_size': 1, 'gt_boxes': GT_BOXES[:1]})


def _controlled_pred_dict(num_cls=3, H=24, W=24, peaks=(), iou_value=0.2):
    """Raw outputs with heatmap peaks at chosen (cls, y, x, logit) and unit boxes everywhere."""
    hm = torch.full((1, num_cls, H, W), -10.0)
    for cls, y, x, logit in peaks:
        hm[0, cls, y, x] = logit
    return {
        'hm': hm, 'center': torch.full((1, 2, H, W), 0.5), 'center_z': torch.zeros(1, 1, H, W),
        'dim': torch.zeros(1, 3, H, W), 'rot': torch.cat((torch.ones(1, 1, H, W), torch.zeros(1, 1, H, W)), 1),
        'iou': torch.full((1, 1, H, W), 2 * iou_value - 1),
    }


def test_post_processing_rectifies_scores_filters_and_labels_are_one_based():
    head = build_head()
    peaks = [(0, 5, 5, 2.0), (1, 15, 3, 1.0), (2, 20, 20, 0.0), (1, 10, 15, -3.0)]  # last below SCORE_THRESH
    pred = _controlled_pred_dict(peaks=peaks, iou_value=0.6)
    out = head.generate_predicted_boxes(1, [pred])[0]
    assert out['pred_boxes'].shape == (3, 7)
    labels = out['pred_labels'].tolist()
    assert sorted(labels) == [1, 2, 3]
    alphas = {1: 0.68, 2: 0.71, 3: 0.65}
    logits = {1: 2.0, 2: 1.0, 3: 0.0}
    for label, score, box in zip(labels, out['pred_scores'].tolist(), out['pred_boxes']):
        s = torch.sigmoid(torch.tensor(logits[label])).item()
        assert score == pytest.approx(s ** (1 - alphas[label]) * 0.6 ** alphas[label], rel=1e-5)
        assert box[3:6].tolist() == [1.0, 1.0, 1.0]
    car = out['pred_boxes'][out['pred_labels'] == 1][0]
    assert car[0].item() == pytest.approx((5 + 0.5) * 0.5 - 6) and car[1].item() == pytest.approx((5 + 0.5) * 0.5 - 6)

    limited = head_cfg()
    limited.POST_PROCESSING.POST_CENTER_LIMIT_RANGE = [-80, -80, -10, 0, 0, 10]  # only the car's centre is inside
    out = build_head(limited).generate_predicted_boxes(1, [pred])[0]
    assert out['pred_labels'].tolist() == [1]


def test_single_value_iou_rectifier_applies_to_all_classes():
    cfg = head_cfg()
    cfg.POST_PROCESSING.IOU_RECTIFIER = [0.5]
    pred = _controlled_pred_dict(peaks=[(2, 3, 3, 0.0)], iou_value=0.36)
    out = build_head(cfg).generate_predicted_boxes(1, [pred])[0]
    assert out['pred_scores'].item() == pytest.approx(0.5 ** 0.5 * 0.36 ** 0.5, rel=1e-5)


@pytest.mark.parametrize('nms', [
    {'NMS_TYPE': 'class_specific_nms', 'NMS_THRESH': [0.1, 0.1, 0.1], 'NMS_PRE_MAXSIZE': [100] * 3,
     'NMS_POST_MAXSIZE': [100] * 3},
    {'NMS_TYPE': 'multi_class_nms', 'NMS_THRESH': [0.1, 0.1, 0.1], 'NMS_PRE_MAXSIZE': [100] * 3,
     'NMS_POST_MAXSIZE': [100] * 3},
    {'NMS_TYPE': 'nms_gpu', 'NMS_THRESH': 0.1, 'NMS_PRE_MAXSIZE': 100, 'NMS_POST_MAXSIZE': 100},
    {'NMS_TYPE': 'circle_nms', 'NMS_THRESH': [1.0, 1.0], 'NMS_PRE_MAXSIZE': 100, 'NMS_POST_MAXSIZE': 100},
])
def test_nms_variants_multi_head(nms):
    cfg = head_cfg(heads=(('Vehicle',), ('Pedestrian', 'Cyclist')), iou=False, nms=nms)
    head = build_head(cfg)
    # head 0: two vehicles in adjacent cells (overlapping unit boxes, 0.5 m apart) -> one survives;
    # head 1: a pedestrian and a cyclist in the same cell -> class-aware NMS keeps both, class-agnostic keeps one.
    p0 = _controlled_pred_dict(num_cls=1, peaks=[(0, 5, 5, 2.0), (0, 5, 6, 1.0)])
    p1 = _controlled_pred_dict(num_cls=2, peaks=[(0, 15, 15, 2.0), (1, 15, 15, 1.5)])
    out = head.generate_predicted_boxes(1, [p0, p1])[0]
    labels = out['pred_labels'].tolist()
    assert labels.count(1) == 1
    if nms['NMS_TYPE'] in ('class_specific_nms', 'multi_class_nms'):
        assert sorted(labels) == [1, 2, 3]
    else:
        assert sorted(labels) == [1, 2]
    assert out['pred_scores'][out['pred_labels'] == 1].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())


def test_eval_forward_writes_final_box_dicts_and_rois_for_two_stage():
    head = build_head()
    head.eval()
    batch = {'spatial_features_2d': torch.randn(2, 8, 24, 24), 'batch_size': 2}
    out = head(dict(batch))
    assert len(out['final_box_dicts']) == 2
    for d in out['final_box_dicts']:
        assert set(d) == {'pred_boxes', 'pred_scores', 'pred_labels'}
        assert d['pred_labels'].dtype == torch.long and (d['pred_labels'] >= 1).all()
    head.predict_boxes_when_training = True
    out = head(dict(batch))
    assert out['rois'].shape[0] == 2 and out['has_class_labels'] is True and 'final_box_dicts' not in out


@pytest.fixture
def single_thread():
    """Tiny convolutions gain nothing from threads; one thread keeps the timing stable on a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_head_overfits_two_boxes(single_thread):
    """~100 Adam steps on a fixed BEV map: the decoded predictions match both GT boxes (3D IoU > 0.7)."""
    torch.manual_seed(0)
    cfg = head_cfg(channels=32)
    head = build_head(cfg, input_channels=16)
    features = torch.randn(1, 16, 24, 24, generator=torch.Generator().manual_seed(1))
    gt = torch.tensor([[[2.3, -1.7, 0.2, 4.0, 1.8, 1.5, 0.5, 1],
                        [-3.1, 2.4, 0.1, 0.8, 0.7, 1.7, -1.0, 2]]])
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    head.train()
    for _ in range(100):
        optimizer.zero_grad()
        head({'spatial_features_2d': features, 'batch_size': 1, 'gt_boxes': gt})
        loss, _ = head.get_loss()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        out = head({'spatial_features_2d': features, 'batch_size': 1})['final_box_dicts'][0]
    assert len(out['pred_boxes']) >= 2
    top = torch.argsort(out['pred_scores'], descending=True)[:2]
    iou = iou3d_nms_utils.boxes_iou3d_gpu(out['pred_boxes'][top], gt[0, :, :7])
    best = iou.max(dim=0)
    assert (best.values > 0.7).all(), (iou, out)  # typically 0.83-0.94 over seeds
    assert out['pred_labels'][top][best.indices].tolist() == [1, 2]
