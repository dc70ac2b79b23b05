"""Pinhole camera rig and renderer of the synthetic world (vectorised numpy ray casting, no format knowledge).

Camera frame (nuScenes / OpenCV): x right, y down, z forward (the optical axis). Pixel convention (the devkit's):
continuous image coordinates (u, v) = (K @ p)[:2] / z for a camera-frame point p, and INTEGER (u, v) is the CENTRE
of pixel column u, row v, so a point belongs to pixel (round(u), round(v)) and the ray of pixel (u, v) is
K^-1 [u, v, 1]. This is what `nuscenes.utils.geometry_utils.view_points` computes and what
`NuScenesExplorer.map_pointcloud_to_image` draws over the image (matplotlib puts pixel centres on integers).

Rendering shares the LiDAR's intersection code (`raycast.py`): every pixel ray K^-1 [u, v, 1] has z = 1, so the
ray parameter of a hit IS its camera-frame depth z. The scene is frozen at the camera's time `t` (global shutter).
Speed comes from culling: each primitive is tested only against the pixels inside the projection of its
bounding sphere (the bounding box of the projected corners of the sphere's enclosing cube).
"""
import functools
from dataclasses import dataclass

import numpy as np

from . import catalog
from .geometry import rotation_matrix_from_rpy
from .raycast import ground_depth, primitive_frames, ray_box, ray_ellipsoid

FULL_RESOLUTION = (1600, 900)  # (width, height) of the real nuScenes cameras
NO_SEMANTIC = 255  # semantic value of sky / no hit

# ego_from_camera without mounting angles: camera z (forward) -> ego x, camera x (right) -> ego -y,
# camera y (down) -> ego -z.
CAMERA_AXES_IN_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CameraMount:
    """One camera of the rig at the full nuScenes resolution (values of the real n015 vehicle, rounded).

    Attributes:
        channel: nuScenes channel name. translation: (3,) camera centre in the ego frame (metres).
        yaw_deg: direction of the optical axis, CCW from the ego's forward axis. pitch_deg: > 0 looks down.
        roll_deg: rotation about the optical axis. focal: fx = fy in pixels at 1600 x 900.
        principal: (cx, cy) at 1600 x 900.
    """
    channel: str
    translation: tuple
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    focal: float
    principal: tuple


NUSCENES_RIG = (
    CameraMount('CAM_FRONT', (1.700, 0.016, 1.511), 0.33, 0.32, 0.05, 1266.4, (816.3, 491.5)),
    CameraMount('CAM_FRONT_RIGHT', (1.551, -0.493, 1.496), -56.40, 0.78, -0.52, 1260.8, (808.0, 495.3)),
    CameraMount('CAM_BACK_RIGHT', (1.015, -0.481, 1.562), -110.79, 0.93, -0.62, 1259.5, (807.3, 501.2)),
    CameraMount('CAM_BACK', (0.028, 0.003, 1.579), 179.86, -0.96, -0.23, 809.2, (829.2, 481.8)),
    CameraMount('CAM_BACK_LEFT', (1.036, 0.485, 1.591), 108.60, 0.92, 0.22, 1256.7, (792.1, 492.8)),
    CameraMount('CAM_FRONT_LEFT', (1.524, 0.495, 1.509), 55.16, -0.14, -0.12, 1272.6, (826.6, 479.8)),
)

# The spinning LIDAR_TOP (20 Hz, clockwise seen from above) triggers each camera when its beam crosses the camera's
# optical axis; the key-frame LiDAR timestamp is when the beam passes this ego azimuth. Gives the real nuScenes
# pattern: CAM_FRONT_LEFT fires ~43 ms before the LiDAR timestamp, CAM_BACK_LEFT ~0.5 ms before.
LIDAR_REFERENCE_AZIMUTH_DEG = 105.0
LIDAR_PERIOD_US = 50_000


def trigger_offset_us(mount):
    """Camera timestamp minus key-frame LiDAR timestamp (microseconds, <= 0) for a `CameraMount`."""
    swept = (mount.yaw_deg - LIDAR_REFERENCE_AZIMUTH_DEG) % 360.0
    return -int(round(swept / 360.0 * LIDAR_PERIOD_US))


def ego_from_camera_rotation(yaw_deg, pitch_deg, roll_deg):
    """(3, 3) rotation of the camera frame (x right, y down, z forward) into the ego frame."""
    return rotation_matrix_from_rpy(*np.deg2rad([roll_deg, pitch_deg, yaw_deg])) @ CAMERA_AXES_IN_EGO


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of one rendered camera.

    Attributes:
        width, height: image size in pixels. intrinsics: (3, 3) K as a tuple of row tuples (hashable).
        max_depth: nothing farther than this camera-frame depth is drawn (sky).
    """
    width: int
    height: int
    intrinsics: tuple
    max_depth: float = 200.0

    @property
    def matrix(self):
        return np.array(self.intrinsics, dtype=np.float64)


def scaled_camera(mount, width, height, max_depth=200.0):
    """`PinholeCamera` of `mount` at `width` x `height`: focal lengths scale with the size; with integer pixel
    centres the principal point maps as (c + 0.5) * scale - 0.5 so the same scene point stays at the same spot."""
    scale_x, scale_y = width / FULL_RESOLUTION[0], height / FULL_RESOLUTION[1]
    cx, cy = (mount.principal[0] + 0.5) * scale_x - 0.5, (mount.principal[1] + 0.5) * scale_y - 0.5
    intrinsics = ((mount.focal * scale_x, 0.0, cx), (0.0, mount.focal * scale_y, cy), (0.0, 0.0, 1.0))
    return PinholeCamera(int(width), int(height), tuple(tuple(float(v) for v in row) for row in intrinsics), max_depth)


@dataclass(frozen=True)
class CameraRender:
    """One rendered image; all arrays (H, W[, 3]).

    Attributes:
        rgb: uint8 colour. depth: float64 camera-frame depth z (inf where nothing is hit).
        semantic: uint8 index into `catalog.SEMANTIC_CLASSES` (NO_SEMANTIC = 255 for sky).
        object_id: int32 scene object index (-1 for ground, clutter and sky).
    """
    rgb: np.ndarray
    depth: np.ndarray
    semantic: np.ndarray
    object_id: np.ndarray


@functools.lru_cache(maxsize=16)
def pixel_rays(camera):
    """(H, W, 3) camera-frame rays K^-1 [u, v, 1] through the pixel centres (z = 1; read-only, memoised)."""
    v, u = np.meshgrid(np.arange(camera.height, dtype=np.float64), np.arange(camera.width, dtype=np.float64),
                       indexing='ij')
    pixels = np.stack([u, v, np.ones_like(u)], axis=-1)
    rays = pixels @ np.linalg.inv(camera.matrix).T
    rays[..., 2] = 1.0  # exact: the depth of a hit equals its ray parameter
    rays.setflags(write=False)
    return rays


def pixel_windows(centres, radii, camera):
    """Pixel windows that may see each bounding sphere (centres (K, 3) camera frame, radii (K,)).

    Perspective maps the sphere's enclosing cube (all in front of the camera) to the convex hull of its projected
    corners, so their bounding box holds every pixel centre whose ray can meet the sphere.
    Returns:
        list of (primitive index, row slice, column slice) for non-empty windows in range.
    """
    windows, matrix = [], camera.matrix
    near = 1e-6
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    for index in range(len(centres)):
        centre, radius = centres[index], radii[index]
        if centre[2] + radius <= near or centre[2] - radius > camera.max_depth:
            continue
        if centre[2] - radius <= near:  # the sphere reaches behind the image plane: test every pixel
            windows.append((index, slice(None), slice(None)))
            continue
        projected = (centre + radius * corners) @ matrix.T
        u, v = projected[:, 0] / projected[:, 2], projected[:, 1] / projected[:, 2]
        col_lo, col_hi = max(int(np.ceil(u.min())), 0), min(int(np.floor(u.max())), camera.width - 1)
        row_lo, row_hi = max(int(np.ceil(v.min())), 0), min(int(np.floor(v.max())), camera.height - 1)
        if col_lo <= col_hi and row_lo <= row_hi:
            windows.append((index, slice(row_lo, row_hi + 1), slice(col_lo, col_hi + 1)))
    return windows


def render_camera(scene, t, global_from_camera, camera):
    """Ray-cast one image.

    Args:
        scene: a `Scene` (anything with `primitives_at(t)` and `ground_semantic(xy)`).
        t: scene time in seconds (the camera's own timestamp).
        global_from_camera: (4, 4) pose of the camera frame (x right, y down, z forward) at time `t`.
        camera: PinholeCamera.
    Returns:
        CameraRender.
    """
    rays = pixel_rays(camera)
    depth = ground_depth(rays, global_from_camera)
    depth[depth > camera.max_depth] = np.inf
    hit_primitive = np.full(depth.shape, -1, dtype=np.int64)  # -1 = ground (or sky where depth is inf)
    primitives = scene.primitives_at(t)
    shapes = primitives.shapes
    centres, camera_from_local = primitive_frames(shapes, global_from_camera)
    for index, rows, cols in pixel_windows(centres, np.linalg.norm(shapes[:, 3:6], axis=1) / 2, camera):
        rotation = camera_from_local[index]
        local_rays = rays[rows, cols] @ rotation  # row vectors: d_local = R^T d
        intersect = ray_ellipsoid if primitives.is_ellipsoid[index] else ray_box
        hit_depth = intersect(-rotation.T @ centres[index], local_rays, shapes[index, 3:6] / 2)
        hit_depth[hit_depth > camera.max_depth] = np.inf
        current = depth[rows, cols]
        closer = hit_depth < current
        if closer.any():
            depth[rows, cols] = np.where(closer, hit_depth, current)
            hit_primitive[rows, cols] = np.where(closer, index, hit_primitive[rows, cols])
    return _shade(scene, primitives, rays, depth, hit_primitive, centres, camera_from_local, global_from_camera)


# Material colours (sRGB) of the surface and object kinds; objects vary per instance around their kind's colour.
MATERIAL_RGB = {
    'road': (88, 88, 92), 'sidewalk': (160, 156, 150), 'wall': (186, 170, 140), 'pole': (120, 120, 125),
    'vegetation': (60, 120, 50), 'terrain': (110, 130, 70), 'island': (140, 140, 130),
    'car': (170, 40, 40), 'truck': (70, 90, 160), 'construction_vehicle': (220, 170, 30), 'bus': (40, 120, 170),
    'trailer': (150, 150, 160), 'barrier': (230, 230, 225), 'motorcycle': (40, 40, 40), 'bicycle': (30, 150, 140),
    'pedestrian': (200, 140, 110), 'traffic_cone': (250, 120, 20), 'animal': (120, 80, 50),
    'pushable_pullable': (100, 60, 140),
}
SKY_HORIZON_RGB, SKY_ZENITH_RGB = np.array([205.0, 215.0, 228.0]), np.array([95.0, 140.0, 205.0])
SUN_DIRECTION = np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84])  # global frame, towards the sun
AMBIENT, DIFFUSE, HAZE_DISTANCE = 0.45, 0.55, 300.0


def _shade(scene, primitives, rays, depth, hit_primitive, centres, camera_from_local, global_from_camera):
    """Labels and colours: material colour x (ambient + Lambert term for a fixed sun), faded into the sky with
    distance; sky is a vertical gradient by the ray's global elevation."""
    rotation = global_from_camera[:3, :3]
    height, width = depth.shape
    hit = np.isfinite(depth)
    on_object = hit & (hit_primitive >= 0)
    on_ground = hit & (hit_primitive < 0)
    points = rays * np.where(hit, depth, 0.0)[..., None]  # camera frame
    semantic = np.full(depth.shape, NO_SEMANTIC, dtype=np.uint8)
    object_id = np.full(depth.shape, -1, dtype=np.int32)
    normals = np.zeros(depth.shape + (3,))  # global frame
    normals[on_ground] = (0.0, 0.0, 1.0)
    ground_xy = points[on_ground] @ rotation[0:2].T + global_from_camera[0:2, 3]
    semantic[on_ground] = scene.ground_semantic(ground_xy)
    index = hit_primitive[on_object]
    semantic[on_object] = primitives.semantic[index]
    object_id[on_object] = primitives.object_id[index]
    local = np.einsum('nji,nj->ni', camera_from_local[index], points[on_object] - centres[index])
    half = primitives.shapes[index, 3:6] / 2
    ellipsoid = primitives.is_ellipsoid[index]
    box_axis = np.argmax(np.abs(local) / half, axis=1)
    local_normal = np.zeros_like(local)
    local_normal[np.arange(len(local)), box_axis] = np.sign(local[np.arange(len(local)), box_axis])
    local_normal[ellipsoid] = local[ellipsoid] / half[ellipsoid] ** 2
    local_normal /= np.maximum(np.linalg.norm(local_normal, axis=1, keepdims=True), 1e-12)
    normals[on_object] = np.einsum('nij,nj->ni', camera_from_local[index], local_normal) @ rotation.T

    palette = np.array([MATERIAL_RGB[name] for name in catalog.SEMANTIC_CLASSES], dtype=np.float64)
    albedo = np.zeros(depth.shape + (3,))
    albedo[hit] = palette[semantic[hit]]
    # per-instance tint in [0.75, 1.2) (golden-ratio sequence over object ids): neighbouring objects differ
    tint = 0.75 + 0.45 * np.mod(object_id[on_object] * 0.6180339887, 1.0)
    albedo[on_object] *= tint[:, None]
    lambert = np.clip(normals @ SUN_DIRECTION, 0.0, 1.0)
    colour = albedo * (AMBIENT + DIFFUSE * lambert)[..., None]
    elevation = np.clip((rays @ rotation.T)[..., 2] / np.linalg.norm(rays, axis=-1), 0.0, 1.0)
    sky = SKY_HORIZON_RGB + (SKY_ZENITH_RGB - SKY_HORIZON_RGB) * np.sqrt(elevation)[..., None]
    haze = np.where(hit, 1.0 - np.exp(-np.where(hit, depth, 0.0) / HAZE_DISTANCE), 1.0)[..., None]
    rgb = colour * (1.0 - haze) + sky * haze
    return CameraRender(rgb=np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(height, width, 3),
                        depth=depth, semantic=semantic, object_id=object_id)


def encode_jpeg(rgb, quality=90):
    """(H, W, 3) uint8 -> JPEG bytes (baseline, fixed quality and 4:2:0 subsampling: same pixels, same bytes)."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(
        buffer, format='JPEG', quality=quality, subsampling=2, optimize=False, progressive=False)
    return buffer.getvalue()
