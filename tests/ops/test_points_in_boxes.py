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


# ---- CPU fast path (numba kernel) against the torch reference: bit-identical decisions ----

def both_paths(points, boxes):
    """{name: (fast, reference)} for the three public ops on CPU inputs (points (P, 3+), boxes (N, 7+))."""
    points_t = torch.as_tensor(points)
    boxes_t = torch.as_tensor(boxes)
    return {
        'cpu': (pib.points_in_boxes_cpu(points_t, boxes_t), pib.points_in_boxes_cpu(points_t, boxes_t, reference=True)),
        'gpu': (pib.points_in_boxes_gpu(points_t[None], boxes_t[None]),
                pib.points_in_boxes_gpu(points_t[None], boxes_t[None], reference=True)),
        'mask': (pib.points_in_boxes_mask(points_t, boxes_t, 0.3), pib.points_in_boxes_mask(points_t, boxes_t, 0.3,
                                                                                          reference=True)),
    }


def assert_paths_equal(points, boxes):
    results = both_paths(points, boxes)
    for name, (fast, reference) in results.items():
        assert fast.dtype == reference.dtype and fast.shape == reference.shape, name
        assert torch.equal(fast, reference), f'{name}: {(fast != reference).sum().item()} mismatches'
    return results


def test_cpu_kernel_is_used_and_reference_can_be_forced(monkeypatch):
    module = pib._cpu_kernel_module()
    if module is None:
        pytest.skip('numba not installed: the CPU kernel is unavailable')
    calls = []
    real_run = module.run
    monkeypatch.setattr(module, 'run', lambda *args, **kwargs: calls.append(kwargs) or real_run(*args, **kwargs))
    points, boxes = random_scene(np.random.default_rng(10), 500, 5)
    pib.points_in_boxes_cpu(points, boxes)
    pib.points_in_boxes_gpu(torch.from_numpy(points)[None], torch.from_numpy(boxes)[None])
    assert [c['want_mask'] for c in calls] == [True, False]
    pib.points_in_boxes_cpu(points, boxes, reference=True)
    pib.points_in_boxes_gpu(torch.from_numpy(points)[None], torch.from_numpy(boxes)[None], reference=True)
    monkeypatch.setenv(fast_paths.DISABLE_ENV, '1')
    pib.points_in_boxes_cpu(points, boxes)
    pib.points_in_boxes_mask(torch.from_numpy(points), torch.from_numpy(boxes), 0.1)
    assert len(calls) == 2
    pib.points_in_boxes_cpu(points.astype(np.float16), boxes)  # (numpy -> float32: still no kernel, env is set)
    monkeypatch.delenv(fast_paths.DISABLE_ENV)
    pib.points_in_boxes_mask(torch.from_numpy(points).half(), torch.from_numpy(boxes), 0.1)  # float16: reference
    assert len(calls) == 2


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('seed', [20, 21, 22])
def test_cpu_kernel_matches_reference_on_random_frames(seed, dtype):
    rng = np.random.default_rng(seed)
    points = np.concatenate((rng.uniform(-50, 50, (60_000, 2)), rng.normal(0, 1.5, (60_000, 1)),
                             rng.uniform(0, 1, (60_000, 2))), axis=1).astype(dtype)
    boxes = np.concatenate((random_boxes(rng, 50, spread=45), rng.normal(0, 1, (50, 2))), axis=1).astype(dtype)
    # dense clusters of points around every box so that many points are inside and near the faces
    local = rng.uniform(-0.6, 0.6, (50, 400, 3)) * boxes[:, None, 3:6]
    heading = boxes[:, None, 6]
    cluster = np.stack((boxes[:, None, 0] + local[..., 0] * np.cos(heading) - local[..., 1] * np.sin(heading),
                        boxes[:, None, 1] + local[..., 0] * np.sin(heading) + local[..., 1] * np.cos(heading),
                        boxes[:, None, 2] + local[..., 2]), axis=-1).reshape(-1, 3)
    points = np.concatenate((points, np.concatenate((cluster, np.zeros((len(cluster), 2))), 1).astype(dtype)))
    results = assert_paths_equal(points, boxes)
    assert (results['gpu'][0] >= 0).sum() > 5000
    # numpy in -> numpy out is unchanged
    fast_np = pib.points_in_boxes_cpu(points, boxes)
    assert isinstance(fast_np, np.ndarray)
    np.testing.assert_array_equal(fast_np, pib.points_in_boxes_cpu(points, boxes, reference=True))


def boundary_points(boxes, margin, rng, per_box=300):
    """float32 points placed on the faces of the boxes grown by `margin` (xy) and on the z faces, plus their
    neighbours 1-2 ulps away, so that the last-ulp rounding of the reference's arithmetic decides membership."""
    boxes64 = boxes.astype(np.float64)
    points = []
    for cx, cy, cz, dx, dy, dz, heading in boxes64[:, :7]:
        hx, hy, hz = np.float32(dx / 2 + margin), np.float32(dy / 2 + margin), dz / 2
        side = rng.integers(0, 3, per_box)
        u = rng.uniform(-hx, hx, per_box)
        v = rng.uniform(-hy, hy, per_box)
        z = cz + rng.uniform(-hz, hz, per_box)
        u = np.where(side == 0, np.sign(u) * hx, u)  # on an x face
        v = np.where(side == 1, np.sign(v) * hy, v)  # on a y face
        z = np.where(side == 2, cz + np.sign(z - cz) * hz, z)  # on a z face
        x = cx + u * np.cos(heading) - v * np.sin(heading)
        y = cy + u * np.sin(heading) + v * np.cos(heading)
        points.append(np.stack((x, y, z), 1).astype(np.float32))
    points = np.concatenate(points)
    shifted = [points]
    for steps in (1, 2):
        for axis in range(3):
            for direction in (np.inf, -np.inf):
                moved = points.copy()
                for _ in range(steps):
                    moved[:, axis] = np.nextafter(moved[:, axis], np.float32(direction))
                shifted.append(moved)
    return np.concatenate(shifted)


def test_cpu_kernel_matches_reference_on_boundary_points():
    rng = np.random.default_rng(23)
    boxes = random_boxes(rng, 40)
    boxes[:4, 6] = [0.0, np.pi / 2, -np.pi, np.pi / 4]  # exact / special headings
    boxes[4:8, 0:6] = np.float32([[1.0, -2.0, 0.0, 4.0, 2.0, 2.0]])  # exactly representable faces
    boxes[4:8, 6] = [0.0, 0.0, np.pi, np.pi / 2]
    for margin in (pib.GPU_MARGIN, pib.CPU_MARGIN):
        points = boundary_points(boxes, margin, rng)
        points_t, boxes_t = torch.from_numpy(points), torch.from_numpy(boxes)
        fast = pib.points_in_boxes_mask(points_t, boxes_t, margin)
        reference = pib.points_in_boxes_mask(points_t, boxes_t, margin, reference=True)
        assert torch.equal(fast, reference), f'{(fast != reference).sum().item()} mismatches'
        # The set is really on the edge: the decisions of one box are split around its faces, and some points sit
        # exactly on a face (|u| == dx / 2 + margin computed in float32, strict < decides).
        own_box = torch.arange(len(points)) % (len(boxes) * 300) // 300
        own_decision = reference[own_box, torch.arange(len(points))]
        assert 0.2 < own_decision.float().mean() < 0.8
        box_frame = torch.from_numpy(boxes[:, None, 0:2]) - points_t[None, :, 0:2]
        cos, sin = torch.cos(boxes_t[:, 6:7]), torch.sin(boxes_t[:, 6:7])
        u = (-box_frame[..., 0]) * cos + (-box_frame[..., 1]) * sin
        assert (u.abs() == boxes_t[:, 3:4] / 2 + margin).sum() > 0
    assert torch.equal(pib.points_in_boxes_gpu(points_t[None], boxes_t[None]),
                       pib.points_in_boxes_gpu(points_t[None], boxes_t[None], reference=True))


def test_cpu_kernel_empty_and_degenerate_inputs():
    rng = np.random.default_rng(24)
    points, boxes = random_scene(rng, 300, 6)
    assert_paths_equal(points[:0], boxes)
    assert_paths_equal(points, boxes[:0])
    assert_paths_equal(points[:0], boxes[:0])
    assert pib.points_in_boxes_gpu(torch.zeros(0, 5, 3), torch.zeros(0, 2, 7)).shape == (0, 5)
    assert pib.points_in_boxes_gpu(torch.zeros(2, 0, 3), torch.zeros(2, 3, 7)).shape == (2, 0)
    # zero / negative sizes, NaN and infinite values in boxes and points, a far outlier point
    boxes[0, 3:6] = 0.0
    boxes[1, 3] = -1.0
    boxes[2, 4] = np.inf
    boxes[3, 6] = np.nan
    boxes[4, 0] = np.inf
    points[:5] = [[np.nan, 0, 0], [0, np.inf, 0], [0, 0, np.nan], [1e30, 0, 0], boxes[0, 0:3]]
    assert_paths_equal(points, boxes)
    assert_paths_equal(points[3:4], boxes[2:3])  # a single point and a single unbounded box


def test_cpu_kernel_many_and_overlapping_boxes_first_index():
    rng = np.random.default_rng(25)
    points, boxes = random_scene(rng, 20_000, 1500)
    boxes[100:200] = boxes[0:100]  # identical boxes: the lower index wins
    boxes[200:300, 0:3] = boxes[300:400, 0:3]  # nested boxes of different sizes around the same centre
    boxes[200:300, 3:6] = boxes[300:400, 3:6] * 0.5
    results = assert_paths_equal(points, boxes)
    first = results['gpu'][0][0]
    mask = pib.points_in_boxes_mask(torch.from_numpy(points), torch.from_numpy(boxes), pib.GPU_MARGIN)
    assert torch.equal(first, pib.first_box_index(mask))
    assert ((first >= 100) & (first < 200)).sum() == 0 and (first >= 0).sum() > 5000


def test_cpu_kernel_integer_and_float64_batched_inputs():
    rng = np.random.default_rng(26)
    points = rng.integers(-10, 10, (2, 3000, 4))
    boxes = np.stack([random_boxes(rng, 30) for _ in range(2)]).astype(np.float64)
    points_t, boxes_t = torch.from_numpy(points), torch.from_numpy(boxes)
    assert torch.equal(pib.points_in_boxes_gpu(points_t, boxes_t), pib.points_in_boxes_gpu(points_t, boxes_t,
                                                                                           reference=True))
    points_t = torch.from_numpy(rng.uniform(-12, 12, (2, 3000, 3)))
    result = pib.points_in_boxes_gpu(points_t, boxes_t)
    assert torch.equal(result, pib.points_in_boxes_gpu(points_t, boxes_t, reference=True)) and (result >= 0).any()


def test_reference_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(27)
    points_t, boxes_t = (torch.from_numpy(a) for a in random_scene(rng, 1000, 25))
    expected_cpu = pib.points_in_boxes_cpu(points_t, boxes_t, reference=True)
    expected_gpu = pib.points_in_boxes_gpu(points_t[None], boxes_t[None], reference=True)
    monkeypatch.setattr(pib, 'CHUNK_ELEMENTS', 3000)  # 3 boxes per chunk
    assert torch.equal(pib.points_in_boxes_cpu(points_t, boxes_t, reference=True), expected_cpu)
    assert torch.equal(pib.points_in_boxes_gpu(points_t[None], boxes_t[None], reference=True), expected_gpu)
    assert torch.equal(pib.points_in_boxes_gpu(points_t[None], boxes_t[None]), expected_gpu)
