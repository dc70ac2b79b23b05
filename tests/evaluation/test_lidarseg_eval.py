"""LidarSegEvaluator on the synthetic nuScenes-lidarseg dataset (official mini scene names, so the devkit's
`mini_val` works): perfect and corrupted predictions, the nearest-neighbour fill, the results folder, the errors."""
import json
import logging
import os
import pickle
import re

import numpy as np
import pytest
import torch

from pcdet.evaluation.lidarseg import (
    LidarSegEvaluator,
    LidarSegResultError,
    check_lidarseg_results,
    fill_nearest,
    prediction_path,
)

VERSION, EVAL_SET = 'v1.0-mini', 'mini_val'
CAR, TRUCK = 4, 10  # official challenge ids


@pytest.fixture(scope='module')
def frames(synthetic_nuscenes_root):
    """[(lidar_token, lidar_path, raw (N, 5), challenge GT (N,))] of the mini_val key frames, read with the devkit."""
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper, get_samples_in_eval_set
    from nuscenes.nuscenes import NuScenes
    nusc = NuScenes(VERSION, str(synthetic_nuscenes_root), verbose=False)
    mapper = LidarsegClassMapper(nusc)
    out = []
    for sample_token in get_samples_in_eval_set(nusc, EVAL_SET):
        token = nusc.get('sample', sample_token)['data']['LIDAR_TOP']
        path = nusc.get_sample_data_path(token)
        labels = np.fromfile(os.path.join(nusc.dataroot, nusc.get('lidarseg', token)['filename']), np.uint8)
        out.append((token, path, np.fromfile(path, np.float32).reshape(-1, 5), mapper.convert_label(labels)))
    assert len(out) >= 2 and all(len(f[2]) == len(f[3]) for f in out)
    return out


def make_evaluator(root, result_dir):
    evaluator = LidarSegEvaluator(None, result_dir, dataroot=root, version=VERSION, eval_set=EVAL_SET)
    evaluator.reset()
    return evaluator


def batch_of(samples):
    """Collated batch (as after load_data_to_device) of (lidar_token, lidar_path, points (N, 5), raw_index (N,),
    preds (N,)[, num_raw_points]) samples."""
    points = np.concatenate([np.pad(s[2], ((0, 0), (1, 0)), constant_values=b) for b, s in enumerate(samples)])
    batch = {'points': torch.from_numpy(points).float(),
             'point_raw_index': torch.from_numpy(np.concatenate([s[3] for s in samples])).float(),
             'metadata': [{'lidar_token': s[0], 'lidar_path': s[1], **({'num_raw_points': s[5]} if len(s) > 5
                                                                       else {})} for s in samples]}
    return batch, [{'point_seg_preds': torch.from_numpy(np.asarray(s[4], np.int64))} for s in samples]


def run(root, result_dir, frames, predict, batch_size=2):
    evaluator = make_evaluator(root, result_dir)
    samples = [(tok, path, raw, np.arange(len(raw)), predict(gt)) for tok, path, raw, gt in frames]
    for start in range(0, len(samples), batch_size):
        evaluator.process(*batch_of(samples[start:start + batch_size]))
    return evaluator.evaluate()


def test_perfect_predictions_give_miou_one_and_an_official_results_folder(synthetic_nuscenes_root, frames, tmp_path):
    result_str, metrics = run(synthetic_nuscenes_root, tmp_path, frames, lambda gt: gt)
    assert metrics['lidarseg/mIoU'] == pytest.approx(1.0)
    assert metrics['lidarseg/fwIoU'] == pytest.approx(1.0)
    present = set(np.unique(np.concatenate([f[3] for f in frames]))) - {0}
    assert len(present) >= 3
    assert sum(not np.isnan(v) for k, v in metrics.items() if k.startswith('lidarseg/IoU_')) == len(present)
    for token, _, raw, gt in frames:
        written = np.fromfile(prediction_path(tmp_path, EVAL_SET, token), np.uint8)
        assert len(written) == len(raw) and written.min() >= 1 and written.max() <= 16
        np.testing.assert_array_equal(written[gt > 0], gt[gt > 0])
    meta = json.loads((tmp_path / EVAL_SET / 'submission.json').read_text())['meta']
    assert sorted(meta) == ['use_camera', 'use_external', 'use_lidar', 'use_map', 'use_radar']
    assert all(isinstance(v, bool) for v in meta.values()) and meta['use_lidar']
    from nuscenes.eval.lidarseg.validate_submission import validate_submission
    from nuscenes.nuscenes import NuScenes
    validate_submission(NuScenes(VERSION, str(synthetic_nuscenes_root), verbose=False), str(tmp_path), EVAL_SET)
    assert 'mIoU:  1.0000' in result_str and 'car' in result_str
    assert pickle.loads((tmp_path / 'result.pkl').read_bytes())['metrics'] == pytest.approx(metrics, nan_ok=True)


def test_a_known_corruption_gives_the_expected_miou(synthetic_nuscenes_root, frames, tmp_path):
    """Every car predicted as truck: car IoU 0, truck IoU n_truck / (n_truck + n_car), the rest 1."""
    _, metrics = run(synthetic_nuscenes_root, tmp_path, frames, lambda gt: np.where(gt == CAR, TRUCK, gt))
    gt = np.concatenate([f[3] for f in frames])
    n_car, n_truck = int((gt == CAR).sum()), int((gt == TRUCK).sum())
    assert n_car > 0
    present = set(np.unique(gt).tolist()) - {0} | {TRUCK}
    ious = {c: 1.0 for c in present}
    ious[CAR], ious[TRUCK] = 0.0, n_truck / (n_truck + n_car)
    assert metrics['lidarseg/mIoU'] == pytest.approx(sum(ious.values()) / len(ious))
    assert metrics['lidarseg/IoU_car'] == 0.0
    assert metrics['lidarseg/IoU_truck'] == pytest.approx(ious[TRUCK])
    counts = {c: int((gt == c).sum()) for c in present}
    assert metrics['lidarseg/fwIoU'] == pytest.approx(sum(counts[c] * ious[c] for c in present) / (gt > 0).sum())


def brute_force_fill(labels, xyz):
    """Python loops over every pair (small inputs)."""
    out = labels.copy()
    known = [j for j in range(len(labels)) if labels[j] != 0]
    for i in range(len(labels)):
        if labels[i] == 0:
            best = min(known, key=lambda j: sum((float(xyz[i][k]) - float(xyz[j][k])) ** 2 for k in range(3)))
            out[i] = labels[best]
    return out


def exhaustive_fill(labels, xyz):
    """Per unlabelled point, the squared distance to every labelled point (vectorised per query, no tree)."""
    out = labels.copy()
    known = np.flatnonzero(labels != 0)
    points = xyz.astype(np.float64)
    for i in np.flatnonzero(labels == 0):
        out[i] = labels[known[np.argmin(((points[known] - points[i]) ** 2).sum(axis=1))]]
    return out


def test_fill_nearest_equals_brute_force():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(300, 3)).astype(np.float32)
    labels = rng.integers(1, 17, 300)
    labels[rng.random(300) < 0.4] = 0
    filled, count = fill_nearest(labels, xyz)
    np.testing.assert_array_equal(filled, brute_force_fill(labels, xyz))
    assert count == int((labels == 0).sum())
    with pytest.raises(LidarSegResultError, match='no point of the frame has a prediction'):
        fill_nearest(np.zeros(5, np.int64), xyz[:5])


def test_unpredicted_and_missing_points_take_the_nearest_prediction(synthetic_nuscenes_root, frames, tmp_path,
                                                                    caplog):
    """A batch holding a shuffled subset of each key frame plus sweep rows (raw index -1), with some 0 predictions:
    the file equals the brute-force fill over the raw xyz."""
    rng = np.random.default_rng(1)
    evaluator = make_evaluator(synthetic_nuscenes_root, tmp_path)
    expected, total_filled = {}, 0
    for number, (token, path, raw, gt) in enumerate(frames):
        if number >= 2:  # the other frames complete and fully predicted (the reference fill is slow)
            evaluator.process(*batch_of([(token, path, raw, np.arange(len(raw)), np.maximum(gt, 1))]))
            continue
        keep = rng.permutation(len(raw))[:int(0.85 * len(raw))]
        preds = rng.integers(1, 17, len(keep))
        preds[rng.random(len(keep)) < 0.05] = 0
        sweep = rng.normal(size=(50, 5)).astype(np.float32)
        points = np.concatenate([raw[keep], sweep])
        raw_index = np.concatenate([keep, -np.ones(50, np.int64)])
        all_preds = np.concatenate([preds, rng.integers(1, 17, 50)])
        evaluator.process(*batch_of([(token, path, points, raw_index, all_preds)]))
        labels = np.zeros(len(raw), np.int64)
        labels[keep] = preds
        expected[token] = exhaustive_fill(labels, raw[:, :3])
        total_filled += int((labels == 0).sum())
    with caplog.at_level(logging.INFO, logger='pcdet'):
        evaluator.evaluate()
    for token, labels in expected.items():
        np.testing.assert_array_equal(np.fromfile(prediction_path(tmp_path, EVAL_SET, token), np.uint8), labels)
    assert f'lidarseg: {total_filled} of {sum(len(f[2]) for f in frames)} key-frame points' in caplog.text


def test_a_frame_missing_from_the_run_is_an_error_naming_its_file(synthetic_nuscenes_root, frames, tmp_path):
    evaluator = make_evaluator(synthetic_nuscenes_root, tmp_path)
    for token, path, raw, gt in frames[1:]:
        evaluator.process(*batch_of([(token, path, raw, np.arange(len(raw)), np.maximum(gt, 1))]))
    missing = prediction_path(tmp_path, EVAL_SET, frames[0][0])
    with pytest.raises(LidarSegResultError, match=re.escape(f'{missing}: not written by this evaluation; 1 of the')):
        evaluator.evaluate()


@pytest.mark.parametrize('corrupt, match', [
    (lambda path: path.unlink(), 'missing; expected the predictions of key frame'),
    (lambda path: path.write_bytes(path.read_bytes()[:-3]), r'predictions, expected \d+ \(one uint8 per point'),
    (lambda path: path.write_bytes(b'\x00' + path.read_bytes()[1:]), r'value 0 outside 1..16'),
    (lambda path: path.write_bytes(b'\x11' + path.read_bytes()[1:]), r'value 17 outside 1..16'),
    (lambda path: path.write_bytes(np.ones(len(path.read_bytes()), np.int64).tobytes()), 'predictions, expected'),
])
def test_check_results_names_the_bad_file(synthetic_nuscenes_root, frames, tmp_path, corrupt, match):
    from nuscenes.nuscenes import NuScenes
    run(synthetic_nuscenes_root, tmp_path, frames, lambda gt: np.maximum(gt, 1))
    nusc = NuScenes(VERSION, str(synthetic_nuscenes_root), verbose=False)
    check_lidarseg_results(nusc, tmp_path, EVAL_SET)
    bad = prediction_path(tmp_path, EVAL_SET, frames[-1][0])
    corrupt(bad)
    with pytest.raises(LidarSegResultError, match=re.escape(str(bad)) + '.*' + match):
        check_lidarseg_results(nusc, tmp_path, EVAL_SET)


def test_process_rejects_bad_model_outputs(synthetic_nuscenes_root, frames, tmp_path):
    token, path, raw, gt = frames[0]
    evaluator = make_evaluator(synthetic_nuscenes_root, tmp_path)
    with pytest.raises(ValueError, match=r'has 3 values for \d+ points'):
        evaluator.process(*batch_of([(token, path, raw, np.arange(len(raw)), np.ones(3))]))
    with pytest.raises(ValueError, match=r'holds 1\.\.17; expected 1\.\.16'):
        evaluator.process(*batch_of([(token, path, raw, np.arange(len(raw)), np.full(len(raw), 17) -
                                      (np.arange(len(raw)) > 0) * 16)]))
    with pytest.raises(LidarSegResultError, match='point_raw_index outside'):
        evaluator.process(*batch_of([(token, path, raw, np.arange(len(raw)) + 1, np.ones(len(raw)))]))
    with pytest.raises(LidarSegResultError, match=re.escape(f'{path}: {len(raw)} points, but the sample says '
                                                            f'num_raw_points = {len(raw) + 1}')):
        evaluator.process(*batch_of([(token, path, raw[:5], np.arange(5), np.zeros(5), len(raw) + 1)]))
    batch, preds = batch_of([(token, path, raw, np.arange(len(raw)), np.ones(len(raw)))])
    del batch['point_raw_index']
    with pytest.raises(KeyError, match='point_raw_index'):
        evaluator.process(batch, preds)


def test_an_eval_set_the_devkit_does_not_know_is_an_error(synthetic_nuscenes_root, frames, tmp_path):
    evaluator = LidarSegEvaluator(None, tmp_path, dataroot=synthetic_nuscenes_root, version=VERSION,
                                  eval_set='my_val')
    token, path, raw, gt = frames[0]
    evaluator.process(*batch_of([(token, path, raw, np.arange(len(raw)), np.ones(len(raw)))]))
    with pytest.raises(LidarSegResultError, match="'my_val' .* is not a devkit split"):
        evaluator.evaluate()
