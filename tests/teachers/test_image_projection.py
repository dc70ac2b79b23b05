"""The image-projection teacher: projection by construction (poses composed as nuScenes' info generation does, ego
motion between the LiDAR and camera timestamps included), bilinear sampling against a loop, averaging over cameras,
a colour-coded image read back through an identity backbone, SLIC superpixel ids."""
import numpy as np
import pytest
import torch

from pcdet.config import ConfigError
from pcdet.datasets.nuscenes.cameras import project_points
from pcdet.datasets.teachers import build_teacher
from pcdet.datasets.teachers.image_projection import (
    ImageProjectionTeacher,
    feature_map_coordinates,
    normalise_image,
    sample_feature_map,
)

from camera_fixtures import (
    LOOK_FORWARD,
    AveragePoolRGB,
    IdentityRGB,
    colour_coded_image,
    intrinsics,
    points_on_rays,
    rotation_x,
    rotation_z,
    sensor2lidar_like_upstream,
    view,
)

WIDTH, HEIGHT = 32, 24


def teacher_cfg(num_features=3, **extra):
    return dict({'NAME': 'image_projection', 'NUM_FEATURES': num_features, 'MIN_DEPTH': 0.5}, **extra)


def moving_ego_camera():
    """(R, T, K) of a camera on an ego vehicle that moved and turned between the camera and LiDAR timestamps."""
    l2e_r, l2e_t = rotation_z(0.02), np.array([0.9, 0.0, 1.8])                      # LiDAR -> ego
    e2g_r, e2g_t = rotation_z(0.3), np.array([100.0, 50.0, 0.2])                    # ego -> global at LiDAR time
    l2e_r_s, l2e_t_s = rotation_z(0.4) @ LOOK_FORWARD @ rotation_x(0.05), np.array([1.5, 0.3, 1.6])  # camera -> ego
    e2g_r_s, e2g_t_s = rotation_z(0.33), np.array([100.4, 50.1, 0.21])              # ego -> global at camera time
    R, T = sensor2lidar_like_upstream(l2e_r_s, l2e_t_s, e2g_r_s, e2g_t_s, l2e_r, l2e_t, e2g_r, e2g_t)
    # the same transform composed directly as 4x4 matrices: camera -> global (camera time) -> LiDAR (LiDAR time)
    def rigid(r, t):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = r, t
        return m
    global_from_camera = rigid(e2g_r_s, e2g_t_s) @ rigid(l2e_r_s, l2e_t_s)
    global_from_lidar = rigid(e2g_r, e2g_t) @ rigid(l2e_r, l2e_t)
    lidar_from_camera = np.linalg.inv(global_from_lidar) @ global_from_camera
    np.testing.assert_allclose(R, lidar_from_camera[:3, :3], atol=1e-12)
    np.testing.assert_allclose(T, lidar_from_camera[:3, 3], atol=1e-9)
    return R, T, intrinsics(WIDTH, HEIGHT, 20.0)


def test_points_project_onto_the_pixel_whose_ray_they_lie_on():
    R, T, K = moving_ego_camera()
    rng = np.random.default_rng(0)
    uv = np.concatenate([rng.uniform([0, 0], [WIDTH - 1, HEIGHT - 1], (200, 2)),
                         [[0, 0], [WIDTH - 1, HEIGHT - 1], [5, 7]]])          # corners are pixel centres: seen
    depths = rng.uniform(0.6, 80.0, len(uv))
    camera = view(R, T, K, np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    projected, depth, seen = project_points(points_on_rays(uv, depths, K, R, T), camera, min_depth=0.5)
    assert seen.all()
    np.testing.assert_allclose(projected, uv, atol=1e-4, rtol=0)
    np.testing.assert_allclose(depth, depths, rtol=1e-9)
    # behind the camera, closer than MIN_DEPTH, outside the pixel-centre area: unseen
    outside = np.array([[-0.2, 5.0], [WIDTH - 0.8, 5.0], [5.0, -0.2], [5.0, HEIGHT - 0.8], [5.0, 5.0], [5.0, 5.0]])
    outside_depths = np.array([10.0, 10.0, 10.0, 10.0, -10.0, 0.4])
    _, _, seen = project_points(points_on_rays(outside, outside_depths, K, R, T), camera, min_depth=0.5)
    assert not seen.any()


def loop_bilinear(feature_map, uv, image_size):
    """Reference: upsample-to-image semantics (module doc), one point and one corner at a time."""
    channels, h, w = feature_map.shape
    height, width = image_size
    out = np.zeros((len(uv), channels))
    for n, (u, v) in enumerate(uv):
        x = min(max((u + 0.5) * w / width - 0.5, 0.0), w - 1)
        y = min(max((v + 0.5) * h / height - 0.5, 0.0), h - 1)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for xi, wx in ((x0, 1 - (x - x0)), (min(x0 + 1, w - 1), x - x0)):
            for yi, wy in ((y0, 1 - (y - y0)), (min(y0 + 1, h - 1), y - y0)):
                for c in range(channels):
                    out[n, c] += wx * wy * feature_map[c, yi, xi]
    return out


@pytest.mark.parametrize('map_size', [(6, 8), (24, 32), (7, 9), (1, 5)])
def test_bilinear_sampling_matches_a_loop_and_upsampling(map_size):
    rng = np.random.default_rng(1)
    feature_map = torch.from_numpy(rng.standard_normal((5,) + map_size))
    uv = np.concatenate([rng.uniform([0, 0], [WIDTH - 1, HEIGHT - 1], (50, 2)), [[0, 0], [WIDTH - 1, HEIGHT - 1]]])
    xy = feature_map_coordinates(uv, (HEIGHT, WIDTH), map_size)
    sampled = sample_feature_map(feature_map, xy)
    np.testing.assert_allclose(sampled, loop_bilinear(feature_map.numpy(), uv, (HEIGHT, WIDTH)), atol=1e-5)
    # at integer pixels: the map bilinearly upsampled to the image size (align_corners=False)
    pixels = np.stack(np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT)), axis=2).reshape(-1, 2)
    upsampled = torch.nn.functional.interpolate(feature_map[None], size=(HEIGHT, WIDTH), mode='bilinear',
                                                align_corners=False)[0]
    expected = upsampled[:, pixels[:, 1], pixels[:, 0]].T.numpy()
    got = sample_feature_map(feature_map, feature_map_coordinates(pixels, (HEIGHT, WIDTH), map_size))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def normalised_colours(image, rows, cols):
    colours = normalise_image(image)[0][:, rows, cols].T.numpy().astype(np.float64)
    return colours / np.linalg.norm(colours, axis=1, keepdims=True)


def test_a_point_gets_the_colour_of_its_pixel():
    R, T, K = moving_ego_camera()
    image = colour_coded_image(HEIGHT, WIDTH)
    teacher = ImageProjectionTeacher(teacher_cfg(), backbone=IdentityRGB())
    rng = np.random.default_rng(2)
    pixels = np.stack([rng.integers(0, WIDTH, 300), rng.integers(0, HEIGHT, 300)], axis=1)
    points = points_on_rays(pixels.astype(np.float64), rng.uniform(1, 60, 300), K, R, T)
    behind = points_on_rays(np.array([[3.0, 3.0]]), np.array([-5.0]), K, R, T)
    xyz = np.concatenate([points, behind])  # float64: border pixels stay exactly on the border
    features = teacher(np.concatenate([xyz, np.zeros((len(xyz), 2))], axis=1),
                       cameras=[view(R, T, K, image)])
    assert features.dtype == np.float32 and features.shape == (301, 3)
    np.testing.assert_allclose(features[:300], normalised_colours(image, pixels[:, 1], pixels[:, 0]), atol=1e-4)
    np.testing.assert_array_equal(features[300], 0.0)  # unseen: the all-zero validity flag


def test_features_are_averaged_over_the_cameras_that_see_a_point():
    """Two cameras at one pose, uniform images of two colours; the second has a narrower field of view."""
    R, T = LOOK_FORWARD, np.zeros(3)
    wide, narrow = intrinsics(WIDTH, HEIGHT, 10.0), intrinsics(WIDTH, HEIGHT, 40.0)
    red = np.zeros((HEIGHT, WIDTH, 3), np.uint8) + np.array([200, 30, 30], np.uint8)
    blue = np.zeros((HEIGHT, WIDTH, 3), np.uint8) + np.array([20, 40, 220], np.uint8)
    cameras = [view(R, T, wide, red, 'CAM_FRONT'), view(R, T, narrow, blue, 'CAM_FRONT_RIGHT')]
    teacher = ImageProjectionTeacher(teacher_cfg(), backbone=IdentityRGB())
    both = points_on_rays(np.array([[15.5, 11.5]]), np.array([10.0]), wide, R, T)       # image centre
    only_wide = points_on_rays(np.array([[1.0, 11.5]]), np.array([10.0]), wide, R, T)   # outside the narrow one
    features = teacher(np.concatenate([both, only_wide, [[-5.0, 0.0, 0.0]]]), cameras=cameras)
    c_red, c_blue = (normalise_image(img)[0][:, 0, 0].numpy().astype(np.float64) for img in (red, blue))
    mean = (c_red + c_blue) / 2
    np.testing.assert_allclose(features[0], mean / np.linalg.norm(mean), atol=1e-5)
    np.testing.assert_allclose(features[1], c_red / np.linalg.norm(c_red), atol=1e-5)
    np.testing.assert_array_equal(features[2], 0.0)
    encoded = teacher.encode_cameras(cameras)  # encoded once per frame, reused for every part
    np.testing.assert_array_equal(teacher(both, cameras=encoded), features[:1])


def test_strided_feature_map_and_builtin_backbone():
    R, T, K = moving_ego_camera()
    image = colour_coded_image(HEIGHT, WIDTH)
    rng = np.random.default_rng(3)
    uv = rng.uniform([0, 0], [WIDTH - 1, HEIGHT - 1], (100, 2))
    points = points_on_rays(uv, rng.uniform(1, 50, 100), K, R, T)
    pooled = ImageProjectionTeacher(teacher_cfg(), backbone=AveragePoolRGB(4))
    feature_map = AveragePoolRGB(4)(normalise_image(image))[0].double()
    expected = loop_bilinear(feature_map.numpy(), uv, (HEIGHT, WIDTH))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled(points, cameras=[view(R, T, K, image)]), expected, atol=1e-4)
    builtin = build_teacher(teacher_cfg(num_features=16, BACKBONE={'NAME': 'resnet_tiny', 'SEED': 3}))
    encoded = builtin.encode_cameras([view(R, T, K, image)])
    assert tuple(encoded.feature_maps[0].shape) == (16, HEIGHT // 4, WIDTH // 4)  # output stride 4
    features = builtin(points, cameras=encoded)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    again = build_teacher(teacher_cfg(num_features=16, BACKBONE={'NAME': 'resnet_tiny', 'SEED': 3}))
    np.testing.assert_array_equal(again(points, cameras=[view(R, T, K, image)]), features)  # seeded


def test_superpixel_ids_follow_slic_of_the_first_camera_that_sees_a_point():
    from skimage.segmentation import slic
    R, T = LOOK_FORWARD, np.zeros(3)
    wide, narrow = intrinsics(WIDTH, HEIGHT, 10.0), intrinsics(WIDTH, HEIGHT, 40.0)
    rng = np.random.default_rng(4)
    images = [colour_coded_image(HEIGHT, WIDTH), rng.integers(0, 255, (HEIGHT, WIDTH, 3)).astype(np.uint8)]
    cameras = [view(R, T, narrow, images[0], 'CAM_FRONT'), view(R, T, wide, images[1], 'CAM_FRONT_RIGHT')]
    cfg = teacher_cfg(SUPERPIXELS={'ENABLED': True, 'N_SEGMENTS': 12, 'COMPACTNESS': 5.0})
    teacher = ImageProjectionTeacher(cfg, backbone=IdentityRGB())
    assert teacher.extra_point_arrays == ('superpixel_ids',) and teacher.id_stride == 48
    pixels = np.stack([rng.integers(0, WIDTH, 400), rng.integers(0, HEIGHT, 400)], axis=1).astype(np.float64)
    points = np.concatenate([points_on_rays(pixels, rng.uniform(1, 40, 400), wide, R, T), [[-3.0, 0.0, 0.0]]])
    features, extras = teacher(points, cameras=cameras)
    ids = extras['superpixel_ids']
    assert ids.dtype == np.int32 and ids.shape == (401,) and ids[-1] == -1
    np.testing.assert_array_equal(ids < 0, ~features.any(axis=1))  # the same points are unseen in both
    expected = np.full(401, -1)
    for index in (1, 0):  # the first camera (CAMERA_CHANNELS order) that sees a point wins
        labels = slic(images[index], n_segments=12, compactness=5.0, start_label=0, channel_axis=-1)
        uv, _, seen = project_points(points, cameras[index], 0.5)
        pixel = np.rint(uv[seen]).astype(int)
        expected[seen] = index * 48 + labels[pixel[:, 1], pixel[:, 0]]
    np.testing.assert_array_equal(ids, expected)
    assert (ids // 48 == 0).any() and (ids // 48 == 1).any()
    assert teacher(points, cameras=cameras)[1]['superpixel_ids'].tolist() == ids.tolist()  # deterministic


def test_instance_map_normalization_standardises_each_channel_per_image_before_sampling():
    R, T, K = moving_ego_camera()
    image = colour_coded_image(HEIGHT, WIDTH)
    rng = np.random.default_rng(4)
    pixels = np.stack([rng.integers(0, WIDTH, 200), rng.integers(0, HEIGHT, 200)], axis=1)
    points = points_on_rays(pixels.astype(np.float64), rng.uniform(1, 60, 200), K, R, T)
    points = np.concatenate([points, np.zeros((len(points), 2))], axis=1)
    teacher = ImageProjectionTeacher(teacher_cfg(MAP_NORMALIZATION='instance'), backbone=IdentityRGB())
    features = teacher(points, cameras=[view(R, T, K, image)])
    # reference: the ImageNet-normalised image, each channel standardised over all pixels by hand, read at the pixel
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    normalised = (image.astype(np.float64) / 255.0 - mean) / std
    standardised = np.empty_like(normalised)
    for channel in range(3):
        centred = normalised[:, :, channel] - normalised[:, :, channel].sum() / normalised[:, :, channel].size
        std = np.sqrt((centred ** 2).sum() / centred.size)
        standardised[:, :, channel] = centred / std if std > 1e-6 else 0.0  # the image's blue channel is constant
    expected = standardised[pixels[:, 1], pixels[:, 0]]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(features, expected, atol=1e-4)
    plain = ImageProjectionTeacher(teacher_cfg(), backbone=IdentityRGB())(points, cameras=[view(R, T, K, image)])
    assert np.abs(plain - expected).max() > 0.1  # 'none' (the default) leaves the map as the backbone gives it
    with pytest.raises(ConfigError, match='MAP_NORMALIZATION'):
        ImageProjectionTeacher(teacher_cfg(MAP_NORMALIZATION='batch'), backbone=IdentityRGB())
