"""Ray / scene intersection primitives shared by the LiDAR and camera ray casters (vectorised numpy).

Frames: a "sensor" is any rigid frame with a 4x4 `global_from_sensor` pose; ray directions are given in it.
Distances are ray PARAMETERS: for unit directions they are metres along the ray, for directions with z = 1 (a
camera's pixel rays) they are the camera-frame depth z. Ground is the global plane z = 0.
"""
import numpy as np


def primitive_frames(shapes, sensor_pose_global):
    """Primitive centres (K, 3) and `sensor_from_local` rotations (K, 3, 3) in the sensor frame."""
    global_from_sensor_rot, sensor_position = sensor_pose_global[:3, :3], sensor_pose_global[:3, 3]
    centres = (shapes[:, 0:3] - sensor_position) @ global_from_sensor_rot
    cos_yaw, sin_yaw = np.cos(shapes[:, 6]), np.sin(shapes[:, 6])
    zeros, ones = np.zeros_like(cos_yaw), np.ones_like(cos_yaw)
    global_from_local = np.stack([cos_yaw, -sin_yaw, zeros, sin_yaw, cos_yaw, zeros, zeros, zeros, ones],
                                 axis=1).reshape(-1, 3, 3)
    return centres, global_from_sensor_rot.T[None] @ global_from_local


def ground_depth(dirs, sensor_pose_global):
    """dirs (..., 3) -> (...) ray parameter of the global ground plane z = 0 (inf when the ray does not go down)."""
    ground_normal = sensor_pose_global[2, :3]  # global +z expressed in the sensor frame = row 2 of R
    sensor_height = sensor_pose_global[2, 3]
    downward = dirs @ ground_normal
    with np.errstate(divide='ignore'):
        return np.where(downward < -1e-9, -sensor_height / downward, np.inf)


def ray_box(origin, dirs, half_extents):
    """Slab test. origin (3,), dirs (..., 3) in the box frame -> (...) entry distance, inf when missed."""
    with np.errstate(divide='ignore', invalid='ignore'):
        inverse = 1.0 / dirs
        t_low = (-half_extents - origin) * inverse
        t_high = (half_extents - origin) * inverse
    t_near = np.minimum(t_low, t_high).max(axis=-1)
    t_far = np.maximum(t_low, t_high).min(axis=-1)
    hit = (t_near <= t_far) & (t_near > 0)
    return np.where(hit, t_near, np.inf)


def ray_ellipsoid(origin, dirs, half_extents):
    """Ray / axis-aligned ellipsoid in its frame -> (...) entry distance, inf when missed."""
    origin_scaled, dirs_scaled = origin / half_extents, dirs / half_extents
    a = np.einsum('...d,...d->...', dirs_scaled, dirs_scaled)
    b = 2.0 * dirs_scaled @ origin_scaled
    c = origin_scaled @ origin_scaled - 1.0
    discriminant = b * b - 4 * a * c
    with np.errstate(invalid='ignore'):
        t_near = (-b - np.sqrt(discriminant)) / (2 * a)
    return np.where((discriminant >= 0) & (t_near > 0), t_near, np.inf)
