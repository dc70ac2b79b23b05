"""Semantic occupancy of a simulated scene on a regular voxel grid (dataset-agnostic, vectorised numpy).

The grid is axis-aligned in a chosen FRAME (e.g. a LiDAR's sensor frame at one instant): voxel (i, j, k) spans
`[min + i * size, min + (i + 1) * size]` along x (j along y, k along z). What counts as occupied, at time `t`:

* ground: every voxel that the ground plane (global z = 0) passes through, i.e. whose cube's global z-extent
  contains 0 (one or two voxels per column, since the frame may be tilted). Label: the ground kind
  (`Scene.ground_semantic`) where the plane crosses the column's axis. Ground under objects and outside the
  LiDAR's view counts too.
* solids, as volumes (inside is occupied, not only the surface): the annotation box of every object and every
  clutter primitive (walls, poles, tree trunks: boxes; tree crowns: ellipsoids).
  - box: the voxel cube and the box are not separated along any of the six face normals (three of the grid,
    three of the box): the separating-axis test without the nine edge x edge axes. Every voxel that meets the box
    is occupied, plus a few voxels that only come near one of its edges.
  - ellipsoid: the voxel centre lies inside the ellipsoid with every semi-axis grown by the voxel's half-diagonal
    (sqrt(3) / 2 voxel): for the tree crowns' proportions (axis ratios 0.6..1.5) this holds every voxel that meets
    the ellipsoid (up to slivers under 1 mm), plus some that come within the half-diagonal of it.
  Objects use their annotation boxes (LiDAR returns lie on a 5 cm smaller surface inside them), clutter its
  ray-cast shapes.
* where several parts claim a voxel, the last painted wins: ground, then clutter, then objects.
* there is no "unknown" state: every other voxel is free, occluded or not.

Functions return a dense (nz, ny, nx) uint8 label volume indexed [z, y, x] with `FREE` (255) for free voxels;
`np.nonzero(volume != FREE)` then lists the occupied voxels sorted by (z, y, x).
"""
from dataclasses import dataclass

import numpy as np

from .geometry import invert_pose

FREE = 255


@dataclass(frozen=True)
class VoxelGrid:
    """Regular grid: `pc_range` [x_min, y_min, z_min, x_max, y_max, z_max] (metres) with cubic voxels of edge
    `voxel_size`. Default: OpenOccupancy's nuScenes-Occupancy grid (512 x 512 x 40, 0.2 m)."""
    pc_range: tuple = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    voxel_size: float = 0.2

    def __post_init__(self):
        extent = np.subtract(self.pc_range[3:], self.pc_range[:3]) / self.voxel_size
        if self.voxel_size <= 0 or not np.allclose(extent, np.round(extent), atol=1e-6) or (extent < 1).any():
            raise ValueError(f'VoxelGrid: pc_range {self.pc_range} must span a positive whole number of voxels of '
                             f'size {self.voxel_size} along each axis')

    @property
    def shape(self):
        """(nx, ny, nz)."""
        return tuple(int(round((self.pc_range[a + 3] - self.pc_range[a]) / self.voxel_size)) for a in range(3))

    def centres(self, axis, lo=0, hi=None):
        """Centre coordinates of voxels lo..hi-1 along `axis` (0 = x, 1 = y, 2 = z)."""
        hi = self.shape[axis] if hi is None else hi
        return self.pc_range[axis] + (np.arange(lo, hi) + 0.5) * self.voxel_size

    def index_window(self, low, high):
        """Index ranges [lo, hi) per axis of the voxels whose centre lies in [low, high] (3-vectors); None if empty."""
        size, start = self.voxel_size, np.asarray(self.pc_range[:3])
        lo = np.maximum(np.ceil((np.asarray(low) - start) / size - 0.5), 0).astype(np.int64)
        hi = np.minimum(np.floor((np.asarray(high) - start) / size - 0.5) + 1, self.shape).astype(np.int64)
        return None if (hi <= lo).any() else (lo, hi)


def semantic_occupancy(scene, t, global_from_frame, grid, surface_labels, object_labels):
    """Dense semantic occupancy of `scene` at time `t` (module docstring for what is occupied).

    Args:
        scene: `scene.Scene` (uses `object_boxes_at`, `clutter`, `ground_semantic`).
        t: scene time in seconds.
        global_from_frame: (4, 4) pose of the grid's frame (e.g. `global_from_sensor` of a LiDAR at `t`).
        grid: VoxelGrid.
        surface_labels: (len(catalog.SEMANTIC_CLASSES),) label of each simulator semantic index (used for the
            ground kinds and the clutter).
        object_labels: (M,) label of each scene object.
    Returns:
        (nz, ny, nx) uint8 labels, `FREE` where free.
    """
    nx, ny, nz = grid.shape
    volume = np.full((nz, ny, nx), FREE, dtype=np.uint8)
    surface_labels, object_labels = np.asarray(surface_labels), np.asarray(object_labels)
    _paint_ground(volume, grid, scene, global_from_frame, surface_labels)
    frame_from_global = invert_pose(global_from_frame)
    clutter = scene.clutter
    for shape, ellipsoid, semantic in zip(clutter.shapes, clutter.is_ellipsoid, clutter.semantic):
        _paint_solid(volume, grid, frame_from_global, shape, bool(ellipsoid), surface_labels[semantic])
    for box, label in zip(scene.object_boxes_at(t)[:, 0:7], object_labels):
        _paint_solid(volume, grid, frame_from_global, box, False, label)
    return volume


def _paint_ground(volume, grid, scene, global_from_frame, surface_labels):
    """Voxels whose cube's global z-extent contains 0, labelled by the ground kind of their column."""
    xs, ys = grid.centres(0), grid.centres(1)
    normal, height = global_from_frame[2, :3], global_from_frame[2, 3]  # global z = normal . p + height
    if normal[2] <= 0:
        raise ValueError('semantic_occupancy: the grid frame must have its z axis pointing up (global z)')
    half_extent = 0.5 * grid.voxel_size * np.abs(normal).sum()  # half the global z-extent of one voxel cube
    column_z = normal[0] * xs[None, :] + normal[1] * ys[:, None] + height  # (ny, nx) global z at frame z = 0
    # frame z of the centres with |global z| <= half_extent, then to voxel index ranges per column
    z_low, z_high = (-half_extent - column_z) / normal[2], (half_extent - column_z) / normal[2]
    start, size = grid.pc_range[2], grid.voxel_size
    k_low = np.ceil((z_low - start) / size - 0.5).astype(np.int64)
    k_high = np.floor((z_high - start) / size - 0.5).astype(np.int64)
    # one label per column: the ground kind where the plane crosses the column's axis (frame z = -column_z / n_z)
    crossing = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None], -column_z / normal[2]), axis=-1).reshape(-1, 3)
    global_xy = crossing @ global_from_frame[0:2, :3].T + global_from_frame[0:2, 3]
    column_label = surface_labels[scene.ground_semantic(global_xy)].reshape(column_z.shape)
    for step in range(int(np.max(k_high - k_low, initial=0)) + 1):
        k = k_low + step
        j, i = np.nonzero((k <= k_high) & (k >= 0) & (k < grid.shape[2]))
        volume[k[j, i], j, i] = column_label[j, i]


def _paint_solid(volume, grid, frame_from_global, shape, is_ellipsoid, label):
    """Paint one box or ellipsoid `shape` = [x, y, z, dx, dy, dz, yaw] (global) with `label`."""
    centre = frame_from_global[:3, :3] @ shape[0:3] + frame_from_global[:3, 3]
    cos_yaw, sin_yaw = np.cos(shape[6]), np.sin(shape[6])
    axes = frame_from_global[:3, :3] @ np.array([[cos_yaw, -sin_yaw, 0.0], [sin_yaw, cos_yaw, 0.0], [0.0, 0.0, 1.0]])
    half = np.asarray(shape[3:6], dtype=np.float64) / 2  # axes[:, m] is the shape's axis m in the frame
    voxel_half = 0.5 * grid.voxel_size
    if is_ellipsoid:
        grown = half + voxel_half * np.sqrt(3.0)  # every semi-axis + the voxel's half-diagonal
        reach = np.sqrt((axes ** 2) @ (grown ** 2))  # bounding box of the grown ellipsoid
    else:
        grown = half + voxel_half * np.abs(axes).sum(axis=0)  # + the voxel cube's half-extent along each box axis
        reach = np.abs(axes) @ half + voxel_half  # grid-axis separating tests, as an index window
    window = grid.index_window(centre - reach, centre + reach)
    if window is None:
        return
    (i0, j0, k0), (i1, j1, k1) = window
    dx = grid.centres(0, i0, i1) - centre[0]
    dy = grid.centres(1, j0, j1) - centre[1]
    dz = grid.centres(2, k0, k1) - centre[2]
    # coordinate along each shape axis of every voxel centre, broadcast to (nz, ny, nx)
    local = [axes[0, m] * dx[None, None, :] + axes[1, m] * dy[None, :, None] + axes[2, m] * dz[:, None, None]
             for m in range(3)]
    if is_ellipsoid:
        inside = sum((coordinate / g) ** 2 for coordinate, g in zip(local, grown)) <= 1.0
    else:
        inside = np.ones(np.broadcast_shapes(*(c.shape for c in local)), dtype=bool)
        for coordinate, g in zip(local, grown):
            inside &= np.abs(coordinate) <= g
    volume[k0:k1, j0:j1, i0:i1][inside] = label
