"""The six nuScenes cameras of the synthetic writer: sensor and calibration records, camera timing, sample_data /
ego_pose records and the JPEG files (key frames only, as the camera sweeps are not needed by any reader here).

Layout: `samples/<CHANNEL>/<logfile>__<CHANNEL>__<timestamp_us>.jpg`, one per channel and key frame (sample_data
`fileformat` 'jpg', `is_key_frame` True, `width` / `height` set, prev / next chained per channel). Every camera
sample_data has its own ego_pose at the camera's timestamp = key-frame LiDAR timestamp + `trigger_offset_us`
(0 with `camera_time_offsets=False`). calibrated_sensor per (scene, camera): `ego_from_camera` (nuScenes camera
frame: x right, y down, z forward) and `camera_intrinsic` K at the configured resolution. See `camera.py` for the
renderer and the pixel convention.
"""
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...utils.file_utils import atomic_save_bytes
from . import nuscenes_schema as schema
from .camera import NUSCENES_RIG, ego_from_camera_rotation, encode_jpeg, render_camera, scaled_camera, trigger_offset_us
from .geometry import quaternion_from_matrix
from .nuscenes_records import ego_from_sensor, ego_pose_record

JPEG_QUALITY = 90
CALIBRATION_STREAM = 3  # rng stream [seed, scene index, 3]: streams 0-2 belong to the scene and the LiDAR


@dataclass(frozen=True)
class CameraFramePlan:
    """One camera sample_data: channel, token, timestamp (us), scene time (s), owning sample index, JPEG path
    relative to the dataroot."""
    channel: str
    token: str
    timestamp_us: int
    t: float
    sample_index: int
    filename: str


def camera_frame_plans(config, plan):
    """Camera frames of a `ScenePlan`: for every key frame, the six channels in rig order."""
    frames = []
    for frame in plan.frames:
        if not frame.is_key_frame:
            continue
        for mount in NUSCENES_RIG:
            offset_us = trigger_offset_us(mount) if config.camera_time_offsets else 0
            timestamp = frame.timestamp_us + offset_us
            filename = f'samples/{mount.channel}/{plan.logfile}__{mount.channel}__{timestamp}.jpg'
            # time from integer microseconds, so with zero offsets it equals the LiDAR frame's time bit for bit
            frames.append(CameraFramePlan(
                channel=mount.channel, token=plan.token('sample_data', mount.channel, frame.sample_index),
                timestamp_us=timestamp, t=(timestamp - plan.first_timestamp_us) * 1e-6,
                sample_index=frame.sample_index, filename=filename))
    return frames


def camera_sensor_table():
    """sensor records of the six cameras (modality 'camera')."""
    return [{'token': schema.make_token('sensor', mount.channel), 'channel': mount.channel, 'modality': 'camera'}
            for mount in NUSCENES_RIG]


def camera_calibration_records(plan, rng, width, height):
    """{channel: calibrated_sensor record} of one scene: the rig's mounting plus a small per-scene jitter
    (translation ~5 mm, angles ~0.1 degree) as for LIDAR_TOP, and K scaled to `width` x `height`."""
    records = {}
    for mount in NUSCENES_RIG:
        translation = np.array(mount.translation) + rng.normal(0.0, 0.005, 3)
        roll, pitch, yaw = np.array([mount.roll_deg, mount.pitch_deg, mount.yaw_deg]) + rng.normal(0.0, 0.1, 3)
        rotation = quaternion_from_matrix(ego_from_camera_rotation(yaw, pitch, roll))
        records[mount.channel] = {
            'token': plan.token('calibrated_sensor', mount.channel),
            'sensor_token': schema.make_token('sensor', mount.channel),
            'translation': [float(v) for v in translation], 'rotation': [float(v) for v in rotation],
            'camera_intrinsic': [list(row) for row in scaled_camera(mount, width, height).intrinsics]}
    return records


def write_cameras(config, plan, scene, root):
    """Render and write every camera frame of one scene.

    Args:
        config: SyntheticNuScenesConfig (with_cameras, camera_width / _height, camera_time_offsets, seed).
        plan: ScenePlan. scene: its simulated Scene. root: dataroot (Path).
    Returns:
        (records, seconds): {'calibrated_sensor', 'sample_data', 'ego_pose': [records]} and the wall time spent
        rendering, encoding and writing.
    """
    start = time.perf_counter()
    calibrations = camera_calibration_records(
        plan, np.random.default_rng([config.seed, plan.index, CALIBRATION_STREAM]),
        config.camera_width, config.camera_height)
    cameras = {mount.channel: scaled_camera(mount, config.camera_width, config.camera_height)
               for mount in NUSCENES_RIG}
    sample_data, ego_poses, previous = [], [], {}
    for frame in camera_frame_plans(config, plan):
        ego_pose = scene.ego_pose_at(frame.t)
        calibration = calibrations[frame.channel]
        # the pose is built from the written records (quaternions), so the devkit's chain is the renderer's chain
        render = render_camera(scene, frame.t, ego_pose @ ego_from_sensor(calibration), cameras[frame.channel])
        atomic_save_bytes(encode_jpeg(render.rgb, JPEG_QUALITY), Path(root) / frame.filename, durable=False)
        record = {
            'token': frame.token, 'sample_token': plan.token('sample', frame.sample_index),
            'ego_pose_token': frame.token, 'calibrated_sensor_token': calibration['token'],
            'timestamp': frame.timestamp_us, 'fileformat': 'jpg', 'is_key_frame': True,
            'height': config.camera_height, 'width': config.camera_width, 'filename': frame.filename,
            'prev': previous[frame.channel]['token'] if frame.channel in previous else '', 'next': ''}
        if frame.channel in previous:
            previous[frame.channel]['next'] = frame.token
        previous[frame.channel] = record
        sample_data.append(record)
        ego_poses.append(ego_pose_record(frame.token, frame.timestamp_us, ego_pose))
    records = {'calibrated_sensor': list(calibrations.values()), 'sample_data': sample_data, 'ego_pose': ego_poses}
    return records, time.perf_counter() - start
