"""Rejection sampling of object and clutter placements so that nothing overlaps, at any time, in BEV.

A candidate is described by its BEV footprint `[x, y, dx, dy, yaw]` at every check time of the scene (T, 5).
It is accepted when (1) its footprint never comes closer than `ego_clearance` to the ego path and (2) its
footprint, inflated by half of `object_gap`, never overlaps an accepted footprint at the same time.
Everything is in the global frame; pure numpy; all randomness comes from the caller's generator.
"""
import numpy as np

from . import catalog
from .geometry import bev_rectangles_overlap, min_distance_points_to_rectangles
from .scene_types import SceneClutter, SceneObjects

EGO_PATH_MARGIN_S = 1.0  # the ego body extends ~3.5 m ahead of its origin: extend the path by 1 s both ways


class FootprintRegistry:
    """Accepted footprints over time plus the ego path, and the acceptance test for new candidates."""

    def __init__(self, config, trajectory):
        self.check_times = config.check_times()
        path_times = np.arange(config.t_start - EGO_PATH_MARGIN_S, config.t_end + EGO_PATH_MARGIN_S + 1e-9, 0.05)
        x, y, _ = trajectory.pose2d_at(path_times)
        self.ego_path_xy = np.stack([x, y], axis=1)
        self.ego_clearance = config.ego_clearance
        self.inflation = config.object_gap
        self.footprints = np.zeros((0, len(self.check_times), 5))  # (M, T, 5), already inflated

    def fits(self, footprints):
        """(T, 5) candidate footprints over the check times -> whether it may be added."""
        if min_distance_points_to_rectangles(self.ego_path_xy, footprints).min() < self.ego_clearance:
            return False
        if len(self.footprints) == 0:
            return True
        inflated = self._inflate(footprints)
        radii_sum = np.hypot(inflated[:, 2], inflated[:, 3])[None, :] / 2 + \
            np.hypot(self.footprints[..., 2], self.footprints[..., 3]) / 2  # (M, T)
        centre_dist = np.hypot(self.footprints[..., 0] - inflated[None, :, 0],
                               self.footprints[..., 1] - inflated[None, :, 1])
        close_obj, close_t = np.nonzero(centre_dist <= radii_sum)  # broad phase: bounding circles touch
        if len(close_obj) == 0:
            return True
        return not bev_rectangles_overlap(self.footprints[close_obj, close_t], inflated[close_t]).any()

    def add(self, footprints):
        self.footprints = np.concatenate([self.footprints, self._inflate(footprints)[None]], axis=0)

    def _inflate(self, footprints):
        inflated = footprints.copy()
        inflated[:, 2:4] += self.inflation  # half the gap on each side of each of the two footprints
        return inflated


def place_objects(config, trajectory, rng):
    """Place annotated objects: one near the ego per detection class first (if asked), then the rest.

    Returns:
        (SceneObjects, FootprintRegistry) - the registry is reused to place clutter around the objects.
    """
    registry = FootprintRegistry(config, trajectory)
    plan = []  # (kind, near)
    if config.ensure_every_class:
        plan += [(catalog.object_kind(name), True) for name in catalog.DETECTION_KINDS]
    detection_kinds = [catalog.object_kind(name) for name in catalog.DETECTION_KINDS]
    weights = np.array(list(config.detection_kind_weights().values()), dtype=np.float64)
    num_extra = max(0, config.num_objects - len(plan))
    extra_kinds = rng.choice(len(detection_kinds), num_extra, p=weights / weights.sum())
    plan += [(detection_kinds[i], False) for i in extra_kinds]
    plan += [(catalog.object_kind(catalog.IGNORE_KINDS[i % len(catalog.IGNORE_KINDS)]), False)
             for i in range(config.num_ignore_objects)]

    accepted = []
    for kind, near in plan:
        for _ in range(config.max_placement_tries):
            candidate = _propose_object(kind, near, config, trajectory, rng)
            footprints = _moving_footprints(candidate, registry.check_times)
            if registry.fits(footprints):
                registry.add(footprints)
                accepted.append(candidate)
                break
    return _stack_objects(accepted, config), registry


def _propose_object(kind, near, config, trajectory, rng):
    """One random object of `kind` as a dict; its centre at the anchor time lies beside the ego path."""
    anchor_t = rng.uniform(config.t_start, config.t_end)
    x, y, road_yaw = trajectory.pose2d_at(anchor_t)
    longitudinal_range = config.near_range if near else config.placement_range
    lateral_max = min(kind.lateral_range[1], config.near_range) if near else kind.lateral_range[1]
    longitudinal = rng.uniform(-longitudinal_range, longitudinal_range)
    lateral = rng.choice([-1.0, 1.0]) * rng.uniform(kind.lateral_range[0], max(kind.lateral_range[0], lateral_max))
    forward, left = np.array([np.cos(road_yaw), np.sin(road_yaw)]), np.array([-np.sin(road_yaw), np.cos(road_yaw)])
    anchor_xy = np.array([x, y]) + longitudinal * forward + lateral * left

    size = np.array(kind.size_lwh) * (1.0 + kind.size_jitter * np.clip(rng.standard_normal(3), -2.0, 2.0))
    moving = rng.random() < kind.moving_probability
    if kind.heading_mode == 'road':
        heading = road_yaw + rng.normal(0.0, 0.05) + (np.pi if rng.random() < 0.5 else 0.0)
        if not moving and kind.vehicle and rng.random() < 0.15:
            heading += np.pi / 2  # parked across the road direction
    else:
        heading = rng.uniform(-np.pi, np.pi)
    speed = rng.uniform(*kind.speed_range) if moving else 0.0
    velocity = speed * np.array([np.cos(heading), np.sin(heading)])
    if moving:
        state = 'moving'
    elif kind.vehicle:
        state = 'stopped' if rng.random() < 0.3 else 'parked'
    else:
        state = 'static'
    subtype_names = [name for name, _ in kind.subtypes]
    subtype_probs = np.array([p for _, p in kind.subtypes])
    subtype = subtype_names[rng.choice(len(subtype_names), p=subtype_probs / subtype_probs.sum())]
    z = config.box_ground_clearance + size[2] / 2
    return {
        'kind': kind.name, 'subtype': subtype, 'size': size,
        'center_t0': np.array([*(anchor_xy - velocity * anchor_t), z]),
        'heading': float(np.arctan2(np.sin(heading), np.cos(heading))), 'velocity': velocity,
        'state': state, 'has_rider': bool(kind.cycle and (moving or rng.random() < 0.2)),
        'reflectivity': rng.uniform(*kind.reflectivity_range),
    }


def _moving_footprints(candidate, times):
    """(T, 5) BEV footprints of a constant-velocity object at `times`."""
    xy = candidate['center_t0'][None, 0:2] + candidate['velocity'][None, :] * times[:, None]
    dims = np.broadcast_to(candidate['size'][0:2], (len(times), 2))
    return np.concatenate([xy, dims, np.full((len(times), 1), candidate['heading'])], axis=1)


def _stack_objects(accepted, config):
    def column(key, dtype=np.float64, shape=(0,)):
        return np.array([obj[key] for obj in accepted], dtype=dtype).reshape(-1, *shape[1:])
    return SceneObjects(
        kinds=tuple(o['kind'] for o in accepted), subtypes=tuple(o['subtype'] for o in accepted),
        sizes=column('size', shape=(0, 3)), centers_t0=column('center_t0', shape=(0, 3)),
        headings=column('heading'), velocities=column('velocity', shape=(0, 2)),
        motion_states=tuple(o['state'] for o in accepted), has_rider=column('has_rider', bool),
        reflectivity=column('reflectivity'))


def place_clutter(config, trajectory, registry, rng):
    """Place walls (beside the road), poles and trees (on the sidewalk); returns SceneClutter."""
    shapes, is_ellipsoid, semantic, reflectivity = [], [], [], []
    plan = ['wall'] * config.num_walls + ['pole'] * config.num_poles + ['tree'] * config.num_trees
    for what in plan:
        for _ in range(config.max_placement_tries):
            parts, footprint = _propose_clutter(what, config, trajectory, rng)
            footprints = np.repeat(footprint[None], len(registry.check_times), axis=0)
            if registry.fits(footprints):
                registry.add(footprints)
                for shape, ellipsoid, name in parts:
                    shapes.append(shape)
                    is_ellipsoid.append(ellipsoid)
                    semantic.append(catalog.semantic_index(name))
                    reflectivity.append(catalog.SURFACE_REFLECTIVITY[name] * rng.uniform(0.8, 1.2))
                break
    return SceneClutter(shapes=np.array(shapes, dtype=np.float64).reshape(-1, 7),
                        is_ellipsoid=np.array(is_ellipsoid, dtype=bool),
                        semantic=np.array(semantic, dtype=np.int64),
                        reflectivity=np.array(reflectivity, dtype=np.float64))


def _propose_clutter(what, config, trajectory, rng):
    """One clutter item: list of (shape [x, y, z, dx, dy, dz, yaw], is_ellipsoid, semantic name) and its BEV
    footprint [x, y, dx, dy, yaw]."""
    x, y, road_yaw = trajectory.pose2d_at(rng.uniform(config.t_start, config.t_end))
    side = rng.choice([-1.0, 1.0])
    longitudinal = rng.uniform(-config.placement_range - 10.0, config.placement_range + 10.0)
    if what == 'wall':
        lateral = config.road_half_width + rng.uniform(4.0, 25.0)
        length, thickness, height = rng.uniform(8.0, 30.0), rng.uniform(0.3, 0.8), rng.uniform(3.0, 10.0)
    elif what == 'pole':
        lateral = config.road_half_width + rng.uniform(0.5, 6.0)
        length = thickness = rng.uniform(0.15, 0.35)
        height = rng.uniform(4.0, 8.0)
    else:
        lateral = config.road_half_width + rng.uniform(1.5, 12.0)
        trunk_height, crown_radius = rng.uniform(1.5, 3.0), rng.uniform(1.2, 3.0)
        length = thickness = 2 * crown_radius
    yaw = road_yaw + rng.normal(0.0, 0.03)
    forward, left = np.array([np.cos(road_yaw), np.sin(road_yaw)]), np.array([-np.sin(road_yaw), np.cos(road_yaw)])
    cx, cy = np.array([x, y]) + longitudinal * forward + side * lateral * left
    footprint = np.array([cx, cy, length, thickness, yaw])
    if what in ('wall', 'pole'):
        return [(np.array([cx, cy, height / 2, length, thickness, height, yaw]), False, what)], footprint
    trunk_width = rng.uniform(0.25, 0.5)
    crown_height = 2 * crown_radius * rng.uniform(0.8, 1.4)
    trunk = np.array([cx, cy, trunk_height / 2, trunk_width, trunk_width, trunk_height, yaw])
    crown = np.array([cx, cy, trunk_height + 0.4 * crown_height, length, thickness, crown_height, yaw])
    return [(trunk, False, 'vegetation'), (crown, True, 'vegetation')], footprint
