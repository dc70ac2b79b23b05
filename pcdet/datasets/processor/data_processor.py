"""Per-sample processing queue built from `DATA_CONFIG.DATA_PROCESSOR` (spec §1.5), run after augmentation.

Each list entry `{NAME: <processor>, ...}` becomes one step; unknown names are rejected at build time. Steps:

* `mask_points_and_boxes_outside_range` {REMOVE_OUTSIDE_BOXES, USE_CENTER_TO_FILTER=True, min_num_corners=1,
  MASK_Z=False}: keep points with `min <= x, y <= max` (and z with MASK_Z, DSVT nuScenes); training only and with
  REMOVE_OUTSIDE_BOXES, keep boxes whose centre is inside the 3D range (or >= min_num_corners BEV corners inside).
  reads/writes: points (N, C), gt_boxes (M, 8|10), gt_names (M,).
* `shuffle_points` {SHUFFLE_ENABLED: {train, test}}: reads/writes points (N, C) (random row permutation).
* `transform_points_to_voxels` {VOXEL_SIZE, MAX_POINTS_PER_VOXEL, MAX_NUMBER_OF_VOXELS: {train, test}}: hard voxels.
  reads points (N, C), use_lead_xyz; writes voxels (V, P, C) float32 (C - 3 columns if not use_lead_xyz),
  voxel_coords (V, 3) int32 [z, y, x], voxel_num_points (V,) int32.
* `transform_points_to_voxels_placeholder` {VOXEL_SIZE} and `calculate_grid_size` {VOXEL_SIZE}: only set
  `grid_size` / `voxel_size` at build time (DSVT: dynamic voxelization happens in the model); data untouched.

Build-time attributes: `grid_size` int64 (nx, ny, nz) and `voxel_size` (list of 3 floats), or None if no step
defines a voxel size. A VOXEL_SIZE that does not divide the POINT_CLOUD_RANGE extent is accepted (the grid is
rounded, as upstream) with a warning (logger WARNING + `warnings.warn`) naming both and the fractional grid size:
the last cells then stick out of the range or leave a strip of in-range points outside the grid, which a model
config whose shapes were edited to the rounded grid no longer reveals. This is the one place the dataset's grid is
derived.
"""
import logging
import warnings
from functools import partial

import numpy as np

from ...config import ConfigError, require_keys
from ...config_schema import REQUIRED, Schema, check_block
from ...utils import box_utils
from .voxelization import compute_grid_size, fractional_grid_size, grid_size_is_integer, hard_voxelize

SECTION = 'DATA_CONFIG.DATA_PROCESSOR'
_log = logging.getLogger(__name__)

# The keys of each DATA_PROCESSOR entry, by NAME: the builders below read them through these schemas, and the config
# validator (DatasetTemplate.CONFIG_SCHEMA) checks entries against the same objects.
ENTRY_SCHEMA = Schema('DATA_PROCESSOR entry', {'NAME': REQUIRED})
_VOXEL_SIZE = {'NAME': REQUIRED, 'VOXEL_SIZE': REQUIRED}
PROCESSOR_SCHEMAS = {
    'mask_points_and_boxes_outside_range': Schema('DATA_PROCESSOR mask_points_and_boxes_outside_range', {
        'NAME': REQUIRED, 'REMOVE_OUTSIDE_BOXES': False, 'MASK_Z': False, 'min_num_corners': 1,
        'USE_CENTER_TO_FILTER': True}),
    'shuffle_points': Schema('DATA_PROCESSOR shuffle_points', {'NAME': REQUIRED, 'SHUFFLE_ENABLED': REQUIRED}),
    'transform_points_to_voxels': Schema('DATA_PROCESSOR transform_points_to_voxels', {
        **_VOXEL_SIZE, 'MAX_POINTS_PER_VOXEL': REQUIRED, 'MAX_NUMBER_OF_VOXELS': REQUIRED, 'DOUBLE_FLIP': False}),
    'transform_points_to_voxels_placeholder': Schema('DATA_PROCESSOR transform_points_to_voxels_placeholder',
                                                     _VOXEL_SIZE),
    'calculate_grid_size': Schema('DATA_PROCESSOR calculate_grid_size', {**_VOXEL_SIZE, 'DOWNSAMPLE_FACTOR': None}),
}


def warn_if_grid_not_integer(point_cloud_range, voxel_size, section):
    """Warn (logger + warnings.warn) when `voxel_size` does not divide the range on some axis; returns the message
    or None. `section` names the VOXEL_SIZE key in the message."""
    if grid_size_is_integer(point_cloud_range, voxel_size).all():
        return None
    cells = fractional_grid_size(point_cloud_range, voxel_size)
    message = (f'{section}.VOXEL_SIZE {list(voxel_size)} does not divide DATA_CONFIG.POINT_CLOUD_RANGE '
               f'{[round(float(v), 6) for v in point_cloud_range]}: the grid size is '
               f'{[round(float(c), 4) for c in cells]} cells, rounded to '
               f'{compute_grid_size(point_cloud_range, voxel_size).tolist()} (the outer cells stick out of the range '
               f'or in-range points fall outside the grid); choose a VOXEL_SIZE that divides the range extent or '
               f'adjust POINT_CLOUD_RANGE')
    _log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)
    return message


def points_in_range_mask(points, point_cloud_range, use_z=False):
    """Inclusive range test on x, y (and z if `use_z`) -> (N,) bool."""
    axes = 3 if use_z else 2
    lower, upper = point_cloud_range[0:axes], point_cloud_range[3:3 + axes]
    return np.all((points[:, 0:axes] >= lower) & (points[:, 0:axes] <= upper), axis=1)


class DataProcessor:
    PROCESSORS = tuple(PROCESSOR_SCHEMAS)

    def __init__(self, processor_configs, point_cloud_range, training, num_point_features):
        self.point_cloud_range = np.asarray(point_cloud_range, dtype=np.float32)
        self.training = training
        self.mode = 'train' if training else 'test'
        self.num_point_features = num_point_features
        self.grid_size = None
        self.voxel_size = None
        self.data_processor_queue = []
        for index, config in enumerate(processor_configs or []):
            name = ENTRY_SCHEMA.get(config, 'NAME')
            if name not in self.PROCESSORS:
                raise ConfigError(f'{SECTION}[{index}].NAME: unknown processor {name!r}; '
                                  f'known: {list(self.PROCESSORS)}')
            check_block(config, PROCESSOR_SCHEMAS[name], f'{SECTION}[{name}]')  # entries named as in the builders
            step = getattr(self, name)(config, f'{SECTION}[{name}]')
            self.data_processor_queue.append(step)

    def forward(self, data_dict):
        for step in self.data_processor_queue:
            data_dict = step(data_dict)
        return data_dict

    # ---- builders: validate the config once and bind it to a module-level step (picklable for spawned workers) --

    def mask_points_and_boxes_outside_range(self, config, section):
        schema = PROCESSOR_SCHEMAS['mask_points_and_boxes_outside_range']
        return partial(mask_points_and_boxes_step, point_cloud_range=self.point_cloud_range,
                       use_z=schema.get(config, 'MASK_Z'),
                       filter_boxes=self.training and schema.get(config, 'REMOVE_OUTSIDE_BOXES'),
                       min_num_corners=schema.get(config, 'min_num_corners'),
                       use_center_to_filter=schema.get(config, 'USE_CENTER_TO_FILTER'))

    def shuffle_points(self, config, section):
        enabled = PROCESSOR_SCHEMAS['shuffle_points'].get(config, 'SHUFFLE_ENABLED')
        require_keys(enabled, [self.mode], f'{section}.SHUFFLE_ENABLED')  # a {train, test} value, not a block
        return partial(shuffle_points_step, enabled=bool(enabled[self.mode]))

    def _set_voxel_grid(self, config, section):
        # every voxel-grid processor declares VOXEL_SIZE through _VOXEL_SIZE; the placeholder's schema is just that
        voxel_size = PROCESSOR_SCHEMAS['transform_points_to_voxels_placeholder'].get(config, 'VOXEL_SIZE')
        if len(voxel_size) != 3:
            raise ConfigError(f'{section}.VOXEL_SIZE must have 3 values (x, y, z), got {voxel_size}')
        self.voxel_size = [float(v) for v in voxel_size]
        self.grid_size = compute_grid_size(self.point_cloud_range, self.voxel_size)
        warn_if_grid_not_integer(self.point_cloud_range, self.voxel_size, section)

    def calculate_grid_size(self, config, section):
        self._set_voxel_grid(config, section)
        return unchanged_step

    transform_points_to_voxels_placeholder = calculate_grid_size

    def transform_points_to_voxels(self, config, section):
        self._set_voxel_grid(config, section)
        schema = PROCESSOR_SCHEMAS['transform_points_to_voxels']
        max_voxels = schema.get(config, 'MAX_NUMBER_OF_VOXELS')
        require_keys(max_voxels, [self.mode], f'{section}.MAX_NUMBER_OF_VOXELS')  # a {train, test} value
        if schema.get(config, 'DOUBLE_FLIP'):
            raise ConfigError(f'{section}.DOUBLE_FLIP (test-time flip augmentation) is not supported')
        return partial(transform_points_to_voxels_step, point_cloud_range=self.point_cloud_range,
                       voxel_size=self.voxel_size, grid_size=self.grid_size,
                       max_points_per_voxel=int(schema.get(config, 'MAX_POINTS_PER_VOXEL')),
                       max_voxels=int(max_voxels[self.mode]))


# ---- per-sample steps ----------------------------------------------------------------------------------------------

def unchanged_step(data_dict):
    return data_dict


def mask_points_and_boxes_step(data_dict, point_cloud_range, use_z, filter_boxes, min_num_corners,
                               use_center_to_filter):
    if data_dict.get('points') is not None:
        data_dict['points'] = data_dict['points'][points_in_range_mask(data_dict['points'], point_cloud_range, use_z)]
    if filter_boxes and data_dict.get('gt_boxes') is not None:
        keep = box_utils.mask_boxes_outside_range_numpy(data_dict['gt_boxes'], point_cloud_range,
                                                        min_num_corners=min_num_corners,
                                                        use_center_to_filter=use_center_to_filter)
        data_dict['gt_boxes'] = data_dict['gt_boxes'][keep]
        if data_dict.get('gt_names') is not None:
            data_dict['gt_names'] = data_dict['gt_names'][keep]
    return data_dict


def shuffle_points_step(data_dict, enabled):
    if enabled and data_dict.get('points') is not None:
        data_dict['points'] = data_dict['points'][np.random.permutation(data_dict['points'].shape[0])]
    return data_dict


def transform_points_to_voxels_step(data_dict, point_cloud_range, voxel_size, grid_size, max_points_per_voxel,
                                    max_voxels):
    voxels, coords, num_points = hard_voxelize(data_dict['points'], point_cloud_range, voxel_size, grid_size,
                                               max_points_per_voxel, max_voxels)
    if not data_dict.get('use_lead_xyz', True):
        voxels = voxels[..., 3:]
    data_dict['voxels'] = voxels
    data_dict['voxel_coords'] = coords
    data_dict['voxel_num_points'] = num_points
    return data_dict
