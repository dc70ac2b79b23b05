"""3-D backbones, registered under their OpenPCDet names (`MODEL.BACKBONE_3D.NAME`).

The builder calls `__all__[NAME](model_cfg=..., input_channels=..., grid_size=..., voxel_size=...,
point_cloud_range=...)` and reads `num_point_features` (spec §1.7). VFEs live in `backbones_3d.vfe`.
"""
from .dsvt import DSVT
from .dsvt_mae import DSVT_MAE

__all__ = {
    'DSVT': DSVT,
    'DSVT_MAE': DSVT_MAE,            # GPICTURE masked encoder (same parameters as DSVT)
}
