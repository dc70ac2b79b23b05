"""pcdet.ops.sparse_conv against independent dense references (torch conv3d on zero-filled grids, plain loops).

The dense references build their conv3d weights straight from an ME-layout kernel (K, C_in, C_out) by placing
W_me[j] at the offset `me_kernel_offsets(k)[j]`; the sparse side converts the same kernel with
`me_kernel_to_internal`. A plain-loop definition checks the conv3d construction on a small case.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcdet.ops.sparse_conv import (
    CoordinateIndex,
    SparseConv3d,
    SparseTensor,
    axis_offsets,
    kernel_offsets,
    me_kernel_offsets,
    me_kernel_to_internal,
    me_to_internal_permutation,
    pointwise_conv,
    strided_conv,
    submanifold_conv,
    transposed_conv,
    unique_coords,
)

ATOL = 1e-5


# ------------------------------------------------------------------------------------------------- dense helpers
def random_cells(grid, batch, occupancy, seed):
    """(M, 4) int64 [b, i, j, k] occupied cells of a batch of grid^3 volumes, rows in random order."""
    gen = torch.Generator().manual_seed(seed)
    occupied = torch.rand(batch, grid, grid, grid, generator=gen) < occupancy
    cells = torch.nonzero(occupied)
    return cells[torch.randperm(cells.shape[0], generator=gen)]


def to_sparse_coords(cells, stride, shift):
    """Grid cells -> coords at tensor stride `stride`, shifted by `shift` (3 ints, multiples of 2 * stride)."""
    coords = cells.clone()
    coords[:, 1:] = cells[:, 1:] * stride + torch.tensor(shift)
    return coords


def random_me_kernel(kernel_size, c_in, c_out, gen):
    volume = kernel_size ** 3
    return torch.randn(volume, c_in, c_out, generator=gen) / (volume * c_in) ** 0.5


def dense_weight(me_kernel, kernel_size, transposed=False):
    """conv3d weight (C_out, C_in, k, k, k) (conv_transpose3d: (C_in, C_out, k, k, k)) from an ME kernel."""
    _, c_in, c_out = me_kernel.shape
    low = axis_offsets(kernel_size)[0]
    shape = (c_in, c_out) if transposed else (c_out, c_in)
    weight = torch.zeros(shape + (kernel_size,) * 3, dtype=me_kernel.dtype)
    for j, (ox, oy, oz) in enumerate(me_kernel_offsets(kernel_size).tolist()):
        weight[:, :, ox - low, oy - low, oz - low] = me_kernel[j] if transposed else me_kernel[j].t()
    return weight


def to_dense(features, cells, batch, grid):
    volume = features.new_zeros((batch, features.shape[1], grid, grid, grid))
    volume[cells[:, 0], :, cells[:, 1], cells[:, 2], cells[:, 3]] = features
    return volume


def gather(volume, cells):
    return volume[cells[:, 0], :, cells[:, 1], cells[:, 2], cells[:, 3]]


def dense_submanifold(me_kernel, kernel_size, features, cells, batch, grid):
    """ME stride-1 conv evaluated at the occupied cells: conv3d on the zero-filled volume."""
    out = F.conv3d(to_dense(features, cells, batch, grid), dense_weight(me_kernel, kernel_size),
                   padding=(kernel_size - 1) // 2)
    return gather(out, cells)


def dense_strided(me_kernel, features, cells, batch, grid, coarse_cells):
    """ME k2 s2 conv at the occupied coarse cells: conv3d stride 2."""
    out = F.conv3d(to_dense(features, cells, batch, grid), dense_weight(me_kernel, 2), stride=2)
    return gather(out, coarse_cells)


def dense_transposed(me_kernel, coarse_features, coarse_cells, batch, coarse_grid, fine_cells):
    """ME k2 s2 transposed conv at the existing fine cells: conv_transpose3d stride 2."""
    out = F.conv_transpose3d(to_dense(coarse_features, coarse_cells, batch, coarse_grid),
                             dense_weight(me_kernel, 2, transposed=True), stride=2)
    return gather(out, fine_cells)


def coarse_cells_of(cells):
    return torch.unique(torch.cat([cells[:, :1], torch.div(cells[:, 1:], 2, rounding_mode='floor')], 1), dim=0)


# -------------------------------------------------------------------------------------------- plain-loop truth
def loop_submanifold(me_kernel, kernel_size, features, cells):
    rows = {tuple(c): i for i, c in enumerate(cells.tolist())}
    out = torch.zeros(cells.shape[0], me_kernel.shape[2], dtype=features.dtype)
    for i, (b, x, y, z) in enumerate(cells.tolist()):
        for j, (ox, oy, oz) in enumerate(me_kernel_offsets(kernel_size).tolist()):
            q = rows.get((b, x + ox, y + oy, z + oz))
            if q is not None:
                out[i] += features[q] @ me_kernel[j]
    return out


def loop_strided(me_kernel, features, cells, coarse_cells):
    rows = {tuple(c): i for i, c in enumerate(cells.tolist())}
    out = torch.zeros(coarse_cells.shape[0], me_kernel.shape[2], dtype=features.dtype)
    for i, (b, x, y, z) in enumerate(coarse_cells.tolist()):
        for j, (ox, oy, oz) in enumerate(me_kernel_offsets(2).tolist()):
            q = rows.get((b, 2 * x + ox, 2 * y + oy, 2 * z + oz))
            if q is not None:
                out[i] += features[q] @ me_kernel[j]
    return out


def loop_transposed(me_kernel, coarse_features, coarse_cells, fine_cells):
    rows = {tuple(c): i for i, c in enumerate(coarse_cells.tolist())}
    me_index = {tuple(o): j for j, o in enumerate(me_kernel_offsets(2).tolist())}
    out = torch.zeros(fine_cells.shape[0], me_kernel.shape[2], dtype=coarse_features.dtype)
    for i, (b, x, y, z) in enumerate(fine_cells.tolist()):
        parent = rows.get((b, x // 2, y // 2, z // 2))
        if parent is not None:
            out[i] = coarse_features[parent] @ me_kernel[me_index[(x % 2, y % 2, z % 2)]]
    return out


# ----------------------------------------------------------------------------------------------- offset orders
def test_me_kernel_offsets_x_fastest():
    offsets = me_kernel_offsets(3)
    assert offsets.shape == (27, 3)
    assert offsets[0].tolist() == [-1, -1, -1]
    assert offsets[1].tolist() == [0, -1, -1]  # x moves first
    assert offsets[3].tolist() == [-1, 0, -1]
    assert offsets[9].tolist() == [-1, -1, 0]
    assert offsets[13].tolist() == [0, 0, 0]
    assert offsets[26].tolist() == [1, 1, 1]
    assert me_kernel_offsets(2).tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0],
                                             [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]
    assert me_kernel_offsets(1).tolist() == [[0, 0, 0]]


def test_internal_order_is_conv3d_flattening():
    """Internal weight[i] at kernel_offsets(k)[i] == row-major flattening of a dense conv3d weight's (kx, ky, kz)."""
    gen = torch.Generator().manual_seed(0)
    for k in (2, 3):
        dense = torch.randn(4, 3, k, k, k, generator=gen)  # (C_out, C_in, kx, ky, kz)
        low = axis_offsets(k)[0]
        internal = torch.stack([dense[:, :, ox - low, oy - low, oz - low].t()
                                for ox, oy, oz in kernel_offsets(k).tolist()])
        assert torch.equal(internal, dense.permute(2, 3, 4, 1, 0).reshape(k ** 3, 3, 4))


def test_me_to_internal_permutation():
    for k in (1, 2, 3, 5):
        perm = me_to_internal_permutation(k)
        assert sorted(perm.tolist()) == list(range(k ** 3))
        assert torch.equal(me_kernel_offsets(k)[perm], kernel_offsets(k))
    me_kernel = torch.arange(27 * 2).view(27, 1, 2).float()
    internal = me_kernel_to_internal(me_kernel, 3)
    # internal row 1 is offset (-1, -1, 0) (z fastest) = ME row 9 (z slowest)
    assert torch.equal(internal[1], me_kernel[9])
    assert torch.equal(me_kernel_to_internal(torch.ones(3, 4), 1), torch.ones(1, 3, 4))
    with pytest.raises(ValueError, match=r'\(27, C_in, C_out\)'):
        me_kernel_to_internal(torch.ones(8, 3, 4), 3)


# -------------------------------------------------------------------------------------------- coordinate index
def test_coordinate_index_and_unique_match_brute_force():
    gen = torch.Generator().manual_seed(1)
    coords = unique_coords(torch.randint(-6, 6, (300, 4), generator=gen))[0]
    coords = coords[torch.randperm(coords.shape[0], generator=gen)]
    rows = {tuple(c): i for i, c in enumerate(coords.tolist())}
    index = CoordinateIndex(coords)
    query = torch.randint(-9, 9, (500, 4), generator=gen)
    expected = [rows.get(tuple(q), -1) for q in query.tolist()]
    assert index.lookup(query).tolist() == expected
    raw = torch.randint(-3, 3, (200, 4), generator=gen)
    unique, inverse = unique_coords(raw)
    assert np.array_equal(unique.numpy(), np.unique(raw.numpy(), axis=0))
    assert torch.equal(unique[inverse], raw)
    with pytest.raises(ValueError, match='duplicate'):
        CoordinateIndex(torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]))
    assert CoordinateIndex(torch.zeros((0, 4), dtype=torch.long)).lookup(query).eq(-1).all()


def test_coords_must_be_multiples_of_stride():
    with pytest.raises(ValueError, match='multiples of the tensor stride 2'):
        SparseTensor.from_coords(torch.zeros(1, 1), torch.tensor([[0, 1, 2, 2]]), tensor_stride=2)


def test_transposed_needs_registered_fine_coords():
    x = SparseTensor.from_coords(torch.ones(1, 2), torch.tensor([[0, 0, 2, 4]]), tensor_stride=2)
    with pytest.raises(KeyError, match='tensor stride 1'):
        transposed_conv(x, torch.ones(8, 2, 3))


# ------------------------------------------------------------------------------------ loop proves the conv3d refs
def test_conv3d_references_match_plain_loops():
    gen = torch.Generator().manual_seed(2)
    cells = random_cells(4, 2, 0.3, seed=2)
    feats = torch.randn(cells.shape[0], 3, generator=gen, dtype=torch.float64)
    for k in (1, 3):
        kernel = random_me_kernel(k, 3, 2, gen).double()
        assert torch.allclose(dense_submanifold(kernel, k, feats, cells, 2, 4),
                              loop_submanifold(kernel, k, feats, cells), atol=1e-12)
    kernel = random_me_kernel(2, 3, 2, gen).double()
    coarse = coarse_cells_of(cells)
    assert torch.allclose(dense_strided(kernel, feats, cells, 2, 4, coarse),
                          loop_strided(kernel, feats, cells, coarse), atol=1e-12)
    coarse_feats = torch.randn(coarse.shape[0], 3, generator=gen, dtype=torch.float64)
    assert torch.allclose(dense_transposed(kernel, coarse_feats, coarse, 2, 2, cells),
                          loop_transposed(kernel, coarse_feats, coarse, cells), atol=1e-12)


# ------------------------------------------------------------------------------------ sparse ops == dense refs
SHIFTS = {1: (-8, 0, 6), 2: (-16, 4, 12)}  # multiples of 2 * stride: negative coordinates, aligned parents


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('kernel_size', [1, 3, 5])
def test_submanifold_conv_matches_dense(stride, kernel_size):
    gen = torch.Generator().manual_seed(10 + kernel_size + stride)
    cells = random_cells(8, 2, 0.15, seed=3 + stride)
    feats = torch.randn(cells.shape[0], 5, generator=gen)
    me_kernel = random_me_kernel(kernel_size, 5, 7, gen)
    bias = torch.randn(7, generator=gen)
    x = SparseTensor.from_coords(feats, to_sparse_coords(cells, stride, SHIFTS[stride]), stride)
    out = submanifold_conv(x, me_kernel_to_internal(me_kernel, kernel_size), bias)
    expected = dense_submanifold(me_kernel, kernel_size, feats, cells, 2, 8) + bias
    assert out.tensor_stride == stride and torch.equal(out.coords, x.coords)
    assert torch.allclose(out.features, expected, atol=ATOL)
    if kernel_size == 1:
        assert torch.allclose(pointwise_conv(x, me_kernel[0], bias).features, expected, atol=ATOL)


@pytest.mark.parametrize('stride', [1, 2])
def test_strided_conv_matches_dense(stride):
    gen = torch.Generator().manual_seed(20 + stride)
    cells = random_cells(8, 2, 0.15, seed=5 + stride)
    feats = torch.randn(cells.shape[0], 5, generator=gen)
    me_kernel = random_me_kernel(2, 5, 7, gen)
    x = SparseTensor.from_coords(feats, to_sparse_coords(cells, stride, SHIFTS[stride]), stride)
    out = strided_conv(x, me_kernel_to_internal(me_kernel, 2))
    assert out.tensor_stride == 2 * stride
    # output coords: unique(floor(c / 2s) * 2s); compare row by row through the coarse grid cells
    shift = torch.tensor(SHIFTS[stride])
    out_cells = out.coords.clone()
    out_cells[:, 1:] = torch.div(out.coords[:, 1:] - shift, 2 * stride, rounding_mode='floor')
    expected_cells = coarse_cells_of(cells)
    assert sorted(map(tuple, out_cells.tolist())) == sorted(map(tuple, expected_cells.tolist()))
    assert torch.allclose(out.features, dense_strided(me_kernel, feats, cells, 2, 8, out_cells), atol=ATOL)


@pytest.mark.parametrize('stride', [1, 2])
def test_transposed_conv_matches_dense(stride):
    gen = torch.Generator().manual_seed(30 + stride)
    cells = random_cells(8, 2, 0.15, seed=7 + stride)
    fine = SparseTensor.from_coords(torch.zeros(cells.shape[0], 5), to_sparse_coords(cells, stride, SHIFTS[stride]),
                                    stride)
    coarse = strided_conv(fine, torch.zeros(8, 5, 5))  # registers the coarse set, as the encoder does
    coarse = coarse.replace(torch.randn(coarse.features.shape[0], 5, generator=gen))
    me_kernel = random_me_kernel(2, 5, 7, gen)
    bias = torch.randn(7, generator=gen)
    out = transposed_conv(coarse, me_kernel_to_internal(me_kernel, 2), bias)
    assert out.tensor_stride == stride and torch.equal(out.coords, fine.coords)  # the fine set, its row order
    shift = torch.tensor(SHIFTS[stride])
    coarse_cells = coarse.coords.clone()
    coarse_cells[:, 1:] = torch.div(coarse.coords[:, 1:] - shift, 2 * stride, rounding_mode='floor')
    expected = dense_transposed(me_kernel, coarse.features, coarse_cells, 2, 4, cells) + bias
    assert torch.allclose(out.features, expected, atol=ATOL)


def test_batches_do_not_mix():
    """Same cells in batch 0 and 1 with different features: each batch's output depends on its own features."""
    gen = torch.Generator().manual_seed(40)
    cells = random_cells(6, 1, 0.3, seed=40)
    both = torch.cat([cells, cells + torch.tensor([1, 0, 0, 0])])
    feats = torch.randn(both.shape[0], 3, generator=gen)
    weight = torch.randn(27, 3, 4, generator=gen)
    out = submanifold_conv(SparseTensor.from_coords(feats, both), weight).features
    alone = submanifold_conv(SparseTensor.from_coords(feats[cells.shape[0]:], cells), weight).features
    assert torch.allclose(out[cells.shape[0]:], alone, atol=ATOL)


def test_module_modes_and_gradients():
    gen = torch.Generator().manual_seed(50)
    cells = random_cells(4, 1, 0.4, seed=50)
    feats = torch.randn(cells.shape[0], 2, generator=gen, dtype=torch.float64, requires_grad=True)
    x = SparseTensor.from_coords(feats, cells)
    convs = [SparseConv3d(2, 3, 3).double(), SparseConv3d(3, 3, 2, stride=2).double(),
             SparseConv3d(3, 2, 2, stride=2, transposed=True).double(), SparseConv3d(2, 2, 1, bias=True).double()]
    assert [c.mode for c in convs] == ['submanifold', 'strided', 'transposed', 'pointwise']

    def run(features):
        out = x.replace(features)
        for conv in convs:
            out = conv(out)
        return out.features

    assert run(feats).shape == (cells.shape[0], 2)
    assert torch.autograd.gradcheck(run, (feats,))
    with pytest.raises(ValueError, match='unsupported sparse conv'):
        SparseConv3d(2, 2, 3, stride=2)
