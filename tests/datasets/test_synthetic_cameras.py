"""Synthetic nuScenes cameras: the renderer against a brute-force reference, the devkit round trip (records,
JPEGs, LiDAR-to-image projection onto the rendered surfaces) and `create_nuscenes_info(with_cam=True)` against
the devkit's transforms."""
import pickle
from functools import reduce
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes
from PIL import Image
from pyquaternion import Quaternion

from pcdet.datasets.nuscenes.nuscenes_dataset import info_problem
from pcdet.datasets.nuscenes.nuscenes_utils import CAMERA_CHANNELS, create_nuscenes_info
from pcdet.datasets.synthetic import catalog, nuscenes_cameras, nuscenes_records
from pcdet.datasets.synthetic import nuscenes_schema as schema
from pcdet.datasets.synthetic.camera import (
    CAMERA_AXES_IN_EGO,
    NO_SEMANTIC,
    NUSCENES_RIG,
    PinholeCamera,
    render_camera,
    trigger_offset_us,
)
from pcdet.datasets.synthetic.geometry import pose_matrix
from pcdet.datasets.synthetic.nuscenes_writer import SyntheticNuScenesConfig, generate_nuscenes, plan_scenes
from pcdet.datasets.synthetic.scene import simulate_scene
from pcdet.datasets.synthetic.scene_types import Primitives

TINY = dict(version='v1.0-mini', num_scenes=2, samples_per_scene=2, sweeps_before_first=0, num_objects=10,
            with_occupancy=False, with_cameras=True, camera_width=192, camera_height=108)
CLUTTER_LIDARSEG = [schema.lidarseg_index(name) for name in ('static.manmade', 'static.vegetation')]
PROJECTION_TOLERANCE_PX = 0.02  # far below a pixel; the devkit's float32 point cloud limits it (see below)


@pytest.fixture(scope='module')
def exact_dataset(tmp_path_factory):
    """Cameras fire at the LiDAR timestamps (no offsets): projections must be exact."""
    config = SyntheticNuScenesConfig(root=str(tmp_path_factory.mktemp('cams_exact')), azimuth_steps=256,
                                     camera_time_offsets=False, **TINY)
    generate_nuscenes(config, progress=False)
    return config, NuScenes(version=config.version, dataroot=config.root, verbose=False)


@pytest.fixture(scope='module')
def offset_dataset(tmp_path_factory):
    """Real camera timing: the ego moves between the LiDAR and each camera timestamp."""
    config = SyntheticNuScenesConfig(root=str(tmp_path_factory.mktemp('cams_offset')), azimuth_steps=128, **TINY)
    summary = generate_nuscenes(config, progress=False)
    assert summary['camera_seconds_per_key_frame'] > 0
    return config, NuScenes(version=config.version, dataroot=config.root, verbose=False)


def test_devkit_loads_cameras_records_and_jpegs(offset_dataset):
    config, nusc = offset_dataset
    assert {s['channel']: s['modality'] for s in nusc.sensor} == {'LIDAR_TOP': 'lidar',
                                                                   **{c: 'camera' for c in CAMERA_CHANNELS}}
    plans = {plan.token('scene'): plan for plan in plan_scenes(config)}
    for sample in nusc.sample:
        assert set(sample['data']) == {'LIDAR_TOP', *CAMERA_CHANNELS}
        plan = plans[sample['scene_token']]
        scene = simulate_scene(config.scene_config(), np.random.default_rng([config.seed, plan.index, 0]))
        for mount in NUSCENES_RIG:
            record = nusc.get('sample_data', sample['data'][mount.channel])
            assert record['fileformat'] == 'jpg' and record['is_key_frame']
            assert record['timestamp'] - sample['timestamp'] == trigger_offset_us(mount) < 0
            path, _, intrinsic = nusc.get_sample_data(record['token'])
            assert Path(path) == Path(config.root) / record['filename']
            assert record['filename'].startswith(f'samples/{mount.channel}/{plan.logfile}__{mount.channel}__')
            with Image.open(path) as image:
                assert image.format == 'JPEG' and image.size == (config.camera_width, config.camera_height)
            assert intrinsic.shape == (3, 3) and intrinsic[0, 2] < config.camera_width
            # nuScenes camera frame: z (optical axis) along the mount's yaw, x to the right of it, y down
            rotation = Quaternion(nusc.get('calibrated_sensor', record['calibrated_sensor_token'])['rotation'])
            axis_x, axis_y, axis_z = rotation.rotation_matrix.T
            assert np.rad2deg(abs(np.angle(np.exp(1j * (np.arctan2(axis_z[1], axis_z[0])
                                                        - np.deg2rad(mount.yaw_deg)))))) < 1.0
            assert np.cross(axis_z, axis_x)[2] < -0.99 and axis_y[2] < -0.99  # x right of z, y down
            # the camera's own ego pose, at its own timestamp
            pose = nusc.get('ego_pose', record['ego_pose_token'])
            t = (record['timestamp'] - plan.first_timestamp_us) * 1e-6
            np.testing.assert_allclose(pose['translation'], scene.ego_pose_at(t)[:3, 3], atol=1e-9)
            neighbour = record['next'] or record['prev']
            assert nusc.get('sample_data', neighbour)['channel'] == mount.channel
    manifest_files = set(nuscenes_writer_files(config))
    jpegs = {p.relative_to(config.root).as_posix() for p in Path(config.root).rglob('*.jpg')}
    assert jpegs and jpegs <= manifest_files and len(jpegs) == 6 * len(nusc.sample)


def load_infos(path):
    with open(path, 'rb') as file:
        return pickle.load(file)


def nuscenes_writer_files(config):
    from pcdet.datasets.synthetic.nuscenes_writer import planned_files
    return planned_files(config, plan_scenes(config))


def generator_camera_model(config, plan, channel, t):
    """(scene, global_from_camera, camera) from the generator's own scene and calibration, not from the tables."""
    key = (config.root, plan.index)
    if key not in _SCENES:
        _SCENES[key] = simulate_scene(config.scene_config(), np.random.default_rng([config.seed, plan.index, 0]))
    scene = _SCENES[key]
    calibration = nuscenes_cameras.camera_calibration_records(
        plan, np.random.default_rng([config.seed, plan.index, nuscenes_cameras.CALIBRATION_STREAM]),
        config.camera_width, config.camera_height)[channel]
    camera = PinholeCamera(config.camera_width, config.camera_height,
                           tuple(tuple(row) for row in calibration['camera_intrinsic']))
    return scene, scene.ego_pose_at(t) @ nuscenes_records.ego_from_sensor(calibration), camera


_SCENES = {}


def test_lidar_points_project_onto_their_rendered_surface(exact_dataset):
    """Devkit projection (map_pointcloud_to_image) = the generator's camera model, and the rendered depth at that
    pixel is the point's depth wherever the 2x2 pixels around it see the point's surface."""
    config, nusc = exact_dataset
    plans = {plan.token('scene'): plan for plan in plan_scenes(config)}
    checked = projected = 0
    for sample in nusc.sample:
        plan = plans[sample['scene_token']]
        lidar = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
        t = (lidar['timestamp'] - plan.first_timestamp_us) * 1e-6
        lidar_calibration = nuscenes_records.calibrated_sensor_record(
            plan, np.random.default_rng([config.seed, plan.index, 1]), tilt=config.lidar_tilt)
        raw = np.fromfile(nusc.get_sample_data_path(lidar['token']), dtype=np.float32).reshape(-1, 5)
        labels = np.fromfile(Path(config.root) / nusc.get('lidarseg', lidar['token'])['filename'], dtype=np.uint8)
        for channel in CAMERA_CHANNELS:
            cam_token = sample['data'][channel]
            assert nusc.get('sample_data', cam_token)['timestamp'] == lidar['timestamp']
            devkit_uv, devkit_depth, image = nusc.explorer.map_pointcloud_to_image(lidar['token'], cam_token)
            scene, global_from_camera, camera = generator_camera_model(config, plan, channel, t)
            global_from_lidar = scene.ego_pose_at(t) @ nuscenes_records.ego_from_sensor(lidar_calibration)
            camera_from_lidar = np.linalg.inv(global_from_camera) @ global_from_lidar
            points = raw[:, :3].astype(np.float64) @ camera_from_lidar[:3, :3].T + camera_from_lidar[:3, 3]
            uvw = points @ camera.matrix.T
            u, v, z = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2], points[:, 2]
            keep = (z > 1.0) & (u > 1) & (u < camera.width - 1) & (v > 1) & (v < camera.height - 1)
            assert keep.sum() == devkit_uv.shape[1]
            # the devkit moves the float32 cloud through the global frame (coordinates ~1000 m) in float32: ~1e-4 m
            assert np.abs(devkit_uv[:2] - np.stack([u[keep], v[keep]])).max() < PROJECTION_TOLERANCE_PX
            np.testing.assert_allclose(devkit_depth, z[keep], atol=1e-3)

            render = render_camera(scene, t, global_from_camera, camera)
            assert np.abs(np.asarray(image, dtype=np.int16) - render.rgb).mean() < 4  # the JPEG is this render
            lidarseg = render_lidarseg(scene, render)
            cols, rows = np.floor(u[keep]).astype(int), np.floor(v[keep]).astype(int)
            block_depth = np.stack([render.depth[rows + dr, cols + dc] for dr in (0, 1) for dc in (0, 1)])
            block_label = np.stack([lidarseg[rows + dr, cols + dc] for dr in (0, 1) for dc in (0, 1)])
            block_object = np.stack([render.object_id[rows + dr, cols + dc] for dr in (0, 1) for dc in (0, 1)])
            # unoccluded: the 2x2 pixels see the point's own surface. Clutter is left out: a pole in front of a wall
            # has the wall's label and object id (-1), so a label match would not prove the point is visible.
            same_surface = ((block_label == labels[keep]).all(0) & (block_object == block_object[0]).all(0)
                            & ~np.isin(labels[keep], CLUTTER_LIDARSEG))
            # 1/z is affine across a plane, so its depth at (u, v) lies between the 4 pixel-centre depths; slack
            # for the LiDAR range noise and box edges inside the 2x2 block
            slack = 0.03 + 0.02 + 2e-3 * z[keep]
            inside = ((z[keep] >= block_depth.min(0) - slack) & (z[keep] <= block_depth.max(0) + slack))
            assert inside[same_surface].all(), np.abs(z[keep] - block_depth.mean(0))[same_surface & ~inside]
            checked += same_surface.sum()
            projected += keep.sum()
    assert projected > 1000 and checked > 0.6 * projected


def render_lidarseg(scene, render):
    """(H, W) lidarseg index of each rendered pixel (255 for sky)."""
    object_lidarseg = np.array([schema.lidarseg_index(schema.category_name(kind, subtype))
                                for kind, subtype in zip(scene.objects.kinds, scene.objects.subtypes)], dtype=np.int64)
    surface = schema.surface_lidarseg_lut().astype(np.int64)
    labels = np.where(render.object_id >= 0, object_lidarseg[np.maximum(render.object_id, 0)],
                      surface[np.minimum(render.semantic, len(surface) - 1)])
    return np.where(render.semantic == NO_SEMANTIC, 255, labels)


def upstream_sensor2lidar(nusc, lidar_token, cam_token):
    """OpenPCDet's obtain_sensor2top, literally (row-vector form): returns (R, T) with p_lidar = R @ p_cam + T."""
    lidar = nusc.get('sample_data', lidar_token)
    l2e_r_mat = Quaternion(nusc.get('calibrated_sensor', lidar['calibrated_sensor_token'])['rotation']).rotation_matrix
    l2e_t = np.array(nusc.get('calibrated_sensor', lidar['calibrated_sensor_token'])['translation'])
    e2g_r_mat = Quaternion(nusc.get('ego_pose', lidar['ego_pose_token'])['rotation']).rotation_matrix
    e2g_t = np.array(nusc.get('ego_pose', lidar['ego_pose_token'])['translation'])
    cam = nusc.get('sample_data', cam_token)
    cs = nusc.get('calibrated_sensor', cam['calibrated_sensor_token'])
    pose = nusc.get('ego_pose', cam['ego_pose_token'])
    l2e_r_s_mat, e2g_r_s_mat = Quaternion(cs['rotation']).rotation_matrix, Quaternion(pose['rotation']).rotation_matrix
    back = np.linalg.inv(e2g_r_mat).T @ np.linalg.inv(l2e_r_mat).T
    rotation = (l2e_r_s_mat.T @ e2g_r_s_mat.T) @ back
    translation = (np.array(cs['translation']) @ e2g_r_s_mat.T + np.array(pose['translation'])) @ back
    translation -= e2g_t @ back + l2e_t @ np.linalg.inv(l2e_r_mat).T
    return rotation.T, translation


def test_infos_with_cam_match_the_devkit_transforms(offset_dataset, tmp_path):
    config, nusc = offset_dataset
    paths = create_nuscenes_info(config.version, config.root, tmp_path, max_sweeps=2, with_cam=True)
    infos = load_infos(paths['train']) + load_infos(paths['val'])
    assert len(infos) == len(nusc.sample)
    moved = 0.0
    for info in infos:
        assert info_problem(info, require_gt=True, min_sweeps=1) is None
        sample = nusc.get('sample', info['token'])
        assert list(info['cams']) == list(CAMERA_CHANNELS)
        for channel, cam in info['cams'].items():
            record = nusc.get('sample_data', sample['data'][channel])
            rotation, translation = upstream_sensor2lidar(nusc, sample['data']['LIDAR_TOP'], record['token'])
            np.testing.assert_allclose(cam['sensor2lidar_rotation'], rotation, atol=1e-4)
            np.testing.assert_allclose(cam['sensor2lidar_translation'], translation, atol=1e-4)
            # the same as a 4x4 chain from the tables: lidar <- ego(t_lidar) <- global <- ego(t_cam) <- camera
            lidar = nusc.get('sample_data', sample['data']['LIDAR_TOP'])
            chain = reduce(np.dot, [np.linalg.inv(table_pose(nusc.get('calibrated_sensor',
                                                                      lidar['calibrated_sensor_token']))),
                                    np.linalg.inv(table_pose(nusc.get('ego_pose', lidar['ego_pose_token']))),
                                    table_pose(nusc.get('ego_pose', record['ego_pose_token'])),
                                    table_pose(nusc.get('calibrated_sensor', record['calibrated_sensor_token']))])
            np.testing.assert_allclose(chain[:3, :3], rotation, atol=1e-9)
            np.testing.assert_allclose(chain[:3, 3], translation, atol=1e-6)
            _, _, intrinsic = nusc.get_sample_data(record['token'])
            np.testing.assert_allclose(cam['camera_intrinsics'], intrinsic)
            assert cam['data_path'] == record['filename'] and cam['type'] == channel
            assert cam['image_shape'] == (config.camera_height, config.camera_width)
            assert cam['timestamp'] == record['timestamp'] and cam['sample_data_token'] == record['token']
            # the ego-motion term is real here: the same chain at the LiDAR's ego pose differs
            static = static_sensor2lidar(nusc, lidar, record)
            moved = max(moved, float(np.abs(static[:3, 3] - cam['sensor2lidar_translation']).max()))
            check_projection(nusc, info, channel, cam)
    assert moved > 0.05


def table_pose(record):
    from nuscenes.utils.geometry_utils import transform_matrix
    return transform_matrix(record['translation'], Quaternion(record['rotation']))


def static_sensor2lidar(nusc, lidar, camera_record):
    """lidar <- camera ignoring the ego motion (both through the LiDAR timestamp's ego pose)."""
    lidar_from_ego = np.linalg.inv(table_pose(nusc.get('calibrated_sensor', lidar['calibrated_sensor_token'])))
    return lidar_from_ego @ table_pose(nusc.get('calibrated_sensor', camera_record['calibrated_sensor_token']))


def check_projection(nusc, info, channel, cam):
    """LiDAR points projected with the info's (R, T, K) land where the devkit's map_pointcloud_to_image puts them."""
    sample = nusc.get('sample', info['token'])
    devkit_uv, devkit_depth, _ = nusc.explorer.map_pointcloud_to_image(sample['data']['LIDAR_TOP'],
                                                                       sample['data'][channel])
    points = np.fromfile(nusc.get_sample_data_path(sample['data']['LIDAR_TOP']), np.float32).reshape(-1, 5)[:, :3]
    rotation, translation = cam['sensor2lidar_rotation'], cam['sensor2lidar_translation']
    camera_points = (points.astype(np.float64) - translation) @ rotation  # R^T (p - T), row vectors
    uvw = camera_points @ cam['camera_intrinsics'].T
    u, v, z = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2], camera_points[:, 2]
    height, width = cam['image_shape']
    keep = (z > 1.0) & (u > 1) & (u < width - 1) & (v > 1) & (v < height - 1)
    assert keep.sum() == devkit_uv.shape[1]
    assert np.abs(devkit_uv[:2] - np.stack([u[keep], v[keep]])).max() < PROJECTION_TOLERANCE_PX
    np.testing.assert_allclose(devkit_depth, z[keep], atol=1e-3)


def test_infos_without_cam_have_no_cams_and_bad_cams_are_reported(offset_dataset, tmp_path):
    config, _ = offset_dataset
    paths = create_nuscenes_info(config.version, config.root, tmp_path, max_sweeps=2)
    info = load_infos(paths['train'])[0]
    assert 'cams' not in info and info_problem(info, require_gt=True, min_sweeps=1) is None
    with_cam = create_nuscenes_info(config.version, config.root, tmp_path / 'cam', max_sweeps=2, with_cam=True)
    info = load_infos(with_cam['train'])[0]
    info['cams']['CAM_BACK']['camera_intrinsics'] = np.eye(4)
    assert "cams['CAM_BACK']['camera_intrinsics'] has shape (4, 4)" in info_problem(info, True, 1)
    del info['cams']['CAM_FRONT']['sensor2lidar_rotation']
    assert 'missing keys' in info_problem(info, True, 1)


def test_generation_is_deterministic_and_leaves_the_lidar_data_unchanged(tmp_path):
    def tree(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob('*')) if p.is_file()}
    # with occupancy too: its infos must pick the LIDAR_TOP key frame of a sample that also has camera key frames
    args = {**TINY, 'azimuth_steps': 64, 'camera_width': 64, 'camera_height': 36, 'seed': 5, 'with_occupancy': True}
    first = SyntheticNuScenesConfig(root=str(tmp_path / 'a'), **args)
    generate_nuscenes(first, progress=False)
    generate_nuscenes(SyntheticNuScenesConfig(root=str(tmp_path / 'b'), **args), progress=False, workers=2)
    reference = tree(tmp_path / 'a')
    assert reference == tree(tmp_path / 'b')
    assert sum(name.endswith('.jpg') for name in reference) == 6 * 2 * 2
    occ_infos = pickle.loads(reference['nuscenes_occ_infos_train.pkl'])['infos']
    assert occ_infos and all(info['lidar_path'].endswith('.pcd.bin') for info in occ_infos)
    no_cameras = SyntheticNuScenesConfig(root=str(tmp_path / 'c'), **{**args, 'with_cameras': False})
    assert not set(no_cameras.arguments()) & {'with_cameras', 'camera_width', 'camera_height', 'camera_time_offsets'}
    generate_nuscenes(no_cameras, progress=False)
    lidar_only = tree(tmp_path / 'c')
    assert {name for name in lidar_only if name.endswith('.bin')} == {name for name in reference
                                                                       if name.endswith('.bin')}
    assert all(lidar_only[name] == reference[name] for name in lidar_only if name.endswith('.bin'))
    with pytest.raises(ValueError, match='--with_cameras'):
        create_nuscenes_info(no_cameras.version, no_cameras.root, tmp_path / 'infos', max_sweeps=2, with_cam=True)


class _TinyScene:
    """One box (object 0), one ellipsoid and two boxes around / behind the camera (clutter), on road ground."""
    num_objects = 1

    def primitives_at(self, t):
        shapes = np.array([[8.0, 1.0, 1.0, 3.0, 2.0, 2.0, 0.3], [12.0, -2.0, 2.0, 3.0, 2.0, 2.5, 0.7],
                           [-5.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.0], [0.4, 1.0, 1.4, 1.5, 1.0, 1.0, 0.2]])
        return Primitives(shapes=shapes, is_ellipsoid=np.array([False, True, False, False]),
                          semantic=np.array([catalog.semantic_index(name) for name in ('car', 'vegetation',
                                                                                        'wall', 'pole')]),
                          object_id=np.array([0, -1, -1, -1]), reflectivity=np.full(4, 50.0))

    def ground_semantic(self, xy):
        return np.full(len(xy), catalog.semantic_index('road'), dtype=np.int64)


def brute_force_hit(origin, direction, primitives):
    """(parameter, primitive index or -1 for ground) of the nearest hit of one global ray, or (inf, -2)."""
    best = (-origin[2] / direction[2], -1) if direction[2] < 0 else (np.inf, -2)
    for index, (x, y, z, dx, dy, dz, yaw) in enumerate(primitives.shapes):
        c, s = np.cos(yaw), np.sin(yaw)
        to_local = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        o, d, half = to_local @ (origin - [x, y, z]), to_local @ direction, np.array([dx, dy, dz]) / 2
        if primitives.is_ellipsoid[index]:
            a, b, cc = np.sum((d / half) ** 2), 2 * np.sum(o * d / half ** 2), np.sum((o / half) ** 2) - 1
            disc = b * b - 4 * a * cc
            hit = (-b - np.sqrt(disc)) / (2 * a) if disc >= 0 else -1.0
        else:
            near, far = -np.inf, np.inf
            for axis in range(3):
                if abs(d[axis]) < 1e-15:
                    near, far = (near, far) if abs(o[axis]) <= half[axis] else (np.inf, -np.inf)
                    continue
                t1, t2 = sorted(((-half[axis] - o[axis]) / d[axis], (half[axis] - o[axis]) / d[axis]))
                near, far = max(near, t1), min(far, t2)
            hit = near if near <= far else -1.0
        if 0 < hit < best[0]:
            best = (hit, index)
    return best


def test_renderer_matches_a_brute_force_per_pixel_reference():
    scene = _TinyScene()
    camera = PinholeCamera(48, 32, ((30.0, 0.0, 23.5), (0.0, 30.0, 15.5), (0.0, 0.0, 1.0)))
    global_from_camera = pose_matrix(CAMERA_AXES_IN_EGO, [0.0, 0.0, 1.5])  # looking along global +x
    render = render_camera(scene, 0.0, global_from_camera, camera)
    primitives = scene.primitives_at(0.0)
    inverse_k = np.linalg.inv(camera.matrix)
    mismatched = 0
    for row in range(camera.height):
        for col in range(camera.width):
            ray = inverse_k @ [col, row, 1.0]
            depth, index = brute_force_hit(global_from_camera[:3, 3], global_from_camera[:3, :3] @ (ray / ray[2]),
                                           primitives)
            semantic = NO_SEMANTIC if index == -2 else (catalog.semantic_index('road') if index == -1
                                                        else primitives.semantic[index])
            object_id = primitives.object_id[index] if index >= 0 else -1
            if render.semantic[row, col] != semantic or render.object_id[row, col] != object_id:
                mismatched += 1
            elif np.isfinite(depth):
                assert render.depth[row, col] == pytest.approx(depth, rel=1e-9)
            else:
                assert not np.isfinite(render.depth[row, col])
    assert mismatched <= 2  # silhouette pixels may flip on rounding
    seen = set(np.unique(render.semantic))
    assert {catalog.semantic_index(name) for name in ('car', 'vegetation', 'pole', 'road')} <= seen
    assert NO_SEMANTIC in seen and catalog.semantic_index('wall') not in seen  # the wall is behind the camera
    assert render.rgb.shape == (32, 48, 3) and render.rgb.dtype == np.uint8
