"""NMS helpers used by the detector / head post-processing (`pcdet.models.model_utils.model_nms_utils`).

OpenPCDet semantics, device-agnostic (indices come back on the input's device). `nms_config` is the
`POST_PROCESSING.NMS_CONFIG` EasyDict (or a plain dict):

| key | meaning |
|---|---|
| `NMS_TYPE` | `nms_gpu` (rotated BEV IoU), `nms_normal_gpu` (axis-aligned BEV IoU), `circle_nms` (centre distance), or, for `CenterHead`, `class_specific_nms` / `multi_class_nms` |
| `NMS_THRESH` | IoU threshold (a list with one value per class for the per-class functions); for `circle_nms` the squared centre distance |
| `NMS_PRE_MAXSIZE` | boxes kept (by score) before NMS (int, or per-class list) |
| `NMS_POST_MAXSIZE` | boxes kept after NMS (int, or per-class list) |
| `COMPAT_IGNORE_POST_MAXSIZE` | default False. True reproduces upstream `class_specific_nms`, which never applied `NMS_POST_MAXSIZE` (spec §3.11 quirk 4) |

Functions:
* `class_agnostic_nms(box_scores, box_preds, nms_config, score_thresh=None) -> (selected, selected_scores)`
* `multi_classes_nms(cls_scores, box_preds, nms_config, score_thresh=None) -> (scores, labels 0-based, boxes)`
* `class_specific_nms(box_scores, box_preds, box_labels, nms_config, score_thresh=None) -> (selected, scores)`
* `multi_classes_nms_mmdet(...)`: DSVT-repo variant of `class_specific_nms` with the legacy mmdet3d BEV kernel
  (every footprint effectively turned by -90 deg about its own centre, spec §3.6 / quirk 3) and the post cap.
* `circle_nms` (numba), re-exported from `centernet_utils`.
"""
import torch

from ...config_schema import REQUIRED, Schema
from ...ops.iou3d_nms import iou3d_nms_utils
from .centernet_utils import _circle_nms, circle_nms  # noqa: F401  (circle_nms re-exported)

_BOX_NMS_TYPES = ('nms_gpu', 'nms_normal_gpu')


NMS_CONFIG_SCHEMA = Schema('POST_PROCESSING.NMS_CONFIG', {
    'NMS_TYPE': REQUIRED,       # class_specific_nms | multi_class_nms | nms_gpu | nms_normal_gpu | circle_nms
    'NMS_THRESH': REQUIRED,                # scalar, or one per class / head
    'NMS_PRE_MAXSIZE': None,               # None: keep all
    'NMS_POST_MAXSIZE': None,              # None: keep all
    'SCORE_THRESH': None,                  # optional extra score threshold before NMS (CenterHead)
    'MULTI_CLASSES_NMS': False,            # anchor-head post-processing of Detector3DTemplate
    'COMPAT_IGNORE_POST_MAXSIZE': False,   # upstream class_specific_nms quirk (docs/MODELS.md)
})


def _cfg_get(config, key):
    """`NMS_CONFIG[key]` or its declared default (`config` may be a mapping or an attribute object)."""
    return NMS_CONFIG_SCHEMA.get(config if hasattr(config, 'get') else vars(config), key)


def _per_class(value, k, name):
    """`value[k]` for list-valued settings, `value` otherwise."""
    if isinstance(value, (list, tuple)):
        if k >= len(value):
            raise ValueError(f'NMS_CONFIG.{name} has {len(value)} entries but class index {k} was requested')
        return value[k]
    return value


def _empty_index(device):
    return torch.zeros(0, dtype=torch.long, device=device)


def _box_nms(boxes, scores, nms_type, thresh):
    """Run the named NMS on boxes already sorted / capped by the caller; returns kept indices (long)."""
    if nms_type == 'circle_nms':
        dets = torch.cat((boxes[:, 0:2], scores.view(-1, 1).to(boxes.dtype)), dim=1)
        return _circle_nms(dets, min_radius=thresh, post_max_size=None)
    if nms_type not in _BOX_NMS_TYPES:
        raise ValueError(f'Unknown NMS_TYPE {nms_type!r}; known: {", ".join(_BOX_NMS_TYPES + ("circle_nms",))}')
    keep, _ = getattr(iou3d_nms_utils, nms_type)(boxes[:, 0:7], scores, thresh)
    return keep.long()


def class_agnostic_nms(box_scores, box_preds, nms_config, score_thresh=None):
    """Score filter (`>= score_thresh`), top `NMS_PRE_MAXSIZE`, NMS, first `NMS_POST_MAXSIZE`.

    Args:
        box_scores: (N,). box_preds: (N, 7+).
    Returns:
        selected: (K,) long indices into the inputs, descending score. selected_scores: (K,) `box_scores[selected]`.
    """
    src_box_scores = box_scores
    device = box_scores.device
    if score_thresh is not None:
        scores_mask = box_scores >= score_thresh
        box_scores = box_scores[scores_mask]
        box_preds = box_preds[scores_mask]

    selected = _empty_index(device)
    if box_scores.shape[0] > 0:
        pre_max = _cfg_get(nms_config, 'NMS_PRE_MAXSIZE')
        k = box_scores.shape[0] if pre_max is None else min(int(pre_max), box_scores.shape[0])
        box_scores_nms, indices = torch.topk(box_scores, k=k)
        keep_idx = _box_nms(box_preds[indices], box_scores_nms, _cfg_get(nms_config, 'NMS_TYPE'),
                            _cfg_get(nms_config, 'NMS_THRESH'))
        post_max = _cfg_get(nms_config, 'NMS_POST_MAXSIZE')
        if post_max is not None:
            keep_idx = keep_idx[:int(post_max)]
        selected = indices[keep_idx]

    if score_thresh is not None:
        selected = scores_mask.nonzero().view(-1)[selected]
    return selected, src_box_scores[selected]


def multi_classes_nms(cls_scores, box_preds, nms_config, score_thresh=None):
    """`class_agnostic_nms` run independently on each score column.

    Args:
        cls_scores: (N, num_class). box_preds: (N, 7+).
    Returns:
        pred_scores (K,), pred_labels (K,) long **0-based** column index, pred_boxes (K, 7+).
    """
    pred_scores, pred_labels, pred_boxes = [], [], []
    for k in range(cls_scores.shape[1]):
        selected, scores = class_agnostic_nms(cls_scores[:, k], box_preds, nms_config, score_thresh=score_thresh)
        pred_scores.append(scores)
        pred_labels.append(torch.full_like(selected, k))
        pred_boxes.append(box_preds[selected])
    return torch.cat(pred_scores, dim=0), torch.cat(pred_labels, dim=0), torch.cat(pred_boxes, dim=0)


def _score_mask(box_scores, score_thresh, k):
    if score_thresh is None:
        return torch.ones_like(box_scores, dtype=torch.bool)
    return box_scores > _per_class(score_thresh, k, 'SCORE_THRESH')


def class_specific_nms(box_scores, box_preds, box_labels, nms_config, score_thresh=None, _legacy_bev=False):
    """Per-class NMS with per-class settings (OpenPCDet).

    For each class k in `range(len(NMS_THRESH))` (labels 0-based): boxes with `box_labels == k` and
    `score > score_thresh` (float, or per-class list), top `NMS_PRE_MAXSIZE[k]`, rotated BEV NMS (`nms_gpu`) at
    `NMS_THRESH[k]`, then the first `NMS_POST_MAXSIZE[k]` — unless `COMPAT_IGNORE_POST_MAXSIZE` is True, which
    reproduces upstream (no post cap). Settings may be lists (one per class) or scalars.

    Args:
        box_scores: (N,). box_preds: (N, 7+). box_labels: (N,) 0-based.
    Returns:
        selected: (K,) long indices into the inputs, grouped by class (class 0 first), descending score within a
        class. selected_scores: (K,).
    """
    device = box_scores.device
    thresholds = _cfg_get(nms_config, 'NMS_THRESH')
    num_classes = len(thresholds) if isinstance(thresholds, (list, tuple)) else int(box_labels.max().item()) + 1 \
        if box_labels.numel() else 0
    ignore_post = bool(_cfg_get(nms_config, 'COMPAT_IGNORE_POST_MAXSIZE')) and not _legacy_bev
    pre_max_cfg = _cfg_get(nms_config, 'NMS_PRE_MAXSIZE')
    post_max_cfg = _cfg_get(nms_config, 'NMS_POST_MAXSIZE')

    selected = []
    for k in range(num_classes):
        curr_mask = (box_labels == k) & _score_mask(box_scores, score_thresh, k)
        curr_idx = torch.nonzero(curr_mask)[:, 0]
        if curr_idx.numel() == 0:
            continue
        curr_scores = box_scores[curr_idx]
        curr_boxes = box_preds[curr_idx]
        pre_max = _per_class(pre_max_cfg, k, 'NMS_PRE_MAXSIZE')
        order = torch.sort(curr_scores, descending=True, stable=True).indices
        if pre_max is not None:
            order = order[:int(pre_max)]
        boxes_for_nms = curr_boxes[order, 0:7]
        if _legacy_bev:
            # Legacy mmdet3d kernel: footprint turned by -90 deg about its centre == dx and dy swapped.
            boxes_for_nms = boxes_for_nms[:, [0, 1, 2, 4, 3, 5, 6]]
        keep, _ = iou3d_nms_utils.nms_gpu(boxes_for_nms, curr_scores[order], _per_class(thresholds, k, 'NMS_THRESH'))
        keep = keep.long()
        post_max = _per_class(post_max_cfg, k, 'NMS_POST_MAXSIZE')
        if post_max is not None and not ignore_post:
            keep = keep[:int(post_max)]
        selected.append(curr_idx[order[keep]])

    selected = torch.cat(selected) if selected else _empty_index(device)
    return selected, box_scores[selected]


def multi_classes_nms_mmdet(box_scores, box_preds, box_labels, nms_config, score_thresh=None):
    """DSVT-repo `multi_classes_nms_mmdet`: `class_specific_nms` with the legacy mmdet3d BEV IoU (footprints turned
    by -90 deg about their centres, spec §3.6) and `NMS_POST_MAXSIZE[k]` always applied. Same inputs / outputs."""
    return class_specific_nms(box_scores, box_preds, box_labels, nms_config, score_thresh, _legacy_bev=True)
