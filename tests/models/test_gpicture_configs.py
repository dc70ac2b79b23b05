"""Every GPICTURE config builds, and each fine-tune config's encoder is exactly its pretraining config's encoder
(same `vfe.*` / `backbone_3d.*` names and shapes), so `--pretrained_model` transfers all of it."""
from pathlib import Path

import pytest
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet.models.build import build_network_from_cfg

CFG_DIR = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs' / 'gpicture_models'
PAIRS = [
    ('gpicture_tiny_synthetic_pretrain.yaml', 'gpicture_tiny_synthetic_finetune.yaml'),
    ('gpicture_tiny_synthetic_pretrain_image.yaml', 'gpicture_tiny_synthetic_finetune.yaml'),  # image teacher
    ('gpicture_nuscenes_pretrain.yaml', 'gpicture_nuscenes_detection.yaml'),
    ('gpicture_nuscenes_pretrain.yaml', 'gpicture_nuscenes_detection_centerhead.yaml'),
    ('gpicture_waymo_pretrain.yaml', 'gpicture_waymo_detection.yaml'),
]
ENCODER = ('vfe.', 'backbone_3d.')


def _state(cfg_name):
    cfg = cfg_from_yaml_file(str(CFG_DIR / cfg_name))
    model = build_network_from_cfg(cfg)
    return cfg, {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_every_config_is_covered():
    from test_seg_occ_configs import PAIRS as SEG_OCC_PAIRS  # segmentation / occupancy fine-tunes
    listed = {name for pair in PAIRS + SEG_OCC_PAIRS for name in pair}
    assert listed == {p.name for p in CFG_DIR.glob('*.yaml')}


@pytest.mark.parametrize('pretrain_name, finetune_name', PAIRS)
def test_finetune_encoder_matches_pretraining(pretrain_name, finetune_name):
    pre_cfg, pre_state = _state(pretrain_name)
    fine_cfg, fine_state = _state(finetune_name)
    assert pre_cfg.MODEL.NAME == 'GPICTURE' and pre_cfg.MODEL.BACKBONE_3D.NAME == 'DSVT_MAE'
    assert fine_cfg.MODEL.PRETRAINED_ENCODER.MIN_COVERAGE == 1.0     # identical encoders: every tensor must load
    pre_encoder = {k: s for k, s in pre_state.items() if k.startswith(ENCODER)}
    fine_encoder = {k: s for k, s in fine_state.items() if k.startswith(ENCODER)}
    assert fine_encoder and pre_encoder == fine_encoder
    assert any(k.startswith('backbone_2d.mask_token') for k in pre_state)
    assert 'dense_head.decoder_pred.weight' in pre_state and 'dense_head.decoder_seal.weight' in pre_state


@pytest.mark.parametrize('pretrain_name', [pair[0] for pair in PAIRS])
def test_cka_alpha_has_one_entry_per_encoder_layer(pretrain_name):
    """Every shipped pretraining config gives one α per encoder layer (2 per block, counted from the config) and
    attaches the single head at the deepest layer with α = 0.31 (D4 a)."""
    cfg = cfg_from_yaml_file(str(CFG_DIR / pretrain_name))
    num_layers = 2 * sum(blocks for _, blocks in cfg.MODEL.BACKBONE_3D.set_info)
    head = cfg.MODEL.DENSE_HEAD
    assert len(head.CKA_ALPHA) == num_layers and head.LAYER_INDEX in (num_layers - 1, -1)
    assert build_network_from_cfg(cfg).dense_head.layer_alphas == [0.31]


def test_full_size_pretraining_step_runs_on_a_small_cloud():
    """The nuScenes pretraining model (z-strides 4, 5, 2 per decision D8) runs a masked training step."""
    cfg = cfg_from_yaml_file(str(CFG_DIR / 'gpicture_nuscenes_pretrain.yaml'))
    model = build_network_from_cfg(cfg)
    generator = torch.Generator().manual_seed(0)
    num_points = 3000
    xyz = torch.rand(num_points, 3, generator=generator) * torch.tensor([40.0, 40.0, 6.0]) - torch.tensor(
        [20.0, 20.0, 4.0])
    points = torch.cat([torch.zeros(num_points, 1), xyz, torch.rand(num_points, 2, generator=generator)], dim=1)
    labels = (xyz[:, 2] > -1).long() + 2 * (xyz[:, 0] > 0).long()
    prototypes = torch.nn.functional.normalize(torch.randn(4, 64, generator=generator), dim=1)
    batch = {'points': points, 'point_teacher_features': prototypes[labels], 'batch_size': 1}
    model.train()
    model.dense_head.set_beta(1.0)
    loss, tb_dict, _ = model(batch)
    loss['loss'].backward()
    assert torch.isfinite(loss['loss'])
    assert 0 < float(tb_dict['mask_ratio']) < 1
    assert model.backbone_3d.input_layer.posembed_layers[0][0][0].position_embedding_head[0].weight.grad is not None
