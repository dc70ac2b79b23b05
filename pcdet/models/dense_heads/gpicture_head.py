"""GPICTURE pretraining head (spec §2.7-§2.9): per stage-0 voxel, 16 predicted points (chamfer against up to 64 real
points of the voxel, relative to the voxel centre) and a 64-d teacher feature (SmoothL1), both on masked voxels.

Loss (spec §2.7 / §2.10 step 9): `L = α · L_pts + (1 − α) · β · L_seal` where
* α comes from the CKA constants `CKA_ALPHA` (upstream spelling `CKA_ALHPA` accepted), one per encoder layer (exactly
  as many entries as the encoder has layers, `resolve_layer_alphas`): default mode (D4 a) uses one head on the decoder
  output and `α = CKA_ALPHA[LAYER_INDEX]` (LAYER_INDEX a layer of the encoder; default -1, the deepest);
  `HIERARCHICAL: True` (D4 b) has one point head and one teacher head per encoder layer l, each on the shared decoder
  run from layer l, and averages `α_l L_pts^l + (1 − α_l) β L_seal^l` over the layers;
* β is the differential-gated progressive weight (spec §2.9), held in the persistent buffer `dgpl_beta` (so a resumed
  run continues with the β of its epoch) and set once per epoch by the trainer's DGPL gate hook
  (`pcdet.training.hooks.DGPLGateHook`);
  `DGPL.FIXED_BETA` pins it for ablations, also over a β restored from a checkpoint (a WARNING names both values).

Config (`MODEL.DENSE_HEAD`): NUM_PRD_POINTS 16, NUM_GT_POINTS 64, NUM_SEAL_FEATURES 64, CKA_ALPHA, LAYER_INDEX -1,
HIERARCHICAL False, SEAL_LOSS_BETA 1.0 (SmoothL1 β), NORMALIZE_POINT_TARGETS False, DGPL {ENABLED True, GAMMA 10,
DELTA 0.2, NUM_FRAMES 4, SEED 0, LAYERS [0, 1, 2, 3], FIXED_BETA null}.

NORMALIZE_POINT_TARGETS: the released code regresses point offsets in metres, which ties the size of L_pts (and so
the meaning of α) to the voxel size: with upstream's 0.32 x 0.32 x 0.1875 m voxels L_pts is ~1e-2, with 8 m tall
pillars ~1, a hundred times the teacher loss. True expresses offsets in voxel units (each axis in [-0.5, 0.5]) so the
α / (1 - α) balance means the same on every grid (docs/GPICTURE.md).

Parameters: `decoder_pred` Linear(C, 3·NUM_PRD_POINTS), `decoder_seal` Linear(C, NUM_SEAL_FEATURES) (upstream names);
hierarchical: `decoder_pred_layers.<l>`, `decoder_seal_layers.<l>`.

forward(batch_dict):
    reads  mae_decoder_features (N0, C) (or mae_decoder_features_per_layer), mae_voxel_coords (N0, 4), mae_mask (N0,),
           mae_teacher_targets (N0, F), mae_teacher_valid (N0,), mae_mask_ratio (B,), points (P, 1 + C_pt),
           point_in_grid_mask (P,), point_voxel_index (P_kept,)
    writes nothing; keeps the predictions and targets for `get_loss()`.
get_loss() -> (loss, tb_dict {loss_points, loss_seal, loss_rpn, dgpl_beta, mask_ratio, num_masked})
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ...config_schema import Schema, check_block
from ..detectors.detector3d_template import DENSE_HEAD_BASE_SCHEMA
from ..model_utils.gaussian_params import voxel_centers
from ..pretraining.chamfer import masked_chamfer_distance
from ..pretraining.point_groups import group_points_per_voxel

DGPL_SCHEMA = Schema('DENSE_HEAD.DGPL', {'ENABLED': True, 'GAMMA': 10.0, 'DELTA': 0.2, 'NUM_FRAMES': 4, 'SEED': 0,
                                         'LAYERS': [0, 1, 2, 3], 'FIXED_BETA': None})


def resolve_dgpl_config(model_cfg):
    """`DENSE_HEAD.DGPL` with `DGPL_SCHEMA`'s defaults filled in; unknown keys are an error naming them."""
    given = GPicturePretrainHead.CONFIG_SCHEMA.get(model_cfg, 'DGPL')
    check_block(given, DGPL_SCHEMA, 'DENSE_HEAD.DGPL')
    return dict(DGPL_SCHEMA.fill(given))


def resolve_layer_alphas(cka_alpha, layer_index, num_encoder_layers, hierarchical):
    """The α of each head: `[CKA_ALPHA[LAYER_INDEX]]`, or every CKA_ALPHA entry in the hierarchical mode.

    CKA_ALPHA holds one α per layer of THIS encoder (the paper's 8 values belong to its 8-layer encoder: 4 stages x
    1 block x 2 set-attention layers), so it must have exactly `num_encoder_layers` entries and LAYER_INDEX must
    index a layer of the encoder, in [-L, L). `num_encoder_layers` None (a head built on its own): L = len(CKA_ALPHA).
    Violations raise ValueError naming the key, the encoder's layer count and what is expected.
    """
    num_layers = len(cka_alpha) if num_encoder_layers is None else int(num_encoder_layers)
    if len(cka_alpha) != num_layers:
        raise ValueError(
            f'DENSE_HEAD.CKA_ALPHA has {len(cka_alpha)} entries but the encoder (MODEL.BACKBONE_3D) has {num_layers} '
            f'layers (2 per block, blocks = sum of set_info[s][1]): give exactly one α per encoder layer, shallow to '
            f'deep (the paper\'s 8 values belong to its 8-layer encoder; docs/GPICTURE.md, CKA-guided reconstruction)')
    if hierarchical:
        return list(cka_alpha)
    if not -num_layers <= layer_index < num_layers:
        raise ValueError(f'DENSE_HEAD.LAYER_INDEX {layer_index} is not a layer of the encoder, which has {num_layers} '
                         f'layers: expected an index in [{-num_layers}, {num_layers - 1}]')
    return [cka_alpha[layer_index]]


def fixed_beta_override_message(stored_beta, fixed_beta):
    """The WARNING text when a checkpoint's β differs from the configured DGPL.FIXED_BETA, else None."""
    if stored_beta == fixed_beta:
        return None
    return (f'DENSE_HEAD.DGPL.FIXED_BETA = {fixed_beta} overrides the checkpoint\'s dgpl_beta = {stored_beta:.6g}: '
            f'training continues with beta = {fixed_beta}')


class GPicturePretrainHead(nn.Module):
    CONFIG_SCHEMA = DENSE_HEAD_BASE_SCHEMA.extend('MODEL.DENSE_HEAD (GPicturePretrainHead)', {
        'NUM_PRD_POINTS': 16, 'NUM_GT_POINTS': 64, 'NUM_SEAL_FEATURES': 64, 'SEAL_LOSS_BETA': 1.0,
        'NORMALIZE_POINT_TARGETS': False, 'HIERARCHICAL': False, 'LAYER_INDEX': -1,
        'CKA_ALPHA': None,          # required in practice: one weight per encoder layer
        'CKA_ALHPA': None,          # the released configs' spelling, used when CKA_ALPHA is absent
        'DGPL': DGPL_SCHEMA,
    })
    def __init__(self, model_cfg, input_channels, voxel_size, point_cloud_range, num_encoder_layers=None, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        schema = self.CONFIG_SCHEMA
        self.num_pred_points = int(schema.get(model_cfg, 'NUM_PRD_POINTS'))
        self.num_gt_points = int(schema.get(model_cfg, 'NUM_GT_POINTS'))
        self.num_seal_features = int(schema.get(model_cfg, 'NUM_SEAL_FEATURES'))
        self.seal_loss_beta = float(schema.get(model_cfg, 'SEAL_LOSS_BETA'))
        self.normalize_point_targets = bool(schema.get(model_cfg, 'NORMALIZE_POINT_TARGETS'))
        self.hierarchical = bool(schema.get(model_cfg, 'HIERARCHICAL'))
        alphas = schema.get(model_cfg, 'CKA_ALPHA')
        alphas = schema.get(model_cfg, 'CKA_ALHPA') if alphas is None else alphas
        if not alphas:
            raise KeyError('DENSE_HEAD.CKA_ALPHA (per-encoder-layer CKA weights, e.g. [0.97, 0.88, 0.78, 0.64, 0.55, '
                           '0.44, 0.36, 0.31]) is required')
        self.cka_alpha = [float(a) for a in alphas]
        if any(not 0.0 <= a <= 1.0 for a in self.cka_alpha):
            raise ValueError(f'DENSE_HEAD.CKA_ALPHA values must lie in [0, 1], got {self.cka_alpha}')
        self.dgpl_cfg = resolve_dgpl_config(model_cfg)
        self.register_buffer('voxel_size', torch.tensor([float(v) for v in voxel_size]), persistent=False)
        self.register_buffer('point_cloud_range', torch.tensor([float(v) for v in point_cloud_range]),
                             persistent=False)
        fixed = self.dgpl_cfg['FIXED_BETA']
        self.register_buffer('dgpl_beta', torch.tensor(float(fixed) if fixed is not None else 0.0))

        self.layer_alphas = resolve_layer_alphas(self.cka_alpha, int(schema.get(model_cfg, 'LAYER_INDEX')),
                                                 num_encoder_layers, self.hierarchical)
        if self.hierarchical:
            self.decoder_pred_layers = nn.ModuleList(
                [nn.Linear(input_channels, 3 * self.num_pred_points) for _ in self.layer_alphas])
            self.decoder_seal_layers = nn.ModuleList(
                [nn.Linear(input_channels, self.num_seal_features) for _ in self.layer_alphas])
        else:
            self.decoder_pred = nn.Linear(input_channels, 3 * self.num_pred_points)
            self.decoder_seal = nn.Linear(input_channels, self.num_seal_features)
        self.forward_ret_dict = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """As nn.Module, but a configured DGPL.FIXED_BETA wins over the checkpoint's `dgpl_beta` (a resumed ablation
        with a changed FIXED_BETA must run with the new value); a differing stored β is logged as a WARNING."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        fixed = self.dgpl_cfg['FIXED_BETA']
        stored = state_dict.get(prefix + 'dgpl_beta')
        if fixed is None or stored is None:
            return
        message = fixed_beta_override_message(float(stored), float(fixed))
        if message:
            logging.getLogger('pcdet').warning(message)
        self.dgpl_beta.fill_(float(fixed))

    def set_beta(self, beta):
        """Set β for the coming epoch (ignored when DGPL.FIXED_BETA pins it)."""
        if self.dgpl_cfg['FIXED_BETA'] is None:
            self.dgpl_beta.fill_(float(beta))

    def point_targets(self, batch_dict):
        """(N0, NUM_GT_POINTS, 3) real points of every voxel relative to its centre (metres, or voxel units with
        NORMALIZE_POINT_TARGETS), cyclically padded."""
        points = batch_dict['points'][batch_dict['point_in_grid_mask']]
        point_voxel = batch_dict['point_voxel_index']
        coords = batch_dict['mae_voxel_coords']
        voxel_size = self.voxel_size.to(points.dtype)
        centers = voxel_centers(coords, voxel_size, self.point_cloud_range.to(points.dtype))
        relative = points[:, 1:4] - centers[point_voxel]
        if self.normalize_point_targets:
            relative = relative / voxel_size
        grouped, _ = group_points_per_voxel(relative, point_voxel, coords.shape[0], self.num_gt_points)
        return grouped

    def forward(self, batch_dict):
        if self.hierarchical:
            features = batch_dict['mae_decoder_features_per_layer']
            pred_heads, seal_heads = self.decoder_pred_layers, self.decoder_seal_layers
            if len(features) != len(pred_heads):
                raise ValueError(f'hierarchical head has {len(pred_heads)} layer heads but the decoder produced '
                                 f'{len(features)} layer outputs')
        else:
            features = [batch_dict['mae_decoder_features']]
            pred_heads, seal_heads = [self.decoder_pred], [self.decoder_seal]
        if self.training:
            self.forward_ret_dict = {
                'pred_points': [head(f).view(f.shape[0], self.num_pred_points, 3) for head, f in zip(pred_heads,
                                                                                                     features)],
                'pred_seal': [head(f) for head, f in zip(seal_heads, features)],
                'gt_points': self.point_targets(batch_dict),
                'mask': batch_dict['mae_mask'],
                'teacher_targets': batch_dict['mae_teacher_targets'],
                'teacher_valid': batch_dict['mae_teacher_valid'],
                'mask_ratio': batch_dict['mae_mask_ratio'],
            }
        return batch_dict

    def get_loss(self):
        ret = self.forward_ret_dict
        mask = ret['mask']
        weights = mask.float()
        seal_rows = torch.nonzero(mask & ret['teacher_valid']).flatten()
        beta = self.dgpl_beta
        total = 0.0
        loss_points_sum, loss_seal_sum = 0.0, 0.0
        for alpha, pred_points, pred_seal in zip(self.layer_alphas, ret['pred_points'], ret['pred_seal']):
            loss_points = masked_chamfer_distance(pred_points.float(), ret['gt_points'], weights)
            if seal_rows.numel():
                loss_seal = F.smooth_l1_loss(pred_seal.float()[seal_rows], ret['teacher_targets'][seal_rows],
                                             beta=self.seal_loss_beta)
            else:
                loss_seal = pred_seal.sum() * 0.0
            total = total + alpha * loss_points + (1.0 - alpha) * beta * loss_seal
            loss_points_sum = loss_points_sum + loss_points.detach()
            loss_seal_sum = loss_seal_sum + loss_seal.detach()
        num_heads = len(self.layer_alphas)
        loss = total / num_heads
        tb_dict = {'loss_points': loss_points_sum / num_heads, 'loss_seal': loss_seal_sum / num_heads,
                   'loss_rpn': loss.detach(), 'dgpl_beta': beta.detach().clone(),
                   'mask_ratio': ret['mask_ratio'].float().mean().detach(),
                   'num_masked': weights.sum().detach()}
        return loss, tb_dict
