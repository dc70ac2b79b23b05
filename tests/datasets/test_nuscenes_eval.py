"""Evaluation glue: GT of mini_val fed back as predictions scores ~1 through the official devkit evaluation."""
import json
from pathlib import Path

import numpy as np
import pytest
from pyquaternion import Quaternion

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset
from pcdet.datasets.nuscenes.nuscenes_eval import attribute_of, transform_det_annos_to_nusc_annos
from pcdet.datasets.nuscenes.nuscenes_utils import CLASS_NAMES

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
