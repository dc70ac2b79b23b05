"""The OpenOccupancy metric: confusion matrix against Python loops, SC / SSC from hand-worked cases, the evaluator's
dataset-level sum, its files and its errors."""
import itertools
import math
import pickle

import numpy as np
import pytest
import torch

from pcdet.evaluation import occupancy_metric
from pcdet.evaluation.occupancy import OccupancyEvaluator
from pcdet.evaluation.occupancy_metric import cm_to_ious, occupancy_confusion, occupancy_metrics

NAMES = ['barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian', 'traffic_cone',
         'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain', 'manmade', 'vegetation']


def brute_force_cm(gt, pred):
    cm = [[0] * 17 for _ in range(17)]
    for g, p in zip(np.asarray(gt).reshape(-1).tolist(), np.asarray(pred).reshape(-1).tolist()):
        if g != 255:
            cm[int(g)][int(p)] += 1
    return np.array(cm)


def random_volumes(rng, shape, classes, occupied=0.3, noise=0.05):
    gt = np.where(rng.random(shape) < occupied, rng.choice(classes, shape), 0).astype(np.uint8)
    gt[rng.random(shape) < noise] = 255
    pred = np.where(rng.random(shape) < occupied, rng.choice(classes, shape), 0).astype(np.uint8)
    keep = rng.random(shape) < 0.5
    pred[keep] = np.where(gt[keep] == 255, 0, gt[keep])  # half the voxels right, so the diagonal is filled
    return gt, pred


@pytest.mark.parametrize('shape', [(6, 5, 4), (3, 3, 3), (8, 8, 8), (1, 1, 5)])
def test_confusion_matrix_equals_python_loops(shape):
    rng = np.random.default_rng(sum(shape))
    classes = [1, 2, 5, 9, 16]  # the others are absent
    gt, pred = random_volumes(rng, shape, classes)
    expected = brute_force_cm(gt, pred)
    np.testing.assert_array_equal(occupancy_confusion(gt, pred), expected)
    # every input form the evaluator meets, and the numpy fallback / torch path directly
    np.testing.assert_array_equal(occupancy_confusion(torch.from_numpy(gt).float(), torch.from_numpy(pred)), expected)
    np.testing.assert_array_equal(occupancy_confusion(gt.astype(np.int64), pred.astype(np.int32)), expected)
    table = occupancy_metric._pair_table_reference(gt.reshape(-1), pred.reshape(-1))
    np.testing.assert_array_equal(table[:17, :17], expected)
    table = occupancy_metric._pair_table_torch(torch.from_numpy(gt), torch.from_numpy(pred).float())
    np.testing.assert_array_equal(table[:17, :17], expected)


def test_free_runs_are_counted_by_the_word_skip():
    """Long all-free stretches (skipped 8 voxels at a time) next to occupied voxels, size not a multiple of 8."""
    gt = np.zeros((7, 9, 13), np.uint8)
    pred = np.zeros_like(gt)
    gt[0, 0, :3], pred[0, 0, 1:4] = [4, 255, 7], [4, 4, 4]
    gt[-1, -1, -1], pred[3, 4, 5] = 16, 2
    np.testing.assert_array_equal(occupancy_confusion(gt, pred), brute_force_cm(gt, pred))


@pytest.mark.parametrize('gt_value, pred_value, match', [
    (17, 0, 'gt_occupancy: value 17'), (254, 0, 'gt_occupancy: value 254'),
    (0, 17, 'occ_pred: value 17'), (0, 255, 'occ_pred: value 255')])
def test_values_outside_the_labels_are_errors(gt_value, pred_value, match):
    gt, pred = np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)
    gt[1, 2, 3], pred[1, 2, 3] = gt_value, pred_value
    with pytest.raises(ValueError, match=match):
        occupancy_confusion(gt, pred)


def test_bad_dtypes_and_shapes_are_errors():
    gt = np.zeros((4, 4, 4), np.int64)
    with pytest.raises(ValueError, match='occ_pred: value -1 outside'):
        occupancy_confusion(gt, np.full((4, 4, 4), -1))
    with pytest.raises(ValueError, match='gt_occupancy: non-integer'):
        occupancy_confusion(np.full((4, 4, 4), 0.5, np.float32), gt)
    with pytest.raises(ValueError, match=r'GT shape \(4, 4, 4\) and prediction shape \(4, 4, 5\)'):
        occupancy_confusion(gt, np.zeros((4, 4, 5), np.uint8))


def test_sc_and_ssc_from_a_hand_worked_case():
    # voxel:   0  1  2  3  4  5
    gt = [0, 0, 1, 1, 2, 255]
    pred = [0, 1, 1, 2, 2, 1]
    cm = occupancy_confusion(np.array(gt, np.uint8).reshape(1, 2, 3), np.array(pred, np.uint8).reshape(1, 2, 3))
    result = occupancy_metrics(cm)
    # occupied: GT {2,3,4}, prediction {1,2,3,4} (voxel 5 is noise) -> 3 / (3 + 4 - 3)
    assert result['SC_IoU'] == pytest.approx(3 / 4)
    # free: TP {0}, GT {0,1}, pred {0} -> 1/2; class 1: TP {2}, GT {2,3}, pred {1,2} -> 1/3; class 2: TP {4},
    # GT {4}, pred {3,4} -> 1/2
    assert result['iou'][:3] == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert result['absent'] == list(range(3, 17))
    assert math.isnan(result['SSC_mIoU'])  # official: one absent class makes the mean NaN
    assert result['SSC_mIoU_present'] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert result['num_voxels'] == 5


def test_ssc_miou_is_the_plain_mean_over_16_classes_with_free_confusions_counted():
    cm = np.zeros((17, 17), np.int64)
    for c in range(1, 17):
        cm[c, c] = 10
    cm[0, 0] = 1000
    cm[3, 0] = 10     # class 3: 10 voxels predicted free (FN) -> 10 / 20
    cm[0, 5] = 30     # class 5: 30 free voxels predicted as 5 (FP) -> 10 / 40
    cm[7, 7] = 0      # class 7: never in the GT ...
    cm[8, 7] = 5      # ... but predicted 5 times (for class 8) -> IoU 0/5 = 0, which counts; class 8: 10 / 15
    result = occupancy_metrics(cm)
    expected = [1.0] * 16
    expected[3 - 1], expected[5 - 1], expected[7 - 1], expected[8 - 1] = 0.5, 0.25, 0.0, 10 / 15
    assert result['SSC_mIoU'] == pytest.approx(sum(expected) / 16)
    assert result['SSC_mIoU_present'] == pytest.approx(sum(expected) / 16)
    assert result['absent'] == []
    # SC: occupied/occupied = 15 * 10 + 5 = 155; occupied GT = 155 + 10 (class 3 -> free) = 165;
    # occupied predictions = 155 + 30 (free -> class 5) = 185
    assert result['SC_IoU'] == pytest.approx(155 / (165 + 185 - 155))
    assert cm_to_ious(np.zeros((2, 2)))[0] != cm_to_ious(np.zeros((2, 2)))[0]  # 0/0 is NaN


def _batch(gts, preds, tokens=None):
    batch = {'gt_occupancy': np.stack(gts)}
    if tokens:
        batch['metadata'] = [{'scene_token': s, 'lidar_token': t} for s, t in tokens]
    return batch, [{'occ_pred': torch.from_numpy(p)} for p in preds]


def test_evaluator_sums_the_matrices_over_the_set_before_any_iou(tmp_path):
    rng = np.random.default_rng(3)
    frames = [random_volumes(rng, (5, 6, 4), list(range(1, 17)), occupied=0.6, noise=0.02) for _ in range(3)]
    evaluator = OccupancyEvaluator(None, tmp_path, NAMES)
    evaluator.reset()
    evaluator.process(*_batch([f[0] for f in frames[:2]], [f[1] for f in frames[:2]]))
    evaluator.process(*_batch([frames[2][0]], [frames[2][1]]))
    result_str, metrics = evaluator.evaluate()
    cm = sum(brute_force_cm(g, p) for g, p in frames)
    tp, g, p = np.diag(cm), cm.sum(1), cm.sum(0)
    with np.errstate(invalid='ignore', divide='ignore'):
        ious = tp / (g + p - tp)
    assert metrics['occupancy/SSC_mIoU'] == pytest.approx(np.sum(ious[1:]) / 16, nan_ok=True)
    assert metrics['occupancy/SSC_mIoU_present'] == pytest.approx(np.nanmean(ious[1:]))
    for c, name in enumerate(['free'] + NAMES):
        assert metrics[f'occupancy/IoU_{name}'] == pytest.approx(ious[c], nan_ok=True)
    occ_tp = cm[1:, 1:].sum()
    assert metrics['occupancy/SC_IoU'] == pytest.approx(occ_tp / (cm[1:, :].sum() + cm[:, 1:].sum() - occ_tp))
    assert metrics['occupancy/num_frames'] == 3
    saved = pickle.loads((tmp_path / 'result.pkl').read_bytes())
    np.testing.assert_array_equal(saved['confusion_matrix'], cm)
    assert 'SC IoU' in result_str and 'vegetation' in result_str
    assert (tmp_path / 'result.txt').read_text() == result_str


def test_evaluator_reports_absent_classes_and_the_present_mean(tmp_path):
    gt = np.zeros((4, 4, 4), np.uint8)
    gt[0, 0, :2] = [4, 11]
    pred = gt.copy()
    evaluator = OccupancyEvaluator(None, tmp_path, NAMES)
    evaluator.process(*_batch([gt], [pred]))
    result_str, metrics = evaluator.evaluate()
    assert math.isnan(metrics['occupancy/SSC_mIoU'])
    assert metrics['occupancy/SSC_mIoU_present'] == 1.0
    assert metrics['occupancy/absent_classes'] == [n for n in NAMES if n not in ('car', 'driveable_surface')]
    assert 'absent from GT and prediction' in result_str


def test_save_to_file_writes_gt_style_rows(tmp_path):
    pred = np.zeros((6, 5, 4), np.uint8)
    pred[1, 2, 3], pred[5, 0, 0] = 7, 16
    evaluator = OccupancyEvaluator(None, tmp_path, NAMES, save_to_file=True)
    evaluator.process(*_batch([np.zeros_like(pred)], [pred], tokens=[('sc', 'lt')]))
    rows = np.load(tmp_path / 'final_result' / 'data' / 'occupancy' / 'scene_sc' / 'occupancy' / 'lt.npy')
    assert sorted(map(tuple, rows.tolist())) == [(0, 0, 5, 16), (3, 2, 1, 7)]  # [z, y, x, label]


def test_evaluator_input_errors(tmp_path):
    with pytest.raises(ValueError, match='CLASS_NAMES must list the 16'):
        OccupancyEvaluator(None, tmp_path, NAMES[:10])
    evaluator = OccupancyEvaluator(None, tmp_path, NAMES)
    vol = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(KeyError, match='gt_occupancy'):
        evaluator.process({}, [{'occ_pred': torch.from_numpy(vol)}])
    with pytest.raises(KeyError, match="no 'occ_pred'"):
        evaluator.process({'gt_occupancy': vol[None]}, [{'point_seg_preds': vol}])
    with pytest.raises(KeyError, match='scene_token'):
        OccupancyEvaluator(None, tmp_path, NAMES, save_to_file=True).process(*_batch([vol], [vol]))
    with pytest.raises(ValueError, match='no frame was processed'):
        OccupancyEvaluator(None, tmp_path, NAMES).evaluate()


def test_brute_force_reference_itself_on_a_tiny_case():
    """The reference the other tests trust: rows GT, columns prediction, noise dropped."""
    cm = brute_force_cm([0, 255, 3, 3], [1, 5, 3, 0])
    assert [(i, j, cm[i, j]) for i, j in itertools.product(range(17), range(17)) if cm[i, j]] == \
        [(0, 1, 1), (3, 0, 1), (3, 3, 1)]


def test_a_subsampled_split_is_flagged_as_not_the_official_protocol(tmp_path):
    from easydict import EasyDict

    from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset

    class Subsampled:
        CONFIG_SCHEMA = NuScenesDataset.CONFIG_SCHEMA
        dataset_cfg = EasyDict({'SAMPLED_INTERVAL': {'train': 1, 'test': 4}})

        def __len__(self):
            return 1
    rng = np.random.default_rng(5)
    gt, pred = random_volumes(rng, (4, 4, 4), list(range(1, 17)))
    for dataset, flagged in ((Subsampled(), True), (None, False)):
        evaluator = OccupancyEvaluator(dataset, tmp_path, NAMES)
        evaluator.reset()
        evaluator.process(*_batch([gt], [pred]))
        result_str, metrics = evaluator.evaluate()
        assert ('not the official all-frame protocol' in result_str) == flagged
        assert metrics.get('occupancy/subsampled_interval') == (4 if flagged else None)
