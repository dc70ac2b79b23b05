"""Rotated BEV / 3D IoU and NMS. Public API: `pcdet.ops.iou3d_nms.iou3d_nms_utils` (OpenPCDet names)."""
