"""The trainer's hooks (pcdet.training.hooks): call order, the built-in order, per-step flags, a failing hook, how a
model declares its hooks, and GPICTURE's DGPL gate run by the trainer (tiny stand-ins; GPICTURE's tiny config)."""
import logging
import sys
from pathlib import Path

import pytest
import torch

from pcdet.training import build_optimizer, build_scheduler, train_model
from pcdet.training.checkpointing import CheckpointSaveError, epoch_checkpoints
from pcdet.training.hooks import (
    CheckpointHook,
    DGPLGateHook,
    DisableAugmentationHook,
    HookBase,
    LoggingHook,
    model_training_hooks,
)
from pcdet.utils.common_utils import set_random_seed

from training_standins import RegressionDataset, TinyDetector, make_loader, model_func, optim_cfg

LOGGER = logging.getLogger('test_hooks')
ITERS, EPOCHS = 4, 2   # 16 samples, batch 4


class Recorder(HookBase):
    """Records (method, epoch, iteration) for every hook method."""

    def __init__(self, events):
        self.events = events

    def _record(self, name):
        t = self.trainer
        self.events.append((name, t.epoch, t.iter))

    def before_train(self):
        self._record('before_train')

    def before_epoch(self):
        self._record('before_epoch')

    def before_step(self):
        self._record('before_step')

    def after_step(self):
        self._record('after_step')
        assert self.trainer.step.epoch_iter == self.trainer.iter - 1 - self.trainer.epoch * ITERS

    def after_epoch(self):
        self._record('after_epoch')

    def after_train(self):
        self._record('after_train')


def _setup(seed=0):
    set_random_seed(seed, deterministic=True)
    dataset = RegressionDataset(n=16, augment=False)
    loader = make_loader(dataset, batch_size=4, shuffle=True)
    model = TinyDetector()
    cfg = optim_cfg()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, len(loader), EPOCHS, cfg)
    return model, optimizer, scheduler, loader, cfg


def _train(model, optimizer, scheduler, loader, cfg, ckpt_dir=None, start_epoch=0, start_iter=0, fn=model_func,
           **kw):
    return train_model(model, optimizer, loader, fn, scheduler, cfg, start_epoch, EPOCHS, start_iter, rank=0,
                       tb_log=kw.pop('tb_log', None), ckpt_save_dir=ckpt_dir, logger=LOGGER, data_seed=0,
                       show_progress=False, **kw)


def _expected(start_epoch=0, first_iter=0):
    events, it = [('before_train', start_epoch, first_iter)], first_iter
    for epoch in range(start_epoch, EPOCHS):
        events.append(('before_epoch', epoch, it))
        for _ in range(it - epoch * ITERS, ITERS):
            events += [('before_step', epoch, it), ('after_step', epoch, it + 1)]
            it += 1
        events.append(('after_epoch', epoch, it))
    return events + [('after_train', EPOCHS - 1, it)]


def test_hook_methods_are_called_in_order():
    events = []
    result = _train(*_setup(), hooks=[Recorder(events)])
    assert result.accumulated_iter == ITERS * EPOCHS
    assert events == _expected()
    names = [name for name, _, _ in events if name != 'before_step']
    assert names == ['before_train'] + (['before_epoch'] + ['after_step'] * ITERS + ['after_epoch']) * EPOCHS \
        + ['after_train']


def test_a_mid_epoch_resume_calls_the_hooks_for_the_remaining_steps_only():
    events = []
    start_iter = ITERS + 1   # epoch 1, its second iteration (what latest_model.pth resumes to)
    _train(*_setup(), start_epoch=1, start_iter=start_iter, hooks=[Recorder(events)])
    assert events == _expected(start_epoch=1, first_iter=start_iter)
    assert events[0] == ('before_train', 1, start_iter) and events[1] == ('before_epoch', 1, start_iter)


def test_the_built_in_hooks_run_before_the_callers_in_a_fixed_order(tmp_path):
    seen = []

    class Inspect(HookBase):
        def before_train(self):
            seen.extend(type(h) for h in self.trainer.hooks)

    class ModelHook(HookBase):
        pass

    model, optimizer, scheduler, loader, cfg = _setup()
    model.training_hooks = lambda: [ModelHook()]
    hook_cfg = {'DisableAugmentationHook': {'DISABLE_AUG_LIST': ['gt_sampling'], 'NUM_LAST_EPOCHS': 0}}
    _train(model, optimizer, scheduler, loader, cfg, tmp_path, hook_cfg=hook_cfg, hooks=[Inspect()])
    assert seen == [DisableAugmentationHook, ModelHook, LoggingHook, CheckpointHook, Inspect]
    seen.clear()
    _train(*_setup(), hooks=[Inspect()])   # no HOOK block, a model without training_hooks
    assert seen == [LoggingHook, CheckpointHook, Inspect]


def test_sync_flags_reach_after_step_of_the_same_step():
    class Flagger(HookBase):
        sync_flags = ('odd',)

        def __init__(self):
            self.seen = []

        def before_step(self):
            self.trainer.local_flags['odd'] = self.trainer.iter % 2 == 1

        def after_step(self):
            self.seen.append(self.trainer.step.flags['odd'])

    flagger = Flagger()
    _train(*_setup(), hooks=[flagger])
    assert flagger.seen == [it % 2 == 1 for it in range(ITERS * EPOCHS)]


class Boom(RuntimeError):
    pass


def test_a_hook_that_raises_stops_training_and_names_itself(tmp_path, caplog):
    class Exploding(HookBase):
        def after_step(self):
            if self.trainer.iter == 3:
                raise Boom('no space for the metrics')

    calls, events = {'n': 0}, []

    def counting(model, batch):
        calls['n'] += 1
        return model_func(model, batch)

    with caplog.at_level(logging.ERROR, logger='test_hooks'), pytest.raises(Boom, match='no space') as caught:
        _train(*_setup(), ckpt_dir=tmp_path, fn=counting, hooks=[Recorder(events), Exploding()])
    assert calls['n'] == 3                                          # no step after the failing one
    assert events[-1] == ('after_step', 0, 3) and ('after_train', 0, 3) not in events
    assert epoch_checkpoints(tmp_path) == []                        # training stopped inside epoch 0
    message = 'Training stopped: hook Exploding.after_step (epoch 0, iteration 3) raised Boom: no space for the metrics'
    assert message in caplog.text
    if sys.version_info >= (3, 11):
        assert caught.value.__notes__ == ['raised in training hook Exploding.after_step (epoch 0, iteration 3)']


def test_the_exception_type_of_a_failing_hook_is_kept(tmp_path):
    """tools/train.py turns a CheckpointSaveError into a one-line error: the hook machinery must not wrap it."""
    class FullDisk(HookBase):
        def before_epoch(self):
            raise CheckpointSaveError(28, 'No space left on device', str(tmp_path / 'checkpoint_epoch_1.pth'))

    with pytest.raises(CheckpointSaveError):
        _train(*_setup(), hooks=[FullDisk()])


def test_a_model_declares_its_hooks_explicitly():
    model = TinyDetector()
    assert model_training_hooks(model) == []                      # no training_hooks(): no hooks
    model.training_hooks = lambda: [object()]
    with pytest.raises(TypeError, match=r'training_hooks\(\) returned .* not a pcdet.training.hooks.HookBase'):
        model_training_hooks(model)
    with pytest.raises(TypeError, match='not a pcdet.training.hooks.HookBase'):
        _train(*_setup(), hooks=[lambda: None])


def test_a_method_named_like_an_old_epoch_hook_is_not_called():
    """Per-epoch logic runs only through declared hooks: nothing is looked up on the model by name."""
    model, optimizer, scheduler, loader, cfg = _setup()
    model.on_train_epoch_start = model.on_train_epoch_end = lambda *a, **k: pytest.fail('called by name')
    _train(model, optimizer, scheduler, loader, cfg)


# ---- GPICTURE's DGPL gate, run by the trainer ---------------------------------------------------------------------
GPICTURE_CFG = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs' / 'gpicture_models' / \
    'gpicture_tiny_synthetic_pretrain.yaml'


class _Clouds(torch.utils.data.Dataset):
    """Four random clouds in the tiny config's range with 64-d teacher features of four classes."""

    def __init__(self, n=4, num_points=1500):
        self.samples = []
        for i in range(n):
            generator = torch.Generator().manual_seed(i)
            xyz = torch.rand(num_points, 3, generator=generator) * torch.tensor([60.0, 60.0, 7.9]) - torch.tensor(
                [30.0, 30.0, 4.95])
            labels = (xyz[:, 2] > -1).long() + 2 * (xyz[:, 0] > 0).long()
            prototypes = torch.nn.functional.normalize(torch.randn(4, 64, generator=generator), dim=1)
            self.samples.append((torch.cat([xyz, torch.rand(num_points, 2, generator=generator)], 1),
                                 prototypes[labels]))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]

    @staticmethod
    def collate_batch(samples):
        points = torch.cat([torch.cat([torch.full((p.shape[0], 1), float(i)), p], 1)
                            for i, (p, _) in enumerate(samples)])
        return {'points': points.numpy(), 'batch_size': len(samples),
                'point_teacher_features': torch.cat([f for _, f in samples]).numpy()}


class TbRecorder:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), step))


def test_gpicture_declares_the_dgpl_gate_and_the_trainer_runs_it(tmp_path, caplog):
    from pcdet.config import cfg_from_yaml_file
    from pcdet.models.build import build_network_from_cfg
    from pcdet.models.pretraining.dgpl import dgpl_beta
    from pcdet.models.pretraining.progressive import DifferentialGate
    from pcdet.training.train_loop import make_model_func
    from pcdet.utils.batching import load_data_to_device

    set_random_seed(0, deterministic=True)
    cfg = cfg_from_yaml_file(str(GPICTURE_CFG))
    model = build_network_from_cfg(cfg)
    hooks = model_training_hooks(model)
    assert [type(h) for h in hooks] == [DGPLGateHook] and hooks[0].model is model
    dataset = _Clouds()
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True, collate_fn=dataset.collate_batch)
    optimizer = build_optimizer(model, cfg.OPTIMIZATION)
    scheduler = build_scheduler(optimizer, len(loader), 3, cfg.OPTIMIZATION)
    tb = TbRecorder()
    with caplog.at_level(logging.INFO, logger='test_hooks'):
        train_model(model, optimizer, loader, make_model_func('cpu', load_fn=load_data_to_device), scheduler,
                    cfg.OPTIMIZATION, 0, 3, 0, rank=0, tb_log=tb, ckpt_save_dir=tmp_path, logger=LOGGER,
                    data_seed=0, show_progress=False)
    dgpl = [(tag, value, epoch) for tag, value, epoch in tb.scalars if tag.startswith('dgpl/')]
    assert [(tag, epoch) for tag, _, epoch in dgpl] == [('dgpl/beta', 0), ('dgpl/beta', 1), ('dgpl/beta', 2),
                                                        ('dgpl/c_r', 2)]
    assert dgpl[0][1] == dgpl[1][1] == 0.0                         # the gate is closed for epochs 0 and 1
    # epoch 2: the CKA of the encoders after epochs 1 and 0, i.e. of checkpoint_epoch_2.pth and _1.pth
    c_r = DifferentialGate(model.dense_head.dgpl_cfg).snapshot_similarity(model, 2, dataset, torch.device('cpu'),
                                                                           ckpt_dir=tmp_path)
    assert dgpl[3][1] == pytest.approx(c_r, abs=1e-6)
    gamma, delta = cfg.MODEL.DENSE_HEAD.DGPL.GAMMA, cfg.MODEL.DENSE_HEAD.DGPL.DELTA
    assert dgpl[2][1] == pytest.approx(dgpl_beta(c_r, gamma, delta), abs=1e-6)
    assert float(model.dense_head.dgpl_beta) == pytest.approx(dgpl[2][1])
    assert list(model.gate.snapshots) == [1, 2]                    # snapshots after each epoch (last two kept)
    assert 'DGPL epoch 2: beta' in caplog.text
