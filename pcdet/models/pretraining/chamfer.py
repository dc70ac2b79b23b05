"""Weighted per-voxel chamfer distance (spec §2.7 L_pts), replacing `pytorch3d.loss.chamfer_distance`.

`L = (1 / Σ_v w_v) Σ_v w_v [ mean_{p∈pred_v} min_{q∈gt_v} |p-q|² + mean_{q∈gt_v} min_{p∈pred_v} |p-q|² ]`
(squared L2, point_reduction "mean", batch reduction over Σ weights, as pytorch3d with `weights`).

Implementation: only voxels with weight > 0 are gathered. The nearest neighbours are found without autograd from
the (n, Np, Ng) matrix `|p|² + |q|² - 2 p·q` (one batched matmul, no (n, Np, Ng, 3) difference tensor), then the
distances to the chosen neighbours are recomputed exactly as `|p - q|²` with autograd. The gradient is the one of
the min (all of it to the selected neighbour); in exact near-ties the matmul form may select a different but
equally near neighbour (difference at float round-off level).
"""
import torch


def _nearest_sq_dist(src, dst):
    """(n, S) exact squared distance from every point of `src` (n, S, 3) to its nearest point of `dst` (n, T, 3)."""
    with torch.no_grad():
        cross = torch.bmm(src.detach(), dst.detach().transpose(1, 2))
        approx = (src.detach() ** 2).sum(-1).unsqueeze(2) + (dst.detach() ** 2).sum(-1).unsqueeze(1) - 2.0 * cross
        nearest = approx.argmin(dim=2)
    matched = torch.gather(dst, 1, nearest.unsqueeze(-1).expand(-1, -1, dst.shape[-1]))
    return ((src - matched) ** 2).sum(-1)


def masked_chamfer_distance(pred, gt, weights):
    """Weighted mean over voxels of the bidirectional chamfer distance between predicted and target point sets.

    Args:
        pred: (N, Np, 3) float predicted points per voxel. gt: (N, Ng, 3) float target points per voxel.
        weights: (N,) float non-negative voxel weights (the I²Mask mask as {0, 1}).
    Returns:
        scalar tensor: Σ_v w_v (mean_p min_q |p-q|² + mean_q min_p |p-q|²) / Σ_v w_v; `pred.sum() * 0` (0 with a
        graph) when no weight is positive.
    """
    if pred.dim() != 3 or gt.dim() != 3 or pred.shape[0] != gt.shape[0] or pred.shape[2] != gt.shape[2]:
        raise ValueError(f'masked_chamfer_distance: need pred (N, Np, C) and gt (N, Ng, C) with equal N and C, got '
                         f'{tuple(pred.shape)} and {tuple(gt.shape)}')
    if weights.shape != pred.shape[:1]:
        raise ValueError(f'masked_chamfer_distance: weights must be (N,) = ({pred.shape[0]},), '
                         f'got {tuple(weights.shape)}')
    keep = torch.nonzero(weights > 0, as_tuple=True)[0]
    if keep.numel() == 0:
        return pred.sum() * 0
    p = pred.index_select(0, keep)
    g = gt.index_select(0, keep).to(p.dtype)
    w = weights.index_select(0, keep).to(p.dtype)
    per_voxel = _nearest_sq_dist(p, g).mean(dim=1) + _nearest_sq_dist(g, p).mean(dim=1)
    return (w * per_voxel).sum() / w.sum()
