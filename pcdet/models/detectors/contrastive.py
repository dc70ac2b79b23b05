"""ContrastivePretrain: image-to-LiDAR (SLidR / PPKT) and intra-modal (CrossPoint) contrastive pretraining of a DSVT
encoder (docs/CONTRASTIVE.md). A sibling of GPICTURE: the encoder modules are `vfe` (dynamic pillar / voxel VFE) and
`backbone_3d` (plain `DSVT`), so the state-dict keys `vfe.*` / `backbone_3d.*` equal those of every DSVT fine-tune
config and `--pretrained_model` loads the whole encoder. The projection heads (`dense_head.point_head`,
`dense_head.pixel_head`, `dense_head.global_head`) are pretraining-only; a head is built only when a loss with a
weight > 0 uses it.

forward(batch_dict), training:
    reads  points (P, 1 + C) [b, x, y, z, ...], batch_size,
           point_teacher_features (P, F) the 2-D feature of the pixels each point projects to (all-zero row: no
               camera sees it), needed when POINT_TO_PIXEL or SUPERPOINT_TO_SUPERPIXEL has a weight > 0,
           point_superpixel_ids (P,) integer, -1 = none, unique within a frame: needed when
               SUPERPOINT_TO_SUPERPIXEL.WEIGHT > 0 (a KeyError naming the key and the config switch otherwise)
    writes (through the encoder) what DynPillarVFE / DSVT write, e.g. point_in_grid_mask, point_voxel_index,
           voxel_features, voxel_coords, dsvt_pooling_maps
    returns ({'loss': scalar}, tb_dict {loss_point_pixel, loss_superpixel, loss_intra, num_point_pairs,
             num_superpixels} (the terms that ran), {})
forward, eval mode: runs the encoder and returns (one empty dict per sample, {}); `skip_evaluation = True`
(train.py skips the post-training evaluation, test.py refuses the config).

The per-point encoder feature is the output token of the voxel that contains the point: the VFE's point -> voxel
map (`point_voxel_index` of the rows in `point_in_grid_mask`) composed with DSVT's `dsvt_pooling_maps` (identity for
one-stage encoders such as the tiny config; the last-stage token of the point's column for multi-stage ones).
"""
import torch
from torch import nn

from ...config import ConfigError
from ...config_schema import Schema
from .detector3d_template import Detector3DTemplate
from .pretext_encoder import PRETEXT_ENCODER_KEYS, check_plain_dsvt_encoder

_LOSS_KEYS = {'WEIGHT': 1.0, 'TEMPERATURE': 0.07}


class ProjectionHead(nn.Module):
    """MLP `Linear -> ReLU` per hidden width, then a final `Linear` to `out_channels` (no normalisation layer:
    superpixel and per-sample batches can be a handful of rows, where BatchNorm statistics are noise)."""

    def __init__(self, in_channels, hidden, out_channels):
        super().__init__()
        layers, width = [], int(in_channels)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            width = int(h)
        layers.append(nn.Linear(width, int(out_channels)))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)


class ContrastiveHeads(nn.Module):
    """The pretraining-only projection heads, kept under the template's `dense_head` slot (state-dict prefix
    `dense_head.`, as GPICTURE's pretraining head) so tooling that inspects `model.dense_head` finds them; each is
    None when no loss with a weight > 0 uses it."""

    def __init__(self, point_head=None, pixel_head=None, global_head=None):
        super().__init__()
        self.point_head, self.pixel_head, self.global_head = point_head, pixel_head, global_head


class ContrastivePretrain(Detector3DTemplate):
    skip_evaluation = True

    CONFIG_SCHEMA = Schema('MODEL (ContrastivePretrain)', {
        **PRETEXT_ENCODER_KEYS,
        'PROJECTION': Schema('MODEL.PROJECTION', {
            'DIM': 64,                 # width of the shared embedding space
            'NUM_TEACHER_FEATURES': 64,  # F of point_teacher_features = DATA_CONFIG.TEACHER_FEATURES.NUM_FEATURES
            'POINT_HIDDEN': [64],      # 3-D head hidden widths (encoder feature -> DIM)
            'PIXEL_HIDDEN': [64],      # 2-D head hidden widths (teacher feature -> DIM)
            'GLOBAL_HIDDEN': [64],     # intra-modal head hidden widths (pooled encoder feature -> DIM)
        }),
        'POINT_TO_PIXEL': Schema('MODEL.POINT_TO_PIXEL', {**_LOSS_KEYS, 'MAX_POINTS_PER_FRAME': 1024}),
        'SUPERPOINT_TO_SUPERPIXEL': Schema('MODEL.SUPERPOINT_TO_SUPERPIXEL', dict(_LOSS_KEYS)),
        'INTRA_MODAL': Schema('MODEL.INTRA_MODAL', {
            'WEIGHT': 1.0,
            'TEMPERATURE': 0.1,        # CrossPoint's value
            'POOL': 'max',             # max | mean over the sample's output voxels
            'AUGMENTATION': Schema('MODEL.INTRA_MODAL.AUGMENTATION', {
                'ROTATION': 3.141592653589793,  # rotation about z drawn from U(-ROTATION, ROTATION) radians
                'SCALE_RANGE': [0.8, 1.2],
                'FLIP_PROB': 0.5,               # per axis (x, y)
                'JITTER_STD': 0.01,             # metres
                'JITTER_CLIP': 0.05,
            }),
        }),
    })

    def __init__(self, model_cfg, num_class, dataset):
        super().__init__(model_cfg=model_cfg, num_class=num_class, dataset=dataset)
        schema = self.CONFIG_SCHEMA
        check_plain_dsvt_encoder(model_cfg, schema, 'ContrastivePretrain', 'its keys are those of the fine-tune '
                                 'configs and it writes the pooling maps the per-point features use')
        self.p2p_cfg = schema.get(model_cfg, 'POINT_TO_PIXEL')
        self.sp_cfg = schema.get(model_cfg, 'SUPERPOINT_TO_SUPERPIXEL')
        self.intra_cfg = schema.get(model_cfg, 'INTRA_MODAL')
        self.proj_cfg = schema.get(model_cfg, 'PROJECTION')
        self._check_loss_config()
        self.module_topology = ['vfe', 'backbone_3d']
        self.module_list = self.build_networks()
        self._build_heads(self.backbone_3d.num_point_features)

    def _check_loss_config(self):
        for name, cfg in (('POINT_TO_PIXEL', self.p2p_cfg), ('SUPERPOINT_TO_SUPERPIXEL', self.sp_cfg),
                          ('INTRA_MODAL', self.intra_cfg)):
            if float(cfg.WEIGHT) < 0:
                raise ConfigError(f'MODEL.{name}.WEIGHT must be >= 0 (0 skips the term), got {cfg.WEIGHT}')
            if float(cfg.TEMPERATURE) <= 0:
                raise ConfigError(f'MODEL.{name}.TEMPERATURE must be > 0, got {cfg.TEMPERATURE}')
        if not any(float(c.WEIGHT) > 0 for c in (self.p2p_cfg, self.sp_cfg, self.intra_cfg)):
            raise ConfigError('MODEL: every loss weight (POINT_TO_PIXEL, SUPERPOINT_TO_SUPERPIXEL, INTRA_MODAL '
                              '.WEIGHT) is 0; ContrastivePretrain would train nothing')
        if int(self.p2p_cfg.MAX_POINTS_PER_FRAME) < 1:
            raise ConfigError('MODEL.POINT_TO_PIXEL.MAX_POINTS_PER_FRAME must be >= 1')
        if self.intra_cfg.POOL not in ('max', 'mean'):
            raise ConfigError(f'MODEL.INTRA_MODAL.POOL: expected max or mean, got {self.intra_cfg.POOL!r}')
        low, high = (float(v) for v in self.intra_cfg.AUGMENTATION.SCALE_RANGE)
        if not 0 < low <= high:
            raise ConfigError(f'MODEL.INTRA_MODAL.AUGMENTATION.SCALE_RANGE must be [low, high] with 0 < low <= high, '
                              f'got {list(self.intra_cfg.AUGMENTATION.SCALE_RANGE)}')

    @property
    def uses_cross_modal(self):
        return float(self.p2p_cfg.WEIGHT) > 0 or float(self.sp_cfg.WEIGHT) > 0

    def _build_heads(self, encoder_channels):
        dim = int(self.proj_cfg.DIM)
        heads = {}
        if self.uses_cross_modal:
            heads['point_head'] = ProjectionHead(encoder_channels, self.proj_cfg.POINT_HIDDEN, dim)
            # the width is stated in the model config (as GPICTURE's NUM_SEAL_FEATURES): a lazy layer would leave an
            # uninitialised parameter until the first batch; a mismatch is reported at the first forward
            heads['pixel_head'] = ProjectionHead(int(self.proj_cfg.NUM_TEACHER_FEATURES), self.proj_cfg.PIXEL_HIDDEN,
                                                 dim)
        if float(self.intra_cfg.WEIGHT) > 0:
            heads['global_head'] = ProjectionHead(encoder_channels, self.proj_cfg.GLOBAL_HIDDEN, dim)
        self.dense_head = ContrastiveHeads(**heads)

    @property
    def point_head(self):
        return self.dense_head.point_head

    @property
    def pixel_head(self):
        return self.dense_head.pixel_head

    @property
    def global_head(self):
        return self.dense_head.global_head

    # ---- encoder ------------------------------------------------------------------------------------------------
    def encode(self, batch_dict):
        return self.backbone_3d(self.vfe(batch_dict))

    @staticmethod
    def point_features(batch_dict):
        """(P_kept, C) encoder feature of each kept point (rows of `point_in_grid_mask`): its voxel's output token."""
        from ..backbones_3d.dsvt_mae import compose_pooling_maps
        index = compose_pooling_maps(batch_dict['point_voxel_index'].long(),
                                     [mapping.long() for mapping in batch_dict['dsvt_pooling_maps']])
        return batch_dict['voxel_features'][index]

    def global_features(self, batch_dict):
        """(B, C) per-sample pooled output tokens (max or mean over the sample's voxels; 0 for an empty sample)."""
        from ...ops.scatter import scatter_amax, scatter_mean
        reduce = scatter_amax if self.intra_cfg.POOL == 'max' else scatter_mean
        return reduce(batch_dict['voxel_features'], batch_dict['voxel_coords'][:, 0].long(),
                      int(batch_dict['batch_size']))

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward(self, batch_dict):
        if not self.training:
            batch_dict = self.encode(batch_dict)
            return [{} for _ in range(int(batch_dict['batch_size']))], {}
        from ..pretraining import contrastive as C
        points = batch_dict['points']
        batch_size = int(batch_dict['batch_size'])
        # the second view is drawn before the encoder runs, from the untouched input rows
        view = None
        if self.global_head is not None:
            aug = self.intra_cfg.AUGMENTATION
            view = {'points': C.augment_view(points, batch_size, float(aug.ROTATION), aug.SCALE_RANGE,
                                             float(aug.FLIP_PROB), float(aug.JITTER_STD), float(aug.JITTER_CLIP)),
                    'batch_size': batch_size}
        batch_dict = self.encode(batch_dict)
        losses, tb_dict = [], {}
        if self.uses_cross_modal:
            losses += self._cross_modal_losses(batch_dict, points, tb_dict)
        if view is not None:
            view = self.encode(view)
            loss = C.nt_xent(self.global_head(self.global_features(batch_dict)),
                             self.global_head(self.global_features(view)), float(self.intra_cfg.TEMPERATURE))
            losses.append(float(self.intra_cfg.WEIGHT) * loss)
            tb_dict['loss_intra'] = loss.detach()
        total = sum(losses)
        tb_dict['loss'] = total.detach()
        return {'loss': total}, tb_dict, {}

    def _cross_modal_losses(self, batch_dict, points, tb_dict):
        """The weighted point-to-pixel and superpoint-to-superpixel terms (those with weight > 0)."""
        from ..pretraining import contrastive as C
        from ..pretraining.point_groups import teacher_point_validity
        if 'point_teacher_features' not in batch_dict:
            raise KeyError('point_teacher_features: the point-to-pixel / superpixel losses need the per-point 2-D '
                           'features; enable DATA_CONFIG.TEACHER_FEATURES (image_projection) or set '
                           'MODEL.POINT_TO_PIXEL.WEIGHT and MODEL.SUPERPOINT_TO_SUPERPIXEL.WEIGHT to 0')
        width = batch_dict['point_teacher_features'].shape[1]
        if width != int(self.proj_cfg.NUM_TEACHER_FEATURES):
            raise ValueError(f'point_teacher_features has {width} columns but MODEL.PROJECTION.NUM_TEACHER_FEATURES '
                             f'is {self.proj_cfg.NUM_TEACHER_FEATURES}; set it to '
                             'DATA_CONFIG.TEACHER_FEATURES.NUM_FEATURES')
        kept = batch_dict['point_in_grid_mask']
        teacher = batch_dict['point_teacher_features'][kept].to(points.dtype)
        valid = teacher_point_validity(teacher)
        batch_index = points[kept, 0].long()
        encoder = self.point_features(batch_dict)
        losses = []
        if float(self.p2p_cfg.WEIGHT) > 0:
            rows = C.sample_per_frame(valid, batch_index, int(self.p2p_cfg.MAX_POINTS_PER_FRAME))
            loss = C.info_nce(self.point_head(encoder[rows]), self.pixel_head(teacher[rows]),
                              float(self.p2p_cfg.TEMPERATURE))
            losses.append(float(self.p2p_cfg.WEIGHT) * loss)
            tb_dict.update(loss_point_pixel=loss.detach(), num_point_pairs=int(rows.numel()))
        if float(self.sp_cfg.WEIGHT) > 0:
            if 'point_superpixel_ids' not in batch_dict:
                raise KeyError('point_superpixel_ids: MODEL.SUPERPOINT_TO_SUPERPIXEL.WEIGHT > 0 needs the superpixel '
                               'id of every point; enable DATA_CONFIG.TEACHER_FEATURES.SUPERPIXELS.ENABLED (and '
                               'prepare the teacher features with it) or set the weight to 0')
            ids = batch_dict['point_superpixel_ids'][kept].long()
            ids = torch.where(valid, ids, torch.full_like(ids, -1))   # a superpixel without a 2-D feature is none
            segment, keys = C.superpixel_groups(batch_index, ids)
            count = keys.shape[0]
            superpoints = C.segment_mean(self.point_head(encoder), segment, count)
            superpixels = C.segment_mean(self.pixel_head(teacher), segment, count)
            loss = C.info_nce(superpoints, superpixels, float(self.sp_cfg.TEMPERATURE))
            losses.append(float(self.sp_cfg.WEIGHT) * loss)
            tb_dict.update(loss_superpixel=loss.detach(), num_superpixels=int(count))
        return losses
