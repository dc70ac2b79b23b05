"""Segmentor3D / OccupancyNet on hand-made batch dicts (no dataset): training / eval contracts, the per-point branch
inside one pillar, the multi-stage up-sampling and volume wiring (checked against coordinates), the height-to-channel
lift, the chunked up-sampling, and small overfit runs."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pcdet.config import cfg_from_yaml_file
from pcdet.models.build import build_network_from_cfg
from pcdet.models.dense_heads.occ_head import upsample_argmax

from encoder_variants import use_two_stage_voxel_encoder

CFG_DIR = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs' / 'gpicture_models'
SEG_CFG, OCC_CFG = 'gpicture_tiny_synthetic_segmentation.yaml', 'gpicture_tiny_synthetic_occupancy.yaml'
GROUND, CAR = 11, 4          # driveable_surface, car (official ids)


def load(name):
    return cfg_from_yaml_file(str(CFG_DIR / name))


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_network_from_cfg(cfg)


def two_stage(cfg):
    """The tiny config on a 3-D grid (z cells of 2 m) with two DSVT stages (z-stride 4), to exercise the pooling
    maps: stage 0 is 128 x 128 x 4, stage 1 128 x 128 x 1."""
    cfg = copy.deepcopy(cfg)
    use_two_stage_voxel_encoder(cfg, reduction_type='attention', drop_conv_out=True)
    return cfg


def cloud(seed=0, batch_size=2, num_points=3000, outside=0):
    """Random points [b, x, y, z, intensity, time]; labels from position; `outside` extra points beyond x = 51.2."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(num_points, 3, generator=g) * torch.tensor([80.0, 80.0, 6.0]) - torch.tensor([40.0, 40.0, 4.0])
    if outside:
        xyz[:outside, 0] = 55.0
    batch_index = torch.sort(torch.randint(0, batch_size, (num_points,), generator=g))[0].float()
    points = torch.cat([batch_index[:, None], xyz, torch.rand(num_points, 1, generator=g) * 255,
                        torch.rand(num_points, 1, generator=g) * 0.5], dim=1)
    labels = torch.where(xyz[:, 2] < -1.0, GROUND, CAR) + (xyz[:, 0] > 0).long()
    labels[::7] = 0                                                   # unlabelled (ignore)
    return {'points': points, 'batch_size': batch_size, 'point_seg_labels': labels.float()}


def train_steps(model, make_batch, steps, lr):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    history = []
    for _ in range(steps):
        loss, tb_dict, _ = model(make_batch())
        optimizer.zero_grad()
        loss['loss'].backward()
        optimizer.step()
        history.append({k: float(v) for k, v in tb_dict.items()})
    return history


# ----------------------------------------------------------------------------------------------------- segmentation
def test_segmentor_training_and_eval_contract():
    model = build(load(SEG_CFG))
    assert type(model).__name__ == 'Segmentor3D'
    assert {k.split('.')[0] for k in model.state_dict()} == {'vfe', 'backbone_3d', 'dense_head', 'global_step'}
    batch = cloud(outside=40)
    model.train()
    loss, tb_dict, disp = model(dict(batch))
    loss['loss'].backward()
    assert loss['loss'].dim() == 0 and torch.isfinite(loss['loss'])
    assert {'loss_seg', 'loss_ce', 'loss_lovasz', 'point_acc'} <= set(tb_dict) and disp == {}
    assert model.dense_head.point_mlp[0].weight.grad.abs().sum() > 0
    assert model.backbone_3d.stage_0[0].encoder_list[0].win_attn.self_attn.in_proj_weight.grad.abs().sum() > 0

    model.eval()
    out = dict(batch)
    with torch.no_grad():
        pred_dicts, ret_dict = model(out)
    logits, points = out['point_seg_logits'], batch['points']
    assert logits.shape == (points.shape[0], 16) and ret_dict == {}
    assert len(pred_dicts) == 2
    inside = points[:, 1].abs() < 51.2
    for b, pred in enumerate(pred_dicts):
        rows = points[:, 0] == b
        preds = pred['point_seg_preds']
        assert preds.dtype == torch.int64 and preds.shape == (int(rows.sum()),)
        assert torch.equal(preds[~inside[rows]], torch.zeros_like(preds[~inside[rows]]))
        expected = logits[rows].argmax(dim=1) + 1
        assert torch.equal(preds[inside[rows]], expected[inside[rows]])
        assert int(preds[inside[rows]].min()) >= 1 and int(preds.max()) <= 16
    assert (~inside).sum() == 40


def pillar_pairs(seed=0, num_pillars=150, split='z'):
    """Per pillar two points with different labels -> [b, x, y, z, i, t]: split 'z': a ground point (z = -1.8,
    driveable_surface) and a car point (z = 0.2); split 'x': same z, the car point in the pillar's +x half, the
    ground point in its -x half (only the offset to the pillar centre tells them apart)."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(128 * 128, generator=g)[:num_pillars]
    centres = torch.stack([(cells % 128).float(), (cells // 128).float()], dim=1) * 0.8 - 51.2 + 0.4
    jitter = (torch.rand(2, num_pillars, 2, generator=g) - 0.5) * 0.6
    if split == 'x':
        jitter[..., 0] = jitter[..., 0].abs() * 0.5 + 0.1
        jitter[0, :, 0] *= -1
    ground_z, car_z = (-1.8, 0.2) if split == 'z' else (-0.5, -0.5)
    ground = torch.cat([centres + jitter[0], torch.full((num_pillars, 1), ground_z)], dim=1)
    car = torch.cat([centres + jitter[1], torch.full((num_pillars, 1), car_z)], dim=1)
    xyz = torch.cat([ground, car])
    points = torch.cat([torch.zeros(2 * num_pillars, 1), xyz, torch.full((2 * num_pillars, 2), 0.5)], dim=1)
    labels = torch.cat([torch.full((num_pillars,), GROUND), torch.full((num_pillars,), CAR)])
    return {'points': points, 'batch_size': 1, 'point_seg_labels': labels}


@pytest.mark.parametrize('split', ['z', 'x'])
def test_point_branch_separates_two_points_of_one_pillar(split):
    batch = pillar_pairs(split=split)
    cfg = load(SEG_CFG)
    model = build(cfg)
    history = train_steps(model, lambda: dict(batch), steps=30, lr=0.02)
    assert history[-1]['point_acc'] > 0.98
    model.eval()
    with torch.no_grad():
        preds = model(dict(batch))[0][0]['point_seg_preds']
    assert (preds == batch['point_seg_labels']).float().mean() > 0.98
    if split == 'x':
        return
    cfg.MODEL.DENSE_HEAD.POINT_BRANCH.ENABLED = False          # every point of a pillar gets the pillar's logits
    blind = build(cfg)
    train_steps(blind, lambda: dict(batch), steps=5, lr=0.01)
    blind.eval()
    out = dict(batch)
    with torch.no_grad():
        blind(out)
    half = batch['points'].shape[0] // 2
    assert torch.equal(out['point_seg_logits'][:half], out['point_seg_logits'][half:])


def test_segmentor_overfits_one_batch():
    batch = cloud(seed=3, batch_size=2, num_points=1500)
    model = build(load(SEG_CFG))
    history = train_steps(model, lambda: dict(batch), steps=25, lr=0.02)
    assert history[-1]['loss_seg'] < 0.2 * history[0]['loss_seg']
    assert history[-1]['point_acc'] > 0.9


def test_multistage_up_sampling_follows_the_pooling_by_coordinates():
    model = build(two_stage(load(SEG_CFG)))
    head = model.dense_head
    assert len(head.up_blocks) == 1 and [s[1] for s in head.stages] == [[128, 128, 4], [128, 128, 1]]
    batch = cloud(seed=1, num_points=2000)
    model.eval()
    with torch.no_grad():
        out = model.backbone_3d(model.vfe(dict(batch)))
        features, (coords0, coords1) = out['dsvt_stage_features'], out['dsvt_stage_coords']
        # the parent of a stage-0 voxel is the stage-1 voxel with the same (b, y, x) and z // 4 (independent of
        # the pooling maps the head uses)
        key1 = {tuple(c): i for i, c in enumerate(coords1.tolist())}
        parents = torch.tensor([key1[(b, z // 4, y, x)] for b, z, y, x in coords0.tolist()])
        expected = head.up_blocks[0](torch.cat([features[0], features[1][parents]], dim=1))
        got, got_coords = head.stage0_features(out)
    assert torch.allclose(got, expected) and torch.equal(got_coords, coords0)
    model.train()
    loss, _, _ = model(dict(batch))
    loss['loss'].backward()
    assert head.up_blocks[0][0].weight.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------------------------- occupancy
def small_occ(cfg, output_grid, final_size):
    cfg = copy.deepcopy(cfg)
    cfg.MODEL.DENSE_HEAD.OUTPUT_GRID, cfg.MODEL.DENSE_HEAD.FINAL_OCC_SIZE = output_grid, final_size
    return cfg


def occ_scene(final_size, batch_size=1, seed=0):
    """A ground layer (z 1.0-2.0 m below 0, driveable surface) and a car box, the matching points, noise voxels."""
    nx, ny, nz = final_size
    vx, vz = 102.4 / nx, 8.0 / nz
    gt = torch.zeros(batch_size, nx, ny, nz, dtype=torch.uint8)
    ground_z = int((-2.0 + 5.0) / vz)
    gt[:, :, :, ground_z] = GROUND
    x0, x1, y0, y1 = int(60 / 102.4 * nx), int(68 / 102.4 * nx), int(40 / 102.4 * ny), int(46 / 102.4 * ny)
    gt[:, x0:x1, y0:y1, ground_z + 1:ground_z + 1 + int(2.0 / vz)] = CAR
    gt[:, :2, :2, -2:] = 255
    occupied = torch.nonzero(gt[0] != 0)
    centres = (occupied.float() + 0.5) * torch.tensor([vx, vx, vz]) + torch.tensor([-51.2, -51.2, -5.0])
    g = torch.Generator().manual_seed(seed)
    centres = centres[torch.randperm(centres.shape[0], generator=g)[:2000]]
    points = torch.cat([torch.cat([torch.full((centres.shape[0], 1), float(b)), centres,
                                   torch.full((centres.shape[0], 2), 0.3)], dim=1) for b in range(batch_size)])
    return {'points': points, 'batch_size': batch_size, 'gt_occupancy': gt.float()}


def test_occupancy_training_and_eval_contract_at_the_real_grid():
    model = build(load(OCC_CFG))
    assert type(model).__name__ == 'OccupancyNet'
    batch = occ_scene([512, 512, 40], batch_size=2)
    model.train()
    loss, tb_dict, _ = model(dict(batch))
    loss['loss'].backward()
    assert torch.isfinite(loss['loss'])
    assert {'loss_occ', 'loss_ce', 'loss_sem_scal', 'loss_geo_scal', 'loss_lovasz'} <= set(tb_dict)
    assert model.dense_head.level_proj[0].weight.grad.abs().sum() > 0
    model.eval()
    single = occ_scene([512, 512, 40], batch_size=1)
    out = dict(single)
    with torch.no_grad():
        pred_dicts, ret_dict = model(out)
    assert out['occ_logits'].shape == (1, 17, 64, 64, 10) and ret_dict == {}
    pred = pred_dicts[0]['occ_pred']
    assert pred.shape == (512, 512, 40) and pred.dtype == torch.uint8 and int(pred.max()) <= 16


def test_occupancy_overfits_one_scene():
    cfg = small_occ(load(OCC_CFG), [32, 32, 10], [128, 128, 40])
    batch = occ_scene([128, 128, 40])
    model = build(cfg)
    history = train_steps(model, lambda: dict(batch), steps=20, lr=0.02)
    assert history[-1]['loss_occ'] < 0.25 * history[0]['loss_occ']
    model.eval()
    out = dict(batch)
    with torch.no_grad():
        pred = model(out)[0][0]['occ_pred']
    target = model.dense_head.forward_ret_dict['target'][0]
    coarse = out['occ_logits'][0].argmax(0)
    valid = target != 255
    assert (coarse[valid] == target[valid]).float().mean() > 0.95
    gt = batch['gt_occupancy'][0].long()
    occupied = (gt != 0) & (gt != 255)
    assert (pred.long()[occupied] == gt[occupied]).float().mean() > 0.85


def test_height_to_channel_lift_places_features_by_coordinates():
    """Tiny config: 128 x 128 pillars pooled 2 x 2 onto the 64 x 64 x 10 grid and lifted to 10 heights; volume axes
    (B, C, x, y, z) as the GT's."""
    head = build(load(OCC_CFG)).dense_head
    assert head.level_geometry == [(2, 2, 1, 10)] and head.gt_ratio == [8, 8, 4]
    features = torch.randn(3, 32)
    coords = torch.tensor([[1, 0, 5, 7], [1, 0, 4, 6], [0, 0, 100, 3]])          # [b, z, y, x]
    with torch.no_grad():
        volume = head.densify(0, features, coords, batch_size=2)
        pooled = head.level_proj[0](features[:2].mean(dim=0, keepdim=True)).view(10, 16)   # (height, channel)
        single = head.level_proj[0](features[2:]).view(10, 16)
    assert volume.shape == (2, 16, 64, 64, 10)
    assert torch.allclose(volume[1, :, 3, 2, :], pooled.t(), atol=1e-6)
    assert torch.allclose(volume[0, :, 1, 50, :], single.t(), atol=1e-6)
    assert int((volume.abs().sum(dim=1) > 0).sum()) == 20


def test_multistage_volumes_pool_and_lift_by_coordinates():
    cfg = small_occ(two_stage(load(OCC_CFG)), [64, 64, 8], [256, 256, 16])
    model = build(cfg)
    head = model.dense_head
    assert head.level_geometry == [(2, 2, 1, 2), (2, 2, 1, 8)] and head.soft_weights is not None
    features = torch.randn(3, 32)
    # [b, z, y, x] on the 128 x 128 x 4 stage grid: the first two share the coarse cell (x 10, y 5, z cell 3 ->
    # output z 6, 7), the third sits one z cell lower (output z 4, 5)
    coords = torch.tensor([[0, 3, 10, 20], [0, 3, 11, 21], [0, 2, 10, 20]])
    with torch.no_grad():
        volume = head.densify(0, features, coords, batch_size=1)
        pooled = head.level_proj[0](features[:2].mean(dim=0, keepdim=True)).view(2, 16)
        lower = head.level_proj[0](features[2:]).view(2, 16)
    assert torch.allclose(volume[0, :, 10, 5, 6:8], pooled.t(), atol=1e-6)
    assert torch.allclose(volume[0, :, 10, 5, 4:6], lower.t(), atol=1e-6)
    assert int((volume.abs().sum(dim=1) > 0).sum()) == 4
    batch = occ_scene([256, 256, 16], batch_size=1)
    loss, _, _ = model(dict(batch))
    loss['loss'].backward()
    assert all(proj.weight.grad.abs().sum() > 0 for proj in head.level_proj)
    assert head.soft_weights[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize('size, chunk', [((64, 48, 20), 7), ((32, 24, 10), 3), ((64, 24, 20), 64)])
def test_chunked_upsampling_equals_the_full_interpolation(size, chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(17, 16, 12, 5, generator=g)
    logits[:, 3] = 0.0                                                  # exact ties -> class 0
    reference = F.interpolate(logits[None], size=size, mode='trilinear', align_corners=False)[0].argmax(dim=0)
    got = upsample_argmax(logits, size, chunk)
    assert got.dtype == torch.uint8 and torch.equal(got.long(), reference)


def test_seg_head_refuses_an_ignore_index_other_than_zero():
    from pcdet.config import ConfigError
    cfg = load('gpicture_tiny_synthetic_segmentation.yaml')
    cfg.MODEL.DENSE_HEAD.IGNORE_INDEX = 255
    with pytest.raises(ConfigError, match='IGNORE_INDEX must be 0'):
        build(cfg)
