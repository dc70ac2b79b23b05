"""GaussianRenderPretrain: pretraining a DSVT encoder by rendering (GaussianCross / GaussTR style; docs/
GAUSSIAN_SPLATTING.md "Rendering pretext"). A sibling of GPICTURE and ContrastivePretrain: the encoder modules are
`vfe` and `backbone_3d` (plain `DSVT`), so `--pretrained_model` loads the whole encoder into every DSVT fine-tune
config. The pretraining-only parts sit under `dense_head.` (`dense_head.gaussians`: the per-voxel Gaussian head,
`dense_head.feature_projector`: 1x1 conv from the rendered features to the teacher's width,
`dense_head.background_logits`: the learned background colour). The frozen 2-D teacher
is not a registered module: it is built from the config (seeded or a local weights file) when the model is, so it
is neither in the checkpoints nor in the optimizer, and a bad teacher NAME or WEIGHTS is refused before training.

Step (training):
  1. encoder -> last-stage voxel tokens; K Gaussians per voxel (model_utils/gaussian_params.py) with values
     [RGB logits (3), features (FEATURE_DIM)]; colour = sigmoid(logits).
  2. Gaussians with opacity < RENDER.PRUNE_OPACITY are left out of rendering (they add < 1/255-level terms; pruning
     bounds the splatting cost as the opacities fall).
  3. per sample, RENDER.VIEWS_PER_SAMPLE of its cameras (drawn from torch's global generator): the Gaussians, in
     the augmented LiDAR frame, are rendered with camera_from_lidar @ inverse(lidar_aug_matrix) and the camera's K
     (pcdet.ops.gaussian_splatting.render_gaussians, pure torch or gsplat) at the camera image size.
     Uncovered pixels show the learned background colour.
  4. losses (pretraining/render_losses.py), each weighted by LOSS.<name> (0 skips it):
     RGB     (1 - SSIM_WEIGHT) L1 + SSIM_WEIGHT (1 - SSIM) against the camera image;
     DEPTH   L1 + SILOG_WEIGHT x SiLog of the alpha-normalised depth against camera_depth, over the pixels with a
             LiDAR depth that the render covers (alpha >= render_losses.ALPHA_FLOOR);
     FEATURE 1 - cosine of feature_projector(rendered features) against the teacher's feature map of the image
             (bilinearly resized to the image size; MAP_NORMALIZATION as the image-projection teacher).

forward(batch_dict), training:
    reads  points (P, 1 + C), batch_size, lidar_aug_matrix (B, 4, 4), camera_images (B, V, 3, H, W) in [0, 1],
           camera_intrinsics (B, V, 3, 3), camera_from_lidar (B, V, 4, 4), camera_depth (B, V, H, W)
           (DATA_CONFIG.CAMERA_INPUTS.ENABLED; a KeyError naming that switch otherwise)
    writes (through the encoder) what DynPillarVFE / DSVT write
    returns ({'loss': scalar}, tb_dict {loss, loss_rgb, loss_depth, loss_feature (the terms that ran),
             num_gaussians (rendered, mean per sample), num_views}, {})
forward, eval mode: runs the encoder and returns (one empty dict per sample, {}); `skip_evaluation = True`.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ConfigError
from ...config_schema import Schema
from ..model_utils.gaussian_params import (
    GAUSSIAN_PARAMS_SCHEMA,
    GaussianParamHead,
    check_gaussian_config,
    stage_voxel_size,
)
from .detector3d_template import Detector3DTemplate
from .pretext_encoder import PRETEXT_ENCODER_KEYS, check_plain_dsvt_encoder

CAMERA_KEYS = ('camera_images', 'camera_intrinsics', 'camera_from_lidar', 'camera_depth')
MAP_NORMALIZATIONS = ('none', 'instance')


class RenderHeads(nn.Module):
    """The pretraining-only modules under the template's `dense_head` slot (state-dict prefix `dense_head.`)."""

    def __init__(self, gaussians, feature_projector):
        super().__init__()
        self.gaussians, self.feature_projector = gaussians, feature_projector
        # learned background colour (sigmoid of these logits): the sky and everything beyond the point cloud range
        # has no Gaussian, so a fixed black background would ask the Gaussians to paint it
        self.background_logits = nn.Parameter(torch.zeros(3))


class GaussianRenderPretrain(Detector3DTemplate):
    skip_evaluation = True

    CONFIG_SCHEMA = Schema('MODEL (GaussianRenderPretrain)', {
        **PRETEXT_ENCODER_KEYS,
        'GAUSSIANS': GAUSSIAN_PARAMS_SCHEMA,
        'FEATURE_DIM': 16,                 # D: rendered feature channels
        'TEACHER': Schema('MODEL.TEACHER', {
            'NUM_FEATURES': 64,
            'MAP_NORMALIZATION': 'instance',   # none | instance (see image_projection.instance_normalize)
            'BACKBONE': Schema('MODEL.TEACHER.BACKBONE', {'NAME': 'resnet_tiny', 'WEIGHTS': None, 'SEED': 0,
                                                           'LAYER': None}),
        }),
        'RENDER': Schema('MODEL.RENDER', {
            'VIEWS_PER_SAMPLE': 2,         # cameras rendered per sample and step
            'PRUNE_OPACITY': 0.005,        # Gaussians below this opacity are not rendered
            'NEAR': 0.1,                   # metres
            'TILE': 16,                    # pixels (pure-torch rasteriser)
            'CHUNK': 256,                  # Gaussians composited per step (memory ~ TILE^2 x CHUNK)
            'BACKEND': 'auto',             # auto | torch | gsplat
        }),
        'LOSS': Schema('MODEL.LOSS', {'RGB': 1.0, 'SSIM_WEIGHT': 0.2, 'DEPTH': 0.05, 'SILOG_WEIGHT': 1.0,
                                      'SILOG_LAMBDA': 0.85, 'FEATURE': 1.0}),
    })

    def __init__(self, model_cfg, num_class, dataset):
        super().__init__(model_cfg=model_cfg, num_class=num_class, dataset=dataset)
        schema = self.CONFIG_SCHEMA
        check_plain_dsvt_encoder(model_cfg, schema, 'GaussianRenderPretrain', 'its keys are those of the fine-tune '
                                 'configs')
        resolved = schema.fill(model_cfg)  # every nested block with its defaults
        self.gaussian_cfg, self.teacher_cfg = resolved.GAUSSIANS, resolved.TEACHER
        self.render_cfg, self.loss_cfg = resolved.RENDER, resolved.LOSS
        self.feature_dim = int(resolved.FEATURE_DIM)
        self._check_config()
        self.module_topology = ['vfe', 'backbone_3d']
        self.module_list = self.build_networks()
        backbone = self.backbone_3d
        pc_range = torch.tensor([float(v) for v in self.dataset.point_cloud_range])
        self.register_buffer('point_cloud_range', pc_range, persistent=False)
        voxel_size = stage_voxel_size(pc_range, backbone.sparse_shape_list[0], backbone.stage_strides[-1],
                                      'MODEL.BACKBONE_3D')  # of the last stage, whose voxels carry the Gaussians
        self.register_buffer('stage_voxel_size', voxel_size, persistent=False)
        gaussians = GaussianParamHead.from_config(self.gaussian_cfg, int(backbone.d_model[-1]), 3 + self.feature_dim,
                                                  self.stage_voxel_size.tolist())
        projector = nn.Conv2d(self.feature_dim, int(self.teacher_cfg.NUM_FEATURES), 1)
        self.dense_head = RenderHeads(gaussians, projector)
        self._teacher = None  # not a submodule: frozen, not saved
        if float(self.loss_cfg.FEATURE) > 0:  # built here so that a bad NAME or WEIGHTS is refused before training
            from ...datasets.teachers.image_backbones import build_image_backbone
            teacher = build_image_backbone(self.teacher_cfg.BACKBONE, int(self.teacher_cfg.NUM_FEATURES),
                                           'MODEL.TEACHER')
            # object.__setattr__: nn.Module's would register it as a submodule (saved in checkpoints, trained)
            object.__setattr__(self, '_teacher', teacher.requires_grad_(False))

    def _check_config(self):
        check_gaussian_config(self.gaussian_cfg, 'MODEL.GAUSSIANS')
        if self.feature_dim < 1:
            raise ConfigError(f'MODEL.FEATURE_DIM must be >= 1, got {self.feature_dim}')
        for key in ('RGB', 'DEPTH', 'FEATURE'):
            if float(self.loss_cfg[key]) < 0:
                raise ConfigError(f'MODEL.LOSS.{key} must be >= 0 (0 skips the term), got {self.loss_cfg[key]}')
        if not any(float(self.loss_cfg[key]) > 0 for key in ('RGB', 'DEPTH', 'FEATURE')):
            raise ConfigError('MODEL.LOSS: RGB, DEPTH and FEATURE are all 0; GaussianRenderPretrain would train '
                              'nothing')
        ranges = {'LOSS.SSIM_WEIGHT': (self.loss_cfg.SSIM_WEIGHT, 0, 1, 'in [0, 1]'),
                  # lambda > 1 makes SiLog's radicand negative (clamped: a constant, no gradient)
                  'LOSS.SILOG_LAMBDA': (self.loss_cfg.SILOG_LAMBDA, 0, 1, 'in [0, 1]'),
                  'LOSS.SILOG_WEIGHT': (self.loss_cfg.SILOG_WEIGHT, 0, math.inf, '>= 0'),
                  # >= 1 would prune every Gaussian: only the background colour would train
                  'RENDER.PRUNE_OPACITY': (self.render_cfg.PRUNE_OPACITY, 0, 1 - 1e-9, 'in [0, 1)'),
                  'RENDER.NEAR': (self.render_cfg.NEAR, 1e-9, math.inf, '> 0 metres (behind it is culled)'),
                  'RENDER.VIEWS_PER_SAMPLE': (self.render_cfg.VIEWS_PER_SAMPLE, 1, math.inf, '>= 1'),
                  'RENDER.TILE': (self.render_cfg.TILE, 1, math.inf, '>= 1 pixel'),
                  'RENDER.CHUNK': (self.render_cfg.CHUNK, 1, math.inf, '>= 1 Gaussian')}
        for key, (value, low, high, expected) in ranges.items():
            if not low <= float(value) <= high:
                raise ConfigError(f'MODEL.{key} must be {expected}, got {value}')
        if self.render_cfg.BACKEND not in ('auto', 'torch', 'gsplat'):
            raise ConfigError(f'MODEL.RENDER.BACKEND: expected auto, torch or gsplat, got {self.render_cfg.BACKEND!r}')
        if self.teacher_cfg.MAP_NORMALIZATION not in MAP_NORMALIZATIONS:
            raise ConfigError(f'MODEL.TEACHER.MAP_NORMALIZATION: expected one of {MAP_NORMALIZATIONS}, got '
                              f'{self.teacher_cfg.MAP_NORMALIZATION!r}')

    @property
    def gaussian_head(self):
        return self.dense_head.gaussians

    # ---- teacher ------------------------------------------------------------------------------------------------
    def teacher_maps(self, images):
        """(N, 3, H, W) RGB in [0, 1] -> (N, F, H, W) frozen teacher features at the image size."""
        from ...datasets.teachers.image_backbones import IMAGENET_MEAN, IMAGENET_STD
        from ...datasets.teachers.image_projection import instance_normalize
        teacher = self._teacher.to(images.device).eval()
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            maps = teacher((images - mean) / std)
            if self.teacher_cfg.MAP_NORMALIZATION == 'instance':
                maps = torch.stack([instance_normalize(m) for m in maps])
            return F.interpolate(maps, size=images.shape[-2:], mode='bilinear', align_corners=False)

    # ---- forward ------------------------------------------------------------------------------------------------
    def encode(self, batch_dict):
        return self.backbone_3d(self.vfe(batch_dict))

    def predict_gaussians(self, batch_dict):
        """Gaussians of the encoded batch: GaussianParamHead.from_voxels' dict with 'values' split into 'colors'
        (N K, 3) and 'features' (N K, D)."""
        gaussians = self.gaussian_head.from_voxels(batch_dict['dsvt_stage_features'][-1],
                                                   batch_dict['dsvt_stage_coords'][-1], self.stage_voxel_size,
                                                   self.point_cloud_range)
        values = gaussians.pop('values')
        gaussians['colors'] = torch.sigmoid(values[:, :3])
        gaussians['features'] = values[:, 3:]
        return gaussians

    def render_views(self, gaussians, batch_dict):
        """Render the chosen views of every sample -> (rgb (R, 3, H, W), features (R, D, H, W), depth (R, H, W)
        expected depth, alpha (R, H, W), view index list [(b, v)] of the R renders, rendered Gaussian count)."""
        from ...ops.gaussian_splatting import render_gaussians
        from ..pretraining.render_losses import expected_depth
        cfg = self.render_cfg
        images = batch_dict['camera_images']
        num_views, height, width = images.shape[1], images.shape[3], images.shape[4]
        if int(cfg.VIEWS_PER_SAMPLE) > num_views:
            raise ValueError(f'MODEL.RENDER.VIEWS_PER_SAMPLE {cfg.VIEWS_PER_SAMPLE} > the {num_views} cameras per '
                             'sample (DATA_CONFIG.CAMERA_INPUTS.CHANNELS)')
        keep = gaussians['opacities'].detach() >= float(cfg.PRUNE_OPACITY)
        # one batched inverse, and inv_ex: linalg.inv's singularity check would wait for the GPU once per sample
        lidar_from_augmented = torch.linalg.inv_ex(batch_dict['lidar_aug_matrix'].double()).inverse.to(images.dtype)
        renders, chosen, counts = [], [], []
        for b in range(int(batch_dict['batch_size'])):
            rows = torch.nonzero(keep & (gaussians['batch_index'] == b)).squeeze(1)
            counts.append(rows.numel())
            for v in torch.randperm(num_views)[:int(cfg.VIEWS_PER_SAMPLE)].tolist():
                out = render_gaussians(
                    gaussians['means'][rows], gaussians['quats'][rows], gaussians['scales'][rows],
                    gaussians['opacities'][rows], gaussians['colors'][rows], gaussians['features'][rows],
                    batch_dict['camera_from_lidar'][b, v] @ lidar_from_augmented[b],
                    batch_dict['camera_intrinsics'][b, v], width, height, near=float(cfg.NEAR), tile=int(cfg.TILE),
                    chunk=int(cfg.CHUNK), background=torch.sigmoid(self.dense_head.background_logits),
                    backend=cfg.BACKEND)
                renders.append(out)
                chosen.append((b, v))
        rgb = torch.stack([r['rgb'] for r in renders]).permute(0, 3, 1, 2)
        features = torch.stack([r['features'] for r in renders]).permute(0, 3, 1, 2)
        alpha = torch.stack([r['alpha'] for r in renders])
        depth = expected_depth(torch.stack([r['depth'] for r in renders]), alpha)
        return rgb, features, depth, alpha, chosen, sum(counts) / max(len(counts), 1)

    def forward(self, batch_dict):
        if not self.training:
            batch_dict = self.encode(batch_dict)
            return [{} for _ in range(int(batch_dict['batch_size']))], {}
        missing = [key for key in CAMERA_KEYS if key not in batch_dict]
        if missing:
            raise KeyError(f'{missing}: GaussianRenderPretrain renders into the camera images; set '
                           'DATA_CONFIG.CAMERA_INPUTS.ENABLED: True (infos made with --with_cam)')
        from ..pretraining import render_losses as L
        batch_dict = self.encode(batch_dict)
        gaussians = self.predict_gaussians(batch_dict)
        rgb, features, depth, alpha, chosen, num_gaussians = self.render_views(gaussians, batch_dict)
        index_b = torch.tensor([b for b, _ in chosen], device=rgb.device)
        index_v = torch.tensor([v for _, v in chosen], device=rgb.device)
        target_rgb = batch_dict['camera_images'][index_b, index_v]
        losses, tb_dict = [], {}
        if float(self.loss_cfg.RGB) > 0:
            loss = L.rgb_loss(rgb, target_rgb, float(self.loss_cfg.SSIM_WEIGHT))
            losses.append(float(self.loss_cfg.RGB) * loss)
            tb_dict['loss_rgb'] = loss.detach()
        if float(self.loss_cfg.DEPTH) > 0:
            loss = L.depth_loss(depth, batch_dict['camera_depth'][index_b, index_v],
                                alpha.detach() >= L.ALPHA_FLOOR, float(self.loss_cfg.SILOG_WEIGHT),
                                float(self.loss_cfg.SILOG_LAMBDA))
            losses.append(float(self.loss_cfg.DEPTH) * loss)
            tb_dict['loss_depth'] = loss.detach()
        if float(self.loss_cfg.FEATURE) > 0:
            loss = L.feature_cosine_loss(self.dense_head.feature_projector(features), self.teacher_maps(target_rgb))
            losses.append(float(self.loss_cfg.FEATURE) * loss)
            tb_dict['loss_feature'] = loss.detach()
        total = sum(losses)
        tb_dict.update(loss=total.detach(), num_gaussians=float(num_gaussians), num_views=len(chosen))
        return {'loss': total}, tb_dict, {}
