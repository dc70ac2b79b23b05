"""Losses of the Gaussian rendering pretext (GaussianRenderPretrain; docs/GAUSSIAN_SPLATTING.md).

    ssim(x, y) -> scalar                       mean SSIM of (N, C, H, W) images in [0, 1] (3DGS: 11 x 11 Gaussian
                                               window, sigma 1.5, zero padding, C1 = 0.01^2, C2 = 0.03^2)
    rgb_loss(pred, target, ssim_weight)        (1 - l) L1 + l (1 - SSIM)  (3DGS, l = 0.2)
    expected_depth(depth_sum, alpha)           depth_sum / max(alpha, ALPHA_FLOOR): the alpha-normalised depth
    silog_loss(pred, target, valid, lam)       sqrt(mean d^2 - lam (mean d)^2), d = log pred - log target over the
                                               valid pixels (Eigen et al.; GaussTR's depth term)
    depth_loss(pred, target, covered, ...)     SiLog + mean |pred - target| over the pixels with a LiDAR depth (> 0)
                                               that the render covers (`covered`: alpha >= ALPHA_FLOOR)
    feature_cosine_loss(pred, target)          mean over pixels of 1 - cos(pred, target) (channel dim 1)
Every function returns a 0-d tensor; an empty selection (no valid pixel) gives 0 connected to the graph.
"""
import torch
import torch.nn.functional as F

# Below this accumulated opacity a pixel has no depth of its own: expected_depth divides by the floor instead of by
# ~0, and the depth loss leaves the pixel out. Kept in, an uncovered pixel's depth (~0, log ~ -16) would enter
# SiLog's mean log error and pull every covered pixel's depth nearer, with no gradient to cover the pixel itself;
# coverage is the RGB and feature terms' job.
ALPHA_FLOOR = 1e-2
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2


def gaussian_window(size=11, sigma=1.5, dtype=torch.float32, device=None):
    """(size, size) normalised 2-D Gaussian window."""
    offsets = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    profile = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    profile = profile / profile.sum()
    return profile[:, None] * profile[None, :]


def ssim(x, y, window_size=11, sigma=1.5):
    """Mean SSIM map of x, y (N, C, H, W) (module doc)."""
    channels = x.shape[1]
    window = gaussian_window(window_size, sigma, x.dtype, x.device).expand(channels, 1, window_size, window_size)

    def blur(image):
        return F.conv2d(image, window, padding=window_size // 2, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / \
        ((mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
    return value.mean()


def rgb_loss(pred, target, ssim_weight=0.2):
    """pred, target (N, 3, H, W) in [0, 1]."""
    l1 = (pred - target).abs().mean()
    if ssim_weight <= 0:
        return l1
    return (1 - ssim_weight) * l1 + ssim_weight * (1 - ssim(pred, target))


def expected_depth(depth_sum, alpha):
    """Alpha-normalised depth of the compositing sums (render_gaussians' depth / alpha), same shape."""
    return depth_sum / alpha.clamp_min(ALPHA_FLOOR)


def silog_loss(pred, target, valid, lam=0.85, eps=1e-6):
    if not bool(valid.any()):
        return pred.sum() * 0.0
    d = torch.log(pred[valid].clamp_min(eps)) - torch.log(target[valid].clamp_min(eps))
    # clamp: round-off can make the variance-like term slightly negative when every d is equal
    return torch.sqrt((d.square().mean() - lam * d.mean().square()).clamp_min(eps))


def depth_loss(pred, target, covered, silog_weight=1.0, lam=0.85):
    """pred, target (...) depths in metres; target 0 = no LiDAR depth; covered (...) bool, the pixels the render
    covers (alpha >= ALPHA_FLOOR). Only pixels with both enter either term."""
    valid = (target > 0) & covered
    if not bool(valid.any()):
        return pred.sum() * 0.0
    l1 = (pred[valid] - target[valid]).abs().mean()
    return l1 + silog_weight * silog_loss(pred, target, valid, lam)


def feature_cosine_loss(pred, target, eps=1e-8):
    """pred, target (N, C, H, W): mean over the N H W pixels of 1 - cosine similarity."""
    return (1 - F.cosine_similarity(pred, target, dim=1, eps=eps)).mean()

