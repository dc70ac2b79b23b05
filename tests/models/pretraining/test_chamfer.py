"""Weighted per-voxel chamfer distance (spec §2.7) against a double Python loop over points."""
import pytest
import torch

from pcdet.models.pretraining import masked_chamfer_distance


def loop_reference(pred, gt, weights):
    """Σ_v w_v (mean_p min_q |p-q|² + mean_q min_p |p-q|²) / Σ_v w_v with explicit loops, float64."""
    total, weight_sum = 0.0, 0.0
    for p_set, g_set, w in zip(pred.double().tolist(), gt.double().tolist(), weights.double().tolist()):
        weight_sum += w
        if w == 0:
            continue
        sq = [[sum((a - b) ** 2 for a, b in zip(p, q)) for q in g_set] for p in p_set]
        forward = sum(min(row) for row in sq) / len(p_set)
        backward = sum(min(sq[i][j] for i in range(len(p_set))) for j in range(len(g_set))) / len(g_set)
        total += w * (forward + backward)
    return total / weight_sum


def autograd_reference(pred, gt, weights):
    """Differentiable reference with the full difference tensor (the textbook formula)."""
    sq = ((pred.unsqueeze(2) - gt.unsqueeze(1)) ** 2).sum(-1)
    per_voxel = sq.min(2).values.mean(1) + sq.min(1).values.mean(1)
    return (weights * per_voxel).sum() / weights.sum()


@pytest.mark.parametrize('seed', range(4))
def test_matches_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(7, 5, 3, generator=gen)
    gt = torch.randn(7, 9, 3, generator=gen)
    weights = (torch.rand(7, generator=gen) > 0.4).float()
    weights[0] = 1.0
    assert masked_chamfer_distance(pred, gt, weights).item() == pytest.approx(loop_reference(pred, gt, weights),
                                                                            rel=1e-5)


def test_non_binary_weights_and_repeated_targets():
    gen = torch.Generator().manual_seed(9)
    pred = torch.randn(4, 16, 3, generator=gen)
    members = torch.randn(4, 5, 3, generator=gen)
    gt = members[:, torch.arange(64) % 5]  # cyclic padding as group_points_per_voxel produces
    weights = torch.tensor([0.5, 0.0, 2.0, 1.0])
    assert masked_chamfer_distance(pred, gt, weights).item() == pytest.approx(loop_reference(pred, gt, weights),
                                                                            rel=1e-5)


def test_gradient_matches_autograd_reference():
    gen = torch.Generator().manual_seed(4)
    pred = torch.randn(6, 16, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    gt = torch.randn(6, 20, 3, generator=gen, dtype=torch.float64)
    weights = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    grad, = torch.autograd.grad(masked_chamfer_distance(pred, gt, weights), pred)
    ref_grad, = torch.autograd.grad(autograd_reference(pred, gt, weights), pred)
    assert torch.allclose(grad, ref_grad, atol=1e-12)
    assert torch.all(grad[[1, 4]] == 0)


def test_zero_weights_return_zero_with_graph():
    pred = torch.randn(3, 4, 3, requires_grad=True)
    loss = masked_chamfer_distance(pred, torch.randn(3, 6, 3), torch.zeros(3))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_identical_sets_give_zero():
    pts = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(0))
    assert masked_chamfer_distance(pts, pts.flip(1), torch.ones(2)).item() == pytest.approx(0.0, abs=1e-6)
