"""Write simulated scenes in the official nuScenes on-disk format (tables + LiDAR files + lidarseg labels).

Layout under the dataroot `root` (what `NuScenes(version, dataroot=root)` reads):
    <version>/{scene,sample,sample_data,ego_pose,calibrated_sensor,sensor,log,map,category,attribute,
               visibility,instance,sample_annotation,lidarseg}.json, splits.json, synthetic_manifest.json
    samples/LIDAR_TOP/<log>__LIDAR_TOP__<timestamp_us>.pcd.bin   key frames, float32 (N, 5) x y z intensity ring
    sweeps/LIDAR_TOP/<log>__LIDAR_TOP__<timestamp_us>.pcd.bin    the 9 sweeps between key frames (20 Hz)
    lidarseg/<version>/<sd_token>_lidarseg.bin, lidarseg_sweeps/<version>/...   uint8 label per point
    maps/<token>.png                                               placeholder map masks
    samples/CAM_*/<log>__<CHANNEL>__<timestamp_us>.jpg             six cameras per key frame (`with_cameras`,
                                                                   `nuscenes_cameras.py`)
    nuScenes-Occupancy/scene_<scene_token>/occupancy/<sd_token>.npy, nuscenes_occ_infos_{train,val}.pkl
                                                                   OpenOccupancy GT (`with_occupancy`)
Points are in the LIDAR_TOP sensor frame. Timing: key frames every 0.5 s, sweeps every 0.05 s; scene time t = 0
is the first key frame and `sweeps_before_first` sweeps precede it. See docs/SYNTHETIC_DATA.md.
"""
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...utils.file_utils import atomic_save_bytes
from . import dataset_manifest, nuscenes_cameras, nuscenes_records
from . import nuscenes_occupancy as occupancy
from . import nuscenes_schema as schema
from .catalog import DETECTION_KINDS
from .lidar import LidarConfig, cast_scan
from .nuscenes_lidarseg import KEY_FRAME_LABEL_DIR, label_relpath
from .png import encode_gray_png
from .scene import SceneConfig, simulate_scene

GENERATOR = 'pcdet.datasets.synthetic.nuscenes/2'  # bump when the same arguments give other files
MANIFEST_NAME = 'synthetic_manifest.json'
SWEEP_PERIOD_US = 50_000           # 20 Hz LiDAR
SWEEPS_PER_KEY_FRAME = 10          # 2 Hz key frames -> 9 sweeps between two key frames
FIRST_SCENE_TIMESTAMP_US = 1_533_151_603_547_590  # 2018-08-01, like the real dataset
SCENE_SPACING_US = 3_600_000_000   # one scene (and log) per hour
CAMERA_ARGUMENTS = ('with_cameras', 'camera_width', 'camera_height', 'camera_time_offsets')
TABLE_NAMES = ('category', 'attribute', 'visibility', 'instance', 'sensor', 'calibrated_sensor', 'ego_pose', 'log',
               'scene', 'sample', 'sample_data', 'sample_annotation', 'map', 'lidarseg')


@dataclass(frozen=True)
class SyntheticNuScenesConfig:
    """Generation arguments (everything that changes the output; `root` only says where it goes).

    `lidar_tilt` keeps the real LIDAR_TOP roll / pitch (~1.4 / 0.3 degrees): frame conversions that drop them
    are caught, but boxes converted to the LiDAR frame with a yaw-only rotation (as OpenPCDet does) then differ
    from the global annotations by ~1e-4 rad, as on real nuScenes. False keeps only the yaw (exact round trips).
    `with_occupancy` also writes nuScenes-Occupancy (OpenOccupancy) ground truth and occ infos
    (`nuscenes_occupancy.py`). `with_cameras` also renders the six nuScenes cameras at every key frame as
    `camera_width` x `camera_height` JPEGs (`nuscenes_cameras.py`); `camera_time_offsets=False` fires every camera
    at the key-frame LiDAR timestamp (exact LiDAR-to-image projection) instead of when the LiDAR sweeps past it.
    Without cameras the camera fields are left out of `arguments()`, so such datasets keep their manifest.
    """
    root: str
    version: str = 'v1.0-mini'
    num_scenes: int = 10
    samples_per_scene: int = 10
    sweeps_before_first: int = 9
    azimuth_steps: int = 1024
    num_objects: int = 30
    seed: int = 0
    val_fraction: float = 0.2
    lidar_tilt: bool = True
    with_occupancy: bool = True
    with_cameras: bool = False
    camera_width: int = 400
    camera_height: int = 225
    camera_time_offsets: bool = True

    def validate(self):
        schema.check_version(self.version)
        for name in ('num_scenes', 'samples_per_scene', 'azimuth_steps', 'num_objects'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.samples_per_scene < 2:
            raise ValueError('samples_per_scene must be >= 2 (velocities need two key frames)')
        if self.sweeps_before_first < 0 or self.seed < 0:
            raise ValueError('sweeps_before_first and seed must be >= 0')
        for name in ('camera_width', 'camera_height'):
            if not 8 <= getattr(self, name) <= 4096:
                raise ValueError(f'{name} must be between 8 and 4096 pixels, got {getattr(self, name)}')
        self.lidar_config()  # raises on a bad LiDAR setting before anything is written

    def arguments(self):
        """JSON-able identity of the output (used by the rerun policy)."""
        arguments = asdict(self)
        arguments.pop('root')
        if not self.with_cameras:  # the output does not depend on them: keep camera-less manifests unchanged
            for name in CAMERA_ARGUMENTS:
                arguments.pop(name)
        return arguments

    def lidar_config(self):
        return LidarConfig(azimuth_steps=self.azimuth_steps)

    def scene_config(self):
        return SceneConfig(t_start=-self.sweeps_before_first * SWEEP_PERIOD_US * 1e-6,
                           t_end=(self.samples_per_scene - 1) * SWEEPS_PER_KEY_FRAME * SWEEP_PERIOD_US * 1e-6,
                           num_objects=self.num_objects)


@dataclass(frozen=True)
class FramePlan:
    """One LIDAR_TOP sample_data: token, timestamp (us), scene time (s), key frame flag, owning sample index
    (sweeps belong to the next key frame, as in nuScenes), files relative to the dataroot."""
    token: str
    timestamp_us: int
    t: float
    is_key_frame: bool
    sample_index: int
    filename: str
    label_filename: str
    occupancy_filename: str  # '' for sweeps and without occupancy


@dataclass(frozen=True)
class ScenePlan:
    """Everything about a scene that follows from the arguments alone (no simulation)."""
    index: int
    name: str
    split: str
    namespace: str
    location: str
    logfile: str
    first_timestamp_us: int
    frames: tuple

    def token(self, *parts):
        """Deterministic token of a record of this scene (unique per version, seed and scene)."""
        return schema.make_token(self.namespace, self.name, *parts)


def plan_scenes(config):
    """Scene plans in scene-name order (train and val scenes interleave, as in the real scene table)."""
    train_names, val_names = schema.select_scene_names(config.version, config.num_scenes, config.val_fraction)
    split_of = {**{name: 'train' for name in train_names}, **{name: 'val' for name in val_names}}
    namespace = f'pcdet-synthetic/{config.version}/seed{config.seed}'
    plans = []
    for index, name in enumerate(sorted(split_of)):
        first_us = FIRST_SCENE_TIMESTAMP_US + index * SCENE_SPACING_US
        local_time = time.gmtime(first_us // 1_000_000 + 8 * 3600)  # Singapore time, like the real log names
        logfile = f'n015-{time.strftime("%Y-%m-%d-%H-%M-%S", local_time)}+0800'
        frames = tuple(_plan_frames(config, namespace, name, logfile, first_us))
        plans.append(ScenePlan(index, name, split_of[name], namespace, schema.LOCATIONS[index % len(schema.LOCATIONS)],
                               logfile, first_us, frames))
    return plans


def _plan_frames(config, namespace, scene_name, logfile, first_key_frame_us):
    num_frames = config.sweeps_before_first + (config.samples_per_scene - 1) * SWEEPS_PER_KEY_FRAME + 1
    for frame_index in range(num_frames):
        offset = frame_index - config.sweeps_before_first  # sweep periods since the first key frame
        is_key = offset >= 0 and offset % SWEEPS_PER_KEY_FRAME == 0
        timestamp = first_key_frame_us + offset * SWEEP_PERIOD_US
        channel = schema.LIDAR_CHANNEL
        filename = f'{"samples" if is_key else "sweeps"}/{channel}/{logfile}__{channel}__{timestamp}.pcd.bin'
        token = schema.make_token(namespace, scene_name, 'sample_data', frame_index)
        scene_token = schema.make_token(namespace, scene_name, 'scene')  # = ScenePlan.token('scene')
        occupancy_filename = occupancy.occupancy_relpath(scene_token, token) if is_key and config.with_occupancy else ''
        yield FramePlan(token=token, timestamp_us=timestamp, t=offset * SWEEP_PERIOD_US * 1e-6, is_key_frame=is_key,
                        sample_index=max(0, -(-offset // SWEEPS_PER_KEY_FRAME)), filename=filename,
                        label_filename=label_relpath(config.version, token, is_key),
                        occupancy_filename=occupancy_filename)


def map_filename(namespace, location):
    return f'maps/{schema.make_token(namespace, "map", location)}.png'


def planned_files(config, plans):
    """Every dataroot-relative file a run writes (except the manifest itself)."""
    files = [f'{config.version}/{name}.json' for name in TABLE_NAMES + ('splits',)]
    files += sorted({map_filename(plan.namespace, plan.location) for plan in plans})
    for plan in plans:
        files += [path for frame in plan.frames
                  for path in (frame.filename, frame.label_filename, frame.occupancy_filename) if path]
        if config.with_cameras:
            files += [frame.filename for frame in nuscenes_cameras.camera_frame_plans(config, plan)]
    if config.with_occupancy:
        files += list(occupancy.OCC_INFO_FILES.values())
    return files


def write_scene(plan, config):
    """Simulate one scene, ray-cast and write all its LiDAR frames and label files.

    Returns:
        (records, stats): records is {table name: [records]} for this scene; stats has 'points_per_scan',
        'kinds_with_points' (object kinds with at least one key-frame LiDAR point), 'occupied_voxels' (per key
        frame with occupancy), 'occupancy_seconds' (time spent on occupancy) and 'camera_seconds' (time spent
        rendering and writing camera images).
    """
    scene = simulate_scene(config.scene_config(), np.random.default_rng([config.seed, plan.index, 0]))
    calibration = nuscenes_records.calibrated_sensor_record(plan, np.random.default_rng([config.seed, plan.index, 1]),
                                                           tilt=config.lidar_tilt)
    ego_from_sensor = nuscenes_records.ego_from_sensor(calibration)
    lidar_config = config.lidar_config()
    object_lidarseg = np.array([schema.lidarseg_index(schema.category_name(kind, subtype))
                                for kind, subtype in zip(scene.objects.kinds, scene.objects.subtypes)], dtype=np.uint8)
    surface_lidarseg = schema.surface_lidarseg_lut()
    object_occupancy = occupancy.object_challenge_ids(scene)
    root = Path(config.root)
    builder = nuscenes_records.SceneRecordBuilder(plan, scene, calibration)
    points_per_scan, occupied_voxels, occupancy_seconds = [], [], 0.0
    for frame_index, frame in enumerate(plan.frames):
        ego_pose = scene.ego_pose_at(frame.t)
        scan = cast_scan(scene, frame.t, ego_pose @ ego_from_sensor, lidar_config,
                         np.random.default_rng([config.seed, plan.index, 2, frame_index]))
        point_rows = np.concatenate([scan.points, scan.ring[:, None].astype(np.float32)], axis=1)
        # Per-scan files: atomic but not fsynced (regenerable; see `atomic_write`); tables and manifest stay durable.
        atomic_save_bytes(np.ascontiguousarray(point_rows, dtype=np.float32).tobytes(), root / frame.filename,
                          durable=False)
        labels = np.where(scan.hit_object_id >= 0, object_lidarseg[np.maximum(scan.hit_object_id, 0)],
                          surface_lidarseg[scan.semantic_label]).astype(np.uint8)
        atomic_save_bytes(labels.tobytes(), root / frame.label_filename, durable=False)
        builder.add_frame(frame, ego_pose, scan, lidar_config.max_range)
        points_per_scan.append(len(point_rows))
        if frame.occupancy_filename:
            start = time.perf_counter()
            rows = occupancy.occupancy_rows(scene, frame.t, ego_pose @ ego_from_sensor, object_occupancy)
            occupancy.write_occupancy(root / frame.occupancy_filename, rows)
            occupancy_seconds += time.perf_counter() - start
            occupied_voxels.append(len(rows))
    records, camera_seconds = builder.records(), 0.0
    if config.with_cameras:
        camera_records, camera_seconds = nuscenes_cameras.write_cameras(config, plan, scene, root)
        for name, table in camera_records.items():
            records[name] = records[name] + table
    kinds_with_points = sorted({scene.objects.kinds[m] for m, annotations in enumerate(builder.annotations_of_object)
                                if any(ann['num_lidar_pts'] > 0 for ann in annotations)})
    return records, {'points_per_scan': points_per_scan, 'kinds_with_points': kinds_with_points,
                     'occupied_voxels': occupied_voxels, 'occupancy_seconds': occupancy_seconds,
                     'camera_seconds': camera_seconds}


def _write_scene_job(job):
    return write_scene(*job)


def generate_nuscenes(config, overwrite=False, workers=1, progress=True):
    """Generate (or skip, see `dataset_manifest`) a synthetic nuScenes dataset.

    Args:
        config: SyntheticNuScenesConfig.
        overwrite: regenerate even if an identical complete dataset is present.
        workers: processes simulating scenes in parallel (the output does not depend on it).
        progress: show a tqdm bar over scenes.
    Returns:
        dict with 'skipped', 'dataroot', 'num_scenes', 'num_key_frames', 'num_sweeps', 'mean_points_per_scan',
        'seconds', 'train_scenes', 'val_scenes', 'classes_without_points' ({'train': [...], 'val': [...]}:
        detection classes no annotation of that split has LiDAR points for; normally empty), and with occupancy
        'mean_occupied_voxels' and 'occupancy_seconds_per_key_frame' (None without), with cameras
        'camera_seconds_per_key_frame' (six images rendered, encoded and written; None without).
    Raises:
        FileExistsError: `root` holds tables we did not write, or stray label files in `lidarseg/<version>/`.
    """
    config.validate()
    start = time.time()
    plans = plan_scenes(config)
    root = Path(config.root)
    table_dir = root / config.version
    manifest_path = table_dir / MANIFEST_NAME
    files = planned_files(config, plans)
    summary = {'dataroot': str(root), 'num_scenes': len(plans),
               'train_scenes': [p.name for p in plans if p.split == 'train'],
               'val_scenes': [p.name for p in plans if p.split == 'val'],
               'num_key_frames': sum(f.is_key_frame for p in plans for f in p.frames),
               'num_sweeps': sum(not f.is_key_frame for p in plans for f in p.frames)}
    if not dataset_manifest.prepare_output(root, manifest_path, config.arguments(), overwrite, '*.json',
                                           generator=GENERATOR):
        return {**summary, 'skipped': True, 'mean_points_per_scan': None, 'classes_without_points': None,
                'mean_occupied_voxels': None, 'occupancy_seconds_per_key_frame': None,
                'camera_seconds_per_key_frame': None, 'seconds': time.time() - start}
    _check_no_stray_labels(root, config.version, files)
    dataset_manifest.write_manifest(manifest_path, GENERATOR, config.arguments(), files, status='writing')

    results = _run_scenes([(plan, config) for plan in plans], workers, progress, config.version)
    tables = nuscenes_records.static_tables(nuscenes_cameras.camera_sensor_table() if config.with_cameras else ())
    for records, _ in results:
        for name, scene_records in records.items():
            tables.setdefault(name, []).extend(scene_records)
    tables['map'] = _write_maps(root, plans, tables['log'])
    nuscenes_records.write_tables(table_dir, tables, {'train': summary['train_scenes'], 'val': summary['val_scenes']})
    if config.with_occupancy:
        occupancy.write_occ_infos(root, occupancy.build_occ_infos(tables, plans), config.version)
    dataset_manifest.write_manifest(manifest_path, GENERATOR, config.arguments(), files, status='complete')
    points = [n for _, stats in results for n in stats['points_per_scan']]
    voxels = [n for _, stats in results for n in stats['occupied_voxels']]
    return {**summary, 'skipped': False, 'mean_points_per_scan': float(np.mean(points)),
            'classes_without_points': _classes_without_points(plans, results), 'seconds': time.time() - start,
            'mean_occupied_voxels': float(np.mean(voxels)) if voxels else None,
            'occupancy_seconds_per_key_frame': (sum(stats['occupancy_seconds'] for _, stats in results) / len(voxels)
                                                if voxels else None),
            'camera_seconds_per_key_frame': (sum(stats['camera_seconds'] for _, stats in results)
                                             / summary['num_key_frames'] if config.with_cameras else None)}


def _check_no_stray_labels(root, version, files):
    """nuscenes-devkit refuses to load when `lidarseg/<version>/` holds a label file without a lidarseg record:
    fail before writing if a file we do not plan to write is there."""
    label_dir = root / KEY_FRAME_LABEL_DIR / version
    planned = set(files)
    stray = sorted(path.name for path in label_dir.glob('*') if path.suffix in ('.bin', '.npz')
                   and f'{KEY_FRAME_LABEL_DIR}/{version}/{path.name}' not in planned) if label_dir.is_dir() else []
    if stray:
        raise FileExistsError(f'{label_dir} holds {len(stray)} label files this dataset does not list ({stray[0]}, '
                              '...); nuscenes-devkit would refuse to load it: remove them or choose another --root')


def _run_scenes(jobs, workers, progress, version):
    """`write_scene` over all jobs, in order (so the output does not depend on `workers`), with a progress bar."""
    from tqdm import tqdm

    results = []
    with tqdm(total=len(jobs), desc=f'synthetic {version} scenes', unit='scene', disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context('fork').Pool(min(workers, len(jobs))) as pool:
                for result in pool.imap(_write_scene_job, jobs):
                    results.append(result)
                    bar.update(1)
        else:
            for job in jobs:
                results.append(write_scene(*job))
                bar.update(1)
    return results


def _classes_without_points(plans, results):
    """{'train': [...], 'val': [...]} detection classes with no LiDAR point in any key frame of the split."""
    return {split: sorted(set(DETECTION_KINDS).difference(
        *[stats['kinds_with_points'] for plan, (_, stats) in zip(plans, results) if plan.split == split]))
        for split in ('train', 'val')}


def _write_maps(root, plans, logs):
    """One placeholder map mask per location (all driveable); returns the map records."""
    records = []
    for location in sorted({plan.location for plan in plans}):
        filename = map_filename(plans[0].namespace, location)
        atomic_save_bytes(encode_gray_png(np.full((20, 20), 255, dtype=np.uint8)), root / filename)
        records.append({'category': 'semantic_prior', 'token': Path(filename).stem, 'filename': filename,
                        'log_tokens': [log['token'] for log in logs if log['location'] == location]})
    return records
