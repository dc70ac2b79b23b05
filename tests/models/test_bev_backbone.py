"""PointPillarScatter3d (vs a per-sample loop as upstream) and BaseBEVResBackbone (spec §3.5)."""
import pytest
import torch
from easydict import EasyDict

from pcdet.models.backbones_2d import __all__ as backbones_2d
from pcdet.models.backbones_2d.map_to_bev import __all__ as map_to_bev
from pcdet.models.backbones_3d.dsvt import ShapeConfigError


def upstream_scatter(features, coords, nx, ny, nz, batch_size):
    """Upstream's loop: per sample a (C, nz * ny * nx) canvas indexed by z * ny * nx + y * nx + x."""
    out = []
    for b in range(batch_size):
        canvas = torch.zeros(features.shape[1], nz * ny * nx)
        mask = coords[:, 0] == b
        c = coords[mask]
        canvas[:, c[:, 1] * ny * nx + c[:, 2] * nx + c[:, 3]] = features[mask].t()
        out.append(canvas)
    return torch.stack(out).view(batch_size, features.shape[1] * nz, ny, nx)


def random_coords(seed, num, nx, ny, nz, batch_size):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randperm(batch_size * nz * ny * nx, generator=gen)[:num]
    return torch.stack((keys // (nz * ny * nx), (keys // (ny * nx)) % nz, (keys // nx) % ny, keys % nx), dim=1)


@pytest.mark.parametrize('nx,ny,nz', [(20, 12, 1), (10, 8, 3)])
def test_scatter_matches_upstream_layout(nx, ny, nz):
    scatter = map_to_bev['PointPillarScatter3d'](EasyDict(INPUT_SHAPE=[nx, ny, nz], NUM_BEV_FEATURES=6 * nz),
                                                 grid_size=[nx, ny, nz])
    coords = random_coords(0, 70, nx, ny, nz, 3)
    feats = torch.randn(70, 6, requires_grad=True)
    out = scatter({'pillar_features': feats, 'voxel_coords': coords, 'batch_size': 3})['spatial_features']
    assert out.shape == (3, 6 * nz, ny, nx)
    torch.testing.assert_close(out, upstream_scatter(feats.detach(), coords, nx, ny, nz, 3))
    out.sum().backward()
    assert torch.equal(feats.grad, torch.ones_like(feats))
    assert scatter.num_bev_features == 6 * nz


def test_scatter_batch_size_from_batch_dict_keeps_trailing_empty_sample():
    scatter = map_to_bev['PointPillarScatter3d'](EasyDict(NUM_BEV_FEATURES=4), grid_size=[8, 8, 1])
    coords = torch.tensor([[0, 0, 1, 2], [0, 0, 3, 3]])
    out = scatter({'pillar_features': torch.ones(2, 4), 'voxel_coords': coords, 'batch_size': 2})
    assert out['spatial_features'].shape == (2, 4, 8, 8) and out['spatial_features'][1].abs().sum() == 0
    out = scatter({'pillar_features': torch.ones(2, 4), 'voxel_coords': coords})     # no batch_size: upstream rule
    assert out['spatial_features'].shape == (1, 4, 8, 8)


def test_scatter_shape_validation():
    with pytest.raises(ShapeConfigError, match=r'INPUT_SHAPE \[468, 468, 1\] disagrees with grid_size '
                                               r'\(360, 360, 1\) from POINT_CLOUD_RANGE/VOXEL_SIZE'):
        map_to_bev['PointPillarScatter3d'](EasyDict(INPUT_SHAPE=[468, 468, 1], NUM_BEV_FEATURES=128),
                                           grid_size=[360, 360, 1])
    # Voxel DSVT: grid z 32 but the backbone reduces z to 1 -> derived INPUT_SHAPE (468, 468, 1).
    scatter = map_to_bev['PointPillarScatter3d'](EasyDict(NUM_BEV_FEATURES=8), grid_size=[16, 16, 32])
    assert (scatter.nx, scatter.ny, scatter.nz) == (16, 16, 1)
    batch = {'pillar_features': torch.ones(1, 8), 'voxel_coords': torch.tensor([[0, 0, 1, 1]]),
             'voxel_grid_shape': (16, 16, 2)}
    with pytest.raises(ShapeConfigError, match=r'INPUT_SHAPE \[16, 16, 1\] disagrees with the 3-D backbone output '
                                               r'grid \(16, 16, 2\); it should be \[16, 16, 2\]'):
        scatter(batch)
    batch['voxel_grid_shape'] = (16, 16, 1)
    batch['pillar_features'] = torch.ones(1, 5)
    with pytest.raises(ShapeConfigError, match='have 5 channels'):
        scatter(batch)
    with pytest.raises(ShapeConfigError, match='not divisible'):
        map_to_bev['PointPillarScatter3d'](EasyDict(INPUT_SHAPE=[16, 16, 3], NUM_BEV_FEATURES=8), grid_size=[16, 16, 3])


def bev_cfg(upsample):
    return EasyDict(NAME='BaseBEVResBackbone', LAYER_NUMS=[1, 1, 1], LAYER_STRIDES=[1, 2, 2], NUM_FILTERS=[8, 8, 16],
                    UPSAMPLE_STRIDES=upsample, NUM_UPSAMPLE_FILTERS=[4] * 3)


@pytest.mark.parametrize('upsample,out_hw', [([1, 2, 4], 16), ([0.5, 1, 2], 8)])
def test_bev_backbone_shapes(upsample, out_hw):
    torch.manual_seed(0)
    backbone = backbones_2d['BaseBEVResBackbone'](bev_cfg(upsample), input_channels=6)
    assert backbone.num_bev_features == 12
    out = backbone({'spatial_features': torch.randn(2, 6, 16, 16)})['spatial_features_2d']
    assert out.shape == (2, 12, out_hw, out_hw)
    out.mean().backward()
    assert isinstance(backbone.deblocks[0][0], torch.nn.Conv2d if upsample[0] < 1 else torch.nn.ConvTranspose2d)


def test_bev_basic_block_math():
    torch.manual_seed(1)
    backbone = backbones_2d['BaseBEVResBackbone'](bev_cfg([1, 2, 4]), input_channels=6).eval()
    block = backbone.blocks[0][0]
    x = torch.randn(1, 6, 9, 9)
    expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + block.downsample_layer(x))
    torch.testing.assert_close(block(x), expected)
    assert block.bn1.eps == 1e-3 and block.bn1.momentum == 0.01


def test_bev_backbone_extra_final_deblock_and_length_checks():
    cfg = bev_cfg([1, 2, 4, 2])
    cfg.NUM_UPSAMPLE_FILTERS = [4, 4, 4, 4]
    backbone = backbones_2d['BaseBEVResBackbone'](cfg, input_channels=6)
    assert len(backbone.deblocks) == 4
    out = backbone({'spatial_features': torch.randn(1, 6, 8, 8)})['spatial_features_2d']
    assert out.shape == (1, backbone.num_bev_features, 16, 16)
    bad = bev_cfg([1, 2, 4])
    bad.LAYER_NUMS = [1, 1]
    with pytest.raises(ValueError, match='one entry per level'):
        backbones_2d['BaseBEVResBackbone'](bad, input_channels=6)
