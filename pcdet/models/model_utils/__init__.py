"""Model helpers shared by heads and detectors: `centernet_utils` (heatmap targets / decoding / circle NMS) and
`model_nms_utils` (class-agnostic, multi-class and class-specific NMS). Import the sub-modules you need."""
