"""The training loop (spec §1.10): per-iteration LR schedule, AMP, non-finite guard, clipping, logging, checkpoints.

    train_model(model, optimizer, train_loader, model_func, lr_scheduler, optim_cfg, start_epoch, total_epochs,
                start_iter, rank, tb_log, ckpt_save_dir, train_sampler=None, ...) -> TrainResult
    resolve_amp_mode(optim_cfg, use_amp=False) -> 'off' | 'fp16' | 'bf16'
    build_grad_scaler(amp_mode, device, optim_cfg) -> torch.amp.GradScaler (enabled only for fp16)
    make_model_func(device) -> model_func(model, batch_dict) -> (loss, tb_dict, disp_dict)

One iteration (global iteration `it` = `accumulated_iter`, 0-based):
    lr_scheduler.step(it); zero_grad; forward under autocast (fp16/bf16/off); backward (scaled for fp16);
    unscale; grad-norm clipping (GRAD_NORM_CLIP, norm always computed); if the loss (or, except for fp16 where the
    GradScaler handles overflow, the gradient norm) is not finite on ANY rank, the step is skipped on every rank,
    logged and counted (`meta_data/skipped_steps`); else optimizer step; `it += 1`.
The only host sync per iteration is one small device->host copy that carries the loss, the grad norm, the skip
flag and any tensor-valued tb_dict entries (needed for the skip decision anyway). Timings are local to each process
(no per-iteration all-gather). Rank 0 writes TensorBoard scalars `train/loss`, `meta_data/learning_rate`,
`train/<tb_dict key>`, `train/grad_norm` every iteration and logs a line every `logger_iter_interval` iterations.

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

from .checkpointing import LATEST_NAME, checkpoint_state, prune_checkpoints, save_checkpoint
from .distributed import gather_rng_states, is_dist, unwrap_model
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


def _format_seconds(seconds):
    seconds = int(max(seconds, 0))
    hours, rem = divmod(seconds, 3600)
    minutes, secs = divmod(rem, 60)
    return f'{hours:d}:{minutes:02d}:{secs:02d}' if hours else f'{minutes:02d}:{secs:02d}'


class _Average:
    def __init__(self):
        self.total, self.count, self.value = 0.0, 0, 0.0

    def update(self, value):
        self.value = float(value)
        self.total += self.value
        self.count += 1

    @property
    def avg(self):
        return self.total / max(self.count, 1)


@dataclass
class TrainResult:
    accumulated_iter: int = 0
    skipped_steps: int = 0
    last_epoch: int = 0
    checkpoints: list = None


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive iterations had a non-finite loss or gradient."""


def train_model(model, optimizer, train_loader, model_func, lr_scheduler, optim_cfg, start_epoch, total_epochs,
                start_iter, rank, tb_log, ckpt_save_dir, train_sampler=None, ckpt_save_interval=1,
                max_ckpt_save_num=50, merge_all_iters_to_one_epoch=False, amp_mode='off', scaler=None, logger=None,
                logger_iter_interval=50, ckpt_save_time_interval=300, use_logger_to_record=True, hook_cfg=None,
                data_seed=None, device=None, show_progress=True, max_consecutive_skips=None):
    """Train from `(start_epoch, start_iter)` to `total_epochs`. `start_iter` is the accumulated (global) iteration;
    when it lies inside `start_epoch` (a `latest_model.pth` resume) the epoch continues from there.

    `model_func(model, batch_dict) -> (loss, tb_dict, disp_dict)` (see `make_model_func`). `hook_cfg`: the
    config's `HOOK` block (DisableAugmentationHook). `data_seed`: seed of the per-epoch data order (default:
    `torch.initial_seed()`), stored in checkpoints. Checkpoints `checkpoint_epoch_<N>.pth` are written every
    `ckpt_save_interval` epochs and after the last epoch (rank 0; all ranks contribute their RNG state), keeping the
    last `max_ckpt_save_num`; `latest_model.pth` every `ckpt_save_time_interval` seconds (rank 0).
    """
    logger = logger or logging.getLogger('pcdet')
    device = torch.device(device) if device is not None else next(unwrap_model(model).parameters()).device
    scaler = scaler if scaler is not None else build_grad_scaler(amp_mode, device, optim_cfg)
    grad_clip = float(OPTIMIZATION_SCHEMA.get(optim_cfg, 'GRAD_NORM_CLIP') or 0)
    if max_consecutive_skips is None:
        max_consecutive_skips = int(OPTIMIZATION_SCHEMA.get(optim_cfg, 'MAX_CONSECUTIVE_NONFINITE'))
    data_seed = int(torch.initial_seed() % (2 ** 31)) if data_seed is None else int(data_seed)
    use_fp16_scaler = scaler.is_enabled()
    params = [p for p in unwrap_model(model).parameters() if p.requires_grad]
    distributed = is_dist()
    is_main = rank == 0

    total_it_each_epoch = len(train_loader)
    if merge_all_iters_to_one_epoch:
        dataset = train_loader.dataset
        if not hasattr(dataset, 'merge_all_iters_to_one_epoch'):
            raise ValueError('--merge_all_iters_to_one_epoch: the dataset has no merge_all_iters_to_one_epoch()')
        dataset.merge_all_iters_to_one_epoch(merge=True, epochs=total_epochs)
        total_it_each_epoch = len(train_loader) // max(total_epochs, 1)
    if total_it_each_epoch <= 0:
        raise ValueError('train_model: the training loader yields no batches')

    accumulated_iter = int(start_iter)
    result = TrainResult(accumulated_iter=accumulated_iter, checkpoints=[])
    first_offset = accumulated_iter - start_epoch * total_it_each_epoch
    first_offset = first_offset if 0 <= first_offset < total_it_each_epoch else 0
    last_latest_save = time.time()
    consecutive_skips = 0
    run_start = time.time()
    iters_to_run = max((total_epochs - start_epoch) * total_it_each_epoch - first_offset, 1)
    iters_done = 0
    if ckpt_save_dir is not None:
        ckpt_save_dir = Path(ckpt_save_dir)
        if is_main:
            ckpt_save_dir.mkdir(parents=True, exist_ok=True)

    if hook_cfg:
        from ..datasets import apply_disable_augmentation_hook  # lazy: datasets are not needed by the loop itself
    epoch_bar = None
    if is_main and show_progress:
        import tqdm
        epoch_bar = tqdm.tqdm(total=total_epochs, initial=start_epoch, desc='epochs', dynamic_ncols=True)

    dataloader_iter = None
    for cur_epoch in range(start_epoch, total_epochs):
        offset = first_offset if cur_epoch == start_epoch else 0
        set_epoch_order(train_loader, train_sampler, cur_epoch, data_seed)
        if hook_cfg and apply_disable_augmentation_hook(train_loader.dataset, hook_cfg, cur_epoch, total_epochs):
            logger.info(f'Epoch {cur_epoch}: DisableAugmentationHook active')
        epoch_start_hook = getattr(unwrap_model(model), 'on_train_epoch_start', None)
        if epoch_start_hook is not None:  # e.g. GPICTURE's per-epoch DGPL gate
            epoch_start_hook(cur_epoch, dataset=train_loader.dataset, logger=logger,
                             tb_log=tb_log if is_main else None, ckpt_dir=ckpt_save_dir)
        if dataloader_iter is None or not merge_all_iters_to_one_epoch:
            dataloader_iter = _iterator_skipping(train_loader, offset, logger)
            if offset:
                logger.info(f'Epoch {cur_epoch}: continuing at iteration {offset}/{total_it_each_epoch} '
                            '(skipped batches are not loaded)')

        pbar = None
        if is_main and show_progress:
            import tqdm
            pbar = tqdm.tqdm(total=total_it_each_epoch, initial=offset, leave=(cur_epoch + 1 == total_epochs),
                             desc='train', dynamic_ncols=True)
        model.train()
        data_time, batch_time, loss_meter = _Average(), _Average(), _Average()
        epoch_start = time.time()
        end = time.time()
        for cur_it in range(offset, total_it_each_epoch):
            try:
                batch = next(dataloader_iter)
            except StopIteration:
                dataloader_iter = iter(train_loader)
                batch = next(dataloader_iter)
            data_time.update(time.time() - end)

            if lr_scheduler is not None:
                lr_scheduler.step(accumulated_iter)
            lr = optimizer.param_groups[0]['lr']
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(amp_mode, device):
                loss, tb_dict, disp_dict = model_func(model, batch)
            loss = loss.float()
            if use_fp16_scaler:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float('inf'))
            loss_d = loss.detach()
            bad = ~torch.isfinite(loss_d)
            if not use_fp16_scaler:  # fp16 overflow is routine: the GradScaler skips and lowers the scale
                bad = bad | ~torch.isfinite(grad_norm.to(loss_d.device))
            # [non-finite, latest checkpoint due]: rank 0's timer decides the latest save, and the same all-reduce
            # tells every rank, so all of them take part in gathering their RNG states for it (exact DDP resume).
            latest_due = (is_main and ckpt_save_dir is not None and ckpt_save_time_interval is not None
                          and time.time() - last_latest_save >= ckpt_save_time_interval)
            bad = torch.stack([bad.float().reshape(()), torch.tensor(float(latest_due), device=bad.device)])
            if distributed:
                torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            tb_tensor_keys = [k for k, v in (tb_dict or {}).items()
                              if torch.is_tensor(v) and v.numel() == 1 and v.device == loss_d.device]
            stats = torch.cat([loss_d.reshape(1), grad_norm.detach().float().reshape(1).to(loss_d.device), bad]
                              + [tb_dict[k].detach().float().reshape(1) for k in tb_tensor_keys]).cpu()
            loss_value, grad_norm_value, skip = float(stats[0]), float(stats[1]), bool(stats[2] > 0)
            save_latest = bool(stats[3] > 0)

            if skip:
                result.skipped_steps += 1
                consecutive_skips += 1
                if use_fp16_scaler:
                    scaler.update()
                if is_main and (result.skipped_steps <= 10 or result.skipped_steps % 100 == 0):
                    logger.warning(f'Non-finite loss/gradient at epoch {cur_epoch} iteration {cur_it} (accumulated '
                                   f'{accumulated_iter}): loss={loss_value}, grad_norm={grad_norm_value}; optimizer '
                                   f'step skipped ({result.skipped_steps} skipped so far)')
                if max_consecutive_skips and consecutive_skips >= max_consecutive_skips:
                    raise NonFiniteLossError(f'{consecutive_skips} consecutive iterations had a non-finite loss or '
                                             'gradient; stopping (lower the LR, try AMP off/bf16, check the data)')
            else:
                consecutive_skips = 0
                if use_fp16_scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            accumulated_iter += 1
            iters_done += 1
            if not skip:
                loss_meter.update(loss_value)
            batch_time.update(time.time() - end)
            end = time.time()

            if is_main:
                tb_values = {k: float(v) for k, v in zip(tb_tensor_keys, stats[4:].tolist())}
                for key, value in (tb_dict or {}).items():
                    if key not in tb_values:
                        try:
                            tb_values[key] = float(value)
                        except (TypeError, ValueError):
                            pass
                if tb_log is not None:
                    tb_log.add_scalar('train/loss', loss_value, accumulated_iter)
                    tb_log.add_scalar('meta_data/learning_rate', lr, accumulated_iter)
                    tb_log.add_scalar('train/grad_norm', grad_norm_value, accumulated_iter)
                    if skip:
                        tb_log.add_scalar('meta_data/skipped_steps', result.skipped_steps, accumulated_iter)
                    for key, value in tb_values.items():
                        tb_log.add_scalar('train/' + key, value, accumulated_iter)
                if pbar is not None:
                    pbar.update()
                    pbar.set_postfix(loss=f'{loss_value:.4f}', lr=f'{lr:.2e}', d_time=f'{data_time.avg:.2f}',
                                     b_time=f'{batch_time.avg:.2f}')
                log_now = (accumulated_iter % max(logger_iter_interval, 1) == 0 or cur_it == offset
                           or cur_it + 1 == total_it_each_epoch)
                if use_logger_to_record and log_now:
                    epoch_elapsed = time.time() - epoch_start
                    run_elapsed = time.time() - run_start
                    epoch_left = batch_time.avg * (total_it_each_epoch - cur_it - 1)
                    run_left = run_elapsed / iters_done * (iters_to_run - iters_done)
                    extra = '  '.join(f'{k}: {v}' for k, v in (disp_dict or {}).items())
                    logger.info(
                        f'Train: {cur_epoch + 1:>4d}/{total_epochs} ({100.0 * (cur_epoch + 1) / total_epochs:3.0f}%) '
                        f'[{cur_it + 1:>5d}/{total_it_each_epoch} ({100.0 * (cur_it + 1) / total_it_each_epoch:3.0f}%)]'
                        f'  Loss: {loss_value:.4f} ({loss_meter.avg:.4f})  LR: {lr:.3e}  Grad: {grad_norm_value:.3f}'
                        f'  Time cost: {_format_seconds(epoch_elapsed)}/{_format_seconds(epoch_left)} '
                        f'[{_format_seconds(run_elapsed)}/{_format_seconds(run_left)}]  Acc_iter {accumulated_iter}'
                        f'  Data time: {data_time.value:.2f}({data_time.avg:.2f})'
                        f'  Batch time: {batch_time.value:.2f}({batch_time.avg:.2f})'
                        + (f'  Skipped: {result.skipped_steps}' if result.skipped_steps else '')
                        + (f'  {extra}' if extra else ''))
            if save_latest:
                per_rank_rng = gather_rng_states() if distributed else None  # collective: every rank is here
                if is_main:
                    state = checkpoint_state(model, optimizer, cur_epoch, accumulated_iter, lr_scheduler, scaler)
                    state['data_seed'] = data_seed
                    if per_rank_rng is not None:
                        state['rng_state_per_rank'] = per_rank_rng
                    save_checkpoint(state, ckpt_save_dir / LATEST_NAME)
                    logger.info(f'Saved {ckpt_save_dir / LATEST_NAME} (epoch {cur_epoch}, it {accumulated_iter})')
                last_latest_save = time.time()
        if pbar is not None:
            pbar.close()

        trained_epoch = cur_epoch + 1
        result.last_epoch = trained_epoch
        epoch_end_hook = getattr(unwrap_model(model), 'on_train_epoch_end', None)
        if epoch_end_hook is not None:
            epoch_end_hook(cur_epoch)
        if ckpt_save_dir is not None and (trained_epoch % max(ckpt_save_interval, 1) == 0
                                          or trained_epoch == total_epochs):
            per_rank_rng = gather_rng_states() if distributed else None  # collective: all ranks reach this point
            if is_main:
                state = checkpoint_state(model, optimizer, trained_epoch, accumulated_iter, lr_scheduler, scaler)
                state['data_seed'] = data_seed
                if per_rank_rng is not None:
                    state['rng_state_per_rank'] = per_rank_rng
                path = save_checkpoint(state, ckpt_save_dir / f'checkpoint_epoch_{trained_epoch}')
                removed = prune_checkpoints(ckpt_save_dir, max_ckpt_save_num)
                logger.info(f'Saved {path}' + (f'; removed {[p.name for p in removed]}' if removed else ''))
                result.checkpoints.append(path)
        if epoch_bar is not None:
            epoch_bar.update()
    if epoch_bar is not None:
        epoch_bar.close()
    result.accumulated_iter = accumulated_iter
    if result.skipped_steps and is_main:
        logger.warning(f'{result.skipped_steps} optimizer step(s) were skipped because of non-finite values')
    return result
