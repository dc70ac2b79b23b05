"""Camera images as model inputs (`DATA_CONFIG.CAMERA_INPUTS`): the key frame's images, resized, with the matrices
that map the key-frame LiDAR frame to each image, and a sparse LiDAR depth map per image (the depth target of the
rendering pretext, docs/GAUSSIAN_SPLATTING.md).

Per sample (before augmentation: the images and matrices never move; a model maps augmented points back with the
inverse of `lidar_aug_matrix`):
    camera_images      (V, 3, h, w) float32 RGB in [0, 1]
    camera_intrinsics  (V, 3, 3) float32, for the resized images
    camera_from_lidar  (V, 4, 4) float32, key-frame LiDAR frame -> camera frame (x right, y down, z forward)
    camera_depth       (V, h, w) float32, camera z of the nearest key-frame LiDAR point projecting into the pixel
                       (rounded to the nearest pixel centre), 0 where none does
V = the CHANNELS listed (default: all six, cameras.CAMERA_CHANNELS order); (w, h) = IMAGE_SIZE (default: the stored
size). Collated by stacking: (B, V, ...), so every frame must have the same channels and image size.

Resizing keeps the pixel-centre convention of cameras.py (integers = pixel centres): a pixel coordinate u of the
stored W-wide image is u' = (u + 0.5) w / W - 0.5 in the resized one, so K' = [[s_x, 0, s_x/2 - 1/2],
[0, s_y, s_y/2 - 1/2], [0, 0, 1]] @ K, and the image is resampled with antialiased bilinear interpolation over the
same pixel-centre grid (align_corners=False).
"""
import numpy as np
import torch

from ...config import ConfigError
from ...config_schema import Schema
from .cameras import load_camera_views, project_points

CAMERA_INPUTS_SCHEMA = Schema('DATA_CONFIG.CAMERA_INPUTS', {
    'ENABLED': False,
    'CHANNELS': None,      # list of camera channels, or null: all six
    'IMAGE_SIZE': None,    # [width, height] of the images given to the model, or null: the stored size
    'MIN_DEPTH': 1.0,      # metres: nearer LiDAR points are left out of camera_depth
})
CAMERA_INPUT_KEYS = ('camera_images', 'camera_intrinsics', 'camera_from_lidar', 'camera_depth')


def check_camera_inputs_cfg(cfg):
    size = cfg.IMAGE_SIZE
    if size is not None and (len(size) != 2 or any(int(v) < 1 for v in size)):
        raise ConfigError(f'DATA_CONFIG.CAMERA_INPUTS.IMAGE_SIZE must be [width, height] in pixels or null, got {size}')
    if cfg.CHANNELS is not None and len(cfg.CHANNELS) == 0:
        raise ConfigError('DATA_CONFIG.CAMERA_INPUTS.CHANNELS is empty: list camera channels or null for all')
    if float(cfg.MIN_DEPTH) <= 0:
        # a point at or behind the camera plane projects mirrored; kept, it would win its pixel with depth <= 0
        raise ConfigError(f'DATA_CONFIG.CAMERA_INPUTS.MIN_DEPTH must be > 0 metres, got {cfg.MIN_DEPTH}')


def resized_intrinsics(intrinsics, stored_size, size):
    """K (3, 3) of a (W, H) image -> K of the image resized to `size` (w, h) (module doc)."""
    (width, height), (new_width, new_height) = stored_size, size
    scale_x, scale_y = new_width / width, new_height / height
    resize = np.array([[scale_x, 0.0, scale_x / 2 - 0.5], [0.0, scale_y, scale_y / 2 - 0.5], [0.0, 0.0, 1.0]])
    return resize @ np.asarray(intrinsics, dtype=np.float64)


def resize_image(image, size):
    """(H, W, 3) uint8 -> (3, h, w) float32 in [0, 1] at `size` (w, h)."""
    rgb = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    if tuple(rgb.shape[1:]) != (size[1], size[0]):
        rgb = torch.nn.functional.interpolate(rgb[None], size=(size[1], size[0]), mode='bilinear',
                                              align_corners=False, antialias=True)[0].clamp_(0.0, 1.0)
    return rgb.numpy()


def lidar_depth_map(xyz, view, size, min_depth):
    """(h, w) float32 nearest LiDAR depth per pixel of `view`'s image resized to `size` (0: no point)."""
    uv, depth, seen = project_points(xyz, view, min_depth)
    stored = view.image.shape[1], view.image.shape[0]
    columns = np.rint((uv[seen, 0] + 0.5) * size[0] / stored[0] - 0.5).astype(np.int64)
    rows = np.rint((uv[seen, 1] + 0.5) * size[1] / stored[1] - 0.5).astype(np.int64)
    inside = (columns >= 0) & (columns < size[0]) & (rows >= 0) & (rows < size[1])
    flat = rows[inside] * size[0] + columns[inside]
    nearest = np.full(size[0] * size[1], np.inf)
    np.minimum.at(nearest, flat, depth[seen][inside])
    return np.where(np.isfinite(nearest), nearest, 0.0).reshape(size[1], size[0]).astype(np.float32)


def camera_inputs(root, info, cfg, key_frame_xyz):
    """The module's four arrays for one key-frame info ('cams' from --with_cam; errors name the file).
    key_frame_xyz: (N, 3) key-frame LiDAR points (the depth targets)."""
    views = load_camera_views(root, info, cfg.CHANNELS)
    stored_sizes = {(view.image.shape[1], view.image.shape[0]) for view in views}
    if cfg.IMAGE_SIZE is None and len(stored_sizes) > 1:
        raise ValueError(f'the cameras of {info.get("lidar_path", "?")} have different image sizes '
                         f'{sorted(stored_sizes)}: set DATA_CONFIG.CAMERA_INPUTS.IMAGE_SIZE')
    images, intrinsics, extrinsics, depths = [], [], [], []
    for view in views:
        stored = (view.image.shape[1], view.image.shape[0])
        size = stored if cfg.IMAGE_SIZE is None else tuple(int(v) for v in cfg.IMAGE_SIZE)
        images.append(resize_image(view.image, size))
        intrinsics.append(resized_intrinsics(view.intrinsics, stored, size))
        extrinsics.append(view.lidar_to_camera)
        depths.append(lidar_depth_map(key_frame_xyz, view, size, float(cfg.MIN_DEPTH)))
    return {'camera_images': np.stack(images), 'camera_intrinsics': np.stack(intrinsics).astype(np.float32),
            'camera_from_lidar': np.stack(extrinsics).astype(np.float32), 'camera_depth': np.stack(depths)}
