"""Points-in-boxes ops against an explicit per-box loop, margins, first-box semantics and chunking."""
import numpy as np
import pytest
import torch

from pcdet.ops import fast_paths
from pcdet.ops.roiaware_pool3d import roiaware_pool3d_utils as pib


def random_boxes(rng, num, spread=10.0):
    boxes = np.zeros((num, 7))
    boxes[:, 0:2] = rng.uniform(-spread, spread, (num, 2))
    boxes[:, 2] = rng.uniform(-1, 1, num)
    boxes[:, 3:6] = rng.uniform(0.5, 5.0, (num, 3))
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, num)
    return boxes.astype(np.float32)


def loop_reference(points, boxes, margin):
    """(N, P) bool, one box at a time in float64, plus the distance of each point to the nearest decision edge."""
    points, boxes = points.astype(np.float64), boxes.astype(np.float64)
    inside = np.zeros((len(boxes), len(points)), dtype=bool)
    slack = np.full(len(points), np.inf)
    for k, (cx, cy, cz, dx, dy, dz, heading) in enumerate(boxes[:, 0:7]):
        shift = points[:, 0:2] - (cx, cy)
        u = shift[:, 0] * np.cos(heading) + shift[:, 1] * np.sin(heading)
        v = -shift[:, 0] * np.sin(heading) + shift[:, 1] * np.cos(heading)
        dz_gap = dz / 2 - np.abs(points[:, 2] - cz)
        du_gap, dv_gap = dx / 2 + margin - np.abs(u), dy / 2 + margin - np.abs(v)
        inside[k] = (dz_gap >= 0) & (du_gap > 0) & (dv_gap > 0)
        slack = np.minimum(slack, np.min(np.abs(np.stack((dz_gap, du_gap, dv_gap))), axis=0))
    return inside, slack


def random_scene(rng, num_points=3000, num_boxes=40):
    boxes = random_boxes(rng, num_boxes)
    points = np.concatenate((rng.uniform(-12, 12, (num_points, 2)), rng.uniform(-3, 3, (num_points, 1))), axis=1)
    return points.astype(np.float32), boxes


def test_points_in_boxes_cpu_matches_loop():
    rng = np.random.default_rng(0)
    points, boxes = random_scene(rng)
    expected, slack = loop_reference(points, boxes, pib.CPU_MARGIN)
    decisive = slack > 1e-4  # float32 rounding must not decide membership
    result = pib.points_in_boxes_cpu(torch.from_numpy(points), torch.from_numpy(boxes))
    assert result.shape == (40, 3000) and result.dtype == torch.int32
    assert expected.sum() > 500
    np.testing.assert_array_equal(result.numpy()[:, decisive], expected[:, decisive])


def test_points_in_boxes_cpu_numpy_in_numpy_out_and_extra_columns():
    rng = np.random.default_rng(1)
    points, boxes = random_scene(rng, 500, 10)
    points = np.concatenate((points, rng.uniform(0, 1, (500, 2)).astype(np.float32)), axis=1)
    boxes = np.concatenate((boxes, np.zeros((10, 2), np.float32)), axis=1)  # velocities
    result = pib.points_in_boxes_cpu(points, boxes)
    assert isinstance(result, np.ndarray) and result.shape == (10, 500)
    np.testing.assert_array_equal(result, pib.points_in_boxes_cpu(torch.from_numpy(points[:, :3]),
                                                                   torch.from_numpy(boxes[:, :7])).numpy())


def test_margins_and_z_boundary():
    box = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.0]])
    points = torch.tensor([[2.005, 0.0, 0.0],   # 5 mm beyond the end: inside only with the 1 cm CPU margin
                           [2.02, 0.0, 0.0],    # 2 cm beyond: outside for both
                           [0.0, 1.005, 0.0],
                           [0.0, 0.0, 1.0],     # exactly on the top face: inside (|z - cz| <= dz / 2)
                           [0.0, 0.0, 1.001]])
    assert pib.points_in_boxes_cpu(points, box)[0].tolist() == [1, 0, 1, 1, 0]
    assert pib.points_in_boxes_gpu(points[None], box[None])[0].tolist() == [-1, -1, -1, 0, -1]


def test_heading_rotates_the_footprint():
    box = torch.tensor([[0.0, 0.0, 0.0, 4.0, 1.0, 1.0, np.pi / 2]])  # long axis along +y
    points = torch.tensor([[0.0, 1.8, 0.0], [1.8, 0.0, 0.0]])
    assert pib.points_in_boxes_cpu(points, box)[0].tolist() == [1, 0]


def test_points_in_boxes_gpu_returns_first_containing_box():
    rng = np.random.default_rng(2)
    points_list, boxes_list, expected_list = [], [], []
    for _ in range(2):
        points, boxes = random_scene(rng, 2000, 30)
        boxes[5] = boxes[3]  # identical boxes: the lower index must win
        inside, slack = loop_reference(points, boxes, pib.GPU_MARGIN)
        points = points[slack > 1e-4]
        inside = inside[:, slack > 1e-4]
        expected_list.append(np.where(inside.any(0), inside.argmax(0), -1)[:1500])
        points_list.append(points[:1500])
        boxes_list.append(boxes)
    result = pib.points_in_boxes_gpu(torch.from_numpy(np.stack(points_list)), torch.from_numpy(np.stack(boxes_list)))
    assert result.shape == (2, 1500) and result.dtype == torch.int32
    expected = np.stack(expected_list)
    assert (expected >= 0).sum() > 300 and (expected == 5).sum() == 0 and (expected == 3).sum() > 0
    np.testing.assert_array_equal(result.numpy(), expected)


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(3)
    points, boxes = random_scene(rng, 1000, 25)
    points_t, boxes_t = torch.from_numpy(points), torch.from_numpy(boxes)
    expected_cpu = pib.points_in_boxes_cpu(points_t, boxes_t)
    expected_gpu = pib.points_in_boxes_gpu(points_t[None], boxes_t[None])
    monkeypatch.setattr(pib, 'CHUNK_ELEMENTS', 3000)  # 3 boxes per chunk
    assert torch.equal(pib.points_in_boxes_cpu(points_t, boxes_t), expected_cpu)
    assert torch.equal(pib.points_in_boxes_gpu(points_t[None], boxes_t[None]), expected_gpu)


def test_large_frame_mask_and_first_index_agree():
    rng = np.random.default_rng(4)
    points = torch.from_numpy(rng.uniform(-50, 50, (200_000, 3)).astype(np.float32))
    boxes = torch.from_numpy(random_boxes(rng, 64, spread=45))
    mask = pib.points_in_boxes_mask(points, boxes, pib.GPU_MARGIN)
    first = pib.points_in_boxes_gpu(points[None], boxes[None])[0]
    assert mask.shape == (64, 200_000)
    hit = mask.any(0)
    assert torch.equal(first >= 0, hit) and hit.sum() > 100


def test_empty_inputs_and_bad_shapes():
    points = torch.rand(10, 3)
    assert pib.points_in_boxes_cpu(points, torch.zeros(0, 7)).shape == (0, 10)
    assert pib.points_in_boxes_gpu(points[None], torch.zeros(1, 0, 7)).tolist() == [[-1] * 10]
    assert pib.points_in_boxes_cpu(points[:0], torch.rand(2, 7)).shape == (2, 0)
    with pytest.raises(ValueError, match=r'boxes must have shape \(N, 7\+\)'):
        pib.points_in_boxes_cpu(points, torch.rand(2, 6))
    with pytest.raises(ValueError, match=r'points must have shape \(B, P, 3\+\)'):
        pib.points_in_boxes_gpu(points, torch.rand(1, 2, 7))
    with pytest.raises(ValueError, match='same batch size'):
        pib.points_in_boxes_gpu(points[None].repeat(2, 1, 1), torch.rand(1, 2, 7))


def test_installed_fast_path_matches_reference(monkeypatch):
    fast = fast_paths.get_fast_op('points_in_boxes_mask')
    if fast is None:
        pytest.skip('no fast path common_ops.points_in_boxes_mask installed')
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    points, boxes = random_scene(np.random.default_rng(5))
    points, boxes = torch.from_numpy(points).to(device), torch.from_numpy(boxes).to(device)
    result = fast(points, boxes, pib.GPU_MARGIN)
    if result is NotImplemented:
        pytest.skip(f'common_ops.points_in_boxes_mask declines {device} inputs')
    monkeypatch.setenv(fast_paths.DISABLE_ENV, '1')
    assert torch.equal(result, pib.points_in_boxes_mask(points, boxes, pib.GPU_MARGIN))
