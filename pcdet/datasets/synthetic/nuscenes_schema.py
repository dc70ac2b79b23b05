"""The nuScenes vocabulary of the synthetic writer: categories (with nuScenes-lidarseg indices), attributes,
visibility levels, the LIDAR_TOP calibration, tokens, and the mapping from simulator kinds to all of these.

Nothing here writes files; `nuscenes_writer.py` assembles records from these pieces.
"""
import hashlib

import numpy as np

from . import catalog

SUPPORTED_VERSIONS = ('v1.0-mini', 'v1.0-trainval')

# nuScenes-lidarseg category order: the list index IS the lidarseg label index (0 = noise, 17 = vehicle.car,
# 24 = flat.driveable_surface, ...). Same order as `nuscenes.utils.color_map.get_colormap()`.
LIDARSEG_CATEGORIES = (
    'noise', 'animal', 'human.pedestrian.adult', 'human.pedestrian.child', 'human.pedestrian.construction_worker',
    'human.pedestrian.personal_mobility', 'human.pedestrian.police_officer', 'human.pedestrian.stroller',
    'human.pedestrian.wheelchair', 'movable_object.barrier', 'movable_object.debris',
    'movable_object.pushable_pullable', 'movable_object.trafficcone', 'static_object.bicycle_rack',
    'vehicle.bicycle', 'vehicle.bus.bendy', 'vehicle.bus.rigid', 'vehicle.car', 'vehicle.construction',
    'vehicle.emergency.ambulance', 'vehicle.emergency.police', 'vehicle.motorcycle', 'vehicle.trailer',
    'vehicle.truck', 'flat.driveable_surface', 'flat.other', 'flat.sidewalk', 'flat.terrain', 'static.manmade',
    'static.other', 'static.vegetation', 'vehicle.ego',
)

# Surface kinds of the simulator -> lidarseg category (poles are 'static.manmade' in nuScenes-lidarseg too;
# traffic islands are 'flat.other': "elevated parts of traffic islands, delimiters, ...").
SURFACE_CATEGORY = {
    'road': 'flat.driveable_surface', 'sidewalk': 'flat.sidewalk', 'wall': 'static.manmade',
    'pole': 'static.manmade', 'vegetation': 'static.vegetation', 'terrain': 'flat.terrain', 'island': 'flat.other',
}

# The 16 nuScenes-lidarseg challenge classes; official id = position + 1 (0 = ignore / noise). Also the class ids
# of nuScenes-Occupancy (OpenOccupancy).
CHALLENGE_CLASSES = (
    'barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian', 'traffic_cone', 'trailer',
    'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain', 'manmade', 'vegetation',
)
# General lidarseg category -> challenge class (the devkit's `LidarsegClassMapper`); categories not listed map to
# 0 (ignore): noise, animal, personal_mobility, stroller, wheelchair, debris, pushable_pullable, bicycle_rack,
# ambulance, police vehicle, static.other, vehicle.ego.
CHALLENGE_CLASS_OF_CATEGORY = {
    'movable_object.barrier': 'barrier', 'vehicle.bicycle': 'bicycle', 'vehicle.bus.bendy': 'bus',
    'vehicle.bus.rigid': 'bus', 'vehicle.car': 'car', 'vehicle.construction': 'construction_vehicle',
    'vehicle.motorcycle': 'motorcycle', 'human.pedestrian.adult': 'pedestrian', 'human.pedestrian.child': 'pedestrian',
    'human.pedestrian.construction_worker': 'pedestrian', 'human.pedestrian.police_officer': 'pedestrian',
    'movable_object.trafficcone': 'traffic_cone', 'vehicle.trailer': 'trailer', 'vehicle.truck': 'truck',
    'flat.driveable_surface': 'driveable_surface', 'flat.other': 'other_flat', 'flat.sidewalk': 'sidewalk',
    'flat.terrain': 'terrain', 'static.manmade': 'manmade', 'static.vegetation': 'vegetation',
}

ATTRIBUTES = (
    ('vehicle.moving', 'Vehicle is moving.'),
    ('vehicle.stopped', 'Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move.'),
    ('vehicle.parked', 'Vehicle is stationary (usually for a long duration) with no immediate intent to move.'),
    ('cycle.with_rider', 'There is a rider on the bicycle or motorcycle.'),
    ('cycle.without_rider', 'There is NO rider on the bicycle or motorcycle.'),
    ('pedestrian.sitting_lying_down', 'The human is sitting or lying down.'),
    ('pedestrian.standing', 'The human is standing.'),
    ('pedestrian.moving', 'The human is moving.'),
)

# (token, level, lower bound of the visible fraction). nuScenes uses camera visibility; we use the fraction of
# the LiDAR rays meeting the object whose first hit is the object.
VISIBILITY_LEVELS = (('1', 'v0-40', 0.0), ('2', 'v40-60', 0.4), ('3', 'v60-80', 0.6), ('4', 'v80-100', 0.8))

LOCATIONS = ('singapore-onenorth', 'boston-seaport', 'singapore-queenstown', 'singapore-hollandvillage')

# Real nuScenes LIDAR_TOP extrinsics (ego_from_sensor): ~90 degrees clockwise about z, so sensor +x points to
# the ego's right and sensor +y forward, plus a small tilt. Angles are (roll, pitch, yaw) in degrees.
LIDAR_TOP_TRANSLATION = (0.943713, 0.0, 1.84023)
LIDAR_TOP_RPY_DEG = (-1.3884, 0.3380, -89.8835)
LIDAR_CHANNEL = 'LIDAR_TOP'


def make_token(*parts):
    """Deterministic 32-hex-digit token from any printable parts (md5 of their '/'-joined text)."""
    return hashlib.md5('/'.join(str(p) for p in parts).encode('utf-8')).hexdigest()


def category_name(kind, subtype):
    """nuScenes general category of a simulator object kind (and subtype)."""
    if kind == 'pedestrian':
        return f'human.pedestrian.{subtype}'
    if kind == 'bus':
        return f'vehicle.bus.{subtype}'
    names = {
        'car': 'vehicle.car', 'truck': 'vehicle.truck', 'construction_vehicle': 'vehicle.construction',
        'trailer': 'vehicle.trailer', 'barrier': 'movable_object.barrier', 'motorcycle': 'vehicle.motorcycle',
        'bicycle': 'vehicle.bicycle', 'traffic_cone': 'movable_object.trafficcone', 'animal': 'animal',
        'pushable_pullable': 'movable_object.pushable_pullable',
    }
    return names[kind]


def attribute_name(kind, motion_state, has_rider):
    """The single nuScenes attribute of an object, or None for kinds without attributes."""
    spec = catalog.object_kind(kind)
    if spec.cycle:
        return 'cycle.with_rider' if has_rider else 'cycle.without_rider'
    if spec.vehicle:
        return f'vehicle.{motion_state}'
    if kind == 'pedestrian':
        return 'pedestrian.moving' if motion_state == 'moving' else 'pedestrian.standing'
    return None


def visibility_token(visible_fraction):
    """Visibility token '1'..'4' of a visible fraction in [0, 1] (NaN -> '1')."""
    token = VISIBILITY_LEVELS[0][0]
    for level_token, _, lower in VISIBILITY_LEVELS:
        if np.isfinite(visible_fraction) and visible_fraction >= lower:
            token = level_token
    return token


def lidarseg_index(category):
    return LIDARSEG_CATEGORIES.index(category)


def surface_lidarseg_lut():
    """(len(SEMANTIC_CLASSES),) uint8: simulator semantic index -> lidarseg index for surfaces (0 for objects)."""
    return np.array([lidarseg_index(SURFACE_CATEGORY[name]) if name in SURFACE_CATEGORY else 0
                     for name in catalog.SEMANTIC_CLASSES], dtype=np.uint8)


def challenge_id(category):
    """Official challenge id (1..16) of a general lidarseg category, 0 for the ignored ones."""
    name = CHALLENGE_CLASS_OF_CATEGORY.get(category)
    return 0 if name is None else CHALLENGE_CLASSES.index(name) + 1


def surface_challenge_lut():
    """(len(SEMANTIC_CLASSES),) uint8: simulator semantic index -> challenge id for surfaces (0 for objects)."""
    return np.array([challenge_id(SURFACE_CATEGORY[name]) if name in SURFACE_CATEGORY else 0
                     for name in catalog.SEMANTIC_CLASSES], dtype=np.uint8)


def category_table():
    """All 32 lidarseg categories, each with its lidarseg `index` (required by the devkit once lidarseg.json
    exists)."""
    return [{'token': make_token('category', name), 'name': name,
             'description': f'{name} (synthetic pcdet dataset)', 'index': index}
            for index, name in enumerate(LIDARSEG_CATEGORIES)]


def attribute_table():
    return [{'token': make_token('attribute', name), 'name': name, 'description': description}
            for name, description in ATTRIBUTES]


def visibility_table():
    return [{'description': f'visibility of whole object is between {level[1:].replace("-", " and ")} %',
             'token': token, 'level': level} for token, level, _ in VISIBILITY_LEVELS]


def sensor_table():
    return [{'token': make_token('sensor', LIDAR_CHANNEL), 'channel': LIDAR_CHANNEL, 'modality': 'lidar'}]


# Devkit split names that select the generated scenes (`nuscenes.utils.splits`): (train split, val split).
DEVKIT_SPLITS = {'v1.0-mini': ('mini_train', 'mini_val'), 'v1.0-trainval': ('train', 'val')}


def check_version(version):
    """Raise ValueError unless `version` is one the writer can produce."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f'unsupported nuScenes version {version!r}: the synthetic writer produces one of '
                         f'{list(SUPPORTED_VERSIONS)} (v1.0-test has no annotations and is not generated)')


def select_scene_names(version, num_scenes, val_fraction):
    """Official scene names for the generated scenes, so the devkit's own split names work unchanged.

    `round(num_scenes * val_fraction)` scenes (at least 1, and at least 1 train scene) come from the devkit's
    val split (`mini_val` / `val`), the rest from the train split (`mini_train` / `train`), each in the
    devkit's order. v1.0-mini has only 8 + 2 official scenes, which caps `num_scenes` at 10 and the val count
    at 2.

    Returns:
        (train_names, val_names) lists of scene names.
    """
    check_version(version)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction}')
    from nuscenes.utils import splits  # imported here: the devkit is heavy and only the writer needs it
    train_split, val_split = DEVKIT_SPLITS[version]
    train_pool, val_pool = getattr(splits, train_split), getattr(splits, val_split)
    max_scenes = len(train_pool) + len(val_pool)
    if not 2 <= num_scenes <= max_scenes:
        raise ValueError(f'num_scenes must be between 2 (one train and one val scene) and {max_scenes} for '
                         f'{version} (official {train_split} + {val_split} scenes), got {num_scenes}')
    num_val = min(max(1, int(round(num_scenes * val_fraction))), len(val_pool), num_scenes - 1)
    num_train = num_scenes - num_val
    if num_train > len(train_pool):
        num_train, num_val = len(train_pool), num_scenes - len(train_pool)
    return list(train_pool[:num_train]), list(val_pool[:num_val])
