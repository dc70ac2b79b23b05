"""Waymo range-image decoding and the TensorFlow-free frame reader, against the synthetic Waymo writer.

Acceptance: synthetic scene -> ray casting -> range images -> Frame proto -> tfrecord -> `read_frames` gives back
the ray-cast points pixel by pixel (same pixels, xyz within float32 range quantisation, identical intensity /
elongation / NLZ flag) and the labels exactly. The range-image geometry is also checked against hand-computed
pixels (official column / row conventions), independently of the writer.
"""
import numpy as np
import pytest

from pcdet.datasets.synthetic import waymo_writer
from pcdet.datasets.synthetic.geometry import pose_matrix, rotation_matrix_from_rpy
from pcdet.datasets.synthetic.waymo import main as cli_main
from pcdet.datasets.waymo import frame_proto, range_image, tfrecord
from pcdet.datasets.waymo.frame_reader import LIDAR_ORDER, read_frames

TINY = dict(num_sequences=2, frames_per_sequence=2, top_columns=256, top_pose_sectors=4, side_beams=16,
            side_columns=64, num_objects=16, seed=0)


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """(sim, [SyntheticFrame], tfrecord path, [decoded frames]) for the first sequence of a tiny config."""
    config = waymo_writer.SyntheticWaymoConfig(root='unused', **TINY)
    sim = waymo_writer.simulate_sequence(waymo_writer.plan_sequences(config)[0], config)
    frames = [waymo_writer.build_frame(sim, index) for index in range(config.frames_per_sequence)]
    path = tmp_path_factory.mktemp('waymo') / sim.plan.filename
    tfrecord.write_records(path, [frame_proto.encode_frame(frame.message) for frame in frames])
    return sim, frames, path, list(read_frames(path, with_pixel_index=True))


def _sorted_truth(truth):
    order = np.lexsort((truth['col'], truth['row'], truth['return']))
    return {key: value[order] for key, value in truth.items()}


def test_round_trip_points_equal_the_ray_cast_points(written):
    sim, frames, _, decoded = written
    for frame, got in zip(frames, decoded):
        assert set(got['lidars']) == set(LIDAR_ORDER)
        for name in LIDAR_ORDER:
            truth, lidar = _sorted_truth(frame.truth['lidars'][name]), got['lidars'][name]
            pixels = np.stack([truth['return'], truth['row'], truth['col']], axis=1)
            np.testing.assert_array_equal(lidar['pixel_index'], pixels)  # same pixels, same (row-major) order
            assert lidar['num_points_per_return'] == [int((truth['return'] == r).sum()) for r in (0, 1)]
            distance = np.linalg.norm(truth['xyz'], axis=1)
            error = np.linalg.norm(lidar['points'][:, 0:3] - truth['xyz'], axis=1)
            assert np.all(error <= 1e-3 * (1.0 + distance / 75.0)), (name, error.max())
            np.testing.assert_array_equal(lidar['points'][:, 3], truth['intensity'])
            np.testing.assert_array_equal(lidar['points'][:, 4], truth['elongation'])
            np.testing.assert_array_equal(lidar['points'][:, 5], truth['nlz'])
            assert lidar['points'].dtype == np.float32 and lidar['points'].shape[1] == 6
        top = frame.truth['lidars']['TOP']
        assert (top['return'] == 1).any() and (top['nlz'] == 1).any()  # second returns and NLZ points exist
        assert set(np.unique(got['points'][:, 5])) <= {-1.0, 1.0}


def test_merged_points_follow_openpcdet_order(written):
    _, _, _, decoded = written
    frame = decoded[0]
    np.testing.assert_array_equal(frame['points'], np.concatenate([frame['lidars'][n]['points'] for n in LIDAR_ORDER]))
    assert frame['num_points_of_each_lidar'] == [len(frame['lidars'][n]['points']) for n in LIDAR_ORDER]
    # within a LiDAR: first return then second return
    index = frame['lidars']['TOP']['pixel_index']
    assert np.all(np.diff(index[:, 0]) >= 0)
    first_only = next(read_frames(written[2], returns=(0,)))
    assert first_only['num_points_of_each_lidar'][0] == frame['lidars']['TOP']['num_points_per_return'][0]


def test_labels_round_trip(written):
    sim, frames, _, decoded = written
    for frame, got in zip(frames, decoded):
        truth, labels = frame.truth['labels'], got['labels']
        np.testing.assert_array_equal(labels['box'], truth['box'])
        np.testing.assert_array_equal(labels['type'], truth['type'])
        np.testing.assert_array_equal(labels['speed'], truth['speed'])
        np.testing.assert_array_equal(labels['accel'], 0.0)
        np.testing.assert_array_equal(labels['num_lidar_points_in_box'], truth['num_lidar_points_in_box'])
        np.testing.assert_array_equal(labels['num_top_lidar_points_in_box'], truth['num_top_lidar_points_in_box'])
        np.testing.assert_array_equal(labels['difficulty'], truth['difficulty'])
        np.testing.assert_array_equal(labels['tracking_difficulty'], truth['difficulty'])
        assert labels['id'].tolist() == truth['id']
        assert set(labels['name']) <= {'Vehicle', 'Pedestrian', 'Cyclist', 'Sign'}
        assert {'Vehicle', 'Pedestrian', 'Cyclist'} <= set(labels['name'])
        assert np.all(labels['box'][:, 6] >= -np.pi) and np.all(labels['box'][:, 6] < np.pi)
        np.testing.assert_array_equal(got['pose'], frame.truth['pose'])
        assert got['context_name'] == sim.plan.name
        assert got['timestamp_micros'] == sim.plan.first_timestamp_us + 100_000 * got['frame_index']
        assert got['image_shapes']['FRONT'] == (1280, 1920) and got['image_shapes']['SIDE_LEFT'] == (886, 1920)
    assert decoded[1]['labels']['id'].tolist()[:3] == decoded[0]['labels']['id'].tolist()[:3]  # stable ids


def _points_in_box(points, box):
    offset = points[:, 0:3] - box[0:3]
    cos, sin = np.cos(box[6]), np.sin(box[6])
    along, across = offset[:, 0] * cos + offset[:, 1] * sin, -offset[:, 0] * sin + offset[:, 1] * cos
    return (np.abs(along) <= box[3] / 2) & (np.abs(across) <= box[4] / 2) & (np.abs(offset[:, 2]) <= box[5] / 2)


def test_num_lidar_points_in_box_counts_decoded_points_and_sets_difficulty(written):
    _, _, _, decoded = written
    for frame in decoded:
        first_returns = np.concatenate([frame['lidars'][n]['points'][frame['lidars'][n]['pixel_index'][:, 0] == 0]
                                        for n in LIDAR_ORDER])
        top = frame['lidars']['TOP']['points'][frame['lidars']['TOP']['pixel_index'][:, 0] == 0]
        labels = frame['labels']
        counts = [int(_points_in_box(first_returns, box).sum()) for box in labels['box']]
        assert counts == labels['num_lidar_points_in_box'].tolist()
        assert [int(_points_in_box(top, box).sum()) for box in labels['box']] == \
            labels['num_top_lidar_points_in_box'].tolist()
        assert sum(int(_points_in_box(frame['points'], box).sum()) for box in labels['box']) == sum(counts)
        np.testing.assert_array_equal(labels['difficulty'], np.where(labels['num_lidar_points_in_box'] <= 5, 2, 1))
        assert (labels['num_lidar_points_in_box'] > 5).any() and (labels['num_lidar_points_in_box'] <= 5).any()


def test_top_pixel_poses_are_used(written):
    """Decoding the TOP without its per-pixel poses moves points by the ego motion within the revolution."""
    sim, frames, _, decoded = written
    message = frames[0].message
    calibration = message['context']['laser_calibrations'][0]
    top = message['lasers'][0]
    image = frame_proto.decode_matrix(top['ri_return1']['range_image_compressed'])
    pixel_pose = frame_proto.decode_matrix(top['ri_return1']['range_image_pose_compressed'])
    assert pixel_pose.shape == image.shape[:2] + (6,)
    assert len(np.unique(pixel_pose[..., 3])) == sim.config.top_pose_sectors
    extrinsic = frame_proto.transform_to_matrix(calibration['extrinsic'])
    inclinations = range_image.row_inclinations(calibration, image.shape[0])
    with_pose = range_image.range_image_to_points(image, extrinsic, inclinations, pixel_pose, frames[0].truth['pose'])
    without = range_image.range_image_to_points(image, extrinsic, inclinations)
    np.testing.assert_array_equal(with_pose, decoded[0]['lidars']['TOP']['points'][:len(with_pose)])
    shift = np.linalg.norm(with_pose[:, 0:3] - without[:, 0:3], axis=1)
    assert shift.max() > 0.02  # >= 2 m/s ego speed x 37.5 ms between the outer sectors and the frame pose
    with pytest.raises(ValueError, match='frame_pose'):
        range_image.range_image_to_points(image, extrinsic, inclinations, pixel_pose)


def test_calibrations_per_beam_and_uniform(written):
    _, frames, _, decoded = written
    calibrations = frames[0].message['context']['laser_calibrations']
    assert len(calibrations[0]['beam_inclinations']) == 64  # TOP: per-beam, non-uniform
    assert np.ptp(np.diff(calibrations[0]['beam_inclinations'])) > 1e-3
    assert all('beam_inclinations' not in c for c in calibrations[1:])  # short-range: uniform min / max
    geometry = decoded[0]['laser_calibrations']
    assert not geometry['TOP']['uniform'] and geometry['FRONT']['uniform']
    np.testing.assert_array_equal(geometry['TOP']['inclinations'], calibrations[0]['beam_inclinations'][::-1])


# ---------------------------------------------------------------------------------------------------------------
# Range-image geometry against hand-computed pixels (official conventions, independent of the writer)


def _single_pixel_image(height, width, row, col, distance, channels=(0.5, 0.25, -1.0)):
    image = np.full((height, width, 4), -1.0, dtype=np.float32)
    image[row, col] = (distance, *channels)
    return image


@pytest.mark.parametrize('yaw_deg', [0.0, 90.0, -135.0])
def test_column_azimuth_convention(yaw_deg):
    """Column c looks at vehicle azimuth pi - (c + 0.5) 2 pi / W whatever the LiDAR's yaw: column 0 backwards,
    the middle of the image forwards, a quarter of the width to the left."""
    width, extrinsic = 8, pose_matrix(rotation_matrix_from_rpy(0.0, 0.0, np.deg2rad(yaw_deg)), [0.0, 0.0, 0.0])
    inclinations = np.zeros(1)
    for col in range(width):
        points = range_image.range_image_to_points(_single_pixel_image(1, width, 0, col, 10.0), extrinsic,
                                                   inclinations)
        azimuth = np.pi - (col + 0.5) * 2 * np.pi / width
        np.testing.assert_allclose(points[0, 0:2], 10.0 * np.array([np.cos(azimuth), np.sin(azimuth)]), atol=1e-5)
        np.testing.assert_array_equal(points[0, 3:6], [0.5, 0.25, -1.0])


def test_uniform_and_per_beam_inclinations():
    uniform = {'beam_inclination_min': -0.2, 'beam_inclination_max': 0.2}
    np.testing.assert_allclose(range_image.row_inclinations(uniform, 4), [0.15, 0.05, -0.05, -0.15])
    per_beam = {'beam_inclinations': np.array([-0.3, -0.1, 0.0, 0.02])}
    np.testing.assert_array_equal(range_image.row_inclinations(per_beam, 4), [0.02, 0.0, -0.1, -0.3])
    with pytest.raises(ValueError, match='4 beam_inclinations for a range image of 5 rows'):
        range_image.row_inclinations(per_beam, 5)
    translation = np.array([1.0, -2.0, 1.5])
    extrinsic = pose_matrix(np.eye(3), translation)
    for calibration in (uniform, per_beam):
        rows = range_image.row_inclinations(calibration, 4)
        for row in range(4):
            image = _single_pixel_image(4, 8, row, 4, 20.0)  # column 4 of 8: azimuth -pi/8
            point = range_image.range_image_to_points(image, extrinsic, rows)[0, 0:3]
            expected = 20.0 * np.array([np.cos(rows[row]) * np.cos(-np.pi / 8), np.cos(rows[row]) * np.sin(-np.pi / 8),
                                        np.sin(rows[row])]) + translation
            np.testing.assert_allclose(point, expected, atol=1e-5)


def test_pixel_pose_moves_points_through_the_global_frame():
    """p = frame_pose^-1 (pixel_pose (E p_laser)), pixel pose (roll, pitch, yaw, x, y, z) = Rz Ry Rx, t."""
    image = _single_pixel_image(1, 4, 0, 1, 5.0)  # column 1 of 4: azimuth +pi/4
    rpyxyz = np.array([0.01, -0.02, 0.3, 100.0, 200.0, 3.0])
    pixel_pose = np.tile(rpyxyz.astype(np.float32), (1, 4, 1))
    frame_pose = pose_matrix(rotation_matrix_from_rpy(0.0, 0.0, 0.25), [99.0, 201.0, 2.5])
    point = range_image.range_image_to_points(image, np.eye(4), np.zeros(1), pixel_pose, frame_pose)[0, 0:3]
    laser = 5.0 * np.array([np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0])
    rpy32 = rpyxyz.astype(np.float32).astype(np.float64)
    world = rotation_matrix_from_rpy(*rpy32[0:3]) @ laser + rpy32[3:6]
    expected = np.linalg.inv(frame_pose) @ np.append(world, 1.0)
    np.testing.assert_allclose(point, expected[0:3], atol=1e-4)
    np.testing.assert_allclose(range_image.rotation_from_rpy(0.01, -0.02, 0.3),
                               rotation_matrix_from_rpy(0.01, -0.02, 0.3), atol=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# Reader errors, writer CLI, determinism


def test_truncated_segment_raises_naming_file_and_offset(written, tmp_path):
    _, _, path, _ = written
    data = path.read_bytes()
    offsets = [offset for offset, _ in tfrecord.iter_record_offsets(path)]
    broken = tmp_path / 'segment-broken.tfrecord'
    broken.write_bytes(data[:offsets[1] + 100])
    frames = read_frames(broken)
    assert next(frames)['frame_index'] == 0
    with pytest.raises(tfrecord.TFRecordError, match=rf'segment-broken\.tfrecord: record at byte offset {offsets[1]}'):
        next(frames)


def test_labels_only_mode_and_pixel_index_off(written):
    _, frames, path, _ = written
    frame = next(read_frames(path, with_points=False))
    assert 'points' not in frame and len(frame['labels']['box']) == len(frames[0].truth['labels']['box'])
    frame = next(read_frames(path))
    assert 'pixel_index' not in frame['lidars']['TOP']


def test_cli_writes_layout_deterministically_and_skips_reruns(tmp_path, capsys):
    args = ['--num_sequences', '2', '--frames_per_sequence', '1', '--top_columns', '64', '--side_beams', '4',
            '--side_columns', '16', '--num_objects', '8', '--seed', '3', '--quiet']
    assert cli_main(['--root', str(tmp_path / 'a'), *args]) == 0
    assert cli_main(['--root', str(tmp_path / 'b'), *args]) == 0
    root = tmp_path / 'a'
    train = (root / 'ImageSets' / 'train.txt').read_text().split()
    val = (root / 'ImageSets' / 'val.txt').read_text().split()
    assert len(train) == 1 and len(val) == 1
    for name in train + val:
        assert name.startswith('segment-') and name.endswith('_with_camera_labels.tfrecord')
        assert (root / 'raw_data' / name).read_bytes() == (tmp_path / 'b' / 'raw_data' / name).read_bytes()
        frame = next(read_frames(root / 'raw_data' / name, with_points=False))
        assert f'segment-{frame["context_name"]}_with_camera_labels.tfrecord' == name
    capsys.readouterr()
    assert cli_main(['--root', str(root), *args]) == 0
    assert 'skipped' in capsys.readouterr().out
    assert cli_main(['--root', str(root), *args[:-3], '--seed', '4', '--quiet']) == 0  # new seed: regenerated
    assert (root / 'ImageSets' / 'train.txt').read_text().split() != train
    assert len(list((root / 'raw_data').iterdir())) == 2  # the old segments were removed
    assert cli_main(['--root', str(root), '--num_sequences', '1']) == 2
