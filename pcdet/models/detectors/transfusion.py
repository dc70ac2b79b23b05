"""TransFusion: OpenPCDet's `MODEL.NAME: TransFusion` detector (DSVT-Pillar + TransFusion-L on nuScenes).

The same flow as CenterPoint: modules in order; training returns the dense head's loss (`TransFusionHead.get_loss`,
the `loss` / `tb_dict` it also writes into the batch_dict, as upstream's detector reads them); eval returns
`batch_dict['final_box_dicts']` and the recall counters (`MODEL.POST_PROCESSING.RECALL_THRESH_LIST`).
"""
from .centerpoint import CenterPoint


class TransFusion(CenterPoint):
    pass
