"""Models: detectors wire vfe → backbone_3d → map_to_bev → backbone_2d → dense_head from config names.

Importing this package is cheap and needs no optional extra: registries are imported when a config uses them.
"""
from .build import (
    build_network,
    build_network_from_cfg,
    load_data_to_device,
    load_data_to_gpu,
    model_geometry_from_data_config,
)

__all__ = ['build_network', 'build_network_from_cfg', 'load_data_to_device', 'load_data_to_gpu',
           'model_geometry_from_data_config']
