"""nuScenes detection evaluation glue: pcdet predictions -> devkit result json -> official `DetectionEval`.

Reads `det_annos`: one dict per frame (DatasetTemplate.generate_prediction_dicts) with `name (K,)`, `score (K,)`,
`boxes_lidar (K, 7|9)` [x, y, z, l, w, h, yaw, (vx, vy)] in the keyframe LiDAR frame, `metadata['token']`
(sample token). Writes `<output_path>/results_nusc.json` (atomic) and the devkit's `metrics_summary.json`,
`metrics_details.json`. Predictions whose name is not a devkit detection class (e.g. 'ignore') are dropped.

Zero detections (every frame empty, e.g. an early or weak model) score like any submission: a WARNING, then the
devkit's own evaluation gives AP 0 per class, TP errors 1 (its values for a class without predictions) and
NDS 0. Only the devkit's prediction filter needs help there (see `run_detection_eval`).
"""
import json
import logging
from pathlib import Path

import numpy as np

from pcdet.utils.file_utils import atomic_save_text

EVAL_SET_OF_VERSION = {'v1.0-mini': 'mini_val', 'v1.0-trainval': 'val', 'v1.0-test': 'test'}
MOVING_SPEED = 0.2  # m/s; faster boxes get a "moving" attribute
# Most frequent attribute per class in OpenPCDet's hard-coded `cls_attr_dist` table (only its argmax is ever used;
# classes without attributes take the table's first key, which the devkit ignores for them).
FALLBACK_ATTRIBUTE = {
    'car': 'vehicle.parked', 'truck': 'vehicle.parked', 'construction_vehicle': 'vehicle.parked',
    'bus': 'vehicle.moving', 'trailer': 'vehicle.parked', 'barrier': 'cycle.with_rider',
    'motorcycle': 'cycle.without_rider', 'bicycle': 'cycle.without_rider', 'pedestrian': 'pedestrian.moving',
    'traffic_cone': 'cycle.with_rider',
}
VEHICLES = ('car', 'construction_vehicle', 'bus', 'truck', 'trailer')
RESULT_META = {'use_camera': False, 'use_lidar': True, 'use_radar': False, 'use_map': False, 'use_external': False}


def attribute_of(name, velocity_xy):
    """OpenPCDet's attribute heuristic from the class name and the global-frame speed."""
    if np.hypot(velocity_xy[0], velocity_xy[1]) > MOVING_SPEED:
        attribute = {'bicycle': 'cycle.with_rider', 'motorcycle': 'cycle.with_rider'}.get(
            name, 'vehicle.moving' if name in VEHICLES else None)
    else:
        attribute = {'pedestrian': 'pedestrian.standing', 'bus': 'vehicle.stopped'}.get(name)
    return attribute or FALLBACK_ATTRIBUTE.get(name, '')


def lidar_boxes_to_devkit(boxes_lidar, scores):
    """Devkit `Box`es (centre, wlh, yaw quaternion, velocity (vx, vy, 0) or zeros) in the LiDAR frame."""
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion
    boxes_lidar = np.asarray(boxes_lidar, dtype=np.float64)
    if boxes_lidar.size == 0:
        return []
    boxes_lidar = boxes_lidar.reshape(len(boxes_lidar), -1)
    boxes = []
    for box, score in zip(boxes_lidar, scores):
        velocity = (box[7], box[8], 0.0) if box.shape[0] >= 9 else (0.0, 0.0, 0.0)
        boxes.append(Box(box[:3], box[[4, 3, 5]], Quaternion(axis=[0, 0, 1], radians=box[6]),
                         score=float(score), velocity=velocity))
    return boxes


def lidar_to_global(nusc, boxes, sample_token):
    """Move devkit boxes (in place) LiDAR -> ego -> global with the keyframe's calibration and ego pose."""
    from pyquaternion import Quaternion
    sd_rec = nusc.get('sample_data', nusc.get('sample', sample_token)['data']['LIDAR_TOP'])
    cs_rec = nusc.get('calibrated_sensor', sd_rec['calibrated_sensor_token'])
    pose_rec = nusc.get('ego_pose', sd_rec['ego_pose_token'])
    for box in boxes:
        box.rotate(Quaternion(cs_rec['rotation']))
        box.translate(np.array(cs_rec['translation']))
        box.rotate(Quaternion(pose_rec['rotation']))
        box.translate(np.array(pose_rec['translation']))
    return boxes


def transform_det_annos_to_nusc_annos(det_annos, nusc):
    """{'results': {sample_token: [devkit detection dict]}, 'meta': RESULT_META} in the global frame."""
    from nuscenes.eval.detection.constants import DETECTION_NAMES
    results = {}
    for det in det_annos:
        token = det['metadata']['token']
        boxes = lidar_to_global(nusc, lidar_boxes_to_devkit(det['boxes_lidar'], det['score']), token)
        annos = []
        for name, box in zip(det['name'], boxes):
            if name not in DETECTION_NAMES:
                continue
            velocity = np.nan_to_num(box.velocity[:2])
            annos.append({
                'sample_token': token, 'translation': box.center.tolist(), 'size': box.wlh.tolist(),
                'rotation': box.orientation.elements.tolist(), 'velocity': velocity.tolist(),
                'detection_name': str(name), 'detection_score': float(box.score),
                'attribute_name': attribute_of(name, velocity),
            })
        results[token] = annos
    return {'results': results, 'meta': dict(RESULT_META)}


def format_nuscenes_results(metrics, class_names, version='default'):
    """OpenPCDet's text table + result dict from a devkit `metrics_summary` dict."""
    lines = [f'----------------Nuscene {version} results-----------------']
    details = {}
    for name in class_names:
        if name not in metrics['label_aps']:
            continue
        thresholds = ', '.join(metrics['label_aps'][name].keys())
        err_names = ', '.join(key.split('_')[0] for key in metrics['label_tp_errors'][name].keys())
        errors = ', '.join('%.2f' % x for x in metrics['label_tp_errors'][name].values())
        aps = ', '.join('%.2f' % (x * 100) for x in metrics['label_aps'][name].values())
        lines.append(f'***{name} error@{err_names} | AP@{thresholds}')
        lines.append(f'{errors} | {aps} | mean AP: {metrics["mean_dist_aps"][name]}')
        details[f'{name}_AP'] = metrics['mean_dist_aps'][name]
    lines.append('--------------average performance-------------')
    short = {'trans_err': 'mATE', 'scale_err': 'mASE', 'orient_err': 'mAOE', 'vel_err': 'mAVE', 'attr_err': 'mAAE'}
    for key, value in metrics['tp_errors'].items():
        lines.append('%s:\t %.4f' % (key, value))
        details[key] = value
        if key in short:
            details[short[key]] = value
    lines += ['mAP:\t %.4f' % metrics['mean_ap'], 'NDS:\t %.4f' % metrics['nd_score']]
    details.update({'mAP': metrics['mean_ap'], 'NDS': metrics['nd_score']})
    return '\n'.join(lines) + '\n', details


def count_result_boxes(nusc_annos):
    """Number of detections in a devkit result dict (`{'results': {sample_token: [box, ...]}, ...}`)."""
    return sum(len(boxes) for boxes in nusc_annos['results'].values())


def keep_empty_box_sets(filter_eval_boxes):
    """`filter_eval_boxes` that returns an `EvalBoxes` holding no box at all unchanged, else delegates.

    nuscenes-devkit 1.2.0's `filter_eval_boxes` first reads the class field off the first box it finds
    (`loaders._get_box_class_field`) and raises `Exception('Error: Invalid box type: None')` when there is none.
    Filtering an empty set can only give the empty set, which is what this returns.
    """
    def filter_keeping_empty(nusc, eval_boxes, *args, **kwargs):
        if not any(len(boxes) for boxes in eval_boxes.boxes.values()):
            return eval_boxes
        return filter_eval_boxes(nusc, eval_boxes, *args, **kwargs)
    return filter_keeping_empty


def run_detection_eval(nusc, result_path, eval_set, output_dir, verbose=True, empty_submission=False):
    """Official devkit evaluation (`detection_cvpr_2019`); returns the metrics_summary dict.

    `empty_submission=True` (a result json whose sample tokens all map to empty lists): the devkit's
    `DetectionEval` is built with its prediction filter wrapped by `keep_empty_box_sets`, because the unwrapped
    filter raises on a set without boxes. Loading, the sample-token check, GT filtering, `evaluate()` (where
    `accumulate` returns `DetectionMetricData.no_predictions()` for every class) and the metric files are the
    devkit's. An empty GT set still raises (ValueError) instead of scoring 0.
    """
    from unittest import mock

    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection import evaluate as devkit_evaluate
    from nuscenes.eval.detection.evaluate import DetectionEval

    def build():
        return DetectionEval(nusc, config=config_factory('detection_cvpr_2019'), result_path=str(result_path),
                             eval_set=eval_set, output_dir=str(output_dir), verbose=verbose)

    if empty_submission:
        with mock.patch.object(devkit_evaluate, 'filter_eval_boxes',
                               keep_empty_box_sets(devkit_evaluate.filter_eval_boxes)):
            evaluator = build()
        if not evaluator.gt_boxes.all:
            raise ValueError(f'nuScenes eval set {eval_set!r} has no GT box within the evaluation ranges')
    else:
        evaluator = build()
    evaluator.main(plot_examples=0, render_curves=False)
    with open(Path(output_dir) / 'metrics_summary.json', 'r') as handle:
        return json.load(handle)


def evaluate_nuscenes(det_annos, class_names, nusc, output_path, eval_set=None, logger=None):
    """Write results_nusc.json and run the official evaluation; returns (result_str, result_dict).

    `eval_set` defaults to EVAL_SET_OF_VERSION[nusc.version]; custom names come from the devkit's splits.json.
    For the test split only the json is written (no annotations): returns (message, {})."""
    logger = logger or logging.getLogger(__name__)
    output_path = Path(output_path)
    output_path.mkdir(parents=True, exist_ok=True)
    eval_set = eval_set or EVAL_SET_OF_VERSION.get(nusc.version)
    if eval_set is None:
        raise ValueError(f'no default eval set for nuScenes version {nusc.version!r}; pass eval_set=...')
    result_path = output_path / 'results_nusc.json'
    nusc_annos = transform_det_annos_to_nusc_annos(det_annos, nusc)
    atomic_save_text(json.dumps(nusc_annos), result_path)
    logger.info(f'nuScenes results written to {result_path}')
    empty_submission = count_result_boxes(nusc_annos) == 0
    if empty_submission:
        logger.warning(f'nuScenes eval: no detections in any of the {len(nusc_annos["results"])} frames (after '
                       'dropping non-detection classes): every AP is 0, TP errors 1, mAP and NDS 0')
    if eval_set == 'test':
        return f'test split: results written to {result_path} (submit them to the evaluation server)\n', {}
    metrics = run_detection_eval(nusc, result_path, eval_set, output_path, empty_submission=empty_submission)
    return format_nuscenes_results(metrics, class_names, version=eval_set)
