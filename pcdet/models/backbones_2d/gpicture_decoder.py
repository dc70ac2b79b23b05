"""GPICTURE pretraining decoder (spec §2.6, decision D3): fills masked stage-0 voxels with a learnable mask token
and decodes every stage-0 voxel with a small DSVT.

Modes (`MODEL.BACKBONE_2D.MODE`):
* `voxel` (default, D3 RECOMMENDED): tokens live on the stage-0 voxel grid. A visible voxel starts from the
  encoder's last-stage token of its column (the inverse of the encoder's pooling maps), a masked voxel from
  `mask_token`; the decoder DSVT attends over all N0 voxels with 3-D windows; one output per voxel.
* `bev` (ablation, the released code's semantics): the same inputs are averaged per BEV pillar (b, y, x), the
  decoder runs on pillars (grid z = 1) and every voxel receives its pillar's output (all voxels of a pillar share one
  prediction, spec D-HEAD-2).

Hierarchical reconstruction (spec §2.8, D4 b; switched on by the head's `HIERARCHICAL: True`, which makes the
detector set `record_encoder_layers`): the shared decoder runs once per encoder layer l, starting from that layer's
output (mapped to stage 0 through the pooling maps of its stage) instead of the last stage's; cost grows linearly
with the number of encoder layers.

Config: `MODE`, `DSVT` (a `DSVT` backbone config for the decoder: INPUT_LAYER with 1-stage window_shape /
hybrid_factor / shifts_list / downsample_stride [], block_name, set_info, d_model, nhead, dim_feedforward, dropout,
activation; its d_model must equal the encoder's output width).

Parameters: `mask_token` (1, C) zero-initialised (as upstream), `decoder.*` (a `DSVT`).

forward(batch_dict):
    reads  the DSVT_MAE keys (mae_voxel_coords, mae_mask, mae_visible_index, mae_visible_token_index), the encoder
           output voxel_features (N_last, C), batch_size; with HIERARCHICAL: encoder_layer_features, dsvt_pooling_maps
    writes mae_decoder_features (N0, C) -- or, hierarchical, mae_decoder_features_per_layer: list (L) of (N0, C)
"""
import torch
from easydict import EasyDict
from torch import nn

from pcdet.ops.scatter import scatter_mean

from ...config_schema import REQUIRED, Schema
from ..backbones_3d.dsvt import DSVT
from ..backbones_3d.dsvt_mae import compose_pooling_maps

DECODER_MODES = ('voxel', 'bev')


# The decoder transformer: a DSVT backbone config without NAME.
DECODER_DSVT_SCHEMA = Schema('BACKBONE_2D.DSVT', {k: v for k, v in DSVT.CONFIG_SCHEMA.keys.items() if k != 'NAME'},
                             required=True)


class GPictureDecoder(nn.Module):
    CONFIG_SCHEMA = Schema('MODEL.BACKBONE_2D (GPictureDecoder)', {
        'NAME': REQUIRED, 'MODE': 'voxel', 'DSVT': DECODER_DSVT_SCHEMA})

    def __init__(self, model_cfg, input_channels, grid_size, voxel_size, point_cloud_range, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.mode = self.CONFIG_SCHEMA.get(model_cfg, 'MODE')
        if self.mode not in DECODER_MODES:
            raise ValueError(f'BACKBONE_2D.MODE {self.mode!r}: expected one of {list(DECODER_MODES)}')
        decoder_cfg = EasyDict(dict(self.CONFIG_SCHEMA.get(model_cfg, 'DSVT')))
        grid_size = [int(v) for v in grid_size]
        voxel_size = [float(v) for v in voxel_size]
        point_cloud_range = [float(v) for v in point_cloud_range]
        if self.mode == 'bev':  # one z cell spanning the whole range
            grid_size[2] = 1
            voxel_size[2] = point_cloud_range[5] - point_cloud_range[2]
        self.decoder = DSVT(decoder_cfg, input_channels=input_channels, grid_size=grid_size, voxel_size=voxel_size,
                            point_cloud_range=point_cloud_range)
        if self.decoder.stage_num != 1:
            raise ValueError('BACKBONE_2D.DSVT must have exactly one stage: the decoder predicts per stage-0 voxel')
        self.num_channels = int(input_channels)
        self.mask_token = nn.Parameter(torch.zeros(1, self.num_channels))
        self.num_bev_features = self.num_channels

    def decoder_inputs(self, batch_dict, tokens, token_index_of_visible):
        """(N0, C): the token of each visible voxel's column, `mask_token` at masked voxels."""
        mask = batch_dict['mae_mask']
        inputs = self.mask_token.to(tokens.dtype).expand(mask.shape[0], -1).clone()
        inputs[batch_dict['mae_visible_index']] = tokens[token_index_of_visible]
        return inputs

    def decode(self, inputs, coords, batch_size):
        """Run the decoder DSVT on (N0, C) voxel inputs at coords (N0, 4) [b, z, y, x] -> (N0, C)."""
        if self.mode == 'bev':
            nx, ny = self.decoder.sparse_shape_list[0][:2]
            pillar_keys = (coords[:, 0].long() * ny + coords[:, 2]) * nx + coords[:, 3]
            _, pillar_of_voxel = torch.unique(pillar_keys, return_inverse=True)
            num_pillars = int(pillar_of_voxel.max()) + 1 if pillar_of_voxel.numel() else 0
            pillar_inputs = scatter_mean(inputs, pillar_of_voxel, num_pillars)
            pillar_coords = coords.new_zeros((num_pillars, 4))
            pillar_coords[pillar_of_voxel] = coords
            pillar_coords[:, 1] = 0
            out = self.decoder({'voxel_features': pillar_inputs, 'voxel_coords': pillar_coords,
                                'batch_size': batch_size})['voxel_features']
            return out[pillar_of_voxel]
        return self.decoder({'voxel_features': inputs, 'voxel_coords': coords,
                             'batch_size': batch_size})['voxel_features']

    def forward(self, batch_dict):
        coords, batch_size = batch_dict['mae_voxel_coords'], int(batch_dict['batch_size'])
        if 'encoder_layer_features' in batch_dict and batch_dict.get('mae_hierarchical', False):
            maps = batch_dict['dsvt_pooling_maps']
            visible_rows = torch.arange(batch_dict['mae_visible_index'].numel(), device=coords.device)
            outputs = []
            for stage, layer_tokens in batch_dict['encoder_layer_features']:
                token_index = compose_pooling_maps(visible_rows, maps[:stage])
                outputs.append(self.decode(self.decoder_inputs(batch_dict, layer_tokens, token_index), coords,
                                           batch_size))
            batch_dict['mae_decoder_features_per_layer'] = outputs
            return batch_dict
        inputs = self.decoder_inputs(batch_dict, batch_dict['voxel_features'], batch_dict['mae_visible_token_index'])
        batch_dict['mae_decoder_features'] = self.decode(inputs, coords, batch_size)
        return batch_dict
