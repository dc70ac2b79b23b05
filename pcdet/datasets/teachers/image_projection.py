"""`image_projection`: per-point features of a 2-D image backbone, projected from the camera images of the key frame.

Per frame (`encode_cameras`, once, shared by the key frame and all its sweeps):
    every camera image -> ImageNet-normalised (1, 3, H, W) -> backbone (eval, no grad, DEVICE) -> (F, h, w) map;
    with SUPERPIXELS.ENABLED also SLIC (scikit-image) labels (H, W) per image.
Per part (`__call__`; all parts are in the key-frame LiDAR frame, so sweeps are projected into the key-frame images):
    each point is projected into every camera (nuscenes/cameras.py: lidar_to_camera = inverse of the info's
    sensor2lidar [R | T], which holds the ego motion between the LiDAR and camera timestamps; seen = depth >
    MIN_DEPTH and inside the image), its feature is sampled bilinearly from each camera that sees it, averaged over
    those cameras and L2-normalised.

Validity flag: a point no camera sees gets an all-zero row. Seen points have unit rows, so "all zero" is the flag
DSVT_MAE and the contrastive model read (`models.pretraining.point_groups.teacher_point_validity`; no separate column
is stored). A seen point whose averaged feature is exactly zero (not met with real networks) would read as unseen,
which is the right meaning for "no information".

Sampling (`feature_map_coordinates`, `sample_feature_map`): a pixel coordinate u (integers = pixel centres, the
devkit convention) maps to the feature-map coordinate x = (u + 0.5) * w / W - 0.5, clamped to [0, w - 1], sampled
with grid_sample(align_corners=True). This equals bilinearly upsampling the map to the image size
(F.interpolate(align_corners=False)) and reading it at (u, v), without building the upsampled map; at stride 1 it
reads pixel (v, u) exactly.

Superpixel ids (SUPERPIXELS.ENABLED; extra per-point int32 array `superpixel_ids`, stored beside the features):
    camera_index * ID_STRIDE + SLIC label at the nearest pixel, of the first camera (CAMERA_CHANNELS order) that sees
    the point; -1 for unseen points. ID_STRIDE defaults to 4 * N_SEGMENTS (SLIC may return somewhat more segments than
    asked for; more than ID_STRIDE is an error naming the image). Unique within a frame, exact in float32.

Config (`DATA_CONFIG.TEACHER_FEATURES`): NAME image_projection, NUM_FEATURES (required), MIN_DEPTH (1.0 m, as the
devkit's map_pointcloud_to_image), DEVICE ('cpu'), MAP_NORMALIZATION ('none' | 'instance': each channel of each
image's feature map standardised over its pixels before sampling, `instance_normalize`), BACKBONE {NAME
('resnet_tiny' | 'torchvision:<arch>' | 'timm:<arch>'), WEIGHTS (local file or None), SEED (0), LAYER (torchvision
only)} (image_backbones.py), SUPERPIXELS {ENABLED (False), N_SEGMENTS (100), COMPACTNESS (10.0), ID_STRIDE (None)}.
"""
from typing import List, NamedTuple, Optional

import numpy as np
import torch

from ...config import ConfigError
from ...config_schema import Schema
from ..carried_columns import FLOAT32_EXACT_INTEGER
from ..nuscenes.cameras import CameraView, project_points
from .base import Teacher
from .image_backbones import IMAGENET_MEAN, IMAGENET_STD, build_image_backbone

SECTION = 'DATA_CONFIG.TEACHER_FEATURES'
SUPERPIXEL_IDS = 'superpixel_ids'
MAX_CAMERAS = 16  # bounds the id range checked against float32 exactness at config time
BACKBONE_SCHEMA = Schema(f'{SECTION}.BACKBONE', {'NAME': 'resnet_tiny', 'WEIGHTS': None, 'SEED': 0, 'LAYER': None})
MAP_NORMALIZATIONS = ('none', 'instance')
SUPERPIXEL_SCHEMA = Schema(f'{SECTION}.SUPERPIXELS', {'ENABLED': False, 'N_SEGMENTS': 100, 'COMPACTNESS': 10.0,
                                                      'ID_STRIDE': None})


class EncodedCameras(NamedTuple):
    """The per-frame work of `encode_cameras`: views [CameraView], feature_maps [(F, h, w) float32 tensor],
    superpixels [(H, W) int64 SLIC labels] or None."""
    views: List[CameraView]
    feature_maps: List[torch.Tensor]
    superpixels: Optional[List[np.ndarray]]


def superpixel_settings(teacher_cfg):
    """(enabled, n_segments, compactness, id_stride) of the SUPERPIXELS block (ConfigError for bad values)."""
    block = ImageProjectionTeacher.CONFIG_SCHEMA.get(teacher_cfg, 'SUPERPIXELS')
    enabled = bool(SUPERPIXEL_SCHEMA.get(block, 'ENABLED'))
    n_segments = int(SUPERPIXEL_SCHEMA.get(block, 'N_SEGMENTS'))
    id_stride = SUPERPIXEL_SCHEMA.get(block, 'ID_STRIDE')
    id_stride = 4 * n_segments if id_stride is None else int(id_stride)
    if enabled and (n_segments < 1 or id_stride < n_segments or MAX_CAMERAS * id_stride >= FLOAT32_EXACT_INTEGER):
        raise ConfigError(f'{SECTION}.SUPERPIXELS: N_SEGMENTS ({n_segments}) must be >= 1 and ID_STRIDE ({id_stride}) '
                          f'>= N_SEGMENTS with {MAX_CAMERAS} * ID_STRIDE < 2**24 (ids ride in float32 columns)')
    return enabled, n_segments, float(SUPERPIXEL_SCHEMA.get(block, 'COMPACTNESS')), id_stride


def instance_normalize(feature_map, eps=1e-6):
    """(F, h, w) -> every channel shifted and scaled to zero mean and unit (population) std over the map's pixels
    (a channel with std <= eps becomes 0).

    Why: the channels of a randomly initialised ReLU network share a large positive common component, so its
    L2-normalised per-point features are nearly parallel (mean cosine 0.94 on the synthetic cameras, 2026-12-06):
    a reconstruction target that predicting one constant vector almost meets. Standardising each channel per image
    keeps what varies across the image."""
    centred = feature_map - feature_map.mean(dim=(1, 2), keepdim=True)
    std = centred.square().mean(dim=(1, 2), keepdim=True).sqrt()
    # a (numerically) constant channel carries nothing: 0, not its round-off noise divided by eps
    return torch.where(std > eps, centred / std.clamp_min(eps), torch.zeros_like(centred))


def normalise_image(image):
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 ImageNet-normalised tensor."""
    rgb = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)  # a writable copy
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((rgb - mean) / std).unsqueeze(0)


def feature_map_coordinates(uv, image_size, map_size):
    """(N, 2) pixel coordinates (u, v) of an image of size (H, W) -> (N, 2) coordinates (x, y) on a (h, w) feature
    map covering the same field of view (module doc), clamped to [0, w - 1] x [0, h - 1]."""
    (height, width), (map_height, map_width) = image_size, map_size
    uv = np.asarray(uv, dtype=np.float64)
    x = np.clip((uv[:, 0] + 0.5) * map_width / width - 0.5, 0.0, map_width - 1)
    y = np.clip((uv[:, 1] + 0.5) * map_height / height - 0.5, 0.0, map_height - 1)
    return np.stack([x, y], axis=1)


def sample_feature_map(feature_map, xy):
    """Bilinear samples of a (F, h, w) tensor at (N, 2) map coordinates (x = column, y = row, integers = cell
    centres, inside the map) -> (N, F) float32 numpy."""
    channels, height, width = feature_map.shape
    xy = torch.as_tensor(np.asarray(xy), dtype=torch.float64)
    grid = torch.stack([2.0 * xy[:, 0] / max(width - 1, 1) - 1.0, 2.0 * xy[:, 1] / max(height - 1, 1) - 1.0], dim=1)
    grid = grid.to(device=feature_map.device, dtype=feature_map.dtype).view(1, 1, -1, 2)
    samples = torch.nn.functional.grid_sample(feature_map[None], grid, mode='bilinear', padding_mode='border',
                                              align_corners=True)
    return samples[0, :, 0, :].T.float().cpu().numpy()


class ImageProjectionTeacher(Teacher):
    """Image-projection teacher (module doc).
    `encode_cameras([CameraView])` -> EncodedCameras, once per frame;
    `__call__(points (N, >= 3), point_labels=None, cameras=EncodedCameras | [CameraView])` -> (N, F) float32, or with
    superpixels (features, {'superpixel_ids': (N,) int32})."""

    name = 'image_projection'
    needs_cameras = True
    CONFIG_SCHEMA = Teacher.CONFIG_SCHEMA.extend(f'{SECTION} (image_projection)', {
        'MIN_DEPTH': 1.0, 'DEVICE': 'cpu', 'MAP_NORMALIZATION': 'none', 'BACKBONE': BACKBONE_SCHEMA,
        'SUPERPIXELS': SUPERPIXEL_SCHEMA})

    def __init__(self, teacher_cfg, backbone=None):
        """`backbone`: a module (1, 3, H, W) normalised image -> (1, F, h, w) used instead of BACKBONE (tests)."""
        schema = self.CONFIG_SCHEMA
        self.num_features = int(schema.get(teacher_cfg, 'NUM_FEATURES'))
        self.min_depth = float(schema.get(teacher_cfg, 'MIN_DEPTH'))
        if self.num_features < 1 or self.min_depth < 0:
            raise ConfigError(f'{SECTION}: NUM_FEATURES ({self.num_features}) must be >= 1 and MIN_DEPTH '
                              f'({self.min_depth}) >= 0')
        self.superpixels, self.n_segments, self.compactness, self.id_stride = superpixel_settings(teacher_cfg)
        self.extra_point_arrays = (SUPERPIXEL_IDS,) if self.superpixels else ()
        self.device = torch.device(str(schema.get(teacher_cfg, 'DEVICE')))
        self.map_normalization = str(schema.get(teacher_cfg, 'MAP_NORMALIZATION'))
        if self.map_normalization not in MAP_NORMALIZATIONS:
            raise ConfigError(f'{SECTION}.MAP_NORMALIZATION must be one of {MAP_NORMALIZATIONS}, got '
                              f'{self.map_normalization!r}')
        if backbone is None:
            backbone = build_image_backbone(schema.get(teacher_cfg, 'BACKBONE'), self.num_features, SECTION)
        self.backbone = backbone.to(self.device).eval()

    @classmethod
    def extra_arrays_for(cls, teacher_cfg):
        """Names of the extra per-point arrays a teacher of `teacher_cfg` stores (feature_store, dataset)."""
        return (SUPERPIXEL_IDS,) if superpixel_settings(teacher_cfg)[0] else ()

    @torch.no_grad()
    def encode_cameras(self, views):
        """EncodedCameras of a frame's [CameraView]: one backbone pass and (optionally) one SLIC per image."""
        if len(views) > MAX_CAMERAS:
            raise ValueError(f'{len(views)} cameras in one frame; the superpixel id range allows {MAX_CAMERAS}')
        feature_maps, superpixels = [], [] if self.superpixels else None
        for view in views:
            feature_map = self.backbone(normalise_image(view.image).to(self.device))
            if feature_map.dim() != 4 or feature_map.shape[:2] != (1, self.num_features):
                raise ValueError(f'image backbone returned {tuple(feature_map.shape)} for {view.path}; expected '
                                 f'(1, NUM_FEATURES={self.num_features}, h, w)')
            feature_map = feature_map[0].float()
            feature_maps.append(instance_normalize(feature_map) if self.map_normalization == 'instance'
                                else feature_map)
            if self.superpixels:
                superpixels.append(self.segment(view))
        return EncodedCameras(list(views), feature_maps, superpixels)

    def segment(self, view):
        """(H, W) int64 SLIC labels 0.. of one camera image; more than ID_STRIDE segments raise naming the image."""
        from skimage.segmentation import slic
        labels = slic(view.image, n_segments=self.n_segments, compactness=self.compactness, start_label=0,
                      channel_axis=-1).astype(np.int64)
        if labels.max() >= self.id_stride:
            raise ValueError(f'SLIC gave {labels.max() + 1} segments for {view.path}, more than '
                             f'{SECTION}.SUPERPIXELS.ID_STRIDE = {self.id_stride}; raise ID_STRIDE')
        return labels

    def __call__(self, points, point_labels=None, cameras=None):
        if cameras is None:
            raise ValueError('image_projection teacher needs the camera images of the frame (cameras=...)')
        if not isinstance(cameras, EncodedCameras):
            cameras = self.encode_cameras(cameras)
        features, superpixel_ids = self.project(np.asarray(points)[:, 0:3], cameras)
        return (features, {SUPERPIXEL_IDS: superpixel_ids}) if self.superpixels else features

    def project(self, xyz, cameras):
        """(N, 3) LiDAR points + EncodedCameras -> ((N, F) float32 unit rows / zero rows for unseen points,
        (N,) int32 superpixel ids (-1 unseen; all -1 without superpixels))."""
        num_points = len(xyz)
        total = np.zeros((num_points, self.num_features), dtype=np.float64)
        count = np.zeros(num_points, dtype=np.int64)
        superpixel_ids = np.full(num_points, -1, dtype=np.int32)
        for index, (view, feature_map) in enumerate(zip(cameras.views, cameras.feature_maps)):
            uv, _, seen = project_points(xyz, view, self.min_depth)
            rows = np.flatnonzero(seen)
            if rows.size == 0:
                continue
            xy = feature_map_coordinates(uv[rows], view.image.shape[:2], feature_map.shape[1:])
            total[rows] += sample_feature_map(feature_map, xy)
            count[rows] += 1
            if cameras.superpixels is not None:
                first = rows[superpixel_ids[rows] < 0]
                pixel = np.rint(uv[first]).astype(np.int64)  # nearest pixel centre (inside: seen is within bounds)
                labels = cameras.superpixels[index][pixel[:, 1], pixel[:, 0]]
                superpixel_ids[first] = index * self.id_stride + labels
        mean = total / np.maximum(count, 1)[:, None]
        norm = np.linalg.norm(mean, axis=1, keepdims=True)
        features = np.where(norm > 0, mean / np.where(norm > 0, norm, 1.0), 0.0)
        return features.astype(np.float32), superpixel_ids
