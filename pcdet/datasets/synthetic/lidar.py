"""Spinning multi-beam LiDAR ray caster (vectorised numpy), independent of any dataset format.

Model: `num_beams` lasers at fixed elevations sweep `azimuth_steps` equally spaced azimuths; every ray returns
the nearest hit among the ground plane (global z = 0), the scene's oriented boxes and ellipsoids, or nothing
beyond `max_range`. The whole revolution is taken at one instant `t` (no rolling shutter: the sensor pose and
the objects are frozen during a scan), which keeps annotation boxes exact for every point.

Frames: rays are defined in the SENSOR frame (x = azimuth 0, z = up of the sensor); `sensor_pose_global` is the
4x4 `global_from_sensor`; returned points are in the sensor frame. Speed comes from culling: each primitive is
tested only against the rays inside the azimuth / elevation window of its bounding sphere.
"""
import functools
from dataclasses import dataclass

import numpy as np

from . import catalog
from .raycast import ground_depth, primitive_frames, ray_box, ray_ellipsoid

# Velodyne HDL-32E (the nuScenes LIDAR_TOP): 32 beams from -30.67 to +10.67 degrees.
NUSCENES_BEAM_ELEVATIONS_DEG = tuple(float(v) for v in np.round(np.linspace(-30.67, 10.67, 32), 4))


@dataclass(frozen=True)
class LidarConfig:
    """Sensor model.

    Attributes:
        beam_elevations_deg: increasing elevation of each beam; ring index = position in this tuple.
        azimuth_steps: rays per beam and revolution (nuScenes: ~1084).
        max_range, min_range: returns outside [min_range, max_range] metres are dropped.
        range_noise_std, range_noise_clip: Gaussian range noise (metres) clipped to +-clip. Keep the clip below
            `SceneConfig.surface_inset` so object returns stay inside their annotation boxes.
        intensity_noise_std: additive Gaussian intensity noise (intensity is 0..255).
    """
    beam_elevations_deg: tuple = NUSCENES_BEAM_ELEVATIONS_DEG
    azimuth_steps: int = 1024
    max_range: float = 70.0
    min_range: float = 0.5
    range_noise_std: float = 0.01
    range_noise_clip: float = 0.03
    intensity_noise_std: float = 2.0

    def __post_init__(self):
        elevations = np.asarray(self.beam_elevations_deg)
        if elevations.ndim != 1 or len(elevations) == 0 or np.any(np.diff(elevations) <= 0):
            raise ValueError('beam_elevations_deg must be a non-empty strictly increasing sequence')
        if self.azimuth_steps < 8:
            raise ValueError(f'azimuth_steps must be >= 8, got {self.azimuth_steps}')

    @property
    def num_beams(self):
        return len(self.beam_elevations_deg)


@dataclass(frozen=True)
class LidarScan:
    """One revolution.

    Attributes:
        points: (N, 4) float32 [x, y, z, intensity] in the sensor frame, ordered by azimuth then ring.
        ring: (N,) uint8 beam index (0 = lowest beam).
        azimuth_index: (N,) int32 column j of the ray (azimuth -pi + j * 2 pi / azimuth_steps): with `ring`,
            the point's cell in a range image.
        semantic_label: (N,) uint8 index into `catalog.SEMANTIC_CLASSES`.
        hit_object_id: (N,) int32 index of the scene object hit, -1 for ground and clutter.
        object_rays_intersecting: (M,) rays whose line meets object m within range (occluded or not).
        object_rays_first_hit: (M,) rays whose nearest hit is object m (= its number of points).
    """
    points: np.ndarray
    ring: np.ndarray
    azimuth_index: np.ndarray
    semantic_label: np.ndarray
    hit_object_id: np.ndarray
    object_rays_intersecting: np.ndarray
    object_rays_first_hit: np.ndarray

    def object_visible_fraction(self):
        """(M,) first-hit / intersecting rays per object; NaN when no ray meets the object."""
        with np.errstate(divide='ignore', invalid='ignore'):
            return np.where(self.object_rays_intersecting > 0,
                            self.object_rays_first_hit / np.maximum(self.object_rays_intersecting, 1), np.nan)


@functools.lru_cache(maxsize=8)
def ray_grid(lidar_config):
    """Unit ray directions in the sensor frame.

    Returns:
        (dirs (B, A, 3), elevations (B,) rad, azimuths (A,) rad); azimuth j is -pi + j * 2 pi / A.
        Arrays are read-only (the result is memoised per config).
    """
    elevations = np.deg2rad(np.asarray(lidar_config.beam_elevations_deg, dtype=np.float64))
    azimuths = -np.pi + np.arange(lidar_config.azimuth_steps) * (2 * np.pi / lidar_config.azimuth_steps)
    cos_el = np.cos(elevations)[:, None]
    dirs = np.stack([cos_el * np.cos(azimuths)[None, :], cos_el * np.sin(azimuths)[None, :],
                     np.broadcast_to(np.sin(elevations)[:, None], (len(elevations), len(azimuths)))], axis=-1)
    for array in (dirs, elevations, azimuths):
        array.setflags(write=False)
    return dirs, elevations, azimuths


def cast_scan(scene, t, sensor_pose_global, lidar_config, rng=None):
    """Ray-cast one revolution.

    Args:
        scene: a `Scene` (anything with `primitives_at(t)`, `ground_semantic(xy)` and `num_objects`).
        t: scene time in seconds.
        sensor_pose_global: (4, 4) `global_from_sensor` at time `t`.
        lidar_config: LidarConfig.
        rng: np.random.Generator for range and intensity noise; None gives a noise-free scan.
    Returns:
        LidarScan.
    """
    dirs, elevations, azimuths = ray_grid(lidar_config)
    depth = ground_depth(dirs, sensor_pose_global)  # (B, A) nearest hit so far
    hit_primitive = np.full(depth.shape, -1, dtype=np.int64)  # -1 = ground

    primitives = scene.primitives_at(t)
    shapes = primitives.shapes
    centres, sensor_from_local = primitive_frames(shapes, sensor_pose_global)
    num_objects = scene.num_objects
    # rays meeting each object: a set of flat ray indices per object, since an object may be several primitives
    object_rays = [[] for _ in range(num_objects)]
    windows = _ray_windows(centres, np.linalg.norm(shapes[:, 3:6], axis=1) / 2, elevations, azimuths,
                           lidar_config.max_range)
    for index, beams, cols in windows:
        rotation = sensor_from_local[index]
        local_dirs = dirs[beams][:, cols] @ rotation  # row vectors: d_local = R^T d
        intersect = ray_ellipsoid if primitives.is_ellipsoid[index] else ray_box
        hit_depth = intersect(-rotation.T @ centres[index], local_dirs, shapes[index, 3:6] / 2)
        hit_depth[hit_depth > lidar_config.max_range] = np.inf
        owner = primitives.object_id[index]
        if owner >= 0:
            hit_beams, hit_cols = np.nonzero(np.isfinite(hit_depth))
            beam_ids, col_ids = np.arange(depth.shape[0])[beams], np.arange(depth.shape[1])[cols]
            object_rays[owner].append(beam_ids[hit_beams] * depth.shape[1] + col_ids[hit_cols])
        current = depth[beams][:, cols]
        closer = hit_depth < current
        if closer.any():
            depth[beams, cols] = np.where(closer, hit_depth, current)
            hit_primitive[beams, cols] = np.where(closer, index, hit_primitive[beams][:, cols])

    rays_intersecting = np.array([len(np.unique(np.concatenate(rays))) if rays else 0 for rays in object_rays],
                                 dtype=np.int64)
    return _assemble_scan(scene, primitives, depth, hit_primitive, rays_intersecting, dirs, sensor_pose_global,
                          lidar_config, rng)


def _ray_windows(centres, radii, elevations, azimuths, max_range):
    """Rays that may meet each bounding sphere (centres (K, 3) in the sensor frame, radii (K,)).

    A ray meeting a sphere seen at distance d under angle asin(r / d) differs from the centre direction by at
    most that angle in elevation; its horizontal projection meets the sphere's disc, which bounds its azimuth.
    Returns:
        list of (primitive index, beam slice, azimuth column index array or slice) for non-empty windows.
    """
    distance = np.linalg.norm(centres, axis=1)
    horizontal = np.hypot(centres[:, 0], centres[:, 1])
    with np.errstate(invalid='ignore', divide='ignore'):
        half_el = np.arcsin(np.clip(radii / distance, 0.0, 1.0))
        half_az = np.arcsin(np.clip(radii / horizontal, 0.0, 1.0))
    el_centre = np.arctan2(centres[:, 2], horizontal)
    beam_lo = np.searchsorted(elevations, el_centre - half_el)
    beam_hi = np.searchsorted(elevations, el_centre + half_el)
    num_az, step = len(azimuths), azimuths[1] - azimuths[0]
    az_centre = np.arctan2(centres[:, 1], centres[:, 0])
    col_lo = np.ceil((az_centre - half_az - azimuths[0]) / step).astype(np.int64)
    col_hi = np.floor((az_centre + half_az - azimuths[0]) / step).astype(np.int64)
    windows = []
    for index in np.nonzero(distance - radii <= max_range)[0]:
        if distance[index] <= radii[index]:  # the sensor is inside the bounding sphere
            windows.append((index, slice(None), slice(None)))
            continue
        beams = slice(beam_lo[index], beam_hi[index])
        if beam_hi[index] <= beam_lo[index] or col_hi[index] < col_lo[index]:
            continue
        if horizontal[index] <= radii[index] or col_hi[index] - col_lo[index] + 1 >= num_az:
            windows.append((index, beams, slice(None)))
        else:
            windows.append((index, beams, np.arange(col_lo[index], col_hi[index] + 1) % num_az))
    return windows


def _assemble_scan(scene, primitives, depth, hit_primitive, rays_intersecting, dirs, sensor_pose_global,
                   lidar_config, rng):
    """Turn the per-ray depth / primitive grids into points, labels and intensities (adds noise)."""
    valid = np.isfinite(depth) & (depth >= lidar_config.min_range) & (depth <= lidar_config.max_range)
    azimuth_index, ring = np.nonzero(valid.T)  # azimuth-major order, like a spinning sensor
    ray_depth = depth[ring, azimuth_index]
    primitive = hit_primitive[ring, azimuth_index]
    if rng is not None:
        ray_depth = ray_depth + np.clip(rng.normal(0.0, lidar_config.range_noise_std, size=len(ray_depth)),
                                        -lidar_config.range_noise_clip, lidar_config.range_noise_clip)
    xyz = dirs[ring, azimuth_index] * ray_depth[:, None]

    on_ground = primitive < 0
    semantic = np.empty(len(ray_depth), dtype=np.int64)
    semantic[~on_ground] = primitives.semantic[primitive[~on_ground]]
    ground_xy = xyz[on_ground] @ sensor_pose_global[0:2, :3].T + sensor_pose_global[0:2, 3]
    semantic[on_ground] = scene.ground_semantic(ground_xy)

    reflectivity = np.empty(len(ray_depth))
    reflectivity[~on_ground] = primitives.reflectivity[primitive[~on_ground]]
    surface_reflectivity = np.array([catalog.SURFACE_REFLECTIVITY.get(name, 0.0)
                                     for name in catalog.SEMANTIC_CLASSES])
    reflectivity[on_ground] = surface_reflectivity[semantic[on_ground]]
    intensity = reflectivity * (1.0 - 0.3 * ray_depth / lidar_config.max_range)
    if rng is not None:
        intensity = intensity + rng.normal(0.0, lidar_config.intensity_noise_std, len(ray_depth))
    intensity = np.clip(intensity, 0, 255)

    object_id = np.where(on_ground, -1, primitives.object_id[np.maximum(primitive, 0)]).astype(np.int32)
    num_objects = scene.num_objects
    first_hit = np.bincount(object_id[object_id >= 0], minlength=num_objects)[:num_objects]
    return LidarScan(
        points=np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32),
        ring=ring.astype(np.uint8), azimuth_index=azimuth_index.astype(np.int32),
        semantic_label=semantic.astype(np.uint8), hit_object_id=object_id,
        object_rays_intersecting=rays_intersecting, object_rays_first_hit=first_hit)
