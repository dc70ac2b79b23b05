"""What the synthetic world is made of: object kinds (sizes, motion, reflectivity, placement) and surface kinds.

Dataset-agnostic on purpose: names are generic kinds; each dataset writer maps them to its own taxonomy
(`nuscenes_schema.py` maps them to nuScenes categories). Sizes are the nuScenes per-class mean sizes (the
anchor sizes used by OpenPCDet's nuScenes configs), lengths along the heading first.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectKind:
    """One kind of object the simulator can place.

    Attributes:
        name: generic kind name (equal to the nuScenes detection class for the 10 detection classes).
        size_lwh: mean (length, width, height) in metres.
        size_jitter: relative standard deviation of each dimension (clipped at 2 sigma).
        weight: relative frequency when filling a scene with objects.
        moving_probability: chance that an instance moves (constant velocity along its heading).
        speed_range: (min, max) speed in m/s of moving instances.
        reflectivity_range: (min, max) base LiDAR intensity (0..255) drawn per instance.
        lateral_range: (min, max) distance in metres from the ego path where instances are placed.
        heading_mode: 'road' (along the road, either direction, sometimes parked across) or 'random'.
        subtypes: (name, probability) pairs; writers may map subtypes to finer categories.
        cycle: whether the kind is a two-wheeler (has a rider flag).
        vehicle: whether the kind is a vehicle (moving / stopped / parked states).
    """
    name: str
    size_lwh: tuple
    size_jitter: float
    weight: float
    moving_probability: float
    speed_range: tuple
    reflectivity_range: tuple
    lateral_range: tuple
    heading_mode: str = 'road'
    subtypes: tuple = (('default', 1.0),)
    cycle: bool = False
    vehicle: bool = False


OBJECT_KINDS = (
    ObjectKind('car', (4.63, 1.97, 1.74), 0.08, 0.26, 0.5, (3.0, 12.0), (20, 110), (3.0, 14.0), vehicle=True),
    ObjectKind('truck', (6.93, 2.51, 2.84), 0.12, 0.08, 0.35, (3.0, 10.0), (20, 90), (3.5, 16.0), vehicle=True),
    ObjectKind('construction_vehicle', (6.37, 2.85, 3.19), 0.12, 0.05, 0.2, (1.0, 4.0), (40, 120), (4.0, 20.0),
               vehicle=True),
    ObjectKind('bus', (10.5, 2.94, 3.47), 0.10, 0.05, 0.5, (3.0, 10.0), (20, 90), (3.5, 16.0), vehicle=True,
               subtypes=(('rigid', 0.85), ('bendy', 0.15))),
    ObjectKind('trailer', (12.29, 2.90, 3.87), 0.12, 0.05, 0.1, (3.0, 8.0), (20, 80), (4.0, 20.0), vehicle=True),
    ObjectKind('barrier', (0.50, 2.53, 0.98), 0.08, 0.12, 0.0, (0.0, 0.0), (120, 200), (3.0, 12.0)),
    ObjectKind('motorcycle', (2.11, 0.77, 1.47), 0.08, 0.07, 0.5, (3.0, 12.0), (30, 120), (3.0, 14.0),
               cycle=True),
    ObjectKind('bicycle', (1.70, 0.60, 1.28), 0.08, 0.07, 0.5, (2.0, 6.0), (30, 100), (3.0, 14.0), cycle=True),
    ObjectKind('pedestrian', (0.73, 0.67, 1.77), 0.08, 0.16, 0.6, (0.5, 1.8), (15, 60), (4.0, 16.0),
               heading_mode='random',
               subtypes=(('adult', 0.85), ('construction_worker', 0.1), ('police_officer', 0.05))),
    ObjectKind('traffic_cone', (0.41, 0.41, 1.07), 0.08, 0.09, 0.0, (0.0, 0.0), (150, 230), (2.8, 10.0),
               heading_mode='random'),
    # Kinds outside the 10 detection classes: they exercise the 'ignore' class mapping.
    ObjectKind('animal', (0.90, 0.40, 0.70), 0.15, 0.0, 0.5, (0.5, 2.0), (10, 40), (5.0, 16.0),
               heading_mode='random'),
    ObjectKind('pushable_pullable', (0.70, 0.60, 1.00), 0.10, 0.0, 0.2, (0.5, 1.5), (40, 120), (4.0, 14.0),
               heading_mode='random'),
)

# The 10 nuScenes detection classes, in the order of OpenPCDet's CLASS_NAMES.
DETECTION_KINDS = ('car', 'truck', 'construction_vehicle', 'bus', 'trailer', 'barrier', 'motorcycle', 'bicycle',
                   'pedestrian', 'traffic_cone')
IGNORE_KINDS = ('animal', 'pushable_pullable')

# Static world parts that are not annotated objects. 'road', 'sidewalk', 'terrain' and 'island' are parts of the
# ground plane (`scene.Scene.ground_semantic`): the road around the ego path, sidewalks beside it, terrain (grass,
# soil) beyond the sidewalks, and traffic islands along the road edges.
SURFACE_KINDS = ('road', 'sidewalk', 'wall', 'pole', 'vegetation', 'terrain', 'island')
# 'terrain' and 'island' reflect like the ground they were cut from ('sidewalk' and 'road'), so adding them changed
# point labels only, never intensities.
SURFACE_REFLECTIVITY = {'road': 8.0, 'sidewalk': 25.0, 'wall': 45.0, 'pole': 90.0, 'vegetation': 18.0,
                        'terrain': 25.0, 'island': 8.0}

# Per-point semantic label space of the ray caster: index into this tuple.
SEMANTIC_CLASSES = SURFACE_KINDS + tuple(kind.name for kind in OBJECT_KINDS)


def object_kind(name):
    """The `ObjectKind` called `name` (KeyError naming the known kinds otherwise)."""
    for kind in OBJECT_KINDS:
        if kind.name == name:
            return kind
    raise KeyError(f'unknown object kind {name!r}; known: {[k.name for k in OBJECT_KINDS]}')


def semantic_index(name):
    """Index of a surface or object kind in `SEMANTIC_CLASSES`."""
    return SEMANTIC_CLASSES.index(name)
