"""train_model: exact resume, non-finite guard, AMP, logging, merged epochs (tiny stand-in model and data)."""
import logging

import numpy as np
import pytest
import torch

from pcdet.training import build_optimizer, build_scheduler, resume_from, train_model
from pcdet.training.checkpointing import epoch_checkpoints
from pcdet.training.hooks import HookBase
from pcdet.training.train_loop import NonFiniteLossError, build_grad_scaler, resolve_amp_mode
from pcdet.utils.common_utils import set_random_seed

from training_standins import RegressionDataset, TinyDetector, make_loader, model_func, optim_cfg, params_of

LOGGER = logging.getLogger('test_train_loop')
ITERS, EPOCHS = 4, 3


class Crash(RuntimeError):
    pass


class TbRecorder:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), step))


def _build(seed=666):
    set_random_seed(seed, deterministic=True)
    dataset = RegressionDataset(n=16, augment=True)
    loader = make_loader(dataset, batch_size=4, shuffle=True)
    model = TinyDetector(dropout=0.2)
    cfg = optim_cfg()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, len(loader), EPOCHS, cfg)
    return model, optimizer, scheduler, loader, cfg


def _train(model, optimizer, scheduler, loader, cfg, ckpt_dir, start_epoch=0, start_iter=0, fn=model_func,
           data_seed=666, **kw):
    return train_model(model, optimizer, loader, fn, scheduler, cfg, start_epoch, EPOCHS, start_iter, rank=0,
                       tb_log=kw.pop('tb_log', None), ckpt_save_dir=ckpt_dir, logger=LOGGER, data_seed=data_seed,
                       show_progress=False, logger_iter_interval=2, **kw)


def _crashing(at_call):
    calls = {'n': 0}

    def fn(model, batch):
        calls['n'] += 1
        if calls['n'] == at_call:
            raise Crash('simulated preemption')
        return model_func(model, batch)
    return fn


def test_resume_after_epoch_reproduces_uninterrupted_run_bitwise(tmp_path):
    model, optimizer, scheduler, loader, cfg = _build()
    tb = TbRecorder()
    result = _train(model, optimizer, scheduler, loader, cfg, tmp_path / 'full', tb_log=tb)
    reference = params_of(model)
    assert result.accumulated_iter == ITERS * EPOCHS and result.skipped_steps == 0
    assert [e for e, _ in epoch_checkpoints(tmp_path / 'full')] == [1, 2, 3]
    tags = {t for t, _, _ in tb.scalars}
    assert {'train/loss', 'meta_data/learning_rate', 'train/mse', 'train/const', 'train/grad_norm'} <= tags
    by_step = {}
    for tag, value, step in tb.scalars:
        by_step.setdefault(step, {})[tag] = value
    # the stand-in's tensor 'mse' is its loss: each step's value must land under its own tag (stats unpacking)
    assert all(v['train/mse'] == pytest.approx(v['train/loss']) for v in by_step.values() if 'train/mse' in v)
    assert int(model.global_step) == 0  # update_global_step is model_func's business (stand-in does not call it)

    # crash in the first iteration of epoch 2 (after checkpoint_epoch_1 was written), then resume from it
    model, optimizer, scheduler, loader, cfg = _build()
    with pytest.raises(Crash):
        _train(model, optimizer, scheduler, loader, cfg, tmp_path / 'crash', fn=_crashing(ITERS + 1))
    model, optimizer, scheduler, loader, cfg = _build(seed=1)  # different init: everything comes from the ckpt
    info = resume_from(tmp_path / 'crash' / 'checkpoint_epoch_1.pth', model, optimizer, scheduler,
                       iters_per_epoch=ITERS, logger=LOGGER)
    assert (info.start_epoch, info.accumulated_iter) == (1, ITERS)
    _train(model, optimizer, scheduler, loader, cfg, tmp_path / 'crash', info.start_epoch, info.accumulated_iter,
           data_seed=info.data_seed)
    for key, value in params_of(model).items():
        assert torch.equal(value, reference[key]), key


def test_mid_epoch_resume_from_latest_model(tmp_path):
    model, optimizer, scheduler, loader, cfg = _build()
    _train(model, optimizer, scheduler, loader, cfg, tmp_path / 'full')
    reference = params_of(model)

    model, optimizer, scheduler, loader, cfg = _build()
    with pytest.raises(Crash):  # latest_model.pth after every iteration; crash at iteration 7 (epoch 1, it 2)
        _train(model, optimizer, scheduler, loader, cfg, tmp_path / 'crash', fn=_crashing(7),
               ckpt_save_time_interval=0)
    model, optimizer, scheduler, loader, cfg = _build(seed=3)
    info = resume_from('auto', model, optimizer, scheduler, ckpt_dir=tmp_path / 'crash', iters_per_epoch=ITERS)
    assert info.path.name == 'latest_model.pth'
    assert (info.start_epoch, info.start_iter, info.accumulated_iter) == (1, 2, 6)
    _train(model, optimizer, scheduler, loader, cfg, tmp_path / 'crash', info.start_epoch, info.accumulated_iter,
           data_seed=info.data_seed)
    for key, value in params_of(model).items():
        assert torch.equal(value, reference[key]), key


def _snapshotting(nan_at):
    snapshots, calls = [], {'n': 0}

    def fn(model, batch):
        snapshots.append((params_of(model), None))
        calls['n'] += 1
        loss, tb, disp = model_func(model, batch)
        if calls['n'] in nan_at:
            loss = loss * float('nan')
        return loss, tb, disp
    return fn, snapshots


@pytest.mark.parametrize('amp', ['off', 'bf16', 'fp16'])
def test_non_finite_loss_skips_step_and_keeps_parameters(amp, caplog):
    model, optimizer, scheduler, loader, cfg = _build()
    cfg.LOSS_SCALE_FP16 = 16.0  # small enough that fp16 gradients never overflow here
    fn, snapshots = _snapshotting(nan_at={3})
    tb = TbRecorder()
    with caplog.at_level(logging.WARNING, logger='test_train_loop'):
        result = _train(model, optimizer, scheduler, loader, cfg, None, fn=fn, amp_mode=amp, tb_log=tb)
    assert result.skipped_steps == 1 and result.accumulated_iter == ITERS * EPOCHS
    before, after = snapshots[2][0], snapshots[3][0]  # parameters entering call 3 and call 4
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(snapshots[1][0]['linear.weight'], snapshots[2][0]['linear.weight'])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert 'Non-finite loss' in caplog.text
    assert ('meta_data/skipped_steps', 1.0, 3) in tb.scalars


def test_consecutive_non_finite_losses_abort():
    model, optimizer, scheduler, loader, cfg = _build()
    fn, _ = _snapshotting(nan_at=set(range(1, 100)))
    with pytest.raises(NonFiniteLossError):
        _train(model, optimizer, scheduler, loader, cfg, None, fn=fn, max_consecutive_skips=3)


def test_amp_mode_resolution_and_scaler():
    from easydict import EasyDict
    assert resolve_amp_mode(EasyDict()) == 'off'
    assert resolve_amp_mode(EasyDict(AMP=False), use_amp=True) == 'fp16'  # YAML `off` reads as False
    assert resolve_amp_mode(EasyDict(AMP='bf16'), use_amp=True) == 'bf16'
    assert resolve_amp_mode(EasyDict(USE_AMP=True)) == 'fp16'
    assert resolve_amp_mode(EasyDict(AMP='fp16')) == 'fp16'
    with pytest.raises(ValueError):
        resolve_amp_mode(EasyDict(AMP='fp8'))
    scaler = build_grad_scaler('fp16', 'cpu', EasyDict(LOSS_SCALE_FP16=1024.0))
    assert scaler.is_enabled() and scaler.get_scale() == 1024.0
    assert not build_grad_scaler('bf16', 'cpu').is_enabled()


def test_merge_all_iters_to_one_epoch_and_intervals(tmp_path):
    set_random_seed(0)
    dataset = RegressionDataset(n=8, augment=False)
    loader = make_loader(dataset, batch_size=4, shuffle=True)
    model = TinyDetector()
    cfg = optim_cfg()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, 2, EPOCHS, cfg)
    result = _train(model, optimizer, scheduler, loader, cfg, tmp_path, merge_all_iters_to_one_epoch=True,
                    ckpt_save_interval=2, max_ckpt_save_num=1)
    assert dataset.merged_epochs == EPOCHS and result.accumulated_iter == 2 * EPOCHS
    # every 2 epochs + always the final one; keep-last-1
    assert [e for e, _ in epoch_checkpoints(tmp_path)] == [3]
    assert np.isfinite(params_of(model)['linear.weight'].numpy()).all()


def test_model_epoch_hooks_are_called_around_each_epoch(tmp_path):
    model, optimizer, scheduler, loader, cfg = _build()
    events = []

    class EpochHook(HookBase):
        def before_epoch(self):
            # called before the epoch's first step, with the loader's dataset and the checkpoint folder
            t = self.trainer
            assert t.dataset is loader.dataset and t.ckpt_dir == tmp_path
            events.append(('start', t.epoch, len(epoch_checkpoints(tmp_path))))

        def after_epoch(self):
            events.append(('end', self.trainer.epoch))

    model.training_hooks = lambda: [EpochHook()]  # a model declares its hooks (pcdet.training.hooks)
    tb_log = TbRecorder()
    _train(model, optimizer, scheduler, loader, cfg, tmp_path, tb_log=tb_log)
    assert events == [('start', 0, 0), ('end', 0), ('start', 1, 1), ('end', 1), ('start', 2, 2), ('end', 2)]
