"""Greedy non-maximum suppression on BEV IoU (rotated or axis-aligned), OpenPCDet semantics.

Steps: stable-sort by score (descending; equal scores keep input order), cap at `pre_maxsize`, find the
upper-triangle pairs (i < j in score order) whose IoU exceeds `thresh` (the circumscribed-circle prefilter skips
clearly disjoint pairs, exact IoU only for the rest), then one greedy pass: keep a box unless an earlier kept box
suppresses it. The suppression "matrix" is stored sparsely (CSR rows of suppressed columns), so memory grows with
the number of overlapping pairs rather than with N^2. The greedy pass runs in a numba loop on CPU (a plain Python
loop when numba is missing); its input is tiny, so moving it off an accelerator costs microseconds.
"""
import functools

import numpy as np
import torch

from .. import fast_paths
from .rotated_overlap import PREFILTER_BLOCK, circles_may_overlap, paired_overlap_bev, work_dtype

BEV_UNION_EPS = 1e-8  # upstream's EPS in the NMS kernels


def paired_iou_bev(boxes_a, boxes_b):
    """Rotated BEV IoU of row-aligned pairs (K, 7+) x (K, 7+) -> (K,) in `work_dtype`."""
    dtype = work_dtype(boxes_a.device)
    overlap = paired_overlap_bev(boxes_a, boxes_b)
    area_a = boxes_a[:, 3].to(dtype) * boxes_a[:, 4].to(dtype)
    area_b = boxes_b[:, 3].to(dtype) * boxes_b[:, 4].to(dtype)
    return overlap / (area_a + area_b - overlap).clamp(min=BEV_UNION_EPS)


def paired_iou_bev_axis_aligned(boxes_a, boxes_b):
    """IoU of the axis-aligned rectangles `[x +- dx/2, y +- dy/2]` (heading ignored): (K, 7+) x (K, 7+) -> (K,)."""
    dtype = work_dtype(boxes_a.device)
    a, b = boxes_a[:, 0:5].to(dtype), boxes_b[:, 0:5].to(dtype)
    low = torch.max(a[:, 0:2] - a[:, 3:5] / 2, b[:, 0:2] - b[:, 3:5] / 2)
    high = torch.min(a[:, 0:2] + a[:, 3:5] / 2, b[:, 0:2] + b[:, 3:5] / 2)
    overlap = (high - low).clamp(min=0).prod(dim=1)
    union = a[:, 3] * a[:, 4] + b[:, 3] * b[:, 4] - overlap
    return overlap / union.clamp(min=BEV_UNION_EPS)


def _greedy_keep_python(num_boxes, row_ptr, suppressed_cols):
    """Indices (in score order) kept by greedy NMS; row i of the CSR lists the j > i that box i suppresses."""
    removed = np.zeros(num_boxes, dtype=np.bool_)
    keep = np.empty(num_boxes, dtype=np.int64)
    num_kept = 0
    for i in range(num_boxes):
        if removed[i]:
            continue
        keep[num_kept] = i
        num_kept += 1
        for k in range(row_ptr[i], row_ptr[i + 1]):
            removed[suppressed_cols[k]] = True
    return keep[:num_kept]


@functools.lru_cache(maxsize=None)
def _greedy_keep_kernel():
    """numba-compiled greedy pass, or the Python one when numba is not installed (imported lazily: cheap import)."""
    try:
        import numba
    except ImportError:
        return _greedy_keep_python
    return numba.njit(cache=True)(_greedy_keep_python)


def suppression_pairs(boxes, thresh, pair_iou_fn):
    """Upper-triangle pairs (i, j), i < j, with `pair_iou_fn(boxes[i], boxes[j]) > thresh`, sorted by i.

    Args:
        boxes: (N, 7+) boxes already in score order.
    Returns:
        rows, cols: (E,) int64 tensors on the boxes' device.
    """
    num_boxes = boxes.shape[0]
    rows_per_block = max(1, PREFILTER_BLOCK // max(num_boxes, 1))
    all_rows, all_cols = [], []
    cols_index = torch.arange(num_boxes, device=boxes.device)
    for start in range(0, num_boxes, rows_per_block):
        block = boxes[start:start + rows_per_block]
        row_index = torch.arange(start, start + block.shape[0], device=boxes.device)
        candidates = circles_may_overlap(block, boxes) & (cols_index[None, :] > row_index[:, None])
        rows, cols = candidates.nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        rows = rows + start
        over = pair_iou_fn(boxes[rows], boxes[cols]) > thresh
        all_rows.append(rows[over])
        all_cols.append(cols[over])
    if not all_rows:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty
    return torch.cat(all_rows), torch.cat(all_cols)


def check_nms_inputs(boxes, scores):
    """Raise ValueError unless boxes is (N, 7+) and scores is (N,)."""
    if boxes.dim() != 2 or boxes.shape[1] < 7:
        raise ValueError(f'boxes must have shape (N, 7+) [x, y, z, dx, dy, dz, heading, ...], got {tuple(boxes.shape)}')
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f'scores must have shape (N,) = ({boxes.shape[0]},), got {tuple(scores.shape)}')


def greedy_nms(boxes, scores, thresh, pair_iou_fn, pre_maxsize=None, post_max_size=None):
    """Shared body of `nms_gpu` / `nms_normal_gpu`; returns kept input indices (long, input device), best first."""
    check_nms_inputs(boxes, scores)
    boxes = boxes.detach()
    order = torch.sort(scores, descending=True, stable=True).indices
    if pre_maxsize is not None:
        order = order[:pre_maxsize]
    sorted_boxes = boxes[order]
    rows, cols = suppression_pairs(sorted_boxes, thresh, pair_iou_fn)
    num_boxes = sorted_boxes.shape[0]
    row_ptr = np.zeros(num_boxes + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows.cpu().numpy(), minlength=num_boxes), out=row_ptr[1:])
    keep = _greedy_keep_kernel()(num_boxes, row_ptr, cols.cpu().numpy().astype(np.int64))
    keep = torch.from_numpy(keep).to(order.device)
    if post_max_size is not None:
        keep = keep[:post_max_size]
    return order[keep]


def nms_gpu(boxes, scores, thresh, pre_maxsize=None, post_max_size=None, **kwargs):
    """Rotated BEV NMS (z ignored), OpenPCDet semantics; runs on any device.

    Args:
        boxes: (N, 7+) `[x, y, z, dx, dy, dz, heading, ...]`. scores: (N,). thresh: suppress j when IoU(i, j) > thresh.
        pre_maxsize: keep only the top-scoring boxes before NMS. post_max_size: cap on the returned indices
            (upstream accepted and ignored it; callers then sliced `keep[:NMS_POST_MAXSIZE]` themselves, which
            still gives the same result). Other kwargs (e.g. a whole NMS_CONFIG) are ignored, as upstream.
    Returns:
        (keep, None): keep is a (K,) long tensor of indices into `boxes`, in descending score order.
    """
    check_nms_inputs(boxes, scores)
    fast = fast_paths.call_fast_op('nms_gpu', boxes, scores, thresh, pre_maxsize=pre_maxsize,
                                   post_max_size=post_max_size)
    if fast is not NotImplemented:
        return fast
    return greedy_nms(boxes, scores, thresh, paired_iou_bev, pre_maxsize, post_max_size), None


def nms_normal_gpu(boxes, scores, thresh, pre_maxsize=None, post_max_size=None, **kwargs):
    """NMS on axis-aligned BEV IoU of `[x +- dx/2, y +- dy/2]` (heading ignored); same contract as `nms_gpu`.

    Upstream had no pre-max cap here; `pre_maxsize` / `post_max_size` default to None, which matches it.
    """
    return greedy_nms(boxes, scores, thresh, paired_iou_bev_axis_aligned, pre_maxsize, post_max_size), None
