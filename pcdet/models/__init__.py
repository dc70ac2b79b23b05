"""Models: detectors wire vfe → backbone_3d → map_to_bev → backbone_2d → dense_head from config names.

Importing this package is cheap and needs no optional extra; the DSVT detectors arrive with the
"DSVT detection" work item.
"""
