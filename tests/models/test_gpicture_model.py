"""GPICTURE model pieces on small synthetic clouds: masking contract, decoder modes, loss composition, hierarchical
heads, the DGPL gate and the pretrained-encoder coverage check."""
import copy
from pathlib import Path

import pytest
import torch
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.models.build import build_network_from_cfg
from pcdet.models.pretraining.cka import linear_cka
from pcdet.models.pretraining.dgpl import dgpl_beta
from pcdet.utils.checkpoint import CheckpointMismatchError, load_pretrained_model

from encoder_variants import use_two_stage_voxel_encoder

CFG_DIR = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs' / 'gpicture_models'


def tiny_cfg():
    return cfg_from_yaml_file(str(CFG_DIR / 'gpicture_tiny_synthetic_pretrain.yaml'))


def voxel_cfg(decoder_mode='voxel', hierarchical=False):
    """The tiny config on a 3-D grid (z cells of 2 m, two DSVT stages, z-stride 4) to exercise voxels and pooling."""
    cfg = tiny_cfg()
    use_two_stage_voxel_encoder(cfg, reduction_type='attention', drop_conv_out=True)
    dec = cfg.MODEL.BACKBONE_2D
    dec.MODE = decoder_mode
    dec.DSVT.INPUT_LAYER.window_shape = [[8, 8, 4]] if decoder_mode == 'voxel' else [[8, 8, 1]]
    cfg.MODEL.DENSE_HEAD.HIERARCHICAL = hierarchical
    cfg.MODEL.DENSE_HEAD.CKA_ALPHA = [0.9, 0.7, 0.5, 0.3]
    cfg.MODEL.DENSE_HEAD.LAYER_INDEX = 3
    return cfg


def make_batch(seed=0, batch_size=2, num_points=4000, invalid_below_x=None):
    """Random clouds with semantic teacher features; with `invalid_below_x` the points with x < that value (whole
    voxels when it is a voxel boundary) have all-zero features, i.e. their voxels have no teacher target."""
    generator = torch.Generator().manual_seed(seed)
    xyz = torch.rand(num_points, 3, generator=generator) * torch.tensor([60.0, 60.0, 7.9]) - torch.tensor(
        [30.0, 30.0, 4.95])
    batch_index = torch.randint(0, batch_size, (num_points, 1), generator=generator).float()
    points = torch.cat([batch_index, xyz, torch.rand(num_points, 2, generator=generator)], dim=1)
    labels = (xyz[:, 2] > -1).long() + 2 * (xyz[:, 0] > 0).long() + 4 * (xyz[:, 1] > 10).long()
    prototypes = torch.nn.functional.normalize(torch.randn(8, 64, generator=generator), dim=1)
    features = prototypes[labels] + 0.05 * torch.randn(num_points, 64, generator=generator)
    if invalid_below_x is not None:
        features[xyz[:, 0] < invalid_below_x] = 0.0
    return {'points': points, 'point_teacher_features': features, 'batch_size': batch_size}


def run(model, batch):
    return model(copy.copy(batch))


def test_masking_contract_and_loss_composition():
    torch.manual_seed(0)
    model = build_network_from_cfg(voxel_cfg())
    batch = make_batch(invalid_below_x=-20.0)   # x = -20 is a voxel boundary: whole voxels without teacher features
    model.train()
    model.dense_head.set_beta(0.5)
    loss, tb_dict, _ = run(model, batch)
    head = model.dense_head.forward_ret_dict
    mask = head['mask']
    assert mask.any() and not mask.all()
    assert (~head['teacher_valid']).sum() > 100                 # invalid voxels exist (and could be masked) ...
    assert not (mask & ~head['teacher_valid']).any()           # ... but are never masked
    assert torch.isclose(loss['loss'], 0.3 * tb_dict['loss_points'] + 0.7 * 0.5 * tb_dict['loss_seal'], atol=1e-5)
    assert float(tb_dict['dgpl_beta']) == 0.5
    loss['loss'].backward()
    # the mask token is trained (masked voxels start from it), the encoder too
    assert model.backbone_2d.mask_token.grad is not None and model.backbone_2d.mask_token.grad.abs().sum() > 0
    assert model.vfe.pfn_layers[0].linear.weight.grad.abs().sum() > 0


def test_encoder_sees_only_visible_voxels():
    torch.manual_seed(1)
    model = build_network_from_cfg(voxel_cfg())
    model.train()
    seen = {}
    model.backbone_3d.input_layer.register_forward_hook(
        lambda module, args, out: seen.update(n=out['voxel_coors_stage0'].shape[0]))
    batch_dict = model.backbone_3d(model.vfe(copy.copy(make_batch(2))))
    num_visible = int((~batch_dict['mae_mask']).sum())
    assert seen['n'] == num_visible == batch_dict['mae_visible_index'].numel()
    assert batch_dict['mae_visible_token_index'].max() < batch_dict['voxel_features'].shape[0]
    model.eval()
    batch_dict = model.backbone_3d(model.vfe(copy.copy(make_batch(2))))
    assert not batch_dict['mae_mask'].any()


def test_bev_decoder_shares_one_output_per_pillar():
    torch.manual_seed(2)
    model = build_network_from_cfg(voxel_cfg(decoder_mode='bev'))
    model.train()
    batch_dict = model.backbone_2d(model.backbone_3d(model.vfe(copy.copy(make_batch(3)))))
    coords, out = batch_dict['mae_voxel_coords'], batch_dict['mae_decoder_features']
    pillar = coords[:, 0] * 10 ** 6 + coords[:, 2] * 1000 + coords[:, 3]
    for key in torch.unique(pillar)[:50]:
        rows = out[pillar == key]
        assert torch.allclose(rows, rows[:1].expand_as(rows))
    assert (coords[:, 1] > 0).any()  # the test really has several voxels per pillar


def test_hierarchical_heads_one_per_encoder_layer():
    torch.manual_seed(3)
    model = build_network_from_cfg(voxel_cfg(hierarchical=True))
    assert len(model.dense_head.decoder_pred_layers) == 4
    model.train()
    model.dense_head.set_beta(1.0)
    loss, tb_dict, _ = run(model, make_batch(4))
    loss['loss'].backward()
    assert torch.isfinite(loss['loss'])
    assert all(head.weight.grad is not None for head in model.dense_head.decoder_seal_layers)


class _ProbeDataset:
    """Stand-in dataset for the DGPL probe: fixed clouds, a collate_batch like the real datasets'."""

    def __init__(self, n=6):
        self.samples = [make_batch(10 + i, batch_size=1) for i in range(n)]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]

    @staticmethod
    def collate_batch(samples):
        points = torch.cat([torch.cat([torch.full((s['points'].shape[0], 1), float(i)), s['points'][:, 1:]], 1)
                            for i, s in enumerate(samples)])
        return {'points': points.numpy(), 'batch_size': len(samples),
                'point_teacher_features': torch.cat([s['point_teacher_features'] for s in samples]).numpy()}


def test_dgpl_gate_follows_snapshot_cka():
    torch.manual_seed(5)
    model = build_network_from_cfg(voxel_cfg())
    dataset = _ProbeDataset()
    assert model.on_train_epoch_start(0, dataset)[0] == 0.0
    model.on_train_epoch_end(0)
    assert model.on_train_epoch_start(1, dataset)[0] == 0.0
    model.on_train_epoch_end(1)
    # identical snapshots -> c_r = 1
    beta, c_r = model.on_train_epoch_start(2, dataset)
    assert c_r == pytest.approx(1.0, abs=1e-6)
    assert beta == pytest.approx(dgpl_beta(1.0, 10.0, 0.2))
    # perturb the encoder and snapshot again: c_r is the mean layer CKA of the two snapshots, recomputed here
    older = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in model.backbone_3d.named_parameters():
            if 'stage_0' in name:
                param.add_(torch.randn_like(param) * 0.5)
    model.on_train_epoch_end(2)
    beta, c_r = model.on_train_epoch_start(3, dataset)
    from pcdet.models.pretraining.progressive import build_probe_batch, encoder_layer_features
    batch = build_probe_batch(dataset, 4, 0)
    new_feats = encoder_layer_features(model.vfe, model.backbone_3d, batch, torch.device('cpu'))
    old_feats = encoder_layer_features(older.vfe, older.backbone_3d, batch, torch.device('cpu'))
    expected = float(torch.stack([linear_cka(new_feats[i], old_feats[i]) for i in range(4)]).mean())
    assert c_r == pytest.approx(expected, abs=1e-5) and c_r < 0.999
    assert float(model.dense_head.dgpl_beta) == pytest.approx(dgpl_beta(expected, 10.0, 0.2), abs=1e-5)


def test_fixed_beta_overrides_the_gate():
    cfg = voxel_cfg()
    cfg.MODEL.DENSE_HEAD.DGPL.FIXED_BETA = 0.25
    model = build_network_from_cfg(cfg)
    assert model.on_train_epoch_start(0, _ProbeDataset())[0] == 0.25
    model.dense_head.set_beta(0.9)
    assert float(model.dense_head.dgpl_beta) == 0.25


def test_pretrained_encoder_coverage(tmp_path):
    pre = build_network_from_cfg(tiny_cfg())
    fine_cfg = cfg_from_yaml_file(str(CFG_DIR / 'gpicture_tiny_synthetic_finetune.yaml'))
    fine = build_network_from_cfg(fine_cfg)
    pre.global_step.fill_(123)
    path = tmp_path / 'pretrain.pth'
    torch.save({'model_state': pre.state_dict(), 'epoch': 8}, path)
    report = load_pretrained_model(fine, path, fine_cfg.MODEL.PRETRAINED_ENCODER)
    assert int(fine.global_step) == 0                               # spec Q6: not inherited
    encoder_keys = [k for k in fine.state_dict() if k.startswith(('vfe.', 'backbone_3d.'))]
    assert set(encoder_keys) <= set(report.loaded)
    assert torch.equal(fine.state_dict()['backbone_3d.stage_0.0.encoder_list.0.win_attn.linear1.weight'],
                       pre.state_dict()['backbone_3d.stage_0.0.encoder_list.0.win_attn.linear1.weight'])
    # a checkpoint of another encoder (here: 1/3 of the DSVT tensors removed) is refused, naming what is missing
    state = {k: v for i, (k, v) in enumerate(pre.state_dict().items())
             if not (k.startswith('backbone_3d.stage_0') and i % 3 == 0)}
    torch.save({'model_state': state}, path)
    with pytest.raises(CheckpointMismatchError, match='MIN_COVERAGE'):
        load_pretrained_model(build_network_from_cfg(fine_cfg), path, fine_cfg.MODEL.PRETRAINED_ENCODER)


def test_point_targets_in_metres_or_voxel_units():
    torch.manual_seed(6)
    cfg = voxel_cfg()
    model = build_network_from_cfg(cfg)
    model.train()
    batch_dict = model.backbone_2d(model.backbone_3d(model.vfe(copy.copy(make_batch(7)))))
    model.dense_head.normalize_point_targets = False
    metres = model.dense_head.point_targets(batch_dict)
    model.dense_head.normalize_point_targets = True
    units = model.dense_head.point_targets(batch_dict)
    assert torch.allclose(units * torch.tensor([0.8, 0.8, 2.0]), metres, atol=1e-5)
    assert units.abs().max() <= 0.5 + 1e-5 and metres.abs().max() > 0.5


def test_mask_config_defaults_and_errors_come_from_one_place():
    from pcdet.models.backbones_3d.dsvt_mae import resolve_mask_config
    from pcdet.models.pretraining.i2mask import DEFAULT_I2MASK_CFG
    cfg = resolve_mask_config(EasyDict(MASK_CONFIG={'TYPE': 'random', 'NUM_CLUSTERS': 6}))
    assert cfg['TYPE'] == 'random' and cfg['NUM_CLUSTERS'] == 6 and cfg['RANDOM_MASK_RATIO'] == 0.6
    assert cfg['KMEANS_ITERS'] == DEFAULT_I2MASK_CFG['KMEANS_ITERS']
    with pytest.raises(ValueError, match=r'MASK_CONFIG.NUM_CLUSTER: unknown key .*did you mean NUM_CLUSTERS'):
        resolve_mask_config(EasyDict(MASK_CONFIG={'NUM_CLUSTER': 6}))
    with pytest.raises(ValueError, match='MASK_CONFIG: .*BASE_MASK_RATIO'):
        resolve_mask_config(EasyDict(MASK_CONFIG={'PARTITION': [4, 4], 'BASE_MASK_RATIO': [0.9, 0.5, 0.0]}))
    with pytest.raises(ValueError, match='MASK_CONFIG.TYPE'):
        resolve_mask_config(EasyDict(MASK_CONFIG={'TYPE': 'block'}))
