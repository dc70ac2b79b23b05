"""Post-augmentation processing: range mask, shuffle, voxelization, point feature encoding."""
from .data_processor import DataProcessor
from .point_feature_encoder import PointFeatureEncoder
from .voxelization import (
    compute_grid_size,
    decode_voxel_keys,
    dynamic_voxelize,
    hard_voxelize,
    points_to_voxel_coords,
    voxel_keys,
)

__all__ = ['DataProcessor', 'PointFeatureEncoder', 'compute_grid_size', 'decode_voxel_keys', 'dynamic_voxelize',
           'hard_voxelize', 'points_to_voxel_coords', 'voxel_keys']
