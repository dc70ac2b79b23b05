"""I²Mask (spec §2.4) against plain-Python references: greedy grouping over itertools, per-cluster counts
floor(|C_k| * base * r_c) from loop-computed distances, k-means on separated blobs, edge cases and batching."""
import itertools
import math

import pytest
import torch

from pcdet.models.pretraining import (
    group_clusters_by_distinctness,
    i2mask_batch,
    i2mask_single,
    intra_class_consistency,
    kmeans,
    mask_from_clusters,
)

CFG = {'NUM_CLUSTERS': 8, 'PARTITION': [3, 3, 2], 'BASE_MASK_RATIO': [0.9, 0.45, 0.0], 'LAMBDA_THRESHOLD': 0.6,
       'KMEANS_ITERS': 20}


def reference_groups(centers, partition):
    """Plain-Python greedy: cosine distances with math, combinations in order, strict > (first wins ties)."""
    rows = centers.tolist()

    def dist(i, j):
        dot = sum(a * b for a, b in zip(rows[i], rows[j]))
        norm = math.sqrt(sum(a * a for a in rows[i])) * math.sqrt(sum(b * b for b in rows[j]))
        return 1.0 - dot / max(norm, 1e-8)

    remaining = list(range(len(rows)))
    groups = []
    for size in partition[:-1]:
        size = min(size, len(remaining))
        scored = []
        for combo in itertools.combinations(remaining, size):
            pairs = list(itertools.combinations(combo, 2))
            scored.append((sum(dist(i, j) for i, j in pairs) / len(pairs) if pairs else 0.0, combo))
        best_score = max(score for score, _ in scored)
        best = next(combo for score, combo in scored if score == best_score)
        groups.append(list(best))
        remaining = [k for k in remaining if k not in best]
    groups.append(remaining)
    return groups


def reference_consistency(features, labels, centers, lam):
    """r_c per cluster from per-member Python loops in double precision."""
    feats, labs, cents = features.tolist(), labels.tolist(), centers.tolist()
    spreads = []
    for k in range(len(cents)):
        far = []
        for f, lab in zip(feats, labs):
            if lab == k:
                d = math.sqrt(sum((a - b) ** 2 for a, b in zip(f, cents[k])))
                if d > lam:
                    far.append(d)
        spreads.append(sum(far) / len(far) if far else 0.0)
    top = max(spreads)
    return [1.0 if top == 0 else 1.0 - s / top for s in spreads]


def clustered_features(seed, sizes, dim=6, spread=None):
    """Features of clusters with given sizes (rows shuffled), labels, and member-mean centers."""
    gen = torch.Generator().manual_seed(seed)
    spread = spread or [0.2 + 0.3 * k for k in range(len(sizes))]
    feats, labels = [], []
    for k, (size, sd) in enumerate(zip(sizes, spread)):
        center = torch.randn(dim, generator=gen)
        feats.append(center + sd * torch.randn(size, dim, generator=gen))
        labels.append(torch.full((size,), k, dtype=torch.long))
    feats, labels = torch.cat(feats), torch.cat(labels)
    perm = torch.randperm(labels.numel(), generator=gen)
    feats, labels = feats[perm], labels[perm]
    centers = torch.stack([feats[labels == k].mean(0) for k in range(len(sizes))])
    return feats, labels, centers


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('num_clusters', [8, 5, 3, 10])
def test_grouping_matches_python_reference(seed, num_clusters):
    centers = torch.randn(num_clusters, 16, generator=torch.Generator().manual_seed(seed))
    assert group_clusters_by_distinctness(centers, (3, 3, 2)) == reference_groups(centers, (3, 3, 2))


def test_grouping_hand_case():
    """Three mutually orthogonal centers form G0; among the rest, the three with big orthogonal parts form G1."""
    e = torch.eye(8)
    common = e[0] + 0.1 * e[1] + 0.1 * e[2]
    by_role = {'a': e[0], 'b': e[1], 'c': e[2], 'd': common + 2 * e[3], 'f': common + 2 * e[4],
               'g': common + 2 * e[5], 'h': common + 0.1 * e[3], 'i': common + 0.1 * e[4]}
    slot_of = {'h': 0, 'b': 1, 'd': 2, 'a': 3, 'i': 4, 'g': 5, 'c': 6, 'f': 7}  # shuffled placement
    centers = torch.zeros(8, 8)
    for role, slot in slot_of.items():
        centers[slot] = by_role[role]
    groups = group_clusters_by_distinctness(centers, (3, 3, 2))
    assert groups == [sorted(slot_of[r] for r in 'abc'), sorted(slot_of[r] for r in 'dfg'),
                      sorted(slot_of[r] for r in 'hi')]


def test_grouping_fewer_clusters_and_ties():
    centers = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert [len(g) for g in group_clusters_by_distinctness(centers, (3, 3, 2))] == [3, 2, 0]
    assert [len(g) for g in group_clusters_by_distinctness(centers[:2], (3, 3, 2))] == [2, 0, 0]
    assert group_clusters_by_distinctness(centers[:1], (3, 3, 2)) == [[0], [], []]
    # All distances equal (identical centers): ties keep the first combinations.
    same = torch.ones(8, 4)
    assert group_clusters_by_distinctness(same, (3, 3, 2)) == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_grouping_zero_norm_centers_no_nan():
    centers = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    centers[[2, 5]] = 0
    groups = group_clusters_by_distinctness(centers, (3, 3, 2))
    assert groups == reference_groups(centers, (3, 3, 2))
    assert sorted(sum(groups, [])) == list(range(8))
    assert group_clusters_by_distinctness(torch.zeros(8, 4), (3, 3, 2)) == [[0, 1, 2], [3, 4, 5], [6, 7]]


@pytest.mark.parametrize('seed', range(3))
def test_intra_class_consistency_matches_loops(seed):
    feats, labels, centers = clustered_features(seed, [12, 7, 20, 3, 9, 15, 4, 11])
    got = intra_class_consistency(feats, labels, centers, 0.6)
    expected = torch.tensor(reference_consistency(feats, labels, centers, 0.6), dtype=torch.float64)
    assert torch.allclose(got.double(), expected, atol=1e-5)
    assert got.min() == 0 and got.max() <= 1


def test_intra_class_consistency_all_tight_is_one():
    feats, labels, centers = clustered_features(0, [5, 6, 7], spread=[0.01, 0.01, 0.01])
    assert torch.equal(intra_class_consistency(feats, labels, centers, 0.6), torch.ones(3))


@pytest.mark.parametrize('seed', range(5))
def test_mask_from_clusters_counts(seed):
    sizes = [12, 7, 40, 3, 9, 25, 4, 30]
    feats, labels, centers = clustered_features(seed, sizes)
    mask = mask_from_clusters(feats, labels, centers, CFG, torch.Generator().manual_seed(seed))
    groups = reference_groups(centers, CFG['PARTITION'])
    r_c = reference_consistency(feats, labels, centers, CFG['LAMBDA_THRESHOLD'])
    base = {k: CFG['BASE_MASK_RATIO'][g] for g, members in enumerate(groups) for k in members}
    for k, size in enumerate(sizes):
        assert int(mask[labels == k].sum()) == math.floor(size * base[k] * r_c[k])
    assert mask.dtype == torch.bool and mask.shape == labels.shape


@pytest.mark.parametrize('seed', range(3))
def test_empty_cluster_takes_no_group_slot(seed):
    """A cluster without members (a stale k-means centre) is excluded before grouping: the 7 non-empty clusters
    are grouped 3/3/1 among themselves and masked as if the empty one never existed. The stale centre here is
    the zero vector (cosine distance 1 to all, the most distinct), so counting it would put it in the 0.9 group."""
    sizes = [12, 7, 40, 9, 25, 4, 30]
    feats, labels, centers = clustered_features(seed, sizes)
    empty = 2
    stale_labels = labels + (labels >= empty).long()
    stale_centers = torch.cat([centers[:empty], torch.zeros(1, centers.shape[1]), centers[empty:]])
    mask = mask_from_clusters(feats, stale_labels, stale_centers, CFG, torch.Generator().manual_seed(seed))
    groups = reference_groups(centers, CFG['PARTITION'])
    assert [len(g) for g in groups] == [3, 3, 1]
    r_c = reference_consistency(feats, labels, centers, CFG['LAMBDA_THRESHOLD'])
    base = {k: CFG['BASE_MASK_RATIO'][g] for g, members in enumerate(groups) for k in members}
    for k, size in enumerate(sizes):
        assert int(mask[labels == k].sum()) == math.floor(size * base[k] * r_c[k]), k


def test_mask_subset_is_uniform():
    """Which members of a cluster are masked varies with the seed, each about equally often."""
    feats = torch.zeros(10, 2)
    labels = torch.zeros(10, dtype=torch.long)
    centers = torch.zeros(1, 2)
    cfg = dict(CFG, PARTITION=[1], BASE_MASK_RATIO=[0.5])
    gen = torch.Generator().manual_seed(0)
    hits = torch.stack([mask_from_clusters(feats, labels, centers, cfg, gen) for _ in range(300)]).float()
    assert torch.all(hits.sum(1) == 5)
    assert hits.mean(0).min() > 0.35 and hits.mean(0).max() < 0.65


def blobs(seed, num_blobs=8, per_blob=50, dim=8):
    gen = torch.Generator().manual_seed(seed)
    means = 50 * torch.randn(num_blobs, dim, generator=gen)
    truth = torch.arange(num_blobs).repeat_interleave(per_blob)
    feats = means[truth] + 0.1 * torch.randn(truth.numel(), dim, generator=gen)
    perm = torch.randperm(truth.numel(), generator=gen)
    return feats[perm], truth[perm]


@pytest.mark.parametrize('seed', range(4))
def test_kmeans_recovers_blobs(seed):
    feats, truth = blobs(seed)
    labels, centers = kmeans(feats, 8, 20, torch.Generator().manual_seed(seed))
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 8 and len({t for t, _ in pairs}) == 8 and len({lab for _, lab in pairs}) == 8
    for k in range(8):
        assert torch.allclose(centers[k], feats[labels == k].mean(0), atol=1e-5)


def reference_lloyd(features, init_centers, num_iters):
    """Plain Lloyd from given seeds in float64: all distances every iteration, empty clusters keep their center."""
    x = features.double()
    centers = init_centers.double()
    labels = torch.cdist(x, centers).argmin(1)
    for _ in range(num_iters):
        centers = torch.stack([x[labels == k].mean(0) if (labels == k).any() else centers[k]
                               for k in range(centers.shape[0])])
        new_labels = torch.cdist(x, centers).argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('num_iters', [0, 1, 3, 20, 60])
def test_kmeans_equals_plain_lloyd(seed, num_iters):
    """The bound-pruned, incrementally updated Lloyd gives exactly the plain Lloyd labels from the same seeds."""
    from pcdet.models.pretraining.i2mask import _kmeans_pp_init
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(600, 8, generator=gen) + 2.0 * torch.randn(6, 8, generator=gen)[torch.randint(0, 6, (600,),
                                                                                                         generator=gen)]
    seeds = _kmeans_pp_init(feats, 8, torch.Generator().manual_seed(seed))
    labels, centers = kmeans(feats, 8, num_iters, torch.Generator().manual_seed(seed))
    assert torch.equal(labels, reference_lloyd(feats, seeds, num_iters))
    for k in range(8):
        if (labels == k).any():
            assert torch.allclose(centers[k], feats[labels == k].mean(0), atol=1e-5)


def test_kmeans_deterministic_with_seed():
    feats = torch.randn(300, 5, generator=torch.Generator().manual_seed(3))
    a = kmeans(feats, 8, 20, torch.Generator().manual_seed(7))
    b = kmeans(feats, 8, 20, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].dtype == torch.long and a[0].min() >= 0 and a[0].max() < 8


def test_kmeans_labels_are_nearest_centers_at_convergence():
    feats, _ = blobs(5, per_blob=20)
    labels, centers = kmeans(feats, 8, 50, torch.Generator().manual_seed(0))
    assert torch.equal(labels, torch.cdist(feats, centers).argmin(1))


def test_single_edge_cases():
    gen = torch.Generator().manual_seed(0)
    assert i2mask_single(torch.zeros(0, 64), CFG, gen).shape == (0,)
    small = i2mask_single(torch.randn(5, 64, generator=gen), CFG, gen)
    assert small.shape == (5,) and not small.any()
    same = i2mask_single(torch.ones(100, 64), CFG, gen)
    assert int(same.sum()) == 90  # one populated cluster in G0, r_c = 1 -> floor(0.9 * 100)
    zeros = i2mask_single(torch.zeros(50, 64), CFG, gen)
    assert int(zeros.sum()) == 45


def test_single_deterministic_and_valid_ratio():
    feats, _ = blobs(1, per_blob=40, dim=64)
    a = i2mask_single(feats, CFG, torch.Generator().manual_seed(11))
    b = i2mask_single(feats, CFG, torch.Generator().manual_seed(11))
    assert torch.equal(a, b)
    assert 0 < a.float().mean() <= (0.9 * 3 * 40 + 0.45 * 3 * 40) / 320 + 1e-6


def test_batch_matches_per_sample_and_skips_invalid():
    gen = torch.Generator().manual_seed(2)
    num = 400
    feats = torch.randn(num, 16, generator=gen)
    batch_index = torch.randint(0, 3, (num,), generator=gen)  # unsorted rows; sample 3 is empty
    valid = torch.rand(num, generator=gen) > 0.2
    mask, ratio = i2mask_batch(feats, valid, batch_index, 4, CFG, torch.Generator().manual_seed(5))
    assert not mask[~valid].any()
    ref_gen = torch.Generator().manual_seed(5)
    for b in range(3):
        rows = torch.nonzero((batch_index == b) & valid, as_tuple=True)[0]
        assert torch.equal(mask[rows], i2mask_single(feats[rows], CFG, ref_gen))
        assert ratio[b].item() == pytest.approx(mask[batch_index == b].sum().item() / (batch_index == b).sum().item())
    assert ratio[3] == 0 and ratio.dtype == torch.float32
    again, _ = i2mask_batch(feats, valid, batch_index, 4, CFG, torch.Generator().manual_seed(5))
    assert torch.equal(mask, again)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match='BASE_MASK_RATIO'):
        i2mask_single(torch.randn(20, 4), dict(CFG, BASE_MASK_RATIO=[0.9, 0.45]), None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu_with_cpu_generator():
    feats, _ = blobs(2, per_blob=30, dim=64)
    valid = torch.ones(feats.shape[0], dtype=torch.bool)
    batch_index = torch.arange(feats.shape[0]) % 2
    cpu, cpu_ratio = i2mask_batch(feats, valid, batch_index, 2, CFG, torch.Generator().manual_seed(0))
    gpu, gpu_ratio = i2mask_batch(feats.cuda(), valid.cuda(), batch_index.cuda(), 2, CFG,
                                  torch.Generator().manual_seed(0))
    assert gpu.is_cuda and gpu_ratio.is_cuda
    # Separated blobs: identical clustering on both devices, so identical masks.
    assert torch.equal(cpu, gpu.cpu()) and torch.allclose(cpu_ratio, gpu_ratio.cpu())


def test_sync_free_kmeans_reaches_the_same_clustering():
    """The fixed-iteration loop used on CUDA (no host syncs) converges to the incremental CPU loop's answer."""
    generator = torch.Generator().manual_seed(3)
    centers = torch.randn(6, 16, generator=generator) * 4
    feats = (centers.repeat_interleave(50, 0) + 0.3 * torch.randn(300, 16, generator=generator))
    incremental, c1 = kmeans(feats, 6, 30, torch.Generator().manual_seed(7), sync_free=False)
    fixed, c2 = kmeans(feats, 6, 30, torch.Generator().manual_seed(7), sync_free=True)
    assert torch.equal(incremental, fixed)
    assert torch.allclose(c1, c2, atol=1e-5)
