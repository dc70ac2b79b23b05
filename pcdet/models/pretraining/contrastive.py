"""Contrastive pretraining pure functions (docs/CONTRASTIVE.md): InfoNCE, NT-Xent, superpixel pooling, per-frame
sampling of valid points (validity: `point_groups.teacher_point_validity`, shared with GPICTURE) and the second
augmented view of a point cloud. Pure PyTorch; every function follows its inputs' device and draws its randomness
from torch's global generator (so `--fix_random_seed` reproduces it).

    info_nce(anchors (N, D), candidates (N, D), temperature) -> scalar
        row i of `candidates` is the positive of anchor i, the other rows its negatives (SLidR / PPKT, one direction)
    nt_xent(z_a (B, D), z_b (B, D), temperature) -> scalar
        SimCLR / CrossPoint: 2B anchors, the positive of z_a[i] is z_b[i] and vice versa, the other 2B - 2 rows of
        both views are the negatives
    superpixel_groups(batch_index (P,), superpixel_ids (P,)) -> (segment (P,) long, -1 = none; keys (S, 2) [b, id])
    segment_mean(features (P, D), segment (P,), num_segments) -> (S, D)
    superpixel_pool(features (P, D), batch_index, superpixel_ids) -> ((S, D) means, (S, 2) keys)
    sample_per_frame(valid (P,) bool, batch_index (P,), max_per_frame) -> (M,) long row indices
    augment_view(points (P, 1 + C), batch_size, ...) -> (P, 1 + C): per-sample flip, z rotation, scaling + jitter
"""
import math

import torch
import torch.nn.functional as F


def info_nce(anchors, candidates, temperature):
    """mean_i -log softmax_j(cos(a_i, c_j) / T)[i] over N anchors; both inputs are L2-normalised here.

    Args:
        anchors: (N, D) e.g. projected 3-D point (or superpoint) features.
        candidates: (N, D) the matching 2-D features, row i the positive of anchor i.
        temperature: T > 0.
    Returns:
        scalar tensor (0 for N = 0, still connected to the graph).
    """
    if anchors.shape != candidates.shape:
        raise ValueError(f'info_nce: anchors {tuple(anchors.shape)} and candidates {tuple(candidates.shape)} must '
                         'have the same shape (row i of candidates is the positive of anchor i)')
    if anchors.shape[0] == 0:
        return anchors.sum() * 0.0 + candidates.sum() * 0.0
    logits = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).t() / float(temperature)
    target = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, target)


def nt_xent(z_a, z_b, temperature):
    """NT-Xent (SimCLR, CrossPoint's intra-modal loss) over the 2B embeddings of two views of B samples.

    For anchor k of the stacked z = [z_a; z_b] (L2-normalised), its positive is row (k + B) mod 2B and the
    denominator runs over every other row (itself excluded):
        l_k = -log exp(s_{k,pos} / T) / sum_{j != k} exp(s_{k,j} / T),  loss = mean_k l_k.
    Args: z_a, z_b (B, D); temperature T > 0. Returns a scalar (0 for B = 0).
    """
    if z_a.shape != z_b.shape:
        raise ValueError(f'nt_xent: the two views have shapes {tuple(z_a.shape)} and {tuple(z_b.shape)}')
    num = z_a.shape[0]
    if num == 0:
        return z_a.sum() * 0.0 + z_b.sum() * 0.0
    z = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1)
    logits = z @ z.t() / float(temperature)
    # the self-similarity is not a candidate: -inf drops it from the softmax denominator
    eye = torch.eye(2 * num, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float('-inf'))
    target = (torch.arange(2 * num, device=z.device) + num) % (2 * num)
    return F.cross_entropy(logits, target)


def superpixel_groups(batch_index, superpixel_ids):
    """Group rows by (frame, superpixel id): ids are unique within a frame only, so the frame is part of the key.

    Args:
        batch_index: (P,) integer frame of each row. superpixel_ids: (P,) integer, < 0 = no superpixel.
    Returns:
        segment: (P,) long, the group of each row in [0, S), -1 for rows without a superpixel;
        keys: (S, 2) long [batch index, superpixel id] of each group, sorted by (batch index, id).
    """
    batch_index, superpixel_ids = batch_index.long(), superpixel_ids.long()
    segment = torch.full_like(superpixel_ids, -1)
    valid = superpixel_ids >= 0
    if not bool(valid.any()):
        return segment, superpixel_ids.new_zeros((0, 2))
    stride = int(superpixel_ids[valid].max()) + 1
    packed = batch_index[valid] * stride + superpixel_ids[valid]
    unique, inverse = torch.unique(packed, return_inverse=True)
    segment[valid] = inverse
    keys = torch.stack([unique // stride, unique % stride], dim=1)
    return segment, keys


def segment_mean(features, segment, num_segments):
    """(num_segments, D) mean of the rows of `features` (P, D) per `segment` id; rows with segment < 0 ignored."""
    keep = segment >= 0
    rows, index = features[keep], segment[keep]
    sums = features.new_zeros((num_segments, features.shape[1])).index_add(0, index, rows)
    counts = torch.bincount(index, minlength=num_segments).clamp(min=1).to(features.dtype)
    return sums / counts[:, None]


def superpixel_pool(features, batch_index, superpixel_ids):
    """Mean of `features` (P, D) per (frame, superpixel id) -> ((S, D) means, (S, 2) keys [b, id])."""
    segment, keys = superpixel_groups(batch_index, superpixel_ids)
    return segment_mean(features, segment, keys.shape[0]), keys


def sample_per_frame(valid, batch_index, max_per_frame):
    """Up to `max_per_frame` rows per frame drawn uniformly without replacement among the `valid` rows.

    Capping per frame (not per batch) keeps a dense frame from taking all the pairs of the batch.
    Returns (M,) long row indices, grouped by frame in increasing frame order.
    """
    batch_index = batch_index.long()
    chosen = []
    for b in torch.unique(batch_index[valid]).tolist():
        rows = torch.nonzero(valid & (batch_index == b)).flatten()
        if rows.numel() > max_per_frame:
            order = torch.randperm(rows.numel()).to(rows.device)
            rows = rows[order[:max_per_frame]]
        chosen.append(rows)
    if not chosen:
        return torch.zeros(0, dtype=torch.long, device=valid.device)
    return torch.cat(chosen)


def augment_view(points, batch_size, rotation=math.pi, scale_range=(0.8, 1.2), flip_prob=0.5, jitter_std=0.01,
                 jitter_clip=0.05):
    """Second view of the clouds for the intra-modal loss: per sample, flip (y -> -y and/or x -> -x, each with
    probability `flip_prob`), a rotation about z by U(-rotation, rotation), a scaling by U(scale_range) about the
    origin (the sensor), then per-point Gaussian jitter (std `jitter_std` m, clipped to +-`jitter_clip`).

    Args:
        points: (P, 1 + C) [b, x, y, z, ...]; only x, y, z change, row order and the other columns are kept, so row
            r of the view is the same physical point as row r of the input.
        batch_size: number of samples B (the per-sample draws are B long, whatever frames are present).
    Returns:
        (P, 1 + C) new tensor.
    The per-sample numbers are drawn on the CPU from torch's global generator (identical on every device under one
    seed); the jitter is drawn on the points' device.
    """
    b = points[:, 0].long()
    flip_x = (torch.rand(batch_size) < flip_prob).to(points.device)
    flip_y = (torch.rand(batch_size) < flip_prob).to(points.device)
    angle = ((torch.rand(batch_size) * 2 - 1) * rotation).to(points.device, points.dtype)
    low, high = (float(v) for v in scale_range)
    scale = (low + torch.rand(batch_size) * (high - low)).to(points.device, points.dtype)
    x, y, z = points[:, 1], points[:, 2], points[:, 3]
    x = torch.where(flip_x[b], -x, x)
    y = torch.where(flip_y[b], -y, y)
    cos, sin = torch.cos(angle)[b], torch.sin(angle)[b]
    xyz = torch.stack([cos * x - sin * y, sin * x + cos * y, z], dim=1) * scale[b, None]
    if jitter_std > 0:
        noise = torch.randn(xyz.shape, device=points.device, dtype=points.dtype) * jitter_std
        xyz = xyz + noise.clamp(-jitter_clip, jitter_clip)
    return torch.cat([points[:, :1], xyz, points[:, 4:]], dim=1)
