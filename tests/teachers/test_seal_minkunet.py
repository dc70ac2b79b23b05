"""Res16UNet34C (Seal MinkUNet) on the pure-PyTorch sparse conv: ME checkpoint conversion + dense whole-network truth.

The ME state dict is generated from the key / shape table of spec §5 written out here (not from the model), loaded
with `load_me_checkpoint` through a file, and the sparse network is compared with a dense implementation of the
same network (conv3d on zero-filled grids masked to the occupied set of each stride, eval-mode BN with the running
stats, concatenated skips) built from the same ME state dict.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from easydict import EasyDict

from pcdet.config import ConfigError
from pcdet.datasets.teachers.seal_minkunet import (
    MECheckpointError,
    Res16UNet34C,
    SealMinkUNetTeacher,
    load_me_checkpoint,
    voxelize_points,
)
from pcdet.ops.sparse_conv import SparseTensor, axis_offsets, me_kernel_offsets

GRID = 16  # 4 stride-2 levels: 16 -> 8 -> 4 -> 2 -> 1 cells per axis
ENCODER = [  # (stride conv, its BN, block, inplanes, planes, blocks)
    ('conv1p1s2', 'bn1', 'block1', 32, 32, 2), ('conv2p2s2', 'bn2', 'block2', 32, 64, 3),
    ('conv3p4s2', 'bn3', 'block3', 64, 128, 4), ('conv4p8s2', 'bn4', 'block4', 128, 256, 6)]
DECODER = [  # (transposed conv, its BN, block, inplanes, planes, skip channels, blocks)
    ('convtr4p16s2', 'bntr4', 'block5', 256, 256, 128, 2), ('convtr5p8s2', 'bntr5', 'block6', 256, 128, 64, 2),
    ('convtr6p4s2', 'bntr6', 'block7', 128, 96, 32, 2), ('convtr7p2s2', 'bntr7', 'block8', 96, 96, 32, 2)]


# ------------------------------------------------------------------------------------- ME state dict (spec §5)
def me_shapes():
    """{ME key: shape} of Res16UNet34C (MinkowskiEngine 0.5 layout), from the spec table."""
    shapes = {}

    def conv(name, k, c_in, c_out):
        shapes[f'{name}.kernel'] = (k ** 3, c_in, c_out) if k > 1 else (c_in, c_out)

    def bn(name, c):
        for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{name}.bn.{leaf}'] = (c,)
        shapes[f'{name}.bn.num_batches_tracked'] = ()

    def blocks(name, inplanes, planes, count):
        for i in range(count):
            c_in = inplanes if i == 0 else planes
            conv(f'{name}.{i}.conv1', 3, c_in, planes)
            bn(f'{name}.{i}.norm1', planes)
            conv(f'{name}.{i}.conv2', 3, planes, planes)
            bn(f'{name}.{i}.norm2', planes)
            if c_in != planes:
                conv(f'{name}.{i}.downsample.0', 1, c_in, planes)
                bn(f'{name}.{i}.downsample.1', planes)

    conv('conv0p1s1', 3, 1, 32)
    bn('bn0', 32)
    for conv_name, bn_name, block, inplanes, planes, count in ENCODER:
        conv(conv_name, 2, inplanes, inplanes)
        bn(bn_name, inplanes)
        blocks(block, inplanes, planes, count)
    for conv_name, bn_name, block, inplanes, planes, skip, count in DECODER:
        conv(conv_name, 2, inplanes, planes)
        bn(bn_name, planes)
        blocks(block, planes + skip, planes, count)
    conv('final', 1, 96, 64)
    shapes['final.bias'] = (1, 64)
    return shapes


def random_me_state_dict(seed):
    """Random ME-layout tensors: kernels ~ N(0, 1/fan_in), BN affine / running stats around identity."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in me_shapes().items():
        if key.endswith('.kernel'):
            fan_in = shape[0] * shape[1] if len(shape) == 3 else shape[0]
            state[key] = torch.randn(shape, generator=gen) / fan_in ** 0.5
        elif key.endswith('num_batches_tracked'):
            state[key] = torch.tensor(7)
        elif key.endswith('running_var') or key.endswith('bn.weight'):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        else:  # bn.bias, running_mean, final.bias
            state[key] = 0.2 * torch.randn(shape, generator=gen)
    return state


def test_spec_shapes_table():
    shapes = me_shapes()
    for key, shape in [('conv0p1s1.kernel', (27, 1, 32)), ('conv1p1s2.kernel', (8, 32, 32)),
                       ('block2.0.conv1.kernel', (27, 32, 64)), ('block2.0.downsample.0.kernel', (32, 64)),
                       ('convtr4p16s2.kernel', (8, 256, 256)), ('block5.0.conv1.kernel', (27, 384, 256)),
                       ('block5.0.downsample.0.kernel', (384, 256)), ('convtr5p8s2.kernel', (8, 256, 128)),
                       ('convtr6p4s2.kernel', (8, 128, 96)), ('convtr7p2s2.kernel', (8, 96, 96)),
                       ('block8.0.conv1.kernel', (27, 128, 96)), ('final.kernel', (96, 64)), ('final.bias', (1, 64))]:
        assert shapes[key] == shape, key
    assert 'block1.0.downsample.0.kernel' not in shapes
    # the model has one tensor per ME tensor (conv kernel -> weight, bias, BN bn.* -> *)
    assert len(Res16UNet34C().state_dict()) == len(shapes)


def save_checkpoint(state, path, prefix='model_points.'):
    """Seal/SLidR-like Lightning file: image-branch junk first, the points branch under `prefix`."""
    state_dict = {'model_images.encoder.conv1.weight': torch.zeros(4, 3, 3, 3),
                  'model_images.decoder.weight': torch.zeros(2)}
    state_dict.update({prefix + key: value for key, value in state.items()})
    torch.save({'state_dict': state_dict, 'epoch': 3, 'global_step': 100}, str(path))
    return path


# ----------------------------------------------------------------------------------- dense whole-network truth
def dense_kernel(me_kernel, kernel_size, transposed=False):
    """conv3d (C_out, C_in, k, k, k) / conv_transpose3d (C_in, C_out, k, k, k) weight from an ME kernel."""
    if me_kernel.dim() == 2:
        me_kernel = me_kernel.unsqueeze(0)
    _, c_in, c_out = me_kernel.shape
    low = axis_offsets(kernel_size)[0]
    weight = me_kernel.new_zeros(((c_in, c_out) if transposed else (c_out, c_in)) + (kernel_size,) * 3)
    for j, (ox, oy, oz) in enumerate(me_kernel_offsets(kernel_size).tolist()):
        weight[:, :, ox - low, oy - low, oz - low] = me_kernel[j] if transposed else me_kernel[j].t()
    return weight


def dense_res16unet34c(state, features, occupancy):
    """The ME network on dense grids. features (B, 1, G, G, G), occupancy (B, G, G, G) float -> (B, 64, G, G, G)."""
    sd = {key: value.float() for key, value in state.items()}  # float32: error ~1e-7 here, 4x faster than fp64
    masks = [occupancy.float()]
    for _ in range(4):
        masks.append(F.max_pool3d(masks[-1][:, None], 2)[:, 0])

    def mask(x, level):
        return x * masks[level][:, None]

    def bn(x, name, level):
        view = (1, -1, 1, 1, 1)
        x = (x - sd[f'{name}.bn.running_mean'].view(view)) / torch.sqrt(sd[f'{name}.bn.running_var'].view(view) + 1e-5)
        return mask(x * sd[f'{name}.bn.weight'].view(view) + sd[f'{name}.bn.bias'].view(view), level)

    def conv3(x, name, level):
        return mask(F.conv3d(x, dense_kernel(sd[f'{name}.kernel'], 3), padding=1), level)

    def conv1(x, name, level):
        out = torch.einsum('bcxyz,cd->bdxyz', x, sd[f'{name}.kernel'])
        if f'{name}.bias' in sd:
            out = out + sd[f'{name}.bias'].view(1, -1, 1, 1, 1)
        return mask(out, level)

    def down(x, name, level):  # level = output level
        return mask(F.conv3d(x, dense_kernel(sd[f'{name}.kernel'], 2), stride=2), level)

    def up(x, name, level):  # level = output level
        return mask(F.conv_transpose3d(x, dense_kernel(sd[f'{name}.kernel'], 2, transposed=True), stride=2), level)

    def block(x, name, level):
        out = torch.relu(bn(conv3(x, f'{name}.conv1', level), f'{name}.norm1', level))
        out = bn(conv3(out, f'{name}.conv2', level), f'{name}.norm2', level)
        if f'{name}.downsample.0.kernel' in sd:
            x = bn(conv1(x, f'{name}.downsample.0', level), f'{name}.downsample.1', level)
        return torch.relu(out + x)

    def layer(x, name, count, level):
        for i in range(count):
            x = block(x, f'{name}.{i}', level)
        return x

    out = torch.relu(bn(conv3(mask(features.float(), 0), 'conv0p1s1', 0), 'bn0', 0))
    skips = [out]
    for level, (conv_name, bn_name, block_name, _, _, count) in enumerate(ENCODER, start=1):
        out = torch.relu(bn(down(out, conv_name, level), bn_name, level))
        out = layer(out, block_name, count, level)
        skips.append(out)
    for i, (conv_name, bn_name, block_name, _, _, _, count) in enumerate(DECODER):
        level = 3 - i
        out = torch.relu(bn(up(out, conv_name, level), bn_name, level))
        out = layer(torch.cat([out, skips[level]], dim=1), block_name, count, level)
    out = conv1(out, 'final', 0)
    return out / out.norm(dim=1, keepdim=True).clamp(min=1e-30)


def random_grid_voxels(batch, count, seed):
    """(M, 4) int64 cells [b, i, j, k] in [0, GRID)^3, `count` per batch item, random row order; (M, 1) features."""
    gen = torch.Generator().manual_seed(seed)
    cells = []
    for b in range(batch):
        flat = torch.randperm(GRID ** 3, generator=gen)[:count]
        ijk = torch.stack([flat // GRID ** 2, (flat // GRID) % GRID, flat % GRID], 1)
        cells.append(torch.cat([torch.full((count, 1), b), ijk], 1))
    cells = torch.cat(cells)
    cells = cells[torch.randperm(cells.shape[0], generator=gen)]
    return cells, torch.rand(cells.shape[0], 1, generator=gen)


@pytest.fixture(scope='module')
def me_state():
    return random_me_state_dict(seed=0)


@pytest.fixture(scope='module')
def checkpoint_path(me_state, tmp_path_factory):
    return save_checkpoint(me_state, tmp_path_factory.mktemp('seal') / 'seal.pt')


@pytest.fixture(scope='module')
def loaded_model(me_state, checkpoint_path):
    model = Res16UNet34C()
    report = load_me_checkpoint(model, checkpoint_path)
    assert report.stripped == {'model_points.': len(me_state)}
    assert len(report.ignored) == 2 and not report.unexpected and not report.defaulted
    assert len(report.loaded) == len(me_state)
    return model.eval()


@pytest.mark.parametrize('batch', [1, 2])
def test_whole_network_matches_dense_reference(loaded_model, me_state, batch):
    cells, feats = random_grid_voxels(batch, 300, seed=batch)
    # shift by multiples of 16 (the coarsest stride): negative coordinates, same parent cells as the dense grid
    coords = cells + torch.tensor([0, -GRID, 2 * GRID, 0])
    with torch.no_grad():
        out = loaded_model(SparseTensor.from_coords(feats, coords))
    assert torch.equal(out.coords, coords) and out.features.shape == (cells.shape[0], 64)

    dense_in = torch.zeros(batch, 1, GRID, GRID, GRID)
    occupancy = torch.zeros(batch, GRID, GRID, GRID)
    dense_in[cells[:, 0], :, cells[:, 1], cells[:, 2], cells[:, 3]] = feats
    occupancy[cells[:, 0], cells[:, 1], cells[:, 2], cells[:, 3]] = 1
    dense_out = dense_res16unet34c(me_state, dense_in, occupancy)
    expected = dense_out[cells[:, 0], :, cells[:, 1], cells[:, 2], cells[:, 3]]
    assert torch.allclose(out.features, expected, atol=1e-4)
    assert torch.allclose(out.features.norm(dim=1), torch.ones(cells.shape[0]), atol=1e-5)


def test_output_follows_input_rows(loaded_model):
    cells, feats = random_grid_voxels(2, 200, seed=5)
    perm = torch.randperm(cells.shape[0], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = loaded_model(SparseTensor.from_coords(feats, cells)).features
        out_perm = loaded_model(SparseTensor.from_coords(feats[perm], cells[perm])).features
    assert torch.allclose(out[perm], out_perm, atol=1e-5)


# ---------------------------------------------------------------------------------------- checkpoint loading
def test_loader_accepts_wrappers_and_mixed_prefixes(me_state, loaded_model):
    reference = loaded_model.state_dict()
    mixed = {(f'module.{k}' if i % 3 == 0 else f'encoder.{k}' if i % 3 == 1 else k): v
             for i, (k, v) in enumerate(me_state.items())}
    model = Res16UNet34C()
    for wrapped in (me_state, {'model': mixed}, {'state_dict': {'model_images.x': torch.zeros(1), **mixed}}):
        for parameter in model.parameters():
            torch.nn.init.zeros_(parameter)
        report = load_me_checkpoint(model, wrapped)
        assert set(report.stripped) <= {'module.', 'encoder.'}
        for key, value in model.state_dict().items():
            assert torch.equal(value, reference[key]), key
    # without num_batches_tracked (eval does not use it): defaulted, listed
    report = load_me_checkpoint(model, {k: v for k, v in me_state.items() if 'num_batches' not in k})
    assert len(report.defaulted) == sum('num_batches' in k for k in me_state)


def test_loader_errors_name_file_and_keys(me_state, tmp_path):
    model = Res16UNet34C()
    missing = dict(me_state)
    del missing['block3.1.conv2.kernel']
    missing['block9.0.conv1.kernel'] = torch.zeros(27, 2, 2)
    path = save_checkpoint(missing, tmp_path / 'missing.pt')
    with pytest.raises(MECheckpointError) as err:
        load_me_checkpoint(model, path)
    message = str(err.value)
    assert str(path) in message and 'block3.1.conv2.kernel' in message
    assert 'unexpected' in message and 'model_points.block9.0.conv1.kernel' in message

    wrong = dict(me_state)
    wrong['block4.2.conv1.kernel'] = torch.zeros(27, 128, 256)
    wrong['bn0.bn.running_var'] = torch.ones(31)
    wrong['final.bias'] = torch.zeros(2, 32)  # right size, wrong shape
    with pytest.raises(MECheckpointError) as err:
        load_me_checkpoint(model, {'state_dict': {f'model_points.{k}': v for k, v in wrong.items()}})
    message = str(err.value)
    assert 'model_points.block4.2.conv1.kernel: (27, 128, 256)' in message
    assert 'model_points.bn0.bn.running_var' in message and 'model_points.final.bias' in message
    assert '0 missing, 3 shape-mismatched' in message

    with pytest.raises(FileNotFoundError, match='nope.pt'):
        load_me_checkpoint(model, tmp_path / 'nope.pt')
    twice = {'conv0p1s1.kernel': me_state['conv0p1s1.kernel'], 'model.conv0p1s1.kernel': me_state['conv0p1s1.kernel']}
    with pytest.raises(MECheckpointError, match='both map to'):
        load_me_checkpoint(model, twice)


# ------------------------------------------------------------------------------------------------- the teacher
def random_points(n, seed):
    rng = np.random.default_rng(seed)
    points = np.zeros((n, 5), dtype=np.float32)
    points[:, :3] = rng.uniform(-2.0, 2.0, size=(n, 3))
    points[: n // 4, :3] = points[n // 4: 2 * (n // 4), :3] + 0.01  # many points sharing voxels
    points[:, 3] = rng.uniform(0, 255, size=n)
    points[:, 4] = rng.uniform(0, 1, size=n)
    return points


def teacher_cfg(**overrides):
    cfg = EasyDict(NAME='seal_minkunet', VOXEL_SIZE=[0.2, 0.2, 0.2], INTENSITY_COLUMN=3, INTENSITY_SCALE=255.0,
                   DEVICE='cpu', NUM_FEATURES=64)
    cfg.update(overrides)
    return cfg


def test_voxelize_points_mean_intensity_brute_force():
    points = random_points(500, seed=1)
    coords, feats, inverse = voxelize_points(points, [0.2, 0.2, 0.2], 3, 255.0)
    groups = {}
    for i, p in enumerate(points):
        key = (0,) + tuple(int(np.floor(np.float64(v) / 0.2)) for v in p[:3])
        groups.setdefault(key, []).append(p[3] / 255.0)
    assert coords.shape[0] == len(groups)
    for row, key in enumerate(map(tuple, coords.tolist())):
        assert feats[row, 0].item() == pytest.approx(np.mean(groups[key]), abs=1e-6)
    assert [tuple(coords[r].tolist()) for r in inverse.tolist()] == \
        [(0,) + tuple(int(np.floor(np.float64(v) / 0.2)) for v in p[:3]) for p in points]


def test_teacher_per_point_features(loaded_model):
    teacher = SealMinkUNetTeacher.from_model(loaded_model, teacher_cfg())
    assert teacher.name == 'seal_minkunet' and teacher.num_features == 64 and not teacher.needs_point_labels
    points = random_points(1200, seed=2)
    features = teacher(points)
    assert features.shape == (1200, 64) and features.dtype == np.float32
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    # independent reference: brute-force voxels in a different (reversed) row order, mapped back by coordinates
    voxel_of = [(0,) + tuple(int(np.floor(np.float64(v) / 0.2)) for v in p[:3]) for p in points]
    voxels = sorted(set(voxel_of), reverse=True)
    mean_intensity = [np.mean([points[i, 3] / 255.0 for i in range(len(points)) if voxel_of[i] == v]) for v in voxels]
    with torch.no_grad():
        out = loaded_model(SparseTensor.from_coords(torch.tensor(mean_intensity, dtype=torch.float32).view(-1, 1),
                                                    torch.tensor(voxels))).features.numpy()
    row_of = {v: i for i, v in enumerate(voxels)}
    assert np.allclose(features, out[[row_of[v] for v in voxel_of]], atol=1e-5)
    # same voxel -> same feature; permuting points permutes rows identically
    first = {}
    for i, v in enumerate(voxel_of):
        assert np.array_equal(features[i], features[first.setdefault(v, i)])
    perm = np.random.default_rng(3).permutation(len(points))
    assert np.array_equal(teacher(points[perm]), features[perm])
    assert teacher(points[:0]).shape == (0, 64)


def test_teacher_from_checkpoint_config(checkpoint_path, loaded_model, tmp_path):
    path = checkpoint_path
    teacher = SealMinkUNetTeacher(teacher_cfg(CHECKPOINT=str(path)))
    assert teacher.load_report.source == str(path)
    points = random_points(300, seed=4)
    expected = SealMinkUNetTeacher.from_model(loaded_model, teacher_cfg())(points)
    assert np.allclose(teacher(points), expected, atol=1e-6)
    with pytest.raises(ConfigError, match='CHECKPOINT'):
        SealMinkUNetTeacher(teacher_cfg())
    with pytest.raises(FileNotFoundError, match='absent.pt'):
        SealMinkUNetTeacher(teacher_cfg(CHECKPOINT=str(tmp_path / 'absent.pt')))
    with pytest.raises(NotImplementedError, match='spconv'):
        SealMinkUNetTeacher(teacher_cfg(CHECKPOINT=str(path), BACKEND='spconv'))
    with pytest.raises(ValueError, match='points must be'):
        teacher(np.zeros((4, 3), dtype=np.float32))
