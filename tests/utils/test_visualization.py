"""BEV pictures: valid PNGs, boxes actually drawn where they are, bad points rejected."""
import io

import numpy as np
import pytest

from pcdet.utils.visualization import GT_COLOR, PRED_COLOR, render_bev, save_bev_png


def _png_pixels(png_bytes):
    from matplotlib import image as mpl_image
    return mpl_image.imread(io.BytesIO(png_bytes), format='png')[..., :3]


def _has_color(pixels, hex_color, tolerance=0.08):
    rgb = np.array([int(hex_color[i:i + 2], 16) / 255.0 for i in (1, 3, 5)])
    return bool((np.abs(pixels - rgb).max(axis=-1) < tolerance).any())


def test_picture_shows_gt_and_predictions(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.uniform([-20, -20, -2, 0, 0], [20, 20, 2, 1, 0], size=(5000, 5)).astype(np.float32)
    gt_boxes = np.array([[5, 5, 0, 4, 2, 1.5, 0.3, 0, 0], [-8, 3, 0, 1, 1, 2, 1.2, 0, 0]], dtype=np.float32)
    pred_boxes = gt_boxes[:1] + np.array([0.3, 0, 0, 0, 0, 0, 0.1, 0, 0], dtype=np.float32)
    path = save_bev_png(tmp_path / 'frame.png', points, gt_boxes=gt_boxes, gt_names=['car', 'pedestrian'],
                        pred_boxes=pred_boxes, pred_scores=np.array([0.9]), pred_names=['car'],
                        point_cloud_range=[-20, -20, -3, 20, 20, 3])
    data = path.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    pixels = _png_pixels(data)
    assert _has_color(pixels, GT_COLOR) and _has_color(pixels, PRED_COLOR)
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_low_scores_hidden_and_empty_inputs_ok():
    points = np.zeros((10, 4), dtype=np.float32)
    boxes = np.array([[1, 1, 0, 2, 1, 1, 0]], dtype=np.float32)
    pixels = _png_pixels(render_bev(points, pred_boxes=boxes, pred_scores=np.array([0.1]), score_threshold=0.5,
                                    point_cloud_range=[-5, -5, -1, 5, 5, 1]))
    assert not _has_color(pixels, PRED_COLOR)
    assert render_bev(np.zeros((0, 3), dtype=np.float32))[:4] == b'\x89PNG'


def test_bad_points_rejected():
    with pytest.raises(ValueError, match=r'\(N, 3\+\)'):
        render_bev(np.zeros((10, 2), dtype=np.float32))
