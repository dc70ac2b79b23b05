"""The training loop (spec §1.10): a small Trainer running the step loop, with hooks around it.

    train_model(model, optimizer, train_loader, model_func, lr_scheduler, optim_cfg, start_epoch, total_epochs,
                start_iter, rank, tb_log, ckpt_save_dir, train_sampler=None, ..., hooks=None) -> TrainResult
    Trainer(model, optimizer, train_loader, model_func, lr_scheduler, optim_cfg, ...): register_hooks(hooks),
                train(start_epoch, total_epochs, start_iter) -> TrainResult, run_step(batch, epoch_iter)
    resolve_amp_mode(optim_cfg, use_amp=False) -> 'off' | 'fp16' | 'bf16'
    build_grad_scaler(amp_mode, device, optim_cfg) -> torch.amp.GradScaler (enabled only for fp16)
    make_model_func(device) -> model_func(model, batch_dict) -> (loss, tb_dict, disp_dict)

The Trainer owns the data order and the optimizer step; everything else is a hook (pcdet.training.hooks):
checkpoints (CheckpointHook), TensorBoard/tqdm/log lines (LoggingHook), `HOOK.DisableAugmentationHook`
(DisableAugmentationHook) and whatever the model declares in `training_hooks()` (GPICTURE: DGPLGateHook).

One iteration (global iteration `it` = `accumulated_iter`, 0-based):
    lr_scheduler.step(it); zero_grad; forward under autocast (fp16/bf16/off); backward (scaled for fp16);
    unscale; grad-norm clipping (GRAD_NORM_CLIP, norm always computed); if the loss (or, except for fp16 where the
    GradScaler handles overflow, the gradient norm) is not finite on ANY rank, the step is skipped on every rank,
    logged and counted (`meta_data/skipped_steps`); else optimizer step; `it += 1`.
The only host sync per iteration is one small device->host copy that carries the loss, the grad norm, the skip
flag, the hooks' per-step flags (`sync_flags`, e.g. "latest_model.pth is due") and any tensor-valued tb_dict entries
(needed for the skip decision anyway); under DDP the skip flag and the hook flags share one all-reduce. Timings are
local to each process (no per-iteration all-gather).

Data order: every epoch the sampler is re-seeded as a function of `(data_seed, epoch)` (`set_epoch` for a
DistributedSampler, a seeded generator for a RandomSampler), and the DataLoader's worker base seed likewise, so
creating an iterator never consumes the global RNG. A `SeededBatchSampler` (pcdet.datasets' training loaders) also
gets `(epoch, data_seed)`: each sample's augmentation draws are then a function of (data_seed, epoch, position,
index), independent of which process loads it and of what it loaded before (pcdet/datasets/sample_rng.py).
Together with the RNG state stored in checkpoints this makes a resume at an epoch boundary reproduce the
uninterrupted run exactly (deterministic kernels; any number of workers with a SeededBatchSampler, else
num_workers=0 or non-persistent workers seeded by `worker_init_fn`), and a mid-epoch resume (`latest_model.pth`)
continue with the remaining batches of the same epoch order without loading the skipped ones.
"""
import itertools
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler

from .distributed import is_dist, unwrap_model
from .hooks import CheckpointHook, DisableAugmentationHook, HookBase, LoggingHook, model_training_hooks
from .optimization import OPTIMIZATION_SCHEMA

AMP_ALIASES = {
    'off': 'off', 'none': 'off', 'no': 'off', 'false': 'off', 'fp32': 'off', 'float32': 'off',
    'fp16': 'fp16', 'float16': 'fp16', 'half': 'fp16', 'true': 'fp16',
    'bf16': 'bf16', 'bfloat16': 'bf16',
}


def resolve_amp_mode(optim_cfg, use_amp=False):
    """`OPTIMIZATION.AMP: bf16|fp16|off` (YAML `off` reads as False, `True` means fp16); `--use_amp` or upstream's
    `OPTIMIZATION.USE_AMP` turn fp16 on unless AMP names a dtype."""
    value = OPTIMIZATION_SCHEMA.get(optim_cfg, 'AMP')
    if value is None or value is False:
        mode = 'off'
    elif value is True:
        mode = 'fp16'
    else:
        mode = AMP_ALIASES.get(str(value).lower())
        if mode is None:
            raise ValueError(f'OPTIMIZATION.AMP: expected bf16, fp16 or off, got {value!r}')
    if mode == 'off' and (use_amp or OPTIMIZATION_SCHEMA.get(optim_cfg, 'USE_AMP')):
        mode = 'fp16'
    return mode


def autocast_context(amp_mode, device):
    if amp_mode == 'off':
        return nullcontext()
    dtype = torch.float16 if amp_mode == 'fp16' else torch.bfloat16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def build_grad_scaler(amp_mode, device, optim_cfg=None):
    """fp16 loss scaling (`LOSS_SCALE_FP16` initial scale, default 2**16); a disabled scaler otherwise."""
    init_scale = float(OPTIMIZATION_SCHEMA.get(optim_cfg, 'LOSS_SCALE_FP16') or 2.0 ** 16)
    return torch.amp.GradScaler(torch.device(device).type, init_scale=init_scale, enabled=(amp_mode == 'fp16'))


def make_model_func(device, load_fn=None):
    """Upstream's `model_fn_decorator`: move the batch to `device` (with `load_fn`, default
    `pcdet.models.build.load_data_to_device`), forward, mean the loss, bump the global step."""
    if load_fn is None:
        from ..utils.batching import load_data_to_device as load_fn

    def model_func(model, batch_dict):
        load_fn(batch_dict, device)
        ret_dict, tb_dict, disp_dict = model(batch_dict)
        loss = ret_dict['loss'].mean()
        target = unwrap_model(model)
        if hasattr(target, 'update_global_step'):
            target.update_global_step()
        return loss, tb_dict, disp_dict

    return model_func


def _mixed_seed(data_seed, epoch, stream):
    return (int(data_seed) * 1_000_003 + int(epoch) * 7 + stream) % (2 ** 63 - 1)


def set_epoch_order(train_loader, train_sampler, epoch, data_seed):
    """Make the epoch's sample order, worker seeds and (SeededBatchSampler) per-sample augmentation seeds functions of
    `(data_seed, epoch)` (see module docstring)."""
    if train_sampler is not None and data_seed is not None and hasattr(train_sampler, 'seed'):
        # DistributedSampler shuffles with seed + epoch: without this every --seed would share one DDP order.
        # data_seed is the same on every rank (tools/train.py), as the shards require.
        train_sampler.seed = _mixed_seed(data_seed, 0, 2)
    if train_sampler is not None and hasattr(train_sampler, 'set_epoch'):
        train_sampler.set_epoch(epoch)
    if not isinstance(train_loader, DataLoader) or data_seed is None:
        return
    train_loader.generator = torch.Generator().manual_seed(_mixed_seed(data_seed, epoch, 0))
    batch_sampler = train_loader.batch_sampler
    if hasattr(batch_sampler, 'set_epoch_seed'):  # pcdet.datasets.sample_rng.SeededBatchSampler
        batch_sampler.set_epoch_seed(epoch, data_seed)
    # with a batch_sampler, DataLoader.sampler is a placeholder: the order comes from batch_sampler.sampler
    for sampler in (train_loader.sampler, getattr(batch_sampler, 'sampler', None)):
        if isinstance(sampler, RandomSampler):
            sampler.generator = torch.Generator().manual_seed(_mixed_seed(data_seed, epoch, 1))


class _SkipBatches(Sampler):
    """A batch sampler without its first `skip` batches (indices only: skipped samples are never loaded)."""

    def __init__(self, batch_sampler, skip):
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self):
        return max(len(self.batch_sampler) - self.skip, 0)


def _iterator_skipping(train_loader, skip, logger=None):
    if skip <= 0:
        return iter(train_loader)
    if isinstance(train_loader, DataLoader) and train_loader.batch_sampler is not None:
        kwargs = {}
        if train_loader.num_workers > 0:
            kwargs = {'prefetch_factor': train_loader.prefetch_factor,
                      'multiprocessing_context': train_loader.multiprocessing_context}
        loader = DataLoader(train_loader.dataset, batch_sampler=_SkipBatches(train_loader.batch_sampler, skip),
                            num_workers=train_loader.num_workers, collate_fn=train_loader.collate_fn,
                            pin_memory=train_loader.pin_memory, timeout=train_loader.timeout,
                            worker_init_fn=train_loader.worker_init_fn, generator=train_loader.generator, **kwargs)
        return iter(loader)
    if logger is not None:
        logger.info(f'Skipping {skip} batches of a non-DataLoader iterable by loading them')
    iterator = iter(train_loader)
    for _ in range(skip):
        next(iterator)
    return iterator


@dataclass
class TrainResult:
    accumulated_iter: int = 0
    skipped_steps: int = 0
    last_epoch: int = 0
    checkpoints: list = None


@dataclass
class StepOutput:
    """One iteration as the hooks see it (host values, copied in the step's single device->host transfer)."""
    epoch_iter: int
    lr: float
    loss: float
    grad_norm: float
    skipped: bool
    data_time: float
    batch_time: float
    tb_dict: dict
    tb_values: dict      # tb_dict's one-element tensors on the loss device, as floats
    disp_dict: dict
    flags: dict          # the hooks' sync_flags, agreed by all ranks (pcdet.training.hooks)


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive iterations had a non-finite loss or gradient."""


class Trainer:
    """The step loop: per-epoch data order, one optimizer step per batch, hooks around it (pcdet.training.hooks).

    `Trainer(model, optimizer, train_loader, model_func, lr_scheduler, optim_cfg, ...)`, `register_hooks(hooks)`,
    `train(start_epoch, total_epochs, start_iter) -> TrainResult`. Checkpoints, logging, augmentation switches and
    model-specific per-epoch logic are hooks; the step itself (`run_step`) is described in the module docstring.
    """

    def __init__(self, model, optimizer, train_loader, model_func, lr_scheduler, optim_cfg, rank=0, tb_log=None,
                 ckpt_dir=None, train_sampler=None, merge_all_iters_to_one_epoch=False, amp_mode='off', scaler=None,
                 logger=None, data_seed=None, device=None, max_consecutive_skips=None):
        self.model, self.optimizer, self.train_loader, self.model_func = model, optimizer, train_loader, model_func
        self.lr_scheduler, self.train_sampler, self.tb_log = lr_scheduler, train_sampler, tb_log
        self.dataset = getattr(train_loader, 'dataset', None)
        self.logger = logger or logging.getLogger('pcdet')
        self.device = torch.device(device) if device is not None else next(unwrap_model(model).parameters()).device
        self.amp_mode = amp_mode
        self.scaler = scaler if scaler is not None else build_grad_scaler(amp_mode, self.device, optim_cfg)
        self.grad_clip = float(OPTIMIZATION_SCHEMA.get(optim_cfg, 'GRAD_NORM_CLIP') or 0)
        if max_consecutive_skips is None:
            max_consecutive_skips = int(OPTIMIZATION_SCHEMA.get(optim_cfg, 'MAX_CONSECUTIVE_NONFINITE'))
        self.max_consecutive_skips = max_consecutive_skips
        self.data_seed = int(torch.initial_seed() % (2 ** 31)) if data_seed is None else int(data_seed)
        self.merge_all_iters_to_one_epoch = merge_all_iters_to_one_epoch
        self.params = [p for p in unwrap_model(model).parameters() if p.requires_grad]
        self.rank, self.is_main, self.distributed = rank, rank == 0, is_dist()
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.hooks, self.flag_names, self.local_flags = [], [], {}
        self.epoch = self.iter = self.epoch_start_iter = 0
        self.step, self.result = None, None
        self._step_end = time.time()   # end of the previous step (data_time / batch_time)

    def register_hooks(self, hooks):
        """Append `hooks` (HookBase instances; None entries are skipped); they run in this order."""
        for hook in hooks:
            if hook is None:
                continue
            if not isinstance(hook, HookBase):
                raise TypeError(f'{hook!r} is not a pcdet.training.hooks.HookBase')
            hook.trainer = self
            self.hooks.append(hook)
            self.flag_names += [name for name in hook.sync_flags if name not in self.flag_names]

    def _call_hooks(self, stage):
        for hook in self.hooks:
            try:
                getattr(hook, stage)()
            except Exception as err:
                where = f'{type(hook).__name__}.{stage} (epoch {self.epoch}, iteration {self.iter})'
                self.logger.error(f'Training stopped: hook {where} raised {type(err).__name__}: {err}')
                if hasattr(err, 'add_note'):  # Python >= 3.11
                    err.add_note(f'raised in training hook {where}')
                raise

    def _iters_per_epoch(self, total_epochs):
        iters = len(self.train_loader)
        if self.merge_all_iters_to_one_epoch:
            if not hasattr(self.dataset, 'merge_all_iters_to_one_epoch'):
                raise ValueError('--merge_all_iters_to_one_epoch: the dataset has no merge_all_iters_to_one_epoch()')
            self.dataset.merge_all_iters_to_one_epoch(merge=True, epochs=total_epochs)
            iters = len(self.train_loader) // max(total_epochs, 1)
        if iters <= 0:
            raise ValueError('train_model: the training loader yields no batches')
        return iters

    def train(self, start_epoch, total_epochs, start_iter=0):
        """Train from `(start_epoch, start_iter)` to `total_epochs`; `start_iter` is the accumulated iteration, and
        when it lies inside `start_epoch` (a `latest_model.pth` resume) that epoch continues from there."""
        self.start_epoch, self.total_epochs = int(start_epoch), int(total_epochs)
        self.iters_per_epoch = per_epoch = self._iters_per_epoch(total_epochs)
        self.iter = int(start_iter)
        self.result = TrainResult(accumulated_iter=self.iter, checkpoints=[])
        first_offset = self.iter - self.start_epoch * per_epoch
        first_offset = first_offset if 0 <= first_offset < per_epoch else 0
        self.iters_to_run = max((self.total_epochs - self.start_epoch) * per_epoch - first_offset, 1)
        self.consecutive_skips, self.epoch = 0, self.start_epoch
        self._call_hooks('before_train')
        dataloader_iter = None
        for epoch in range(self.start_epoch, self.total_epochs):
            self.epoch = epoch
            self.epoch_start_iter = offset = first_offset if epoch == self.start_epoch else 0
            set_epoch_order(self.train_loader, self.train_sampler, epoch, self.data_seed)
            self._call_hooks('before_epoch')
            if dataloader_iter is None or not self.merge_all_iters_to_one_epoch:
                dataloader_iter = _iterator_skipping(self.train_loader, offset, self.logger)
                if offset:
                    self.logger.info(f'Epoch {epoch}: continuing at iteration {offset}/{per_epoch} '
                                     '(skipped batches are not loaded)')
            self.model.train()
            self._step_end = time.time()
            for epoch_iter in range(offset, per_epoch):
                self.local_flags = dict.fromkeys(self.flag_names, False)
                self._call_hooks('before_step')
                try:
                    batch = next(dataloader_iter)
                except StopIteration:
                    dataloader_iter = iter(self.train_loader)
                    batch = next(dataloader_iter)
                self.step = self.run_step(batch, epoch_iter, data_time=time.time() - self._step_end)
                self._call_hooks('after_step')
            self.result.last_epoch = epoch + 1
            self._call_hooks('after_epoch')
        self.result.accumulated_iter = self.iter
        self._call_hooks('after_train')
        return self.result

    def run_step(self, batch, epoch_iter, data_time=0.0):
        """One optimizer iteration on `batch` (module docstring), called by `train`; returns its StepOutput and
        advances `self.iter`."""
        if self.lr_scheduler is not None:
            self.lr_scheduler.step(self.iter)
        optimizer, scaler = self.optimizer, self.scaler
        use_fp16_scaler = scaler.is_enabled()
        lr = optimizer.param_groups[0]['lr']
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.amp_mode, self.device):
            loss, tb_dict, disp_dict = self.model_func(self.model, batch)
        loss = loss.float()
        if use_fp16_scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else float('inf'))
        loss_d = loss.detach()
        bad = ~torch.isfinite(loss_d)
        if not use_fp16_scaler:  # fp16 overflow is routine: the GradScaler skips and lowers the scale
            bad = bad | ~torch.isfinite(grad_norm.to(loss_d.device))
        # [non-finite, the hooks' sync flags]: one all-reduce tells every rank (e.g. rank 0's latest-save timer)
        flags = torch.cat([bad.float().reshape(1), torch.tensor(
            [float(self.local_flags[name]) for name in self.flag_names], device=bad.device)])
        if self.distributed:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        tb_tensor_keys = [k for k, v in (tb_dict or {}).items()
                          if torch.is_tensor(v) and v.numel() == 1 and v.device == loss_d.device]
        stats = torch.cat([loss_d.reshape(1), grad_norm.detach().float().reshape(1).to(loss_d.device), flags]
                          + [tb_dict[k].detach().float().reshape(1) for k in tb_tensor_keys]).cpu()
        loss_value, grad_norm_value, skip = float(stats[0]), float(stats[1]), bool(stats[2] > 0)
        n_flags = len(self.flag_names)
        agreed = {name: bool(stats[3 + i] > 0) for i, name in enumerate(self.flag_names)}

        result = self.result
        if skip:
            result.skipped_steps += 1
            self.consecutive_skips += 1
            if use_fp16_scaler:
                scaler.update()
            if self.is_main and (result.skipped_steps <= 10 or result.skipped_steps % 100 == 0):
                self.logger.warning(
                    f'Non-finite loss/gradient at epoch {self.epoch} iteration {epoch_iter} (accumulated '
                    f'{self.iter}): loss={loss_value}, grad_norm={grad_norm_value}; optimizer step skipped '
                    f'({result.skipped_steps} skipped so far)')
            if self.max_consecutive_skips and self.consecutive_skips >= self.max_consecutive_skips:
                raise NonFiniteLossError(f'{self.consecutive_skips} consecutive iterations had a non-finite loss or '
                                         'gradient; stopping (lower the LR, try AMP off/bf16, check the data)')
        else:
            self.consecutive_skips = 0
            if use_fp16_scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        self.iter += 1
        now = time.time()
        batch_time, self._step_end = now - self._step_end, now
        return StepOutput(epoch_iter=epoch_iter, lr=lr, loss=loss_value, grad_norm=grad_norm_value, skipped=skip,
                          data_time=data_time, batch_time=batch_time, tb_dict=tb_dict, disp_dict=disp_dict,
                          tb_values=dict(zip(tb_tensor_keys, stats[3 + n_flags:].tolist())), flags=agreed)


def train_model(model, optimizer, train_loader, model_func, lr_scheduler, optim_cfg, start_epoch, total_epochs,
                start_iter, rank, tb_log, ckpt_save_dir, train_sampler=None, ckpt_save_interval=1,
                max_ckpt_save_num=50, merge_all_iters_to_one_epoch=False, amp_mode='off', scaler=None, logger=None,
                logger_iter_interval=50, ckpt_save_time_interval=300, use_logger_to_record=True, hook_cfg=None,
                data_seed=None, device=None, show_progress=True, max_consecutive_skips=None, hooks=None):
    """Train from `(start_epoch, start_iter)` to `total_epochs` with a Trainer and the standard hooks.

    `model_func(model, batch_dict) -> (loss, tb_dict, disp_dict)` (see `make_model_func`). `hook_cfg`: the
    config's `HOOK` block (DisableAugmentationHook). `data_seed`: seed of the per-epoch data order (default:
    `torch.initial_seed()`), stored in checkpoints. Checkpoints `checkpoint_epoch_<N>.pth` are written every
    `ckpt_save_interval` epochs and after the last epoch (rank 0; all ranks contribute their RNG state), keeping the
    last `max_ckpt_save_num`; `latest_model.pth` every `ckpt_save_time_interval` seconds (rank 0). Hooks, in order:
    DisableAugmentationHook (with `hook_cfg`), the model's `training_hooks()`, LoggingHook, CheckpointHook, `hooks`.
    """
    trainer = Trainer(model, optimizer, train_loader, model_func, lr_scheduler, optim_cfg, rank=rank, tb_log=tb_log,
                      ckpt_dir=ckpt_save_dir, train_sampler=train_sampler, amp_mode=amp_mode, scaler=scaler,
                      merge_all_iters_to_one_epoch=merge_all_iters_to_one_epoch, logger=logger, data_seed=data_seed,
                      device=device, max_consecutive_skips=max_consecutive_skips)
    trainer.register_hooks([DisableAugmentationHook(hook_cfg) if hook_cfg else None])
    trainer.register_hooks(model_training_hooks(unwrap_model(model)))
    trainer.register_hooks([
        LoggingHook(tb_log if rank == 0 else None, show_progress=show_progress, iter_interval=logger_iter_interval,
                    use_logger=use_logger_to_record),
        CheckpointHook(trainer.ckpt_dir, interval=ckpt_save_interval, max_keep=max_ckpt_save_num,
                       time_interval=ckpt_save_time_interval)])
    trainer.register_hooks(hooks or [])
    return trainer.train(start_epoch, total_epochs, start_iter)
