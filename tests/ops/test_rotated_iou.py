"""Rotated BEV overlap / IoU and 3D IoU against shapely polygons, plus the fast-path dispatcher."""
import sys
import types

import numpy as np
import pytest
import shapely
import torch

from pcdet.ops import fast_paths
from pcdet.ops.iou3d_nms import iou3d_nms_utils as iou_utils
from pcdet.ops.iou3d_nms import rotated_overlap

TOL = 1e-4


def make_boxes(rng, num, centre_spread=3.0, size_range=(0.5, 4.0), z_spread=0.0):
    boxes = np.zeros((num, 7))
    boxes[:, 0:2] = rng.uniform(-centre_spread, centre_spread, (num, 2))
    boxes[:, 2] = rng.uniform(-z_spread, z_spread, num)
    boxes[:, 3:6] = rng.uniform(*size_range, (num, 3))
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, num)
    return boxes


def footprints(boxes):
    """Shapely polygons of (N, 7) numpy boxes, corners computed in float64."""
    boxes = np.asarray(boxes, dtype=np.float64)
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) / 2 * boxes[:, None, 3:5]
    cos, sin = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    corners = np.stack((local[..., 0] * cos - local[..., 1] * sin, local[..., 0] * sin + local[..., 1] * cos), -1)
    return shapely.polygons(corners + boxes[:, None, 0:2])


def shapely_paired_iou(boxes_a, boxes_b):
    poly_a, poly_b = footprints(boxes_a), footprints(boxes_b)
    inter = shapely.area(shapely.intersection(poly_a, poly_b))
    union = boxes_a[:, 3] * boxes_a[:, 4] + boxes_b[:, 3] * boxes_b[:, 4] - inter
    return inter, inter / np.maximum(union, 1e-8)


def paired_iou(boxes_a, boxes_b):
    a = torch.from_numpy(boxes_a).float()
    b = torch.from_numpy(boxes_b).float()
    overlap = iou_utils.paired_boxes_overlap_bev(a, b)
    union = a[:, 3] * a[:, 4] + b[:, 3] * b[:, 4] - overlap
    return overlap.numpy(), (overlap / union.clamp(min=1e-8)).numpy()


def float32_exact(boxes):
    """Round boxes to float32 so shapely sees exactly what the op sees."""
    return boxes.astype(np.float32).astype(np.float64)


def special_pairs(rng, num):
    """Pairs that stress degenerate geometry; each group has `num` pairs."""
    base = float32_exact(make_boxes(rng, num))
    groups = {}
    groups['identical'] = (base, base.copy())
    flipped = base.copy()
    flipped[:, 6] += np.pi
    groups['rotated_by_pi'] = (base, float32_exact(flipped))
    square = base.copy()
    square[:, 4] = square[:, 3]
    turned = square.copy()
    turned[:, 6] += np.pi / 2
    groups['square_rotated_by_half_pi'] = (square, float32_exact(turned))
    touching = base.copy()  # neighbour along the heading axis sharing a full edge
    touching[:, 0] += base[:, 3] * np.cos(base[:, 6])
    touching[:, 1] += base[:, 3] * np.sin(base[:, 6])
    groups['touching_edge'] = (base, float32_exact(touching))
    inner = base.copy()
    # Shrink until the inner box's circumscribed circle fits inside the outer box, then turn it freely.
    fit = base[:, 3:5].min(axis=1) / np.hypot(base[:, 3], base[:, 4])
    inner[:, 3:5] *= (fit * rng.uniform(0.1, 0.95, num))[:, None]
    inner[:, 6] = rng.uniform(-np.pi, np.pi, num)
    groups['contained'] = (base, float32_exact(inner))
    tiny_a, tiny_b = make_boxes(rng, num, 1e-3, (1e-3, 2e-3)), make_boxes(rng, num, 1e-3, (1e-3, 2e-3))
    groups['tiny'] = (float32_exact(tiny_a), float32_exact(tiny_b))
    far = base.copy()
    far[:, 0] += 1000.0
    groups['far_apart'] = (base, float32_exact(far))
    nudged = base.copy()  # near-collinear edges: tiny rotation plus a partial shift
    nudged[:, 6] += rng.choice([-1e-6, 1e-6], num)
    nudged[:, 0] += 0.3
    groups['near_collinear'] = (base, float32_exact(nudged))
    offset = base.copy()  # overlapping boxes far from the origin
    offset[:, 0:2] += 500.0
    moved = offset.copy()
    moved[:, 0:2] += rng.uniform(-1, 1, (num, 2))
    groups['far_from_origin'] = (float32_exact(offset), float32_exact(moved))
    return groups


def test_random_pairs_match_shapely():
    rng = np.random.default_rng(0)
    boxes_a, boxes_b = float32_exact(make_boxes(rng, 4000)), float32_exact(make_boxes(rng, 4000))
    ref_overlap, ref_iou = shapely_paired_iou(boxes_a, boxes_b)
    overlap, iou = paired_iou(boxes_a, boxes_b)
    assert 0.3 < (ref_overlap > 0).mean() < 0.9  # a real mix of overlapping and disjoint pairs
    np.testing.assert_allclose(overlap, ref_overlap, atol=TOL * 10, rtol=TOL)
    np.testing.assert_allclose(iou, ref_iou, atol=TOL)


@pytest.mark.parametrize('group', ['identical', 'rotated_by_pi', 'square_rotated_by_half_pi', 'touching_edge',
                                   'contained', 'tiny', 'far_apart', 'near_collinear', 'far_from_origin'])
def test_degenerate_pairs_match_shapely(group):
    boxes_a, boxes_b = special_pairs(np.random.default_rng(1), 300)[group]
    _, ref_iou = shapely_paired_iou(boxes_a, boxes_b)
    _, iou = paired_iou(boxes_a, boxes_b)
    np.testing.assert_allclose(iou, ref_iou, atol=TOL)
    expected = {'identical': 1.0, 'rotated_by_pi': 1.0, 'square_rotated_by_half_pi': 1.0,
                'touching_edge': 0.0, 'far_apart': 0.0}
    if group in expected:
        np.testing.assert_allclose(iou, expected[group], atol=TOL)
    if group == 'contained':
        np.testing.assert_allclose(iou, boxes_b[:, 3] * boxes_b[:, 4] / (boxes_a[:, 3] * boxes_a[:, 4]), atol=TOL)


@pytest.mark.parametrize('group', ['identical', 'rotated_by_pi', 'square_rotated_by_half_pi', 'touching_edge',
                                   'contained', 'near_collinear', 'far_from_origin'])
def test_float32_numerics_used_on_accelerators_match_shapely(group):
    boxes_a, boxes_b = special_pairs(np.random.default_rng(8), 300)[group]
    ref_overlap, _ = shapely_paired_iou(boxes_a, boxes_b)
    a, b = torch.from_numpy(boxes_a).float(), torch.from_numpy(boxes_b).float()
    overlap = rotated_overlap.paired_overlap_bev(a, b, dtype=torch.float32)
    assert overlap.dtype == torch.float32
    area = np.maximum(boxes_a[:, 3] * boxes_a[:, 4], boxes_b[:, 3] * boxes_b[:, 4])
    np.testing.assert_allclose(overlap.numpy() / area, ref_overlap / area, atol=TOL)


def test_cross_shaped_overlap_is_the_square_in_the_middle():
    bar = torch.tensor([[0.0, 0.0, 0.0, 4.0, 1.0, 1.0, 0.0]])
    turned = bar.clone()
    turned[0, 6] = np.pi / 2
    assert iou_utils.boxes_overlap_bev(bar, turned).item() == pytest.approx(1.0, abs=1e-6)
    assert iou_utils.boxes_iou_bev(bar, turned).item() == pytest.approx(1.0 / 7.0, abs=1e-6)


def test_matrix_matches_shapely_and_paired_diagonal():
    rng = np.random.default_rng(2)
    boxes_a, boxes_b = float32_exact(make_boxes(rng, 70, 6.0)), float32_exact(make_boxes(rng, 50, 6.0))
    iou = iou_utils.boxes_iou_bev(torch.from_numpy(boxes_a).float(), torch.from_numpy(boxes_b).float())
    assert iou.shape == (70, 50) and iou.dtype == torch.float32
    rows, cols = np.meshgrid(np.arange(70), np.arange(50), indexing='ij')
    _, ref = shapely_paired_iou(boxes_a[rows.ravel()], boxes_b[cols.ravel()])
    np.testing.assert_allclose(iou.numpy().ravel(), ref, atol=TOL)
    _, diag = paired_iou(boxes_a[:50], boxes_b)
    np.testing.assert_allclose(iou.numpy()[np.arange(50), np.arange(50)], diag, atol=1e-6)


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(3)
    a, b = torch.from_numpy(make_boxes(rng, 40)).float(), torch.from_numpy(make_boxes(rng, 30)).float()
    expected = iou_utils.boxes_overlap_bev(a, b)
    monkeypatch.setattr(rotated_overlap, 'CHUNK_PAIRS', 7)
    monkeypatch.setattr(rotated_overlap, 'PREFILTER_BLOCK', 50)
    torch.testing.assert_close(iou_utils.boxes_overlap_bev(a, b), expected)


def test_boxes_bev_iou_cpu_returns_the_kind_it_was_given():
    rng = np.random.default_rng(4)
    a, b = make_boxes(rng, 5), make_boxes(rng, 6)
    iou_np = iou_utils.boxes_bev_iou_cpu(a, b)
    assert isinstance(iou_np, np.ndarray) and iou_np.shape == (5, 6) and iou_np.dtype == np.float32
    iou_t = iou_utils.boxes_bev_iou_cpu(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    np.testing.assert_allclose(iou_t.numpy(), iou_np)


def test_iou3d_is_bev_overlap_times_height_overlap():
    rng = np.random.default_rng(5)
    boxes_a = float32_exact(make_boxes(rng, 40, z_spread=1.5))
    boxes_b = float32_exact(make_boxes(rng, 30, z_spread=1.5))
    a, b = torch.from_numpy(boxes_a).float(), torch.from_numpy(boxes_b).float()
    iou3d = iou_utils.boxes_iou3d_gpu(a, b).numpy()
    rows, cols = np.meshgrid(np.arange(40), np.arange(30), indexing='ij')
    ra, rb = boxes_a[rows.ravel()], boxes_b[cols.ravel()]
    bev, _ = shapely_paired_iou(ra, rb)
    height = np.clip(np.minimum(ra[:, 2] + ra[:, 5] / 2, rb[:, 2] + rb[:, 5] / 2)
                     - np.maximum(ra[:, 2] - ra[:, 5] / 2, rb[:, 2] - rb[:, 5] / 2), 0, None)
    inter = bev * height
    ref = inter / np.maximum(ra[:, 3:6].prod(1) + rb[:, 3:6].prod(1) - inter, 1e-6)
    assert (ref > 0.05).sum() > 20
    np.testing.assert_allclose(iou3d.ravel(), ref, atol=TOL)
    paired = iou_utils.paired_boxes_iou3d_gpu(a[:30], b)
    assert paired.shape == (30,)
    np.testing.assert_allclose(paired.numpy(), iou3d[np.arange(30), np.arange(30)], atol=1e-6)
    assert iou_utils.boxes_aligned_iou3d_gpu(a[:30], b).shape == (30, 1)
    assert iou_utils.boxes_iou3d is iou_utils.boxes_iou3d_gpu
    assert iou_utils.paired_boxes_iou3d is iou_utils.paired_boxes_iou3d_gpu


def test_iou3d_identical_is_one_and_stacked_is_zero():
    box = torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3]])
    stacked = box.clone()
    stacked[0, 2] += 1.5  # shares only the top face
    assert iou_utils.boxes_iou3d_gpu(box, box).item() == pytest.approx(1.0, abs=1e-6)
    assert iou_utils.paired_boxes_iou3d_gpu(box, stacked).item() == 0.0


def test_empty_inputs_and_bad_shapes():
    boxes = torch.rand(5, 7)
    assert iou_utils.boxes_iou_bev(boxes[:0], boxes).shape == (0, 5)
    assert iou_utils.boxes_iou3d_gpu(boxes, boxes[:0]).shape == (5, 0)
    assert iou_utils.paired_boxes_iou3d_gpu(boxes[:0], boxes[:0]).shape == (0,)
    with pytest.raises(ValueError, match=r'boxes_b must have shape \(N, 7\+\)'):
        iou_utils.boxes_iou_bev(boxes, torch.rand(5, 5))
    with pytest.raises(ValueError, match='same number of rows'):
        iou_utils.paired_boxes_iou3d_gpu(boxes, boxes[:3])


def test_gradients_follow_upstream():
    a = (torch.rand(4, 7) + 1).requires_grad_()
    b = torch.rand(3, 7) + 1
    assert not iou_utils.boxes_overlap_bev(a, b).requires_grad
    assert not iou_utils.boxes_iou_bev(a, b).requires_grad
    assert iou_utils.boxes_iou3d_gpu(a, b).requires_grad  # z-overlap and volumes are tensor ops upstream too


def test_extra_columns_are_ignored():
    rng = np.random.default_rng(6)
    boxes = torch.from_numpy(make_boxes(rng, 10)).float()
    with_velocity = torch.cat((boxes, torch.rand(10, 3)), dim=1)
    torch.testing.assert_close(iou_utils.boxes_iou3d_gpu(with_velocity, with_velocity),
                               iou_utils.boxes_iou3d_gpu(boxes, boxes))


# ---------------------------------------------------------------- fast-path dispatcher


@pytest.fixture
def fake_fast_op(monkeypatch):
    """Install `common_ops.boxes_overlap_bev` as an in-memory module that records its calls."""
    calls = []
    package = types.ModuleType('common_ops')
    package.__path__ = []
    module = types.ModuleType('common_ops.boxes_overlap_bev')

    def boxes_overlap_bev(boxes_a, boxes_b):
        calls.append(boxes_a.shape[0])
        return NotImplemented if boxes_a.shape[0] == 1 else torch.full((boxes_a.shape[0], boxes_b.shape[0]), 7.0)

    module.boxes_overlap_bev = boxes_overlap_bev
    monkeypatch.setitem(sys.modules, 'common_ops', package)
    monkeypatch.setitem(sys.modules, 'common_ops.boxes_overlap_bev', module)
    monkeypatch.delenv(fast_paths.DISABLE_ENV, raising=False)
    fast_paths._import_fast_op.cache_clear()
    yield calls
    fast_paths._import_fast_op.cache_clear()


def test_fast_path_is_used_when_installed(fake_fast_op, monkeypatch):
    boxes = torch.rand(3, 7) + 1
    assert (iou_utils.boxes_overlap_bev(boxes, boxes) == 7.0).all()
    assert fake_fast_op == [3]
    # Declining with NotImplemented falls back to the reference.
    assert iou_utils.boxes_overlap_bev(boxes[:1], boxes[:1]).item() == pytest.approx(
        (boxes[0, 3] * boxes[0, 4]).item(), rel=1e-5)
    monkeypatch.setenv(fast_paths.DISABLE_ENV, '1')
    assert fast_paths.get_fast_op('boxes_overlap_bev') is None
    assert (iou_utils.boxes_overlap_bev(boxes, boxes) != 7.0).all()


def test_missing_fast_path_is_none():
    fast_paths._import_fast_op.cache_clear()
    assert fast_paths.get_fast_op('no_such_op_anywhere') is None


@pytest.mark.parametrize('name', ['boxes_overlap_bev', 'paired_boxes_overlap_bev'])
def test_installed_overlap_fast_path_matches_reference(name, monkeypatch):
    fast = fast_paths.get_fast_op(name)
    if fast is None:
        pytest.skip(f'no fast path common_ops.{name} installed')
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    rng = np.random.default_rng(7)
    a = torch.from_numpy(make_boxes(rng, 300)).float().to(device)
    b = torch.from_numpy(make_boxes(rng, 300)).float().to(device)
    result = fast(a, b)
    if result is NotImplemented:
        pytest.skip(f'common_ops.{name} declines {device} inputs')
    monkeypatch.setenv(fast_paths.DISABLE_ENV, '1')
    torch.testing.assert_close(result, getattr(iou_utils, name)(a, b), atol=TOL, rtol=TOL)
