"""DSVT backbone (Dynamic Sparse Voxel Transformer, CVPR 2023; spec §3.3-§3.4, §3.8).

Module and parameter names follow OpenPCDet / the DSVT repo, so an upstream checkpoint's `backbone_3d.*` keys load
with `strict=True`:
    input_layer.posembed_layers.<s>.<b>.<layer>.position_embedding_head.{0,1,3}.*
    stage_<s>.<b>.encoder_list.<j>.win_attn.self_attn.{in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias}
    stage_<s>.<b>.encoder_list.<j>.win_attn.{linear1, linear2, norm1, norm2}.*, stage_<s>.<b>.encoder_list.<j>.norm.*
    residual_norm_stage_<s>.<b>.*
    stage_<s>_reduction.{norm, self_attn, pos_embedding}   (reduction_type attention; `linear`: {linear1, norm})

Config (`MODEL.BACKBONE_3D`): `block_name`, `set_info [[set_size, num_blocks], ...]`, `d_model`, `nhead`,
`dim_feedforward`, `dropout`, `activation`, `reduction_type` (attention | maxpool | linear), `output_shape` (optional,
derived), `conv_out_channel` (optional, = d_model[-1]), `USE_CHECKPOINT` (or the DSVT repo's `ues_checkpoint`),
`INPUT_LAYER` (see `input_layer.py`; `sparse_shape` optional, derived), and `COMPAT`:
    POS_EMBED_SHIFT_BUG (False): reproduce upstream's position-embedding / window-partition pairing (issue #50).
        Released upstream checkpoints were trained with it: set True to evaluate them faithfully.
    POOL_UNMASKED_EMPTY_SLOTS (False): reproduce upstream's attention pooling where empty pool slots (zeros) enter
        the max query and are attended to (spec §3.11 quirk 5). Released voxel checkpoints were trained with it.
"""
import math

import torch
from easydict import EasyDict
from torch import nn
from torch.utils.checkpoint import checkpoint

from ....config_schema import REQUIRED, Schema, check_block
from .blocks import DSVTBlock
from .input_layer import DSVTInputLayer
from .pooling import Stage_Reduction_Block, Stage_ReductionAtt_Block, Stage_ReductionMax_Block
from .shapes import INPUT_LAYER_SCHEMA, ShapeConfigError, resolve_dsvt_shapes

COMPAT_SCHEMA = Schema('BACKBONE_3D.COMPAT', {'POS_EMBED_SHIFT_BUG': False, 'POOL_UNMASKED_EMPTY_SLOTS': False})


def _get_block_module(name):
    if name == 'DSVTBlock':
        return DSVTBlock
    raise ValueError(f'BACKBONE_3D.block_name: unknown block {name!r}; only DSVTBlock exists')


def resolve_compat(model_cfg):
    """`BACKBONE_3D.COMPAT` with `COMPAT_SCHEMA`'s defaults filled in (unknown switches are reported by
    `pcdet.config_registry.validate_config`, and here too: a typo would silently run the other behaviour)."""
    given = DSVT.CONFIG_SCHEMA.get(model_cfg, 'COMPAT')
    check_block(given, COMPAT_SCHEMA, 'BACKBONE_3D.COMPAT')
    return {key: bool(COMPAT_SCHEMA.get(given, key)) for key in COMPAT_SCHEMA.keys}


def _per_stage(model_cfg, key, num_stages):
    values = list(model_cfg[key])
    if len(values) != num_stages:
        raise ValueError(f'BACKBONE_3D.{key} has {len(values)} entries but block_name defines {num_stages} stages')
    return values


def _input_layer_cfg(model_cfg, set_info, d_model):
    """INPUT_LAYER with `set_info` / `d_model` filled in from the backbone (both must agree when both are given)."""
    cfg = EasyDict(dict(model_cfg.INPUT_LAYER))
    for key, value in (('set_info', set_info), ('d_model', d_model)):
        stated = INPUT_LAYER_SCHEMA.get(cfg, key)
        as_lists = [list(v) if isinstance(v, (list, tuple)) else v for v in value]
        if stated is not None and [list(v) if isinstance(v, (list, tuple)) else v for v in stated] != as_lists:
            raise ValueError(f'BACKBONE_3D.INPUT_LAYER.{key} {list(stated)} disagrees with BACKBONE_3D.{key} '
                             f'{as_lists}; they describe the same stages')
        cfg[key] = as_lists
    return cfg


class DSVT(nn.Module):
    """DSVT backbone.

    Args (builder kwargs, spec §1.7): model_cfg (`BACKBONE_3D`), input_channels (VFE output, must equal d_model[0]),
        grid_size (nx, ny, nz), voxel_size, point_cloud_range: the stage-0 sparse shape is derived from them.

    forward(batch_dict):
        reads  voxel_features (N, d_model[0]), voxel_coords (N, 4) [b, z, y, x], optional record_encoder_layers
               (bool, default False)
        writes voxel_features = pillar_features (N_last, d_model[-1]), voxel_coords (N_last, 4) long [b, z, y, x] of
               the last stage, voxel_grid_shape (nx, ny, nz) of the last stage's grid (checked by the BEV scatter),
               dsvt_pooling_maps: list (stage_num - 1) of (N_s,) long, the stage-(s+1) voxel of every stage-s voxel
               (compose them to map a stage-0 voxel to its last-stage token),
               dsvt_stage_features: list (stage_num) of (N_s, d_model[s]), the output of stage s's blocks (before
               its pooling; the last entry is voxel_features), dsvt_stage_coords: list (stage_num) of (N_s, 4) long
               [b, z, y, x] on stage s's grid (`sparse_shape_list[s]`; entry 0 = the input voxel_coords) -- the
               per-stage features that dense task heads (segmentation up-sampling, occupancy volumes) read;
               with record_encoder_layers: encoder_layer_features, a list over the 2 * (number of blocks) encoder
               layers of (stage index, (N_stage, C) output of that layer) -- the activations CKA compares.

    Attributes: num_point_features (= conv_out_channel = d_model[-1]), sparse_shape_list, stage_strides (per stage
        [sx, sy, sz]: input voxels per stage voxel and axis), output_shape [X, Y], output_sparse_shape (X, Y, Z),
        compat (dict of COMPAT switches).
    """

    CONFIG_SCHEMA = Schema('MODEL.BACKBONE_3D (DSVT)', {
        'NAME': REQUIRED,
        'block_name': REQUIRED, 'set_info': REQUIRED, 'd_model': REQUIRED, 'nhead': REQUIRED,
        'dim_feedforward': REQUIRED,                 # per stage
        'dropout': 0.0,
        'activation': 'gelu',
        'reduction_type': 'attention',               # attention | maxpool | linear
        'USE_CHECKPOINT': False,                     # torch.utils.checkpoint per block
        'ues_checkpoint': None,                      # the DSVT repository's spelling (when USE_CHECKPOINT is absent)
        'output_shape': None,                        # [X, Y] of the last stage, checked when stated
        'conv_out_channel': None,                    # must equal d_model[-1] when stated
        'INPUT_LAYER': INPUT_LAYER_SCHEMA,
        'COMPAT': COMPAT_SCHEMA,
    })

    def __init__(self, model_cfg, input_channels=None, grid_size=None, voxel_size=None, point_cloud_range=None,
                 **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.compat = resolve_compat(model_cfg)
        block_name = list(model_cfg.block_name)
        self.stage_num = stage_num = len(block_name)
        set_info = [list(v) for v in _per_stage(model_cfg, 'set_info', stage_num)]
        d_model = _per_stage(model_cfg, 'd_model', stage_num)
        nhead = _per_stage(model_cfg, 'nhead', stage_num)
        dim_feedforward = _per_stage(model_cfg, 'dim_feedforward', stage_num)
        schema = self.CONFIG_SCHEMA
        dropout = schema.get(model_cfg, 'dropout')
        activation = schema.get(model_cfg, 'activation')
        self.reduction_type = schema.get(model_cfg, 'reduction_type')
        alias = schema.get(model_cfg, 'ues_checkpoint')
        self.use_torch_ckpt = bool(schema.get(model_cfg, 'USE_CHECKPOINT') if alias is None or
                                   'USE_CHECKPOINT' in model_cfg else alias)
        for s in range(stage_num):
            if d_model[s] % nhead[s]:
                raise ValueError(f'BACKBONE_3D.d_model[{s}] = {d_model[s]} is not divisible by nhead[{s}] = {nhead[s]}')
        if input_channels is not None and int(input_channels) != d_model[0]:
            raise ValueError(f'DSVT input_channels {input_channels} (VFE NUM_FILTERS[-1]) disagrees with '
                             f'BACKBONE_3D.d_model[0] = {d_model[0]}')

        input_cfg = _input_layer_cfg(model_cfg, set_info, d_model)
        self.shapes = resolve_dsvt_shapes(input_cfg, grid_size, point_cloud_range, voxel_size,
                                          schema.get(model_cfg, 'output_shape'))
        self.input_layer = DSVTInputLayer(input_cfg, self.shapes,
                                          pos_embed_shift_bug=self.compat['POS_EMBED_SHIFT_BUG'])

        mask_empty_slots = not self.compat['POOL_UNMASKED_EMPTY_SLOTS']
        for s in range(stage_num):
            block_module = _get_block_module(block_name[s])
            self.__setattr__(f'stage_{s}', nn.ModuleList([
                block_module(d_model[s], nhead[s], dim_feedforward[s], dropout, activation, batch_first=True)
                for _ in range(set_info[s][1])]))
            self.__setattr__(f'residual_norm_stage_{s}', nn.ModuleList([
                nn.LayerNorm(d_model[s]) for _ in range(set_info[s][1])]))
            if s < stage_num - 1:
                pool_volume = math.prod(self.shapes.downsample_strides[s])
                if self.reduction_type == 'linear':
                    reduction = Stage_Reduction_Block(d_model[s] * pool_volume, d_model[s + 1])
                elif self.reduction_type in ('maxpool', 'attention'):
                    if d_model[s + 1] != d_model[s]:
                        raise ValueError(f'reduction_type {self.reduction_type} keeps the channel count, but d_model '
                                         f'changes from {d_model[s]} to {d_model[s + 1]} after stage {s}; use linear')
                    if self.reduction_type == 'maxpool':
                        reduction = Stage_ReductionMax_Block(mask_empty_slots)
                    else:
                        if d_model[s] % 8:
                            raise ValueError(f'attention pooling uses 8 heads; d_model[{s}] = {d_model[s]} is not '
                                             'divisible by 8')
                        reduction = Stage_ReductionAtt_Block(d_model[s], pool_volume, mask_empty_slots)
                else:
                    raise ValueError(f'BACKBONE_3D.reduction_type {self.reduction_type!r}: expected attention, '
                                     'maxpool or linear')
                self.__setattr__(f'stage_{s}_reduction', reduction)

        self.num_shifts = [2] * stage_num
        self.set_info = set_info
        self.d_model = d_model
        self.sparse_shape_list = [list(v) for v in self.shapes.stage_shapes]
        # per stage, how many input voxels per axis pool into one of its voxels (pooling composes floor divisions)
        self.stage_strides = [[1, 1, 1]]
        for stride in self.shapes.downsample_strides:
            self.stage_strides.append([int(a) * int(b) for a, b in zip(self.stage_strides[-1], stride)])
        self.output_sparse_shape = tuple(self.shapes.output_shape)
        self.output_shape = list(self.output_sparse_shape[:2])
        conv_out_channel = schema.get(model_cfg, 'conv_out_channel')
        self.num_point_features = int(d_model[-1] if conv_out_channel is None else conv_out_channel)
        if self.num_point_features != d_model[-1]:
            raise ShapeConfigError(f'BACKBONE_3D.conv_out_channel {self.num_point_features} disagrees with the last '
                                   f'stage d_model {d_model[-1]} (DSVT has no output conv); it should be {d_model[-1]}')
        self._reset_parameters()

    def _reset_parameters(self):
        """Upstream init: xavier_uniform_ for every parameter with dim > 1 (names containing 'scaler' excepted)."""
        for name, p in self.named_parameters():
            if p.dim() > 1 and 'scaler' not in name:
                nn.init.xavier_uniform_(p)

    def forward(self, batch_dict):
        voxel_info = self.input_layer(batch_dict)
        output = voxel_info['voxel_feats_stage0']
        record = bool(batch_dict.get('record_encoder_layers', False))
        layer_features = []
        stage_features = []
        block_id = 0
        for s in range(self.stage_num):
            shifts = range(self.num_shifts[s])
            set_inds = [voxel_info[f'set_voxel_inds_stage{s}_shift{i}'] for i in shifts]
            set_masks = [voxel_info[f'set_voxel_mask_stage{s}_shift{i}'] for i in shifts]
            set_first = [voxel_info[f'set_voxel_first_stage{s}_shift{i}'] for i in shifts]
            blocks = self.__getattr__(f'stage_{s}')
            residual_norms = self.__getattr__(f'residual_norm_stage_{s}')
            for b, block in enumerate(blocks):
                pos_embeds = [voxel_info[f'pos_embed_stage{s}_block{b}_shift{i}'] for i in shifts]
                layer_outputs = [] if record else None
                if self.use_torch_ckpt and torch.is_grad_enabled() and not record:
                    out = checkpoint(block, output, set_inds, set_masks, pos_embeds, block_id, set_first,
                                     use_reentrant=False)
                else:
                    out = block(output, set_inds, set_masks, pos_embeds, block_id, set_first, layer_outputs)
                if record:
                    layer_features += [(s, feats) for feats in layer_outputs]
                output = residual_norms[b](out + output)
                block_id += 1
            stage_features.append(output)
            if s < self.stage_num - 1:
                output = self._reduce(voxel_info, output, s)

        batch_dict['pillar_features'] = batch_dict['voxel_features'] = output
        batch_dict['voxel_coords'] = voxel_info[f'voxel_coors_stage{self.stage_num - 1}']
        batch_dict['voxel_grid_shape'] = self.output_sparse_shape
        batch_dict['dsvt_pooling_maps'] = [voxel_info[f'pooling_mapping_index_stage{s}']
                                           for s in range(1, self.stage_num)]
        batch_dict['dsvt_stage_features'] = stage_features
        batch_dict['dsvt_stage_coords'] = [voxel_info[f'voxel_coors_stage{s}'] for s in range(self.stage_num)]
        if record:
            batch_dict['encoder_layer_features'] = layer_features
        return batch_dict

    def _reduce(self, voxel_info, output, stage_id):
        """Scatter stage-s voxels into their pools' slots (zeros elsewhere) and reduce each pool to one voxel."""
        placeholder = voxel_info[f'pooling_preholder_feats_stage{stage_id + 1}'].to(output.dtype)
        slots = placeholder.index_put((voxel_info[f'pooling_mapping_index_stage{stage_id + 1}'],
                                       voxel_info[f'pooling_index_in_pool_stage{stage_id + 1}']), output)
        reduction = self.__getattr__(f'stage_{stage_id}_reduction')
        return reduction(slots, voxel_info[f'pooling_occupied_stage{stage_id + 1}'])
