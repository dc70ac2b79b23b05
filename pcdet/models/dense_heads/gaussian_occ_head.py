"""GaussianOccHead: semantic occupancy read out from 3-D Gaussians (GaussTR style), an alternative to the dense
`OccHead` with the same targets, loss and predictions (`OccupancyHeadTemplate`, occ_head.py).

Gaussians: every voxel of the LAST encoder stage (grid [nx, ny, nz] over POINT_CLOUD_RANGE, voxel size = range
extent / grid shape, e.g. 0.8 x 0.8 x 8 m pillars in the tiny configs) predicts K = `GAUSSIANS.PER_VOXEL` Gaussians
with `GaussianParamHead` (mean inside its voxel, per-axis scales in `GAUSSIANS.SCALE_RANGE`, quaternion, opacity,
E = 16 values). The values are the 16 class logits themselves (no feature vector + classifier: a per-cell Linear
after the density-weighted mean would be the same affine map applied to the mean, so splatting logits directly is
as expressive and splats E = 16 instead of a wider feature).

Splatting (`pcdet.ops.gaussian_voxelize.voxelize_gaussians`, `CUTOFF_SIGMAS` = k): on the coarse `OUTPUT_GRID`
(cell centres over OCC_POINT_CLOUD_RANGE) density(c) = sum_i o_i exp(-d_i(c)^2 / 2) over the Gaussians of the
sample with Mahalanobis distance d_i(c) <= k, and v(c) = their density-weighted mean class logits.

Logits rule (GaussTR's density -> occupancy, then a class split): with d'(c) = density(c) + DENSITY_FLOOR,
    p_occ(c)       = 1 - exp(-d'(c))                           (a Poisson / volume-rendering occupancy)
    logit_free(c)  = log(1 - p_occ) = -d'(c)
    logit_k(c)     = log(p_occ) + log_softmax(v(c))_k,  k = 1..16 (computed as log(-expm1(-d')))
so softmax(logits) = [1 - p_occ, p_occ softmax(v)] exactly: the 17 logits are normalised log-probabilities, and
the CE / scal / Lovasz losses of OccHead act on them unchanged. DENSITY_FLOOR (1e-4) keeps log(p_occ) finite and
its gradient bounded in cells no Gaussian reaches (there p_occ = 1e-4: free, v = 0 -> uniform classes).

forward(batch_dict):
    reads  batch_size, dsvt_stage_features list (S) of (N_s, C_s), dsvt_stage_coords list (S) of (N_s, 4)
           [b, z, y, x] (DSVT; only the last stage is used); training: gt_occupancy (B, *FINAL_OCC_SIZE)
    writes occ_logits (B, 17, X, Y, Z), occ_gaussians {means (G, 3), quats (G, 4), scales (G, 3),
           opacities (G,), values (G, 16), batch_index (G,) long} (G = K N_{S-1}),
           occ_density (B, X, Y, Z)
get_loss() / get_predictions(batch_dict): exactly OccHead's (occ_head.py).
"""
import torch

from ...config import ConfigError
from ...ops.gaussian_voxelize import voxelize_gaussians
from ..model_utils.gaussian_params import (
    GAUSSIAN_PARAMS_SCHEMA,
    GaussianParamHead,
    check_gaussian_config,
    grid_voxel_size,
    stage_voxel_size,
)
from .occ_head import OCC_HEAD_COMMON_SCHEMA, OccupancyHeadTemplate
from .seg_head import encoder_stage_list, read_block, stage_outputs

# Added to the splatted density before the logits rule (module docstring): p_occ >= 1e-4 everywhere.
DENSITY_FLOOR = 1e-4


def occupancy_logits(density, class_values, floor=DENSITY_FLOOR):
    """17 normalised log-probabilities (B, 17, X, Y, Z) from density (B, X, Y, Z) and class values
    (B, 16, X, Y, Z): [-d', log(1 - exp(-d')) + log_softmax(values)], d' = density + floor."""
    shifted = density + floor
    log_free = -shifted
    log_occupied = torch.log(-torch.expm1(-shifted))
    classes = torch.log_softmax(class_values, dim=1) + log_occupied[:, None]
    return torch.cat([log_free[:, None], classes], dim=1)


class GaussianOccHead(OccupancyHeadTemplate):
    CONFIG_SCHEMA = OCC_HEAD_COMMON_SCHEMA.extend('MODEL.DENSE_HEAD (GaussianOccHead)', {
        'GAUSSIANS': GAUSSIAN_PARAMS_SCHEMA,
        'CUTOFF_SIGMAS': 3.0,           # Mahalanobis cutoff of a Gaussian's splat (> 0)
        'SPLAT_CHUNK': 2 ** 20,         # (Gaussian, cell) pairs per voxelization step (memory knob, no effect)
    })

    def __init__(self, model_cfg, input_channels, num_class, class_names, grid_size, point_cloud_range, voxel_size,
                 encoder_stages=None, **kwargs):
        super().__init__(model_cfg, num_class, class_names, point_cloud_range)
        schema = self.CONFIG_SCHEMA
        gaussians = read_block(schema, model_cfg, 'GAUSSIANS', GAUSSIAN_PARAMS_SCHEMA, 'DENSE_HEAD.GAUSSIANS')
        check_gaussian_config(gaussians, 'MODEL.DENSE_HEAD.GAUSSIANS')
        if self.empty_index != 0:  # the logits rule puts the free probability in channel 0
            raise ConfigError(f'MODEL.DENSE_HEAD.EMPTY_IDX must be 0 for GaussianOccHead (its free class is channel '
                              f'0), got {self.empty_index}')
        self.cutoff_sigmas = float(schema.get(model_cfg, 'CUTOFF_SIGMAS'))
        if not self.cutoff_sigmas > 0:
            raise ConfigError(f'MODEL.DENSE_HEAD.CUTOFF_SIGMAS must be > 0, got {self.cutoff_sigmas}')
        self.splat_chunk = int(schema.get(model_cfg, 'SPLAT_CHUNK'))
        if self.splat_chunk < 1:
            raise ConfigError(f'MODEL.DENSE_HEAD.SPLAT_CHUNK must be >= 1, got {self.splat_chunk}')

        self.stages = encoder_stage_list(encoder_stages, input_channels, grid_size)
        channels, _ = self.stages[-1]
        # without the builder's stages the head reads the single-stage grid itself (stride 1)
        last_stride = [1, 1, 1] if encoder_stages is None else encoder_stages[-1]['stride']
        stage_voxel = stage_voxel_size(self.occ_range, self.stages[0][1], last_stride, 'MODEL.BACKBONE_3D')
        self.register_buffer('occ_range_tensor', torch.tensor(self.occ_range), persistent=False)
        self.register_buffer('stage_voxel', stage_voxel, persistent=False)
        self.register_buffer('cell_size', grid_voxel_size(self.occ_range, self.output_grid), persistent=False)
        self.gaussian_head = GaussianParamHead.from_config(gaussians, channels, self.num_outputs - 1,
                                                           stage_voxel.tolist())

    def predict_logits(self, batch_dict, batch_size):
        """(B, 17, X, Y, Z) log-probabilities from the last stage's Gaussians (module docstring)."""
        features, coords, _ = stage_outputs(batch_dict, len(self.stages), type(self).__name__)
        dtype = features[-1].dtype
        occ_range = self.occ_range_tensor.to(dtype)
        g = self.gaussian_head.from_voxels(features[-1], coords[-1].long(), self.stage_voxel, occ_range)
        batch_index = g['batch_index']
        density, class_values = voxelize_gaussians(
            g['means'], g['quats'], g['scales'], g['opacities'], g['values'], batch_index, batch_size,
            self.output_grid, occ_range[:3], self.cell_size.to(dtype),
            cutoff_sigmas=self.cutoff_sigmas, chunk=self.splat_chunk)
        batch_dict['occ_gaussians'] = {key: g[key] for key in ('means', 'quats', 'scales', 'opacities', 'values')}
        batch_dict['occ_gaussians']['batch_index'] = batch_index
        batch_dict['occ_density'] = density
        return occupancy_logits(density, class_values)
