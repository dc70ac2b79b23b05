"""Camera loading from `--with_cam` infos (errors name the file) and the image backbones of the image teacher
(built-in seeded network, local weights, torchvision / timm paths refused clearly when the package is missing)."""
import sys

import numpy as np
import pytest
import torch

from pcdet.config import ConfigError
from pcdet.datasets.nuscenes.cameras import CAMERA_CHANNELS, load_camera_views, project_points
from pcdet.datasets.teachers.image_backbones import ResNetTiny, build_image_backbone

from camera_fixtures import LOOK_FORWARD, cam_entry, intrinsics, points_on_rays, rotation_z, write_jpeg

WIDTH, HEIGHT = 40, 30


@pytest.fixture
def frame(tmp_path):
    """(dataroot, info) with two cameras (listed back first) and their JPEGs."""
    info = {'lidar_path': 'samples/LIDAR_TOP/frame.pcd.bin', 'cams': {}}
    rng = np.random.default_rng(0)
    for channel, yaw in (('CAM_BACK', np.pi), ('CAM_FRONT', 0.0)):
        relpath = f'samples/{channel}/frame__{channel}__1.jpg'
        write_jpeg(tmp_path / relpath, rng.integers(0, 255, (HEIGHT, WIDTH, 3)).astype(np.uint8))
        info['cams'][channel] = cam_entry(relpath, rotation_z(yaw) @ LOOK_FORWARD, [1.0, 0.0, 1.5],
                                          intrinsics(WIDTH, HEIGHT, 30.0), (HEIGHT, WIDTH), channel)
    return tmp_path, info


def test_views_load_in_channel_order_and_project(frame):
    root, info = frame
    views = load_camera_views(root, info)
    assert [v.name for v in views] == ['CAM_FRONT', 'CAM_BACK'] == [c for c in CAMERA_CHANNELS if c in info['cams']]
    front = views[0]
    assert front.image.shape == (HEIGHT, WIDTH, 3) and front.image.dtype == np.uint8
    cam = info['cams']['CAM_FRONT']
    np.testing.assert_allclose(front.lidar_to_camera @ np.append(cam['sensor2lidar_translation'], 1.0),
                               [0, 0, 0, 1], atol=1e-12)  # the camera centre maps to the origin
    point = points_on_rays(np.array([[12.25, 7.5]]), np.array([9.0]), cam['camera_intrinsics'],
                           cam['sensor2lidar_rotation'], cam['sensor2lidar_translation'])
    uv, _, seen = project_points(point, front)
    assert seen[0] and np.abs(uv[0] - [12.25, 7.5]).max() < 1e-6
    assert not project_points(point, views[1])[2][0]  # behind the back camera


def test_info_without_cameras_hints_at_with_cam(frame):
    root, info = frame
    with pytest.raises(KeyError, match=r'frame\.pcd\.bin.*--with_cam'):
        load_camera_views(root, {'lidar_path': info['lidar_path']})


def test_missing_image_names_the_file(frame):
    root, info = frame
    (root / info['cams']['CAM_BACK']['data_path']).unlink()
    with pytest.raises(FileNotFoundError, match='frame__CAM_BACK__1.jpg'):
        load_camera_views(root, info)


def test_image_of_the_wrong_size_names_the_file(frame):
    root, info = frame
    write_jpeg(root / info['cams']['CAM_FRONT']['data_path'], np.zeros((HEIGHT, WIDTH + 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r'frame__CAM_FRONT__1.jpg.*30x42.*image_shape \(30, 40\)'):
        load_camera_views(root, info)


def test_unreadable_image_names_the_file(frame):
    root, info = frame
    (root / info['cams']['CAM_FRONT']['data_path']).write_bytes(b'not a jpeg')
    with pytest.raises(ValueError, match='frame__CAM_FRONT__1.jpg.*not a readable image'):
        load_camera_views(root, info)


@pytest.mark.parametrize('intrinsics_value, message', [
    (None, "'camera_intrinsics' is missing"),
    (np.eye(2), "'camera_intrinsics' is shape"),
    (np.array([[30.0, 0, 20], [0, 30.0, 15], [0, 0, 2]]), 'not a pinhole matrix'),
    (np.array([[-30.0, 0, 20], [0, 30.0, 15], [0, 0, 1]]), 'not a pinhole matrix'),
])
def test_camera_without_valid_intrinsics_names_the_file(frame, intrinsics_value, message):
    root, info = frame
    if intrinsics_value is None:
        del info['cams']['CAM_BACK']['camera_intrinsics']
    else:
        info['cams']['CAM_BACK']['camera_intrinsics'] = intrinsics_value
    with pytest.raises(ValueError, match=f'CAM_BACK of image .*frame__CAM_BACK__1.jpg.*{message}'):
        load_camera_views(root, info)


def test_camera_without_extrinsics_names_the_file(frame):
    root, info = frame
    info['cams']['CAM_FRONT']['sensor2lidar_rotation'] = np.ones((3, 3))
    with pytest.raises(ValueError, match='frame__CAM_FRONT__1.jpg.*not a rotation'):
        load_camera_views(root, info)
    del info['cams']['CAM_FRONT']['sensor2lidar_translation']
    with pytest.raises(ValueError, match="frame__CAM_FRONT__1.jpg.*'sensor2lidar_translation' is missing"):
        load_camera_views(root, info)


def test_builtin_backbone_is_seeded_and_loads_local_weights(tmp_path):
    images = torch.randn(1, 3, 30, 40, generator=torch.Generator().manual_seed(0))
    first = build_image_backbone({'NAME': 'resnet_tiny', 'SEED': 5}, 8, 'TEACHER')
    with torch.no_grad():
        out = first(images)
        assert tuple(out.shape) == (1, 8, 8, 10)
        assert torch.equal(build_image_backbone({'NAME': 'resnet_tiny', 'SEED': 5}, 8, 'TEACHER')(images), out)
        assert not torch.equal(build_image_backbone({'NAME': 'resnet_tiny', 'SEED': 6}, 8, 'TEACHER')(images), out)
    weights = tmp_path / 'tiny.pth'
    torch.save(first.network.state_dict(), weights)
    with torch.no_grad():
        loaded = build_image_backbone({'NAME': 'resnet_tiny', 'SEED': 9, 'WEIGHTS': str(weights)}, 8, 'TEACHER')
        assert torch.equal(loaded(images), out)
    torch.save(ResNetTiny(4).state_dict(), weights)  # another head width: does not fit
    with pytest.raises(ConfigError, match='tiny.pth does not fit'):
        build_image_backbone({'NAME': 'resnet_tiny', 'WEIGHTS': str(weights)}, 8, 'TEACHER')
    with pytest.raises(ConfigError, match='missing.pth not found'):
        build_image_backbone({'NAME': 'resnet_tiny', 'WEIGHTS': str(tmp_path / 'missing.pth')}, 8, 'TEACHER')
    with pytest.raises(ConfigError, match="'vgg_huge'"):
        build_image_backbone({'NAME': 'vgg_huge'}, 8, 'TEACHER')


@pytest.mark.parametrize('name, package', [('torchvision:resnet18', 'torchvision'), ('timm:resnet18', 'timm')])
def test_missing_package_is_refused_clearly(monkeypatch, name, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes the import fail as if not installed
    with pytest.raises(ConfigError, match=f"{name}.*needs the package '{package}'"):
        build_image_backbone({'NAME': name}, 8, 'TEACHER')


def test_torchvision_backbone_with_local_weights(tmp_path):
    torchvision = pytest.importorskip('torchvision')
    weights = tmp_path / 'resnet18.pth'
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    backbone = build_image_backbone({'NAME': 'torchvision:resnet18', 'WEIGHTS': str(weights)}, 16, 'TEACHER')
    with torch.no_grad():
        assert tuple(backbone(torch.zeros(1, 3, 64, 96)).shape) == (1, 16, 2, 3)
    torch.save({'fc.weight': torch.zeros(3, 3)}, weights)
    with pytest.raises(ConfigError, match='resnet18.pth does not fit'):
        build_image_backbone({'NAME': 'torchvision:resnet18', 'WEIGHTS': str(weights)}, 16, 'TEACHER')


def test_timm_backbone_with_local_weights(tmp_path):
    timm = pytest.importorskip('timm')
    weights = tmp_path / 'resnet18.pth'
    torch.save(timm.create_model('resnet18').state_dict(), weights)
    backbone = build_image_backbone({'NAME': 'timm:resnet18', 'WEIGHTS': str(weights)}, 16, 'TEACHER')
    with torch.no_grad():
        assert tuple(backbone(torch.zeros(1, 3, 64, 96)).shape) == (1, 16, 2, 3)
