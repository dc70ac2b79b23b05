"""Sparse-to-BEV scatter modules, registered under their OpenPCDet names (`MODEL.MAP_TO_BEV.NAME`).

The builder calls `__all__[NAME](model_cfg=..., grid_size=...)` and reads `num_bev_features`.
"""
from .pointpillar_scatter import PointPillarScatter3d

__all__ = {
    'PointPillarScatter3d': PointPillarScatter3d,
}
