"""Projection of 3-D Gaussians to a pinhole camera (the geometric half of `pcdet.ops.gaussian_splatting`).

Conventions (see docs/GAUSSIAN_SPLATTING.md):
  * quaternions are (w, x, y, z) and need not be unit length (they are normalised here);
  * scales are linear standard deviations in metres along the Gaussian's local axes (pass `exp(log_scales)` when
    optimising in log space), so the 3-D covariance is Sigma = R S S^T R^T with S = diag(scales);
  * the camera frame is nuScenes / OpenCV: x right, y down, z forward; `camera_from_world` (4, 4) maps world
    points to that frame and K (3, 3) maps camera points to pixels, pixel (u, v) = (column, row) with integer
    coordinates at pixel centres (as the nuScenes devkit's `view_points`);
  * the 2-D covariance is the EWA / 3DGS local affine approximation Sigma' = J W Sigma W^T J^T + dilation * I.
"""
import math

import torch

# Compositing skips alpha < 1/255 (3DGS); the screen-space extent is the exact region where alpha can reach it.
ALPHA_THRESHOLD = 1.0 / 255.0


def quaternion_to_rotation_matrix(quats):
    """Rotation matrices of (w, x, y, z) quaternions.

    Args:
        quats: (N, 4) quaternions, any non-zero length (normalised here).
    Returns:
        (N, 3, 3) rotation matrices R with R @ v rotating local vectors into the world frame.
    """
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def covariance_3d(quats, scales):
    """World-frame covariances Sigma = R S S^T R^T.

    Args:
        quats: (N, 4) (w, x, y, z) quaternions.
        scales: (N, 3) positive standard deviations along the local axes (linear, not log).
    Returns:
        (N, 3, 3) symmetric positive semi-definite covariances.
    """
    m = quaternion_to_rotation_matrix(quats) * scales[:, None, :]  # R S: column i is scale_i * axis_i
    return m @ m.transpose(-1, -2)


def perspective_jacobian(points_cam, K):
    """Jacobian of the pixel projection (u, v) = (K p)[:2] / (K p)[2] with respect to the camera point p.

    Args:
        points_cam: (N, 3) camera-frame points with z > 0.
        K: (3, 3) intrinsics (skew allowed; last row [0, 0, 1]).
    Returns:
        uv: (N, 2) pixel coordinates; jacobian: (N, 2, 3) d(u, v) / d(x, y, z).
    """
    q = points_cam @ K.transpose(0, 1)  # (N, 3) homogeneous pixel coordinates
    uv = q[:, :2] / q[:, 2:3]
    # d(q_i / q_2)/dp = (K_i - (q_i / q_2) K_2) / q_2: no clamping of off-screen means (3DGS clamps the
    # tangent to 1.3x the field of view); this only matters for Gaussians centred well outside the image.
    jacobian = (K[None, :2, :] - uv[:, :, None] * K[None, 2:3, :]) / q[:, 2, None, None]
    return uv, jacobian


def footprint_extent(cov2d, opacities, alpha_threshold=ALPHA_THRESHOLD):
    """Half sizes of the axis-aligned box holding every pixel where a Gaussian's alpha reaches the threshold.

    alpha = opacity * exp(-0.5 d^T Sigma'^-1 d) >= t  <=>  d^T Sigma'^-1 d <= k^2 with k^2 = 2 ln(opacity / t)
    (k <= 3.33 for opacity <= 1), and that ellipse spans +-k sqrt(Sigma'_xx) in u and +-k sqrt(Sigma'_yy) in v.
    Using this exact extent instead of a fixed 3 sigma radius makes the box a pure acceleration structure: the
    rendered image does not depend on tile or chunk sizes.

    Args:
        cov2d: (N, 2, 2) screen covariances (px^2); opacities: (N,) in [0, 1].
    Returns:
        (N, 2) half extents (u, v) in pixels, with a small safety margin; NaN-free, zero where opacity < threshold.
    """
    k_sq = 2.0 * torch.log(torch.clamp(opacities / alpha_threshold, min=1.0))
    variances = torch.stack([cov2d[:, 0, 0], cov2d[:, 1, 1]], dim=-1).clamp(min=0)
    # Rounding in the per-pixel test must never fall outside the box: pad by a relative and an absolute epsilon.
    return torch.sqrt(k_sq[:, None] * variances) * (1.0 + 1e-6) + 1e-3


def project_gaussians(means, quats, scales, opacities, camera_from_world, K, width, height, near=0.01,
                      dilation=0.3, alpha_threshold=ALPHA_THRESHOLD):
    """Project world-frame Gaussians to screen space.

    Args:
        means: (N, 3) world-frame centres; quats: (N, 4) (w, x, y, z); scales: (N, 3) linear std devs;
        opacities: (N,) in [0, 1]; camera_from_world: (4, 4); K: (3, 3); width, height: image size in pixels;
        near: Gaussians with camera depth z <= near are culled; dilation: px^2 added to the diagonal of the
        2-D covariance (3DGS low-pass filter, 0.3).
    Returns:
        dict with
          uv: (N, 2) projected centres (pixel coordinates, integer = pixel centre);
          cov2d: (N, 2, 2) screen covariances; conic: (N, 3) inverse covariance entries (a, b, c) of
          [[a, b], [b, c]]; depth: (N,) camera z of the means;
          extent: (N, 2) half box sizes (no gradient), zero for culled Gaussians;
          visible: (N,) bool, in front of the near plane, opaque enough and with a box overlapping the image.
        Culled Gaussians still carry finite (but meaningless) uv / conic values so that autograd never sees NaN.
    """
    rotation = camera_from_world[:3, :3]
    points_cam = means @ rotation.transpose(0, 1) + camera_from_world[:3, 3]
    depth = points_cam[:, 2]
    in_front = depth > near
    # Culled Gaussians get a dummy depth so that 1/z stays finite; their outputs are masked out anyway.
    safe_points = torch.where(in_front[:, None], points_cam, points_cam.new_tensor([0.0, 0.0, 1.0]))
    uv, jacobian = perspective_jacobian(safe_points, K)
    cov_cam = rotation @ covariance_3d(quats, scales) @ rotation.transpose(0, 1)
    cov2d = jacobian @ cov_cam @ jacobian.transpose(-1, -2)
    cov2d = cov2d + dilation * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    conic = torch.stack([c, -b, a], dim=-1) / det[:, None]
    with torch.no_grad():
        extent = footprint_extent(cov2d, opacities, alpha_threshold)
        overlaps = ((uv[:, 0] + extent[:, 0] >= 0) & (uv[:, 0] - extent[:, 0] <= width - 1)
                    & (uv[:, 1] + extent[:, 1] >= 0) & (uv[:, 1] - extent[:, 1] <= height - 1))
        visible = in_front & (opacities >= alpha_threshold) & (det > 0) & overlaps & torch.isfinite(uv).all(-1)
        extent = torch.where(visible[:, None], extent, torch.zeros_like(extent))
    return {'uv': uv, 'cov2d': cov2d, 'conic': conic, 'depth': depth, 'extent': extent, 'visible': visible}


def largest_eigenvalue_radius(cov2d, sigmas=3.0):
    """The 3DGS screen radius ceil(sigmas * sqrt(lambda_max)) of 2-D covariances, for reporting / comparison.

    Args:
        cov2d: (N, 2, 2). Returns: (N,) radii in pixels (float tensor of integers).
    """
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    mid = 0.5 * (a + c)
    lambda_max = mid + torch.sqrt(torch.clamp(mid * mid - (a * c - b * b), min=0))
    return torch.ceil(sigmas * torch.sqrt(lambda_max))


def max_extent_sigmas():
    """k for opacity 1: the widest footprint relative to sigma, sqrt(2 ln 255) ~ 3.33."""
    return math.sqrt(2.0 * math.log(1.0 / ALPHA_THRESHOLD))
