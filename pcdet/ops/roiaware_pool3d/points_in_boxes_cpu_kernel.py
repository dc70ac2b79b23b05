"""CPU fast path of the points-in-boxes ops: a numba kernel that tests each box only against nearby points.

Exactness contract: the result is bit-identical to the torch reference (`roiaware_pool3d_utils._mask_chunk`),
including points exactly on a margin. To get there:
* Everything the reference computes per box (`cos`, `sin`, `dx / 2 + margin`, `dy / 2 + margin`, `dz / 2`) is
  computed by the caller with the *same torch expressions* and handed in (torch's vectorised float32 `cos`/`sin`
  differ from libm's in the last ulp for ~20% of angles, so the kernel must not recompute them).
* Per point-box pair the kernel evaluates, in the points' dtype and in the reference's order,
  `sx = x - cx`, `sy = y - cy`, `u = sx * c + sy * s`, `v = -sx * s + sy * c` and
  `|z - cz| <= hz and |u| < hx and |v| < hy`. numba does not contract `a * b + c` into FMAs without `fastmath`,
  so every operation is rounded as in torch (one rounding per elementwise op).
* Candidate selection is only a conservative prefilter. A point can pass the exact test only if its xy lies in
  the box's axis-aligned BEV rectangle `|x - cx| <= rx`, `|y - cy| <= ry` with
  `rx = |c| hx + |s| hy (+ slack)`, `ry = |s| hx + |c| hy (+ slack)`: the slack (1e-4 relative + 1e-30 absolute,
  computed in float64) exceeds every rounding of the float32/float64 test by orders of magnitude. Points are
  counting-sorted once into a BEV grid over the union of these rectangles; a box visits only the cells its
  rectangle overlaps. Cell indices are a monotone function of the float64 coordinate and the rectangle's corners
  go through the same function, so no point of the rectangle is missed.
* Non-finite values: a point with a non-finite x or y can never pass the exact test (`u` or `v` is inf/NaN and
  `inf < t` is false) so it is left out of the grid; a box whose rectangle is not finite (infinite size, NaN
  heading, ...) is tested against every point; a box with `hx <= 0` or `hy <= 0` (or NaN) contains nothing.

Serial on purpose: the kernel is O(P + candidates) and takes milliseconds; numba's threading layers are not
fork/thread safe everywhere (DataLoader workers call `points_in_boxes_cpu`).

Importing this module imports numba (ImportError when it is missing); `roiaware_pool3d_utils` imports it lazily
and falls back to the torch reference then. Compiled code is cached on disk (`cache=True`).
"""
import math

import numba
import numpy as np

RELATIVE_SLACK = 1e-4
ABSOLUTE_SLACK = 1e-30
POINTS_PER_CELL = 8  # target mean occupancy of the BEV grid
MAX_CELLS_PER_AXIS = 4096


@numba.njit(cache=True)
def _inside(x, y, z, cx, cy, cz, c, s, hx, hy, hz):
    """The reference's exact test, in the dtype of the arguments (all the same float type)."""
    sx = x - cx
    sy = y - cy
    u = sx * c + sy * s
    v = -sx * s + sy * c
    return abs(z - cz) <= hz and abs(u) < hx and abs(v) < hy


@numba.njit(cache=True)
def _cell(value, origin, inv_size, num_cells):
    """Monotone non-decreasing map of a float64 coordinate to a cell in [0, num_cells) (NaN -> 0)."""
    t = (value - origin) * inv_size
    if not t > 0.0:
        return 0
    if t >= num_cells:
        return num_cells - 1
    return int(t)


@numba.njit(cache=True)
def _points_in_boxes(xyz, params, mask, first, write_mask):
    """Fill `mask[k, p]` (write_mask) or `first[p]` (lowest box index containing p, else left untouched).

    Args:
        xyz: (P, 3) float32/float64. params: (N, 8) same dtype, columns cx, cy, cz, cos, sin, hx, hy, hz
            (see the module doc).
        mask: (N, P) bool (write_mask) or a dummy. first: (P,) int32 initialised to -1, or a dummy.
    """
    num_points = xyz.shape[0]
    num_boxes = params.shape[0]
    if num_points == 0 or num_boxes == 0:
        return
    # Per box: kind 0 = empty, 1 = bounded rectangle, 2 = test every point.
    kind = np.zeros(num_boxes, np.int8)
    lo_x = np.zeros(num_boxes)
    hi_x = np.zeros(num_boxes)
    lo_y = np.zeros(num_boxes)
    hi_y = np.zeros(num_boxes)
    ux0, ux1, uy0, uy1 = np.inf, -np.inf, np.inf, -np.inf
    for k in range(num_boxes):
        cx, cy = float(params[k, 0]), float(params[k, 1])
        c, s = abs(float(params[k, 3])), abs(float(params[k, 4]))
        hx, hy = float(params[k, 5]), float(params[k, 6])
        if not (hx > 0.0 and hy > 0.0):
            continue  # |u| < hx impossible (also for NaN)
        if not (math.isfinite(cx) and math.isfinite(cy)):
            continue  # x - cx is inf/NaN for every point
        rx = c * hx + s * hy + RELATIVE_SLACK * (hx + hy) + ABSOLUTE_SLACK
        ry = s * hx + c * hy + RELATIVE_SLACK * (hx + hy) + ABSOLUTE_SLACK
        x0, x1, y0, y1 = cx - rx, cx + rx, cy - ry, cy + ry
        if not (math.isfinite(x0) and math.isfinite(x1) and math.isfinite(y0) and math.isfinite(y1)):
            kind[k] = 2
            continue
        kind[k] = 1
        lo_x[k], hi_x[k], lo_y[k], hi_y[k] = x0, x1, y0, y1
        ux0, ux1 = min(ux0, x0), max(ux1, x1)
        uy0, uy1 = min(uy0, y0), max(uy1, y1)

    # Counting sort of the points that lie in the union of the bounded rectangles into a gx x gy grid.
    gx, gy, inv_x, inv_y = 1, 1, 0.0, 0.0
    in_union = np.zeros(num_points, np.bool_)
    num_in = 0
    if ux0 <= ux1:
        for p in range(num_points):
            x, y = float(xyz[p, 0]), float(xyz[p, 1])
            if ux0 <= x <= ux1 and uy0 <= y <= uy1:  # False for NaN / inf
                in_union[p] = True
                num_in += 1
        width, height = ux1 - ux0, uy1 - uy0
        target_cells = max(1.0, num_in / POINTS_PER_CELL)
        area = width * height
        if math.isfinite(area) and area > 0.0:
            size = math.sqrt(area / target_cells)
            gx = int(min(max(width / size, 1.0), MAX_CELLS_PER_AXIS))
            gy = int(min(max(height / size, 1.0), MAX_CELLS_PER_AXIS))
        if math.isfinite(width) and width > 0.0:
            inv_x = gx / width
        else:
            gx = 1
        if math.isfinite(height) and height > 0.0:
            inv_y = gy / height
        else:
            gy = 1
    num_cells = gx * gy
    cell_start = np.zeros(num_cells + 1, np.int64)
    cell_of = np.empty(num_points, np.int64)
    for p in range(num_points):
        if in_union[p]:
            cell = (_cell(float(xyz[p, 1]), uy0, inv_y, gy) * gx + _cell(float(xyz[p, 0]), ux0, inv_x, gx))
            cell_of[p] = cell
            cell_start[cell + 1] += 1
    for cell in range(num_cells):
        cell_start[cell + 1] += cell_start[cell]
    cursor = cell_start[:-1].copy()
    order = np.empty(num_in, np.int64)
    sorted_xyz = np.empty((num_in, 3), xyz.dtype)
    for p in range(num_points):
        if in_union[p]:
            j = cursor[cell_of[p]]
            cursor[cell_of[p]] += 1
            order[j] = p
            sorted_xyz[j, 0] = xyz[p, 0]
            sorted_xyz[j, 1] = xyz[p, 1]
            sorted_xyz[j, 2] = xyz[p, 2]

    for k in range(num_boxes):  # ascending box index: `first` keeps the lowest containing box
        if kind[k] == 0:
            continue
        cx, cy, cz = params[k, 0], params[k, 1], params[k, 2]
        c, s = params[k, 3], params[k, 4]
        hx, hy, hz = params[k, 5], params[k, 6], params[k, 7]
        if kind[k] == 2:
            for p in range(num_points):
                if write_mask:
                    if _inside(xyz[p, 0], xyz[p, 1], xyz[p, 2], cx, cy, cz, c, s, hx, hy, hz):
                        mask[k, p] = True
                elif first[p] < 0 and _inside(xyz[p, 0], xyz[p, 1], xyz[p, 2], cx, cy, cz, c, s, hx, hy, hz):
                    first[p] = k
            continue
        col0, col1 = _cell(lo_x[k], ux0, inv_x, gx), _cell(hi_x[k], ux0, inv_x, gx)
        row0, row1 = _cell(lo_y[k], uy0, inv_y, gy), _cell(hi_y[k], uy0, inv_y, gy)
        for row in range(row0, row1 + 1):
            # The cells of one row and column range are contiguous in the sorted order.
            for j in range(cell_start[row * gx + col0], cell_start[row * gx + col1 + 1]):
                p = order[j]
                if write_mask:
                    if _inside(sorted_xyz[j, 0], sorted_xyz[j, 1], sorted_xyz[j, 2], cx, cy, cz, c, s, hx, hy, hz):
                        mask[k, p] = True
                elif first[p] < 0 and _inside(sorted_xyz[j, 0], sorted_xyz[j, 1], sorted_xyz[j, 2],
                                              cx, cy, cz, c, s, hx, hy, hz):
                    first[p] = k


def run(xyz, params, want_mask):
    """xyz (P, 3) and params (N, 8) contiguous numpy arrays of one float dtype -> (N, P) bool or (P,) int32."""
    num_points, num_boxes = xyz.shape[0], params.shape[0]
    if want_mask:
        mask = np.zeros((num_boxes, num_points), np.bool_)
        _points_in_boxes(xyz, params, mask, np.empty(0, np.int32), True)
        return mask
    first = np.full(num_points, -1, np.int32)
    _points_in_boxes(xyz, params, np.empty((0, 0), np.bool_), first, False)
    return first
