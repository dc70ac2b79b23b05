"""Dense (BEV) heads registry: `DENSE_HEAD.NAME` -> class (OpenPCDet's `__all__` dict).

Constructor kwargs (spec §1.7): `model_cfg, input_channels, num_class, class_names, grid_size, point_cloud_range,
predict_boxes_when_training, voxel_size`.
"""
from .center_head import CenterHead
from .gaussian_occ_head import GaussianOccHead
from .gpicture_head import GPicturePretrainHead
from .occ_head import OccHead
from .seg_head import SegHead
from .transfusion_head import TransFusionHead

__all__ = {
    'CenterHead': CenterHead,
    'GPicturePretrainHead': GPicturePretrainHead,
    'SegHead': SegHead,
    'OccHead': OccHead,
    'GaussianOccHead': GaussianOccHead,
    'TransFusionHead': TransFusionHead,
}
