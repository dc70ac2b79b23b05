"""DSVT set-attention blocks (spec §3.4): `DSVTBlock` -> 2 x `DSVT_EncoderLayer` -> `SetAttention`.

Parameter names are upstream's (`encoder_list.<j>.win_attn.self_attn.{in_proj_weight, in_proj_bias, out_proj.*}`,
`win_attn.{linear1, linear2, norm1, norm2}`, `encoder_list.<j>.norm`), so DSVT checkpoints load strictly.

Attention runs through `torch.nn.functional.scaled_dot_product_attention` on every device, with the projection
weights of an `nn.MultiheadAttention` module (`in_proj_weight` rows [0:C], [C:2C], [2C:3C] are Q, K, V). It is the
same math as `nn.MultiheadAttention` (tested to 1e-5) but lets PyTorch pick a fused kernel (flash / memory-efficient
on CUDA, a fused CPU kernel otherwise) and, in `SetAttention`, projects each voxel once instead of once per set slot:
the input projections run on the (N, C) voxels before gathering into (num_sets, set_size, C) sets, and the output
projection after mapping the set outputs back to voxels. `SetAttention.attention_impl = 'mha'` switches one layer to
the literal upstream computation (gather, `nn.MultiheadAttention`, `torch.unique` un-scatter) as a reference.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .set_partition import set_to_voxel_index


def _get_activation_fn(activation):
    """Upstream's activation lookup (`relu`, `gelu`, `glu`)."""
    if activation == 'relu':
        return F.relu
    if activation == 'gelu':
        return F.gelu
    if activation == 'glu':
        return F.glu
    raise RuntimeError(f'activation should be relu/gelu/glu, not {activation}.')


def _check_mha(mha):
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn or not mha.batch_first:
        raise ValueError('SDPA attention supports nn.MultiheadAttention(batch_first=True) with one packed '
                         'in_proj_weight, no bias_k/bias_v and no add_zero_attn')


def _in_proj(mha, chunk):
    """Weight and bias of Q (chunk 0), K (1) or V (2), or a slice like slice(0, 2) for Q and K together."""
    c = mha.embed_dim
    rows = slice(chunk * c, (chunk + 1) * c) if isinstance(chunk, int) else slice(chunk.start * c, chunk.stop * c)
    bias = mha.in_proj_bias[rows] if mha.in_proj_bias is not None else None
    return mha.in_proj_weight[rows], bias


def sdpa_heads(q, k, v, num_heads, key_padding_mask=None, dropout_p=0.0):
    """Multi-head attention on projected tensors. q (B, Lq, C), k/v (B, Lk, C); key_padding_mask (B, Lk) bool,
    True = ignore (nn.MultiheadAttention convention). Returns (B, Lq, C) before the output projection."""
    batch, len_q, channels = q.shape
    head_dim = channels // num_heads
    q = q.view(batch, len_q, num_heads, head_dim).transpose(1, 2)
    k = k.view(batch, k.shape[1], num_heads, head_dim).transpose(1, 2)
    v = v.view(batch, v.shape[1], num_heads, head_dim).transpose(1, 2)
    attn_mask = None if key_padding_mask is None else (~key_padding_mask.bool())[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(batch, len_q, channels)


def multihead_attention(mha, query, key, value, key_padding_mask=None):
    """`mha(query, key, value, key_padding_mask=...)[0]` for a batch_first `nn.MultiheadAttention`, computed with
    SDPA from the module's own weights. query (B, Lq, C), key/value (B, Lk, C), key_padding_mask (B, Lk) bool."""
    _check_mha(mha)
    q = F.linear(query, *_in_proj(mha, 0))
    k = F.linear(key, *_in_proj(mha, 1))
    v = F.linear(value, *_in_proj(mha, 2))
    dropout_p = mha.dropout if mha.training else 0.0
    out = sdpa_heads(q, k, v, mha.num_heads, key_padding_mask, dropout_p)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias)


class SetAttention(nn.Module):
    """Post-norm transformer layer over sets (upstream `SetAttention`).

    forward(src (N, C), pos (N, C), key_padding_mask (S, T) bool, voxel_inds (S, T) long, onnx_export=False,
    voxel_first_index (N,) long | None) -> (N, C):
    sets `f = src[inds]`, `q = k = f + pos[inds]`, `v = f`; attention inside each set with duplicate slots masked;
    each voxel takes the output of its first slot; then `norm1(src + attn)`,
    `norm2(src + linear2(dropout(act(linear1(src)))))`.
    """

    attention_impl = 'sdpa'  # 'mha' = upstream reference computation (for tests and benchmarks)

    def __init__(self, d_model, nhead, dropout, dim_feedforward=2048, activation='relu', batch_first=True,
                 mlp_dropout=0):
        super().__init__()
        self.nhead = nhead
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(mlp_dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.d_model = d_model
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Identity()
        self.dropout2 = nn.Identity()
        self.activation = _get_activation_fn(activation)

    def _attend_sdpa(self, src, pos, key_padding_mask, voxel_inds, voxel_first_index):
        mha = self.self_attn
        _check_mha(mha)
        num_sets, set_size = voxel_inds.shape
        head_dim = self.d_model // self.nhead
        # Project the N voxels (not the S * T >= N set slots), then gather into sets: (S, H, T, D) views.
        # index_select (backward: index_add_) is cheaper than advanced indexing (backward: index_put_ accumulate).
        flat_inds = voxel_inds.reshape(-1)
        qk = F.linear(src if pos is None else src + pos, *_in_proj(mha, slice(0, 2))).index_select(0, flat_inds)
        v = F.linear(src, *_in_proj(mha, 2)).index_select(0, flat_inds)
        q, k = qk.view(num_sets, set_size, 2, self.nhead, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = v.view(num_sets, set_size, self.nhead, head_dim).transpose(1, 2)
        attn_mask = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]
        dropout_p = mha.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(num_sets * set_size, self.d_model)
        if voxel_first_index is None:
            voxel_first_index = set_to_voxel_index(voxel_inds[None], src.shape[0])[0]
        out = out.index_select(0, voxel_first_index)                         # (N, C): first slot of each voxel
        return F.linear(out, mha.out_proj.weight, mha.out_proj.bias)

    def _attend_reference(self, src, pos, key_padding_mask, voxel_inds, onnx_export):
        """Upstream's computation, kept literally as the reference for the SDPA path."""
        set_features = src[voxel_inds]
        query = key = set_features + pos[voxel_inds] if pos is not None else set_features
        src2 = self.self_attn(query, key, set_features, key_padding_mask)[0]
        flatten_inds = voxel_inds.reshape(-1)
        if onnx_export:
            placeholder = torch.zeros_like(src).to(src2.dtype)
            placeholder[flatten_inds] = src2.reshape(-1, self.d_model)
            return placeholder
        unique_flatten_inds, inverse = torch.unique(flatten_inds, return_inverse=True)
        perm = torch.arange(inverse.size(0), dtype=inverse.dtype, device=inverse.device)
        inverse, perm = inverse.flip([0]), perm.flip([0])
        perm = inverse.new_empty(unique_flatten_inds.size(0)).scatter_(0, inverse, perm)
        return src2.reshape(-1, self.d_model)[perm]

    def forward(self, src, pos=None, key_padding_mask=None, voxel_inds=None, onnx_export=False,
                voxel_first_index=None):
        if self.attention_impl == 'mha' or onnx_export:
            src2 = self._attend_reference(src, pos, key_padding_mask, voxel_inds, onnx_export)
        else:
            src2 = self._attend_sdpa(src, pos, key_padding_mask, voxel_inds, voxel_first_index)
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class DSVT_EncoderLayer(nn.Module):  # noqa: N801 (upstream name)
    """`norm(SetAttention(src) + src)`."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation='relu', batch_first=True,
                 mlp_dropout=0):
        super().__init__()
        self.win_attn = SetAttention(d_model, nhead, dropout, dim_feedforward, activation, batch_first, mlp_dropout)
        self.norm = nn.LayerNorm(d_model)
        self.d_model = d_model

    def forward(self, src, set_voxel_inds, set_voxel_masks, pos=None, onnx_export=False, set_voxel_first=None):
        identity = src
        src = self.win_attn(src, pos, set_voxel_masks, set_voxel_inds, onnx_export=onnx_export,
                            voxel_first_index=set_voxel_first)
        return self.norm(src + identity)


class DSVTBlock(nn.Module):
    """Two encoder layers on the window partition `shift = block_id % 2`: layer 0 attends within the y-major sets,
    layer 1 within the x-major ("rotated") sets of that partition.

    forward(src (N, C), set_voxel_inds_list [shift][order] (S, T), set_voxel_masks_list (same), pos_embed_list
    [layer] (N, C), block_id (global block counter), set_voxel_first_list [shift][order] (N,) | None) -> (N, C).
    Layer i always takes `pos_embed_list[i]`; which window partition those embeddings were computed in is decided by
    the input layer (`COMPAT.POS_EMBED_SHIFT_BUG`).
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation='relu', batch_first=True):
        super().__init__()
        self.encoder_list = nn.ModuleList([
            DSVT_EncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, batch_first) for _ in range(2)])

    def forward(self, src, set_voxel_inds_list, set_voxel_masks_list, pos_embed_list, block_id,
                set_voxel_first_list=None, layer_outputs=None):
        """`layer_outputs`: an optional list that receives each encoder layer's output (N, C) in order (the
        `block_layer_i` activations CKA is computed on)."""
        shift_id = block_id % 2
        output = src
        for i, layer in enumerate(self.encoder_list):
            first = None if set_voxel_first_list is None else set_voxel_first_list[shift_id][i]
            output = layer(output, set_voxel_inds_list[shift_id][i], set_voxel_masks_list[shift_id][i],
                           pos_embed_list[i], set_voxel_first=first)
            if layer_outputs is not None:
                layer_outputs.append(output)
        return output
