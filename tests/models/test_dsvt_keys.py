"""State-dict key names and shapes of the Waymo DSVT-Pillar / DSVT-Voxel (and nuScenes DSVT-Pillar) models.

The expected lists are written from the spec (§1.7 key examples, §3.2-§3.5 module structure, §3.8 hyper-parameters),
independently of the implementation, so an upstream checkpoint's `model_state` for vfe / backbone_3d /
map_to_bev_module / backbone_2d loads with `strict=True`. Modules are built through the registries with the builder's
constructor kwargs (spec §1.7 table); nothing is run.
"""
import numpy as np
import pytest
import torch
from easydict import EasyDict
from torch import nn

from pcdet.models.backbones_2d import __all__ as backbones_2d
from pcdet.models.backbones_2d.map_to_bev import __all__ as map_to_bev
from pcdet.models.backbones_3d import __all__ as backbones_3d
from pcdet.models.backbones_3d.vfe import __all__ as vfes

BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def waymo_pillar_cfg():
    """DSVT-repo `dsvt_plain_1f_onestage.yaml` (spec §3.8)."""
    return EasyDict(
        POINT_CLOUD_RANGE=[-74.88, -74.88, -2, 74.88, 74.88, 4.0], VOXEL_SIZE=[0.32, 0.32, 6], NUM_POINT_FEATURES=5,
        VFE=dict(NAME='DynPillarVFE3D', WITH_DISTANCE=False, USE_ABSLOTE_XYZ=True, USE_NORM=True,
                 NUM_FILTERS=[192, 192]),
        BACKBONE_3D=dict(
            NAME='DSVT',
            INPUT_LAYER=dict(sparse_shape=[468, 468, 1], downsample_stride=[], d_model=[192], set_info=[[36, 4]],
                             window_shape=[[12, 12, 1]], hybrid_factor=[2, 2, 1], shifts_list=[[[0, 0, 0], [6, 6, 0]]],
                             normalize_pos=False),
            block_name=['DSVTBlock'], set_info=[[36, 4]], d_model=[192], nhead=[8], dim_feedforward=[384],
            dropout=0.0, activation='gelu', output_shape=[468, 468], conv_out_channel=192),
        MAP_TO_BEV=dict(NAME='PointPillarScatter3d', INPUT_SHAPE=[468, 468, 1], NUM_BEV_FEATURES=192),
        BACKBONE_2D=dict(NAME='BaseBEVResBackbone', LAYER_NUMS=[1, 2, 2], LAYER_STRIDES=[1, 2, 2],
                         NUM_FILTERS=[128, 128, 256], UPSAMPLE_STRIDES=[1, 2, 4], NUM_UPSAMPLE_FILTERS=[128, 128, 128]))


def waymo_voxel_cfg():
    """DSVT-repo `dsvt_3D_1f_onestage.yaml` / OPCD `dsvt_voxel.yaml` (spec §3.8)."""
    cfg = waymo_pillar_cfg()
    cfg.VOXEL_SIZE = [0.32, 0.32, 0.1875]
    cfg.VFE.NAME = 'DynamicVoxelVFE'
    cfg.BACKBONE_3D.update(
        INPUT_LAYER=dict(sparse_shape=[468, 468, 32], downsample_stride=[[1, 1, 4], [1, 1, 4], [1, 1, 2]],
                         d_model=[192] * 4, set_info=[[48, 1]] * 4,
                         window_shape=[[12, 12, 32], [12, 12, 8], [12, 12, 2], [12, 12, 1]], hybrid_factor=[2, 2, 1],
                         shifts_list=[[[0, 0, 0], [6, 6, 0]]] * 4, normalize_pos=False),
        block_name=['DSVTBlock'] * 4, set_info=[[48, 1]] * 4, d_model=[192] * 4, nhead=[8] * 4,
        dim_feedforward=[384] * 4, reduction_type='attention')
    return EasyDict(cfg)


def nuscenes_pillar_cfg():
    """DSVT-repo `dsvt_plain_1f_onestage_nusences.yaml` (spec §3.8)."""
    return EasyDict(
        POINT_CLOUD_RANGE=[-54, -54, -5, 54, 54, 3], VOXEL_SIZE=[0.3, 0.3, 8.0], NUM_POINT_FEATURES=5,
        VFE=dict(NAME='DynPillarVFE', WITH_DISTANCE=False, USE_ABSLOTE_XYZ=True, USE_NORM=True,
                 NUM_FILTERS=[128, 128]),
        BACKBONE_3D=dict(
            NAME='DSVT',
            INPUT_LAYER=dict(sparse_shape=[360, 360, 1], downsample_stride=[], d_model=[128], set_info=[[90, 4]],
                             window_shape=[[30, 30, 1]], hybrid_factor=[1, 1, 1],
                             shifts_list=[[[0, 0, 0], [15, 15, 0]]], normalize_pos=False),
            block_name=['DSVTBlock'], set_info=[[90, 4]], d_model=[128], nhead=[8], dim_feedforward=[256],
            dropout=0.0, activation='gelu', output_shape=[360, 360], conv_out_channel=128),
        MAP_TO_BEV=dict(NAME='PointPillarScatter3d', INPUT_SHAPE=[360, 360, 1], NUM_BEV_FEATURES=128),
        BACKBONE_2D=dict(NAME='BaseBEVResBackbone', LAYER_NUMS=[1, 2, 2], LAYER_STRIDES=[1, 2, 2],
                         NUM_FILTERS=[128, 128, 256], UPSAMPLE_STRIDES=[0.5, 1, 2],
                         NUM_UPSAMPLE_FILTERS=[128, 128, 128]))


def build_modules(cfg):
    """The first four topology slots, wired like Detector3DTemplate.build_networks (spec §1.7)."""
    pc_range = np.array(cfg.POINT_CLOUD_RANGE, dtype=np.float32)
    grid_size = np.round((pc_range[3:6] - pc_range[0:3]) / np.array(cfg.VOXEL_SIZE)).astype(np.int64)
    model = nn.Module()
    model.vfe = vfes[cfg.VFE.NAME](model_cfg=cfg.VFE, num_point_features=cfg.NUM_POINT_FEATURES,
                                   point_cloud_range=pc_range, voxel_size=cfg.VOXEL_SIZE, grid_size=grid_size,
                                   depth_downsample_factor=None)
    model.backbone_3d = backbones_3d[cfg.BACKBONE_3D.NAME](
        model_cfg=cfg.BACKBONE_3D, input_channels=model.vfe.get_output_feature_dim(), grid_size=grid_size,
        voxel_size=cfg.VOXEL_SIZE, point_cloud_range=pc_range)
    model.map_to_bev_module = map_to_bev[cfg.MAP_TO_BEV.NAME](model_cfg=cfg.MAP_TO_BEV, grid_size=grid_size)
    model.backbone_2d = backbones_2d[cfg.BACKBONE_2D.NAME](model_cfg=cfg.BACKBONE_2D,
                                                           input_channels=model.map_to_bev_module.num_bev_features)
    return model


def add_bn(expected, prefix, channels):
    for name in BN:
        expected[f'{prefix}.{name}'] = () if name == 'num_batches_tracked' else (channels,)


def add_layer_norm(expected, prefix, channels):
    expected[f'{prefix}.weight'] = expected[f'{prefix}.bias'] = (channels,)


def add_mha(expected, prefix, c):
    expected.update({f'{prefix}.in_proj_weight': (3 * c, c), f'{prefix}.in_proj_bias': (3 * c,),
                     f'{prefix}.out_proj.weight': (c, c), f'{prefix}.out_proj.bias': (c,)})


def expected_vfe(expected, in_channels, filters):
    expected['vfe.pfn_layers.0.linear.weight'] = (filters[0] // 2, in_channels)
    add_bn(expected, 'vfe.pfn_layers.0.norm', filters[0] // 2)
    expected['vfe.pfn_layers.1.linear.weight'] = (filters[1], filters[0])
    add_bn(expected, 'vfe.pfn_layers.1.norm', filters[1])


def expected_block(expected, prefix, c, ffn):
    for j in range(2):
        layer = f'{prefix}.encoder_list.{j}'
        add_mha(expected, f'{layer}.win_attn.self_attn', c)
        expected.update({f'{layer}.win_attn.linear1.weight': (ffn, c), f'{layer}.win_attn.linear1.bias': (ffn,),
                         f'{layer}.win_attn.linear2.weight': (c, ffn), f'{layer}.win_attn.linear2.bias': (c,)})
        add_layer_norm(expected, f'{layer}.win_attn.norm1', c)
        add_layer_norm(expected, f'{layer}.win_attn.norm2', c)
        add_layer_norm(expected, f'{layer}.norm', c)


def expected_posembed(expected, stage, block, in_dim, c):
    for shift in range(2):
        head = f'backbone_3d.input_layer.posembed_layers.{stage}.{block}.{shift}.position_embedding_head'
        expected.update({f'{head}.0.weight': (c, in_dim), f'{head}.0.bias': (c,),
                         f'{head}.3.weight': (c, c), f'{head}.3.bias': (c,)})
        add_bn(expected, f'{head}.1', c)


def expected_bev(expected, c_in, filters, layer_nums, up_filters, up_kernels, transposed):
    c_prev = c_in
    for lvl, (f, n) in enumerate(zip(filters, layer_nums)):
        for k in range(n + 1):
            pre = f'backbone_2d.blocks.{lvl}.{k}'
            c_block_in = c_prev if k == 0 else f
            expected[f'{pre}.conv1.weight'] = (f, c_block_in, 3, 3)
            add_bn(expected, f'{pre}.bn1', f)
            expected[f'{pre}.conv2.weight'] = (f, f, 3, 3)
            add_bn(expected, f'{pre}.bn2', f)
            if k == 0:
                expected[f'{pre}.downsample_layer.0.weight'] = (f, c_block_in, 1, 1)
                add_bn(expected, f'{pre}.downsample_layer.1', f)
        kernel = up_kernels[lvl]
        # ConvTranspose2d weights are (in, out, k, k); Conv2d weights (out, in, k, k).
        expected[f'backbone_2d.deblocks.{lvl}.0.weight'] = \
            (f, up_filters[lvl], kernel, kernel) if transposed[lvl] else (up_filters[lvl], f, kernel, kernel)
        add_bn(expected, f'backbone_2d.deblocks.{lvl}.1', up_filters[lvl])
        c_prev = f


def waymo_pillar_expected():
    expected = {}
    expected_vfe(expected, 5 + 6, [192, 192])
    for b in range(4):
        expected_posembed(expected, 0, b, 2, 192)
        expected_block(expected, f'backbone_3d.stage_0.{b}', 192, 384)
        add_layer_norm(expected, f'backbone_3d.residual_norm_stage_0.{b}', 192)
    expected_bev(expected, 192, [128, 128, 256], [1, 2, 2], [128] * 3, [1, 2, 4], [True] * 3)
    return expected


def waymo_voxel_expected():
    expected = {}
    expected_vfe(expected, 5 + 6, [192, 192])
    for s in range(4):
        expected_posembed(expected, s, 0, 3 if s < 3 else 2, 192)   # 3-D embeddings while the stage's z > 1
        expected_block(expected, f'backbone_3d.stage_{s}.0', 192, 384)
        add_layer_norm(expected, f'backbone_3d.residual_norm_stage_{s}.0', 192)
    for s, pool_volume in enumerate([4, 4, 2]):                         # z strides 4, 4, 2
        add_layer_norm(expected, f'backbone_3d.stage_{s}_reduction.norm', 192)
        add_mha(expected, f'backbone_3d.stage_{s}_reduction.self_attn', 192)
        expected[f'backbone_3d.stage_{s}_reduction.pos_embedding'] = (pool_volume, 192)
    expected_bev(expected, 192, [128, 128, 256], [1, 2, 2], [128] * 3, [1, 2, 4], [True] * 3)
    return expected


def nuscenes_pillar_expected():
    expected = {}
    expected_vfe(expected, 5 + 6, [128, 128])
    for b in range(4):
        expected_posembed(expected, 0, b, 2, 128)
        expected_block(expected, f'backbone_3d.stage_0.{b}', 128, 256)
        add_layer_norm(expected, f'backbone_3d.residual_norm_stage_0.{b}', 128)
    expected_bev(expected, 128, [128, 128, 256], [1, 2, 2], [128] * 3, [2, 1, 2], [False, True, True])
    return expected


CASES = {'waymo_pillar': (waymo_pillar_cfg, waymo_pillar_expected),
         'waymo_voxel': (waymo_voxel_cfg, waymo_voxel_expected),
         'nuscenes_pillar': (nuscenes_pillar_cfg, nuscenes_pillar_expected)}


@pytest.mark.parametrize('case', sorted(CASES))
def test_state_dict_keys_and_shapes_match_upstream(case):
    make_cfg, make_expected = CASES[case]
    model = build_modules(make_cfg())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = make_expected()
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    wrong = {k: (got[k], shape) for k, shape in expected.items() if got[k] != shape}
    assert wrong == {}

    # An upstream-style checkpoint (random values, the spec's names and shapes) loads strictly.
    gen = torch.Generator().manual_seed(0)
    checkpoint = {k: (torch.randn(shape, generator=gen) if k.split('.')[-1] != 'num_batches_tracked'
                      else torch.tensor(7)) for k, shape in expected.items()}
    model.load_state_dict(checkpoint, strict=True)
    torch.testing.assert_close(model.backbone_3d.stage_0[0].encoder_list[1].win_attn.self_attn.in_proj_weight,
                               checkpoint['backbone_3d.stage_0.0.encoder_list.1.win_attn.self_attn.in_proj_weight'])


def test_builder_facing_attributes():
    model = build_modules(waymo_pillar_cfg())
    assert model.vfe.get_output_feature_dim() == 192
    assert model.backbone_3d.num_point_features == 192
    assert model.map_to_bev_module.num_bev_features == 192
    assert model.backbone_2d.num_bev_features == 384
    voxel = build_modules(waymo_voxel_cfg())
    assert voxel.backbone_3d.sparse_shape_list == [[468, 468, 32], [468, 468, 8], [468, 468, 2], [468, 468, 1]]
    assert voxel.backbone_3d.output_sparse_shape == (468, 468, 1)
    assert (voxel.map_to_bev_module.nx, voxel.map_to_bev_module.ny, voxel.map_to_bev_module.nz) == (468, 468, 1)
    windows = voxel.backbone_3d.input_layer.window_shape
    assert windows[0] == [[12, 12, 32], [24, 24, 32]] and windows[3] == [[12, 12, 1], [24, 24, 1]]
