"""box_utils plus geometric properties tying corners, points-in-boxes and IoU together."""
import numpy as np
import pytest
import torch
from scipy.spatial import ConvexHull

from pcdet.ops.iou3d_nms import iou3d_nms_utils as iou_utils
from pcdet.ops.roiaware_pool3d import roiaware_pool3d_utils as pib
from pcdet.utils import box_utils, common_utils


def random_boxes(seed, num, spread=8.0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((num, 7), dtype=np.float32)
    boxes[:, 0:2] = rng.uniform(-spread, spread, (num, 2))
    boxes[:, 2] = rng.uniform(-1, 1, num)
    boxes[:, 3:6] = rng.uniform(0.5, 5.0, (num, 3))
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, num)
    return torch.from_numpy(boxes)


def rotate_scene(points, boxes, angle):
    """Rotate points (P, 3) and boxes (N, 7) together about the z axis."""
    points = common_utils.rotate_points_along_z(points[None], torch.tensor([angle]))[0]
    boxes = boxes.clone()
    boxes[:, 0:3] = common_utils.rotate_points_along_z(boxes[None, :, 0:3], torch.tensor([angle]))[0]
    boxes[:, 6] += angle
    return points, boxes


def test_corner_order_matches_the_convention():
    box = torch.tensor([[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, 0.0]])
    half = torch.tensor([2.0, 1.0, 0.5])
    signs = torch.tensor([[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1],
                          [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]], dtype=torch.float32)
    torch.testing.assert_close(box_utils.boxes_to_corners_3d(box)[0], signs * half + box[0, 0:3])
    turned = box.clone()
    turned[0, 6] = np.pi / 2  # front-left corner (+2, +1) turns CCW to (-1, +2)
    torch.testing.assert_close(box_utils.boxes_to_corners_3d(turned)[0, 0], torch.tensor([0.0, 4.0, 2.5]))


def test_corners_numpy_in_numpy_out_and_bev_corners_agree():
    boxes = random_boxes(0, 20)
    corners_np = box_utils.boxes_to_corners_3d(boxes.numpy())
    assert isinstance(corners_np, np.ndarray) and corners_np.shape == (20, 8, 3)
    np.testing.assert_allclose(box_utils.boxes_bev_corners(boxes.numpy()), corners_np[:, 0:4, 0:2], atol=1e-5)
    torch.testing.assert_close(box_utils.boxes_bev_corners(boxes), box_utils.boxes_to_corners_3d(boxes)[:, 0:4, 0:2])
    with pytest.raises(ValueError, match=r'boxes3d must have shape \(N, 7\+\)'):
        box_utils.boxes_to_corners_3d(torch.zeros(3, 6))


def test_volume_from_corners_and_corners_inside_their_box():
    boxes = random_boxes(1, 30)
    corners = box_utils.boxes_to_corners_3d(boxes)
    volumes = [ConvexHull(c.double().numpy()).volume for c in corners]
    np.testing.assert_allclose(volumes, boxes[:, 3:6].prod(dim=1).numpy(), rtol=1e-4)
    # Corners lie on their box's surface: pulled 1 mm towards the centre they are inside for both margins.
    centres = boxes[:, None, 0:3]
    pulled = centres + (corners - centres) * (1 - 1e-3 / boxes[:, None, 3:6].norm(dim=-1, keepdim=True))
    for k in range(len(boxes)):
        assert pib.points_in_boxes_cpu(pulled[k], boxes[k:k + 1]).all()
        assert (pib.points_in_boxes_gpu(pulled[k][None], boxes[k:k + 1][None]) == 0).all()


def test_rotating_the_scene_preserves_membership_and_iou():
    rng = np.random.default_rng(2)
    boxes = random_boxes(2, 25)
    points = torch.from_numpy(np.concatenate((rng.uniform(-10, 10, (4000, 2)), rng.uniform(-3, 3, (4000, 1))),
                                             axis=1).astype(np.float32))
    inside = pib.points_in_boxes_cpu(points, boxes)
    shrunk = pib.points_in_boxes_cpu(points, box_utils.enlarge_box3d(boxes, (-2e-3, -2e-3, -2e-3)))
    grown = pib.points_in_boxes_cpu(points, box_utils.enlarge_box3d(boxes, (2e-3, 2e-3, 2e-3)))
    decisive = (shrunk == grown).all(dim=0)  # points more than ~1 mm from every face
    iou_bev, iou_3d = iou_utils.boxes_iou_bev(boxes, boxes), iou_utils.boxes_iou3d_gpu(boxes, boxes)
    for angle in (0.3, np.pi / 2, -2.0):
        rot_points, rot_boxes = rotate_scene(points, boxes, angle)
        rot_inside = pib.points_in_boxes_cpu(rot_points, rot_boxes)
        assert torch.equal(rot_inside[:, decisive], inside[:, decisive])
        torch.testing.assert_close(iou_utils.boxes_iou_bev(rot_boxes, rot_boxes), iou_bev, atol=1e-4, rtol=0)
        torch.testing.assert_close(iou_utils.boxes_iou3d_gpu(rot_boxes, rot_boxes), iou_3d, atol=1e-4, rtol=0)
    assert inside.sum() > 200 and decisive.float().mean() > 0.99


def test_iou_identity_symmetry_and_heading_plus_pi():
    boxes = random_boxes(3, 40, spread=4.0)
    iou = iou_utils.boxes_iou_bev(boxes, boxes)
    torch.testing.assert_close(torch.diagonal(iou), torch.ones(40))
    torch.testing.assert_close(iou, iou.T, atol=1e-6, rtol=0)
    assert (iou > 0.05).sum() > 80  # plenty of partial overlaps
    flipped = boxes.clone()
    flipped[:, 6] += np.pi
    torch.testing.assert_close(iou_utils.boxes_iou_bev(flipped, boxes), iou, atol=1e-5, rtol=0)
    torch.testing.assert_close(iou_utils.boxes_iou3d_gpu(flipped, boxes), iou_utils.boxes_iou3d_gpu(boxes, boxes),
                               atol=1e-5, rtol=0)


def test_mask_boxes_outside_range():
    boxes = np.array([[0, 0, 0, 2, 2, 2, 0],        # centre and all corners inside
                      [9.5, 0, 0, 2, 2, 2, 0],      # centre inside, two corners beyond x_max
                      [10.5, 0, 0, 2, 2, 2, 0],     # centre outside, two corners inside
                      [0, 0, 5, 2, 2, 2, 0]],       # centre above z_max
                     dtype=np.float32)
    limit = [-10, -10, -3, 10, 10, 3]
    assert box_utils.mask_boxes_outside_range_numpy(boxes, limit).tolist() == [True, True, False, False]
    # Corner mode ignores z and counts xy corners (each footprint corner appears twice: bottom and top face).
    by_corners = box_utils.mask_boxes_outside_range_numpy(boxes, limit, min_num_corners=4, use_center_to_filter=False)
    assert by_corners.tolist() == [True, True, True, True]
    strict = box_utils.mask_boxes_outside_range_numpy(boxes, limit, min_num_corners=8, use_center_to_filter=False)
    assert strict.tolist() == [True, False, False, True]


def test_remove_points_in_boxes3d_keeps_kind_and_dtype():
    boxes = np.array([[0, 0, 0, 2, 2, 2, 0.4]], dtype=np.float32)
    points = np.array([[0, 0, 0, 7.0], [0.5, 0.2, 0.9, 8.0], [3, 0, 0, 9.0], [0, 0, 1.5, 1.0]], dtype=np.float64)
    kept = box_utils.remove_points_in_boxes3d(points, boxes)
    assert kept.dtype == np.float64 and kept[:, 3].tolist() == [9.0, 1.0]
    kept_t = box_utils.remove_points_in_boxes3d(torch.from_numpy(points).float(), torch.from_numpy(boxes))
    assert isinstance(kept_t, torch.Tensor) and kept_t[:, 3].tolist() == [9.0, 1.0]


def test_enlarge_box3d():
    boxes = np.array([[1, 2, 3, 4, 5, 6, 0.5, 9]], dtype=np.float64)
    large = box_utils.enlarge_box3d(boxes, (1, 2, 3))
    assert isinstance(large, np.ndarray) and large.dtype == np.float64
    assert large.tolist() == [[1, 2, 3, 5, 7, 9, 0.5, 9]] and boxes[0, 3] == 4  # input untouched
    large_t = box_utils.enlarge_box3d(torch.from_numpy(boxes).float(), (1, 2, 3))
    assert large_t[0, 3:6].tolist() == [5, 7, 9]


def test_aligned_bev_boxes_and_nearest_iou():
    boxes = torch.tensor([[0, 0, 0, 4, 2, 1, 0.0], [0, 0, 0, 4, 2, 1, np.pi / 2],
                          [0, 0, 0, 4, 2, 1, np.pi - 0.1], [0, 0, 0, 4, 2, 1, -np.pi / 2 + 0.2]])
    aligned = box_utils.boxes3d_lidar_to_aligned_bev_boxes(boxes)
    expected = torch.tensor([[-2, -1, 2, 1], [-1, -2, 1, 2], [-2, -1, 2, 1], [-1, -2, 1, 2]], dtype=torch.float32)
    torch.testing.assert_close(aligned, expected)
    iou = box_utils.boxes3d_nearest_bev_iou(boxes, boxes)
    torch.testing.assert_close(torch.diagonal(iou), torch.ones(4))
    assert iou[0, 1].item() == pytest.approx(4 / 12)  # 2x2 cross over 8 + 8 - 4
    with pytest.raises(ValueError, match=r'\(N, 4\)'):
        box_utils.boxes_iou_normal(boxes, boxes)
