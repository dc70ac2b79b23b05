"""Hungarian assignment of TransFusion proposals to GT boxes (OpenPCDet `HungarianAssigner3D`, spec
seg_occ_transfusion.md §C.4).

Cost of proposal i for GT j (all three terms weighted by the config):

* classification: `w_cls * (pos - neg)[i, label_j]` with `p = sigmoid(logit)`,
  `pos = -alpha (1 - p)^gamma log(p + eps)`, `neg = -(1 - alpha) p^gamma log(1 - p + eps)`;
* regression: `w_reg * |c_i - c_j|_1` of BEV centres normalised to [0, 1] by the point-cloud range;
* IoU: `-w_iou * IoU3D(b_i, g_j)`, IoU3D = rotated BEV overlap x height overlap **treating z as the box bottom for
  both sets** (upstream's `height_overlaps`), over `max(V_i + V_j - overlap, 1e-8)`.

`scipy.optimize.linear_sum_assignment` on the summed cost (CPU) gives each GT exactly one proposal when there are at
least as many proposals as GT boxes (otherwise each proposal gets one GT and the remaining GT boxes stay unmatched);
no cost threshold. Difference from upstream: zero GT boxes (or zero proposals) return an all-background assignment
instead of raising a NameError (`max_overlaps` undefined; mmdetection3d PR #2911).
"""
import torch
from scipy.optimize import linear_sum_assignment

from ....ops.iou3d_nms import iou3d_nms_utils


def height_overlaps(boxes1, boxes2):
    """(N, M) overlap of `[z, z + dz]` intervals (z read as the box bottom, as upstream)."""
    top1, bottom1 = (boxes1[:, 2] + boxes1[:, 5]).view(-1, 1), boxes1[:, 2].view(-1, 1)
    top2, bottom2 = (boxes2[:, 2] + boxes2[:, 5]).view(1, -1), boxes2[:, 2].view(1, -1)
    return torch.clamp(torch.min(top1, top2) - torch.max(bottom1, bottom2), min=0)


def overlaps(boxes1, boxes2):
    """(N, M) 3D IoU with the bottom-z height overlap above; an empty side gives an empty matrix."""
    rows, cols = len(boxes1), len(boxes2)
    if rows * cols == 0:
        return boxes1.new_zeros(rows, cols)
    overlaps_bev = iou3d_nms_utils.boxes_overlap_bev(boxes1[:, :7], boxes2[:, :7]).to(boxes1.dtype)
    overlaps_3d = overlaps_bev * height_overlaps(boxes1, boxes2)
    volume1 = (boxes1[:, 3] * boxes1[:, 4] * boxes1[:, 5]).view(-1, 1)
    volume2 = (boxes2[:, 3] * boxes2[:, 4] * boxes2[:, 5]).view(1, -1)
    return overlaps_3d / torch.clamp(volume1 + volume2 - overlaps_3d, min=1e-8)


class HungarianAssigner3D:
    """`HungarianAssigner3D(cls_cost={'gamma', 'alpha', 'weight'}, reg_cost={'weight'}, iou_cost={'weight'})`."""

    def __init__(self, cls_cost, reg_cost, iou_cost):
        self.cls_cost = dict(cls_cost or {})
        self.reg_cost = dict(reg_cost or {})
        self.iou_cost = dict(iou_cost or {})

    def focal_loss_cost(self, cls_pred, gt_labels):
        """cls_pred (P, K) logits, gt_labels (M,) 0-based -> (P, M)."""
        weight = self.cls_cost.get('weight', 0.15)
        alpha = self.cls_cost.get('alpha', 0.25)
        gamma = self.cls_cost.get('gamma', 2.0)
        eps = self.cls_cost.get('eps', 1e-12)
        cls_pred = cls_pred.sigmoid()
        neg_cost = -(1 - cls_pred + eps).log() * (1 - alpha) * cls_pred.pow(gamma)
        pos_cost = -(cls_pred + eps).log() * alpha * (1 - cls_pred).pow(gamma)
        return (pos_cost[:, gt_labels] - neg_cost[:, gt_labels]) * weight

    def bevbox_cost(self, bboxes, gt_bboxes, point_cloud_range):
        """L1 distance of BEV centres normalised by the point-cloud range -> (P, M)."""
        weight = self.reg_cost.get('weight', 0.25)
        pc_start = bboxes.new_tensor([float(v) for v in point_cloud_range[0:2]])
        pc_size = bboxes.new_tensor([float(v) for v in point_cloud_range[3:5]]) - pc_start
        normalized = (bboxes[:, :2] - pc_start) / pc_size
        normalized_gt = (gt_bboxes[:, :2] - pc_start) / pc_size
        return torch.cdist(normalized, normalized_gt, p=1) * weight

    def iou3d_cost(self, bboxes, gt_bboxes):
        """(-w_iou * IoU, IoU), both (P, M)."""
        iou = overlaps(bboxes, gt_bboxes)
        return -iou * self.iou_cost.get('weight', 0.25), iou

    def cost_matrix(self, bboxes, gt_bboxes, gt_labels, cls_pred, point_cloud_range):
        """Summed cost (P, M) and the IoU matrix (P, M)."""
        iou_cost, iou = self.iou3d_cost(bboxes, gt_bboxes)
        cost = self.focal_loss_cost(cls_pred, gt_labels) + self.bevbox_cost(bboxes, gt_bboxes, point_cloud_range)
        return cost + iou_cost, iou

    def assign(self, bboxes, gt_bboxes, gt_labels, cls_pred, point_cloud_range):
        """Assign proposals to GT boxes.

        Args:
            bboxes: (P, 7+) decoded proposals (detached). gt_bboxes: (M, 7+). gt_labels: (M,) long, 0-based.
            cls_pred: (P, K) classification logits. point_cloud_range: 6 numbers.
        Returns:
            assigned_gt_inds (P,) long: 0 = background, j + 1 = GT j. max_overlaps (P,): IoU3D (cost definition)
            of each proposal with its GT, 0 for background.
        """
        num_gts, num_bboxes = gt_bboxes.size(0), bboxes.size(0)
        assigned_gt_inds = bboxes.new_zeros((num_bboxes,), dtype=torch.long)
        max_overlaps = bboxes.new_zeros((num_bboxes,))
        if num_gts == 0 or num_bboxes == 0:
            return assigned_gt_inds, max_overlaps
        bboxes, gt_bboxes, cls_pred = bboxes.detach(), gt_bboxes.detach(), cls_pred.detach()
        cost, iou = self.cost_matrix(bboxes, gt_bboxes, gt_labels.long(), cls_pred, point_cloud_range)
        rows, cols = linear_sum_assignment(cost.cpu().double().numpy())
        rows = torch.as_tensor(rows, dtype=torch.long, device=bboxes.device)
        cols = torch.as_tensor(cols, dtype=torch.long, device=bboxes.device)
        assigned_gt_inds[rows] = cols + 1
        max_overlaps[rows] = iou[rows, cols].to(max_overlaps.dtype)
        return assigned_gt_inds, max_overlaps
