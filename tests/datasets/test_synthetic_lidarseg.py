"""The synthetic dataset's nuScenes-lidarseg labels in the official layout, loaded by nuscenes-devkit and scored by
the devkit's own `LidarSegEval` (ground truth as prediction, and a known corruption)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.lidarseg.evaluate import LidarSegEval
from nuscenes.eval.lidarseg.utils import LidarsegClassMapper, get_samples_in_eval_set
from nuscenes.utils.color_map import get_colormap
from pyquaternion import Quaternion

from pcdet.datasets.synthetic import catalog
from pcdet.datasets.synthetic.nuscenes_writer import SyntheticNuScenesConfig, generate_nuscenes, plan_scenes
from pcdet.datasets.synthetic.scene import simulate_scene

# The 16 challenge classes, official ids 1..16 (nuScenes-lidarseg README).
CHALLENGE = ('barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian', 'traffic_cone',
             'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain', 'manmade', 'vegetation')
CAR, TRUCK = CHALLENGE.index('car') + 1, CHALLENGE.index('truck') + 1


@pytest.fixture(scope='module')
def nusc(synthetic_nuscenes_root, synthetic_nuscenes_version):
    return NuScenes(version=synthetic_nuscenes_version, dataroot=str(synthetic_nuscenes_root), verbose=False)


def challenge_labels(nusc, sd_token):
    """Per-point challenge ids of a key frame via the devkit's mapper (what LidarSegEval compares against)."""
    labels = np.fromfile(Path(nusc.dataroot) / nusc.get('lidarseg', sd_token)['filename'], dtype=np.uint8)
    return LidarsegClassMapper(nusc).convert_label(labels)


def test_official_layout(nusc, synthetic_nuscenes_root, synthetic_nuscenes_version):
    root, version = Path(synthetic_nuscenes_root), synthetic_nuscenes_version
    categories = json.loads((root / version / 'category.json').read_text())
    assert sorted(c['index'] for c in categories) == list(range(32))  # no gaps (devkit errata)
    assert [c['name'] for c in sorted(categories, key=lambda c: c['index'])] == list(get_colormap())
    records = json.loads((root / version / 'lidarseg.json').read_text())
    key_frames = {sd['token'] for sd in nusc.sample_data if sd['is_key_frame']}
    assert {r['sample_data_token'] for r in records} == key_frames and len(records) == len(key_frames)
    for record in records:
        assert set(record) == {'token', 'sample_data_token', 'filename'}
        assert record['token'] == record['sample_data_token']
        assert record['filename'] == f'lidarseg/{version}/{record["token"]}_lidarseg.bin'
        labels = np.fromfile(root / record['filename'], dtype=np.uint8)
        points = np.fromfile(nusc.get_sample_data_path(record['token']), dtype=np.float32).reshape(-1, 5)
        assert len(labels) == len(points) and labels.max() <= 31
    on_disk = {p.relative_to(root).as_posix() for p in (root / 'lidarseg').rglob('*')}
    assert on_disk == {f'lidarseg/{version}'} | {r['filename'] for r in records}  # nothing stray


def test_all_sixteen_challenge_classes_occur_and_ground_kinds_follow_the_road(nusc, synthetic_nuscenes_config):
    seen = set()
    for sample in nusc.sample:
        seen |= set(np.unique(challenge_labels(nusc, sample['data']['LIDAR_TOP'])).tolist())
    assert seen >= set(range(1, 17))
    # Ground kinds are bands around the ego's circular path: recompute each band from the scene's trajectory.
    plan = plan_scenes(synthetic_nuscenes_config)[0]
    scene = simulate_scene(synthetic_nuscenes_config.scene_config(),
                           np.random.default_rng([synthetic_nuscenes_config.seed, plan.index, 0]))
    config, trajectory = scene.config, scene.trajectory
    radius = trajectory.speed / trajectory.yaw_rate
    centre = np.array(trajectory.start_xy) + radius * np.array([-np.sin(trajectory.start_yaw),
                                                                 np.cos(trajectory.start_yaw)])
    scene_record = next(s for s in nusc.scene if s['name'] == plan.name)
    sd_token = nusc.get('sample', scene_record['first_sample_token'])['data']['LIDAR_TOP']
    labels = challenge_labels(nusc, sd_token)
    points = np.fromfile(nusc.get_sample_data_path(sd_token), dtype=np.float32).reshape(-1, 5)[:, :3]
    sd = nusc.get('sample_data', sd_token)
    cs, ego = nusc.get('calibrated_sensor', sd['calibrated_sensor_token']), nusc.get('ego_pose', sd['ego_pose_token'])
    ego_xyz = points @ Quaternion(cs['rotation']).rotation_matrix.T + cs['translation']
    global_xyz = ego_xyz @ Quaternion(ego['rotation']).rotation_matrix.T + ego['translation']
    distance = np.abs(np.hypot(*(global_xyz[:, :2] - centre).T) - abs(radius))
    ground = np.isin(labels, [11, 12, 13, 14])
    assert np.abs(global_xyz[ground, 2]).max() < 0.04  # all ground kinds lie on the plane z = 0
    road = config.road_half_width
    for label, lo, hi in ((11, 0, road), (12, road - config.island_width, road),
                          (13, road, road + config.sidewalk_width), (14, road + config.sidewalk_width, np.inf)):
        d = distance[labels == label]
        assert len(d) > 0 and d.min() >= lo - 1e-3 and d.max() <= hi + 1e-3, CHALLENGE[label - 1]
    assert catalog.SURFACE_REFLECTIVITY['terrain'] == catalog.SURFACE_REFLECTIVITY['sidewalk']


def _write_predictions(nusc, folder, eval_set, transform):
    bins = folder / 'lidarseg' / eval_set
    bins.mkdir(parents=True)
    (folder / eval_set).mkdir()
    (folder / eval_set / 'submission.json').write_text(json.dumps({'meta': {
        'use_camera': False, 'use_lidar': True, 'use_radar': False, 'use_map': False, 'use_external': False}}))
    for sample_token in get_samples_in_eval_set(nusc, eval_set):
        sd_token = nusc.get('sample', sample_token)['data']['LIDAR_TOP']
        prediction = transform(challenge_labels(nusc, sd_token))
        prediction[prediction == 0] = 1  # GT-ignore points: any valid id, LidarSegEval drops them
        prediction.astype(np.uint8).tofile(bins / f'{sd_token}_lidarseg.bin')


def test_lidarseg_eval_scores_ground_truth_and_a_known_corruption(nusc, tmp_path):
    counts = np.zeros(17, dtype=np.int64)
    for sample_token in get_samples_in_eval_set(nusc, 'mini_val'):
        counts += np.bincount(challenge_labels(nusc, nusc.get('sample', sample_token)['data']['LIDAR_TOP']),
                              minlength=17)
    present = [c for c in range(1, 17) if counts[c] > 0]
    assert present == list(range(1, 17))  # so the official mIoU is a mean over all 16 classes

    _write_predictions(nusc, tmp_path / 'perfect', 'mini_val', lambda gt: gt.copy())
    perfect = LidarSegEval(nusc, str(tmp_path / 'perfect'), 'mini_val').evaluate()
    assert perfect['miou'] == pytest.approx(1.0) and perfect['freq_weighted_iou'] == pytest.approx(1.0)

    _write_predictions(nusc, tmp_path / 'car_as_truck', 'mini_val', lambda gt: np.where(gt == CAR, TRUCK, gt))
    corrupted = LidarSegEval(nusc, str(tmp_path / 'car_as_truck'), 'mini_val').evaluate()
    truck_iou = counts[TRUCK] / (counts[TRUCK] + counts[CAR])  # TP = trucks; FP = the cars
    expected = {c: 1.0 for c in present}
    expected[CAR], expected[TRUCK] = 0.0, truck_iou
    assert corrupted['iou_per_class']['car'] == 0.0
    assert corrupted['iou_per_class']['truck'] == pytest.approx(truck_iou, rel=1e-6)
    assert corrupted['miou'] == pytest.approx(sum(expected.values()) / len(present), rel=1e-6)


def test_a_stray_label_file_is_refused(tmp_path):
    config = SyntheticNuScenesConfig(root=str(tmp_path / 'd'), version='v1.0-mini', num_scenes=2, samples_per_scene=2,
                                     sweeps_before_first=0, azimuth_steps=32, num_objects=10, with_occupancy=False)
    generate_nuscenes(config, progress=False)
    label_dir = tmp_path / 'd' / 'lidarseg' / 'v1.0-mini'
    shutil.copy(next(label_dir.iterdir()), label_dir / ('0' * 32 + '_lidarseg.bin'))
    with pytest.raises(AssertionError, match='label files'):  # what the devkit does with a stray file
        NuScenes(version='v1.0-mini', dataroot=str(tmp_path / 'd'), verbose=False)
    with pytest.raises(FileExistsError, match='0' * 32):
        generate_nuscenes(config, overwrite=True, progress=False)
