"""DSVT backbone on tiny grids: keys written, gradients, voxel-order invariance, SDPA == upstream attention,
gradient checkpointing, the COMPAT switches (each differs exactly where it should), config validation."""
import copy

import pytest
import torch
from easydict import EasyDict

from pcdet.models.backbones_3d import __all__ as backbones_3d
from pcdet.models.backbones_3d.dsvt import DSVT, SetAttention, ShapeConfigError

TOL = dict(atol=1e-5, rtol=1e-5)
PILLAR_RANGE, PILLAR_VOXEL = [0, 0, -2, 9.6, 9.6, 4], [0.32, 0.32, 6]          # grid 30 x 30 x 1
VOXEL_RANGE, VOXEL_VOXEL = [0, 0, 0, 6.4, 6.4, 1.5], [0.32, 0.32, 0.1875]      # grid 20 x 20 x 8


def pillar_cfg(**extra):
    cfg = EasyDict(NAME='DSVT', INPUT_LAYER=EasyDict(
        sparse_shape=[30, 30, 1], downsample_stride=[], d_model=[16], set_info=[[8, 2]], window_shape=[[6, 6, 1]],
        hybrid_factor=[2, 2, 1], shifts_list=[[[0, 0, 0], [3, 3, 0]]], normalize_pos=False),
        block_name=['DSVTBlock'], set_info=[[8, 2]], d_model=[16], nhead=[2], dim_feedforward=[32], dropout=0.0,
        activation='gelu', output_shape=[30, 30], conv_out_channel=16)
    cfg.update(extra)
    return cfg


def voxel_cfg(**extra):
    cfg = EasyDict(NAME='DSVT', INPUT_LAYER=EasyDict(
        sparse_shape=[20, 20, 8], downsample_stride=[[1, 1, 4], [1, 1, 2]], d_model=[16] * 3, set_info=[[8, 1]] * 3,
        window_shape=[[6, 6, 8], [6, 6, 2], [6, 6, 1]], hybrid_factor=[2, 2, 1],
        shifts_list=[[[0, 0, 0], [3, 3, 0]]] * 3, normalize_pos=False),
        block_name=['DSVTBlock'] * 3, set_info=[[8, 1]] * 3, d_model=[16] * 3, nhead=[2] * 3,
        dim_feedforward=[32] * 3, dropout=0.0, activation='gelu', output_shape=[20, 20], conv_out_channel=16,
        reduction_type='attention')
    cfg.update(extra)
    return cfg


def build(cfg, variant, seed=0):
    torch.manual_seed(seed)
    pc_range, voxel = (PILLAR_RANGE, PILLAR_VOXEL) if variant == 'pillar' else (VOXEL_RANGE, VOXEL_VOXEL)
    grid = [30, 30, 1] if variant == 'pillar' else [20, 20, 8]
    return backbones_3d['DSVT'](model_cfg=cfg, input_channels=16, grid_size=grid, voxel_size=voxel,
                                point_cloud_range=pc_range)


def random_input(variant, seed=0, num=260):
    gen = torch.Generator().manual_seed(seed)
    nx, ny, nz = (30, 30, 1) if variant == 'pillar' else (20, 20, 8)
    keys = torch.randperm(2 * nz * ny * nx, generator=gen)[:num]
    coords = torch.stack((keys // (nz * ny * nx), (keys // (ny * nx)) % nz, (keys // nx) % ny, keys % nx), dim=1)
    return {'voxel_features': torch.randn(num, 16, generator=gen), 'voxel_coords': coords, 'batch_size': 2}


def run(model, batch):
    return model(dict(batch))


@pytest.mark.parametrize('variant', ['pillar', 'voxel'])
def test_forward_writes_keys_and_every_parameter_gets_gradient(variant):
    model = build(pillar_cfg() if variant == 'pillar' else voxel_cfg(), variant)
    batch = random_input(variant)
    out = run(model, batch)
    feats, coords = out['voxel_features'], out['voxel_coords']
    assert out['pillar_features'] is feats
    assert coords.dtype == torch.long and coords.shape == (feats.shape[0], 4) and feats.shape[1] == 16
    assert (coords[:, 1] == 0).all()
    assert out['voxel_grid_shape'] == ((30, 30, 1) if variant == 'pillar' else (20, 20, 1))
    assert model.num_point_features == 16 and model.output_shape == [(30 if variant == 'pillar' else 20)] * 2
    if variant == 'pillar':
        assert torch.equal(coords, batch['voxel_coords'])
    else:
        expected = torch.unique(batch['voxel_coords'] * torch.tensor([1, 0, 1, 1]), dim=0)
        assert torch.equal(coords[torch.argsort(coords[:, 0] * 10 ** 6 + coords[:, 2] * 1000 + coords[:, 3])],
                           expected[torch.argsort(expected[:, 0] * 10 ** 6 + expected[:, 2] * 1000 + expected[:, 3])])
    feats.square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize('variant', ['pillar', 'voxel'])
def test_output_does_not_depend_on_voxel_order(variant):
    model = build(pillar_cfg() if variant == 'pillar' else voxel_cfg(), variant).eval()
    batch = random_input(variant, seed=1)
    perm = torch.randperm(batch['voxel_coords'].shape[0], generator=torch.Generator().manual_seed(9))
    shuffled = {'voxel_features': batch['voxel_features'][perm], 'voxel_coords': batch['voxel_coords'][perm]}
    with torch.no_grad():
        out, out_shuffled = run(model, batch), run(model, shuffled)
    if variant == 'pillar':
        torch.testing.assert_close(out_shuffled['voxel_features'], out['voxel_features'][perm], **TOL)
    else:  # pooled stages come out sorted by pooled coordinates whatever the input order
        assert torch.equal(out_shuffled['voxel_coords'], out['voxel_coords'])
        torch.testing.assert_close(out_shuffled['voxel_features'], out['voxel_features'], **TOL)


@pytest.mark.parametrize('variant', ['pillar', 'voxel'])
def test_sdpa_model_equals_upstream_attention_computation(variant):
    model = build(pillar_cfg() if variant == 'pillar' else voxel_cfg(), variant)
    batch = random_input(variant, seed=2)
    expected = run(model, batch)['voxel_features']
    for module in model.modules():
        if isinstance(module, SetAttention):
            module.attention_impl = 'mha'
    torch.testing.assert_close(run(model, batch)['voxel_features'], expected, **TOL)


def test_gradient_checkpointing_matches_plain_forward_and_backward():
    plain, ckpt = build(pillar_cfg(), 'pillar'), build(pillar_cfg(USE_CHECKPOINT=True), 'pillar')
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.use_torch_ckpt and not plain.use_torch_ckpt
    assert build(pillar_cfg(ues_checkpoint=True), 'pillar').use_torch_ckpt   # DSVT-repo spelling
    batch = random_input('pillar', seed=3)
    outs = []
    for model in (plain, ckpt):
        out = run(model, batch)['voxel_features']
        out.square().mean().backward()
        outs.append((out, model.stage_0[0].encoder_list[1].win_attn.self_attn.in_proj_weight.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], **TOL)
    torch.testing.assert_close(outs[1][1], outs[0][1], **TOL)


@pytest.mark.parametrize('variant', ['pillar', 'voxel'])
def test_pos_embed_compat_switch_changes_only_the_mismatched_layers(variant):
    cfg = pillar_cfg() if variant == 'pillar' else voxel_cfg()
    correct = build(cfg, variant).eval()
    compat_cfg = copy.deepcopy(cfg)
    compat_cfg.COMPAT = {'POS_EMBED_SHIFT_BUG': True}
    buggy = build(compat_cfg, variant, seed=1).eval()
    buggy.load_state_dict(correct.state_dict())   # same parameter names in both modes
    batch = random_input(variant, seed=4)
    with torch.no_grad():
        info_correct, info_buggy = correct.input_layer(dict(batch)), buggy.input_layer(dict(batch))
        out_correct, out_buggy = run(correct, batch), run(buggy, batch)
    block_id, checked = 0, 0
    for s, (_, num_blocks) in enumerate(correct.set_info):
        for b in range(num_blocks):
            for layer in range(2):
                key = f'pos_embed_stage{s}_block{b}_shift{layer}'
                same = torch.allclose(info_correct[key], info_buggy[key])
                # Upstream pairs layer i with partition i; the block runs on partition block_id % 2.
                assert same == (layer == block_id % 2), key
                checked += 1
            block_id += 1
    assert checked == 2 * block_id
    assert not torch.allclose(out_correct['voxel_features'], out_buggy['voxel_features'])


def full_pool_input(seed=0, columns=60):
    """Voxel-variant input whose pools (z strides 4 then 2) are all full: every z cell of each chosen column."""
    gen = torch.Generator().manual_seed(seed)
    cols = torch.randperm(2 * 20 * 20, generator=gen)[:columns]
    b, y, x = cols // 400, (cols // 20) % 20, cols % 20
    z = torch.arange(8)
    coords = torch.stack((b.repeat_interleave(8), z.repeat(columns), y.repeat_interleave(8), x.repeat_interleave(8)),
                         dim=1)
    return {'voxel_features': torch.randn(coords.shape[0], 16, generator=gen), 'voxel_coords': coords}


def test_pool_compat_switch_matters_only_with_empty_slots():
    correct = build(voxel_cfg(), 'voxel')
    buggy = build(voxel_cfg(COMPAT={'POOL_UNMASKED_EMPTY_SLOTS': True}), 'voxel', seed=1)
    buggy.load_state_dict(correct.state_dict())
    full = full_pool_input()
    torch.testing.assert_close(run(buggy, full)['voxel_features'], run(correct, full)['voxel_features'], **TOL)
    partial = random_input('voxel', seed=5)
    assert not torch.allclose(run(buggy, partial)['voxel_features'], run(correct, partial)['voxel_features'])


def test_eval_position_embedding_table_equals_direct_mlp():
    model = build(voxel_cfg(), 'voxel')
    batch = random_input('voxel', seed=6, num=700)
    model.train()
    with torch.no_grad():   # run once in training mode so BatchNorm running stats are not trivial
        model.input_layer(dict(batch))
    model.eval()
    layer = model.input_layer
    for s in range(layer.stage_num):
        coords = torch.stack([torch.randint(0, w, (800,)) for w in reversed(layer.window_shape[s][1])], dim=1)
        direct = layer._embed(layer.posembed_layers[s][0][1], coords, *layer.window_shape[s][1])
        torch.testing.assert_close(layer.get_pos_embed(coords, s, 0, 1), direct, **TOL)


def test_cpu_bf16_autocast_runs_close_to_fp32():
    model = build(pillar_cfg(), 'pillar').eval()
    batch = random_input('pillar', seed=7)
    with torch.no_grad():
        ref = run(model, batch)['voxel_features']
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = run(model, batch)['voxel_features']
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().mean() < 0.1


def test_shapes_are_derived_when_left_out():
    cfg = pillar_cfg()
    del cfg.INPUT_LAYER['sparse_shape'], cfg['output_shape'], cfg['conv_out_channel']
    del cfg.INPUT_LAYER['d_model'], cfg.INPUT_LAYER['set_info']
    model = build(cfg, 'pillar')
    assert model.sparse_shape_list == [[30, 30, 1]] and model.output_shape == [30, 30]
    assert model.num_point_features == 16
    assert model.input_layer.window_shape == [[[6, 6, 1], [12, 12, 1]]]


@pytest.mark.parametrize('change,message', [
    (lambda c: c.INPUT_LAYER.update(sparse_shape=[468, 468, 1]),
     r'sparse_shape \[468, 468, 1\] disagrees with grid_size \(30, 30, 1\) from POINT_CLOUD_RANGE/VOXEL_SIZE; '
     r'it should be \[30, 30, 1\]'),
    (lambda c: c.update(output_shape=[32, 30]), r'output_shape \[32, 30\] disagrees .* should be \[30, 30\]'),
    (lambda c: c.update(conv_out_channel=32), r'conv_out_channel 32 disagrees .* should be 16'),
    (lambda c: c.INPUT_LAYER.update(d_model=[32]), r'INPUT_LAYER.d_model \[32\] disagrees with BACKBONE_3D.d_model'),
    (lambda c: c.update(COMPAT={'POS_EMBED_BUG': True}),
     r'COMPAT.POS_EMBED_BUG: unknown key .*did you mean POS_EMBED_SHIFT_BUG'),
    (lambda c: c.INPUT_LAYER.update(shifts_list=[[[0, 0, 0], [13, 3, 0]]]), r'exceeds its window \[12, 12, 1\]'),
    (lambda c: c.INPUT_LAYER.update(window_shape=[[6, 6, 2]]), r'disagree on z'),
    (lambda c: c.update(nhead=[3]), r'not divisible by nhead'),
])
def test_config_errors_name_the_values(change, message):
    cfg = pillar_cfg()
    change(cfg)
    with pytest.raises(ValueError, match=message):
        build(cfg, 'pillar')


def test_input_channels_must_match_d_model():
    with pytest.raises(ValueError, match=r'input_channels 64 .*d_model\[0\] = 16'):
        DSVT(pillar_cfg(), input_channels=64, grid_size=[30, 30, 1])


def test_voxel_variant_errors():
    cfg = voxel_cfg()
    cfg.INPUT_LAYER.downsample_stride = [[1, 1, 4]]
    with pytest.raises(ShapeConfigError, match='downsample_stride has 1 entries but 3 stages need 2'):
        build(cfg, 'voxel')


def test_float64_model_follows_input_dtype():
    model = build(voxel_cfg(), 'voxel').double()
    batch = random_input('voxel', seed=8)
    batch['voxel_features'] = batch['voxel_features'].double()
    assert run(model, batch)['voxel_features'].dtype == torch.float64
