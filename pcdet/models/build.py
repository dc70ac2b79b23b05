"""Build a detector from a config, with or without a dataset object.

OpenPCDet needed a dataset instance to build a model (grid size, ranges and point features came from it). Here
the same numbers can come from the config alone:

    geometry = model_geometry_from_data_config(cfg.DATA_CONFIG)
    model = build_network(cfg.MODEL, num_class=len(cfg.CLASS_NAMES), class_names=cfg.CLASS_NAMES, **geometry)

or, as upstream, `build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=train_set)`.
`build_network_from_cfg(cfg)` is the one-liner for a full experiment config. `load_data_to_device` /
`load_data_to_gpu` live in `pcdet.utils.batching` and are re-exported here.
"""
import numpy as np

from ..utils.batching import SKIP_KEYS, load_data_to_device, load_data_to_gpu  # noqa: F401 (re-export)
from .detectors import build_detector
from .detectors.detector3d_template import ModelGeometry

# DATA_PROCESSOR entries that define the voxel grid.
_VOXEL_PROCESSORS = ('transform_points_to_voxels', 'transform_points_to_voxels_placeholder')


def _get(cfg, key, default=None):
    return cfg.get(key, default) if hasattr(cfg, 'get') else default


def model_geometry_from_data_config(data_cfg):
    """Model geometry from a `DATA_CONFIG`, computed the way the dataset would compute it.

    * `point_cloud_range`: `POINT_CLOUD_RANGE` as float32 (6,).
    * `voxel_size`: `VOXEL_SIZE` of the `DATA_PROCESSOR` entry named `transform_points_to_voxels[_placeholder]`.
    * `grid_size`: `round((range_max - range_min) / voxel_size)` as int64 (nx, ny, nz) (float32 maths, as upstream).
    * `num_point_features`: `len(POINT_FEATURE_ENCODING.used_feature_list)` (absolute_coordinates_encoding).
    * `depth_downsample_factor`: `DOWNSAMPLE_FACTOR` of a `calculate_grid_size` entry, else None.

    Returns:
        dict with exactly the keyword arguments `build_network` takes for geometry.
    Raises:
        KeyError naming the missing config key.
    """
    if _get(data_cfg, 'POINT_CLOUD_RANGE') is None:
        raise KeyError('DATA_CONFIG.POINT_CLOUD_RANGE is required to build a model without a dataset')
    point_cloud_range = np.asarray(data_cfg.POINT_CLOUD_RANGE, dtype=np.float32)
    if point_cloud_range.shape != (6,):
        raise ValueError(f'DATA_CONFIG.POINT_CLOUD_RANGE must have 6 values, got {data_cfg.POINT_CLOUD_RANGE}')

    voxel_size, depth_downsample_factor = None, None
    for entry in _get(data_cfg, 'DATA_PROCESSOR', []) or []:
        if entry.get('NAME') in _VOXEL_PROCESSORS:
            voxel_size = list(entry['VOXEL_SIZE'])
        elif entry.get('NAME') == 'calculate_grid_size':
            depth_downsample_factor = entry.get('DOWNSAMPLE_FACTOR', None)
    if voxel_size is None:
        raise KeyError(f'DATA_CONFIG.DATA_PROCESSOR needs an entry named one of {list(_VOXEL_PROCESSORS)} with '
                       f'VOXEL_SIZE to build a model without a dataset')
    grid_size = np.round((point_cloud_range[3:6] - point_cloud_range[0:3]) /
                         np.asarray(voxel_size, dtype=np.float32)).astype(np.int64)

    encoding = _get(data_cfg, 'POINT_FEATURE_ENCODING')
    if encoding is None or encoding.get('used_feature_list') is None:
        raise KeyError('DATA_CONFIG.POINT_FEATURE_ENCODING.used_feature_list is required to build a model '
                       'without a dataset')
    encoding_type = encoding.get('encoding_type', 'absolute_coordinates_encoding')
    if encoding_type != 'absolute_coordinates_encoding':
        raise ValueError(f'POINT_FEATURE_ENCODING.encoding_type {encoding_type!r} is not supported '
                         f'(known: absolute_coordinates_encoding)')
    return {
        'grid_size': grid_size,
        'point_cloud_range': point_cloud_range,
        'voxel_size': voxel_size,
        'num_point_features': len(encoding.used_feature_list),
        'depth_downsample_factor': depth_downsample_factor,
    }


def _class_names_from_heads(model_cfg, num_class):
    head_cfg = _get(model_cfg, 'DENSE_HEAD')
    heads = _get(head_cfg, 'CLASS_NAMES_EACH_HEAD') if head_cfg is not None else None
    if heads:
        names = [name for head in heads for name in head]
        if len(names) == num_class:
            return names
    return None


def build_network(model_cfg, num_class, dataset=None, *, class_names=None, grid_size=None, point_cloud_range=None,
                  voxel_size=None, num_point_features=None, depth_downsample_factor=None):
    """Build `detectors.__all__[model_cfg.NAME]`.

    Args:
        model_cfg: the `MODEL` config. num_class: number of classes.
        dataset: optional dataset (upstream behaviour); supplies whatever geometry is not passed explicitly.
        class_names, grid_size (nx, ny, nz), point_cloud_range (6,), voxel_size (3,), num_point_features,
            depth_downsample_factor: explicit geometry (take precedence over `dataset`); see
            `model_geometry_from_data_config`. Without a dataset, `class_names` defaults to the flattened
            `DENSE_HEAD.CLASS_NAMES_EACH_HEAD` when that lists `num_class` names.
    Returns:
        the detector (an `nn.Module` on CPU, in training mode).
    """
    explicit = {'class_names': class_names, 'grid_size': grid_size, 'point_cloud_range': point_cloud_range,
                'voxel_size': voxel_size, 'num_point_features': num_point_features,
                'depth_downsample_factor': depth_downsample_factor}
    if dataset is not None and all(v is None for v in explicit.values()):
        geometry = dataset  # upstream path: the detector reads everything from the dataset
    else:
        values = {}
        for key, value in explicit.items():
            if value is None and dataset is not None:
                value = dataset.point_feature_encoder.num_point_features if key == 'num_point_features' \
                    else getattr(dataset, key, None)
            values[key] = value
        if values['class_names'] is None:
            values['class_names'] = _class_names_from_heads(model_cfg, num_class)
        missing = [key for key, value in values.items() if value is None and key != 'depth_downsample_factor']
        if missing:
            raise ValueError(f'build_network needs {missing}: pass a dataset or the geometry keywords '
                             f'(see model_geometry_from_data_config)')
        geometry = ModelGeometry(**values)
    names = getattr(geometry, 'class_names', None)
    if names is not None and len(names) != num_class:
        raise ValueError(f'num_class={num_class} but class_names has {len(names)} entries: {list(names)}')
    return build_detector(model_cfg=model_cfg, num_class=num_class, dataset=geometry)


def build_network_from_cfg(cfg):
    """`build_network` for a full experiment config (`MODEL`, `CLASS_NAMES`, `DATA_CONFIG`), no dataset needed."""
    geometry = model_geometry_from_data_config(cfg.DATA_CONFIG)
    return build_network(cfg.MODEL, num_class=len(cfg.CLASS_NAMES), class_names=list(cfg.CLASS_NAMES), **geometry)
