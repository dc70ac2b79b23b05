"""SDPA attention with nn.MultiheadAttention weights == nn.MultiheadAttention (spec §3.4, §4.3), set attention ==
upstream's literal computation, and the attention pooling block in both COMPAT modes."""
import pytest
import torch
from torch import nn

from pcdet.models.backbones_3d.dsvt.blocks import SetAttention, multihead_attention
from pcdet.models.backbones_3d.dsvt.pooling import Stage_ReductionAtt_Block
from pcdet.models.backbones_3d.dsvt.set_partition import (
    get_set_mask,
    get_set_single_shift,
    get_window_coors,
    set_to_voxel_index,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def random_key_padding_mask(gen, batch, length):
    mask = torch.rand(batch, length, generator=gen) < 0.4
    mask[:, 0] = False          # nn.MultiheadAttention gives NaN rows for fully masked keys; sets never have them
    return mask


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('len_q,len_k', [(7, 7), (1, 5)])
def test_sdpa_equals_multihead_attention(train, len_q, len_k):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    nn.init.normal_(mha.in_proj_bias, std=0.1)
    nn.init.normal_(mha.out_proj.bias, std=0.1)
    mha.train(train)
    query = torch.randn(11, len_q, 32, generator=gen)
    key = torch.randn(11, len_k, 32, generator=gen)
    value = torch.randn(11, len_k, 32, generator=gen)
    mask = random_key_padding_mask(gen, 11, len_k)
    for kpm in (mask, None):
        expected = mha(query, key, value, key_padding_mask=kpm)[0]
        got = multihead_attention(mha, query, key, value, key_padding_mask=kpm)
        torch.testing.assert_close(got, expected, **TOL)


def test_sdpa_gradients_equal_multihead_attention():
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(5, 6, 16, generator=gen, requires_grad=True)
    mask = random_key_padding_mask(gen, 5, 6)
    grads = []
    for fn in (lambda: mha(x, x, x, key_padding_mask=mask)[0], lambda: multihead_attention(mha, x, x, x, mask)):
        mha.zero_grad()
        x.grad = None
        fn().square().sum().backward()
        grads.append([x.grad.clone(), mha.in_proj_weight.grad.clone(), mha.out_proj.weight.grad.clone()])
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, **TOL)


def make_sets(seed, num=300):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randperm(2 * 30 * 30, generator=gen)[:num]
    coords = torch.stack((keys // 900, torch.zeros_like(keys), (keys // 30) % 30, keys % 30), dim=1)
    win_inds, in_win = get_window_coors(coords, (30, 30, 1), (8, 8, 1), (4, 4, 0))
    inds = get_set_single_shift(win_inds, in_win, (8, 8, 1), 12)
    return inds, get_set_mask(inds)


@pytest.mark.parametrize('train', [True, False])
def test_set_attention_sdpa_equals_upstream_reference(train):
    torch.manual_seed(2)
    layer = SetAttention(32, 4, 0.0, 64, 'gelu').train(train)
    nn.init.normal_(layer.self_attn.in_proj_bias, std=0.1)
    inds, mask = make_sets(2)
    src, pos = torch.randn(300, 32), torch.randn(300, 32)
    first = set_to_voxel_index(inds, 300)
    for order in range(2):
        layer.attention_impl = 'mha'
        expected = layer(src, pos, mask[order], inds[order])
        layer.attention_impl = 'sdpa'
        torch.testing.assert_close(layer(src, pos, mask[order], inds[order], voxel_first_index=first[order]),
                                   expected, **TOL)
        torch.testing.assert_close(layer(src, pos, mask[order], inds[order]), expected, **TOL)
    assert type(layer).attention_impl == 'sdpa'


def upstream_reduction(block, slots):
    """Upstream `Stage_ReductionAtt_Block.forward` on (N', C, V) input with its all-zero key mask."""
    x = slots.permute(0, 2, 1)
    query = nn.functional.max_pool1d(x, block.pool_volume).permute(0, 2, 1)
    key = x.permute(0, 2, 1) + block.pos_embedding.unsqueeze(0).repeat(query.shape[0], 1, 1)
    zero_mask = torch.zeros(x.shape[0], block.pool_volume, dtype=torch.bool)
    out = block.self_attn(query, key, x.permute(0, 2, 1), zero_mask)[0]
    return block.norm(out + query).squeeze(1)


def pool_inputs(seed, full):
    gen = torch.Generator().manual_seed(seed)
    occupied = torch.ones(20, 4, dtype=torch.bool) if full else torch.rand(20, 4, generator=gen) < 0.5
    occupied[:, 1] = True
    slots = torch.randn(20, 4, 32, generator=gen) * occupied[..., None]
    return slots, occupied


def test_attention_pooling_compat_mode_equals_upstream():
    torch.manual_seed(3)
    block = Stage_ReductionAtt_Block(32, 4, mask_empty_slots=False)
    slots, occupied = pool_inputs(3, full=False)
    torch.testing.assert_close(block(slots, occupied), upstream_reduction(block, slots), **TOL)


def test_attention_pooling_masks_empty_slots_only_where_there_are_some():
    torch.manual_seed(4)
    compat = Stage_ReductionAtt_Block(32, 4, mask_empty_slots=False)
    correct = Stage_ReductionAtt_Block(32, 4, mask_empty_slots=True)
    correct.load_state_dict(compat.state_dict())
    slots, occupied = pool_inputs(4, full=True)
    torch.testing.assert_close(correct(slots, occupied), compat(slots, occupied), **TOL)

    slots, occupied = pool_inputs(5, full=False)
    partial = ~occupied.all(dim=1)
    out_correct, out_compat = correct(slots, occupied), compat(slots, occupied)
    torch.testing.assert_close(out_correct[~partial], out_compat[~partial], **TOL)
    assert (out_correct[partial] - out_compat[partial]).abs().amax(dim=1).min() > 1e-4
    # Correct mode ignores whatever sits in empty slots.
    garbage = slots + 5.0 * torch.randn_like(slots) * (~occupied[..., None])
    torch.testing.assert_close(correct(garbage, occupied), out_correct, **TOL)
