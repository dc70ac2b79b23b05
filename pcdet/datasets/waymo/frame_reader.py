"""Read Waymo Open Dataset `.tfrecord` segments into plain numpy dicts (no TensorFlow, no waymo package).

    for frame in read_frames('raw_data/segment-..._with_camera_labels.tfrecord'):
        frame['points']            # (N, 6) float32 x, y, z, intensity, elongation, NLZ flag (vehicle frame)
        frame['labels']['box']     # (M, 7) [cx, cy, cz, length, width, height, heading] (vehicle frame)

Frame dict (what OpenPCDet's `waymo_utils.process_single_sequence` extracts with TensorFlow):
    'context_name'              str, `Frame.context.name` (= the segment name)
    'timestamp_micros'          int
    'frame_index'               int, position of the record in the file
    'pose'                      (4, 4) float64 vehicle -> global
    'points'                    (N, 6) float32, the lidars in `LaserName` order (TOP, FRONT, SIDE_LEFT,
                                SIDE_RIGHT, REAR), each with the requested returns (first, then second), pixels
                                with range > 0 in row-major order: OpenPCDet's `save_lidar_points` layout
    'num_points_of_each_lidar'  list of 5 ints (both returns together), same order
    'lidars'                    {'TOP': {'points': (n, 6), 'num_points_per_return': [n1, n2],
                                         'pixel_index': (n, 3) int64 [return, row, col] (with_pixel_index)}, ...}
    'labels'                    dict of arrays, one row per `laser_labels` entry:
                                'type' int (M,) Label.Type, 'name' str (M,) ('unknown', 'Vehicle', 'Pedestrian',
                                'Sign', 'Cyclist'), 'box' (M, 7), 'speed' (M, 3) [speed_x, speed_y, speed_z],
                                'accel' (M, 3), 'difficulty' (M,) detection_difficulty_level,
                                'tracking_difficulty' (M,), 'num_lidar_points_in_box' (M,),
                                'num_top_lidar_points_in_box' (M,), 'id' str (M,)
    'image_shapes'              {camera name: (height, width)} from the camera calibrations
    'laser_calibrations'        {laser name: {'extrinsic' (4, 4), 'inclinations' (H,) row order, 'uniform' bool}}
    'stats'                     {'time_of_day', 'location', 'weather'} when present

Unset proto fields read as 0 (numbers) / '' (strings), like proto2 getters.
"""
import numpy as np

from . import frame_proto, range_image
from .tfrecord import iter_records

LIDAR_ORDER = ('TOP', 'FRONT', 'SIDE_LEFT', 'SIDE_RIGHT', 'REAR')
LABEL_KEYS = ('type', 'name', 'box', 'speed', 'accel', 'difficulty', 'tracking_difficulty',
              'num_lidar_points_in_box', 'num_top_lidar_points_in_box', 'id')


class WaymoFrameError(ValueError):
    """A frame whose content does not make sense (missing calibration, range image of the wrong shape...)."""


def read_frames(path, returns=(0, 1), verify=True, with_pixel_index=False, with_points=True):
    """Iterate over the frames of one segment file lazily (one record in memory at a time).

    Args:
        path: `.tfrecord` path (or binary file object).
        returns: range-image returns to convert: (0,) first only, (0, 1) both (OpenPCDet's default).
        verify: check record CRCs.
        with_pixel_index: add `lidars[name]['pixel_index']` (return, row, col) per point.
        with_points: convert range images (False: labels, pose and metadata only, much faster).
    Yields:
        frame dicts (see the module docstring). Errors name the file and the frame index.
    """
    for index, record in enumerate(iter_records(path, verify=verify)):
        try:
            yield parse_frame(record, returns=returns, with_pixel_index=with_pixel_index, with_points=with_points,
                              frame_index=index)
        except (ValueError, KeyError) as err:
            raise WaymoFrameError(f'{getattr(path, "name", path)}: frame {index}: {err}') from err


def parse_frame(record, returns=(0, 1), with_pixel_index=False, with_points=True, frame_index=0):
    """One serialized `Frame` -> frame dict (see the module docstring)."""
    message = frame_proto.decode_frame(record)
    context = message.get('context', {})
    pose = frame_proto.transform_to_matrix(message.get('pose'), 'Frame.pose')
    frame = {
        'context_name': context.get('name', ''),
        'timestamp_micros': int(message.get('timestamp_micros', 0)),
        'frame_index': frame_index,
        'pose': pose,
        'labels': parse_labels(message.get('laser_labels', [])),
        'image_shapes': {_enum_name(frame_proto.CAMERA_NAMES, c.get('name', 0)):
                         (int(c.get('height', 0)), int(c.get('width', 0)))
                         for c in context.get('camera_calibrations', [])},
        'stats': {key: context['stats'][key] for key in ('time_of_day', 'location', 'weather')
                  if key in context.get('stats', {})},
    }
    if with_points:
        frame.update(frame_points(message, pose, returns, with_pixel_index))
    return frame


def parse_labels(labels):
    """Decoded `Label` dicts -> dict of arrays (see the module docstring)."""
    count = len(labels)
    out = {
        'type': np.array([label.get('type', 0) for label in labels], dtype=np.int64),
        'box': np.zeros((count, 7), dtype=np.float64),
        'speed': np.zeros((count, 3), dtype=np.float64),
        'accel': np.zeros((count, 3), dtype=np.float64),
        'difficulty': np.array([label.get('detection_difficulty_level', 0) for label in labels], dtype=np.int64),
        'tracking_difficulty': np.array([label.get('tracking_difficulty_level', 0) for label in labels],
                                        dtype=np.int64),
        'num_lidar_points_in_box': np.array([label.get('num_lidar_points_in_box', 0) for label in labels],
                                            dtype=np.int64),
        'num_top_lidar_points_in_box': np.array([label.get('num_top_lidar_points_in_box', 0) for label in labels],
                                                dtype=np.int64),
        'id': np.array([label.get('id', '') for label in labels], dtype=str if count else '<U1'),
    }
    for row, label in enumerate(labels):
        box, metadata = label.get('box', {}), label.get('metadata', {})
        out['box'][row] = [box.get(key, 0.0) for key in
                           ('center_x', 'center_y', 'center_z', 'length', 'width', 'height', 'heading')]
        out['speed'][row] = [metadata.get(key, 0.0) for key in ('speed_x', 'speed_y', 'speed_z')]
        out['accel'][row] = [metadata.get(key, 0.0) for key in ('accel_x', 'accel_y', 'accel_z')]
    unknown = (out['type'] < 0) | (out['type'] >= len(frame_proto.WAYMO_CLASSES))
    out['name'] = np.array([frame_proto.WAYMO_CLASSES[0 if bad else t] for t, bad in zip(out['type'], unknown)],
                           dtype=str if count else '<U1')
    return out


def _enum_name(names, value):
    return names[value] if 0 <= value < len(names) else str(value)


def laser_geometry(calibration, height):
    """{'extrinsic', 'inclinations' (row order), 'uniform'} of a decoded LaserCalibration."""
    return {'extrinsic': frame_proto.transform_to_matrix(calibration.get('extrinsic'), 'LaserCalibration.extrinsic'),
            'inclinations': range_image.row_inclinations(calibration, height),
            'uniform': len(calibration.get('beam_inclinations', ())) == 0}


def _range_image_of(laser, ri_key):
    """Decoded [H, W, C] range image of one return, or None when the return is absent."""
    ri = laser.get(ri_key)
    if not ri:
        return None
    what = f'{_enum_name(frame_proto.LASER_NAMES, laser.get("name", 0))}.{ri_key}'
    image = frame_proto.decode_matrix(ri.get('range_image_compressed'), 'float', what)
    if image is None and 'range_image' in ri:  # deprecated uncompressed field
        dims = tuple(int(d) for d in ri['range_image'].get('shape', {}).get('dims', ()))
        image = ri['range_image'].get('data', np.zeros(0, np.float32)).reshape(dims) if dims else None
    if image is not None and (image.ndim != 3 or image.shape[2] < 1):
        raise WaymoFrameError(f'{what}: range image must be [H, W, C], got shape {image.shape}')
    return image


def frame_points(message, pose, returns=(0, 1), with_pixel_index=False):
    """Points of every LiDAR of a decoded Frame: {'points', 'num_points_of_each_lidar', 'lidars',
    'laser_calibrations'} (see the module docstring)."""
    lasers = {laser.get('name', 0): laser for laser in message.get('lasers', [])}
    calibrations = sorted(message.get('context', {}).get('laser_calibrations', []), key=lambda c: c.get('name', 0))
    if not calibrations and lasers:
        raise WaymoFrameError('the frame has lasers but its context has no laser_calibrations (only the first '
                              'frame of some exports carries the context?)')
    top_pose = None
    top = lasers.get(frame_proto.LASER['TOP'])
    if top is not None and top.get('ri_return1'):
        top_pose = frame_proto.decode_matrix(top['ri_return1'].get('range_image_pose_compressed'), 'float',
                                             'TOP.range_image_pose')
    lidars, all_points, geometry = {}, [], {}
    for calibration in calibrations:
        name_id = calibration.get('name', 0)
        name = _enum_name(frame_proto.LASER_NAMES, name_id)
        laser = lasers.get(name_id, {})
        per_return, counts, indices = [], [], []
        for return_index in returns:
            image = _range_image_of(laser, ('ri_return1', 'ri_return2')[return_index])
            if image is None:
                counts.append(0)
                continue
            if name not in geometry:
                geometry[name] = laser_geometry(calibration, image.shape[0])
            info = geometry[name]
            use_pose = name == 'TOP' and top_pose is not None
            result = range_image.range_image_to_points(
                image, info['extrinsic'], info['inclinations'], pixel_pose=top_pose if use_pose else None,
                frame_pose=pose if use_pose else None, return_pixel_index=with_pixel_index)
            points = result[0] if with_pixel_index else result
            if with_pixel_index:
                indices.append(np.concatenate([np.full((len(points), 1), return_index, np.int64), result[1]], 1))
            per_return.append(points)
            counts.append(len(points))
        points = np.concatenate(per_return) if per_return else np.zeros((0, 6), np.float32)
        lidars[name] = {'points': points, 'num_points_per_return': counts}
        if with_pixel_index:
            lidars[name]['pixel_index'] = np.concatenate(indices) if indices else np.zeros((0, 3), np.int64)
        all_points.append(points)
    return {
        'points': np.concatenate(all_points) if all_points else np.zeros((0, 6), np.float32),
        'num_points_of_each_lidar': [len(lidars[name]['points']) for name in lidars],
        'lidars': lidars,
        'laser_calibrations': geometry,
    }
