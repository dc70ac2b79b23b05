"""Greedy NMS against a brute-force Python NMS on shapely IoU."""
import numpy as np
import pytest
import shapely
import torch

from pcdet.ops import fast_paths
from pcdet.ops.iou3d_nms import iou3d_nms_utils as iou_utils
from pcdet.ops.iou3d_nms import nms as nms_module


def clustered_boxes(rng, num, num_clusters=25, duplicates=20):
    """Boxes around a few centres (lots of overlap), with some exact duplicates and float32-exact values."""
    centres = rng.uniform(-20, 20, (num_clusters, 2))
    boxes = np.zeros((num, 7))
    boxes[:, 0:2] = centres[rng.integers(0, num_clusters, num)] + rng.normal(0, 0.6, (num, 2))
    boxes[:, 2] = rng.normal(0, 0.5, num)
    boxes[:, 3:6] = rng.uniform(0.5, 4.5, (num, 3))
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, num)
    boxes[rng.choice(num, duplicates, replace=False)] = boxes[rng.choice(num, duplicates, replace=False)]
    return boxes.astype(np.float32).astype(np.float64)


def polygons(boxes, axis_aligned=False):
    heading = np.zeros(len(boxes)) if axis_aligned else boxes[:, 6]
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) / 2 * boxes[:, None, 3:5]
    cos, sin = np.cos(heading)[:, None], np.sin(heading)[:, None]
    corners = np.stack((local[..., 0] * cos - local[..., 1] * sin, local[..., 0] * sin + local[..., 1] * cos), -1)
    return shapely.polygons(corners + boxes[:, None, 0:2])


def shapely_iou_matrix(boxes, axis_aligned=False):
    polys = polygons(boxes, axis_aligned)
    inter = shapely.area(shapely.intersection(polys[:, None], polys[None, :]))
    area = boxes[:, 3] * boxes[:, 4]
    return inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-8)


def brute_force_nms(boxes, scores, thresh, pre_maxsize=None, axis_aligned=False):
    """Textbook greedy NMS; equal scores are ordered by input index (stable sort).

    Returns the kept indices and the smallest |IoU - thresh| among the comparisons that decided them.
    """
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:pre_maxsize]
    iou = shapely_iou_matrix(boxes[order], axis_aligned)
    keep, margin = [], np.inf
    for pos in range(len(order)):
        compared = iou[keep, pos]
        margin = min(margin, np.abs(compared - thresh).min(initial=np.inf))
        if (compared <= thresh).all():
            keep.append(pos)
    return [order[pos] for pos in keep], margin


def as_tensors(boxes, scores):
    return torch.from_numpy(boxes).float(), torch.from_numpy(np.asarray(scores)).float()


@pytest.mark.parametrize('seed,thresh', [(0, 0.1), (1, 0.5), (2, 0.7), (3, 0.01)])
def test_rotated_nms_matches_brute_force(seed, thresh):
    rng = np.random.default_rng(seed)
    boxes = clustered_boxes(rng, 300)
    scores = rng.choice(np.linspace(0.05, 1.0, 60), 300).astype(np.float32)  # many equal scores
    expected, margin = brute_force_nms(boxes, scores, thresh)
    assert margin > 1e-6, 'test data too close to the threshold to be decisive'  # NMS IoU is float64 on CPU
    keep, second = iou_utils.nms_gpu(*as_tensors(boxes, scores), thresh)
    assert second is None and keep.dtype == torch.long
    assert keep.tolist() == expected
    assert 10 < len(expected) < 290  # suppression really happened


@pytest.mark.parametrize('seed,thresh', [(4, 0.2), (5, 0.55)])
def test_axis_aligned_nms_ignores_heading(seed, thresh):
    rng = np.random.default_rng(seed)
    boxes = clustered_boxes(rng, 250)
    scores = rng.uniform(0, 1, 250).astype(np.float32)
    expected, margin = brute_force_nms(boxes, scores, thresh, axis_aligned=True)
    assert margin > 1e-6
    keep, _ = iou_utils.nms_normal_gpu(*as_tensors(boxes, scores), thresh)
    assert keep.tolist() == expected


def test_equal_scores_keep_the_lower_input_index():
    box = [0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.3]
    far = [10.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.3]
    boxes, scores = as_tensors(np.array([far, box, box, box]), [0.5, 0.5, 0.5, 0.9])
    keep, _ = iou_utils.nms_gpu(boxes, scores, 0.5)
    assert keep.tolist() == [3, 0]  # 0.9 first; then index 0 before the tied (suppressed) duplicates 1, 2
    keep, _ = iou_utils.nms_gpu(boxes[:3], scores[:3], 0.5)
    assert keep.tolist() == [0, 1]


def test_pre_and_post_max_size():
    rng = np.random.default_rng(6)
    boxes = clustered_boxes(rng, 200)
    scores = rng.uniform(0, 1, 200).astype(np.float32)
    expected, _ = brute_force_nms(boxes, scores, 0.3, pre_maxsize=80)
    keep, _ = iou_utils.nms_gpu(*as_tensors(boxes, scores), 0.3, pre_maxsize=80)
    assert keep.tolist() == expected
    capped, _ = iou_utils.nms_gpu(*as_tensors(boxes, scores), 0.3, pre_maxsize=80, post_max_size=5)
    assert capped.tolist() == expected[:5]


def test_upstream_call_style_kwargs_are_accepted():
    rng = np.random.default_rng(7)
    boxes, scores = as_tensors(clustered_boxes(rng, 50), rng.uniform(0, 1, 50))
    nms_config = {'NMS_TYPE': 'nms_gpu', 'NMS_THRESH': 0.2, 'NMS_PRE_MAXSIZE': 4096, 'NMS_POST_MAXSIZE': 500}
    keep, _ = iou_utils.nms_gpu(boxes, scores, nms_config['NMS_THRESH'], **nms_config)
    assert keep.tolist() == iou_utils.nms_bev(boxes, scores, 0.2)[0].tolist()


def test_empty_and_single_inputs():
    keep, _ = iou_utils.nms_gpu(torch.zeros(0, 7), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.long
    keep, _ = iou_utils.nms_normal_gpu(torch.ones(1, 7), torch.ones(1), 0.5)
    assert keep.tolist() == [0]
    with pytest.raises(ValueError, match=r'scores must have shape \(N,\)'):
        iou_utils.nms_gpu(torch.ones(3, 7), torch.ones(2), 0.5)


def test_python_fallback_matches_numba(monkeypatch):
    rng = np.random.default_rng(8)
    boxes, scores = as_tensors(clustered_boxes(rng, 150), rng.uniform(0, 1, 150))
    with_numba, _ = iou_utils.nms_gpu(boxes, scores, 0.25)
    monkeypatch.setattr(nms_module, '_greedy_keep_kernel', lambda: nms_module._greedy_keep_python)
    without_numba, _ = iou_utils.nms_gpu(boxes, scores, 0.25)
    assert with_numba.tolist() == without_numba.tolist()


def test_suppression_pairs_are_blocked_consistently(monkeypatch):
    rng = np.random.default_rng(9)
    boxes, scores = as_tensors(clustered_boxes(rng, 120), rng.uniform(0, 1, 120))
    expected, _ = iou_utils.nms_gpu(boxes, scores, 0.3)
    monkeypatch.setattr(nms_module, 'PREFILTER_BLOCK', 100)  # one row per block
    assert iou_utils.nms_gpu(boxes, scores, 0.3)[0].tolist() == expected.tolist()


def test_installed_nms_fast_path_matches_reference(monkeypatch):
    fast = fast_paths.get_fast_op('nms_gpu')
    if fast is None:
        pytest.skip('no fast path common_ops.nms_gpu installed')
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    rng = np.random.default_rng(10)
    boxes, scores = as_tensors(clustered_boxes(rng, 500), rng.uniform(0, 1, 500))
    boxes, scores = boxes.to(device), scores.to(device)
    result = fast(boxes, scores, 0.3, pre_maxsize=None, post_max_size=None)
    if result is NotImplemented:
        pytest.skip(f'common_ops.nms_gpu declines {device} inputs')
    monkeypatch.setenv(fast_paths.DISABLE_ENV, '1')
    assert result[0].tolist() == iou_utils.nms_gpu(boxes, scores, 0.3)[0].tolist()
