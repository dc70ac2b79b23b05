"""DSVTInputLayer (spec §3.3): window partition, set partition, position embeddings and pooling indices.

Everything but the position embeddings is integer index work without gradients. Parameter names are upstream's:
`input_layer.posembed_layers.<stage>.<block>.<layer>.position_embedding_head.{0, 1, 3}.*`.
"""
import math

import torch
from torch import nn

from .pooling import get_pooling_index
from .set_partition import get_set_mask, get_set_single_shift, get_window_coors, set_to_voxel_index
from .shapes import INPUT_LAYER_SCHEMA, resolve_dsvt_shapes


class PositionEmbeddingLearned(nn.Module):
    """`Linear(in_dim, C) -> BatchNorm1d(C) -> ReLU -> Linear(C, C)` on relative in-window positions."""

    def __init__(self, input_channel, num_pos_feats):
        super().__init__()
        self.position_embedding_head = nn.Sequential(
            nn.Linear(input_channel, num_pos_feats),
            nn.BatchNorm1d(num_pos_feats),
            nn.ReLU(inplace=True),
            nn.Linear(num_pos_feats, num_pos_feats))

    def forward(self, xyz):
        return self.position_embedding_head(xyz)


class DSVTInputLayer(nn.Module):
    """Builds the `voxel_info` dict that drives the DSVT blocks.

    Args:
        model_cfg: `BACKBONE_3D.INPUT_LAYER` (`d_model`, `set_info`, `window_shape`, `hybrid_factor`, `shifts_list`,
            `downsample_stride`, `normalize_pos`, optional `sparse_shape`).
        shapes: `shapes.DSVTShapes` derived and validated by the backbone (derived from `model_cfg` alone when None).
        pos_embed_shift_bug: upstream behaviour (spec §3.11 quirk 2, DSVT issue #50): encoder layer i of every block
            gets the embedding of the in-window coordinates of window partition (shift) i, although the block runs
            on partition `block_id % 2`. False (default): both layers of a block embed the coordinates of the
            partition the block actually attends in. The MLPs are the same modules either way
            (`posembed_layers[stage][block][layer]`), so checkpoints load in both modes.

    forward(batch_dict) reads `voxel_features (N, C)` and `voxel_coords (N, 4)` [b, z, y, x] and returns `voxel_info`:
        voxel_feats_stage0 (N, C), voxel_coors_stage{s} (N_s, 4) long;
        batch_win_inds_stage{s}_shift{i} (N_s,), coors_in_win_stage{s}_shift{i} (N_s, 3) [z, y, x];
        set_voxel_inds_stage{s}_shift{i} (2, S, T) long, set_voxel_mask_stage{s}_shift{i} (2, S, T) bool
            (True = duplicate slot), set_voxel_first_stage{s}_shift{i} (2, N_s) long (first slot of each voxel);
        pos_embed_stage{s}_block{b}_shift{i} (N_s, d_model[s]) -- the embedding used by encoder layer i of block b;
        for s >= 1: pooling_mapping_index_stage{s} (N_{s-1},), pooling_index_in_pool_stage{s} (N_{s-1},),
            pooling_preholder_feats_stage{s} zeros (N_s, V, d_model[s-1]), pooling_occupied_stage{s} (N_s, V) bool.
    """

    def __init__(self, model_cfg, shapes=None, pos_embed_shift_bug=False):
        super().__init__()
        self.model_cfg = model_cfg
        if shapes is None:
            shapes = resolve_dsvt_shapes(model_cfg)
        self.shapes = shapes
        self.sparse_shape = list(shapes.sparse_shape)
        self.sparse_shape_list = [list(s) for s in shapes.stage_shapes]
        self.downsample_stride = [list(s) for s in shapes.downsample_strides]
        self.window_shape = [[list(w) for w in stage] for stage in shapes.window_shapes]   # [stage][shift]
        self.shift_list = [[list(s) for s in stage] for stage in shapes.shifts]              # [stage][shift]
        self.d_model = list(model_cfg.d_model)
        self.set_info = [list(info) for info in model_cfg.set_info]
        self.stage_num = len(self.d_model)
        self.normalize_pos = bool(INPUT_LAYER_SCHEMA.get(model_cfg, 'normalize_pos'))
        self.num_shifts = [2] * self.stage_num
        self.pos_embed_shift_bug = bool(pos_embed_shift_bug)
        # Global index of the first block of each stage: block b of stage s runs on partition (offset + b) % 2.
        self.block_offsets = [sum(info[1] for info in self.set_info[:s]) for s in range(self.stage_num)]

        self.posembed_layers = nn.ModuleList()
        for s in range(self.stage_num):
            input_dim = 3 if self.sparse_shape_list[s][2] > 1 else 2
            self.posembed_layers.append(nn.ModuleList([
                nn.ModuleList([PositionEmbeddingLearned(input_dim, self.d_model[s]) for _ in range(self.num_shifts[s])])
                for _ in range(self.set_info[s][1])]))

    def forward(self, batch_dict):
        voxel_info = {'voxel_feats_stage0': batch_dict['voxel_features'],
                      'voxel_coors_stage0': batch_dict['voxel_coords'].long()}
        for s in range(self.stage_num):
            self.window_partition(voxel_info, s)
            self.get_set(voxel_info, s)
            for b in range(self.set_info[s][1]):
                block_shift = (self.block_offsets[s] + b) % 2
                for i in range(self.num_shifts[s]):
                    coords_shift = i if self.pos_embed_shift_bug else block_shift
                    voxel_info[f'pos_embed_stage{s}_block{b}_shift{i}'] = self.get_pos_embed(
                        voxel_info[f'coors_in_win_stage{s}_shift{coords_shift}'], s, b, i, window_shift=coords_shift)
            if s < self.stage_num - 1:
                self.subm_pooling(voxel_info, s)
        return voxel_info

    @torch.no_grad()
    def window_partition(self, voxel_info, stage_id):
        for i in range(self.num_shifts[stage_id]):
            batch_win_inds, coors_in_win = get_window_coors(
                voxel_info[f'voxel_coors_stage{stage_id}'], self.sparse_shape_list[stage_id],
                self.window_shape[stage_id][i], self.shift_list[stage_id][i])
            voxel_info[f'batch_win_inds_stage{stage_id}_shift{i}'] = batch_win_inds
            voxel_info[f'coors_in_win_stage{stage_id}_shift{i}'] = coors_in_win
        return voxel_info

    @torch.no_grad()
    def get_set(self, voxel_info, stage_id):
        set_size = self.set_info[stage_id][0]
        num_voxels = voxel_info[f'voxel_coors_stage{stage_id}'].shape[0]
        for i in range(self.num_shifts[stage_id]):
            inds = get_set_single_shift(voxel_info[f'batch_win_inds_stage{stage_id}_shift{i}'],
                                        voxel_info[f'coors_in_win_stage{stage_id}_shift{i}'],
                                        self.window_shape[stage_id][i], set_size)
            voxel_info[f'set_voxel_inds_stage{stage_id}_shift{i}'] = inds
            voxel_info[f'set_voxel_mask_stage{stage_id}_shift{i}'] = get_set_mask(inds)
            voxel_info[f'set_voxel_first_stage{stage_id}_shift{i}'] = set_to_voxel_index(inds, num_voxels)
        return voxel_info

    def get_pos_embed(self, coors_in_win, stage_id, block_id, shift_id, window_shift=None):
        """Embedding of in-window coordinates `coors_in_win (N, 3)` [z, y, x] relative to the window centre, by the
        MLP `posembed_layers[stage_id][block_id][shift_id]`; the window size is that of partition `window_shift`
        (defaults to `shift_id`, upstream's pairing)."""
        window_shift = shift_id if window_shift is None else window_shift
        win_x, win_y, win_z = self.window_shape[stage_id][window_shift]
        embed_layer = self.posembed_layers[stage_id][block_id][shift_id]
        num_cells = win_x * win_y * win_z
        if not embed_layer.training and num_cells < coors_in_win.shape[0]:
            # Outside training the MLP is a pure function of the discrete in-window position: evaluate it once per
            # window cell and gather (same values, far fewer rows).
            device = coors_in_win.device
            lattice = torch.stack(torch.meshgrid(torch.arange(win_z, device=device), torch.arange(win_y, device=device),
                                                 torch.arange(win_x, device=device), indexing='ij'), -1).view(-1, 3)
            table = self._embed(embed_layer, lattice, win_x, win_y, win_z)
            cell = (coors_in_win[:, 0] * win_y + coors_in_win[:, 1]) * win_x + coors_in_win[:, 2]
            return table[cell]
        return self._embed(embed_layer, coors_in_win, win_x, win_y, win_z)

    def _embed(self, embed_layer, coors_in_win, win_x, win_y, win_z):
        coors = coors_in_win.to(embed_layer.position_embedding_head[0].weight.dtype)
        x = coors[:, 2] - win_x / 2
        y = coors[:, 1] - win_y / 2
        z = coors[:, 0] - win_z / 2
        if self.normalize_pos:
            x = x / win_x * 2 * 3.1415  # upstream's constant
            y = y / win_y * 2 * 3.1415
            z = z / win_z * 2 * 3.1415
        location = torch.stack((x, y), dim=-1) if win_z == 1 else torch.stack((x, y, z), dim=-1)
        return embed_layer(location)

    @torch.no_grad()
    def subm_pooling(self, voxel_info, stage_id):
        stride = self.downsample_stride[stage_id]
        mapping, index_in_pool, pooled_coors = get_pooling_index(
            voxel_info[f'voxel_coors_stage{stage_id}'], self.sparse_shape_list[stage_id], stride)
        num_pooled, pool_volume = pooled_coors.shape[0], math.prod(stride)
        occupied = torch.zeros((num_pooled, pool_volume), dtype=torch.bool, device=mapping.device)
        occupied[mapping, index_in_pool] = True
        voxel_info[f'pooling_mapping_index_stage{stage_id + 1}'] = mapping
        voxel_info[f'pooling_index_in_pool_stage{stage_id + 1}'] = index_in_pool
        voxel_info[f'pooling_preholder_feats_stage{stage_id + 1}'] = voxel_info['voxel_feats_stage0'].new_zeros(
            (num_pooled, pool_volume, self.d_model[stage_id]))
        voxel_info[f'pooling_occupied_stage{stage_id + 1}'] = occupied
        voxel_info[f'voxel_coors_stage{stage_id + 1}'] = pooled_coors
        return voxel_info
