"""Schedulers follow the spec formulas, share one interface, and resume from their state."""
import math

import pytest
import torch
from easydict import EasyDict

from pcdet.training.schedulers import CosineAnnealing, OneCycle, StepDecay, annealing_cos, build_scheduler


def _opt(kind='adamw'):
    params = [torch.nn.Parameter(torch.zeros(2))]
    if kind == 'sgd':
        return torch.optim.SGD([{'params': params}, {'params': []}], lr=1.0, momentum=0.9)
    return torch.optim.AdamW([{'params': params}, {'params': []}], lr=1.0, betas=(0.9, 0.99))


def _cos(start, end, pct):
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def test_onecycle_matches_formula_lr_and_beta1():
    opt = _opt()
    total, lr_max, div, pct = 100, 0.003, 10.0, 0.4
    sched = OneCycle(opt, total, lr_max, (0.95, 0.85), div, pct)
    assert opt.param_groups[0]['lr'] == pytest.approx(lr_max / div)  # set at construction, like upstream
    a1 = int(total * pct)
    for it in [0, 1, 17, a1 - 1, a1, a1 + 1, 77, total - 1]:
        sched.step(it)
        if it < a1:
            lr, mom = _cos(lr_max / div, lr_max, it / a1), _cos(0.95, 0.85, it / a1)
        else:
            p = (it - a1) / (total - a1)
            lr, mom = _cos(lr_max, lr_max / div / 1e4, p), _cos(0.85, 0.95, p)
        for group in opt.param_groups:
            assert group['lr'] == pytest.approx(lr, rel=1e-12)
            assert group['betas'] == (pytest.approx(mom, rel=1e-12), 0.99)
    assert annealing_cos(1.0, 0.0, 0.5) == pytest.approx(0.5)
    sched.step(a1)
    assert opt.param_groups[0]['lr'] == pytest.approx(lr_max)


def test_cosine_annealing_warmup_then_per_epoch_cosine():
    opt = _opt()
    sched = CosineAnnealing(opt, total_iters_each_epoch=10, total_epochs=5, lr_max=0.01, moms=(0.95, 0.85),
                            pct_start=0.4, warmup_iter=4)
    assert [sched.lr_at(i) for i in range(4)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert sched.lr_at(4) == pytest.approx(0.01)  # epoch 0 of the cosine
    assert sched.lr_at(25) == pytest.approx(_cos(0.01, 1e-5, 2 / 5))
    assert sched.lr_at(29) == sched.lr_at(20)  # constant inside an epoch
    sched.step(12)
    assert opt.param_groups[0]['betas'][0] == pytest.approx(_cos(0.95, 0.85, 12 / 20))


def test_step_decay_with_clip_and_warmup_no_lambdalr():
    opt = _opt('sgd')
    cfg = EasyDict(OPTIMIZER='sgd', LR=0.1, DECAY_STEP_LIST=[2, 4], LR_DECAY=0.1, LR_CLIP=0.002,
                   LR_WARMUP=True, WARMUP_EPOCH=1, DIV_FACTOR=10)
    sched = build_scheduler(opt, total_iters_each_epoch=5, total_epochs=6, optim_cfg=cfg)
    assert isinstance(sched, StepDecay)
    assert sched.lr_at(0) == pytest.approx(0.01)  # LR / DIV_FACTOR
    assert sched.lr_at(3) == pytest.approx(0.01 + 0.09 * (1 - math.cos(math.pi * 3 / 5)) / 2)
    assert sched.lr_at(5) == pytest.approx(0.1)
    assert sched.lr_at(9) == pytest.approx(0.1)
    assert sched.lr_at(10) == pytest.approx(0.01)
    assert sched.lr_at(20) == pytest.approx(0.002)  # 0.001 clipped to LR_CLIP
    for it in range(30):  # one interface: step(iteration) never raises (upstream's LambdaLR.step(it, epoch) did)
        sched.step(it)
    assert opt.param_groups[0]['momentum'] == 0.9  # step decay leaves momentum alone


@pytest.mark.parametrize('name', ['adam_onecycle', 'adam_cosineanneal', 'adam'])
def test_state_dict_resume_continues_the_schedule(name):
    cfg = EasyDict(OPTIMIZER=name, LR=0.003, MOMS=[0.95, 0.85], PCT_START=0.4, DIV_FACTOR=10, WARMUP_ITER=3,
                   DECAY_STEP_LIST=[1], LR_DECAY=0.5)
    opt_a, opt_b = _opt(), _opt()
    a = build_scheduler(opt_a, 7, 3, cfg)
    for it in range(9):
        a.step(it)
    state = a.state_dict()
    b = build_scheduler(opt_b, 7, 3, cfg)
    b.load_state_dict(state)
    assert b.last_iteration == 8 and b.resume_mismatch == {}
    assert opt_b.param_groups[0]['lr'] == opt_a.param_groups[0]['lr']
    for _ in range(5):
        assert b.step() == a.step()  # step() without an argument continues at last + 1
        assert opt_a.param_groups[0]['betas'] == opt_b.param_groups[0]['betas']
    changed = build_scheduler(_opt(), 7, 4, cfg)  # e.g. --epochs raised on resume: config wins, mismatch reported
    changed.load_state_dict(state)
    if name != 'adam':
        assert changed.resume_mismatch
