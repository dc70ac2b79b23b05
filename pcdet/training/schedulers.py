"""Learning-rate (and momentum) schedules with ONE interface (spec §1.9).

Every scheduler is a pure function of the global iteration (0-based count of optimizer steps, the same number
OpenPCDet calls `accumulated_iter`), applied to all param groups:

    scheduler.step(iteration=None)   # set lr (and beta1/momentum) for `iteration`; None = last + 1; returns the lr
    scheduler.lr_at(iteration)       # the formula, without touching the optimizer
    scheduler.state_dict() / load_state_dict(state)

`state_dict()` stores `last_iteration` and the hyper-parameters. On `load_state_dict` the *current* config wins
(changing `--epochs` on resume is legitimate); hyper-parameters that differ from the saved ones are listed in
`scheduler.resume_mismatch` so the caller can log them.

    build_scheduler(optimizer, total_iters_each_epoch, total_epochs, optim_cfg) -> scheduler

* `adam_onecycle` -> OneCycle(LR, MOMS, DIV_FACTOR, PCT_START); `annealing_cos(a, b, p) = b + (a - b)/2 (cos(πp) + 1)`:
  phase 1 (iterations [0, a1), a1 = int(total * PCT_START)): lr `LR/DIV -> LR`, beta1 `MOMS[0] -> MOMS[1]`;
  phase 2 ([a1, total)): lr `LR -> LR/DIV/1e4`, beta1 `MOMS[1] -> MOMS[0]` (upstream's fastai schedule).
* `adam_cosineanneal` -> CosineAnnealing: lr `LR * (it + 1) / WARMUP_ITER` during warmup, then a per-epoch cosine
  from LR to `LR * 1e-3`; beta1 follows the OneCycle momentum phases (MOMS, PCT_START).
* `adam` / `sgd` -> StepDecay: `LR * max(LR_DECAY ** #{d in DECAY_STEP_LIST: epoch_float >= d}, LR_CLIP / LR)`,
  decay points at `d * total_iters_each_epoch` iterations; with `LR_WARMUP: True` a cosine warmup from
  `LR / DIV_FACTOR` to LR over `WARMUP_EPOCH` epochs first. (Upstream's LambdaLR/CosineWarmupLR path is broken at
  HEAD: `step(it, epoch)` raises TypeError and `len(int)` in the warmup branch.)
"""
import math

SCHEDULER_OPTIMIZERS = {'adam_onecycle': 'OneCycle', 'adam_cosineanneal': 'CosineAnnealing'}


def annealing_cos(start, end, pct):
    """Cosine from `start` (pct=0) to `end` (pct=1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_scale', 1.0)


def set_momentum(optimizer, momentum):
    """beta1 for Adam-family optimizers, `momentum` for SGD (upstream's `OptimWrapper.mom` setter)."""
    for group in optimizer.param_groups:
        if 'betas' in group:
            group['betas'] = (momentum, group['betas'][1])
        elif 'momentum' in group:
            group['momentum'] = momentum


class IterationScheduler:
    """Base class: subclasses implement `lr_at(iteration)` and optionally `momentum_at(iteration)`."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.last_iteration = -1
        self.resume_mismatch = {}

    def lr_at(self, iteration):
        raise NotImplementedError

    def momentum_at(self, iteration):
        return None

    def hparams(self):
        """JSON-like hyper-parameters, saved with the state for resume checks."""
        return {}

    def _apply(self, iteration):
        lr = self.lr_at(iteration)
        set_lr(self.optimizer, lr)
        momentum = self.momentum_at(iteration)
        if momentum is not None:
            set_momentum(self.optimizer, momentum)
        return lr

    def step(self, iteration=None):
        iteration = self.last_iteration + 1 if iteration is None else int(iteration)
        lr = self._apply(iteration)
        self.last_iteration = iteration
        return lr

    def get_last_lr(self):
        return [group['lr'] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {'type': type(self).__name__, 'last_iteration': self.last_iteration, 'hparams': self.hparams()}

    def load_state_dict(self, state):
        saved_type = state.get('type', type(self).__name__)
        current = self.hparams()
        saved = state.get('hparams', {})
        mismatch = {key: (saved.get(key), value) for key, value in current.items()
                    if key in saved and _differs(saved[key], value)}
        if saved_type != type(self).__name__:
            mismatch['type'] = (saved_type, type(self).__name__)
        self.resume_mismatch = mismatch
        self.last_iteration = int(state.get('last_iteration', -1))
        if self.last_iteration >= 0:
            self._apply(self.last_iteration)


def _differs(a, b):
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a) != list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else True
    if isinstance(a, float) or isinstance(b, float):
        return not math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a != b


def _onecycle_momentum(iteration, moms, phase1_end, total_steps):
    if iteration < phase1_end:
        return annealing_cos(moms[0], moms[1], iteration / phase1_end)
    return annealing_cos(moms[1], moms[0], (iteration - phase1_end) / max(total_steps - phase1_end, 1))


class OneCycle(IterationScheduler):
    def __init__(self, optimizer, total_steps, lr_max, moms=(0.95, 0.85), div_factor=10.0, pct_start=0.4):
        super().__init__(optimizer)
        if total_steps <= 0:
            raise ValueError(f'OneCycle: total_steps must be positive, got {total_steps}')
        self.total_steps = int(total_steps)
        self.lr_max = float(lr_max)
        self.moms = (float(moms[0]), float(moms[1]))
        self.div_factor = float(div_factor)
        self.pct_start = float(pct_start)
        self.phase1_end = int(self.total_steps * self.pct_start)
        self.low_lr = self.lr_max / self.div_factor
        self._apply(0)  # upstream sets lr = LR/DIV and mom = MOMS[0] at construction

    def lr_at(self, iteration):
        if iteration < self.phase1_end:
            return annealing_cos(self.low_lr, self.lr_max, iteration / self.phase1_end)
        pct = (iteration - self.phase1_end) / max(self.total_steps - self.phase1_end, 1)
        return annealing_cos(self.lr_max, self.low_lr / 1e4, pct)

    def momentum_at(self, iteration):
        return _onecycle_momentum(iteration, self.moms, self.phase1_end, self.total_steps)

    def hparams(self):
        return {'total_steps': self.total_steps, 'lr_max': self.lr_max, 'moms': list(self.moms),
                'div_factor': self.div_factor, 'pct_start': self.pct_start}


class CosineAnnealing(IterationScheduler):
    def __init__(self, optimizer, total_iters_each_epoch, total_epochs, lr_max, moms=(0.95, 0.85), pct_start=0.4,
                 warmup_iter=0):
        super().__init__(optimizer)
        self.iters_per_epoch = max(int(total_iters_each_epoch), 1)
        self.total_epochs = max(int(total_epochs), 1)
        self.total_steps = self.iters_per_epoch * self.total_epochs
        self.lr_max = float(lr_max)
        self.moms = (float(moms[0]), float(moms[1]))
        self.pct_start = float(pct_start)
        self.phase1_end = int(self.total_steps * self.pct_start)
        self.warmup_iter = int(warmup_iter)
        self._apply(0)

    def lr_at(self, iteration):
        if iteration < self.warmup_iter:
            return self.lr_max * (iteration + 1) / self.warmup_iter
        epoch = iteration // self.iters_per_epoch
        return annealing_cos(self.lr_max, self.lr_max * 1e-3, epoch / self.total_epochs)

    def momentum_at(self, iteration):
        return _onecycle_momentum(iteration, self.moms, self.phase1_end, self.total_steps)

    def hparams(self):
        return {'iters_per_epoch': self.iters_per_epoch, 'total_epochs': self.total_epochs, 'lr_max': self.lr_max,
                'moms': list(self.moms), 'pct_start': self.pct_start, 'warmup_iter': self.warmup_iter}


class StepDecay(IterationScheduler):
    def __init__(self, optimizer, total_iters_each_epoch, lr, decay_step_list=(), lr_decay=0.1, lr_clip=0.0,
                 warmup_iters=0, warmup_eta_min=None):
        super().__init__(optimizer)
        self.iters_per_epoch = max(int(total_iters_each_epoch), 1)
        self.lr = float(lr)
        self.decay_step_list = [float(d) for d in decay_step_list]
        self.decay_iters = [d * self.iters_per_epoch for d in self.decay_step_list]
        self.lr_decay = float(lr_decay)
        self.lr_clip = float(lr_clip)
        self.warmup_iters = int(warmup_iters)
        self.warmup_eta_min = float(self.lr if warmup_eta_min is None else warmup_eta_min)
        self._apply(0)

    def lr_at(self, iteration):
        if iteration < self.warmup_iters:
            return self.warmup_eta_min + (self.lr - self.warmup_eta_min) * (
                1 - math.cos(math.pi * iteration / self.warmup_iters)) / 2
        factor = 1.0
        for decay_iter in self.decay_iters:
            if iteration >= decay_iter:
                factor *= self.lr_decay
        return self.lr * max(factor, self.lr_clip / self.lr)

    def hparams(self):
        return {'iters_per_epoch': self.iters_per_epoch, 'lr': self.lr, 'decay_step_list': self.decay_step_list,
                'lr_decay': self.lr_decay, 'lr_clip': self.lr_clip, 'warmup_iters': self.warmup_iters,
                'warmup_eta_min': self.warmup_eta_min}


def build_scheduler(optimizer, total_iters_each_epoch, total_epochs, optim_cfg):
    """The scheduler for `optim_cfg.OPTIMIZER` (see the module docstring)."""
    total_iters_each_epoch = int(total_iters_each_epoch)
    total_epochs = int(total_epochs)
    if total_iters_each_epoch <= 0:
        raise ValueError('build_scheduler: the training loader has no batches (empty dataset or split?)')
    from .optimization import OPTIMIZATION_SCHEMA

    def read(key):
        return OPTIMIZATION_SCHEMA.get(optim_cfg, key)
    name = read('OPTIMIZER')
    lr = float(read('LR'))
    moms = tuple(read('MOMS'))
    if name == 'adam_onecycle':
        return OneCycle(optimizer, total_iters_each_epoch * total_epochs, lr, moms,
                        float(read('DIV_FACTOR')), float(read('PCT_START')))
    if name == 'adam_cosineanneal':
        return CosineAnnealing(optimizer, total_iters_each_epoch, total_epochs, lr, moms,
                               float(read('PCT_START')), int(read('WARMUP_ITER')))
    warmup_iters, eta_min = 0, None
    if read('LR_WARMUP'):
        warmup_iters = int(float(read('WARMUP_EPOCH')) * total_iters_each_epoch)
        eta_min = lr / float(read('DIV_FACTOR'))
    return StepDecay(optimizer, total_iters_each_epoch, lr, read('DECAY_STEP_LIST'),
                     float(read('LR_DECAY')), float(read('LR_CLIP')), warmup_iters, eta_min)
