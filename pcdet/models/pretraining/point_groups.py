"""Per-voxel point groups and per-voxel mean teacher features (spec §2.3 RECOMMENDED, §2.7, Appendix C).

`group_points_per_voxel` replaces `sst_ops.group_inner_inds`: stable sort of the points by voxel, keep the first
`max_points` members of each voxel in input order, and fill the remaining slots cyclically (slot i -> member
i mod count). The CUDA op takes members in arbitrary (atomic) order; here the order is the input order, so the
result is deterministic. `voxel_mean_features` is the per-voxel Seal target `t_v = mean_{p∈v} s_p`.
`teacher_point_validity` says which teacher rows are features at all (the pretexts' shared "no feature" rule).

Both accept point->voxel indices < 0 for points that belong to no voxel (dropped by the VFE); such points are
ignored. Indices >= num_voxels raise.
"""
import torch
import torch.nn.functional as F


def teacher_point_validity(point_features):
    """(P,) bool: the point has a teacher feature, i.e. its row is finite and not all zero (the teachers' "no feature"
    marker, e.g. the image teacher's rows of points no camera sees). Only such points enter the voxel mean, so a
    voxel's target is not diluted by points without a feature (and a NaN row never spreads)."""
    return torch.isfinite(point_features).all(dim=1) & (point_features != 0).any(dim=1)


def _check_index(point_voxel_index, num_points, num_voxels, name):
    if point_voxel_index.dim() != 1 or point_voxel_index.shape[0] != num_points:
        raise ValueError(f'{name}: point_voxel_index must be (P,) = ({num_points},), '
                         f'got {tuple(point_voxel_index.shape)}')
    if point_voxel_index.numel() and int(point_voxel_index.max()) >= num_voxels:
        raise ValueError(f'{name}: point_voxel_index max {int(point_voxel_index.max())} >= num_voxels {num_voxels}')


def group_points_per_voxel(points_xyz, point_voxel_index, num_voxels, max_points=64):
    """Up to `max_points` points per voxel, cyclically repeated to fill all slots.

    Args:
        points_xyz: (P, C) float point coordinates (C = 3 usually). point_voxel_index: (P,) long voxel of each
            point (< 0 = no voxel, ignored). num_voxels: V. max_points: slots per voxel (M).
    Returns:
        grouped (V, M, C): slot i of voxel v holds member `i mod min(c_v, M)` of v (members in input order);
        zeros for empty voxels. count (V,) long: number of points of each voxel (c_v, not truncated to M).
    """
    _check_index(point_voxel_index, points_xyz.shape[0], num_voxels, 'group_points_per_voxel')
    index = point_voxel_index.long()
    kept = torch.nonzero(index >= 0, as_tuple=True)[0]
    index = index[kept]
    order = kept[torch.argsort(index, stable=True)]
    count = torch.bincount(index, minlength=num_voxels)[:num_voxels]
    starts = torch.cumsum(count, dim=0) - count
    if order.numel() == 0:
        return points_xyz.new_zeros((num_voxels, max_points, points_xyz.shape[1])), count
    usable = count.clamp(max=max_points)
    slots = torch.arange(max_points, device=points_xyz.device)
    member = slots.unsqueeze(0) % usable.clamp(min=1).unsqueeze(1)
    # Empty voxels point at a valid row (zeroed below) so the gather needs no branch.
    position = (starts.unsqueeze(1) + member).clamp(max=order.numel() - 1)
    grouped = points_xyz[order[position]]
    grouped = grouped * (count > 0).view(-1, 1, 1).to(grouped.dtype)
    return grouped, count


def voxel_mean_features(point_features, point_voxel_index, num_voxels, point_valid=None, normalize=False):
    """Per-voxel mean of per-point teacher features (spec §2.3 RECOMMENDED; decision D7 for `normalize`).

    Args:
        point_features: (P, D) float per-point features s_p. point_voxel_index: (P,) long voxel of each point
            (< 0 = no voxel). num_voxels: V. point_valid: optional (P,) bool, only these points contribute.
        normalize: L2-normalise each voxel mean (eps-safe: all-zero means stay zero). Default False (as written).
    Returns:
        mean (V, D) float (zeros where no valid point), valid (V,) bool = voxel has >= 1 valid point and a mean
        that is not all-zero.
    """
    _check_index(point_voxel_index, point_features.shape[0], num_voxels, 'voxel_mean_features')
    index = point_voxel_index.long()
    use = index >= 0
    if point_valid is not None:
        if point_valid.shape != index.shape:
            raise ValueError(f'voxel_mean_features: point_valid must be (P,) = ({index.shape[0]},), '
                             f'got {tuple(point_valid.shape)}')
        use = use & point_valid.bool()
    rows = torch.nonzero(use, as_tuple=True)[0]
    index = index[rows]
    feats = point_features[rows]
    sums = point_features.new_zeros((num_voxels, point_features.shape[1])).index_add(0, index, feats)
    counts = torch.bincount(index, minlength=num_voxels)[:num_voxels]
    mean = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
    valid = (counts > 0) & (mean != 0).any(dim=1)
    if normalize:
        mean = F.normalize(mean, dim=1, eps=1e-12)
    return mean, valid
