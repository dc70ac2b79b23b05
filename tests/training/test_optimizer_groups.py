"""build_optimizer: every trainable parameter in exactly one group; compat mode skips exactly upstream's params."""
import pytest
import torch
from easydict import EasyDict
from torch import nn

from pcdet.training.optimization import build_optimizer, collect_param_groups, optimizer_param_names


class Block(nn.Module):
    """A non-leaf module that owns a bare nn.Parameter (like DSVT's Stage_ReductionAtt_Block.pos_embedding)."""

    def __init__(self):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, 8))
        self.norm = nn.LayerNorm(8)
        self.ffn = nn.Linear(8, 8)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.block = Block()
        self.frozen = nn.Linear(8, 8)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.head = nn.Linear(8, 2)
        self.tied = nn.Linear(8, 2)
        self.tied.weight = self.head.weight  # shared parameter: must appear once


def _cfg(name, **kw):
    return EasyDict({'OPTIMIZER': name, 'LR': 0.003, 'WEIGHT_DECAY': 0.01, 'MOMENTUM': 0.9, **kw})


def _trainable_ids(model):
    return [id(p) for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize('name', ['adam', 'sgd', 'adam_onecycle', 'adam_cosineanneal'])
@pytest.mark.parametrize('no_decay', [False, True])
def test_every_trainable_parameter_in_exactly_one_group(name, no_decay):
    model = Net()
    opt = build_optimizer(model, _cfg(name, NO_WEIGHT_DECAY_BN_BIAS=no_decay))
    in_groups = [id(p) for g in opt.param_groups for p in g['params']]
    assert sorted(in_groups) == sorted(_trainable_ids(model))
    assert len(in_groups) == len(set(in_groups))
    frozen = {id(p) for p in model.frozen.parameters()}
    assert not frozen & set(in_groups)
    names = set(sum(optimizer_param_names(model, opt), []))
    assert {'attn.in_proj_weight', 'attn.in_proj_bias', 'block.pos_embedding'} <= names


def test_optimizer_types_and_weight_decay_layout():
    model = Net()
    opt = build_optimizer(model, _cfg('adam_onecycle', BETAS=[0.9, 0.99]))
    assert type(opt) is torch.optim.AdamW
    assert [g['group_name'] for g in opt.param_groups] == ['main', 'bn']
    assert all(g['weight_decay'] == 0.01 for g in opt.param_groups)  # upstream bn_wd=True
    assert {id(p) for p in opt.param_groups[1]['params']} == {id(model.bn.weight), id(model.bn.bias)}
    assert type(build_optimizer(model, _cfg('adam'))) is torch.optim.Adam
    assert type(build_optimizer(model, _cfg('sgd'))) is torch.optim.SGD

    opt = build_optimizer(model, _cfg('adam_onecycle', NO_WEIGHT_DECAY_BN_BIAS=True))
    decay, no_decay = opt.param_groups
    assert (decay['weight_decay'], no_decay['weight_decay']) == (0.01, 0.0)
    no_decay_names = set(optimizer_param_names(model, opt)[1])
    assert {'bn.weight', 'bn.bias', 'block.norm.weight', 'block.norm.bias', 'attn.in_proj_bias',
            'attn.out_proj.bias', 'block.ffn.bias', 'head.bias', 'tied.bias', 'conv.bias'} == no_decay_names
    with pytest.raises(ValueError, match='unknown optimizer'):
        build_optimizer(model, _cfg('lamb'))


def _upstream_layer_groups(model):
    """Upstream's fastai grouping: flatten_model (leaf modules only) + split_bn_bias + trainable_params."""
    def flatten(m):
        children = list(m.children())
        return sum(map(flatten, children), []) if children else [m]
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    leaves = flatten(model)
    main = nn.Sequential(*[m for m in leaves if not isinstance(m, bn_types)])
    bns = nn.Sequential(*[m for m in leaves if isinstance(m, bn_types)])
    return [[p for p in g.parameters() if p.requires_grad] for g in (main, bns)]


def test_compat_leaf_module_groups_skip_exactly_upstream_params():
    model = Net()
    opt = build_optimizer(model, _cfg('adam_onecycle', COMPAT_LEAF_MODULE_PARAM_GROUPS=True))
    _, _, skipped = collect_param_groups(model, compat_leaf_modules=True)
    assert sorted(skipped) == ['attn.in_proj_bias', 'attn.in_proj_weight', 'block.pos_embedding']
    upstream = _upstream_layer_groups(model)
    # same groups, same order: an upstream optimizer_state lines up with ours
    assert [[id(p) for p in g['params']] for g in opt.param_groups] == [[id(p) for p in g] for g in upstream]
    covered = {id(p) for g in opt.param_groups for p in g['params']}
    skipped_ids = {id(model.attn.in_proj_weight), id(model.attn.in_proj_bias), id(model.block.pos_embedding)}
    assert covered | skipped_ids == set(_trainable_ids(model)) and not covered & skipped_ids


def test_adamw_step_is_upstream_decoupled_weight_decay():
    """fastai OptimWrapper(true_wd): p *= 1 - lr*wd, then Adam(weight_decay=0) — torch AdamW does the same."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    ref = nn.Linear(4, 2)
    ref.load_state_dict(model.state_dict())
    opt = build_optimizer(model, _cfg('adam_onecycle', WEIGHT_DECAY=0.1))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.003, betas=(0.9, 0.99), weight_decay=0)
    x = torch.randn(5, 4)
    for _ in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
        with torch.no_grad():
            for p in ref.parameters():
                p.mul_(1 - 0.003 * 0.1)
        opt.step()
        ref_opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
