"""Points-in-boxes tests. Public API: `pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils` (OpenPCDet names).

RoI-aware pooling itself is not provided (not used by the DSVT configs; spec §4.1).
"""
