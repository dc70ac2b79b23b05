"""Each GPICTURE fine-tune encoder IS its pretraining encoder (docs/GPICTURE.md "Fine-tuning", spec §4.5, Q8).

Equal tensor names and shapes (tests/models/test_gpicture_configs.py) are not enough: a fine-tune whose window
shape, shifts, hybrid factor, head count, COMPAT switch, normalize_pos, voxel size or range differs from pretraining
loads every tensor and silently runs another function. Here, per pretrain / fine-tune pair of
tools/cfgs/gpicture_models/:
* the RESOLVED settings of every module under `vfe` and `backbone_3d` (each submodule's type and its plain
  hyper-parameter attributes: windows, shifts, strides, stage shapes, COMPAT flags, heads, eps, dropout, the VFE's
  grid / voxel size / range / filters / norm switches ...) and the point features the dataset feeds the VFE are equal;
* after loading the pretrained encoder tensors into the fine-tune model, both encoders give the same outputs on the
  same cloud (eval mode: no masking).
"""
from pathlib import Path

import pytest
import torch
from torch import nn

from pcdet.config import cfg_from_yaml_file
from pcdet.models.build import build_network_from_cfg

CFG_DIR = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs' / 'gpicture_models'
PAIRS = [
    ('gpicture_tiny_synthetic_pretrain.yaml', 'gpicture_tiny_synthetic_finetune.yaml'),
    ('gpicture_nuscenes_pretrain.yaml', 'gpicture_nuscenes_detection.yaml'),
    ('gpicture_nuscenes_pretrain.yaml', 'gpicture_nuscenes_detection_centerhead.yaml'),
    ('gpicture_waymo_pretrain.yaml', 'gpicture_waymo_detection.yaml'),
]
ENCODER = ('vfe', 'backbone_3d')
# attributes that are not encoder hyper-parameters: the raw config (compared resolved instead) and the pretraining
# model's own masking settings
SKIP_ATTRS = {'training', 'model_cfg', 'mask_cfg'}


def _plain(value):
    """Comparable form of a hyper-parameter value, or None when it is not one (modules, parameters)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return ('tensor', value.tolist())
    if hasattr(value, '_asdict'):                       # NamedTuple (e.g. DSVTShapes)
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if callable(value) and not isinstance(value, nn.Module):   # activation functions
        return ('callable', getattr(value, '__name__', type(value).__name__))
    return ('object', type(value).__name__)


def resolved_encoder(model, cfg):
    """{module path: (type, {attr: value})} for every submodule of the encoder, plus the VFE's point features.
    Non-persistent buffers (grid, voxel size, range) are included; weights are not (they are what transfers)."""
    out = {}
    for prefix in ENCODER:
        root = getattr(model, prefix)
        for name, module in root.named_modules():
            path = f'{prefix}.{name}' if name else prefix
            persistent = {k for k, _ in module.named_buffers(recurse=False)} - module._non_persistent_buffers_set
            attrs = {k: _plain(v) for k, v in vars(module).items()
                     if not k.startswith('_') and k not in SKIP_ATTRS}
            attrs.update({f'buffer:{k}': _plain(v) for k, v in module.named_buffers(recurse=False)
                          if k not in persistent})
            type_name = type(module).__name__ if name else 'root'   # DSVT_MAE vs DSVT: same encoder, other class
            out[path] = (type_name, attrs)
    encoding = cfg.DATA_CONFIG.POINT_FEATURE_ENCODING
    out['data.point_features'] = ('data', {'used': list(encoding.used_feature_list),
                                           'src': list(encoding.src_feature_list)})
    return out


def _build(name):
    cfg = cfg_from_yaml_file(str(CFG_DIR / name))
    return cfg, build_network_from_cfg(cfg)


def _diff(a, b):
    lines = []
    for path in sorted(set(a) | set(b)):
        if path not in a or path not in b:
            lines.append(f'{path}: only in {"pretraining" if path in a else "fine-tune"}')
            continue
        (ta, va), (tb, vb) = a[path], b[path]
        if ta != tb:
            lines.append(f'{path}: type {ta} vs {tb}')
        for key in sorted(set(va) | set(vb)):
            if va.get(key, '<absent>') != vb.get(key, '<absent>'):
                lines.append(f'{path}.{key}: {va.get(key, "<absent>")!r} vs {vb.get(key, "<absent>")!r}')
    return lines


@pytest.fixture(scope='module', params=PAIRS, ids=[p[1].replace('.yaml', '') for p in PAIRS])
def pair(request):
    pre_name, fine_name = request.param
    return _build(pre_name), _build(fine_name)


def test_resolved_encoder_settings_are_identical(pair):
    (pre_cfg, pre), (fine_cfg, fine) = pair
    assert type(pre.backbone_3d).__name__ == 'DSVT_MAE' and type(fine.backbone_3d).__name__ == 'DSVT'
    pre_settings, fine_settings = resolved_encoder(pre, pre_cfg), resolved_encoder(fine, fine_cfg)
    # the comparison really covers the settings that matter
    attrs = pre_settings['backbone_3d.input_layer'][1]
    assert {'window_shape', 'shift_list', 'normalize_pos', 'pos_embed_shift_bug', 'sparse_shape_list'} <= set(attrs)
    assert 'compat' in pre_settings['backbone_3d'][1]
    assert {'buffer:voxel_size', 'buffer:point_cloud_range', 'grid'} <= set(pre_settings['vfe'][1])
    differences = _diff(pre_settings, fine_settings)
    assert not differences, 'fine-tune encoder differs from pretraining:\n' + '\n'.join(differences[:40])


def _cloud(cfg, num_points=3000, seed=0):
    """A random cloud inside the config's range with the dataset's point feature count."""
    generator = torch.Generator().manual_seed(seed)
    lo = torch.tensor(cfg.DATA_CONFIG.POINT_CLOUD_RANGE[:3], dtype=torch.float32)
    hi = torch.tensor(cfg.DATA_CONFIG.POINT_CLOUD_RANGE[3:], dtype=torch.float32)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    # a 30 m x 30 m patch around the centre (dense enough for multi-voxel windows, small enough for a CPU test)
    extent = torch.cat([torch.clamp(half[:2], max=15.0), half[2:]])
    xyz = centre + (torch.rand(num_points, 3, generator=generator) * 2 - 1) * extent * 0.999
    num_extra = len(cfg.DATA_CONFIG.POINT_FEATURE_ENCODING.used_feature_list) - 3
    extra = torch.rand(num_points, num_extra, generator=generator)
    return torch.cat([torch.zeros(num_points, 1), xyz, extra], dim=1)


def test_pretrained_encoder_gives_the_same_outputs_in_the_fine_tune_model(pair):
    (pre_cfg, pre), (fine_cfg, fine) = pair
    torch.manual_seed(0)
    with torch.no_grad():   # make the BN statistics non-trivial, so a VFE difference shows
        for module in pre.vfe.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    encoder_state = {k: v for k, v in pre.state_dict().items() if k.startswith(tuple(p + '.' for p in ENCODER))}
    missing, unexpected = fine.load_state_dict(encoder_state, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(tuple(p + '.' for p in ENCODER))]
    pre.eval()
    fine.eval()
    points = _cloud(pre_cfg)
    outputs = []
    for model in (pre, fine):
        batch = {'points': points.clone(), 'batch_size': 1}
        with torch.no_grad():
            batch = model.backbone_3d(model.vfe(batch))
        outputs.append((batch['voxel_coords'], batch['voxel_features']))
    (coords_a, feats_a), (coords_b, feats_b) = outputs
    assert coords_a.shape[0] > 1
    assert torch.equal(coords_a, coords_b)
    assert torch.allclose(feats_a, feats_b, atol=1e-5), float((feats_a - feats_b).abs().max())
