"""DSVT window partition and equal-size set partition (spec §3.3, §3.9), pure PyTorch on any device.

Upstream builds the per-window order of voxels with the `ingroup_inds` CUDA op (an atomic counter, nondeterministic
order) followed by two sorts. The sets only depend on "the rank of a voxel inside its window along the y-major /
x-major order", so here that rank is read directly off one stable sort per order: sorting the key
`batch_win_inds * max_voxel + in_window_key` groups voxels by window (windows ascending, as upstream's contiguous
window ids) and orders them inside the window, so the voxel of rank r in window w sits at sorted position
`window_start[w] + r`. The result is bit-identical to upstream's sets and masks, deterministic, and needs no
compiled op. `rank_in_group` is the drop-in replacement of `ingroup_inds` itself (stable argsort).

Coordinates: voxel coords are `(N, 4)` long `[b, z, y, x]`; shapes and window shapes are `(x, y, z)`;
`coors_in_win` is `(N, 3)` `[z, y, x]` as upstream.

Functions:
    get_window_coors(coors, sparse_shape, window_shape, shift) -> batch_win_inds (N,), coors_in_win (N, 3)
    rank_in_group(group_ids) -> (N,) index of each element among its group, in input order (ingroup_inds)
    get_continous_inds(setnum_per_win) -> set_win_inds (S,), set_inds_in_win (S,)
    select_set_ranks(voxelnum_per_win, set_size) -> set_win_inds (S,), ranks (S, set_size)
    get_set_single_shift(batch_win_inds, coors_in_win, window_shape, set_size) -> set_voxel_inds (2, S, set_size)
    get_set_mask(set_voxel_inds) -> (2, S, set_size) bool, True = duplicate slot (key padding)
    set_to_voxel_index(set_voxel_inds, num_voxels) -> (2, N) flat (set, slot) position of each voxel's first slot
"""
import math

import torch


@torch.no_grad()
def get_window_coors(coors, sparse_shape, window_shape, shift):
    """Window partition of one shift.

    Args:
        coors: (N, 4) long [b, z, y, x]. sparse_shape, window_shape, shift: (x, y, z) ints (resolved by
            `shapes.stage_shifts`, so the "z shift forced to 0 when window z == sparse z" rule is already applied).
    Returns:
        batch_win_inds (N,) long: `b * MW + wx * (MWy * MWz) + wy * MWz + wz` with `MW* = ceil(sparse / window) + 1`
        (+1 for the shift); coors_in_win (N, 3) long [z, y, x] inside the window.
    """
    win_x, win_y, win_z = (int(v) for v in window_shape)
    max_win_x, max_win_y, max_win_z = (int(math.ceil(s / w)) + 1 for s, w in zip(sparse_shape, window_shape))
    coors = coors.long()
    x = coors[:, 3] + int(shift[0])
    y = coors[:, 2] + int(shift[1])
    z = coors[:, 1] + int(shift[2])
    batch_win_inds = (coors[:, 0] * (max_win_x * max_win_y * max_win_z) + (x // win_x) * (max_win_y * max_win_z)
                      + (y // win_y) * max_win_z + z // win_z)
    coors_in_win = torch.stack((z % win_z, y % win_y, x % win_x), dim=-1)
    return batch_win_inds, coors_in_win


@torch.no_grad()
def rank_in_group(group_ids):
    """Deterministic replacement of the `ingroup_inds` CUDA op: for each element, how many elements of the same
    group precede it in input order (stable argsort; any group ids >= 0)."""
    group_ids = group_ids.long()
    order = torch.argsort(group_ids, stable=True)
    sorted_ids = group_ids[order]
    positions = torch.arange(group_ids.numel(), device=group_ids.device)
    is_start = torch.ones_like(sorted_ids, dtype=torch.bool)
    is_start[1:] = sorted_ids[1:] != sorted_ids[:-1]
    start_of_run = torch.cummax(torch.where(is_start, positions, torch.zeros_like(positions)), dim=0)[0]
    rank = torch.empty_like(group_ids)
    rank[order] = positions - start_of_run
    return rank


@torch.no_grad()
def get_continous_inds(setnum_per_win):
    """For every set (windows in order, sets in order inside a window): its window and its index in the window.
    (Upstream name, spelling kept.) `setnum_per_win` (W,) long -> set_win_inds (S,), set_inds_in_win (S,)."""
    setnum_per_win = setnum_per_win.long()
    num_sets = int(setnum_per_win.sum())  # one host sync: the number of sets is the output size
    device = setnum_per_win.device
    set_win_inds = torch.repeat_interleave(torch.arange(setnum_per_win.numel(), device=device), setnum_per_win,
                                           output_size=num_sets)
    first_set_of_win = torch.cumsum(setnum_per_win, 0) - setnum_per_win
    set_inds_in_win = torch.arange(num_sets, device=device) - first_set_of_win[set_win_inds]
    return set_win_inds, set_inds_in_win


@torch.no_grad()
def select_set_ranks(voxelnum_per_win, set_size):
    """Eq. 3 of the DSVT paper: which in-window ranks fill each set.

    A window with n voxels gets `S = ceil(n / set_size)` sets; slot t of its k-th set takes rank
    `floor((k * set_size + t) * n / (S * set_size))`, spreading the S * set_size slots evenly over the n voxels
    (upstream computes this in float64; exact integer floor division is identical for these magnitudes). When
    n < S * set_size some ranks repeat, always consecutively inside one set.
    Returns set_win_inds (S_total,) and ranks (S_total, set_size), both long.
    """
    voxelnum_per_win = voxelnum_per_win.long()
    setnum_per_win = torch.div(voxelnum_per_win + set_size - 1, set_size, rounding_mode='floor')
    set_win_inds, set_inds_in_win = get_continous_inds(setnum_per_win)
    slots = set_inds_in_win[:, None] * set_size + torch.arange(set_size, device=voxelnum_per_win.device)
    ranks = torch.div(slots * voxelnum_per_win[set_win_inds][:, None],
                      (setnum_per_win[set_win_inds] * set_size)[:, None], rounding_mode='floor')
    return set_win_inds, ranks


@torch.no_grad()
def get_set_single_shift(batch_win_inds, coors_in_win, window_shape, set_size):
    """Equal-size set partition of one window partition, in both orders.

    Args:
        batch_win_inds: (N,) long window id of each voxel (from `get_window_coors`).
        coors_in_win: (N, 3) long [z, y, x] in-window coordinates. window_shape: (x, y, z) of this shift's window.
        set_size: voxels per set (tau).
    Returns:
        set_voxel_inds (2, S, set_size) long voxel indices: [0] from the y-major order (key y*wx*wz + x*wz + z,
        sets are strips along x), [1] from the x-major order (key x*wy*wz + y*wz + z, "rotated sets").
    """
    win_x, win_y, win_z = (int(v) for v in window_shape)
    max_voxel = win_x * win_y * win_z
    z_in, y_in, x_in = coors_in_win.long().unbind(1)
    window_base = batch_win_inds.long() * max_voxel
    order_y = torch.sort(window_base + y_in * (win_x * win_z) + x_in * win_z + z_in, stable=True)[1]
    order_x = torch.sort(window_base + x_in * (win_y * win_z) + y_in * win_z + z_in, stable=True)[1]
    voxelnum_per_win = torch.unique_consecutive(batch_win_inds[order_y], return_counts=True)[1]
    set_win_inds, ranks = select_set_ranks(voxelnum_per_win, set_size)
    win_start = torch.cumsum(voxelnum_per_win, 0) - voxelnum_per_win
    sorted_pos = win_start[set_win_inds][:, None] + ranks
    return torch.stack((order_y[sorted_pos], order_x[sorted_pos]), dim=0)


@torch.no_grad()
def get_set_mask(set_voxel_inds):
    """Key-padding mask of the sets: True where a slot repeats the previous slot's voxel (slot 0 is never masked).
    Duplicates are always consecutive, so every voxel has exactly one unmasked slot per order."""
    mask = torch.zeros_like(set_voxel_inds, dtype=torch.bool)
    mask[..., 1:] = set_voxel_inds[..., 1:] == set_voxel_inds[..., :-1]
    return mask


@torch.no_grad()
def set_to_voxel_index(set_voxel_inds, num_voxels):
    """For each order and voxel, the flat `(set, slot)` position of the voxel's first occurrence: (2, N) long.

    Upstream maps set outputs back to voxels with `torch.unique` + flip + scatter ("first occurrence"); this is the
    same choice computed once per partition with a deterministic `scatter_reduce('amin')` (no host sync). Every
    voxel occurs in some set, so no entry is left at the fill value.
    """
    flat = set_voxel_inds.flatten(1)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(flat)
    first = torch.full((flat.shape[0], num_voxels), flat.shape[1], dtype=torch.long, device=flat.device)
    return first.scatter_reduce_(1, flat, positions, reduce='amin', include_self=False)
