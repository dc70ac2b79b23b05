"""Seal/SLidR MinkUNet teacher: `Res16UNet34C` on the pure-PyTorch sparse conv, ME checkpoint loading, per-point use.

Spec: gpicture.md §1.3 (stage C), §5 (network, checkpoint layout), D-SEAL-1, Q1/Q2/Q10.

* `Res16UNet34C(in_channels=1, out_channels=64, bn_momentum=0.05, kernel_size=3, normalize_features=True)`:
  the MinkowskiEngine 0.5 network of Seal/SLidR (`res16unet.py`) rebuilt on `pcdet.ops.sparse_conv`, with ME's
  module names (`conv0p1s1`, `bn0`, `conv1p1s2`, `block1.{i}.conv{1,2}` / `.norm{1,2}`, `block2.0.downsample.{0,1}`,
  ..., `convtr4p16s2`, `bntr4`, ..., `block8`, `final`). Parameter layout differs from ME on purpose (so that a
  raw ME state dict cannot be loaded without the offset permutation): convs hold `weight` (k^3, C_in, C_out) in
  the internal offset order of `pcdet.ops.sparse_conv` and `bias` (C_out,); BNs are plain `nn.BatchNorm1d`
  (`bn0.weight` where ME has `bn0.bn.weight`). Blocks use BN momentum 0.1, stem/transition BNs `bn_momentum`
  (as ME's code: the blocks' momentum is not forwarded). Forward: SparseTensor (M, 1) at stride 1 -> SparseTensor
  (M, 64) on the SAME coords and rows, rows L2-normalised.
  Deviation: normalisation divides by max(||f||, 1e-12) (`NORMALIZE_EPS`, as `F.normalize`); ME's code has no eps
  and gives NaN for an all-zero row.
* `load_me_checkpoint(model, path_or_state_dict, weights_only=True) -> MECheckpointReport`: reads the ME
  checkpoint, takes `['state_dict']` / `['model']` / a bare state dict, strips ONE of `model_points.`, `model.`,
  `module.`, `encoder.` from EVERY key that has it (the released loader only strips when the first key has it),
  ignores `model_images.*`, converts `kernel` / `bias` / `bn.*` to the internal layout (`me_kernel_to_internal`),
  and requires full coverage: any model tensor not provided (or a shape mismatch) raises `MECheckpointError`
  naming the file, the missing keys (first 20), the mismatches and the unexpected keys. Exception: BN
  `num_batches_tracked` may be absent (eval outputs do not depend on it; it is set to 0 and listed in
  `report.defaulted`). Unexpected keys alone do not fail a load; they are listed in the report.
* `SealMinkUNetTeacher(teacher_cfg)`: per-raw-point 64-d teacher features (interface of `pcdet.datasets.teachers`).
  Voxelisation (documented choice): voxel = floor(xyz / VOXEL_SIZE), batch column 0 (D-SEAL-1), unique voxels;
  the voxel input feature is the MEAN intensity (column INTENSITY_COLUMN divided by INTENSITY_SCALE) of its
  points -- the released stage B kept an arbitrary representative point's intensity. Features go back to every
  point through the unique inverse, never through row order (D2/Q10); our network keeps the input rows by
  construction. Cartesian voxels as GPICTURE; Seal itself trained on cylindrical voxels (§7 Q2): the grid is a
  config choice of the caller.
  Config (EasyDict): CHECKPOINT (required, local path), VOXEL_SIZE [0.2, 0.2, 0.2], INTENSITY_COLUMN 3,
  INTENSITY_SCALE 1.0, DEVICE 'cpu', NUM_FEATURES 64, BACKEND 'torch' ('spconv' -> NotImplementedError: the
  optional faster path to add behind the same layout), WEIGHTS_ONLY True (extra key: pass False only for a trusted
  Lightning checkpoint that pickles non-tensor objects).
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pcdet.config import ConfigError
from pcdet.ops.sparse_conv import SparseConv3d, SparseTensor, cat_features, me_kernel_to_internal, unique_coords

from .base import Teacher

NORMALIZE_EPS = 1e-12
ME_KEY_PREFIXES = ('model_points.', 'model.', 'module.', 'encoder.')
IGNORED_KEY_PREFIXES = ('model_images.',)
_LIST_LIMIT = 20

# Res16UNet34C (spec §5)
PLANES = (32, 64, 128, 256, 256, 128, 96, 96)
LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
INIT_DIM = 32
BLOCK_BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def _relu(x):
    return x.replace(torch.relu(x.features))


def _batch_norm(x, bn):
    return x.replace(bn(x.features))


class BasicBlock(nn.Module):
    """ME `BasicBlock`: conv3 -> BN -> ReLU -> conv3 -> BN, + (downsample(x) | x), ReLU.

    `downsample` = Sequential(k1 conv, BN) when inplanes != planes (ME names `downsample.0`, `downsample.1`).
    forward(SparseTensor (M, inplanes)) -> SparseTensor (M, planes), same coords.
    """

    def __init__(self, inplanes, planes, bn_momentum=BLOCK_BN_MOMENTUM):
        super().__init__()
        self.conv1 = SparseConv3d(inplanes, planes, kernel_size=3)
        self.norm1 = nn.BatchNorm1d(planes, eps=BN_EPS, momentum=bn_momentum)
        self.conv2 = SparseConv3d(planes, planes, kernel_size=3)
        self.norm2 = nn.BatchNorm1d(planes, eps=BN_EPS, momentum=bn_momentum)
        self.downsample = None
        if inplanes != planes:
            self.downsample = nn.Sequential(SparseConv3d(inplanes, planes, kernel_size=1),
                                            nn.BatchNorm1d(planes, eps=BN_EPS, momentum=bn_momentum))

    def forward(self, x):
        out = _relu(_batch_norm(self.conv1(x), self.norm1))
        out = _batch_norm(self.conv2(out), self.norm2)
        residual = x if self.downsample is None else _batch_norm(self.downsample[0](x), self.downsample[1])
        return out.replace(torch.relu(out.features + residual.features))


def _make_layer(inplanes, planes, blocks):
    return nn.Sequential(*[BasicBlock(inplanes if i == 0 else planes, planes) for i in range(blocks)])


class Res16UNet34C(nn.Module):
    """Seal/SLidR `Res16UNet34C` (ME 0.5) on `pcdet.ops.sparse_conv`; see the module docstring for the layout.

    Args:
        in_channels: input feature channels (1: intensity). out_channels: 64.
        bn_momentum: stem / transition BN momentum (Seal config 0.05). kernel_size: conv0p1s1 kernel (3).
        normalize_features: L2-normalise output rows (eps NORMALIZE_EPS).
    forward(SparseTensor (M, in_channels) at stride 1) -> SparseTensor (M, out_channels), same coords and rows.
    """

    def __init__(self, in_channels=1, out_channels=64, bn_momentum=0.05, kernel_size=3, normalize_features=True):
        super().__init__()
        self.normalize_features = normalize_features
        self.out_channels = out_channels

        def bn(channels):
            return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=bn_momentum)

        self.conv0p1s1 = SparseConv3d(in_channels, INIT_DIM, kernel_size=kernel_size)
        self.bn0 = bn(INIT_DIM)
        inplanes = INIT_DIM
        encoder_channels = [INIT_DIM]  # channels of out_p1, out_b1p2, out_b2p4, out_b3p8
        for level in range(4):  # conv{l+1}p{2^l}s2, bn{l+1}, block{l+1}
            setattr(self, f'conv{level + 1}p{2 ** level}s2', SparseConv3d(inplanes, inplanes, 2, stride=2))
            setattr(self, f'bn{level + 1}', bn(inplanes))
            setattr(self, f'block{level + 1}', _make_layer(inplanes, PLANES[level], LAYERS[level]))
            inplanes = PLANES[level]
            encoder_channels.append(inplanes)
        for level in range(4):  # convtr{l+4}p{16/2^l}s2, bntr{l+4}, cat skip, block{l+5}
            planes = PLANES[4 + level]
            setattr(self, f'convtr{level + 4}p{16 // 2 ** level}s2',
                    SparseConv3d(inplanes, planes, 2, stride=2, transposed=True))
            setattr(self, f'bntr{level + 4}', bn(planes))
            inplanes = planes + encoder_channels[3 - level]
            setattr(self, f'block{level + 5}', _make_layer(inplanes, planes, LAYERS[4 + level]))
            inplanes = planes
        self.final = SparseConv3d(PLANES[7], out_channels, kernel_size=1, bias=True)

    def forward(self, x):
        out = _relu(_batch_norm(self.conv0p1s1(x), self.bn0))
        skips = [out]  # out_p1, out_b1p2, out_b2p4, out_b3p8
        for level in range(4):
            out = getattr(self, f'conv{level + 1}p{2 ** level}s2')(out)
            out = _relu(_batch_norm(out, getattr(self, f'bn{level + 1}')))
            out = getattr(self, f'block{level + 1}')(out)
            skips.append(out)
        for level in range(4):
            out = getattr(self, f'convtr{level + 4}p{16 // 2 ** level}s2')(out)
            out = _relu(_batch_norm(out, getattr(self, f'bntr{level + 4}')))
            out = cat_features(out, skips[3 - level])  # ME.cat(up, skip): up channels first
            out = getattr(self, f'block{level + 5}')(out)
        out = self.final(out)
        if self.normalize_features:
            norm = out.features.norm(p=2, dim=1, keepdim=True).clamp(min=NORMALIZE_EPS)
            out = out.replace(out.features / norm)
        return out


# -------------------------------------------------------------------------------------------- checkpoint loading
class MECheckpointError(RuntimeError):
    """An ME checkpoint does not cover / fit the model."""


@dataclass
class MECheckpointReport:
    """What `load_me_checkpoint` did. Keys: `loaded` model keys, `unexpected` / `ignored` checkpoint keys
    (after prefix stripping / as stored), `defaulted` model keys set to defaults, `stripped` prefix -> count."""
    source: str
    loaded: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    defaulted: list = field(default_factory=list)
    stripped: dict = field(default_factory=dict)

    def summary(self):
        return (f'loaded {len(self.loaded)} tensors from {self.source} (prefixes stripped {self.stripped}, '
                f'{len(self.ignored)} ignored, {len(self.unexpected)} unexpected, {len(self.defaulted)} defaulted)')


def _listing(title, items):
    items = list(items)
    if not items:
        return ''
    more = f' ... (+{len(items) - _LIST_LIMIT} more)' if len(items) > _LIST_LIMIT else ''
    return f'\n  {title} ({len(items)}): {", ".join(items[:_LIST_LIMIT])}{more}'


def read_me_state_dict(path_or_state_dict, weights_only=True):
    """The raw ME state dict of a checkpoint file or in-memory dict.

    Args:
        path_or_state_dict: file path (read with `torch.load(map_location='cpu', weights_only=...)`) or a dict.
            Takes `['state_dict']` (Lightning) or `['model']` when present, else the dict itself.
    Returns:
        (state_dict {key: tensor}, source name for messages).
    """
    if isinstance(path_or_state_dict, dict):
        checkpoint, source = path_or_state_dict, '<in-memory state dict>'
    else:
        source = str(path_or_state_dict)
        if not Path(source).is_file():
            raise FileNotFoundError(f'Seal MinkUNet checkpoint not found: {source}')
        try:
            checkpoint = torch.load(source, map_location='cpu', weights_only=weights_only)
        except Exception as err:  # weights_only refuses pickled non-tensor objects
            hint = (' (weights_only=True refused it; if the file is trusted, load it with weights_only=False / '
                    'teacher config WEIGHTS_ONLY: False)') if weights_only else ''
            raise MECheckpointError(f'cannot read ME checkpoint {source}: {err}{hint}') from err
    for wrapper in ('state_dict', 'model'):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict):
        raise MECheckpointError(f'{source} holds a {type(checkpoint).__name__}, not a state dict')
    return checkpoint, source


def _strip_prefix(key):
    """(key without ONE known prefix, prefix or None)."""
    for prefix in ME_KEY_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):], prefix
    return key, None


def _me_key_of(model_key, modules):
    """ME checkpoint name (without prefix) of a model key: conv `weight` -> `kernel`, BN `x.y` -> `x.bn.y`."""
    module_name, _, leaf = model_key.rpartition('.')
    if isinstance(modules.get(module_name), nn.BatchNorm1d):
        return f'{module_name}.bn.{leaf}'
    if isinstance(modules.get(module_name), SparseConv3d) and leaf == 'weight':
        return f'{module_name}.kernel'
    return model_key


def convert_me_state_dict(me_state, model, source='<state dict>'):
    """Map an ME state dict onto `model`'s internal parameter names and layout (pure; nothing is loaded).

    Args:
        me_state: {key: tensor} as stored by ME (prefixes allowed, see module docstring).
        model: the target module (its SparseConv3d / BatchNorm1d sub-modules define names and shapes).
        source: file name for error messages.
    Returns:
        (state dict with every model key, MECheckpointReport).
    Raises:
        MECheckpointError naming the file, the missing keys (ME names, prefix stripped; first 20), the shape
        mismatches and the unexpected keys.
    """
    modules = dict(model.named_modules())
    expected = model.state_dict()
    report = MECheckpointReport(source=source)
    converted, origin, mismatched, mismatched_targets = {}, {}, [], set()
    for raw_key, value in me_state.items():
        if raw_key.startswith(IGNORED_KEY_PREFIXES):
            report.ignored.append(raw_key)
            continue
        key, prefix = _strip_prefix(raw_key)
        if prefix is not None:
            report.stripped[prefix] = report.stripped.get(prefix, 0) + 1
        module_name, _, leaf = key.rpartition('.')
        target, tensor = None, None
        if module_name.endswith('.bn') and isinstance(modules.get(module_name[:-3]), nn.BatchNorm1d):
            target, tensor = f'{module_name[:-3]}.{leaf}', value
        elif isinstance(modules.get(module_name), SparseConv3d):
            conv = modules[module_name]
            if leaf == 'kernel':
                target = f'{module_name}.weight'
                volume = conv.kernel_size ** 3
                shape_ok = value.dim() == 3 and tuple(value.shape) == (volume, conv.in_channels, conv.out_channels)
                shape_ok |= volume == 1 and tuple(value.shape) == (conv.in_channels, conv.out_channels)
                if not shape_ok:
                    mismatched.append(f'{raw_key}: {tuple(value.shape)} vs expected ME '
                                      f'({volume}, {conv.in_channels}, {conv.out_channels})')
                    mismatched_targets.add(target)
                    continue
                tensor = me_kernel_to_internal(value, conv.kernel_size)
            elif leaf == 'bias' and conv.bias is not None:  # ME (1, C_out)
                target = f'{module_name}.bias'
                tensor = value.reshape(-1) if value.dim() == 2 and value.shape[0] == 1 else value
        if target is None or target not in expected:
            report.unexpected.append(raw_key)
            continue
        if target in converted:
            raise MECheckpointError(f'{source}: keys {origin[target]!r} and {raw_key!r} both map to {target!r}')
        if tuple(tensor.shape) != tuple(expected[target].shape):
            mismatched.append(f'{raw_key}: {tuple(value.shape)} vs expected {tuple(expected[target].shape)}')
            mismatched_targets.add(target)
            continue
        converted[target] = tensor.to(expected[target].dtype)
        origin[target] = raw_key
    missing = [_me_key_of(key, modules) for key in expected
               if key not in converted and key not in mismatched_targets and not key.endswith('num_batches_tracked')]
    if missing or mismatched:
        raise MECheckpointError(
            f'ME checkpoint {source} does not cover the model: {len(missing)} missing, '
            f'{len(mismatched)} shape-mismatched'
            + _listing('missing', missing) + _listing('shape mismatch', mismatched)
            + _listing('unexpected', report.unexpected))
    for key in expected:
        if key not in converted:  # num_batches_tracked: unused in eval
            converted[key] = torch.zeros_like(expected[key])
            report.defaulted.append(key)
    report.loaded = [key for key in expected if key in origin]
    return converted, report


def load_me_checkpoint(model, path_or_state_dict, weights_only=True):
    """Load a MinkowskiEngine `Res16UNet34C` checkpoint into `model` (full coverage required).

    Args:
        model: Res16UNet34C (or any module built from SparseConv3d / BatchNorm1d with ME names).
        path_or_state_dict: checkpoint path or dict (see `read_me_state_dict`). weights_only: for `torch.load`.
    Returns:
        MECheckpointReport.
    """
    me_state, source = read_me_state_dict(path_or_state_dict, weights_only=weights_only)
    converted, report = convert_me_state_dict(me_state, model, source)
    model.load_state_dict(converted, strict=True)
    return report


# -------------------------------------------------------------------------------------------------- the teacher
def voxelize_points(points, voxel_size, intensity_column=3, intensity_scale=1.0):
    """Quantise points into unique voxels with mean-intensity features.

    Args:
        points: (N, >=4) float numpy [x, y, z, ..., intensity at `intensity_column`, ...].
        voxel_size: 3 floats (metres). intensity_scale: raw intensity is divided by it.
    Returns:
        coords (M, 4) int64 torch [0, i, j, k] (i = floor(x / vx), ...), features (M, 1) float32 torch (mean
        scaled intensity of the voxel's points), inverse (N,) int64 torch voxel row of each point.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3 or points.shape[1] <= intensity_column:
        raise ValueError(f'points must be (N, >= {max(4, intensity_column + 1)}) with intensity in column '
                         f'{intensity_column}, got shape {points.shape}')
    xyz = torch.from_numpy(np.ascontiguousarray(points[:, :3], dtype=np.float64))
    voxel = torch.tensor([float(v) for v in voxel_size], dtype=torch.float64)
    grid = torch.floor(xyz / voxel).long()
    coords = torch.cat([torch.zeros((grid.shape[0], 1), dtype=torch.long), grid], dim=1)
    unique, inverse = unique_coords(coords)
    intensity = torch.from_numpy(np.ascontiguousarray(points[:, intensity_column], dtype=np.float64))
    intensity = intensity / float(intensity_scale)
    total = torch.zeros(unique.shape[0], dtype=torch.float64).index_add_(0, inverse, intensity)
    counts = torch.bincount(inverse, minlength=unique.shape[0]).to(torch.float64)
    return unique, (total / counts).to(torch.float32).view(-1, 1), inverse


class SealMinkUNetTeacher(Teacher):
    """Per-raw-point Seal MinkUNet features (teacher interface of `pcdet.datasets.teachers`).

    `SealMinkUNetTeacher(teacher_cfg)` builds Res16UNet34C and loads cfg.CHECKPOINT (ME layout);
    `SealMinkUNetTeacher.from_model(model, teacher_cfg)` wraps an in-memory model (tests).
    `__call__(points (N, >=4) float32 numpy, point_labels=None) -> (N, NUM_FEATURES) float32 numpy`, unit rows;
    the network runs in eval mode under no_grad on cfg.DEVICE.
    """
    name = 'seal_minkunet'
    needs_point_labels = False
    CONFIG_SCHEMA = Teacher.CONFIG_SCHEMA.extend('DATA_CONFIG.TEACHER_FEATURES (seal_minkunet)', {
        'CHECKPOINT': None,             # needed unless the model is passed in (from_model)
        'BACKEND': 'torch', 'DEVICE': 'cpu', 'WEIGHTS_ONLY': True,
        'INTENSITY_COLUMN': 3, 'INTENSITY_SCALE': 1.0, 'VOXEL_SIZE': [0.2, 0.2, 0.2]})

    def __init__(self, teacher_cfg, model=None):
        cfg, schema = teacher_cfg, self.CONFIG_SCHEMA
        backend = schema.get(cfg, 'BACKEND')
        if backend == 'spconv':
            raise NotImplementedError('Seal MinkUNet teacher: BACKEND spconv is not implemented; the pure-PyTorch '
                                      'path (BACKEND: torch) is the reference')
        if backend != 'torch':
            raise ConfigError(f"teacher config BACKEND must be 'torch' (or 'spconv', not implemented), got {backend!r}")
        self.num_features = int(schema.get(cfg, 'NUM_FEATURES'))
        self.voxel_size = [float(v) for v in schema.get(cfg, 'VOXEL_SIZE')]
        if len(self.voxel_size) != 3 or min(self.voxel_size) <= 0:
            raise ConfigError(f'teacher config VOXEL_SIZE must be 3 positive floats, got {self.voxel_size}')
        self.intensity_column = int(schema.get(cfg, 'INTENSITY_COLUMN'))
        self.intensity_scale = float(schema.get(cfg, 'INTENSITY_SCALE'))
        self.device = torch.device(schema.get(cfg, 'DEVICE'))
        self.load_report = None
        if model is None:
            checkpoint = schema.get(cfg, 'CHECKPOINT')
            if not checkpoint:
                raise ConfigError('teacher config CHECKPOINT (path of the Seal MinkUNet ME checkpoint) is required')
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f'teacher config CHECKPOINT: file not found: {checkpoint}')
            model = Res16UNet34C(in_channels=1, out_channels=self.num_features)
            self.load_report = load_me_checkpoint(model, checkpoint, weights_only=bool(schema.get(cfg, 'WEIGHTS_ONLY')))
        if getattr(model, 'out_channels', self.num_features) != self.num_features:
            raise ConfigError(f'teacher config NUM_FEATURES {self.num_features} != model output channels '
                             f'{model.out_channels}')
        self.model = model.to(self.device).eval()

    @classmethod
    def from_model(cls, model, teacher_cfg):
        """Teacher around an in-memory Res16UNet34C (CHECKPOINT is not read)."""
        return cls(teacher_cfg, model=model)

    def __call__(self, points, point_labels=None):
        coords, features, inverse = voxelize_points(points, self.voxel_size, self.intensity_column,
                                                    self.intensity_scale)
        if coords.shape[0] == 0:
            return np.zeros((0, self.num_features), dtype=np.float32)
        self.model.eval()
        with torch.no_grad():
            sparse = SparseTensor.from_coords(features.to(self.device), coords.to(self.device))
            out = self.model(sparse)
        # Output rows follow the input coords (by construction of pcdet.ops.sparse_conv); points take their
        # voxel's row through the unique inverse.
        return out.features[inverse.to(self.device)].float().cpu().numpy()
