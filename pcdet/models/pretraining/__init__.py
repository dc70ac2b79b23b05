"""GPICTURE pre-training pure functions (spec §2.3, §2.4, §2.7–§2.9): I²Mask, chamfer loss, per-voxel point groups
and teacher-feature means, linear CKA and the DGPL gate. Pure PyTorch; every function follows its inputs' device.
The contrastive pretraining functions (InfoNCE, NT-Xent, superpixel pooling, the second view) live in
`pretraining.contrastive` and are imported from there (docs/CONTRASTIVE.md).
"""
from .chamfer import masked_chamfer_distance
from .cka import layerwise_cka, linear_cka, linear_cka_gram
from .dgpl import dgpl_beta
from .i2mask import (
    group_clusters_by_distinctness,
    i2mask_batch,
    i2mask_single,
    intra_class_consistency,
    kmeans,
    mask_from_clusters,
)
from .point_groups import group_points_per_voxel, voxel_mean_features

__all__ = ['dgpl_beta', 'group_clusters_by_distinctness', 'group_points_per_voxel', 'i2mask_batch', 'i2mask_single',
           'intra_class_consistency', 'kmeans', 'layerwise_cka', 'linear_cka', 'linear_cka_gram',
           'mask_from_clusters', 'masked_chamfer_distance', 'voxel_mean_features']
