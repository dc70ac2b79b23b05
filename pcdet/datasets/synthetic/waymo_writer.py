"""Write simulated scenes as Waymo Open Dataset v1.x segments: `.tfrecord` files of serialized `Frame` messages.

Layout under `root` (OpenPCDet's `data/waymo` layout, spec §2.2):
    raw_data/segment-<context name>_with_camera_labels.tfrecord   one file per sequence, one record per frame
    ImageSets/train.txt, ImageSets/val.txt                        tfrecord file names, one per line
    synthetic_manifest.json                                       rerun policy (`dataset_manifest`)

Everything is encoded with `pcdet.datasets.waymo.frame_proto` (official field numbers, official encodings: zlib-
compressed MatrixFloat range images, proto2 unpacked repeated doubles) and framed with `waymo.tfrecord`, so the
files read like real segments (see docs/WAYMO.md for what is and is not written).

Simulation (reuses the dataset-agnostic `scene.py` / `lidar.py`; docs/SYNTHETIC_DATA.md):
* **Timing.** Frames at 10 Hz; `timestamp_micros` is the start of the TOP revolution, the frame pose (and the
  labels) are taken 50 ms later, mid-revolution, as in WOD.
* **Five LiDARs** with WOD-like mounting (`lidar_rig`): TOP (64 beams with NON-uniform per-beam inclinations,
  -17.6..+2.4 deg, denser near the horizon, `top_columns` columns, 75 m) and FRONT, SIDE_LEFT, SIDE_RIGHT, REAR
  (uniform inclinations -90..+30 deg given as min / max, `side_beams` x `side_columns`, 20 m). Extrinsics get a
  small per-sequence jitter (TOP yaw up to +-4 deg, roll / pitch ~0.2 deg), so the azimuth correction and tilt
  handling are exercised. Each range-image pixel is ray-cast along exactly the direction the official decoder
  assigns to it (`range_image` module docstring): the ray caster's sensor frame is the LiDAR frame turned by
  `pi / W - azimuth_correction` about z and its beam elevations are the row inclinations.
* **Rolling shutter (TOP).** The revolution is split into `top_pose_sectors` azimuth sectors in column order;
  sector s is cast from the ego pose at its mid time and every pixel of it gets that pose (float32 roll, pitch,
  yaw, x, y, z, exactly the values used for casting) in `range_image_pose_compressed`. Objects are frozen at the
  frame (label) time during the revolution, so every object return lies in its label box (ego-motion-only rolling
  shutter). The other LiDARs are cast instantaneously from the frame pose (no pixel poses, as in WOD).
* **Returns.** First return = the ray caster's hit. Second return: only for some rays whose first return is
  vegetation (a tree crown): a second leaf layer 0.3-1.5 m further along the same ray, weaker and more elongated,
  dropped if it would fall inside any object box. Pixels without a return hold -1 in every channel.
* **Channels.** range (m); intensity = ray-caster intensity / 255 (0..1); elongation = |N(0.1, 0.05)| + 0.3 on
  vegetation; is_in_nlz = 1 inside the sequence's no-label zone (a 4 m disc, global frame, 10 m to the left or right of
  the ego's mid-sequence position), else -1.
  Camera projections: all-zero [H, W, 6] MatrixInt32 (no cameras are simulated; zero = no projection).
* **Labels** (`laser_labels`, vehicle frame at the frame pose): every object of a mapped kind within 75 m (BEV),
  except those whose centre lies in the no-label zone. Kind -> `Label.Type` (`WAYMO_TYPE_OF_KIND`): car, truck,
  bus, trailer, construction_vehicle, motorcycle -> VEHICLE (WOD has no motorcycle class); pedestrian ->
  PEDESTRIAN; bicycle -> CYCLIST (rider or not: the simulated cycle box stands for bike + rider); traffic_cone ->
  SIGN (a few small static roadside objects per sequence stand in for signs); barrier, animal, pushable_pullable
  -> not labelled (their points are unlabelled clutter). `num_lidar_points_in_box` = first-return points of all
  five LiDARs on the object (= points inside the box: the ray-cast surface is the box shrunk by 5 cm and
  second returns never fall in boxes), `num_top_lidar_points_in_box` = the TOP's share.
  `detection_difficulty_level` = `tracking_difficulty_level` = LEVEL_2 when num_lidar_points_in_box <= 5 (0-point
  labels included), else LEVEL_1 (WOD's point-count rule; no labeller-marked hard boxes). `metadata` speed =
  the global-frame velocity (OpenPCDet reads speed_x / speed_y as global and rotates them into the vehicle frame),
  accel = 0 (constant velocity). Ids are 22-character url-safe strings, stable per object across frames.
* **Context** (repeated in every frame): name, 5 camera calibrations (WOD image sizes, no images), 5 laser
  calibrations, stats (laser object counts per type over the sequence, 'Day', a location, 'sunny').

Deterministic: the same config gives byte-identical files (each sequence / frame / LiDAR draws from its own
generator seeded by (seed, sequence, ...)); every file is written atomically.
"""
import base64
import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...utils.file_utils import atomic_save_text
from ..waymo import frame_proto, range_image
from ..waymo.tfrecord import TFRecordWriter
from . import catalog, dataset_manifest
from .geometry import invert_pose, pose_matrix, rotation_matrix_from_rpy, transform_points
from .lidar import LidarConfig, cast_scan
from .scene import VEHICLE_PROFILES, SceneConfig, simulate_scene

GENERATOR = 'pcdet.datasets.synthetic.waymo/1'
MANIFEST_NAME = 'synthetic_manifest.json'
FRAME_PERIOD_US = 100_000                        # 10 Hz
FRAME_POSE_DELAY_S = 0.05                        # frame pose / labels: mid-revolution
FIRST_SEGMENT_TIMESTAMP_US = 1_557_540_000_000_000  # May 2019, like WOD v1.x
SEGMENT_SPACING_US = 3_600_000_000
LABEL_RANGE = 75.0
NLZ_RADIUS = 4.0
SECOND_RETURN_PROBABILITY = 0.4
ZLIB_LEVEL = 1  # range images of noisy floats: level 6 is 2x slower for ~2 % smaller files; readers do not care
LOCATIONS = ('location_sf', 'location_phx', 'location_other')

WAYMO_TYPE_OF_KIND = {
    'car': 1, 'truck': 1, 'bus': 1, 'trailer': 1, 'construction_vehicle': 1, 'motorcycle': 1,
    'pedestrian': 2, 'traffic_cone': 3, 'bicycle': 4,
}
DETECTION_TYPES = ('Vehicle', 'Pedestrian', 'Cyclist', 'Sign')

# Relative frequencies of the simulator's kinds per class mix (`SyntheticWaymoConfig.class_mix`). 'wod' follows
# the Waymo Open Dataset: its Vehicle class is mostly passenger cars (trucks, buses, trailers and motorcycles are a
# few percent) and there are about half as many pedestrians as vehicles and few cyclists. 'nuscenes' keeps the
# catalog's nuScenes-like frequencies, under which long vehicles and motorcycles make up half of all Vehicles.
CLASS_MIXES = {
    'wod': (('car', 0.60), ('truck', 0.04), ('construction_vehicle', 0.01), ('bus', 0.02), ('trailer', 0.01),
            ('motorcycle', 0.01), ('barrier', 0.04), ('bicycle', 0.03), ('pedestrian', 0.20),
            ('traffic_cone', 0.04)),
    'nuscenes': None,
}

# (name, width, height, yaw in degrees, translation): WOD camera image sizes; intrinsics are plausible values.
CAMERAS = (('FRONT', 1920, 1280, 0.0, (1.54, -0.02, 2.12)), ('FRONT_LEFT', 1920, 1280, 45.0, (1.50, 0.09, 2.12)),
           ('FRONT_RIGHT', 1920, 1280, -45.0, (1.50, -0.10, 2.12)), ('SIDE_LEFT', 1920, 886, 90.0, (1.43, 0.10, 2.12)),
           ('SIDE_RIGHT', 1920, 886, -90.0, (1.43, -0.11, 2.12)))


@dataclass(frozen=True)
class SyntheticWaymoConfig:
    """Generation arguments (everything that changes the output; `root` only says where it goes).

    Attributes:
        num_sequences: segments (>= 2: at least one train and one val segment).
        frames_per_sequence: frames per segment at 10 Hz (WOD: ~200).
        val_fraction: share of val segments (at least one of each split).
        top_columns: TOP range-image width (WOD: 2650); the TOP always has 64 rows.
        top_pose_sectors: rolling-shutter pose steps per TOP revolution (1 = one pose for the whole scan).
        side_beams, side_columns: range-image size of the 4 short-range LiDARs (WOD: 200 x 600).
        num_objects: objects of the simulator's 10 detection kinds per sequence.
        class_mix: relative frequency of the object kinds, a key of `CLASS_MIXES` ('wod': mostly cars, as in WOD;
            'nuscenes': the catalog's nuScenes-like mix). Every kind still appears at least once per sequence.
        vehicle_profile: ray-cast shape of vehicles (`SceneConfig.vehicle_profile`): 'stepped' (default: lowered
            front, so the heading is observable as on real vehicles) or 'box' (front and back look the same).
    """
    root: str
    num_sequences: int = 4
    frames_per_sequence: int = 10
    seed: int = 0
    val_fraction: float = 0.25
    top_columns: int = 1024
    top_pose_sectors: int = 4
    side_beams: int = 32
    side_columns: int = 256
    num_objects: int = 30
    class_mix: str = 'wod'
    vehicle_profile: str = 'stepped'

    def validate(self):
        if self.class_mix not in CLASS_MIXES:
            raise ValueError(f'class_mix must be one of {sorted(CLASS_MIXES)}, got {self.class_mix!r}')
        if self.vehicle_profile not in VEHICLE_PROFILES:
            raise ValueError(f'vehicle_profile must be one of {VEHICLE_PROFILES}, got {self.vehicle_profile!r}')
        if self.num_sequences < 2:
            raise ValueError(f'num_sequences must be >= 2 (one train and one val segment), got {self.num_sequences}')
        if self.frames_per_sequence < 1 or self.num_objects < 1 or self.seed < 0:
            raise ValueError('frames_per_sequence and num_objects must be >= 1 and seed >= 0')
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f'val_fraction must be in (0, 1), got {self.val_fraction}')
        if self.top_columns < 16 or self.side_columns < 16 or self.side_beams < 2:
            raise ValueError('top_columns and side_columns must be >= 16 and side_beams >= 2')
        if not 1 <= self.top_pose_sectors <= self.top_columns:
            raise ValueError(f'top_pose_sectors must be in [1, top_columns], got {self.top_pose_sectors}')

    def arguments(self):
        arguments = asdict(self)
        arguments.pop('root')
        return arguments


@dataclass(frozen=True)
class LidarSpec:
    """One LiDAR: `laser_id` (LaserName), `extrinsic` (4, 4) laser -> vehicle, `inclinations` (H,) ascending
    radians, `per_beam` (write `beam_inclinations`) or uniform (write min / max), `width`, `max_range`."""
    name: str
    laser_id: int
    extrinsic: np.ndarray
    inclinations: np.ndarray
    per_beam: bool
    inclination_min: float
    inclination_max: float
    width: int
    max_range: float

    @property
    def height(self):
        return len(self.inclinations)

    def caster_config(self):
        return LidarConfig(beam_elevations_deg=tuple(float(v) for v in np.rad2deg(self.inclinations)),
                           azimuth_steps=self.width, max_range=self.max_range)

    def laser_from_caster(self):
        """4x4 rotation about z taking the ray caster's frame (azimuth -pi + j 2pi / W) to the LiDAR frame so that
        caster column j is range-image column W - 1 - j."""
        delta = np.pi / self.width - range_image.azimuth_correction(self.extrinsic)
        return pose_matrix(rotation_matrix_from_rpy(0.0, 0.0, delta), [0.0, 0.0, 0.0])

    def calibration_message(self):
        message = {'name': self.laser_id, 'beam_inclination_min': self.inclination_min,
                   'beam_inclination_max': self.inclination_max,
                   'extrinsic': frame_proto.matrix_to_transform(self.extrinsic)}
        if self.per_beam:
            message['beam_inclinations'] = self.inclinations
        return message


def top_inclinations(num_beams, rng):
    """Non-uniform ascending inclinations -17.6..+2.4 deg: 3x denser near the horizon, tiny per-beam jitter."""
    u = np.linspace(0.0, 1.0, num_beams)
    shape = 0.5 * u + 0.5 * (1.0 - (1.0 - u) ** 2)
    degrees = -17.6 + 20.0 * shape + rng.uniform(-0.01, 0.01, num_beams)
    return np.sort(np.deg2rad(degrees))


def lidar_rig(config, rng):
    """The five LiDARs of one sequence (WOD-like mounting, jittered per sequence), in LaserName order."""
    def extrinsic(xyz, yaw_deg, yaw_jitter_deg):
        roll, pitch = np.deg2rad(rng.normal(0.0, 0.2, 2))
        yaw = np.deg2rad(yaw_deg + rng.uniform(-yaw_jitter_deg, yaw_jitter_deg))
        return pose_matrix(rotation_matrix_from_rpy(roll, pitch, yaw), np.asarray(xyz) + rng.normal(0, 0.005, 3))

    top_incl = top_inclinations(64, rng)
    specs = [LidarSpec('TOP', frame_proto.LASER['TOP'], extrinsic((1.43, 0.0, 2.184), 0.0, 4.0), top_incl, True,
                       float(top_incl[0]), float(top_incl[-1]), config.top_columns, 75.0)]
    side_min, side_max = np.deg2rad(-90.0), np.deg2rad(30.0)
    side_incl = range_image.compute_inclination(side_min, side_max, config.side_beams)
    for name, xyz, yaw in (('FRONT', (4.07, 0.0, 0.691), 0.0), ('SIDE_LEFT', (3.245, 1.025, 0.981), 90.0),
                           ('SIDE_RIGHT', (3.245, -1.025, 0.981), -90.0), ('REAR', (-1.154, 0.0, 0.466), 180.0)):
        specs.append(LidarSpec(name, frame_proto.LASER[name], extrinsic(xyz, yaw, 1.0), side_incl, False,
                               float(side_min), float(side_max), config.side_columns, 20.0))
    return tuple(specs)


@dataclass(frozen=True)
class SequencePlan:
    """What follows from the arguments alone: index, context name, split, tfrecord file name, first timestamp."""
    index: int
    name: str
    split: str
    filename: str
    first_timestamp_us: int


def plan_sequences(config):
    """Sequence plans; the last `n_val` sequences are val (n_val = round(num_sequences * val_fraction), >= 1)."""
    num_val = min(config.num_sequences - 1, max(1, int(round(config.num_sequences * config.val_fraction))))
    plans = []
    for index in range(config.num_sequences):
        rng = np.random.default_rng([config.seed, index, 99])
        digits = ''.join(str(d) for d in rng.integers(0, 10, 20))
        digits = str(rng.integers(1, 10)) + digits[1:]
        start = int(rng.integers(0, 9000))
        millis = int(rng.integers(0, 1000))
        name = f'{digits}_{start}_{millis:03d}_{start + 20}_{millis:03d}'
        plans.append(SequencePlan(index, name, 'val' if index >= config.num_sequences - num_val else 'train',
                                  f'segment-{name}_with_camera_labels.tfrecord',
                                  FIRST_SEGMENT_TIMESTAMP_US + index * SEGMENT_SPACING_US))
    if len({plan.name for plan in plans}) != len(plans):
        raise RuntimeError('duplicate synthetic segment names; use another seed')
    return plans


@dataclass
class SequenceSim:
    """A simulated sequence: plan, scene, LiDAR rig, no-label zone (global centre xy, radius), labelled objects
    (object index -> Label.Type) and ids."""
    config: SyntheticWaymoConfig
    plan: SequencePlan
    scene: object
    rig: tuple
    nlz_center: np.ndarray
    nlz_radius: float
    label_types: dict = field(default_factory=dict)
    label_ids: dict = field(default_factory=dict)

    def frame_times(self, frame_index):
        """(revolution start, frame pose / label time) in scene seconds."""
        start = frame_index * FRAME_PERIOD_US * 1e-6
        return start, start + FRAME_POSE_DELAY_S


def simulate_sequence(plan, config):
    """Simulate the scene and rig of one sequence (no ray casting yet)."""
    duration = config.frames_per_sequence * FRAME_PERIOD_US * 1e-6
    scene = simulate_scene(SceneConfig(t_start=0.0, t_end=duration, num_objects=config.num_objects,
                                         kind_weights=CLASS_MIXES[config.class_mix],
                                         vehicle_profile=config.vehicle_profile),
                           np.random.default_rng([config.seed, plan.index, 0]))
    rng = np.random.default_rng([config.seed, plan.index, 1])
    rig = lidar_rig(config, rng)
    # No-label zone: a disc on the ground beside the road, 10 m left of the ego's mid-sequence position.
    side = 1.0 if rng.random() < 0.5 else -1.0
    nlz_center = transform_points(scene.ego_pose_at(duration / 2), np.array([[4.0, 10.0 * side, 0.0]]))[0, 0:2]
    sim = SequenceSim(config, plan, scene, rig, nlz_center, NLZ_RADIUS)
    for m, kind in enumerate(scene.objects.kinds):
        if kind in WAYMO_TYPE_OF_KIND:
            sim.label_types[m] = WAYMO_TYPE_OF_KIND[kind]
            digest = hashlib.md5(f'{plan.name}/object/{m}'.encode()).digest()
            sim.label_ids[m] = base64.urlsafe_b64encode(digest).decode()[:22]
    return sim


@dataclass
class SyntheticFrame:
    """A frame ready to encode (`message`, a Frame dict for `frame_proto.encode_frame`) and what the reader must
    get back from it (`truth`): per LiDAR {'return', 'row', 'col' (N,), 'xyz' (N, 3) float64 vehicle frame from the
    ray caster's points, 'intensity', 'elongation', 'nlz' (N,) float32, 'object_id' (N,)}, and the labels
    {'object_id', 'type', 'box' (M, 7), 'speed', 'num_lidar_points_in_box', 'num_top_lidar_points_in_box',
    'difficulty', 'id'}."""
    message: dict
    truth: dict


def build_frame(sim, frame_index):
    """Ray-cast all LiDARs of one frame and assemble the Frame message and the truth."""
    config, scene, plan = sim.config, sim.scene, sim.plan
    t_start, t_label = sim.frame_times(frame_index)
    frame_pose = scene.ego_pose_at(t_label)
    vehicle_from_global = invert_pose(frame_pose)
    boxes_global = scene.object_boxes_at(t_label)

    lasers, truth_lidars = [], {}
    first_return_hits = np.zeros((len(sim.rig), scene.num_objects), dtype=np.int64)
    for lidar_index, spec in enumerate(sim.rig):
        rng = np.random.default_rng([config.seed, plan.index, 2, frame_index, spec.laser_id])
        returns, pixel_pose = _cast_lidar(sim, spec, t_start, t_label, frame_pose, boxes_global, rng)
        laser = {'name': spec.laser_id}
        truth = {key: [] for key in ('return', 'row', 'col', 'xyz', 'intensity', 'elongation', 'nlz', 'object_id')}
        for return_index, ret in enumerate(returns):
            image = np.full((spec.height, spec.width, 4), -1.0, dtype=np.float32)
            image[ret['row'], ret['col']] = np.stack([ret['range'], ret['intensity'], ret['elongation'], ret['nlz']],
                                                     axis=1)
            message = {'range_image_compressed': frame_proto.encode_matrix(image, level=ZLIB_LEVEL),
                       'camera_projection_compressed': frame_proto.encode_matrix(
                           np.zeros((spec.height, spec.width, 6), dtype=np.int32), kind='int32', level=ZLIB_LEVEL)}
            if pixel_pose is not None and return_index == 0:
                message['range_image_pose_compressed'] = frame_proto.encode_matrix(pixel_pose, level=ZLIB_LEVEL)
            laser[f'ri_return{return_index + 1}'] = message
            truth['return'].append(np.full(len(ret['row']), return_index, dtype=np.int64))
            truth['xyz'].append(transform_points(vehicle_from_global, ret['xyz_global']))
            for key in ('row', 'col', 'intensity', 'elongation', 'nlz', 'object_id'):
                truth[key].append(ret[key])
        lasers.append(laser)
        truth_lidars[spec.name] = {key: np.concatenate(value) for key, value in truth.items()}
        first = returns[0]['object_id']
        first_return_hits[lidar_index] = np.bincount(first[first >= 0], minlength=scene.num_objects)

    labels = _labels(sim, frame_pose, boxes_global, first_return_hits)
    label_messages = [_label_message(labels, row) for row in range(len(labels['object_id']))]
    message = {'context': _context_message(sim), 'timestamp_micros': plan.first_timestamp_us
               + frame_index * FRAME_PERIOD_US, 'pose': frame_proto.matrix_to_transform(frame_pose),
               'lasers': lasers, 'laser_labels': label_messages}
    return SyntheticFrame(message=message, truth={'lidars': truth_lidars, 'labels': labels, 'pose': frame_pose})


def _cast_lidar(sim, spec, t_start, t_label, frame_pose, boxes_global, rng):
    """Ray-cast one LiDAR. Returns ([first return, second return] dicts of per-point arrays, TOP pixel poses or
    None). Each return dict has 'row', 'col', 'range', 'intensity', 'elongation', 'nlz', 'object_id',
    'xyz_global'."""
    scene = sim.scene
    caster = spec.caster_config()
    laser_from_caster = spec.laser_from_caster()
    height, width = spec.height, spec.width
    if spec.name == 'TOP':
        sectors = sim.config.top_pose_sectors
        pixel_pose = np.zeros((height, width, 6), dtype=np.float32)
        column_sector = np.arange(width) * sectors // width
        pieces = []
        for sector in range(sectors):
            t_sector = t_start + (sector + 0.5) / sectors * FRAME_PERIOD_US * 1e-6
            ego = scene.ego_pose_at(t_sector)
            rpyxyz = np.array([0.0, 0.0, np.arctan2(ego[1, 0], ego[0, 0]), *ego[0:3, 3]], dtype=np.float32)
            pixel_pose[:, column_sector == sector] = rpyxyz
            vehicle_pose = pose_matrix(range_image.rotation_from_rpy(*rpyxyz[0:3].astype(np.float64)),
                                       rpyxyz[3:6].astype(np.float64))
            scan = cast_scan(scene, t_label, vehicle_pose @ spec.extrinsic @ laser_from_caster, caster, rng)
            col = width - 1 - scan.azimuth_index.astype(np.int64)
            keep = column_sector[col] == sector
            pieces.append((scan, keep, vehicle_pose @ spec.extrinsic @ laser_from_caster))
    else:
        pixel_pose = None
        sensor_pose = frame_pose @ spec.extrinsic @ laser_from_caster
        pieces = [(cast_scan(scene, t_label, sensor_pose, caster, rng), None, sensor_pose)]

    first = {key: [] for key in ('row', 'col', 'range', 'intensity', 'object_id', 'xyz_global', 'semantic')}
    for scan, keep, sensor_pose in pieces:
        keep = np.ones(len(scan.points), dtype=bool) if keep is None else keep
        xyz = scan.points[keep, 0:3].astype(np.float64)
        first['row'].append(height - 1 - scan.ring[keep].astype(np.int64))
        first['col'].append(width - 1 - scan.azimuth_index[keep].astype(np.int64))
        first['range'].append(np.linalg.norm(xyz, axis=1).astype(np.float32))
        first['intensity'].append((scan.points[keep, 3] / 255.0).astype(np.float32))
        first['object_id'].append(scan.hit_object_id[keep].astype(np.int64))
        first['xyz_global'].append(transform_points(sensor_pose, xyz))
        first['semantic'].append(scan.semantic_label[keep])
    first = {key: np.concatenate(value) for key, value in first.items()}
    order = np.lexsort((first['col'], first['row']))
    first = {key: value[order] for key, value in first.items()}
    vegetation = first.pop('semantic') == catalog.semantic_index('vegetation')
    first['elongation'] = (np.abs(rng.normal(0.1, 0.05, len(vegetation))) + 0.3 * vegetation).astype(np.float32)
    first['nlz'] = _nlz_flags(sim, first['xyz_global'])

    # Second return: a leaf layer behind some vegetation hits, along the same ray (so the same pixel).
    candidates = np.flatnonzero(vegetation & (rng.random(len(vegetation)) < SECOND_RETURN_PROBABILITY))
    extra = rng.uniform(0.3, 1.5, len(candidates))
    distance = first['range'][candidates].astype(np.float64) + extra
    ok = distance <= spec.max_range
    candidates, extra, distance = candidates[ok], extra[ok], distance[ok]
    origin = _sensor_origins(pieces, first, candidates, spec, frame_pose, pixel_pose)
    direction = first['xyz_global'][candidates] - origin
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    xyz_second = origin + direction * distance[:, None]
    outside = ~_inside_any_box(xyz_second, boxes_global)
    candidates, xyz_second, distance = candidates[outside], xyz_second[outside], distance[outside]
    second = {'row': first['row'][candidates], 'col': first['col'][candidates],
              'range': distance.astype(np.float32),
              'intensity': (first['intensity'][candidates] * 0.5).astype(np.float32),
              'elongation': (first['elongation'][candidates] + 0.3).astype(np.float32),
              'object_id': np.full(len(candidates), -1, dtype=np.int64), 'xyz_global': xyz_second}
    second['nlz'] = _nlz_flags(sim, xyz_second)
    # The truth of a second return is re-derived from its float32 range, like the first return's from the
    # caster's points: it lies on the pixel ray at the stored distance.
    second['xyz_global'] = origin[outside] + direction[outside] * second['range'].astype(np.float64)[:, None]
    return [first, second], pixel_pose


def _sensor_origins(pieces, first, candidates, spec, frame_pose, pixel_pose):
    """(K, 3) global sensor position of the given first-return points (per TOP sector, else the frame pose)."""
    if pixel_pose is None:
        return np.broadcast_to((frame_pose @ spec.extrinsic)[0:3, 3], (len(candidates), 3)).copy()
    pose = pixel_pose[first['row'][candidates], first['col'][candidates]].astype(np.float64)
    rotation = range_image.rotation_from_rpy(pose[:, 0], pose[:, 1], pose[:, 2])
    return np.einsum('kij,j->ki', rotation, spec.extrinsic[0:3, 3]) + pose[:, 3:6]


def _nlz_flags(sim, xyz_global):
    inside = np.hypot(*(xyz_global[:, 0:2] - sim.nlz_center).T) <= sim.nlz_radius
    return np.where(inside, 1.0, -1.0).astype(np.float32)


def _inside_any_box(points, boxes):
    """(N, 3) global points, (M, 7+) boxes -> (N,) bool inside any box."""
    inside = np.zeros(len(points), dtype=bool)
    for box in boxes:
        offset = points - box[0:3]
        cos, sin = np.cos(box[6]), np.sin(box[6])
        along = offset[:, 0] * cos + offset[:, 1] * sin
        across = -offset[:, 0] * sin + offset[:, 1] * cos
        inside |= (np.abs(along) <= box[3] / 2) & (np.abs(across) <= box[4] / 2) & (np.abs(offset[:, 2]) <= box[5] / 2)
    return inside


def _wrap_angle(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _labels(sim, frame_pose, boxes_global, first_return_hits):
    """Label arrays of one frame (see `SyntheticFrame`)."""
    vehicle_from_global = invert_pose(frame_pose)
    ego_yaw = np.arctan2(frame_pose[1, 0], frame_pose[0, 0])
    rows = []
    for m, waymo_type in sim.label_types.items():
        box = boxes_global[m]
        centre = transform_points(vehicle_from_global, box[None, 0:3])[0]
        if np.hypot(centre[0], centre[1]) > LABEL_RANGE or np.hypot(*(box[0:2] - sim.nlz_center)) <= sim.nlz_radius:
            continue
        rows.append((m, waymo_type, [*centre, box[3], box[4], box[5], _wrap_angle(box[6] - ego_yaw)],
                     [box[7], box[8], 0.0]))
    num_points = np.array([first_return_hits[:, m].sum() for m, *_ in rows], dtype=np.int64)
    difficulty = np.where(num_points <= 5, 2, 1).astype(np.int64)
    return {
        'object_id': np.array([m for m, *_ in rows], dtype=np.int64),
        'type': np.array([t for _, t, *_ in rows], dtype=np.int64),
        'box': np.array([b for _, _, b, _ in rows], dtype=np.float64).reshape(-1, 7),
        'speed': np.array([s for *_, s in rows], dtype=np.float64).reshape(-1, 3),
        'num_lidar_points_in_box': num_points,
        'num_top_lidar_points_in_box': np.array([first_return_hits[0, m] for m, *_ in rows], dtype=np.int64),
        'difficulty': difficulty,
        'id': [sim.label_ids[m] for m, *_ in rows],
    }


def _label_message(labels, row):
    cx, cy, cz, length, width, height, heading = (float(v) for v in labels['box'][row])
    speed = labels['speed'][row]
    return {
        'box': {'center_x': cx, 'center_y': cy, 'center_z': cz, 'length': length, 'width': width, 'height': height,
                'heading': heading},
        'metadata': {'speed_x': float(speed[0]), 'speed_y': float(speed[1]), 'accel_x': 0.0, 'accel_y': 0.0,
                     'speed_z': float(speed[2]), 'accel_z': 0.0},
        'type': int(labels['type'][row]),
        'id': labels['id'][row],
        'detection_difficulty_level': int(labels['difficulty'][row]),
        'tracking_difficulty_level': int(labels['difficulty'][row]),
        'num_lidar_points_in_box': int(labels['num_lidar_points_in_box'][row]),
        'num_top_lidar_points_in_box': int(labels['num_top_lidar_points_in_box'][row]),
    }


def _context_message(sim):
    cameras = []
    for name, width, height, yaw, xyz in CAMERAS:
        focal = 2055.0 if height == 1280 else 2070.0
        cameras.append({'name': frame_proto.CAMERA[name], 'intrinsic': [focal, focal, width / 2, height / 2,
                                                                          0.04, -0.3, 0.0, 0.0, 0.0],
                        'extrinsic': frame_proto.matrix_to_transform(pose_matrix(
                            rotation_matrix_from_rpy(0.0, 0.0, np.deg2rad(yaw)), xyz)),
                        'width': width, 'height': height})
    counts = {}
    for waymo_type in sim.label_types.values():
        counts[waymo_type] = counts.get(waymo_type, 0) + 1
    return {
        'name': sim.plan.name,
        'camera_calibrations': cameras,
        'laser_calibrations': [spec.calibration_message() for spec in sim.rig],
        'stats': {'laser_object_counts': [{'type': t, 'count': c} for t, c in sorted(counts.items())],
                  'time_of_day': 'Day', 'location': LOCATIONS[sim.plan.index % len(LOCATIONS)], 'weather': 'sunny'},
    }


def write_sequence(plan, config):
    """Simulate, ray-cast, encode and write one segment file. Returns per-sequence stats."""
    sim = simulate_sequence(plan, config)
    points_per_frame, types_with_points = [], set()
    with TFRecordWriter(Path(config.root) / 'raw_data' / plan.filename) as writer:
        for frame_index in range(config.frames_per_sequence):
            frame = build_frame(sim, frame_index)
            writer.write(frame_proto.encode_frame(frame.message))
            points_per_frame.append(sum(len(t['row']) for t in frame.truth['lidars'].values()))
            labels = frame.truth['labels']
            types_with_points.update(frame_proto.WAYMO_CLASSES[t] for t, n in
                                     zip(labels['type'], labels['num_lidar_points_in_box']) if n > 0)
    return {'points_per_frame': points_per_frame, 'types_with_points': sorted(types_with_points)}


def planned_files(plans):
    return [f'raw_data/{plan.filename}' for plan in plans] + ['ImageSets/train.txt', 'ImageSets/val.txt']


def generate_waymo(config, overwrite=False, progress=True):
    """Generate (or skip, see `dataset_manifest`) a synthetic Waymo dataset.

    Returns:
        dict with 'skipped', 'root', 'num_sequences', 'num_frames', 'train_sequences', 'val_sequences' (tfrecord
        file names), 'mean_points_per_frame', 'classes_without_points' ({'train': [...], 'val': [...]} among
        Vehicle / Pedestrian / Cyclist / Sign), 'seconds'.
    """
    from tqdm import tqdm

    config.validate()
    start = time.time()
    root = Path(config.root)
    plans = plan_sequences(config)
    manifest_path = root / MANIFEST_NAME
    summary = {'root': str(root), 'num_sequences': len(plans),
               'num_frames': len(plans) * config.frames_per_sequence,
               'train_sequences': [p.filename for p in plans if p.split == 'train'],
               'val_sequences': [p.filename for p in plans if p.split == 'val']}
    if not dataset_manifest.prepare_output(root, manifest_path, config.arguments(), overwrite, 'raw_data/*.tfrecord'):
        return {**summary, 'skipped': True, 'mean_points_per_frame': None, 'classes_without_points': None,
                'seconds': time.time() - start}
    files = planned_files(plans)
    dataset_manifest.write_manifest(manifest_path, GENERATOR, config.arguments(), files, status='writing')
    results = []
    for plan in tqdm(plans, desc='synthetic waymo segments', unit='segment', disable=not progress):
        results.append(write_sequence(plan, config))
    for split in ('train', 'val'):
        names = ''.join(f'{plan.filename}\n' for plan in plans if plan.split == split)
        atomic_save_text(names, root / 'ImageSets' / f'{split}.txt')
    dataset_manifest.write_manifest(manifest_path, GENERATOR, config.arguments(), files, status='complete')
    points = [n for result in results for n in result['points_per_frame']]
    missing = {split: sorted(set(DETECTION_TYPES).difference(
        *[r['types_with_points'] for p, r in zip(plans, results) if p.split == split])) for split in ('train', 'val')}
    return {**summary, 'skipped': False, 'mean_points_per_frame': float(np.mean(points)),
            'classes_without_points': missing, 'seconds': time.time() - start}
