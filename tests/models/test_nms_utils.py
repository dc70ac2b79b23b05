"""model_nms_utils against brute-force greedy NMS over an explicit IoU matrix."""
import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.models.model_utils import centernet_utils, model_nms_utils
from pcdet.ops.iou3d_nms import iou3d_nms_utils


def random_boxes(n, seed=0, spread=6.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(n, 2, generator=g) * spread
    z = torch.rand(n, 1, generator=g)
    dims = torch.rand(n, 3, generator=g) * 2 + 1.0
    heading = (torch.rand(n, 1, generator=g) - 0.5) * 2 * np.pi
    scores = torch.rand(n, generator=g)
    return torch.cat((centers, z, dims, heading), dim=1), scores


def brute_greedy(iou, scores, thresh, candidates=None):
    """Greedy NMS over the candidate indices (all by default) in descending score order (stable)."""
    idx = list(range(len(scores))) if candidates is None else list(candidates)
    idx.sort(key=lambda i: -float(scores[i]))
    keep = []
    for i in idx:
        if all(float(iou[i, j]) <= thresh for j in keep):
            keep.append(i)
    return keep


def test_class_agnostic_nms_matches_brute_force_with_pre_post_and_score_thresh():
    boxes, scores = random_boxes(60)
    cfg = EasyDict(NMS_TYPE='nms_gpu', NMS_THRESH=0.2, NMS_PRE_MAXSIZE=40, NMS_POST_MAXSIZE=7)
    selected, sel_scores = model_nms_utils.class_agnostic_nms(scores, boxes, cfg, score_thresh=0.1)

    iou = iou3d_nms_utils.boxes_iou_bev(boxes, boxes)
    cand = [i for i in range(60) if scores[i] >= 0.1]
    cand = sorted(cand, key=lambda i: -float(scores[i]))[:40]
    expected = brute_greedy(iou, scores, 0.2, cand)[:7]
    assert selected.dtype == torch.long
    assert selected.tolist() == expected
    assert torch.equal(sel_scores, scores[selected])
    assert len(expected) == 7  # the post cap is really exercised


def test_class_agnostic_nms_normal_and_empty():
    boxes, scores = random_boxes(30, seed=1)
    cfg = EasyDict(NMS_TYPE='nms_normal_gpu', NMS_THRESH=0.1, NMS_PRE_MAXSIZE=100, NMS_POST_MAXSIZE=100)
    selected, _ = model_nms_utils.class_agnostic_nms(scores, boxes, cfg)
    # axis-aligned IoU computed by hand
    lo = boxes[:, 0:2] - boxes[:, 3:5] / 2
    hi = boxes[:, 0:2] + boxes[:, 3:5] / 2
    inter = (torch.min(hi[:, None], hi[None]) - torch.max(lo[:, None], lo[None])).clamp(min=0).prod(-1)
    area = boxes[:, 3] * boxes[:, 4]
    iou = inter / (area[:, None] + area[None] - inter)
    assert selected.tolist() == brute_greedy(iou, scores, 0.1)

    sel, sc = model_nms_utils.class_agnostic_nms(scores, boxes, cfg, score_thresh=2.0)
    assert sel.numel() == 0 and sc.numel() == 0 and sel.dtype == torch.long


def test_unknown_nms_type_is_a_clear_error():
    boxes, scores = random_boxes(3)
    with pytest.raises(ValueError, match='Unknown NMS_TYPE'):
        model_nms_utils.class_agnostic_nms(scores, boxes, EasyDict(NMS_TYPE='nms_fancy', NMS_THRESH=0.1))


def _class_case(seed=2, n=80):
    boxes, scores = random_boxes(n, seed=seed, spread=4.0)
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))
    return boxes, scores, labels


def _brute_class_specific(boxes, scores, labels, thresh, pre, post, score_thresh=None):
    iou = iou3d_nms_utils.boxes_iou_bev(boxes, boxes)
    out = []
    for k in range(len(thresh)):
        cand = [i for i in range(len(scores)) if labels[i] == k and (score_thresh is None or scores[i] > score_thresh)]
        cand = sorted(cand, key=lambda i: -float(scores[i]))[:pre[k]]
        keep = brute_greedy(iou, scores, thresh[k], cand)
        out += keep if post is None else keep[:post[k]]
    return out


def test_class_specific_nms_applies_post_maxsize_by_default():
    boxes, scores, labels = _class_case()
    cfg = EasyDict(NMS_TYPE='class_specific_nms', NMS_THRESH=[0.3, 0.1, 0.5], NMS_PRE_MAXSIZE=[20, 30, 25],
                   NMS_POST_MAXSIZE=[3, 2, 4])
    selected, sel_scores = model_nms_utils.class_specific_nms(scores, boxes, labels, cfg, score_thresh=0.05)
    expected = _brute_class_specific(boxes, scores, labels, [0.3, 0.1, 0.5], [20, 30, 25], [3, 2, 4], 0.05)
    assert selected.tolist() == expected
    assert torch.equal(sel_scores, scores[selected])
    for k, cap in enumerate([3, 2, 4]):
        assert (labels[selected] == k).sum() <= cap


def test_class_specific_nms_compat_flag_ignores_post_maxsize_like_upstream():
    boxes, scores, labels = _class_case()
    cfg = EasyDict(NMS_TYPE='class_specific_nms', NMS_THRESH=[0.3, 0.1, 0.5], NMS_PRE_MAXSIZE=[20, 30, 25],
                   NMS_POST_MAXSIZE=[3, 2, 4], COMPAT_IGNORE_POST_MAXSIZE=True)
    selected, _ = model_nms_utils.class_specific_nms(scores, boxes, labels, cfg)
    expected = _brute_class_specific(boxes, scores, labels, [0.3, 0.1, 0.5], [20, 30, 25], None)
    assert selected.tolist() == expected
    assert len(expected) > 9  # more than the caps would allow


def test_class_specific_nms_per_class_score_thresh_and_empty():
    boxes, scores, labels = _class_case(seed=4, n=20)
    cfg = EasyDict(NMS_THRESH=[0.5, 0.5, 0.5], NMS_PRE_MAXSIZE=[100] * 3, NMS_POST_MAXSIZE=[100] * 3)
    selected, _ = model_nms_utils.class_specific_nms(scores, boxes, labels, cfg, score_thresh=[2.0, 0.0, 2.0])
    assert set(labels[selected].tolist()) <= {1}
    selected, scores_out = model_nms_utils.class_specific_nms(scores[:0], boxes[:0], labels[:0], cfg)
    assert selected.numel() == 0 and scores_out.numel() == 0


def test_multi_classes_nms_labels_are_column_indices():
    boxes, _ = random_boxes(40, seed=5)
    cls_scores = torch.rand(40, 3, generator=torch.Generator().manual_seed(6))
    cfg = EasyDict(NMS_TYPE='nms_gpu', NMS_THRESH=0.2, NMS_PRE_MAXSIZE=30, NMS_POST_MAXSIZE=5)
    scores, labels, out_boxes = model_nms_utils.multi_classes_nms(cls_scores, boxes, cfg, score_thresh=0.2)
    iou = iou3d_nms_utils.boxes_iou_bev(boxes, boxes)
    exp_scores, exp_labels, exp_idx = [], [], []
    for k in range(3):
        cand = sorted([i for i in range(40) if cls_scores[i, k] >= 0.2], key=lambda i: -float(cls_scores[i, k]))[:30]
        keep = brute_greedy(iou, cls_scores[:, k], 0.2, cand)[:5]
        exp_idx += keep
        exp_labels += [k] * len(keep)
        exp_scores += [float(cls_scores[i, k]) for i in keep]
    assert labels.tolist() == exp_labels
    assert torch.equal(out_boxes, boxes[exp_idx])
    np.testing.assert_allclose(scores.numpy(), exp_scores)


def test_legacy_mmdet_nms_turns_footprints_by_90_degrees():
    # Two 4.5 x 2 m cars 0.5 m apart along their heading: true BEV IoU 0.8, legacy-kernel IoU 0.6 (spec §3.6).
    heading = 0.4
    direction = torch.tensor([np.cos(heading), np.sin(heading)], dtype=torch.float32)
    boxes = torch.tensor([[10.0, 5.0, 0.0, 4.5, 2.0, 1.5, heading]] * 2)
    boxes[1, 0:2] += 0.5 * direction
    scores = torch.tensor([0.9, 0.8])
    labels = torch.tensor([0, 0])
    cfg = EasyDict(NMS_THRESH=[0.7], NMS_PRE_MAXSIZE=[10], NMS_POST_MAXSIZE=[10])
    opcd, _ = model_nms_utils.class_specific_nms(scores, boxes, labels, cfg)
    legacy, _ = model_nms_utils.multi_classes_nms_mmdet(scores, boxes, labels, cfg)
    assert opcd.tolist() == [0]          # 0.8 > 0.7: suppressed
    assert legacy.tolist() == [0, 1]     # 0.6 < 0.7: kept
    # the same offset sideways: true IoU 0.6, legacy 0.8 -> the roles swap
    side = torch.tensor([-np.sin(heading), np.cos(heading)], dtype=torch.float32)
    boxes[1, 0:2] = boxes[0, 0:2] + 0.5 * side
    assert float(iou3d_nms_utils.boxes_iou_bev(boxes[0:1], boxes[1:2])) == pytest.approx(0.6, abs=1e-4)
    opcd, _ = model_nms_utils.class_specific_nms(scores, boxes, labels, cfg)
    legacy, _ = model_nms_utils.multi_classes_nms_mmdet(scores, boxes, labels, cfg)
    assert opcd.tolist() == [0, 1]
    assert legacy.tolist() == [0]


def brute_circle_nms(dets, thresh):
    order = sorted(range(len(dets)), key=lambda i: -dets[i, 2])
    keep = []
    for i in order:
        if all((dets[i, 0] - dets[j, 0]) ** 2 + (dets[i, 1] - dets[j, 1]) ** 2 > thresh for j in keep):
            keep.append(i)
    return keep


def test_circle_nms_matches_brute_force():
    g = np.random.default_rng(0)
    dets = np.concatenate([g.uniform(0, 10, (200, 2)), g.uniform(0, 1, (200, 1))], axis=1)
    for thresh in (0.25, 1.0, 4.0):
        assert centernet_utils.circle_nms(dets, thresh) == brute_circle_nms(dets, thresh)
    assert centernet_utils.circle_nms(np.zeros((0, 3)), 1.0) == []
    keep = centernet_utils._circle_nms(torch.from_numpy(dets).float(), min_radius=1.0, post_max_size=5)
    assert keep.dtype == torch.long and keep.tolist() == brute_circle_nms(dets.astype(np.float32), 1.0)[:5]


def test_circle_nms_through_class_agnostic_nms():
    g = np.random.default_rng(1)
    boxes = torch.zeros(50, 7)
    boxes[:, 0:2] = torch.from_numpy(g.uniform(0, 8, (50, 2))).float()
    boxes[:, 3:6] = 1
    scores = torch.from_numpy(g.uniform(0, 1, 50)).float()
    cfg = EasyDict(NMS_TYPE='circle_nms', NMS_THRESH=1.5, NMS_PRE_MAXSIZE=50, NMS_POST_MAXSIZE=8)
    selected, _ = model_nms_utils.class_agnostic_nms(scores, boxes, cfg)
    dets = torch.cat((boxes[:, 0:2], scores[:, None]), 1).numpy()
    assert selected.tolist() == brute_circle_nms(dets, 1.5)[:8]
