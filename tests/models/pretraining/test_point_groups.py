"""Per-voxel point groups (Appendix C `group_inner_inds`) and per-voxel mean features (spec §2.3) vs loops."""
import pytest
import torch

from pcdet.models.pretraining import group_points_per_voxel, voxel_mean_features


def loop_groups(points, index, num_voxels, max_points):
    members = [[] for _ in range(num_voxels)]
    for p, v in zip(points.tolist(), index.tolist()):
        if v >= 0:
            members[v].append(p)
    grouped = torch.zeros(num_voxels, max_points, points.shape[1])
    for v, mem in enumerate(members):
        kept = mem[:max_points]
        for slot in range(max_points):
            if kept:
                grouped[v, slot] = torch.tensor(kept[slot % len(kept)])
    return grouped, torch.tensor([len(m) for m in members])


@pytest.mark.parametrize('seed', range(3))
def test_groups_match_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    num_voxels = 12
    # Voxel 0 gets 150 points (> 64: truncated), some voxels get 1-5 (cyclic repetition), some none.
    index = torch.cat([torch.zeros(150, dtype=torch.long), torch.randint(1, 9, (40,), generator=gen),
                       torch.full((5,), -1)])
    index = index[torch.randperm(index.numel(), generator=gen)]
    points = torch.randn(index.numel(), 3, generator=gen)
    grouped, count = group_points_per_voxel(points, index, num_voxels, 64)
    ref_grouped, ref_count = loop_groups(points, index, num_voxels, 64)
    assert torch.equal(count, ref_count) and count.dtype == torch.long
    assert torch.equal(grouped, ref_grouped)
    assert torch.all(grouped[9:] == 0)


def test_groups_small_max_points_and_empty_input():
    points = torch.arange(12.0).view(4, 3)
    index = torch.tensor([2, 0, 2, 2])
    grouped, count = group_points_per_voxel(points, index, 3, max_points=2)
    assert torch.equal(count, torch.tensor([1, 0, 3]))
    assert torch.equal(grouped[2], points[[0, 2]]) and torch.equal(grouped[0], points[[1, 1]])
    empty, empty_count = group_points_per_voxel(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 4, 8)
    assert empty.shape == (4, 8, 3) and not empty.any() and not empty_count.any()


def loop_means(feats, index, num_voxels, point_valid):
    sums = torch.zeros(num_voxels, feats.shape[1], dtype=torch.float64)
    counts = [0] * num_voxels
    for f, v, ok in zip(feats.double(), index.tolist(), point_valid.tolist()):
        if v >= 0 and ok:
            sums[v] += f
            counts[v] += 1
    mean = torch.stack([sums[v] / counts[v] if counts[v] else sums[v] for v in range(num_voxels)])
    valid = torch.tensor([counts[v] > 0 and bool(mean[v].abs().sum() > 0) for v in range(num_voxels)])
    return mean, valid


@pytest.mark.parametrize('seed', range(3))
def test_voxel_means_match_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    num_voxels = 10
    index = torch.randint(-1, 8, (80,), generator=gen)
    feats = torch.randn(80, 6, generator=gen)
    feats[index == 7] = 0  # voxel 7: points exist but the mean is all-zero -> invalid
    point_valid = torch.rand(80, generator=gen) > 0.3
    mean, valid = voxel_mean_features(feats, index, num_voxels, point_valid)
    ref_mean, ref_valid = loop_means(feats, index, num_voxels, point_valid)
    assert torch.allclose(mean.double(), ref_mean, atol=1e-6)
    assert torch.equal(valid, ref_valid) and not valid[7] and not valid[8:].any()
    all_mean, _ = voxel_mean_features(feats, index, num_voxels)
    assert torch.allclose(all_mean.double(), loop_means(feats, index, num_voxels, torch.ones(80, dtype=torch.bool))[0],
                          atol=1e-6)


def test_voxel_means_normalize():
    feats = torch.tensor([[3.0, 0.0], [3.0, 8.0], [0.0, 0.0]])
    mean, valid = voxel_mean_features(feats, torch.tensor([0, 0, 1]), 3, normalize=True)
    assert torch.allclose(mean[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(mean[1:], torch.zeros(2, 2)) and valid.tolist() == [True, False, False]
