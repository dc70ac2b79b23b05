"""Checkpoint layout, atomic saving, keep-last-N, explicit resume and the zero-iterations-left refusal."""
import errno
import logging
import os

import numpy as np
import pytest
import torch

from pcdet.training import build_optimizer, build_scheduler
from pcdet.training.checkpointing import (
    CheckpointSaveError,
    CorruptCheckpointError,
    ResumeError,
    check_remaining_work,
    checkpoint_state,
    epoch_checkpoints,
    find_resume_checkpoint,
    prune_checkpoints,
    resume_from,
    save_checkpoint,
)
from pcdet.version import __version__

from training_standins import TinyDetector, optim_cfg


def _setup():
    model = TinyDetector()
    optimizer = build_optimizer(model, optim_cfg())
    scheduler = build_scheduler(optimizer, 4, 2, optim_cfg())
    scaler = torch.amp.GradScaler('cpu', enabled=True, init_scale=128.0)
    return model, optimizer, scheduler, scaler


def test_checkpoint_layout_and_weights_only_load(tmp_path):
    model, optimizer, scheduler, scaler = _setup()
    state = checkpoint_state(model, optimizer, epoch=3, it=12, scheduler=scheduler, scaler=scaler)
    assert {'model_state', 'optimizer_state', 'epoch', 'it', 'version', 'scheduler_state', 'scaler_state',
            'rng_state'} <= set(state)
    assert state['version'] == f'pcdet+{__version__}'
    assert set(state['rng_state']) == {'python', 'numpy', 'torch', 'cuda'}
    assert all(v.device.type == 'cpu' for v in state['model_state'].values())
    path = save_checkpoint(state, tmp_path / 'checkpoint_epoch_3')
    assert path.name == 'checkpoint_epoch_3.pth'
    with open(path, 'rb') as handle:
        assert handle.read(2) == b'PK'  # zipfile format
    loaded = torch.load(path, weights_only=True)
    assert loaded['epoch'] == 3 and loaded['it'] == 12 and loaded['scaler_state']['scale'] == 128.0


def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch):
    model, optimizer, scheduler, scaler = _setup()
    target = tmp_path / 'latest_model.pth'
    save_checkpoint(checkpoint_state(model, optimizer, 0, 1), target)
    before = target.read_bytes()

    real_save = torch.save

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b'partial garbage')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', failing_save)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint(checkpoint_state(model, optimizer, 0, 2), target)
    monkeypatch.setattr(torch, 'save', real_save)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['latest_model.pth']
    assert torch.load(target, weights_only=True)['it'] == 1


def test_keep_last_n_by_epoch_number_not_mtime_or_name(tmp_path):
    for epoch in range(1, 13):
        path = tmp_path / f'checkpoint_epoch_{epoch}.pth'
        path.write_bytes(b'x')
        os.utime(path, (1e9 - epoch, 1e9 - epoch))  # older epochs look newer
    (tmp_path / 'latest_model.pth').write_bytes(b'x')
    removed = prune_checkpoints(tmp_path, 3)
    assert len(removed) == 9
    assert [e for e, _ in epoch_checkpoints(tmp_path)] == [10, 11, 12]
    assert (tmp_path / 'latest_model.pth').exists()


def _save_run_state(tmp_path, name, epoch, it):
    model, optimizer, scheduler, scaler = _setup()
    for p in model.parameters():
        p.data.fill_(0.5)
    model.linear.weight.grad = torch.ones_like(model.linear.weight)
    model.linear.bias.grad = torch.ones_like(model.linear.bias)
    scheduler.step(it - 1)
    optimizer.step()
    scaler.scale(torch.ones(1))  # lazy init of the scale tensor
    scaler.update(64.0)
    np.random.seed(5)
    torch.manual_seed(5)
    state = checkpoint_state(model, optimizer, epoch, it, scheduler, scaler)
    state['data_seed'] = 42
    path = save_checkpoint(state, tmp_path / name)
    expected_np, expected_torch = np.random.rand(), torch.rand(1)
    return path, model, optimizer, expected_np, expected_torch


def test_resume_restores_everything_and_logs_it(tmp_path, caplog):
    path, ref_model, ref_opt, expected_np, expected_torch = _save_run_state(tmp_path, 'checkpoint_epoch_1', 1, 4)
    model, optimizer, scheduler, scaler = _setup()
    np.random.seed(0)
    torch.manual_seed(0)
    logger = logging.getLogger('test_resume')
    with caplog.at_level(logging.INFO, logger='test_resume'):
        info = resume_from(path, model, optimizer, scheduler, scaler, logger=logger, iters_per_epoch=4)
    assert (info.start_epoch, info.start_iter, info.accumulated_iter, info.data_seed) == (1, 0, 4, 42)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    assert optimizer.state_dict()['state'][0]['step'] == ref_opt.state_dict()['state'][0]['step']
    assert scheduler.last_iteration == 3 and scaler.get_scale() == 64.0
    assert np.random.rand() == expected_np and torch.equal(torch.rand(1), expected_torch)
    text = caplog.text
    for item in ('model_state', 'optimizer_state', 'scheduler_state', 'scaler_state', 'rng_state', 'epoch 1'):
        assert item in text


def test_resume_auto_latest_mid_epoch_and_missing_items(tmp_path, caplog):
    logger = logging.getLogger('test_resume_auto')
    model, optimizer, scheduler, scaler = _setup()
    with caplog.at_level(logging.INFO, logger='test_resume_auto'):
        assert resume_from('auto', model, optimizer, ckpt_dir=tmp_path, logger=logger).path is None
    assert 'starting from scratch' in caplog.text

    _save_run_state(tmp_path, 'checkpoint_epoch_1', 1, 4)
    path, *_ = _save_run_state(tmp_path, 'latest_model', 1, 6)
    os.utime(path, (2e9, 2e9))
    assert find_resume_checkpoint(tmp_path)[0] == path
    info = resume_from('auto', model, optimizer, scheduler, scaler, ckpt_dir=tmp_path, logger=logger,
                       iters_per_epoch=4)
    assert info.path == path and (info.start_epoch, info.start_iter, info.accumulated_iter) == (1, 2, 6)

    # an upstream-style checkpoint (only model/optimizer/epoch/it/version): resumes, lists what was missing
    upstream_optim = optimizer.state_dict()
    for group in upstream_optim['param_groups']:
        group['weight_decay'] = 0.0  # upstream's inner Adam: the fastai wrapper applied the decay itself
    upstream = {'model_state': model.state_dict(), 'optimizer_state': upstream_optim, 'epoch': 2, 'it': 8,
                'version': 'pcdet+0.6.0+8cacccec'}
    torch.save(upstream, tmp_path / 'upstream.pth')
    with caplog.at_level(logging.INFO, logger='test_resume_auto'):
        info = resume_from(tmp_path / 'upstream.pth', model, optimizer, scheduler, scaler, logger=logger,
                           iters_per_epoch=4)
    assert set(info.missing) == {'scheduler_state', 'scaler_state', 'rng_state'}
    assert 'Not in the checkpoint' in caplog.text
    assert scheduler.last_iteration == 7  # the schedule is a function of `it`
    assert [g['weight_decay'] for g in optimizer.param_groups] == [0.01, 0.01]  # config wins over the file
    assert 'weight_decay was 0.0 in the checkpoint' in caplog.text

    with pytest.raises(ResumeError, match='no such checkpoint'):
        resume_from(tmp_path / 'nope.pth', model)
    other = torch.nn.Linear(5, 5)
    with pytest.raises(ResumeError, match='does not match'):
        resume_from(tmp_path / 'upstream.pth', other)


def test_refuses_to_finish_with_zero_iterations_left(tmp_path):
    path, *_ = _save_run_state(tmp_path, 'checkpoint_epoch_2', 2, 8)
    model, optimizer, scheduler, scaler = _setup()
    info = resume_from(path, model, optimizer, scheduler, scaler, iters_per_epoch=4)
    with pytest.raises(ResumeError, match='zero iterations left'):
        check_remaining_work(info, total_epochs=2)
    check_remaining_work(info, total_epochs=3)


def test_disk_full_at_save_is_one_error_naming_the_file(tmp_path, monkeypatch):
    model, optimizer, _, _ = _setup()
    target = tmp_path / 'checkpoint_epoch_1.pth'
    save_checkpoint(checkpoint_state(model, optimizer, 1, 4), target)
    before = target.read_bytes()

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b'PK partial')
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(CheckpointSaveError) as caught:
        save_checkpoint(checkpoint_state(model, optimizer, 1, 5), target)
    message = str(caught.value)
    assert str(target) in message and 'no space left on device' in message and 'unchanged' in message
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_resume_auto_skips_a_truncated_latest_and_removes_stale_temp_files(tmp_path, caplog):
    """After a kill -9 (or a full disk) mid-save: the newest file is truncated and a temp file of the atomic save
    is left over. --resume auto falls back to the newest readable checkpoint, naming the bad file, and cleans up."""
    logger = logging.getLogger('test_resume_truncated')
    _save_run_state(tmp_path, 'checkpoint_epoch_1', 1, 4)
    latest, *_ = _save_run_state(tmp_path, 'latest_model', 1, 6)
    os.utime(latest, (2e9, 2e9))
    latest.write_bytes(latest.read_bytes()[:len(latest.read_bytes()) // 2])
    stale = [tmp_path / '.latest_model.pth.k2j4_x9.tmp', tmp_path / '.checkpoint_epoch_2.pth.abc123.tmp']
    for path in stale:
        path.write_bytes(b'PK half a checkpoint')
    unrelated = tmp_path / 'notes.tmp'
    unrelated.write_text('not ours')
    model, optimizer, scheduler, scaler = _setup()
    with caplog.at_level(logging.INFO, logger='test_resume_truncated'):
        info = resume_from('auto', model, optimizer, scheduler, scaler, ckpt_dir=tmp_path, logger=logger,
                           iters_per_epoch=4)
    assert info.path == tmp_path / 'checkpoint_epoch_1.pth' and info.accumulated_iter == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(latest) in w and 'unreadable' in w for w in warnings), warnings
    assert any(all(str(p) in w for p in stale) for w in warnings), warnings
    assert not any('unpickling' in w for w in warnings), warnings
    assert not any(p.exists() for p in stale) and unrelated.exists()

    with pytest.raises(CorruptCheckpointError, match=rf'{latest}.*unreadable'):  # explicit path: no fallback
        resume_from(latest, model, optimizer)
    (tmp_path / 'checkpoint_epoch_1.pth').write_bytes(b'')
    with pytest.raises(CorruptCheckpointError, match='no readable checkpoint') as caught:
        resume_from('auto', model, optimizer, ckpt_dir=tmp_path)
    assert str(latest) in str(caught.value) and str(tmp_path / 'checkpoint_epoch_1.pth') in str(caught.value)
