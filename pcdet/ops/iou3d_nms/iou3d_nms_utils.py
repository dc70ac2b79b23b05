"""BEV / 3D IoU of rotated boxes and NMS, with OpenPCDet's names (`pcdet.ops.iou3d_nms.iou3d_nms_utils`).

Boxes are `[x, y, z, dx, dy, dz, heading, ...]` (z = geometric centre, heading CCW from +x); only the first 7
columns are read. Despite the `_gpu` / `_cpu` suffixes every function runs on the device of its inputs and returns
float32 results there. Overlaps are exact polygon areas (see rotated_overlap.py and docs/OPS.md for the one
deliberate deviation from upstream: no 1 cm inside-margin).

Gradients follow upstream: BEV overlap and BEV IoU are constants (computed on detached boxes, as upstream computed
them inside CUDA kernels); the height-overlap and volume terms of the 3D IoUs are plain tensor ops and carry
gradients, exactly as in upstream's Python wrappers.
"""
import numpy as np
import torch

from .. import fast_paths
from .nms import nms_gpu, nms_normal_gpu
from .rotated_overlap import overlap_bev_matrix, prefiltered_paired_overlap_bev

__all__ = ['boxes_bev_iou_cpu', 'boxes_iou_bev', 'boxes_overlap_bev', 'paired_boxes_overlap_bev',
           'boxes_iou3d_gpu', 'paired_boxes_iou3d_gpu', 'boxes_aligned_iou3d_gpu', 'nms_gpu', 'nms_normal_gpu',
           'boxes_iou3d', 'paired_boxes_iou3d', 'nms_bev']

BEV_UNION_EPS = 1e-8  # denominator clamp of upstream's BEV IoU kernels
VOLUME_UNION_EPS = 1e-6  # denominator clamp of upstream's 3D IoU


def check_boxes(name, boxes, min_columns=7):
    """Raise ValueError naming `name` unless `boxes` is a 2-D tensor with at least `min_columns` columns."""
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor of shape (N, {min_columns}+), got {type(boxes).__name__}')
    if boxes.dim() != 2 or boxes.shape[1] < min_columns:
        raise ValueError(f'{name} must have shape (N, {min_columns}+) [x, y, z, dx, dy, dz, heading, ...], '
                         f'got {tuple(boxes.shape)}')


def _check_pair(boxes_a, boxes_b, paired=False):
    check_boxes('boxes_a', boxes_a)
    check_boxes('boxes_b', boxes_b)
    if paired and boxes_a.shape[0] != boxes_b.shape[0]:
        raise ValueError(f'boxes_a and boxes_b must have the same number of rows (row-aligned pairs), '
                         f'got {boxes_a.shape[0]} and {boxes_b.shape[0]}')
    if boxes_a.device != boxes_b.device:
        raise ValueError(f'boxes_a and boxes_b must be on the same device, got {boxes_a.device} and {boxes_b.device}')


def boxes_overlap_bev(boxes_a, boxes_b):
    """BEV intersection areas.

    Args:
        boxes_a: (N, 7+) tensor. boxes_b: (M, 7+) tensor, same device.
    Returns:
        (N, M) float32 overlap areas in m^2.
    """
    _check_pair(boxes_a, boxes_b)
    boxes_a, boxes_b = boxes_a.detach(), boxes_b.detach()
    fast = fast_paths.call_fast_op('boxes_overlap_bev', boxes_a, boxes_b)
    if fast is not NotImplemented:
        return fast
    return overlap_bev_matrix(boxes_a, boxes_b).float()


def paired_boxes_overlap_bev(boxes_a, boxes_b):
    """BEV intersection areas of row-aligned pairs: (N, 7+), (N, 7+) -> (N,) float32."""
    _check_pair(boxes_a, boxes_b, paired=True)
    boxes_a, boxes_b = boxes_a.detach(), boxes_b.detach()
    fast = fast_paths.call_fast_op('paired_boxes_overlap_bev', boxes_a, boxes_b)
    if fast is not NotImplemented:
        return fast
    return prefiltered_paired_overlap_bev(boxes_a, boxes_b).float()


def _bev_areas(boxes):
    return boxes[:, 3].float() * boxes[:, 4].float()


def boxes_iou_bev(boxes_a, boxes_b):
    """Rotated BEV IoU `overlap / max(area_a + area_b - overlap, 1e-8)`: (N, 7+), (M, 7+) -> (N, M) float32.

    No gradient (upstream computed it entirely inside its kernel).
    """
    overlap = boxes_overlap_bev(boxes_a, boxes_b)
    boxes_a, boxes_b = boxes_a.detach(), boxes_b.detach()
    union = _bev_areas(boxes_a)[:, None] + _bev_areas(boxes_b)[None, :] - overlap
    return overlap / union.clamp(min=BEV_UNION_EPS)


def boxes_bev_iou_cpu(boxes_a, boxes_b):
    """Rotated BEV IoU (N, M) of numpy arrays or tensors; returns the kind it was given (numpy -> float32 numpy).

    Upstream required CPU tensors; here any device works and the result stays on it.
    """
    is_numpy = isinstance(boxes_a, np.ndarray)
    if is_numpy:
        boxes_a = torch.from_numpy(np.ascontiguousarray(boxes_a)).float()
        boxes_b = torch.from_numpy(np.ascontiguousarray(boxes_b)).float()
    iou = boxes_iou_bev(boxes_a, boxes_b)
    return iou.numpy() if is_numpy else iou


def _height_overlap(boxes_a, boxes_b, paired):
    """Overlap of the z-extents (N, M), or (N,) when `paired`; boxes' z is the geometric centre."""
    top_a, bottom_a = boxes_a[:, 2] + boxes_a[:, 5] / 2, boxes_a[:, 2] - boxes_a[:, 5] / 2
    top_b, bottom_b = boxes_b[:, 2] + boxes_b[:, 5] / 2, boxes_b[:, 2] - boxes_b[:, 5] / 2
    if not paired:
        top_a, bottom_a = top_a[:, None], bottom_a[:, None]
        top_b, bottom_b = top_b[None, :], bottom_b[None, :]
    return (torch.min(top_a, top_b) - torch.max(bottom_a, bottom_b)).clamp(min=0).float()


def _iou3d_from_overlap(overlap_bev, boxes_a, boxes_b, paired):
    intersection = overlap_bev * _height_overlap(boxes_a, boxes_b, paired)
    volume_a = (boxes_a[:, 3] * boxes_a[:, 4] * boxes_a[:, 5]).float()
    volume_b = (boxes_b[:, 3] * boxes_b[:, 4] * boxes_b[:, 5]).float()
    if not paired:
        volume_a, volume_b = volume_a[:, None], volume_b[None, :]
    return intersection / (volume_a + volume_b - intersection).clamp(min=VOLUME_UNION_EPS)


def boxes_iou3d_gpu(boxes_a, boxes_b):
    """3D IoU = BEV overlap x z-overlap over `max(vol_a + vol_b - inter, 1e-6)`: (N, 7+), (M, 7+) -> (N, M) float32."""
    return _iou3d_from_overlap(boxes_overlap_bev(boxes_a, boxes_b), boxes_a, boxes_b, paired=False)


def paired_boxes_iou3d_gpu(boxes_a, boxes_b):
    """3D IoU of row-aligned pairs: (N, 7+), (N, 7+) -> (N,) float32 (CenterHead / TransFusion IoU targets)."""
    return _iou3d_from_overlap(paired_boxes_overlap_bev(boxes_a, boxes_b), boxes_a, boxes_b, paired=True)


def boxes_aligned_iou3d_gpu(boxes_a, boxes_b):
    """Upstream's other paired 3D IoU: same values as `paired_boxes_iou3d_gpu`, shape (N, 1)."""
    return paired_boxes_iou3d_gpu(boxes_a, boxes_b)[:, None]


# Clean aliases (device-agnostic names).
boxes_iou3d = boxes_iou3d_gpu
paired_boxes_iou3d = paired_boxes_iou3d_gpu
nms_bev = nms_gpu
