"""2-D (BEV) backbones, registered under their OpenPCDet names (`MODEL.BACKBONE_2D.NAME`).

The builder calls `__all__[NAME](model_cfg=..., input_channels=num_bev_features)` and reads `num_bev_features`.
BEV scatter modules live in `backbones_2d.map_to_bev`.
"""
from .base_bev_res_backbone import BaseBEVResBackbone, BasicBlock  # noqa: F401 (BasicBlock: public re-export)
from .gpicture_decoder import GPictureDecoder

__all__ = {
    'BaseBEVResBackbone': BaseBEVResBackbone,
    'GPictureDecoder': GPictureDecoder,
}
