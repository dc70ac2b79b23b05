"""Dynamic (uncapped) pillar / voxel feature encoders used by DSVT (spec §3.2).

`DynamicPillarVFE` (registry `DynPillarVFE`) groups points into BEV pillars, `DynamicVoxelVFE` (OpenPCDet name;
the DSVT repo's `DynamicPillarVFE_3d` / `DynPillarVFE3D` is the same class) into 3-D voxels. Parameter names are
upstream's: `pfn_layers.<i>.linear.weight`, `pfn_layers.<i>.norm.*`. The grid tensors are non-persistent buffers
(not in the state dict, as upstream where they are plain attributes) that follow the module's device; nothing
calls `.cuda()`.

Differences from upstream, none of which changes the features of a voxel:
* Voxels are grouped by one int64 key `((b * nz + z) * ny + y) * nx + x` (the repository-wide hash, see
  `pcdet.datasets.processor.voxelization.voxel_keys`) and a 1-D `torch.unique`, so they come out sorted by
  (b, z, y, x) instead of upstream's (b, x, y, z). Every consumer (DSVT, the BEV scatter) is invariant to voxel order.
* Segment reductions use `pcdet.ops.scatter` (native `scatter_reduce`) instead of torch_scatter; see its docstring
  for the tie-gradient difference of `scatter_max`.
* `voxel_coords` is int64.
"""
import torch
from torch import nn

from pcdet.config_schema import REQUIRED, Schema
from pcdet.ops.scatter import scatter_amax, scatter_mean

from ..dsvt.shapes import resolve_grid_size
from .vfe_template import VFETemplate


class PFNLayerV2(nn.Module):
    """`Linear -> BatchNorm1d(eps 1e-3, momentum 0.01) -> ReLU`, then per-voxel max. A non-last layer outputs
    `out_channels / 2` point features concatenated with their voxel's max (`out_channels` per point); the last
    layer outputs the max only (one vector per voxel). `use_norm=False`: Linear with bias, no BatchNorm."""

    def __init__(self, in_channels, out_channels, use_norm=True, last_layer=False):
        super().__init__()
        self.last_vfe = last_layer
        self.use_norm = use_norm
        if not self.last_vfe:
            out_channels = out_channels // 2
        if self.use_norm:
            self.linear = nn.Linear(in_channels, out_channels, bias=False)
            self.norm = nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01)
        else:
            self.linear = nn.Linear(in_channels, out_channels, bias=True)
        self.relu = nn.ReLU()

    def forward(self, inputs, unq_inv, num_voxels=None):
        """inputs (P, C_in) per point, unq_inv (P,) voxel of each point -> (P, C_out) or (V, C_out) if last."""
        x = self.linear(inputs)
        x = self.norm(x) if self.use_norm else x
        x = self.relu(x)
        x_max = scatter_amax(x, unq_inv, num_voxels)
        if self.last_vfe:
            return x_max
        return torch.cat([x, x_max[unq_inv, :]], dim=1)


class _DynamicVFE(VFETemplate):
    """Shared body; `voxel_dims` is 2 (pillars: x, y) or 3 (voxels: x, y, z)."""

    voxel_dims = 2
    CONFIG_SCHEMA = Schema('MODEL.VFE (dynamic pillar / voxel VFE)', {
        'NAME': REQUIRED,
        'NUM_FILTERS': REQUIRED,        # PFN layer widths
        'USE_NORM': True,
        'WITH_DISTANCE': False,
        'USE_ABSLOTE_XYZ': True,        # OpenPCDet's spelling
        'USE_ABSOLUTE_XYZ': None,       # accepted alias, used when USE_ABSLOTE_XYZ is absent
    })

    def __init__(self, model_cfg, num_point_features, voxel_size, grid_size, point_cloud_range, **kwargs):
        super().__init__(model_cfg=model_cfg)
        schema = self.CONFIG_SCHEMA
        self.num_raw_point_features = int(num_point_features)
        self.use_norm = schema.get(model_cfg, 'USE_NORM')
        self.with_distance = schema.get(model_cfg, 'WITH_DISTANCE')
        alias = schema.get(model_cfg, 'USE_ABSOLUTE_XYZ')
        self.use_absolute_xyz = schema.get(model_cfg, 'USE_ABSLOTE_XYZ') if alias is None or \
            'USE_ABSLOTE_XYZ' in model_cfg else alias
        num_point_features = int(num_point_features) + (6 if self.use_absolute_xyz else 3)
        if self.with_distance:
            num_point_features += 1
        self.num_filters = list(model_cfg.NUM_FILTERS)
        if not self.num_filters:
            raise ValueError('VFE.NUM_FILTERS must name at least one layer width')
        num_filters = [num_point_features] + self.num_filters
        self.pfn_layers = nn.ModuleList([
            PFNLayerV2(num_filters[i], num_filters[i + 1], self.use_norm, last_layer=(i >= len(num_filters) - 2))
            for i in range(len(num_filters) - 1)])

        grid = resolve_grid_size(grid_size, point_cloud_range, voxel_size)
        self.grid = tuple(int(v) for v in grid)
        self.voxel_x, self.voxel_y, self.voxel_z = (float(v) for v in voxel_size)
        self.x_offset = self.voxel_x / 2 + float(point_cloud_range[0])
        self.y_offset = self.voxel_y / 2 + float(point_cloud_range[1])
        self.z_offset = self.voxel_z / 2 + float(point_cloud_range[2])
        self.register_buffer('grid_size', torch.tensor(self.grid, dtype=torch.long), persistent=False)
        self.register_buffer('voxel_size', torch.tensor([float(v) for v in voxel_size]), persistent=False)
        self.register_buffer('point_cloud_range', torch.tensor([float(v) for v in point_cloud_range]),
                             persistent=False)

    def get_output_feature_dim(self):
        return self.num_filters[-1]

    def forward(self, batch_dict, **kwargs):
        """Reads `points (P, 1 + C)` [b, x, y, z, feats...] (C = num_point_features).

        Writes `voxel_features` = `pillar_features` (V, NUM_FILTERS[-1]) (the same tensor) and `voxel_coords`
        (V, 4) int64 [b, z, y, x] (z = 0 for pillars), voxels sorted by (b, z, y, x). Points outside the grid on
        the voxelised axes are dropped (the pillar VFE does not look at z, as upstream); `point_in_grid_mask (P,)`
        bool says which rows of `points` were kept and `point_voxel_index (P_kept,)` long is the voxel of each kept
        point (the point -> voxel map that per-point targets, e.g. GPICTURE teacher features, are reduced with).
        """
        points = batch_dict['points']
        if points.shape[1] != self.num_raw_point_features + 1:
            raise ValueError(f'points has {points.shape[1]} columns, expected 1 + {self.num_raw_point_features} '
                             '[batch_idx, x, y, z, features...] (num_point_features from the dataset)')
        dims = self.voxel_dims
        # The grid tensors follow the points' device and dtype (no-ops when the module already sits there).
        pc_min = self.point_cloud_range[:dims].to(points.device, points.dtype)
        voxel_size = self.voxel_size[:dims].to(points.device, points.dtype)
        cells = torch.floor((points[:, 1:1 + dims] - pc_min) / voxel_size).long()
        in_range = ((cells >= 0) & (cells < self.grid_size[:dims].to(points.device))).all(dim=1)
        points, cells = points[in_range], cells[in_range]
        points_xyz = points[:, 1:4]

        nx, ny, nz = self.grid if dims == 3 else (self.grid[0], self.grid[1], 1)
        cell_z = cells[:, 2] if dims == 3 else torch.zeros_like(cells[:, 0])
        keys = ((points[:, 0].long() * nz + cell_z) * ny + cells[:, 1]) * nx + cells[:, 0]
        unq_keys, unq_inv = torch.unique(keys, return_inverse=True)
        num_voxels = unq_keys.shape[0]

        points_mean = scatter_mean(points_xyz, unq_inv, num_voxels)
        f_cluster = points_xyz - points_mean[unq_inv, :]
        dtype = points_xyz.dtype
        center_z = (cell_z.to(dtype) * self.voxel_z + self.z_offset) if dims == 3 else self.z_offset
        f_center = torch.stack((points_xyz[:, 0] - (cells[:, 0].to(dtype) * self.voxel_x + self.x_offset),
                                points_xyz[:, 1] - (cells[:, 1].to(dtype) * self.voxel_y + self.y_offset),
                                points_xyz[:, 2] - center_z), dim=1)
        features = [points[:, 1:] if self.use_absolute_xyz else points[:, 4:], f_cluster, f_center]
        if self.with_distance:
            features.append(torch.norm(points[:, 1:4], 2, dim=1, keepdim=True))
        features = torch.cat(features, dim=-1)

        for pfn in self.pfn_layers:
            features = pfn(features, unq_inv, num_voxels)

        voxel_coords = torch.stack((unq_keys // (nx * ny * nz), (unq_keys // (nx * ny)) % nz,
                                    (unq_keys // nx) % ny, unq_keys % nx), dim=1)
        batch_dict['pillar_features'] = batch_dict['voxel_features'] = features
        batch_dict['voxel_coords'] = voxel_coords
        batch_dict['point_in_grid_mask'] = in_range
        batch_dict['point_voxel_index'] = unq_inv
        return batch_dict


class DynamicPillarVFE(_DynamicVFE):
    """Dynamic pillar VFE (registry `DynPillarVFE`): pillars from x, y; `f_center` z is relative to the middle of
    the first z voxel (`voxel_z / 2 + z_min`), as upstream. Input channels: C + 6 (absolute xyz) or C + 3, +1 with
    distance. See `_DynamicVFE.forward` for the batch_dict keys."""

    voxel_dims = 2


class DynamicVoxelVFE(_DynamicVFE):
    """Dynamic 3-D voxel VFE (OpenPCDet `DynamicVoxelVFE`, DSVT repo `DynamicPillarVFE_3d` / `DynPillarVFE3D`):
    voxels from x, y, z and `f_center` relative to the voxel centre on all three axes. With one z voxel over the
    whole z range it equals the pillar VFE up to points outside the z range (dropped here)."""

    voxel_dims = 3


DynamicPillarVFE_3d = DynamicVoxelVFE  # noqa: N816 (DSVT-repo class name)
