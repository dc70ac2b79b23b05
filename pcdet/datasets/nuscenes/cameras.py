"""Camera images of a nuScenes key frame in the key-frame LiDAR frame, and the projection of LiDAR points into them.

Reads the camera entries of an info made with `--with_cam` (OpenPCDet schema):
    info['cams'][CHANNEL] = {data_path (relative to the dataroot), sensor2lidar_rotation (3, 3),
        sensor2lidar_translation (3,), camera_intrinsics (3, 3), image_shape (height, width), ...}
where a point p_cam of the camera frame (x right, y down, z forward) is p_lidar = R @ p_cam + T in the key-frame
LIDAR_TOP frame at the LiDAR timestamp. The info generator composes R, T through the global frame with the ego poses
at the camera and at the LiDAR timestamps (upstream's `obtain_sensor2top`), so the ego motion between the two
timestamps is already inside them; `lidar_to_camera` is the inverse of [R | T].

Pixel convention (the devkit's `view_points`): uvw = K @ p_cam, (u, v) = (uvw[0] / z, uvw[1] / z) in continuous pixel
coordinates where the integers are pixel centres: pixel (row i, column j) of the image array is (u, v) = (j, i).
A point is seen by a camera when z > min_depth and 0 <= u <= W - 1 and 0 <= v <= H - 1 (the area spanned by the pixel
centres, where bilinear sampling needs no padding; the outer half-pixel border counts as unseen), with
EDGE_TOLERANCE pixels of slack for round-off.

    load_camera_views(root, info, channels=None) -> [CameraView]   in CAMERA_CHANNELS order (others after, by name)
    lidar_to_camera_matrix(rotation, translation) -> (4, 4)
    project_points(xyz, view, min_depth) -> (uv (N, 2), depth (N,), seen (N,) bool)
Errors name the file: an info without 'cams' (hint: create the infos with --with_cam), a missing or unreadable image,
an image whose size differs from `image_shape`, a camera without valid intrinsics or extrinsics.
"""
from pathlib import Path
from typing import NamedTuple

import numpy as np

# The six channels of nuscenes_utils.CAMERA_CHANNELS (the infos keep upstream's order) in rig order, clockwise from
# CAM_FRONT: this order numbers the cameras of a frame (camera index of the image teacher's superpixel ids).
CAMERA_CHANNELS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_BACK_RIGHT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_FRONT_LEFT')
# pixels: round-off of a point on an edge pixel's ray must not flip it to unseen (sampling clamps to the edge)
EDGE_TOLERANCE = 1e-6
WITH_CAM_HINT = ('create the infos with camera entries: python -m pcdet.datasets.nuscenes.nuscenes_dataset '
                 '--func create_nuscenes_infos --cfg_file <dataset yaml> --version <VERSION> --data_path <DATA_PATH> '
                 '--with_cam')


class CameraView(NamedTuple):
    """One camera of a key frame.
    name             channel, e.g. 'CAM_FRONT'
    path             Path of the image file (named in errors)
    image            (H, W, 3) uint8 RGB
    intrinsics       (3, 3) float64 K
    lidar_to_camera  (4, 4) float64: key-frame LiDAR frame -> camera frame (x right, y down, z forward)
    """
    name: str
    path: Path
    image: np.ndarray
    intrinsics: np.ndarray
    lidar_to_camera: np.ndarray


def lidar_to_camera_matrix(rotation, translation):
    """(4, 4) inverse of the camera -> LiDAR transform p_lidar = rotation @ p_cam + translation:
    p_cam = rotation^T @ (p_lidar - translation) (rotation (3, 3) orthonormal, translation (3,))."""
    rotation = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    translation = np.asarray(translation, dtype=np.float64).reshape(3)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation.T
    matrix[:3, 3] = -rotation.T @ translation
    return matrix


def ordered_channels(cams):
    """Channels of `cams` in CAMERA_CHANNELS order, unknown channels after them sorted by name."""
    known = [name for name in CAMERA_CHANNELS if name in cams]
    return known + sorted(name for name in cams if name not in CAMERA_CHANNELS)


def _checked_matrix(cam, key, shape, path, name):
    """`cam[key]` as a finite float64 array of `shape`; ValueError naming the image file and channel otherwise."""
    value = cam.get(key)
    array = None if value is None else np.asarray(value, dtype=np.float64)
    if array is None or array.shape != shape or not np.isfinite(array).all():
        got = 'missing' if value is None else f'shape {np.shape(value)}'
        raise ValueError(f'camera {name} of image {path}: info key {key!r} is {got}; expected a finite {shape} '
                         f'array (regenerate the infos with --with_cam)')
    return array


def check_intrinsics(intrinsics, path, name):
    """ValueError naming the image unless K is a pinhole matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]], fx, fy > 0."""
    if intrinsics[0, 0] <= 0 or intrinsics[1, 1] <= 0 or not np.allclose(intrinsics[2], [0, 0, 1]) \
            or intrinsics[1, 0] != 0:
        raise ValueError(f'camera {name} of image {path}: camera_intrinsics {intrinsics.tolist()} is not a pinhole '
                         'matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0')


def read_image(path, expected_shape=None, name=''):
    """(H, W, 3) uint8 RGB of an image file (JPEG, PNG); missing / unreadable / wrong size (vs (H, W)) raise naming
    the file."""
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'camera image {path} ({name}) not found; the infos reference it '
                                '(is DATA_PATH/VERSION the dataroot the infos were made for?)')
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert('RGB'))
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f'camera image {path} ({name}) is not a readable image ({err})') from err
    if expected_shape is not None and tuple(rgb.shape[:2]) != tuple(int(x) for x in expected_shape):
        raise ValueError(f'camera image {path} ({name}) is {rgb.shape[0]}x{rgb.shape[1]} (height x width) but the '
                         f'info says image_shape {tuple(int(x) for x in expected_shape)}')
    return rgb


def load_camera_view(root, name, cam):
    """CameraView of one info['cams'] entry (module doc); `root` = the dataroot the data_path is relative to."""
    if 'data_path' not in cam:
        raise ValueError(f'camera {name}: info entry has no data_path ({WITH_CAM_HINT})')
    path = Path(root) / cam['data_path']
    intrinsics = _checked_matrix(cam, 'camera_intrinsics', (3, 3), path, name)
    check_intrinsics(intrinsics, path, name)
    rotation = _checked_matrix(cam, 'sensor2lidar_rotation', (3, 3), path, name)
    translation = _checked_matrix(cam, 'sensor2lidar_translation', (3,), path, name)
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-5):
        raise ValueError(f'camera {name} of image {path}: sensor2lidar_rotation is not a rotation matrix')
    image = read_image(path, cam.get('image_shape'), name)
    return CameraView(name, path, image, intrinsics, lidar_to_camera_matrix(rotation, translation))


def require_cams(info):
    """info['cams'] of a key-frame info; KeyError naming its LiDAR file and the --with_cam hint when it has none."""
    cams = info.get('cams')
    if not cams:
        raise KeyError(f'info of {info.get("lidar_path", "?")} has no camera entries (info["cams"]); '
                       f'{WITH_CAM_HINT}')
    return cams


def load_camera_views(root, info, channels=None):
    """[CameraView] of the key frame `info` (all channels of info['cams'], or `channels` in that order).
    An info without 'cams' raises KeyError naming its LiDAR file and the --with_cam hint."""
    cams = require_cams(info)
    names = ordered_channels(cams) if channels is None else list(channels)
    missing = [name for name in names if name not in cams]
    if missing:
        raise KeyError(f'info of {info.get("lidar_path", "?")} has no camera {missing} (has {sorted(cams)})')
    return [load_camera_view(root, name, cams[name]) for name in names]


def project_points(xyz, view, min_depth=1.0):
    """Project LiDAR points into one camera (module doc for the pixel convention).

    Args:
        xyz: (N, 3) points in the key-frame LiDAR frame.  view: CameraView.  min_depth: metres along the optical axis.
    Returns:
        uv (N, 2) float64 continuous pixel coordinates (integers = pixel centres; meaningless where not seen),
        depth (N,) float64 camera z, seen (N,) bool: depth > min_depth and inside [0, W - 1] x [0, H - 1].
    """
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    cam = xyz @ view.lidar_to_camera[:3, :3].T + view.lidar_to_camera[:3, 3]
    depth = cam[:, 2]
    in_front = depth > min_depth
    pixels = cam @ view.intrinsics.T
    uv = pixels[:, :2] / np.where(in_front, depth, 1.0)[:, None]  # behind the camera: not divided, masked below
    height, width = view.image.shape[:2]
    lower, upper = -EDGE_TOLERANCE, np.array([width - 1, height - 1]) + EDGE_TOLERANCE
    seen = in_front & np.all((uv >= lower) & (uv <= upper), axis=1)
    return uv, depth, seen
