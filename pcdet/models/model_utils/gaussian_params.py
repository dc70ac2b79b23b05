"""Per-voxel 3-D Gaussians from encoder voxel features (the Gaussian head of GaussTR / GaussianCross, shared by the
rendering pretext `GaussianRenderPretrain` and the occupancy read-out `GaussianOccHead`).

Each encoder voxel predicts K Gaussians with a Linear -> ReLU MLP and one Linear to K x (3 + 3 + 4 + 1 + E) raw
numbers, mapped to:
    mean     = voxel centre + tanh(raw) * half voxel extent      (inside the voxel; a pillar spans its whole height)
    scale    = MIN + (MAX - MIN) * sigmoid(raw)                   (metres, per local axis; bounded so a Gaussian's
                                                                 footprint and its voxel neighbourhood stay bounded)
    quat     = raw + (1, 0, 0, 0)                                 ((w, x, y, z); identity at zero output, normalised
                                                                 by the projection)
    opacity  = sigmoid(raw + OPACITY_BIAS)
    values   = raw (E channels: RGB logits, features, class logits ... as the caller splits them)
Row r * K + k of every output is Gaussian k of voxel r (`source_voxel` = r).

    voxel_centers(voxel_coords (N, 4) [b, z, y, x], voxel_size (3,), point_cloud_range (6,)) -> (N, 3)
    grid_voxel_size(point_cloud_range (6,), grid_shape [nx, ny, nz]) -> (3,) tensor
    stage_voxel_size(point_cloud_range (6,), input_grid [nx, ny, nz], stage_stride [sx, sy, sz], where) -> (3,)
    GaussianParamHead(in_channels, num_values, voxel_size, ...)(voxel_features (N, C), centres (N, 3)) -> dict
    GaussianParamHead.from_voxels(voxel_features, voxel_coords, voxel_size, point_cloud_range) -> dict + batch_index
"""
import torch
from torch import nn

from ...config import ConfigError
from ...config_schema import Schema

GAUSSIAN_PARAMS_SCHEMA = Schema('GAUSSIANS', {
    'PER_VOXEL': 2,               # K Gaussians per encoder voxel
    'HIDDEN': [64],               # MLP hidden widths
    'SCALE_RANGE': [0.05, 1.0],   # metres, [MIN, MAX] of each axis' standard deviation
    'OPACITY_BIAS': 0.0,          # added before the sigmoid (negative: start transparent)
})


def voxel_centers(voxel_coords, voxel_size, point_cloud_range):
    """Metric centres (N, 3) [x, y, z] of voxels with coords (N, 4) [b, z, y, x]."""
    xyz_index = voxel_coords[:, [3, 2, 1]].to(voxel_size.dtype)
    return (xyz_index + 0.5) * voxel_size + point_cloud_range[:3]


def grid_voxel_size(point_cloud_range, grid_shape):
    """(3,) float32 metric size of a voxel of a [nx, ny, nz] grid spanning `point_cloud_range` (6,)."""
    pc_range = torch.as_tensor([float(v) for v in point_cloud_range])
    return (pc_range[3:] - pc_range[:3]) / torch.tensor([float(v) for v in grid_shape])


def stage_voxel_size(point_cloud_range, input_grid, stage_stride, where):
    """(3,) float32 metric size of an encoder stage's voxel: `stage_stride` input voxels per axis (DSVT pools with
    floor(coord / stride)), or the whole axis where the stride reaches past it. ConfigError naming `where` when a
    stride does not divide its axis: the stage grid is rounded up, so its last voxel would be partial and no single
    size would place the Gaussians of every voxel."""
    input_voxel = grid_voxel_size(point_cloud_range, input_grid)
    cells = []
    for axis, (size, stride) in enumerate(zip(input_grid, stage_stride)):
        size, stride = int(size), int(stride)
        if size % stride and stride < size:
            raise ConfigError(f'{where}: the encoder pools axis {"xyz"[axis]} of its {list(input_grid)} input grid '
                              f'by {stride} voxels, which does not divide {size}; choose BACKBONE_3D strides that '
                              'divide the grid (or a grid that the strides divide)')
        cells.append(min(stride, size))
    return input_voxel * torch.tensor([float(c) for c in cells])


def check_gaussian_config(cfg, where):
    """ConfigError naming `where` (e.g. 'MODEL.DENSE_HEAD.GAUSSIANS') for a bad GAUSSIANS block."""
    if int(cfg.PER_VOXEL) < 1:
        raise ConfigError(f'{where}.PER_VOXEL must be >= 1, got {cfg.PER_VOXEL}')
    low, high = (float(v) for v in cfg.SCALE_RANGE)
    if not 0 < low < high:
        raise ConfigError(f'{where}.SCALE_RANGE must be [MIN, MAX] with 0 < MIN < MAX metres, got '
                          f'{list(cfg.SCALE_RANGE)}')


class GaussianParamHead(nn.Module):
    """K Gaussians per voxel (module docs). `voxel_extent` (3,) is the size of the voxel the mean may move in
    (the encoder output voxel, e.g. a 0.8 x 0.8 x 8 m pillar)."""

    def __init__(self, in_channels, num_values, voxel_extent, per_voxel=2, hidden=(64,), scale_range=(0.05, 1.0),
                 opacity_bias=0.0):
        super().__init__()
        self.per_voxel, self.num_values = int(per_voxel), int(num_values)
        self.scale_min, self.scale_max = (float(v) for v in scale_range)
        self.opacity_bias = float(opacity_bias)
        layers, width = [], int(in_channels)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            width = int(h)
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(width, self.per_voxel * (11 + self.num_values))
        self.register_buffer('half_extent', torch.tensor([float(v) / 2 for v in voxel_extent]), persistent=False)
        self.register_buffer('identity_quat', torch.tensor([1.0, 0.0, 0.0, 0.0]), persistent=False)

    @classmethod
    def from_config(cls, cfg, in_channels, num_values, voxel_extent):
        return cls(in_channels, num_values, voxel_extent, per_voxel=cfg.PER_VOXEL, hidden=cfg.HIDDEN,
                   scale_range=cfg.SCALE_RANGE, opacity_bias=cfg.OPACITY_BIAS)

    def forward(self, voxel_features, centres):
        """Args: voxel_features (N, C); centres (N, 3). Returns {means (N K, 3), quats (N K, 4), scales (N K, 3),
        opacities (N K,), values (N K, E), source_voxel (N K,) long}."""
        raw = self.out(self.mlp(voxel_features)).reshape(-1, 11 + self.num_values)
        source = torch.arange(voxel_features.shape[0], device=voxel_features.device).repeat_interleave(self.per_voxel)
        half = self.half_extent.to(raw.dtype)
        return {
            'means': centres[source] + torch.tanh(raw[:, 0:3]) * half,
            'scales': self.scale_min + (self.scale_max - self.scale_min) * torch.sigmoid(raw[:, 3:6]),
            'quats': raw[:, 6:10] + self.identity_quat.to(raw.dtype),
            'opacities': torch.sigmoid(raw[:, 10] + self.opacity_bias),
            'values': raw[:, 11:],
            'source_voxel': source,
        }

    def from_voxels(self, voxel_features, voxel_coords, voxel_size, point_cloud_range):
        """`forward` on the voxels' metric centres, plus 'batch_index' (N K,) long: the sample of each Gaussian.
        voxel_coords (N, 4) [b, z, y, x]; voxel_size (3,) and point_cloud_range (6,) tensors of that grid."""
        dtype = voxel_features.dtype
        centres = voxel_centers(voxel_coords, voxel_size.to(dtype), point_cloud_range.to(dtype))
        gaussians = self(voxel_features, centres)
        gaussians['batch_index'] = voxel_coords[gaussians['source_voxel'], 0].long()
        return gaussians
