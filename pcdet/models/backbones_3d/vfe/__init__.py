"""Voxel feature encoders, registered under the names both OpenPCDet and the DSVT repo use (`MODEL.VFE.NAME`).

The builder calls `__all__[NAME](model_cfg=..., num_point_features=..., point_cloud_range=..., voxel_size=...,
grid_size=..., depth_downsample_factor=...)` and reads `get_output_feature_dim()` (spec §1.7).
"""
from .dynamic_pillar_vfe import DynamicPillarVFE, DynamicPillarVFE_3d, DynamicVoxelVFE, PFNLayerV2  # noqa: F401
from .vfe_template import VFETemplate

__all__ = {
    'VFETemplate': VFETemplate,
    'DynPillarVFE': DynamicPillarVFE,          # both repos
    'DynamicPillarVFE': DynamicPillarVFE,      # class name
    'DynPillarVFE3D': DynamicPillarVFE_3d,     # DSVT repo (dsvt_3D / dsvt_plain configs)
    'DynamicPillarVFE_3d': DynamicPillarVFE_3d,
    'DynamicVoxelVFE': DynamicVoxelVFE,        # OpenPCDet (waymo_models/dsvt_{pillar,voxel}.yaml); same maths
}
