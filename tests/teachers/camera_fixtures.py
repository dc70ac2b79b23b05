"""Hand-built pinhole cameras for the image-teacher tests: intrinsics, poses composed as nuScenes' info generation
does (upstream `obtain_sensor2top`), points placed on chosen pixel rays, JPEG files, info['cams'] entries."""
import numpy as np
import torch
from PIL import Image

from pcdet.datasets.nuscenes.cameras import CameraView, lidar_to_camera_matrix

# camera axes (x right, y down, z forward) expressed in a LiDAR / ego frame (x forward, y left, z up): a camera
# looking along +x
LOOK_FORWARD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rotation_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_x(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def intrinsics(width, height, focal):
    """(3, 3) K with the principal point at the image centre (pixel-centre coordinates)."""
    return np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal * 1.02, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def sensor2lidar_like_upstream(l2e_r_s, l2e_t_s, e2g_r_s, e2g_t_s, l2e_r, l2e_t, e2g_r, e2g_t):
    """(R, T) of upstream OpenPCDet / BEVFusion `obtain_sensor2top` (rotation matrices, translations (3,)):
    sensor -> ego at the sensor time -> global -> ego at the LiDAR time -> LiDAR."""
    inv = np.linalg.inv
    R = (l2e_r_s.T @ e2g_r_s.T) @ (inv(e2g_r).T @ inv(l2e_r).T)
    T = (l2e_t_s @ e2g_r_s.T + e2g_t_s) @ (inv(e2g_r).T @ inv(l2e_r).T)
    T -= e2g_t @ (inv(e2g_r).T @ inv(l2e_r).T) + l2e_t @ inv(l2e_r).T
    return R.T, T


def view(rotation, translation, K, image, name='CAM_FRONT'):
    """CameraView with sensor2lidar (rotation, translation)."""
    return CameraView(name, f'<{name} test image>', image, np.asarray(K, dtype=np.float64),
                      lidar_to_camera_matrix(rotation, translation))


def points_on_rays(uv, depths, K, rotation, translation):
    """(N, 3) LiDAR points on the rays of pixels uv (N, 2) at camera depths (N,) (camera z), for a camera with
    sensor2lidar (rotation, translation)."""
    rays = np.linalg.solve(K, np.concatenate([uv, np.ones((len(uv), 1))], axis=1).T).T  # z = 1
    return (rays * depths[:, None]) @ np.asarray(rotation).T + np.asarray(translation)


def colour_coded_image(height, width):
    """(H, W, 3) uint8 with a distinct colour per pixel: (8 * row, 8 * column, 77) (H, W <= 32)."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
    return np.stack([rows * 8, cols * 8, np.full_like(rows, 77)], axis=2).astype(np.uint8)


class IdentityRGB(torch.nn.Module):
    """Test backbone 'identity_rgb': the normalised image itself, stride 1 (3 features per pixel)."""

    def forward(self, images):
        return images.clone()


class AveragePoolRGB(torch.nn.Module):
    """Test backbone: the normalised image average-pooled with `stride` (a strided feature map)."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, images):
        return torch.nn.functional.avg_pool2d(images, self.stride, ceil_mode=True)


def write_jpeg(path, image, quality=95):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=quality)


def cam_entry(data_path, rotation, translation, K, image_shape, channel='CAM_FRONT'):
    """info['cams'][channel] as the `--with_cam` infos hold it (the pose records are placeholders: only
    sensor2lidar_* and camera_intrinsics place the camera)."""
    return {'data_path': data_path, 'type': channel, 'sample_data_token': f'{channel}-token',
            'sensor2ego_translation': [0.0, 0.0, 0.0], 'sensor2ego_rotation': [1.0, 0.0, 0.0, 0.0],
            'ego2global_translation': [0.0, 0.0, 0.0], 'ego2global_rotation': [1.0, 0.0, 0.0, 0.0],
            'sensor2lidar_rotation': np.asarray(rotation), 'sensor2lidar_translation': np.asarray(translation),
            'camera_intrinsics': np.asarray(K), 'image_shape': tuple(image_shape), 'timestamp': 0}
