"""CenterNet helpers: Gaussian heatmap targets, top-K decoding, dense box decoding, circle NMS.

OpenPCDet names and semantics (`pcdet.models.model_utils.centernet_utils`), with two additions:

* `draw_gaussians_to_heatmap` draws all objects of a sample at once with tensor ops (flat cell lists built with
  `repeat_interleave`, element-wise max through `scatter_reduce(amax)`); it gives exactly the heatmap of calling
  upstream's `draw_gaussian_to_heatmap` once per object (checked in the tests).
* Everything follows the device of its inputs.

Pixel convention: a BEV feature map (H, W) has cell `(iy, ix)` covering
`x in [pc_min_x + ix * stride * voxel_x, ... + stride * voxel_x)`; flat index `ind = iy * W + ix`.
"""
import numpy as np
import torch

from ...utils.loss_utils import _gather_feat, _transpose_and_gather_feat  # noqa: F401  (re-exported, upstream names)


def gaussian_radius(height, width, min_overlap=0.5):
    """CornerNet radius (upstream code, including its `/ 2` in all three roots): the minimum of three cases.

    Args:
        height, width: (N,) box extents in feature-map cells (OpenPCDet passes `dx` as height, `dy` as width;
            the formula is symmetric).
        min_overlap: required IoU between a box shifted by the radius and the GT box.
    Returns:
        (N,) float radii.
    """
    a1 = 1
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    sq1 = (b1 ** 2 - 4 * a1 * c1).sqrt()
    r1 = (b1 + sq1) / 2

    a2 = 4
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    sq2 = (b2 ** 2 - 4 * a2 * c2).sqrt()
    r2 = (b2 + sq2) / 2

    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    sq3 = (b3 ** 2 - 4 * a3 * c3).sqrt()
    r3 = (b3 + sq3) / 2
    return torch.min(torch.min(r1, r2), r3)


def gaussian2D(shape, sigma=1):
    """Unnormalised 2D Gaussian kernel (numpy float64) of `shape` (odd sizes); tiny values (< eps * max) set to 0."""
    m, n = [(ss - 1.) / 2. for ss in shape]
    y, x = np.ogrid[-m:m + 1, -n:n + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h


def draw_gaussian_to_heatmap(heatmap, center, radius, k=1, valid_mask=None):
    """Upstream per-object drawing (kept as the reference): max-paste a `(2r+1)^2` Gaussian at `int(center)`.

    Args:
        heatmap: (H, W) tensor, modified in place. center: (2,) continuous (x, y) in cells. radius: int.
    Returns:
        heatmap.
    """
    diameter = 2 * radius + 1
    gaussian = gaussian2D((diameter, diameter), sigma=diameter / 6)
    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape[0:2]
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)

    masked_heatmap = heatmap[y - top:y + bottom, x - left:x + right]
    masked_gaussian = torch.from_numpy(
        gaussian[radius - top:radius + bottom, radius - left:radius + right]).to(heatmap.device).float()
    if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:
        if valid_mask is not None:
            cur_valid_mask = valid_mask[y - top:y + bottom, x - left:x + right]
            masked_gaussian = masked_gaussian * cur_valid_mask.float()
        torch.max(masked_heatmap, masked_gaussian * k, out=masked_heatmap)
    return heatmap


def draw_gaussians_to_heatmap(heatmap, channels, centers_int, radii):
    """Draw all objects at once; same result as `draw_gaussian_to_heatmap` per object (element-wise max).

    Args:
        heatmap: (C, H, W) float tensor, modified in place (also returned).
        channels: (N,) long class channel of each object.
        centers_int: (N, 2) long integer centre (x, y) in cells, inside the map.
        radii: (N,) long radii (>= 0).
    Returns:
        heatmap.

    Each object contributes the cells `|dx| <= r, |dy| <= r` around its centre (clipped to the map) with value
    `exp(-(dx^2 + dy^2) / (2 sigma^2))`, `sigma = (2r + 1) / 6`, computed in float64 (values below float64 eps
    are zeroed, as upstream's numpy kernel) and cast to the heatmap's dtype.
    """
    num_obj = channels.shape[0]
    if num_obj == 0:
        return heatmap
    num_channels, height, width = heatmap.shape
    device = heatmap.device
    radii = radii.long().to(device)
    diameters = 2 * radii + 1
    counts = diameters * diameters
    obj = torch.repeat_interleave(torch.arange(num_obj, device=device), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(obj.shape[0], device=device) - starts[obj]
    diam = diameters[obj]
    dy = torch.div(local, diam, rounding_mode='floor') - radii[obj]
    dx = local % diam - radii[obj]
    px = centers_int[obj, 0].long().to(device) + dx
    py = centers_int[obj, 1].long().to(device) + dy
    inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)

    sigma = diam.double() / 6
    values = torch.exp(-(dx.double() ** 2 + dy.double() ** 2) / (2 * sigma * sigma))
    values = torch.where(values < np.finfo(np.float64).eps, torch.zeros_like(values), values)

    flat = (channels.long().to(device)[obj] * height + py) * width + px
    heatmap.view(-1).scatter_reduce_(0, flat[inside], values[inside].to(heatmap.dtype), reduce='amax',
                                     include_self=True)
    return heatmap


def _nms(heat, kernel=3):
    """Keep only 3x3 local maxima of a (B, C, H, W) heatmap (CenterNet max-pool NMS)."""
    pad = (kernel - 1) // 2
    hmax = torch.nn.functional.max_pool2d(heat, (kernel, kernel), stride=1, padding=pad)
    keep = (hmax == heat).float()
    return heat * keep


def _topk(scores, K=40):
    """Top-K per class, then top-K overall.

    Args:
        scores: (B, C, H, W).
    Returns:
        topk_score (B, K), topk_inds (B, K) flat cell index, topk_classes (B, K) 0-based channel,
        topk_ys (B, K), topk_xs (B, K) float cell coordinates. `K` is capped at `H * W`.
    """
    batch, num_class, height, width = scores.size()
    K = min(K, height * width)
    topk_scores, topk_inds = torch.topk(scores.flatten(2, 3), K)
    topk_inds = topk_inds % (height * width)
    topk_ys = torch.div(topk_inds, width, rounding_mode='floor').float()
    topk_xs = (topk_inds % width).float()

    topk_score, topk_ind = torch.topk(topk_scores.view(batch, -1), K)
    topk_classes = torch.div(topk_ind, K, rounding_mode='floor').int()
    topk_inds = _gather_feat(topk_inds.view(batch, -1, 1), topk_ind).view(batch, K)
    topk_ys = _gather_feat(topk_ys.view(batch, -1, 1), topk_ind).view(batch, K)
    topk_xs = _gather_feat(topk_xs.view(batch, -1, 1), topk_ind).view(batch, K)
    return topk_score, topk_inds, topk_classes, topk_ys, topk_xs


def decode_bbox_from_heatmap(heatmap, rot_cos, rot_sin, center, center_z, dim, point_cloud_range=None,
                             voxel_size=None, feature_map_stride=None, vel=None, iou=None, K=100,
                             circle_nms=False, score_thresh=None, post_center_limit_range=None):
    """Top-K decoding of one head (no NMS here; `circle_nms` is applied by the head).

    Args:
        heatmap: (B, C, H, W) probabilities. rot_cos, rot_sin, center_z: (B, 1, H, W). center: (B, 2, H, W)
            sub-cell offsets. dim: (B, 3, H, W) **already exponentiated**. vel: (B, 2, H, W) or None.
        iou: (B, 1, H, W) in [0, 1] or None.
        K: candidates per sample (capped at H * W). score_thresh: keep `score > thresh`.
        post_center_limit_range: (6,) tensor; keep boxes whose centre lies inside (bounds inclusive).
    Returns:
        list (B) of dicts `pred_boxes (k, 7|9)`, `pred_scores (k,)`, `pred_labels (k,)` 0-based within the head,
        plus `pred_iou (k,)` when `iou` is given.
    """
    batch_size, num_class, height, width = heatmap.size()
    if circle_nms:
        heatmap = _nms(heatmap)
    scores, inds, class_ids, ys, xs = _topk(heatmap, K=K)
    K = scores.shape[1]
    center = _transpose_and_gather_feat(center, inds).view(batch_size, K, 2)
    rot_sin = _transpose_and_gather_feat(rot_sin, inds).view(batch_size, K, 1)
    rot_cos = _transpose_and_gather_feat(rot_cos, inds).view(batch_size, K, 1)
    center_z = _transpose_and_gather_feat(center_z, inds).view(batch_size, K, 1)
    dim = _transpose_and_gather_feat(dim, inds).view(batch_size, K, 3)

    angle = torch.atan2(rot_sin, rot_cos)
    xs = xs.view(batch_size, K, 1) + center[:, :, 0:1]
    ys = ys.view(batch_size, K, 1) + center[:, :, 1:2]
    xs = xs * feature_map_stride * voxel_size[0] + point_cloud_range[0]
    ys = ys * feature_map_stride * voxel_size[1] + point_cloud_range[1]

    box_part_list = [xs, ys, center_z, dim, angle]
    if vel is not None:
        box_part_list.append(_transpose_and_gather_feat(vel, inds).view(batch_size, K, 2))
    if iou is not None:
        iou = _transpose_and_gather_feat(iou, inds).view(batch_size, K)

    final_box_preds = torch.cat(box_part_list, dim=-1)
    final_scores = scores.view(batch_size, K)
    final_class_ids = class_ids.view(batch_size, K)

    if post_center_limit_range is None:
        raise ValueError('decode_bbox_from_heatmap needs post_center_limit_range (POST_CENTER_LIMIT_RANGE)')
    post_center_limit_range = torch.as_tensor(post_center_limit_range, dtype=final_box_preds.dtype,
                                              device=final_box_preds.device)
    mask = (final_box_preds[..., :3] >= post_center_limit_range[:3]).all(2)
    mask &= (final_box_preds[..., :3] <= post_center_limit_range[3:]).all(2)
    if score_thresh is not None:
        mask &= (final_scores > score_thresh)

    ret_pred_dicts = []
    for k in range(batch_size):
        cur_mask = mask[k]
        ret_pred_dicts.append({
            'pred_boxes': final_box_preds[k, cur_mask],
            'pred_scores': final_scores[k, cur_mask],
            'pred_labels': final_class_ids[k, cur_mask],
        })
        if iou is not None:
            ret_pred_dicts[-1]['pred_iou'] = iou[k, cur_mask]
    return ret_pred_dicts


def decode_bbox_from_pred_dicts(pred_dict, point_cloud_range=None, voxel_size=None, feature_map_stride=None):
    """Decode a box at every cell of one head's raw outputs.

    Args:
        pred_dict: `center (B, 2, H, W)`, `center_z (B, 1, H, W)`, `dim (B, 3, H, W)` (log sizes), `rot
            (B, 2, H, W)` (cos, sin), optional `vel (B, 2, H, W)`.
    Returns:
        (B, H, W, 7 or 9) boxes `[x, y, z, dx, dy, dz, heading, (vx, vy)]`.
    """
    batch_size, _, H, W = pred_dict['center'].shape
    batch_center = pred_dict['center'].permute(0, 2, 3, 1).contiguous().view(batch_size, H * W, 2)
    batch_center_z = pred_dict['center_z'].permute(0, 2, 3, 1).contiguous().view(batch_size, H * W, 1)
    batch_dim = pred_dict['dim'].exp().permute(0, 2, 3, 1).contiguous().view(batch_size, H * W, 3)
    batch_rot_cos = pred_dict['rot'][:, 0].unsqueeze(dim=1)
    batch_rot_sin = pred_dict['rot'][:, 1].unsqueeze(dim=1)
    batch_rot = torch.atan2(batch_rot_sin, batch_rot_cos).permute(0, 2, 3, 1).contiguous().view(batch_size, H * W, 1)
    batch_vel = pred_dict['vel'].permute(0, 2, 3, 1).contiguous().view(batch_size, H * W, 2) \
        if 'vel' in pred_dict else None

    ys, xs = torch.meshgrid(torch.arange(0, H, device=batch_center.device, dtype=batch_center.dtype),
                            torch.arange(0, W, device=batch_center.device, dtype=batch_center.dtype), indexing='ij')
    xs = xs.reshape(1, -1, 1) + batch_center[:, :, 0:1]
    ys = ys.reshape(1, -1, 1) + batch_center[:, :, 1:2]
    xs = xs * feature_map_stride * voxel_size[0] + point_cloud_range[0]
    ys = ys * feature_map_stride * voxel_size[1] + point_cloud_range[1]

    box_part_list = [xs, ys, batch_center_z, batch_dim, batch_rot]
    if batch_vel is not None:
        box_part_list.append(batch_vel)
    return torch.cat(box_part_list, dim=-1).view(batch_size, H, W, -1)


def _circle_nms_kernel(xs, ys, order, thresh):
    """Greedy centre-distance NMS over boxes visited in `order`; suppress j when `dist^2 <= thresh`."""
    ndets = order.shape[0]
    suppressed = np.zeros(xs.shape[0], dtype=np.bool_)
    keep = np.empty(ndets, dtype=np.int64)
    num_kept = 0
    for _i in range(ndets):
        i = order[_i]
        if suppressed[i]:
            continue
        keep[num_kept] = i
        num_kept += 1
        for _j in range(_i + 1, ndets):
            j = order[_j]
            if suppressed[j]:
                continue
            dist = (xs[i] - xs[j]) ** 2 + (ys[i] - ys[j]) ** 2
            if dist <= thresh:
                suppressed[j] = True
    return keep[:num_kept]


_CIRCLE_NMS_JIT = None


def _circle_nms_jit():
    global _CIRCLE_NMS_JIT
    if _CIRCLE_NMS_JIT is None:
        try:
            import numba
            _CIRCLE_NMS_JIT = numba.njit(cache=True)(_circle_nms_kernel)
        except ImportError:  # numba is a core dependency; the plain loop is a safety net
            _CIRCLE_NMS_JIT = _circle_nms_kernel
    return _CIRCLE_NMS_JIT


def circle_nms(dets, thresh):
    """Upstream numba `circle_nms`: dets (N, 3) numpy `[x, y, score]`; keeps boxes in descending score order and
    suppresses later boxes whose squared centre distance is `<= thresh`. Returns a list of kept row indices.

    Equal scores are visited in input order (stable sort; upstream's `argsort()[::-1]` visited them reversed).
    """
    dets = np.asarray(dets, dtype=np.float64)
    if dets.shape[0] == 0:
        return []
    order = np.argsort(-dets[:, 2], kind='stable').astype(np.int64)
    keep = _circle_nms_jit()(np.ascontiguousarray(dets[:, 0]), np.ascontiguousarray(dets[:, 1]), order,
                             float(thresh))
    return keep.tolist()


def _circle_nms(boxes, min_radius, post_max_size=83):
    """`circle_nms` on a (N, 3) tensor `[x, y, score]`; kept indices (long, same device), at most `post_max_size`."""
    keep = circle_nms(boxes.detach().cpu().numpy(), thresh=min_radius)
    if post_max_size is not None:
        keep = keep[:post_max_size]
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)
