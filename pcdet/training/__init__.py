"""Training and evaluation machinery behind `tools/train.py` and `tools/test.py` (spec §1.9–§1.13).

    optimization:  build_optimizer(model, optim_cfg)
    schedulers:    build_scheduler(optimizer, total_iters_each_epoch, total_epochs, optim_cfg); OneCycle,
                   CosineAnnealing, StepDecay — one interface: step(iteration), state_dict(), load_state_dict()
    checkpointing: checkpoint_state, save_checkpoint (atomic), prune_checkpoints, resume_from, check_remaining_work
    train_loop:    train_model, Trainer (the step loop), resolve_amp_mode, build_grad_scaler, make_model_func
    hooks:         HookBase and the hooks around the step loop: CheckpointHook, LoggingHook,
                   DisableAugmentationHook, DGPLGateHook; a model declares its own with `training_hooks()`
    eval_loop:     eval_one_epoch, repeat_eval_ckpt, eval_checkpoint_list
    distributed:   init_dist (torchrun / SLURM env://), split_batch_size, wrap_ddp, all_gather_object, ...
    run_utils:     the tools' argument parsers, config loading and output-folder derivation

Importing this package imports torch only (tensorboardX, tqdm, datasets and models are imported where used).
"""
from .checkpointing import (
    ResumeError,
    ResumeInfo,
    check_remaining_work,
    checkpoint_state,
    find_resume_checkpoint,
    prune_checkpoints,
    resume_from,
    save_checkpoint,
)
from .distributed import DistInfo, init_dist, split_batch_size, unwrap_model, wrap_ddp
from .eval_loop import eval_checkpoint_list, eval_one_epoch, repeat_eval_ckpt
from .hooks import HookBase
from .optimization import build_optimizer
from .schedulers import CosineAnnealing, OneCycle, StepDecay, build_scheduler
from .train_loop import Trainer, build_grad_scaler, make_model_func, resolve_amp_mode, train_model

__all__ = ['CosineAnnealing', 'DistInfo', 'HookBase', 'OneCycle', 'ResumeError', 'ResumeInfo', 'StepDecay', 'Trainer',
           'build_grad_scaler', 'build_optimizer', 'build_scheduler', 'check_remaining_work', 'checkpoint_state',
           'eval_checkpoint_list', 'eval_one_epoch', 'find_resume_checkpoint', 'init_dist', 'make_model_func',
           'prune_checkpoints', 'repeat_eval_ckpt', 'resolve_amp_mode', 'resume_from', 'save_checkpoint',
           'split_batch_size', 'train_model', 'unwrap_model', 'wrap_ddp']
