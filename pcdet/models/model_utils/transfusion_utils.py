"""Building blocks of the TransFusion-L head (OpenPCDet `model_utils/transfusion_utils.py` + `basic_block_2d.py`).

Module and parameter names are upstream's, so an OpenPCDet / DSVT-repo checkpoint loads strictly:

* `BasicBlock2D(C_in, C_out, **conv_kwargs)`: `conv` (Conv2d) -> `bn` (BatchNorm2d) -> ReLU.
* `PositionEmbeddingLearned(d_in, C)`: `position_embedding_head.{0: Conv1d(d_in, C), 1: BN1d, 2: ReLU, 3: Conv1d(C, C)}`
  applied to raw (x, y) positions `(B, N, d_in)` -> `(B, C, N)`.
* `SeparateHead_Transfusion`: the prediction FFNs (Conv1d k=1 branches, names `<head>.{0.0, 0.1, 1}`).
* `TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, self_posembed, cross_posembed)`:
  post-norm `self_attn` (nn.MultiheadAttention) -> `norm1`, `multihead_attn` (cross) -> `norm2`, FFN
  `linear2(dropout(act(linear1(q))))` -> `norm3`. Query and key *values* also carry their position embeddings
  (upstream's `with_pos_embed` on q, k and v).

Difference from upstream: `clip_sigmoid` does not apply `sigmoid_` in place (upstream overwrote the dense heatmap
logits of the prediction dict).
"""
import torch
import torch.nn.functional as F
from torch import nn


def clip_sigmoid(x, eps=1e-4):
    """`clamp(sigmoid(x), eps, 1 - eps)` (not in place)."""
    return torch.clamp(x.sigmoid(), min=eps, max=1 - eps)


class BasicBlock2D(nn.Module):
    """Conv2d (`conv`, kwargs passed through) -> BatchNorm2d (`bn`) -> ReLU."""

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels=in_channels, out_channels=out_channels, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, features):
        return self.relu(self.bn(self.conv(features)))


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute position embedding: `(B, N, d_in)` positions -> `(B, C, N)`."""

    def __init__(self, input_channel, num_pos_feats=288):
        super().__init__()
        self.position_embedding_head = nn.Sequential(
            nn.Conv1d(input_channel, num_pos_feats, kernel_size=1),
            nn.BatchNorm1d(num_pos_feats),
            nn.ReLU(inplace=True),
            nn.Conv1d(num_pos_feats, num_pos_feats, kernel_size=1))

    def forward(self, xyz):
        return self.position_embedding_head(xyz.transpose(1, 2).contiguous())


_ACTIVATIONS = {'relu': F.relu, 'gelu': F.gelu, 'glu': F.glu}


class TransformerDecoderLayer(nn.Module):
    """One post-norm decoder layer (self-attention, cross-attention, FFN); see the module docstring.

    `forward(query (B, C, P), key (B, C, N), query_pos (B, P, 2), key_pos (B, N, 2), key_padding_mask (B, N) or
    None, attn_mask=None) -> (B, C, P)`.
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation='relu', self_posembed=None,
                 cross_posembed=None, cross_only=False):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f'ACTIVATION must be one of {sorted(_ACTIVATIONS)}, got {activation!r}')
        self.cross_only = cross_only
        if not self.cross_only:
            self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _ACTIVATIONS[activation]
        self.self_posembed = self_posembed
        self.cross_posembed = cross_posembed

    @staticmethod
    def with_pos_embed(tensor, pos_embed):
        return tensor if pos_embed is None else tensor + pos_embed

    def forward(self, query, key, query_pos, key_pos, key_padding_mask=None, attn_mask=None):
        # (B, C, L) -> (L, B, C), the layout nn.MultiheadAttention expects by default
        query_pos_embed = self.self_posembed(query_pos).permute(2, 0, 1) if self.self_posembed is not None else None
        key_pos_embed = self.cross_posembed(key_pos).permute(2, 0, 1) if self.cross_posembed is not None else None
        query = query.permute(2, 0, 1)
        key = key.permute(2, 0, 1)

        if not self.cross_only:
            q = k = v = self.with_pos_embed(query, query_pos_embed)
            query = self.norm1(query + self.dropout1(self.self_attn(q, k, value=v, need_weights=False)[0]))

        key_with_pos = self.with_pos_embed(key, key_pos_embed)
        query2 = self.multihead_attn(query=self.with_pos_embed(query, query_pos_embed), key=key_with_pos,
                                     value=key_with_pos, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                                     need_weights=False)[0]
        query = self.norm2(query + self.dropout2(query2))
        query2 = self.linear2(self.dropout(self.activation(self.linear1(query))))
        query = self.norm3(query + self.dropout3(query2))
        return query.permute(1, 2, 0)


class SeparateHead_Transfusion(nn.Module):  # noqa: N801  (upstream name)
    """Per output: `(num_conv - 1) x [Conv1d -> BN1d -> ReLU]` (hidden `head_channels`) + `Conv1d(-> out, bias)`."""

    def __init__(self, input_channels, head_channels, kernel_size, sep_head_dict, init_bias=-2.19, use_bias=False,
                 bias_init_key='hm'):
        super().__init__()
        self.sep_head_dict = sep_head_dict
        for cur_name in self.sep_head_dict:
            output_channels = self.sep_head_dict[cur_name]['out_channels']
            num_conv = self.sep_head_dict[cur_name]['num_conv']
            fc_list = []
            for k in range(num_conv - 1):
                fc_list.append(nn.Sequential(
                    nn.Conv1d(input_channels if k == 0 else head_channels, head_channels, kernel_size, stride=1,
                              padding=kernel_size // 2, bias=use_bias),
                    nn.BatchNorm1d(head_channels),
                    nn.ReLU()))
            fc_list.append(nn.Conv1d(head_channels if num_conv > 1 else input_channels, output_channels, kernel_size,
                                     stride=1, padding=kernel_size // 2, bias=True))
            fc = nn.Sequential(*fc_list)
            if bias_init_key in cur_name:  # OpenPCDet tests 'hm' (never matches 'heatmap'); DSVT tests 'heatmap'
                fc[-1].bias.data.fill_(init_bias)
            self.__setattr__(cur_name, fc)

    def forward(self, x):
        return {cur_name: self.__getattr__(cur_name)(x) for cur_name in self.sep_head_dict}
