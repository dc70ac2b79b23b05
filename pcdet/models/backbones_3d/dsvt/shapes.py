"""Shapes that follow from POINT_CLOUD_RANGE / VOXEL_SIZE / strides: derived once here, validated, passed down.

Every shape in this module is a tuple of ints ordered **(x, y, z)**, like `grid_size` (spec §0). Voxel coordinates
elsewhere are `(b, z, y, x)`; only shapes are (x, y, z).

The DSVT configs state several shapes that are in fact functions of other settings (DSVT issues #22/#59 are users
getting them wrong): `INPUT_LAYER.sparse_shape` (= grid_size), `output_shape` (= last stage's (x, y)) and the
scatter's `INPUT_SHAPE` (= last stage's (x, y, z)). They may be left out of a config; when stated, they are compared
with the derived value and a `ShapeConfigError` names the disagreeing values and what they should be.

Pure functions, no torch:
    grid_size_from_range(point_cloud_range, voxel_size) -> (nx, ny, nz)
    resolve_grid_size(grid_size, point_cloud_range, voxel_size) -> (nx, ny, nz)
    downsample_shape(shape, stride) -> ceil(shape / stride)
    stage_sparse_shapes(sparse_shape, downsample_strides) -> [shape_stage0, shape_stage1, ...]
    check_stated_shape(stated, derived, name, source) -> derived (raises on disagreement)
    stage_window_shapes(window_shape, hybrid_factor, sparse_shape) -> [(shift-0 window), (shift-1 hybrid window)]
    stage_shifts(shifts, window_shapes, sparse_shape) -> [(shift-0), (shift-1)] with upstream defaults / z rule
    resolve_dsvt_shapes(...) -> DSVTShapes (everything the DSVT input layer and backbone need)
    check_scatter_input_shape(input_shape, grid_size, backbone_shape=None) -> (nx, ny, nz)
"""
import math
from typing import List, NamedTuple, Tuple

from pcdet.config import ConfigError
from pcdet.config_schema import REQUIRED, Schema

Shape = Tuple[int, ...]


class ShapeConfigError(ConfigError):
    """A stated shape disagrees with the one derived from POINT_CLOUD_RANGE / VOXEL_SIZE / strides, or window
    settings are incompatible; the message names the values and what they should be."""


def _fmt(shape):
    return '[' + ', '.join(str(int(v)) for v in shape) + ']'


def as_int_shape(values, name, length=3, minimum=1):
    """`values` as a tuple of `length` ints >= `minimum`; integral floats (e.g. 468.0) are accepted."""
    try:
        items = list(values)
    except TypeError:
        raise ShapeConfigError(f'{name} must be a list of {length} integers, got {values!r}') from None
    if len(items) != length:
        raise ShapeConfigError(f'{name} must have {length} entries (x, y, z order), got {values!r}')
    out = []
    for v in items:
        if isinstance(v, bool) or float(v) != int(float(v)):
            raise ShapeConfigError(f'{name} must contain integers, got {values!r}')
        out.append(int(float(v)))
    if any(v < minimum for v in out):
        raise ShapeConfigError(f'{name} entries must be >= {minimum}, got {values!r}')
    return tuple(out)


def grid_size_from_range(point_cloud_range, voxel_size):
    """`round((range_max - range_min) / voxel_size)` as ints (nx, ny, nz), spec §0."""
    if len(point_cloud_range) != 6 or len(voxel_size) != 3:
        raise ShapeConfigError(f'POINT_CLOUD_RANGE needs 6 values and VOXEL_SIZE 3, got {list(point_cloud_range)} '
                               f'and {list(voxel_size)}')
    grid = []
    for axis in range(3):
        extent = float(point_cloud_range[axis + 3]) - float(point_cloud_range[axis])
        if extent <= 0 or float(voxel_size[axis]) <= 0:
            raise ShapeConfigError(f'POINT_CLOUD_RANGE {list(point_cloud_range)} / VOXEL_SIZE {list(voxel_size)}: '
                                   f'axis {"xyz"[axis]} has a non-positive extent or voxel size')
        grid.append(int(round(extent / float(voxel_size[axis]))))
    return tuple(grid)


def resolve_grid_size(grid_size=None, point_cloud_range=None, voxel_size=None):
    """The model's voxel grid (nx, ny, nz) from the builder's kwargs; both sources must agree when both are given."""
    derived = None
    if point_cloud_range is not None and voxel_size is not None:
        derived = grid_size_from_range(point_cloud_range, voxel_size)
    if grid_size is not None:
        given = as_int_shape(list(grid_size), 'grid_size')
        if derived is not None and given != derived:
            raise ShapeConfigError(f'grid_size {_fmt(given)} disagrees with POINT_CLOUD_RANGE '
                                   f'{list(point_cloud_range)} / VOXEL_SIZE {list(voxel_size)}, which give '
                                   f'{_fmt(derived)}')
        return given
    return derived


def downsample_shape(shape, stride):
    """Shape of the grid after pooling with `stride` per axis: `ceil(shape / stride)` (the DSVT rule)."""
    return tuple(int(math.ceil(s / d)) for s, d in zip(shape, stride))


def stage_sparse_shapes(sparse_shape, downsample_strides):
    """Per-stage sparse shapes: stage 0 is `sparse_shape`, stage s+1 is `ceil(stage_s / downsample_strides[s])`."""
    shapes = [tuple(int(v) for v in sparse_shape)]
    for i, stride in enumerate(downsample_strides):
        stride = as_int_shape(stride, f'downsample_stride[{i}]')
        shapes.append(downsample_shape(shapes[-1], stride))
    return shapes


def check_stated_shape(stated, derived, name, source):
    """Return `derived`; if `stated` is given it must equal `derived` on its first `len(stated)` axes.

    `name` says which config value `stated` is (e.g. 'BACKBONE_3D.output_shape'), `source` where `derived` came
    from (e.g. 'grid_size (468, 468, 1) from POINT_CLOUD_RANGE/VOXEL_SIZE').
    """
    derived = tuple(int(v) for v in derived)
    if stated is None:
        return derived
    stated = [int(v) if float(v) == int(float(v)) else v for v in stated]
    expected = list(derived[:len(stated)])
    if len(stated) > len(derived) or stated != expected:
        raise ShapeConfigError(f'{name} {_fmt(stated)} disagrees with {source}; it should be {_fmt(expected)} '
                               f'(or leave it out: it is derived)')
    return derived


def stage_window_shapes(window_shape, hybrid_factor, sparse_shape, stage_id=0):
    """The two window shapes of a stage: shift 0 uses `window_shape`, shift 1 the hybrid window
    `window_shape * hybrid_factor` (elementwise). A 2-entry window `[wx, wy]` is only accepted on a flat stage
    (sparse z == 1) and gets z = 1.

    The position embedding of a stage is 3-D when its sparse z > 1 and 2-D otherwise, while the window decides
    which coordinates are fed to it (z is used when the window's z > 1); both must agree, otherwise upstream
    DSVT crashes inside the embedding MLP. That is checked here.
    """
    name = f'INPUT_LAYER.window_shape[{stage_id}]'
    window_shape = list(window_shape)
    if len(window_shape) == 2:
        if sparse_shape[2] != 1:
            raise ShapeConfigError(f'{name} {window_shape} has no z entry but stage {stage_id} has sparse z '
                                   f'{sparse_shape[2]} > 1; give [wx, wy, wz]')
        window_shape = window_shape + [1]
    window = as_int_shape(window_shape, name)
    hybrid = as_int_shape(hybrid_factor, 'INPUT_LAYER.hybrid_factor')
    windows = [window, tuple(w * h for w, h in zip(window, hybrid))]
    for shift_id, win in enumerate(windows):
        if (sparse_shape[2] > 1) != (win[2] > 1):
            raise ShapeConfigError(
                f'stage {stage_id} shift {shift_id}: window {_fmt(win)} and sparse shape {_fmt(sparse_shape)} '
                f'disagree on z: the position embedding is 3-D exactly when the sparse z > 1, so the window z must be '
                f'> 1 exactly then (e.g. window z = {sparse_shape[2]})')
    return windows


def stage_shifts(shifts, windows, sparse_shape, stage_id=0):
    """The two shifts of a stage as (sx, sy, sz). `shifts=None` gives upstream's defaults (shift 0 = one full
    window, shift 1 = half a window). Each shift must satisfy `0 <= shift <= window` on every axis so that window
    ids stay inside the per-sample window budget `ceil(sparse / window) + 1`. When the window z equals the sparse z
    the z shift is forced to 0, as upstream does.
    """
    if shifts is None:
        shifts = [list(windows[0]), [w // 2 for w in windows[1]]]
    if len(shifts) != 2:
        raise ShapeConfigError(f'INPUT_LAYER.shifts_list[{stage_id}] must hold 2 shifts (one per window '
                               f'partition), got {shifts!r}')
    out = []
    for shift_id, (shift, win) in enumerate(zip(shifts, windows)):
        shift = as_int_shape(shift, f'INPUT_LAYER.shifts_list[{stage_id}][{shift_id}]', minimum=0)
        if any(s > w for s, w in zip(shift, win)):
            raise ShapeConfigError(f'INPUT_LAYER.shifts_list[{stage_id}][{shift_id}] {_fmt(shift)} exceeds its '
                                   f'window {_fmt(win)}; each shift must be between 0 and the window size')
        if sparse_shape[2] == win[2]:
            shift = (shift[0], shift[1], 0)
        out.append(shift)
    return out


class DSVTShapes(NamedTuple):
    """Everything shape-like the DSVT input layer and backbone need, all (x, y, z) int tuples."""
    sparse_shape: Shape                  # stage-0 grid (= model grid_size)
    stage_shapes: List[Shape]            # per stage
    downsample_strides: List[Shape]      # between consecutive stages (len = num_stages - 1)
    window_shapes: List[List[Shape]]     # [stage][shift]
    shifts: List[List[Shape]]            # [stage][shift]
    output_shape: Shape                  # last stage's (x, y, z)


INPUT_LAYER_SCHEMA = Schema('BACKBONE_3D.INPUT_LAYER', {
    'window_shape': REQUIRED,       # per stage [x, y, z]
    'hybrid_factor': [1, 1, 1],
    'shifts_list': None,            # per stage, per shift [x, y, z]; None: half windows
    'downsample_stride': None,      # one [x, y, z] between consecutive stages
    'sparse_shape': None,           # stage-0 grid (x, y, z); derived from the geometry when absent
    'normalize_pos': False,
    'd_model': None,                # filled from BACKBONE_3D.d_model (must agree when stated)
    'set_info': None,               # filled from BACKBONE_3D.set_info (must agree when stated)
}, required=True)


def resolve_dsvt_shapes(input_layer_cfg, grid_size=None, point_cloud_range=None, voxel_size=None,
                        stated_output_shape=None):
    """Derive and validate every DSVT shape.

    Args:
        input_layer_cfg: mapping with `window_shape`, `hybrid_factor`, optional `sparse_shape`,
            `downsample_stride`, `shifts_list`, `d_model` (its length is the number of stages).
        grid_size / point_cloud_range / voxel_size: the builder's kwargs; the stage-0 sparse shape is derived from
            them (either is enough) and the stated `sparse_shape` must agree.
        stated_output_shape: `BACKBONE_3D.output_shape` ([X, Y]) if the config states it.
    """
    grid = resolve_grid_size(grid_size, point_cloud_range, voxel_size)
    schema = INPUT_LAYER_SCHEMA
    stated_sparse = schema.get(input_layer_cfg, 'sparse_shape')
    if grid is None:
        if stated_sparse is None:
            raise ShapeConfigError('DSVT needs grid_size (or POINT_CLOUD_RANGE and VOXEL_SIZE) or '
                                   'INPUT_LAYER.sparse_shape to know its voxel grid')
        sparse = as_int_shape(stated_sparse, 'INPUT_LAYER.sparse_shape')
    else:
        source = f'grid_size {tuple(grid)} from POINT_CLOUD_RANGE/VOXEL_SIZE'
        sparse = check_stated_shape(stated_sparse, grid, 'BACKBONE_3D.INPUT_LAYER.sparse_shape', source)

    num_stages = len(input_layer_cfg['d_model'])
    strides = [as_int_shape(s, f'INPUT_LAYER.downsample_stride[{i}]')
               for i, s in enumerate(schema.get(input_layer_cfg, 'downsample_stride') or [])]
    if len(strides) != num_stages - 1:
        raise ShapeConfigError(f'INPUT_LAYER.downsample_stride has {len(strides)} entries but {num_stages} stages '
                               f'need {num_stages - 1} (one between consecutive stages)')
    stage_shapes = stage_sparse_shapes(sparse, strides)

    window_cfg = list(input_layer_cfg['window_shape'])
    if len(window_cfg) != num_stages:
        raise ShapeConfigError(f'INPUT_LAYER.window_shape has {len(window_cfg)} entries for {num_stages} stages')
    shifts_cfg = schema.get(input_layer_cfg, 'shifts_list')
    if shifts_cfg is not None and len(shifts_cfg) != num_stages:
        raise ShapeConfigError(f'INPUT_LAYER.shifts_list has {len(shifts_cfg)} entries for {num_stages} stages')
    hybrid = schema.get(input_layer_cfg, 'hybrid_factor') or [1, 1, 1]
    windows, shifts = [], []
    for s in range(num_stages):
        stage_windows = stage_window_shapes(window_cfg[s], hybrid, stage_shapes[s], s)
        windows.append(stage_windows)
        shifts.append(stage_shifts(None if shifts_cfg is None else shifts_cfg[s], stage_windows, stage_shapes[s], s))

    output = stage_shapes[-1]
    if stated_output_shape is not None:
        check_stated_shape(stated_output_shape, output, 'BACKBONE_3D.output_shape',
                           f'the last DSVT stage grid {tuple(output)} (sparse_shape {tuple(sparse)} downsampled by '
                           f'{[list(s) for s in strides]})')
    return DSVTShapes(sparse, stage_shapes, strides, windows, shifts, output)


def _reachable(n, g):
    """True when `n == ceil(g / s)` for some integer stride s >= 1."""
    return 1 <= n <= g and any(int(math.ceil(g / s)) == n for s in range(1, g + 1))


def check_scatter_input_shape(input_shape, grid_size=None, backbone_shape=None):
    """The BEV scatter's grid (nx, ny, nz).

    `backbone_shape` (the 3-D backbone's output grid, exact) wins when known. Otherwise, from `grid_size` alone:
    a stated `INPUT_SHAPE` must be reachable by integer downsampling of the grid on every axis (`ceil(g / s)`), and
    a missing one defaults to `(nx, ny, 1)` (DSVT reduces z to 1 before the scatter). The exact check happens again
    at forward time against `batch_dict['voxel_grid_shape']` written by the backbone.
    """
    if backbone_shape is not None:
        backbone_shape = as_int_shape(backbone_shape, 'backbone output shape')
        return check_stated_shape(input_shape, backbone_shape, 'MAP_TO_BEV.INPUT_SHAPE',
                                  f'the 3-D backbone output grid {tuple(backbone_shape)}')
    if grid_size is None:
        if input_shape is None:
            raise ShapeConfigError('MAP_TO_BEV needs INPUT_SHAPE or grid_size')
        return as_int_shape(input_shape, 'MAP_TO_BEV.INPUT_SHAPE')
    grid = as_int_shape(list(grid_size), 'grid_size')
    if input_shape is None:
        return (grid[0], grid[1], 1)
    stated = as_int_shape(input_shape, 'MAP_TO_BEV.INPUT_SHAPE')
    if not all(_reachable(n, g) for n, g in zip(stated, grid)):
        suggestion = _fmt((grid[0], grid[1], 1 if grid[2] > 1 else grid[2]))
        raise ShapeConfigError(f'MAP_TO_BEV.INPUT_SHAPE {_fmt(stated)} disagrees with grid_size {tuple(grid)} from '
                               f'POINT_CLOUD_RANGE/VOXEL_SIZE: it must be the 3-D backbone output grid, i.e. the '
                               f'grid downsampled by the backbone strides (for DSVT usually {suggestion})')
    return stated
