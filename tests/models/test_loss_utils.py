"""Every loss in pcdet.utils.loss_utils against a straightforward (loop / closed-form) version."""
import math

import numpy as np
import pytest
import torch

from pcdet.utils import loss_utils


def _rng(seed=0):
    return torch.Generator().manual_seed(seed)


def brute_focal_centernet(pred, gt, mask=None):
    pos_sum, neg_sum, num_pos = 0.0, 0.0, 0
    B, C, H, W = pred.shape
    for b in range(B):
        for c in range(C):
            for y in range(H):
                for x in range(W):
                    if mask is not None and mask[b, y, x] == 0:
                        continue
                    p, g = float(pred[b, c, y, x]), float(gt[b, c, y, x])
                    if g == 1:
                        pos_sum += math.log(p) * (1 - p) ** 2
                        num_pos += 1
                    else:
                        neg_sum += math.log(1 - p) * p ** 2 * (1 - g) ** 4
    if num_pos == 0:
        return -neg_sum
    return -(pos_sum + neg_sum) / num_pos


def _heatmap_case(seed=0, with_pos=True):
    g = _rng(seed)
    pred = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64).clamp(1e-4, 1 - 1e-4)
    gt = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64) * 0.9
    if with_pos:
        gt[0, 1, 2, 3] = 1.0
        gt[1, 0, 4, 5] = 1.0
        gt[1, 2, 0, 0] = 1.0
    return pred, gt


@pytest.mark.parametrize('with_pos', [True, False])
def test_focal_loss_centernet_matches_brute_force(with_pos):
    pred, gt = _heatmap_case(with_pos=with_pos)
    loss = loss_utils.FocalLossCenterNet()(pred, gt)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(brute_focal_centernet(pred, gt), rel=1e-10)


def test_focal_loss_centernet_with_mask():
    pred, gt = _heatmap_case(seed=3)
    mask = (torch.rand(2, 5, 6, generator=_rng(4)) > 0.3).double()
    mask[0, 2, 3] = 1
    loss = loss_utils.FocalLossCenterNet()(pred, gt, mask=mask)
    assert loss.item() == pytest.approx(brute_focal_centernet(pred, gt, mask), rel=1e-10)


def test_focal_loss_sparse_matches_dense():
    pred, gt = _heatmap_case(seed=5)
    dense = loss_utils.neg_loss_cornernet(pred, gt)
    flat = [t.permute(0, 2, 3, 1).reshape(-1, 3) for t in (pred, gt)]
    sparse = loss_utils.FocalLossSparse()(*flat)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-10)


def test_reg_loss_centernet_matches_brute_force_and_ignores_nan():
    g = _rng(1)
    B, D, H, W, K = 2, 4, 5, 6, 3
    output = torch.randn(B, D, H, W, generator=g, dtype=torch.float64)
    ind = torch.tensor([[0, 7, 29], [5, 5, 12]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    target = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    target[1, 2, 3] = float('nan')   # a NaN target inside a real object: ignored
    target[0, 2, :] = float('nan')   # NaN in a padding slot: ignored anyway
    loss = loss_utils.RegLossCenterNet()(output, mask, ind, target)

    expected = np.zeros(D)
    for b in range(B):
        for k in range(K):
            if mask[b, k] == 0:
                continue
            y, x = divmod(int(ind[b, k]), W)
            for d in range(D):
                t = float(target[b, k, d])
                if not math.isnan(t):
                    expected[d] += abs(float(output[b, d, y, x]) - t)
    expected /= 4  # four real objects
    assert loss.shape == (D,)
    assert torch.isfinite(loss).all()
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)


def test_reg_loss_no_objects_is_zero():
    output = torch.randn(1, 2, 3, 3, requires_grad=True)
    zeros = torch.zeros(1, 4, dtype=torch.long)
    loss = loss_utils.RegLossCenterNet()(output, zeros, zeros, torch.zeros(1, 4, 2))
    assert torch.equal(loss, torch.zeros(2))
    loss.sum().backward()  # graph stays connected
    assert output.grad is not None


def test_transpose_and_gather_feat():
    feat = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    ind = torch.tensor([[0, 19, 7], [3, 3, 10]])
    out = loss_utils._transpose_and_gather_feat(feat, ind)
    for b in range(2):
        for k in range(3):
            y, x = divmod(int(ind[b, k]), 5)
            assert torch.equal(out[b, k], feat[b, :, y, x])


def test_sigmoid_focal_classification_loss():
    g = _rng(2)
    logits = torch.randn(2, 4, 3, generator=g, dtype=torch.float64) * 3
    target = torch.zeros(2, 4, 3, dtype=torch.float64)
    target[0, 1, 2] = target[1, 3, 0] = target[1, 0, 1] = 1
    weights = torch.rand(2, 4, generator=g, dtype=torch.float64)
    loss = loss_utils.SigmoidFocalClassificationLoss(gamma=2.0, alpha=0.25)(logits, target, weights)
    p = torch.sigmoid(logits)
    expected = torch.where(target == 1, -0.25 * (1 - p) ** 2 * torch.log(p), -0.75 * p ** 2 * torch.log(1 - p))
    expected = expected * weights[..., None]
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('beta', [1.0 / 9.0, 0.0])
def test_weighted_smooth_l1(beta):
    g = _rng(3)
    inp = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    tgt = torch.randn(2, 5, 3, generator=g, dtype=torch.float64) * 0.2 + inp
    tgt[0, 0, 1] = float('nan')
    weights = torch.rand(2, 5, generator=g, dtype=torch.float64)
    code_weights = [1.0, 0.5, 2.0]
    loss = loss_utils.WeightedSmoothL1Loss(beta=beta, code_weights=code_weights)(inp, tgt, weights)
    expected = np.zeros((2, 5, 3))
    for b in range(2):
        for a in range(5):
            for d in range(3):
                t = float(tgt[b, a, d])
                diff = 0.0 if math.isnan(t) else (float(inp[b, a, d]) - t) * code_weights[d]
                n = abs(diff)
                val = n if beta < 1e-5 else (0.5 * n * n / beta if n < beta else n - 0.5 * beta)
                expected[b, a, d] = val * float(weights[b, a])
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10, atol=1e-14)


def test_weighted_l1_and_code_weights_follow_module_device():
    inp = torch.tensor([[[1.0, 2.0]]])
    tgt = torch.tensor([[[0.0, float('nan')]]])
    module = loss_utils.WeightedL1Loss(code_weights=[3.0, 1.0])
    assert 'code_weights' not in module.state_dict()  # not saved in checkpoints (as upstream: not a parameter)
    loss = module(inp, tgt, torch.tensor([[2.0]]))
    assert torch.equal(loss, torch.tensor([[[6.0, 0.0]]]))


def test_weighted_cross_entropy():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])
    target = torch.tensor([[[1.0, 0, 0], [0, 0, 1.0]]])
    loss = loss_utils.WeightedCrossEntropyLoss()(logits, target, torch.tensor([[1.0, 0.5]]))
    lsm = torch.log_softmax(logits, dim=-1)
    torch.testing.assert_close(loss, torch.stack([-lsm[0, 0, 0], -0.5 * lsm[0, 1, 2]])[None])


def test_bbox3d_overlaps_diou():
    box = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.7]])
    assert loss_utils.bbox3d_overlaps_diou(box, box).item() == pytest.approx(1.0)
    # axis-aligned boxes shifted by 1 m along x: inter 3*2*2 = 12, union 16+16-12 = 20, centre dist^2 = 1,
    # enclosing box 5 x 2 x 2 -> diag^2 = 25 + 4 + 4 = 33
    a = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.0]])
    assert loss_utils.bbox3d_overlaps_diou(a, b).item() == pytest.approx(12 / 20 - 1 / 33)
    # heading is ignored (axis-aligned, as upstream)
    b_rot = b.clone()
    b_rot[0, 6] = 1.0
    assert loss_utils.bbox3d_overlaps_diou(a, b_rot).item() == pytest.approx(12 / 20 - 1 / 33)


def test_iou_losses_centerhead():
    # One object at cell 5 of a 3x4 map; the decoded box there equals the GT -> IoU target 1 (2*1-1 = 1).
    gt = torch.tensor([1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3])
    boxes = torch.zeros(1, 7, 3, 4)
    boxes[:, 3:6] = 1.0  # non-degenerate boxes elsewhere
    boxes[0, :, 1, 1] = gt
    iou_preds = torch.full((1, 1, 3, 4), 0.25)
    ind = torch.tensor([[5, 0]])
    mask = torch.tensor([[1, 0]])
    gt_src = torch.zeros(1, 2, 8)
    gt_src[0, 0, :7] = gt
    loss = loss_utils.calculate_iou_loss_centerhead(iou_preds, boxes, mask, ind, gt_src)
    assert loss.item() == pytest.approx(0.75, abs=1e-5)
    reg = loss_utils.calculate_iou_reg_loss_centerhead(boxes, mask, ind, gt_src)
    assert reg.item() == pytest.approx(0.0, abs=1e-6)
    empty = loss_utils.calculate_iou_loss_centerhead(iou_preds, boxes, torch.zeros_like(mask), ind, gt_src)
    assert empty.shape == () and empty.item() == 0


def test_l1_and_gaussian_focal_loss():
    pred = torch.tensor([[0.2, 0.9], [0.5, 0.01]], dtype=torch.float64)
    target = torch.tensor([[0.0, 1.0], [0.3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(loss_utils.L1Loss()(pred, target), (pred - target).abs())
    assert loss_utils.L1Loss()(pred[:0], target[:0]).item() == 0
    loss = loss_utils.GaussianFocalLoss()(pred, target)
    expected = torch.empty_like(pred)
    for i in range(2):
        for j in range(2):
            p, t = float(pred[i, j]), float(target[i, j])
            pos = -math.log(p + 1e-12) * (1 - p) ** 2 if t == 1 else 0.0
            neg = -math.log(1 - p + 1e-12) * p ** 2 * (1 - t) ** 4
            expected[i, j] = pos + neg
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-15)
