"""DSVT_MAE: the GPICTURE masked encoder (spec §2.3-§2.5, §2.10 steps 3-5).

A `DSVT` whose input voxels are first masked: per stage-0 voxel it builds the teacher target (the mean of the
per-point teacher features of those of its points that have one -- a finite, not all-zero row,
`teacher_point_validity`; spec §2.3 RECOMMENDED; a voxel is valid when at least one of its points has one), runs
I²Mask per sample on those targets (spec §2.4) and encodes only the visible voxels. Parameters are exactly DSVT's
(`backbone_3d.*` names), so a pretrained encoder loads into the fine-tune `DSVT` as is.

Config (`MODEL.BACKBONE_3D`): everything `DSVT` reads, plus `MASK_CONFIG`:
    TYPE: i2mask (default) | random (ablation: RANDOM_MASK_RATIO of the valid voxels per sample) | none
    NUM_CLUSTERS 8, PARTITION [3, 3, 2], BASE_MASK_RATIO [0.9, 0.45, 0.0], LAMBDA_THRESHOLD 0.6, KMEANS_ITERS 20
    NORMALIZE_TARGETS False (decision D7: keep the mean of unit vectors, as upstream)
Masking runs in training mode only; in eval mode every voxel is visible (used by DGPL and CKA probes, spec §2.9).

forward(batch_dict):
    reads  voxel_features (N0, C), voxel_coords (N0, 4) [b, z, y, x], batch_size, point_teacher_features (P, F)
           (rows of `points`; optional in eval mode), point_in_grid_mask (P,), point_voxel_index (P_kept,) (from
           the dynamic VFE), optional record_encoder_layers
    writes mae_voxel_coords (N0, 4) and mae_voxel_features (N0, C): the full stage-0 set (VFE order);
           mae_mask (N0,) bool (True = masked); mae_visible_index (Nv,) long: rows of the full set that were encoded;
           mae_visible_token_index (Nv,) long: last-stage token of every visible voxel;
           mae_teacher_targets (N0, F) float32 (None in eval mode without teacher features), mae_teacher_valid (N0,)
           bool; mae_mask_ratio (B,) float;
           and DSVT's outputs for the visible voxels (voxel_features / voxel_coords of the last stage,
           dsvt_pooling_maps, encoder_layer_features).
"""
import torch

from ...config_schema import Schema, check_block
from ..pretraining.i2mask import DEFAULT_I2MASK_CFG, i2mask_batch, read_i2mask_cfg
from ..pretraining.point_groups import teacher_point_validity, voxel_mean_features
from .dsvt import DSVT

# DSVT_MAE's own MASK_CONFIG keys plus the I²Mask keys (defaults and checks from `pretraining.i2mask`).
MASK_CONFIG_SCHEMA = Schema('BACKBONE_3D.MASK_CONFIG', {
    'TYPE': 'i2mask', 'RANDOM_MASK_RATIO': 0.6, 'NORMALIZE_TARGETS': False, **DEFAULT_I2MASK_CFG})
MASK_TYPES = ('i2mask', 'random', 'none')


def resolve_mask_config(model_cfg):
    """`BACKBONE_3D.MASK_CONFIG` with defaults filled in; unknown keys, types or bad I²Mask values are errors
    naming them."""
    given = DSVT_MAE.CONFIG_SCHEMA.get(model_cfg, 'MASK_CONFIG')
    check_block(given, MASK_CONFIG_SCHEMA, 'BACKBONE_3D.MASK_CONFIG')
    try:
        i2mask_cfg = read_i2mask_cfg(given)
    except ValueError as err:
        raise ValueError(f'BACKBONE_3D.MASK_CONFIG: {err}') from None
    cfg = {**MASK_CONFIG_SCHEMA.fill(given), **i2mask_cfg}
    if cfg['TYPE'] not in MASK_TYPES:
        raise ValueError(f'BACKBONE_3D.MASK_CONFIG.TYPE {cfg["TYPE"]!r}: expected one of {list(MASK_TYPES)}')
    return cfg


def compose_pooling_maps(voxel_index, pooling_maps):
    """Last-stage token of each stage-0 voxel in `voxel_index` (rows of the encoder's stage-0 input), following
    `dsvt_pooling_maps` (stage s voxel -> stage s+1 voxel); `pooling_maps[:k]` stops at stage k."""
    index = voxel_index
    for mapping in pooling_maps:
        index = mapping[index]
    return index


def random_mask(valid, batch_index, batch_size, ratio, generator):
    """Ablation mask: `floor(ratio * n_valid)` uniformly drawn valid voxels per sample. -> (mask (N,), ratio (B,))."""
    mask = torch.zeros_like(valid)
    ratios = torch.zeros(batch_size, dtype=torch.float32, device=valid.device)
    for b in range(batch_size):
        in_sample = batch_index == b
        rows = torch.nonzero(in_sample & valid).flatten()
        count = int(rows.numel() * ratio)
        if count:
            order = torch.randperm(rows.numel(), generator=generator).to(rows.device)
            mask[rows[order[:count]]] = True
        ratios[b] = count / max(int(in_sample.sum()), 1)
    return mask, ratios


class DSVT_MAE(DSVT):  # noqa: N801 (OpenPCDet-style registry name)
    """DSVT with I²Mask input masking; see the module docstring for config and batch_dict keys."""

    CONFIG_SCHEMA = DSVT.CONFIG_SCHEMA.extend('MODEL.BACKBONE_3D (DSVT_MAE)', {'MASK_CONFIG': MASK_CONFIG_SCHEMA})

    def __init__(self, model_cfg, **kwargs):
        super().__init__(model_cfg, **kwargs)
        self.mask_cfg = resolve_mask_config(model_cfg)

    def teacher_targets(self, batch_dict):
        """Per stage-0 voxel mean of the valid points' teacher features -> ((N0, F) float32, (N0,) bool valid)."""
        num_voxels = batch_dict['voxel_coords'].shape[0]
        if 'point_teacher_features' not in batch_dict:
            raise KeyError('DSVT_MAE needs point_teacher_features (per-point teacher features): set '
                           'DATA_CONFIG.TEACHER_FEATURES and create them with tools/prepare_seal_features.py')
        point_features = batch_dict['point_teacher_features']
        point_features = point_features[batch_dict['point_in_grid_mask']].float()
        return voxel_mean_features(point_features, batch_dict['point_voxel_index'], num_voxels,
                                   point_valid=teacher_point_validity(point_features),
                                   normalize=bool(self.mask_cfg['NORMALIZE_TARGETS']))

    def compute_mask(self, targets, valid, batch_index, batch_size):
        """(mask (N0,) bool, ratio (B,)) for this step; all-visible outside training or with TYPE none."""
        if not self.training or self.mask_cfg['TYPE'] == 'none':
            return torch.zeros_like(valid), torch.zeros(batch_size, device=valid.device)
        # One seed per step from torch's global RNG: reproducible under --fix_random_seed, fresh every step.
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
        if self.mask_cfg['TYPE'] == 'random':
            return random_mask(valid, batch_index, batch_size, float(self.mask_cfg['RANDOM_MASK_RATIO']), generator)
        with torch.no_grad():
            return i2mask_batch(targets.detach(), valid, batch_index, batch_size, self.mask_cfg, generator)

    def forward(self, batch_dict):
        coords, features = batch_dict['voxel_coords'], batch_dict['voxel_features']
        batch_size = int(batch_dict['batch_size'])
        if self.training or 'point_teacher_features' in batch_dict:
            targets, valid = self.teacher_targets(batch_dict)
        else:  # an eval-mode probe (DGPL, CKA) needs no targets
            targets, valid = None, torch.zeros(coords.shape[0], dtype=torch.bool, device=coords.device)
        mask, ratio = self.compute_mask(targets, valid, coords[:, 0].long(), batch_size)
        visible_index = torch.nonzero(~mask).flatten()
        batch_dict.update(mae_voxel_coords=coords, mae_voxel_features=features, mae_mask=mask,
                          mae_visible_index=visible_index, mae_teacher_targets=targets, mae_teacher_valid=valid,
                          mae_mask_ratio=ratio)
        batch_dict['voxel_coords'] = coords[visible_index]
        batch_dict['voxel_features'] = features[visible_index]
        batch_dict = super().forward(batch_dict)
        token_index = torch.arange(visible_index.numel(), device=coords.device)
        batch_dict['mae_visible_token_index'] = compose_pooling_maps(token_index, batch_dict['dsvt_pooling_maps'])
        return batch_dict
