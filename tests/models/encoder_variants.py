"""Encoder variants, the encoder-transfer check and the config-refusal check shared by the model tests (one
definition, so the tests exercise the same 3-D grid, the same loading path and the same error contract)."""
import functools
import re

import pytest
from easydict import EasyDict

from pcdet.config import ConfigError
from pcdet.models.build import build_network_from_cfg


def assert_model_refuses(cfg, key, value):
    """Set the dotted `key` of `cfg` to `value`: building the model must raise a ConfigError that names the key."""
    *parents, leaf = key.split('.')
    functools.reduce(getattr, parents, cfg)[leaf] = value
    with pytest.raises(ConfigError, match=re.escape(key)):
        build_network_from_cfg(cfg)


def use_two_stage_voxel_encoder(cfg, reduction_type=None, drop_conv_out=False):
    """Switch the tiny config's encoder, in place, to 3-D voxels (z cells of 2 m) with two DSVT stages (z-stride 4):
    stage 0 is 128 x 128 x 4, stage 1 128 x 128 x 1, so the pooling maps are exercised. `reduction_type` sets the
    DSVT pooling reduction; `drop_conv_out` removes `conv_out_channel` (models whose decoder reads the raw tokens).
    Returns `cfg`."""
    cfg.DATA_CONFIG.DATA_PROCESSOR[-1].VOXEL_SIZE = [0.8, 0.8, 2.0]
    cfg.MODEL.VFE.NAME = 'DynamicVoxelVFE'
    bb = cfg.MODEL.BACKBONE_3D
    bb.INPUT_LAYER = EasyDict(dict(sparse_shape=[128, 128, 4], downsample_stride=[[1, 1, 4]], d_model=[32, 32],
                                   set_info=[[16, 1], [16, 1]], window_shape=[[8, 8, 4], [8, 8, 1]],
                                   hybrid_factor=[2, 2, 1], shifts_list=[[[0, 0, 0], [4, 4, 0]]] * 2,
                                   normalize_pos=False))
    bb.block_name, bb.set_info, bb.d_model = ['DSVTBlock'] * 2, [[16, 1], [16, 1]], [32, 32]
    bb.nhead, bb.dim_feedforward = [2, 2], [64, 64]
    if reduction_type is not None:
        bb.reduction_type = reduction_type
    if drop_conv_out:
        bb.pop('conv_out_channel')
    return cfg


def assert_checkpoint_loads_whole_encoder(source_model, finetune_cfg_file, tmp_path):
    """Save `source_model` as a pcdet checkpoint, build the fine-tune config (MIN_COVERAGE 1.0) with other weights
    and load it with `--pretrained_model`'s loader: every `vfe.` / `backbone_3d.` tensor of the fine-tune model must
    come from the checkpoint, with the same names, shapes and values."""
    import torch

    from pcdet.config import cfg_from_yaml_file
    from pcdet.models.build import build_network_from_cfg
    from pcdet.training.checkpointing import checkpoint_state, save_checkpoint
    from pcdet.utils.checkpoint import load_pretrained_model
    path = save_checkpoint(checkpoint_state(source_model, epoch=1, it=1), tmp_path / 'pretrained')
    fine_cfg = cfg_from_yaml_file(str(finetune_cfg_file))
    assert fine_cfg.MODEL.PRETRAINED_ENCODER.MIN_COVERAGE == 1.0
    torch.manual_seed(6)
    target = build_network_from_cfg(fine_cfg)
    load_pretrained_model(target, path, fine_cfg.MODEL.PRETRAINED_ENCODER)
    src, dst = source_model.state_dict(), target.state_dict()
    encoder = [k for k in dst if k.startswith(('vfe.', 'backbone_3d.'))]
    assert len(encoder) > 20 and {k for k in src if k.startswith(('vfe.', 'backbone_3d.'))} == set(encoder)
    assert all(src[k].shape == dst[k].shape and torch.equal(src[k], dst[k]) for k in encoder)
