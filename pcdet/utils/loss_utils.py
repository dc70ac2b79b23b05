"""Losses used by the detection heads, with OpenPCDet's names (`pcdet.utils.loss_utils`).

Every loss is pure tensor maths and runs on the device of its inputs (no `.cuda()`; code weights are registered
as buffers so they follow the module). Formulas, each checked against a brute-force version in
tests/models/test_loss_utils.py:

* `neg_loss_cornernet` / `FocalLossCenterNet` (CenterNet heatmap focal loss, alpha = 2, beta = 4):
  `-(sum_pos log(p) (1-p)^2 + sum_{gt<1} log(1-p) p^2 (1-gt)^4) / max(num_pos, 1)` where positives are the
  cells with `gt == 1` exactly (upstream: when there is no positive, the negative sum is not divided).
* `neg_loss_sparse` / `FocalLossSparse`: the same for (N, C) predictions.
* `RegLossCenterNet`: L1 between predictions gathered at `ind` and targets, masked, NaN targets ignored,
  summed over objects and batch per code dimension and divided by `max(#objects, 1)`; returns (code_size,).
* `SigmoidFocalClassificationLoss` (RetinaNet focal loss on logits), `WeightedSmoothL1Loss`, `WeightedL1Loss`,
  `WeightedCrossEntropyLoss`: element-wise losses with OpenPCDet's weighting conventions.
* `L1Loss`, `GaussianFocalLoss`: the element-wise losses OpenPCDet's TransFusion head uses.
* `calculate_iou_loss_centerhead`, `calculate_iou_reg_loss_centerhead`, `bbox3d_overlaps_diou`: the CenterHead
  IoU-branch losses (spec §3.6).

Fixes vs upstream (documented, not flags): `RegLossCenterNet` really ignores NaN targets (upstream multiplied
NaN by a zero mask, which stays NaN); the IoU losses return a 0-d tensor instead of shape (1,) when there is no
object, so the total loss stays a scalar.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------------------------
# gather helpers (CenterNet)
# --------------------------------------------------------------------------------------------------------------
def _gather_feat(feat, ind, mask=None):
    """Gather rows of `feat` (B, N, C) at `ind` (B, K) -> (B, K, C); with `mask` (B, K) keep masked rows (M, C)."""
    dim = feat.size(2)
    ind = ind.long().unsqueeze(2).expand(ind.size(0), ind.size(1), dim)
    feat = feat.gather(1, ind)
    if mask is not None:
        feat = feat[mask.bool()]
    return feat


def _transpose_and_gather_feat(feat, ind):
    """Values of a dense map `feat` (B, C, H, W) at flat indices `ind` (B, K) (`ind = y * W + x`) -> (B, K, C)."""
    feat = feat.permute(0, 2, 3, 1).contiguous()
    feat = feat.view(feat.size(0), -1, feat.size(3))
    return _gather_feat(feat, ind)


# --------------------------------------------------------------------------------------------------------------
# CenterNet losses
# --------------------------------------------------------------------------------------------------------------
def neg_loss_cornernet(pred, gt, mask=None):
    """CornerNet / CenterNet focal loss on a dense heatmap.

    Args:
        pred: (B, C, H, W) probabilities in (0, 1) (already sigmoid-ed and clamped by the caller).
        gt: (B, C, H, W) Gaussian targets in [0, 1]; exactly 1 at object centres.
        mask: optional (B, H, W) 0/1 map of cells that count.
    Returns:
        0-d tensor.
    """
    pos_inds = gt.eq(1).float()
    neg_inds = gt.lt(1).float()
    neg_weights = torch.pow(1 - gt, 4)

    pos_loss = torch.log(pred) * torch.pow(1 - pred, 2) * pos_inds
    neg_loss = torch.log(1 - pred) * torch.pow(pred, 2) * neg_weights * neg_inds

    if mask is not None:
        mask = mask[:, None, :, :].float()
        pos_loss = pos_loss * mask
        neg_loss = neg_loss * mask
        num_pos = (pos_inds * mask).sum()
    else:
        num_pos = pos_inds.sum()

    pos_loss = pos_loss.sum()
    neg_loss = neg_loss.sum()
    if num_pos == 0:
        return -neg_loss
    return -(pos_loss + neg_loss) / num_pos


def neg_loss_sparse(pred, gt):
    """`neg_loss_cornernet` for sparse predictions: pred, gt (N, C) -> 0-d tensor."""
    pos_inds = gt.eq(1).float()
    neg_inds = gt.lt(1).float()
    neg_weights = torch.pow(1 - gt, 4)
    pos_loss = (torch.log(pred) * torch.pow(1 - pred, 2) * pos_inds).sum()
    neg_loss = (torch.log(1 - pred) * torch.pow(pred, 2) * neg_weights * neg_inds).sum()
    num_pos = pos_inds.sum()
    if num_pos == 0:
        return -neg_loss
    return -(pos_loss + neg_loss) / num_pos


class FocalLossCenterNet(nn.Module):
    """`neg_loss_cornernet` as a module: `forward(out (B, C, H, W) probs, target (B, C, H, W), mask=None)`."""

    def __init__(self):
        super().__init__()
        self.neg_loss = neg_loss_cornernet

    def forward(self, out, target, mask=None):
        return self.neg_loss(out, target, mask=mask)


class FocalLossSparse(nn.Module):
    """`neg_loss_sparse` as a module: `forward(out (N, C) probs, target (N, C))`."""

    def __init__(self):
        super().__init__()
        self.neg_loss = neg_loss_sparse

    def forward(self, out, target):
        return self.neg_loss(out, target)


def _reg_loss(regr, gt_regr, mask):
    """Masked L1 per code dimension.

    Args:
        regr: (B, K, D) predictions gathered at the object cells. gt_regr: (B, K, D) targets (NaN = ignore).
        mask: (B, K) 1 for real objects.
    Returns:
        (D,) `sum |regr - gt| over valid entries / max(#objects, 1)`.
    """
    num = mask.float().sum()
    valid = mask.unsqueeze(2).expand_as(gt_regr).bool() & ~torch.isnan(gt_regr)
    diff = torch.where(valid, regr - torch.nan_to_num(gt_regr), torch.zeros_like(regr))
    loss = diff.abs().sum(dim=(0, 1))
    return loss / torch.clamp_min(num, min=1.0)


class RegLossCenterNet(nn.Module):
    """L1 regression loss at object cells (CenterNet).

    `forward(output, mask, ind=None, target=None)`: `output` (B, D, H, W) dense predictions gathered at `ind`
    (B, K), or (B, K, D) already gathered when `ind` is None; `mask` (B, K); `target` (B, K, D). Returns (D,).
    """

    def forward(self, output, mask, ind=None, target=None):
        pred = output if ind is None else _transpose_and_gather_feat(output, ind)
        return _reg_loss(pred, target, mask)


class RegLossSparse(nn.Module):
    """RegLossCenterNet for sparse outputs: `output` (N, D) with `batch_index` (N,); `ind` indexes within a sample."""

    def forward(self, output, mask, ind=None, target=None, batch_index=None):
        pred = []
        batch_size = mask.shape[0]
        for bs_idx in range(batch_size):
            batch_inds = batch_index == bs_idx
            pred.append(output[batch_inds][ind[bs_idx]])
        pred = torch.stack(pred)
        return _reg_loss(pred, target, mask)


# --------------------------------------------------------------------------------------------------------------
# Anchor-style element-wise losses (OpenPCDet names)
# --------------------------------------------------------------------------------------------------------------
class SigmoidFocalClassificationLoss(nn.Module):
    """RetinaNet focal loss on logits.

    `forward(input (B, #anchors, #classes) logits, target (same) one-hot, weights (B, #anchors))` ->
    `alpha_t * pt^gamma * BCE(input, target) * weights[..., None]` element-wise, with
    `alpha_t = target * alpha + (1 - target) * (1 - alpha)` and `pt = target * (1 - p) + (1 - target) * p`.
    """

    def __init__(self, gamma=2.0, alpha=0.25):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    @staticmethod
    def sigmoid_cross_entropy_with_logits(input, target):
        """Numerically stable `max(x, 0) - x * z + log(1 + exp(-|x|))`."""
        return torch.clamp(input, min=0) - input * target + torch.log1p(torch.exp(-torch.abs(input)))

    def forward(self, input, target, weights):
        pred_sigmoid = torch.sigmoid(input)
        alpha_weight = target * self.alpha + (1 - target) * (1 - self.alpha)
        pt = target * (1.0 - pred_sigmoid) + (1.0 - target) * pred_sigmoid
        focal_weight = alpha_weight * torch.pow(pt, self.gamma)
        loss = focal_weight * self.sigmoid_cross_entropy_with_logits(input, target)
        if weights.dim() == 2 or (weights.dim() == 1 and target.dim() == 2):
            weights = weights.unsqueeze(-1)
        if weights.dim() != loss.dim():
            raise ValueError(f'weights {tuple(weights.shape)} do not broadcast to the loss {tuple(loss.shape)}')
        return loss * weights


def _code_weights_buffer(module, code_weights):
    if code_weights is None:
        module.code_weights = None
    else:
        module.register_buffer('code_weights', torch.as_tensor(np.asarray(code_weights, dtype=np.float32)),
                               persistent=False)


class WeightedSmoothL1Loss(nn.Module):
    """Code-wise weighted smooth-L1 (`0.5 n^2 / beta` if `n < beta` else `n - 0.5 beta`; plain L1 if beta < 1e-5).

    `forward(input (B, #anchors, D), target (same), weights (B, #anchors) or None)` -> (B, #anchors, D).
    NaN targets are ignored (replaced by the prediction). Code weights (D,) multiply the difference.
    """

    def __init__(self, beta=1.0 / 9.0, code_weights=None):
        super().__init__()
        self.beta = beta
        _code_weights_buffer(self, code_weights)

    @staticmethod
    def smooth_l1_loss(diff, beta):
        if beta < 1e-5:
            return torch.abs(diff)
        n = torch.abs(diff)
        return torch.where(n < beta, 0.5 * n ** 2 / beta, n - 0.5 * beta)

    def forward(self, input, target, weights=None):
        target = torch.where(torch.isnan(target), input, target)
        diff = input - target
        if self.code_weights is not None:
            diff = diff * self.code_weights.view(1, 1, -1).to(diff)
        loss = self.smooth_l1_loss(diff, self.beta)
        if weights is not None:
            if weights.shape[0] != loss.shape[0] or weights.shape[1] != loss.shape[1]:
                raise ValueError(f'weights {tuple(weights.shape)} must match the loss {tuple(loss.shape[:2])}')
            loss = loss * weights.unsqueeze(-1)
        return loss


class WeightedL1Loss(nn.Module):
    """Code-wise weighted L1: like `WeightedSmoothL1Loss` with `|diff|`; (B, #anchors, D) -> (B, #anchors, D)."""

    def __init__(self, code_weights=None):
        super().__init__()
        _code_weights_buffer(self, code_weights)

    def forward(self, input, target, weights=None):
        target = torch.where(torch.isnan(target), input, target)
        diff = input - target
        if self.code_weights is not None:
            diff = diff * self.code_weights.view(1, 1, -1).to(diff)
        loss = torch.abs(diff)
        if weights is not None:
            if weights.shape[0] != loss.shape[0] or weights.shape[1] != loss.shape[1]:
                raise ValueError(f'weights {tuple(weights.shape)} must match the loss {tuple(loss.shape[:2])}')
            loss = loss * weights.unsqueeze(-1)
        return loss


class WeightedCrossEntropyLoss(nn.Module):
    """Softmax cross entropy with one-hot targets.

    `forward(input (B, #anchors, C) logits, target (same) one-hot, weights (B, #anchors))` -> (B, #anchors).
    """

    def forward(self, input, target, weights):
        input = input.permute(0, 2, 1)
        target = target.argmax(dim=-1)
        return F.cross_entropy(input, target, reduction='none') * weights


class L1Loss(nn.Module):
    """Element-wise `|pred - target|` (TransFusion box loss); an empty target gives a connected zero."""

    def forward(self, pred, target):
        if target.numel() == 0:
            return pred.sum() * 0
        if pred.size() != target.size():
            raise ValueError(f'pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape')
        return torch.abs(pred - target)


class GaussianFocalLoss(nn.Module):
    """Element-wise focal loss against a Gaussian heatmap (TransFusion heatmap loss, mmdet semantics).

    `forward(pred probs, target)` -> `-log(p + eps) (1-p)^alpha [t == 1] - log(1 - p + eps) p^alpha (1-t)^gamma`,
    eps = 1e-12 (no normalisation; the caller divides by the number of objects).
    """

    def __init__(self, alpha=2.0, gamma=4.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, pred, target):
        eps = 1e-12
        pos_weights = target.eq(1)
        neg_weights = (1 - target).pow(self.gamma)
        pos_loss = -(pred + eps).log() * (1 - pred).pow(self.alpha) * pos_weights
        neg_loss = -(1 - pred + eps).log() * pred.pow(self.alpha) * neg_weights
        return pos_loss + neg_loss


# --------------------------------------------------------------------------------------------------------------
# CenterHead IoU branch
# --------------------------------------------------------------------------------------------------------------
def _center_to_corner2d(center, dim):
    """Axis-aligned footprint corners (N, 4, 2), order (-,-), (-,+), (+,+), (+,-); heading ignored."""
    corners_norm = center.new_tensor([[-0.5, -0.5], [-0.5, 0.5], [0.5, 0.5], [0.5, -0.5]])
    return dim.view(-1, 1, 2) * corners_norm.view(1, 4, 2) + center.view(-1, 1, 2)


def bbox3d_overlaps_diou(pred_boxes, gt_boxes):
    """Distance-IoU of row-aligned boxes, **axis-aligned** (headings ignored), as upstream (PillarNet).

    `DIoU = inter_vol / union_vol - |c_pred - c_gt|^2 / diag(enclosing box)^2`, clamped to [-1, 1].

    Args:
        pred_boxes: (N, 7+). gt_boxes: (N, 7+).
    Returns:
        (N,) tensor, differentiable w.r.t. both inputs.
    """
    if pred_boxes.shape[0] != gt_boxes.shape[0]:
        raise ValueError(f'pred_boxes and gt_boxes must be row-aligned, got {pred_boxes.shape[0]} and '
                         f'{gt_boxes.shape[0]} rows')
    qcorners = _center_to_corner2d(pred_boxes[:, :2], pred_boxes[:, 3:5])
    gcorners = _center_to_corner2d(gt_boxes[:, :2], gt_boxes[:, 3:5])

    inter_max_xy = torch.minimum(qcorners[:, 2], gcorners[:, 2])
    inter_min_xy = torch.maximum(qcorners[:, 0], gcorners[:, 0])
    out_max_xy = torch.maximum(qcorners[:, 2], gcorners[:, 2])
    out_min_xy = torch.minimum(qcorners[:, 0], gcorners[:, 0])

    volume_pred = pred_boxes[:, 3] * pred_boxes[:, 4] * pred_boxes[:, 5]
    volume_gt = gt_boxes[:, 3] * gt_boxes[:, 4] * gt_boxes[:, 5]

    pred_top, pred_bottom = pred_boxes[:, 2] + 0.5 * pred_boxes[:, 5], pred_boxes[:, 2] - 0.5 * pred_boxes[:, 5]
    gt_top, gt_bottom = gt_boxes[:, 2] + 0.5 * gt_boxes[:, 5], gt_boxes[:, 2] - 0.5 * gt_boxes[:, 5]
    inter_h = torch.clamp(torch.minimum(pred_top, gt_top) - torch.maximum(pred_bottom, gt_bottom), min=0)
    inter = torch.clamp(inter_max_xy - inter_min_xy, min=0)
    volume_inter = inter[:, 0] * inter[:, 1] * inter_h
    volume_union = volume_gt + volume_pred - volume_inter

    inter_diag = torch.pow(gt_boxes[:, 0:3] - pred_boxes[:, 0:3], 2).sum(-1)
    outer_h = torch.clamp(torch.maximum(gt_top, pred_top) - torch.minimum(gt_bottom, pred_bottom), min=0)
    outer = torch.clamp(out_max_xy - out_min_xy, min=0)
    outer_diag = outer[:, 0] ** 2 + outer[:, 1] ** 2 + outer_h ** 2

    dious = volume_inter / volume_union - inter_diag / outer_diag
    return torch.clamp(dious, min=-1.0, max=1.0)


def calculate_iou_loss_centerhead(iou_preds, batch_box_preds, mask, ind, gt_boxes):
    """IoU-prediction loss: L1(iou_pred, 2 * IoU3D(decoded box, GT) - 1) summed over objects / #objects.

    Args:
        iou_preds: (B, 1, H, W) raw IoU branch output.
        batch_box_preds: (B, 7 or 9, H, W) decoded boxes (pass them detached: the target carries no gradient).
        mask: (B, K) 1 for real objects. ind: (B, K) flat cell indices.
        gt_boxes: (B, K, 7+) GT boxes (`target_boxes_src`).
    Returns:
        0-d tensor (0 when there is no object).
    """
    from ..ops.iou3d_nms import iou3d_nms_utils  # heavy-ish op module, imported on first use

    if mask.sum() == 0:
        return iou_preds.sum() * 0.0
    mask = mask.bool()
    selected_iou_preds = _transpose_and_gather_feat(iou_preds, ind)[mask]
    selected_box_preds = _transpose_and_gather_feat(batch_box_preds, ind)[mask]
    iou_target = iou3d_nms_utils.paired_boxes_iou3d_gpu(selected_box_preds[:, 0:7], gt_boxes[mask][:, 0:7])
    iou_target = (iou_target * 2 - 1).to(selected_iou_preds.dtype)  # [0, 1] -> [-1, 1]
    loss = F.l1_loss(selected_iou_preds.view(-1), iou_target, reduction='sum')
    return loss / torch.clamp(mask.sum(), min=1e-4)


def calculate_iou_reg_loss_centerhead(batch_box_preds, mask, ind, gt_boxes):
    """IoU regression loss: mean over objects of `1 - DIoU(decoded box, GT)` (axis-aligned DIoU, see above).

    Args:
        batch_box_preds: (B, 7 or 9, H, W) decoded boxes (with gradient). mask, ind: (B, K). gt_boxes: (B, K, 7+).
    Returns:
        0-d tensor (0 when there is no object).
    """
    if mask.sum() == 0:
        return batch_box_preds.sum() * 0.0
    mask = mask.bool()
    selected_box_preds = _transpose_and_gather_feat(batch_box_preds, ind)
    iou = bbox3d_overlaps_diou(selected_box_preds[mask][:, 0:7], gt_boxes[mask][:, 0:7])
    return (1.0 - iou).sum() / torch.clamp(mask.sum(), min=1e-4)
