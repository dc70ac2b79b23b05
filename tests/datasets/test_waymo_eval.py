"""Waymo AP/APH evaluator: hand-computed cases, and agreement with a brute-force reference on random scenes.

The reference (`reference_measurements` / `reference_ap`) is written independently of the evaluator: plain loops
over classes, score cutoffs and frames, a per-frame IoU matrix from `boxes_iou3d_gpu`, and an exhaustive
(itertools) search for the one-to-one assignment of maximum total IoU over pairs at or above the threshold. Its AP
follows the official `ComputeMeanAveragePrecision` (waymo-open-dataset, waymo_open_dataset/metrics/metrics_utils.cc)
in exact rational arithmetic, so float round-off cannot add or drop an interpolation point.
"""
import itertools
import logging
import math
import pickle
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from pcdet.datasets.waymo import waymo_eval
from pcdet.datasets.waymo.waymo_eval import (
    SCORE_CUTOFFS,
    average_precision,
    main,
    metric_key,
    result_str,
    select_gt_frames,
    waymo_detection_measurements,
    waymo_detection_metrics,
)
from pcdet.ops.iou3d_nms.iou3d_nms_utils import boxes_iou3d_gpu

CLASSES = ['Vehicle', 'Pedestrian', 'Cyclist']
SIZE = {'Vehicle': (4.0, 2.0, 1.5), 'Pedestrian': (1.0, 1.0, 1.8), 'Cyclist': (1.8, 0.8, 1.6), 'Sign': (0.5, 0.5, 1)}


def box(x, y=0.0, heading=0.0, name='Vehicle', z=0.0):
    return [x, y, z, *SIZE[name], heading]


def gt_frame(names, boxes, difficulty=None, num_points=None):
    n = len(names)
    return {'name': np.array(names, dtype='<U10'),
            'gt_boxes_lidar': np.array(boxes, np.float64).reshape(n, -1 if n else 9),
            'difficulty': np.array(difficulty if difficulty is not None else [1] * n, np.int64),
            'num_points_in_gt': np.array(num_points if num_points is not None else [100] * n, np.int64)}


def pred_frame(names, boxes, scores):
    n = len(names)
    return {'name': np.array(names, dtype='<U10'), 'score': np.array(scores, np.float32),
            'boxes_lidar': np.array(boxes, np.float32).reshape(n, 7)}


def metrics_of(preds, gts, classes=CLASSES, **kwargs):
    return waymo_detection_metrics(preds, gts, classes, **kwargs)


def ap(metrics, name='Vehicle', level=1, metric='AP'):
    return metrics[metric_key(name, level, metric)]


# ------------------------------------------------------------------------------------------- hand-computed cases

def test_keys_follow_official_order_and_unevaluated_types_are_zero():
    gts = [gt_frame(['Vehicle'], [box(0)])]
    preds = [pred_frame(['Vehicle'], [box(0)], [0.9])]
    metrics = metrics_of(preds, gts, ['Vehicle'])
    expected = [f'OBJECT_TYPE_TYPE_{t}_LEVEL_{lv}/{m}' for t in ('VEHICLE', 'PEDESTRIAN', 'SIGN', 'CYCLIST')
                for lv in (1, 2) for m in ('AP', 'APH')]
    assert list(metrics) == expected
    assert all(isinstance(v, float) for v in metrics.values())
    assert ap(metrics) == 1.0 and ap(metrics, 'Pedestrian') == 0.0 and ap(metrics, 'Cyclist', 2, 'APH') == 0.0


def test_perfect_predictions_give_ap_and_aph_one():
    gts, preds = [], []
    for frame in range(3):
        names = ['Vehicle', 'Vehicle', 'Pedestrian', 'Cyclist']
        boxes = [box(10 * frame, 0, 0.3, 'Vehicle'), box(10 * frame, 8, -2.0, 'Vehicle'),
                 box(10 * frame + 3, -6, 1.0, 'Pedestrian'), box(10 * frame - 3, -9, 3.0, 'Cyclist')]
        gts.append(gt_frame(names, boxes, difficulty=[1, 2, 1, 2]))
        preds.append(pred_frame(names, boxes, [0.9, 0.3, 0.55, 0.05 + 0.1 * frame]))
    metrics = metrics_of(preds, gts)
    for name in CLASSES:
        for level in (1, 2):
            assert ap(metrics, name, level, 'AP') == pytest.approx(1.0, abs=1e-12)
            assert ap(metrics, name, level, 'APH') == pytest.approx(1.0, abs=1e-6)  # float32 headings
    assert ap(metrics, 'Sign') == 0.0
    text = result_str(metrics, CLASSES)
    assert 'OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP: 1.0000' in text and 'OVERALL_LEVEL_2/APH: 1.0000' in text


def test_iou_thresholds_are_per_class():
    # A 4 m long vehicle shifted by d along its axis: IoU = (4 - d) / (4 + d); 1 m -> 0.6 < 0.7, 0.6 m -> 0.739.
    gts = [gt_frame(['Vehicle'], [box(0)])]
    assert ap(metrics_of([pred_frame(['Vehicle'], [box(1.0)], [0.9])], gts)) == 0.0
    assert ap(metrics_of([pred_frame(['Vehicle'], [box(0.6)], [0.9])], gts)) == pytest.approx(1.0)
    # A 1 m pedestrian shifted by 0.25 m: IoU 0.6 >= 0.5 matches; by 0.4 m: IoU 0.43 does not.
    gts = [gt_frame(['Pedestrian'], [box(0, name='Pedestrian')])]
    pred = [pred_frame(['Pedestrian'], [box(0.25, name='Pedestrian')], [0.9])]
    assert ap(metrics_of(pred, gts), 'Pedestrian') == pytest.approx(1.0)
    pred = [pred_frame(['Pedestrian'], [box(0.4, name='Pedestrian')], [0.9])]
    assert ap(metrics_of(pred, gts), 'Pedestrian') == 0.0
    # The wrong class never matches.
    pred = [pred_frame(['Cyclist'], [box(0, name='Pedestrian')], [0.9])]
    metrics = metrics_of(pred, gts)
    assert ap(metrics, 'Pedestrian') == 0.0 and ap(metrics, 'Cyclist') == 0.0


def test_heading_flipped_by_pi_keeps_ap_and_zeroes_aph():
    gts = [gt_frame(['Vehicle', 'Vehicle'], [box(0, 0, 0.4), box(0, 10, -3.0)])]
    preds = [pred_frame(['Vehicle', 'Vehicle'], [box(0, 0, 0.4 + math.pi), box(0, 10, -3.0 - math.pi)], [0.9, 0.8])]
    metrics = metrics_of(preds, gts)
    for level in (1, 2):
        assert ap(metrics, level=level) == pytest.approx(1.0)
        assert ap(metrics, level=level, metric='APH') == pytest.approx(0.0, abs=1e-6)


def test_square_box_turned_by_quarter_turn_has_half_heading_accuracy():
    # Same footprint (IoU 1), heading error pi/2 -> ha = 0.5 -> precision_ha 0.5 at every recall -> APH 0.5.
    gts = [gt_frame(['Pedestrian'], [box(0, name='Pedestrian')])]
    preds = [pred_frame(['Pedestrian'], [box(0, heading=math.pi / 2, name='Pedestrian')], [0.7])]
    metrics = metrics_of(preds, gts)
    assert ap(metrics, 'Pedestrian') == pytest.approx(1.0)
    assert ap(metrics, 'Pedestrian', 1, 'APH') == pytest.approx(0.5, abs=1e-6)
    assert waymo_eval.heading_accuracy(0.1, 0.1 + 2 * math.pi) == pytest.approx(1.0)
    assert waymo_eval.heading_accuracy(-3.0, 3.0) == pytest.approx(1 - (2 * math.pi - 6.0) / math.pi)


def test_missed_objects_limit_recall_and_pr_curve_is_integrated_by_hand():
    # 4 GT; predictions: TP (0.9), FP (0.8), TP (0.7). Operating points per cutoff:
    #   c <= 0.7: P 2/3, R 0.5;  0.7 < c <= 0.8: P 0.5, R 0.25;  0.8 < c <= 0.9: P 1, R 0.25;  c > 0.9: R 0.
    # Curve: (0.5, 2/3), inserted 0.45..0.30 at 2/3, (0.25, 1), inserted 0.20..0.05 at 1, (0, 1).
    # Area: 0.2 * 2/3 + 0.05 * (2/3 + 1) / 2 + 0.25 * 1 = 0.425.
    gts = [gt_frame(['Vehicle'] * 4, [box(0), box(10), box(20), box(30)])]
    preds = [pred_frame(['Vehicle'] * 3, [box(0), box(50), box(10)], [0.9, 0.8, 0.7])]
    metrics = metrics_of(preds, gts)
    assert ap(metrics) == pytest.approx(0.425, abs=1e-9)
    assert ap(metrics, metric='APH') == pytest.approx(0.425, abs=1e-9)
    # Two perfect detections out of four GT: recall 0.5 at precision 1 -> AP 0.5.
    preds = [pred_frame(['Vehicle'] * 2, [box(0), box(10)], [0.9, 0.6])]
    assert ap(metrics_of(preds, gts)) == pytest.approx(0.5, abs=1e-9)


def test_duplicate_detections_are_false_positives():
    # GT A, B; A detected twice (0.9, 0.8), B once (0.7).
    #   c <= 0.7: TP 2 FP 1 (P 2/3, R 1); 0.7 < c <= 0.8: TP 1 FP 1 (P 0.5, R 0.5); 0.8 < c <= 0.9: P 1, R 0.5.
    # Curve: (1, 2/3), inserted 0.95..0.55 at 2/3, (0.5, 1), ... -> 0.45 * 2/3 + 0.05 * 5/6 + 0.5 = 0.841667.
    gts = [gt_frame(['Vehicle'] * 2, [box(0), box(10)])]
    preds = [pred_frame(['Vehicle'] * 3, [box(0), box(0.05), box(10)], [0.9, 0.8, 0.7])]
    measurements = waymo_detection_measurements(preds, gts, ['Vehicle'])['Vehicle'][2]
    assert measurements['tp'][0] == 2 and measurements['fp'][0] == 1 and measurements['fn'][0] == 0
    assert ap(metrics_of(preds, gts)) == pytest.approx(0.3 + 0.05 * 5 / 6 + 0.5, abs=1e-9)


def test_recall_gap_that_is_an_exact_multiple_of_the_step_gets_no_extra_point():
    # 5 GT; predictions TP 0.9, TP 0.8, TP 0.7, FP 0.6, TP 0.5. Operating points per cutoff:
    #   c <= 0.5: P 4/5, R 4/5;  0.5 < c <= 0.6: P 3/4, R 3/5;  0.6 < c <= 0.7: P 1, R 3/5;  then P 1 at R 2/5, 1/5.
    # Map: 0.8 -> 0.8, 0.6 -> 1, 0.4 -> 1, 0.2 -> 1, 0 -> 1. The gap 0.8 -> 0.6 is exactly 4 steps of 0.05: the
    # official loop inserts 0.75, 0.70, 0.65 at 0.8 and stops (0.65 - 0.6 = 0.05 is not > 0.05 + 1e-6).
    # Area: 0.15 * 0.8 + 0.05 * (0.8 + 1) / 2 + 0.6 * 1 = 0.12 + 0.045 + 0.6 = 0.765.
    # (In float64, 0.8 - 4 * 0.05 > 0.6; a rule without the tolerance adds a point there and gets 0.76.)
    gts = [gt_frame(['Vehicle'] * 5, [box(0), box(10), box(20), box(30), box(40)])]
    preds = [pred_frame(['Vehicle'] * 5, [box(0), box(10), box(20), box(60), box(30)], [0.9, 0.8, 0.7, 0.6, 0.5])]
    metrics = metrics_of(preds, gts)
    for level in (1, 2):
        assert ap(metrics, level=level) == pytest.approx(0.765, abs=1e-9)
        assert ap(metrics, level=level, metric='APH') == pytest.approx(0.765, abs=1e-9)


def test_average_precision_recall_tolerance_is_the_official_1e_minus_6():
    # Map 0.4 -> 0.5, 0.3 -> 1, 0 -> 1. Gap 0.1 = 2 steps: one point at 0.35 (precision 0.5), none at 0.3.
    # Area: 0.05 * 0.5 + 0.05 * (0.5 + 1) / 2 + 0.3 * 1 = 0.025 + 0.0375 + 0.3 = 0.3625 (0.35 with a point at 0.3).
    assert average_precision([0.5, 1.0], [0.4, 0.3]) == pytest.approx(0.3625, abs=1e-12)
    # Gap 0.1 + 5e-7 (within kError = 1e-6 of 2 steps): still one point, at 0.4000005 - 0.05.
    # Area: 0.05 * 0.5 + 0.0500005 * 0.75 + 0.3 = 0.362500375.
    assert average_precision([0.5, 1.0], [0.4 + 5e-7, 0.3]) == pytest.approx(0.362500375, abs=1e-12)
    # Gap 0.1 + 2e-6 (beyond the tolerance): two points, 0.400002 - 0.05 and 0.400002 - 0.1 = 0.300002, both 0.5.
    # Area: 0.1 * 0.5 + 2e-6 * 0.75 + 0.3 = 0.3500015.
    assert average_precision([0.5, 1.0], [0.4 + 2e-6, 0.3]) == pytest.approx(0.3500015, abs=1e-12)
    # Gaps on the grid through 0: 1.0 -> 0.5 is 10 steps, 0.5 -> 0 too. Map 1 -> 0.5, 0.5 -> 1.
    # Points 0.95 .. 0.55 at 0.5, then (0.5, 1), 0.45 .. 0.05 at 1, (0, 1).
    # Area: 0.45 * 0.5 + 0.05 * 0.75 + 0.5 * 1 = 0.225 + 0.0375 + 0.5 = 0.7625.
    assert average_precision([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.7625, abs=1e-12)


def test_matching_maximises_total_iou_not_score_or_greedy_iou():
    # One GT; A (score 0.9) IoU 0.74 with the right heading, B (score 0.8) IoU 1 with a flipped heading.
    # At cutoffs <= 0.8 the Hungarian matcher takes B (higher IoU): TP 1, FP 1, heading accuracy 0.
    gts = [gt_frame(['Vehicle'], [box(0)])]
    preds = [pred_frame(['Vehicle'] * 2, [box(0.6), box(0, heading=math.pi)], [0.9, 0.8])]
    curves = waymo_detection_measurements(preds, gts, ['Vehicle'])['Vehicle'][1]
    assert curves['tp'][50] == 1 and curves['fp'][50] == 1 and curves['ha_sum'][50] == pytest.approx(0, abs=1e-6)
    assert curves['tp'][85] == 1 and curves['fp'][85] == 0 and curves['ha_sum'][85] == pytest.approx(1)
    # Pedestrians (1 m, IoU = (1 - d) / (1 + d)): GT1 at 0, GT2 at 0.3; A at 0.05 (0.905 with GT1, 0.6 with GT2),
    # B at -0.15 (0.739 with GT1, 0.379 with GT2). Greedy-by-IoU would match only A-GT1; the maximum total IoU
    # assignment is A-GT2 + B-GT1 (1.339): two TPs -> AP 1.
    gts = [gt_frame(['Pedestrian'] * 2, [box(0, name='Pedestrian'), box(0.3, name='Pedestrian')])]
    preds = [pred_frame(['Pedestrian'] * 2, [box(0.05, name='Pedestrian'), box(-0.15, name='Pedestrian')],
                        [0.9, 0.9])]
    assert ap(metrics_of(preds, gts), 'Pedestrian') == pytest.approx(1.0)


def test_level_2_objects():
    # A is LEVEL_1, B is LEVEL_2. LEVEL_2 counts both as GT; LEVEL_1 counts only A as a possible FN, while a
    # prediction matched to B is still a TP there (spec §2.2).
    gts = [gt_frame(['Vehicle', 'Vehicle'], [box(0), box(10)], difficulty=[1, 2])]
    only_a = metrics_of([pred_frame(['Vehicle'], [box(0)], [0.9])], gts)
    assert ap(only_a, level=1) == pytest.approx(1.0) and ap(only_a, level=2) == pytest.approx(0.5)
    only_b = metrics_of([pred_frame(['Vehicle'], [box(10)], [0.9])], gts)
    # LEVEL_1: TP 1 (matched to B), FN 1 (A) -> recall 0.5; LEVEL_2: the same counts.
    assert ap(only_b, level=1) == pytest.approx(0.5) and ap(only_b, level=2) == pytest.approx(0.5)
    both = metrics_of([pred_frame(['Vehicle'] * 2, [box(0), box(10)], [0.9, 0.8])], gts)
    assert ap(both, level=1) == pytest.approx(1.0) and ap(both, level=2) == pytest.approx(1.0)
    # Only a LEVEL_2 object: detecting it is a TP at LEVEL_1 with nothing to miss (recall 1); missing it leaves
    # LEVEL_1 without any TP or FN (recall 0, AP 0) and LEVEL_2 with an FN.
    gts = [gt_frame(['Vehicle'], [box(0)], difficulty=[2])]
    found = metrics_of([pred_frame(['Vehicle'], [box(0)], [0.9])], gts)
    assert ap(found, level=1) == pytest.approx(1.0) and ap(found, level=2) == pytest.approx(1.0)
    curves = waymo_detection_measurements([pred_frame([], [], [])], gts, ['Vehicle'])['Vehicle']
    assert curves[1]['fn'][0] == 0 and curves[2]['fn'][0] == 1 and curves[1]['num_gt'] == 0


def test_difficulty_zero_is_remapped_by_point_count_and_empty_gt_is_dropped():
    # Difficulty 0: > 5 points -> LEVEL_1, <= 5 points -> LEVEL_2; 0 points -> not a GT at all.
    gts = [gt_frame(['Vehicle'] * 4, [box(0), box(10), box(20), box(30)], difficulty=[0, 0, 0, 1],
                    num_points=[6, 5, 0, 0])]
    curves = waymo_detection_measurements([pred_frame([], [], [])], gts, ['Vehicle'])['Vehicle']
    assert curves[1]['num_gt'] == 1 and curves[2]['num_gt'] == 2
    # A prediction on the dropped box is an FP: one TP (on the LEVEL_1 box) and one FP at every cutoff.
    preds = [pred_frame(['Vehicle'] * 2, [box(0), box(20)], [0.5, 0.9])]
    curves = waymo_detection_measurements(preds, gts, ['Vehicle'])['Vehicle']
    assert curves[1]['tp'][0] == 1 and curves[1]['fp'][0] == 1 and curves[1]['fn'][0] == 0
    assert curves[2]['fn'][0] == 1
    gts_copy = gt_frame(['Vehicle'] * 4, [box(0), box(10), box(20), box(30)], difficulty=[0, 0, 0, 1],
                        num_points=[6, 5, 0, 0])
    waymo_detection_metrics(preds, gts, ['Vehicle'])
    np.testing.assert_array_equal(gts[0]['difficulty'], gts_copy['difficulty'])  # inputs are not modified


def test_empty_frames_and_frames_without_gt():
    gts = [gt_frame(['Vehicle'], [box(0)])]
    preds = [pred_frame(['Vehicle'], [box(0)], [0.9])]
    base = metrics_of(preds, gts)
    empty_gt, empty_pred = gt_frame([], []), pred_frame([], [], [])
    padded = metrics_of([empty_pred, preds[0], empty_pred], [empty_gt, gts[0], empty_gt])
    assert padded == base
    # A prediction in a frame without GT is an FP: P 0.5 at R 1 for cutoffs <= 0.4, P 1 above -> AP 1 ...
    extra_fp = metrics_of([pred_frame(['Vehicle'], [box(0)], [0.4])] + preds, [empty_gt] + gts)
    assert ap(extra_fp) == pytest.approx(1.0)
    # ... but with the FP scored higher the curve has (R 1, P 0.5) only -> AP 0.5.
    extra_fp = metrics_of([pred_frame(['Vehicle'], [box(0)], [0.95])] + preds, [empty_gt] + gts)
    assert ap(extra_fp) == pytest.approx(0.5)


def test_no_predictions_no_gt_and_no_frames():
    gts = [gt_frame(['Vehicle', 'Pedestrian'], [box(0), box(5, name='Pedestrian')])]
    assert all(v == 0.0 for v in metrics_of([pred_frame([], [], [])], gts).values())
    preds = [pred_frame(['Vehicle'], [box(0)], [0.9])]
    assert all(v == 0.0 for v in metrics_of(preds, [gt_frame([], [])]).values())
    assert all(v == 0.0 for v in metrics_of([], []).values())
    # Missing box arrays and 1-D empty arrays are accepted.
    assert metrics_of([{'name': np.array([]), 'score': np.array([]), 'boxes_lidar': np.zeros(0)}],
                      [gt_frame([], [])])[metric_key('Vehicle', 1)] == 0.0


def test_score_cutoffs_are_inclusive_float32():
    gts = [gt_frame(['Vehicle', 'Vehicle'], [box(0), box(10)])]
    preds = [pred_frame(['Vehicle', 'Vehicle'], [box(0), box(10)], [0.5, 1.0])]
    curves = waymo_detection_measurements(preds, gts, ['Vehicle'])['Vehicle'][1]
    assert len(SCORE_CUTOFFS) == 101 and SCORE_CUTOFFS[50] == np.float32(0.5)
    assert curves['tp'][50] == 2 and curves['tp'][51] == 1 and curves['tp'][100] == 1
    assert curves['recall'][100] == 0.5 and curves['precision'][100] == 1.0


def test_scores_above_one_go_through_a_sigmoid(caplog):
    gts = [gt_frame(['Vehicle', 'Vehicle'], [box(0), box(10)])]
    preds = [pred_frame(['Vehicle', 'Vehicle'], [box(0), box(50)], [3.0, 0.0])]  # sigmoid: 0.953, 0.5
    with caplog.at_level(logging.WARNING):
        curves = waymo_detection_measurements(preds, gts, ['Vehicle'])['Vehicle'][1]
    assert 'sigmoid' in caplog.text
    assert curves['fp'][50] == 1 and curves['fp'][51] == 0 and curves['tp'][95] == 1 and curves['tp'][96] == 0


def test_boxes_per_frame_cap_keeps_top_scores_and_warns(caplog):
    gts = [gt_frame(['Vehicle'] * 3, [box(0), box(10), box(20)])]
    preds = [pred_frame(['Vehicle'] * 3, [box(0), box(10), box(20)], [0.2, 0.9, 0.5])]
    with caplog.at_level(logging.WARNING):
        curves = waymo_detection_measurements(preds, gts, ['Vehicle'], max_boxes_per_frame=2)['Vehicle'][1]
    assert 'kept the top 2' in caplog.text
    assert curves['tp'][0] == 2 and curves['tp'][30] == 2 and curves['fn'][0] == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        waymo_detection_measurements(preds, gts, ['Vehicle'], max_boxes_per_frame=None)
    assert caplog.text == ''


def test_distance_thresh_drops_far_boxes():
    gts = [gt_frame(['Vehicle', 'Vehicle'], [box(0), box(60)])]
    preds = [pred_frame(['Vehicle', 'Vehicle'], [box(0), box(60)], [0.9, 0.8])]
    curves = waymo_detection_measurements(preds, gts, ['Vehicle'], distance_thresh=50)['Vehicle'][2]
    assert curves['num_gt'] == 1 and curves['tp'][0] == 1 and curves['fp'][0] == 0
    assert ap(metrics_of(preds, gts, distance_thresh=59.4)) == 1.0  # 60 >= 59.4 + 0.5: that pair is dropped
    curves = waymo_detection_measurements(preds, gts, ['Vehicle'], distance_thresh=59.4)['Vehicle'][2]
    assert curves['num_gt'] == 1
    curves = waymo_detection_measurements(preds, gts, ['Vehicle'], distance_thresh=59.6)['Vehicle'][2]
    assert curves['num_gt'] == 2


def test_average_precision_edge_cases():
    assert average_precision([], []) == 0.0
    assert average_precision([1.0, 0.3], [0.0, 0.0]) == 0.0
    assert average_precision([1.0], [0.5]) == pytest.approx(0.5)
    # Precision 0.5 at recall 0.5 and nothing else: the (0 -> 1) point is overridden by its neighbour.
    assert average_precision([0.5], [0.5]) == pytest.approx(0.25)
    # Adjacent recalls closer than 0.05 are joined by a straight line (trapezoid), not a step.
    assert average_precision([0.0, 1.0], [1.0, 0.98]) == pytest.approx(0.98 + 0.02 * 0.5)


def test_invalid_inputs_raise():
    gts = [gt_frame(['Vehicle'], [box(0)])]
    with pytest.raises(ValueError, match='aligned'):
        metrics_of([], gts)
    with pytest.raises(ValueError, match='unknown Waymo class'):
        metrics_of([pred_frame([], [], [])], gts, ['Car'])
    bad = dict(gts[0])
    bad.pop('num_points_in_gt')
    with pytest.raises(ValueError, match='num_points_in_gt'):
        metrics_of([pred_frame([], [], [])], [bad])
    with pytest.raises(ValueError, match='difficulty'):
        metrics_of([pred_frame([], [], [])], [gt_frame(['Vehicle'], [box(0)], difficulty=[3])])
    with pytest.raises(ValueError, match='frame_id'):
        metrics_of([dict(pred_frame([], [], []), frame_id='a')], [dict(gts[0], frame_id='b')])


def test_cli_subsamples_gt_infos(tmp_path, capsys):
    infos = []
    for i in range(10):
        infos.append({'frame_id': f'seg_{i:03d}', 'annos': gt_frame(['Vehicle', 'Pedestrian'],
                                                                     [box(i), box(i, 5, name='Pedestrian')])})
    preds = [dict(pred_frame(['Vehicle'], [box(i)], [0.8]), frame_id=f'seg_{i:03d}') for i in range(0, 10, 5)]
    (tmp_path / 'gt.pkl').write_bytes(pickle.dumps(infos))
    (tmp_path / 'result.pkl').write_bytes(pickle.dumps(preds))
    args = ['--pred_infos', str(tmp_path / 'result.pkl'), '--gt_infos', str(tmp_path / 'gt.pkl')]
    metrics = main(args + ['--class_names', 'Vehicle', 'Pedestrian', '--sampled_interval', '5'])
    out = capsys.readouterr().out
    assert 'OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP: 1.0000' in out and 'OVERALL_LEVEL_1/AP: 0.5000' in out
    assert metrics == main(args + ['--class_names', 'Vehicle', 'Pedestrian'])  # interval inferred: 5
    with pytest.raises(ValueError, match='aligned'):
        main(args + ['--sampled_interval', '2'])
    assert select_gt_frames(infos, [{}] * 10)[1] == 1
    with pytest.raises(ValueError, match='cannot infer'):
        select_gt_frames(infos, [{}] * 7)
    with pytest.raises(ValueError, match='cannot infer'):  # 10 frames -> 2 for k = 5..9 without frame ids
        select_gt_frames(infos, [{}] * 2)


def test_import_needs_no_tensorflow():
    code = ('import sys, pcdet.datasets.waymo.waymo_eval as m; '
            'assert "tensorflow" not in sys.modules and "waymo_open_dataset" not in sys.modules')
    subprocess.run([sys.executable, '-c', code], check=True)


# ------------------------------------------------------------------------------------------- brute-force reference

def exhaustive_best_matching(iou, threshold):
    """All one-to-one assignments (itertools); returns the list of (pred, gt) pairs of maximum total IoU."""
    num_pred, num_gt = iou.shape
    best_total, best_pairs = -1.0, []
    for size in range(min(num_pred, num_gt) + 1):
        for pred_subset in itertools.combinations(range(num_pred), size):
            for gt_perm in itertools.permutations(range(num_gt), size):
                pairs = list(zip(pred_subset, gt_perm))
                if any(iou[p, g] < threshold for p, g in pairs):
                    continue
                total = sum(float(iou[p, g]) for p, g in pairs)
                if total > best_total:
                    best_total, best_pairs = total, pairs
    return best_pairs


def reference_measurements(pred_annos, gt_annos, class_names):
    """{class: {level: (tp, fp, fn, ha_sum) lists over the 101 cutoffs}}, by plain loops."""
    thresholds = {'Vehicle': 0.7, 'Pedestrian': 0.5, 'Cyclist': 0.5, 'Sign': 0.5}
    cutoffs = [i * 0.01 for i in range(100)] + [1.0]
    out = {}
    for name in class_names:
        frames = []
        for pred, gt in zip(pred_annos, gt_annos):
            gt_boxes, gt_levels = [], []
            for i in range(len(gt['name'])):
                if gt['name'][i] != name or gt['num_points_in_gt'][i] <= 0:
                    continue
                difficulty = int(gt['difficulty'][i])
                if difficulty == 0:
                    difficulty = 1 if gt['num_points_in_gt'][i] > 5 else 2
                gt_boxes.append(gt['gt_boxes_lidar'][i][:7])
                gt_levels.append(difficulty)
            pred_idx = [i for i in range(len(pred['name'])) if pred['name'][i] == name]
            pred_boxes = [pred['boxes_lidar'][i][:7] for i in pred_idx]
            scores = [float(pred['score'][i]) for i in pred_idx]
            if pred_boxes and gt_boxes:
                iou = boxes_iou3d_gpu(torch.tensor(np.array(pred_boxes), dtype=torch.float64),
                                      torch.tensor(np.array(gt_boxes), dtype=torch.float64)).numpy()
            else:
                iou = np.zeros((len(pred_boxes), len(gt_boxes)), np.float32)
            frames.append((pred_boxes, scores, gt_boxes, gt_levels, iou))
        per_level = {1: [], 2: []}
        for cutoff in cutoffs:
            counts = {1: [0, 0, 0, 0.0], 2: [0, 0, 0, 0.0]}
            for pred_boxes, scores, gt_boxes, gt_levels, iou in frames:
                active = [i for i, s in enumerate(scores) if np.float32(s) >= np.float32(cutoff)]
                pairs = exhaustive_best_matching(iou[active][:, :], thresholds[name]) if active else []
                pairs = [(active[p], g) for p, g in pairs]
                matched_gt = {g for _, g in pairs}
                for level in (1, 2):
                    counts[level][0] += len(pairs)
                    counts[level][1] += len(active) - len(pairs)
                    counts[level][2] += sum(1 for g, lv in enumerate(gt_levels) if lv <= level and g not in matched_gt)
                    for p, g in pairs:
                        diff = abs(pred_boxes[p][6] - gt_boxes[g][6]) % (2 * math.pi)
                        diff = min(diff, 2 * math.pi - diff)
                        counts[level][3] += 1 - diff / math.pi
            for level in (1, 2):
                per_level[level].append(tuple(counts[level]))
        out[name] = per_level
    return out


RECALL_STEP = Fraction(1, 20)  # desired_recall_delta of OpenPCDet's config
RECALL_K_ERROR = Fraction(1, 10 ** 6)  # kError in ComputeMeanAveragePrecision


def reference_ap(points):
    """Official AP (metrics_utils.cc, ComputeMeanAveragePrecision) of (precision, recall) points, exact arithmetic.

    * table[r] = max precision at recall r; table[0] = 1 (precisions are <= 1).
    * Walking the recalls from high to low, between neighbours r_hi > r_lo with gap g the official loop
      `while (last - r_lo > delta + kError) { last -= delta; emit(last, running max) }` emits the k-th point iff
      g - (k - 1) * delta > delta + kError, i.e. iff k < (g - kError) / delta: n = ceil((g - kError) / delta) - 1
      points (none if negative) at r_hi - k * delta, all with the max precision over recalls >= r_hi.
    * The recall-0 point takes its neighbour's precision; trapezoid rule.
    """
    table = {Fraction(0): Fraction(1)}
    for precision, recall in points:
        precision, recall = Fraction(precision), Fraction(recall)
        table[recall] = max(table.get(recall, precision), precision)
    recalls = sorted(table, reverse=True)
    if len(recalls) == 1:
        return 0.0
    xs, ys = [recalls[0]], [table[recalls[0]]]
    for r_hi, r_lo in zip(recalls[:-1], recalls[1:]):
        carried = max(table[r] for r in recalls if r >= r_hi)
        count = max(0, math.ceil((r_hi - r_lo - RECALL_K_ERROR) / RECALL_STEP) - 1)
        xs += [r_hi - k * RECALL_STEP for k in range(1, count + 1)]
        ys += [carried] * count
        xs.append(r_lo)
        ys.append(max(table[r] for r in recalls if r >= r_lo))
    ys[-1] = ys[-2]
    return float(sum((xs[i] - xs[i + 1]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1)))


def reference_metrics(pred_annos, gt_annos, class_names):
    measurements = reference_measurements(pred_annos, gt_annos, class_names)
    metrics = {}
    for name, per_level in measurements.items():
        for level, rows in per_level.items():
            pr, pr_ha = [], []
            for tp, fp, fn, ha in rows:  # exact fractions: the reference AP has no round-off
                recall = Fraction(tp, tp + fn) if tp + fn else Fraction(0)
                precision = Fraction(tp, tp + fp) if recall else Fraction(1)
                precision_ha = Fraction(ha) / (tp + fp) if recall else Fraction(1)
                pr.append((precision, recall))
                pr_ha.append((precision_ha, recall))
            metrics[metric_key(name, level, 'AP')] = reference_ap(pr)
            metrics[metric_key(name, level, 'APH')] = reference_ap(pr_ha)
    return measurements, metrics


def random_scene(rng):
    """A few frames of clustered GT (so that predictions can overlap several GT) and jittered predictions."""
    gts, preds = [], []
    for _ in range(int(rng.integers(1, 4))):
        g_names, g_boxes, g_diff, g_pts = [], [], [], []
        p_names, p_boxes, p_scores = [], [], []
        for name in CLASSES:
            centre = rng.uniform(-30, 30, size=2)
            for _ in range(int(rng.integers(0, 4))):
                dims = np.array(SIZE[name]) * rng.uniform(0.8, 1.2, 3)
                xy = centre + rng.normal(0, 0.4 * dims[0], 2)
                heading = rng.uniform(-math.pi, math.pi)
                first = [*xy, rng.normal(0, 0.1), *dims, heading]
                twins = [first]
                if rng.random() < 0.4:  # a near twin along the heading: predictions then have 2 valid partners
                    shift = rng.uniform(0.1, 0.45) * dims[0]
                    twins.append([first[0] + shift * math.cos(heading), first[1] + shift * math.sin(heading),
                                  *first[2:]])
                for g in twins:
                    g_names.append(name)
                    g_boxes.append(g)
                    g_diff.append(int(rng.choice([0, 1, 2])))
                    g_pts.append(int(rng.choice([0, 1, 3, 5, 6, 20])))
                for g in [twins[int(rng.integers(len(twins)))] for _ in range(int(rng.choice([0, 1, 1, 1, 2])))]:
                    jitter = np.concatenate([rng.normal(0, 0.12 * dims[0], 2), rng.normal(0, 0.1, 1),
                                             dims * rng.normal(0, 0.06, 3), rng.normal(0, 0.2, 1)])
                    p = np.array(g) + jitter
                    if rng.random() < 0.15:
                        p[6] += math.pi
                    p_names.append(name if rng.random() < 0.9 else str(rng.choice(CLASSES)))
                    p_boxes.append(p)
            for _ in range(int(rng.integers(0, 2))):  # background FP
                dims = np.array(SIZE[name])
                p_names.append(name)
                p_boxes.append([*(centre + rng.uniform(-5, 5, 2)), 0, *dims, rng.uniform(-3, 3)])
        if len(p_names) and rng.random() < 0.1:  # a frame whose GT is missing
            g_names, g_boxes, g_diff, g_pts = [], [], [], []
        p_scores = rng.random(len(p_names))
        p_scores = np.where(rng.random(len(p_names)) < 0.3, np.round(p_scores, 2), p_scores)  # on the cutoffs
        gts.append(gt_frame(g_names, g_boxes, g_diff, g_pts))
        preds.append(pred_frame(p_names, p_boxes, p_scores))
    return preds, gts


def test_average_precision_agrees_with_reference_on_random_curves():
    # Operating points of up to 20 GT: recalls k / n land on the 0.05 grid often (n in 1, 2, 4, 5, 10, 20 ...).
    rng = np.random.default_rng(7)
    on_grid = 0
    for _ in range(300):
        num_gt = int(rng.integers(1, 21))
        tp = np.sort(rng.integers(0, num_gt + 1, size=int(rng.integers(1, 12))))
        fp = np.sort(rng.integers(0, 6, size=len(tp)))
        points = [(Fraction(int(t), int(t + f)) if t else Fraction(1), Fraction(int(t), num_gt))
                  for t, f in zip(tp, fp)]
        expected = reference_ap(points)
        got = average_precision([float(p) for p, _ in points], [float(r) for _, r in points])
        assert got == pytest.approx(expected, abs=1e-9), points
        recalls = sorted({r for _, r in points})
        on_grid += any((hi - lo) % RECALL_STEP == 0 for lo, hi in zip(recalls[:-1], recalls[1:]))
    assert on_grid >= 50  # many curves have neighbouring recalls an exact multiple of the step apart


def test_agrees_with_brute_force_reference_on_random_scenes():
    rng = np.random.default_rng(2024)
    nontrivial = 0
    for _ in range(40):
        preds, gts = random_scene(rng)
        ref_measurements, ref_metrics = reference_metrics(preds, gts, CLASSES)
        ours = waymo_detection_measurements(preds, gts, CLASSES)
        for name in CLASSES:
            for level in (1, 2):
                tp, fp, fn, ha = (np.array(col) for col in zip(*ref_measurements[name][level]))
                np.testing.assert_array_equal(ours[name][level]['tp'], tp, err_msg=f'{name} L{level}')
                np.testing.assert_array_equal(ours[name][level]['fp'], fp, err_msg=f'{name} L{level}')
                np.testing.assert_array_equal(ours[name][level]['fn'], fn, err_msg=f'{name} L{level}')
                np.testing.assert_allclose(ours[name][level]['ha_sum'], ha, atol=1e-6)
        metrics = waymo_detection_metrics(preds, gts, CLASSES)
        for key, value in ref_metrics.items():
            assert metrics[key] == pytest.approx(value, abs=1e-9), key
        # Count scenes where some prediction has two valid GT partners (a matching that is not trivial).
        for pred, gt in zip(preds, gts):
            for name in CLASSES:
                p, g = pred['boxes_lidar'][pred['name'] == name], gt['gt_boxes_lidar'][gt['name'] == name]
                if len(p) and len(g):
                    valid = boxes_iou3d_gpu(torch.tensor(p), torch.tensor(g)).numpy() >= 0.5
                    nontrivial += int((valid.sum(1) > 1).any() or (valid.sum(0) > 1).any())
    assert nontrivial >= 5  # the random scenes do exercise multi-candidate matching


# ------------------------------------------------------------------------------------------- official cross-check

def load_crosscheck_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / 'tools/scripts/waymo_official_crosscheck.py'
    spec = importlib.util.spec_from_file_location('waymo_official_crosscheck', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crosscheck_feed_matches_the_evaluator_semantics():
    """The official op's inputs, turned back into annos, give our evaluator the same metrics: the script's
    conversion (OpenPCDet's) filters, remaps and wraps exactly like the evaluator."""
    script = load_crosscheck_script()
    preds, infos = script.make_synthetic(25, seed=3)
    preds[0]['score'] = preds[0]['score'] * 0  # a zero score, and a frame with a far box
    infos[1]['annos']['gt_boxes_lidar'][:1, :2] = 45.0
    gt_annos = [info['annos'] for info in infos]
    feed = script.official_inputs(preds, gt_annos, CLASSES, distance_thresh=60)
    assert feed['prediction_bbox'].dtype == np.float32 and feed['ground_truth_difficulty'].dtype == np.uint8
    assert set(np.unique(feed['ground_truth_difficulty'])) <= {1, 2}
    assert np.all(np.abs(feed['ground_truth_bbox'][:, 6]) <= math.pi + 1e-6)
    rebuilt_preds, rebuilt_gts = [], []
    for frame in range(len(preds)):
        p = feed['prediction_frame_id'] == frame
        g = feed['ground_truth_frame_id'] == frame
        rebuilt_preds.append({'name': np.array([script.WAYMO_CLASSES[t] for t in feed['prediction_type'][p]]),
                              'score': feed['prediction_score'][p], 'boxes_lidar': feed['prediction_bbox'][p]})
        rebuilt_gts.append({'name': np.array([script.WAYMO_CLASSES[t] for t in feed['ground_truth_type'][g]]),
                            'gt_boxes_lidar': feed['ground_truth_bbox'][g],
                            'difficulty': feed['ground_truth_difficulty'][g].astype(np.int64),
                            'num_points_in_gt': np.full(int(g.sum()), 100)})
    direct = waymo_detection_metrics(preds, gt_annos, CLASSES, distance_thresh=60)
    rebuilt = waymo_detection_metrics(rebuilt_preds, rebuilt_gts, CLASSES, distance_thresh=60)
    assert any(v > 0.1 for v in direct.values())
    for key in direct:
        assert rebuilt[key] == pytest.approx(direct[key], abs=1e-6), key
    text = script.official_config_text()
    assert 'matcher_type: TYPE_HUNGARIAN' in text and text.count('score_cutoffs') == 101
    assert 'iou_thresholds: 0.7' in text and text.count('iou_thresholds') == 5


def test_crosscheck_without_tensorflow_names_the_extra(tmp_path):
    from pcdet.utils.optional import MissingOptionalDependency
    script = load_crosscheck_script()
    import importlib.util
    if importlib.util.find_spec('tensorflow') is not None:
        pytest.skip('TensorFlow is installed here')
    with pytest.raises(MissingOptionalDependency, match=r"\[waymo\]"):
        script.main(['--synthetic_frames', '3', '--save_synthetic', str(tmp_path)])
    assert (tmp_path / 'result.pkl').exists() and (tmp_path / 'infos.pkl').exists()
