"""GaussianOccHead (GaussTR-style occupancy read-out) built from its config: the logits rule, the wiring of the last
encoder stage into the coarse grid (by coordinates), OccHead's loss / prediction contract, an overfit run, the
encoder shared with the OccHead config (a pretrained encoder loads 100%) and refused config values."""
import copy
import math
from pathlib import Path

import pytest
import torch

from pcdet.config import ConfigError, cfg_from_yaml_file
from pcdet.config_registry import validate_config
from pcdet.models.build import build_network_from_cfg
from pcdet.models.dense_heads import __all__ as dense_head_registry
from pcdet.models.dense_heads.gaussian_occ_head import DENSITY_FLOOR, GaussianOccHead, occupancy_logits
from pcdet.models.dense_heads.occ_head import OccHead, upsample_argmax
from pcdet.training.checkpointing import checkpoint_state, save_checkpoint
from pcdet.utils.checkpoint import load_pretrained_model

from encoder_variants import use_two_stage_voxel_encoder

CFG_DIR = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs' / 'gpicture_models'
GAUSS_CFG, OCC_CFG = 'gpicture_tiny_synthetic_occupancy_gaussian.yaml', 'gpicture_tiny_synthetic_occupancy.yaml'
PRETRAIN_CFG = 'gpicture_tiny_synthetic_pretrain.yaml'
GROUND, CAR = 11, 4


def load(name):
    return validate_config(cfg_from_yaml_file(str(CFG_DIR / name)))


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_network_from_cfg(cfg)


def small(cfg, output_grid=(32, 32, 10), final_size=(128, 128, 40)):
    cfg = copy.deepcopy(cfg)
    cfg.MODEL.DENSE_HEAD.OUTPUT_GRID, cfg.MODEL.DENSE_HEAD.FINAL_OCC_SIZE = list(output_grid), list(final_size)
    return cfg


def occ_scene(final_size, batch_size=1, seed=0):
    """Hand-made GT: a ground layer (driveable surface) and two car blocks (the second only in sample 1), noise
    voxels; one point at (a random subset of) the occupied voxel centres."""
    nx, ny, nz = final_size
    vx, vz = 102.4 / nx, 8.0 / nz
    gt = torch.zeros(batch_size, nx, ny, nz, dtype=torch.uint8)
    ground_z = int(3.0 / vz)
    gt[:, :, :, ground_z] = GROUND
    x0, x1, y0, y1 = int(60 / 102.4 * nx), int(68 / 102.4 * nx), int(40 / 102.4 * ny), int(46 / 102.4 * ny)
    gt[:, x0:x1, y0:y1, ground_z + 1:ground_z + 1 + int(2.0 / vz)] = CAR
    if batch_size > 1:
        gt[1, x0 - 30:x1 - 30, y0 + 20:y1 + 20, ground_z + 1:ground_z + 1 + int(2.0 / vz)] = CAR
    gt[:, :2, :2, -2:] = 255
    g = torch.Generator().manual_seed(seed)
    points = []
    for b in range(batch_size):
        occupied = torch.nonzero((gt[b] != 0) & (gt[b] != 255))
        centres = (occupied.float() + 0.5) * torch.tensor([vx, vx, vz]) + torch.tensor([-51.2, -51.2, -5.0])
        centres = centres[torch.randperm(centres.shape[0], generator=g)[:1500]]
        points.append(torch.cat([torch.full((centres.shape[0], 1), float(b)), centres,
                                 torch.full((centres.shape[0], 2), 0.3)], dim=1))
    return {'points': torch.cat(points), 'batch_size': batch_size, 'gt_occupancy': gt.float()}


@pytest.fixture(scope='module')
def tiny_cfg():
    return load(GAUSS_CFG)


def test_registered_and_shares_occ_heads_loss_and_predictions():
    assert dense_head_registry['GaussianOccHead'] is GaussianOccHead
    # the same functions, not copies: the loss and the prediction contract are OccHead's by construction
    assert GaussianOccHead.get_loss is OccHead.get_loss
    assert GaussianOccHead.get_predictions is OccHead.get_predictions
    assert GaussianOccHead.forward is OccHead.forward


def test_logits_rule_is_a_normalised_occupancy_split():
    g = torch.Generator().manual_seed(0)
    density = torch.rand(2, 3, 4, 5, generator=g) * 3
    density[0, 0, 0, 0] = 0.0
    values = torch.randn(2, 16, 3, 4, 5, generator=g)
    logits = occupancy_logits(density, values)
    assert logits.shape == (2, 17, 3, 4, 5)
    probs = torch.softmax(logits, dim=1)
    p_occ = 1 - torch.exp(-(density + DENSITY_FLOOR))
    assert torch.allclose(probs[:, 0], 1 - p_occ, atol=1e-6)
    assert torch.allclose(probs[:, 1:], p_occ[:, None] * torch.softmax(values, dim=1), atol=1e-6)
    assert torch.allclose(torch.logsumexp(logits, dim=1), torch.zeros(2, 3, 4, 5), atol=1e-5)
    assert float(probs[0, 0, 0, 0, 0]) == pytest.approx(math.exp(-DENSITY_FLOOR), abs=1e-6)


def test_builds_from_config_and_writes_the_occ_contract(tiny_cfg):
    model = build(tiny_cfg)
    head = model.dense_head
    assert type(model).__name__ == 'OccupancyNet' and isinstance(head, GaussianOccHead)
    assert head.output_grid == [64, 64, 10] and head.final_size == [512, 512, 40]
    assert torch.allclose(head.stage_voxel, torch.tensor([0.8, 0.8, 8.0]))
    assert torch.allclose(head.cell_size, torch.tensor([1.6, 1.6, 0.8]))
    batch = occ_scene([512, 512, 40], batch_size=2)
    model.train()
    loss, tb_dict, _ = model(dict(batch))
    loss['loss'].backward()
    assert torch.isfinite(loss['loss'])
    assert {'loss_occ', 'loss_ce', 'loss_sem_scal', 'loss_geo_scal', 'loss_lovasz'} <= set(tb_dict)
    assert head.gaussian_head.out.weight.grad.abs().sum() > 0
    assert model.backbone_3d.stage_0[0].encoder_list[0].win_attn.self_attn.in_proj_weight.grad.abs().sum() > 0

    model.eval()
    out = dict(batch)
    with torch.no_grad():
        pred_dicts, ret_dict = model(out)
    logits = out['occ_logits']
    assert logits.shape == (2, 17, 64, 64, 10) and ret_dict == {} and len(pred_dicts) == 2
    assert out['occ_density'].shape == (2, 64, 64, 10)
    assert out['occ_gaussians']['means'].shape[0] == 4 * int(out['dsvt_stage_coords'][-1].shape[0])
    for b, pred in enumerate(pred_dicts):
        assert set(pred) == {'occ_pred'}
        assert pred['occ_pred'].shape == (512, 512, 40) and pred['occ_pred'].dtype == torch.uint8
        assert torch.equal(pred['occ_pred'], upsample_argmax(logits[b], [512, 512, 40], 32))


def test_gaussians_land_in_the_cells_of_their_voxel(tiny_cfg):
    """Zero MLP output: every pillar's Gaussians sit at its centre (isotropic 0.55 m, opacity 0.5). Pillar (x 7,
    y 100) of sample 1 has its centre (-45.2, 28.8, -1.0) in coarse cell x 3, y 50, on the z boundary 4 | 5."""
    head = build(tiny_cfg).dense_head
    head.eval()
    torch.nn.init.zeros_(head.gaussian_head.out.weight)
    torch.nn.init.zeros_(head.gaussian_head.out.bias)
    batch = {'batch_size': 2, 'dsvt_stage_features': [torch.randn(1, 32)],
             'dsvt_stage_coords': [torch.tensor([[1, 0, 100, 7]])], 'dsvt_pooling_maps': []}
    with torch.no_grad():
        head(batch)
    density = batch['occ_density']
    assert float(density[0].abs().sum()) == 0.0
    peak = torch.nonzero(density[1] == density[1].max())
    assert peak.tolist() in ([[3, 50, 4]], [[3, 50, 5]], [[3, 50, 4], [3, 50, 5]])
    assert float(density[1, 3, 50, 5]) == pytest.approx(float(density[1, 3, 50, 4]), rel=1e-4)
    s = 0.1 + 0.9 * 0.5                                                  # SCALE_RANGE [0.1, 1.0]
    expected = 4 * 0.5 * math.exp(-0.5 * (0.4 ** 2 + 0.4 ** 2 + 0.4 ** 2) / s ** 2)   # (dx, dy, dz) = 0.4 m
    assert float(density[1, 3, 50, 4]) == pytest.approx(expected, rel=1e-5)
    logits = batch['occ_logits']
    assert torch.allclose(logits[:, 0], -(density + DENSITY_FLOOR))                 # free = -d' at every cell
    assert float(logits[1, 0, 0, 0, 0]) == pytest.approx(-DENSITY_FLOOR)


def test_a_pooled_stage_gives_its_voxels_the_pooled_size(tiny_cfg):
    # 2 m input voxels in z pooled by 4 (encoder_variants): the last stage's voxels are 8 m tall, and the Gaussians
    # of the pillar at stage z 0 are centred at -5 + 4 m
    cfg = use_two_stage_voxel_encoder(copy.deepcopy(tiny_cfg), reduction_type='attention', drop_conv_out=True)
    head = build(cfg).dense_head
    assert torch.allclose(head.stage_voxel, torch.tensor([0.8, 0.8, 8.0]))
    cfg.DATA_CONFIG.DATA_PROCESSOR[-1].VOXEL_SIZE = [0.8, 0.8, 1.6]      # z grid 5: a stride 2 does not divide it
    layer = cfg.MODEL.BACKBONE_3D.INPUT_LAYER
    layer.sparse_shape, layer.downsample_stride = [128, 128, 5], [[1, 1, 2]]
    layer.window_shape = [[8, 8, 5], [8, 8, 3]]
    with pytest.raises(ConfigError, match=r'MODEL\.BACKBONE_3D.*axis z.*\[128, 128, 5\].*by 2'):
        build(cfg)


def test_loss_decreases_under_adam_on_a_fixed_batch(tiny_cfg):
    model = build(small(tiny_cfg))
    batch = occ_scene([128, 128, 40], batch_size=2, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    history = []
    for _ in range(12):
        loss, tb_dict, _ = model(dict(batch))
        optimizer.zero_grad()
        loss['loss'].backward()
        optimizer.step()
        history.append(float(tb_dict['loss_occ']))
    assert history[-1] < 0.6 * history[0], history
    model.eval()
    out = dict(batch)
    with torch.no_grad():
        model(out)
    target = model.dense_head.forward_ret_dict['target']
    coarse = out['occ_logits'].argmax(1)
    assert ((coarse != 0) == (target != 0))[target != 255].float().mean() > 0.85


def test_encoder_equals_the_occhead_configs_and_a_pretrained_encoder_loads_completely(tiny_cfg, tmp_path):
    gauss, dense = tiny_cfg, load(OCC_CFG)
    for key in ('VFE', 'BACKBONE_3D', 'PRETRAINED_ENCODER'):
        assert gauss.MODEL[key] == dense.MODEL[key]
    assert gauss.DATA_CONFIG == dense.DATA_CONFIG and gauss.OPTIMIZATION == dense.OPTIMIZATION
    dense_head = {k: v for k, v in dense.MODEL.DENSE_HEAD.items() if k in OccHead.CONFIG_SCHEMA.keys
                  and k in GaussianOccHead.CONFIG_SCHEMA.keys and k != 'NAME'}
    assert all(gauss.MODEL.DENSE_HEAD[k] == v for k, v in dense_head.items()) and len(dense_head) == 8
    model, reference = build(gauss, seed=1), build(dense, seed=2)
    encoder = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(('vfe.', 'backbone_3d.'))}
    assert len(encoder) > 20
    assert encoder == {k: tuple(v.shape) for k, v in reference.state_dict().items()
                       if k.startswith(('vfe.', 'backbone_3d.'))}
    pretrained = build(load(PRETRAIN_CFG), seed=3)
    path = save_checkpoint(checkpoint_state(pretrained, epoch=1, it=1), tmp_path / 'pretrain')
    report = load_pretrained_model(model, path, gauss.MODEL.PRETRAINED_ENCODER)
    assert set(encoder) <= set(report.loaded)
    source = pretrained.state_dict()
    assert all(torch.equal(model.state_dict()[k], source[k]) for k in encoder)


@pytest.mark.parametrize('edit, match', [
    (lambda h: h.__setitem__('CUTOFF_SIGMAS', 0.0), 'CUTOFF_SIGMAS'),
    (lambda h: h.__setitem__('SPLAT_CHUNK', 0), 'SPLAT_CHUNK'),
    (lambda h: h.GAUSSIANS.__setitem__('PER_VOXEL', 0), 'GAUSSIANS.PER_VOXEL'),
    (lambda h: h.GAUSSIANS.__setitem__('SCALE_RANGE', [1.0, 0.5]), 'GAUSSIANS.SCALE_RANGE'),
    (lambda h: h.GAUSSIANS.__setitem__('SCALES', [1.0, 0.5]), 'SCALES'),
    (lambda h: h.__setitem__('EMPTY_IDX', 5), 'EMPTY_IDX'),
])
def test_bad_config_values_are_refused(tiny_cfg, edit, match):
    cfg = copy.deepcopy(tiny_cfg)
    edit(cfg.MODEL.DENSE_HEAD)
    with pytest.raises(ConfigError, match=match):
        build(cfg)


def test_occhead_only_keys_are_unknown_to_the_gaussian_head(tiny_cfg):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.MODEL.DENSE_HEAD.LEVEL_CHANNELS = 16
    with pytest.raises(ConfigError, match='LEVEL_CHANNELS'):
        validate_config(cfg)
