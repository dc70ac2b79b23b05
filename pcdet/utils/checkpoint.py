"""Checkpoint loading (OpenPCDet layout) with an explicit report of what was and was not loaded.

Layout (spec §1.10): `{'model_state': state_dict, 'optimizer_state': ..., 'epoch': int, 'it': int,
'version': 'pcdet+<version>'}`; a bare state dict is accepted too. Files written by this codebase also carry
`PCDET_MARKER_KEY` (`'pcdet_version'`): upstream OpenPCDet / DSVT / GPICTURE write the same `'version'` string
format (`pcdet+0.6.0+...`, and upstream had a 0.1.0 too), so only the extra key tells the two apart.

* `load_params_from_file(model, filename, logger, to_cpu=True, strict=False, ...) -> LoadReport`: loads every
  checkpoint tensor whose key and shape match the model, logs `Not updated weight <key>: <shape>` for every model
  key left at its current value and `==> Done (loaded X/Y)` as upstream, plus the unexpected and shape-mismatched
  keys. Raises `CheckpointMismatchError` when `strict` and anything is missing / unexpected / mismatched, or when
  fewer than `min_matched_fraction` of the model's keys were loaded (another architecture, wrong file).
* `load_params_with_optimizer(model, filename, to_cpu, optimizer, logger) -> (it, epoch)`: resume.
* `load_pretrained_model(model, filename, pretrained_cfg, logger) -> LoadReport`: `--pretrained_model`: a partial
  load (never `global_step`, spec Q6) with a per-prefix coverage report; with `MODEL.PRETRAINED_ENCODER`
  ({PREFIXES: ['vfe.', 'backbone_3d.'], MIN_COVERAGE: 0.95}) it fails when fewer than MIN_COVERAGE of the model's
  tensors under PREFIXES were loaded -- for fine-tune configs whose encoder is meant to match the pretrained one.
* `read_checkpoint(filename)`: `torch.load`; a file that is not a PyTorch checkpoint (text, truncated zip, ...)
  raises `CheckpointReadError` naming the file.
* `partial_load_warning(report)`: the WARNING text for a deliberate partial load (lists what did not load).
* `upstream_compat_warning(model, checkpoint, loaded_keys, filename)`: every load through `load_params_from_file`
  (hence `--ckpt`, `--pretrained_model`, `Predictor`) and `load_params_with_optimizer` warns (logger WARNING +
  `UpstreamCheckpointWarning`) when the checkpoint has no `PCDET_MARKER_KEY`, DSVT tensors were loaded, and that
  DSVT's upstream-quirk `COMPAT` switches are off: upstream trained with the quirks (docs/DSVT.md "Compat switches").

The save side (`checkpoint_state`, `save_checkpoint`, resume with scheduler / scaler / RNG state) lives in
`pcdet.training.checkpointing`; its files are a superset of this layout.

Files are read with `torch.load(weights_only=True)` by default: checkpoints are data, not code. Pass
`weights_only=False` only for a file you trust that holds other pickled objects.
"""
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config_schema import Schema

DEFAULT_MIN_MATCHED_FRACTION = 0.5
_LIST_LIMIT = 20  # keys listed per category in error messages
# Written by `pcdet.training.checkpointing.checkpoint_state` (value: pcdet.__version__); absent from upstream files.
PCDET_MARKER_KEY = 'pcdet_version'
# DSVT COMPAT switches that reproduce upstream training quirks, and when each one matters for a given DSVT.
_DSVT_COMPAT_RELEVANT = {
    'POS_EMBED_SHIFT_BUG': lambda dsvt: True,  # every block pairs embeddings with partitions
    # pooling only exists between stages; the linear reduction has no empty-slot handling
    'POOL_UNMASKED_EMPTY_SLOTS': lambda dsvt: (getattr(dsvt, 'stage_num', 1) > 1
                                               and getattr(dsvt, 'reduction_type', None) in ('attention', 'maxpool')),
}
# Config path of a DSVT's COMPAT block by module name (named in the `--set` hint); others are named by module.
_DSVT_CONFIG_PATHS = {'': 'MODEL.BACKBONE_3D', 'backbone_3d': 'MODEL.BACKBONE_3D',
                      'backbone_2d.decoder': 'MODEL.BACKBONE_2D.DSVT'}

# MODEL.PRETRAINED_ENCODER (declared here, where it is read; part of the detectors' schema): which tensors must load
# from --pretrained_model and what fraction of them at least.
PRETRAINED_ENCODER_SCHEMA = Schema('MODEL.PRETRAINED_ENCODER', {
    'PREFIXES': ['vfe.', 'backbone_3d.'], 'MIN_COVERAGE': 0.95}, absent='none')


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model (strict load, or too few keys matched)."""


class CheckpointReadError(CheckpointMismatchError):
    """The file is not a readable PyTorch checkpoint (text, truncated, foreign pickle); the message names it."""


class UpstreamCheckpointWarning(UserWarning):
    """A checkpoint not written by pcdet went into a DSVT whose upstream-quirk COMPAT switches are off."""


@dataclass
class LoadReport:
    """What `load_params_from_file` did. Keys are state-dict names of the model."""
    filename: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)          # in the model, not in the checkpoint
    unexpected: list = field(default_factory=list)       # in the checkpoint, not in the model
    shape_mismatch: dict = field(default_factory=dict)   # key -> (checkpoint shape, model shape)
    num_model_keys: int = 0
    version: str = None
    epoch: int = None

    @property
    def num_loaded(self):
        return len(self.loaded)

    @property
    def matched_fraction(self):
        return self.num_loaded / max(self.num_model_keys, 1)

    @property
    def is_exact(self):
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self):
        return (f'loaded {self.num_loaded}/{self.num_model_keys} model tensors from {self.filename}: '
                f'{len(self.missing)} missing, {len(self.unexpected)} unexpected, '
                f'{len(self.shape_mismatch)} shape-mismatched')


def _prefixes(keys):
    return sorted({key.split('.')[0] for key in keys})


def _listing(title, items):
    items = list(items)
    if not items:
        return ''
    shown = ', '.join(items[:_LIST_LIMIT])
    more = f' ... (+{len(items) - _LIST_LIMIT} more)' if len(items) > _LIST_LIMIT else ''
    return f'\n  {title} ({len(items)}): {shown}{more}'


def _per_module_counts(report, model_keys):
    """'vfe 12/12, backbone_3d 0/300, ...': loaded / model keys per top-level module."""
    loaded = set(report.loaded)
    parts = []
    for prefix in _prefixes(model_keys):
        keys = [k for k in model_keys if k.split('.')[0] == prefix]
        parts.append(f'{prefix} {sum(k in loaded for k in keys)}/{len(keys)}')
    return ', '.join(parts)


def _mismatch_message(report, reason, model_keys, ckpt_keys):
    mism = [f'{k} checkpoint {tuple(a)} vs model {tuple(b)}' for k, (a, b) in report.shape_mismatch.items()]
    return (f'Checkpoint {report.filename} does not match the model ({reason}): {report.summary()}.'
            f'\n  loaded per model module: {_per_module_counts(report, model_keys)}'
            f'\n  model top-level modules: {_prefixes(model_keys)}'
            f'\n  checkpoint top-level modules: {_prefixes(ckpt_keys)}'
            + _listing('shape mismatches', mism)
            + _listing('missing in checkpoint', report.missing)
            + _listing('unexpected in checkpoint', report.unexpected)
            + '\n  Is this a checkpoint of another architecture or config? For a deliberate partial load pass '
              'strict=False and a lower min_matched_fraction.')


def read_checkpoint(filename, to_cpu=True, weights_only=True, map_location=None):
    """`torch.load` a checkpoint; `to_cpu` maps storages to CPU (else `map_location`, default: as saved).

    Raises:
        FileNotFoundError: no such file.
        CheckpointReadError: torch cannot read it (a text file, a truncated download, a pickle holding objects
            that `weights_only` refuses); the message names the file and torch's reason.
    """
    filename = Path(filename)
    if not filename.is_file():
        raise FileNotFoundError(f'Checkpoint not found: {filename}')
    location = torch.device('cpu') if to_cpu else map_location
    try:
        return torch.load(str(filename), map_location=location, weights_only=weights_only)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError / ValueError... by file kind
        raise CheckpointReadError(_read_error_message(filename, err, weights_only)) from err


def _read_error_message(filename, err, weights_only):
    reason = (str(err).strip().splitlines() or [''])[0][:300]
    message = (f'cannot read {filename} as a PyTorch checkpoint ({filename.stat().st_size} bytes; '
               f'{type(err).__name__}: {reason}). Expected a file written by torch.save, e.g. '
               f'output/<cfg group>/<cfg name>/<tag>/ckpt/checkpoint_epoch_<N>.pth; a truncated download or a '
               f'text / HTML page saved under a .pth name gives this error.')
    if weights_only and 'weights_only' in str(err).lower():
        message += (' The file holds pickled Python objects that weights_only=True refuses; load it with '
                    'weights_only=False only if you trust its origin.')
    return message


def _model_state_of(checkpoint, filename):
    if isinstance(checkpoint, dict) and 'model_state' in checkpoint:
        return checkpoint['model_state']
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint  # a bare state dict
    keys = list(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CheckpointMismatchError(f'{filename} is not an OpenPCDet checkpoint: no "model_state" entry '
                                  f'(top-level keys: {keys})')


def partial_load_warning(report):
    """WARNING text for a deliberate partial load (`strict=False` accepted on request): counts and the keys that
    were not loaded, so a partly random model is never evaluated silently."""
    mism = [f'{k} checkpoint {tuple(a)} vs model {tuple(b)}' for k, (a, b) in report.shape_mismatch.items()]
    return (f'PARTIAL LOAD: {report.summary()}; the model keys not loaded keep their random / current values'
            + _listing('shape mismatches (not loaded)', mism)
            + _listing('missing in checkpoint (not loaded)', report.missing)
            + _listing('unexpected in checkpoint (ignored)', report.unexpected))


def _dsvt_modules(model):
    """`[(module name, module)]` of the DSVT backbones in `model` (recognised by their resolved `compat` dict, so
    this module needs no import of the model code)."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(getattr(module, 'compat', None), dict) and 'POS_EMBED_SHIFT_BUG' in module.compat]


def upstream_compat_warning(model, checkpoint, loaded_keys, filename='checkpoint'):
    """The warning text when an upstream checkpoint's DSVT weights went into a DSVT with upstream quirks off.

    Args:
        model: the model loaded into (DDP unwrapped). checkpoint: what `torch.load` returned (a dict with
            `model_state`, or a bare state dict). loaded_keys: model state-dict keys that were loaded.
    Returns:
        None when the checkpoint carries `PCDET_MARKER_KEY`, no DSVT tensor was loaded, or every relevant COMPAT
        switch of those DSVTs is on; else a message naming the switches and the `--set` that reproduces upstream.
    """
    if isinstance(checkpoint, dict) and PCDET_MARKER_KEY in checkpoint:
        return None
    loaded_keys = list(loaded_keys)
    off, settings, blocks_to_add = [], [], []
    for name, dsvt in _dsvt_modules(getattr(model, 'module', model)):
        prefix = f'{name}.' if name else ''
        if not any(key.startswith(prefix) for key in loaded_keys):
            continue  # e.g. a pretrained head only: the DSVT keeps its own weights
        cfg_path = _DSVT_CONFIG_PATHS.get(name, f'<COMPAT config of module {name}>')
        switches = [s for s, relevant in _DSVT_COMPAT_RELEVANT.items() if relevant(dsvt) and not dsvt.compat[s]]
        off += [f'{cfg_path}.COMPAT.{switch}' for switch in switches]
        # --set only changes keys the config already has: name the others as lines to write into the config
        stated = (getattr(dsvt, 'model_cfg', None) or {}).get('COMPAT', None)
        settings += [f'{cfg_path}.COMPAT.{s} True' for s in switches if stated is not None and s in stated]
        unstated = [s for s in switches if stated is None or s not in stated]
        if unstated and stated is None:
            blocks_to_add.append(f'add `COMPAT: {{{", ".join(f"{s}: True" for s in unstated)}}}` under {cfg_path} '
                                 f'in the config (it has no COMPAT block, so --set cannot reach it)')
        elif unstated:
            blocks_to_add.append(f'add {", ".join(f"`{s}: True`" for s in unstated)} under {cfg_path}.COMPAT in the '
                                 f'config (--set cannot add a key)')
    if not off:
        return None
    version = checkpoint.get('version', None) if isinstance(checkpoint, dict) else None
    fixes = ([f'--set {" ".join(settings)}'] if settings else []) + blocks_to_add
    return (f'{filename} was not written by pcdet (no "{PCDET_MARKER_KEY}" entry; version {version!r}): an '
            f'OpenPCDet / DSVT / GPICTURE release? Its DSVT weights were loaded into a DSVT with {", ".join(off)} '
            f'= False. Upstream trained with those quirks, so outputs differ from upstream\'s with no other '
            f'sign. To reproduce upstream: {"; ".join(fixes)} (docs/DSVT.md "Compat switches"). Ignore '
            f'this only for a checkpoint trained by pcdet with the switches off before checkpoints carried '
            f'"{PCDET_MARKER_KEY}".')


def warn_upstream_compat(model, checkpoint, loaded_keys, filename, logger=None):
    """Emit `upstream_compat_warning` as a logger WARNING and a `UpstreamCheckpointWarning`; returns the text."""
    message = upstream_compat_warning(model, checkpoint, loaded_keys, filename)
    if message is not None:
        _log(logger).warning(message)
        warnings.warn(message, UpstreamCheckpointWarning, stacklevel=3)
    return message


def filter_matching_state(model_state, checkpoint_state):
    """Split a checkpoint state dict against a model's.

    Returns:
        (update_state: {key: tensor} with matching key and shape, shape_mismatch: {key: (ckpt shape, model shape)}).
    """
    update_state, shape_mismatch = {}, {}
    for key, value in checkpoint_state.items():
        if key not in model_state:
            continue
        if tuple(model_state[key].shape) == tuple(value.shape):
            update_state[key] = value
        else:
            shape_mismatch[key] = (tuple(value.shape), tuple(model_state[key].shape))
    return update_state, shape_mismatch


def _log(logger):
    return logger if logger is not None else logging.getLogger('pcdet')


def load_params_from_file(model, filename, logger=None, to_cpu=True, strict=False, pre_trained_path=None,
                          min_matched_fraction=DEFAULT_MIN_MATCHED_FRACTION, weights_only=True, exclude_keys=()):
    """Load `checkpoint['model_state']` into `model` and report what happened.

    Args:
        model: nn.Module (a DDP wrapper is unwrapped).
        filename: checkpoint path. to_cpu: map tensors to CPU while reading (they are then copied into the
            model's parameters, on whatever device those live).
        strict: raise unless every model key is loaded and no checkpoint key is left over.
        pre_trained_path: optional second checkpoint whose `model_state` entries override the first (upstream).
        min_matched_fraction: raise when fewer than this fraction of the model's state-dict keys are loaded
            (0 disables the check; a deliberate partial load, e.g. a pretrained backbone, may need a lower value).
        exclude_keys: checkpoint keys never loaded (e.g. `global_step` of a pretraining run).
    Returns:
        LoadReport.
    Raises:
        CheckpointMismatchError with the counts, the top-level modules on both sides and the offending keys.
    """
    logger = _log(logger)
    model = getattr(model, 'module', model)
    checkpoint = read_checkpoint(filename, to_cpu=to_cpu, weights_only=weights_only)
    logger.info('==> Loading parameters from checkpoint %s to %s', filename, 'CPU' if to_cpu else 'GPU')
    model_state_disk = dict(_model_state_of(checkpoint, filename))
    if pre_trained_path is not None:
        pretrained = read_checkpoint(pre_trained_path, to_cpu=to_cpu, weights_only=weights_only)
        model_state_disk.update(_model_state_of(pretrained, pre_trained_path))
    for key in exclude_keys:
        model_state_disk.pop(key, None)

    version = checkpoint.get('version', None) if isinstance(checkpoint, dict) else None
    if version is not None:
        logger.info('==> Checkpoint trained from version: %s', version)

    model_state = model.state_dict()
    update_state, shape_mismatch = filter_matching_state(model_state, model_state_disk)
    report = LoadReport(
        filename=str(filename),
        loaded=sorted(update_state),
        missing=sorted(k for k in model_state if k not in model_state_disk),
        unexpected=sorted(k for k in model_state_disk if k not in model_state),
        shape_mismatch=shape_mismatch,
        num_model_keys=len(model_state),
        version=version,
        epoch=checkpoint.get('epoch', None) if isinstance(checkpoint, dict) else None,
    )
    if strict and not report.is_exact:
        raise CheckpointMismatchError(_mismatch_message(report, 'strict load', model_state, model_state_disk))
    if report.matched_fraction < min_matched_fraction:
        raise CheckpointMismatchError(_mismatch_message(
            report, f'only {report.matched_fraction:.0%} of the model keys match, below min_matched_fraction='
                    f'{min_matched_fraction}', model_state, model_state_disk))

    model_state.update(update_state)
    model.load_state_dict(model_state, strict=True)

    for key in sorted(set(model_state) - set(update_state)):
        logger.info('Not updated weight %s: %s', key, tuple(model_state[key].shape))
    for key, (ckpt_shape, model_shape) in shape_mismatch.items():
        logger.info('Shape mismatch %s: checkpoint %s, model %s', key, ckpt_shape, model_shape)
    if report.unexpected:
        logger.info('Unexpected keys in checkpoint (%d): %s', len(report.unexpected),
                    ', '.join(report.unexpected[:_LIST_LIMIT]))
    logger.info('==> Done (loaded %d/%d)', report.num_loaded, report.num_model_keys)
    warn_upstream_compat(model, checkpoint, report.loaded, filename, logger)
    return report


def load_params_with_optimizer(model, filename, to_cpu=False, optimizer=None, logger=None, weights_only=True):
    """Resume training: load weights strictly (matching keys), restore `optimizer_state`; returns `(it, epoch)`.

    As upstream, a sibling `<name>_optim.pth` is used when the checkpoint has no `optimizer_state`.
    """
    logger = _log(logger)
    model = getattr(model, 'module', model)
    checkpoint = read_checkpoint(filename, to_cpu=to_cpu, weights_only=weights_only)
    logger.info('==> Loading parameters from checkpoint %s to %s', filename, 'CPU' if to_cpu else 'GPU')
    epoch = checkpoint.get('epoch', -1)
    it = checkpoint.get('it', 0.0)

    model_state = model.state_dict()
    update_state, _ = filter_matching_state(model_state, _model_state_of(checkpoint, filename))
    model.load_state_dict(update_state, strict=False)
    if len(update_state) != len(model_state):
        missing = sorted(set(model_state) - set(update_state))
        raise CheckpointMismatchError(f'Resume from {filename}: {len(missing)} model keys are missing or '
                                      f'shape-mismatched' + _listing('keys', missing))

    if optimizer is not None:
        if checkpoint.get('optimizer_state', None) is not None:
            logger.info('==> Loading optimizer parameters from checkpoint %s', filename)
            optimizer.load_state_dict(checkpoint['optimizer_state'])
        else:
            optimizer_filename = Path(str(filename)[:-4] + '_optim.pth') if str(filename).endswith('.pth') else None
            if optimizer_filename is not None and optimizer_filename.exists():
                optimizer_ckpt = read_checkpoint(optimizer_filename, to_cpu=to_cpu, weights_only=weights_only)
                optimizer.load_state_dict(optimizer_ckpt['optimizer_state'])

    if 'version' in checkpoint:
        logger.info('==> Checkpoint trained from version: %s', checkpoint['version'])
    logger.info('==> Done')
    warn_upstream_compat(model, checkpoint, update_state, filename, logger)
    return it, epoch


def prefix_coverage(report, prefixes):
    """{prefix: (loaded, total)} over the model keys starting with each prefix."""
    loaded = set(report.loaded)
    model_keys = set(report.loaded) | set(report.missing) | set(report.shape_mismatch)
    coverage = {}
    for prefix in prefixes:
        keys = [key for key in model_keys if key.startswith(prefix)]
        coverage[prefix] = (sum(key in loaded for key in keys), len(keys))
    return coverage


def load_pretrained_model(model, filename, pretrained_cfg=None, logger=None, to_cpu=True):
    """`--pretrained_model`: load matching tensors (not `global_step`) and log a coverage report per top-level
    prefix. `pretrained_cfg` = `MODEL.PRETRAINED_ENCODER` or None; with it, raise `CheckpointMismatchError` when the
    loaded fraction of the tensors under its PREFIXES is below MIN_COVERAGE (defaults: PRETRAINED_ENCODER_SCHEMA)."""
    logger = _log(logger)
    report = load_params_from_file(model, filename, logger, to_cpu=to_cpu, strict=False,
                                   min_matched_fraction=0.0 if pretrained_cfg else DEFAULT_MIN_MATCHED_FRACTION,
                                   exclude_keys=('global_step',))
    all_prefixes = sorted({key.split('.')[0] + '.' for key in report.loaded + report.missing})
    coverage = prefix_coverage(report, all_prefixes)
    logger.info('Pretrained coverage (%s): %s', filename, ', '.join(
        f'{prefix[:-1]} {loaded}/{total}' for prefix, (loaded, total) in coverage.items()))
    if pretrained_cfg:
        prefixes = list(PRETRAINED_ENCODER_SCHEMA.get(pretrained_cfg, 'PREFIXES'))
        minimum = float(PRETRAINED_ENCODER_SCHEMA.get(pretrained_cfg, 'MIN_COVERAGE'))
        loaded, total = (sum(v) for v in zip(*prefix_coverage(report, prefixes).values()))
        fraction = loaded / max(total, 1)
        logger.info('Pretrained encoder coverage: %d/%d tensors under %s (%.1f%%, minimum %.0f%%)', loaded, total,
                    prefixes, 100 * fraction, 100 * minimum)
        if fraction < minimum:
            missing = [key for key in report.missing + sorted(report.shape_mismatch) if key.startswith(tuple(prefixes))]
            raise CheckpointMismatchError(
                f'{filename}: only {loaded}/{total} ({fraction:.1%}) of the encoder tensors under {prefixes} were '
                f'loaded, below MODEL.PRETRAINED_ENCODER.MIN_COVERAGE = {minimum}; the pretraining and fine-tune '
                f'encoders differ' + _listing('missing or shape-mismatched keys', missing))
    return report
