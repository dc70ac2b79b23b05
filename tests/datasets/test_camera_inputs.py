"""Camera inputs of the rendering pretext (pcdet/datasets/nuscenes/camera_inputs.py): intrinsics of resized images
(pixel-centre convention of cameras.py), image resampling (antialiased bilinear, written out as a PIL-style
triangle filter), the sparse LiDAR depth maps (nearest point per pixel, hand-placed points), `camera_inputs` on
hand-written images and infos, and the config checks of DATA_CONFIG.CAMERA_INPUTS. References are built from the
definitions (pixel geometry by hand), never from the code under test."""
import numpy as np
import pytest
from PIL import Image

from pcdet.config import ConfigError
from pcdet.datasets.nuscenes.camera_inputs import (
    CAMERA_INPUT_KEYS,
    CAMERA_INPUTS_SCHEMA,
    camera_inputs,
    check_camera_inputs_cfg,
    lidar_depth_map,
    resize_image,
    resized_intrinsics,
)
from pcdet.datasets.nuscenes.cameras import CameraView

# ---------------------------------------------------------------------------------------------------------------
# resized_intrinsics


def project(K, p_cam):
    """(u, v) of camera-frame points (N, 3) with K (devkit convention: divide by z)."""
    uvw = np.asarray(p_cam, dtype=np.float64) @ np.asarray(K, dtype=np.float64).T
    return uvw[:, :2] / uvw[:, 2:]


def ray_points(K, uv, depth):
    """Camera-frame points at camera z `depth` on the rays of pixel coordinates uv (N, 2) (inverse of K by hand:
    upper-triangular pinhole with skew)."""
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    uv = np.asarray(uv, dtype=np.float64)
    y = (uv[:, 1] - cy) / fy
    x = (uv[:, 0] - cx - s * y) / fx
    return np.stack([x * depth, y * depth, np.full(len(uv), float(depth))], axis=1)


K_SKEWED = np.array([[52.0, 0.7, 31.3], [0.0, 47.5, 19.1], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize('new_size', [(24, 15), (32, 20), (100, 70), (64, 40), (7, 31)])
def test_resized_intrinsics_moves_projections_to_the_resized_pixel_grid(new_size):
    width, height = 64, 40
    rng = np.random.default_rng(0)
    p_cam = np.stack([rng.uniform(-8, 8, 50), rng.uniform(-5, 5, 50), rng.uniform(2, 30, 50)], axis=1)
    uv = project(K_SKEWED, p_cam)
    K_new = resized_intrinsics(K_SKEWED, (width, height), new_size)
    assert K_new.shape == (3, 3)
    w, h = new_size
    expected = np.stack([(uv[:, 0] + 0.5) * w / width - 0.5, (uv[:, 1] + 0.5) * h / height - 0.5], axis=1)
    np.testing.assert_allclose(project(K_new, p_cam), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(K_new[2], [0.0, 0.0, 1.0], atol=0)


def test_resized_intrinsics_maps_image_edges_to_image_edges():
    width, height, w, h = 64, 40, 24, 15
    edges = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [-0.5, height - 0.5], [width - 0.5, height - 0.5],
                      [(width - 1) / 2, (height - 1) / 2]])
    points = ray_points(K_SKEWED, edges, 7.0)
    np.testing.assert_allclose(project(K_SKEWED, points), edges, atol=1e-9)  # the helper itself
    K_new = resized_intrinsics(K_SKEWED, (width, height), (w, h))
    np.testing.assert_allclose(project(K_new, points), [[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5],
                                                        [w - 0.5, h - 0.5], [(w - 1) / 2, (h - 1) / 2]], atol=1e-9)


def test_resized_intrinsics_same_size_is_identity():
    np.testing.assert_allclose(resized_intrinsics(K_SKEWED, (64, 40), (64, 40)), K_SKEWED, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# resize_image


def triangle_weights(in_size, out_size):
    """(out, in) weights of antialiased bilinear resampling (PIL's reduce: a triangle filter stretched by the
    downscale factor, pixel centres at i + 0.5 in both grids, normalised over the pixels inside the image)."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        for j in range(in_size):
            weights[i, j] = max(0.0, 1.0 - abs(j + 0.5 - centre) / support)
        weights[i] /= weights[i].sum()
    return weights


def reference_resize(image, size):
    """(H, W, 3) uint8 -> (3, h, w) float64."""
    rows = triangle_weights(image.shape[0], size[1])
    cols = triangle_weights(image.shape[1], size[0])
    rgb = image.astype(np.float64).transpose(2, 0, 1) / 255.0
    return np.einsum('ij,cjk,lk->cil', rows, rgb, cols)


def test_triangle_reference_at_factor_two():
    """The reference's weights at an exact factor 2: 1/8, 3/8, 3/8, 1/8 over four input pixels (not a plain 2 x 2
    block average), renormalised at the border."""
    weights = triangle_weights(8, 4)
    np.testing.assert_allclose(weights[1], [0, 1 / 8, 3 / 8, 3 / 8, 1 / 8, 0, 0, 0])
    np.testing.assert_allclose(weights[0], [3 / 7, 3 / 7, 1 / 7, 0, 0, 0, 0, 0])


def test_resize_image_same_size_is_image_over_255():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (9, 14, 3), dtype=np.uint8)
    image[0, 0] = [0, 255, 128]
    out = resize_image(image, (14, 9))
    assert out.shape == (3, 9, 14) and out.dtype == np.float32
    expected = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    assert np.array_equal(out, expected)


def test_resize_image_halves_constant_blocks():
    """2 x 2 constant blocks halved: a uniform image stays exactly uniform; blocks whose neighbours along a row are
    equal keep the block value; otherwise the triangle filter mixes in the neighbours (reference)."""
    uniform = np.full((8, 12, 3), 93, dtype=np.uint8)
    out = resize_image(uniform, (6, 4))
    assert out.shape == (3, 4, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out, 93 / 255.0, rtol=0, atol=1e-6)
    # blocks constant along each block row: the rows mix only identical values -> block values exactly
    stripes = np.repeat(np.array([[10], [200], [60], [140]], dtype=np.uint8), 2, axis=0)
    image = np.broadcast_to(stripes[:, :, None], (8, 12, 3)).copy()
    image[..., 1] = 255 - image[..., 1]
    rows = triangle_weights(8, 4)
    out = resize_image(image, (6, 4))
    expected = np.einsum('ij,cj->ci', rows, image[:, 0, :].T.astype(np.float64) / 255.0)
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, :, None], (3, 4, 6)), atol=2e-6)
    # general 2 x 2 blocks: the reference
    blocks = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)
    np.testing.assert_allclose(resize_image(image, (6, 4)), reference_resize(image, (6, 4)), atol=2e-6)


@pytest.mark.parametrize('size', [(7, 5), (20, 6), (30, 25), (5, 13)])
def test_resize_image_matches_triangle_filter_reference(size):
    """Down-, up- and mixed resampling of a random image (channel order kept: RGB in, RGB planes out)."""
    image = np.random.default_rng(3).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    out = resize_image(image, size)
    assert out.shape == (3, size[1], size[0]) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference_resize(image, size), atol=2e-6)


# ---------------------------------------------------------------------------------------------------------------
# lidar_depth_map

WIDTH, HEIGHT = 20, 12
K_CAM = np.array([[18.0, 0.0, 9.5], [0.0, 21.0, 5.5], [0.0, 0.0, 1.0]])
CAMERA_CENTRE = np.array([0.4, -0.2, 1.1])  # in the LiDAR frame


def forward_view(width=WIDTH, height=HEIGHT, K=K_CAM, centre=CAMERA_CENTRE, name='CAM_FRONT'):
    """A camera at `centre` looking along LiDAR +x: camera x = LiDAR -y, camera y = LiDAR -z, camera z = LiDAR x."""
    rotation = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # LiDAR -> camera axes
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = -rotation @ centre
    return CameraView(name, f'<{name}>', np.zeros((height, width, 3), dtype=np.uint8), K.astype(np.float64), matrix)


def lidar_point(u, v, depth, K=K_CAM, centre=CAMERA_CENTRE):
    """LiDAR point seen at pixel (u, v) at camera z `depth` by `forward_view` (by hand: no skew)."""
    x_cam = (u - K[0, 2]) * depth / K[0, 0]
    y_cam = (v - K[1, 2]) * depth / K[1, 1]
    return centre + np.array([depth, -x_cam, -y_cam])


# (u, v, camera depth): where each point lands
POINTS = [
    (3, 2, 5.0),       # A
    (2, 2, 4.0),       # A2: its own full-resolution pixel, A's pixel at half resolution (nearer: wins there)
    (15, 9, 12.0),     # B far, listed first ...
    (15, 9, 8.0),      # ... C near, on B's pixel: C wins
    (11, 3, 6.5),      # D near, listed first ...
    (11, 3, 9.5),      # ... E far, on D's pixel: D wins
    (5.3, 7.8, 6.0),   # F: sub-pixel, nearest pixel centre (5, 8)
    (0, 0, 3.0),       # G: corner pixel centres are seen
    (19, 11, 30.0),    # H
    (7, 4, -5.0),      # behind the camera (would land on (7, 4) if not rejected)
    (10, 6, 0.7),      # nearer than MIN_DEPTH 1.0
    (26, 4, 5.0),      # right of the image (must not wrap into the next row)
    (-4, 6, 5.0),      # left of the image
    (8, -3, 5.0),      # above
]
MIN_DEPTH = 1.0


def expected_full_resolution():
    expected = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    for row, col, depth in [(2, 3, 5.0), (2, 2, 4.0), (9, 15, 8.0), (3, 11, 6.5), (8, 5, 6.0), (0, 0, 3.0),
                            (11, 19, 30.0)]:
        expected[row, col] = depth
    return expected


def brute_force_depth_map(points, size, min_depth=MIN_DEPTH):
    """Nearest depth per resized pixel from the (u, v, depth) placements: seen when depth > min_depth and the
    pixel coordinate lies within the pixel centres [0, W - 1] x [0, H - 1]; u' = (u + 0.5) w / W - 0.5, nearest
    pixel centre."""
    w, h = size
    out = np.zeros((h, w), dtype=np.float32)
    for u, v, depth in points:
        if depth <= min_depth or not (0 <= u <= WIDTH - 1 and 0 <= v <= HEIGHT - 1):
            continue
        col = int(np.floor((u + 0.5) * w / WIDTH - 0.5 + 0.5))
        row = int(np.floor((v + 0.5) * h / HEIGHT - 0.5 + 0.5))
        if 0 <= col < w and 0 <= row < h and (out[row, col] == 0 or depth < out[row, col]):
            out[row, col] = depth
    return out


def lidar_points():
    return np.stack([lidar_point(u, v, d) for u, v, d in POINTS])


def test_lidar_depth_map_full_resolution_by_hand():
    depth = lidar_depth_map(lidar_points(), forward_view(), (WIDTH, HEIGHT), MIN_DEPTH)
    assert depth.shape == (HEIGHT, WIDTH) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, expected_full_resolution(), rtol=1e-6, atol=0)


def test_lidar_depth_map_nearest_wins_in_either_order():
    points = lidar_points()
    for order in (np.arange(len(points)), np.arange(len(points))[::-1], np.random.default_rng(4).permutation(
            len(points))):
        depth = lidar_depth_map(points[order], forward_view(), (WIDTH, HEIGHT), MIN_DEPTH)
        np.testing.assert_allclose(depth, expected_full_resolution(), rtol=1e-6, atol=0)


def test_lidar_depth_map_min_depth():
    points = lidar_points()
    depth = lidar_depth_map(points, forward_view(), (WIDTH, HEIGHT), 0.5)
    expected = expected_full_resolution()
    expected[6, 10] = 0.7  # now deep enough
    np.testing.assert_allclose(depth, expected, rtol=1e-6, atol=0)
    depth = lidar_depth_map(points, forward_view(), (WIDTH, HEIGHT), 4.5)
    expected = expected_full_resolution()
    expected[0, 0] = expected[2, 2] = 0.0  # 3 m and 4 m: too near now
    np.testing.assert_allclose(depth, expected, rtol=1e-6, atol=0)


def test_lidar_depth_map_half_resolution_by_hand():
    depth = lidar_depth_map(lidar_points(), forward_view(), (WIDTH // 2, HEIGHT // 2), MIN_DEPTH)
    assert depth.shape == (HEIGHT // 2, WIDTH // 2) and depth.dtype == np.float32
    expected = np.zeros((HEIGHT // 2, WIDTH // 2), dtype=np.float32)
    # u' = (u + 0.5) / 2 - 0.5 = u / 2 - 0.25: A (3, 2) -> (1.25, 0.75) -> (1, 1); A2 (2, 2) -> (0.75, 0.75) ->
    # (1, 1): 4 m wins; C (15, 9) -> (7.25, 4.25) -> (7, 4); D (11, 3) -> (5.25, 1.25) -> (5, 1);
    # F (5.3, 7.8) -> (2.4, 3.65) -> (2, 4); G (0, 0) -> (-0.25, -0.25) -> (0, 0); H (19, 11) -> (9.25, 5.25) -> (9, 5)
    for row, col, value in [(1, 1, 4.0), (4, 7, 8.0), (1, 5, 6.5), (4, 2, 6.0), (0, 0, 3.0), (5, 9, 30.0)]:
        expected[row, col] = value
    np.testing.assert_allclose(depth, expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(brute_force_depth_map(POINTS, (WIDTH // 2, HEIGHT // 2)), expected, rtol=1e-6)


@pytest.mark.parametrize('size', [(7, 5), (33, 17), (20, 6), (WIDTH, HEIGHT)])
def test_lidar_depth_map_other_sizes_match_brute_force(size):
    rng = np.random.default_rng(5)
    # random placements away from rounding ties of the resized grid
    placements = [(rng.uniform(-2, WIDTH + 1), rng.uniform(-2, HEIGHT + 1), rng.uniform(-3, 40)) for _ in range(300)]
    placements = [(u, v, d) for u, v, d in placements
                  if min(abs(((u + 0.5) * size[0] / WIDTH) % 1 - 0.5), abs(((v + 0.5) * size[1] / HEIGHT) % 1 - 0.5),
                         abs(d - MIN_DEPTH), abs(u) + 1, abs(u - WIDTH + 1) + 1) > 1e-3
                  and min(abs(u), abs(u - WIDTH + 1), abs(v), abs(v - HEIGHT + 1)) > 1e-3]
    points = np.stack([lidar_point(u, v, d) for u, v, d in placements])
    depth = lidar_depth_map(points, forward_view(), size, MIN_DEPTH)
    expected = brute_force_depth_map(placements, size)
    assert (expected > 0).sum() > 20
    np.testing.assert_allclose(depth, expected, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# camera_inputs on hand-written files and infos


def camera_to_lidar(view):
    """(R, T) with p_lidar = R p_cam + T for a forward_view-like camera (inverse of its matrix by hand)."""
    rotation = view.lidar_to_camera[:3, :3].T
    return rotation, -rotation @ view.lidar_to_camera[:3, 3]


def yawed_rotation(yaw):
    """Camera axes in the LiDAR frame for a camera looking along LiDAR yaw `yaw` (columns: camera x, y, z)."""
    c, s = np.cos(yaw), np.sin(yaw)
    forward, left, up = np.array([c, s, 0.0]), np.array([-s, c, 0.0]), np.array([0.0, 0.0, 1.0])
    return np.stack([-left, -up, forward], axis=1)


def write_camera(root, channel, rotation, translation, K, image):
    path = root / 'samples' / channel / f'{channel}.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)  # lossless
    return {'data_path': f'samples/{channel}/{channel}.png', 'type': channel,
            'sensor2lidar_rotation': np.asarray(rotation), 'sensor2lidar_translation': np.asarray(translation),
            'camera_intrinsics': np.asarray(K), 'image_shape': image.shape[:2]}


@pytest.fixture
def two_camera_frame(tmp_path):
    rng = np.random.default_rng(6)
    back_K = np.array([[15.0, 0.0, 7.5], [0.0, 16.0, 4.0], [0.0, 0.0, 1.0]])
    back_centre = np.array([-0.6, 0.1, 1.0])
    back_rotation = yawed_rotation(np.pi)
    front_image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    back_image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    cams = {
        # listed back first: camera_inputs orders the channels as cameras.CAMERA_CHANNELS (front first)
        'CAM_BACK': write_camera(tmp_path, 'CAM_BACK', back_rotation, back_centre, back_K, back_image),
        'CAM_FRONT': write_camera(tmp_path, 'CAM_FRONT', yawed_rotation(0.0), CAMERA_CENTRE, K_CAM, front_image),
    }
    info = {'lidar_path': 'samples/LIDAR_TOP/frame.pcd.bin', 'cams': cams}
    # front points from the placements; back points by hand: behind the LiDAR, pixel (u, v) at depth d
    back_points = []
    for u, v, d in [(2, 1, 7.0), (13, 9, 4.0)]:
        x_cam, y_cam = (u - back_K[0, 2]) * d / back_K[0, 0], (v - back_K[1, 2]) * d / back_K[1, 1]
        # looking along -x: camera z = -LiDAR x, camera x (right) = +LiDAR y, camera y (down) = -LiDAR z
        back_points.append(back_centre + np.array([-d, x_cam, -y_cam]))
    xyz = np.concatenate([lidar_points(), np.stack(back_points)]).astype(np.float32)
    back = {'K': back_K, 'rotation': back_rotation, 'centre': back_centre, 'image': back_image,
            # plus the front placement behind the front camera, LiDAR (-4.6, -0.894, 0.743): 4 m in front of the back
            # camera, camera (x, y) = (-0.994, 0.257) -> (u, v) = (3.77, 5.03)
            'depth': {(1, 2): 7.0, (9, 13): 4.0, (5, 4): 4.0}}
    return tmp_path, info, xyz, front_image, back


def test_camera_inputs_stored_size(two_camera_frame):
    root, info, xyz, front_image, back = two_camera_frame
    cfg = CAMERA_INPUTS_SCHEMA.fill({'ENABLED': True})
    out = camera_inputs(root, info, cfg, xyz)
    assert set(out) == set(CAMERA_INPUT_KEYS)
    assert out['camera_images'].shape == (2, 3, HEIGHT, WIDTH) and out['camera_images'].dtype == np.float32
    assert out['camera_intrinsics'].shape == (2, 3, 3) and out['camera_intrinsics'].dtype == np.float32
    assert out['camera_from_lidar'].shape == (2, 4, 4) and out['camera_from_lidar'].dtype == np.float32
    assert out['camera_depth'].shape == (2, HEIGHT, WIDTH) and out['camera_depth'].dtype == np.float32
    # front first
    assert np.array_equal(out['camera_images'][0], front_image.transpose(2, 0, 1) / np.float32(255))
    assert np.array_equal(out['camera_images'][1], back['image'].transpose(2, 0, 1) / np.float32(255))
    np.testing.assert_allclose(out['camera_intrinsics'][0], K_CAM, rtol=1e-6)
    np.testing.assert_allclose(out['camera_intrinsics'][1], back['K'], rtol=1e-6)
    # camera_from_lidar maps the LiDAR point of a placement to its camera-frame point
    for index, (K, centre) in enumerate([(K_CAM, CAMERA_CENTRE), (back['K'], back['centre'])]):
        matrix = out['camera_from_lidar'][index].astype(np.float64)
        np.testing.assert_allclose(matrix[3], [0, 0, 0, 1], atol=0)
        np.testing.assert_allclose(matrix[:3, :3] @ centre + matrix[:3, 3], 0.0, atol=1e-6)
    cam = out['camera_from_lidar'][0].astype(np.float64) @ np.append(lidar_point(15, 9, 8.0), 1.0)
    np.testing.assert_allclose(cam[:3], [(15 - 9.5) * 8.0 / 18.0, (9 - 5.5) * 8.0 / 21.0, 8.0], atol=1e-5)
    np.testing.assert_allclose(out['camera_depth'][0], expected_full_resolution(), rtol=1e-5)
    expected_back = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    for (row, col), value in back['depth'].items():
        expected_back[row, col] = value
    np.testing.assert_allclose(out['camera_depth'][1], expected_back, rtol=1e-5)


def test_camera_inputs_resized_and_channel_selection(two_camera_frame):
    root, info, xyz, front_image, back = two_camera_frame
    cfg = CAMERA_INPUTS_SCHEMA.fill({'ENABLED': True, 'IMAGE_SIZE': [10, 6], 'CHANNELS': ['CAM_BACK', 'CAM_FRONT'],
                                     'MIN_DEPTH': 4.5})
    out = camera_inputs(root, info, cfg, xyz)
    assert out['camera_images'].shape == (2, 3, 6, 10) and out['camera_depth'].shape == (2, 6, 10)
    # the listed order: back first
    np.testing.assert_allclose(out['camera_images'][0], reference_resize(back['image'], (10, 6)), atol=2e-6)
    np.testing.assert_allclose(out['camera_images'][1], reference_resize(front_image, (10, 6)), atol=2e-6)
    for index, K in enumerate([back['K'], K_CAM]):
        expected_K = K.copy()
        expected_K[0] *= 0.5
        expected_K[1] *= 0.5
        expected_K[0, 2] -= 0.25  # (c + 0.5) / 2 - 0.5
        expected_K[1, 2] -= 0.25
        np.testing.assert_allclose(out['camera_intrinsics'][index], expected_K, rtol=1e-6)
    front = [(u, v, d) for u, v, d in POINTS]
    np.testing.assert_allclose(out['camera_depth'][1], brute_force_depth_map(front, (10, 6), 4.5), rtol=1e-5)
    expected_back = np.zeros((6, 10), dtype=np.float32)
    expected_back[0, 1] = 7.0  # (2, 1) -> (0.75, 0.25); (13, 9) at 4 m is nearer than MIN_DEPTH 4.5
    np.testing.assert_allclose(out['camera_depth'][0], expected_back, rtol=1e-5)
    only_back = camera_inputs(root, info, CAMERA_INPUTS_SCHEMA.fill({'ENABLED': True, 'CHANNELS': ['CAM_BACK']}), xyz)
    assert only_back['camera_images'].shape == (1, 3, HEIGHT, WIDTH)


def test_camera_inputs_different_stored_sizes_need_image_size(two_camera_frame):
    root, info, xyz, _, back = two_camera_frame
    small = np.zeros((8, 16, 3), dtype=np.uint8)
    info['cams']['CAM_BACK'] = write_camera(root, 'CAM_BACK', back['rotation'], back['centre'], back['K'], small)
    with pytest.raises(ValueError, match='IMAGE_SIZE'):
        camera_inputs(root, info, CAMERA_INPUTS_SCHEMA.fill({'ENABLED': True}), xyz)
    out = camera_inputs(root, info, CAMERA_INPUTS_SCHEMA.fill({'ENABLED': True, 'IMAGE_SIZE': [8, 4]}), xyz)
    assert out['camera_images'].shape == (2, 3, 4, 8)
    expected_K = resized_by_hand(back['K'], 8 / 16, 4 / 8)
    np.testing.assert_allclose(out['camera_intrinsics'][1], expected_K, rtol=1e-6)


def resized_by_hand(K, sx, sy):
    """K of a resize by (sx, sy): u' = sx (u + 0.5) - 0.5 applied to u = (fx x + s y) / z + cx."""
    return np.array([[sx * K[0, 0], sx * K[0, 1], sx * (K[0, 2] + 0.5) - 0.5],
                     [0.0, sy * K[1, 1], sy * (K[1, 2] + 0.5) - 0.5], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------------------------
# config


def test_schema_defaults():
    cfg = CAMERA_INPUTS_SCHEMA.fill(None)
    assert cfg.ENABLED is False and cfg.CHANNELS is None and cfg.IMAGE_SIZE is None and cfg.MIN_DEPTH == 1.0
    check_camera_inputs_cfg(cfg)
    check_camera_inputs_cfg(CAMERA_INPUTS_SCHEMA.fill({'ENABLED': True, 'IMAGE_SIZE': [40, 24],
                                                       'CHANNELS': ['CAM_FRONT']}))
    check_camera_inputs_cfg(CAMERA_INPUTS_SCHEMA.fill({'IMAGE_SIZE': [1, 1]}))


@pytest.mark.parametrize('block', [{'IMAGE_SIZE': [0, 10]}, {'IMAGE_SIZE': [10, 0]}, {'IMAGE_SIZE': [10]},
                                   {'IMAGE_SIZE': [10, 10, 3]}, {'IMAGE_SIZE': [-4, 10]}, {'CHANNELS': []},
                                   {'MIN_DEPTH': 0.0}, {'MIN_DEPTH': -1.0}])
def test_check_camera_inputs_cfg_refuses(block):
    with pytest.raises(ConfigError, match=r'DATA_CONFIG\.CAMERA_INPUTS'):
        check_camera_inputs_cfg(CAMERA_INPUTS_SCHEMA.fill({'ENABLED': True, **block}))


# ---------------------------------------------------------------------------------------------------------------
# end to end: synthetic nuScenes with cameras -> infos --with_cam -> NuScenesDataset -> collated batch


def test_synthetic_dataset_batch_has_camera_inputs(tmp_path):
    from pathlib import Path

    from pcdet.config import cfg_from_list, cfg_from_yaml_file
    from pcdet.datasets import build_dataloader
    from pcdet.datasets.nuscenes.nuscenes_utils import create_nuscenes_info
    from pcdet.datasets.synthetic.nuscenes_writer import SyntheticNuScenesConfig, generate_nuscenes

    version, (width, height), size = 'v1.0-mini', (80, 48), (40, 24)
    dataroot = tmp_path / version
    generate_nuscenes(SyntheticNuScenesConfig(
        root=str(dataroot), version=version, num_scenes=2, samples_per_scene=2, azimuth_steps=128, seed=0,
        with_occupancy=False, with_cameras=True, camera_width=width, camera_height=height), progress=False)
    create_nuscenes_info(version, dataroot, max_sweeps=10, with_cam=True)
    cfg_file = Path(__file__).resolve().parents[2] / 'tools/cfgs/gaussian_models/gaussian_tiny_synthetic_pretrain.yaml'
    cfg = cfg_from_yaml_file(cfg_file)
    cfg_from_list(['DATA_CONFIG.DATA_PATH', str(tmp_path), 'DATA_CONFIG.VERSION', version,
                   'DATA_CONFIG.CAMERA_INPUTS.IMAGE_SIZE', str(list(size))], cfg)
    assert cfg.DATA_CONFIG.CAMERA_INPUTS.ENABLED and list(cfg.DATA_CONFIG.CAMERA_INPUTS.IMAGE_SIZE) == list(size)
    dataset, loader, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size=2, dist=False, workers=0,
                                          training=False, seed=0)
    batch = next(iter(loader))
    assert batch['camera_images'].shape == (2, 6, 3, size[1], size[0])
    assert batch['camera_intrinsics'].shape == (2, 6, 3, 3)
    assert batch['camera_from_lidar'].shape == (2, 6, 4, 4)
    assert batch['camera_depth'].shape == (2, 6, size[1], size[0])
    images = np.asarray(batch['camera_images'])
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0.01

    channels = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_BACK_RIGHT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_FRONT_LEFT')
    total = 0
    for b in range(2):
        info = dataset.infos[b]
        assert batch['frame_id'][b] == Path(info['lidar_path']).stem
        xyz = np.fromfile(dataroot / info['lidar_path'], dtype=np.float32).reshape(-1, 5)[:, :3].astype(np.float64)
        for v, channel in enumerate(channels):
            cam = info['cams'][channel]
            rotation = np.asarray(cam['sensor2lidar_rotation'], dtype=np.float64)
            translation = np.asarray(cam['sensor2lidar_translation'], dtype=np.float64)
            K = np.asarray(cam['camera_intrinsics'], dtype=np.float64)
            p_cam = (xyz - translation) @ rotation  # R^T (p - T), row-wise
            z = p_cam[:, 2]
            front = z > 1.0
            u = (p_cam[front] @ K[0]) / z[front]
            w = (p_cam[front] @ K[1]) / z[front]
            inside = (u >= 0) & (u <= width - 1) & (w >= 0) & (w <= height - 1)
            cols = np.floor((u[inside] + 0.5) * size[0] / width).astype(int)  # nearest centre of the resized grid
            rows = np.floor((w[inside] + 0.5) * size[1] / height).astype(int)
            expected = np.zeros((size[1], size[0]))
            for row, col, depth in zip(rows, cols, z[front][inside]):
                if expected[row, col] == 0 or depth < expected[row, col]:
                    expected[row, col] = depth
            got = np.asarray(batch['camera_depth'][b, v])
            assert np.array_equal(got > 0, expected > 0), (b, channel)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
            total += int((expected > 0).sum())
            with Image.open(dataroot / cam['data_path']) as image:
                stored = np.asarray(image.convert('RGB'))
            np.testing.assert_allclose(images[b, v], reference_resize(stored, size), atol=2e-6)
            np.testing.assert_allclose(np.asarray(batch['camera_from_lidar'][b, v])[:3, :3], rotation.T, atol=1e-6)
            np.testing.assert_allclose(np.asarray(batch['camera_intrinsics'][b, v]),
                                       resized_by_hand(K, size[0] / width, size[1] / height), rtol=1e-5, atol=1e-5)
    assert total > 100

    # training: the cameras stay put and a model undoes the points' augmentation with lidar_aug_matrix, which is
    # composed flip -> rotation -> scaling; another order is refused
    augmentations = cfg.DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST
    assert [a.NAME for a in augmentations][:2] == ['random_world_flip', 'random_world_rotation']
    augmentations[0], augmentations[1] = augmentations[1], augmentations[0]
    with pytest.raises(ConfigError, match='random_world_rotation.*camera inputs'):
        build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size=2, dist=False, workers=0, training=True)
