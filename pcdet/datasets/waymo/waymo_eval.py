"""Waymo Open Dataset detection metrics (AP / APH, LEVEL_1 / LEVEL_2) in pure numpy / scipy / torch.

Re-implements the official `detection_metrics` op with the configuration OpenPCDet uses (spec §2.2): breakdown
by object type, difficulty levels 1 and 2, Hungarian matching on exact rotated 3D IoU with per-type thresholds
(Vehicle 0.7, Pedestrian / Sign / Cyclist 0.5), score cutoffs 0.00, 0.01, ..., 0.99, 1.00. No TensorFlow: the
official op is only used by `tools/scripts/waymo_official_crosscheck.py` in a separate environment
(docs/WAYMO_EVAL.md).

Inputs are OpenPCDet's (frames aligned by list order):
    gt_annos[i]:   `info['annos']` (or the whole info) with `name (N,)`, `gt_boxes_lidar (N, 7|9)`,
                   `difficulty (N,)` (0 unset, 1, 2) and `num_points_in_gt (N,)`.
    pred_annos[i]: det_annos with `name (K,)`, `score (K,)`, `boxes_lidar (K, 7|9)`.

Semantics (spec §2.2; the ambiguous points are settled in docs/WAYMO_EVAL.md):
  * GT: boxes of the evaluated classes with `num_points_in_gt > 0`; difficulty 0 becomes 1 if the box has more
    than 5 points, else 2. GT of other classes are ignored. Boxes (GT and predictions) whose BEV centre is
    `>= distance_thresh + 0.5` m from the origin are dropped. If any prediction score is > 1, all scores go
    through a sigmoid (with a warning), as OpenPCDet does.
  * Per class and score cutoff c, predictions with `float32(score) >= float32(c)` are matched one-to-one to the
    class's GT of the same frame by a maximum-total-IoU (Hungarian) assignment; pairs with IoU below the class
    threshold cannot match.
  * TP = matched predictions (at both levels, whatever the matched GT's level), FP = unmatched predictions,
    FN at level L = unmatched GT with level <= L. Heading accuracy of a TP: `1 - |dh| / pi` with dh wrapped to
    [-pi, pi]. precision = TP / (TP + FP), precision_ha = sum(ha) / (TP + FP), recall = TP / (TP + FN); both
    precisions are 1 where recall is 0.
  * AP: recall -> max precision map with (0 -> 1), swept from high to low recall inserting a point every 0.05
    (desired_recall_delta) that carries the running max precision, while the gap left is more than
    delta + 1e-6 (the official kError), the recall-0 entry overridden by its neighbour's precision, trapezoid
    rule. APH: the same with precision_ha.

Speed: IoUs are computed once per class for all (prediction, GT) pairs of the same frame whose circumscribed BEV
circles meet, batched across frames. The cutoff sweep never re-matches whole frames: the bipartite graph of valid
(IoU >= threshold) pairs splits into connected components, over which a maximum-weight assignment decomposes, and
predictions are nested by score. Components with one GT (lone pairs, duplicates: the vast majority) or with one
prediction are resolved for all cutoffs at once with vectorised running-argmax / best-pair logic; larger
components run `scipy.optimize.linear_sum_assignment` once per distinct set of predictions above the cutoff (at
most once per distinct score bucket of the component). Predictions without a valid pair are FPs at every cutoff
they pass. See docs/WAYMO_EVAL.md.

CLI:
    python -m pcdet.datasets.waymo.waymo_eval --pred_infos result.pkl --gt_infos <tag>_infos_val.pkl \
        --class_names Vehicle Pedestrian Cyclist [--sampled_interval N]
"""
import argparse
import logging
import pickle

import numpy as np

WAYMO_CLASSES = ['unknown', 'Vehicle', 'Pedestrian', 'Sign', 'Cyclist']
# Official object types in breakdown order, i.e. the order of the keys of the official op's result dict.
WAYMO_TYPES = {'Vehicle': 'VEHICLE', 'Pedestrian': 'PEDESTRIAN', 'Sign': 'SIGN', 'Cyclist': 'CYCLIST'}
IOU_THRESHOLDS = {'Vehicle': 0.7, 'Pedestrian': 0.5, 'Sign': 0.5, 'Cyclist': 0.5}
# OpenPCDet's config: `score_cutoffs.append(i * 0.01)` for i < 100, then 1.0, stored as proto floats (float32).
SCORE_CUTOFFS = np.array([i * 0.01 for i in range(100)] + [1.0], dtype=np.float32)
DESIRED_RECALL_DELTA = 0.05
# `kError` of the official ComputeMeanAveragePrecision: a point is inserted only while the recall gap left
# is more than delta + RECALL_TOLERANCE, so gaps that are an exact multiple of delta get no extra point.
RECALL_TOLERANCE = 1e-6
LEVELS = (1, 2)
MIN_POINTS_FOR_LEVEL_1 = 5  # difficulty 0 -> LEVEL_1 if num_points_in_gt > 5 else LEVEL_2
MAX_BOXES_PER_FRAME = 500
PAIRS_PER_CHUNK = 1 << 21  # dense (prediction, GT) pairs examined per IoU chunk (bounds memory)
AUTO_PROGRESS_FRAMES = 1000  # progress bars are shown by default from this many frames on

__all__ = ['waymo_detection_metrics', 'waymo_detection_measurements', 'result_str', 'average_precision',
           'metric_key', 'heading_accuracy', 'WAYMO_CLASSES', 'WAYMO_TYPES', 'IOU_THRESHOLDS', 'SCORE_CUTOFFS',
           'DESIRED_RECALL_DELTA', 'RECALL_TOLERANCE', 'MAX_BOXES_PER_FRAME']


def metric_key(class_name, level, metric='AP'):
    """OpenPCDet / official key, e.g. `OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP`."""
    return f'OBJECT_TYPE_TYPE_{WAYMO_TYPES[class_name]}_LEVEL_{level}/{metric}'


def heading_accuracy(heading_pred, heading_gt):
    """`1 - |dh| / pi` with dh = heading_pred - heading_gt wrapped to [-pi, pi] (1 = same, 0 = opposite)."""
    diff = np.abs(np.remainder(np.asarray(heading_pred, np.float64) - np.asarray(heading_gt, np.float64) + np.pi,
                               2 * np.pi) - np.pi)
    return 1.0 - np.minimum(diff, np.pi) / np.pi


def average_precision(precisions, recalls, desired_recall_delta=DESIRED_RECALL_DELTA):
    """Area under the interpolated precision/recall curve, as the official `ComputeMeanAveragePrecision`
    (waymo_open_dataset/metrics/metrics_utils.cc).

    1. recall -> max precision over the given (precision, recall) points, plus (recall 0 -> precision 1);
    2. sweep recalls from high to low keeping the running max precision; between two consecutive recalls
       r_hi > r_lo insert points at r_hi - k * delta (k = 1, 2, ...) while the previous point is more than
       delta + RECALL_TOLERANCE above r_lo; they carry the running max of recalls >= r_hi. With the tolerance, a
       gap that is an exact multiple of delta gets no point at (float round-off of) r_lo itself;
    3. the recall-0 point takes the precision of its neighbour (so the artificial (0, 1) adds no area);
    4. trapezoid rule over the resulting points.
    Returns 0 when every recall is 0 (no area).
    """
    best = {0.0: 1.0}
    for precision, recall in zip(np.asarray(precisions, np.float64).tolist(),
                                 np.asarray(recalls, np.float64).tolist()):
        best[recall] = max(best.get(recall, precision), precision)
    curve = []  # (recall, interpolated precision), recall decreasing
    running_max = 0.0
    for recall in sorted(best, reverse=True):
        if curve:
            start, step = curve[-1][0], 1
            # Official: `while (last - r > delta + kError) { last -= delta; emit(last) }`. The points are placed at
            # start - step * delta rather than by repeated subtraction (same points up to ~1e-16, exact sums).
            while start - (step - 1) * desired_recall_delta - recall > desired_recall_delta + RECALL_TOLERANCE:
                curve.append((start - step * desired_recall_delta, running_max))
                step += 1
        running_max = max(running_max, best[recall])
        curve.append((recall, running_max))
    if len(curve) < 2:
        return 0.0
    curve[-1] = (curve[-1][0], curve[-2][1])
    area = 0.0
    for (recall_hi, precision_hi), (recall_lo, precision_lo) in zip(curve[:-1], curve[1:]):
        area += (recall_hi - recall_lo) * (precision_hi + precision_lo) / 2
    return float(area)


# ---------------------------------------------------------------------------------------------------- inputs

def _boxes(array, count, what, frame_index):
    if array is None and count:
        raise ValueError(f'frame {frame_index}: {count} names but no {what}')
    boxes = np.asarray(array if array is not None else np.zeros((0, 7)), dtype=np.float64)
    if boxes.size == 0 and count == 0:
        return np.zeros((0, 7))
    boxes = boxes.reshape(count, -1) if boxes.ndim != 2 else boxes
    if boxes.shape[0] != count or boxes.shape[1] < 7:
        raise ValueError(f'frame {frame_index}: {what} must have shape ({count}, 7|9) to match the names, '
                         f'got {boxes.shape}')
    if not np.isfinite(boxes[:, :7]).all():
        raise ValueError(f'frame {frame_index}: {what} contains non-finite values')
    return boxes[:, :7]


def _annos_of(gt):
    return gt['annos'] if 'annos' in gt and isinstance(gt['annos'], dict) else gt


def _gather_gt(gt_annos, class_names, distance_thresh):
    """Concatenated GT of the evaluated classes: frame (N,), class index (N,), boxes (N, 7), level (N,)."""
    frames, labels, boxes, levels = [], [], [], []
    for frame_index, gt in enumerate(gt_annos):
        annos = _annos_of(gt)
        names = np.asarray(annos['name']).reshape(-1)
        if 'num_points_in_gt' not in annos or 'difficulty' not in annos:
            raise ValueError(f'frame {frame_index}: GT annos need `num_points_in_gt` and `difficulty` (infos made '
                             'from Waymo v1.0 records lack point counts: re-create them from v1.2+ records)')
        num_points = np.asarray(annos['num_points_in_gt']).reshape(-1)
        difficulty = np.asarray(annos['difficulty']).reshape(-1).astype(np.int64)
        if not len(names) == len(num_points) == len(difficulty):
            raise ValueError(f'frame {frame_index}: name, num_points_in_gt and difficulty lengths differ '
                             f'({len(names)}, {len(num_points)}, {len(difficulty)})')
        level = np.where(difficulty == 0, np.where(num_points > MIN_POINTS_FOR_LEVEL_1, 1, 2), difficulty)
        frame_boxes = _boxes(annos.get('gt_boxes_lidar'), len(names), 'gt_boxes_lidar', frame_index)
        label = np.array([class_names.index(n) if n in class_names else -1 for n in names.tolist()], np.int64)
        keep = (label >= 0) & (num_points > 0)
        unknown = keep & ~np.isin(difficulty, (0, 1, 2))
        if unknown.any():
            raise ValueError(f'frame {frame_index}: difficulty must be 0, 1 or 2, got {np.unique(difficulty[unknown])}')
        keep &= np.linalg.norm(frame_boxes[:, :2], axis=1) < distance_thresh + 0.5
        frames.append(np.full(int(keep.sum()), frame_index, np.int64))
        labels.append(label[keep])
        boxes.append(frame_boxes[keep])
        levels.append(level[keep])
    return _concat(frames, labels, boxes, levels)


def _gather_predictions(pred_annos, class_names, distance_thresh, max_boxes_per_frame, logger):
    """Concatenated predictions of the evaluated classes: frame, class index, boxes (K, 7), score (float32)."""
    frames, labels, boxes, scores = [], [], [], []
    any_score_above_one = False
    capped_frames, dropped = 0, 0
    for frame_index, pred in enumerate(pred_annos):
        names = np.asarray(pred['name']).reshape(-1)
        score = np.asarray(pred['score'], dtype=np.float64).reshape(-1)
        if len(score) != len(names):
            raise ValueError(f'frame {frame_index}: {len(names)} prediction names but {len(score)} scores')
        if not np.isfinite(score).all():
            raise ValueError(f'frame {frame_index}: prediction scores must be finite')
        frame_boxes = _boxes(pred.get('boxes_lidar'), len(names), 'boxes_lidar', frame_index)
        any_score_above_one |= bool(len(score)) and bool(score.max() > 1)
        label = np.array([class_names.index(n) if n in class_names else -1 for n in names.tolist()], np.int64)
        keep = (label >= 0) & (np.linalg.norm(frame_boxes[:, :2], axis=1) < distance_thresh + 0.5)
        keep = np.flatnonzero(keep)
        if max_boxes_per_frame is not None and len(keep) > max_boxes_per_frame:
            order = np.argsort(-score[keep], kind='stable')
            capped_frames += 1
            dropped += len(keep) - max_boxes_per_frame
            keep = np.sort(keep[order[:max_boxes_per_frame]])
        frames.append(np.full(len(keep), frame_index, np.int64))
        labels.append(label[keep])
        boxes.append(frame_boxes[keep])
        scores.append(score[keep])
    if capped_frames:
        logger.warning(f'Waymo eval: {capped_frames} frame(s) had more than {max_boxes_per_frame} predictions of the '
                       f'evaluated classes; kept the top {max_boxes_per_frame} by score, dropped {dropped} boxes. '
                       'Metrics then differ from the official evaluator (raise max_boxes_per_frame or pass None)')
    frames, labels, boxes, scores = _concat(frames, labels, boxes, scores)
    if any_score_above_one:
        logger.warning('Waymo eval: scores > 1 found, applying a sigmoid to all scores (the official evaluation '
                       'needs scores in [0, 1])')
        scores = 1 / (1 + np.exp(-scores))
    return frames, labels, boxes, scores.astype(np.float32)


def _concat(frames, labels, boxes, values):
    """Concatenate per-frame lists (empty lists give empty arrays of the right shapes)."""
    if not frames:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 7)), np.zeros(0)
    return np.concatenate(frames), np.concatenate(labels), np.concatenate(boxes), np.concatenate(values)


# ---------------------------------------------------------------------------------------------------- matching

def _same_frame_pairs(pred_frames, gt_frames):
    """Yield chunks of index pairs (pred_idx, gt_idx) of all predictions and GT sharing a frame.

    Both inputs must be sorted by frame. Chunks hold whole frames and about PAIRS_PER_CHUNK pairs.
    """
    frames, pred_start, pred_count = np.unique(pred_frames, return_index=True, return_counts=True)
    gt_frame_ids, gt_start, gt_count = np.unique(gt_frames, return_index=True, return_counts=True)
    common, in_pred, in_gt = np.intersect1d(frames, gt_frame_ids, return_indices=True)
    if not len(common):
        return
    p_start, p_count = pred_start[in_pred], pred_count[in_pred]
    g_start, g_count = gt_start[in_gt], gt_count[in_gt]
    pairs_per_frame = p_count * g_count
    chunk_id = np.cumsum(pairs_per_frame) // PAIRS_PER_CHUNK
    bounds = np.flatnonzero(np.diff(chunk_id)) + 1
    for frame_sel in np.split(np.arange(len(common)), bounds):
        counts = pairs_per_frame[frame_sel]
        total = int(counts.sum())
        owner = np.repeat(frame_sel, counts)
        local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        yield p_start[owner] + local // g_count[owner], g_start[owner] + local % g_count[owner]


def _valid_pairs(pred_boxes, pred_frames, gt_boxes, gt_frames, iou_threshold, device):
    """(pred_idx, gt_idx, iou) of all same-frame pairs with IoU >= iou_threshold (inputs sorted by frame)."""
    import torch

    from pcdet.ops.iou3d_nms.iou3d_nms_utils import paired_boxes_iou3d_gpu

    radius_pred = np.hypot(pred_boxes[:, 3], pred_boxes[:, 4]) / 2
    radius_gt = np.hypot(gt_boxes[:, 3], gt_boxes[:, 4]) / 2
    out_p, out_g, out_iou = [], [], []
    for pred_idx, gt_idx in _same_frame_pairs(pred_frames, gt_frames):
        # Conservative circumscribed-circle prefilter: disjoint circles mean zero overlap.
        reach = (radius_pred[pred_idx] + radius_gt[gt_idx]) * (1 + 1e-4) + 1e-6
        dist_sq = ((pred_boxes[pred_idx, :2] - gt_boxes[gt_idx, :2]) ** 2).sum(axis=1)
        near = dist_sq <= reach * reach
        pred_idx, gt_idx = pred_idx[near], gt_idx[near]
        if not len(pred_idx):
            continue
        iou = paired_boxes_iou3d_gpu(torch.from_numpy(pred_boxes[pred_idx]).to(device),
                                     torch.from_numpy(gt_boxes[gt_idx]).to(device)).cpu().numpy()
        ok = iou >= np.float32(iou_threshold)
        out_p.append(pred_idx[ok])
        out_g.append(gt_idx[ok])
        out_iou.append(iou[ok].astype(np.float64))
    if not out_p:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_p), np.concatenate(out_g), np.concatenate(out_iou)


def _ranges_to_curve(starts, stops, weights, size):
    """sum_i weights[i] * [starts[i] <= c < stops[i]] for c in range(size)."""
    delta = np.bincount(starts, weights, minlength=size + 1) - np.bincount(stops, weights, minlength=size + 1)
    return np.cumsum(delta)[:size]


def _evaluate_class(pred_boxes, pred_frames, pred_scores, gt_boxes, gt_frames, gt_levels, iou_threshold, device):
    """Per-cutoff totals for one class: dict of (num_cutoffs,) arrays num_pred, tp, ha_sum, tp_level1."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    num_cutoffs = len(SCORE_CUTOFFS)
    # Prediction k passes cutoffs 0 .. passes[k] - 1 (float32 comparison, as in the official op).
    passes = np.searchsorted(SCORE_CUTOFFS, pred_scores.astype(np.float32), side='right')
    num_pred = _ranges_to_curve(np.zeros_like(passes), passes, np.ones(len(passes)), num_cutoffs)
    totals = {'num_pred': num_pred, 'tp': np.zeros(num_cutoffs), 'ha_sum': np.zeros(num_cutoffs),
              'tp_level1': np.zeros(num_cutoffs)}
    edge_p, edge_g, edge_iou = _valid_pairs(pred_boxes, pred_frames, gt_boxes, gt_frames, iou_threshold, device)
    if not len(edge_p):
        return totals
    edge_ha = heading_accuracy(pred_boxes[edge_p, 6], gt_boxes[edge_g, 6])
    num_p, num_g = len(pred_boxes), len(gt_boxes)
    graph = coo_matrix((np.ones(len(edge_p)), (edge_p, num_p + edge_g)), shape=(num_p + num_g,) * 2)
    _, component = connected_components(graph, directed=False)
    edge_component = component[edge_p]
    preds_in_component = np.bincount(component[:num_p], minlength=component.max() + 1)[edge_component]
    gts_in_component = np.bincount(component[num_p:], minlength=component.max() + 1)[edge_component]
    starts, stops, tp_w, ha_w, l1_w = [], [], [], [], []

    def add(start, stop, tp, ha, level1):
        starts.append(np.atleast_1d(start))
        stops.append(np.atleast_1d(stop))
        tp_w.append(np.atleast_1d(np.asarray(tp, np.float64)))
        ha_w.append(np.atleast_1d(np.asarray(ha, np.float64)))
        l1_w.append(np.atleast_1d(np.asarray(level1, np.float64)))

    # One GT, k >= 1 predictions (a lone pair, or duplicates): while any of them passes the cutoff the GT is
    # matched, to the passing prediction of highest IoU. Vectorised: sort each component's predictions by
    # decreasing passes; prefix j is active for cutoffs [passes[j + 1], passes[j]) and matches the running argmax.
    sel = np.flatnonzero(gts_in_component == 1)
    if len(sel):
        sel = sel[np.lexsort((-passes[edge_p[sel]], edge_component[sel]))]
        comp = edge_component[sel]
        new_segment = np.r_[True, comp[1:] != comp[:-1]]
        key = (np.cumsum(new_segment) - 1) * 2.0 + edge_iou[sel]  # IoU in (0, 1]: segments never mix
        running_max = np.maximum.accumulate(key)
        first_max = np.r_[True, key[1:] > running_max[:-1]]
        best = sel[np.maximum.accumulate(np.where(first_max, np.arange(len(sel)), 0))]
        stop = passes[edge_p[sel]]
        start = np.where(np.r_[~new_segment[1:], False], np.r_[stop[1:], 0], 0)
        add(start, stop, np.ones(len(sel)), edge_ha[best], gt_levels[edge_g[best]] == 1)

    # One prediction, k >= 2 GT: while it passes the cutoff it matches its highest-IoU GT.
    sel = np.flatnonzero((preds_in_component == 1) & (gts_in_component > 1))
    if len(sel):
        sel = sel[np.lexsort((-edge_iou[sel], edge_component[sel]))]
        best = sel[np.r_[True, edge_component[sel][1:] != edge_component[sel][:-1]]]
        add(np.zeros(len(best), np.int64), passes[edge_p[best]], np.ones(len(best)), edge_ha[best],
            gt_levels[edge_g[best]] == 1)

    # Larger components: one Hungarian assignment per distinct set of predictions above the cutoff.
    multi = np.flatnonzero((preds_in_component > 1) & (gts_in_component > 1))
    multi = multi[np.argsort(edge_component[multi], kind='stable')]
    groups = np.split(multi, np.flatnonzero(np.diff(edge_component[multi])) + 1) if len(multi) else []
    for edges in groups:
        preds, row = np.unique(edge_p[edges], return_inverse=True)
        gts, col = np.unique(edge_g[edges], return_inverse=True)
        order = np.argsort(-passes[preds], kind='stable')  # rows by decreasing number of passed cutoffs
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        row = rank[row]
        pred_passes = passes[preds][order]
        weight = np.zeros((len(preds), len(gts)))
        weight[row, col] = edge_iou[edges]
        valid = np.zeros((len(preds), len(gts)), bool)
        valid[row, col] = True
        edge_heading = np.zeros((len(preds), len(gts)))
        edge_heading[row, col] = edge_ha[edges]
        gt_is_level1 = gt_levels[gts] == 1
        distinct = np.unique(pred_passes)[::-1]  # decreasing
        for hi, lo in zip(distinct, np.append(distinct[1:], 0)):
            if hi == 0:
                break
            active = int(np.searchsorted(-pred_passes, -hi, side='right'))  # rows with passes >= hi
            rows, cols = linear_sum_assignment(weight[:active], maximize=True)
            matched = valid[rows, cols]
            rows, cols = rows[matched], cols[matched]
            add(lo, hi, len(rows), edge_heading[rows, cols].sum(), gt_is_level1[cols].sum())
    starts, stops = np.concatenate(starts), np.concatenate(stops)
    totals['tp'] = _ranges_to_curve(starts, stops, np.concatenate(tp_w), num_cutoffs)
    totals['ha_sum'] = _ranges_to_curve(starts, stops, np.concatenate(ha_w), num_cutoffs)
    totals['tp_level1'] = _ranges_to_curve(starts, stops, np.concatenate(l1_w), num_cutoffs)
    return totals


def _progress_bar(enabled, total):
    if not enabled:
        return None
    import tqdm
    return tqdm.tqdm(total=total, desc='waymo eval', unit='class', leave=False, dynamic_ncols=True)


def _check_inputs(pred_annos, gt_annos, class_names):
    if len(pred_annos) != len(gt_annos):
        raise ValueError(f'{len(pred_annos)} prediction frames vs {len(gt_annos)} GT frames: they must be aligned by '
                         'order (subsample the GT infos like the predictions, e.g. --sampled_interval)')
    unknown = [name for name in class_names if name not in WAYMO_TYPES]
    if unknown:
        raise ValueError(f'unknown Waymo class name(s) {unknown}; expected some of {list(WAYMO_TYPES)}')
    for index, (pred, gt) in enumerate(zip(pred_annos, gt_annos)):
        if 'frame_id' in pred and 'frame_id' in gt and str(pred['frame_id']) != str(gt['frame_id']):
            raise ValueError(f'frame {index}: prediction frame_id {pred["frame_id"]!r} != GT frame_id '
                             f'{gt["frame_id"]!r} (frames must be aligned by order)')


def waymo_detection_measurements(pred_annos, gt_annos, class_names, distance_thresh=1000,
                                 max_boxes_per_frame=MAX_BOXES_PER_FRAME, device='cpu', progress=None, logger=None):
    """Per class and level, per score cutoff counts and curves (the numbers AP / APH are computed from).

    Returns:
        {class_name: {level: {'score_cutoffs', 'tp', 'fp', 'fn', 'ha_sum', 'precision', 'precision_ha',
                              'recall'}: (101,) arrays, 'num_gt': int}} for each class in `class_names` and
        level in (1, 2).
    """
    logger = logger or logging.getLogger(__name__)
    class_names = list(class_names)
    _check_inputs(pred_annos, gt_annos, class_names)
    if progress is None:
        progress = len(gt_annos) >= AUTO_PROGRESS_FRAMES
    gt_frames, gt_labels, gt_boxes, gt_levels = _gather_gt(gt_annos, class_names, distance_thresh)
    pd_frames, pd_labels, pd_boxes, pd_scores = _gather_predictions(pred_annos, class_names, distance_thresh,
                                                                    max_boxes_per_frame, logger)
    results = {}
    bar = _progress_bar(progress, len(class_names))
    for label, name in enumerate(class_names):
        if bar is not None:
            bar.set_postfix_str(name)
        gt_sel, pd_sel = gt_labels == label, pd_labels == label  # already sorted by frame
        totals = _evaluate_class(pd_boxes[pd_sel], pd_frames[pd_sel], pd_scores[pd_sel], gt_boxes[gt_sel],
                                 gt_frames[gt_sel], gt_levels[gt_sel], IOU_THRESHOLDS[name], device)
        if bar is not None:
            bar.update()
        tp, ha_sum = np.rint(totals['tp']), totals['ha_sum']
        fp = np.rint(totals['num_pred']) - tp
        num_gt = {1: int((gt_levels[gt_sel] == 1).sum()), 2: int(gt_sel.sum())}
        matched_gt = {1: np.rint(totals['tp_level1']), 2: tp}
        results[name] = {}
        for level in LEVELS:
            fn = num_gt[level] - matched_gt[level]
            with np.errstate(divide='ignore', invalid='ignore'):
                recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
                precision = np.where(recall > 0, tp / (tp + fp), 1.0)
                precision_ha = np.where(recall > 0, ha_sum / (tp + fp), 1.0)
            results[name][level] = {'score_cutoffs': SCORE_CUTOFFS.copy(), 'tp': tp.astype(np.int64),
                                    'fp': fp.astype(np.int64), 'fn': fn.astype(np.int64), 'ha_sum': ha_sum,
                                    'precision': precision, 'precision_ha': precision_ha, 'recall': recall,
                                    'num_gt': num_gt[level]}
    if bar is not None:
        bar.close()
    return results


def waymo_detection_metrics(pred_annos, gt_annos, class_names, distance_thresh=1000,
                            max_boxes_per_frame=MAX_BOXES_PER_FRAME, device='cpu', progress=None, logger=None):
    """Waymo AP / APH per object type and difficulty level, OpenPCDet's `waymo_evaluation` replacement.

    Args:
        pred_annos: det_annos (list of dicts: name, score, boxes_lidar), one per frame.
        gt_annos: `info['annos']` dicts (or infos), same frames in the same order.
        class_names: evaluated classes, some of 'Vehicle', 'Pedestrian', 'Sign', 'Cyclist'.
        distance_thresh: boxes whose BEV centre is >= distance_thresh + 0.5 m away are dropped (1000: none).
        max_boxes_per_frame: keep at most this many predictions (of the evaluated classes) per frame, the
            highest scored, with a warning; None keeps all.
        device: where the IoUs are computed ('cpu', 'cuda', ...).
        progress: tqdm bars; None shows them from AUTO_PROGRESS_FRAMES frames on.
    Returns:
        dict `OBJECT_TYPE_TYPE_<TYPE>_LEVEL_<1|2>/<AP|APH>` -> float for all four Waymo types in the official
        order (VEHICLE, PEDESTRIAN, SIGN, CYCLIST); types not in `class_names` have no GT and are 0, as in the
        official evaluation run by OpenPCDet.
    """
    measurements = waymo_detection_measurements(pred_annos, gt_annos, class_names, distance_thresh,
                                                max_boxes_per_frame, device, progress, logger)
    metrics = {}
    for name in WAYMO_TYPES:
        for level in LEVELS:
            curves = measurements.get(name, {}).get(level)
            if curves is None:
                ap = aph = 0.0
            else:
                ap = average_precision(curves['precision'], curves['recall'])
                aph = average_precision(curves['precision_ha'], curves['recall'])
            metrics[metric_key(name, level, 'AP')] = ap
            metrics[metric_key(name, level, 'APH')] = aph
    return metrics


def result_str(metrics, class_names=None):
    """`key: value` lines as OpenPCDet prints them, then the mean over `class_names` per level and metric
    (`OVERALL_LEVEL_1/AP: ...`; OpenPCDet sums all types and divides by 3, the same for its 3 classes)."""
    lines = [f'{key}: {value:.4f}' for key, value in metrics.items()]
    if class_names:
        for level in LEVELS:
            for metric in ('AP', 'APH'):
                values = [metrics[metric_key(name, level, metric)] for name in class_names]
                lines.append(f'OVERALL_LEVEL_{level}/{metric}: {sum(values) / len(values):.4f}')
    return '\n' + '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------------------- CLI

def _load_pickle(path):
    with open(path, 'rb') as handle:
        return pickle.load(handle)


def _frame_ids(items):
    ids = [item.get('frame_id') if isinstance(item, dict) else None for item in items]
    return None if any(i is None for i in ids) else [str(i) for i in ids]


def select_gt_frames(gt_infos, pred_annos, sampled_interval=None):
    """GT infos aligned with the prediction frames: `(gt_infos[::k], k)`.

    With `sampled_interval=None`, k is inferred: among the k with len(gt_infos[::k]) == len(pred_annos), those
    whose frame_ids agree with the predictions' (when both carry `frame_id`); it must be unique (ValueError
    otherwise).
    """
    if sampled_interval is None:
        num_pred = len(pred_annos)
        candidates = [k for k in range(1, max(len(gt_infos), 1) + 1) if len(gt_infos[::k]) == num_pred]
        pred_ids = _frame_ids(pred_annos)
        if pred_ids is not None and len(candidates) > 1:
            candidates = [k for k in candidates if _frame_ids(gt_infos[::k]) in (None, pred_ids)]
        if len(candidates) != 1:
            raise ValueError(f'cannot infer --sampled_interval: {len(gt_infos)} GT frames, {num_pred} prediction '
                             f'frames (candidates {candidates[:5]}); pass it explicitly')
        sampled_interval = candidates[0]
    if sampled_interval < 1:
        raise ValueError(f'--sampled_interval must be >= 1, got {sampled_interval}')
    return list(gt_infos[::sampled_interval]), sampled_interval


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Waymo AP/APH of an OpenPCDet result.pkl (no TensorFlow)')
    parser.add_argument('--pred_infos', required=True, help='result.pkl (det_annos) written by tools/test.py')
    parser.add_argument('--gt_infos', required=True, help='<tag>_infos_val.pkl (list of infos with annos)')
    parser.add_argument('--class_names', nargs='+', default=['Vehicle', 'Pedestrian', 'Cyclist'])
    parser.add_argument('--sampled_interval', type=int, default=None,
                        help='evaluate GT infos[::N] (must match the SAMPLED_INTERVAL of the predictions); '
                             'default: inferred from the frame counts')
    parser.add_argument('--distance_thresh', type=float, default=1000)
    parser.add_argument('--max_boxes_per_frame', type=int, default=MAX_BOXES_PER_FRAME,
                        help='0 or negative: no cap')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    logger = logging.getLogger(__name__)
    pred_infos = _load_pickle(args.pred_infos)
    gt_infos, interval = select_gt_frames(_load_pickle(args.gt_infos), pred_infos, args.sampled_interval)
    gt_annos = []
    for info in gt_infos:
        annos = dict(_annos_of(info))
        if 'frame_id' in info:
            annos['frame_id'] = info['frame_id']
        gt_annos.append(annos)
    logger.info(f'Waymo eval: {len(pred_infos)} frames (GT sampled_interval {interval}), classes {args.class_names}')
    cap = args.max_boxes_per_frame if args.max_boxes_per_frame > 0 else None
    metrics = waymo_detection_metrics(pred_infos, gt_annos, args.class_names, distance_thresh=args.distance_thresh,
                                      max_boxes_per_frame=cap, device=args.device, logger=logger)
    print(result_str(metrics, args.class_names))
    return metrics


if __name__ == '__main__':
    main()
