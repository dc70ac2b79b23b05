"""ContrastivePretrain (docs/CONTRASTIVE.md): the training step recomputed from the raw points (per-point encoder
features through the pillar of each point, validity, sampling, superpixel pooling per frame), each loss term
decreasing under Adam on a fixed synthetic batch, the config contract (weights, keys, backbone) and the encoder
transfer into the GPICTURE tiny fine-tune config (same resolved encoder values, every tensor loads)."""
import copy
import math
from pathlib import Path

import pytest
import torch
from easydict import EasyDict

from pcdet.config import ConfigError, cfg_from_yaml_file
from pcdet.config_registry import config_errors
from pcdet.datasets.teachers import KNOWN_TEACHERS
from pcdet.models.build import build_network_from_cfg
from pcdet.models.pretraining.contrastive import info_nce, nt_xent, sample_per_frame, segment_mean, superpixel_groups

from encoder_variants import assert_checkpoint_loads_whole_encoder, assert_model_refuses, use_two_stage_voxel_encoder

CFGS = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs'
PRETRAIN = CFGS / 'contrastive_models' / 'contrastive_tiny_synthetic_pretrain.yaml'
FINETUNE = CFGS / 'gpicture_models' / 'gpicture_tiny_synthetic_finetune.yaml'
PC_MIN, PILLAR = (-51.2, -51.2), 0.8
NUM_FEATURES = 64


def load_cfg(**weights):
    """The shipped config; `weights` e.g. intra=0.0 override the loss weights (keys p2p, superpixel, intra)."""
    cfg = cfg_from_yaml_file(str(PRETRAIN))
    blocks = {'p2p': 'POINT_TO_PIXEL', 'superpixel': 'SUPERPOINT_TO_SUPERPIXEL', 'intra': 'INTRA_MODAL'}
    for key, value in weights.items():
        cfg.MODEL[blocks[key]].WEIGHT = value
    return cfg


def build(seed=0, **weights):
    torch.manual_seed(seed)
    model = build_network_from_cfg(load_cfg(**weights))
    model.train()
    return model


def make_batch(batch_size=4, points_per_frame=600, seed=0):
    """Synthetic frames: clustered points in +-30 m (a few out of range), a 'semantic' label per 8 m cell whose
    teacher feature is a fixed random unit vector + noise, superpixel ids per 4 m cell (the same ids in every frame),
    ~15% of the points unseen by the cameras (all-zero teacher row, id -1), ~5% with an id but an all-zero row,
    and an intensity level per frame."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.nn.functional.normalize(torch.randn(64, NUM_FEATURES, generator=g), dim=1)
    rows, feats, ids = [], [], []
    for b in range(batch_size):
        centres = (torch.rand(12, 2, generator=g) * 2 - 1) * 28
        which = torch.randint(0, 12, (points_per_frame,), generator=g)
        xy = centres[which] + torch.randn(points_per_frame, 2, generator=g) * 1.5
        xy[:5] = torch.tensor([60.0, 0.0])                                   # outside the grid: dropped by the VFE
        z = torch.rand(points_per_frame, 1, generator=g) * 3 - 2
        extra = torch.rand(points_per_frame, 2, generator=g)
        # a rotation-invariant cue per frame (intensity level) that the intra-modal loss can learn to recognise
        extra[:, 0] = b / batch_size + 0.05 * extra[:, 0]
        rows.append(torch.cat([torch.full((points_per_frame, 1), float(b)), xy, z, extra], dim=1))
        cell8 = ((xy + 32) // 8).long().clamp(0, 7)
        label = cell8[:, 0] * 8 + cell8[:, 1]
        feat = torch.nn.functional.normalize(prototypes[label] + 0.05 * torch.randn(points_per_frame, NUM_FEATURES,
                                                                                     generator=g), dim=1)
        cell4 = ((xy + 32) // 4).long().clamp(0, 15)
        sp = cell4[:, 0] * 16 + cell4[:, 1]
        unseen = torch.rand(points_per_frame, generator=g) < 0.15
        feat[unseen], sp[unseen] = 0.0, -1
        # a few rows with an id but no usable feature: the model must leave them out of their superpixel's mean
        feat[torch.rand(points_per_frame, generator=g) < 0.05] = 0.0
        feats.append(feat)
        ids.append(sp)
    return {'points': torch.cat(rows), 'point_teacher_features': torch.cat(feats),
            'point_superpixel_ids': torch.cat(ids), 'batch_size': batch_size}


def brute_point_features(points, out):
    """Per input row: the output token of the pillar containing it (found by coordinates), or None if outside."""
    token = {tuple(c): i for i, c in enumerate(out['voxel_coords'].tolist())}
    result = []
    for b, x, y in points[:, :3].tolist():
        cx, cy = math.floor((x - PC_MIN[0]) / PILLAR), math.floor((y - PC_MIN[1]) / PILLAR)
        inside = 0 <= cx < 128 and 0 <= cy < 128
        result.append(out['voxel_features'][token[(int(b), 0, cy, cx)]] if inside else None)
    return result


def test_training_step_recomputed_from_the_raw_points():
    model = build(intra=0.0)
    model.p2p_cfg.MAX_POINTS_PER_FRAME = 100          # fewer than the valid points of a frame: sampling is exercised
    batch = make_batch()
    captured = {}

    def hook(module, args, out):
        captured['out'] = {'voxel_coords': out['voxel_coords'].clone(),
                           'voxel_features': out['voxel_features'].detach().clone()}
    model.backbone_3d.register_forward_hook(hook)
    torch.manual_seed(7)
    loss, tb, _ = model(copy.copy(batch))
    per_row = brute_point_features(batch['points'], captured['out'])
    inside = torch.tensor([f is not None for f in per_row])
    assert int((~inside).sum()) == 4 * 5
    encoder = torch.stack([f for f in per_row if f is not None])
    teacher = batch['point_teacher_features'][inside]
    valid = teacher.abs().sum(1) > 0
    batch_index = batch['points'][inside, 0].long()
    with torch.no_grad():
        torch.manual_seed(7)
        rows = sample_per_frame(valid, batch_index, 100)
        assert torch.bincount(batch_index[rows]).tolist() == [100] * 4
        p2p = info_nce(model.point_head(encoder[rows]), model.pixel_head(teacher[rows]), 0.07)
        ids = torch.where(valid, batch['point_superpixel_ids'][inside], torch.full_like(valid, -1, dtype=torch.long))
        segment, keys = superpixel_groups(batch_index, ids)
        sp = info_nce(segment_mean(model.point_head(encoder), segment, len(keys)),
                      segment_mean(model.pixel_head(teacher), segment, len(keys)), 0.07)
    assert tb['num_point_pairs'] == 400 and tb['num_superpixels'] == len(keys)
    assert len(keys) > len(set(keys[:, 1].tolist()))             # ids repeat across frames: kept apart
    assert tb['loss_point_pixel'] == pytest.approx(float(p2p), rel=1e-5)
    assert tb['loss_superpixel'] == pytest.approx(float(sp), rel=1e-5)
    assert loss['loss'].item() == pytest.approx(float(p2p) + float(sp), rel=1e-5)
    assert 'loss_intra' not in tb and model.global_head is None
    loss['loss'].backward()
    assert model.vfe.pfn_layers[0].linear.weight.grad.abs().sum() > 0


def test_multi_stage_encoder_uses_the_last_stage_token_of_the_column():
    """3-D voxels (2 m in z, 4 z cells) and two DSVT stages with z-stride 4: a point's feature is the stage-1 token
    at (b, z // 4, y, x), found here from the point's coordinates."""
    cfg = load_cfg(intra=0.0)
    use_two_stage_voxel_encoder(cfg)
    torch.manual_seed(0)
    model = build_network_from_cfg(cfg)
    batch = make_batch(batch_size=2, points_per_frame=300)
    with torch.no_grad():
        out = model.encode(copy.copy(batch))
        got = model.point_features(out)
    token = {tuple(c): i for i, c in enumerate(out['voxel_coords'].tolist())}
    kept = out['point_in_grid_mask']
    expected = []
    for b, x, y, z in batch['points'][kept, :4].tolist():
        cx, cy, cz = (math.floor((v - lo) / size) for v, lo, size in ((x, -51.2, 0.8), (y, -51.2, 0.8), (z, -5.0, 2.0)))
        expected.append(out['voxel_features'][token[(int(b), cz // 4, cy, cx)]])
    assert len(out['dsvt_pooling_maps']) == 1 and torch.equal(got, torch.stack(expected))
    assert len({math.floor((z + 5.0) / 2.0) for z in batch['points'][:, 3].tolist()}) > 1   # several z cells


def test_intra_modal_term_is_nt_xent_of_the_two_views():
    """Two encoder runs (the input, then its augmented view); the term is NT-Xent (T 0.1) of the per-sample
    max-pooled tokens through the global head, recomputed here with a loop over samples."""
    model = build(p2p=0.0, superpixel=0.0)
    batch = make_batch(batch_size=3)
    outputs = []
    model.backbone_3d.register_forward_hook(lambda m, a, out: outputs.append(
        (out['voxel_coords'][:, 0].clone(), out['voxel_features'].detach().clone())))
    torch.manual_seed(3)
    loss, tb, _ = model(copy.copy(batch))
    assert len(outputs) == 2 and set(tb) == {'loss_intra', 'loss'} and model.point_head is None
    with torch.no_grad():
        pooled = [torch.stack([feats[sample == b].max(0).values for b in range(3)]) for sample, feats in outputs]
        expected = nt_xent(model.global_head(pooled[0]), model.global_head(pooled[1]), 0.1)
    assert not torch.equal(pooled[0], pooled[1])
    assert tb['loss_intra'] == pytest.approx(float(expected), rel=1e-5)
    torch.manual_seed(3)
    loss_again, _, _ = model(copy.copy(batch))                     # the view is drawn from torch's generator
    assert loss_again['loss'].item() == pytest.approx(loss['loss'].item(), rel=1e-6)
    torch.manual_seed(4)
    assert model(copy.copy(batch))[0]['loss'].item() != pytest.approx(loss['loss'].item(), rel=1e-6)


def test_an_identity_view_is_each_sample_itself():
    """With every augmentation switched off the second view is the input, sample for sample: the two encoder runs
    pool the same per-sample features, so each positive pair is a sample and its own view (a view assigned to the
    wrong sample would pass the recomputation above, which groups by the view's own batch column)."""
    cfg = load_cfg(p2p=0.0, superpixel=0.0)
    cfg.MODEL.INTRA_MODAL.AUGMENTATION.update({'ROTATION': 0.0, 'SCALE_RANGE': [1.0, 1.0], 'FLIP_PROB': 0.0,
                                               'JITTER_STD': 0.0})
    torch.manual_seed(0)
    model = build_network_from_cfg(cfg)
    model.train()
    outputs = []
    model.backbone_3d.register_forward_hook(lambda m, a, out: outputs.append(
        torch.stack([out['voxel_features'][out['voxel_coords'][:, 0] == b].max(0).values for b in range(3)])))
    with torch.no_grad():
        model(copy.copy(make_batch(batch_size=3)))
    assert len(outputs) == 2 and not torch.equal(outputs[0][0], outputs[0][1])
    torch.testing.assert_close(outputs[1], outputs[0])


def test_each_loss_decreases_on_a_fixed_batch():
    """30 Adam steps: every term's mean over the last 5 steps is below its mean over the first 5."""
    model = build(seed=1)
    batch = make_batch(points_per_frame=400, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = {'loss_point_pixel': [], 'loss_superpixel': [], 'loss_intra': []}
    torch.manual_seed(0)
    for _ in range(30):
        optimizer.zero_grad()
        loss, tb, _ = model(copy.copy(batch))
        loss['loss'].backward()
        optimizer.step()
        for key in history:
            history[key].append(tb[key])
    for key, values in history.items():
        first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
        assert last < 0.85 * first, (key, values)


def test_zero_weights_skip_terms_and_all_zero_is_refused():
    assert build(superpixel=0.0, intra=0.0).global_head is None
    with pytest.raises(ConfigError, match='every loss weight'):
        build(p2p=0.0, superpixel=0.0, intra=0.0)


@pytest.mark.parametrize('key, value', [('MODEL.INTRA_MODAL.TEMPERATURE', 0.0), ('MODEL.INTRA_MODAL.POOL', 'sum'),
                                        ('MODEL.BACKBONE_3D.NAME', 'DSVT_MAE')])
def test_a_bad_value_is_refused_naming_its_key(key, value):
    assert_model_refuses(load_cfg(), key, value)


def test_missing_inputs_name_the_key():
    batch = make_batch(batch_size=2, points_per_frame=100)
    del batch['point_superpixel_ids']
    with pytest.raises(KeyError, match='point_superpixel_ids.*SUPERPIXELS'):
        build(intra=0.0)(copy.copy(batch))
    assert 'loss_point_pixel' in build(superpixel=0.0, intra=0.0)(copy.copy(batch))[1]
    batch['point_teacher_features'] = batch['point_teacher_features'][:, :32]
    with pytest.raises(ValueError, match='NUM_TEACHER_FEATURES'):
        build(superpixel=0.0, intra=0.0)(copy.copy(batch))


def test_eval_mode_returns_empty_predictions():
    model = build()
    model.eval()
    batch = make_batch(batch_size=2, points_per_frame=100)
    with torch.no_grad():
        preds, extra = model({'points': batch['points'], 'batch_size': 2})
    assert preds == [{}, {}] and extra == {} and model.skip_evaluation


def test_model_keys_are_validated():
    cfg = load_cfg()
    if 'image_projection' not in KNOWN_TEACHERS:      # the image teacher's keys are validated by its own schema
        cfg.DATA_CONFIG.TEACHER_FEATURES = EasyDict(NAME='synthetic_semantic', NUM_FEATURES=NUM_FEATURES)
    assert config_errors(cfg) == []
    cfg.MODEL.INTRA_MODAL.TEMPERATUR = 0.2
    cfg.MODEL.DENSE_HEAD = EasyDict(NAME='CenterHead')
    errors = '\n'.join(config_errors(cfg))
    assert 'MODEL.INTRA_MODAL.TEMPERATUR: unknown key' in errors and 'did you mean TEMPERATURE' in errors
    assert 'MODEL.DENSE_HEAD: unknown key' in errors


def _encoder_schema_values(cfg):
    from pcdet.models.backbones_3d.dsvt import DSVT
    from pcdet.models.backbones_3d.vfe import __all__ as vfes
    vfe = vfes[cfg.MODEL.VFE.NAME].CONFIG_SCHEMA.fill(cfg.MODEL.VFE)
    backbone = DSVT.CONFIG_SCHEMA.fill({k: v for k, v in cfg.MODEL.BACKBONE_3D.items() if k != 'MASK_CONFIG'})
    data = cfg.DATA_CONFIG
    return (vfe, backbone, list(data.POINT_CLOUD_RANGE), list(data.DATA_PROCESSOR[-1].VOXEL_SIZE), data.MAX_SWEEPS)


def test_encoder_config_equals_the_finetune_encoder():
    pre, fine = cfg_from_yaml_file(str(PRETRAIN)), cfg_from_yaml_file(str(FINETUNE))
    assert fine.MODEL.BACKBONE_3D.NAME == pre.MODEL.BACKBONE_3D.NAME == 'DSVT'
    assert _encoder_schema_values(pre) == _encoder_schema_values(fine)
    gpicture = cfg_from_yaml_file(str(CFGS / 'gpicture_models' / 'gpicture_tiny_synthetic_pretrain.yaml'))
    assert _encoder_schema_values(gpicture)[0] == _encoder_schema_values(pre)[0]


@pytest.mark.parametrize('finetune_name', ['gpicture_tiny_synthetic_finetune.yaml',
                                           'gpicture_tiny_synthetic_segmentation.yaml',
                                           'gpicture_tiny_synthetic_occupancy.yaml'])
def test_checkpoint_loads_the_whole_encoder_into_every_tiny_finetune_model(finetune_name, tmp_path):
    """Detection, segmentation and occupancy fine-tunes of the tiny encoder each load every encoder tensor."""
    assert_checkpoint_loads_whole_encoder(build(seed=5), CFGS / 'gpicture_models' / finetune_name, tmp_path)
