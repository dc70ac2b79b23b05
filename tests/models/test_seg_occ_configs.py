"""The segmentation / occupancy configs: each builds, its encoder (VFE + BACKBONE_3D + the data geometry feeding them)
equals its pretraining config's by resolved values -- schema defaults filled in, derived grids compared -- and a
pretraining checkpoint loads into it completely (MIN_COVERAGE 1.0)."""
import copy
from pathlib import Path

import pytest
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet.config_registry import validate_config
from pcdet.config_schema import schema_of
from pcdet.models.backbones_3d.dsvt import DSVT
from pcdet.models.build import build_network_from_cfg, model_geometry_from_data_config
from pcdet.models.dense_heads.seg_head import LIDARSEG_CLASS_NAMES
from pcdet.models.detectors.detector3d_template import lookup_module
from pcdet.training.checkpointing import checkpoint_state, save_checkpoint
from pcdet.utils.checkpoint import load_pretrained_model

CFG_DIR = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs' / 'gpicture_models'
PAIRS = [
    ('gpicture_tiny_synthetic_pretrain.yaml', 'gpicture_tiny_synthetic_segmentation.yaml'),
    ('gpicture_tiny_synthetic_pretrain.yaml', 'gpicture_tiny_synthetic_occupancy.yaml'),
    ('gpicture_tiny_synthetic_pretrain.yaml', 'gpicture_tiny_synthetic_occupancy_gaussian.yaml'),  # GaussianOccHead
    ('gpicture_nuscenes_pretrain.yaml', 'gpicture_nuscenes_segmentation.yaml'),
    ('gpicture_nuscenes_pretrain.yaml', 'gpicture_nuscenes_occupancy.yaml'),
]
ENCODER = ('vfe.', 'backbone_3d.')


def load(name):
    return validate_config(cfg_from_yaml_file(str(CFG_DIR / name)))


def resolved_encoder(cfg):
    """The encoder as the modules read it: VFE and DSVT blocks with every schema default filled in (DSVT_MAE's
    MASK_CONFIG and the NAME spelling of the masked variant dropped), the VFE class, and the data geometry."""
    vfe_class = lookup_module('vfe', cfg.MODEL.VFE.NAME)
    vfe = dict(schema_of(vfe_class).fill(cfg.MODEL.VFE))
    backbone = dict(DSVT.CONFIG_SCHEMA.fill(cfg.MODEL.BACKBONE_3D))
    backbone.pop('MASK_CONFIG', None)
    backbone['NAME'] = backbone['NAME'].replace('DSVT_MAE', 'DSVT')
    geometry = model_geometry_from_data_config(cfg.DATA_CONFIG)
    geometry = {k: (v.tolist() if hasattr(v, 'tolist') else v) for k, v in geometry.items()}
    return {'vfe_class': vfe_class.__name__, 'VFE': vfe, 'BACKBONE_3D': backbone, 'geometry': geometry,
            'features': list(cfg.DATA_CONFIG.POINT_FEATURE_ENCODING.used_feature_list)}


def built_encoder(model):
    bb, vfe = model.backbone_3d, model.vfe
    return {'grid': vfe.grid, 'voxel': (vfe.voxel_x, vfe.voxel_y, vfe.voxel_z), 'filters': vfe.num_filters,
            'stages': bb.sparse_shape_list, 'strides': [list(s) for s in bb.shapes.downsample_strides],
            'd_model': bb.d_model, 'set_info': bb.set_info, 'compat': bb.compat}


@pytest.mark.parametrize('pretrain_name, finetune_name', PAIRS)
def test_encoder_equals_the_pretraining_encoder_and_loads_completely(pretrain_name, finetune_name, tmp_path):
    pre_cfg, fine_cfg = load(pretrain_name), load(finetune_name)
    assert resolved_encoder(fine_cfg) == resolved_encoder(pre_cfg)
    torch.manual_seed(0)
    pretrained = build_network_from_cfg(pre_cfg)
    torch.manual_seed(1)
    model = build_network_from_cfg(fine_cfg)
    assert built_encoder(model) == built_encoder(pretrained)
    expected_class = {'segmentation': 'Segmentor3D', 'occupancy': 'OccupancyNet'}[fine_cfg.DATA_CONFIG.TASK]
    assert type(model).__name__ == expected_class

    assert fine_cfg.MODEL.PRETRAINED_ENCODER.MIN_COVERAGE == 1.0
    assert list(fine_cfg.MODEL.PRETRAINED_ENCODER.PREFIXES) == list(ENCODER)
    path = save_checkpoint(checkpoint_state(pretrained, epoch=1, it=1), tmp_path / 'pretrain')
    report = load_pretrained_model(model, path, fine_cfg.MODEL.PRETRAINED_ENCODER)
    source, loaded = pretrained.state_dict(), model.state_dict()
    encoder = [key for key in loaded if key.startswith(ENCODER)]
    assert len(encoder) > 20 and set(encoder) <= set(report.loaded)
    assert all(torch.equal(loaded[key], source[key]) for key in encoder)


def test_the_comparison_sees_values_the_state_dict_does_not():
    """Shape-neutral encoder changes (dropout, activation, windows) leave the state dict loadable but change the
    resolved encoder; a key written out with its default value changes nothing."""
    base = load('gpicture_tiny_synthetic_segmentation.yaml')
    reference = resolved_encoder(base)
    for edit in (lambda c: c.MODEL.BACKBONE_3D.__setitem__('dropout', 0.1),
                 lambda c: c.MODEL.BACKBONE_3D.__setitem__('activation', 'relu'),
                 lambda c: c.MODEL.BACKBONE_3D.INPUT_LAYER.__setitem__('window_shape', [[16, 16, 1]]),
                 lambda c: c.MODEL.VFE.__setitem__('WITH_DISTANCE', True)):
        changed = copy.deepcopy(base)
        edit(changed)
        assert resolved_encoder(changed) != reference
    explicit = copy.deepcopy(base)
    explicit.MODEL.BACKBONE_3D.reduction_type = 'attention'          # the schema default, now written out
    assert resolved_encoder(explicit) == reference


@pytest.mark.parametrize('name', [pair[1] for pair in PAIRS])
def test_task_settings(name):
    cfg = load(name)
    assert tuple(cfg.CLASS_NAMES) == LIDARSEG_CLASS_NAMES
    task = cfg.DATA_CONFIG.TASK
    assert task in ('segmentation', 'occupancy') and task in name
    if 'tiny' in name:
        assert cfg.DATA_CONFIG.SAMPLED_INTERVAL == {'train': 10, 'test': 1}
    assert 'gt_sampling' not in [aug.NAME for aug in cfg.DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST]
    if task == 'occupancy':
        head = cfg.MODEL.DENSE_HEAD
        assert head.FINAL_OCC_SIZE == cfg.DATA_CONFIG.OCC_GRID_SIZE == [512, 512, 40]
        assert head.OCC_POINT_CLOUD_RANGE == cfg.DATA_CONFIG.OCC_POINT_CLOUD_RANGE == cfg.DATA_CONFIG.POINT_CLOUD_RANGE
        assert head.OUTPUT_GRID == ([64, 64, 10] if 'tiny' in name else [128, 128, 10])     # tiny: CPU-sized
        assert head.CLASS_WEIGHTS == 'openoccupancy'
    if name == 'gpicture_nuscenes_occupancy.yaml':       # OpenOccupancy LiDAR baseline optimisation (spec §B.6)
        opt = cfg.OPTIMIZATION
        assert (opt.OPTIMIZER, opt.LR, opt.WEIGHT_DECAY, opt.GRAD_NORM_CLIP, opt.WARMUP_ITER) == (
            'adam_cosineanneal', 0.0003, 0.01, 35, 500)
    if name == 'gpicture_nuscenes_segmentation.yaml':
        assert cfg.OPTIMIZATION.OPTIMIZER == 'adam_onecycle'
