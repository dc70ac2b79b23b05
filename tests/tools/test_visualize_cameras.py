"""tools/visualize_cameras.py: tiles where the rig sees, points drawn at their pixel with the near one on top, and the
CLI on a generated dataset with cameras."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcdet.datasets.nuscenes.cameras import CameraView
from pcdet.datasets.nuscenes.nuscenes_utils import create_nuscenes_info
from pcdet.datasets.synthetic.nuscenes_writer import SyntheticNuScenesConfig, generate_nuscenes

REPO_ROOT = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH = 6, 8
K = np.array([[4.0, 0.0, 3.0], [0.0, 4.0, 2.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope='module')
def tool():
    spec = importlib.util.spec_from_file_location('visualize_cameras', REPO_ROOT / 'tools' / 'visualize_cameras.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def camera(name, yaw, grey):
    """A camera at the LiDAR origin looking along yaw (0 = +x): camera x right, y down, z forward."""
    forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    lidar_to_camera = np.eye(4)
    lidar_to_camera[:3, :3] = np.stack([right, [0.0, 0.0, -1.0], forward])
    image = np.full((HEIGHT, WIDTH, 3), grey, dtype=np.uint8)
    return CameraView(name, Path(f'{name}.jpg'), image, K, lidar_to_camera)


def test_tiles_follow_the_rig_and_points_land_on_their_pixel(tool):
    views = [camera('CAM_FRONT', 0.0, 50), camera('CAM_BACK', np.pi, 90)]
    # pixel (u, v) = (5, 3) of CAM_FRONT: a ray through K^-1 [5, 3, 1]; two points on it, 10 m and 30 m deep
    ray = np.array([(5 - 3) / 4.0, (3 - 2) / 4.0, 1.0])  # camera frame (x right, y down, z forward)
    to_lidar = lambda p: np.array([p[2], -p[0], -p[1]])  # noqa: E731  camera -> LiDAR for the front camera
    xyz = np.stack([to_lidar(ray * 30.0), to_lidar(ray * 10.0), [-20.0, 0.0, 0.0]])
    mosaic = tool.camera_mosaic(views, xyz)
    assert mosaic.shape == (2 * HEIGHT, 3 * WIDTH, 3)
    front = mosaic[0:HEIGHT, WIDTH:2 * WIDTH]
    back = mosaic[HEIGHT:, WIDTH:2 * WIDTH]
    near = tool.depth_colours(np.array([10.0]))[0]
    for row, col in ((3, 5), (3, 6), (4, 5), (4, 6)):  # the 2x2 dot, nearest point on top
        np.testing.assert_array_equal(front[row, col], near)
    untouched = np.ones((HEIGHT, WIDTH), dtype=bool)
    untouched[3:5, 5:7] = False
    assert (front[untouched] == 50).all()
    # the point 20 m behind the LiDAR is at the centre of CAM_BACK: pixel (3, 2)
    np.testing.assert_array_equal(back[2, 3], tool.depth_colours(np.array([20.0]))[0])
    assert (mosaic[:, :WIDTH] == 0).all() and (mosaic[:, 2 * WIDTH:] == 0).all()  # no side cameras: black
    assert not np.array_equal(near, tool.depth_colours(np.array([30.0]))[0])


def test_cli_draws_a_generated_frame(tool, tmp_path):
    config = SyntheticNuScenesConfig(root=str(tmp_path / 'v1.0-mini'), num_scenes=2, samples_per_scene=2,
                                     sweeps_before_first=0, num_objects=5, azimuth_steps=64, with_occupancy=False,
                                     with_cameras=True, camera_width=64, camera_height=36)
    generate_nuscenes(config, progress=False)
    create_nuscenes_info('v1.0-mini', config.root, max_sweeps=2, with_cam=True)
    out = tmp_path / 'cameras.png'
    tool.main(['--data_path', str(tmp_path), '--info_file', 'nuscenes_infos_2sweeps_train.pkl', '--out', str(out)])
    picture = np.asarray(Image.open(out))
    assert picture.shape == (2 * 36, 3 * 64, 3)
    plain = tmp_path / 'plain.png'
    tool.main(['--data_path', str(tmp_path), '--info_file', 'nuscenes_infos_2sweeps_train.pkl', '--out', str(plain),
               '--no_points'])
    assert (np.asarray(Image.open(plain)) != picture).any()  # the points were drawn
    with pytest.raises(SystemExit, match='--index 99'):
        tool.main(['--data_path', str(tmp_path), '--info_file', 'nuscenes_infos_2sweeps_train.pkl', '--out',
                   str(out), '--index', '99'])
