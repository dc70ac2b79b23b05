"""Checkpoint save side and explicit resume (spec §1.10, §6 item 7).

    checkpoint_state(model, optimizer, epoch, it, scheduler=None, scaler=None) -> dict
    save_checkpoint(state, filename)                 # atomic: temp file + rename; returns the final path;
                                                     # CheckpointSaveError (an OSError) names the file
    prune_checkpoints(ckpt_dir, max_keep)            # keep the last N `checkpoint_epoch_<N>.pth` by epoch number
    find_resume_checkpoint(ckpt_dir)                 # candidates for `--resume auto`, newest first
    remove_stale_temp_files(ckpt_dir, logger=None)   # temp files of saves cut short by a kill; removed on resume
    load_checkpoint_file(path)                       # CorruptCheckpointError naming an unreadable file
    resume_from(path_or_auto, model, optimizer=None, scheduler=None, scaler=None, ckpt_dir=None, logger=None,
                iters_per_epoch=None) -> ResumeInfo

Checkpoint layout (a superset of upstream's, so OpenPCDet/DSVT tools read ours and we resume theirs):

    {'model_state': OrderedDict (unwrapped from DDP, on CPU), 'optimizer_state': optimizer.state_dict(),
     'epoch': int, 'it': int (accumulated optimizer iterations), 'version': 'pcdet+<version>',
     'scheduler_state': dict | None, 'scaler_state': dict | None,
     'rng_state': {'python', 'numpy', 'torch', 'cuda'} (the saving process),
     optional 'rng_state_per_rank': [rng_state, ...], 'data_seed': int}

`checkpoint_epoch_<N>.pth` is written after N completed epochs (`epoch = N`); `latest_model.pth` mid-epoch with the
*current* 0-based epoch, so a resume continues at iteration `it - epoch * iters_per_epoch` of that epoch.
Files use torch's zipfile format and contain only tensors and plain Python values (loadable with
`torch.load(weights_only=True)`).
"""
import errno
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..utils.file_utils import atomic_write
from ..version import __version__
from .distributed import get_rng_state, set_rng_state, unwrap_model

CKPT_PATTERN = re.compile(r'checkpoint_epoch_(\d+)\.pth$')
LATEST_NAME = 'latest_model.pth'
# pcdet.utils.file_utils.atomic_write's temporary sibling of a checkpoint: `.<name>.pth.<random>.tmp`
TEMP_PATTERN = re.compile(r'^\..+\.pth\.[^.]+\.tmp$')


class ResumeError(RuntimeError):
    """A resume request cannot be honoured; the message says why and what to do."""


class CorruptCheckpointError(ResumeError):
    """A checkpoint file cannot be read (truncated, not a torch file); the message names it."""


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed (e.g. disk full); the message names the file. The previous file is intact."""


def model_state_to_cpu(model_state):
    return type(model_state)((key, value.cpu() if torch.is_tensor(value) else value)
                             for key, value in model_state.items())


def checkpoint_state(model=None, optimizer=None, epoch=None, it=None, scheduler=None, scaler=None):
    """The dict saved by `save_checkpoint` (see the module docstring); no collectives, callable on any rank."""
    model_state = model_state_to_cpu(unwrap_model(model).state_dict()) if model is not None else None
    return {
        'model_state': model_state,
        'optimizer_state': optimizer.state_dict() if optimizer is not None else None,
        'epoch': epoch,
        'it': it,
        'version': f'pcdet+{__version__}',
        'pcdet_version': __version__,  # marker: written by pcdet, not upstream (pcdet.utils.checkpoint)
        'scheduler_state': scheduler.state_dict() if scheduler is not None else None,
        'scaler_state': scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        'rng_state': get_rng_state(),
    }


def save_checkpoint(state, filename='checkpoint'):
    """Write `state` atomically to `filename` (`.pth` appended when missing, as upstream). An exception while
    serialising leaves any previous file intact and no temp file behind."""
    filename = Path(filename)
    if filename.suffix != '.pth':
        filename = filename.with_name(filename.name + '.pth')
    try:
        with atomic_write(filename, 'wb') as handle:
            torch.save(state, handle)
    except OSError as err:
        raise CheckpointSaveError(err.errno, save_error_message(filename, err)) from err
    return filename


def save_error_message(filename, err):
    """One line naming `filename`, the cause and that the previous file is unchanged (atomic_write's guarantee)."""
    if err.errno in (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC)):
        try:
            free = f'{shutil.disk_usage(filename.parent).free / 2 ** 20:.0f} MiB free there now'
        except OSError:
            free = 'free space unknown'
        cause = f'no space left on device ({free}); free disk space or lower --max_ckpt_save_num'
    else:
        cause = err.strerror or str(err)
    return f'cannot save checkpoint {filename}: {cause}. Any previous {filename.name} is unchanged.'


def epoch_checkpoints(ckpt_dir):
    """`[(epoch, path)]` of `checkpoint_epoch_<N>.pth` in `ckpt_dir`, sorted by epoch number."""
    ckpt_dir = Path(ckpt_dir)
    found = []
    if ckpt_dir.is_dir():
        for path in ckpt_dir.iterdir():
            match = CKPT_PATTERN.search(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(ckpt_dir, max_keep):
    """Delete all but the `max_keep` highest-epoch `checkpoint_epoch_*.pth`; returns the deleted paths."""
    if max_keep is None or max_keep <= 0:
        return []
    ckpts = epoch_checkpoints(ckpt_dir)
    removed = []
    for _, path in ckpts[:max(len(ckpts) - max_keep, 0)]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def find_resume_checkpoint(ckpt_dir):
    """Candidates for `--resume auto`, newest first: `checkpoint_epoch_*.pth` and `latest_model.pth` by mtime."""
    ckpt_dir = Path(ckpt_dir)
    candidates = [p for _, p in epoch_checkpoints(ckpt_dir)]
    if (ckpt_dir / LATEST_NAME).is_file():
        candidates.append(ckpt_dir / LATEST_NAME)
    return sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True)


def remove_stale_temp_files(ckpt_dir, logger=None):
    """Delete the temporary files (`.<name>.pth.<random>.tmp`) that a save killed mid-write (SIGKILL, power loss)
    leaves in `ckpt_dir`, with a warning naming them; returns the removed paths. Only call it when no save of this
    run can be in progress (at resume, before training starts)."""
    ckpt_dir = Path(ckpt_dir)
    stale = sorted(p for p in ckpt_dir.iterdir() if TEMP_PATTERN.match(p.name) and p.is_file()) \
        if ckpt_dir.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale and logger is not None:
        logger.warning(f'Removed {len(stale)} temporary file(s) of interrupted checkpoint saves: '
                       f'{[str(p) for p in stale]}')
    return stale


def load_checkpoint_file(path, map_location='cpu', logger=None):
    """`torch.load` with `weights_only=True`; falls back to full unpickling (logged) for old checkpoints that hold
    other Python objects (only load checkpoints you trust). A file torch cannot read at all (truncated by a crash
    or a full disk, not a torch file) raises CorruptCheckpointError naming it."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except pickle.UnpicklingError as err:  # weights_only refused a global (or the file is not a pickle at all)
        first_error = err
    except Exception as err:  # zip reader errors (RuntimeError), EOFError, ...: the file itself is damaged
        raise CorruptCheckpointError(corrupt_message(path, err)) from err
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise CorruptCheckpointError(corrupt_message(path, err)) from first_error
    if logger is not None:
        logger.warning(f'{path}: weights_only load failed ({type(first_error).__name__}); loaded with full '
                       'unpickling')
    return checkpoint


def corrupt_message(path, err):
    """One line naming the unreadable `path`, its size and the first line of torch's error."""
    size = path.stat().st_size if path.is_file() else 0
    reason = (str(err).splitlines() or [''])[0] or 'no details'
    return (f'checkpoint {path} ({size} bytes) is unreadable ({type(err).__name__}: {reason}): truncated by a crash '
            'or a full disk, or not a torch checkpoint')


SCHEDULED_KEYS = ('lr', 'betas', 'momentum')


def load_optimizer_state(optimizer, state, logger=None):
    """Load per-parameter state (moments, step counts) from `state`, keeping the CURRENT group hyper-parameters
    (the config is authoritative; lr/beta1 are set by the scheduler anyway). This matters for upstream checkpoints:
    their inner Adam stored `weight_decay=0` because the fastai wrapper applied the decay itself."""
    current = [{k: v for k, v in group.items() if k != 'params'} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, hparams in zip(optimizer.param_groups, current):
        for key, value in hparams.items():
            old = group.get(key)
            if key not in SCHEDULED_KEYS and old != value and logger is not None:
                logger.info(f'optimizer group {hparams.get("group_name", "?")}: {key} was {old} in the checkpoint, '
                            f'now {value} (config used)')
            group[key] = value


@dataclass
class ResumeInfo:
    path: Path = None
    start_epoch: int = 0        # first epoch (0-based) to run
    start_iter: int = 0         # iteration inside start_epoch to continue from
    accumulated_iter: int = 0   # global optimizer iterations already done
    restored: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    data_seed: int = None
    checkpoint: dict = None     # the raw checkpoint (minus tensors already consumed), for callers that need more


def _strip_module_prefix(state):
    if state and all(key.startswith('module.') for key in state):
        return type(state)((key[len('module.'):], value) for key, value in state.items())
    return state


def load_newest_readable(candidates, logger=None):
    """`(path, checkpoint)` of the first readable file of `candidates` (newest first); each unreadable one is skipped
    with a warning naming it. CorruptCheckpointError listing them all when none is readable."""
    problems = []
    for path in candidates:
        try:
            return Path(path), load_checkpoint_file(path, map_location='cpu', logger=logger)
        except CorruptCheckpointError as err:
            problems.append(str(err))
            if logger is not None:
                logger.warning(f'--resume auto: skipping {err}; trying the next newest checkpoint')
    raise CorruptCheckpointError('--resume auto: no readable checkpoint: ' + '; '.join(problems)
                                 + '. Resume from a copy with --resume PATH, or start over with --overwrite.')


def resume_from(path_or_auto, model, optimizer=None, scheduler=None, scaler=None, ckpt_dir=None, logger=None,
                iters_per_epoch=None, rank=0, world_size=1, restore_rng=True, candidates=None):
    """Restore a training run. `path_or_auto`: a checkpoint path, or 'auto' for the newest readable checkpoint in
    `ckpt_dir` (or of `candidates`, newest first, when rank 0 listed them for all ranks); unreadable files
    (truncated by a kill or a full disk) are skipped with a warning naming them.

    Rank 0 first removes temporary files of interrupted saves from `ckpt_dir` (warning naming them).
    Restores model (strict), optimizer, scheduler, AMP scaler, RNG state (this rank's, when the world size matches),
    epoch and iteration, and logs each item; items absent from the checkpoint (e.g. an upstream OpenPCDet file) are
    logged as such. Returns a ResumeInfo; with 'auto' and no checkpoint, `ResumeInfo(path=None)` (fresh start, logged).
    Call it right before training: it resets the RNGs.
    """
    log = logger.info if logger is not None else (lambda *_: None)
    if ckpt_dir is not None and rank == 0:
        remove_stale_temp_files(ckpt_dir, logger)
    if str(path_or_auto) == 'auto':
        if ckpt_dir is None and candidates is None:
            raise ResumeError('--resume auto needs the run\'s checkpoint folder')
        candidates = find_resume_checkpoint(ckpt_dir) if candidates is None else [Path(c) for c in candidates]
        if not candidates:
            log(f'--resume auto: no checkpoint in {ckpt_dir}; starting from scratch')
            return ResumeInfo()
        path, ckpt = load_newest_readable(candidates, logger)
        log(f'--resume auto: newest readable checkpoint is {path}')
    else:
        path = Path(path_or_auto)
        if not path.is_file():
            raise ResumeError(f'--resume {path}: no such checkpoint file')
        ckpt = load_checkpoint_file(path, map_location='cpu', logger=logger)

    if not isinstance(ckpt, dict) or 'model_state' not in ckpt:
        raise ResumeError(f'{path} is not a training checkpoint (no model_state); use --pretrained_model for '
                          'weights-only files')
    info = ResumeInfo(path=Path(path), checkpoint=ckpt)
    log(f'==> Resuming from {path} (version {ckpt.get("version", "unknown")})')

    target = unwrap_model(model)
    state = _strip_module_prefix(ckpt['model_state'])
    result = target.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ResumeError(f'{path}: model_state does not match the model: missing {result.missing_keys[:10]} '
                          f'({len(result.missing_keys)}), unexpected {result.unexpected_keys[:10]} '
                          f'({len(result.unexpected_keys)}). Resume needs the same config; use --pretrained_model '
                          'to initialise a different model.')
    info.restored.append(f'model_state ({len(state)} tensors)')

    def restore(key, obj, loader):
        if obj is None:
            return
        if ckpt.get(key) is None:
            info.missing.append(key)
            return
        try:
            loader(ckpt[key])
        except (ValueError, KeyError, RuntimeError) as err:
            raise ResumeError(f'{path}: cannot restore {key}: {err}. Was the run started with a different '
                              'OPTIMIZER or OPTIMIZATION.COMPAT_LEAF_MODULE_PARAM_GROUPS?') from err
        info.restored.append(key)

    restore('optimizer_state', optimizer, lambda s: load_optimizer_state(optimizer, s, logger))
    if scaler is not None and not scaler.is_enabled():
        scaler = None
    restore('scaler_state', scaler, lambda s: scaler.load_state_dict(s))

    epoch = int(ckpt.get('epoch') or 0)
    accumulated_iter = int(ckpt.get('it') or 0)
    start_epoch, start_iter = epoch, 0
    if iters_per_epoch:
        # checkpoint_epoch_N: epoch=N, it=N*iters -> (N, 0); latest_model.pth: epoch=e (in progress), it=e*iters+k
        offset = accumulated_iter - epoch * iters_per_epoch
        if 0 <= offset < iters_per_epoch:
            start_iter = offset
        elif offset == iters_per_epoch:
            start_epoch = epoch + 1
        elif logger is not None:
            logger.warning(f'{path}: it={accumulated_iter} is inconsistent with epoch={epoch} and {iters_per_epoch} '
                           f'iterations/epoch (batch size, world size or dataset changed?); continuing at the start '
                           f'of epoch {epoch}')
    info.start_epoch, info.start_iter, info.accumulated_iter = start_epoch, start_iter, accumulated_iter

    if scheduler is not None:
        if ckpt.get('scheduler_state') is not None:
            scheduler.load_state_dict(ckpt['scheduler_state'])
            info.restored.append('scheduler_state')
            for key, (saved, current) in getattr(scheduler, 'resume_mismatch', {}).items():
                if logger is not None:
                    logger.warning(f'LR schedule: {key} was {saved} in the checkpoint, now {current} (the current '
                                   'config is used)')
        else:
            info.missing.append('scheduler_state')
        # the schedules are functions of the iteration: this is all a resume needs
        if accumulated_iter > 0:
            scheduler.step(accumulated_iter - 1)

    if restore_rng:
        rng_state = None
        per_rank = ckpt.get('rng_state_per_rank')
        if per_rank is not None and len(per_rank) == world_size:
            rng_state = per_rank[rank]
        elif world_size == 1 or rank == 0:
            rng_state = ckpt.get('rng_state')
        elif logger is not None:
            saved = f'saved for {len(per_rank)} processes, now {world_size}' if per_rank is not None else \
                f'of rank {rank} not in the checkpoint'
            logger.warning(f'RNG state {saved}: not restored, so this resume is not bit-identical')
        if rng_state is not None:
            names = set_rng_state(rng_state)
            info.restored.append(f'rng_state ({", ".join(names)})')
        else:
            info.missing.append('rng_state')
    info.data_seed = ckpt.get('data_seed')

    log(f'==> Restored: {", ".join(info.restored)}')
    if info.missing:
        log(f'==> Not in the checkpoint (left as initialised): {", ".join(info.missing)}')
    log(f'==> Continuing at epoch {start_epoch} (0-based), iteration {start_iter} of that epoch, '
        f'accumulated iteration {accumulated_iter}')
    return info


def check_remaining_work(info, total_epochs, iters_per_epoch=None):
    """Raise ResumeError when a resumed run has no iterations left (upstream silently 'finished', OPCD #1618)."""
    if info.path is None:
        return
    if info.start_epoch >= total_epochs:
        raise ResumeError(
            f'{info.path} already completed {info.start_epoch} epoch(s) (it={info.accumulated_iter}) and '
            f'--epochs/NUM_EPOCHS is {total_epochs}: there are zero iterations left to train. Raise --epochs to '
            'continue training, evaluate with tools/test.py, or start a new run with another --extra_tag.')
