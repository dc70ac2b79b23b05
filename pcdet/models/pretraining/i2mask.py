"""I²Mask: inter- and intra-class discrimination-guided voxel masking (spec §2.4, §7 Q7), pure PyTorch.

Per sample, the valid voxels' teacher targets (N_b, D) are clustered by k-means (k-means++ init, fixed Lloyd
iterations, seeded by a `torch.Generator`; replaces sklearn's KMeans); the clusters are split greedily into groups
of decreasing mutual cosine distance (`PARTITION`, base ratios `BASE_MASK_RATIO`); each cluster's ratio is
`base(group) * r_c` with the intra-class consistency `r_c = 1 - D_k / max_j D_j`, and a uniformly random subset of
`floor(|C_k| * ratio_k)` members is masked. Everything follows the inputs' device.

Decisions and deviations from the as-written code (spec §2.4 "edge cases", RECOMMENDED):
* k-means: one k-means++ init (plain D² sampling, no sklearn "local trials"), then at most `KMEANS_ITERS` Lloyd
  iterations, stopping early when assignments stop changing; empty clusters keep their previous center. When all
  points coincide (D² sums to 0) the next k-means++ center is drawn uniformly. Returned centers are the member means
  of the returned labels (spec step 2), so labels and centers are consistent. Squared distances use the matmul form
  `|x|² - 2 x·c + |c|²` (as sklearn), fine for the unit-scale teacher features.
* Cosine distance uses `max(|c_i| |c_j|, eps)` in the denominator: a zero-norm center has cosine 0, i.e. distance 1
  (it counts as "distinct"), never NaN.
* Greedy grouping starts from the first combination (instead of "initial max 0"), then replaces it only on a strict
  `>`: identical to the code whenever some subset has a positive mean distance, and never returns "no group".
* Fewer clusters than `sum(PARTITION)`: groups are filled in order with `min(size, remaining)` clusters, the last
  group takes whatever remains (K = 5 with (3, 3, 2) gives sizes 3, 2, 0). A group of size 1 has mean distance 0,
  so among singletons the first remaining cluster is taken. More clusters than `sum(PARTITION)`: the last group
  takes all the rest.
* `r_c = 1` for every cluster when `max_j D_j == 0` (no member farther than λ from its center anywhere).
* Empty clusters (k-means can end with a cluster that lost all its members; its center is stale) are EXCLUDED before
  grouping (`drop_empty_clusters`): they take no slot of a group, so the K' non-empty clusters are grouped as for
  K' = K - (#empty) clusters (fill in order, above). Relocating them (re-seeding at a far point) was not chosen: it
  would change the clustering itself and add random draws; excluding keeps the draws and the non-empty clusters.
* N_b == 0: empty mask. 0 < N_b < NUM_CLUSTERS: no k-means; every voxel is its own cluster (center = its feature),
  so every D_k = 0, r_c = 1, and each voxel is masked iff floor(base(group)) == 1 (never for base ratios < 1).
* Random draws, in order per sample: K uniforms for the k-means++ seeds, then one uniform key per voxel (the members
  of each cluster with the smallest keys are masked). `i2mask_batch` runs the samples in order b = 0..B-1 on one
  generator, so a seeded generator gives a reproducible batch mask.
* Invalid voxels (no teacher feature) are excluded from clustering and never masked (`i2mask_batch`).
* The per-cluster counts are computed in float64 (`floor(|C_k| * base * r_c)`), r_c itself in the features' dtype.

Functions:
    kmeans(features, num_clusters, num_iters=20, generator=None) -> labels (N,) long, centers (K, D)
    group_clusters_by_distinctness(centers, partition=(3, 3, 2), eps=1e-8) -> list[list[int]]
    intra_class_consistency(features, labels, centers, lambda_threshold=0.6) -> (K,) float
    mask_from_clusters(features, labels, centers, cfg, generator=None) -> (N,) bool
    i2mask_single(features, cfg, generator=None) -> (N,) bool
    i2mask_batch(features, valid, batch_index, batch_size, cfg, generator=None) -> mask (N,) bool, ratio (B,) float
"""
import itertools

import torch

# Spec §2.4 values (all released configs); used for keys missing from the config.
DEFAULT_I2MASK_CFG = {
    'NUM_CLUSTERS': 8,
    'PARTITION': (3, 3, 2),
    'BASE_MASK_RATIO': (0.9, 0.45, 0.0),
    'LAMBDA_THRESHOLD': 0.6,
    'KMEANS_ITERS': 20,
}


def _uniform(shape, generator, device):
    """Uniform [0, 1) float32 draws of `shape` from `generator` (drawn on the generator's device), on `device`."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def read_i2mask_cfg(cfg):
    """Validated I²Mask settings from a dict / EasyDict (missing keys take `DEFAULT_I2MASK_CFG`)."""
    cfg = {} if cfg is None else cfg
    out = {key: cfg.get(key, default) for key, default in DEFAULT_I2MASK_CFG.items()}
    out['NUM_CLUSTERS'] = int(out['NUM_CLUSTERS'])
    out['KMEANS_ITERS'] = int(out['KMEANS_ITERS'])
    out['PARTITION'] = tuple(int(p) for p in out['PARTITION'])
    out['BASE_MASK_RATIO'] = tuple(float(r) for r in out['BASE_MASK_RATIO'])
    out['LAMBDA_THRESHOLD'] = float(out['LAMBDA_THRESHOLD'])
    if out['NUM_CLUSTERS'] < 1:
        raise ValueError(f'I2MASK config NUM_CLUSTERS must be >= 1, got {out["NUM_CLUSTERS"]}')
    if out['KMEANS_ITERS'] < 0:
        raise ValueError(f'I2MASK config KMEANS_ITERS must be >= 0, got {out["KMEANS_ITERS"]}')
    if not out['PARTITION'] or any(p < 0 for p in out['PARTITION']):
        raise ValueError(f'I2MASK config PARTITION must be a non-empty list of sizes >= 0, got {out["PARTITION"]}')
    if len(out['BASE_MASK_RATIO']) != len(out['PARTITION']):
        raise ValueError(f'I2MASK config BASE_MASK_RATIO {list(out["BASE_MASK_RATIO"])} must have one ratio per '
                         f'PARTITION group {list(out["PARTITION"])}')
    if any(not 0.0 <= r <= 1.0 for r in out['BASE_MASK_RATIO']):
        raise ValueError(f'I2MASK config BASE_MASK_RATIO values must lie in [0, 1], got {out["BASE_MASK_RATIO"]}')
    return out


def _nearest_center(features_t, centers):
    """(N,) long index of the nearest center (squared L2; ties -> lowest index).

    `features_t` is the (D, N) contiguous transpose of the features: the (K, N) score matrix `|c|² - 2 c·x` comes
    from one matmul with contiguous rows (|x|² is the same for every center of a point, so it is left out).
    """
    scores = torch.addmm((centers * centers).sum(dim=1, keepdim=True), centers, features_t, alpha=-2.0)
    # `min(dim).indices` (first minimum on ties) is much faster than `argmin` over a non-innermost dim on CPU.
    return scores.min(dim=0).indices


def _member_means(features, labels, num_clusters, previous):
    """(K, D) mean of each cluster's members; empty clusters keep their row of `previous`."""
    sums = features.new_zeros((num_clusters, features.shape[1])).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_clusters)[:num_clusters]
    means = sums / counts.clamp(min=1).unsqueeze(1).to(features.dtype)
    return torch.where((counts > 0).unsqueeze(1), means, previous)


def _kmeans_pp_init(features, num_clusters, generator):
    """(K, D) k-means++ seeds: first uniform, then each with probability ∝ squared distance to the nearest seed.

    Squared distances use the matmul form `|x|² - 2 x·c + |c|²` (clamped at 0), as the Lloyd steps do.
    """
    num_points = features.shape[0]
    draws = _uniform((num_clusters,), generator, features.device).to(torch.float64)
    sq_norms = (features * features).sum(dim=1)

    def sq_dist_to(index):
        center = features[index]
        return torch.addmv(sq_norms + (center * center).sum(), features, center, alpha=-2.0).clamp_(min=0)

    first = (draws[0] * num_points).long().clamp(max=num_points - 1)
    chosen = [first]
    nearest_sq = sq_dist_to(first)
    for k in range(1, num_clusters):
        cdf = torch.cumsum(nearest_sq.to(torch.float64), dim=0)
        # All points on the seeds already (e.g. identical features): fall back to a uniform draw.
        cdf = torch.where(cdf[-1] > 0, cdf, torch.arange(1, num_points + 1, device=cdf.device, dtype=cdf.dtype))
        # right=True picks the first row whose cdf exceeds the target, i.e. a row with positive weight.
        index = torch.searchsorted(cdf, (draws[k] * cdf[-1]).reshape(1), right=True)[0].clamp(max=num_points - 1)
        chosen.append(index)
        nearest_sq = torch.minimum(nearest_sq, sq_dist_to(index))
    return features[torch.stack(chosen)].clone()


def kmeans(features, num_clusters, num_iters=20, generator=None, sync_free=None):
    """k-means (k-means++ init drawn with `generator`, then up to `num_iters` Lloyd iterations).

    Args:
        features: (N, D) float, N >= num_clusters >= 1 (the caller guarantees it).
        num_clusters: K. num_iters: maximum number of Lloyd iterations (on CPU it stops early once assignments are
            stable; on CUDA it runs all of them without a host sync -- the same fixed point when converged).
        sync_free: force (True) or forbid (False) the fixed-iteration, sync-free loop; None: on CUDA only.
        generator: torch.Generator (any device; draws are moved to the features' device) or None (global RNG).
    Returns:
        labels (N,) long in [0, K) and centers (K, D) in the features' float dtype (float32 for half inputs):
        centers are the member means of `labels`; an empty cluster keeps its previous center.
    """
    if features.dim() != 2:
        raise ValueError(f'kmeans: features must be (N, D), got shape {tuple(features.shape)}')
    num_points = features.shape[0]
    if not 1 <= num_clusters <= num_points:
        raise ValueError(f'kmeans: need 1 <= num_clusters <= N, got num_clusters={num_clusters}, N={num_points}')
    x = features.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    x = x.contiguous()
    x_t = x.t().contiguous()
    centers = _kmeans_pp_init(x, num_clusters, generator)
    labels = _nearest_center(x_t, centers)
    if x.is_cuda if sync_free is None else sync_free:
        # On a GPU: exactly `num_iters` Lloyd steps with full member means and no early exit, so the loop never
        # waits for the device (the incremental update below needs `nonzero`, a host sync per iteration).
        for _ in range(num_iters):
            centers = _member_means(x, labels, num_clusters, centers)
            labels = _nearest_center(x_t, centers)
        return labels, _member_means(x, labels, num_clusters, centers)
    # Member sums/counts are updated from the rows whose label changed only (after the first iterations few rows
    # move), in float64 so the updates do not drift; the returned centers are recomputed from scratch.
    # (Hamerly-style distance bounds were tried: in 64-d with K = 8 they prune too few points to pay off.)
    sums = torch.zeros((num_clusters, x.shape[1]), dtype=torch.float64, device=x.device)
    sums.index_add_(0, labels, x.to(torch.float64))
    counts = torch.bincount(labels, minlength=num_clusters)[:num_clusters]
    for _ in range(num_iters):
        means = (sums / counts.clamp(min=1).unsqueeze(1)).to(x.dtype)
        centers = torch.where((counts > 0).unsqueeze(1), means, centers)
        new_labels = _nearest_center(x_t, centers)
        moved = torch.nonzero(new_labels != labels, as_tuple=True)[0]
        if moved.numel() == 0:
            break
        moved_rows = x[moved].to(torch.float64)
        sums.index_add_(0, new_labels[moved], moved_rows).index_add_(0, labels[moved], moved_rows, alpha=-1)
        counts = counts + torch.bincount(new_labels[moved], minlength=num_clusters)[:num_clusters] \
            - torch.bincount(labels[moved], minlength=num_clusters)[:num_clusters]
        labels = new_labels
    centers = _member_means(x, labels, num_clusters, centers)
    return labels, centers


def _cosine_distance_matrix(centers, eps):
    """(K, K) float64 `1 - c_i·c_j / max(|c_i||c_j|, eps)` as nested Python lists."""
    c = centers.detach().to(torch.float64)
    norms = c.norm(dim=1)
    cosine = (c @ c.t()) / torch.clamp(norms.unsqueeze(1) * norms.unsqueeze(0), min=eps)
    return (1.0 - cosine).cpu().tolist()


def group_clusters_by_distinctness(centers, partition=(3, 3, 2), eps=1e-8):
    """Greedy "fastest class sampling" grouping of clusters by mutual cosine distance (spec §2.4 step 3).

    Args:
        centers: (K, D) float cluster centers (any device). partition: group sizes, e.g. (3, 3, 2).
        eps: lower bound of `|c_i||c_j|` in the cosine (zero-norm centers -> distance 1, no NaN).
    Returns:
        list of len(partition) lists of cluster ids (each ascending). For every group but the last: among the
        remaining clusters, the `min(size, remaining)`-subset with the largest mean pairwise distance, scanning
        `itertools.combinations` in order with strict `>` (ties keep the first); the last group takes the rest.
    """
    num_clusters = centers.shape[0]
    dist = _cosine_distance_matrix(centers, eps) if num_clusters else []
    remaining = list(range(num_clusters))
    groups = []
    for size in partition[:-1]:
        size = min(int(size), len(remaining))
        best, best_score = None, None
        for combo in itertools.combinations(remaining, size):
            pairs = list(itertools.combinations(combo, 2))
            score = sum(dist[i][j] for i, j in pairs) / len(pairs) if pairs else 0.0
            if best is None or score > best_score:
                best, best_score = combo, score
        groups.append(list(best))
        remaining = [k for k in remaining if k not in best]
    groups.append(remaining)
    return groups


def intra_class_consistency(features, labels, centers, lambda_threshold=0.6):
    """Intra-class consistency `r_c,k = 1 - D_k / max_j D_j` (spec §2.4 step 4).

    Args:
        features: (N, D) float. labels: (N,) long cluster ids in [0, K). centers: (K, D) float.
        lambda_threshold: λ; D_k = mean of `|x_v - c_k|` over members farther than λ (0 if none).
    Returns:
        (K,) float in [0, 1] (features' float dtype); all ones when max_j D_j == 0 (also for K with empty clusters).
    """
    x = features.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    c = centers.detach().to(x.dtype)
    num_clusters = c.shape[0]
    labels = labels.long()
    dist = (x - c[labels]).norm(dim=1)
    far = dist > lambda_threshold
    far_sum = x.new_zeros(num_clusters).index_add_(0, labels, torch.where(far, dist, torch.zeros_like(dist)))
    far_count = torch.bincount(labels[far], minlength=num_clusters)[:num_clusters]
    spread = far_sum / far_count.clamp(min=1).to(x.dtype)
    max_spread = spread.max() if num_clusters else x.new_zeros(())
    return torch.where(max_spread > 0, 1.0 - spread / torch.clamp(max_spread, min=torch.finfo(x.dtype).tiny),
                       torch.ones_like(spread))


def _random_subset_mask(labels, counts, generator):
    """(N,) bool: per cluster k a uniformly random subset of `counts[k]` of its members (one random key per row)."""
    keys = _uniform(labels.shape, generator, labels.device).to(torch.float64)
    # One sort by `label + key` (key in [0, 1)): clusters contiguous, members in random-key order.
    order = torch.argsort(labels.to(torch.float64) + keys)
    sorted_labels = labels[order]
    sizes = torch.bincount(labels, minlength=counts.shape[0])
    starts = torch.cumsum(sizes, dim=0) - sizes
    rank = torch.arange(labels.shape[0], device=labels.device) - starts[sorted_labels]
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[order] = rank < counts[sorted_labels]
    return mask


def drop_empty_clusters(labels, centers):
    """Remove clusters without members: -> (labels renumbered to [0, K') keeping their order, (K', D) centers)."""
    sizes = torch.bincount(labels, minlength=centers.shape[0])[:centers.shape[0]]
    keep = sizes > 0
    new_id = torch.cumsum(keep.long(), dim=0) - 1
    return new_id[labels], centers[keep]


def mask_from_clusters(features, labels, centers, cfg, generator=None):
    """I²Mask steps 3–5 for a given clustering (k-means bypassed; used by `i2mask_single` and the tests).

    Args:
        features: (N, D) float targets of valid voxels. labels: (N,) long in [0, K). centers: (K, D).
        cfg: dict / EasyDict with PARTITION, BASE_MASK_RATIO, LAMBDA_THRESHOLD (missing keys: spec defaults).
        generator: torch.Generator or None; draws the random member subsets.
    Returns:
        (N,) bool mask: for each cluster k exactly `floor(|C_k| * base(group of k) * r_c,k)` members set, chosen
        uniformly at random. Empty clusters are excluded before grouping (module doc).
    """
    settings = read_i2mask_cfg(cfg)
    labels = labels.long()
    if labels.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=features.device)
    labels, centers = drop_empty_clusters(labels, centers)
    num_clusters = centers.shape[0]
    groups = group_clusters_by_distinctness(centers, settings['PARTITION'])
    base = [0.0] * num_clusters
    for group, ratio in zip(groups, settings['BASE_MASK_RATIO']):
        for k in group:
            base[k] = ratio
    base = torch.tensor(base, dtype=torch.float64, device=features.device)
    consistency = intra_class_consistency(features, labels, centers, settings['LAMBDA_THRESHOLD'])
    sizes = torch.bincount(labels, minlength=num_clusters)[:num_clusters]
    counts = torch.floor(sizes.to(torch.float64) * (base * consistency.to(torch.float64))).long()
    return _random_subset_mask(labels, counts, generator)


def i2mask_single(features, cfg, generator=None):
    """I²Mask of one sample.

    Args:
        features: (N, D) float per-voxel teacher targets of the sample's VALID voxels.
        cfg: dict / EasyDict: NUM_CLUSTERS (8), PARTITION ([3, 3, 2]), BASE_MASK_RATIO ([0.9, 0.45, 0.0]),
            LAMBDA_THRESHOLD (0.6), KMEANS_ITERS (20); missing keys take these spec values.
        generator: torch.Generator or None (k-means++ seeds and member subsets are drawn from it).
    Returns:
        (N,) bool mask on the features' device, True = masked. N == 0 -> empty mask; 0 < N < NUM_CLUSTERS ->
        every voxel is its own cluster (no k-means, nothing masked for base ratios < 1).
    """
    if features.dim() != 2:
        raise ValueError(f'i2mask_single: features must be (N, D), got shape {tuple(features.shape)}')
    settings = read_i2mask_cfg(cfg)
    num_points = features.shape[0]
    if num_points == 0:
        return torch.zeros(0, dtype=torch.bool, device=features.device)
    if num_points < settings['NUM_CLUSTERS']:
        labels = torch.arange(num_points, device=features.device)
        centers = features.detach().float()
    else:
        labels, centers = kmeans(features, settings['NUM_CLUSTERS'], settings['KMEANS_ITERS'], generator)
    return mask_from_clusters(features, labels, centers, settings, generator)


def i2mask_batch(features, valid, batch_index, batch_size, cfg, generator=None):
    """I²Mask of a batch, independently per sample (spec §2.4, Q7).

    Args:
        features: (N, D) float per-voxel teacher targets (rows in any order). valid: (N,) bool, False = no teacher
            feature (excluded from clustering, never masked). batch_index: (N,) long sample id in [0, batch_size).
        batch_size: B. cfg: as `i2mask_single`. generator: torch.Generator or None (samples drawn in order b=0..B-1).
    Returns:
        mask (N,) bool (True = masked) and ratio (B,) float32 = masked voxels / all voxels of sample b (0 if none).
    """
    if features.dim() != 2 or valid.shape != features.shape[:1] or batch_index.shape != features.shape[:1]:
        raise ValueError(f'i2mask_batch: need features (N, D), valid (N,), batch_index (N,); got '
                         f'{tuple(features.shape)}, {tuple(valid.shape)}, {tuple(batch_index.shape)}')
    settings = read_i2mask_cfg(cfg)
    batch_index = batch_index.long()
    valid = valid.bool()
    mask = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    for b in range(int(batch_size)):
        rows = torch.nonzero((batch_index == b) & valid, as_tuple=True)[0]
        if rows.numel():
            mask[rows] = i2mask_single(features[rows], settings, generator)
    in_range = (batch_index >= 0) & (batch_index < batch_size)
    totals = torch.bincount(batch_index[in_range], minlength=batch_size)[:batch_size]
    masked = torch.bincount(batch_index[in_range & mask], minlength=batch_size)[:batch_size]
    ratio = masked.float() / totals.clamp(min=1).float()
    return mask, ratio
