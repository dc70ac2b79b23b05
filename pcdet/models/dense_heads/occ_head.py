"""OccHead: semantic occupancy (OpenOccupancy, spec §B) from a DSVT encoder (decision D6, spec §B.6 / gpicture §4.3).

Volumes (one level per encoder stage): every stage's sparse output is densified on the coarse output grid
`OUTPUT_GRID` (X, Y, Z) (nuScenes: 128 x 128 x 10 = 0.8 m cells): its voxels are mean-pooled into coarse cells
(x / y pool factor = stage nx / X; a stage with more z cells than Z is pooled along z too), a per-cell Linear
(`level_proj.<s>`) maps C_s to `LEVEL_CHANNELS * k`, and a stage with fewer z cells than Z (nz = Z / k, e.g. a
pillar / BEV stage with nz = 1) is lifted to 3-D by splitting those channels into k heights (height-to-channel
split: channel block j becomes the j-th z cell above the stage cell). Empty cells are 0.
Head (OpenOccupancy `OccHead`, coarse branch; no cascade refinement): per level `NUM_3D_CONVS` x (3x3x3 Conv3d
-> `CONV_CHANNELS`, BatchNorm3d, ReLU) (`level_convs.<s>`); with more than one level and `SOFT_WEIGHTS`, per-voxel
softmax level weights from level 0 (`soft_weights`: 1x1 conv C -> C/2, BN, ReLU, 1x1 conv -> levels) blend the
levels (else they are summed); `occ_pred_conv`: 1x1 conv -> `HIDDEN_CHANNELS`, BN, ReLU, 1x1 conv -> 17 (0 free,
1..16 lidarseg classes).

Loss (training, spec §B.7): the GT `gt_occupancy` (B, 512, 512, 40) is down-sampled to OUTPUT_GRID
(`downsample_occupancy_labels`: most frequent class among occupied children, ties -> smallest, 255 only when all
occupied children are noise, 0 when all free); `LOSS_WEIGHTS` x {CE with `CLASS_WEIGHTS` (default OpenOccupancy's
1/ln(f + 0.001)), sem_scal, geo_scal (empty index `EMPTY_IDX`), Lovász-softmax}, ignore `IGNORE_INDEX` (255).

Predictions (eval): the coarse logits are trilinearly up-sampled (align_corners=False) to `FINAL_OCC_SIZE` and
argmax'ed, `PRED_CHUNK` output x-slices at a time (`upsample_argmax`; identical to the unchunked F.interpolate +
argmax for integer power-of-two ratios, the official 4).

forward(batch_dict):
    reads  batch_size, dsvt_stage_features list (S) of (N_s, C_s), dsvt_stage_coords list (S) of (N_s, 4)
           [b, z, y, x] (DSVT); training: gt_occupancy (B, *FINAL_OCC_SIZE) (uint8 or float holding 0..16, 255)
    writes occ_logits (B, 17, X, Y, Z)
get_loss() -> (loss, tb_dict {loss_occ, loss_ce, loss_sem_scal, loss_geo_scal, loss_lovasz})
get_predictions(batch_dict) -> list (B) of {'occ_pred': (*FINAL_OCC_SIZE) uint8}

The grids, the GT down-sampling, the loss and the predictions live in `OccupancyHeadTemplate` (schema
`OCC_HEAD_COMMON_SCHEMA`), shared with the Gaussian read-out `GaussianOccHead` (gaussian_occ_head.py); a head only
implements `predict_logits(batch_dict, batch_size) -> (B, 17, X, Y, Z)`.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...config_schema import Schema
from ...ops.scatter import scatter_mean
from ...utils.seg_losses import downsample_occupancy_labels, occupancy_losses, openoccupancy_class_weights
from ..detectors.detector3d_template import DENSE_HEAD_BASE_SCHEMA
from .seg_head import check_class_names, encoder_stage_list, read_block, stage_outputs

OCC_LOSS_WEIGHTS_SCHEMA = Schema('DENSE_HEAD.LOSS_WEIGHTS', {'CE': 1.0, 'SEM_SCAL': 1.0, 'GEO_SCAL': 1.0,
                                                             'LOVASZ': 1.0})


def channel_argmax(values):
    """`values.argmax(0).to(torch.uint8)` for (C, ...) with C <= 256 (first maximum on ties), as a running
    maximum over the channels: contiguous element-wise passes instead of a strided reduction (several times
    faster on CPU)."""
    best = values[0].clone()
    index = torch.zeros(values.shape[1:], dtype=torch.uint8, device=values.device)
    for c in range(1, values.shape[0]):
        better = values[c] > best
        index.masked_fill_(better, c)
        best = torch.maximum(best, values[c])
    return index


def upsample_argmax(logits, size, chunk):
    """argmax over classes of `F.interpolate(logits[None], size, 'trilinear', align_corners=False)[0]` for
    logits (C, X, Y, Z), computed `chunk` output x-slices at a time -> (size) uint8.

    Each chunk interpolates the input x-slab it needs plus one halo slice per side, so every output voxel sees the
    same two source slices and the same weights as in the full interpolation. Non-integer ratios fall back to the
    unchunked computation."""
    size = [int(v) for v in size]
    in_x = logits.shape[1]
    if size[0] % in_x:
        return channel_argmax(F.interpolate(logits[None], size=size, mode='trilinear', align_corners=False)[0])
    ratio = size[0] // in_x
    out = torch.empty(size, dtype=torch.uint8, device=logits.device)
    for x0 in range(0, size[0], int(chunk)):
        x1 = min(x0 + int(chunk), size[0])
        s0, s1 = max(x0 // ratio - 1, 0), min((x1 - 1) // ratio + 2, in_x)
        slab = F.interpolate(logits[None, :, s0:s1], size=[(s1 - s0) * ratio] + size[1:], mode='trilinear',
                             align_corners=False)[0]
        out[x0:x1] = channel_argmax(slab[:, x0 - s0 * ratio:x1 - s0 * ratio])
    return out


def conv_bn_relu(in_channels, out_channels, kernel_size):
    return [nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True)]


OCC_HEAD_COMMON_SCHEMA = DENSE_HEAD_BASE_SCHEMA.extend('MODEL.DENSE_HEAD (occupancy)', {
    'OUTPUT_GRID': [128, 128, 10],              # coarse logits grid (x, y, z)
    'FINAL_OCC_SIZE': [512, 512, 40],           # GT / prediction grid (DATA_CONFIG.OCC_GRID_SIZE)
    'OCC_POINT_CLOUD_RANGE': [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0],   # must equal POINT_CLOUD_RANGE
    'EMPTY_IDX': 0,
    'IGNORE_INDEX': 255,
    'CLASS_WEIGHTS': 'openoccupancy',           # openoccupancy | uniform | list of 17 weights
    'LOSS_WEIGHTS': OCC_LOSS_WEIGHTS_SCHEMA,
    'PRED_CHUNK': 32,                           # output x-slices per up-sampling chunk
})


class OccupancyHeadTemplate(nn.Module):
    """What every occupancy head shares (the grids, the GT down-sampling, the loss and the predictions of the
    module docstring); a subclass builds its layers after `super().__init__` and implements
    `predict_logits(batch_dict, batch_size) -> (B, 17, *OUTPUT_GRID)`. Its CONFIG_SCHEMA extends
    OCC_HEAD_COMMON_SCHEMA."""

    CONFIG_SCHEMA = OCC_HEAD_COMMON_SCHEMA

    def __init__(self, model_cfg, num_class, class_names, point_cloud_range):
        super().__init__()
        schema, name = self.CONFIG_SCHEMA, type(self).__name__
        self.model_cfg = model_cfg
        check_class_names(class_names, num_class, name)
        self.num_outputs = int(num_class) + 1
        self.output_grid = [int(v) for v in schema.get(model_cfg, 'OUTPUT_GRID')]
        self.final_size = [int(v) for v in schema.get(model_cfg, 'FINAL_OCC_SIZE')]
        occ_range = [float(v) for v in schema.get(model_cfg, 'OCC_POINT_CLOUD_RANGE')]
        if not np.allclose(occ_range, [float(v) for v in point_cloud_range], atol=1e-4):
            raise ValueError(f'{name}: DATA_CONFIG.POINT_CLOUD_RANGE {list(point_cloud_range)} must equal the '
                             f'occupancy range DENSE_HEAD.OCC_POINT_CLOUD_RANGE {occ_range}')
        self.occ_range = occ_range
        if any(f % o for f, o in zip(self.final_size, self.output_grid)):
            raise ValueError(f'{name}: FINAL_OCC_SIZE {self.final_size} is not a multiple of OUTPUT_GRID '
                             f'{self.output_grid}')
        self.gt_ratio = [f // o for f, o in zip(self.final_size, self.output_grid)]
        self.empty_index = int(schema.get(model_cfg, 'EMPTY_IDX'))
        self.ignore_index = int(schema.get(model_cfg, 'IGNORE_INDEX'))
        self.pred_chunk = int(schema.get(model_cfg, 'PRED_CHUNK'))
        self.loss_weights = read_block(schema, model_cfg, 'LOSS_WEIGHTS', OCC_LOSS_WEIGHTS_SCHEMA,
                                       'DENSE_HEAD.LOSS_WEIGHTS')
        self.register_buffer('class_weights', self._class_weights(schema.get(model_cfg, 'CLASS_WEIGHTS')),
                             persistent=False)
        self.forward_ret_dict = {}

    def _class_weights(self, spec):
        if isinstance(spec, str) and spec == 'openoccupancy':
            weights = openoccupancy_class_weights()
        elif isinstance(spec, str) and spec == 'uniform':
            weights = torch.ones(self.num_outputs)
        elif isinstance(spec, (list, tuple)) and len(spec) == self.num_outputs:
            weights = torch.tensor([float(v) for v in spec])
        else:
            raise ValueError(f'DENSE_HEAD.CLASS_WEIGHTS {spec!r}: expected openoccupancy, uniform or a list of '
                             f'{self.num_outputs} weights')
        if len(weights) != self.num_outputs:
            raise ValueError(f'DENSE_HEAD.CLASS_WEIGHTS has {len(weights)} entries, the head predicts '
                             f'{self.num_outputs} classes')
        return weights

    def forward(self, batch_dict):
        batch_size = int(batch_dict['batch_size'])
        logits = self.predict_logits(batch_dict, batch_size)
        batch_dict['occ_logits'] = logits
        if self.training:
            if 'gt_occupancy' not in batch_dict:
                raise KeyError(f'{type(self).__name__} (training) needs batch_dict["gt_occupancy"] '
                               '(B, 512, 512, 40): set DATA_CONFIG.TASK: occupancy')
            gt = batch_dict['gt_occupancy']
            expected = (batch_size, *self.final_size)
            if tuple(gt.shape) != expected:
                raise ValueError(f'gt_occupancy has shape {tuple(gt.shape)}, expected {expected} '
                                 '(DENSE_HEAD.FINAL_OCC_SIZE)')
            with torch.no_grad():
                target = downsample_occupancy_labels(gt, self.gt_ratio, self.num_outputs, self.ignore_index,
                                                     self.empty_index)
            self.forward_ret_dict = {'logits': logits, 'target': target}
        return batch_dict

    def get_loss(self):
        logits, target = self.forward_ret_dict['logits'].float(), self.forward_ret_dict['target']
        terms = occupancy_losses(logits, target, self.class_weights, self.ignore_index, self.empty_index)
        weights = {'ce': 'CE', 'sem_scal': 'SEM_SCAL', 'geo_scal': 'GEO_SCAL', 'lovasz': 'LOVASZ'}
        loss = sum(self.loss_weights[weights[name]] * value for name, value in terms.items())
        tb_dict = {'loss_occ': loss.detach(), **{f'loss_{name}': value.detach() for name, value in terms.items()}}
        return loss, tb_dict

    def get_predictions(self, batch_dict):
        logits = batch_dict['occ_logits'].detach().float()
        return [{'occ_pred': upsample_argmax(logits[b], self.final_size, self.pred_chunk)}
                for b in range(logits.shape[0])]


class OccHead(OccupancyHeadTemplate):
    CONFIG_SCHEMA = OCC_HEAD_COMMON_SCHEMA.extend('MODEL.DENSE_HEAD (OccHead)', {
        'LEVEL_CHANNELS': 256,
        'NUM_3D_CONVS': 1,                          # 3x3x3 conv + BN + ReLU per level (0: none)
        'CONV_CHANNELS': 128,                       # width of the per-level convs (= the fused width)
        'SOFT_WEIGHTS': True,
        'HIDDEN_CHANNELS': 64,
    })

    def __init__(self, model_cfg, input_channels, num_class, class_names, grid_size, point_cloud_range, voxel_size,
                 encoder_stages=None, **kwargs):
        super().__init__(model_cfg, num_class, class_names, point_cloud_range)
        schema = self.CONFIG_SCHEMA
        self.stages = encoder_stage_list(encoder_stages, input_channels, grid_size)
        self.level_geometry = [self._level_geometry(s, shape) for s, (_, shape) in enumerate(self.stages)]
        level_channels = int(schema.get(model_cfg, 'LEVEL_CHANNELS'))
        self.level_channels = level_channels
        self.level_proj = nn.ModuleList([nn.Linear(c, level_channels * geom[3])
                                         for (c, _), geom in zip(self.stages, self.level_geometry)])
        num_convs = int(schema.get(model_cfg, 'NUM_3D_CONVS'))
        fused = int(schema.get(model_cfg, 'CONV_CHANNELS')) if num_convs > 0 else level_channels
        self.level_convs = nn.ModuleList()
        for _ in self.stages:
            layers, in_channels = [], level_channels
            for _ in range(num_convs):
                layers += conv_bn_relu(in_channels, fused, 3)
                in_channels = fused
            self.level_convs.append(nn.Sequential(*layers))
        self.soft_weights = None
        if len(self.stages) > 1 and schema.get(model_cfg, 'SOFT_WEIGHTS'):
            self.soft_weights = nn.Sequential(*conv_bn_relu(fused, max(fused // 2, 1), 1),
                                              nn.Conv3d(max(fused // 2, 1), len(self.stages), 1))
        hidden = int(schema.get(model_cfg, 'HIDDEN_CHANNELS'))
        self.occ_pred_conv = nn.Sequential(*conv_bn_relu(fused, hidden, 1), nn.Conv3d(hidden, self.num_outputs, 1))

    def _level_geometry(self, stage, shape):
        """(fx, fy, fz, k): pool factors of the stage grid onto OUTPUT_GRID and the height lift factor."""
        (nx, ny, nz), (ox, oy, oz) = shape, self.output_grid
        if nx % ox or ny % oy:
            raise ValueError(f'OccHead: encoder stage {stage} grid {shape} is not a multiple of OUTPUT_GRID '
                             f'{self.output_grid} in x / y')
        if nz >= oz and nz % oz == 0:
            return nx // ox, ny // oy, nz // oz, 1
        if nz < oz and oz % nz == 0:
            return nx // ox, ny // oy, 1, oz // nz
        raise ValueError(f'OccHead: encoder stage {stage} has {nz} z cells; OUTPUT_GRID z = {oz} must divide it or be '
                         'a multiple of it')

    def densify(self, level, features, coords, batch_size):
        """(B, LEVEL_CHANNELS, X, Y, Z) volume of one encoder stage (see the module docstring)."""
        fx, fy, fz, k = self.level_geometry[level]
        ox, oy, oz = self.output_grid
        cells_z = oz // k
        coords = coords.long()
        keys = ((coords[:, 0] * ox + coords[:, 3] // fx) * oy + coords[:, 2] // fy) * cells_z + coords[:, 1] // fz
        unique_keys, inverse = torch.unique(keys, return_inverse=True)
        pooled = scatter_mean(features, inverse, unique_keys.shape[0])
        lifted = self.level_proj[level](pooled).view(-1, k, self.level_channels)    # height-to-channel split
        volume = lifted.new_zeros((batch_size, ox, oy, cells_z, k, self.level_channels))
        z = unique_keys % cells_z
        y = (unique_keys // cells_z) % oy
        x = (unique_keys // (cells_z * oy)) % ox
        b = unique_keys // (cells_z * oy * ox)
        volume = volume.index_put((b, x, y, z), lifted)
        return volume.view(batch_size, ox, oy, oz, self.level_channels).permute(0, 4, 1, 2, 3).contiguous()

    def predict_logits(self, batch_dict, batch_size):
        """(B, 17, X, Y, Z) coarse logits from the encoder stages (module docstring)."""
        features, coords, _ = stage_outputs(batch_dict, len(self.stages), 'OccHead')
        levels = [self.level_convs[s](self.densify(s, features[s], coords[s], batch_size))
                  for s in range(len(self.stages))]
        if len(levels) == 1:
            fused = levels[0]
        elif self.soft_weights is not None:
            weights = torch.softmax(self.soft_weights(levels[0]), dim=1)
            fused = sum(level * weights[:, i:i + 1] for i, level in enumerate(levels))
        else:
            fused = sum(levels)
        return self.occ_pred_conv(fused)
