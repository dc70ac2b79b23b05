"""Segmentation / occupancy pictures: devkit colours, classes at the exact pixels, max-projection, side slice."""
import io

import numpy as np
import pytest

from pcdet.utils import seg_occ_visualization as vis

WHITE = (255, 255, 255)
CAR, PEDESTRIAN, DRIVEABLE, TERRAIN, VEGETATION = 4, 7, 11, 14, 16
TOP = vis.MARGIN + vis.HEADER_HEIGHT + vis.TITLE_HEIGHT  # first panel row (module docstring)


def decode(png_bytes):
    from matplotlib import image as mpl_image
    assert png_bytes[:8] == b'\x89PNG\r\n\x1a\n'
    return np.round(mpl_image.imread(io.BytesIO(png_bytes), format='png')[..., :3] * 255).astype(np.uint8)


def rgb(class_id):
    """Devkit colour of an official challenge id, looked up by name (independent of CLASS_COLORS)."""
    return tuple(_devkit_challenge_colors()[_devkit_challenge_names()[class_id - 1]])


def _devkit_mapper():
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    mapper = LidarsegClassMapper.__new__(LidarsegClassMapper)  # its tables need no dataset
    mapper.ignore_class = mapper.get_ignore_class()
    return mapper


def _devkit_challenge_names():
    coarse2idx = _devkit_mapper().get_coarse2idx()
    return [name for name, _ in sorted(coarse2idx.items(), key=lambda item: item[1]) if name != 'ignore']


def _devkit_challenge_colors():
    return _devkit_mapper().get_coarse2color()


def test_class_names_and_colours_are_the_devkits():
    from nuscenes.utils.color_map import get_colormap
    general = get_colormap()
    assert list(vis.CLASS_NAMES) == _devkit_challenge_names()
    fine2coarse = _devkit_mapper().get_fine2coarse()
    for class_id, name in enumerate(vis.CLASS_NAMES, start=1):
        source = vis.COLOR_SOURCE_CLASS[name]
        assert fine2coarse[source] == name  # the representative really belongs to the class
        assert tuple(vis.CLASS_COLORS[class_id]) == general[source] == _devkit_challenge_colors()[name]
    drawn = [tuple(c) for c in vis.CLASS_COLORS] + [WHITE, vis.FRAME_COLOR]
    assert len(set(drawn)) == len(drawn)  # ignore/noise grey, background and frame differ from every class


def _panel(pixels, origin, shape):
    return pixels[origin[0]:origin[0] + shape[0], origin[1]:origin[1] + shape[1]]


def test_one_car_point_lands_on_its_pixel_left_and_right():
    # x = 10.3 -> column floor(61.5 / 0.2) = 307; y = -20.7 -> row 511 - floor(30.5 / 0.2) = 359 (y up).
    points = np.array([[10.3, -20.7, 0.0, 0.5, 1.0], [-40.1, 30.1, 0.0, 0.5, 1.0]], dtype=np.float32)
    pred, true = np.array([CAR, 0]), np.array([PEDESTRIAN, VEGETATION])
    pixels = decode(vis.render_seg_bev(points, pred, true, title='frame'))
    left, right = (TOP, vis.MARGIN), (TOP, vis.MARGIN + 512 + vis.GAP)
    expected_left = np.full((512, 512, 3), 255, dtype=np.uint8)
    expected_left[359, 307] = rgb(CAR)
    expected_left[105, 55] = vis.IGNORE_COLOR  # second point: column floor(11.1 / 0.2), row 511 - 406
    expected_right = expected_left.copy()
    expected_right[359, 307], expected_right[105, 55] = rgb(PEDESTRIAN), rgb(VEGETATION)
    np.testing.assert_array_equal(_panel(pixels, left, (512, 512)), expected_left)
    np.testing.assert_array_equal(_panel(pixels, right, (512, 512)), expected_right)
    assert tuple(pixels[TOP - 1, vis.MARGIN + 5]) == vis.FRAME_COLOR


def test_highest_point_wins_a_shared_pixel_whatever_the_order():
    low, high = [1.01, 1.01, -1.0], [1.09, 1.05, 2.0]  # same 0.2 m pixel
    for points, labels in (([low, high], [DRIVEABLE, VEGETATION]), ([high, low], [VEGETATION, DRIVEABLE])):
        image = vis.seg_bev_image(np.array(points), np.array(labels), xy_range=(0, 0, 2, 2), resolution=0.2)
        assert image.shape == (10, 10, 3)
        assert tuple(image[10 - 1 - 5, 5]) == rgb(VEGETATION)
        assert (image.reshape(-1, 3) != 255).any(axis=1).sum() == 1


def test_point_size_draws_a_square_and_outside_points_are_dropped():
    points = np.array([[0.5, 0.5, 0.0], [5.0, 5.0, 0.0]])  # the second is outside the range
    image = vis.seg_bev_image(points, np.array([CAR, CAR]), xy_range=(-1, -1, 1, 1), resolution=0.1, point_size=3)
    coloured = np.argwhere((image != 255).any(axis=-1))
    # centre pixel: column 15, row 19 - 15 = 4; the square spans rows 3..5, columns 14..16
    assert sorted(map(tuple, coloured)) == [(r, c) for r in (3, 4, 5) for c in (14, 15, 16)]


def _reference_projection(volume, include_noise=True):
    """Brute force: per column scan z from the top, the first occupied voxel's label (0 if none)."""
    size_x, size_y, size_z = volume.shape
    grid = np.zeros((size_y, size_x), dtype=np.uint8)
    for x in range(size_x):
        for y in range(size_y):
            for z in range(size_z - 1, -1, -1):
                value = volume[x, y, z]
                if value != 0 and (include_noise or value != vis.NOISE):
                    grid[size_y - 1 - y, x] = value
                    break
    return grid


def _colours(grid):
    table = {0: WHITE, vis.NOISE: vis.NOISE_COLOR, **{c: rgb(c) for c in range(1, 17)}}
    return np.array([[table[int(v)] for v in row] for row in grid], dtype=np.uint8)


def _volume():
    volume = np.zeros((8, 6, 5), dtype=np.uint8)
    volume[:, :, 0] = DRIVEABLE
    volume[2, 1, 3] = CAR          # above the road: the car shows
    volume[2, 1, 1] = PEDESTRIAN   # below the car: hidden
    volume[5, 4, 1] = TERRAIN
    volume[5, 4, 4] = vis.NOISE    # noise on top of terrain
    volume[7, 5, 0] = 0            # a free column
    return volume


def test_max_projection_picks_the_highest_voxel():
    volume = _volume()
    image = vis.occ_bev_image(volume)
    np.testing.assert_array_equal(image, _colours(_reference_projection(volume)))
    assert tuple(image[6 - 1 - 1, 2]) == rgb(CAR)
    assert tuple(image[6 - 1 - 4, 5]) == vis.NOISE_COLOR and tuple(image[0, 7]) == WHITE
    without_noise = vis.occ_bev_image(volume, include_noise=False)
    np.testing.assert_array_equal(without_noise, _colours(_reference_projection(volume, include_noise=False)))
    assert tuple(without_noise[1, 5]) == rgb(TERRAIN)
    scaled = vis.occ_bev_image(volume, pixels_per_voxel=3)
    assert scaled.shape == (18, 24, 3)
    assert {tuple(p) for p in scaled[12:15, 6:9].reshape(-1, 3)} == {rgb(CAR)}


def test_side_slice_shows_the_chosen_plane():
    volume = _volume()
    image = vis.occ_side_image(volume, y_index=1)
    reference = np.array([[volume[x, 1, z] for x in range(8)] for z in range(4, -1, -1)])
    np.testing.assert_array_equal(image, _colours(reference))
    assert tuple(image[4 - 3, 2]) == rgb(CAR) and tuple(image[4 - 1, 2]) == rgb(PEDESTRIAN)
    assert tuple(vis.occ_side_image(volume, y_index=4)[0, 5]) == vis.NOISE_COLOR
    with pytest.raises(ValueError, match='y index 6'):
        vis.occ_side_image(volume, y_index=6)


def test_occupancy_pictures_place_pred_and_true_panels():
    pred, true = _volume(), _volume()
    pred[2, 1, 3] = 0  # prediction misses the car: the pedestrian below it shows
    pixels = decode(vis.render_occ_bev(pred, true, pixels_per_voxel=4))
    left, right = (TOP, vis.MARGIN), (TOP, vis.MARGIN + 32 + vis.GAP)
    # voxel (2, 1) -> rows (6 - 1 - 1) * 4 .. + 4, columns 8 .. 12
    assert {tuple(p) for p in _panel(pixels, (left[0] + 16, left[1] + 8), (4, 4)).reshape(-1, 3)} == {rgb(PEDESTRIAN)}
    assert {tuple(p) for p in _panel(pixels, (right[0] + 16, right[1] + 8), (4, 4)).reshape(-1, 3)} == {rgb(CAR)}
    side = decode(vis.render_occ_side(pred, true, y_index=1, pixels_per_voxel=4))
    # column layout: the true panel is below the predicted one (20 rows, a title and a gap further down)
    second = (TOP + 20 + vis.TITLE_HEIGHT + vis.GAP, vis.MARGIN)
    np.testing.assert_array_equal(side[TOP + 4 + 1, vis.MARGIN + 8 + 1], WHITE)  # voxel (2, z=3) of pred: free
    np.testing.assert_array_equal(side[second[0] + 4 + 1, second[1] + 8 + 1], rgb(CAR))


def test_coarse_and_fine_volumes_are_drawn_at_the_same_size():
    coarse = np.zeros((4, 3, 2), dtype=np.uint8)
    coarse[1, 2, 1] = CAR
    fine = np.zeros((8, 6, 4), dtype=np.uint8)
    pixels = decode(vis.render_occ_bev(coarse, fine, pixels_per_voxel=2))
    # coarse voxel (1, 2) at 4 pixels per voxel: rows (3 - 1 - 2) * 4 .. + 4, columns 4 .. 8
    block = _panel(pixels, (TOP, vis.MARGIN + 4), (4, 4))
    assert {tuple(p) for p in block.reshape(-1, 3)} == {rgb(CAR)}
    assert tuple(pixels[TOP + 4, vis.MARGIN + 4]) == WHITE
    with pytest.raises(ValueError, match='integer factor'):
        vis.render_occ_bev(np.zeros((3, 3, 3), np.uint8), fine)


def test_bad_inputs_are_named():
    points = np.zeros((2, 3))
    with pytest.raises(ValueError, match='predicted labels.*17'):
        vis.render_seg_bev(points, np.array([1, 17]), np.array([1, 1]))
    with pytest.raises(ValueError, match='true labels: 1 labels for 2 points'):
        vis.render_seg_bev(points, np.array([1, 1]), np.array([1]))
    with pytest.raises(ValueError, match=r'\(N, 3\+\)'):
        vis.seg_bev_image(np.zeros((2, 2)), np.array([1, 1]))
    with pytest.raises(ValueError, match='true volume.*20'):
        vis.render_occ_bev(np.zeros((2, 2, 2), np.uint8), np.full((2, 2, 2), 20, np.uint8))


def test_save_png_is_atomic(tmp_path):
    path = vis.save_png(tmp_path / 'a' / 'seg.png', vis.render_seg_bev(np.zeros((1, 3)), [CAR], [CAR]))
    assert path.read_bytes()[:4] == b'\x89PNG' and list(path.parent.iterdir()) == [path]
