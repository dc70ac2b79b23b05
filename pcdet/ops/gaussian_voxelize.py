"""Splatting of 3-D Gaussians into a dense voxel grid (the occupancy read-out of GaussTR; `GaussianOccHead`).

Gaussian i (mean mu_i (3,), quaternion q_i (w, x, y, z), per-axis standard deviations s_i (3,), opacity o_i,
value vector v_i (E,), sample b_i) contributes to every voxel centre c of its sample with
    d_i(c)^2 = (c - mu_i)^T Sigma_i^-1 (c - mu_i),      Sigma_i = R_i S_i S_i^T R_i^T (`covariance_3d`)
    w_i(c)   = o_i exp(-d_i(c)^2 / 2)                    if d_i(c) <= cutoff_sigmas, else 0
and the grid holds
    density(c) = sum_i w_i(c)
    values(c)  = sum_i w_i(c) v_i / (density(c) + eps)   (the density-weighted mean; exactly 0 where no Gaussian
                                                          reaches c)
Voxel (x, y, z) of the grid has its centre at grid_min + ((x, y, z) + 0.5) * voxel_size; axes are x, y, z
(the occupancy GT's order), the outputs are (B, X, Y, Z) and (B, E, X, Y, Z).

Choices:
  * Sigma^-1 = R S^-2 R^T is `covariance_3d(quats, 1 / scales)` (no matrix inverse: exact and well conditioned
    for the thin Gaussians a scale range allows).
  * Enumeration (memory bound, no dense G x voxels matrix): the ellipsoid d <= k (k = cutoff_sigmas) lies inside
    the axis-aligned box mu +- k sqrt(diag Sigma) (its exact projection on each axis), so Gaussian i can only reach
    voxel indices j_a in [ceil((mu_a - r_a - min_a) / v_a - 1/2), floor((mu_a + r_a - min_a) / v_a - 1/2)] with
    r_a = k sqrt(Sigma_aa): at most floor(2 r_a / v_a) + 1 of them. Every Gaussian of the call enumerates the
    same offsets 0 .. D_a - 1 from its own first index (clamped to >= 0), with D_a = floor(2 max_i r_a,i / v_a) + 1
    (the cap on voxels per axis, from the widest Gaussian of the call, itself <= k * the largest scale; callers
    bound the scales, so D_a stays small) and at most the grid size. The box is a pure acceleration structure:
    pairs outside the grid or beyond the cutoff are dropped, so the result does not depend on D_a or on chunking.
  * Gaussians are processed `chunk` (Gaussian, voxel) pairs at a time (Gaussians per step = max(1, chunk //
    (D_x D_y D_z))); only the pairs inside the cutoff are expanded to E values and accumulated with
    `index_add` into flat (B X Y Z) buffers. The index arithmetic runs without gradient; weights and values are
    differentiable with respect to means, quaternions, scales, opacities and values (the cutoff itself is a
    measure-zero discontinuity).

    voxelize_gaussians(means (G, 3), quats (G, 4), scales (G, 3), opacities (G,), values (G, E),
                       batch_index (G,) long, batch_size, grid_shape (X, Y, Z), grid_min (3,), voxel_size (3,),
                       cutoff_sigmas=3.0, chunk=2**20, eps=1e-6) -> (density (B, X, Y, Z), values (B, E, X, Y, Z))
"""
import torch

from .gaussian_projection import covariance_3d


def voxel_offsets_per_axis(radius, voxel_size, grid_shape):
    """D_a = floor(2 r_a / v_a) + 1 (at most the grid size): offsets that cover any box of half size r_a."""
    counts = torch.floor(2.0 * radius / voxel_size).long() + 1
    return [max(1, min(int(c), int(n))) for c, n in zip(counts.tolist(), grid_shape)]


def voxelize_gaussians(means, quats, scales, opacities, values, batch_index, batch_size, grid_shape, grid_min,
                       voxel_size, cutoff_sigmas=3.0, chunk=2 ** 20, eps=1e-6):
    """Density and density-weighted mean values of Gaussians on a voxel grid (module docstring).

    Args:
        means (G, 3), quats (G, 4) (w, x, y, z), scales (G, 3) linear standard deviations, opacities (G,),
        values (G, E), batch_index (G,) long in [0, batch_size); grid_shape (X, Y, Z); grid_min (3,) metric corner
        of voxel (0, 0, 0); voxel_size (3,); cutoff_sigmas: Mahalanobis cutoff k; chunk: (Gaussian, voxel) pairs
        per step; eps: added to the density in the weighted mean.
    Returns:
        density (B, X, Y, Z), values (B, E, X, Y, Z), in the dtype of `means`.
    """
    dtype, device = means.dtype, means.device
    num_values = values.shape[1]
    grid_shape = [int(v) for v in grid_shape]
    nx, ny, nz = grid_shape
    num_cells = int(batch_size) * nx * ny * nz
    grid_min = torch.as_tensor(grid_min, dtype=dtype, device=device)
    voxel_size = torch.as_tensor(voxel_size, dtype=dtype, device=device)
    density = means.new_zeros(num_cells)
    weighted = means.new_zeros((num_cells, num_values))
    if means.shape[0] == 0:
        return (density.view(batch_size, nx, ny, nz),
                weighted.view(batch_size, nx, ny, nz, num_values).permute(0, 4, 1, 2, 3).contiguous())

    precision = covariance_3d(quats, 1.0 / scales)                  # Sigma^-1 = R S^-2 R^T
    with torch.no_grad():
        radius = cutoff_sigmas * torch.sqrt(torch.diagonal(covariance_3d(quats, scales), dim1=-2, dim2=-1))
        # First reachable index per axis, clamped to the grid: the window then never needs more than the grid size.
        first = torch.ceil((means - radius - grid_min) / voxel_size - 0.5).long().clamp(min=0)     # (G, 3)
        counts = voxel_offsets_per_axis(radius.max(dim=0).values, voxel_size, grid_shape)
        axes = [torch.arange(n, device=device) for n in counts]
        offsets = torch.stack(torch.meshgrid(*axes, indexing='ij'), dim=-1).view(-1, 3)   # (D, 3)
        upper = torch.tensor(grid_shape, device=device)
    per_step = max(1, int(chunk) // offsets.shape[0])
    cutoff_sq = float(cutoff_sigmas) ** 2

    for start in range(0, means.shape[0], per_step):
        stop = min(start + per_step, means.shape[0])
        with torch.no_grad():
            index = first[start:stop, None, :] + offsets[None]                            # (g, D, 3)
            inside = ((index >= 0) & (index < upper)).all(dim=-1)
            gauss, slot = torch.nonzero(inside, as_tuple=True)
            index = index[gauss, slot]                                                    # (P, 3)
            gauss = gauss + start
        centre = grid_min + (index.to(dtype) + 0.5) * voxel_size
        delta = centre - means[gauss]
        mahalanobis_sq = torch.einsum('pi,pij,pj->p', delta, precision[gauss], delta)
        keep = mahalanobis_sq <= cutoff_sq
        gauss, index, mahalanobis_sq = gauss[keep], index[keep], mahalanobis_sq[keep]
        weight = opacities[gauss] * torch.exp(-0.5 * mahalanobis_sq)
        with torch.no_grad():
            cell = ((batch_index[gauss] * nx + index[:, 0]) * ny + index[:, 1]) * nz + index[:, 2]
        density = density.index_add(0, cell, weight)
        weighted = weighted.index_add(0, cell, weight[:, None] * values[gauss])

    # Where no Gaussian reaches (density 0, weighted 0) divide by 1, not eps: 0 even with eps = 0, no NaN gradient.
    denominator = torch.where(density > 0, density + eps, torch.ones_like(density))
    mean_values = weighted / denominator[:, None]
    return (density.view(batch_size, nx, ny, nz),
            mean_values.view(batch_size, nx, ny, nz, num_values).permute(0, 4, 1, 2, 3).contiguous())
