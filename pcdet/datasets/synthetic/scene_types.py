"""Value types of a simulated scene: annotated objects, static clutter and the primitives a ray can hit.

Plain frozen dataclasses over numpy arrays, in the GLOBAL frame (conventions in `scene`). `placement` builds
`SceneObjects` / `SceneClutter`, `scene.Scene` holds them and derives `Primitives`; both import them from here.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SceneObjects:
    """M annotated objects moving with constant velocity along straight lines.

    Attributes:
        kinds: (M,) generic kind names (`catalog.OBJECT_KINDS`); subtypes: (M,) subtype names.
        sizes: (M, 3) [dx (length), dy (width), dz (height)].
        centers_t0: (M, 3) box centres at t = 0 (z = box_ground_clearance + dz / 2).
        headings: (M,) yaw of the length axis. velocities: (M, 2) [vx, vy] (zero for static objects).
        motion_states: (M,) 'moving', 'stopped' (vehicles at rest on the road), 'parked' or 'static'.
        has_rider: (M,) bool, True for cycles with a rider. reflectivity: (M,) base intensity 0..255.
    """
    kinds: tuple
    subtypes: tuple
    sizes: np.ndarray
    centers_t0: np.ndarray
    headings: np.ndarray
    velocities: np.ndarray
    motion_states: tuple
    has_rider: np.ndarray
    reflectivity: np.ndarray


@dataclass(frozen=True)
class SceneClutter:
    """K static primitives that are not annotated: walls, poles, tree trunks (boxes) and crowns (ellipsoids).

    Attributes:
        shapes: (K, 7) [x, y, z, dx, dy, dz, yaw]; for ellipsoids dx, dy, dz are the full axis lengths.
        is_ellipsoid: (K,) bool. semantic: (K,) index into `catalog.SEMANTIC_CLASSES`.
        reflectivity: (K,) base intensity 0..255.
    """
    shapes: np.ndarray
    is_ellipsoid: np.ndarray
    semantic: np.ndarray
    reflectivity: np.ndarray


@dataclass(frozen=True)
class Primitives:
    """Everything a ray can hit besides the ground, at one instant (global frame).

    Attributes:
        shapes: (K, 7) [x, y, z, dx, dy, dz, yaw] boxes or ellipsoids. is_ellipsoid: (K,) bool.
        semantic: (K,) index into `catalog.SEMANTIC_CLASSES`. object_id: (K,) object index, -1 for clutter.
        reflectivity: (K,) base intensity.
    """
    shapes: np.ndarray
    is_ellipsoid: np.ndarray
    semantic: np.ndarray
    object_id: np.ndarray
    reflectivity: np.ndarray
