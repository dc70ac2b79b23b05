"""GPICTURE: mutual-information-driven masked pretraining of a DSVT encoder (spec §2).

Modules in order: `vfe` (dynamic pillar/voxel VFE) -> `backbone_3d` (`DSVT_MAE`: teacher targets, I²Mask, DSVT on
visible voxels) -> `backbone_2d` (`GPictureDecoder`: mask tokens + DSVT decoder on all stage-0 voxels) ->
`dense_head` (`GPicturePretrainHead`: chamfer + teacher regression, CKA α, DGPL β). State-dict prefixes are
upstream's (`vfe.`, `backbone_3d.`, `backbone_2d.` incl. `mask_token`, `dense_head.`), and `backbone_3d.*` keeps
DSVT's names, so `--pretrained_model` on a DSVT detector loads the encoder directly.

Training returns `({'loss'}, tb_dict, disp_dict)` like every detector. There is no evaluation metric
(`skip_evaluation = True`: train.py skips the post-training evaluation, test.py refuses the config); in eval mode
`forward` runs the encoder without masking and returns empty predictions.

Training hooks: `training_hooks()` declares the DGPL gate (`pcdet.training.hooks.DGPLGateHook`), which the trainer
runs around every epoch: before it, β for the epoch (spec §2.9, logged as `dgpl/beta`, `dgpl/c_r`); after it, an
encoder snapshot. `on_train_epoch_start(epoch, dataset, ...)` / `on_train_epoch_end(epoch)` run the same two steps
without a trainer.
"""
from ...config_schema import Select
from .detector3d_template import Detector3DTemplate, slot_schema

# The decoder / head / gate modules are imported when a GPICTURE model is built: importing the detector registry
# must not pull in the backbone packages (tests/models/test_detector_builder.py).


class GPICTURE(Detector3DTemplate):
    skip_evaluation = True

    CONFIG_SCHEMA = Detector3DTemplate.CONFIG_SCHEMA.extend('MODEL (GPICTURE)', {
        key: Select(slot_schema(slot), required=True)
        for slot, key in (('vfe', 'VFE'), ('backbone_3d', 'BACKBONE_3D'), ('backbone_2d', 'BACKBONE_2D'),
                          ('dense_head', 'DENSE_HEAD'))})

    def __init__(self, model_cfg, num_class, dataset):
        super().__init__(model_cfg=model_cfg, num_class=num_class, dataset=dataset)
        for key in ('VFE', 'BACKBONE_3D', 'BACKBONE_2D', 'DENSE_HEAD'):
            if self.CONFIG_SCHEMA.get(model_cfg, key) is None:
                raise KeyError(f'MODEL.{key} is required for GPICTURE')
        self.module_list = self.build_networks()
        from ..pretraining.progressive import DifferentialGate
        self.gate = DifferentialGate(self.dense_head.dgpl_cfg)

    def build_backbone_2d(self, model_info_dict):
        from ..backbones_2d.gpicture_decoder import GPictureDecoder
        decoder = GPictureDecoder(
            model_cfg=self.model_cfg.BACKBONE_2D, input_channels=model_info_dict['num_point_features'],
            grid_size=model_info_dict['grid_size'], voxel_size=model_info_dict['voxel_size'],
            point_cloud_range=model_info_dict['point_cloud_range'])
        model_info_dict['module_list'].append(decoder)
        model_info_dict['num_bev_features'] = decoder.num_bev_features
        return decoder, model_info_dict

    def build_dense_head(self, model_info_dict):
        from ..dense_heads.gpicture_head import GPicturePretrainHead
        num_layers = 2 * sum(int(info[1]) for info in self.backbone_3d.set_info)
        head = GPicturePretrainHead(
            model_cfg=self.model_cfg.DENSE_HEAD, input_channels=model_info_dict['num_bev_features'],
            voxel_size=model_info_dict['voxel_size'], point_cloud_range=model_info_dict['point_cloud_range'],
            num_encoder_layers=num_layers)
        model_info_dict['module_list'].append(head)
        return head, model_info_dict

    def forward(self, batch_dict):
        if not self.training:
            batch_dict = self.backbone_3d(self.vfe(batch_dict))
            return [{} for _ in range(int(batch_dict['batch_size']))], {}
        hierarchical = self.dense_head.hierarchical
        batch_dict['record_encoder_layers'] = hierarchical
        batch_dict['mae_hierarchical'] = hierarchical
        for cur_module in self.module_list:
            batch_dict = cur_module(batch_dict)
        loss, tb_dict = self.dense_head.get_loss()
        return {'loss': loss}, tb_dict, {}

    # ---- training hooks (run by pcdet.training.train_loop.Trainer) ----------------------------------------------
    def training_hooks(self):
        """The hooks the trainer runs for this model: the DGPL gate."""
        from ...training.hooks import DGPLGateHook
        return [DGPLGateHook(self)]

    def on_train_epoch_start(self, epoch, dataset, logger=None, tb_log=None, ckpt_dir=None):
        """DGPLGateHook's before-epoch step without a trainer: set β for 0-based `epoch`; returns `(β, c_r)`."""
        from ...training.hooks import DGPLGateHook
        return DGPLGateHook(self).begin_epoch(epoch, dataset, logger=logger, tb_log=tb_log, ckpt_dir=ckpt_dir)

    def on_train_epoch_end(self, epoch):
        """DGPLGateHook's after-epoch step without a trainer: snapshot the encoder."""
        from ...training.hooks import DGPLGateHook
        DGPLGateHook(self).end_epoch(epoch)
