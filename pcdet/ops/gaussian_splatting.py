"""Differentiable splatting of 3-D Gaussians to a pinhole camera: colour, feature, depth and opacity maps.

`render_gaussians` is the entry point. The pure PyTorch path (any device) projects the Gaussians
(`pcdet.ops.gaussian_projection`), sorts them by camera depth and composites them front to back per pixel:

    alpha_i = min(alpha_max, opacity_i * exp(-0.5 d_i^T Sigma'_i^-1 d_i)),  skipped when < 1/255
    T_i     = prod_{j < i} (1 - alpha_j),   out = sum_i T_i alpha_i value_i,   opacity map = sum_i T_i alpha_i

with the 3DGS early termination: Gaussian i (and every later one) is left out of a pixel once
T_i (1 - alpha_i) < min_transmittance. Pixels are processed in square tiles and each tile's Gaussians (those
whose exact footprint box overlaps it) in depth-ordered chunks, the transmittance carried from chunk to chunk,
so the working set is O(tile^2 x chunk) instead of O(pixels x Gaussians). With autograd, each chunk is
checkpointed: the backward keeps only a chunk's inputs and recomputes its (tile^2 x chunk) intermediates.
The optional `gsplat` package is the CUDA fast path. Formulas and conventions: docs/GAUSSIAN_SPLATTING.md.
"""
import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from pcdet.ops.fast_paths import fast_ops_disabled
from pcdet.ops.gaussian_projection import ALPHA_THRESHOLD, project_gaussians

BACKENDS = ('auto', 'torch', 'gsplat')


def composite_chunk(pixels, transmittance, params, alpha_max=0.99, alpha_threshold=ALPHA_THRESHOLD,
                    min_transmittance=1e-4):
    """Front-to-back compositing of one depth-ordered chunk of Gaussians over a set of pixels.

    Args:
        pixels: (P, 2) pixel coordinates (u, v); transmittance: (P,) transmittance of every Gaussian in front of
            this chunk, counting those cut off by early termination (so a pixel is finished iff it is below
            `min_transmittance`);
        params: (G, 6 + C) rows [u, v, conic a, conic b, conic c, opacity, value_1 .. value_C] sorted near to far.
    Returns:
        contribution: (P, C + 1) sum_i T_i alpha_i [value_i, 1] over the chunk; transmittance: (P,) after it.
    """
    uv, conic, opacity, values = params[:, :2], params[:, 2:5], params[:, 5], params[:, 6:]
    delta = pixels[:, None, :] - uv[None]  # (P, G, 2)
    du, dv = delta[..., 0], delta[..., 1]
    power = 0.5 * (conic[:, 0] * du * du + conic[:, 2] * dv * dv) + conic[:, 1] * du * dv
    raw = opacity * torch.exp(-power)
    alpha = torch.where(raw >= alpha_threshold, torch.clamp(raw, max=alpha_max), torch.zeros_like(raw))
    after = transmittance[:, None] * torch.cumprod(1.0 - alpha, dim=1)  # (P, G) T_{i+1}
    before = torch.cat([transmittance[:, None], after[:, :-1]], dim=1)  # (P, G) T_i
    weight = before * alpha
    if min_transmittance > 0:
        # T is non-increasing, so this keeps a prefix of the depth order: exactly the 3DGS "done" rule.
        weight = torch.where(after >= min_transmittance, weight, torch.zeros_like(weight))
    contribution = torch.cat([weight @ values, weight.sum(dim=1, keepdim=True)], dim=1)
    return contribution, after[:, -1]


def composite_tile(pixels, params, chunk, use_checkpoint, **rules):
    """Composite a tile's depth-ordered Gaussians chunk by chunk, carrying the transmittance.

    Args:
        pixels: (P, 2); params: (G, 6 + C) as in `composite_chunk`; chunk: Gaussians per step;
        use_checkpoint: recompute each chunk in the backward instead of keeping its (P, chunk) intermediates;
        rules: alpha_max, alpha_threshold, min_transmittance.
    Returns:
        (P, C + 1) composited values and accumulated alpha.
    """
    transmittance = pixels.new_ones(pixels.shape[0])
    total = pixels.new_zeros(pixels.shape[0], params.shape[1] - 5)
    min_transmittance = rules.get('min_transmittance', 1e-4)
    for start in range(0, params.shape[0], chunk):
        block = params[start:start + chunk]
        if use_checkpoint:
            contribution, transmittance = activation_checkpoint(
                composite_chunk, pixels, transmittance, block, use_reentrant=False, **rules)
        else:
            contribution, transmittance = composite_chunk(pixels, transmittance, block, **rules)
        total = total + contribution
        if min_transmittance > 0 and not bool((transmittance >= min_transmittance).any()):
            break  # every pixel of the tile is finished: later chunks would add exact zeros
    return total


def _pixel_grid(x0, x1, y0, y1, like):
    """(P, 2) pixel centres (u, v) of the rectangle [x0, x1) x [y0, y1), row-major."""
    v, u = torch.meshgrid(torch.arange(y0, y1, dtype=like.dtype, device=like.device),
                          torch.arange(x0, x1, dtype=like.dtype, device=like.device), indexing='ij')
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


def rasterize_sorted(params, box_lo, box_hi, width, height, tile=16, chunk=1024, use_checkpoint=False, **rules):
    """Tile loop: composite depth-sorted screen-space Gaussians into an image.

    Args:
        params: (G, 6 + C) as in `composite_chunk`, sorted near to far; box_lo, box_hi: (G, 2) footprint boxes
            (u, v) in pixels; width, height: image size; tile: tile side in pixels; chunk: Gaussians per step.
    Returns:
        (height, width, C + 1) composited values, the last channel being the accumulated alpha.
    """
    rows = []
    for y0 in range(0, height, tile):
        y1 = min(y0 + tile, height)
        row = []
        for x0 in range(0, width, tile):
            x1 = min(x0 + tile, width)
            pixels = _pixel_grid(x0, x1, y0, y1, params)
            hit = ((box_hi[:, 0] >= x0) & (box_lo[:, 0] <= x1 - 1)
                   & (box_hi[:, 1] >= y0) & (box_lo[:, 1] <= y1 - 1))
            ids = torch.nonzero(hit).squeeze(1)  # ascending, so still in depth order
            if ids.numel() == 0:
                out = params.new_zeros(pixels.shape[0], params.shape[1] - 5)
            else:
                out = composite_tile(pixels, params[ids], chunk, use_checkpoint, **rules)
            row.append(out.reshape(y1 - y0, x1 - x0, -1))
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)


def gsplat_available():
    """True when the optional `gsplat` package imports."""
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def _render_gsplat(means, quats, scales, opacities, values, camera_from_world, K, width, height, near, dilation,
                   tile):
    """gsplat.rasterization with this module's conventions; returns (H, W, C + 1) values + accumulated depth, (H, W)."""
    import gsplat

    # gsplat samples pixel i at continuous coordinate i + 0.5; here pixel centres are integers.
    K_shifted = K + K.new_tensor([[0.0, 0.0, 0.5], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    render, alphas, _ = gsplat.rasterization(
        means, quats, scales, opacities, values, camera_from_world[None], K_shifted[None], width, height,
        near_plane=near, eps2d=dilation, packed=False, tile_size=tile, render_mode='RGB+D',
        rasterize_mode='classic')
    return render[0], alphas[0, ..., 0]


def _select_backend(backend, device):
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend == 'gsplat':
        if not gsplat_available():
            raise ImportError("backend='gsplat' needs the optional gsplat package (pip install gsplat); "
                              "use backend='torch' or 'auto'")
        if device.type != 'cuda':
            raise ValueError(f"backend='gsplat' runs on CUDA tensors only, got {device}")
        return 'gsplat'
    if backend == 'auto' and device.type == 'cuda' and not fast_ops_disabled() and gsplat_available():
        return 'gsplat'
    return 'torch'


def render_gaussians(means, quats, scales, opacities, colors, features, camera_from_world, K, width, height,
                     near=0.01, dilation=0.3, tile=16, chunk=1024, background=None, alpha_max=0.99,
                     min_transmittance=1e-4, checkpoint=None, backend='auto'):
    """Render colour, feature, depth and opacity maps of 3-D Gaussians seen by one pinhole camera.

    Args:
        means: (N, 3) world-frame centres; quats: (N, 4) (w, x, y, z), normalised here; scales: (N, 3) linear
            standard deviations (metres); opacities: (N,) in [0, 1]; colors: (N, 3); features: (N, D) or None;
        camera_from_world: (4, 4) world -> camera (x right, y down, z forward); K: (3, 3) intrinsics with
            integer pixel coordinates at pixel centres; width, height: image size;
        near: depth culling plane (z > near is kept); dilation: px^2 added to the 2-D covariance;
        tile: tile side (px); chunk: Gaussians composited per step (memory ~ tile^2 x chunk);
        background: (3,) colour added to rgb as (1 - alpha) * background, or None;
        alpha_max, min_transmittance: 3DGS clamp (0.99) and early-termination threshold (1e-4; 0 disables);
        checkpoint: recompute chunks in the backward (default: whenever autograd is recording);
        backend: 'torch', 'gsplat' (CUDA, optional package) or 'auto' (gsplat when importable, on CUDA and
            fast ops are not disabled by PCDET_DISABLE_FAST_OPS=1; else torch).
    Returns:
        dict of rgb (H, W, 3), features (H, W, D) (D = 0 without features), depth (H, W) (accumulated camera z,
        sum_i T_i alpha_i z_i; divide by alpha for the expected depth), alpha (H, W) (1 - final transmittance),
        all on the device and dtype of `means`.
    """
    num_features = 0 if features is None else features.shape[1]
    if features is None:
        features = means.new_zeros(means.shape[0], 0)
    if _select_backend(backend, means.device) == 'gsplat':
        values = torch.cat([colors, features], dim=1)
        render, alpha = _render_gsplat(means, quats, scales, opacities, values, camera_from_world, K, width,
                                       height, near, dilation, tile)
        rgb, feats, depth = render[..., :3], render[..., 3:3 + num_features], render[..., -1]
    else:
        proj = project_gaussians(means, quats, scales, opacities, camera_from_world, K, width, height, near=near,
                                 dilation=dilation)
        visible = torch.nonzero(proj['visible']).squeeze(1)
        order = visible[torch.argsort(proj['depth'][visible].detach(), stable=True)]
        params = torch.cat([proj['uv'], proj['conic'], opacities[:, None], colors, features,
                            proj['depth'][:, None]], dim=1)[order]
        extent = proj['extent'][order]
        uv = proj['uv'][order].detach()
        if checkpoint is None:
            checkpoint = torch.is_grad_enabled() and params.requires_grad
        image = rasterize_sorted(params, uv - extent, uv + extent, width, height, tile=tile, chunk=chunk,
                                 use_checkpoint=checkpoint, alpha_max=alpha_max, min_transmittance=min_transmittance)
        rgb, feats, depth, alpha = (image[..., :3], image[..., 3:3 + num_features], image[..., -2],
                                    image[..., -1])
    if background is not None:
        rgb = rgb + (1.0 - alpha)[..., None] * background
    return {'rgb': rgb, 'features': feats, 'depth': depth, 'alpha': alpha}
