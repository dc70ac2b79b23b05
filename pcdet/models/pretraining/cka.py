"""Linear centered kernel alignment (CKA, spec §2.8, §2.9), in float64 on the inputs' device.

For row-aligned activations X (n, d1), Y (n, d2) with column-centred Xc, Yc:
`CKA = <vec Xc Xcᵀ, vec Yc Ycᵀ> / (|Xc Xcᵀ|_F |Yc Ycᵀ|_F) = |Ycᵀ Xc|²_F / (|Xcᵀ Xc|_F |Ycᵀ Yc|_F)`.
`linear_cka` uses the feature-space form (O(n d²)), `linear_cka_gram` the Gram form (O(n²), reference for tests).

Decision: a matrix counts as constant (CKA undefined; 0 is returned) when the energy of its centred part is at most
`eps` times its total energy, `|Xc|²_F <= eps |X|²_F` (or X == 0): a relative test, so CKA stays scale-invariant
and centring round-off of a truly constant float input does not produce a meaningless value.
"""
import torch


def _centered_pair(x, y, name):
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f'{name}: need x (n, d1) and y (n, d2) with the same n (row-aligned tokens), '
                         f'got {tuple(x.shape)} and {tuple(y.shape)}')
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    return x, x - x.mean(dim=0, keepdim=True), y, y - y.mean(dim=0, keepdim=True)


def _is_constant(raw, centered, eps):
    """True when the centred part carries at most `eps` of the matrix' energy (or the matrix is empty / zero)."""
    total = (raw * raw).sum()
    return bool(total == 0) or bool((centered * centered).sum() <= eps * total)


def linear_cka(x, y, eps=1e-12):
    """Linear CKA, feature-space form.

    Args:
        x: (n, d1) float, y: (n, d2) float, the same n tokens in the same order. eps: relative constancy tolerance.
    Returns:
        float64 scalar tensor in [0, 1] (up to round-off); 0 when x or y is constant over the rows.
    """
    x, xc, y, yc = _centered_pair(x, y, 'linear_cka')
    if _is_constant(x, xc, eps) or _is_constant(y, yc, eps):
        return torch.zeros((), dtype=torch.float64, device=x.device)
    cross = torch.linalg.matrix_norm(yc.t() @ xc) ** 2
    norm_x = torch.linalg.matrix_norm(xc.t() @ xc)
    norm_y = torch.linalg.matrix_norm(yc.t() @ yc)
    return cross / (norm_x * norm_y)


def linear_cka_gram(x, y, eps=1e-12):
    """Linear CKA, Gram form `<K, L>_F / (|K|_F |L|_F)` with K = Xc Xcᵀ, L = Yc Ycᵀ (O(n²) memory; reference).

    Args / Returns: as `linear_cka`.
    """
    x, xc, y, yc = _centered_pair(x, y, 'linear_cka_gram')
    if _is_constant(x, xc, eps) or _is_constant(y, yc, eps):
        return torch.zeros((), dtype=torch.float64, device=x.device)
    gram_x = xc @ xc.t()
    gram_y = yc @ yc.t()
    return (gram_x * gram_y).sum() / (torch.linalg.matrix_norm(gram_x) * torch.linalg.matrix_norm(gram_y))


def layerwise_cka(feats_a, feats_b):
    """Linear CKA per layer between two lists of row-aligned activations.

    Args:
        feats_a, feats_b: lists of L tensors; layer l pairs feats_a[l] (n_l, d) with feats_b[l] (n_l, d').
    Returns:
        (L,) float64 tensor of `linear_cka(feats_a[l], feats_b[l])` (on the first tensor's device; empty if L = 0).
    """
    if len(feats_a) != len(feats_b):
        raise ValueError(f'layerwise_cka: got {len(feats_a)} and {len(feats_b)} layers; need the same number')
    if not feats_a:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([linear_cka(a, b).to(feats_a[0].device) for a, b in zip(feats_a, feats_b)])
