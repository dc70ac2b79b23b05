"""nuScenes table records of one simulated scene, and writing the tables.

Field names and order follow the official nuScenes v1.0 JSON schema. Frames: ego_pose is `global_from_ego`,
calibrated_sensor is `ego_from_sensor`; sample_annotation translation is the box CENTRE in the global frame,
size is [width, length, height], rotation a [w, x, y, z] quaternion (yaw only).
"""
import json

import numpy as np

from ...utils.file_utils import atomic_save_text
from . import nuscenes_schema as schema
from .geometry import pose_matrix, quaternion_from_rpy, yaw_quaternion

STATIC_TABLES = ('category', 'attribute', 'visibility', 'sensor')


def _floats(values):
    return [float(v) for v in values]


def calibrated_sensor_record(plan, rng, tilt=True):
    """LIDAR_TOP calibration of one scene: the real nuScenes extrinsics plus a small per-scene jitter
    (translation ~5 mm, angles ~0.1 degree), so code that ignores per-sample calibration is caught.
    `tilt=False` zeroes roll and pitch (yaw-only extrinsics)."""
    translation = np.array(schema.LIDAR_TOP_TRANSLATION) + rng.normal(0.0, 0.005, 3)
    roll, pitch, yaw = np.deg2rad(np.array(schema.LIDAR_TOP_RPY_DEG) + rng.normal(0.0, 0.1, 3))
    if not tilt:
        roll = pitch = 0.0
    return {'token': plan.token('calibrated_sensor', schema.LIDAR_CHANNEL),
            'sensor_token': schema.sensor_table()[0]['token'], 'translation': _floats(translation),
            'rotation': _floats(quaternion_from_rpy(roll, pitch, yaw)), 'camera_intrinsic': []}


def ego_from_sensor(calibration):
    """4x4 pose of a calibrated_sensor record (rotation from its [w, x, y, z] quaternion)."""
    w, x, y, z = calibration['rotation']
    rotation = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
    return pose_matrix(rotation, calibration['translation'])


def ego_pose_record(token, timestamp_us, ego_pose):
    """ego_pose record of a (4, 4) `global_from_ego` (flat ground: yaw-only rotation)."""
    ego_yaw = np.arctan2(ego_pose[1, 0], ego_pose[0, 0])
    return {'token': token, 'timestamp': timestamp_us, 'rotation': _floats(yaw_quaternion(ego_yaw)),
            'translation': _floats(ego_pose[:3, 3])}


class SceneRecordBuilder:
    """Accumulates the records of one scene frame by frame (call `add_frame` in time order)."""

    def __init__(self, plan, scene, calibration):
        self.plan, self.scene, self.calibration = plan, scene, calibration
        num_samples = 1 + max(frame.sample_index for frame in plan.frames)
        self.sample_tokens = [plan.token('sample', k) for k in range(num_samples)]
        self.tables = {name: [] for name in ('sample', 'sample_data', 'ego_pose', 'sample_annotation', 'lidarseg')}
        self.annotations_of_object = [[] for _ in range(scene.num_objects)]
        attribute_token = {record['name']: record['token'] for record in schema.attribute_table()}
        self.object_attribute_tokens = []
        for kind, state, rider in zip(scene.objects.kinds, scene.objects.motion_states, scene.objects.has_rider):
            name = schema.attribute_name(kind, state, bool(rider))
            self.object_attribute_tokens.append([attribute_token[name]] if name else [])

    def add_frame(self, frame, ego_pose, scan, annotation_range):
        """Records of one LIDAR_TOP frame; key frames also get a sample, annotations and a lidarseg record.

        Args:
            frame: FramePlan. ego_pose: (4, 4) global_from_ego. scan: LidarScan of this frame.
            annotation_range: objects whose centre is farther than this from the ego (BEV, metres) are not
                annotated at this key frame.
        """
        sample_data, sample_token = self.tables['sample_data'], self.sample_tokens[frame.sample_index]
        if sample_data:
            sample_data[-1]['next'] = frame.token
        sample_data.append({
            'token': frame.token, 'sample_token': sample_token, 'ego_pose_token': frame.token,
            'calibrated_sensor_token': self.calibration['token'], 'timestamp': frame.timestamp_us,
            'fileformat': 'pcd', 'is_key_frame': frame.is_key_frame, 'height': 0, 'width': 0,
            'filename': frame.filename, 'prev': sample_data[-1]['token'] if sample_data else '', 'next': ''})
        self.tables['ego_pose'].append(ego_pose_record(frame.token, frame.timestamp_us, ego_pose))
        if not frame.is_key_frame:
            return
        samples = self.tables['sample']
        if samples:
            samples[-1]['next'] = sample_token
        samples.append({'token': sample_token, 'timestamp': frame.timestamp_us,
                        'prev': samples[-1]['token'] if samples else '', 'next': '',
                        'scene_token': self.plan.token('scene')})
        self.tables['lidarseg'].append({'token': frame.token, 'sample_data_token': frame.token,
                                        'filename': frame.label_filename})
        self._add_annotations(frame, sample_token, ego_pose, scan, annotation_range)

    def _add_annotations(self, frame, sample_token, ego_pose, scan, annotation_range):
        boxes = self.scene.object_boxes_at(frame.t)
        distance = np.hypot(boxes[:, 0] - ego_pose[0, 3], boxes[:, 1] - ego_pose[1, 3])
        visible_fraction = scan.object_visible_fraction()
        for object_id in np.nonzero(distance <= annotation_range)[0]:
            box = boxes[object_id]
            previous = self.annotations_of_object[object_id]
            record = {
                'token': self.plan.token('sample_annotation', object_id, frame.sample_index),
                'sample_token': sample_token, 'instance_token': self.plan.token('instance', object_id),
                'visibility_token': schema.visibility_token(visible_fraction[object_id]),
                'attribute_tokens': list(self.object_attribute_tokens[object_id]),
                'translation': _floats(box[0:3]), 'size': _floats(box[[4, 3, 5]]),
                'rotation': _floats(yaw_quaternion(box[6])),
                'prev': previous[-1]['token'] if previous else '', 'next': '',
                'num_lidar_pts': int(scan.object_rays_first_hit[object_id]), 'num_radar_pts': 0}
            if previous:
                previous[-1]['next'] = record['token']
            previous.append(record)
            self.tables['sample_annotation'].append(record)

    def records(self):
        """{table name: records} of this scene (log, scene, calibrated_sensor, instance and the frame tables)."""
        plan, samples = self.plan, self.tables['sample']
        category_token = {record['name']: record['token'] for record in schema.category_table()}
        objects = self.scene.objects
        instances = [{'token': plan.token('instance', object_id),
                      'category_token': category_token[schema.category_name(objects.kinds[object_id],
                                                                            objects.subtypes[object_id])],
                      'nbr_annotations': len(annotations), 'first_annotation_token': annotations[0]['token'],
                      'last_annotation_token': annotations[-1]['token']}
                     for object_id, annotations in enumerate(self.annotations_of_object) if annotations]
        trajectory = self.scene.trajectory
        description = (f'synthetic: ego {trajectory.speed:.1f} m/s, yaw rate {trajectory.yaw_rate:+.3f} rad/s, '
                       f'{self.scene.num_objects} objects, {len(self.scene.clutter.semantic)} clutter primitives')
        log = {'token': plan.token('log'), 'logfile': plan.logfile, 'vehicle': 'n015',
               'date_captured': plan.logfile[5:15], 'location': plan.location}
        scene = {'token': plan.token('scene'), 'log_token': log['token'], 'nbr_samples': len(samples),
                 'first_sample_token': samples[0]['token'], 'last_sample_token': samples[-1]['token'],
                 'name': plan.name, 'description': description}
        return {'log': [log], 'scene': [scene], 'calibrated_sensor': [self.calibration], 'instance': instances,
                **self.tables}


def static_tables(camera_sensors=()):
    """Tables shared by all scenes: category (with lidarseg indices), attribute, visibility, sensor (LIDAR_TOP,
    then `camera_sensors`: the sensor table lists the sensors the dataset has data of)."""
    return {'category': schema.category_table(), 'attribute': schema.attribute_table(),
            'visibility': schema.visibility_table(), 'sensor': schema.sensor_table() + list(camera_sensors)}


def write_tables(table_dir, tables, splits):
    """Write `<table>.json` for every table plus `splits.json` ({'train': [...], 'val': [...]}) atomically."""
    for name, records in tables.items():
        atomic_save_text(json.dumps(records, indent=0) + '\n', table_dir / f'{name}.json')
    atomic_save_text(json.dumps(splits, indent=1) + '\n', table_dir / 'splits.json')

