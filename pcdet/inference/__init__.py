"""Inference on raw point arrays without a dataset: `Predictor(cfg, ckpt).predict(points)` (docs/INFERENCE.md)."""
from .predictor import (
    PointLayoutError,
    Predictor,
    adapt_point_layout,
    apply_dataset_load_transforms,
    check_point_layout,
    expected_feature_names,
    format_layout,
)

__all__ = ['PointLayoutError', 'Predictor', 'adapt_point_layout', 'apply_dataset_load_transforms',
           'check_point_layout', 'expected_feature_names', 'format_layout']
