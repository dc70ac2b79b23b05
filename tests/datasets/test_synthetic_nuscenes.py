"""The synthetic nuScenes-format dataset, read back through nuscenes-devkit (tables, files, chains, labels,
annotations), plus the simulator / ray-caster API it is built on, determinism and the rerun policy."""
import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.common.loaders import load_gt
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from nuscenes.utils.splits import create_splits_scenes

from pcdet.datasets.synthetic import catalog
from pcdet.datasets.synthetic import nuscenes_schema as schema
from pcdet.datasets.synthetic.geometry import bev_rectangles_overlap, min_distance_points_to_rectangles
from pcdet.datasets.synthetic.lidar import LidarConfig, cast_scan
from pcdet.datasets.synthetic.nuscenes import main as cli_main
from pcdet.datasets.synthetic.nuscenes_lidarseg import load_point_labels
from pcdet.datasets.synthetic.nuscenes_writer import SyntheticNuScenesConfig, generate_nuscenes, plan_scenes
from pcdet.datasets.synthetic.scene import SceneConfig, simulate_scene

TABLES = ('scene', 'sample', 'sample_data', 'ego_pose', 'calibrated_sensor', 'sensor', 'log', 'map', 'category',
          'attribute', 'visibility', 'instance', 'sample_annotation')
TINY = dict(version='v1.0-mini', num_scenes=2, samples_per_scene=2, sweeps_before_first=1, azimuth_steps=64,
            num_objects=10)


@pytest.fixture(scope='module')
def nusc(synthetic_nuscenes_root, synthetic_nuscenes_version):
    return NuScenes(version=synthetic_nuscenes_version, dataroot=str(synthetic_nuscenes_root), verbose=False)


def read_points(nusc, sd_token):
    return np.fromfile(nusc.get_sample_data_path(sd_token), dtype=np.float32).reshape(-1, 5)


def key_frame_tokens(nusc, count=None):
    tokens = [sample['data']['LIDAR_TOP'] for sample in nusc.sample]
    return tokens if count is None else tokens[::max(1, len(tokens) // count)]


def test_devkit_loads_all_tables_and_lidarseg(nusc, synthetic_nuscenes_root, synthetic_nuscenes_config):
    table_dir = Path(synthetic_nuscenes_root) / synthetic_nuscenes_config.version
    for table in TABLES + ('lidarseg',):
        assert (table_dir / f'{table}.json').is_file(), table
        assert len(getattr(nusc, table)) > 0, table
    assert len(nusc.scene) == 10 and len(nusc.sample) == 10 * synthetic_nuscenes_config.samples_per_scene
    assert len(nusc.lidarseg) == len(nusc.sample)
    assert [c['index'] for c in sorted(nusc.category, key=lambda c: c['index'])] == list(range(32))
    assert nusc.lidarseg_name2idx_mapping['flat.driveable_surface'] == 24
    assert nusc.lidarseg_name2idx_mapping['vehicle.car'] == 17


def test_official_scene_names(nusc):
    official = create_splits_scenes()
    names = {scene['name'] for scene in nusc.scene}
    assert names == set(official['mini_train']) | set(official['mini_val'])


def test_every_detection_class_has_points_in_train_and_val(nusc):
    official = create_splits_scenes()
    scene_name = {scene['token']: scene['name'] for scene in nusc.scene}
    seen = {'mini_train': set(), 'mini_val': set()}
    ignored = set()
    for ann in nusc.sample_annotation:
        if ann['num_lidar_pts'] == 0:
            continue
        name = scene_name[nusc.get('sample', ann['sample_token'])['scene_token']]
        split = 'mini_train' if name in official['mini_train'] else 'mini_val'
        detection_name = category_to_detection_name(ann['category_name'])
        (seen[split].add(detection_name) if detection_name else ignored.add(ann['category_name']))
    for split, classes in seen.items():
        assert classes == set(catalog.DETECTION_KINDS), (split, set(catalog.DETECTION_KINDS) - classes)
    assert ignored <= {'animal', 'movable_object.pushable_pullable'} and ignored


def test_sample_data_chains_sweeps_and_timestamps(nusc, synthetic_nuscenes_config, synthetic_nuscenes_root):
    for scene in nusc.scene:
        sample = nusc.get('sample', scene['first_sample_token'])
        sd = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
        chain = [sd]
        while chain[0]['prev']:
            chain.insert(0, nusc.get('sample_data', chain[0]['prev']))
        assert len(chain) - 1 == synthetic_nuscenes_config.sweeps_before_first
        while chain[-1]['next']:
            chain.append(nusc.get('sample_data', chain[-1]['next']))
        key_positions = [i for i, record in enumerate(chain) if record['is_key_frame']]
        assert len(key_positions) == scene['nbr_samples'] == synthetic_nuscenes_config.samples_per_scene
        assert np.all(np.diff(key_positions) == 10)  # 9 sweeps between consecutive key frames
        assert np.all(np.diff([record['timestamp'] for record in chain]) == 50_000)  # microseconds, 20 Hz
        for record in chain:
            assert record['fileformat'] == 'pcd' and record['channel'] == 'LIDAR_TOP'
            folder = 'samples' if record['is_key_frame'] else 'sweeps'
            assert record['filename'].startswith(f'{folder}/LIDAR_TOP/')
            assert (Path(synthetic_nuscenes_root) / record['filename']).is_file()
            assert nusc.get('ego_pose', record['ego_pose_token'])['timestamp'] == record['timestamp']
            if record['is_key_frame']:
                assert nusc.get('sample', record['sample_token'])['timestamp'] == record['timestamp']


def test_scans_have_five_float32_columns_and_rings(nusc):
    sample = nusc.sample[0]
    for token in (sample['data']['LIDAR_TOP'], nusc.get('sample_data', sample['data']['LIDAR_TOP'])['prev']):
        raw = np.fromfile(nusc.get_sample_data_path(token), dtype=np.float32)
        assert raw.size % 5 == 0 and raw.size > 0
        points = raw.reshape(-1, 5)
        ring = points[:, 4]
        assert np.all(ring == np.round(ring)) and ring.min() >= 0 and ring.max() <= 31
        assert np.all((points[:, 3] >= 0) & (points[:, 3] <= 255))
        assert np.linalg.norm(points[:, :3], axis=1).max() <= 70.1
        assert LidarPointCloud.from_file(nusc.get_sample_data_path(token)).points.shape == (4, len(points))


def test_lidar_top_is_rotated_like_nuscenes(nusc):
    from pyquaternion import Quaternion
    calibration = nusc.calibrated_sensor[0]
    rotation = Quaternion(calibration['rotation']).rotation_matrix
    assert np.allclose(rotation @ [1, 0, 0], [0, -1, 0], atol=0.05)  # sensor x = ego right
    assert np.allclose(calibration['translation'], [0.94, 0.0, 1.84], atol=0.05)
    first, last = (nusc.get('ego_pose', nusc.get('sample', s)['data']['LIDAR_TOP'])
                   for s in (nusc.scene[0]['first_sample_token'], nusc.scene[0]['last_sample_token']))
    assert np.hypot(*np.subtract(first['translation'][:2], last['translation'][:2])) > 1.0
    yaw = [Quaternion(pose['rotation']).yaw_pitch_roll[0] for pose in (first, last)]
    assert abs(yaw[0] - yaw[1]) > 0.01


def test_num_lidar_pts_equals_devkit_recount_and_object_points_lie_in_boxes(nusc):
    category_of_index = nusc.lidarseg_idx2name_mapping
    for sd_token in key_frame_tokens(nusc, count=8):
        points = read_points(nusc, sd_token)
        labels = load_point_labels(nusc.dataroot, sd_token, nusc.version)
        _, boxes, _ = nusc.get_sample_data(sd_token)  # boxes in the LIDAR_TOP frame
        covered = np.zeros(len(points), dtype=bool)
        for box in boxes:
            inside = points_in_box(box, points[:, :3].T)
            ann = nusc.get('sample_annotation', box.token)
            assert inside.sum() == ann['num_lidar_pts'], box.name
            assert np.all(labels[inside] == nusc.lidarseg_name2idx_mapping[box.name])
            covered |= inside
        object_points = np.array([category_of_index[i] not in schema.SURFACE_CATEGORY.values() for i in labels])
        assert np.all(covered[object_points]), 'object returns outside every annotation box'


def test_box_velocity_matches_simulation(nusc, synthetic_nuscenes_config):
    plans = {plan.name: plan for plan in plan_scenes(synthetic_nuscenes_config)}
    checked_moving = 0
    for scene_record in nusc.scene[:4]:
        plan = plans[scene_record['name']]
        scene = simulate_scene(synthetic_nuscenes_config.scene_config(),
                               np.random.default_rng([synthetic_nuscenes_config.seed, plan.index, 0]))
        object_of_instance = {plan.token('instance', m): m for m in range(scene.num_objects)}
        for inst in nusc.instance:
            if inst['token'] not in object_of_instance:
                continue
            object_id = object_of_instance[inst['token']]
            ann = nusc.get('sample_annotation', inst['first_annotation_token'])
            velocity = nusc.box_velocity(ann['token'])[:2]
            assert np.allclose(velocity, scene.objects.velocities[object_id], atol=1e-3)
            sample_t = (nusc.get('sample', ann['sample_token'])['timestamp'] - plan.first_timestamp_us) * 1e-6
            assert np.allclose(ann['translation'], scene.object_boxes_at(sample_t)[object_id, :3], atol=1e-6)
            checked_moving += scene.objects.motion_states[object_id] == 'moving'
    assert checked_moving >= 5


def test_attributes_visibility_and_categories(nusc):
    for ann in nusc.sample_annotation:
        attributes = [nusc.get('attribute', token)['name'] for token in ann['attribute_tokens']]
        detection_name = category_to_detection_name(ann['category_name'])
        if detection_name in ('barrier', 'traffic_cone', None):
            assert attributes == []
        elif detection_name in ('bicycle', 'motorcycle'):
            assert attributes[0].startswith('cycle.')
        elif detection_name == 'pedestrian':
            assert attributes[0] in ('pedestrian.moving', 'pedestrian.standing')
        else:
            assert attributes[0] in ('vehicle.moving', 'vehicle.stopped', 'vehicle.parked')
        assert ann['visibility_token'] in {'1', '2', '3', '4'} and ann['num_radar_pts'] == 0
    assert any(ann['num_lidar_pts'] == 0 for ann in nusc.sample_annotation)  # kept, as in nuScenes


def test_lidarseg_labels_for_key_frames_and_sweeps(nusc):
    record = nusc.lidarseg[0]
    labels = np.fromfile(Path(nusc.dataroot) / record['filename'], dtype=np.uint8)
    assert len(labels) == len(read_points(nusc, record['sample_data_token']))
    assert {24, 28} <= set(np.unique(labels).tolist())  # road and man-made (walls / poles) at least
    sweep_token = nusc.get('sample_data', record['sample_data_token'])['prev']
    sweep_labels = load_point_labels(nusc.dataroot, sweep_token)
    assert sweep_labels.dtype == np.uint8 and len(sweep_labels) == len(read_points(nusc, sweep_token))
    with pytest.raises(FileNotFoundError):
        load_point_labels(nusc.dataroot, 'f' * 32)


def test_detection_eval_loads_mini_val_gt(nusc):
    gt = load_gt(nusc, 'mini_val', DetectionBox, verbose=False)
    assert len(gt.sample_tokens) == 2 * len(nusc.sample) // len(nusc.scene)
    names = {box.detection_name for token in gt.sample_tokens for box in gt[token]}
    assert names == set(catalog.DETECTION_KINDS)


def test_same_seed_same_bytes_and_rerun_policy(tmp_path):
    def tree(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob('*')) if p.is_file()}
    first = SyntheticNuScenesConfig(root=str(tmp_path / 'a'), seed=3, **TINY)
    assert not generate_nuscenes(first, progress=False)['skipped']
    assert generate_nuscenes(SyntheticNuScenesConfig(**{**first.__dict__, 'root': str(tmp_path / 'b')}),
                             progress=False, workers=2)['skipped'] is False
    reference = tree(tmp_path / 'a')
    assert reference == tree(tmp_path / 'b')
    official = create_splits_scenes()
    assert json.loads(reference['v1.0-mini/splits.json']) == {'train': official['mini_train'][:1],
                                                             'val': official['mini_val'][:1]}
    other_seed = SyntheticNuScenesConfig(**{**first.__dict__, 'root': str(tmp_path / 'c'), 'seed': 4})
    generate_nuscenes(other_seed, progress=False)
    other = tree(tmp_path / 'c')
    assert sorted(k for k in other if k.endswith('.pcd.bin')) == sorted(k for k in reference if k.endswith('.pcd.bin'))
    assert all(other[k] != reference[k] for k in reference if k.endswith('.pcd.bin'))

    assert generate_nuscenes(first, progress=False)['skipped']  # identical complete dataset: skipped
    assert not generate_nuscenes(first, overwrite=True, progress=False)['skipped']
    assert tree(tmp_path / 'a') == reference
    fewer = SyntheticNuScenesConfig(**{**first.__dict__, 'samples_per_scene': 3, 'sweeps_before_first': 0})
    generate_nuscenes(fewer, progress=False)
    nusc = NuScenes(version='v1.0-mini', dataroot=str(tmp_path / 'a'), verbose=False)  # no stale label files
    on_disk = {p.relative_to(tmp_path / 'a').as_posix() for p in (tmp_path / 'a').rglob('*.pcd.bin')}
    assert on_disk == {record['filename'] for record in nusc.sample_data}


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match='unsupported nuScenes version'):
        generate_nuscenes(SyntheticNuScenesConfig(root=str(tmp_path), version='v2.0-mini'), progress=False)
    with pytest.raises(ValueError, match='num_scenes'):
        generate_nuscenes(SyntheticNuScenesConfig(root=str(tmp_path), num_scenes=11), progress=False)
    assert cli_main(['--root', str(tmp_path), '--version', 'v1.0-test', '--quiet']) == 2
    assert 'unsupported nuScenes version' in capsys.readouterr().err
    foreign = tmp_path / 'real' / 'v1.0-mini'
    foreign.mkdir(parents=True)
    (foreign / 'scene.json').write_text('[]')
    with pytest.raises(FileExistsError, match='not written by the synthetic generator'):
        generate_nuscenes(SyntheticNuScenesConfig(root=str(tmp_path / 'real'), **TINY), progress=False)


def test_simulated_objects_never_overlap_each_other_or_the_ego_path():
    config = SceneConfig(t_start=-0.45, t_end=4.5, num_objects=40)
    scene = simulate_scene(config, np.random.default_rng(7))
    assert set(catalog.DETECTION_KINDS) <= set(scene.class_names)
    x, y, _ = scene.trajectory.pose2d_at(np.linspace(config.t_start, config.t_end, 200))
    path = np.stack([x, y], axis=1)
    for t in config.check_times()[::10]:
        boxes = scene.object_boxes_at(t)
        rects = boxes[:, [0, 1, 3, 4, 6]]
        assert min_distance_points_to_rectangles(path, rects).min() >= config.ego_clearance - 1e-6
        first, second = np.triu_indices(len(rects), k=1)
        assert not bev_rectangles_overlap(rects[first], rects[second]).any()


def test_cast_scan_points_hit_their_objects():
    config = SceneConfig(t_start=0.0, t_end=1.0, num_objects=20)
    scene = simulate_scene(config, np.random.default_rng(1))
    lidar = LidarConfig(azimuth_steps=512)
    sensor_pose = scene.ego_pose_at(0.5)
    sensor_pose[2, 3] = 1.8
    scan = cast_scan(scene, 0.5, sensor_pose, lidar, np.random.default_rng(0))
    assert scan.points.dtype == np.float32 and scan.points.shape[1] == 4
    assert scan.ring.max() <= lidar.num_beams - 1
    assert np.array_equal(np.bincount(scan.hit_object_id[scan.hit_object_id >= 0], minlength=scene.num_objects),
                          scan.object_rays_first_hit)
    boxes = scene.object_boxes_at(0.5)
    global_xyz = scan.points[:, :3].astype(np.float64) @ sensor_pose[:3, :3].T + sensor_pose[:3, 3]
    for object_id in np.unique(scan.hit_object_id[scan.hit_object_id >= 0]):
        box = boxes[object_id]
        offset = global_xyz[scan.hit_object_id == object_id] - box[:3]
        cos, sin = np.cos(box[6]), np.sin(box[6])
        local = np.stack([offset[:, 0] * cos + offset[:, 1] * sin, -offset[:, 0] * sin + offset[:, 1] * cos,
                          offset[:, 2]], axis=1)
        assert np.all(np.abs(local) <= box[3:6] / 2 + 1e-4)
    labels = set(np.unique(scan.semantic_label).tolist())
    assert catalog.semantic_index('road') in labels
    noise_free = [cast_scan(scene, 0.5, sensor_pose, lidar) for _ in range(2)]
    assert np.array_equal(noise_free[0].points, noise_free[1].points)
    assert np.array_equal(noise_free[0].hit_object_id, scan.hit_object_id)  # noise never changes what is hit
