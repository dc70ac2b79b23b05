"""Which points lie inside which rotated 3D boxes (OpenPCDet's `roiaware_pool3d_utils` names).

A point is inside box `[cx, cy, cz, dx, dy, dz, heading]` iff `|z - cz| <= dz / 2` and, with
`(u, v) = R(-heading) (x - cx, y - cy)`, `|u| < dx / 2 + margin` and `|v| < dy / 2 + margin`.
Upstream's margins are kept: 1 cm for `points_in_boxes_cpu`, 1e-5 m for `points_in_boxes_gpu`. Both run on
any device (the names are historical). Work is chunked over boxes so that ~200k points x hundreds of boxes
stays within a few tens of MB.

CPU fast path: for CPU inputs (torch CPU tensors or numpy) of float32/float64 (integer points are converted to
float32 as in the reference) a numba kernel (`points_in_boxes_cpu_kernel`) tests each box only against the
points of the BEV grid cells its bounding rectangle overlaps, with bit-identical results (same dtype, same
operation order, the same torch-computed cos/sin/half sizes). The torch code stays the reference and the path for
other devices; `reference=True`, `PCDET_DISABLE_FAST_OPS=1` or a missing numba select it.
"""
import functools

import numpy as np
import torch

from .. import fast_paths

CPU_MARGIN = 0.01
GPU_MARGIN = 1e-5
# Box-point pairs tested per chunk (each pair needs a handful of float32 temporaries).
CHUNK_ELEMENTS = 1 << 22


def _as_tensor(name, array, dims, min_columns):
    """Tensor view of `array` (numpy arrays become float32 tensors); checks the rank and the column count."""
    is_numpy = isinstance(array, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float() if is_numpy else array
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f'{name} must be a numpy array or torch.Tensor, got {type(array).__name__}')
    if tensor.dim() != dims or tensor.shape[-1] < min_columns:
        shape = {('points', 2): '(P, 3+)', ('points', 3): '(B, P, 3+)',
                 ('boxes', 2): '(N, 7+)', ('boxes', 3): '(B, T, 7+)'}[(name, dims)]
        raise ValueError(f'{name} must have shape {shape}, got {tuple(tensor.shape)}')
    return tensor, is_numpy


@functools.lru_cache(maxsize=None)
def _cpu_kernel_module():
    """`points_in_boxes_cpu_kernel` (imports numba, so lazily), or None when numba is not installed."""
    try:
        from . import points_in_boxes_cpu_kernel
    except ImportError:
        return None
    return points_in_boxes_cpu_kernel


def _cpu_kernel_inputs(points, boxes, margin):
    """(xyz, params) numpy arrays for the CPU kernel, or None when it does not apply (device, dtype, disabled).

    params columns: cx, cy, cz, cos, sin, dx / 2 + margin, dy / 2 + margin, dz / 2, computed with the reference's
    torch expressions in the points' dtype so that the kernel's comparisons are bit-identical to `_mask_chunk`.
    """
    if points.device.type != 'cpu' or boxes.device.type != 'cpu' or fast_paths.fast_ops_disabled():
        return None
    points = points[:, 0:3]
    if not points.is_floating_point():
        points = points.float()
    if points.dtype not in (torch.float32, torch.float64):
        return None
    kernel = _cpu_kernel_module()
    if kernel is None:
        return None
    with torch.no_grad():
        boxes = boxes[:, 0:7].to(points.dtype)
        params = torch.cat((boxes[:, 0:3], torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7]),
                            boxes[:, 3:4] / 2 + margin, boxes[:, 4:5] / 2 + margin, boxes[:, 5:6] / 2), dim=1)
        return (np.ascontiguousarray(points.detach().numpy()), np.ascontiguousarray(params.numpy()))


def _mask_chunk(points, boxes, margin):
    """(n_boxes, P) bool for points (P, 3) and boxes (n_boxes, 7), computed in the points' dtype."""
    boxes = boxes.to(points.dtype)
    shift_x = points[None, :, 0] - boxes[:, 0:1]
    shift_y = points[None, :, 1] - boxes[:, 1:2]
    cos, sin = torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7])
    u = shift_x * cos + shift_y * sin  # R(-heading) into the box frame
    v = -shift_x * sin + shift_y * cos
    inside_z = (points[None, :, 2] - boxes[:, 2:3]).abs() <= boxes[:, 5:6] / 2
    return inside_z & (u.abs() < boxes[:, 3:4] / 2 + margin) & (v.abs() < boxes[:, 4:5] / 2 + margin)


def points_in_boxes_mask(points, boxes, margin, reference=False):
    """Membership matrix.

    Args:
        points: (P, 3+) tensor, xyz first. boxes: (N, 7+) tensor on the same device (numpy arrays are converted).
        margin: xy slack in metres.
        reference: force the torch reference (no `common_ops` fast path, no CPU kernel).
    Returns:
        (N, P) bool tensor on the input device.
    """
    points, _ = _as_tensor('points', points, 2, 3)
    boxes, _ = _as_tensor('boxes', boxes, 2, 7)
    if not reference:
        fast = fast_paths.call_fast_op('points_in_boxes_mask', points, boxes, margin)
        if fast is not NotImplemented:
            return fast
        kernel_inputs = _cpu_kernel_inputs(points, boxes, margin)
        if kernel_inputs is not None:
            return torch.from_numpy(_cpu_kernel_module().run(*kernel_inputs, want_mask=True))
    points = points[:, 0:3]
    if not points.is_floating_point():
        points = points.float()
    num_points = points.shape[0]
    boxes_per_chunk = max(1, CHUNK_ELEMENTS // max(num_points, 1))
    chunks = [_mask_chunk(points, boxes[s:s + boxes_per_chunk, 0:7], margin)
              for s in range(0, boxes.shape[0], boxes_per_chunk)]
    if not chunks:
        return torch.zeros((0, num_points), dtype=torch.bool, device=points.device)
    return torch.cat(chunks)


def points_in_boxes_cpu(points, boxes, reference=False):
    """Upstream CPU op (1 cm margin), any device.

    Args:
        points: (P, 3+) numpy array or tensor. boxes: (N, 7+) numpy array or tensor.
        reference: force the torch reference (see `points_in_boxes_mask`).
    Returns:
        (N, P) int32 0/1 of the kind of `points`; same device as the input.
    """
    points, is_numpy = _as_tensor('points', points, 2, 3)
    boxes, _ = _as_tensor('boxes', boxes, 2, 7)
    indices = points_in_boxes_mask(points, boxes.to(points.device), CPU_MARGIN, reference=reference).int()
    return indices.numpy() if is_numpy else indices


def first_box_index(mask):
    """(N, P) bool -> (P,) int32: lowest box index containing each point, -1 when none."""
    if mask.shape[0] == 0:
        return torch.full(mask.shape[1:], -1, dtype=torch.int32, device=mask.device)
    first = mask.to(torch.uint8).argmax(dim=0)  # argmax returns the first maximal index
    return torch.where(mask.any(dim=0), first, torch.full_like(first, -1)).int()


def points_in_boxes_gpu(points, boxes, reference=False):
    """Upstream GPU op (1e-5 m margin), any device.

    Args:
        points: (B, P, 3+) tensor. boxes: (B, T, 7+) tensor, same device and batch size.
        reference: force the torch reference (see `points_in_boxes_mask`).
    Returns:
        (B, P) int32: index of the first (lowest-index) box of the same batch element containing the point, else -1.
    """
    points, _ = _as_tensor('points', points, 3, 3)
    boxes, _ = _as_tensor('boxes', boxes, 3, 7)
    if points.shape[0] != boxes.shape[0]:
        raise ValueError(f'points and boxes must have the same batch size, got {points.shape[0]} and {boxes.shape[0]}')
    if not reference:
        # CPU kernel: the first containing box directly (boxes in index order), no (T, P) mask.
        inputs = [_cpu_kernel_inputs(points[b], boxes[b], GPU_MARGIN) for b in range(points.shape[0])]
        if inputs and all(item is not None for item in inputs):
            firsts = [_cpu_kernel_module().run(*kernel_inputs, want_mask=False) for kernel_inputs in inputs]
            return torch.from_numpy(firsts[0][None] if len(firsts) == 1 else np.stack(firsts))
    out = torch.full(points.shape[:2], -1, dtype=torch.int32, device=points.device)
    num_points = points.shape[1]
    boxes_per_chunk = max(1, CHUNK_ELEMENTS // max(num_points, 1))
    for batch_idx in range(points.shape[0]):
        result = out[batch_idx]
        # Walk box chunks in index order; a point takes the first chunk that contains it.
        for start in range(0, boxes.shape[1], boxes_per_chunk):
            mask = points_in_boxes_mask(points[batch_idx], boxes[batch_idx, start:start + boxes_per_chunk],
                                        GPU_MARGIN, reference=reference)
            first = first_box_index(mask)
            unassigned = (result < 0) & (first >= 0)
            result[unassigned] = first[unassigned] + start
    return out
