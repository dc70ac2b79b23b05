"""One GPICTURE training step recomputed by brute force from the raw points (spec §2.3-§2.7, §2.10; docs/GPICTURE.md).

The scene is built voxel by voxel, so the test knows every point's voxel without voxelising anything itself:
two samples, each with eight semantic classes (orthogonal 64-d prototypes of different norms, different per sample,
tiny noise, so k-means++ finds the classes almost surely and every intra-class distance is below λ), voxels without
teacher features (all their points have all-zero features: "invalid", they could be masked if the code were wrong),
mixed voxels (some points with a teacher feature, some with an all-zero or NaN row: only the valid points are
averaged, the voxel is valid) and points outside the range (dropped by the VFE, interleaved with the kept rows).
From that the test recomputes the per-voxel teacher means and validity, the point groups, the I²Mask properties per
sample, the visible set the encoder sees, the decoder's input tokens, the chamfer loss over the masked voxels, the
teacher loss over the masked and valid voxels and `α L_pts + (1 - α) β L_seal`, and compares them with the model's.
"""
import copy
import itertools
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.models.build import build_network_from_cfg

CFG_DIR = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs' / 'gpicture_models'
VOXEL_SIZE = (0.8, 0.8, 2.0)
PC_MIN = (-51.2, -51.2, -5.0)
Z_STRIDE = 4                       # encoder stage 0 -> 1 downsample (x, y, z) = (1, 1, 4): grid z 4 -> 1
CKA_ALPHA = [0.9, 0.7, 0.5, 0.3]   # distinct values: the wrong index or the last entry would show
LAYER_INDEX = 1                    # α = 0.7 in the single-head mode
BETA = 0.5
BASE_RATIOS = (0.9, 0.9, 0.9, 0.45, 0.45, 0.45, 0.0, 0.0)   # spec defaults: PARTITION 3/3/2, ratios 0.9/0.45/0
# voxels per class (8 classes) and invalid voxels, per sample; sizes chosen so n * base is never near an integer
CLASS_SIZES = ([31, 26, 23, 19, 17, 14, 13, 11], [29, 24, 21, 18, 16, 15, 12, 9])
NUM_INVALID = (22, 17)
MIXED_EVERY = 3                    # every 3rd class voxel with >= 2 points: its first half of points carry no feature


def step_cfg(hierarchical=False, normalize_point_targets=True):
    """The tiny pretraining config on a 3-D grid (0.8 x 0.8 x 2 m voxels, two DSVT stages, z-stride 4)."""
    cfg = cfg_from_yaml_file(str(CFG_DIR / 'gpicture_tiny_synthetic_pretrain.yaml'))
    cfg.DATA_CONFIG.DATA_PROCESSOR[-1].VOXEL_SIZE = list(VOXEL_SIZE)
    cfg.MODEL.VFE.NAME = 'DynamicVoxelVFE'
    bb = cfg.MODEL.BACKBONE_3D
    bb.INPUT_LAYER = EasyDict(dict(sparse_shape=[128, 128, 4], downsample_stride=[[1, 1, Z_STRIDE]],
                                   d_model=[32, 32], set_info=[[16, 1], [16, 1]], window_shape=[[8, 8, 4], [8, 8, 1]],
                                   hybrid_factor=[2, 2, 1], shifts_list=[[[0, 0, 0], [4, 4, 0]]] * 2,
                                   normalize_pos=False))
    bb.block_name, bb.set_info, bb.d_model = ['DSVTBlock'] * 2, [[16, 1], [16, 1]], [32, 32]
    bb.nhead, bb.dim_feedforward, bb.reduction_type = [2, 2], [64, 64], 'attention'
    bb.pop('conv_out_channel')
    bb.MASK_CONFIG.pop('NORMALIZE_TARGETS', None)     # the default (D7: no re-normalisation) is under test
    cfg.MODEL.BACKBONE_2D.MODE = 'voxel'
    cfg.MODEL.BACKBONE_2D.DSVT.INPUT_LAYER.window_shape = [[8, 8, 4]]
    head = cfg.MODEL.DENSE_HEAD
    head.HIERARCHICAL = hierarchical
    head.CKA_ALPHA = list(CKA_ALPHA)
    head.LAYER_INDEX = LAYER_INDEX
    head.NORMALIZE_POINT_TARGETS = normalize_point_targets
    head.pop('SEAL_LOSS_BETA', None)                   # SmoothL1 β = 1 (torch default, spec §2.7)
    return cfg


def make_scene(seed=0):
    """Points (P, 6) [b, x, y, z, intensity, time], teacher features (P, 64) and the ground truth of the build:
    voxels {(b, z, y, x): {'label': class or -1 (invalid), 'rows': point rows in input order}}."""
    rng = np.random.RandomState(seed)
    prototypes = np.linalg.qr(rng.randn(64, 64))[0][:16]        # 16 orthonormal rows: 8 classes per sample
    rows_points, rows_feats, voxels = [], [], {}
    special_counts = [64, 40, 23, 1]                               # full, cyclic padding (64 % n != 0), single point
    for b in range(2):
        labels = [c for c, n in enumerate(CLASS_SIZES[b]) for _ in range(n)] + [-1] * NUM_INVALID[b]
        labels = rng.permutation(labels)
        # voxels stacked in columns (several z per (y, x)) inside a 24 x 24 x 4 block: windows hold many voxels
        cells = [(z, y, x) for z in range(4) for y in range(50, 74) for x in range(50, 74)]
        chosen = rng.choice(len(cells), len(labels), replace=False)
        sample_points, sample_feats, sample_ok = [], [], []
        for i, (cell_id, label) in enumerate(zip(chosen, labels)):
            z, y, x = cells[cell_id]
            count = special_counts[i] if i < len(special_counts) else rng.randint(1, 9)
            frac = 0.05 + 0.9 * rng.rand(count, 3)
            xyz = np.stack([PC_MIN[0] + (x + frac[:, 0]) * VOXEL_SIZE[0], PC_MIN[1] + (y + frac[:, 1]) * VOXEL_SIZE[1],
                            PC_MIN[2] + (z + frac[:, 2]) * VOXEL_SIZE[2]], axis=1)
            if label >= 0:   # class norms 0.55 .. 0.9: a voxel mean is not a unit vector (D7 is observable)
                feats = (0.55 + 0.05 * label) * (prototypes[8 * b + label] + 0.002 * rng.randn(count, 64))
            else:
                feats = np.zeros((count, 64))
            ok = np.full(count, label >= 0)
            if label >= 0 and count >= 2 and i % MIXED_EVERY == 1:     # a mixed voxel
                ok[:count // 2] = False
                feats[:count // 2] = 0.0
                if i % (2 * MIXED_EVERY) == 1:
                    feats[0] = np.nan                                  # a NaN row counts as no feature too
            sample_points.append(np.concatenate([xyz, rng.rand(count, 2)], axis=1))
            sample_feats.append(feats)
            sample_ok.append(ok)
            voxels[(b, z, y, x)] = {'label': int(label), 'points': len(sample_points) - 1}
        # points outside the range (z above 3 m, x beyond 51.2 m), with features: dropped, never averaged in
        above = np.stack([rng.uniform(-8, 8, 20), rng.uniform(-8, 8, 20), rng.uniform(3.1, 4, 20)], 1)
        beyond = np.stack([rng.uniform(51.3, 55, 10), rng.uniform(-8, 8, 10), rng.uniform(-4, 2, 10)], 1)
        outside = np.concatenate([above, beyond])
        sample_points.append(np.concatenate([outside, rng.rand(30, 2)], axis=1))
        sample_feats.append(prototypes[8 * b + rng.randint(0, 8, 30)])
        sample_ok.append(np.ones(30, dtype=bool))
        owner = np.concatenate([np.full(len(p), k) for k, p in enumerate(sample_points)])
        point_ok = np.concatenate(sample_ok)
        pts, fts = np.concatenate(sample_points), np.concatenate(sample_feats)
        order = rng.permutation(len(pts))
        base_row = sum(len(p) for p in rows_points)
        for key, info in voxels.items():
            if key[0] == b and 'rows' not in info:
                info['rows'] = [base_row + int(r) for r in np.flatnonzero(owner[order] == info['points'])]
                info['valid_rows'] = [base_row + int(r) for r in np.flatnonzero((owner[order] == info['points'])
                                                                                 & point_ok[order])]
        rows_points.append(np.concatenate([np.full((len(pts), 1), float(b)), pts[order]], axis=1))
        rows_feats.append(fts[order])
    points = torch.from_numpy(np.concatenate(rows_points)).float()
    feats = torch.from_numpy(np.concatenate(rows_feats)).float()
    batch = {'points': points, 'point_teacher_features': feats, 'batch_size': 2}
    return batch, voxels


def reference_targets(batch, voxels, keys):
    """Per-voxel mean teacher feature over the points built with one (float64; zeros without any) and validity
    (>= 1 such point), straight from the build (no voxelisation)."""
    feats = batch['point_teacher_features'].double()
    targets = torch.stack([feats[voxels[k]['valid_rows']].mean(0) if voxels[k]['valid_rows']
                           else torch.zeros(feats.shape[1], dtype=torch.float64) for k in keys])
    valid = torch.tensor([len(voxels[k]['valid_rows']) > 0 for k in keys])
    return targets, valid


def reference_point_groups(batch, voxels, keys, normalize):
    """(N0, 64, 3) points relative to the voxel centre (voxel units if `normalize`), slot i = member i mod n."""
    xyz = batch['points'][:, 1:4].double()
    size = torch.tensor(VOXEL_SIZE, dtype=torch.float64)
    groups = []
    for key in keys:
        _, z, y, x = key
        centre = torch.tensor(PC_MIN, dtype=torch.float64) + (torch.tensor([x, y, z], dtype=torch.float64) + 0.5) * size
        rel = xyz[voxels[key]['rows'][:64]] - centre
        if normalize:
            rel = rel / size
        groups.append(rel[torch.arange(64) % rel.shape[0]])
    return torch.stack(groups)


def brute_chamfer(pred, gt, rows):
    """mean over voxels in `rows` of mean_p min_q |p-q|² + mean_q min_p |p-q|², one voxel at a time, float64."""
    total = 0.0
    for v in rows:
        p, q = pred[v].double(), gt[v].double()
        sq = ((p[:, None, :] - q[None, :, :]) ** 2).sum(-1)     # (16, 64)
        total += sq.min(dim=1).values.mean() + sq.min(dim=0).values.mean()
    return total / len(rows)


def brute_smooth_l1(pred, target):
    """Elementwise SmoothL1 with β = 1, mean over rows x channels, float64."""
    diff = (pred.double() - target.double()).abs()
    return torch.where(diff < 1.0, 0.5 * diff ** 2, diff - 0.5).mean()


def run_step(hierarchical=False, seed=0, normalize_point_targets=True):
    """Build, run one training step with hooks; return (model, batch, voxels, captured, loss, tb_dict)."""
    torch.manual_seed(seed)
    model = build_network_from_cfg(step_cfg(hierarchical, normalize_point_targets))
    model.train()
    model.dense_head.set_beta(BETA)
    with torch.no_grad():   # a non-zero mask token, so "masked voxels start from it" is observable
        model.backbone_2d.mask_token.copy_(torch.randn(model.backbone_2d.mask_token.shape))
    batch, voxels = make_scene(seed)
    captured = defaultdict(list)
    model.backbone_3d.input_layer.register_forward_pre_hook(
        lambda m, args: captured['encoder_in_coords'].append(args[0]['voxel_coords'].clone()))

    def after_encoder(module, args, out):
        captured['encoder_out'].append((out['voxel_coords'].clone(), out['voxel_features'].detach().clone()))
        if 'encoder_layer_features' in out:
            captured['layers'].append([(s, f.detach().clone()) for s, f in out['encoder_layer_features']])
    model.backbone_3d.register_forward_hook(after_encoder)
    model.backbone_2d.decoder.register_forward_pre_hook(
        lambda m, args: captured['decoder_in'].append((args[0]['voxel_coords'].clone(),
                                                       args[0]['voxel_features'].detach().clone())))
    model.backbone_2d.register_forward_hook(lambda m, args, out: captured['decoder_out'].append(
        [f.detach().clone() for f in out.get('mae_decoder_features_per_layer', [])]
        or [out['mae_decoder_features'].detach().clone()]))
    model.backbone_3d.register_forward_hook(lambda m, args, out: captured['mae'].append(
        {k: out[k] for k in ('mae_voxel_coords', 'mae_mask', 'mae_teacher_targets', 'mae_teacher_valid',
                             'mae_mask_ratio', 'mae_visible_index')}))
    loss, tb_dict, _ = model(copy.copy(batch))
    return model, batch, voxels, captured, loss, tb_dict


@pytest.fixture(scope='module')
def step():
    return run_step()


def _keys(coords):
    return [tuple(int(v) for v in row) for row in coords.tolist()]


def test_voxels_targets_and_validity_from_raw_points(step):
    _, batch, voxels, captured, _, _ = step
    mae = captured['mae'][0]
    keys = _keys(mae['mae_voxel_coords'])
    assert len(keys) == len(set(keys)) and set(keys) == set(voxels)     # one row per built voxel, nothing else
    targets, valid = reference_targets(batch, voxels, keys)
    assert torch.equal(mae['mae_teacher_valid'].cpu(), valid)
    assert torch.allclose(mae['mae_teacher_targets'].double(), targets, atol=1e-6)   # the plain mean (D7 default)
    assert (~valid).sum() == sum(NUM_INVALID) and valid.sum() == sum(map(sum, CLASS_SIZES))
    mixed = [k for k in keys if 0 < len(voxels[k]['valid_rows']) < len(voxels[k]['rows'])]
    assert len(mixed) >= 10                                               # the scene has mixed voxels
    nan_rows = torch.isnan(batch['point_teacher_features']).any(dim=1)
    assert any(nan_rows[voxels[k]['rows']].any() for k in mixed)          # some with a NaN row
    assert torch.isfinite(mae['mae_teacher_targets']).all()


def test_mask_per_sample_never_invalid_and_i2mask_counts(step):
    _, batch, voxels, captured, _, tb_dict = step
    mae = captured['mae'][0]
    keys = _keys(mae['mae_voxel_coords'])
    mask = mae['mae_mask'].cpu()
    valid = torch.tensor([voxels[k]['label'] >= 0 for k in keys])
    sample = torch.tensor([k[0] for k in keys])
    assert not (mask & ~valid).any()                                     # invalid voxels exist and are never masked
    ratios = torch.tensor([float(mask[sample == b].sum()) / float((sample == b).sum()) for b in range(2)])
    assert torch.allclose(mae['mae_mask_ratio'].cpu().float(), ratios, atol=1e-6)
    assert float(tb_dict['mask_ratio']) == pytest.approx(float(ratios.mean()), abs=1e-6)
    for b in range(2):
        # I²Mask on this sample alone: its 8 classes are the 8 k-means clusters, all members within λ of the
        # centre (r_c = 1), so class c has exactly floor(n_c * base) masked members for SOME assignment of the
        # base ratios 0.9 x 3, 0.45 x 3, 0 x 2 to the classes (which one depends on tiny cosine differences).
        masked = [sum(bool(mask[i]) for i, k in enumerate(keys) if k[0] == b and voxels[k]['label'] == c)
                  for c in range(8)]
        sizes = CLASS_SIZES[b]
        assert any(all(masked[c] == math.floor(sizes[c] * base[c]) for c in range(8))
                   for base in set(itertools.permutations(BASE_RATIOS))), (b, masked)


def test_encoder_sees_the_visible_voxels_and_decoder_inputs(step):
    model, _, _, captured, _, _ = step
    mae = captured['mae'][0]
    coords, mask = mae['mae_voxel_coords'], mae['mae_mask']
    keys = _keys(coords)
    visible = [k for k, m in zip(keys, mask.tolist()) if not m]
    assert 0 < len(visible) < len(keys)
    assert _keys(captured['encoder_in_coords'][0]) == visible           # exactly the unmasked voxels, in order
    out_coords, out_feats = captured['encoder_out'][0]
    token_of = {k: i for i, k in enumerate(_keys(out_coords))}
    dec_coords, dec_in = captured['decoder_in'][0]
    assert _keys(dec_coords) == keys                                    # the decoder runs on every stage-0 voxel
    token = model.backbone_2d.mask_token.detach()[0]
    for row, (key, masked) in enumerate(zip(keys, mask.tolist())):
        if masked:
            assert torch.equal(dec_in[row], token)
        else:   # the last-stage token of its column: (b, z // 4, y, x)
            b, z, y, x = key
            assert torch.equal(dec_in[row], out_feats[token_of[(b, z // Z_STRIDE, y, x)]])


def test_losses_and_total_recomputed(step):
    model, batch, voxels, captured, loss, tb_dict = step
    mae = captured['mae'][0]
    keys = _keys(mae['mae_voxel_coords'])
    mask = mae['mae_mask'].cpu()
    targets, valid = reference_targets(batch, voxels, keys)
    gt = reference_point_groups(batch, voxels, keys, normalize=True)
    ret = model.dense_head.forward_ret_dict
    features = captured['decoder_out'][0][0]
    # the predictions are the two linear heads on the decoder output
    pred_points = model.dense_head.decoder_pred(features).view(-1, 16, 3).detach()
    pred_seal = model.dense_head.decoder_seal(features).detach()
    assert torch.allclose(ret['pred_points'][0].detach(), pred_points, atol=1e-6)
    assert torch.allclose(ret['pred_seal'][0].detach(), pred_seal, atol=1e-6)
    masked_rows = torch.nonzero(mask).flatten().tolist()
    seal_rows = torch.nonzero(mask & valid).flatten()
    l_pts = brute_chamfer(pred_points, gt, masked_rows)
    l_seal = brute_smooth_l1(pred_seal[seal_rows], targets[seal_rows])
    assert float(tb_dict['loss_points']) == pytest.approx(float(l_pts), rel=1e-5)
    assert float(tb_dict['loss_seal']) == pytest.approx(float(l_seal), rel=1e-5)
    alpha = CKA_ALPHA[LAYER_INDEX]
    expected = alpha * l_pts + (1 - alpha) * BETA * l_seal
    assert loss['loss'].item() == pytest.approx(float(expected), rel=1e-5)
    assert float(tb_dict['num_masked']) == len(masked_rows)
    # the wrong voxel sets give clearly different values here (the test can tell them apart)
    all_rows = list(range(len(keys)))
    assert abs(float(brute_chamfer(pred_points, gt, all_rows)) - float(l_pts)) > 1e-3 * float(l_pts)
    valid_rows = torch.nonzero(valid).flatten()
    valid_only = float(brute_smooth_l1(pred_seal[valid_rows], targets[valid_rows]))
    assert abs(valid_only - float(l_seal)) > 1e-3 * float(l_seal)


def test_point_targets_in_metres_without_normalisation():
    model, batch, voxels, captured, loss, tb_dict = run_step(seed=1, normalize_point_targets=False)
    mae = captured['mae'][0]
    keys = _keys(mae['mae_voxel_coords'])
    gt = reference_point_groups(batch, voxels, keys, normalize=False)
    assert torch.allclose(model.dense_head.forward_ret_dict['gt_points'].double(), gt, atol=1e-5)
    rows = torch.nonzero(mae['mae_mask']).flatten().tolist()
    pred = model.dense_head.forward_ret_dict['pred_points'][0].detach()
    assert float(tb_dict['loss_points']) == pytest.approx(float(brute_chamfer(pred, gt, rows)), rel=1e-5)


def test_hierarchical_loss_and_per_layer_decoder_inputs():
    model, batch, voxels, captured, loss, tb_dict = run_step(hierarchical=True, seed=2)
    mae = captured['mae'][0]
    keys = _keys(mae['mae_voxel_coords'])
    mask = mae['mae_mask'].cpu()
    targets, valid = reference_targets(batch, voxels, keys)
    gt = reference_point_groups(batch, voxels, keys, normalize=True)
    layers = captured['layers'][0]
    assert [s for s, _ in layers] == [0, 0, 1, 1]
    # decoder run l starts from encoder layer l: stage-0 layers row by row over the visible voxels, stage-1 layers
    # through the voxel's column token
    out_coords, _ = captured['encoder_out'][0]
    token_of = {k: i for i, k in enumerate(_keys(out_coords))}
    visible_rows = torch.nonzero(~mask).flatten().tolist()
    token = model.backbone_2d.mask_token.detach()[0]
    assert len(captured['decoder_in']) == 4
    for (stage, feats), (_, dec_in) in zip(layers, captured['decoder_in']):
        for i, row in enumerate(visible_rows):
            b, z, y, x = keys[row]
            src = feats[i] if stage == 0 else feats[token_of[(b, z // Z_STRIDE, y, x)]]
            assert torch.equal(dec_in[row], src)
        assert torch.equal(dec_in[mask], token.expand(int(mask.sum()), -1))
    masked_rows = torch.nonzero(mask).flatten().tolist()
    seal_rows = torch.nonzero(mask & valid).flatten()
    total, pts_sum, seal_sum = 0.0, 0.0, 0.0
    for layer, features in enumerate(captured['decoder_out'][0]):
        pred_points = model.dense_head.decoder_pred_layers[layer](features).view(-1, 16, 3).detach()
        pred_seal = model.dense_head.decoder_seal_layers[layer](features).detach()
        l_pts = brute_chamfer(pred_points, gt, masked_rows)
        l_seal = brute_smooth_l1(pred_seal[seal_rows], targets[seal_rows])
        total += CKA_ALPHA[layer] * l_pts + (1 - CKA_ALPHA[layer]) * BETA * l_seal
        pts_sum, seal_sum = pts_sum + l_pts, seal_sum + l_seal
    assert loss['loss'].item() == pytest.approx(float(total) / 4, rel=1e-5)
    assert float(tb_dict['loss_points']) == pytest.approx(float(pts_sum) / 4, rel=1e-5)
    assert float(tb_dict['loss_seal']) == pytest.approx(float(seal_sum) / 4, rel=1e-5)


def test_defaults_of_the_method_switches():
    """D7: teacher targets are not re-normalised unless asked; point targets in metres unless asked; SmoothL1 β 1;
    α from CKA_ALPHA[LAYER_INDEX] with LAYER_INDEX defaulting to the last (deepest) layer."""
    from pcdet.models.backbones_3d.dsvt_mae import resolve_mask_config
    from pcdet.models.dense_heads.gpicture_head import GPicturePretrainHead
    assert resolve_mask_config(EasyDict())['NORMALIZE_TARGETS'] is False
    head = GPicturePretrainHead(EasyDict(CKA_ALPHA=[0.97, 0.88, 0.78, 0.64, 0.55, 0.44, 0.36, 0.31]), 32,
                                [0.8, 0.8, 2.0], [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
    assert head.normalize_point_targets is False and head.seal_loss_beta == 1.0 and not head.hierarchical
    assert head.layer_alphas == [0.31]
    assert float(head.dgpl_beta) == 0.0                                  # epochs 0 and 1: no teacher loss
    head = GPicturePretrainHead(EasyDict(CKA_ALPHA=CKA_ALPHA, LAYER_INDEX=1), 32, [0.8, 0.8, 2.0],
                                [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
    assert head.layer_alphas == [0.7]


@pytest.mark.parametrize('hierarchical', [False, True])
def test_cka_alpha_and_layer_index_must_fit_the_encoder_depth(hierarchical):
    """The test encoder has 4 layers (2 stages x 1 block x 2): the paper's 8 α values, or LAYER_INDEX 7 with 4
    values, are errors naming the key, the encoder's layer count and the valid range."""
    cfg = step_cfg(hierarchical)
    cfg.MODEL.DENSE_HEAD.CKA_ALPHA = [0.97, 0.88, 0.78, 0.64, 0.55, 0.44, 0.36, 0.31]
    cfg.MODEL.DENSE_HEAD.LAYER_INDEX = 7
    with pytest.raises(ValueError, match=r'DENSE_HEAD\.CKA_ALPHA has 8 entries but the encoder .* has 4 layers'):
        build_network_from_cfg(cfg)
    if not hierarchical:
        cfg.MODEL.DENSE_HEAD.CKA_ALPHA = list(CKA_ALPHA)
        with pytest.raises(ValueError, match=r'DENSE_HEAD\.LAYER_INDEX 7 .* 4 layers: expected an index in '
                                             r'\[-4, 3\]'):
            build_network_from_cfg(cfg)
        cfg.MODEL.DENSE_HEAD.LAYER_INDEX = -4
        assert build_network_from_cfg(cfg).dense_head.layer_alphas == [CKA_ALPHA[0]]


def test_normalize_targets_switch_normalises_the_voxel_mean():
    torch.manual_seed(3)
    cfg = step_cfg()
    cfg.MODEL.BACKBONE_3D.MASK_CONFIG.NORMALIZE_TARGETS = True
    model = build_network_from_cfg(cfg)
    model.train()
    batch, voxels = make_scene(3)
    out = model.backbone_3d(model.vfe(copy.copy(batch)))
    keys = _keys(out['mae_voxel_coords'])
    targets, valid = reference_targets(batch, voxels, keys)
    norms = targets.norm(dim=1, keepdim=True)
    expected = torch.where(norms > 0, targets / norms.clamp(min=1e-12), targets)
    assert torch.allclose(out['mae_teacher_targets'].double(), expected, atol=1e-6)
    assert torch.equal(out['mae_teacher_valid'].cpu(), valid)
