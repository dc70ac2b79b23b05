"""DSVT window / set partition and pooling indices against brute-force Python references (spec §3.3, §3.9).

Acceptance test of the pure-PyTorch rank-based set partition: the sets and masks equal a per-window Python
reference that sorts each window's voxels and applies Eq. 3 in float64 as upstream does, on random voxels for
several seeds, window shapes, shifts and set sizes, including windows with fewer voxels than a set and windows with
exactly k * set_size voxels. A second reference ports upstream's algorithm literally, with the `ingroup_inds` CUDA
op emulated by a random (atomic-order) numbering, to show the result does not depend on that order.
"""
import math
from collections import defaultdict

import pytest
import torch

from pcdet.models.backbones_3d.dsvt.pooling import get_pooling_index
from pcdet.models.backbones_3d.dsvt.set_partition import (
    get_set_mask,
    get_set_single_shift,
    get_window_coors,
    rank_in_group,
    set_to_voxel_index,
)


def random_voxels(seed, sparse_shape, num, batch_size=2):
    """(N, 4) unique long coords [b, z, y, x] inside sparse_shape (x, y, z), in random order."""
    gen = torch.Generator().manual_seed(seed)
    nx, ny, nz = sparse_shape
    total = batch_size * nz * ny * nx
    keys = torch.randperm(total, generator=gen)[:num]
    return torch.stack((keys // (nz * ny * nx), (keys // (ny * nx)) % nz, (keys // nx) % ny, keys % nx), dim=1)


def brute_force_partition(coords, sparse_shape, window, shift, set_size):
    """Python reference: window ids, in-window coords, sets (y-major, x-major) and masks."""
    wx, wy, wz = window
    mwx, mwy, mwz = (math.ceil(s / w) + 1 for s, w in zip(sparse_shape, window))
    windows = defaultdict(list)
    win_ids, in_win = [], []
    for idx, (b, z, y, x) in enumerate(coords.tolist()):
        xs, ys, zs = x + shift[0], y + shift[1], z + shift[2]
        wid = b * (mwx * mwy * mwz) + (xs // wx) * (mwy * mwz) + (ys // wy) * mwz + zs // wz
        local = (zs % wz, ys % wy, xs % wx)
        windows[wid].append((idx, local))
        win_ids.append(wid)
        in_win.append(local)
    sets_y, sets_x, masks, sizes = [], [], [], []
    for wid in sorted(windows):
        members = windows[wid]
        n = len(members)
        sizes.append(n)
        by_y = [idx for idx, _ in sorted(members, key=lambda m: (m[1][1], m[1][2], m[1][0]))]  # y, x, z
        by_x = [idx for idx, _ in sorted(members, key=lambda m: (m[1][2], m[1][1], m[1][0]))]  # x, y, z
        num_sets = -(-n // set_size)
        for k in range(num_sets):
            ranks = [math.floor(float((k * set_size + t) * n) / float(num_sets * set_size)) for t in range(set_size)]
            sets_y.append([by_y[r] for r in ranks])
            sets_x.append([by_x[r] for r in ranks])
            masks.append([t > 0 and ranks[t] == ranks[t - 1] for t in range(set_size)])
    return win_ids, in_win, sets_y, sets_x, masks, sizes


CASES = [
    # sparse_shape (x, y, z), window (x, y, z), shift (x, y, z), set_size, num voxels
    ((40, 36, 1), (12, 12, 1), (0, 0, 0), 36, 600),
    ((40, 36, 1), (24, 24, 1), (6, 6, 0), 36, 600),
    ((30, 30, 1), (5, 7, 1), (2, 3, 0), 4, 500),
    ((30, 30, 1), (6, 6, 1), (3, 3, 0), 1, 300),
    ((16, 16, 8), (6, 6, 8), (3, 3, 0), 7, 700),
    ((16, 16, 8), (4, 4, 3), (2, 2, 1), 5, 600),
    ((9, 9, 1), (30, 30, 1), (15, 15, 0), 90, 50),   # a window bigger than the grid
]


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('sparse_shape,window,shift,set_size,num', CASES)
def test_set_partition_matches_brute_force(seed, sparse_shape, window, shift, set_size, num):
    coords = random_voxels(seed, sparse_shape, num)
    win_ids, in_win, sets_y, sets_x, masks, _ = brute_force_partition(coords, sparse_shape, window, shift, set_size)

    batch_win_inds, coors_in_win = get_window_coors(coords, sparse_shape, window, shift)
    assert batch_win_inds.tolist() == win_ids
    assert [tuple(c) for c in coors_in_win.tolist()] == in_win

    inds = get_set_single_shift(batch_win_inds, coors_in_win, window, set_size)
    mask = get_set_mask(inds)
    assert inds.shape == (2, len(sets_y), set_size) and inds.dtype == torch.long
    assert inds[0].tolist() == sets_y
    assert inds[1].tolist() == sets_x
    assert mask[0].tolist() == masks and mask[1].tolist() == masks

    # Every voxel has exactly one unmasked slot per order; set_to_voxel_index points at its first slot.
    first = set_to_voxel_index(inds, coords.shape[0])
    for order in range(2):
        unmasked = inds[order][~mask[order]]
        assert sorted(unmasked.tolist()) == list(range(coords.shape[0]))
        flat = inds[order].flatten()
        assert torch.equal(flat[first[order]], torch.arange(coords.shape[0]))
        for pos in torch.randint(0, flat.numel(), (20,)).tolist():
            assert first[order][flat[pos]] <= pos


def test_partition_covers_small_and_exact_multiple_windows():
    """Windows with fewer voxels than a set (duplicates, masked) and with exactly 2 * set_size (no duplicates)."""
    set_size, window, sparse_shape = 6, (4, 4, 1), (12, 4, 1)
    cells = [(0, 0, y, x) for y in range(4) for x in range(3)]               # window 0: 12 = 2 * set_size voxels
    cells += [(0, 0, y, 4 + x) for y, x in [(0, 0), (1, 2), (3, 1)]]          # window 1: 3 < set_size voxels
    cells += [(0, 0, y, 8 + x) for y in range(4) for x in range(4)][:13]     # window 2: 13 voxels -> 3 sets
    coords = torch.tensor(cells)[torch.randperm(len(cells), generator=torch.Generator().manual_seed(3))]
    _, _, sets_y, sets_x, masks, sizes = brute_force_partition(coords, sparse_shape, window, (0, 0, 0), set_size)
    assert sizes == [12, 3, 13]
    batch_win_inds, coors_in_win = get_window_coors(coords, sparse_shape, window, (0, 0, 0))
    inds = get_set_single_shift(batch_win_inds, coors_in_win, window, set_size)
    mask = get_set_mask(inds)
    assert inds[0].tolist() == sets_y and inds[1].tolist() == sets_x and mask[0].tolist() == masks
    assert inds.shape[1] == 2 + 1 + 3
    assert not mask[0, :2].any()                                  # exact multiple: no duplicate slot
    assert mask[0, 2].tolist() == [False, True, False, True, False, True]   # 3 voxels over 6 slots
    for order in range(2):
        voxels_in_small_set = inds[order, 2][~mask[order, 2]]
        assert len(set(voxels_in_small_set.tolist())) == 3


def upstream_set_single_shift(batch_win_inds, coors_in_win, window, set_size, seed):
    """Literal port of upstream `get_set_single_shift` with `ingroup_inds` replaced by a random valid numbering."""
    wx, wy, wz = window
    max_voxel = wx * wy * wz
    contiguous_win_inds = torch.unique(batch_win_inds, return_inverse=True)[1]
    voxelnum_per_win = torch.bincount(contiguous_win_inds)
    win_num = voxelnum_per_win.shape[0]
    setnum_per_win = torch.ceil(voxelnum_per_win / set_size).long()
    set_win_inds = torch.repeat_interleave(torch.arange(win_num), setnum_per_win)
    set_inds_in_win = torch.cat([torch.arange(n) for n in setnum_per_win.tolist()])
    offset_idx = set_inds_in_win[:, None].repeat(1, set_size) * set_size
    base_select_idx = (offset_idx + torch.arange(set_size)) * voxelnum_per_win[set_win_inds][:, None]
    base_select_idx = base_select_idx.double() / (setnum_per_win[set_win_inds] * set_size)[:, None].double()
    select_idx = torch.floor(base_select_idx) + set_win_inds.view(-1, 1) * max_voxel

    gen = torch.Generator().manual_seed(seed)   # atomicAdd order: any permutation inside each window
    shuffled = torch.randperm(contiguous_win_inds.numel(), generator=gen)
    inner_voxel_inds = torch.empty_like(contiguous_win_inds)
    inner_voxel_inds[shuffled] = rank_in_group(contiguous_win_inds[shuffled])
    global_voxel_inds = contiguous_win_inds * max_voxel + inner_voxel_inds
    _, order1 = torch.sort(global_voxel_inds)
    results = []
    for key in (coors_in_win[:, 1] * wx * wz + coors_in_win[:, 2] * wz + coors_in_win[:, 0],
                coors_in_win[:, 2] * wy * wz + coors_in_win[:, 1] * wz + coors_in_win[:, 0]):
        _, order2 = torch.sort(contiguous_win_inds * max_voxel + key)
        inner_sorted = -torch.ones_like(inner_voxel_inds)
        inner_sorted.scatter_(dim=0, index=order2, src=inner_voxel_inds[order1])
        padding = -torch.ones(win_num * max_voxel, dtype=torch.long)
        padding[inner_sorted + max_voxel * contiguous_win_inds] = torch.arange(inner_sorted.shape[0])
        results.append(padding[select_idx.long()])
    return torch.stack(results, dim=0)


@pytest.mark.parametrize('seed', [0, 1])
def test_rank_partition_equals_upstream_algorithm_for_any_ingroup_order(seed):
    sparse_shape, window, shift, set_size = (40, 36, 1), (12, 12, 1), (6, 6, 0), 8
    coords = random_voxels(seed, sparse_shape, 700)
    batch_win_inds, coors_in_win = get_window_coors(coords, sparse_shape, window, shift)
    ours = get_set_single_shift(batch_win_inds, coors_in_win, window, set_size)
    for atomic_seed in range(3):
        assert torch.equal(ours, upstream_set_single_shift(batch_win_inds, coors_in_win, window, set_size,
                                                           atomic_seed))


def test_rank_in_group_is_stable_count_of_predecessors():
    groups = torch.tensor([3, 1, 3, 3, 0, 1, 7, 3])
    seen, expected = defaultdict(int), []
    for g in groups.tolist():
        expected.append(seen[g])
        seen[g] += 1
    assert rank_in_group(groups).tolist() == expected
    assert rank_in_group(torch.zeros(0, dtype=torch.long)).numel() == 0


def test_empty_input_gives_no_sets():
    coords = torch.zeros((0, 4), dtype=torch.long)
    batch_win_inds, coors_in_win = get_window_coors(coords, (10, 10, 1), (4, 4, 1), (0, 0, 0))
    inds = get_set_single_shift(batch_win_inds, coors_in_win, (4, 4, 1), 5)
    assert inds.shape == (2, 0, 5)


@pytest.mark.parametrize('sparse_shape,stride', [((16, 16, 8), (1, 1, 4)), ((15, 13, 5), (2, 3, 2)),
                                                 ((16, 16, 2), (1, 1, 2))])
def test_pooling_index_matches_brute_force(sparse_shape, stride):
    coords = random_voxels(5, sparse_shape, 400)
    mapping, index_in_pool, pooled = get_pooling_index(coords, sparse_shape, stride)
    px, py, pz = stride
    nx, ny, nz = (math.ceil(s / p) for s, p in zip(sparse_shape, stride))
    pool_id = {}
    for b, z, y, x in coords.tolist():
        pid = b * nx * ny * nz + (x // px) * ny * nz + (y // py) * nz + z // pz
        pool_id[pid] = (b, z // pz, y // py, x // px)
    ordered = sorted(pool_id)
    assert pooled.tolist() == [list(pool_id[p]) for p in ordered]
    for i, (b, z, y, x) in enumerate(coords.tolist()):
        pid = b * nx * ny * nz + (x // px) * ny * nz + (y // py) * nz + z // pz
        assert mapping[i] == ordered.index(pid)
        assert index_in_pool[i] == (x % px) * py * pz + (y % py) * pz + z % pz
    # Each (pool, slot) holds at most one voxel.
    assert torch.unique(mapping * (px * py * pz) + index_in_pool).numel() == coords.shape[0]
