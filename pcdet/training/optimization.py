"""Optimizers (spec §1.9): parameter groups built from `named_parameters()` so nothing is silently left out.

    build_optimizer(model, optim_cfg) -> torch.optim.Optimizer
    collect_param_groups(model, no_decay_bn_bias=False, compat_leaf_modules=False) -> (groups, skipped_names)

`optim_cfg` keys (the `OPTIMIZATION` block):
    OPTIMIZER        adam | sgd | adam_onecycle | adam_cosineanneal
    LR, WEIGHT_DECAY, MOMENTUM (sgd), BETAS (adam_*; default (0.9, 0.99) like upstream's fastai wrapper)
    NO_WEIGHT_DECAY_BN_BIAS           False (upstream: `bn_wd=True`, every parameter decays)
    COMPAT_LEAF_MODULE_PARAM_GROUPS   False; True reproduces upstream's `flatten_model` grouping, which only sees
                                      parameters of *leaf* modules: `nn.MultiheadAttention.in_proj_weight/bias`
                                      and `nn.Parameter`s held by a module that has children are never updated.
                                      The published DSVT/TransFusion numbers were trained that way (spec §1.9).

Optimizer semantics:
* `adam`: `torch.optim.Adam` with coupled L2 weight decay (as upstream).
* `sgd`: `torch.optim.SGD(momentum=MOMENTUM)` with coupled L2 weight decay (as upstream).
* `adam_onecycle`, `adam_cosineanneal`: `torch.optim.AdamW` (decoupled `p *= 1 - lr * wd` before the Adam update,
  which is what upstream's fastai `OptimWrapper(true_wd=True)` does) with two groups in upstream's order:
  `[non-BatchNorm params, BatchNorm1d/2d/3d params]` (or `[decay, no_decay]` with NO_WEIGHT_DECAY_BN_BIAS), so an
  upstream `optimizer_state` loads onto a compat-mode optimizer.
  The learning rate and beta1 are driven by the scheduler (`pcdet.training.schedulers`).

Frozen parameters (`requires_grad=False` at build time) are in no group, so weight decay never touches them
(upstream decays them too, OPCD #845). Each group carries a `group_name` entry for logs.
"""
import logging

import torch
from torch import nn

from ..config_schema import REQUIRED, Schema

# Upstream's split (fastai `bn_types`): only these go to the second group; LayerNorm and SyncBatchNorm do not.
UPSTREAM_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# With NO_WEIGHT_DECAY_BN_BIAS every normalisation layer's parameters (and every bias) are exempt from decay.
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
              nn.LocalResponseNorm)
ADAMW_OPTIMIZERS = ('adam_onecycle', 'adam_cosineanneal')
SUPPORTED_OPTIMIZERS = ('adam', 'sgd') + ADAMW_OPTIMIZERS

# Every OPTIMIZATION key, read here, in schedulers.py, train_loop.py and the tools.
OPTIMIZATION_SCHEMA = Schema('OPTIMIZATION', {
    'OPTIMIZER': REQUIRED,                      # adam | sgd | adam_onecycle | adam_cosineanneal
    'LR': REQUIRED,
    'NUM_EPOCHS': REQUIRED,
    'BATCH_SIZE_PER_GPU': REQUIRED,
    'WEIGHT_DECAY': 0.0,
    'MOMENTUM': 0.9,                            # sgd
    'BETAS': None,                              # adamw family; None: (0.9, 0.99)
    'NO_WEIGHT_DECAY_BN_BIAS': False,
    'COMPAT_LEAF_MODULE_PARAM_GROUPS': False,   # upstream adam_onecycle parameter collection
    'MOMS': [0.95, 0.85],                       # one-cycle / cosine momentum range
    'DIV_FACTOR': 10,
    'PCT_START': 0.4,
    'WARMUP_ITER': 0,                           # adam_cosineanneal
    'LR_WARMUP': False,                         # step decay warm-up
    'WARMUP_EPOCH': 1,
    'DECAY_STEP_LIST': [],
    'LR_DECAY': 0.1,
    'LR_CLIP': 0.0,
    'GRAD_NORM_CLIP': 0,                        # 0: no clipping
    'MAX_CONSECUTIVE_NONFINITE': 100,           # skipped non-finite steps in a row before training stops
    'AMP': None,                                # bf16 | fp16 | off
    'USE_AMP': False,                           # upstream's fp16 switch
    'LOSS_SCALE_FP16': None,                    # initial fp16 loss scale; None: 2**16
    'FIND_UNUSED_PARAMETERS': False,            # DDP
})

logger = logging.getLogger('pcdet')


def _unwrap(model):
    return model.module if hasattr(model, 'module') and isinstance(model.module, nn.Module) else model


def _owned_parameters(model):
    """`(qualified_name, param, owner_module)` for every parameter exactly once (shared parameters: first name)."""
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            yield (f'{module_name}.{param_name}' if module_name else param_name), param, module


def _leaf_module_param_ids(model):
    """Parameters upstream's `flatten_model` + `trainable_params` would see: those of modules without children."""
    ids = set()
    for module in model.modules():
        if len(list(module.children())) == 0:
            ids.update(id(p) for p in module.parameters())
    return ids


def collect_param_groups(model, no_decay_bn_bias=False, compat_leaf_modules=False):
    """Split trainable parameters into `(main, second)` lists of `(name, param)`.

    `second` holds BatchNorm1d/2d/3d parameters (upstream's split), or, with `no_decay_bn_bias`, the parameters of
    every normalisation layer (BatchNorm incl. SyncBatchNorm, LayerNorm, GroupNorm, InstanceNorm) and every bias.
    Returns `(main, second, skipped)` where `skipped` names the trainable parameters left out by the compat mode.
    """
    model = _unwrap(model)
    leaf_ids = _leaf_module_param_ids(model) if compat_leaf_modules else None
    main, second, skipped = [], [], []
    for name, param, owner in _owned_parameters(model):
        if not param.requires_grad:
            continue
        if leaf_ids is not None and id(param) not in leaf_ids:
            skipped.append(name)
            continue
        if no_decay_bn_bias:
            to_second = isinstance(owner, NORM_TYPES) or name.rsplit('.', 1)[-1].endswith('bias')
        else:
            to_second = isinstance(owner, UPSTREAM_BN_TYPES)
        if to_second:
            second.append((name, param))
        else:
            main.append((name, param))
    return main, second, skipped


def build_optimizer(model, optim_cfg):
    """Build the optimizer named by `optim_cfg.OPTIMIZER` (see the module docstring)."""
    name = optim_cfg.OPTIMIZER
    if name not in SUPPORTED_OPTIMIZERS:
        raise ValueError(f'OPTIMIZATION.OPTIMIZER: unknown optimizer {name!r}; supported: {SUPPORTED_OPTIMIZERS}')
    lr = float(optim_cfg.LR)
    read = OPTIMIZATION_SCHEMA.get
    weight_decay = float(read(optim_cfg, 'WEIGHT_DECAY') or 0.0)
    no_decay = bool(read(optim_cfg, 'NO_WEIGHT_DECAY_BN_BIAS'))
    compat = bool(read(optim_cfg, 'COMPAT_LEAF_MODULE_PARAM_GROUPS'))

    main, second, skipped = collect_param_groups(model, no_decay_bn_bias=no_decay, compat_leaf_modules=compat)
    if compat and skipped:
        logger.warning('OPTIMIZATION.COMPAT_LEAF_MODULE_PARAM_GROUPS=True: %d trainable parameter tensor(s) are '
                       'NOT optimized (upstream adam_onecycle behaviour): %s', len(skipped), ', '.join(skipped))
    if not main and not second:
        raise ValueError('build_optimizer: the model has no trainable parameters')

    def group(named, group_name, wd):
        return {'params': [p for _, p in named], 'lr': lr, 'weight_decay': wd, 'group_name': group_name}

    if name in ADAMW_OPTIMIZERS:
        # Upstream always builds two groups (BN split); keep that layout so optimizer states line up.
        groups = [group(main, 'decay' if no_decay else 'main', weight_decay),
                  group(second, 'no_decay' if no_decay else 'bn', 0.0 if no_decay else weight_decay)]
        betas = tuple(read(optim_cfg, 'BETAS') or (0.9, 0.99))
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)

    # adam / sgd: upstream uses `model.parameters()`, i.e. one group, unless no-decay is requested.
    if no_decay:
        groups = [group(main, 'decay', weight_decay), group(second, 'no_decay', 0.0)]
    else:
        groups = [group(main + second, 'main', weight_decay)]
    if name == 'adam':
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=float(read(optim_cfg, 'MOMENTUM')))


def optimizer_param_names(model, optimizer):
    """Names of the parameters in each optimizer group (for logs and tests)."""
    names = {id(p): n for n, p, _ in _owned_parameters(_unwrap(model))}
    return [[names.get(id(p), '<unnamed>') for p in g['params']] for g in optimizer.param_groups]
