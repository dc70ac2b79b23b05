"""Training hooks: what runs around the Trainer's step loop (pcdet.training.train_loop.Trainer).

    hook.before_train()
    for epoch in range(start_epoch, total_epochs):
        hook.before_epoch()                 # after the epoch's data order is set (set_epoch_order)
        for each iteration of the epoch:
            hook.before_step()
            trainer.run_step(batch)         # forward, backward, non-finite guard, optimizer step
            hook.after_step()
        hook.after_epoch()
    hook.after_train()

Every method is called on every rank, hooks in registration order. `self.trainer` (set by `Trainer.register_hooks`)
gives the run's state: `model` (maybe DDP-wrapped), `optimizer`, `lr_scheduler`, `scaler`, `dataset` (the training
loader's), `logger`, `tb_log`, `ckpt_dir` (Path or None), `rank`, `is_main`, `distributed`, `data_seed`,
`start_epoch`, `total_epochs`, `iters_per_epoch`, `epoch` (0-based, current), `epoch_start_iter` (iteration of the
epoch where it started: non-zero after a mid-epoch resume), `iter` (accumulated optimizer iterations, already
counting the step in `after_step`), `result` (TrainResult) and, in `after_step`, `step` (StepOutput: `epoch_iter`,
`lr`, `loss`, `grad_norm`, `skipped`, `data_time`, `batch_time`, `tb_dict`, `tb_values`, `disp_dict`, `flags`).

Per-step agreement without an extra sync: a hook lists names in `sync_flags` and sets
`self.trainer.local_flags[name] = bool` in `before_step`; the values ride the step's one all-reduce (MAX over the
ranks) and device->host copy, and `after_step` reads the agreed values in `trainer.step.flags[name]`. The names are
class attributes, so every rank reduces the same vector.

A hook that raises stops training: the exception propagates with its own type (a CheckpointSaveError stays one),
the trainer logs an ERROR line naming the hook, the method, the epoch and the iteration (also added as a note to the
exception on Python >= 3.11), and no later hook method runs (no `after_train`).

Which hooks run (`train_model`): DisableAugmentationHook (when the config has a `HOOK` block), then the model's own
hooks, then LoggingHook and CheckpointHook, then any `hooks=` passed by the caller. A model declares its hooks
explicitly with a method `training_hooks(self) -> list of HookBase` (Detector3DTemplate's returns []; GPICTURE's
returns its DGPLGateHook); the trainer calls nothing else on the model.
"""
import time

from .checkpointing import LATEST_NAME, checkpoint_state, prune_checkpoints, save_checkpoint
from .distributed import gather_rng_states


class HookBase:
    """Base class of the training hooks (module docstring). Override the methods you need."""

    trainer = None
    sync_flags = ()   # names of per-step booleans set in before_step and agreed by all ranks (module docstring)

    def before_train(self):
        pass

    def before_epoch(self):
        pass

    def before_step(self):
        pass

    def after_step(self):
        pass

    def after_epoch(self):
        pass

    def after_train(self):
        pass


def model_training_hooks(model):
    """The hooks `model` (unwrapped) declares with `training_hooks()`; [] for a model without that method."""
    declare = getattr(model, 'training_hooks', None)
    if declare is None:
        return []
    hooks = list(declare())
    for hook in hooks:
        if not isinstance(hook, HookBase):
            raise TypeError(f'{type(model).__name__}.training_hooks() returned {hook!r}, which is not a '
                            'pcdet.training.hooks.HookBase')
    return hooks


class DisableAugmentationHook(HookBase):
    """`HOOK.DisableAugmentationHook {DISABLE_AUG_LIST, NUM_LAST_EPOCHS}`: the listed augmentations are switched off
    for the last NUM_LAST_EPOCHS epochs (pcdet.datasets.apply_disable_augmentation_hook, checked every epoch)."""

    def __init__(self, hook_cfg):
        from ..datasets import apply_disable_augmentation_hook  # lazy: the loop itself does not need datasets
        self.hook_cfg = hook_cfg
        self._apply = apply_disable_augmentation_hook

    def before_epoch(self):
        t = self.trainer
        if self._apply(t.dataset, self.hook_cfg, t.epoch, t.total_epochs):
            t.logger.info(f'Epoch {t.epoch}: DisableAugmentationHook active')


class CheckpointHook(HookBase):
    """`checkpoint_epoch_<N>.pth` after every `interval` epochs and after the last one (keeping the newest
    `max_keep`), `latest_model.pth` every `time_interval` seconds (None: never). Rank 0 writes; every rank
    contributes its RNG state under DDP (`rng_state_per_rank`), so a resume restores each rank exactly. Rank 0's
    clock decides when `latest_model.pth` is due; the decision reaches all ranks through the step's flag
    all-reduce, so all of them take part in gathering the RNG states."""

    sync_flags = ('save_latest',)

    def __init__(self, ckpt_dir, interval=1, max_keep=50, time_interval=300):
        self.ckpt_dir, self.interval, self.max_keep, self.time_interval = ckpt_dir, interval, max_keep, time_interval
        self._last_latest_save = time.time()

    def before_train(self):
        if self.ckpt_dir is not None and self.trainer.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self._last_latest_save = time.time()

    def before_step(self):
        t = self.trainer
        t.local_flags['save_latest'] = (t.is_main and self.ckpt_dir is not None and self.time_interval is not None
                                        and time.time() - self._last_latest_save >= self.time_interval)

    def _save(self, epoch, path):
        t = self.trainer
        per_rank_rng = gather_rng_states() if t.distributed else None  # collective: every rank is here
        if not t.is_main:
            return None
        state = checkpoint_state(t.model, t.optimizer, epoch, t.iter, t.lr_scheduler, t.scaler)
        state['data_seed'] = t.data_seed
        if per_rank_rng is not None:
            state['rng_state_per_rank'] = per_rank_rng
        return save_checkpoint(state, path)

    def after_step(self):
        t = self.trainer
        if t.step.flags['save_latest']:
            if self._save(t.epoch, self.ckpt_dir / LATEST_NAME) is not None:
                t.logger.info(f'Saved {self.ckpt_dir / LATEST_NAME} (epoch {t.epoch}, it {t.iter})')
            self._last_latest_save = time.time()

    def after_epoch(self):
        t = self.trainer
        trained_epoch = t.epoch + 1
        if self.ckpt_dir is None or (trained_epoch % max(self.interval, 1) != 0 and trained_epoch != t.total_epochs):
            return
        path = self._save(trained_epoch, self.ckpt_dir / f'checkpoint_epoch_{trained_epoch}')
        if path is not None:
            removed = prune_checkpoints(self.ckpt_dir, self.max_keep)
            t.logger.info(f'Saved {path}' + (f'; removed {[p.name for p in removed]}' if removed else ''))
            t.result.checkpoints.append(path)


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


class LoggingHook(HookBase):
    """Rank 0 only: TensorBoard scalars every iteration (`train/loss`, `meta_data/learning_rate`, `train/grad_norm`,
    `train/<tb_dict key>`, `meta_data/skipped_steps` on a skipped step), tqdm bars (`show_progress`), a log line
    every `iter_interval` iterations and at each epoch's first and last iteration (`use_logger`), and a warning
    after training when steps were skipped. Reads only the host values the step already copied."""

    def __init__(self, tb_log=None, show_progress=True, iter_interval=50, use_logger=True):
        self.tb_log, self.show_progress, self.iter_interval, self.use_logger = \
            tb_log, show_progress, iter_interval, use_logger
        self.epoch_bar = self.pbar = None

    def before_train(self):
        t = self.trainer
        self.run_start, self.iters_done = time.time(), 0
        if t.is_main and self.show_progress:
            import tqdm
            self.epoch_bar = tqdm.tqdm(total=t.total_epochs, initial=t.start_epoch, desc='epochs', dynamic_ncols=True)

    def before_epoch(self):
        t = self.trainer
        if t.is_main and self.show_progress:
            import tqdm
            self.pbar = tqdm.tqdm(total=t.iters_per_epoch, initial=t.epoch_start_iter,
                                  leave=(t.epoch + 1 == t.total_epochs), desc='train', dynamic_ncols=True)
        self.data_time, self.batch_time, self.loss_meter = _Average(), _Average(), _Average()
        self.epoch_start = time.time()

    def after_step(self):
        t, step = self.trainer, self.trainer.step
        self.iters_done += 1
        self.data_time.update(step.data_time)
        self.batch_time.update(step.batch_time)
        if not step.skipped:
            self.loss_meter.update(step.loss)
        if not t.is_main:
            return
        tb_values = dict(step.tb_values)
        for key, value in (step.tb_dict or {}).items():
            if key not in tb_values:
                try:
                    tb_values[key] = float(value)
                except (TypeError, ValueError):
                    pass
        if self.tb_log is not None:
            self.tb_log.add_scalar('train/loss', step.loss, t.iter)
            self.tb_log.add_scalar('meta_data/learning_rate', step.lr, t.iter)
            self.tb_log.add_scalar('train/grad_norm', step.grad_norm, t.iter)
            if step.skipped:
                self.tb_log.add_scalar('meta_data/skipped_steps', t.result.skipped_steps, t.iter)
            for key, value in tb_values.items():
                if key != 'loss':  # a model's own 'loss' entry is the total just written as train/loss
                    self.tb_log.add_scalar('train/' + key, value, t.iter)
        if self.pbar is not None:
            self.pbar.update()
            self.pbar.set_postfix(loss=f'{step.loss:.4f}', lr=f'{step.lr:.2e}', d_time=f'{self.data_time.avg:.2f}',
                                  b_time=f'{self.batch_time.avg:.2f}')
        cur_it, per_epoch = step.epoch_iter, t.iters_per_epoch
        if self.use_logger and (t.iter % max(self.iter_interval, 1) == 0 or cur_it == t.epoch_start_iter
                                or cur_it + 1 == per_epoch):
            self._log_line(t, step)

    def _log_line(self, t, step):
        cur_it, per_epoch = step.epoch_iter, t.iters_per_epoch
        epoch_elapsed = time.time() - self.epoch_start
        run_elapsed = time.time() - self.run_start
        epoch_left = self.batch_time.avg * (per_epoch - cur_it - 1)
        run_left = run_elapsed / self.iters_done * (t.iters_to_run - self.iters_done)
        extra = '  '.join(f'{k}: {v}' for k, v in (step.disp_dict or {}).items())
        skipped = t.result.skipped_steps
        t.logger.info(
            f'Train: {t.epoch + 1:>4d}/{t.total_epochs} ({100.0 * (t.epoch + 1) / t.total_epochs:3.0f}%) '
            f'[{cur_it + 1:>5d}/{per_epoch} ({100.0 * (cur_it + 1) / per_epoch:3.0f}%)]'
            f'  Loss: {step.loss:.4f} ({self.loss_meter.avg:.4f})  LR: {step.lr:.3e}  Grad: {step.grad_norm:.3f}'
            f'  Time cost: {_format_seconds(epoch_elapsed)}/{_format_seconds(epoch_left)} '
            f'[{_format_seconds(run_elapsed)}/{_format_seconds(run_left)}]  Acc_iter {t.iter}'
            f'  Data time: {self.data_time.value:.2f}({self.data_time.avg:.2f})'
            f'  Batch time: {self.batch_time.value:.2f}({self.batch_time.avg:.2f})'
            + (f'  Skipped: {skipped}' if skipped else '') + (f'  {extra}' if extra else ''))

    def after_epoch(self):
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        if self.epoch_bar is not None:
            self.epoch_bar.update()

    def after_train(self):
        if self.epoch_bar is not None:
            self.epoch_bar.close()
            self.epoch_bar = None
        t = self.trainer
        if t.result.skipped_steps and t.is_main:
            t.logger.warning(f'{t.result.skipped_steps} optimizer step(s) were skipped because of non-finite values')


class DGPLGateHook(HookBase):
    """GPICTURE's DGPL gate (spec §2.9, docs/GPICTURE.md): before each epoch β of the teacher-feature loss is set
    from the CKA of the encoder snapshots after the two previous epochs (`model.gate`, a DifferentialGate) and logged
    (`dgpl/beta`, `dgpl/c_r`); after each epoch the encoder is snapshotted. `DGPL.FIXED_BETA` wins; DGPL off keeps
    β = 1. `model`: the (unwrapped) GPICTURE, which declares this hook in `training_hooks()`. `begin_epoch` /
    `end_epoch` are the same steps without a Trainer (GPICTURE.on_train_epoch_start / _end call them)."""

    def __init__(self, model):
        self.model = model

    def before_epoch(self):
        t = self.trainer
        self.begin_epoch(t.epoch, t.dataset, logger=t.logger, tb_log=t.tb_log if t.is_main else None,
                         ckpt_dir=t.ckpt_dir)

    def after_epoch(self):
        self.end_epoch(self.trainer.epoch)

    def begin_epoch(self, epoch, dataset, logger=None, tb_log=None, ckpt_dir=None):
        """Set β for 0-based `epoch`; returns `(β, c_r)` (c_r None when the gate did not measure it)."""
        head, gate = self.model.dense_head, self.model.gate
        dgpl_cfg = head.dgpl_cfg
        if dgpl_cfg['FIXED_BETA'] is not None or not dgpl_cfg['ENABLED']:
            if not dgpl_cfg['ENABLED'] and dgpl_cfg['FIXED_BETA'] is None:
                head.set_beta(1.0)  # DGPL off: the teacher loss is always on
            beta, c_r = float(head.dgpl_beta), None
        else:
            beta, c_r = gate.beta_for_epoch(self.model, epoch, dataset, head.dgpl_beta.device, ckpt_dir, logger)
            if beta is not None:
                head.set_beta(beta)
            beta = float(head.dgpl_beta)
        if logger is not None:
            logger.info(f'DGPL epoch {epoch}: beta = {beta:.4f}' + (f' (c_r = {c_r:.4f})' if c_r is not None else ''))
        if tb_log is not None:
            tb_log.add_scalar('dgpl/beta', beta, epoch)
            if c_r is not None:
                tb_log.add_scalar('dgpl/c_r', c_r, epoch)
        return beta, c_r

    def end_epoch(self, epoch):
        """Snapshot the encoder after 0-based `epoch` (only when the gate measures β)."""
        dgpl_cfg = self.model.dense_head.dgpl_cfg
        if dgpl_cfg['ENABLED'] and dgpl_cfg['FIXED_BETA'] is None:
            self.model.gate.record(self.model, epoch)
