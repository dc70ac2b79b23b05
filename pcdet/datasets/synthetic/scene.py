"""Scene model of the synthetic world: ego trajectory, annotated objects and static clutter.

Dataset-agnostic and pure numpy: a scene knows nothing about file formats, only geometry over time.
Frames: everything here is in the GLOBAL frame (x, y on a flat ground plane at z = 0, z up, metres); time `t`
is in seconds relative to the scene's reference time (a writer picks what t = 0 means, e.g. the first key
frame). Boxes are `[x, y, z, dx, dy, dz, heading, vx, vy]` with (x, y, z) the geometric centre, dx the length
along the heading, heading CCW from +x (docs/CONVENTIONS.md).

Build scenes with `simulate_scene(SceneConfig(...), np.random.default_rng(seed))`; the result is fully
determined by the config and the generator state.
"""
from dataclasses import dataclass

import numpy as np

from . import catalog
from .geometry import pose_matrix, rotation_matrix_from_rpy
from .placement import place_clutter, place_objects
from .scene_types import Primitives, SceneClutter, SceneObjects

VEHICLE_PROFILES = ('box', 'stepped')
VEHICLE_NOSE_LENGTH = 0.3  # share of the length at the front that is lowered ('stepped' profile)
VEHICLE_NOSE_HEIGHT = 0.6  # its height as a share of the box height


@dataclass(frozen=True)
class SceneConfig:
    """Everything `simulate_scene` needs; all distances in metres, times in seconds, speeds in m/s.

    Attributes:
        t_start, t_end: time span over which the scene must be valid (objects never overlap each other or the
            ego path inside it). Writers use their first and last LiDAR timestamps.
        num_objects: objects of the 10 detection classes per scene (at least one per class when
            `ensure_every_class`, even if `num_objects` is smaller).
        num_ignore_objects: extra objects of kinds outside the detection classes (animals, pushable objects).
        num_walls, num_poles, num_trees: static clutter counts (a tree is a trunk box plus an ellipsoid crown).
        ego_speed_range: ego speed is drawn from it and kept constant.
        ego_yaw_rate_range: |yaw rate| (rad/s) drawn from it with a random sign, so the path is a circular arc.
        road_half_width: ground within this distance of the ego path's circle (the road's centre line) is 'road'.
        sidewalk_width: the next band beside the road is 'sidewalk'; ground beyond it is 'terrain'.
        island_width, island_length, island_period: traffic islands ('island') are cut from the outermost
            `island_width` of the road on both edges, `island_length` long every `island_period` along the road.
            Ground kinds only change point labels: the ground stays the plane z = 0.
        ego_clearance: minimum BEV distance between the ego origin's path and any object or clutter footprint.
        object_gap: minimum BEV gap between two footprints at any checked time.
        collision_check_step_s: time step of the overlap checks.
        placement_range: max longitudinal offset (along the road) of an object from its anchor ego pose.
        near_range: the guaranteed one-object-per-class instances are placed within this offset and lateral
            distance so that they get LiDAR points.
        box_ground_clearance: annotation boxes float this high above the ground so ground returns (with range
            noise) never fall inside a box.
        surface_inset: the ray-cast shape is the annotation box shrunk by this much on every side, so every
            object return stays inside its box despite range noise (keep it above the LiDAR noise clip).
        max_placement_tries: rejection-sampling attempts per object before it is dropped.
        kind_weights: optional ((kind name, relative frequency), ...) replacing the catalog's `weight` of those
            detection kinds when the scene is filled (writers use it to mimic their dataset's class mix; the
            one-per-class instances of `ensure_every_class` are placed regardless).
        vehicle_profile: ray-cast shape of vehicle kinds. 'box': the (shrunk) annotation box. 'stepped': the same
            box outline with a lowered front: the front `VEHICLE_NOSE_LENGTH` of the length is only
            `VEHICLE_NOSE_HEIGHT` of the height tall (bonnet / cab step), so front and back look different and the
            heading is observable from one scan; the shape still touches every face of the box, so labels stay
            tight.
    """
    t_start: float = 0.0
    t_end: float = 4.5
    num_objects: int = 30
    num_ignore_objects: int = 2
    ensure_every_class: bool = True
    num_walls: int = 8
    num_poles: int = 12
    num_trees: int = 10
    ego_speed_range: tuple = (2.0, 9.0)
    ego_yaw_rate_range: tuple = (0.02, 0.12)
    road_half_width: float = 7.0
    sidewalk_width: float = 4.0
    island_width: float = 1.5
    island_length: float = 6.0
    island_period: float = 20.0
    ego_clearance: float = 2.2
    object_gap: float = 0.5
    collision_check_step_s: float = 0.05
    placement_range: float = 40.0
    near_range: float = 14.0
    box_ground_clearance: float = 0.03
    surface_inset: float = 0.05
    max_placement_tries: int = 300
    kind_weights: tuple = None
    vehicle_profile: str = 'box'

    def __post_init__(self):
        if not self.t_end > self.t_start:
            raise ValueError(f'SceneConfig needs t_end > t_start, got [{self.t_start}, {self.t_end}]')
        if not 0 < self.ego_yaw_rate_range[0] <= self.ego_yaw_rate_range[1]:
            raise ValueError('ego_yaw_rate_range must be positive and increasing (the path is a circular arc)')
        if not 0 < self.ego_speed_range[0] <= self.ego_speed_range[1]:
            raise ValueError('ego_speed_range must be positive and increasing')
        if not (self.sidewalk_width >= 0 and 0 <= self.island_width < self.road_half_width
                and 0 <= self.island_length <= self.island_period and self.island_period > 0):
            raise ValueError('SceneConfig needs sidewalk_width >= 0, 0 <= island_width < road_half_width and '
                             '0 <= island_length <= island_period (> 0)')
        if self.vehicle_profile not in VEHICLE_PROFILES:
            raise ValueError(f'vehicle_profile must be one of {VEHICLE_PROFILES}, got {self.vehicle_profile!r}')
        if self.kind_weights is not None:
            names = [name for name, _ in self.kind_weights]
            values = np.array(list(self.detection_kind_weights().values()))
            if (len(names) != len(set(names)) or set(names) - set(catalog.DETECTION_KINDS)
                    or not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0):
                raise ValueError(f'kind_weights must give finite, non-negative weights (not all zero after merging '
                                 f'with the catalog), once each, to detection kinds {catalog.DETECTION_KINDS}; '
                                 f'got {self.kind_weights}')

    def detection_kind_weights(self):
        """{detection kind: relative frequency} in `catalog.DETECTION_KINDS` order: the catalog's weights with
        `kind_weights` applied (names outside the detection kinds are ignored here and rejected at construction)."""
        weights = {kind: float(catalog.object_kind(kind).weight) for kind in catalog.DETECTION_KINDS}
        weights.update({name: float(weight) for name, weight in (self.kind_weights or ()) if name in weights})
        return weights

    def check_times(self):
        """(T,) times at which non-overlap is enforced (both ends included)."""
        steps = max(1, int(np.ceil((self.t_end - self.t_start) / self.collision_check_step_s - 1e-9)))
        return np.linspace(self.t_start, self.t_end, steps + 1)


@dataclass(frozen=True)
class EgoTrajectory:
    """Constant speed and yaw rate: the ego origin (rear axle on the ground) drives along a circular arc.

    Attributes: start_xy (2,) and start_yaw at t = 0, speed (m/s), yaw_rate (rad/s, non-zero).
    """
    start_xy: tuple
    start_yaw: float
    speed: float
    yaw_rate: float

    def pose2d_at(self, t):
        """(x, y, yaw) arrays shaped like `t` (global frame)."""
        t = np.asarray(t, dtype=np.float64)
        yaw = self.start_yaw + self.yaw_rate * t
        radius = self.speed / self.yaw_rate
        x = self.start_xy[0] + radius * (np.sin(yaw) - np.sin(self.start_yaw))
        y = self.start_xy[1] - radius * (np.cos(yaw) - np.cos(self.start_yaw))
        return x, y, yaw

    def pose_at(self, t):
        """4x4 `global_from_ego` at scalar time `t` (ego on the flat ground: z = 0, no roll / pitch)."""
        x, y, yaw = self.pose2d_at(float(t))
        return pose_matrix(rotation_matrix_from_rpy(0.0, 0.0, float(yaw)), [float(x), float(y), 0.0])

    def road_coordinates(self, xy):
        """(N, 2) global points -> (arc, offset), each (N,): arc length along the circle the ego drives on (the
        road's centre line; angle about its centre times its radius) and signed distance from it (> 0 outside)."""
        radius = self.speed / self.yaw_rate
        centre = np.array([self.start_xy[0] - radius * np.sin(self.start_yaw),
                           self.start_xy[1] + radius * np.cos(self.start_yaw)])
        offset_xy = xy[:, 0:2] - centre
        arc = np.arctan2(offset_xy[:, 1], offset_xy[:, 0]) * abs(radius)
        return arc, np.hypot(offset_xy[:, 0], offset_xy[:, 1]) - abs(radius)

    def distance_to_road_centre(self, xy):
        """(N, 2) global points -> (N,) distance to the circle the ego drives on (the road's centre line)."""
        return np.abs(self.road_coordinates(xy)[1])


@dataclass(frozen=True)
class Scene:
    """A simulated scene; query it at any time `t` (seconds)."""
    config: SceneConfig
    trajectory: EgoTrajectory
    objects: SceneObjects
    clutter: SceneClutter

    @property
    def num_objects(self):
        return len(self.objects.kinds)

    @property
    def instance_ids(self):
        """(M,) stable object ids (row index in every per-object array)."""
        return np.arange(self.num_objects)

    @property
    def class_names(self):
        """(M,) generic kind names of the objects."""
        return self.objects.kinds

    def ego_pose_at(self, t):
        """4x4 `global_from_ego` at time `t`."""
        return self.trajectory.pose_at(t)

    def object_boxes_at(self, t):
        """(M, 9) annotation boxes `[x, y, z, dx, dy, dz, heading, vx, vy]` in the global frame at time `t`."""
        objects = self.objects
        centers = objects.centers_t0.copy()
        centers[:, 0:2] += objects.velocities * t
        return np.concatenate([centers, objects.sizes, objects.headings[:, None], objects.velocities], axis=1)

    def object_shapes_at(self, t):
        """(M, 7) the surfaces rays hit: annotation boxes shrunk by `surface_inset` on every side."""
        boxes = self.object_boxes_at(t)[:, 0:7]
        boxes[:, 3:6] -= 2 * self.config.surface_inset
        return boxes

    def ground_semantic(self, xy):
        """(N, 2) global ground points -> (N,) semantic index (int64) by distance d to the road's centre line:
        'road' (d <= road_half_width) with 'island' patches at its edges, 'sidewalk' (the next `sidewalk_width`),
        'terrain' beyond (`SceneConfig`)."""
        config = self.config
        arc, offset = self.trajectory.road_coordinates(np.asarray(xy, dtype=np.float64).reshape(-1, 2))
        distance = np.abs(offset)
        semantic = np.full(len(distance), catalog.semantic_index('terrain'), dtype=np.int64)
        semantic[distance <= config.road_half_width + config.sidewalk_width] = catalog.semantic_index('sidewalk')
        on_road = distance <= config.road_half_width
        semantic[on_road] = catalog.semantic_index('road')
        island = (on_road & (distance > config.road_half_width - config.island_width)
                  & (np.mod(arc, config.island_period) < config.island_length))
        semantic[island] = catalog.semantic_index('island')
        return semantic

    def vehicle_rows(self):
        """(V,) indices of the objects of vehicle kinds (`ObjectKind.vehicle`)."""
        return np.array([i for i, kind in enumerate(self.objects.kinds) if catalog.object_kind(kind).vehicle],
                        dtype=np.int64)

    def _stepped_vehicle_shapes(self, shapes):
        """'stepped' profile: each vehicle box becomes a low full-length body plus a full-height rear part.
        -> (shapes with the vehicles' bodies, (V, 7) rear parts, (V,) their object rows)."""
        rows = self.vehicle_rows()
        if len(rows) == 0:
            return shapes, np.zeros((0, 7)), rows
        shapes = shapes.copy()
        boxes = shapes[rows]
        length, height, heading = boxes[:, 3], boxes[:, 5], boxes[:, 6]
        rear = boxes.copy()
        rear[:, 3] = (1.0 - VEHICLE_NOSE_LENGTH) * length
        shift = -0.5 * VEHICLE_NOSE_LENGTH * length  # rear part flush with the back face
        rear[:, 0] += shift * np.cos(heading)
        rear[:, 1] += shift * np.sin(heading)
        body = boxes.copy()
        body[:, 5] = VEHICLE_NOSE_HEIGHT * height
        body[:, 2] -= 0.5 * (1.0 - VEHICLE_NOSE_HEIGHT) * height  # body flush with the bottom face
        shapes[rows] = body
        return shapes, rear, rows

    def primitives_at(self, t):
        """All hittable primitives at time `t`: one per object (rows 0..M-1, so primitive index = object index),
        then the extra parts of multi-part objects ('stepped' vehicles), then clutter."""
        objects, clutter = self.objects, self.clutter
        num_objects, num_clutter = self.num_objects, len(clutter.semantic)
        object_semantic = np.array([catalog.semantic_index(k) for k in objects.kinds], dtype=np.int64)
        object_shapes = self.object_shapes_at(t).reshape(-1, 7)
        extra_rows = np.zeros(0, dtype=np.int64)
        extra_shapes = np.zeros((0, 7))
        if self.config.vehicle_profile == 'stepped':
            object_shapes, extra_shapes, extra_rows = self._stepped_vehicle_shapes(object_shapes)
        object_rows = np.concatenate([np.arange(num_objects), extra_rows])
        return Primitives(
            shapes=np.concatenate([object_shapes, extra_shapes, clutter.shapes.reshape(-1, 7)]),
            is_ellipsoid=np.concatenate([np.zeros(len(object_rows), dtype=bool), clutter.is_ellipsoid]),
            semantic=np.concatenate([object_semantic[object_rows], clutter.semantic.astype(np.int64)]),
            object_id=np.concatenate([object_rows, -np.ones(num_clutter, dtype=np.int64)]),
            reflectivity=np.concatenate([objects.reflectivity[object_rows], clutter.reflectivity]).astype(np.float64),
        )


def simulate_scene(config, rng):
    """Draw a scene: ego trajectory, then objects, then clutter, each placed by rejection sampling.

    Args:
        config: SceneConfig.
        rng: np.random.Generator; the scene is a pure function of (config, rng state).
    Returns:
        Scene.
    """
    speed = rng.uniform(*config.ego_speed_range)
    yaw_rate = rng.uniform(*config.ego_yaw_rate_range) * rng.choice([-1.0, 1.0])
    trajectory = EgoTrajectory(start_xy=tuple(rng.uniform(300.0, 1500.0, size=2)),
                               start_yaw=float(rng.uniform(-np.pi, np.pi)), speed=float(speed),
                               yaw_rate=float(yaw_rate))
    objects, registry = place_objects(config, trajectory, rng)
    clutter = place_clutter(config, trajectory, registry, rng)
    return Scene(config=config, trajectory=trajectory, objects=objects, clutter=clutter)
