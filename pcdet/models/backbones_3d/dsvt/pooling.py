"""Stage reduction between DSVT stages (voxel variant, spec §3.3 "pooling indices" and §3.4 "stage reduction").

Voxels of stage s are grouped into pools of `downsample_stride[s]` cells; each pool becomes one voxel of stage
s+1. `get_pooling_index` computes the grouping (no grad); the reduction blocks turn the `(N', V, C)` slot tensor of
each pool (zeros in empty slots) into one feature.

Upstream names are kept so checkpoints load: `Stage_ReductionAtt_Block` -> `stage_<s>_reduction.{norm, self_attn,
pos_embedding}`, `Stage_Reduction_Block` -> `stage_<s>_reduction.{linear1, norm}`.
"""
import math

import torch
from torch import nn

from .blocks import multihead_attention


@torch.no_grad()
def get_pooling_index(coors, sparse_shape, pool_shape):
    """Pool membership of every voxel.

    Args:
        coors: (N, 4) long [b, z, y, x] of stage s. sparse_shape: (x, y, z) of stage s. pool_shape: (x, y, z) stride.
    Returns:
        mapping (N,) long: contiguous pool id (pools sorted by b, then x, y, z of the pool, as upstream);
        index_in_pool (N,) long: `(x % px) * (py * pz) + (y % py) * pz + z % pz`;
        pooled_coors (N', 4) long [b, z // pz, y // py, x // px] of each pool (stage s+1 coordinates).
    """
    px, py, pz = (int(v) for v in pool_shape)
    nx, ny, nz = (int(math.ceil(s / p)) for s, p in zip(sparse_shape, pool_shape))
    coors = coors.long()
    b, z, y, x = coors.unbind(1)
    pooled_ids = b * (nx * ny * nz) + (x // px) * (ny * nz) + (y // py) * nz + z // pz
    index_in_pool = (x % px) * (py * pz) + (y % py) * pz + z % pz
    unique_ids, mapping = torch.unique(pooled_ids, return_inverse=True)
    pooled_coors = torch.stack((unique_ids // (nx * ny * nz), unique_ids % nz, (unique_ids // nz) % ny,
                                (unique_ids // (ny * nz)) % nx), dim=1)
    return mapping, index_in_pool, pooled_coors


class Stage_Reduction_Block(nn.Module):  # noqa: N801 (upstream name)
    """`reduction_type: linear`: `LayerNorm(Linear(V * C -> C', bias=False)(concatenated slots))`."""

    def __init__(self, input_channel, output_channel):
        super().__init__()
        self.linear1 = nn.Linear(input_channel, output_channel, bias=False)
        self.norm = nn.LayerNorm(output_channel)

    def forward(self, slots, occupied=None):
        """slots (N', V, C) -> (N', C')."""
        return self.norm(self.linear1(slots.flatten(1)))


class Stage_ReductionMax_Block(nn.Module):  # noqa: N801
    """`reduction_type: maxpool`: channel-wise max over the slots (no parameters, like upstream's MaxPool1d).
    Upstream's zeros in empty slots take part in the max; with `mask_empty_slots` they do not."""

    def __init__(self, mask_empty_slots=True):
        super().__init__()
        self.mask_empty_slots = mask_empty_slots

    def forward(self, slots, occupied=None):
        if self.mask_empty_slots and occupied is not None:
            slots = slots.masked_fill(~occupied[:, :, None], float('-inf'))
        return slots.max(dim=1)[0]


class Stage_ReductionAtt_Block(nn.Module):  # noqa: N801 (upstream name)
    """`reduction_type: attention`: one query per pool attends to the pool's slots.

    query = channel-wise max over the slots; key = slots + `pos_embedding` (V, C); value = slots;
    `nn.MultiheadAttention(C, 8 heads)` (run through SDPA); output `norm(attn + query)`.

    `mask_empty_slots=True` (default, correct): empty slots neither take part in the max nor are attended to.
    `False` reproduces upstream (spec §3.11 quirk 5): empty slots are zeros, included in the max (so the query is
    >= 0 channel-wise whenever a slot is empty) and attended to with an all-False key mask.
    """

    def __init__(self, input_channel, pool_volume, mask_empty_slots=True):
        super().__init__()
        self.pool_volume = pool_volume
        self.mask_empty_slots = mask_empty_slots
        self.norm = nn.LayerNorm(input_channel)
        self.self_attn = nn.MultiheadAttention(input_channel, 8, batch_first=True)
        self.pos_embedding = nn.Parameter(torch.randn(pool_volume, input_channel))
        nn.init.normal_(self.pos_embedding, std=.01)

    def forward(self, slots, occupied=None):
        """slots (N', V, C) with zeros in empty slots; occupied (N', V) bool -> (N', C)."""
        mask = self.mask_empty_slots and occupied is not None
        query_src = slots.masked_fill(~occupied[:, :, None], float('-inf')) if mask else slots
        query = query_src.max(dim=1, keepdim=True)[0]
        key = slots + self.pos_embedding.unsqueeze(0).to(slots.dtype)
        output = multihead_attention(self.self_attn, query, key, slots,
                                     key_padding_mask=~occupied if mask else None)
        return self.norm(output + query).squeeze(1)
