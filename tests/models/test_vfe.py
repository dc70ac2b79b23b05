"""Dynamic pillar / voxel VFEs against a per-voxel Python reference (spec §3.2)."""
import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.models.backbones_3d.vfe import __all__ as vfes
from pcdet.models.backbones_3d.vfe.dynamic_pillar_vfe import DynamicPillarVFE, DynamicVoxelVFE

PC_RANGE = [-4.0, -3.2, -2.0, 4.0, 3.2, 4.0]


def make_vfe(name, voxel_size, filters=(16, 32), use_abs=True, with_distance=False, use_norm=True, seed=0):
    torch.manual_seed(seed)
    cfg = EasyDict(NAME=name, WITH_DISTANCE=with_distance, USE_ABSLOTE_XYZ=use_abs, USE_NORM=use_norm,
                   NUM_FILTERS=list(filters))
    pc = np.array(PC_RANGE, dtype=np.float32)
    grid = np.round((pc[3:] - pc[:3]) / np.array(voxel_size)).astype(np.int64)
    vfe = vfes[name](model_cfg=cfg, num_point_features=5, point_cloud_range=pc, voxel_size=voxel_size,
                     grid_size=grid, depth_downsample_factor=None)
    for layer in vfe.pfn_layers:   # non-trivial eval-mode BatchNorm
        if use_norm:
            layer.norm.running_mean.uniform_(-0.5, 0.5)
            layer.norm.running_var.uniform_(0.5, 2.0)
            layer.norm.weight.data.uniform_(0.5, 1.5)
            layer.norm.bias.data.uniform_(-0.2, 0.2)
    return vfe.eval()


def random_points(seed, num=400):
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.rand(num, 3, generator=gen) * torch.tensor([9.0, 7.4, 7.0]) + torch.tensor([-4.5, -3.7, -2.5])
    xyz[: num // 2] = xyz[: num // 2] * 0.3          # a dense cluster so voxels hold several points
    batch = torch.randint(0, 2, (num, 1), generator=gen).float()
    feats = torch.rand(num, 2, generator=gen)
    return torch.cat((batch, xyz, feats), dim=1)


def reference(vfe, points, voxel_size, dims):
    """Per-voxel loop: cells, grouping, features and the PFN stack with eval-mode BatchNorm."""
    pc_min = np.array(PC_RANGE[:3], dtype=np.float32)
    vs = np.array(voxel_size, dtype=np.float32)
    grid = np.round((np.array(PC_RANGE[3:], dtype=np.float32) - pc_min) / vs).astype(np.int64)
    groups = {}
    for i, p in enumerate(points.numpy()):
        cell = np.floor((p[1:4].astype(np.float32) - pc_min) / vs).astype(np.int64)
        if not ((cell[:dims] >= 0) & (cell[:dims] < grid[:dims])).all():
            continue
        z = int(cell[2]) if dims == 3 else 0
        groups.setdefault((int(p[0]), z, int(cell[1]), int(cell[0])), []).append(i)
    out = {}
    for key, idx in groups.items():
        pts = points[idx]
        xyz = pts[:, 1:4]
        b, z, y, x = key
        center = torch.tensor([x * voxel_size[0] + voxel_size[0] / 2 + PC_RANGE[0],
                               y * voxel_size[1] + voxel_size[1] / 2 + PC_RANGE[1],
                               (z * voxel_size[2] if dims == 3 else 0) + voxel_size[2] / 2 + PC_RANGE[2]])
        feats = [pts[:, 1:] if vfe.use_absolute_xyz else pts[:, 4:], xyz - xyz.mean(0), xyz - center]
        if vfe.with_distance:
            feats.append(xyz.norm(dim=1, keepdim=True))
        h = torch.cat(feats, dim=1)
        for layer in vfe.pfn_layers:
            a = layer.linear(h)
            a = layer.norm(a) if layer.use_norm else a
            a = torch.relu(a)
            pooled = a.max(dim=0, keepdim=True)[0]
            h = pooled if layer.last_vfe else torch.cat((a, pooled.expand_as(a)), dim=1)
        out[key] = h[0]
    return out


@pytest.mark.parametrize('name,voxel_size,dims,options', [
    ('DynPillarVFE', [0.8, 0.8, 6.0], 2, {}),
    ('DynPillarVFE', [0.8, 0.8, 6.0], 2, {'use_abs': False, 'with_distance': True}),
    ('DynPillarVFE3D', [0.8, 0.8, 1.5], 3, {}),
    ('DynamicVoxelVFE', [0.8, 0.8, 1.5], 3, {'use_norm': False}),
])
def test_vfe_matches_per_voxel_reference(name, voxel_size, dims, options):
    vfe = make_vfe(name, voxel_size, **options)
    points = random_points(1)
    with torch.no_grad():
        out = vfe({'points': points, 'batch_size': 2})
        expected = reference(vfe, points, voxel_size, dims)
    coords, feats = out['voxel_coords'], out['voxel_features']
    assert out['pillar_features'] is feats
    assert coords.dtype == torch.long and feats.shape == (len(expected), vfe.get_output_feature_dim())
    assert sorted(map(tuple, coords.tolist())) == sorted(expected)
    # Sorted by the repository hash ((b * nz + z) * ny + y) * nx + x, i.e. by (b, z, y, x).
    assert coords.tolist() == sorted(coords.tolist())
    for key, feat in zip(map(tuple, coords.tolist()), feats):
        torch.testing.assert_close(feat, expected[key], atol=1e-5, rtol=1e-5)
    if dims == 2:
        assert (coords[:, 1] == 0).all()


def test_pillar_vfe_keeps_points_outside_z_range_and_drops_outside_xy():
    vfe = make_vfe('DynPillarVFE', [0.8, 0.8, 6.0])
    points = torch.tensor([[0, 0.1, 0.1, 9.0, 0.5, 0.0],      # z above the range: kept by the pillar VFE
                           [0, 4.5, 0.1, 0.0, 0.5, 0.0],      # x outside: dropped
                           [1, -0.1, 0.1, 0.0, 0.5, 0.0]])
    out = vfe({'points': points})
    assert out['voxel_coords'].tolist() == [[0, 0, 4, 5], [1, 0, 4, 4]]
    voxel = make_vfe('DynamicVoxelVFE', [0.8, 0.8, 1.5])
    assert voxel({'points': points})['voxel_coords'].tolist() == [[1, 1, 4, 4]]   # z = 0 m is cell 1


def test_3d_vfe_with_one_z_cell_equals_pillar_vfe():
    pillar = make_vfe('DynPillarVFE', [0.8, 0.8, 6.0])
    voxel = make_vfe('DynPillarVFE3D', [0.8, 0.8, 6.0], seed=1)
    voxel.load_state_dict(pillar.state_dict())
    points = random_points(2)
    points = points[(points[:, 3] >= -2.0) & (points[:, 3] < 4.0)]
    with torch.no_grad():
        a, b = pillar({'points': points}), voxel({'points': points})
    assert torch.equal(a['voxel_coords'], b['voxel_coords'])
    torch.testing.assert_close(a['voxel_features'], b['voxel_features'])


def test_registry_names_and_no_persistent_grid_buffers():
    assert vfes['DynPillarVFE'] is vfes['DynamicPillarVFE'] is DynamicPillarVFE
    assert vfes['DynPillarVFE3D'] is vfes['DynamicPillarVFE_3d'] is vfes['DynamicVoxelVFE'] is DynamicVoxelVFE
    vfe = make_vfe('DynPillarVFE', [0.8, 0.8, 6.0])
    assert all(k.startswith('pfn_layers.') for k in vfe.state_dict())
    assert vfe.pfn_layers[0].linear.weight.shape == (8, 11)
    # The grid tensors follow the module (device / dtype), so inputs of another dtype work end to end.
    vfe = vfe.double()
    assert vfe.point_cloud_range.dtype == torch.float64 and vfe.grid_size.dtype == torch.long
    out = vfe({'points': random_points(3).double()})
    assert out['voxel_features'].dtype == torch.float64


def test_training_backward_and_wrong_columns():
    vfe = make_vfe('DynPillarVFE', [0.8, 0.8, 6.0]).train()
    out = vfe({'points': random_points(4)})
    out['voxel_features'].sum().backward()
    assert vfe.pfn_layers[0].linear.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r'points has 5 columns, expected 1 \+ 5'):
        vfe({'points': random_points(4)[:, :5]})
