"""Contrastive pure functions against direct references: InfoNCE and NT-Xent as explicit loops over anchors with a
hand-written log-sum-exp, superpixel pooling as a dictionary loop, per-frame sampling, teacher validity and the
augmented view (rigid per sample, seeded)."""
import math

import pytest
import torch

from pcdet.models.pretraining.contrastive import (
    augment_view,
    info_nce,
    nt_xent,
    sample_per_frame,
    superpixel_groups,
    superpixel_pool,
)
from pcdet.models.pretraining.point_groups import teacher_point_validity


def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def loop_info_nce(anchors, candidates, temperature):
    """mean_i [ -s_ii / T + log sum_j exp(s_ij / T) ], s = cosine, one anchor at a time, float64."""
    a = [_unit(row) for row in anchors.double().tolist()]
    c = [_unit(row) for row in candidates.double().tolist()]
    total = 0.0
    for i, anchor in enumerate(a):
        logits = [_dot(anchor, cand) / temperature for cand in c]
        total += -logits[i] + _logsumexp(logits)
    return total / len(a)


def loop_nt_xent(z_a, z_b, temperature):
    """SimCLR: 2B anchors, positive = the other view of the same sample, denominator = all rows but the anchor."""
    z = [_unit(row) for row in torch.cat([z_a, z_b]).double().tolist()]
    n = len(z_a)
    total = 0.0
    for k in range(2 * n):
        positive = (k + n) % (2 * n)
        logits = {j: _dot(z[k], z[j]) / temperature for j in range(2 * n) if j != k}
        total += -logits[positive] + _logsumexp(list(logits.values()))
    return total / (2 * n)


@pytest.mark.parametrize('seed, temperature', [(0, 0.07), (1, 0.5), (2, 1.0)])
def test_info_nce_matches_loop(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    anchors, candidates = torch.randn(9, 5, generator=g) * 3, torch.randn(9, 5, generator=g)
    got = info_nce(anchors, candidates, temperature)
    assert float(got) == pytest.approx(loop_info_nce(anchors, candidates, temperature), rel=1e-5)


def test_info_nce_temperature_and_positive_index_matter():
    g = torch.Generator().manual_seed(3)
    anchors, candidates = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    ref = loop_info_nce(anchors, candidates, 0.1)
    assert abs(loop_info_nce(anchors, candidates, 1.0) - ref) > 1e-2          # the test can see T
    assert abs(loop_info_nce(anchors, candidates.roll(1, 0), 0.1) - ref) > 1e-2  # ... and the positive's row
    # a perfect match at low temperature is near zero; swapping the pairs makes it large
    q = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    assert float(info_nce(q, q, 0.01)) < 1e-3 and float(info_nce(q, q.roll(1, 0), 0.01)) > 1.0
    assert float(info_nce(q[:0], q[:0], 0.1)) == 0.0


@pytest.mark.parametrize('seed, temperature', [(0, 0.1), (1, 0.5)])
def test_nt_xent_matches_loop(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    z_a, z_b = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g) * 2
    got = nt_xent(z_a, z_b, temperature)
    assert float(got) == pytest.approx(loop_nt_xent(z_a, z_b, temperature), rel=1e-5)
    assert abs(loop_nt_xent(z_a, z_b.roll(1, 0), temperature) - float(got)) > 1e-3


def test_nt_xent_gradient_flows_to_both_views():
    g = torch.Generator().manual_seed(4)
    z_a = torch.randn(4, 3, generator=g, requires_grad=True)
    z_b = torch.randn(4, 3, generator=g, requires_grad=True)
    nt_xent(z_a, z_b, 0.1).backward()
    assert z_a.grad.abs().sum() > 0 and z_b.grad.abs().sum() > 0


def loop_superpixel_pool(features, batch_index, ids):
    groups = {}
    for row, (b, s) in enumerate(zip(batch_index.tolist(), ids.tolist())):
        if s >= 0:
            groups.setdefault((b, s), []).append(features[row].double())
    return {key: torch.stack(rows).mean(0) for key, rows in groups.items()}


def test_superpixel_pool_matches_loop_with_none_and_batch_separation():
    g = torch.Generator().manual_seed(5)
    num = 200
    batch_index = torch.randint(0, 3, (num,), generator=g)
    ids = torch.randint(-1, 12, (num,), generator=g)        # -1 = no superpixel; the same ids in every frame
    features = torch.randn(num, 4, generator=g)
    pooled, keys = superpixel_pool(features, batch_index, ids)
    ref = loop_superpixel_pool(features, batch_index, ids)
    assert sorted(map(tuple, keys.tolist())) == sorted(ref) and len(set(map(tuple, keys.tolist()))) == len(ref)
    for row, key in enumerate(map(tuple, keys.tolist())):
        assert torch.allclose(pooled[row].double(), ref[key], atol=1e-6)
    # the same id in two frames is two superpixels
    assert len(ref) > len({s for _, s in ref})
    segment, _ = superpixel_groups(batch_index, ids)
    assert bool((segment[ids < 0] == -1).all()) and bool((segment[ids >= 0] >= 0).all())


def test_superpixel_pool_without_any_superpixel():
    pooled, keys = superpixel_pool(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.full((5,), -1))
    assert pooled.shape == (0, 3) and keys.shape == (0, 2)


def test_teacher_validity_marks_zero_and_nan_rows():
    feats = torch.tensor([[0.0, 0.0], [0.0, 1e-3], [float('nan'), 1.0], [1.0, -1.0]])
    assert teacher_point_validity(feats).tolist() == [False, True, False, True]


def test_sample_per_frame_caps_each_frame_and_keeps_valid_rows():
    torch.manual_seed(0)
    batch_index = torch.tensor([0] * 10 + [1] * 3 + [2] * 6)
    valid = torch.ones(19, dtype=torch.bool)
    valid[[1, 4, 11, 13, 14, 15, 16, 17, 18]] = False             # frame 2 has no valid row
    rows = sample_per_frame(valid, batch_index, 4)
    assert bool(valid[rows].all()) and len(set(rows.tolist())) == rows.numel()
    counts = torch.bincount(batch_index[rows], minlength=3).tolist()
    assert counts == [4, 2, 0]
    torch.manual_seed(0)
    assert torch.equal(sample_per_frame(valid, batch_index, 4), rows)


def test_augment_view_is_rigid_per_sample_and_seeded():
    g = torch.Generator().manual_seed(6)
    num = 300
    points = torch.cat([torch.randint(0, 3, (num, 1), generator=g).float(), torch.randn(num, 3, generator=g) * 10,
                        torch.rand(num, 2, generator=g)], dim=1)
    torch.manual_seed(1)
    view = augment_view(points, 3, scale_range=(1.0, 1.0), jitter_std=0.0)
    assert torch.equal(view[:, 0], points[:, 0]) and torch.equal(view[:, 4:], points[:, 4:])
    assert torch.allclose(view[:, 1:3].norm(dim=1), points[:, 1:3].norm(dim=1), atol=1e-4)  # flip + rotation
    assert torch.equal(view[:, 3], points[:, 3])
    assert not torch.allclose(view[:, 1:3], points[:, 1:3])
    for b in range(3):   # one transform per sample: pairwise distances inside a sample are kept
        rows = points[:, 0] == b
        v, p = view[rows, 1:4].double(), points[rows, 1:4].double()
        assert torch.allclose(torch.cdist(v, v), torch.cdist(p, p), atol=1e-4)
    torch.manual_seed(1)
    assert torch.equal(augment_view(points, 3, scale_range=(1.0, 1.0), jitter_std=0.0), view)
    torch.manual_seed(2)
    scaled = augment_view(points, 3, scale_range=(2.0, 2.0), jitter_std=0.0)
    assert torch.allclose(scaled[:, 1:4].norm(dim=1), 2 * points[:, 1:4].norm(dim=1), rtol=1e-4)
    torch.manual_seed(3)
    jittered = augment_view(points, 3, rotation=0.0, scale_range=(1.0, 1.0), flip_prob=0.0, jitter_std=0.01,
                            jitter_clip=0.02)
    delta = (jittered[:, 1:4] - points[:, 1:4]).abs()
    assert 0 < float(delta.max()) <= 0.02 + 1e-6
