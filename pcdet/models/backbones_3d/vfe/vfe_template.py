"""Base class of voxel feature encoders (OpenPCDet's `VFETemplate`)."""
from torch import nn

from ....config_schema import REQUIRED, Schema


class VFETemplate(nn.Module):
    """A VFE turns `batch_dict['points']` (or pre-built voxels) into per-voxel features.

    Subclasses implement `get_output_feature_dim()` (the builder stores it as `num_point_features`) and
    `forward(batch_dict) -> batch_dict`, documenting the keys they read and write. Each declares the keys it reads
    in `CONFIG_SCHEMA` (this one's plus its own).
    """

    CONFIG_SCHEMA = Schema('MODEL.VFE (VFETemplate)', {'NAME': REQUIRED})

    def __init__(self, model_cfg, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg

    def get_output_feature_dim(self):
        raise NotImplementedError

    def forward(self, **kwargs):
        raise NotImplementedError
