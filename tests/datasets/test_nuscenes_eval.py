"""Evaluation glue: GT of mini_val fed back as predictions scores ~1 through the official devkit evaluation; a
submission without any detection scores 0 instead of crashing inside the devkit."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pyquaternion import Quaternion

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset
from pcdet.datasets.nuscenes.nuscenes_eval import (
    attribute_of,
    evaluate_nuscenes,
    keep_empty_box_sets,
    transform_det_annos_to_nusc_annos,
)
from pcdet.datasets.nuscenes.nuscenes_utils import CLASS_NAMES, load_nusc

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def val_set(synthetic_nuscenes_data_path, synthetic_nuscenes_version):
    cfg = cfg_from_yaml_file(REPO_ROOT / 'tools/cfgs/dataset_configs/nuscenes_dataset.yaml')
    cfg.DATA_PATH, cfg.VERSION = str(synthetic_nuscenes_data_path), synthetic_nuscenes_version
    return NuScenesDataset(cfg, CLASS_NAMES, training=False)


def gt_as_predictions(infos):
    """det_annos (DatasetTemplate.generate_prediction_dicts format) holding every GT box with score 1."""
    det_annos = []
    for info in infos:
        keep = np.isin(info['gt_names'], CLASS_NAMES)
        boxes = np.nan_to_num(info['gt_boxes'][keep]).astype(np.float32)
        det_annos.append({'name': info['gt_names'][keep], 'score': np.ones(len(boxes), dtype=np.float32),
                          'boxes_lidar': boxes, 'pred_labels': np.array([CLASS_NAMES.index(n) + 1
                                                                         for n in info['gt_names'][keep]]),
                          'frame_id': Path(info['lidar_path']).stem, 'metadata': {'token': info['token']}})
    return det_annos


def test_gt_fed_back_scores_car_ap_near_one(val_set, tmp_path):
    result_str, result_dict = val_set.evaluation(gt_as_predictions(val_set.infos), CLASS_NAMES,
                                                 eval_metric='ignored', output_path=tmp_path)
    results = json.loads((tmp_path / 'results_nusc.json').read_text())
    assert set(results['results']) == {info['token'] for info in val_set.infos}
    assert results['meta']['use_lidar'] is True
    assert result_dict['car_AP'] >= 0.95, result_str
    assert result_dict['mATE'] < 0.01 and 0 < result_dict['NDS'] <= 1 and 'mAP' in result_dict
    assert '***car error@trans, scale, orient, vel, attr' in result_str and 'NDS:' in result_str


def without_boxes(det_anno):
    """The same frame with no detection (what an early or weak model produces)."""
    return {**det_anno, 'name': det_anno['name'][:0], 'score': det_anno['score'][:0],
            'boxes_lidar': np.zeros((0, 9), np.float32), 'pred_labels': det_anno['pred_labels'][:0]}


def evaluate(val_set, det_annos, output_path):
    nusc = load_nusc(val_set.root_path, val_set.dataset_cfg.VERSION, verbose=False)
    return evaluate_nuscenes(det_annos, CLASS_NAMES, nusc, output_path, logger=logging.getLogger('nuscenes_eval_test'))


def test_zero_detections_score_zero_with_a_warning(val_set, tmp_path, caplog):
    # The devkit's values for a class without predictions (DetectionMetricData.no_predictions): AP 0 at every
    # distance threshold, TP errors 1 (calc_tp's value when no recall is reached; NaN where the devkit does not
    # score a TP metric for the class). NDS = (5 * mAP + sum over the 5 TP metrics of (1 - min(1, error))) / 10 = 0.
    det_annos = [without_boxes(anno) for anno in gt_as_predictions(val_set.infos)]
    with caplog.at_level(logging.WARNING, logger='nuscenes_eval_test'):
        result_str, result_dict = evaluate(val_set, det_annos, tmp_path)
    assert any(record.levelno == logging.WARNING and 'no detections' in record.getMessage()
               for record in caplog.records)
    results = json.loads((tmp_path / 'results_nusc.json').read_text())
    assert results['results'] == {info['token']: [] for info in val_set.infos}
    summary = json.loads((tmp_path / 'metrics_summary.json').read_text())
    assert (tmp_path / 'metrics_details.json').is_file()
    assert summary['mean_ap'] == 0.0 and summary['nd_score'] == 0.0
    assert summary['tp_errors'] == {'trans_err': 1.0, 'scale_err': 1.0, 'orient_err': 1.0, 'vel_err': 1.0,
                                    'attr_err': 1.0}
    for name in CLASS_NAMES:
        assert summary['mean_dist_aps'][name] == 0.0
        assert set(summary['label_aps'][name].values()) == {0.0}
        assert all(error == 1.0 or np.isnan(error) for error in summary['label_tp_errors'][name].values())
    assert result_dict['mAP'] == 0.0 and result_dict['NDS'] == 0.0 and result_dict['car_AP'] == 0.0
    assert 'mAP:\t 0.0000' in result_str and 'NDS:\t 0.0000' in result_str


def test_keep_empty_box_sets_only_bypasses_sets_without_boxes():
    from nuscenes.eval.common.data_classes import EvalBoxes
    calls = []
    wrapped = keep_empty_box_sets(lambda nusc, boxes, class_range, verbose=False: calls.append(boxes) or 'filtered')
    empty = EvalBoxes()
    empty.add_boxes('token_a', [])
    empty.add_boxes('token_b', [])
    assert wrapped(None, empty, {}, verbose=True) is empty and calls == []
    one = EvalBoxes()
    one.add_boxes('token_a', [])
    one.add_boxes('token_b', ['a box'])
    assert wrapped(None, one, {}, verbose=True) == 'filtered' and calls == [one]


def test_some_frames_without_detections(val_set, tmp_path, caplog):
    det_annos = gt_as_predictions(val_set.infos)
    emptied = {anno['metadata']['token'] for anno in det_annos[::2]}
    det_annos = [without_boxes(anno) if anno['metadata']['token'] in emptied else anno for anno in det_annos]
    with caplog.at_level(logging.WARNING, logger='nuscenes_eval_test'):
        result_str, result_dict = evaluate(val_set, det_annos, tmp_path)
    assert not any('no detections' in record.getMessage() for record in caplog.records)
    results = json.loads((tmp_path / 'results_nusc.json').read_text())['results']
    assert set(results) == {info['token'] for info in val_set.infos}
    assert all(results[token] == [] for token in emptied) and any(results[t] for t in set(results) - emptied)
    # About half of the GT is detected perfectly: car AP is well above 0 and below the all-frames value (~1).
    assert 0.1 < result_dict['car_AP'] < 0.9, result_str
    assert 0 < result_dict['mAP'] < 1 and 0 < result_dict['NDS'] < 1


def test_lidar_boxes_land_on_global_annotations(val_set):
    from nuscenes.nuscenes import NuScenes
    nusc = NuScenes(version=val_set.dataset_cfg.VERSION, dataroot=str(val_set.root_path), verbose=False)
    info = max(val_set.infos, key=lambda i: len(i['gt_boxes']))
    annos = transform_det_annos_to_nusc_annos(gt_as_predictions([info]), nusc)['results'][info['token']]
    kept_tokens = info['gt_boxes_token'][np.isin(info['gt_names'], CLASS_NAMES)]
    assert len(annos) == len(kept_tokens) > 0
    for anno, token in zip(annos, kept_tokens):
        ann = nusc.get('sample_annotation', token)
        np.testing.assert_allclose(anno['translation'], ann['translation'], atol=1e-3)
        np.testing.assert_allclose(anno['size'], ann['size'], atol=1e-4)
        # Headings in global BEV; LiDAR boxes are yaw-only in a frame tilted ~1 degree, hence the 2 mrad slack.
        heading = lambda q: np.arctan2(*Quaternion(q).rotate([1.0, 0.0, 0.0])[1::-1])  # noqa: E731
        assert abs((heading(anno['rotation']) - heading(ann['rotation']) + np.pi) % (2 * np.pi) - np.pi) < 2e-3


def test_attribute_heuristic():
    assert attribute_of('car', [1.0, 0.0]) == 'vehicle.moving'
    assert attribute_of('car', [0.0, 0.0]) == 'vehicle.parked'
    assert attribute_of('bicycle', [0.0, 1.0]) == 'cycle.with_rider'
    assert attribute_of('pedestrian', [0.0, 0.0]) == 'pedestrian.standing'
    assert attribute_of('pedestrian', [2.0, 0.0]) == 'pedestrian.moving'
    assert attribute_of('bus', [0.1, 0.0]) == 'vehicle.stopped'
    assert attribute_of('traffic_cone', [0.0, 0.0]) == 'cycle.with_rider'
